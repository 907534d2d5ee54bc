//! The operator surface of a real running epochgate (pcap ports, no hugepages): `epochgate
//! metrics` and the `/metrics` HTTP endpoint checked by Prometheus's own `promtool check
//! metrics` and read with real HTTP clients (curl and a raw TCP stream), bad HTTP requests
//! answered with a 4xx while the endpoint goes on, systemd's readiness protocol on a real Unix
//! datagram socket (READY=1 only once the sockets are up, STOPPING=1 at SIGTERM, exit 0), and
//! clear errors for an unreachable socket, a refused uid, a bad listen address and a port in use.

mod common;
use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The value of one series in a metrics text.
fn series(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .map(|v| v.parse().expect("a number"))
}

/// `promtool check metrics` on `text`: exit 0 and nothing to say (lint problems are printed).
fn promtool(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus; scripts/setup.sh installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {}\n{}{}",
        out.status,
        self::text(&out.stdout),
        self::text(&out.stderr)
    );
}

fn curl(args: &[&str]) -> Output {
    Command::new("curl")
        .args(["-sS", "--max-time", "60"])
        .args(args)
        .output()
        .expect("curl")
}

fn raw_http(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s.write_all(request).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).expect("answer");
    out
}

fn recv(sock: &UnixDatagram, eg: &mut Running) -> String {
    let start = Instant::now();
    let mut buf = [0u8; 512];
    loop {
        match sock.recv(&mut buf) {
            Ok(n) => return text(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) => {}
            Err(e) => panic!("notify socket: {e}"),
        }
        if let Ok(Some(status)) = eg.child.try_wait() {
            panic!(
                "epochgate exited ({status}) before notifying\n{}",
                eg.logs()
            );
        }
        assert!(start.elapsed() < DEADLINE, "no notification\n{}", eg.logs());
    }
}

#[test]
fn metrics_of_a_running_epochgate_over_the_socket_and_http() {
    let _g = serial();
    let dir = tempdir();
    let d = dir.path();
    let web = guest_frames(1, 700);
    let ledger = guest_frames(3, 40);
    write_pcap(&d.join("web.pcap"), &web);
    write_pcap(&d.join("ledger.pcap"), &ledger);
    write_pcap(&d.join("empty.pcap"), &[]);
    let cfg = format!(
        "{}socket_mode = \"0666\"\n\n\
         [admin]\nmetrics_listen = \"127.0.0.1:0\"\n\n\
         [dataplane]\nstats_interval_ms = 100\n\n\
         [egress]\nport = \"net_pcap0,rx_pcap={d}/empty.pcap,tx_pcap={d}/egress.pcap\"\n\n\
         [[vm]]\nname = \"web\"\nport = \"net_pcap1,rx_pcap={d}/web.pcap,tx_pcap={d}/web-in.pcap\"\n\n\
         [[vm]]\nname = \"ledger\"\nmode = \"protected\"\n\
         port = \"net_pcap2,rx_pcap={d}/ledger.pcap,tx_pcap={d}/ledger-in.pcap\"\n",
        eal_and_control(d, "eg-metrics"),
        d = d.display()
    );
    let notify_path = d.join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut eg = Running::start_env(d, &cfg, &[("NOTIFY_SOCKET", notify_path.as_path())]);

    // READY=1 comes once the ports and every socket are up: both sockets answer at once.
    let ready = recv(&notify, &mut eg);
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready:?}");
    let admin = d.join("admin.sock");
    assert!(
        d.join("control.sock").exists(),
        "READY=1 before the control socket"
    );
    let out = Command::new(EPOCHGATE)
        .args(["metrics", "--socket"])
        .arg(&admin)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "metrics at READY: {}",
        text(&out.stderr)
    );
    let addr: SocketAddr = {
        let log = std::fs::read_to_string(d.join("epochgate.out")).unwrap();
        let url = log
            .lines()
            .find_map(|l| l.strip_prefix("epochgate: metrics at http://"))
            .unwrap_or_else(|| panic!("no metrics address in\n{log}"));
        url.trim_end_matches("/metrics").parse().unwrap()
    };
    assert!(addr.ip().is_loopback(), "{addr}");

    // `epochgate metrics --config` until web has read its whole capture.
    let config = d.join("epochgate.toml");
    let start = Instant::now();
    let (n_web, n_ledger) = (web.len() as f64, ledger.len() as f64);
    let m = loop {
        let out = Command::new(EPOCHGATE)
            .args(["metrics", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        let m = text(&out.stdout);
        let tx = series(
            &m,
            r#"epochgate_vm_frames_total{vm="web",direction="transmitted"}"#,
        );
        let held = series(&m, r#"epochgate_vm_held_frames{vm="ledger"}"#);
        // The histograms and the worker's own figures are handed over every 10 ms, after the
        // VM's counters: wait for them too.
        let hold = series(&m, r#"epochgate_vm_hold_time_seconds_count{vm="web"}"#);
        let wrx = series(
            &m,
            r#"epochgate_worker_frames_total{lcore="1",direction="rx"}"#,
        );
        let age = series(&m, r#"epochgate_vm_epoch_age_seconds{vm="ledger"}"#);
        if tx == Some(n_web)
            && held == Some(n_ledger)
            && hold == Some(n_web)
            && wrx == Some(n_web + n_ledger)
            && age.is_some_and(|a| a > 0.0)
        {
            break m;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "not all frames seen:\n{m}\n{}",
            eg.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    promtool(&m);
    for (name, want) in [
        (
            r#"epochgate_vm_frames_total{vm="web",direction="received"}"#,
            n_web,
        ),
        (
            r#"epochgate_vm_frames_total{vm="ledger",direction="received"}"#,
            n_ledger,
        ),
        (
            r#"epochgate_vm_frames_total{vm="ledger",direction="transmitted"}"#,
            0.0,
        ),
        (r#"epochgate_vm_mode{vm="web",mode="passthrough"}"#, 1.0),
        (r#"epochgate_vm_mode{vm="ledger",mode="protected"}"#, 1.0),
        (r#"epochgate_vm_mode{vm="ledger",mode="passthrough"}"#, 0.0),
        (r#"epochgate_vm_controller_attached{vm="ledger"}"#, 0.0),
        (r#"epochgate_vm_open_epoch{vm="ledger"}"#, 1.0),
        (r#"epochgate_vm_committed_epoch{vm="ledger"}"#, 0.0),
        (
            r#"epochgate_vm_dropped_frames_total{vm="web",reason="buffer-full"}"#,
            0.0,
        ),
        // One hold-time sample per transmitted frame, in the histogram's +Inf bucket and count.
        (
            r#"epochgate_vm_hold_time_seconds_bucket{vm="web",le="+Inf"}"#,
            n_web,
        ),
        (r#"epochgate_vm_hold_time_seconds_count{vm="web"}"#, n_web),
        (
            r#"epochgate_port_frames_total{port="net_pcap0",role="egress",direction="tx"}"#,
            n_web,
        ),
    ] {
        assert_eq!(series(&m, name), Some(want), "{name}\n{m}");
    }
    let age = series(&m, r#"epochgate_vm_epoch_age_seconds{vm="ledger"}"#).unwrap();
    assert!(age > 0.0, "the open epoch has an age: {age}");
    let busy = series(
        &m,
        r#"epochgate_worker_rounds_total{lcore="1",state="busy"}"#,
    )
    .unwrap();
    let idle = series(
        &m,
        r#"epochgate_worker_rounds_total{lcore="1",state="idle"}"#,
    )
    .unwrap();
    assert!(busy >= 1.0 && idle >= 1.0, "busy {busy} idle {idle}");
    let wrx = series(
        &m,
        r#"epochgate_worker_frames_total{lcore="1",direction="rx"}"#,
    )
    .unwrap();
    assert_eq!(wrx, n_web + n_ledger, "the worker read every frame once");

    // HTTP, with curl: the same families, valid for promtool; errors are 4xx.
    let url = format!("http://{addr}/metrics");
    let out = curl(&["-f", "-D", "-", &url]);
    assert!(out.status.success(), "curl: {}", text(&out.stderr));
    let answer = text(&out.stdout);
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert!(
        head.contains("Content-Type: text/plain; version=0.0.4; charset=utf-8"),
        "{head}"
    );
    promtool(body);
    assert_eq!(
        series(body, r#"epochgate_vm_held_frames{vm="ledger"}"#),
        Some(n_ledger)
    );
    let code = |args: &[&str]| {
        let out = curl(&[&["-o", "/dev/null", "-w", "%{http_code}"][..], args].concat());
        text(&out.stdout)
    };
    assert_eq!(code(&[&format!("http://{addr}/")]), "404");
    assert_eq!(code(&[&format!("http://{addr}/metrics/x")]), "404");
    assert_eq!(code(&["-X", "POST", "-d", "x=1", &url]), "405");
    assert_eq!(code(&["-X", "PUT", &url]), "405");
    assert_eq!(
        code(&["-H", &format!("X-Big: {}", "a".repeat(9000)), &url]),
        "431"
    );
    let garbage = raw_http(addr, b"\x16\x03\x01 hello garbage\r\n\r\n");
    assert!(garbage.starts_with("HTTP/1.1 400 "), "{garbage}");
    let ok = raw_http(addr, b"GET /metrics HTTP/1.0\r\n\r\n");
    assert!(
        ok.starts_with("HTTP/1.1 200 OK"),
        "served after bad requests: {ok}"
    );

    // A user who is not root, epochgate's user or allowed gets "permission denied" from
    // `metrics` and `top`.
    refused_as_nobody(d, &admin, &[&["metrics"], &["top", "--batch", "-n", "1"]]);

    // SIGTERM: STOPPING=1, then a clean exit 0; the protected VM's held frames never left.
    signal(eg.child.id(), "TERM");
    let stopping = recv(&notify, &mut eg);
    assert_eq!(stopping, "STOPPING=1");
    let start = Instant::now();
    let status = loop {
        if let Some(s) = eg.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "no exit after SIGTERM\n{}",
            eg.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}\n{}", eg.logs());
    assert_eq!(read_pcap(&d.join("egress.pcap")), web);
    assert!(
        TcpStream::connect(addr).is_err(),
        "still listening after the stop"
    );
}

#[test]
fn errors_say_what_and_why() {
    // An unreachable admin socket.
    for cmd in [&["metrics"][..], &["top"][..], &["top", "--batch"][..]] {
        let out = Command::new(EPOCHGATE)
            .args(cmd)
            .args(["--socket", "/nonexistent/admin.sock"])
            .output()
            .unwrap();
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{cmd:?}: {err}");
        assert!(
            err.contains("cannot reach epochgate at /nonexistent/admin.sock (is it running? its config's control.admin_socket)"),
            "{cmd:?}: {err}"
        );
        assert!(out.stdout.is_empty(), "{cmd:?}: {}", text(&out.stdout));
    }
    let out = Command::new(EPOCHGATE)
        .args(["top", "--interval", "0", "--socket", "/x"])
        .output()
        .unwrap();
    assert!(
        text(&out.stderr).contains("0 is out of range 0.1..=3600 seconds"),
        "{}",
        text(&out.stderr)
    );

    let dir = tempdir();
    let d = dir.path();
    write_pcap(&d.join("empty.pcap"), &[]);
    write_pcap(&d.join("empty2.pcap"), &[]);
    let config = |listen: &str| {
        format!(
            "{}[admin]\nmetrics_listen = \"{listen}\"\n\n\
             [egress]\nport = \"net_pcap0,rx_pcap={d}/empty.pcap,tx_pcap={d}/egress.pcap\"\n\n\
             [[vm]]\nname = \"web\"\nport = \"net_pcap1,rx_pcap={d}/empty2.pcap,tx_pcap={d}/web-in.pcap\"\n",
            eal_and_control(d, "eg-metrics-err"),
            d = d.display()
        )
    };
    // A bad listen address: check-config and run refuse it before EAL starts, naming the key.
    let path = d.join("bad.toml");
    for (listen, why) in [
        ("web.example:9716", "\"web.example\" is not an IP address"),
        (
            "127.0.0.1:70000",
            "port \"70000\" is not a number in 0..=65535",
        ),
        ("127.0.0.1", "no port"),
    ] {
        std::fs::write(&path, config(listen)).unwrap();
        for cmd in ["check-config", "run"] {
            let mut c = Command::new(EPOCHGATE);
            c.arg(cmd);
            if cmd == "run" {
                c.arg("--config");
            }
            let out = c.arg(&path).output().unwrap();
            let err = text(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{cmd} {listen}: {err}");
            assert!(
                err.contains(&format!("admin.metrics_listen: \"{listen}\": {why}")),
                "{cmd} {listen}: {err}"
            );
        }
    }

    // A port in use: run stops with the address and the reason, and leaves no socket behind.
    let _g = serial();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    std::fs::write(&path, config(&addr.to_string())).unwrap();
    let out = Command::new(EPOCHGATE)
        .args(["run", "--quiet", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("admin.metrics_listen {addr}: cannot listen: ")),
        "{err}"
    );
    assert!(err.contains("another process"), "{err}");
    assert!(
        !d.join("admin.sock").exists(),
        "the admin socket was left behind"
    );
    let out = Command::new(EPOCHGATE)
        .args(["check-config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        text(&out.stdout).contains(&format!("metrics:   http://{addr}/metrics")),
        "{}",
        text(&out.stdout)
    );
}
