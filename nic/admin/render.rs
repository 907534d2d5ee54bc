//! Snapshots as text: [`render_stats`] (`epochgate stats`), [`render_vms`] (`epochgate vms`)
//! and [`latency_text`].

use crate::stats::{Latency, Snapshot, VmSnapshot};
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// `epochgate stats`: every counter of every VM and port.
pub fn render_stats(snap: &Snapshot) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "epochgate up {}: {} VM(s), {} port(s)",
        duration_text(snap.uptime_ms),
        snap.vms.len(),
        snap.ports.len()
    );
    for v in &snap.vms {
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "vm {} ({}), mac {}",
            v.name,
            v.mode,
            v.mac.as_deref().unwrap_or("not known yet")
        );
        fb(&mut s, "rx", v.rx_frames, v.rx_bytes);
        fb(&mut s, "released", v.released_frames, v.released_bytes);
        fb(&mut s, "tx", v.tx_frames, v.tx_bytes);
        fb(&mut s, "held", v.held_frames, v.held_bytes);
        fb(&mut s, "ready", v.ready_frames, v.ready_bytes);
        fb(&mut s, "inbound", v.inbound_frames, v.inbound_bytes);
        let _ = writeln!(
            s,
            "  {:<20} {:>12} frames",
            "staged for tx", v.staged_frames
        );
        let _ = writeln!(s, "  {:<20} {:>12} frames", "waiting", v.waiting);
        let _ = writeln!(
            s,
            "  {:<20} {:>12} frames{}",
            "dropped",
            v.dropped.values().sum::<u64>(),
            by_reason(&v.dropped)
        );
        let _ = writeln!(
            s,
            "  {:<20} open {} sealed {} committed {}",
            "epoch", v.open_epoch, v.sealed_epoch, v.committed_epoch
        );
        let _ = writeln!(
            s,
            "  {:<20} sealed {} committed {} discarded {}; fences cut short {}, unproven {}",
            "epochs",
            v.epochs_sealed,
            v.epochs_committed,
            v.epochs_discarded,
            v.fences_cut_short,
            v.fences_unproven
        );
        let _ = writeln!(
            s,
            "  {:<20} {} time(s) the buffer filled and the port was not read",
            "backpressure", v.backpressure
        );
        let _ = writeln!(
            s,
            "  {:<20} {}{}",
            "checkpoint requests",
            v.checkpoint_requests.values().sum::<u64>(),
            by_reason(&v.checkpoint_requests)
        );
        let _ = writeln!(
            s,
            "  {:<20} {}{}",
            "held by verdict",
            v.verdicts.values().sum::<u64>(),
            by_reason(&v.verdicts)
        );
        for (what, l) in [
            ("hold time", &v.hold_time),
            ("commit to wire", &v.commit_to_wire),
            ("fence drain", &v.fence_drain),
        ] {
            let _ = writeln!(s, "  {what:<20} {}", latency_text(l));
        }
    }
    let e = &snap.egress;
    let _ = writeln!(s);
    let _ = writeln!(s, "egress scheduler");
    fb(&mut s, "released", e.released_frames, e.released_bytes);
    fb(
        &mut s,
        "pass-through",
        e.passthrough_frames,
        e.passthrough_bytes,
    );
    let _ = writeln!(
        s,
        "  {:<20} {:>12} frames sent while both classes waited, {} of them pass-through by the starvation guard",
        "contended", e.contended_frames, e.guarded_frames
    );
    let m = &snap.mbufs;
    let _ = writeln!(s);
    let _ = writeln!(s, "mbuf pool");
    let _ = writeln!(
        s,
        "  {:<20} {} in use, {} available of {}",
        "mbufs", m.in_use, m.available, m.size
    );
    let c = &snap.control;
    let _ = writeln!(s);
    let _ = writeln!(s, "control socket");
    let _ = writeln!(
        s,
        "  {:<20} {} open; refused {} at control.max_sessions, {} short of file descriptors; {} accept error(s)",
        "sessions", c.sessions, c.refused_max_sessions, c.refused_no_fds, c.accept_errors
    );
    let _ = writeln!(
        s,
        "  {:<20} {} without Hello (control.hello_timeout_ms), {} silent (control.liveness_timeout_ms)",
        "closed", c.hello_timeouts, c.liveness_timeouts
    );
    let _ = writeln!(
        s,
        "  {:<20} {} not reading (their send buffer was full), {} failed by the operator",
        "", c.closed_not_reading, c.operator_failed
    );
    let _ = writeln!(
        s,
        "  {:<20} {} peer(s) not allowed (control.allowed_uids/gids), {} command(s) before Hello, {} Hello(s) for a VM not theirs, {} malformed message(s)",
        "refused", c.refused_peer, c.refused_before_hello, c.refused_other_vm, c.bad_messages
    );
    let _ = writeln!(
        s,
        "  {:<20} {} peer(s) not allowed, {} write(s) refused (admin.writable, admin.write_uids/gids)",
        "admin socket", c.admin_refused_peer, c.admin_writes_refused
    );
    for p in &snap.ports {
        let _ = writeln!(s);
        let _ = writeln!(s, "port {} ({})", p.name, p.role);
        fb(&mut s, "rx", p.rx_frames, p.rx_bytes);
        fb(&mut s, "tx", p.tx_frames, p.tx_bytes);
        let _ = writeln!(
            s,
            "  {:<20} {:>12} frames{}",
            "dropped",
            p.dropped.values().sum::<u64>(),
            by_reason(&p.dropped)
        );
        let d = &p.driver;
        let _ = writeln!(
            s,
            "  {:<20} imissed {} rx_nombuf {} oerrors {} ierrors {} (ipackets {} opackets {})",
            "driver", d.imissed, d.rx_nombuf, d.oerrors, d.ierrors, d.ipackets, d.opackets
        );
    }
    s
}

/// One "what: frames, bytes" line of `render_stats`.
fn fb(s: &mut String, what: &str, frames: u64, bytes: u64) {
    let _ = writeln!(s, "  {what:<20} {frames:>12} frames {bytes:>16} bytes");
}

/// `epochgate vms`: one aligned row per VM.
pub fn render_vms(snap: &Snapshot) -> String {
    let header = [
        "NAME", "MODE", "MAC", "PORT", "EPOCH", "HELD", "LIMIT", "RATE",
    ]
    .map(String::from);
    let rows: Vec<[String; 8]> = snap.vms.iter().map(vm_row).collect();
    let mut widths = header.clone().map(|h| h.len());
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut s = String::new();
    for r in std::iter::once(&header).chain(&rows) {
        let mut line = String::new();
        for (i, (cell, w)) in r.iter().zip(widths).enumerate() {
            if i + 1 == r.len() {
                line.push_str(cell);
            } else {
                let pad = w - cell.chars().count();
                let _ = write!(line, "{cell}{}  ", " ".repeat(pad));
            }
        }
        let _ = writeln!(s, "{}", line.trim_end());
    }
    if snap.vms.is_empty() {
        s.push_str("(no VMs configured)\n");
    }
    s
}

fn vm_row(v: &VmSnapshot) -> [String; 8] {
    let u = &v.setup;
    let port = match (u.port.as_str(), u.vlan) {
        ("", _) => "-".to_string(),
        (p, None) => p.to_string(),
        (p, Some(vlan)) => format!("{p} vlan {vlan}"),
    };
    let limit = if u.max_held_frames == 0 && u.max_held_bytes == 0 && u.on_full.is_empty() {
        "-".to_string()
    } else {
        let bytes = if u.max_held_bytes == 0 {
            "-".to_string()
        } else {
            u.max_held_bytes.to_string()
        };
        let on_full = if u.on_full.is_empty() {
            "-"
        } else {
            &u.on_full
        };
        format!("{}/{bytes} {on_full}", u.max_held_frames)
    };
    let mut rate = Vec::new();
    if u.rate_bytes_per_s > 0 {
        rate.push(format!("{} Mbit/s", mbit(u.rate_bytes_per_s)));
    }
    if u.rate_pps > 0 {
        rate.push(format!("{} pps", u.rate_pps));
    }
    [
        v.name.clone(),
        v.mode.clone(),
        v.mac.clone().unwrap_or_else(|| "-".into()),
        port,
        format!("{}/{}/{}", v.open_epoch, v.sealed_epoch, v.committed_epoch),
        format!("{}/{}", v.held_frames, v.held_bytes),
        limit,
        if rate.is_empty() {
            "-".to_string()
        } else {
            rate.join(", ")
        },
    ]
}

/// Bytes per second as Mbit/s, without trailing zeros: 12_500_000 -> "100", 1_000 -> "0.008".
fn mbit(bytes_per_s: u64) -> String {
    let text = format!("{:.3}", bytes_per_s as f64 * 8.0 / 1e6);
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// `: a 1, b 2` for the non-zero entries, or nothing.
fn by_reason(m: &BTreeMap<String, u64>) -> String {
    let parts: Vec<String> = m
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!(" ({})", parts.join(", "))
    }
}

/// A latency summary on one line: "count N p50 X p99 Y max Z" (or "none recorded").
pub fn latency_text(l: &Latency) -> String {
    if l.count == 0 {
        return "none recorded".into();
    }
    format!(
        "count {} p50 {} p99 {} max {}",
        l.count,
        ns_text(l.p50_ns),
        ns_text(l.p99_ns),
        ns_text(l.max_ns)
    )
}

/// Nanoseconds in µs below a millisecond, else ms below a second, else s.
fn ns_text(ns: u64) -> String {
    if ns < 1_000_000 {
        format!("{:.1} µs", ns as f64 / 1e3)
    } else if ns < 1_000_000_000 {
        format!("{:.2} ms", ns as f64 / 1e6)
    } else {
        format!("{:.2} s", ns as f64 / 1e9)
    }
}

fn duration_text(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..60 => format!("{:.1} s", ms as f64 / 1000.0),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m{:02}s", s / 3600, s / 60 % 60, s % 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::tests::sample;
    use crate::stats::{ControlSnapshot, EgressSnapshot, VmSetup};

    #[test]
    fn render_stats_shows_the_numbers() {
        let text = render_stats(&sample());
        for want in [
            "4100 frames           410000 bytes",
            "5000 frames sent while both classes waited, 900 of them pass-through by the starvation guard",
            "epochgate up 2m05s: 2 VM(s), 1 port(s)",
            "vm web (passthrough), mac 52:54:00:00:00:01",
            "vm ledger-primary (protected), mac not known yet",
            "1234567 frames        987654321 bytes",
            "1234560 frames",
            "987000000 bytes",
            "13 frames (buffer-full 11, runt 2)",
            "backpressure",
            " 3 time(s)",
            "open 17 sealed 16 committed 15",
            "sealed 16 committed 15 discarded 1; fences cut short 4, unproven 0",
            "15 (high-water 2, immediate-frame 13)",
            "tcp-pure-ack 9",
            "count 1000 p50 12.3 µs p99 45.6 µs max 2.50 ms",
            "count 1003 p50 12.3 µs",
            "none recorded",
            "port net_pcap0 (egress)",
            "1234290 frames",
            "8 frames (shutdown 8)",
            "imissed 77 rx_nombuf 55 oerrors 66",
            "2 open; refused 31 at control.max_sessions, 7 short of file descriptors; 3 accept error(s)",
            "40 without Hello (control.hello_timeout_ms), 1 silent",
            "2191 in use, 6000 available of 8191",
        ] {
            assert!(text.contains(want), "no {want:?} in\n{text}");
        }
        // held (frames, bytes) and ready of the protected VM.
        let ledger = &text[text.find("vm ledger-primary").unwrap()..];
        let held = ledger
            .lines()
            .find(|l| l.trim_start().starts_with("held "))
            .unwrap();
        assert!(
            held.contains(" 200 frames") && held.contains(" 25600 bytes"),
            "{held}"
        );
        let ready = ledger
            .lines()
            .find(|l| l.trim_start().starts_with("ready"))
            .unwrap();
        assert!(
            ready.contains(" 10 frames") && ready.contains(" 1280 bytes"),
            "{ready}"
        );
    }

    #[test]
    fn render_vms_is_one_aligned_row_per_vm() {
        let text = render_vms(&sample());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].starts_with("NAME "), "{text}");
        for (i, col) in ["MODE", "MAC", "PORT", "EPOCH", "HELD", "LIMIT", "RATE"]
            .iter()
            .enumerate()
        {
            let at = lines[0].find(col).unwrap_or_else(|| panic!("no {col}"));
            // Every row has a cell starting in that column.
            for row in &lines[1..] {
                let before = &row[..row.char_indices().nth(at).map_or(row.len(), |(b, _)| b)];
                assert!(
                    before.ends_with("  "),
                    "column {i} {col} misaligned in {row:?}"
                );
            }
        }
        let web = lines[1];
        for want in [
            "web",
            "passthrough",
            "52:54:00:00:00:01",
            "net_pcap1",
            "0/0/0",
            "4096/- backpressure",
            "100 Mbit/s",
        ] {
            assert!(web.contains(want), "no {want:?} in {web:?}");
        }
        let ledger = lines[2];
        for want in [
            "ledger-primary",
            "protected",
            "shared ingress vlan 10",
            "17/16/15",
            "200/25600",
            "8192/1048576 drop",
            "0.008 Mbit/s, 20000 pps",
        ] {
            assert!(ledger.contains(want), "no {want:?} in {ledger:?}");
        }
        let mut none = sample();
        none.vms[0].setup = VmSetup::default();
        let row = render_vms(&none).lines().nth(1).unwrap().to_string();
        assert!(row.ends_with("  -"), "no rate is \"-\": {row:?}");
        assert!(render_vms(&Snapshot {
            uptime_ms: 0,
            vms: vec![],
            ports: vec![],
            egress: EgressSnapshot::default(),
            control: ControlSnapshot::default(),
            workers: vec![],
            mbufs: Default::default(),
        })
        .contains("no VMs"));
    }
}
