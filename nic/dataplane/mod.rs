//! The data plane: from a validated [`Config`] to running ports and a worker on a pinned lcore.
//! [`Appliance::start`] brings it up, [`Appliance::snapshot`] reads its counters at any time,
//! [`Appliance::stop`] drains it, closes the ports (a pcap port flushes its file then) and gives
//! the final counters.
//!
//! Failing closed: a worker whose poll loop panics, or returns while nobody told it to stop,
//! sends nothing more. The unwind (or the return) drops the worker and with it every mbuf it
//! held: they go back to the pool, and no drop path transmits (an `Mbuf`'s drop only frees it);
//! its shutdown drain, which transmits released output, does not run. The lcore function
//! catches the unwind and records why in the appliance's [`Failure`] slot, which the main loop
//! polls ([`Appliance::failure`]); [`Appliance::stop`] then tells every session why, moves what
//! the worker's VMs still had waiting to the `worker-failed` drop reason, and says so.

#[cfg(debug_assertions)]
mod fault;
mod worker;

pub use worker::{DrainProof, PortRole, Worker, WorkerLinks, WorkerOptions, WorkerPort, WorkerVm};

use crate::admin::{AdminError, AdminServer};
use crate::config::{Config, PortSpec};
use crate::control::state;
use crate::control::{ControlError, ControlServer, ControlVm, Rings, Workers};
use crate::dpdk::{self, DpdkError, Eal, LaunchHandle, Mempool, Port, PortConf, StatsReader};
use crate::stats::meter::MeterHub;
use crate::stats::{
    ControlCounters, ControlSnapshot, EgressCounters, EgressSnapshot, MbufSnapshot, PortCounters,
    PortSnapshot, Snapshot, VmCounters, VmSetup, VmSnapshot, WorkerCounters, WorkerSnapshot,
};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// How long a stopping worker keeps transmitting what it may still send.
const DRAIN: Duration = Duration::from_millis(500);

/// Why the appliance could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Dpdk(#[from] DpdkError),
    #[error("{source}; eal.hugepages is true but no 2 MB hugepages are free: reserve some (scripts/setup.sh does) or set eal.hugepages = false")]
    NoHugepages { source: DpdkError },
    #[error("{path}: {why}")]
    VhostSocket { path: String, why: String },
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error(transparent)]
    State(#[from] crate::control::state::StateError),
    #[error(transparent)]
    Admin(#[from] AdminError),
    #[error(transparent)]
    Metrics(#[from] crate::admin::metrics::MetricsError),
    /// A port EAL or its driver refused (or its vhost-user socket), named by its config key.
    // Not `source`: the message already holds it (a source would print it twice).
    #[error("{key}: {spec}: {error}")]
    Port {
        key: String,
        spec: String,
        error: Box<StartError>,
    },
    #[error("{error}: EAL has no driver for this device (is the driver name right, is its PMD installed?)")]
    NoDriver { error: DpdkError },
    #[error("dataplane.mbufs: {error} (eal.memory_mb is {memory_mb}{huge})", huge = if *.hugepages { "" } else { ", without hugepages" })]
    Pool {
        error: DpdkError,
        memory_mb: u32,
        hugepages: bool,
    },
    #[error("eal.lcores: needs at least two lcores (the main lcore runs control and stats, a worker runs the poll loop); got {0:?}")]
    NoWorker(String),
}

struct VmView {
    name: String,
    counters: Arc<VmCounters>,
    setup: VmSetup,
}

struct PortView {
    name: String,
    role: PortRole,
    counters: Arc<PortCounters>,
    driver: StatsReader,
}

/// Everything a stats reader needs, readable from any thread (the main thread's printer and
/// the admin socket's thread): the counters the worker publishes, the drivers' counters and the
/// latency histograms.
pub struct StatsSource {
    vms: Vec<VmView>,
    ports: Vec<PortView>,
    meter: Arc<MeterHub>,
    /// Per worker.
    egress: Vec<Arc<EgressCounters>>,
    control: Arc<ControlCounters>,
    workers: Vec<Arc<WorkerCounters>>,
    /// The packet pool, whose counts are read (not written) by stats readers.
    pool: Arc<Mempool>,
    started: Instant,
}

impl StatsSource {
    /// The counters now.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            uptime_ms: self.started.elapsed().as_millis() as u64,
            vms: self
                .vms
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    let ([hold, c2w, drain], histograms) = self.meter.summary(i);
                    VmSnapshot {
                        hold_time: hold,
                        commit_to_wire: c2w,
                        fence_drain: drain,
                        histograms,
                        setup: v.setup.clone(),
                        ..VmSnapshot::of(&v.name, &v.counters)
                    }
                })
                .collect(),
            ports: self
                .ports
                .iter()
                .map(|p| PortSnapshot {
                    name: p.name.clone(),
                    role: p.role.name().to_string(),
                    rx_frames: p.counters.rx_frames.get(),
                    rx_bytes: p.counters.rx_bytes.get(),
                    tx_frames: p.counters.tx_frames.get(),
                    tx_bytes: p.counters.tx_bytes.get(),
                    dropped: p.counters.drops.snapshot(),
                    driver: p.driver.read(),
                })
                .collect(),
            egress: EgressSnapshot::sum(&self.egress),
            control: ControlSnapshot::of(&self.control),
            workers: self.workers.iter().map(|w| WorkerSnapshot::of(w)).collect(),
            mbufs: MbufSnapshot::of(self.pool.size(), self.pool.available()),
        }
    }
}

fn setup_of(vm: &crate::config::VmConfig) -> VmSetup {
    VmSetup {
        port: vm.port.as_ref().map_or_else(
            || "shared ingress".to_string(),
            |p| p.device_name().to_string(),
        ),
        vlan: vm.vlan,
        max_held_frames: vm.limits.max_frames,
        max_held_bytes: vm.limits.max_bytes,
        high_water_frames: vm.limits.high_water_frames,
        high_water_bytes: vm.limits.high_water_bytes,
        on_full: vm.limits.on_full.as_str().to_string(),
        rate_bytes_per_s: vm.rate.bytes_per_s,
        rate_pps: vm.rate.pps,
        burst_bytes: vm.rate.burst_bytes,
        burst_frames: vm.rate.burst_frames,
    }
}

/// A vhost-user port's socket must be creatable: its directory is made if missing, and a socket
/// file left by a process that died (nobody accepts on it) is removed, so that epochgate comes
/// back after a crash. A socket another live process serves is refused.
fn prepare_vhost_socket(spec: &PortSpec) -> Result<(), StartError> {
    let PortSpec::Vdev { spec, name } = spec else {
        return Ok(());
    };
    if !name.starts_with("net_vhost") {
        return Ok(());
    }
    let Some(path) = spec.split(',').find_map(|kv| kv.strip_prefix("iface=")) else {
        return Ok(());
    };
    let err = |why: String| StartError::VhostSocket {
        path: path.to_string(),
        why,
    };
    let path = std::path::Path::new(path);
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| err(format!("cannot create its directory: {e}")))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(err(
                "another process is serving this vhost-user socket".into()
            ));
        }
        std::fs::remove_file(path)
            .map_err(|e| err(format!("stale socket file cannot be removed: {e}")))?;
    }
    Ok(())
}

/// The request policy runs on TSC ticks (the worker's clock): its nanoseconds converted once.
fn policy_in_ticks(
    p: crate::hold::policy::PolicyConfig,
    hz: u64,
) -> crate::hold::policy::PolicyConfig {
    let t = |ns: u64| (u128::from(ns) * u128::from(hz) / 1_000_000_000) as u64;
    crate::hold::policy::PolicyConfig {
        defer_delay_ns: t(p.defer_delay_ns),
        max_defer_ns: t(p.max_defer_ns),
        min_interval_ns: t(p.min_interval_ns),
        high_water_frames: p.high_water_frames,
        high_water_bytes: p.high_water_bytes,
    }
}

/// Free 2 MB hugepages as the kernel reports them (0 if unknown).
pub fn free_hugepages() -> u64 {
    std::fs::read_to_string("/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// Why a worker stopped by itself: set once, by the worker's lcore, when its poll loop panicked
/// or returned without being told to stop. Reading it is one atomic load.
type Failure = Arc<OnceLock<String>>;

/// Runs `worker` on `lcore`. A panic is caught here, in the lcore function (it must not unwind
/// into DPDK's C), after it dropped the worker and every frame it held; it and an early return
/// are recorded in `failure` as "worker lcore N failed: ...". Returns the lcore's status: 0 for
/// a worker that stopped when told, -1 for a failed one.
fn launch_worker(
    eal: &Eal,
    lcore: u32,
    worker: Worker,
    quit: Arc<AtomicBool>,
    failure: Failure,
) -> Result<LaunchHandle, DpdkError> {
    dpdk::launch_on(eal, lcore, move || {
        let why = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| worker.run())) {
            Ok(0) if quit.load(Relaxed) => return 0,
            Ok(rc) => format!("its poll loop returned ({rc}) before it was told to stop"),
            Err(panic) => {
                let text = panic
                    .downcast_ref::<&str>()
                    .copied()
                    .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
                    .unwrap_or("(a panic without a message)");
                format!("panicked: {text}")
            }
        };
        let _ = failure.set(format!("worker lcore {lcore} failed: {why}"));
        -1
    })
}

/// What [`Appliance::stop`] ends with.
pub struct Stopped {
    /// The final counters.
    pub snapshot: Snapshot,
    /// Set if a worker failed ("worker lcore N failed: ..."): the process must exit non-zero.
    pub failure: Option<String>,
    /// Frames the failed worker's VMs still had waiting (held, released or staged) as of its
    /// last published counters: freed with the worker, never sent, now counted as
    /// `worker-failed`.
    pub discarded: u64,
}

/// A running epochgate data plane.
pub struct Appliance {
    eal: &'static Eal,
    stats: Arc<StatsSource>,
    ports: Vec<Port>,
    quit: Arc<AtomicBool>,
    worker: Option<LaunchHandle>,
    failure: Failure,
    control: Option<ControlServer>,
    admin: Option<AdminServer>,
    metrics: Option<crate::admin::metrics::MetricsServer>,
}

impl Appliance {
    /// Starts the EAL (once per process), the mempool and every port, and launches the worker.
    pub fn start(cfg: &Config) -> Result<Appliance, StartError> {
        let state::Resumed {
            modes,
            tracker,
            notes,
        } = state::resume(cfg)?;
        for n in &notes {
            eprintln!("epochgate: {n}");
        }
        let specs = cfg.ports();
        let keys = cfg.port_keys();
        let at_port = |i: usize, source: StartError| StartError::Port {
            key: keys[i].0.clone(),
            spec: specs[i].to_string(),
            error: Box::new(source),
        };
        for (i, spec) in specs.iter().enumerate() {
            prepare_vhost_socket(spec).map_err(|e| at_port(i, e))?;
        }
        let eal = dpdk::init(&crate::config::eal_args(&cfg.eal, &specs)).map_err(|source| {
            // ENODEV: EAL found no driver for a --vdev; name the first one of a driver we do
            // not know either (a typo, or a PMD that is not installed).
            let unknown = specs.iter().position(|s| {
                matches!(s, PortSpec::Vdev { name, .. } if !crate::config::known_vdev_driver(name))
            });
            match unknown {
                Some(i) if source.to_string().contains("(errno 19)") => {
                    at_port(i, StartError::NoDriver { error: source })
                }
                _ if cfg.eal.hugepages && free_hugepages() == 0 => {
                    StartError::NoHugepages { source }
                }
                _ => StartError::Dpdk(source),
            }
        })?;
        let lcore = *dpdk::worker_lcores(eal)
            .first()
            .ok_or_else(|| StartError::NoWorker(cfg.eal.lcores.clone()))?;
        let pool = Arc::new(
            Mempool::create(
                eal,
                &format!("eg_pool_{}", std::process::id()),
                cfg.dataplane.mbufs,
                cfg.dataplane.mbuf_cache,
            )
            .map_err(|error| StartError::Pool {
                error,
                memory_mb: cfg.eal.memory_mb,
                hugepages: cfg.eal.hugepages,
            })?,
        );
        let conf = PortConf {
            rx_queues: 1,
            tx_queues: 1,
            rx_ring: cfg.dataplane.rx_ring,
            tx_ring: cfg.dataplane.tx_ring,
        };

        // Port order is cfg.ports(): egress, then the shared ingress, then VM ports.
        let mut ports = Vec::new();
        let mut views = Vec::new();
        let mut wports = Vec::new();
        for (i, spec) in specs.iter().enumerate() {
            let role = match i {
                0 => PortRole::Egress,
                1 if cfg.ingress.is_some() => PortRole::Ingress,
                _ => PortRole::Vm,
            };
            let (port, mut rx, mut tx) = Port::start(eal, spec.device_name(), &pool, conf)
                .map_err(|e| at_port(i, e.into()))?;
            let counters = Arc::new(PortCounters::default());
            let (Some(rxq), Some(txq)) = (rx.pop(), tx.pop()) else {
                unreachable!("Port::start returns the one rx and tx queue it was asked for");
            };
            wports.push(WorkerPort::new(rxq, txq, counters.clone()));
            views.push(PortView {
                name: port.name().to_string(),
                role,
                counters,
                driver: port.stats_reader(),
            });
            ports.push(port);
        }
        let port_index = |spec: &PortSpec| {
            specs
                .iter()
                .position(|s| s.device_name() == spec.device_name())
        };

        let mut vms = Vec::new();
        let mut wvms = Vec::new();
        for (vm, &mode) in cfg.vms.iter().zip(&modes) {
            let counters = Arc::new(VmCounters::default());
            let announce = vm
                .mac
                .map(|mac| crate::wire::announce::frames(mac, vm.vlan, &vm.announce))
                .unwrap_or_default();
            wvms.push(
                WorkerVm::new(
                    mode,
                    vm.port.as_ref().and_then(port_index),
                    vm.mac,
                    vm.vlan,
                    vm.limits,
                    counters.clone(),
                )
                .with_rate(vm.rate)
                .with_drain(
                    vm.port
                        .as_ref()
                        .or(cfg.ingress.as_ref())
                        .map_or(DrainProof::Unproven, DrainProof::of),
                )
                .with_announcements(announce, vm.announce_count, vm.announce_interval_ms)
                .with_classification(&vm.name, vm.defer),
            );
            vms.push(VmView {
                name: vm.name.clone(),
                counters,
                setup: setup_of(vm),
            });
        }

        let rings = Arc::new(Rings::new(vms.len()));
        let meter = MeterHub::new(vms.len());
        let egress = Arc::new(EgressCounters::default());
        let worker_counters = Arc::new(WorkerCounters::default());
        worker_counters.lcore.set(u64::from(lcore));
        let control = ControlServer::start(
            &cfg.control,
            vms.iter()
                .map(|v| ControlVm {
                    name: v.name.clone(),
                    counters: v.counters.clone(),
                })
                .collect(),
            // One worker owns every VM today; `Workers` and everything per worker below
            // (rings, meter ids, egress and loop counters) take more.
            Workers::single(rings.clone(), vms.len()),
            tracker,
        )?;
        let quit = Arc::new(AtomicBool::new(false));
        let tsc_hz = dpdk::tsc_hz(eal);
        let ms = |n: u64| tsc_hz / 1000 * n;
        let worker = Worker::new(
            wports,
            wvms,
            0,
            cfg.ingress.as_ref().map(|_| 1),
            WorkerOptions {
                drain_ticks: ms(DRAIN.as_millis() as u64),
                fence_drain_ticks: ms(cfg.control.fence_drain_ms),
                tsc_hz,
                policy: policy_in_ticks(cfg.classifier.policy, tsc_hz),
                classifier: Arc::new(crate::classify::Classifier::new(
                    cfg.classifier.rules.clone(),
                )),
                windows: cfg.classifier.window_updates.then_some((
                    cfg.classifier.flow_table,
                    cfg.classifier.window_update_threshold,
                )),
                passthrough_min_share_ppm: cfg.passthrough_min_share_ppm,
            },
            WorkerLinks {
                quit: quit.clone(),
                rings,
                pool: pool.clone(),
                meter: meter.clone(),
                vm_ids: (0..vms.len()).collect(),
                egress: egress.clone(),
                counters: worker_counters.clone(),
            },
        );
        let stats = Arc::new(StatsSource {
            vms,
            ports: views,
            meter,
            egress: vec![egress],
            control: control.counters(),
            workers: vec![worker_counters],
            pool,
            started: Instant::now(),
        });
        let source: crate::admin::SnapshotFn = {
            let stats = stats.clone();
            Arc::new(move || stats.snapshot())
        };
        let admin = AdminServer::start_for(
            &cfg.control,
            &cfg.admin,
            source.clone(),
            control.counters(),
            control.operator(),
        )?;
        let metrics = cfg
            .admin
            .metrics_listen
            .map(|addr| crate::admin::metrics::MetricsServer::start(addr, source))
            .transpose()?;
        let failure = Failure::default();
        let handle = launch_worker(eal, lcore, worker, quit.clone(), failure.clone())?;
        Ok(Appliance {
            eal,
            stats,
            ports,
            quit,
            worker: Some(handle),
            failure,
            control: Some(control),
            admin: Some(admin),
            metrics,
        })
    }

    /// Where `/metrics` is served, if `[admin] metrics_listen` is set (the port the kernel
    /// chose when it asked for port 0).
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics.as_ref().map(|m| m.local_addr())
    }

    /// The counters now.
    pub fn snapshot(&self) -> Snapshot {
        self.stats.snapshot()
    }

    pub fn eal(&self) -> &'static Eal {
        self.eal
    }

    /// Set once a worker has failed (its poll loop panicked or returned by itself): why,
    /// naming its lcore. The main loop polls this and then stops the appliance.
    pub fn failure(&self) -> Option<&str> {
        self.failure.get().map(String::as_str)
    }

    /// Stops the worker (it drains what it may send), closes every port and returns the final
    /// counters. After a worker failed, sessions are told why instead, and what its VMs still
    /// had waiting is counted as discarded (`worker-failed`): nothing of it was sent.
    pub fn stop(mut self) -> Stopped {
        // Sessions are told first and no command is taken after this; the worker then
        // discards what is held and sends what was released (a failed one sends nothing).
        if let Some(c) = self.control.take() {
            match self.failure() {
                Some(why) => c.fail(format!(
                    "epochgate is stopping: {why}; nothing it held was sent (held output is discarded: it can never be proven committed); reconnect to the new process and start a new epoch"
                )),
                None => c.stop(),
            }
        }
        if let Some(a) = self.admin.take() {
            a.stop();
        }
        if let Some(m) = self.metrics.take() {
            m.stop();
        }
        self.quit.store(true, Relaxed);
        if let Some(h) = self.worker.take() {
            h.wait();
        }
        // Joined: the worker is gone (a failure during its drain is seen here too), so its
        // VMs' counters have no writer but this thread. (One worker owns every VM today; with
        // several, only the failed one's VMs would be counted here.)
        let failure = self.failure.get().cloned();
        let discarded = match failure {
            Some(_) => self
                .stats
                .vms
                .iter()
                .map(|v| {
                    v.counters
                        .discard_waiting(crate::stats::DropReason::WorkerFailed)
                })
                .sum(),
            None => 0,
        };
        let snap = self.snapshot();
        for p in self.ports.drain(..) {
            if let Err(port) = p.close() {
                // Unreachable after the worker returned (it owned the queues); say so if not.
                eprintln!(
                    "epochgate: port {} still has queues in use; not closed",
                    port.name()
                );
            }
        }
        Stopped {
            snapshot: snap,
            failure,
            discarded,
        }
    }
}
