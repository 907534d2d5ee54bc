//! Hostile sessions cannot stall the data plane or another VMM (issue 13, item 6), with a real
//! epochgate: while 30 connections sit without a `Hello`, a session that adopted VM `quiet`
//! sends pings and never reads its answers, and a session on VM `noisy` floods epochgate with
//! commands (a fence of a wrong epoch, stats, garbage) and reads each answer, the VMM of VM
//! `busy` (whose port never runs dry) goes on fencing and committing, and its frames keep
//! leaving. The non-reader is closed once its bounded queue is full, counted
//! `closed_not_reading`, and its VM fails as a lost controller's does; every flood command is
//! answered; the counters balance at the end. No timing is asserted: only that every step
//! completes (within generous deadlines) and what the counters say.

mod common;
use common::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use vmm_shim::proto::{Reply, Request};

#[test]
fn idle_connections_a_session_that_never_reads_and_a_command_flood_stall_no_other_vmm() {
    let _g = serial();
    let dir = tempdir();
    let d = dir.path();
    let frames = guest_frames(1, 64);
    let input = d.join("busy.pcap");
    write_pcap(&input, &frames);
    let (quiet_in, noisy_in) = (d.join("quiet.pcap"), d.join("noisy.pcap"));
    write_pcap(&quiet_in, &[]);
    write_pcap(&noisy_in, &[]);
    let cfg = format!(
        "{}max_sessions = 40\nhello_timeout_ms = 60000\n\n\
         [egress]\nport = \"net_null0,no-rx=1\"\n\n\
         [[vm]]\nname = \"busy\"\nmode = \"protected\"\non_full = \"drop\"\nmax_held_frames = 4096\n\
         port = \"net_pcap1,rx_pcap={i},infinite_rx=1\"\n\n\
         [[vm]]\nname = \"quiet\"\nmode = \"protected\"\nport = \"net_pcap2,rx_pcap={q}\"\n\n\
         [[vm]]\nname = \"noisy\"\nmode = \"protected\"\nport = \"net_pcap3,rx_pcap={n}\"\n",
        eal_and_control(d, "eg-flood"),
        q = quiet_in.display(),
        n = noisy_in.display(),
        i = input.display(),
    );
    let mut eg = Running::start(d, &cfg);
    let socket = d.join("control.sock");
    eg.wait_for_path(&socket);

    // 30 connections that never say Hello (up to max_sessions with the three below).
    let idle: Vec<_> = (0..30).map(|_| raw_session(&socket, DEADLINE)).collect();
    eg.wait_for("the idle sessions", |s| {
        s["control"]["sessions"].as_u64() >= Some(30)
    });

    // A session that adopts `quiet`, then sends pings and never reads.
    let quiet = raw_session(&socket, DEADLINE);
    quiet
        .send(&Request::hello("quiet").unwrap().encode())
        .expect("hello");
    quiet.set_nonblocking(true).expect("nonblocking");
    let stop = Arc::new(AtomicBool::new(false));
    let non_reader = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut sent = 0u64;
            while !stop.load(Ordering::Relaxed) {
                match quiet.send(&Request::Ping { token: sent }.encode()) {
                    Ok(_) => sent += 1,
                    // Its own send buffer is full (epochgate reads one message a round): wait.
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(std::time::Duration::from_millis(1));
                    }
                    // Epochgate closed it.
                    Err(_) => break,
                }
            }
            sent
        })
    };

    // A session on `noisy` that floods commands and reads every answer.
    const FLOOD: u64 = 20_000;
    let flooder = {
        let s = raw_session(&socket, DEADLINE);
        std::thread::spawn(move || {
            s.send(&Request::hello("noisy").unwrap().encode())
                .expect("hello");
            assert!(matches!(hear(&s), Some(Reply::Welcome { .. })));
            let mut refused = 0u64;
            for i in 0..FLOOD {
                let msg = match i % 3 {
                    0 => Request::Fence { epoch: 999 }.encode(),
                    1 => Request::Stats.encode(),
                    _ => vec![0xee; 7],
                };
                s.send(&msg).expect("flood");
                match hear(&s) {
                    Some(Reply::Error { .. }) => refused += 1,
                    Some(Reply::Stats(_)) => {}
                    other => panic!("flood command {i}: {other:?}"),
                }
            }
            // The session stays open (its VM adopted) until the test has looked.
            (refused, s)
        })
    };

    // Meanwhile the VMM of `busy` checkpoints, and its frames leave.
    let mut vmm = vmm_shim::Client::connect(&socket, "busy").expect("busy's Hello");
    let first = vmm.welcome().epoch;
    let mut sent_before = None;
    for epoch in first..first + 40 {
        let f = vmm.fence(epoch).expect("fence");
        assert_eq!(f.epoch, epoch);
        vmm.commit(epoch).expect("commit");
        let tx = vmm.stats().expect("stats").tx_frames;
        sent_before.get_or_insert(tx);
    }
    let tx_end = vmm.stats().expect("stats").tx_frames;
    assert!(
        tx_end > sent_before.unwrap_or(0),
        "busy's frames did not keep leaving: {sent_before:?} -> {tx_end}"
    );

    let (refused, flood_session) = flooder.join().expect("the flooder");
    let bad = (0..FLOOD).filter(|i| i % 3 != 1).count() as u64;
    assert_eq!(refused, bad, "every bad flood command refused");
    let s = eg.wait_for("the non-reader closed and counted", |s| {
        s["control"]["closed_not_reading"].as_u64() >= Some(1) && vm(s, "quiet")["mode"] == "failed"
    });
    stop.store(true, Ordering::Relaxed);
    let pings = non_reader.join().expect("the non-reader");
    println!(
        "busy: {tx_end} frames out over 40 checkpoints; flood: {FLOOD} commands answered; non-reader closed after {pings} pings; control {}",
        s["control"]
    );
    assert_eq!(vm(&s, "busy")["mode"], "protected");
    assert_eq!(
        vm(&s, "noisy")["mode"],
        "protected",
        "the flooder's VM is its own"
    );
    drop(idle);
    drop(flood_session);
    drop(vmm);
    let last = eg.stop();
    assert_balanced(&last);
    // Every garbage message of the flood was counted as such (the wrong fences are the
    // worker's refusals, not malformed messages).
    let garbage = (0..FLOOD).filter(|i| i % 3 == 2).count() as u64;
    assert_eq!(
        last["control"]["bad_messages"].as_u64(),
        Some(garbage),
        "{}",
        last["control"]
    );
}
