//! `epochgate classify` and `epochgate replay` on captures: hand-built ones in every container
//! format (classic pcap in both byte orders with µs and ns timestamps, pcapng), damaged and
//! non-Ethernet ones, and a capture of real TCP/IP stack traffic taken with tcpdump on `lo`,
//! whose verdicts are checked against the frames' bytes read directly here.

mod common;
use common::*;

use epochgate::tools::capture::{self, Frame, PcapWriter};
use serde_json::Value;
use std::collections::{BTreeSet, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const T0: u64 = 1_700_000_000_000_000_000;
/// Frames of the hand-built captures are 1.5 ms apart (whole microseconds, so every format
/// keeps them exactly).
const STEP_NS: u64 = 1_500_000;

// ---- running the binary ----------------------------------------------------------------------

fn epochgate(args: &[&str]) -> Output {
    Command::new(EPOCHGATE)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run epochgate")
}

fn arg(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Runs epochgate, requires success, returns stdout.
fn ok(args: &[&str]) -> String {
    let out = epochgate(args);
    assert!(
        out.status.success(),
        "epochgate {args:?} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// Runs epochgate, requires failure (exit 1, nothing on stdout), returns stderr.
fn fails(args: &[&str]) -> String {
    let out = epochgate(args);
    assert_eq!(
        out.status.code(),
        Some(1),
        "epochgate {args:?} should fail; stdout:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!err.contains("panicked"), "{err}");
    err
}

/// One text line of `classify`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Line {
    frame: u64,
    time: String,
    len: u64,
    verdict: String,
    reason: String,
}

fn text_lines(out: &str) -> Vec<Line> {
    out.lines()
        .map(|l| {
            let c: Vec<&str> = l.split(' ').collect();
            assert_eq!(c.len(), 5, "not 5 columns: {l:?}");
            Line {
                frame: c[0].parse().unwrap_or_else(|_| panic!("frame in {l:?}")),
                time: c[1].to_string(),
                len: c[2].parse().unwrap_or_else(|_| panic!("len in {l:?}")),
                verdict: c[3].to_string(),
                reason: c[4].to_string(),
            }
        })
        .collect()
}

fn json_lines(out: &str) -> Vec<Value> {
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect()
}

/// Seconds with 9 decimals, as the TIME column prints them.
fn secs(ns: u64) -> String {
    format!("{}.{:09}", ns / 1_000_000_000, ns % 1_000_000_000)
}

/// Classifies `file` as text and as JSON with `extra` arguments; checks numbering, that the
/// two agree, and returns (verdict, reason) per frame.
fn classify(file: &Path, extra: &[&str]) -> Vec<(String, String)> {
    let mut args = vec!["classify", arg(file)];
    args.extend_from_slice(extra);
    let text = text_lines(&ok(&args));
    args.push("--json");
    let json = json_lines(&ok(&args));
    assert_eq!(text.len(), json.len());
    let first_ts = json.first().map(|j| j["ts_ns"].as_u64().expect("ts_ns"));
    for (i, (t, j)) in text.iter().zip(&json).enumerate() {
        assert_eq!(
            t.frame,
            i as u64 + 1,
            "frame numbers are 1-based and contiguous"
        );
        assert_eq!(j["frame"], t.frame, "{j} vs {t:?}");
        assert_eq!(j["len"], t.len, "{j} vs {t:?}");
        assert_eq!(j["verdict"], t.verdict.as_str(), "{j} vs {t:?}");
        assert_eq!(j["reason"], t.reason.as_str(), "{j} vs {t:?}");
        let ts = j["ts_ns"].as_u64().expect("ts_ns");
        assert_eq!(t.time, secs(ts - first_ts.unwrap()), "{j} vs {t:?}");
        assert!(
            matches!(
                (t.verdict.as_str(), t.reason.as_str()),
                ("defer", _) | ("immediate", _)
            ),
            "{t:?}"
        );
    }
    text.into_iter().map(|t| (t.verdict, t.reason)).collect()
}

// ---- hand-built frames -----------------------------------------------------------------------

const MAC_A: [u8; 6] = [0x52, 0x54, 0, 0, 0, 1];
const MAC_B: [u8; 6] = [0x52, 0x54, 0, 0, 0, 2];
const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const PSH: u8 = 0x08;
const ACK: u8 = 0x10;

fn eth(ether_type: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&MAC_B);
    f.extend_from_slice(&MAC_A);
    f.extend_from_slice(&ether_type.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// IPv4 10.0.0.1 -> 10.0.0.2 with this protocol, flags/fragment-offset field and payload; the
/// total length is `total` if given (a lie, for malformed frames).
fn ipv4(proto: u8, frag_field: u16, payload: &[u8], total: Option<u16>) -> Vec<u8> {
    let total = total.unwrap_or(20 + payload.len() as u16);
    let mut p = vec![0x45, 0];
    p.extend_from_slice(&total.to_be_bytes());
    p.extend_from_slice(&[0x12, 0x34]);
    p.extend_from_slice(&frag_field.to_be_bytes());
    p.extend_from_slice(&[64, proto, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2]);
    p.extend_from_slice(payload);
    eth(0x0800, &p)
}

fn tcp(sport: u16, dport: u16, flags: u8, window: u16, data: usize) -> Vec<u8> {
    let mut t = Vec::new();
    t.extend_from_slice(&sport.to_be_bytes());
    t.extend_from_slice(&dport.to_be_bytes());
    t.extend_from_slice(&[0, 0, 0x10, 0, 0, 0, 0x20, 0, 0x50, flags]);
    t.extend_from_slice(&window.to_be_bytes());
    t.extend_from_slice(&[0, 0, 0, 0]);
    t.extend(std::iter::repeat_n(0x5a, data));
    ipv4(6, 0x4000, &t, None)
}

fn udp_payload(sport: u16, dport: u16, data: usize) -> Vec<u8> {
    let mut u = Vec::new();
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&(8 + data as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend(std::iter::repeat_n(0x11, data));
    u
}

fn udp(sport: u16, dport: u16, data: usize) -> Vec<u8> {
    ipv4(17, 0, &udp_payload(sport, dport, data), None)
}

/// An IPv6 packet whose Fragment header has M set (a first fragment of UDP).
fn ipv6_fragment() -> Vec<u8> {
    let body = udp_payload(4000, 7000, 16);
    let mut frag = vec![17, 0, 0x00, 0x01, 0, 0, 0, 42]; // offset 0, M = 1
    frag.extend_from_slice(&body);
    let mut p = vec![0x60, 0, 0, 0];
    p.extend_from_slice(&(frag.len() as u16).to_be_bytes());
    p.extend_from_slice(&[44, 64]);
    p.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    p.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
    p.extend_from_slice(&frag);
    eth(0x86dd, &p)
}

fn arp() -> Vec<u8> {
    let mut a = vec![0, 1, 8, 0, 6, 4, 0, 1];
    a.extend_from_slice(&MAC_A);
    a.extend_from_slice(&[10, 0, 0, 1]);
    a.extend_from_slice(&[0; 6]);
    a.extend_from_slice(&[10, 0, 0, 2]);
    eth(0x0806, &a)
}

/// The rule in `CONFIG` defers UDP to this port.
const RULE_PORT: u16 = 5353;

/// Frames covering every built-in reason, with the verdict and reason `classify` gives them
/// without a configuration.
fn sample() -> Vec<(Vec<u8>, &'static str, &'static str)> {
    vec![
        (tcp(40000, 80, SYN, 64240, 0), "immediate", "other"),
        (tcp(40000, 80, ACK, 0, 0), "defer", "tcp-pure-ack"),
        // The same flow's window rises from 0 to the default threshold 1460 or more.
        (tcp(40000, 80, ACK, 2000, 0), "immediate", "window-update"),
        (tcp(40001, 80, ACK, 500, 1000), "defer", "tcp-ack-no-psh"),
        (tcp(40001, 80, PSH | ACK, 500, 100), "immediate", "other"),
        // IPv4 first fragment (MF), then the last fragment (offset 3 * 8 bytes).
        (
            ipv4(17, 0x2000, &udp_payload(4000, 7000, 16), None),
            "defer",
            "ipv4-more-fragments",
        ),
        (ipv4(17, 0x0003, &[0x22; 10], None), "immediate", "other"),
        (ipv6_fragment(), "defer", "ipv6-more-fragments"),
        // IPv4 total length beyond the frame.
        (ipv4(6, 0, &[0; 20], Some(400)), "immediate", "malformed"),
        (arp(), "immediate", "other"),
        (udp(4000, RULE_PORT, 30), "immediate", "other"),
        (tcp(40000, 80, FIN | ACK, 2000, 0), "immediate", "other"),
    ]
}

fn sample_frames() -> Vec<Frame> {
    sample()
        .into_iter()
        .enumerate()
        .map(|(i, (data, _, _))| Frame {
            ts_ns: T0 + i as u64 * STEP_NS,
            orig_len: data.len() as u32,
            data,
        })
        .collect()
}

fn expected(sample: &[(Vec<u8>, &str, &str)]) -> Vec<(String, String)> {
    sample
        .iter()
        .map(|(_, v, r)| (v.to_string(), r.to_string()))
        .collect()
}

// ---- capture files built here ----------------------------------------------------------------

fn write_pcap_micro(path: &Path, frames: &[Frame]) {
    capture::write_file(path, frames).expect("write pcap");
}

fn write_pcap_nano(path: &Path, frames: &[Frame]) {
    let mut w = PcapWriter::new_nanos(Vec::new()).expect("pcap");
    for f in frames {
        w.write_frame(f).expect("frame");
    }
    std::fs::write(path, w.into_inner().expect("flush")).expect("write");
}

fn put16(v: &mut Vec<u8>, x: u16, big: bool) {
    v.extend_from_slice(&if big {
        x.to_be_bytes()
    } else {
        x.to_le_bytes()
    });
}

fn put32(v: &mut Vec<u8>, x: u32, big: bool) {
    v.extend_from_slice(&if big {
        x.to_be_bytes()
    } else {
        x.to_le_bytes()
    });
}

/// A classic pcap written field by field: either byte order, µs or ns, any link type.
fn pcap_bytes(frames: &[Frame], big: bool, nanos: bool, link_type: u32) -> Vec<u8> {
    let mut b = Vec::new();
    put32(&mut b, if nanos { 0xa1b2_3c4d } else { 0xa1b2_c3d4 }, big);
    put16(&mut b, 2, big);
    put16(&mut b, 4, big);
    put32(&mut b, 0, big);
    put32(&mut b, 0, big);
    put32(&mut b, 262_144, big);
    put32(&mut b, link_type, big);
    for f in frames {
        let sub = f.ts_ns % 1_000_000_000;
        put32(&mut b, (f.ts_ns / 1_000_000_000) as u32, big);
        put32(&mut b, if nanos { sub } else { sub / 1000 } as u32, big);
        put32(&mut b, f.data.len() as u32, big);
        put32(&mut b, f.orig_len, big);
        b.extend_from_slice(&f.data);
    }
    b
}

/// A minimal pcapng: Section Header, one Interface Description (µs timestamps, the default),
/// one Enhanced Packet Block per frame; either byte order, any link type.
fn pcapng_bytes(frames: &[Frame], big: bool, link_type: u16) -> Vec<u8> {
    fn block(out: &mut Vec<u8>, kind: u32, body: &[u8], big: bool) {
        let len = 12 + body.len().next_multiple_of(4);
        put32(out, kind, big);
        put32(out, len as u32, big);
        out.extend_from_slice(body);
        out.resize(out.len() + body.len().next_multiple_of(4) - body.len(), 0);
        put32(out, len as u32, big);
    }
    let mut out = Vec::new();
    let mut shb = Vec::new();
    put32(&mut shb, 0x1a2b_3c4d, big);
    put16(&mut shb, 1, big);
    put16(&mut shb, 0, big);
    shb.extend_from_slice(&[0xff; 8]); // section length: unknown
    block(&mut out, 0x0a0d_0d0a, &shb, big);
    let mut idb = Vec::new();
    put16(&mut idb, link_type, big);
    put16(&mut idb, 0, big);
    put32(&mut idb, 0, big); // snaplen: no limit
    block(&mut out, 1, &idb, big);
    for f in frames {
        let units = f.ts_ns / 1000;
        let mut epb = Vec::new();
        put32(&mut epb, 0, big);
        put32(&mut epb, (units >> 32) as u32, big);
        put32(&mut epb, units as u32, big);
        put32(&mut epb, f.data.len() as u32, big);
        put32(&mut epb, f.orig_len, big);
        epb.extend_from_slice(&f.data);
        block(&mut out, 6, &epb, big);
    }
    out
}

/// A configuration: a protected VM "a" (builtin), VMs "all" and "never" with those `defer`
/// settings, and one rule deferring UDP to `RULE_PORT`.
fn config_file(dir: &Path, classifier_extra: &str) -> PathBuf {
    let path = dir.join("classify.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[egress]
port = "net_pcap0,tx_pcap={d}/out.pcap"

[classifier]
{classifier_extra}

[[classifier.rule]]
protocol = "udp"
dst_port = {RULE_PORT}
verdict = "defer"

[[vm]]
name = "a"
port = "net_tap0"
mode = "protected"

[[vm]]
name = "all"
port = "net_tap1"
defer = "all"

[[vm]]
name = "never"
port = "net_tap2"
defer = "never"
"#,
            d = dir.display()
        ),
    )
    .expect("write config");
    path
}

// ---- tests on hand-built captures ------------------------------------------------------------

#[test]
fn every_format_gives_the_same_verdicts_numbered_from_1() {
    let dir = tempdir();
    let frames = sample_frames();
    let want = expected(&sample());
    let mut files = Vec::new();
    let micro = dir.path().join("micro.pcap");
    write_pcap_micro(&micro, &frames);
    files.push(micro);
    let nano = dir.path().join("nano.pcap");
    write_pcap_nano(&nano, &frames);
    files.push(nano);
    for (name, bytes) in [
        ("micro-be.pcap", pcap_bytes(&frames, true, false, 1)),
        ("nano-be.pcap", pcap_bytes(&frames, true, true, 1)),
        ("le.pcapng", pcapng_bytes(&frames, false, 1)),
        ("be.pcapng", pcapng_bytes(&frames, true, 1)),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        files.push(path);
    }
    let mut reference = None;
    for file in &files {
        assert_eq!(classify(file, &[]), want, "{}", file.display());
        // Same text in every format, times included (1.5 ms apart).
        let text = ok(&["classify", arg(file)]);
        let lines = text_lines(&text);
        for (i, l) in lines.iter().enumerate() {
            assert_eq!(l.time, secs(i as u64 * STEP_NS));
            assert_eq!(l.len, frames[i].data.len() as u64);
        }
        assert_eq!(
            lines.first(),
            Some(&Line {
                frame: 1,
                time: "0.000000000".into(),
                len: 54,
                verdict: "immediate".into(),
                reason: "other".into(),
            })
        );
        match &reference {
            None => reference = Some(text),
            Some(r) => assert_eq!(&text, r, "{}", file.display()),
        }
        let json = json_lines(&ok(&["classify", "--json", arg(file)]));
        assert_eq!(json[3]["ts_ns"], T0 + 3 * STEP_NS);
        assert_eq!(
            json[1].to_string(),
            format!(
                r#"{{"frame":2,"len":54,"reason":"tcp-pure-ack","ts_ns":{},"verdict":"defer"}}"#,
                T0 + STEP_NS
            )
        );
    }
}

#[test]
fn config_rules_and_vm_settings_cover_every_reason() {
    let dir = tempdir();
    let file = dir.path().join("sample.pcap");
    write_pcap_micro(&file, &sample_frames());
    let cfg = config_file(dir.path(), "");
    let mut seen: BTreeSet<String> = BTreeSet::new();

    let builtin = classify(&file, &[]);
    seen.extend(builtin.iter().map(|(_, r)| r.clone()));

    // The first protected VM ("a") by default: the rule defers UDP to RULE_PORT as rule:0.
    let with_rule = classify(&file, &["--config", arg(&cfg)]);
    assert_eq!(
        classify(&file, &["--config", arg(&cfg), "--vm", "a"]),
        with_rule
    );
    for (i, ((data, _, _), got)) in sample().iter().zip(&with_rule).enumerate() {
        if *data == udp(4000, RULE_PORT, 30) {
            assert_eq!(got, &("defer".into(), "rule:0".into()), "frame {}", i + 1);
        } else {
            assert_eq!(got, &builtin[i], "frame {}", i + 1);
        }
    }
    assert_eq!(with_rule.iter().filter(|(_, r)| r == "rule:0").count(), 1);
    seen.extend(with_rule.iter().map(|(_, r)| r.clone()));

    // A VM's defer setting decides before the rules; a malformed frame stays malformed.
    for (vm, verdict, reason) in [
        ("all", "defer", "vm-all"),
        ("never", "immediate", "vm-never"),
    ] {
        let got = classify(&file, &["--config", arg(&cfg), "--vm", vm]);
        for ((_, _, builtin_reason), (v, r)) in sample().iter().zip(&got) {
            if *builtin_reason == "malformed" {
                assert_eq!((v.as_str(), r.as_str()), ("immediate", "malformed"));
            } else {
                assert_eq!((v.as_str(), r.as_str()), (verdict, reason), "--vm {vm}");
            }
        }
        seen.extend(got.into_iter().map(|(_, r)| r));
    }
    let all: BTreeSet<String> = [
        "tcp-pure-ack",
        "tcp-ack-no-psh",
        "ipv4-more-fragments",
        "ipv6-more-fragments",
        "window-update",
        "rule:0",
        "vm-all",
        "vm-never",
        "malformed",
        "other",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(seen, all);

    // Without the window table the opening ACK is an ordinary pure ACK.
    let no_window = config_file(dir.path(), "window_updates = false");
    let got = classify(&file, &["--config", arg(&no_window)]);
    assert_eq!(got[2], ("defer".into(), "tcp-pure-ack".into()));

    // An unknown VM, --vm without --config, and a bad config are clear errors.
    let err = fails(&["classify", arg(&file), "--config", arg(&cfg), "--vm", "zz"]);
    assert!(
        err.contains("no [[vm]] is named \"zz\"") && err.contains(arg(&cfg)),
        "{err}"
    );
    let out = epochgate(&["classify", arg(&file), "--vm", "a"]);
    assert!(!out.status.success());
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[classifier]\nflow_table = 0\n").unwrap();
    let err = fails(&["classify", arg(&file), "--config", arg(&bad)]);
    assert!(err.contains(arg(&bad)), "{err}");
}

#[test]
fn summary_counts_add_up() {
    let dir = tempdir();
    let file = dir.path().join("sample.pcapng");
    std::fs::write(&file, pcapng_bytes(&sample_frames(), false, 1)).unwrap();
    let n = sample().len() as u64;
    let want = expected(&sample());
    let defer = want.iter().filter(|(v, _)| v == "defer").count() as u64;

    // JSON: --summary alone is one object.
    let out = json_lines(&ok(&["classify", arg(&file), "--json", "--summary"]));
    assert_eq!(out.len(), 1);
    let s = &out[0]["summary"];
    assert_eq!(s["frames"], n);
    assert_eq!(s["by_verdict"]["defer"], defer);
    assert_eq!(s["by_verdict"]["immediate"], n - defer);
    let by_reason = s["by_reason"].as_object().expect("by_reason");
    assert_eq!(
        by_reason.values().map(|v| v.as_u64().unwrap()).sum::<u64>(),
        n
    );
    assert_eq!(by_reason["other"], 6);
    assert_eq!(by_reason["tcp-pure-ack"], 1);
    assert_eq!(by_reason["window-update"], 1);

    // JSON with --frames: the frame lines, then the summary last.
    let out = json_lines(&ok(&[
        "classify",
        arg(&file),
        "--json",
        "--summary",
        "--frames",
    ]));
    assert_eq!(out.len() as u64, n + 1);
    assert_eq!(out[0]["frame"], 1);
    assert_eq!(out[n as usize]["summary"], *s);

    // Text: a table whose counts add up.
    let text = ok(&["classify", arg(&file), "--summary"]);
    assert!(text.starts_with(&format!("frames: {n}\n")), "{text}");
    let count = |label: &str| -> u64 {
        text.lines()
            .find(|l| l.split_whitespace().next() == Some(label))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap_or_else(|| panic!("no {label} in\n{text}"))
            .parse()
            .unwrap()
    };
    assert_eq!(count("defer"), defer);
    assert_eq!(count("immediate"), n - defer);
    let reasons: u64 = text
        .lines()
        .skip_while(|l| *l != "by reason:")
        .skip(1)
        .map(|l| l.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(reasons, n, "{text}");
    let both = ok(&["classify", arg(&file), "--summary", "--frames"]);
    assert!(both.ends_with(&text), "{both}");
    assert_eq!(text_lines(&both[..both.len() - text.len()]).len() as u64, n);

    // --frames needs --summary.
    assert!(!epochgate(&["classify", arg(&file), "--frames"])
        .status
        .success());

    // An empty capture: nothing per frame, a zero summary.
    let empty = dir.path().join("empty.pcap");
    write_pcap_micro(&empty, &[]);
    assert_eq!(ok(&["classify", arg(&empty)]), "");
    let s = json_lines(&ok(&["classify", arg(&empty), "--json", "--summary"]));
    assert_eq!(s[0]["summary"]["frames"], 0);
}

#[test]
fn non_ethernet_captures_are_refused_naming_file_and_link_type() {
    let dir = tempdir();
    let frames = sample_frames();
    for (name, bytes, link) in [
        ("raw.pcap", pcap_bytes(&frames, false, false, 101), 101),
        ("cooked-be.pcap", pcap_bytes(&frames, true, true, 113), 113),
        ("cooked.pcapng", pcapng_bytes(&frames, false, 113), 113),
        ("raw-be.pcapng", pcapng_bytes(&frames, true, 101), 101),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        for cmd in ["classify", "replay"] {
            let err = fails(&[cmd, arg(&path)]);
            assert!(err.contains(arg(&path)), "{err}");
            assert!(
                err.contains(&format!("link type {link} is not Ethernet (1)")),
                "{err}"
            );
        }
    }
}

#[test]
fn missing_truncated_and_damaged_captures_are_clear_errors() {
    let dir = tempdir();
    let missing = dir.path().join("missing.pcap");
    for cmd in ["classify", "replay"] {
        let err = fails(&[cmd, arg(&missing)]);
        assert!(
            err.contains(&format!("{}: cannot read", arg(&missing))),
            "{err}"
        );
    }

    // The last record cut short, as when tcpdump is killed mid-write.
    let mut bytes = pcap_bytes(&sample_frames(), false, false, 1);
    bytes.truncate(bytes.len() - 7);
    let cut = dir.path().join("cut.pcap");
    std::fs::write(&cut, &bytes).unwrap();
    let n = sample().len();
    for cmd in ["classify", "replay"] {
        let err = fails(&[cmd, arg(&cut)]);
        assert!(err.contains(arg(&cut)), "{err}");
        assert!(err.contains(&format!("frame {n} at offset")), "{err}");
        assert!(err.contains("record is truncated"), "{err}");
    }

    let short = dir.path().join("short.pcap");
    std::fs::write(&short, &bytes[..10]).unwrap();
    let err = fails(&["classify", arg(&short)]);
    assert!(
        err.contains(arg(&short)) && err.contains("truncated") && err.contains("24 bytes"),
        "{err}"
    );

    let mut ng = pcapng_bytes(&sample_frames(), false, 1);
    ng.truncate(ng.len() - 3);
    let cut_ng = dir.path().join("cut.pcapng");
    std::fs::write(&cut_ng, &ng).unwrap();
    let err = fails(&["classify", arg(&cut_ng)]);
    assert!(
        err.contains(arg(&cut_ng)) && err.contains("truncated"),
        "{err}"
    );

    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "hello, this is not a capture\n").unwrap();
    let err = fails(&["classify", arg(&text)]);
    assert!(
        err.contains(arg(&text)) && err.contains("not a capture file"),
        "{err}"
    );
}

#[test]
fn a_closed_pipe_ends_quietly_with_status_0() {
    let dir = tempdir();
    let file = dir.path().join("many.pcap");
    let frames: Vec<Frame> = (0..100_000u64)
        .map(|i| {
            let data = tcp(40000, 80, ACK, 1000, 0);
            Frame {
                ts_ns: T0 + i * 1000,
                orig_len: data.len() as u32,
                data,
            }
        })
        .collect();
    write_pcap_micro(&file, &frames);
    for extra in [&[][..], &["--json"][..]] {
        let mut child = Command::new(EPOCHGATE)
            .arg("classify")
            .arg(&file)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let mut first = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut first)
            .unwrap();
        assert!(
            first.starts_with('1') || first.starts_with("{\"frame\":1"),
            "{first}"
        );
        // The reader is gone now (as with `| head -1`).
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{}: {err}", out.status);
        assert!(err.is_empty(), "{err}");
    }
}

#[test]
fn replay_json_gives_the_exact_numbers() {
    let dir = tempdir();
    const MS: u64 = 1_000_000;
    // Three pure ACKs 1 ms apart, then a PSH at 20 ms. Defaults 5/10 ms: the deferral armed at
    // 0 ms is extended to 7 ms, then the PSH requests at 20 ms. Without deferral: 4 requests.
    let frames: Vec<Frame> = [
        (0, tcp(40000, 80, ACK, 1000, 0)),
        (MS, tcp(40000, 80, ACK, 1000, 0)),
        (2 * MS, tcp(40000, 80, ACK, 1000, 0)),
        (20 * MS, tcp(40000, 80, PSH | ACK, 1000, 100)),
    ]
    .into_iter()
    .map(|(t, data)| Frame {
        ts_ns: T0 + t,
        orig_len: data.len() as u32,
        data,
    })
    .collect();
    let file = dir.path().join("acks.pcap");
    write_pcap_nano(&file, &frames);
    let run = |extra: &[&str]| -> Value {
        let mut args = vec!["replay", arg(&file), "--json"];
        args.extend_from_slice(extra);
        let out = json_lines(&ok(&args));
        assert_eq!(out.len(), 1);
        out.into_iter().next().unwrap()
    };

    let j = run(&[]);
    let want = serde_json::json!({
        "frames": 4,
        "duration_ns": 20 * MS,
        "duration_s": 0.02,
        "commit_delay_ms": 0.0,
        "vm": "",
        "defer_frames": 3,
        "immediate_frames": 1,
        "checkpoints_with_policy": 2,
        "checkpoints_without_deferral": 4,
        "checkpoints_per_s_with_policy": 100.0,
        "checkpoints_per_s_without_deferral": 200.0,
        "saved": 2,
        "saved_pct": 50.0,
        "requests_by_reason": {"immediate-frame": 1, "deferral-expired": 1, "high-water": 0},
        "requests_by_reason_without_deferral":
            {"immediate-frame": 4, "deferral-expired": 0, "high-water": 0},
        "final_checkpoint_with_policy": false,
        "final_checkpoint_without_deferral": false,
        "hold_ms_p50": 5.0,
        "hold_ms_p99": 7.0,
        "hold_ms_max": 7.0,
        "hold_ms_p50_without_deferral": 0.0,
        "hold_ms_p99_without_deferral": 0.0,
        "hold_ms_max_without_deferral": 0.0,
        "policy": {
            "defer_delay_ms": 5.0,
            "max_defer_ms": 10.0,
            "min_checkpoint_interval_ms": 0.0,
            "high_water_frames": 6144,
            "high_water_bytes": 9_326_592
        }
    });
    assert_eq!(j, want);

    // A 2 ms commit delay adds 2 ms to every hold.
    let j = run(&["--commit-delay-ms", "2"]);
    assert_eq!(j["checkpoints_with_policy"], 2);
    assert_eq!(j["commit_delay_ms"], 2.0);
    assert_eq!(
        (&j["hold_ms_p50"], &j["hold_ms_p99"], &j["hold_ms_max"]),
        (&Value::from(7.0), &Value::from(9.0), &Value::from(9.0))
    );
    assert_eq!(j["hold_ms_p99_without_deferral"], 2.0);

    // defer 1 ms, max 1 ms: the deadline at 1 ms is reached by the second ACK (which joins
    // the sealed epoch), the third ACK's deferral expires at 3 ms, the PSH requests at 20 ms.
    let cfg = config_file(dir.path(), "defer_delay_ms = 1\nmax_defer_ms = 1");
    let j = run(&["--config", arg(&cfg)]);
    assert_eq!(j["vm"], "a");
    assert_eq!(j["checkpoints_with_policy"], 3);
    assert_eq!(j["requests_by_reason"]["deferral-expired"], 2);
    assert_eq!(j["saved"], 1);
    assert_eq!(j["saved_pct"], 25.0);
    assert_eq!(
        (&j["hold_ms_p50"], &j["hold_ms_p99"], &j["hold_ms_max"]),
        (&Value::from(0.0), &Value::from(1.0), &Value::from(1.0))
    );

    // The last frames deferred: a final checkpoint at the last timestamp, counted.
    let acks = dir.path().join("acks-only.pcap");
    write_pcap_nano(&acks, &frames[..3]);
    let out = json_lines(&ok(&["replay", arg(&acks), "--json"]));
    let j = &out[0];
    assert_eq!(j["checkpoints_with_policy"], 1);
    assert_eq!(j["final_checkpoint_with_policy"], true);
    assert_eq!(j["requests_by_reason"]["deferral-expired"], 0);
    assert_eq!(j["checkpoints_without_deferral"], 3);
    assert_eq!(j["hold_ms_max"], 2.0);

    // The text report says the same.
    let text = ok(&["replay", arg(&file)]);
    assert!(text.contains("4 frames over 0.020000 s"), "{text}");
    assert!(text.contains("saved: 2 checkpoints (50.0%)"), "{text}");
    assert!(
        text.contains("requests with policy: immediate-frame 1, deferral-expired 1, high-water 0"),
        "{text}"
    );
    let row = |label: &str| -> Vec<String> {
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with(label))
            .unwrap_or_else(|| panic!("no {label} in\n{text}"));
        line[line.find(label).unwrap() + label.len()..]
            .split_whitespace()
            .map(String::from)
            .collect()
    };
    assert_eq!(row("checkpoints/s"), ["100.0", "200.0"]);
    assert_eq!(row("hold p99 (ms)"), ["7.000", "0.000"]);

    assert!(fails(&["replay", arg(&file), "--commit-delay-ms=-1"]).contains("commit-delay"));
}

// ---- real TCP/IP stack traffic, captured with tcpdump ----------------------------------------

/// The receive buffer of the test's server: small, so its window closes while it does not
/// read, and reopens when it does; large enough that Linux offers a non-zero window scale in
/// its SYN-ACK (3 for this size), so the windows that close and reopen are scaled ones.
const SERVER_RCVBUF: usize = 256 * 1024;
const BULK: usize = 4 << 20;

/// A tcpdump we started; interrupted (by PID) when dropped.
struct Tcpdump {
    child: Child,
    stderr: std::sync::mpsc::Receiver<String>,
    log: Vec<String>,
}

impl Tcpdump {
    fn start(file: &Path, port: u16) -> Tcpdump {
        let spawned = Command::new("tcpdump")
            .args([
                "-i",
                "lo",
                "-n",
                "-U",
                "--immediate-mode",
                "-s",
                "0",
                "-B",
                "32768",
                "-w",
            ])
            .arg(file)
            .arg(format!("tcp port {port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn();
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "tcpdump is not installed: this test captures real loopback traffic with it. \
                 scripts/setup.sh installs it (apt-get install tcpdump); run it first, as CI does"
            ),
            Err(e) => panic!("cannot run tcpdump: {e}"),
        };
        let (tx, stderr) = std::sync::mpsc::channel();
        let pipe = child.stderr.take().expect("stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut t = Tcpdump {
            child,
            stderr,
            log: Vec::new(),
        };
        let start = Instant::now();
        loop {
            match t.stderr.recv_timeout(Duration::from_millis(100)) {
                Ok(line) => {
                    let ready = line.contains("listening on lo");
                    t.log.push(line);
                    if ready {
                        assert!(
                            t.log.last().unwrap().contains("EN10MB"),
                            "lo is not captured as Ethernet: {:?}",
                            t.log
                        );
                        return t;
                    }
                }
                Err(_) => {
                    if let Ok(Some(status)) = t.child.try_wait() {
                        panic!("tcpdump exited ({status}) before capturing: {:?}", t.log);
                    }
                    assert!(
                        start.elapsed() < Duration::from_secs(30),
                        "tcpdump not listening after 30 s: {:?}",
                        t.log
                    );
                }
            }
        }
    }

    /// SIGINT (tcpdump flushes and writes its counts), then waits for it to exit.
    fn stop(mut self) -> Vec<String> {
        // Let the last packets reach it (with --immediate-mode it reads them at once; the
        // wait also covers libpcap's 1 s buffer timeout should the option be ignored).
        std::thread::sleep(Duration::from_millis(1200));
        signal(self.child.id(), "INT");
        let start = Instant::now();
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("wait tcpdump") {
                break s;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "tcpdump did not exit after SIGINT"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        while let Ok(line) = self.stderr.recv_timeout(Duration::from_millis(500)) {
            self.log.push(line);
        }
        assert!(status.success(), "tcpdump: {status}: {:?}", self.log);
        std::mem::take(&mut self.log)
    }
}

impl Drop for Tcpdump {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The server: answers `REQ n` with `RSP n`; for `BULK n` waits 300 ms without reading (its
/// small receive window closes), then reads the n bytes in 4 KiB reads with pauses and answers
/// `OK`; on `BYE` it closes.
fn server(listener: TcpListener) -> std::io::Result<usize> {
    let (stream, _) = listener.accept()?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut out = stream.try_clone()?;
    let mut input = BufReader::with_capacity(4096, stream);
    let mut bulk_read = 0;
    loop {
        let mut line = String::new();
        if input.read_line(&mut line)? == 0 {
            break;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["REQ", n] => out.write_all(format!("RSP {n}\n").as_bytes())?,
            ["BULK", n] => {
                let mut left: usize = n.parse().expect("bulk size");
                std::thread::sleep(Duration::from_millis(300));
                let mut buf = [0u8; 4096];
                let mut reads = 0;
                while left > 0 {
                    let want = left.min(buf.len());
                    let got = input.read(&mut buf[..want])?;
                    assert!(got > 0, "EOF in the bulk transfer");
                    left -= got;
                    bulk_read += got;
                    reads += 1;
                    if reads % 8 == 0 {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
                out.write_all(b"OK\n")?;
            }
            ["BYE"] => break,
            other => panic!("server: unexpected {other:?}"),
        }
    }
    drop(out);
    drop(input);
    Ok(bulk_read)
}

fn client(addr: SocketAddr) -> std::io::Result<()> {
    let stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut out = stream.try_clone()?;
    let mut input = BufReader::new(stream);
    fn exchange(
        out: &mut TcpStream,
        input: &mut BufReader<TcpStream>,
        n: u32,
    ) -> std::io::Result<()> {
        out.write_all(format!("REQ {n}\n").as_bytes())?;
        let mut line = String::new();
        input.read_line(&mut line)?;
        assert_eq!(line, format!("RSP {n}\n"));
        Ok(())
    }
    for n in 0..3 {
        exchange(&mut out, &mut input, n)?;
    }
    out.write_all(format!("BULK {BULK}\n").as_bytes())?;
    let chunk = vec![0x42u8; 64 * 1024];
    for _ in 0..BULK / chunk.len() {
        out.write_all(&chunk)?;
    }
    let mut line = String::new();
    input.read_line(&mut line)?;
    assert_eq!(line, "OK\n");
    for n in 3..5 {
        exchange(&mut out, &mut input, n)?;
    }
    out.write_all(b"BYE\n")?;
    out.shutdown(std::net::Shutdown::Write)?;
    let mut rest = Vec::new();
    input.read_to_end(&mut rest)?;
    assert!(rest.is_empty());
    Ok(())
}

/// What this test reads from a frame's bytes itself (untagged Ethernet, IPv4, TCP).
#[derive(Debug, Clone, Copy)]
struct Seg {
    sport: u16,
    dport: u16,
    flags: u8,
    window: u16,
    payload: usize,
    /// The Window Scale option's shift count, in a SYN.
    wscale: Option<u8>,
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn seg(data: &[u8]) -> Seg {
    assert!(data.len() >= 54, "short frame: {data:?}");
    assert_eq!(&data[..12], &[0; 12], "lo frames have zero MACs");
    assert_eq!(be16(data, 12), 0x0800, "untagged IPv4");
    let ihl = usize::from(data[14] & 0x0f) * 4;
    assert_eq!(data[23], 6, "TCP");
    let total = usize::from(be16(data, 16));
    assert!(14 + total <= data.len(), "whole packet captured");
    let t = 14 + ihl;
    let doff = usize::from(data[t + 12] >> 4) * 4;
    let flags = data[t + 13];
    Seg {
        sport: be16(data, t),
        dport: be16(data, t + 2),
        flags,
        window: be16(data, t + 14),
        payload: total - ihl - doff,
        wscale: if flags & SYN != 0 {
            syn_wscale(&data[t + 20..t + doff])
        } else {
            None
        },
    }
}

/// The Window Scale option (kind 3, length 3) among a SYN's options: kind 0 ends the list,
/// kind 1 is a one-byte NOP, every other option is kind, length, length - 2 bytes. A Linux
/// stack's options are well formed: anything else fails the test.
fn syn_wscale(options: &[u8]) -> Option<u8> {
    let mut i = 0;
    let mut found = None;
    while i < options.len() {
        match options[i] {
            0 => break,
            1 => i += 1,
            kind => {
                let len = usize::from(options[i + 1]);
                assert!(
                    len >= 2 && i + len <= options.len(),
                    "bad option at {i}: {options:?}"
                );
                if kind == 3 {
                    assert_eq!(len, 3, "{options:?}");
                    found = Some(options[i + 2]);
                }
                i += len;
            }
        }
    }
    found
}

/// The verdict and reason of every segment, decided from the bytes alone: exactly ACK (the
/// flags byte) is deferrable (`tcp-pure-ack` without payload, `tcp-ack-no-psh` with) unless
/// it raises its direction's last advertised window, in bytes, from below `threshold` to at
/// least it (`window-update`, immediate); everything else is immediate `other`.
///
/// Windows in bytes (RFC 7323): a SYN's or SYN-ACK's window is as in the header, and records
/// the Window Scale option its sender offered. When the SYN-ACK comes, scaling is on if both
/// offered one, and then each direction's later windows are shifted left by its own offer
/// (at most 14); otherwise, and for a direction whose handshake this capture lacks, they are
/// as in the header. Every segment with SYN or ACK set records its window.
fn oracle(segs: &[Seg], threshold: u32) -> Vec<(String, String)> {
    // Per direction (source port, destination port).
    let mut last: HashMap<(u16, u16), u32> = HashMap::new();
    let mut offered: HashMap<(u16, u16), Option<u32>> = HashMap::new();
    let mut shift: HashMap<(u16, u16), u32> = HashMap::new();
    segs.iter()
        .map(|s| {
            let dir = (s.sport, s.dport);
            let back = (s.dport, s.sport);
            let mut update = false;
            if s.flags & SYN != 0 {
                let offer = s.wscale.map(|w| u32::from(w).min(14));
                offered.insert(dir, offer);
                last.insert(dir, u32::from(s.window));
                shift.insert(dir, 0);
                if s.flags & ACK != 0 {
                    match offered.get(&back) {
                        Some(&peer) => {
                            let (mine, theirs) = match (offer, peer) {
                                (Some(a), Some(b)) => (a, b),
                                _ => (0, 0),
                            };
                            shift.insert(dir, mine);
                            shift.insert(back, theirs);
                        }
                        // The SYN is not in the capture: a SYN-ACK has the option only if
                        // the SYN had it (RFC 7323 2.2).
                        None => {
                            shift.insert(dir, offer.unwrap_or(0));
                        }
                    }
                }
            } else if s.flags & ACK != 0 {
                let bytes = u32::from(s.window) << shift.get(&dir).copied().unwrap_or(0);
                if let Some(prev) = last.insert(dir, bytes) {
                    update = prev < threshold && bytes >= threshold;
                }
            }
            let (v, r) = match (s.flags == ACK, update, s.payload) {
                (true, true, 0) => ("immediate", "window-update"),
                (true, _, 0) => ("defer", "tcp-pure-ack"),
                (true, _, _) => ("defer", "tcp-ack-no-psh"),
                (false, _, _) => ("immediate", "other"),
            };
            (v.to_string(), r.to_string())
        })
        .collect()
}

#[test]
fn real_loopback_tcp_traffic_captured_with_tcpdump() {
    let dir = tempdir();
    let sock = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )
    .expect("socket");
    sock.set_recv_buffer_size(SERVER_RCVBUF).expect("SO_RCVBUF");
    sock.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .expect("bind");
    sock.listen(4).expect("listen");
    let listener: TcpListener = sock.into();
    let addr = listener.local_addr().unwrap();
    let port = addr.port();

    let file = dir.path().join("lo.pcap");
    let tcpdump = Tcpdump::start(&file, port);
    let server = std::thread::spawn(move || server(listener));
    client(addr).expect("client");
    let bulk_read = server.join().expect("server thread").expect("server");
    assert_eq!(bulk_read, BULK);
    let log = tcpdump.stop();

    let cap = capture::read_file(&file).unwrap_or_else(|e| panic!("{e}; tcpdump: {log:?}"));
    let segs: Vec<Seg> = cap.frames.iter().map(|f| seg(&f.data)).collect();
    let n = segs.len();
    let summary = format!("{n} frames captured; tcpdump: {log:?}");
    assert!(n > 20, "{summary}");
    for f in &cap.frames {
        assert_eq!(f.data.len() as u32, f.orig_len, "captured whole (-s 0)");
    }

    let to_server = |s: &Seg| s.dport == port;
    let from_server = |s: &Seg| s.sport == port;
    // The handshake, as the test reads it: with scaling on (Linux's default), both sides offer
    // a Window Scale option, and the server's buffer is large enough for a non-zero shift.
    let offer = |pick: &dyn Fn(&Seg) -> bool| {
        let syns: Vec<&Seg> = segs.iter().filter(|s| pick(s)).collect();
        assert_eq!(syns.len(), 1, "{syns:?}; {summary}");
        syns[0].wscale
    };
    let client_ws = offer(&|s: &Seg| s.flags & (SYN | ACK) == SYN && to_server(s));
    let server_ws = offer(&|s: &Seg| s.flags & (SYN | ACK) == SYN | ACK && from_server(s));
    let scaling_on = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_window_scaling")
        .is_ok_and(|v| v.trim() == "1");
    if scaling_on {
        assert!(
            client_ws.is_some(),
            "the client's SYN has no window scale; {summary}"
        );
        assert!(
            server_ws.is_some_and(|s| s > 0),
            "the server's SYN-ACK offers window scale {server_ws:?}, not > 0 (SO_RCVBUF \
             {SERVER_RCVBUF}); {summary}"
        );
    }

    let got = classify(&file, &[]);
    assert_eq!(got.len(), n);
    assert_eq!(
        got,
        oracle(&segs, 1460),
        "default threshold 1460 bytes; {summary}"
    );
    // With threshold 1 every reopening of a closed window is a window update.
    let cfg = config_file(dir.path(), "window_update_threshold = 1");
    let got1 = classify(&file, &["--config", arg(&cfg)]);
    assert_eq!(got1, oracle(&segs, 1), "threshold 1; {summary}");
    // Thresholds that the scaled and the raw windows cross at different frames; 65536 bytes
    // only a scaled window can reach.
    let count_updates =
        |g: &[(String, String)]| g.iter().filter(|v| v.1 == "window-update").count();
    let mut updates_at = vec![(1460, count_updates(&got)), (1, count_updates(&got1))];
    for threshold in [16384u32, 65536] {
        let cfg = config_file(
            dir.path(),
            &format!("window_update_threshold = {threshold}"),
        );
        let got_t = classify(&file, &["--config", arg(&cfg)]);
        assert_eq!(
            got_t,
            oracle(&segs, threshold),
            "threshold {threshold}; {summary}"
        );
        updates_at.push((threshold, count_updates(&got_t)));
        if threshold == 65536 && client_ws.is_some() && server_ws.is_some_and(|s| s > 0) {
            let server_updates = segs
                .iter()
                .zip(&got_t)
                .filter(|(s, v)| from_server(s) && v.1 == "window-update")
                .count();
            assert!(
                server_updates > 0,
                "no reopening of the server's scaled window to 64 KiB; {summary}"
            );
        }
    }

    let verdicts = |pick: &dyn Fn(&Seg) -> bool, g: &[(String, String)]| -> Vec<(String, String)> {
        segs.iter()
            .zip(g)
            .filter(|(s, _)| pick(s))
            .map(|(_, v)| v.clone())
            .collect()
    };
    let other = ("immediate".to_string(), "other".to_string());
    // The handshake and the FINs are immediate.
    let syn = verdicts(
        &|s: &Seg| s.flags & (SYN | ACK) == SYN && to_server(s),
        &got,
    );
    assert_eq!(syn, std::slice::from_ref(&other), "{summary}");
    let syn_ack = verdicts(
        &|s: &Seg| s.flags & (SYN | ACK) == SYN | ACK && from_server(s),
        &got,
    );
    assert_eq!(syn_ack, std::slice::from_ref(&other), "{summary}");
    let fins = verdicts(&|s: &Seg| s.flags & FIN != 0, &got);
    assert!(fins.len() >= 2, "{summary}");
    assert!(fins.iter().all(|v| *v == other), "{fins:?}");
    // The receiver's pure ACKs are deferred (but those reopening its window).
    let server_acks = verdicts(
        &|s: &Seg| from_server(s) && s.flags == ACK && s.payload == 0,
        &got1,
    );
    assert!(server_acks.len() >= 5, "{summary}");
    let deferred = server_acks
        .iter()
        .filter(|(v, r)| v == "defer" && r == "tcp-pure-ack")
        .count();
    let updates = server_acks
        .iter()
        .filter(|(v, r)| v == "immediate" && r == "window-update")
        .count();
    assert_eq!(deferred + updates, server_acks.len(), "{server_acks:?}");
    assert!(deferred > 0, "{summary}");
    // The server's window did close while it was not reading, and its reopening ACKs are
    // immediate window updates.
    let zero_windows = segs
        .iter()
        .filter(|s| from_server(s) && s.flags & ACK != 0 && s.window == 0)
        .count();
    assert!(
        zero_windows > 0,
        "the server never advertised a zero window; {summary}"
    );
    assert!(
        updates > 0,
        "no window update after a zero window; {summary}"
    );
    // Data went to the server, and the data segments are either ACK-only (deferrable) or
    // carry other flags (PSH: immediate).
    let data: Vec<(Seg, &(String, String))> = segs
        .iter()
        .zip(&got)
        .filter(|(s, _)| to_server(s) && s.payload > 0)
        .map(|(s, v)| (*s, v))
        .collect();
    assert!(!data.is_empty(), "{summary}");
    let data_bytes: usize = data.iter().map(|(s, _)| s.payload).sum();
    assert!(
        data_bytes > BULK / 2,
        "{data_bytes} bytes of data; {summary}"
    );
    for (s, v) in &data {
        if s.flags & PSH != 0 {
            assert_eq!(*v, &other);
        } else if s.flags == ACK {
            assert_eq!(v.1, "tcp-ack-no-psh");
        }
    }
    // Frame numbering agrees with the capture read here.
    let summary_json = json_lines(&ok(&["classify", arg(&file), "--json", "--summary"]));
    assert_eq!(summary_json[0]["summary"]["frames"], n);

    // Replay: deferral saves checkpoints on real traffic.
    let r = json_lines(&ok(&["replay", arg(&file), "--json"]));
    let r = &r[0];
    assert_eq!(r["frames"], n);
    let with = r["checkpoints_with_policy"].as_u64().unwrap();
    let without = r["checkpoints_without_deferral"].as_u64().unwrap();
    assert_eq!(
        without, n as u64,
        "no deferral, no minimum interval: one per frame"
    );
    assert!(with < without, "{r}");
    assert_eq!(r["saved"], without - with);
    assert!(r["hold_ms_p99"].as_f64().unwrap() <= 10.0, "{r}");
    eprintln!(
        "loopback capture: {n} frames, {} data segments ({data_bytes} bytes), {} receiver pure ACKs ({updates} window updates at threshold 1), {zero_windows} zero-window ACKs; window scale offered: client {client_ws:?}, server {server_ws:?}; window-update frames by threshold (bytes): {updates_at:?}; replay: {with} checkpoints with policy, {without} without",
        data.len(),
        server_acks.len()
    );
}
