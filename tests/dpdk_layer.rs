//! The safe DPDK layer against a real EAL (--no-huge, net_null vdevs): owned mbufs return to
//! their pool exactly once (drop, TX, shared copies), bursts fill fixed arrays, a port cannot be
//! closed while its queues live, and the EAL is started once per process.

use epochgate::dpdk::{self, Burst, Mbuf, Mempool, Port, PortConf};
use std::sync::{Mutex, OnceLock};

struct Env {
    eal: &'static dpdk::Eal,
    pool: Mempool,
}

fn args() -> Vec<String> {
    [
        "dpdk-layer-test",
        "-l",
        "0",
        "--no-huge",
        "-m",
        "256",
        "--no-pci",
        "--file-prefix",
        &format!("eg-dpdk-layer-{}", std::process::id()),
        "--vdev",
        "net_null0,size=128",
        "--vdev",
        "net_null1,no-rx=1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// One EAL per process: every test shares it, one at a time.
fn env() -> std::sync::MutexGuard<'static, Env> {
    static ENV: OnceLock<Mutex<Env>> = OnceLock::new();
    ENV.get_or_init(|| {
        let eal = dpdk::init(&args()).expect("EAL");
        let pool = Mempool::create(eal, "layer_pool", 2047, 0).expect("pool");
        Mutex::new(Env { eal, pool })
    })
    .lock()
    .unwrap_or_else(|p| p.into_inner())
}

#[test]
fn mbufs_carry_bytes_and_return_to_the_pool_once() {
    let e = env();
    let before = e.pool.available();
    let bytes: Vec<u8> = (0..200u8).collect();
    let m = Mbuf::from_bytes(&e.pool, &bytes).expect("alloc");
    assert_eq!(m.data(), &bytes[..]);
    assert_eq!(m.len(), 200);
    assert_eq!(m.segments(), 1);
    assert_eq!(e.pool.available(), before - 1);
    let shared = m.share();
    assert_eq!(m.refcnt(), 2);
    assert_eq!(
        shared.data(),
        &bytes[..],
        "a shared mbuf is the same buffer"
    );
    drop(m);
    assert_eq!(shared.refcnt(), 1);
    assert_eq!(
        e.pool.available(),
        before - 1,
        "freed only when the last owner goes"
    );
    drop(shared);
    assert_eq!(e.pool.available(), before);
    assert!(
        Mbuf::from_bytes(&e.pool, &vec![0u8; 70_000]).is_none(),
        "too large for one segment"
    );
    assert_eq!(
        e.pool.available(),
        before,
        "a refused frame does not leak its mbuf"
    );
}

#[test]
fn bursts_fill_fixed_arrays_and_tx_takes_ownership() {
    let e = env();
    let conf = PortConf {
        rx_queues: 1,
        tx_queues: 1,
        rx_ring: 256,
        tx_ring: 256,
    };
    let (src, mut srx, stx) = Port::start(e.eal, "net_null0", &e.pool, conf).expect("net_null0");
    let (sink, srx2, mut ttx) = Port::start(e.eal, "net_null1", &e.pool, conf).expect("net_null1");
    let before = e.pool.available();
    let mut rxq = srx.pop().unwrap();
    let mut burst = Burst::new();
    assert_eq!(
        rxq.rx_burst(&mut burst),
        dpdk::BURST,
        "a null source fills the burst"
    );
    assert!(burst.iter().all(|m| m.len() == 128));
    assert_eq!(
        rxq.rx_burst(&mut burst),
        0,
        "a full array receives nothing more"
    );
    assert_eq!(e.pool.available(), before - dpdk::BURST as u32);
    let mut txq = ttx.pop().unwrap();
    assert_eq!(txq.tx_burst(&mut burst), dpdk::BURST);
    assert!(burst.is_empty(), "sent frames leave the array");
    assert_eq!(
        e.pool.available(),
        before,
        "the sink freed what it took: nothing leaked"
    );

    // A port cannot be closed while one of its queues still exists.
    let src = src.close().expect_err("queues still alive");
    drop((rxq, stx, srx));
    src.close().expect("closes once its queues are gone");
    drop((txq, srx2, ttx));
    sink.close().expect("closes");
}

#[test]
fn the_eal_starts_once_per_process() {
    let e = env();
    assert!(std::ptr::eq(
        dpdk::init(&args()).expect("same args: the running EAL"),
        e.eal
    ));
    let mut other = args();
    other[2] = "0-1".into();
    let err = dpdk::init(&other).expect_err("different args must be refused");
    assert!(err.to_string().contains("one EAL per process"), "{err}");
    assert!(dpdk::tsc_hz(e.eal) > 0);
    let t = dpdk::tsc();
    assert!(dpdk::tsc() >= t);
}

/// Rate limits, deferral deadlines and every latency are TSC ticks over `tsc_hz`: it must be
/// the TSC's rate against the system clock, whatever happened to the process at start-up.
#[test]
fn tsc_hz_is_the_tscs_rate_against_the_system_clock() {
    let e = env();
    // The narrowest of 32 brackets `tsc, clock, tsc` at each end of 200 ms.
    let origin = std::time::Instant::now();
    let stamp = || {
        (0..32)
            .map(|_| {
                let a = dpdk::tsc();
                let ns = origin.elapsed().as_nanos() as f64;
                let b = dpdk::tsc();
                (b - a, (a + (b - a) / 2) as f64, ns)
            })
            .min_by_key(|s| s.0)
            .unwrap()
    };
    let (_, t0, n0) = stamp();
    std::thread::sleep(std::time::Duration::from_millis(200));
    let (_, t1, n1) = stamp();
    let measured = (t1 - t0) / (n1 - n0) * 1e9;
    let hz = dpdk::tsc_hz(e.eal) as f64;
    assert!(
        (hz / measured - 1.0).abs() < 1e-3,
        "tsc_hz {hz} against {measured:.0} measured here"
    );
}
