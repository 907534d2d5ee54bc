//! The poll loop of one worker lcore. It owns its VMs' queues and one queue of every port, so
//! nothing here locks, allocates per frame or makes a syscall.
//!
//! Each round: control commands from the ring -> VM ports and the shared ingress -> each VM's
//! epoch queue (a full queue stops reading its VM's port: backpressure into the guest) -> round
//! robin over what the queues may release into the egress stage -> tx burst; and the uplink ->
//! each destination VM's port, unbuffered. A frame TX did not take stays at the head of its
//! stage for the next round, so nothing is dropped because a ring was momentarily full.
//!
//! Output commit is the epoch queue's ([`crate::hold::epoch`]): this loop only ever transmits what a
//! queue says is releasable. A fence is a state of its VM: the VM's ingress is read until it is
//! seen empty (the guest is paused) or the drain time is up, and only then is the epoch sealed
//! and the answer sent.

use crate::classify::{Classifier, VmDefer, WindowTable};
use crate::config::{BufferLimits, OnFull, RateLimit};
use crate::control::{Answer, Command, Mode, Op, Release, Reply, Rings};
use crate::dpdk::{tsc, Burst, Mbuf, Mempool, RxQueue, TxQueue, BURST};
use crate::egress::sched::{Backlog, Bucket, Class, Regulator, SchedConfig, Scheduler};
use crate::hold::epoch::{EpochError, EpochQueue, Weighed};
use crate::hold::policy::{FrameKind, PolicyConfig, RequestPolicy};
use crate::ingress::demux::{Attach, Demux, Inbound, Source, VmIdx};
use crate::stats::meter::{self, MeterHub, WorkerMeter};
use crate::stats::{
    DropReason, EgressCounters, Ledger, PortCounters, VmCounters, Waiting, WorkerCounters,
};
use crate::wire::frame::{self, MacAddr};
use arrayvec::ArrayVec;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use vmm_shim::proto::{ErrorCode, Urgency};

/// A frame in a VM's queue, with the TSC of its arrival (for the hold-time histogram).
struct Held {
    m: Mbuf,
    at: u64,
}

impl Weighed for Held {
    #[inline]
    fn bytes(&self) -> u64 {
        self.m.len() as u64
    }
}

/// The largest frame one mbuf holds (RTE_MBUF_DEFAULT_DATAROOM): what the byte limit reserves
/// per frame before reading a VM's port under backpressure.
const FRAME_ROOM: u64 = 2048;

/// Commits whose epochs are still being transmitted, per VM, before the list grows.
const COMMITS_IN_FLIGHT: usize = 16;

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
    /// virtio-user on the kernel's vhost-net, a bond, a PCI NIC): the fence seals
    /// once the port stayed empty for [`SETTLE_US`], and is counted as `fences_unproven`. A
    /// frame delayed longer goes to the next epoch, which is safe.
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
const SETTLE_US: u64 = 200;

/// A VM as its worker sees it.
pub struct WorkerVm {
    pub mode: Mode,
    /// Index of its own port, or `None` on the shared ingress.
    pub port: Option<usize>,
    pub mac: Option<MacAddr>,
    pub vlan: Option<u16>,
    pub counters: Arc<VmCounters>,
    /// Frames waiting for egress, in the order the VM sent them: what is releasable at the
    /// front, then sealed epochs, then the open one.
    queue: EpochQueue<Held>,
    /// What the queue may hold, and what happens when it is full.
    limits: BufferLimits,
    /// The regulator's configuration (the buckets themselves live in the scheduler).
    rate: RateLimit,
    /// Backpressure is on (the port is not being read): counted once per episode.
    full: bool,
    /// What it received, transmitted and dropped (published by [`WorkerVm::publish`]), and how
    /// many of its frames are in the egress TX burst.
    ledger: Ledger,
    staged: u64,
    /// Frames of this queue transmitted (taken by the egress TX), and the commits whose last
    /// frame has not been transmitted yet: (release point after the commit, TSC of the commit).
    sent: u64,
    commits: VecDeque<(u64, u64)>,
    fencing: Option<Fencing>,
    /// What its port seen empty during a fence proves.
    drain: DrainProof,
    /// Frames that announce its addresses when it is promoted (built from the config).
    announce: Vec<Vec<u8>>,
    /// For the classifier: its name (rules may name it) and its deferral setting.
    name: String,
    defer: VmDefer,
    /// Turns the open epoch's verdicts into checkpoint requests (used while protected).
    policy: RequestPolicy,
    /// The open epoch as last seen by `publish_meter`, and the TSC at which it was first seen
    /// there (for the epoch's age, to within `meter::PUBLISH_MS`).
    seen_epoch: Option<u64>,
    seen_epoch_at: u64,
}

impl WorkerVm {
    pub fn new(
        mode: crate::config::Mode,
        port: Option<usize>,
        mac: Option<MacAddr>,
        vlan: Option<u16>,
        limits: BufferLimits,
        counters: Arc<VmCounters>,
    ) -> Self {
        if let Some(m) = mac {
            counters.mac.set(mac_to_u64(m));
        }
        let mut queue = EpochQueue::new(limits.max_frames.min(1 << 16) as usize);
        let mode = match mode {
            crate::config::Mode::Passthrough => Mode::Passthrough,
            crate::config::Mode::Protected => {
                queue.protect();
                Mode::Protected
            }
            crate::config::Mode::Standby => Mode::Standby,
        };
        let vm = WorkerVm {
            mode,
            port,
            mac,
            vlan,
            counters,
            queue,
            limits,
            rate: RateLimit::default(),
            full: false,
            ledger: Ledger::default(),
            staged: 0,
            sent: 0,
            commits: VecDeque::with_capacity(COMMITS_IN_FLIGHT),
            fencing: None,
            drain: DrainProof::Final,
            announce: Vec::new(),
            name: String::new(),
            defer: VmDefer::Builtin,
            policy: RequestPolicy::new(PolicyConfig::default(), 0),
            seen_epoch: None,
            seen_epoch_at: 0,
        };
        vm.publish();
        vm
    }

    /// Frames sent on the VM's behalf when it is promoted.
    pub fn with_announcements(mut self, frames: Vec<Vec<u8>>) -> Self {
        self.announce = frames;
        self
    }

    /// What its port (its own, or the shared ingress) proves when seen empty during a fence.
    pub fn with_drain(mut self, drain: DrainProof) -> Self {
        self.drain = drain;
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

    /// Whether queued frames may go to egress now: only what the epoch queue released.
    #[inline]
    fn eligible(&self) -> bool {
        self.queue.releasable() > 0
    }

    /// Bytes in the queue (held and released).
    #[inline]
    fn queued_bytes(&self) -> u64 {
        self.queue.releasable_bytes() + self.queue.held().bytes
    }

    /// Frames that may be read from the VM's port now without going over its limits (a frame
    /// is reserved [`FRAME_ROOM`] bytes, since its size is known only once it is read).
    #[inline]
    fn room(&self) -> usize {
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
        room.min(BURST as u64) as usize
    }

    /// Whether one more frame of `len` bytes would go over a limit.
    #[inline]
    fn over_limit(&self, len: u64) -> bool {
        self.queue.len() as u64 >= self.limits.max_frames
            || (self.limits.max_bytes != 0 && self.queued_bytes() + len > self.limits.max_bytes)
    }

    /// The scheduling class its released frames belong to.
    fn class(&self) -> Class {
        if self.mode == Mode::Protected {
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

    /// Whether inbound frames are delivered to it (not to a standby copy or a failed VM).
    fn active(&self) -> bool {
        matches!(self.mode, Mode::Passthrough | Mode::Protected)
    }

    fn drop_frames(&mut self, reason: DropReason, n: u64) {
        self.ledger.dropped(reason, n);
    }

    /// Drops everything the VM holds (sealed epochs and the open one) under `reason`; with
    /// `end`, protection ends too (its epochs can never be committed). Returns the frames.
    fn drop_held(&mut self, reason: DropReason, end: bool) -> u64 {
        self.counters.epochs_discarded.add(self.queue.outstanding());
        let n = if end {
            self.queue.unprotect(Release::Drop)
        } else {
            self.queue.discard()
        };
        self.drop_frames(reason, n.frames);
        n.frames
    }

    /// Publishes the ledger with where its waiting frames are, mode and epochs, as one unit
    /// (for stats and the control thread). Invariant 4 is checked here in debug builds: every
    /// frame received is held, ready, staged, transmitted or dropped by reason.
    fn publish(&self) {
        let held = self.queue.held();
        let w = Waiting {
            held_frames: held.frames,
            held_bytes: held.bytes,
            ready_frames: self.queue.releasable() as u64,
            ready_bytes: self.queue.releasable_bytes(),
            staged_frames: self.staged,
        };
        debug_assert_eq!(
            self.ledger.waiting(),
            w.held_frames + w.ready_frames + w.staged_frames,
            "ledger of vm {:?}: {:?} {w:?}",
            self.name,
            self.ledger
        );
        self.counters.publish(&self.ledger, w, |c| {
            c.mode.set(self.mode as u64);
            c.open_epoch.set(self.queue.open_epoch().unwrap_or(0));
            c.sealed_epoch.set(self.queue.sealed_epoch());
            c.committed_epoch.set(self.queue.committed_epoch());
            // The queue counts what it ever released, so no per-frame counter is needed.
            c.released_frames.set(self.queue.released_total());
            c.released_bytes.set(self.queue.released_total_bytes());
        });
    }
}

fn mac_to_u64(m: MacAddr) -> u64 {
    let b = m.0;
    u64::from_be_bytes([0, 0, b[0], b[1], b[2], b[3], b[4], b[5]])
}

/// What a worker shares with the rest of the process.
pub struct WorkerLinks {
    /// Set to stop the worker.
    pub quit: Arc<AtomicBool>,
    /// Commands in, answers and events out.
    pub rings: Arc<Rings>,
    /// For the frames the worker makes itself (announcements).
    pub pool: Arc<Mempool>,
    /// Where the latency histograms go.
    pub meter: Arc<MeterHub>,
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

/// One worker: every VM and port is owned by it (DESIGN.md allows more workers; the foundation
/// runs one).
pub struct Worker {
    ports: Vec<WorkerPort>,
    vms: Vec<WorkerVm>,
    demux: Demux,
    egress: usize,
    ingress: Option<usize>,
    /// Frames staged for the egress TX queue, and for each its VM, length and arrival TSC.
    out: Burst,
    out_owner: ArrayVec<(VmIdx, u32, u64), BURST>,
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
    /// Where announcement frames come from, and those waiting for the egress TX.
    pool: Arc<Mempool>,
    notices: ArrayVec<Mbuf, NOTICE_STAGE>,
    /// VMs with a fence in progress.
    fencing: usize,
    classifier: Arc<Classifier>,
    windows: Option<WindowTable>,
    /// The earliest TSC at which a VM's request policy has a timer due (u64::MAX: none).
    wakeup: u64,
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
            vm.policy = RequestPolicy::new(
                PolicyConfig {
                    high_water_frames: vm.limits.high_water_frames,
                    high_water_bytes: vm.limits.high_water_bytes,
                    ..opts.policy
                },
                now,
            );
            sched.set_class(i, vm.class());
            sched.set_regulator(i, regulator(vm.rate, opts.tsc_hz, now));
        }
        let meter = WorkerMeter::new(meter, vms.len());
        let classifier = opts.classifier.clone();
        let windows = opts.windows.map(|(n, t)| WindowTable::new(n, t));
        let mut demux = Demux::new();
        for (i, vm) in vms.iter().enumerate() {
            if let Some(mac) = vm.mac {
                demux.bind(mac, vm.vlan, i, vm.attach());
            }
        }
        let mut w = Worker {
            ports,
            vms,
            demux,
            egress,
            ingress,
            out: Burst::new(),
            out_owner: ArrayVec::new(),
            sched,
            meter,
            egress_counters,
            next_publish: now,
            now,
            ns: Nanos::new(opts.tsc_hz),
            group_ports: Vec::new(),
            group_vms: Vec::new(),
            quit,
            opts,
            rings,
            unsent: VecDeque::with_capacity(64),
            pool,
            notices: ArrayVec::new(),
            fencing: 0,
            classifier,
            windows,
            wakeup: u64::MAX,
            loop_stats: LoopStats::default(),
            loop_counters,
        };
        w.refresh_group_targets();
        w
    }

    fn refresh_group_targets(&mut self) {
        self.group_ports.clear();
        self.group_vms.clear();
        for (i, vm) in self.vms.iter().enumerate() {
            if !vm.active() {
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
    pub fn run(mut self) -> i32 {
        while !self.quit.load(Relaxed) {
            self.poll_once();
        }
        self.shutdown();
        0
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
        if self.fencing > 0 {
            self.fence_deadlines();
        }
        if self.wakeup != u64::MAX {
            self.policy_timers();
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
        for vm in &mut self.vms {
            let open = vm.queue.open_epoch();
            if open != vm.seen_epoch {
                vm.seen_epoch = open;
                vm.seen_epoch_at = self.now;
            }
            vm.counters.epoch_age_ns.set(match open {
                Some(_) => self.ns.of(self.now.saturating_sub(vm.seen_epoch_at)),
                None => 0,
            });
            vm.publish();
        }
        self.next_publish = self
            .now
            .saturating_add(self.opts.tsc_hz / 1000 * meter::PUBLISH_MS);
    }

    fn rx_vm_ports(&mut self) {
        for vi in 0..self.vms.len() {
            let vm = &mut self.vms[vi];
            let Some(pi) = vm.port else { continue };
            // Backpressure: leave frames in the port (the guest's ring) while the VM's buffer
            // has no room. A fence cannot drain more then: what is left in the guest goes to
            // the next epoch (safe) and the fence is counted as cut short. With `drop`, the
            // port is always read and what does not fit is dropped (counted) in `accept`.
            let max = match vm.limits.on_full {
                OnFull::Drop => BURST,
                OnFull::Backpressure => vm.room(),
            };
            if max == 0 {
                if !vm.full {
                    vm.full = true;
                    vm.counters.backpressure.add(1);
                }
                if vm.fencing.is_some() {
                    self.seal(vi, true);
                }
                continue;
            }
            vm.full = false;
            let mut burst = Burst::new();
            let port = &mut self.ports[pi];
            if port.rx.rx_burst_upto(&mut burst, max) == 0 {
                // Seen empty while the guest is paused: everything it sent is in the epoch.
                if vm.fencing.is_some() {
                    self.seen_empty(vi);
                }
                continue;
            }
            if let Some(f) = vm.fencing.as_mut() {
                f.empty_since = None;
            }
            let bytes = burst_bytes(&burst);
            count_rx(&port.counters, burst.len(), bytes);
            vm.ledger.received(burst.len() as u64, bytes);
            self.loop_stats.moved_in(burst.len());
            let now = self.now;
            for m in burst {
                self.accept(vi, m, now);
            }
            self.vms[vi].publish();
        }
    }

    fn rx_shared_ingress(&mut self) {
        let Some(pi) = self.ingress else { return };
        let mut burst = Burst::new();
        let port = &mut self.ports[pi];
        if port.rx.rx_burst(&mut burst) == 0 {
            if self.fencing > 0 {
                // The shared ingress was seen empty: fences of VMs on it are complete.
                for vi in 0..self.vms.len() {
                    if self.vms[vi].port.is_none() && self.vms[vi].fencing.is_some() {
                        self.seen_empty(vi);
                    }
                }
            }
            return;
        }
        count_rx(&port.counters, burst.len(), burst_bytes(&burst));
        self.loop_stats.moved_in(burst.len());
        let now = self.now;
        for m in burst {
            // Only VMs attached here can send here: a frame with the address of a VM that has
            // its own port is a spoof and never enters that VM's epochs.
            let reason = match self.demux.source(m.data()) {
                Source::Vm(vi) => {
                    // Only its own frames restart a fencing VM's wait for an empty port.
                    if let Some(f) = self.vms[vi].fencing.as_mut() {
                        f.empty_since = None;
                    }
                    self.vms[vi].ledger.received(1, m.len() as u64);
                    self.accept(vi, m, now);
                    continue;
                }
                Source::Runt => DropReason::Runt,
                Source::Unknown if m.data().len() < 14 => DropReason::Runt,
                Source::Unknown => DropReason::UnknownSource,
                Source::Spoofed(_) => DropReason::SpoofedSource,
            };
            self.ports[pi].counters.drops.add(reason, 1);
        }
        // Once per burst, not per frame: what the VMs on this port now hold.
        for vm in &self.vms {
            if vm.port.is_none() {
                vm.publish();
            }
        }
    }

    /// A frame the VM sent (already counted as received and waiting): queued, or dropped under
    /// a named reason.
    #[inline]
    fn accept(&mut self, vi: VmIdx, m: Mbuf, now: u64) {
        let vm = &mut self.vms[vi];
        if vm.mac.is_none() {
            if let Some(src) = frame::src_mac(m.data()).filter(MacAddr::is_unicast) {
                if self.demux.bind(src, vm.vlan, vi, vm.attach()) {
                    vm.mac = Some(src);
                    vm.counters.mac.set(mac_to_u64(src));
                }
            }
        }
        let len = m.len() as u64;
        if m.data().len() < 14 {
            vm.drop_frames(DropReason::Runt, 1);
        } else if vm.mode == Mode::Standby {
            vm.drop_frames(DropReason::Standby, 1);
        } else if vm.mode == Mode::Failed {
            vm.drop_frames(DropReason::Failed, 1);
        } else if vm.limits.on_full == OnFull::Drop && vm.over_limit(len) {
            // (Under backpressure the port was read only as far as there was room.)
            vm.drop_frames(DropReason::BufferFull, 1);
        } else if vm.mode == Mode::Protected {
            // Held: what kind of frame it is decides how soon a checkpoint is needed.
            let c =
                self.classifier
                    .classify_with(&vm.name, vm.defer, self.windows.as_mut(), m.data());
            vm.counters.verdicts.add(c.reason);
            let kind = if c.is_deferrable() {
                FrameKind::Deferrable
            } else {
                FrameKind::Immediate
            };
            vm.queue.push(Held { m, at: now });
            let request =
                vm.policy
                    .on_frame_sized(now, kind, vm.queue.len() as u64, vm.queued_bytes());
            if let Some(t) = vm.policy.next_wakeup() {
                self.wakeup = self.wakeup.min(t);
            }
            if let Some(r) = request {
                self.request(vi, r.why);
            }
        } else {
            vm.queue.push(Held { m, at: now });
        }
    }

    /// Tells VM `vi`'s controller that a checkpoint is needed now.
    fn request(&mut self, vi: VmIdx, why: crate::hold::policy::Why) {
        let vm = &self.vms[vi];
        vm.counters.requests.add(why);
        let reply = Reply::CheckpointRequest {
            epoch: vm.queue.open_epoch().unwrap_or(0),
            urgency: Urgency::Now,
            reason: why.into(),
        };
        self.answer(vi, crate::control::EVENT, reply);
    }

    /// Runs the request policies' timers that are due (deferral deadlines, postponed requests).
    fn policy_timers(&mut self) {
        let now = self.now;
        if now < self.wakeup {
            return;
        }
        let mut next = u64::MAX;
        for vi in 0..self.vms.len() {
            let vm = &mut self.vms[vi];
            if vm.mode != Mode::Protected {
                continue;
            }
            let due = vm.policy.next_wakeup().is_some_and(|t| t <= now);
            if due {
                if let Some(r) = vm.policy.poll(now) {
                    self.request(vi, r.why);
                }
            }
            if let Some(t) = self.vms[vi].policy.next_wakeup() {
                next = next.min(t);
            }
        }
        self.wakeup = next;
    }

    /// A new epoch's policy state (after protect, adopt or promotion to protected).
    fn reset_policy(&mut self, vi: VmIdx) {
        let cfg = self.vms[vi].policy.config();
        self.vms[vi].policy = RequestPolicy::new(cfg, tsc());
    }

    /// Moves released frames into the egress stage in the order the scheduler gives: released
    /// frames of protected VMs first (within the starvation guard), deficit round robin among
    /// the VMs of a class, each VM within its rate.
    fn fill_egress(&mut self) {
        if self.out.is_full() {
            return;
        }
        self.sched.begin(self.now);
        while !self.out.is_full() {
            let Some(g) = self.sched.grant(&Heads(&self.vms)) else {
                break;
            };
            let room = self.out.remaining_capacity() as u64;
            let max = g.frames.min(room) as usize;
            let (run, taken) = self.vms[g.vm].queue.drain_run(max, g.bytes);
            for h in run {
                self.out_owner.push((g.vm, h.m.len() as u32, h.at));
                self.out.push(h.m);
            }
            self.vms[g.vm].staged += taken.frames;
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
        // Account by runs of frames of one VM that arrived together (the usual case: a burst
        // goes out as it came in): one counter update and one histogram record per run.
        let now = self.now;
        let mut total = 0u64;
        let mut i = 0;
        while i < sent {
            let (vi, _, at) = self.out_owner[i];
            let (mut frames, mut bytes) = (0u64, 0u64);
            while i < sent && self.out_owner[i].0 == vi && self.out_owner[i].2 == at {
                bytes += u64::from(self.out_owner[i].1);
                frames += 1;
                i += 1;
            }
            total += bytes;
            let hold = self.ns.of(now.saturating_sub(at));
            meter::record(&mut self.meter.vm(vi).hold, hold, frames);
            self.transmitted(vi, frames, bytes);
        }
        self.out_owner.drain(..sent);
        let port = &self.ports[self.egress].counters;
        port.tx_frames.add(sent as u64);
        port.tx_bytes.add(total);
    }

    /// VM `vi`'s next `frames` frames (`bytes`) left: counted, and the commits whose last frame
    /// that was get their commit-to-wire time.
    fn transmitted(&mut self, vi: VmIdx, frames: u64, bytes: u64) {
        let vm = &mut self.vms[vi];
        vm.ledger.transmitted(frames, bytes);
        vm.staged -= frames;
        vm.publish();
        vm.sent += frames;
        while let Some(&(end, at)) = vm.commits.front() {
            if vm.sent < end {
                break;
            }
            vm.commits.pop_front();
            let ns = self.ns.of(self.now.saturating_sub(at));
            meter::record(&mut self.meter.vm(vi).commit_to_wire, ns, 1);
        }
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
                    if !vm.active() {
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

    /// Takes the control thread's commands and answers each (a fence answers when it seals).
    fn control(&mut self) {
        while let Some(a) = self.unsent.pop_front() {
            if let Err(a) = self.rings.answers.push(a) {
                self.unsent.push_front(a);
                break;
            }
        }
        while let Some(cmd) = self.rings.commands.pop() {
            if let Some(reply) = self.execute(cmd) {
                self.answer(cmd.vm, cmd.session, reply);
            }
            // A mode change may move the VM to the other scheduling class.
            let class = self.vms[cmd.vm].class();
            if self.sched.class(cmd.vm) != class {
                self.sched.set_class(cmd.vm, class);
            }
            self.vms[cmd.vm].publish();
        }
    }

    fn answer(&mut self, vm: VmIdx, session: u64, reply: Reply) {
        let a = Answer { vm, session, reply };
        if !self.unsent.is_empty() {
            self.unsent.push_back(a);
        } else if let Err(a) = self.rings.answers.push(a) {
            self.unsent.push_back(a);
        }
    }

    /// Carries out one command. An error answer changes nothing: every check comes before the
    /// first change.
    fn execute(&mut self, cmd: Command) -> Option<Reply> {
        let vm = &mut self.vms[cmd.vm];
        let reply = match cmd.op {
            Op::Adopt => {
                if vm.mode == Mode::Failed {
                    // A new controller: protection starts again in a new, empty epoch.
                    vm.queue.protect();
                    vm.mode = Mode::Protected;
                    self.refresh_group_targets();
                    self.reset_policy(cmd.vm);
                }
                let vm = &self.vms[cmd.vm];
                Reply::Welcome {
                    epoch: vm.queue.open_epoch().unwrap_or(0),
                    mode: vm.mode,
                }
            }
            Op::Protect => match vm.mode {
                Mode::Passthrough | Mode::Protected => {
                    let was = vm.mode;
                    let epoch = vm.queue.protect();
                    vm.mode = Mode::Protected;
                    if was != Mode::Protected {
                        self.reset_policy(cmd.vm);
                    }
                    Reply::Protected { epoch }
                }
                Mode::Standby | Mode::Failed => wrong_mode(vm.mode, "protect"),
            },
            Op::Fence(epoch) => {
                if vm.fencing.is_some() {
                    Reply::error(ErrorCode::Busy, "a fence is already draining this VM")
                } else if vm.mode != Mode::Protected {
                    not_protected(vm.mode, "fence")
                } else if vm.queue.open_epoch() != Some(epoch) {
                    // `fence` refuses it without a change; its error says why.
                    match vm.queue.fence(epoch) {
                        Err(e) => epoch_error(e),
                        Ok(_) => unreachable!("fence of an epoch that is not open succeeded"),
                    }
                } else {
                    let now = tsc();
                    vm.fencing = Some(Fencing {
                        epoch,
                        session: cmd.session,
                        started: now,
                        deadline: now.saturating_add(self.opts.fence_drain_ticks),
                        empty_since: None,
                    });
                    self.fencing += 1;
                    return None;
                }
            }
            Op::Commit(epoch) => match vm.queue.commit(epoch) {
                Ok(c) => {
                    vm.counters.epochs_committed.add(1);
                    if c.frames > 0 {
                        vm.commits.push_back((vm.queue.released_total(), tsc()));
                    }
                    Reply::Committed {
                        epoch,
                        frames: c.frames,
                    }
                }
                Err(e) => epoch_error(e),
            },
            Op::Unprotect(how) => {
                if vm.mode != Mode::Protected {
                    not_protected(vm.mode, "unprotect")
                } else {
                    let reply = match how {
                        Release::Release => {
                            let n = vm.queue.unprotect(how);
                            Reply::Unprotected {
                                released: n.frames,
                                dropped: 0,
                            }
                        }
                        Release::Drop => Reply::Unprotected {
                            released: 0,
                            dropped: vm.drop_held(DropReason::UnprotectDrop, true),
                        },
                    };
                    vm.mode = Mode::Passthrough;
                    reply
                }
            }
            Op::Discard => {
                if vm.mode != Mode::Protected {
                    not_protected(vm.mode, "discard")
                } else {
                    Reply::Discarded {
                        frames: vm.drop_held(DropReason::Discarded, false),
                    }
                }
            }
            Op::Promote(to) => {
                if vm.mode != Mode::Standby {
                    wrong_mode(vm.mode, "promote")
                } else {
                    if to == Mode::Protected {
                        vm.queue.protect();
                    }
                    vm.mode = to;
                    if to == Mode::Protected {
                        self.reset_policy(cmd.vm);
                    }
                    self.refresh_group_targets();
                    let announced = self.stage_announcements(cmd.vm);
                    Reply::Promoted {
                        mode: to,
                        announced,
                    }
                }
            }
            Op::Demote => {
                if vm.mode == Mode::Standby {
                    return Some(Reply::Demoted { dropped: 0 });
                }
                // (No fence can be draining: the session waits for a fence's answer before it
                // sends anything else. Cleared anyway, as for Fail.)
                if vm.fencing.take().is_some() {
                    self.fencing -= 1;
                }
                let vm = &mut self.vms[cmd.vm];
                let mut dropped = 0;
                if vm.mode == Mode::Protected {
                    // Its epochs end here; none of them may leave from this host any more.
                    dropped += vm.drop_held(DropReason::Demoted, true);
                }
                // Released frames still waiting go too: the VM's output is the other host's
                // now. (Frames already in the TX burst were released; they may still leave.)
                let n = vm.queue.drain_released(usize::MAX).count() as u64;
                vm.drop_frames(DropReason::Demoted, n);
                dropped += n;
                vm.mode = Mode::Standby;
                self.refresh_group_targets();
                Reply::Demoted { dropped }
            }
            Op::Fail => {
                if vm.fencing.take().is_some() {
                    self.fencing -= 1;
                }
                let vm = &mut self.vms[cmd.vm];
                if vm.mode == Mode::Protected {
                    // Its epochs end here: a new controller starts after all of them.
                    vm.drop_held(DropReason::ControllerLost, true);
                    vm.mode = Mode::Failed;
                    self.refresh_group_targets();
                }
                return None;
            }
        };
        Some(reply)
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

    /// VM `vi`'s port was seen empty during its fence: the fence seals, at once if that is
    /// final, else once the port has stayed empty for [`SETTLE_US`].
    fn seen_empty(&mut self, vi: VmIdx) {
        let vm = &mut self.vms[vi];
        let Some(f) = vm.fencing.as_mut() else { return };
        if vm.drain == DrainProof::Unproven {
            let since = *f.empty_since.get_or_insert(self.now);
            if self.now.saturating_sub(since) < self.opts.tsc_hz / 1_000_000 * SETTLE_US {
                return;
            }
        }
        self.seal(vi, false);
    }

    /// Ends VM `vi`'s fence: seals the open epoch and answers `Fenced`.
    fn seal(&mut self, vi: VmIdx, cut_short: bool) {
        let vm = &mut self.vms[vi];
        let Some(f) = vm.fencing.take() else { return };
        self.fencing -= 1;
        if cut_short {
            vm.counters.fences_cut_short.add(1);
        } else if vm.drain == DrainProof::Unproven {
            vm.counters.fences_unproven.add(1);
        }
        let drain_ns = self.ns.of(tsc().saturating_sub(f.started));
        meter::record(&mut self.meter.vm(vi).fence_drain, drain_ns, 1);
        let reply = match vm.queue.fence(f.epoch) {
            Ok(s) => {
                vm.counters.epochs_sealed.add(1);
                Reply::Fenced {
                    epoch: f.epoch,
                    frames: s.frames,
                    bytes: s.bytes,
                    drain_ns,
                }
            }
            Err(e) => epoch_error(e),
        };
        vm.policy.on_fence(tsc());
        vm.publish();
        self.answer(vi, f.session, reply);
    }

    /// Fences whose drain time is up seal with what they have.
    fn fence_deadlines(&mut self) {
        let now = self.now;
        for vi in 0..self.vms.len() {
            if self.vms[vi].fencing.is_some_and(|f| now > f.deadline) {
                self.seal(vi, true);
            }
        }
    }

    /// Stop: a protected VM's held output can never be proven committed any more, so it is
    /// discarded and counted; released and pass-through output is transmitted until the drain
    /// deadline; what TX still did not take is dropped and counted.
    fn shutdown(&mut self) {
        for vm in &mut self.vms {
            vm.drop_held(DropReason::Uncommitted, false);
            vm.fencing = None;
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
                || self.vms.iter().any(WorkerVm::eligible)
                || self.ports.iter().any(|p| !p.inbound.is_empty());
            if !pending || tsc() > deadline {
                break;
            }
        }
        for &(vi, _, _) in &self.out_owner {
            self.vms[vi].staged -= 1;
            self.vms[vi].drop_frames(DropReason::Shutdown, 1);
        }
        self.out.clear();
        self.out_owner.clear();
        for vm in &mut self.vms {
            let n = vm.queue.drain_released(usize::MAX).count() as u64;
            vm.drop_frames(DropReason::Shutdown, n);
            vm.publish();
        }
        self.publish_meter();
        self.meter.finish();
        for p in &mut self.ports {
            p.counters
                .drops
                .add(DropReason::Shutdown, p.inbound.len() as u64);
            p.inbound.clear();
        }
        let eg = &self.ports[self.egress].counters;
        eg.drops
            .add(DropReason::Shutdown, self.notices.len() as u64);
        self.notices.clear();
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

/// TSC ticks to nanoseconds by a multiply and a shift (a division would cost more than the
/// rest of a histogram record).
#[derive(Debug, Clone, Copy)]
struct Nanos {
    /// Nanoseconds per tick, in 32.32 fixed point.
    mult: u128,
}

impl Nanos {
    fn new(hz: u64) -> Nanos {
        Nanos {
            mult: (1_000_000_000u128 << 32) / u128::from(hz.max(1)),
        }
    }

    #[inline]
    fn of(self, ticks: u64) -> u64 {
        u64::try_from((u128::from(ticks) * self.mult) >> 32).unwrap_or(u64::MAX)
    }
}

fn not_protected(mode: Mode, what: &str) -> Reply {
    Reply::error(
        ErrorCode::NotProtected,
        format!("cannot {what}: the VM is {mode}, not protected"),
    )
}

fn wrong_mode(mode: Mode, what: &str) -> Reply {
    let why = match mode {
        Mode::Standby => "it is a standby copy: promote it first",
        Mode::Failed => "it is failed: adopt it with Hello first",
        Mode::Passthrough | Mode::Protected => "only a standby copy can be promoted",
    };
    Reply::error(
        ErrorCode::WrongMode,
        format!("cannot {what} while the VM is {mode}: {why}"),
    )
}

#[inline]
fn burst_bytes(burst: &Burst) -> u64 {
    burst.iter().map(|m| m.len() as u64).sum()
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
        self.0[vm].queue.front_released().map(|h| h.m.len() as u32)
    }
}

/// A VM's token buckets from its configured rate (none when it has no rate).
fn regulator(rate: RateLimit, hz: u64, now: u64) -> Option<Regulator> {
    let bytes =
        (rate.bytes_per_s > 0).then(|| Bucket::new(rate.bytes_per_s, rate.burst_bytes, hz, now));
    let frames = (rate.pps > 0).then(|| Bucket::new(rate.pps, rate.burst_frames, hz, now));
    (bytes.is_some() || frames.is_some()).then_some(Regulator { bytes, frames })
}

fn epoch_error(e: EpochError) -> Reply {
    let code = match e {
        EpochError::NotProtected => ErrorCode::NotProtected,
        EpochError::NotSealed { .. } => ErrorCode::NotSealed,
        _ => ErrorCode::WrongEpoch,
    };
    Reply::error(code, e.to_string())
}

#[cfg(test)]
mod tests {
    use super::{DrainProof, Nanos};

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

    #[test]
    fn nanos_converts_ticks_within_a_nanosecond_per_second() {
        for hz in [
            1_000_000_000u64,
            2_100_000_000,
            3_000_000_000,
            1_234_567_891,
        ] {
            let n = Nanos::new(hz);
            for ticks in [0u64, 1, 1_000, hz / 1000, hz, 3600 * hz] {
                let exact = (u128::from(ticks) * 1_000_000_000 / u128::from(hz)) as u64;
                let secs = ticks / hz + 1;
                assert!(
                    n.of(ticks).abs_diff(exact) <= secs,
                    "hz {hz} ticks {ticks}: {} vs {exact}",
                    n.of(ticks)
                );
            }
        }
    }
}
