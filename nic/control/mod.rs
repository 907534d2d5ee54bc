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
use std::sync::Arc;

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

/// The workers as the control thread sees them: each one's rings and VMs. A session names a
/// VM by its index in the configuration; a worker knows its own VMs by their index among them.
/// `Workers` translates both ways, so nothing on either side assumes one worker.
pub struct Workers {
    shards: Vec<Shard>,
    /// Per VM of the configuration: (its worker, its index there).
    route: Vec<(usize, VmIdx)>,
}

struct Shard {
    rings: Arc<Rings>,
    /// The worker's VMs by their index in the configuration.
    vms: Vec<VmIdx>,
}

impl Workers {
    /// One worker that owns VMs `0..vms`.
    pub fn single(rings: Arc<Rings>, vms: usize) -> Workers {
        Workers::new(vec![(rings, (0..vms).collect())])
    }

    /// Each worker's rings and its VMs (by configuration index). Every VM belongs to exactly
    /// one worker.
    ///
    /// # Panics
    /// If a VM is missing or belongs to two workers (a bug in the caller's assignment).
    pub fn new(shards: Vec<(Arc<Rings>, Vec<VmIdx>)>) -> Workers {
        let total: usize = shards.iter().map(|(_, v)| v.len()).sum();
        let mut route = vec![(usize::MAX, 0); total];
        for (w, (_, vms)) in shards.iter().enumerate() {
            for (local, &vm) in vms.iter().enumerate() {
                assert_eq!(route[vm].0, usize::MAX, "vm {vm} on two workers");
                route[vm] = (w, local);
            }
        }
        assert!(route.iter().all(|r| r.0 != usize::MAX), "a VM on no worker");
        Workers {
            shards: shards
                .into_iter()
                .map(|(rings, vms)| Shard { rings, vms })
                .collect(),
            route,
        }
    }

    /// Hands `cmd` (its VM by configuration index) to the VM's worker; gives it back if the
    /// worker's ring is full.
    pub fn push(&self, cmd: Command) -> Result<(), Command> {
        let (w, local) = self.route[cmd.vm];
        self.shards[w]
            .rings
            .commands
            .push(Command { vm: local, ..cmd })
            .map_err(|_| cmd)
    }

    /// The next answer of any worker, its VM by configuration index.
    pub fn pop(&self) -> Option<Answer> {
        self.shards.iter().find_map(|s| {
            s.rings.answers.pop().map(|a| Answer {
                vm: s.vms[a.vm],
                ..a
            })
        })
    }

    /// Every worker's bell (readable once it rang).
    pub fn bells(&self) -> impl Iterator<Item = BorrowedFd<'_>> {
        self.shards.iter().map(|s| s.rings.bell())
    }

    /// Silences every bell (before the answers are taken).
    pub fn hush(&self) {
        for s in &self.shards {
            s.rings.hush();
        }
    }

    /// Rings a bell (to wake the control thread from another thread, e.g. to stop it).
    pub fn wake(&self) {
        if let Some(s) = self.shards.first() {
            s.rings.wake();
        }
    }

    pub fn count(&self) -> usize {
        self.shards.len()
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    /// Two workers: a command reaches the VM's own worker under its index there, and the
    /// answer comes back under the VM's configuration index; the bell wakes a poller.
    #[test]
    fn commands_and_answers_are_routed_by_worker_and_translated_both_ways() {
        let (a, b) = (Arc::new(Rings::new(2)), Arc::new(Rings::new(2)));
        let w = Workers::new(vec![(a.clone(), vec![0, 2]), (b.clone(), vec![1])]);
        for vm in [2, 1, 0] {
            let cmd = Command {
                vm,
                session: 7,
                op: Op::Discard,
            };
            w.push(cmd).expect("room");
        }
        let pop =
            |r: &Rings| std::iter::from_fn(|| r.commands.pop().map(|c| c.vm)).collect::<Vec<_>>();
        assert_eq!(
            pop(&a),
            [1, 0],
            "vm 2 is worker a's second VM, vm 0 its first"
        );
        assert_eq!(pop(&b), [0], "vm 1 is worker b's only VM");
        let answer = |vm| Answer {
            vm,
            session: 7,
            reply: Ok(Reply::Discarded { frames: 0 }),
        };
        b.answers.push(answer(0)).unwrap();
        a.answers.push(answer(1)).unwrap();
        b.wake();
        let mut fds: Vec<_> = w
            .bells()
            .map(|f| nix::poll::PollFd::new(f, nix::poll::PollFlags::POLLIN))
            .collect();
        assert_eq!(
            nix::poll::poll(&mut fds, nix::poll::PollTimeout::ZERO).unwrap(),
            1,
            "one bell rang"
        );
        drop(fds);
        w.hush();
        let mut got: Vec<VmIdx> = std::iter::from_fn(|| w.pop().map(|a| a.vm)).collect();
        got.sort();
        assert_eq!(got, [1, 2]);
    }

    #[test]
    #[should_panic(expected = "on two workers")]
    fn a_vm_on_two_workers_is_refused() {
        let r = Arc::new(Rings::new(1));
        Workers::new(vec![(r.clone(), vec![0]), (r, vec![0])]);
    }
}
