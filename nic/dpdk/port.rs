//! Ethernet ports (vdevs or PCI devices probed by the EAL) and their queues. A port hands out
//! each rx/tx queue once, as an owned value: whoever holds a queue is its only user.

use super::{ffi, strerror, DpdkError, Eal, Mbuf, Mempool};
use arrayvec::ArrayVec;
use std::cell::Cell;
use std::ffi::CString;
use std::marker::PhantomData;
use std::sync::Arc;

#[derive(Debug)]
struct PortShared {
    id: u16,
    name: String,
}

/// A started port: the control handle (stats, link, MAC, close). Bursting happens on its queues.
#[derive(Debug)]
pub struct Port {
    shared: Arc<PortShared>,
}

/// Queue counts and ring sizes for [`Port::start`].
#[derive(Debug, Clone, Copy)]
pub struct PortConf {
    pub rx_queues: u16,
    pub tx_queues: u16,
    pub rx_ring: u16,
    pub tx_ring: u16,
}

/// Counters the driver keeps for a port (`rte_eth_stats`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PortStats {
    pub ipackets: u64,
    pub opackets: u64,
    pub ibytes: u64,
    pub obytes: u64,
    /// Frames the hardware/driver dropped because the rx ring was full.
    pub imissed: u64,
    pub ierrors: u64,
    pub oerrors: u64,
    /// rx failures for want of an mbuf.
    pub rx_nombuf: u64,
}

/// One rx queue of a started port, owned by exactly one thread.
#[derive(Debug)]
pub struct RxQueue {
    port: Arc<PortShared>,
    queue: u16,
    _not_sync: PhantomData<Cell<()>>,
}

/// One tx queue of a started port, owned by exactly one thread.
#[derive(Debug)]
pub struct TxQueue {
    port: Arc<PortShared>,
    queue: u16,
    _not_sync: PhantomData<Cell<()>>,
}

impl Port {
    /// Finds the device the EAL probed under `device_name` (a vdev name such as `net_pcap0`, or a
    /// PCI address), configures it with `conf`, starts it and returns the port and its queues.
    pub fn start(
        _eal: &Eal,
        device_name: &str,
        pool: &Mempool,
        conf: PortConf,
    ) -> Result<(Port, Vec<RxQueue>, Vec<TxQueue>), DpdkError> {
        let err = |op: &'static str, reason: String| DpdkError::Port {
            port: device_name.to_string(),
            op,
            reason,
        };
        let cname =
            CString::new(device_name).map_err(|_| err("lookup", "name contains NUL".into()))?;
        let mut id: u16 = 0;
        // SAFETY: EAL initialised (&Eal); cname is a valid C string; id is a valid out pointer.
        let rc = unsafe { ffi::rte_eth_dev_get_port_by_name(cname.as_ptr(), &mut id) };
        if rc != 0 {
            return Err(err(
                "lookup",
                "no such device: the EAL did not probe it (check the vdev spec or PCI address)"
                    .into(),
            ));
        }
        let mut info = ffi::rte_eth_dev_info::default();
        // SAFETY: id is a valid port id; info is a valid out struct.
        let rc = unsafe { ffi::rte_eth_dev_info_get(id, &mut info) };
        if rc != 0 {
            return Err(err("info", strerror(rc)));
        }
        if conf.rx_queues > info.max_rx_queues || conf.tx_queues > info.max_tx_queues {
            return Err(err(
                "configure",
                format!(
                    "needs {} rx / {} tx queues, device has at most {} / {}",
                    conf.rx_queues, conf.tx_queues, info.max_rx_queues, info.max_tx_queues
                ),
            ));
        }
        let eth_conf = ffi::rte_eth_conf::default();
        // SAFETY: id is valid; eth_conf is a zeroed (default) configuration that outlives the call.
        let rc =
            unsafe { ffi::rte_eth_dev_configure(id, conf.rx_queues, conf.tx_queues, &eth_conf) };
        if rc != 0 {
            return Err(err("configure", strerror(rc)));
        }
        let (mut nrx, mut ntx) = (conf.rx_ring, conf.tx_ring);
        // SAFETY: id is valid and configured; nrx/ntx are valid in/out pointers.
        let rc = unsafe { ffi::rte_eth_dev_adjust_nb_rx_tx_desc(id, &mut nrx, &mut ntx) };
        if rc != 0 {
            return Err(err("adjust ring sizes", strerror(rc)));
        }
        // SAFETY: id is valid; rte_eth_dev_socket_id only reads device data.
        let socket = unsafe { ffi::rte_eth_dev_socket_id(id) };
        let socket = u32::try_from(socket).unwrap_or(ffi::SOCKET_ID_ANY as u32);
        for q in 0..conf.rx_queues {
            // SAFETY: id is configured with rx_queues queues; a null rx_conf means driver
            // defaults; pool is a live mempool that outlives the port (pools are never freed).
            let rc = unsafe {
                ffi::rte_eth_rx_queue_setup(id, q, nrx, socket, std::ptr::null(), pool.as_ptr())
            };
            if rc != 0 {
                return Err(err("rx queue setup", strerror(rc)));
            }
        }
        for q in 0..conf.tx_queues {
            // SAFETY: id is configured with tx_queues queues; null tx_conf means driver defaults.
            let rc = unsafe { ffi::rte_eth_tx_queue_setup(id, q, ntx, socket, std::ptr::null()) };
            if rc != 0 {
                return Err(err("tx queue setup", strerror(rc)));
            }
        }
        // SAFETY: id is configured with all its queues set up.
        let rc = unsafe { ffi::rte_eth_dev_start(id) };
        if rc != 0 {
            return Err(err("start", strerror(rc)));
        }
        // Promiscuous so the uplink receives frames for every VM's MAC; some vdevs do not support
        // it and do not need it, so a refusal is not an error.
        // SAFETY: id is a started port.
        let _ = unsafe { ffi::rte_eth_promiscuous_enable(id) };

        let shared = Arc::new(PortShared {
            id,
            name: device_name.to_string(),
        });
        let rx = (0..conf.rx_queues)
            .map(|queue| RxQueue {
                port: shared.clone(),
                queue,
                _not_sync: PhantomData,
            })
            .collect();
        let tx = (0..conf.tx_queues)
            .map(|queue| TxQueue {
                port: shared.clone(),
                queue,
                _not_sync: PhantomData,
            })
            .collect();
        Ok((Port { shared }, rx, tx))
    }

    pub fn id(&self) -> u16 {
        self.shared.id
    }

    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The driver's counters for this port.
    pub fn stats(&self) -> PortStats {
        self.stats_reader().read()
    }

    /// Reads this port's driver counters from any thread (the stats and admin threads).
    pub fn stats_reader(&self) -> StatsReader {
        StatsReader(self.shared.id)
    }

    /// Whether the link is up (for vhost-user: a VMM is attached and its queues are ready).
    pub fn link_up(&self) -> bool {
        // SAFETY: the port exists; eg_link_up reads its link status without waiting.
        unsafe { ffi::eg_link_up(self.shared.id) != 0 }
    }

    /// The port's own MAC address.
    pub fn mac(&self) -> crate::wire::frame::MacAddr {
        let mut a = ffi::rte_ether_addr::default();
        // SAFETY: the port exists; a is a valid out struct.
        unsafe { ffi::rte_eth_macaddr_get(self.shared.id, &mut a) };
        crate::wire::frame::MacAddr(a.addr_bytes)
    }

    /// Stops and closes the port (a pcap port flushes its output file here). Refused, giving the
    /// port back, while any of its queues still exists somewhere.
    pub fn close(self) -> Result<(), Port> {
        if Arc::strong_count(&self.shared) > 1 {
            return Err(self);
        }
        // SAFETY: no queue of this port exists any more (strong count 1), so no thread is
        // bursting on it; the port id is valid and not used after this.
        unsafe {
            ffi::rte_eth_dev_stop(self.shared.id);
            ffi::rte_eth_dev_close(self.shared.id);
        }
        Ok(())
    }
}

impl RxQueue {
    /// Receives up to the free room of `out` into its tail; returns how many arrived.
    #[inline]
    pub fn rx_burst<const N: usize>(&mut self, out: &mut ArrayVec<Mbuf, N>) -> usize {
        self.rx_burst_upto(out, usize::MAX)
    }

    /// [`rx_burst`](Self::rx_burst) taking at most `max` frames (what the caller has room for;
    /// the rest stay in the port's ring).
    #[inline]
    pub fn rx_burst_upto<const N: usize>(
        &mut self,
        out: &mut ArrayVec<Mbuf, N>,
        max: usize,
    ) -> usize {
        let len = out.len();
        let room = u16::try_from(out.remaining_capacity().min(max)).unwrap_or(u16::MAX);
        if room == 0 {
            return 0;
        }
        // SAFETY: Mbuf is repr(transparent) over NonNull<rte_mbuf>, so the array's free tail is
        // `room` writable `*mut rte_mbuf` slots. We are this queue's only user (&mut self, !Sync).
        // The driver writes n <= room valid mbuf pointers whose references become ours, so
        // extending the length over exactly those n slots initialises them.
        unsafe {
            let tail = out.as_mut_ptr().add(len).cast::<*mut ffi::rte_mbuf>();
            let n = ffi::eg_rx_burst(self.port.id, self.queue, tail, room);
            out.set_len(len + usize::from(n));
            usize::from(n)
        }
    }
}

impl TxQueue {
    /// Transmits from the front of `frames`; the ones the driver took are removed (their
    /// references now belong to the driver), the rest stay, in order, for the next attempt.
    #[inline]
    pub fn tx_burst<const N: usize>(&mut self, frames: &mut ArrayVec<Mbuf, N>) -> usize {
        let len = frames.len();
        if len == 0 {
            return 0;
        }
        let count = u16::try_from(len).unwrap_or(u16::MAX);
        // SAFETY: the first `len` slots are initialised Mbufs (repr(transparent) pointers). We are
        // the queue's only user. The driver takes ownership of the first n; we then move the
        // remaining len - n down to the front (no Drop runs for the n taken ones) and shorten.
        unsafe {
            let base = frames.as_mut_ptr();
            let n = usize::from(ffi::eg_tx_burst(
                self.port.id,
                self.queue,
                base.cast(),
                count,
            ));
            std::ptr::copy(base.add(n), base, len - n);
            frames.set_len(len - n);
            n
        }
    }
}

/// Reads one port's driver counters; holds only the port id, so it never keeps a port open.
#[derive(Debug, Clone, Copy)]
pub struct StatsReader(u16);

impl StatsReader {
    /// The driver's counters now (all zero once the port is closed).
    pub fn read(self) -> PortStats {
        let mut s = ffi::rte_eth_stats::default();
        // SAFETY: s is a valid out struct. rte_eth_stats_get validates the port id and fails
        // (-ENODEV / -ENOTSUP) for a port that is gone; reading stats concurrently with bursts
        // on other threads is supported by DPDK drivers.
        let rc = unsafe { ffi::rte_eth_stats_get(self.0, &mut s) };
        if rc != 0 {
            return PortStats::default();
        }
        PortStats {
            ipackets: s.ipackets,
            opackets: s.opackets,
            ibytes: s.ibytes,
            obytes: s.obytes,
            imissed: s.imissed,
            ierrors: s.ierrors,
            oerrors: s.oerrors,
            rx_nombuf: s.rx_nombuf,
        }
    }
}
