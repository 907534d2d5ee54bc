//! One VM as its worker runs it, without DPDK: modes and their transitions, fence drain and
//! seal, commit, discard, unprotect, promotion and demotion, buffer limits and backpressure,
//! checkpoint requests, and the ledger of invariant 4.
//!
//! [`VmCore`] is generic over the frame (an mbuf in the data plane, a byte vector in tests) and
//! takes time (TSC ticks) as an argument; the poll loop only moves frames between ports and
//! cores. Output commit itself is the epoch queue's ([`crate::hold::epoch`]): nothing leaves a core
//! but what [`VmCore::take_run`] hands out, and it hands out only what the queue released.
//! Every frame is counted in the core's [`Ledger`] from the moment it is received, and every
//! change is checked against the queue in debug builds ([`VmCore::check`]).
//!
//! What the core says to the VM's controller (answers, events) and what it measures (fence
//! drain and commit-to-wire times) goes to a [`Sink`]; a refusal is a [`Refusal`] (plain data:
//! the control thread writes its text), so nothing here allocates after construction.

use crate::config::{BufferLimits, OnFull};
use crate::control::{Mode, Op, Release, Reply, EVENT};
use crate::hold::epoch::{Count, EpochError, EpochQueue, Weighed};
use crate::hold::ledger::{Ledger, Place};
use crate::hold::policy::{FrameKind, PolicyConfig, RequestPolicy, Why};
use crate::stats::DropReason;
use std::collections::vec_deque::Drain;
use std::collections::VecDeque;
use std::fmt;
use vmm_shim::proto::{ErrorCode, Urgency};

/// The largest frame one mbuf holds (RTE_MBUF_DEFAULT_DATAROOM): what the byte limit reserves
/// per frame before reading a VM's port under backpressure (a frame's size is known only once
/// it is read).
pub const FRAME_ROOM: u64 = 2048;

/// Commits whose epochs are still being transmitted, before the list grows (it grows only if
/// more than this many committed epochs wait for TX at once).
const COMMITS_IN_FLIGHT: usize = 64;

/// The most frames a VM's queue reserves room for at start (16 bytes each); a buffer limit
/// above it grows the queue, amortised, the first time it is reached.
const QUEUE_RESERVE: u64 = 1 << 20;

/// The shortest Ethernet frame epochgate accepts from a VM (a header).
pub const MIN_FRAME: u64 = 14;

/// A frame in a VM's queue, with the TSC of its arrival (for the hold-time histogram) and
/// its length, read once on arrival: the queue, the scheduler and TX accounting weigh a held
/// frame without touching it again (an mbuf held for an epoch is out of the cache by the time
/// it is released; measured with `epochgate-perf passthrough --protected`).
#[derive(Debug)]
pub struct Held<F> {
    pub frame: F,
    pub at: u64,
    len: u32,
}

impl<F: Weighed> Held<F> {
    #[inline]
    pub fn new(frame: F, at: u64) -> Self {
        // A frame is at most a jumbo mbuf chain, far below 4 GiB.
        let len = u32::try_from(frame.bytes()).unwrap_or(u32::MAX);
        Held { frame, at, len }
    }

    /// The frame's length as it was on arrival.
    #[inline]
    pub fn wire_len(&self) -> u32 {
        self.len
    }
}

impl<F> Weighed for Held<F> {
    #[inline]
    fn bytes(&self) -> u64 {
        u64::from(self.len)
    }
}

/// What a VM port seen empty during a fence proves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DrainProof {
    /// Everything the paused guest sent is in the port's ring: the ring is shared memory
    /// between the guest and epochgate (vhost-user, memif, virtio-user) or a finite
    /// in-process source (a pcap file, net_ring, net_null). Empty is final: the fence seals.
    #[default]
    Final,
    /// A frame the guest sent before it was paused may still be in the kernel or the hardware
    /// (net_tap, net_tun, net_af_packet, net_af_xdp, a pcap port reading an interface,
    /// virtio-user on the kernel's vhost-net, a bond, a PCI NIC): the fence seals once the port
    /// stayed empty for the settle time, and is counted as `fences_unproven`. A frame delayed
    /// longer goes to the next epoch, which is safe.
    Unproven,
}

impl DrainProof {
    /// What a port of this kind proves when seen empty.
    pub fn of(spec: &crate::config::PortSpec) -> DrainProof {
        use crate::config::PortSpec;
        match spec {
            PortSpec::Pci { .. } => DrainProof::Unproven,
            PortSpec::Vdev { spec, name } => {
                let kv = || spec.split(',').skip(1);
                // The kernel (tap/tun, af_packet, af_xdp, a pcap interface, vhost-net behind
                // virtio-user) or other ports behind it (bonding) may still hold a frame.
                let kernel = [
                    "net_tap",
                    "net_tun",
                    "net_af_packet",
                    "net_af_xdp",
                    "net_bonding",
                ]
                .iter()
                .any(|d| name.starts_with(d))
                    || (name.starts_with("net_pcap")
                        && kv().any(|kv| kv.starts_with("iface=") || kv.starts_with("rx_iface")))
                    || (name.starts_with("net_virtio_user")
                        && kv().any(|kv| kv.starts_with("path=/dev/")));
                if kernel {
                    DrainProof::Unproven
                } else {
                    DrainProof::Final
                }
            }
        }
    }
}

/// How long a port whose emptiness proves nothing must stay empty before a fence seals: the
/// time a frame the guest sent just before it was paused may spend in the kernel (a qdisc, a
/// softirq) on a loaded host, within reason: the guest stays paused meanwhile.
pub const SETTLE_US: u64 = 200;

/// TSC ticks to nanoseconds by a multiply and a shift (a division would cost more than the
/// rest of a histogram record).
#[derive(Debug, Clone, Copy)]
pub struct Nanos {
    /// Nanoseconds per tick, in 32.32 fixed point.
    mult: u128,
}

impl Nanos {
    pub fn new(hz: u64) -> Nanos {
        Nanos {
            mult: (1_000_000_000u128 << 32) / u128::from(hz.max(1)),
        }
    }

    #[inline]
    pub fn of(self, ticks: u64) -> u64 {
        u64::try_from((u128::from(ticks) * self.mult) >> 32).unwrap_or(u64::MAX)
    }
}

/// What a VM is configured with, times in TSC ticks.
#[derive(Debug, Clone, Copy)]
pub struct VmSettings {
    pub mode: crate::config::Mode,
    pub limits: BufferLimits,
    pub drain: DrainProof,
    /// The request policy (its high-water marks are taken from `limits`).
    pub policy: PolicyConfig,
    /// How long a fence may drain the paused VM's ingress.
    pub fence_drain_ticks: u64,
    pub tsc_hz: u64,
}

/// Why a command was refused. Refusing changes nothing: every check comes before the first
/// change. The control thread turns it into the protocol's error with [`Refusal::reply`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A fence is already draining this VM.
    Busy,
    /// The command needs a protected VM.
    NotProtected { mode: Mode, what: &'static str },
    /// The command is not allowed in this mode (standby, failed, or promote of a live VM).
    WrongMode { mode: Mode, what: &'static str },
    /// The epoch queue refused it.
    Epoch(EpochError),
}

impl Refusal {
    /// The protocol's error for it.
    pub fn reply(&self) -> Reply {
        let code = match self {
            Refusal::Busy => ErrorCode::Busy,
            Refusal::NotProtected { .. } => ErrorCode::NotProtected,
            Refusal::WrongMode { .. } => ErrorCode::WrongMode,
            Refusal::Epoch(EpochError::NotProtected) => ErrorCode::NotProtected,
            Refusal::Epoch(EpochError::NotSealed { .. }) => ErrorCode::NotSealed,
            Refusal::Epoch(_) => ErrorCode::WrongEpoch,
        };
        Reply::error(code, self.to_string())
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Busy => f.write_str("a fence is already draining this VM"),
            Refusal::NotProtected { mode, what } => {
                write!(f, "cannot {what}: the VM is {mode}, not protected")
            }
            Refusal::WrongMode { mode, what } => {
                let why = match mode {
                    Mode::Standby => "it is a standby copy: promote it first",
                    Mode::Failed => "it is failed: adopt it with Hello first",
                    Mode::Passthrough | Mode::Protected => "only a standby copy can be promoted",
                };
                write!(f, "cannot {what} while the VM is {mode}: {why}")
            }
            Refusal::Epoch(e) => e.fmt(f),
        }
    }
}

/// The core's answer to a command or an event for the VM's controller.
pub type Outcome = Result<Reply, Refusal>;

/// Where a core's answers, events and measurements go (the worker's rings and meters; a
/// recorder in tests).
pub trait Sink {
    /// An answer to `session`'s command, or (`session == EVENT`) an event for the VM's owner.
    fn tell(&mut self, session: u64, outcome: Outcome);
    /// A fence sealed after draining for `ns` nanoseconds.
    fn fence_drained(&mut self, ns: u64);
    /// The last frame of a commit left, `ns` nanoseconds after the commit.
    fn commit_on_wire(&mut self, ns: u64);
}

/// Event counters of a VM (plain numbers; the worker publishes them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VmEvents {
    pub epochs_sealed: u64,
    pub epochs_committed: u64,
    pub epochs_discarded: u64,
    pub fences_cut_short: u64,
    pub fences_unproven: u64,
    /// Times the buffer filled and the port stopped being read.
    pub backpressure: u64,
    /// Checkpoint requests by [`Why`] (immediate frame, deferral expired, high water).
    pub requests: [u64; 3],
}

/// A fence in progress: the VM's ingress is being drained.
#[derive(Debug, Clone, Copy)]
struct Fencing {
    epoch: u64,
    session: u64,
    started: u64,
    deadline: u64,
    /// Since when the port has been seen empty without a frame since (ports whose emptiness
    /// proves nothing must stay empty for [`SETTLE_US`]).
    empty_since: Option<u64>,
}

/// One VM: see the module documentation.
#[derive(Debug)]
pub struct VmCore<F> {
    mode: Mode,
    /// Frames waiting for egress, in the order the VM sent them: what is releasable at the
    /// front, then sealed epochs, then the open one.
    queue: EpochQueue<Held<F>>,
    limits: BufferLimits,
    policy: RequestPolicy,
    fencing: Option<Fencing>,
    drain: DrainProof,
    fence_drain_ticks: u64,
    settle_ticks: u64,
    ns: Nanos,
    ledger: Ledger,
    /// Frames of this queue transmitted, and the commits whose last frame has not been
    /// transmitted yet: (release point after the commit, TSC of the commit).
    sent: u64,
    commits: VecDeque<(u64, u64)>,
    /// Backpressure is on (the port is not being read): counted once per episode.
    full: bool,
    events: VmEvents,
    /// The latest time this core was told (every call with `now` moves it forward).
    clock: u64,
    /// Released frames that took the direct path (they never entered the queue, which counts
    /// the others).
    direct: Count,
}

impl<F: Weighed> VmCore<F> {
    /// A VM in its configured mode at `now`; a protected VM starts in epoch 1.
    pub fn new(s: VmSettings, now: u64) -> Self {
        // Reserved for the whole buffer limit: the queue never reallocates on the worker.
        let mut queue = EpochQueue::new(s.limits.max_frames.min(QUEUE_RESERVE) as usize);
        let mode = match s.mode {
            crate::config::Mode::Passthrough => Mode::Passthrough,
            crate::config::Mode::Protected => {
                queue.protect();
                Mode::Protected
            }
            crate::config::Mode::Standby => Mode::Standby,
        };
        let policy = RequestPolicy::new(
            PolicyConfig {
                high_water_frames: s.limits.high_water_frames,
                high_water_bytes: s.limits.high_water_bytes,
                ..s.policy
            },
            now,
        );
        VmCore {
            mode,
            queue,
            limits: s.limits,
            policy,
            fencing: None,
            drain: s.drain,
            fence_drain_ticks: s.fence_drain_ticks,
            settle_ticks: s.tsc_hz / 1_000_000 * SETTLE_US,
            ns: Nanos::new(s.tsc_hz),
            ledger: Ledger::default(),
            sent: 0,
            commits: VecDeque::with_capacity(COMMITS_IN_FLIGHT),
            full: false,
            events: VmEvents::default(),
            clock: now,
            direct: Count::default(),
        }
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Whether it sends (inbound frames are delivered to it): passthrough or protected.
    pub fn active(&self) -> bool {
        matches!(self.mode, Mode::Passthrough | Mode::Protected)
    }

    pub fn fencing(&self) -> bool {
        self.fencing.is_some()
    }

    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    pub fn events(&self) -> &VmEvents {
        &self.events
    }

    pub fn queue(&self) -> &EpochQueue<Held<F>> {
        &self.queue
    }

    pub fn limits(&self) -> &BufferLimits {
        &self.limits
    }

    /// The earliest TSC at which [`VmCore::tick`] has something to do (a deferral deadline, a
    /// postponed request, a fence's drain deadline); `None`: nothing.
    pub fn next_wakeup(&self) -> Option<u64> {
        let policy = (self.mode == Mode::Protected)
            .then(|| self.policy.next_wakeup())
            .flatten();
        let fence = self.fencing.map(|f| f.deadline.saturating_add(1));
        match (policy, fence) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Bytes in the queue (held and released).
    #[inline]
    fn queued_bytes(&self) -> u64 {
        self.queue.releasable_bytes() + self.queue.held().bytes
    }

    /// How many frames the poll loop may read from the VM's port now (at most `max`). Under
    /// backpressure that is what fits (a frame is reserved [`FRAME_ROOM`] bytes): none when
    /// the buffer is full, which starts a backpressure episode and cuts a fence short (what is
    /// left in the guest goes to the next epoch, which is safe). With `on_full = drop` it is
    /// always `max`: what does not fit is dropped (counted) on arrival.
    #[inline]
    pub fn read_budget<S: Sink>(&mut self, max: usize, now: u64, sink: &mut S) -> usize {
        self.at(now);
        if self.limits.on_full == OnFull::Drop {
            return max;
        }
        let frames = self
            .limits
            .max_frames
            .saturating_sub(self.queue.len() as u64);
        let room = if self.limits.max_bytes == 0 {
            frames
        } else {
            let bytes = self.limits.max_bytes.saturating_sub(self.queued_bytes());
            frames.min(bytes / FRAME_ROOM)
        };
        let room = room.min(max as u64) as usize;
        if room == 0 {
            if !self.full {
                self.full = true;
                self.events.backpressure += 1;
            }
            if self.fencing.is_some() {
                self.seal(true, sink);
            }
        } else {
            self.full = false;
        }
        room
    }

    /// Whether `frames` more frames of `bytes` bytes in all stay within both limits (so none
    /// of them would be over one on arrival).
    #[inline]
    fn fits(&self, frames: u64, bytes: u64) -> bool {
        self.queue.len() as u64 + frames <= self.limits.max_frames
            && (self.limits.max_bytes == 0 || self.queued_bytes() + bytes <= self.limits.max_bytes)
    }

    /// A frame the VM sent, at `now`: held (protected), ready (passthrough) or dropped under a
    /// named reason; counted as received either way. `classify` is asked, for a protected VM's
    /// frame only, how soon a checkpoint is needed; a request it leads to goes to `sink`.
    #[inline]
    pub fn receive<S: Sink>(
        &mut self,
        frame: F,
        now: u64,
        classify: impl FnOnce(&F) -> FrameKind,
        sink: &mut S,
    ) {
        self.at(now);
        let len = frame.bytes();
        if let Some(f) = self.fencing.as_mut() {
            // A frame of the VM: its port is not empty yet.
            f.empty_since = None;
        }
        let drop = if len < MIN_FRAME {
            Some(DropReason::Runt)
        } else {
            match self.mode {
                Mode::Standby => Some(DropReason::Standby),
                Mode::Failed => Some(DropReason::Failed),
                // (Under backpressure the port was read only as far as there was room.)
                _ if self.limits.on_full == OnFull::Drop && !self.fits(1, len) => {
                    Some(DropReason::BufferFull)
                }
                _ => None,
            }
        };
        if let Some(reason) = drop {
            self.ledger.received(1, len, Place::Dropped(reason));
            return; // the frame is freed here
        }
        if self.mode == Mode::Protected {
            let kind = classify(&frame);
            self.queue.push(Held::new(frame, now));
            self.ledger.received(1, len, Place::Held);
            let r =
                self.policy
                    .on_frame_sized(now, kind, self.queue.len() as u64, self.queued_bytes());
            if let Some(r) = r {
                self.request(r.why, sink);
            }
        } else {
            self.queue.push(Held::new(frame, now));
            self.ledger.received(1, len, Place::Ready);
        }
        self.check();
    }

    /// A burst of frames the VM sent, all at `now`: `whole` counts them and `shortest` is the
    /// length of the shortest. Exactly what [`receive`](Self::receive) of each frame in order
    /// does, with what holds for the whole burst decided once: the clock, the fence's
    /// port-not-empty, the mode, the buffer limit (when the whole burst fits, no frame of it
    /// can be over) and the ledger, moved once. A burst of which a frame may be dropped (a
    /// runt, a VM that cannot send, a limit it would cross) goes frame by frame.
    #[inline]
    pub fn receive_burst<S: Sink>(
        &mut self,
        frames: impl IntoIterator<Item = F>,
        whole: Count,
        shortest: u64,
        now: u64,
        mut classify: impl FnMut(&F) -> FrameKind,
        sink: &mut S,
    ) {
        let kept = match self.mode {
            Mode::Protected => Some(Place::Held),
            Mode::Passthrough => Some(Place::Ready),
            Mode::Standby | Mode::Failed => None,
        };
        let fits = self.limits.on_full != OnFull::Drop || self.fits(whole.frames, whole.bytes);
        let Some(to) = kept.filter(|_| fits && shortest >= MIN_FRAME) else {
            for frame in frames {
                self.receive(frame, now, &mut classify, sink);
            }
            return;
        };
        self.at(now);
        if let Some(f) = self.fencing.as_mut() {
            f.empty_since = None;
        }
        let (mut n, mut bytes) = (0u64, 0u64);
        for frame in frames {
            (n, bytes) = (n + 1, bytes + frame.bytes());
            let kind = (to == Place::Held).then(|| classify(&frame));
            self.queue.push(Held::new(frame, now));
            // Once this epoch's request went out, the policy has nothing to say until the
            // fence (`on_frame_sized` would return at once): no call per frame.
            let Some(kind) = kind.filter(|_| !self.policy.requested()) else {
                continue;
            };
            let (held, held_bytes) = (self.queue.len() as u64, self.queued_bytes());
            if let Some(r) = self.policy.on_frame_sized(now, kind, held, held_bytes) {
                self.request(r.why, sink);
            }
        }
        debug_assert_eq!((n, bytes), (whole.frames, whole.bytes), "the burst's count");
        self.ledger.received(n, bytes, to);
        self.check();
    }

    fn request<S: Sink>(&mut self, why: Why, sink: &mut S) {
        self.events.requests[why as usize] += 1;
        sink.tell(
            EVENT,
            Ok(Reply::CheckpointRequest {
                epoch: self.queue.open_epoch().unwrap_or(0),
                urgency: Urgency::Now,
                reason: why.into(),
            }),
        );
    }

    /// The VM's port was seen empty at `now` (the paused guest sent everything): a fence in
    /// progress seals, at once if that is final, else once the port stayed empty for
    /// [`SETTLE_US`].
    pub fn seen_empty<S: Sink>(&mut self, now: u64, sink: &mut S) {
        self.at(now);
        let Some(f) = self.fencing.as_mut() else {
            return;
        };
        if self.drain == DrainProof::Unproven {
            let since = *f.empty_since.get_or_insert(now);
            if now.saturating_sub(since) < self.settle_ticks {
                return;
            }
        }
        self.seal(false, sink);
    }

    /// Timers due at `now`: a fence past its drain deadline seals with what it has; the request
    /// policy's deferral deadline or postponed request.
    pub fn tick<S: Sink>(&mut self, now: u64, sink: &mut S) {
        self.at(now);
        if self.fencing.is_some_and(|f| now > f.deadline) {
            self.seal(true, sink);
        }
        if self.mode == Mode::Protected && self.policy.next_wakeup().is_some_and(|t| t <= now) {
            if let Some(r) = self.policy.poll(now) {
                self.request(r.why, sink);
            }
        }
    }

    /// Ends the fence: seals the open epoch and answers `Fenced` (or why it could not: the VM
    /// left protection, or a new protection period began, while the fence drained).
    fn seal<S: Sink>(&mut self, cut_short: bool, sink: &mut S) {
        let Some(f) = self.fencing.take() else { return };
        if cut_short {
            self.events.fences_cut_short += 1;
        } else if self.drain == DrainProof::Unproven {
            self.events.fences_unproven += 1;
        }
        // The drain ends when the seal is decided; the clock is the caller's, so the drain
        // time is measured to the latest time this core was told (the deadline at most).
        let end = self.clock.max(f.started);
        let drain_ns = self.ns.of(end.saturating_sub(f.started));
        sink.fence_drained(drain_ns);
        let outcome = match self.queue.fence(f.epoch) {
            Ok(s) => {
                self.events.epochs_sealed += 1;
                Ok(Reply::Fenced {
                    epoch: f.epoch,
                    frames: s.frames,
                    bytes: s.bytes,
                    drain_ns,
                })
            }
            Err(e) => Err(Refusal::Epoch(e)),
        };
        self.policy.on_fence(end);
        self.check();
        sink.tell(f.session, outcome);
    }

    #[inline]
    fn at(&mut self, now: u64) {
        self.clock = self.clock.max(now);
    }

    /// Carries out a command of `session` at `now`. The answer goes to `sink`, except for a
    /// fence (answered when it seals) and `Fail` (never answered). `Promoted` says 0
    /// announcements: the poll loop sends them (it has the mbufs) and says how many.
    pub fn execute<S: Sink>(&mut self, op: Op, session: u64, now: u64, sink: &mut S) {
        self.at(now);
        let outcome = match op {
            Op::Adopt => {
                if self.mode == Mode::Failed {
                    // A new controller: protection starts again in a new, empty epoch.
                    self.enter_protected(now);
                }
                Ok(Reply::Welcome {
                    epoch: self.queue.open_epoch().unwrap_or(0),
                    mode: self.mode,
                })
            }
            Op::Protect => match self.mode {
                Mode::Passthrough | Mode::Protected => Ok(Reply::Protected {
                    epoch: self.enter_protected(now),
                }),
                mode => Err(Refusal::WrongMode {
                    mode,
                    what: "protect",
                }),
            },
            Op::Fence(epoch) => match self.start_fence(epoch, session, now) {
                Ok(()) => return,
                Err(r) => Err(r),
            },
            Op::Commit(epoch) => self.commit(epoch, now),
            Op::Unprotect(how) => self.unprotect(how),
            Op::Discard => match self.mode {
                Mode::Protected => Ok(Reply::Discarded {
                    frames: self.drop_held(DropReason::Discarded, false),
                }),
                mode => Err(Refusal::NotProtected {
                    mode,
                    what: "discard",
                }),
            },
            Op::Promote(to) => self.promote(to, now),
            Op::Demote => Ok(Reply::Demoted {
                dropped: self.demote(),
            }),
            Op::Fail => {
                self.fail();
                return;
            }
        };
        self.check();
        sink.tell(session, outcome);
    }

    /// Protects the VM (if it is not yet) in a new epoch with a fresh request policy; returns
    /// the open epoch.
    fn enter_protected(&mut self, now: u64) -> u64 {
        if self.mode != Mode::Protected {
            self.policy = RequestPolicy::new(self.policy.config(), now);
        }
        self.mode = Mode::Protected;
        self.queue.protect()
    }

    fn start_fence(&mut self, epoch: u64, session: u64, now: u64) -> Result<(), Refusal> {
        if self.fencing.is_some() {
            return Err(Refusal::Busy);
        }
        if self.mode != Mode::Protected {
            return Err(Refusal::NotProtected {
                mode: self.mode,
                what: "fence",
            });
        }
        match self.queue.open_epoch() {
            Some(open) if open == epoch => {}
            // Not the open epoch: the queue refuses it (without a change) and says why.
            _ => {
                return Err(Refusal::Epoch(
                    self.queue
                        .check_fence(epoch)
                        .expect_err("a fence of an epoch that is not open"),
                ))
            }
        }
        self.fencing = Some(Fencing {
            epoch,
            session,
            started: now,
            deadline: now.saturating_add(self.fence_drain_ticks),
            empty_since: None,
        });
        Ok(())
    }

    fn commit(&mut self, epoch: u64, now: u64) -> Outcome {
        let c = self.queue.commit(epoch).map_err(Refusal::Epoch)?;
        self.events.epochs_committed += 1;
        self.ledger.moved(Place::Held, Place::Ready, c.frames, 0);
        if c.frames > 0 {
            self.commits.push_back((self.queue.released_total(), now));
        }
        Ok(Reply::Committed {
            epoch,
            frames: c.frames,
        })
    }

    fn unprotect(&mut self, how: Release) -> Outcome {
        if self.mode != Mode::Protected {
            return Err(Refusal::NotProtected {
                mode: self.mode,
                what: "unprotect",
            });
        }
        let reply = match how {
            Release::Release => {
                let n = self.queue.unprotect(how);
                self.ledger.moved(Place::Held, Place::Ready, n.frames, 0);
                Reply::Unprotected {
                    released: n.frames,
                    dropped: 0,
                }
            }
            Release::Drop => Reply::Unprotected {
                released: 0,
                dropped: self.drop_held(DropReason::UnprotectDrop, true),
            },
        };
        self.mode = Mode::Passthrough;
        Ok(reply)
    }

    fn promote(&mut self, to: Mode, now: u64) -> Outcome {
        if self.mode != Mode::Standby {
            return Err(Refusal::WrongMode {
                mode: self.mode,
                what: "promote",
            });
        }
        match to {
            Mode::Protected => {
                self.enter_protected(now);
            }
            Mode::Passthrough => self.mode = Mode::Passthrough,
            // The protocol's decoder refuses any other target; nothing changes if one came.
            mode => {
                return Err(Refusal::WrongMode {
                    mode,
                    what: "promote to",
                })
            }
        }
        Ok(Reply::Promoted {
            mode: to,
            announced: 0,
        })
    }

    /// Back to standby: everything held or ready is dropped (its output is the other host's
    /// now); frames already staged for TX were released and may still leave. Returns the
    /// frames dropped.
    fn demote(&mut self) -> u64 {
        if self.mode == Mode::Standby {
            return 0;
        }
        // (No fence can be draining: the session waits for a fence's answer before it sends
        // anything else. Cleared anyway, as for Fail.)
        self.fencing = None;
        let mut dropped = 0;
        if self.mode == Mode::Protected {
            // Its epochs end here; none of them may leave from this host any more.
            dropped += self.drop_held(DropReason::Demoted, true);
        }
        dropped += self.drop_ready(DropReason::Demoted);
        self.mode = Mode::Standby;
        dropped
    }

    /// The controller went away: a protected VM fails and what it held is discarded (a new
    /// controller starts after all of its epochs).
    fn fail(&mut self) {
        self.fencing = None;
        if self.mode == Mode::Protected {
            self.drop_held(DropReason::ControllerLost, true);
            self.mode = Mode::Failed;
        }
        self.check();
    }

    /// Drops everything held (sealed epochs and the open one) under `reason`; with `end`,
    /// protection ends too (its epochs can never be committed). Returns the frames.
    fn drop_held(&mut self, reason: DropReason, end: bool) -> u64 {
        self.events.epochs_discarded += self.queue.outstanding();
        let n = if end {
            self.queue.unprotect(Release::Drop)
        } else {
            self.queue.discard()
        };
        self.ledger
            .moved(Place::Held, Place::Dropped(reason), n.frames, 0);
        n.frames
    }

    /// Drops the released frames still waiting for egress under `reason`; returns how many.
    fn drop_ready(&mut self, reason: DropReason) -> u64 {
        let n = self.queue.drain_released(usize::MAX).count() as u64;
        self.ledger
            .moved(Place::Ready, Place::Dropped(reason), n, 0);
        n
    }

    /// Frames (bytes) ever released: by the queue, or on the direct path.
    pub fn released_total(&self) -> Count {
        Count {
            frames: self.queue.released_total() + self.direct.frames,
            bytes: self.queue.released_total_bytes() + self.direct.bytes,
        }
    }

    /// Whether a burst just read may skip the queue and go to TX at once (the poll loop's
    /// direct path, when nothing else waits for egress): the VM passes through, holds nothing
    /// and no fence drains it. Its order is kept because nothing of it is queued.
    #[inline]
    pub fn direct(&self) -> bool {
        self.mode == Mode::Passthrough && self.queue.is_empty() && self.fencing.is_none()
    }

    /// `frames` frames (`bytes`) were received on the direct path: they are staged for TX.
    #[inline]
    pub fn received_direct(&mut self, frames: u64, bytes: u64) {
        debug_assert!(self.direct());
        self.ledger.received(frames, bytes, Place::Staged);
    }

    /// Of a direct burst, TX took `frames` frames (`bytes`).
    #[inline]
    pub fn transmitted_direct<S: Sink>(&mut self, frames: u64, bytes: u64, now: u64, _: &mut S) {
        self.at(now);
        self.direct.frames += frames;
        self.direct.bytes += bytes;
        self.ledger
            .moved(Place::Staged, Place::Transmitted, frames, bytes);
    }

    /// What TX did not take of a direct burst goes into the queue (empty before, so these
    /// frames are first in line and keep their order), released.
    pub fn requeue_direct(&mut self, frames: impl Iterator<Item = F>, now: u64) {
        let mut n = 0;
        for frame in frames {
            self.queue.push(Held::new(frame, now));
            n += 1;
        }
        self.ledger.moved(Place::Staged, Place::Ready, n, 0);
        self.check();
    }

    /// If every frame the VM sends now is dropped whatever it is (standby, failed), the reason:
    /// the poll loop then drops a whole burst at once ([`VmCore::received_dropped`]).
    #[inline]
    pub fn refuses_all(&self) -> Option<DropReason> {
        match self.mode {
            Mode::Standby => Some(DropReason::Standby),
            Mode::Failed => Some(DropReason::Failed),
            _ => None,
        }
    }

    /// `frames` frames (`bytes`), none of them a runt, were received and dropped for `reason`
    /// (from [`VmCore::refuses_all`]); the caller frees them.
    pub fn received_dropped(&mut self, frames: u64, bytes: u64, reason: DropReason) {
        self.ledger.received(frames, bytes, Place::Dropped(reason));
    }

    /// Released frames waiting for egress.
    #[inline]
    pub fn releasable(&self) -> usize {
        self.queue.releasable()
    }

    /// The length of the next released frame, if any (what the scheduler weighs).
    #[inline]
    pub fn front_len(&self) -> Option<u64> {
        self.queue.front_released().map(Weighed::bytes)
    }

    /// Takes released frames for the egress TX burst, in order: while fewer than `max_frames`
    /// and fewer than `max_bytes` bytes were taken. They are staged until
    /// [`VmCore::transmitted`] or [`VmCore::unstaged`] says what became of them.
    #[inline]
    pub fn take_run(&mut self, max_frames: usize, max_bytes: u64) -> (Drain<'_, Held<F>>, Count) {
        let (run, n) = self.queue.drain_run(max_frames, max_bytes);
        self.ledger.moved(Place::Ready, Place::Staged, n.frames, 0);
        (run, n)
    }

    /// The next `frames` staged frames (`bytes` bytes) were taken by TX at `now`: counted, and
    /// each commit whose last frame that was reports its commit-to-wire time to `sink`.
    #[inline]
    pub fn transmitted<S: Sink>(&mut self, frames: u64, bytes: u64, now: u64, sink: &mut S) {
        self.at(now);
        self.ledger
            .moved(Place::Staged, Place::Transmitted, frames, bytes);
        self.sent += frames;
        while let Some(&(end, at)) = self.commits.front() {
            if self.sent < end {
                break;
            }
            self.commits.pop_front();
            sink.commit_on_wire(self.ns.of(now.saturating_sub(at)));
        }
    }

    /// `frames` staged frames will never be transmitted (the process stops): dropped under
    /// `reason`. (The caller frees them.)
    pub fn unstaged(&mut self, frames: u64, reason: DropReason) {
        self.ledger
            .moved(Place::Staged, Place::Dropped(reason), frames, 0);
    }

    /// The process stops: held output can never be proven committed any more, so it is
    /// discarded (`uncommitted-at-exit`); a fence in progress is abandoned (the control thread
    /// tells the sessions why). Released output may still leave until [`VmCore::stop_ready`].
    pub fn stop_held(&mut self) {
        self.fencing = None;
        self.drop_held(DropReason::Uncommitted, false);
        self.check();
    }

    /// The exit deadline passed: released output still waiting is dropped (`shutdown`).
    pub fn stop_ready(&mut self) {
        self.drop_ready(DropReason::Shutdown);
        self.check();
    }

    /// Invariant 4 against the queue: the ledger's held and ready frames are the queue's (the
    /// ledger balances by construction). Debug builds check it after every change; tests call
    /// it after every step.
    #[inline]
    pub fn check(&self) {
        debug_assert!(
            self.agrees(),
            "ledger {:?} vs queue held {:?} ready {}",
            self.ledger,
            self.queue.held(),
            self.queue.releasable()
        );
    }

    /// Whether the ledger agrees with the queue and balances.
    pub fn agrees(&self) -> bool {
        self.ledger.held == self.queue.held().frames
            && self.ledger.ready == self.queue.releasable() as u64
            && self.ledger.balanced()
    }
}

#[cfg(test)]
mod tests;
