//! The poll loop of one worker lcore. It owns its VMs' queues and one queue of every port, so
//! nothing here locks, allocates per frame or makes a syscall.
//!
//! Each round: VM ports and the shared ingress -> per-VM queues (a full queue stops reading its
//! VM's port: backpressure into the guest) -> round robin into the egress stage -> tx burst; and
//! the uplink -> each destination VM's port, unbuffered. A frame TX did not take stays at the head
//! of its stage for the next round, so nothing is dropped because a ring was momentarily full.

use super::demux::{Demux, Inbound, VmIdx};
use crate::config::Mode;
use crate::dpdk::{tsc, Burst, Mbuf, RxQueue, TxQueue, BURST};
use crate::frame::{self, MacAddr};
use crate::stats::{DropReason, PortCounters, VmCounters};
use arrayvec::ArrayVec;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;

/// Inbound frames waiting for one port's TX.
const INBOUND_STAGE: usize = 128;

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

/// A VM as its worker sees it.
pub struct WorkerVm {
    pub mode: Mode,
    /// Index of its own port, or `None` on the shared ingress.
    pub port: Option<usize>,
    pub mac: Option<MacAddr>,
    pub vlan: Option<u16>,
    pub counters: Arc<VmCounters>,
    /// Frames waiting for egress, in the order the VM sent them. A protected VM's frames wait
    /// here until output commit releases them (not before: see `eligible`).
    queue: VecDeque<Mbuf>,
    capacity: usize,
}

impl WorkerVm {
    pub fn new(
        mode: Mode,
        port: Option<usize>,
        mac: Option<MacAddr>,
        vlan: Option<u16>,
        capacity: usize,
        counters: Arc<VmCounters>,
    ) -> Self {
        if let Some(m) = mac {
            counters.mac.set(mac_to_u64(m));
        }
        WorkerVm {
            mode,
            port,
            mac,
            vlan,
            counters,
            queue: VecDeque::with_capacity(capacity),
            capacity,
        }
    }

    /// Whether queued frames may go to egress now. Protected VMs have no commit path yet, so
    /// their output is held (never leaked) and discarded at exit.
    #[inline]
    fn eligible(&self) -> bool {
        self.mode == Mode::Passthrough && !self.queue.is_empty()
    }

    /// Whether inbound frames are delivered to it (not to a standby copy).
    fn active(&self) -> bool {
        self.mode != Mode::Standby
    }

    fn drop_frames(&self, reason: DropReason, n: u64) {
        self.counters.drops.add(reason, n);
        self.counters.waiting.sub(n);
    }
}

fn mac_to_u64(m: MacAddr) -> u64 {
    let b = m.0;
    u64::from_be_bytes([0, 0, b[0], b[1], b[2], b[3], b[4], b[5]])
}

/// How long the worker keeps transmitting released output after it was told to stop.
pub struct WorkerOptions {
    pub drain_ticks: u64,
}

/// One worker: every VM and port is owned by it (DESIGN.md allows more workers; the foundation
/// runs one).
pub struct Worker {
    ports: Vec<WorkerPort>,
    vms: Vec<WorkerVm>,
    demux: Demux,
    egress: usize,
    ingress: Option<usize>,
    /// Frames staged for the egress TX queue, and for each its VM and length.
    out: Burst,
    out_owner: ArrayVec<(VmIdx, u32), BURST>,
    /// Next VM to serve in the round robin.
    next_vm: usize,
    /// Ports reached by a broadcast (each once) and the VMs that it reaches.
    group_ports: Vec<usize>,
    group_vms: Vec<VmIdx>,
    quit: Arc<AtomicBool>,
    opts: WorkerOptions,
}

impl Worker {
    /// `egress` and `ingress` index `ports`; each VM's `port` too. Configured MACs are bound to
    /// their VMs here; VMs with their own port and no MAC learn it from their first frame.
    pub fn new(
        ports: Vec<WorkerPort>,
        vms: Vec<WorkerVm>,
        egress: usize,
        ingress: Option<usize>,
        quit: Arc<AtomicBool>,
        opts: WorkerOptions,
    ) -> Worker {
        let mut demux = Demux::new();
        for (i, vm) in vms.iter().enumerate() {
            if let Some(mac) = vm.mac {
                demux.bind(mac, vm.vlan, i);
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
            next_vm: 0,
            group_ports: Vec::new(),
            group_vms: Vec::new(),
            quit,
            opts,
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
        self.rx_vm_ports();
        self.rx_shared_ingress();
        self.rx_uplink();
        self.tx_inbound();
        self.fill_egress();
        self.tx_egress();
    }

    fn rx_vm_ports(&mut self) {
        for vi in 0..self.vms.len() {
            let vm = &self.vms[vi];
            let Some(pi) = vm.port else { continue };
            // Backpressure: leave frames in the port (the guest's ring) while the VM's queue
            // has no room for a whole burst.
            if vm.capacity - vm.queue.len() < BURST {
                continue;
            }
            let mut burst = Burst::new();
            let port = &mut self.ports[pi];
            if port.rx.rx_burst(&mut burst) == 0 {
                continue;
            }
            let bytes = burst_bytes(&burst);
            count_rx(&port.counters, burst.len(), bytes);
            count_rx_vm(&vm.counters, burst.len(), bytes);
            for m in burst {
                self.accept(vi, m);
            }
        }
    }

    fn rx_shared_ingress(&mut self) {
        let Some(pi) = self.ingress else { return };
        let mut burst = Burst::new();
        let port = &mut self.ports[pi];
        if port.rx.rx_burst(&mut burst) == 0 {
            return;
        }
        count_rx(&port.counters, burst.len(), burst_bytes(&burst));
        for m in burst {
            match self.demux.source(m.data()) {
                Some(vi) => {
                    count_rx_vm(&self.vms[vi].counters, 1, m.len() as u64);
                    self.accept(vi, m);
                }
                None => {
                    let reason = if m.data().len() < 14 {
                        DropReason::Runt
                    } else {
                        DropReason::UnknownSource
                    };
                    self.ports[pi].counters.drops.add(reason, 1);
                }
            }
        }
    }

    /// A frame the VM sent (already counted as received and waiting): queued, or dropped under
    /// a named reason.
    #[inline]
    fn accept(&mut self, vi: VmIdx, m: Mbuf) {
        let vm = &mut self.vms[vi];
        if vm.mac.is_none() {
            if let Some(src) = frame::src_mac(m.data()).filter(MacAddr::is_unicast) {
                if self.demux.bind(src, vm.vlan, vi) {
                    vm.mac = Some(src);
                    vm.counters.mac.set(mac_to_u64(src));
                }
            }
        }
        if m.data().len() < 14 {
            vm.drop_frames(DropReason::Runt, 1);
        } else if vm.mode == Mode::Standby {
            vm.drop_frames(DropReason::Standby, 1);
        } else if vm.queue.len() >= vm.capacity {
            vm.drop_frames(DropReason::VmQueueFull, 1);
        } else {
            vm.queue.push_back(m);
        }
    }

    /// Moves frames from eligible VMs' queues into the egress stage: round robin over VMs, each
    /// turn a run of up to the stage's free room from one VM (runs keep the per-frame cost low).
    fn fill_egress(&mut self) {
        let n = self.vms.len();
        let mut passed = 0;
        while !self.out.is_full() && passed < n {
            let vi = self.next_vm;
            self.next_vm = if vi + 1 == n { 0 } else { vi + 1 };
            let vm = &mut self.vms[vi];
            if !vm.eligible() {
                passed += 1;
                continue;
            }
            passed = 0;
            let take = self.out.remaining_capacity().min(vm.queue.len());
            for m in vm.queue.drain(..take) {
                let len = m.len() as u32;
                self.out.push(m);
                self.out_owner.push((vi, len));
            }
        }
    }

    fn tx_egress(&mut self) {
        if self.out.is_empty() {
            return;
        }
        let port = &mut self.ports[self.egress];
        let sent = port.tx.tx_burst(&mut self.out);
        if sent == 0 {
            return;
        }
        // Account by runs of the same VM: one counter update per run, not per frame.
        let mut total = 0u64;
        let mut run: Option<(VmIdx, u64, u64)> = None;
        for &(vi, len) in &self.out_owner[..sent] {
            total += u64::from(len);
            match &mut run {
                Some((v, frames, bytes)) if *v == vi => {
                    *frames += 1;
                    *bytes += u64::from(len);
                }
                _ => {
                    if let Some((v, frames, bytes)) = run {
                        count_tx_vm(&self.vms[v].counters, frames, bytes);
                    }
                    run = Some((vi, 1, u64::from(len)));
                }
            }
        }
        if let Some((v, frames, bytes)) = run {
            count_tx_vm(&self.vms[v].counters, frames, bytes);
        }
        self.out_owner.drain(..sent);
        port.counters.tx_frames.add(sent as u64);
        port.counters.tx_bytes.add(total);
    }

    /// The inbound path: frames from the uplink to the port of the VM they are addressed to.
    fn rx_uplink(&mut self) {
        let mut burst = Burst::new();
        let eg = self.egress;
        if self.ports[eg].rx.rx_burst(&mut burst) == 0 {
            return;
        }
        count_rx(&self.ports[eg].counters, burst.len(), burst_bytes(&burst));
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
                let left: u64 = p.inbound.iter().map(|m| m.len() as u64).sum();
                p.counters.tx_frames.add(sent as u64);
                p.counters.tx_bytes.add(p.inbound_bytes - left);
                p.inbound_bytes = left;
            }
        }
    }

    /// Stop: a protected VM's held output can never be proven committed any more, so it is
    /// discarded and counted; released and pass-through output is transmitted until the drain
    /// deadline; what TX still did not take is dropped and counted.
    fn shutdown(&mut self) {
        for vm in &mut self.vms {
            if vm.mode == Mode::Protected {
                let n = vm.queue.len() as u64;
                vm.queue.clear();
                vm.drop_frames(DropReason::Uncommitted, n);
            }
        }
        let deadline = tsc().saturating_add(self.opts.drain_ticks);
        loop {
            self.fill_egress();
            self.tx_egress();
            self.tx_inbound();
            let pending = !self.out.is_empty()
                || self.vms.iter().any(WorkerVm::eligible)
                || self.ports.iter().any(|p| !p.inbound.is_empty());
            if !pending || tsc() > deadline {
                break;
            }
        }
        for &(vi, _) in &self.out_owner {
            self.vms[vi].drop_frames(DropReason::Shutdown, 1);
        }
        self.out.clear();
        self.out_owner.clear();
        for vm in &mut self.vms {
            let n = vm.queue.len() as u64;
            vm.queue.clear();
            vm.drop_frames(DropReason::Shutdown, n);
        }
        for p in &mut self.ports {
            p.counters
                .drops
                .add(DropReason::Shutdown, p.inbound.len() as u64);
            p.inbound.clear();
        }
    }
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

/// Received from the VM: counted as received and as waiting until transmitted or dropped.
#[inline]
fn count_rx_vm(c: &VmCounters, frames: usize, bytes: u64) {
    c.rx_frames.add(frames as u64);
    c.rx_bytes.add(bytes);
    c.waiting.add(frames as u64);
}

#[inline]
fn count_tx_vm(c: &VmCounters, frames: u64, bytes: u64) {
    c.tx_frames.add(frames);
    c.tx_bytes.add(bytes);
    c.waiting.sub(frames);
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
