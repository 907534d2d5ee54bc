//! The poll loop of one worker lcore. It owns its VMs and one queue of every port, so nothing
//! here locks, allocates or makes a syscall in a round, except one `write` to the control
//! thread's eventfd in a round that answered something.
//!
//! Each round: control commands (only if the ring is not empty) -> VM ports and the shared
//! ingress -> each VM's core ([`crate::hold::vm`]: modes, epochs, limits, requests, ledger) ->
//! round robin over what the cores may release into the egress stage -> tx burst; and the
//! uplink -> each destination VM's port, unbuffered. A frame TX did not take stays at the head
//! of its stage for the next round, so nothing is dropped because a ring was momentarily full.
//!
//! Everything a VM does is its core's; this loop only moves frames between ports and cores,
//! and never transmits anything a core did not hand out ([`VmCore::take_run`]). The one
//! shortcut is the direct path: a pass-through VM without a regulator whose core holds
//! nothing, while nothing else waits for egress, sends a burst straight from RX to TX (what
//! TX does not take goes into its core, at the head) - the same order and accounting, without
//! the queue.

use crate::classify::{Classifier, VmDefer, WindowTable};
use crate::config::RateLimit;
use crate::control::{Answer, Command, Mode, Op, Reply, Rings};
use crate::dpdk::{free_all, tsc, Burst, Mbuf, Mempool, RxQueue, TxQueue, BURST};
use crate::egress::sched::{Backlog, Bucket, Class, Regulator, SchedConfig, Scheduler};
use crate::hold::epoch::{Count, Weighed};
use crate::hold::policy::{FrameKind, PolicyConfig};
use crate::hold::vm::{Nanos, Outcome, Sink, VmCore, VmSettings, MIN_FRAME};
use crate::ingress::demux::{Attach, Demux, Inbound, Source, VmIdx};
use crate::stats::meter::{self, MeterHub, VmHistograms, WorkerMeter};
use crate::stats::{DropReason, EgressCounters, PortCounters, VmCounters, Waiting, WorkerCounters};
use crate::wire::frame::{self, MacAddr};
use arrayvec::ArrayVec;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;

pub use crate::hold::vm::DrainProof;

impl Weighed for Mbuf {
    #[inline]
    fn bytes(&self) -> u64 {
        self.len() as u64
    }
}

/// How often a VM whose counters changed is published, at most: fresh enough for any reader
/// (stats, the admin socket, the control thread's `Stats` answers), rare enough to cost nothing
/// per round. Commands and `meter::PUBLISH_MS` publish at once.
const VM_PUBLISH_US: u64 = 50;

/// Inbound frames waiting for one port's TX.
const INBOUND_STAGE: usize = 128;
/// Announcements (of promoted VMs) waiting for the egress TX.
const NOTICE_STAGE: usize = 64;

/// What a port is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortRole {
    /// TX: everything the VMs send. RX: the uplink (inbound path).
    Egress,
    /// Shared by several VMs, each recognised by source MAC (+ VLAN).
    Ingress,
    /// One VM's own port (vhost-user in production).
    Vm,
}

impl PortRole {
    pub fn name(self) -> &'static str {
        match self {
            PortRole::Egress => "egress",
            PortRole::Ingress => "ingress",
            PortRole::Vm => "vm",
        }
    }
}

/// A port as one worker sees it: its queues and its inbound stage.
pub struct WorkerPort {
    pub rx: RxQueue,
    pub tx: TxQueue,
    pub counters: Arc<PortCounters>,
    inbound: ArrayVec<Mbuf, INBOUND_STAGE>,
    /// Bytes in `inbound`, so TX accounting does not walk the stage every round.
    inbound_bytes: u64,
}

impl WorkerPort {
    pub fn new(rx: RxQueue, tx: TxQueue, counters: Arc<PortCounters>) -> Self {
        WorkerPort {
            rx,
            tx,
            counters,
            inbound: ArrayVec::new(),
            inbound_bytes: 0,
        }
    }
}

/// A VM as its worker sees it: its core, where it is attached, and what the poll loop needs
/// besides (its counters, rate, announcements, classification).
pub struct WorkerVm {
    core: VmCore<Mbuf>,
    /// What the core is built from (completed by [`Worker::new`] with the worker's times).
    settings: VmSettings,
    /// Index of its own port, or `None` on the shared ingress.
    pub port: Option<usize>,
    pub mac: Option<MacAddr>,
    pub vlan: Option<u16>,
    pub counters: Arc<VmCounters>,
    /// The regulator's configuration (the buckets themselves live in the scheduler).
    rate: RateLimit,
    /// Frames that announce its addresses when it is promoted (built from the config), how
    /// many rounds of them a promotion sends and how far apart (ms, then TSC ticks).
    announce: Vec<Vec<u8>>,
    announce_rounds: u32,
    announce_ms: u64,
    announce_every: u64,
    /// Rounds still to send after a promotion, and when the next one is due.
    announce_left: u32,
    announce_next: u64,
    /// For the classifier: its name (rules may name it) and its deferral setting.
    name: String,
    defer: VmDefer,
    /// The open epoch as last seen by `publish_meter`, and the TSC at which it was first seen
    /// there (for the epoch's age, to within `meter::PUBLISH_MS`).
    seen_epoch: Option<u64>,
    seen_epoch_at: u64,
    /// Something changed since the counters were last published.
    dirty: bool,
    /// Frames sent on the direct path whose hold time (none) is not in the histogram yet.
    direct_unrecorded: u64,
}

impl WorkerVm {
    pub fn new(
        mode: crate::config::Mode,
        port: Option<usize>,
        mac: Option<MacAddr>,
        vlan: Option<u16>,
        limits: crate::config::BufferLimits,
        counters: Arc<VmCounters>,
    ) -> Self {
        if let Some(m) = mac {
            counters.mac.set(mac_to_u64(m));
        }
        let settings = VmSettings {
            mode,
            limits,
            drain: DrainProof::Final,
            policy: PolicyConfig::default(),
            fence_drain_ticks: 0,
            tsc_hz: 1,
        };
        let vm = WorkerVm {
            core: VmCore::new(settings, 0),
            settings,
            port,
            mac,
            vlan,
            counters,
            rate: RateLimit::default(),
            announce: Vec::new(),
            announce_rounds: 1,
            announce_ms: 0,
            announce_every: 0,
            announce_left: 0,
            announce_next: u64::MAX,
            name: String::new(),
            defer: VmDefer::Builtin,
            seen_epoch: None,
            seen_epoch_at: 0,
            dirty: false,
            direct_unrecorded: 0,
        };
        vm.publish();
        vm
    }

    /// Frames sent on the VM's behalf when it is promoted: `rounds` times, `interval_ms`
    /// apart (the first at once, ahead of any output).
    pub fn with_announcements(
        mut self,
        frames: Vec<Vec<u8>>,
        rounds: u32,
        interval_ms: u64,
    ) -> Self {
        self.announce = frames;
        self.announce_rounds = rounds.max(1);
        self.announce_ms = interval_ms;
        self
    }

    /// When its next announcement round is due, if one is.
    fn announce_due(&self) -> Option<u64> {
        (self.announce_left > 0).then_some(self.announce_next)
    }

    /// What its port (its own, or the shared ingress) proves when seen empty during a fence.
    pub fn with_drain(mut self, drain: DrainProof) -> Self {
        self.settings.drain = drain;
        self
    }

    /// The VM's regulator (`rate_mbps` / `rate_pps`).
    pub fn with_rate(mut self, rate: RateLimit) -> Self {
        self.rate = rate;
        self
    }

    /// What the classifier needs: the VM's name and its `defer` setting.
    pub fn with_classification(mut self, name: &str, defer: VmDefer) -> Self {
        self.name = name.to_string();
        self.defer = defer;
        self
    }

    /// The scheduling class its released frames belong to.
    fn class(&self) -> Class {
        if self.core.mode() == Mode::Protected {
            Class::Released
        } else {
            Class::Passthrough
        }
    }

    /// Where it sends from: its own port, or the shared ingress.
    fn attach(&self) -> Attach {
        if self.port.is_some() {
            Attach::OwnPort
        } else {
            Attach::Shared
        }
    }

    fn regulated(&self) -> bool {
        self.rate.bytes_per_s > 0 || self.rate.pps > 0
    }

    /// Publishes the core's ledger with where its waiting frames are, its mode, epochs and
    /// event counters, as one unit (for stats and the control thread).
    fn publish(&self) {
        let c = &self.core;
        let q = c.queue();
        let l = c.ledger();
        let held = q.held();
        let w = Waiting {
            held_frames: held.frames,
            held_bytes: held.bytes,
            ready_frames: q.releasable() as u64,
            ready_bytes: q.releasable_bytes(),
            staged_frames: l.staged,
        };
        let e = c.events();
        self.counters.publish(l, w, |v| {
            v.mode.set(c.mode() as u64);
            v.open_epoch.set(q.open_epoch().unwrap_or(0));
            v.sealed_epoch.set(q.sealed_epoch());
            v.committed_epoch.set(q.committed_epoch());
            // The queue counts what it ever released, so no per-frame counter is needed.
            let released = c.released_total();
            v.released_frames.set(released.frames);
            v.released_bytes.set(released.bytes);
            v.epochs_sealed.set(e.epochs_sealed);
            v.epochs_committed.set(e.epochs_committed);
            v.epochs_discarded.set(e.epochs_discarded);
            v.fences_cut_short.set(e.fences_cut_short);
            v.fences_unproven.set(e.fences_unproven);
            v.backpressure.set(e.backpressure);
            v.requests.set_all(e.requests);
        });
    }
}

fn mac_to_u64(m: MacAddr) -> u64 {
    let b = m.0;
    u64::from_be_bytes([0, 0, b[0], b[1], b[2], b[3], b[4], b[5]])
}

/// Where one VM's core speaks: answers and events into the answer ring (or, when it is full,
/// the worker's overflow list, sent first next time: never lost), measurements into the VM's
/// histograms. A `Promoted` is held back for the poll loop, which sends the announcements and
/// then says how many.
struct Speaker<'a> {
    vm: VmIdx,
    rings: &'a Rings,
    unsent: &'a mut VecDeque<Answer>,
    meter: &'a mut VmHistograms,
    told: &'a mut bool,
    promoted: Option<(u64, Outcome)>,
}

impl Sink for Speaker<'_> {
    #[inline]
    fn tell(&mut self, session: u64, outcome: Outcome) {
        if matches!(outcome, Ok(Reply::Promoted { .. })) {
            self.promoted = Some((session, outcome));
            return;
        }
        let a = Answer {
            vm: self.vm,
            session,
            reply: outcome,
        };
        push_answer(self.rings, self.unsent, a);
        *self.told = true;
    }

    #[inline]
    fn fence_drained(&mut self, ns: u64) {
        meter::record(&mut self.meter.fence_drain, ns, 1);
    }

    #[inline]
    fn commit_on_wire(&mut self, ns: u64) {
        meter::record(&mut self.meter.commit_to_wire, ns, 1);
    }
}

fn push_answer(rings: &Rings, unsent: &mut VecDeque<Answer>, a: Answer) {
    if !unsent.is_empty() {
        unsent.push_back(a);
    } else if let Err(a) = rings.answers.push(a) {
        unsent.push_back(a);
    }
}

/// Gives VM `$vi`'s core a [`Speaker`] borrowing the worker's other fields.
macro_rules! speaker {
    ($w:ident, $vi:expr) => {
        Speaker {
            vm: $vi,
            rings: &$w.rings,
            unsent: &mut $w.unsent,
            meter: $w.meter.vm($vi),
            told: &mut $w.told,
            promoted: None,
        }
    };
}

/// What a worker shares with the rest of the process.
pub struct WorkerLinks {
    /// Set to stop the worker.
    pub quit: Arc<AtomicBool>,
    /// Commands in, answers and events out.
    pub rings: Arc<Rings>,
    /// For the frames the worker makes itself (announcements).
    pub pool: Arc<Mempool>,
    /// Where the latency histograms go, and each of this worker's VMs' index there (its index
    /// in the configuration).
    pub meter: Arc<MeterHub>,
    pub vm_ids: Vec<usize>,
    /// The scheduler's counters.
    pub egress: Arc<EgressCounters>,
    /// The poll loop's own counters (rounds, busy and idle cycles).
    pub counters: Arc<WorkerCounters>,
}

/// Times, in TSC ticks.
pub struct WorkerOptions {
    /// How long the worker keeps transmitting released output after it was told to stop.
    pub drain_ticks: u64,
    /// How long a fence may drain a paused VM's ingress.
    pub fence_drain_ticks: u64,
    pub tsc_hz: u64,
    /// The request policy, its times in TSC ticks.
    pub policy: PolicyConfig,
    /// The classifier, and the window table's (capacity, threshold) if window updates are on.
    pub classifier: Arc<Classifier>,
    pub windows: Option<(usize, u32)>,
    /// `[egress] passthrough_min_share`, in parts per million.
    pub passthrough_min_share_ppm: u32,
}

/// One worker: it owns its VMs and one queue of each port. Nothing in it refers to another
/// worker: its rings, meter, egress and loop counters are its own, and VM indices are its own
/// (the control thread maps them), so several workers can run side by side.
pub struct Worker {
    ports: Vec<WorkerPort>,
    vms: Vec<WorkerVm>,
    demux: Demux,
    egress: usize,
    ingress: Option<usize>,
    /// Frames staged for the egress TX queue, and whose they are: `out_runs` covers `out` in
    /// order, one run per stretch of one VM's frames that arrived together.
    out: Burst,
    out_runs: ArrayVec<OutRun, BURST>,
    /// Which VM's released frame goes next: priority, starvation guard, DRR, regulators.
    sched: Scheduler,
    /// Latency histograms, handed to the stats side every `meter::PUBLISH_MS`.
    meter: WorkerMeter,
    egress_counters: Arc<EgressCounters>,
    next_publish: u64,
    /// The TSC at the start of this round of the poll loop.
    now: u64,
    ns: Nanos,
    /// Ports reached by a broadcast (each once) and the VMs that it reaches.
    group_ports: Vec<usize>,
    group_vms: Vec<VmIdx>,
    quit: Arc<AtomicBool>,
    opts: WorkerOptions,
    rings: Arc<Rings>,
    /// Answers the answer ring had no room for, sent first next time (never lost).
    unsent: VecDeque<Answer>,
    /// Something was answered this round: the control thread is woken at the round's end.
    told: bool,
    /// Where announcement frames come from, and those waiting for the egress TX.
    pool: Arc<Mempool>,
    notices: ArrayVec<Mbuf, NOTICE_STAGE>,
    classifier: Arc<Classifier>,
    windows: Option<WindowTable>,
    /// The earliest TSC at which a core has a timer due (u64::MAX: none). A lower bound: when
    /// it comes, every core is ticked and it is computed again.
    wakeup: u64,
    /// When VMs whose counters changed are published next, and how often.
    next_vm_publish: u64,
    vm_publish_ticks: u64,
    /// The poll loop's figures, kept here (plain numbers) and published with the meter.
    loop_stats: LoopStats,
    loop_counters: Arc<WorkerCounters>,
}

/// What the poll loop counts about itself: per round a few additions to the worker's own
/// variables, never an atomic; published every `meter::PUBLISH_MS`.
#[derive(Debug, Default, Clone, Copy)]
struct LoopStats {
    rounds: u64,
    busy_rounds: u64,
    rx_frames: u64,
    tx_frames: u64,
    busy_cycles: u64,
    idle_cycles: u64,
    /// Frames moved (received or sent) in the round under way.
    round_frames: u64,
    /// Whether the previous round moved a frame (its cycles are counted when the next starts).
    last_busy: bool,
}

impl Worker {
    /// `egress` and `ingress` index `ports`; each VM's `port` too. Configured MACs are bound to
    /// their VMs here; VMs with their own port and no MAC learn it from their first frame.
    pub fn new(
        ports: Vec<WorkerPort>,
        vms: Vec<WorkerVm>,
        egress: usize,
        ingress: Option<usize>,
        opts: WorkerOptions,
        links: WorkerLinks,
    ) -> Worker {
        let WorkerLinks {
            quit,
            rings,
            pool,
            meter,
            vm_ids,
            egress: egress_counters,
            counters: loop_counters,
        } = links;
        loop_counters.tsc_hz.set(opts.tsc_hz);
        let mut vms = vms;
        let now = tsc();
        let mut sched = Scheduler::new(
            SchedConfig {
                share_ppm: opts.passthrough_min_share_ppm,
                quantum: QUANTUM,
            },
            vms.len(),
        );
        for (i, vm) in vms.iter_mut().enumerate() {
            vm.settings.policy = opts.policy;
            vm.settings.fence_drain_ticks = opts.fence_drain_ticks;
            vm.settings.tsc_hz = opts.tsc_hz;
            vm.announce_every = opts.tsc_hz / 1000 * vm.announce_ms;
            vm.core = VmCore::new(vm.settings, now);
            sched.set_class(i, vm.class());
            sched.set_regulator(i, regulator(vm.rate, opts.tsc_hz, now));
            vm.publish();
        }
        assert_eq!(vm_ids.len(), vms.len(), "one meter id per VM");
        let meter = WorkerMeter::new(meter, vm_ids);
        let classifier = opts.classifier.clone();
        let windows = opts.windows.map(|(n, t)| WindowTable::new(n, t));
        let mut demux = Demux::new();
        for (i, vm) in vms.iter().enumerate() {
            if let Some(mac) = vm.mac {
                demux.bind(mac, vm.vlan, i, vm.attach());
            }
        }
        let vm_publish_ticks = opts.tsc_hz / 1_000_000 * VM_PUBLISH_US;
        let (ports_len, vms_len) = (ports.len(), vms.len());
        let answer_room = rings.answers.capacity();
        let mut w = Worker {
            ports,
            vms,
            demux,
            egress,
            ingress,
            out: Burst::new(),
            out_runs: ArrayVec::new(),
            sched,
            meter,
            egress_counters,
            next_publish: now,
            now,
            ns: Nanos::new(opts.tsc_hz),
            group_ports: Vec::with_capacity(ports_len),
            group_vms: Vec::with_capacity(vms_len),
            quit,
            opts,
            rings,
            // As many answers as the answer ring holds: the overflow list does not grow unless
            // the control thread stops reading altogether.
            unsent: VecDeque::with_capacity(answer_room),
            told: false,
            pool,
            notices: ArrayVec::new(),
            classifier,
            windows,
            wakeup: u64::MAX,
            next_vm_publish: now,
            vm_publish_ticks,
            loop_stats: LoopStats::default(),
            loop_counters,
        };
        w.refresh_group_targets();
        w.schedule_wakeups();
        w
    }

    fn refresh_group_targets(&mut self) {
        self.group_ports.clear();
        self.group_vms.clear();
        for (i, vm) in self.vms.iter().enumerate() {
            if !vm.core.active() {
                continue;
            }
            self.group_vms.push(i);
            if let Some(p) = vm.port.or(self.ingress) {
                if !self.group_ports.contains(&p) {
                    self.group_ports.push(p);
                }
            }
        }
    }

    /// Runs until told to quit, then drains (see [`Worker::shutdown`]). Returns 0.
    ///
    /// If a round panics, every VM's counters are published as they stand before the panic
    /// goes on (so what the failed worker held is counted exactly, see
    /// [`super::Appliance::stop`]); nothing more is transmitted: the frames are freed as the
    /// worker unwinds.
    pub fn run(mut self) -> i32 {
        #[cfg(debug_assertions)]
        let fault = super::fault::Fault::from_env();
        let polled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            while !self.quit.load(Relaxed) {
                #[cfg(debug_assertions)]
                if fault.fires(self.loop_stats.rx_frames) {
                    return false;
                }
                self.poll_once();
            }
            true
        }));
        match polled {
            Ok(true) => {
                self.shutdown();
                0
            }
            Ok(false) => {
                self.publish_all();
                -1
            }
            Err(panic) => {
                self.publish_all();
                std::panic::resume_unwind(panic)
            }
        }
    }

    /// Every VM's counters now (a failing worker's last word).
    fn publish_all(&mut self) {
        for vm in &mut self.vms {
            vm.dirty = false;
            vm.publish();
        }
    }

    /// One round of the poll loop.
    #[inline]
    pub fn poll_once(&mut self) {
        // One clock read per round: a round takes microseconds, far below any timer here.
        let now = tsc();
        let l = &mut self.loop_stats;
        // The cycles since the last round started belong to that round.
        let spent = now.saturating_sub(self.now);
        if l.last_busy {
            l.busy_cycles += spent;
        } else {
            l.idle_cycles += spent;
        }
        self.now = now;
        self.control();
        self.rx_vm_ports();
        self.rx_shared_ingress();
        if now >= self.wakeup {
            self.timers();
        }
        self.rx_uplink();
        self.tx_inbound();
        if !self.notices.is_empty() {
            self.tx_notices();
        }
        self.fill_egress();
        self.tx_egress();
        let l = &mut self.loop_stats;
        l.rounds += 1;
        l.last_busy = l.round_frames > 0;
        l.busy_rounds += u64::from(l.last_busy);
        l.round_frames = 0;
        if now >= self.next_vm_publish {
            self.next_vm_publish = now + self.vm_publish_ticks;
            for vm in &mut self.vms {
                if vm.dirty {
                    vm.dirty = false;
                    vm.publish();
                }
            }
        }
        if self.told {
            self.told = false;
            self.rings.wake();
        }
        if self.now >= self.next_publish {
            self.publish_meter();
        }
    }

    /// Every `meter::PUBLISH_MS`: histograms to the stats side, and the VMs' gauges.
    fn publish_meter(&mut self) {
        self.meter.publish();
        let s = self.sched.stats();
        let c = &self.egress_counters;
        c.released_frames.set(s.released_frames);
        c.released_bytes.set(s.released_bytes);
        c.passthrough_frames.set(s.passthrough_frames);
        c.passthrough_bytes.set(s.passthrough_bytes);
        c.contended_frames.set(s.contended);
        c.guarded_frames.set(s.guarded);
        let (l, c) = (&self.loop_stats, &self.loop_counters);
        c.rounds.set(l.rounds);
        c.busy_rounds.set(l.busy_rounds);
        c.rx_frames.set(l.rx_frames);
        c.tx_frames.set(l.tx_frames);
        c.busy_cycles.set(l.busy_cycles);
        c.idle_cycles.set(l.idle_cycles);
        for (vi, vm) in self.vms.iter_mut().enumerate() {
            if vm.direct_unrecorded > 0 {
                meter::record(&mut self.meter.vm(vi).hold, 0, vm.direct_unrecorded);
                vm.direct_unrecorded = 0;
            }
            let open = vm.core.queue().open_epoch();
            if open != vm.seen_epoch {
                vm.seen_epoch = open;
                vm.seen_epoch_at = self.now;
            }
            vm.counters.epoch_age_ns.set(match open {
                Some(_) => self.ns.of(self.now.saturating_sub(vm.seen_epoch_at)),
                None => 0,
            });
            vm.dirty = false;
            vm.publish();
        }
        self.next_publish = self
            .now
            .saturating_add(self.opts.tsc_hz / 1000 * meter::PUBLISH_MS);
    }

    /// Whether nothing waits for the egress TX: no staged frame, no announcement, no core with
    /// released frames. Then a pass-through burst may take the direct path.
    fn egress_idle(&self) -> bool {
        self.out.is_empty()
            && self.notices.is_empty()
            && self.vms.iter().all(|v| v.core.releasable() == 0)
    }

    fn rx_vm_ports(&mut self) {
        let mut idle = self.egress_idle();
        for vi in 0..self.vms.len() {
            let Some(pi) = self.vms[vi].port else {
                continue;
            };
            let now = self.now;
            let max = {
                let mut sp = speaker!(self, vi);
                self.vms[vi].core.read_budget(BURST, now, &mut sp)
            };
            if max == 0 {
                continue;
            }
            let mut burst = Burst::new();
            let port = &mut self.ports[pi];
            if port.rx.rx_burst_upto(&mut burst, max) == 0 {
                // Seen empty while the guest is paused: everything it sent is in the epoch.
                if self.vms[vi].core.fencing() {
                    let mut sp = speaker!(self, vi);
                    self.vms[vi].core.seen_empty(now, &mut sp);
                    self.vms[vi].dirty = true;
                }
                continue;
            }
            // One pass over the burst: its bytes, and whether it holds a runt.
            let (bytes, shortest) = burst.iter().fold((0u64, u32::MAX), |(b, s), m| {
                let len = m.len() as u32;
                (b + u64::from(len), s.min(len))
            });
            count_rx(&port.counters, burst.len(), bytes);
            self.loop_stats.moved_in(burst.len());
            let vm = &self.vms[vi];
            if vm.mac.is_none() {
                self.learn(vi, &burst);
            }
            let vm = &self.vms[vi];
            if idle && u64::from(shortest) >= MIN_FRAME && !vm.regulated() && vm.core.direct() {
                idle = self.send_direct(vi, &mut burst, bytes);
            } else {
                idle = false;
                let whole = Count {
                    frames: burst.len() as u64,
                    bytes,
                };
                self.receive_burst(vi, burst, whole, shortest);
            }
            self.vms[vi].dirty = true;
        }
    }

    /// The direct path: VM `vi`'s burst straight to the egress TX. Returns whether TX took all
    /// of it (if not, the rest is in the VM's core, first in line, and egress is no longer idle).
    #[inline]
    fn send_direct(&mut self, vi: VmIdx, burst: &mut Burst, bytes: u64) -> bool {
        let n = burst.len();
        let now = self.now;
        let vm = &mut self.vms[vi];
        vm.core.received_direct(n as u64, bytes);
        let sent = self.ports[self.egress].tx.tx_burst(burst);
        let left = burst_bytes(burst);
        let sent_bytes = bytes - left;
        if sent > 0 {
            self.loop_stats.moved_out(sent);
            let port = &self.ports[self.egress].counters;
            port.tx_frames.add(sent as u64);
            port.tx_bytes.add(sent_bytes);
            self.sched.bypassed(sent as u64, sent_bytes);
            // Held for no time: recorded in one go at the next publish.
            self.vms[vi].direct_unrecorded += sent as u64;
        }
        let mut sp = speaker!(self, vi);
        let core = &mut self.vms[vi].core;
        core.transmitted_direct(sent as u64, sent_bytes, now, &mut sp);
        if burst.is_empty() {
            return true;
        }
        core.requeue_direct(burst.drain(..), now);
        false
    }

    /// VM `vi` has no MAC yet: it is learned from the first unicast source MAC of the burst.
    #[cold]
    fn learn(&mut self, vi: VmIdx, burst: &Burst) {
        let vm = &mut self.vms[vi];
        for m in burst {
            if let Some(src) = frame::src_mac(m.data()).filter(MacAddr::is_unicast) {
                if self.demux.bind(src, vm.vlan, vi, vm.attach()) {
                    vm.mac = Some(src);
                    vm.counters.mac.set(mac_to_u64(src));
                }
                return;
            }
        }
    }

    /// A burst of VM `vi`'s frames into its core (held, ready or dropped by reason). A VM that
    /// cannot send (standby, failed) drops the whole burst at once with a bulk free.
    fn receive_burst(&mut self, vi: VmIdx, mut burst: Burst, whole: Count, shortest: u32) {
        let now = self.now;
        let vm = &mut self.vms[vi];
        let refused = vm.core.refuses_all();
        if let Some(reason) = refused.filter(|_| u64::from(shortest) >= MIN_FRAME) {
            vm.core.received_dropped(whole.frames, whole.bytes, reason);
            free_all(&mut burst);
            return;
        }
        // The classifier reads every frame's headers: start all of the loads first.
        for m in &burst {
            m.prefetch_data();
        }
        let mut sp = speaker!(self, vi);
        let vm = &mut self.vms[vi];
        let (classifier, windows) = (&self.classifier, &mut self.windows);
        vm.core.receive_burst(
            burst,
            whole,
            u64::from(shortest),
            now,
            |m| kind_of(classifier, windows, &vm.name, vm.defer, &vm.counters, m),
            &mut sp,
        );
        if let Some(t) = vm.core.next_wakeup() {
            self.wakeup = self.wakeup.min(t);
        }
    }

    fn rx_shared_ingress(&mut self) {
        let Some(pi) = self.ingress else { return };
        let mut burst = Burst::new();
        let port = &mut self.ports[pi];
        if port.rx.rx_burst(&mut burst) == 0 {
            // The shared ingress was seen empty: fences of VMs on it are complete.
            for vi in 0..self.vms.len() {
                if self.vms[vi].port.is_none() && self.vms[vi].core.fencing() {
                    let now = self.now;
                    let mut sp = speaker!(self, vi);
                    self.vms[vi].core.seen_empty(now, &mut sp);
                    self.vms[vi].dirty = true;
                }
            }
            return;
        }
        count_rx(&port.counters, burst.len(), burst_bytes(&burst));
        self.loop_stats.moved_in(burst.len());
        // Demux and the classifier read every frame's headers: start all of the loads first.
        for m in &burst {
            m.prefetch_data();
        }
        let now = self.now;
        for m in burst {
            // Only VMs attached here can send here: a frame with the address of a VM that has
            // its own port is a spoof and never enters that VM's epochs.
            let reason = match self.demux.source(m.data()) {
                Source::Vm(vi) => {
                    let mut sp = speaker!(self, vi);
                    let vm = &mut self.vms[vi];
                    let (classifier, windows) = (&self.classifier, &mut self.windows);
                    vm.core.receive(
                        m,
                        now,
                        |m| kind_of(classifier, windows, &vm.name, vm.defer, &vm.counters, m),
                        &mut sp,
                    );
                    vm.dirty = true;
                    if let Some(t) = vm.core.next_wakeup() {
                        self.wakeup = self.wakeup.min(t);
                    }
                    continue;
                }
                Source::Runt => DropReason::Runt,
                Source::Unknown if m.data().len() < 14 => DropReason::Runt,
                Source::Unknown => DropReason::UnknownSource,
                Source::Spoofed(_) => DropReason::SpoofedSource,
            };
            self.ports[pi].counters.drops.add(reason, 1);
        }
    }

    /// Ticks every core (fence deadlines, deferral deadlines, postponed requests) and finds
    /// the next time one is due.
    fn timers(&mut self) {
        let now = self.now;
        for vi in 0..self.vms.len() {
            if self.vms[vi].core.next_wakeup().is_some_and(|t| t <= now) {
                let mut sp = speaker!(self, vi);
                self.vms[vi].core.tick(now, &mut sp);
                self.vms[vi].dirty = true;
            }
            if self.vms[vi].announce_due().is_some_and(|t| t <= now) {
                let vm = &mut self.vms[vi];
                vm.announce_left -= 1;
                // From when this round went out, not from when it was due: a late round (the
                // worker was descheduled) never brings the next one closer than the interval.
                vm.announce_next = now.saturating_add(vm.announce_every);
                self.stage_announcements(vi);
            }
        }
        self.schedule_wakeups();
    }

    fn schedule_wakeups(&mut self) {
        self.wakeup = self
            .vms
            .iter()
            .flat_map(|v| [v.core.next_wakeup(), v.announce_due()])
            .flatten()
            .min()
            .unwrap_or(u64::MAX);
    }

    /// Moves released frames into the egress stage in the order the scheduler gives: released
    /// frames of protected VMs first (within the starvation guard), deficit round robin among
    /// the VMs of a class, each VM within its rate.
    fn fill_egress(&mut self) {
        if self.out.is_full() {
            return;
        }
        if self.vms.iter().all(|v| v.core.releasable() == 0) {
            // Nothing released anywhere (most rounds of a protected VM between commits).
            self.sched.idle();
            return;
        }
        self.sched.begin(self.now);
        while !self.out.is_full() {
            let Some(g) = self.sched.grant(&Heads(&self.vms)) else {
                break;
            };
            let room = self.out.remaining_capacity() as u64;
            let max = g.frames.min(room) as usize;
            let vm = &mut self.vms[g.vm];
            let (run, taken) = vm.core.take_run(max, g.bytes);
            for h in run {
                // Held for an epoch, the mbuf is out of the cache; TX reads its header.
                h.frame.prefetch_header();
                let len = u64::from(h.wire_len());
                match self.out_runs.last_mut() {
                    Some(r) if r.vm == g.vm && r.at == h.at => {
                        r.frames += 1;
                        r.bytes += len;
                    }
                    // At most one run per frame in `out`: never beyond its capacity.
                    _ => self.out_runs.push(OutRun {
                        vm: g.vm,
                        at: h.at,
                        frames: 1,
                        bytes: len,
                    }),
                }
                self.out.push(h.frame);
            }
            vm.dirty = true;
            self.sched.sent_run(g.vm, taken.frames, taken.bytes);
        }
    }

    fn tx_egress(&mut self) {
        if self.out.is_empty() {
            return;
        }
        let sent = self.ports[self.egress].tx.tx_burst(&mut self.out);
        if sent == 0 {
            return;
        }
        self.loop_stats.moved_out(sent);
        // Accounted by runs (the usual case: a burst goes out as it came in): one ledger move
        // and one histogram record per run.
        let now = self.now;
        let out = &self.out;
        let mut total = 0u64;
        take_sent(
            &mut self.out_runs,
            sent as u64,
            |k| burst_bytes(&out[..k as usize]),
            |r| {
                total += r.bytes;
                let hold = self.ns.of(now.saturating_sub(r.at));
                meter::record(&mut self.meter.vm(r.vm).hold, hold, r.frames);
                let mut sp = speaker!(self, r.vm);
                self.vms[r.vm]
                    .core
                    .transmitted(r.frames, r.bytes, now, &mut sp);
                self.vms[r.vm].dirty = true;
            },
        );
        debug_assert_eq!(
            self.out_runs.iter().map(|r| r.frames).sum::<u64>(),
            self.out.len() as u64,
            "the runs cover the staged frames"
        );
        let port = &self.ports[self.egress].counters;
        port.tx_frames.add(sent as u64);
        port.tx_bytes.add(total);
    }

    /// The inbound path: frames from the uplink to the port of the VM they are addressed to.
    fn rx_uplink(&mut self) {
        let mut burst = Burst::new();
        let eg = self.egress;
        if self.ports[eg].rx.rx_burst(&mut burst) == 0 {
            return;
        }
        count_rx(&self.ports[eg].counters, burst.len(), burst_bytes(&burst));
        self.loop_stats.moved_in(burst.len());
        for m in burst {
            match self.demux.destination(m.data()) {
                Inbound::Vm(vi) => {
                    let vm = &self.vms[vi];
                    if !vm.core.active() {
                        self.ports[eg].counters.drops.add(DropReason::Standby, 1);
                        continue;
                    }
                    let Some(pi) = vm.port.or(self.ingress) else {
                        self.ports[eg].counters.drops.add(DropReason::NoVm, 1);
                        continue;
                    };
                    vm.counters.inbound_frames.add(1);
                    vm.counters.inbound_bytes.add(m.len() as u64);
                    stage_inbound(&mut self.ports[pi], m);
                }
                Inbound::All => {
                    for &vi in &self.group_vms {
                        let c = &self.vms[vi].counters;
                        c.inbound_frames.add(1);
                        c.inbound_bytes.add(m.len() as u64);
                    }
                    for &pi in &self.group_ports {
                        stage_inbound(&mut self.ports[pi], m.share());
                    }
                    if self.group_ports.is_empty() {
                        self.ports[eg].counters.drops.add(DropReason::NoVm, 1);
                    }
                }
                Inbound::Nobody => self.ports[eg].counters.drops.add(DropReason::NoVm, 1),
                Inbound::Runt => self.ports[eg].counters.drops.add(DropReason::Runt, 1),
            }
        }
    }

    fn tx_inbound(&mut self) {
        for p in self.ports.iter_mut() {
            if p.inbound.is_empty() {
                continue;
            }
            let sent = p.tx.tx_burst(&mut p.inbound);
            if sent > 0 {
                self.loop_stats.moved_out(sent);
                let left: u64 = p.inbound.iter().map(|m| m.len() as u64).sum();
                p.counters.tx_frames.add(sent as u64);
                p.counters.tx_bytes.add(p.inbound_bytes - left);
                p.inbound_bytes = left;
            }
        }
    }

    /// Takes the control thread's commands and has each VM's core carry them out. An empty
    /// command ring costs two plain loads (no read-modify-write, no fence).
    fn control(&mut self) {
        if !self.unsent.is_empty() {
            while let Some(a) = self.unsent.pop_front() {
                if let Err(a) = self.rings.answers.push(a) {
                    self.unsent.push_front(a);
                    break;
                }
                self.told = true;
            }
        }
        if self.rings.commands.is_empty() {
            return;
        }
        while let Some(cmd) = self.rings.commands.pop() {
            self.execute(cmd);
        }
    }

    /// One command: the core decides and answers; the poll loop follows a mode change
    /// (scheduling class, broadcast targets) and sends a promoted VM's announcements.
    fn execute(&mut self, cmd: Command) {
        let vi = cmd.vm;
        let was = self.vms[vi].core.mode();
        let now = tsc();
        let mut sp = speaker!(self, vi);
        self.vms[vi].core.execute(cmd.op, cmd.session, now, &mut sp);
        let promoted = sp.promoted.take();
        if let Some((session, Ok(Reply::Promoted { mode, .. }))) = promoted {
            let announced = self.stage_announcements(vi);
            let vm = &mut self.vms[vi];
            vm.announce_left = vm.announce_rounds - 1;
            vm.announce_next = now.saturating_add(vm.announce_every);
            if let Some(t) = vm.announce_due() {
                self.wakeup = self.wakeup.min(t);
            }
            let a = Answer {
                vm: vi,
                session,
                reply: Ok(Reply::Promoted { mode, announced }),
            };
            push_answer(&self.rings, &mut self.unsent, a);
            self.told = true;
        }
        let vm = &mut self.vms[vi];
        vm.dirty = true;
        vm.publish();
        if vm.core.mode() == Mode::Standby {
            // Demoted: its addresses are announced from the other host now.
            vm.announce_left = 0;
        }
        if vm.core.mode() != was {
            let class = vm.class();
            if self.sched.class(vi) != class {
                self.sched.set_class(vi, class);
            }
            self.refresh_group_targets();
        }
        if matches!(
            cmd.op,
            Op::Fence(_) | Op::Adopt | Op::Protect | Op::Promote(_)
        ) {
            if let Some(t) = self.vms[vi].core.next_wakeup() {
                self.wakeup = self.wakeup.min(t);
            }
        }
    }

    /// Copies VM `vi`'s announcements into mbufs for the egress TX (ahead of any VM's output);
    /// returns how many were staged. One that finds no mbuf or no room is counted as dropped.
    fn stage_announcements(&mut self, vi: VmIdx) -> u32 {
        let mut staged = 0;
        for f in &self.vms[vi].announce {
            let Some(m) = Mbuf::from_bytes(&self.pool, f) else {
                self.ports[self.egress]
                    .counters
                    .drops
                    .add(DropReason::NoticeLost, 1);
                continue;
            };
            if self.notices.try_push(m).is_ok() {
                staged += 1;
            } else {
                self.ports[self.egress]
                    .counters
                    .drops
                    .add(DropReason::NoticeLost, 1);
            }
        }
        staged
    }

    fn tx_notices(&mut self) {
        let port = &mut self.ports[self.egress];
        let before: u64 = self.notices.iter().map(|m| m.len() as u64).sum();
        let sent = port.tx.tx_burst(&mut self.notices);
        if sent > 0 {
            let after: u64 = self.notices.iter().map(|m| m.len() as u64).sum();
            port.counters.tx_frames.add(sent as u64);
            port.counters.tx_bytes.add(before - after);
        }
    }

    /// Stop: a protected VM's held output can never be proven committed any more, so it is
    /// discarded and counted; released and pass-through output is transmitted until the drain
    /// deadline; what TX still did not take is dropped and counted.
    fn shutdown(&mut self) {
        for vm in &mut self.vms {
            vm.core.stop_held();
            vm.publish();
        }
        let deadline = tsc().saturating_add(self.opts.drain_ticks);
        loop {
            self.now = tsc();
            if !self.notices.is_empty() {
                self.tx_notices();
            }
            self.fill_egress();
            self.tx_egress();
            self.tx_inbound();
            let pending = !self.out.is_empty()
                || !self.notices.is_empty()
                || self.vms.iter().any(|v| v.core.releasable() > 0)
                || self.ports.iter().any(|p| !p.inbound.is_empty());
            if !pending || tsc() > deadline {
                break;
            }
        }
        for r in &self.out_runs {
            self.vms[r.vm].core.unstaged(r.frames, DropReason::Shutdown);
        }
        free_all(&mut self.out);
        self.out_runs.clear();
        for vm in &mut self.vms {
            vm.core.stop_ready();
            vm.publish();
        }
        self.publish_meter();
        self.meter.finish();
        for p in &mut self.ports {
            p.counters
                .drops
                .add(DropReason::Shutdown, p.inbound.len() as u64);
            free_all(&mut p.inbound);
        }
        let eg = &self.ports[self.egress].counters;
        eg.drops
            .add(DropReason::Shutdown, self.notices.len() as u64);
        free_all(&mut self.notices);
        if self.told {
            self.rings.wake();
        }
    }
}

impl LoopStats {
    #[inline]
    fn moved_in(&mut self, frames: usize) {
        self.rx_frames += frames as u64;
        self.round_frames += frames as u64;
    }

    #[inline]
    fn moved_out(&mut self, frames: usize) {
        self.tx_frames += frames as u64;
        self.round_frames += frames as u64;
    }
}

/// How soon a protected VM's frame needs a checkpoint: the classifier's verdict, counted.
#[inline]
fn kind_of(
    classifier: &Classifier,
    windows: &mut Option<WindowTable>,
    name: &str,
    defer: VmDefer,
    counters: &VmCounters,
    m: &Mbuf,
) -> FrameKind {
    let c = classifier.classify_with(name, defer, windows.as_mut(), m.data());
    counters.verdicts.add(c.reason);
    if c.is_deferrable() {
        FrameKind::Deferrable
    } else {
        FrameKind::Immediate
    }
}

#[inline]
fn burst_bytes(frames: &[Mbuf]) -> u64 {
    frames.iter().map(|m| m.len() as u64).sum()
}

/// A stretch of `out`: `frames` frames (`bytes` bytes) of VM `vm` that arrived at `at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct OutRun {
    vm: VmIdx,
    at: u64,
    frames: u64,
    bytes: u64,
}

/// TX took the first `sent` of the frames `runs` covers: tells `taken` what it took, run by
/// run, and leaves in `runs` what is still staged. A run TX took only part of is split;
/// `unsent_bytes(k)` gives the bytes of the first `k` frames still staged (the rest of that
/// run, which leads the staged frames now).
#[inline]
fn take_sent(
    runs: &mut ArrayVec<OutRun, BURST>,
    sent: u64,
    unsent_bytes: impl FnOnce(u64) -> u64,
    mut taken: impl FnMut(OutRun),
) {
    let mut left = sent;
    let mut whole = 0;
    for r in runs.iter_mut() {
        if left == 0 {
            break;
        }
        if r.frames <= left {
            left -= r.frames;
            whole += 1;
            taken(*r);
        } else {
            let rest = r.frames - left;
            let rest_bytes = unsent_bytes(rest);
            taken(OutRun {
                frames: left,
                bytes: r.bytes - rest_bytes,
                ..*r
            });
            (r.frames, r.bytes) = (rest, rest_bytes);
            break;
        }
    }
    runs.drain(..whole);
}

#[inline]
fn count_rx(c: &PortCounters, frames: usize, bytes: u64) {
    c.rx_frames.add(frames as u64);
    c.rx_bytes.add(bytes);
}

/// Queues an inbound frame for a port's TX, or drops it (counted) when the port is not draining.
#[inline]
fn stage_inbound(port: &mut WorkerPort, m: Mbuf) {
    let len = m.len() as u64;
    match port.inbound.try_push(m) {
        Ok(()) => port.inbound_bytes += len,
        Err(_) => port.counters.drops.add(DropReason::PortBusy, 1),
    }
}

/// The DRR quantum: bytes a VM may send per turn. 16 KiB is about one TX burst of average
/// frames, so a turn is one grant; fairness at each completed round stays within one frame
/// whatever the quantum (measured: `cargo bench --bench sched`).
const QUANTUM: u32 = 16384;

/// What the scheduler sees of the VMs: the length of each one's next released frame.
struct Heads<'a>(&'a [WorkerVm]);

impl Backlog for Heads<'_> {
    #[inline]
    fn head(&self, vm: usize) -> Option<u32> {
        self.0[vm].core.front_len().map(|n| n as u32)
    }
}

/// A VM's token buckets from its configured rate (none when it has no rate).
fn regulator(rate: RateLimit, hz: u64, now: u64) -> Option<Regulator> {
    let bytes =
        (rate.bytes_per_s > 0).then(|| Bucket::new(rate.bytes_per_s, rate.burst_bytes, hz, now));
    let frames = (rate.pps > 0).then(|| Bucket::new(rate.pps, rate.burst_frames, hz, now));
    (bytes.is_some() || frames.is_some()).then_some(Regulator { bytes, frames })
}

#[cfg(test)]
mod tests {
    use super::DrainProof;

    #[test]
    fn only_shared_memory_and_in_process_ports_prove_a_drain() {
        use crate::config::PortSpec;
        for (spec, proof) in [
            ("net_vhost0,iface=/tmp/a.sock", DrainProof::Final),
            ("net_virtio_user0,path=/tmp/a.sock", DrainProof::Final),
            ("net_memif0,role=server", DrainProof::Final),
            (
                "net_pcap0,rx_pcap=in.pcap,tx_pcap=out.pcap",
                DrainProof::Final,
            ),
            ("net_ring0", DrainProof::Final),
            ("net_null0", DrainProof::Final),
            ("net_tap0,iface=tap0", DrainProof::Unproven),
            ("net_tap1", DrainProof::Unproven),
            ("net_tun0,iface=tun0", DrainProof::Unproven),
            ("net_af_xdp0,iface=eth0", DrainProof::Unproven),
            ("net_bonding0,mode=0,slave=net_tap1", DrainProof::Unproven),
            (
                "net_virtio_user1,path=/dev/vhost-net,iface=t0",
                DrainProof::Unproven,
            ),
            ("net_af_packet0,iface=veth0", DrainProof::Unproven),
            ("net_pcap1,iface=eth1", DrainProof::Unproven),
            (
                "net_pcap2,rx_iface=eth1,tx_pcap=o.pcap",
                DrainProof::Unproven,
            ),
            ("net_pcap3,rx_iface_in=eth1", DrainProof::Unproven),
            ("0000:03:00.0", DrainProof::Unproven),
        ] {
            let p = PortSpec::parse(spec).unwrap();
            assert_eq!(DrainProof::of(&p), proof, "{spec}");
        }
    }
}

#[cfg(test)]
mod out_run_tests {
    use super::{take_sent, OutRun, BURST};
    use arrayvec::ArrayVec;
    use proptest::prelude::*;

    proptest! {
        /// Staged frames (each with its VM, arrival and length) grouped into runs as
        /// `fill_egress` groups them; TX takes any prefix. What `take_sent` says was sent is
        /// exactly that prefix, frame for frame and byte for byte, and what it leaves covers
        /// the rest, in order.
        #[test]
        fn take_sent_accounts_exactly_the_frames_tx_took(
            frames in prop::collection::vec((0usize..3, 0u64..3, 14u64..2048), 0..=BURST),
            cut in 0.0f64..=1.0,
        ) {
            let mut runs: ArrayVec<OutRun, BURST> = ArrayVec::new();
            for &(vm, at, len) in &frames {
                match runs.last_mut() {
                    Some(r) if r.vm == vm && r.at == at => {
                        r.frames += 1;
                        r.bytes += len;
                    }
                    _ => runs.push(OutRun { vm, at, frames: 1, bytes: len }),
                }
            }
            let sent = ((frames.len() as f64) * cut) as usize;
            let unsent = &frames[sent..];
            let mut taken = Vec::new();
            take_sent(
                &mut runs,
                sent as u64,
                |k| unsent[..k as usize].iter().map(|f| f.2).sum(),
                |r| taken.push(r),
            );
            let expand = |rs: &[OutRun], fs: &[(usize, u64, u64)]| -> Result<(), TestCaseError> {
                // Runs say (vm, at) per frame and the bytes of each stretch.
                let mut i = 0;
                for r in rs {
                    prop_assert!(r.frames > 0, "an empty run {r:?}");
                    let part = &fs[i..i + r.frames as usize];
                    prop_assert!(part.iter().all(|f| (f.0, f.1) == (r.vm, r.at)), "{r:?} vs {part:?}");
                    prop_assert_eq!(part.iter().map(|f| f.2).sum::<u64>(), r.bytes);
                    i += r.frames as usize;
                }
                prop_assert_eq!(i, fs.len());
                Ok(())
            };
            expand(&taken, &frames[..sent])?;
            expand(&runs, unsent)?;
        }
    }
}
