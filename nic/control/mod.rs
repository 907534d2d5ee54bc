//! The control plane: the VMM sessions' socket server ([`server`]) and the two rings through
//! which it reaches the worker. The worker never waits for the control thread: it pops commands
//! when it polls and pushes answers, and the control thread never touches a VM's queues; so the
//! poll loop has no lock and no syscall, and every state change of a VM happens on its worker.

pub mod server;
pub mod state;

pub use server::{ControlError, ControlServer, ControlVm};
pub use vmm_shim::proto::{Mode, Release, Reply};

use crossbeam::queue::ArrayQueue;
use nix::sys::eventfd::{EfdFlags, EventFd};
use std::os::fd::{AsFd, BorrowedFd};

/// A VM's index in the configuration (and in the worker).
pub type VmIdx = usize;

/// What a session asks the worker to do to its VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// A session adopted the VM: answer `Welcome`; a `failed` VM is protected again in a new
    /// epoch.
    Adopt,
    Protect,
    Fence(u64),
    Commit(u64),
    Unprotect(Release),
    Discard,
    Promote(Mode),
    /// Back to standby (the HA manager moves the VM's output to another host): everything held
    /// or waiting is dropped, nothing more of it leaves.
    Demote,
    /// The session went away (the VMM died): a protected VM goes to `failed` and what it holds
    /// is discarded. Not answered.
    Fail,
}

/// One command for one VM. `session` is echoed in the answer so that the control thread can
/// recognise an answer for a session that has gone since.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Command {
    pub vm: VmIdx,
    pub session: u64,
    pub op: Op,
}

/// An answer to a command, or (with `session == EVENT`) an event for whoever owns the VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub vm: VmIdx,
    pub session: u64,
    /// The reply, or why the command was refused (the control thread writes the error's text:
    /// the worker builds no strings).
    pub reply: crate::hold::vm::Outcome,
}

/// The session number of an event that is not an answer.
pub const EVENT: u64 = 0;

/// The rings between the control thread and one worker. Each has one producer and one consumer
/// (the control thread pushes commands and pops answers; the worker the other way round);
/// crossbeam's bounded `ArrayQueue` is lock-free and never allocates after creation.
///
/// The bell wakes the control thread when answers or events are waiting: the worker rings it
/// at the end of a round that answered something (one `write` to an eventfd, the only syscall
/// of the poll loop, and only in rounds that told the control thread something), so the
/// control thread can sleep in `poll` until then instead of waking on a timer.
pub struct Rings {
    pub commands: ArrayQueue<Command>,
    pub answers: ArrayQueue<Answer>,
    bell: EventFd,
}

impl Rings {
    /// Room for one outstanding command per VM many times over: a session has at most one
    /// command in flight, so the command ring can only fill if sessions outnumber it.
    ///
    /// # Panics
    /// If the kernel refuses an eventfd (out of file descriptors at start).
    pub fn new(vms: usize) -> Rings {
        let n = (vms * 4).max(64);
        Rings {
            commands: ArrayQueue::new(n),
            answers: ArrayQueue::new(n * 4),
            bell: EventFd::from_value_and_flags(0, EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)
                .expect("eventfd for the control thread's bell"),
        }
    }

    /// Rings the bell (the worker, after pushing answers).
    #[inline]
    pub fn wake(&self) {
        // A full counter (2^64 - 2 unread rings) cannot happen: every wakeup reads it to 0.
        let _ = self.bell.write(1);
    }

    /// The bell's descriptor, readable while it has rung (for the control thread's `poll`).
    pub fn bell(&self) -> BorrowedFd<'_> {
        self.bell.as_fd()
    }

    /// Silences the bell (the control thread, before it takes the answers).
    pub fn hush(&self) {
        let _ = self.bell.read();
    }
}
