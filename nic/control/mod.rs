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
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

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

    /// The earliest next timer of any worker (see [`Rings::next_timer`]).
    pub fn next_timer(&self) -> Option<Instant> {
        self.shards
            .iter()
            .filter_map(|s| s.rings.next_timer())
            .min()
    }

    /// What the workers' timers are now, to tell later whether one moved (read it before
    /// [`Workers::next_timer`]).
    pub fn timer_mark(&self) -> Vec<u64> {
        self.shards
            .iter()
            .map(|s| s.rings.timer.load(SeqCst))
            .collect()
    }

    /// The control thread is about to sleep until `until` (`None`: without a bound), having
    /// decided on the timers it saw (`mark`); false if a worker's timer moved meanwhile (then
    /// it must not sleep on what it saw). Every worker that moves its timer earlier than the
    /// sleep's end rings the bell from now on (see [`Rings::set_timer`]).
    pub fn sleep(&self, until: Option<Instant>, mark: &[u64]) -> bool {
        for s in &self.shards {
            s.rings.sleep(until);
        }
        self.timer_mark() == mark
    }

    /// The control thread is awake (no worker needs to ring for its timers).
    pub fn awake(&self) {
        for s in &self.shards {
            s.rings.sleep_end.store(AWAKE, SeqCst);
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

/// How long before a worker's next timer (a deferral's deadline, a postponed request, a fence's
/// deadline) the control thread stops sleeping, so that a checkpoint request or an answer that
/// comes of it is sent on at once instead of after a wake-up by the bell (a wake-up from
/// another core can cost tens of microseconds on a virtual machine). Covers the lateness of
/// the thread's own timed wake-up.
pub const TIMER_LEAD: Duration = Duration::from_micros(150);

/// How long after a worker's timer was due the control thread keeps polling when nothing came
/// of it (a worker normally moves its timer on at once).
pub const TIMER_GRACE: Duration = Duration::from_micros(100);

/// `Rings::sleep_end` of a control thread that is awake.
const AWAKE: u64 = 0;

fn ticks(d: Duration, hz: u64) -> u64 {
    u64::try_from(d.as_nanos() * u128::from(hz) / 1_000_000_000).unwrap_or(u64::MAX)
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
    /// The worker's next timer (a deferral's deadline, a postponed request, a fence's
    /// deadline) in TSC ticks, `u64::MAX` for none: the control thread is awake when an answer
    /// or a checkpoint request may come of it, instead of paying a wake-up by the bell.
    timer: AtomicU64,
    /// Until when (TSC) the control thread sleeps: [`AWAKE`] while it is awake, `u64::MAX`
    /// without a bound. A timer set earlier than this (less [`TIMER_LEAD`]) rings the bell.
    sleep_end: AtomicU64,
    /// [`TIMER_LEAD`] in ticks.
    lead_ticks: u64,
    /// The worker's clock, read by the control thread too: the TSC and its ticks per second
    /// (0: no clock, timers are not shown). Only differences from now are converted (never
    /// from a reading long ago: a calibration a little off would add up).
    clock: (fn() -> u64, u64),
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
            timer: AtomicU64::new(u64::MAX),
            sleep_end: AtomicU64::new(AWAKE),
            lead_ticks: 0,
            clock: (|| 0, 0),
        }
    }

    /// Rings whose worker shows its timers, on the clock `now` (the TSC) that ticks `hz` times
    /// a second.
    pub fn clocked(mut self, now: fn() -> u64, hz: u64) -> Rings {
        self.clock = (now, hz);
        self.lead_ticks = ticks(TIMER_LEAD, hz);
        self
    }

    /// The worker's next timer changed to `tsc` (`u64::MAX`: none); rings the bell if the
    /// control thread sleeps past the time it should wake for it. Called only on a change (a
    /// new deferral deadline, say), never in a round where nothing changed.
    #[inline]
    pub fn set_timer(&self, tsc: u64) {
        // SeqCst with `Workers::sleep`: either the worker sees the sleep, or the control
        // thread sees the new timer before it sleeps.
        self.timer.store(tsc, SeqCst);
        let end = self.sleep_end.load(SeqCst);
        if tsc != u64::MAX && end != AWAKE && tsc.saturating_sub(self.lead_ticks) < end {
            self.wake();
        }
    }

    fn sleep(&self, until: Option<Instant>) {
        let (tsc, hz) = self.clock;
        let end = match until {
            Some(t) => tsc()
                .saturating_add(ticks(t.saturating_duration_since(Instant::now()), hz))
                .max(AWAKE + 1),
            None => u64::MAX,
        };
        self.sleep_end.store(end, SeqCst);
    }

    /// When the worker's next timer fires, if it has one (and a clock).
    pub fn next_timer(&self) -> Option<Instant> {
        let (tsc, hz) = self.clock;
        let t = self.timer.load(SeqCst);
        if hz == 0 || t == u64::MAX {
            return None;
        }
        let (now_tsc, now) = (tsc(), Instant::now());
        let ns = u128::from(t.saturating_sub(now_tsc)) * 1_000_000_000 / u128::from(hz);
        Some(now + Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX)))
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

    /// A worker's timer is shown to the control thread on the worker's clock, and a timer
    /// set while the control thread sleeps past it rings the bell; one after the sleep's end,
    /// or while it is awake, does not.
    #[test]
    fn a_timer_earlier_than_the_control_threads_sleep_rings_the_bell() {
        // A clock that stands still: one tick per nanosecond, at 1 s.
        let hz = 1_000_000_000;
        let r = Arc::new(Rings::new(1).clocked(|| 1_000_000_000, hz));
        let w = Workers::single(r.clone(), 1);
        let rung = || {
            let mut fds = [nix::poll::PollFd::new(
                r.bell(),
                nix::poll::PollFlags::POLLIN,
            )];
            let n = nix::poll::poll(&mut fds, nix::poll::PollTimeout::ZERO).unwrap();
            r.hush();
            n == 1
        };
        assert_eq!(w.next_timer(), None);
        let ms = |n: u64| 1_000_000_000 + n * 1_000_000;
        let before = Instant::now();
        r.set_timer(ms(5));
        assert!(!rung(), "awake: nothing to ring for");
        let mark = w.timer_mark();
        let at = w.next_timer().expect("a timer");
        let (lo, hi) = (at - Instant::now(), at - before);
        assert!(
            lo <= Duration::from_millis(5) && hi >= Duration::from_millis(5),
            "5 ms from now: {lo:?}..{hi:?}"
        );
        // Asleep for 100 ms with that timer seen: a timer at 50 ms must wake it.
        let until = Instant::now() + Duration::from_millis(100);
        assert!(w.sleep(Some(until), &mark));
        r.set_timer(ms(50));
        assert!(rung(), "50 ms - lead is before the sleep ends");
        // A timer after the sleep's end (plus the lead) needs no bell.
        r.set_timer(ms(200));
        assert!(!rung());
        // The timer moved while the thread decided: it must not sleep on what it saw.
        assert!(!w.sleep(Some(until), &mark));
        w.awake();
        r.set_timer(ms(1));
        assert!(!rung(), "awake again");
        r.set_timer(u64::MAX);
        assert_eq!(w.next_timer(), None);
    }

    #[test]
    #[should_panic(expected = "on two workers")]
    fn a_vm_on_two_workers_is_refused() {
        let r = Arc::new(Rings::new(1));
        Workers::new(vec![(r.clone(), vec![0]), (r, vec![0])]);
    }
}
