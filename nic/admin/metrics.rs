//! The counters in the Prometheus text exposition format (version 0.0.4, which OpenMetrics
//! scrapers read too): [`render`] turns an admin-socket [`Snapshot`] into it, for
//! `epochgate metrics` and for the optional HTTP endpoint [`MetricsServer`]
//! (`[admin] metrics_listen`, `GET /metrics`).
//!
//! # Guarantees
//! - The endpoint runs on its own thread ("eg-metrics") and reads the same snapshot the admin
//!   socket does: counters the worker publishes on its own, and histograms it hands over through
//!   lock-free rings. A scrape never makes the data plane wait.
//! - A request is at most [`MAX_REQUEST`] bytes of request line and headers, read within
//!   [`READ_TIMEOUT`]; the answer must be taken within [`WRITE_TIMEOUT`]. One connection is
//!   served at a time and closed after its answer (`Connection: close`).
//! - Anything but `GET` or `HEAD` of `/metrics` gets a 4xx with a line saying why: a wrong path
//!   404, another method 405 (with `Allow`), a request that is not HTTP/1.x 400, too long 431,
//!   too slow 408. A panic while taking the snapshot is a 500; the server lives on.

use crate::stats::{Buckets, DropReason, RequestCounters, Snapshot, VerdictCounters};
use std::fmt::Write as _;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The longest request line plus headers, their blank line included.
pub const MAX_REQUEST: usize = 8192;
/// How long a client has, from its connection, to send its request.
pub const READ_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a client has to take the answer.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the thread looks at its stop flag while no client comes.
const POLL_TICK: Duration = Duration::from_millis(50);
/// The path metrics are served at.
pub const PATH: &str = "/metrics";
/// The exposition format's content type.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Why the metrics endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("admin.metrics_listen {addr}: cannot listen: {why}")]
    Listen { addr: SocketAddr, why: String },
}

/// The running endpoint; stopped by [`MetricsServer::stop`] or when dropped.
pub struct MetricsServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl MetricsServer {
    /// Listens on `addr` and serves `/metrics` from what `source` returns at each request.
    pub fn start(
        addr: SocketAddr,
        source: crate::admin::SnapshotFn,
    ) -> Result<MetricsServer, MetricsError> {
        let err = |why: String| MetricsError::Listen { addr, why };
        let listener = TcpListener::bind(addr).map_err(|e| {
            err(match e.kind() {
                ErrorKind::AddrInUse => format!(
                    "{e}: another process (another epochgate, or an exporter) has this port; pick another in [admin] metrics_listen"
                ),
                ErrorKind::AddrNotAvailable => {
                    format!("{e}: no interface of this host has that address")
                }
                ErrorKind::PermissionDenied => {
                    format!("{e}: ports below 1024 need root or CAP_NET_BIND_SERVICE")
                }
                _ => e.to_string(),
            })
        })?;
        let local = listener.local_addr().map_err(|e| err(e.to_string()))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| err(e.to_string()))?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("eg-metrics".into())
                .spawn(move || serve(&listener, &source, &stop))
                .map_err(|e| err(format!("cannot start the metrics thread: {e}")))?
        };
        Ok(MetricsServer {
            addr: local,
            stop,
            thread: Some(thread),
        })
    }

    /// The address it listens on (with the port the kernel chose, if port 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops the thread (within one poll tick, or one client's timeouts).
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.stop.store(true, Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.halt();
    }
}

fn serve(listener: &TcpListener, source: &crate::admin::SnapshotFn, stop: &AtomicBool) {
    let mut failing = false;
    while !stop.load(Relaxed) {
        match listener.accept() {
            Ok((stream, _)) => {
                failing = false;
                handle(stream, source);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(POLL_TICK),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => {
                // Out of descriptors, say: said once per episode, then a pause, never a spin.
                if !failing {
                    eprintln!("epochgate: admin.metrics_listen: accept failed: {e}; retrying");
                    failing = true;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// Reads one request and answers it; the connection is closed afterwards.
fn handle(mut stream: TcpStream, source: &crate::admin::SnapshotFn) {
    if stream.set_nonblocking(false).is_err()
        || stream.set_write_timeout(Some(WRITE_TIMEOUT)).is_err()
    {
        return;
    }
    let answer = match read_head(&mut stream) {
        Ok(head) => respond(&head, source),
        Err(answer) => answer,
    };
    let _ = stream.write_all(&answer.bytes());
    // Take what the client sent beyond its head before closing, so that it sees the end of
    // the answer and not a reset.
    let _ = stream.shutdown(Shutdown::Write);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
    let mut buf = [0u8; 1024];
    for _ in 0..16 {
        match stream.read(&mut buf) {
            Ok(n) if n > 0 => {}
            _ => break,
        }
    }
}

/// The request line and headers, up to the blank line; or the error answer.
fn read_head(stream: &mut TcpStream) -> Result<Vec<u8>, Answer> {
    let deadline = Instant::now() + READ_TIMEOUT;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        if let Some(end) = find_end(&head) {
            head.truncate(end);
            return Ok(head);
        }
        if head.len() >= MAX_REQUEST {
            return Err(Answer::error(
                431,
                &format!("request line and headers longer than {MAX_REQUEST} bytes"),
            ));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return Err(Answer::error(
                408,
                &format!("no complete request within {} ms", READ_TIMEOUT.as_millis()),
            ));
        }
        match stream.read(&mut buf) {
            Ok(0) if head.is_empty() => {
                return Err(Answer::error(400, "the connection closed before a request"))
            }
            // A client that shut down its side after the request line: take what it sent.
            Ok(0) => return Ok(head),
            // At most MAX_REQUEST + one read: the length check above ends it the next round.
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return Err(Answer::error(400, "the request could not be read")),
        }
    }
}

/// Where the head ends (`\r\n\r\n`, or a bare `\n\n`).
fn find_end(b: &[u8]) -> Option<usize> {
    let crlf = b.windows(4).position(|w| w == b"\r\n\r\n");
    let lf = b.windows(2).position(|w| w == b"\n\n");
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// An HTTP answer.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Answer {
    status: u16,
    content_type: &'static str,
    extra: &'static str,
    body: String,
    /// HEAD: the headers only.
    head_only: bool,
}

impl Answer {
    fn error(status: u16, why: &str) -> Answer {
        Answer {
            status,
            content_type: "text/plain; charset=utf-8",
            extra: if status == 405 {
                "Allow: GET, HEAD\r\n"
            } else {
                ""
            },
            body: format!("{} {}: {why}\n", status, reason(status)),
            head_only: false,
        }
    }

    fn bytes(&self) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n{}Connection: close\r\n\r\n",
            self.status,
            reason(self.status),
            self.content_type,
            self.body.len(),
            self.extra
        )
        .into_bytes();
        if !self.head_only {
            out.extend_from_slice(self.body.as_bytes());
        }
        out
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        505 => "HTTP Version Not Supported",
        _ => "Internal Server Error",
    }
}

/// The answer to a complete request head.
fn respond(head: &[u8], source: &crate::admin::SnapshotFn) -> Answer {
    let Ok(text) = std::str::from_utf8(head) else {
        return Answer::error(400, "the request is not text");
    };
    let line = text
        .lines()
        .next()
        .unwrap_or_default()
        .trim_end_matches('\r');
    let parts: Vec<&str> = line.split(' ').collect();
    let [method, target, version] = parts[..] else {
        return Answer::error(
            400,
            &format!("{line:?} is not an HTTP request line (METHOD PATH HTTP/1.1)"),
        );
    };
    if !version.starts_with("HTTP/1.") {
        return Answer::error(
            if version.starts_with("HTTP/") {
                505
            } else {
                400
            },
            &format!("{version:?}: this endpoint speaks HTTP/1.0 and HTTP/1.1"),
        );
    }
    let path = target.split('?').next().unwrap_or_default();
    if path != PATH {
        return Answer::error(
            404,
            &format!("no such path {path:?}: metrics are at {PATH}"),
        );
    }
    if method != "GET" && method != "HEAD" {
        return Answer::error(
            405,
            &format!("method {method:?} not allowed: use GET (or HEAD)"),
        );
    }
    let source = source.clone();
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || render(&source()))) {
        Ok(body) => Answer {
            status: 200,
            content_type: CONTENT_TYPE,
            extra: "",
            body,
            head_only: method == "HEAD",
        },
        Err(_) => Answer::error(500, "internal error while reading the counters"),
    }
}

/// Writes metric families: `# HELP`, `# TYPE`, then samples.
struct Out {
    text: String,
}

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} {help}");
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                let _ = write!(self.text, "{k}=\"{}\"", escape(v));
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {value}");
    }

    fn histogram(&mut self, name: &str, labels: &[(&str, &str)], b: &Buckets) {
        let mut with_le: Vec<(&str, &str)> = labels.to_vec();
        let les: Vec<String> = b.le_ns.iter().map(|ns| seconds(*ns)).collect();
        for (le, n) in les.iter().zip(&b.cumulative) {
            with_le.push(("le", le));
            self.sample(&format!("{name}_bucket"), &with_le, n);
            with_le.pop();
        }
        with_le.push(("le", "+Inf"));
        self.sample(&format!("{name}_bucket"), &with_le, b.count);
        self.sample(&format!("{name}_sum"), labels, seconds(b.sum_ns));
        self.sample(&format!("{name}_count"), labels, b.count);
    }
}

/// A label value as the exposition format wants it.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Nanoseconds as seconds, exactly (no float rounding): "0.0000025", "10".
fn seconds(ns: u64) -> String {
    let (s, frac) = (ns / 1_000_000_000, ns % 1_000_000_000);
    if frac == 0 {
        return s.to_string();
    }
    let f = format!("{frac:09}");
    format!("{s}.{}", f.trim_end_matches('0'))
}

/// The snapshot in the Prometheus text format, every family with its help and type.
pub fn render(snap: &Snapshot) -> String {
    let mut o = Out {
        text: String::with_capacity(16 << 10),
    };
    o.family(
        "epochgate_uptime_seconds",
        "gauge",
        "Seconds since the data plane started.",
    );
    o.sample(
        "epochgate_uptime_seconds",
        &[],
        seconds(snap.uptime_ms * 1_000_000),
    );

    let vms = &snap.vms;
    o.family(
        "epochgate_vm_mode",
        "gauge",
        "1 for the mode the VM is in (passthrough, protected, standby, failed), 0 for the others.",
    );
    for v in vms {
        for m in ["passthrough", "protected", "standby", "failed"] {
            o.sample(
                "epochgate_vm_mode",
                &[("vm", &v.name), ("mode", m)],
                u8::from(v.mode == m),
            );
        }
    }
    o.family(
        "epochgate_vm_controller_attached",
        "gauge",
        "1 while a controller session (the VMM) has adopted the VM.",
    );
    for v in vms {
        o.sample(
            "epochgate_vm_controller_attached",
            &[("vm", &v.name)],
            u8::from(v.controller),
        );
    }
    for (name, help, pick) in [
        (
            "epochgate_vm_frames_total",
            "Frames of the VM: received from it, transmitted to the uplink, inbound from the uplink to it.",
            [v_rx_frames as VmField, v_tx_frames, v_in_frames],
        ),
        (
            "epochgate_vm_bytes_total",
            "Bytes of the VM: received from it, transmitted to the uplink, inbound from the uplink to it.",
            [v_rx_bytes, v_tx_bytes, v_in_bytes],
        ),
    ] {
        o.family(name, "counter", help);
        for v in vms {
            for (dir, f) in ["received", "transmitted", "inbound"].iter().zip(pick) {
                o.sample(name, &[("vm", &v.name), ("direction", dir)], f(v));
            }
        }
    }
    o.family(
        "epochgate_vm_dropped_frames_total",
        "counter",
        "Frames of the VM dropped, by reason.",
    );
    for v in vms {
        for r in DropReason::ALL {
            let n = v.dropped.get(r.name()).copied().unwrap_or(0);
            o.sample(
                "epochgate_vm_dropped_frames_total",
                &[("vm", &v.name), ("reason", r.name())],
                n,
            );
        }
    }
    let gauges: [(&str, &str, VmField); 8] = [
        (
            "epochgate_vm_held_frames",
            "Frames held in epochs not yet committed.",
            |v| v.held_frames,
        ),
        (
            "epochgate_vm_held_bytes",
            "Bytes held in epochs not yet committed.",
            |v| v.held_bytes,
        ),
        (
            "epochgate_vm_ready_frames",
            "Released frames waiting for egress or the VM's rate.",
            |v| v.ready_frames,
        ),
        (
            "epochgate_vm_ready_bytes",
            "Released bytes waiting for egress or the VM's rate.",
            |v| v.ready_bytes,
        ),
        (
            "epochgate_vm_staged_frames",
            "Frames in the egress TX burst, not yet taken by TX.",
            |v| v.staged_frames,
        ),
        (
            "epochgate_vm_buffer_limit_frames",
            "max_held_frames: what epochgate keeps for the VM, at most.",
            |v| v.setup.max_held_frames,
        ),
        (
            "epochgate_vm_buffer_limit_bytes",
            "max_held_bytes (0: no byte limit).",
            |v| v.setup.max_held_bytes,
        ),
        (
            "epochgate_vm_open_epoch",
            "The open epoch (0 when the VM is not protected).",
            |v| v.open_epoch,
        ),
    ];
    for (name, help, f) in gauges {
        o.family(name, "gauge", help);
        for v in vms {
            o.sample(name, &[("vm", &v.name)], f(v));
        }
    }
    o.family(
        "epochgate_vm_sealed_epoch",
        "gauge",
        "The highest sealed epoch.",
    );
    for v in vms {
        o.sample(
            "epochgate_vm_sealed_epoch",
            &[("vm", &v.name)],
            v.sealed_epoch,
        );
    }
    o.family(
        "epochgate_vm_committed_epoch",
        "gauge",
        "The highest committed epoch.",
    );
    for v in vms {
        o.sample(
            "epochgate_vm_committed_epoch",
            &[("vm", &v.name)],
            v.committed_epoch,
        );
    }
    o.family(
        "epochgate_vm_epoch_age_seconds",
        "gauge",
        "How long the open epoch has been open (0: none open), to within 10 ms.",
    );
    for v in vms {
        o.sample(
            "epochgate_vm_epoch_age_seconds",
            &[("vm", &v.name)],
            seconds(v.epoch_age_ns),
        );
    }
    o.family(
        "epochgate_vm_epochs_total",
        "counter",
        "Epochs sealed (fences), committed and discarded.",
    );
    for v in vms {
        for (ev, n) in [
            ("sealed", v.epochs_sealed),
            ("committed", v.epochs_committed),
            ("discarded", v.epochs_discarded),
        ] {
            o.sample(
                "epochgate_vm_epochs_total",
                &[("vm", &v.name), ("event", ev)],
                n,
            );
        }
    }
    for (name, help, f) in [
        (
            "epochgate_vm_fences_cut_short_total",
            "Fences that sealed before the VM's ingress was seen empty (drain time up, or buffer full).",
            (|v| v.fences_cut_short) as VmField,
        ),
        (
            "epochgate_vm_fences_unproven_total",
            "Fences on a port whose emptiness proves nothing (a kernel or hardware port).",
            |v| v.fences_unproven,
        ),
        (
            "epochgate_vm_backpressure_total",
            "Times the VM's buffer filled and its port stopped being read.",
            |v| v.backpressure,
        ),
        (
            "epochgate_vm_released_frames_total",
            "Frames that became releasable (a pass-through VM's on arrival, a protected VM's at commit).",
            |v| v.released_frames,
        ),
    ] {
        o.family(name, "counter", help);
        for v in vms {
            o.sample(name, &[("vm", &v.name)], f(v));
        }
    }
    o.family(
        "epochgate_vm_checkpoint_requests_total",
        "counter",
        "Checkpoint requests sent to the VM's controller, by reason.",
    );
    for v in vms {
        for r in RequestCounters::NAMES {
            let n = v.checkpoint_requests.get(r).copied().unwrap_or(0);
            o.sample(
                "epochgate_vm_checkpoint_requests_total",
                &[("vm", &v.name), ("reason", r)],
                n,
            );
        }
    }
    o.family(
        "epochgate_vm_verdicts_total",
        "counter",
        "Held frames by the deferral classifier's reason (deferrable or immediate).",
    );
    for v in vms {
        for r in VerdictCounters::NAMES {
            let n = v.verdicts.get(r).copied().unwrap_or(0);
            o.sample(
                "epochgate_vm_verdicts_total",
                &[("vm", &v.name), ("reason", r)],
                n,
            );
        }
    }
    for (name, help, pick) in [
        (
            "epochgate_vm_hold_time_seconds",
            "Arrival to transmit, per frame.",
            (|v| &v.histograms.hold_time) as fn(&crate::stats::VmSnapshot) -> &Buckets,
        ),
        (
            "epochgate_vm_commit_to_wire_seconds",
            "Commit received to the epoch's last frame transmitted, per commit.",
            |v| &v.histograms.commit_to_wire,
        ),
        (
            "epochgate_vm_fence_drain_seconds",
            "Fence received to epoch sealed (the drain of the paused VM's ingress), per fence.",
            |v| &v.histograms.fence_drain,
        ),
    ] {
        o.family(name, "histogram", help);
        for v in vms {
            o.histogram(name, &[("vm", &v.name)], pick(v));
        }
    }

    // Ports.
    let ports = &snap.ports;
    for (name, help, rx, tx) in [
        (
            "epochgate_port_frames_total",
            "Frames the data plane read from (rx) and sent on (tx) the port.",
            (|p| p.rx_frames) as fn(&crate::stats::PortSnapshot) -> u64,
            (|p| p.tx_frames) as fn(&crate::stats::PortSnapshot) -> u64,
        ),
        (
            "epochgate_port_bytes_total",
            "Bytes the data plane read from (rx) and sent on (tx) the port.",
            |p| p.rx_bytes,
            |p| p.tx_bytes,
        ),
        (
            "epochgate_port_driver_frames_total",
            "Frames the port's driver counted (rx, tx).",
            |p| p.driver.ipackets,
            |p| p.driver.opackets,
        ),
        (
            "epochgate_port_driver_bytes_total",
            "Bytes the port's driver counted (rx, tx).",
            |p| p.driver.ibytes,
            |p| p.driver.obytes,
        ),
    ] {
        o.family(name, "counter", help);
        for p in ports {
            for (dir, n) in [("rx", rx(p)), ("tx", tx(p))] {
                o.sample(
                    name,
                    &[("port", &p.name), ("role", &p.role), ("direction", dir)],
                    n,
                );
            }
        }
    }
    o.family(
        "epochgate_port_dropped_frames_total",
        "counter",
        "Frames dropped at the port (not any VM's), by reason.",
    );
    for p in ports {
        for r in DropReason::ALL {
            let n = p.dropped.get(r.name()).copied().unwrap_or(0);
            o.sample(
                "epochgate_port_dropped_frames_total",
                &[("port", &p.name), ("role", &p.role), ("reason", r.name())],
                n,
            );
        }
    }
    o.family(
        "epochgate_port_driver_errors_total",
        "counter",
        "The driver's error counters: imissed (rx ring full), ierrors, oerrors, rx_nombuf (no mbuf).",
    );
    for p in ports {
        for (kind, n) in [
            ("imissed", p.driver.imissed),
            ("ierrors", p.driver.ierrors),
            ("oerrors", p.driver.oerrors),
            ("rx_nombuf", p.driver.rx_nombuf),
        ] {
            o.sample(
                "epochgate_port_driver_errors_total",
                &[("port", &p.name), ("role", &p.role), ("kind", kind)],
                n,
            );
        }
    }

    // The egress scheduler.
    let e = &snap.egress;
    o.family(
        "epochgate_egress_frames_total",
        "counter",
        "Frames the egress scheduler sent, by class (released: committed output of protected VMs).",
    );
    o.sample(
        "epochgate_egress_frames_total",
        &[("class", "released")],
        e.released_frames,
    );
    o.sample(
        "epochgate_egress_frames_total",
        &[("class", "passthrough")],
        e.passthrough_frames,
    );
    o.family(
        "epochgate_egress_bytes_total",
        "counter",
        "Bytes the egress scheduler sent, by class.",
    );
    o.sample(
        "epochgate_egress_bytes_total",
        &[("class", "released")],
        e.released_bytes,
    );
    o.sample(
        "epochgate_egress_bytes_total",
        &[("class", "passthrough")],
        e.passthrough_bytes,
    );
    o.family(
        "epochgate_egress_contended_frames_total",
        "counter",
        "Frames sent while both classes were waiting.",
    );
    o.sample(
        "epochgate_egress_contended_frames_total",
        &[],
        e.contended_frames,
    );
    o.family(
        "epochgate_egress_guarded_frames_total",
        "counter",
        "Pass-through frames the starvation guard let ahead of released ones.",
    );
    o.sample(
        "epochgate_egress_guarded_frames_total",
        &[],
        e.guarded_frames,
    );

    // The control socket.
    let c = &snap.control;
    o.family(
        "epochgate_control_sessions",
        "gauge",
        "Controller sessions open on the control socket.",
    );
    o.sample("epochgate_control_sessions", &[], c.sessions);
    o.family(
        "epochgate_control_refused_total",
        "counter",
        "Connections refused: at control.max_sessions, short of file descriptors, or a peer not allowed.",
    );
    o.sample(
        "epochgate_control_refused_total",
        &[("reason", "max_sessions")],
        c.refused_max_sessions,
    );
    o.sample(
        "epochgate_control_refused_total",
        &[("reason", "no_fds")],
        c.refused_no_fds,
    );
    o.sample(
        "epochgate_control_refused_total",
        &[("reason", "peer")],
        c.refused_peer,
    );
    o.family(
        "epochgate_control_messages_refused_total",
        "counter",
        "Messages refused on a session: before Hello, a Hello for a VM not the session's (a second VM, another session's, unknown), malformed.",
    );
    for (reason, n) in [
        ("before_hello", c.refused_before_hello),
        ("other_vm", c.refused_other_vm),
        ("malformed", c.bad_messages),
    ] {
        o.sample(
            "epochgate_control_messages_refused_total",
            &[("reason", reason)],
            n,
        );
    }
    o.family(
        "epochgate_control_closed_total",
        "counter",
        "Sessions epochgate closed for not reading what it sent (their send buffer was full).",
    );
    o.sample(
        "epochgate_control_closed_total",
        &[("reason", "not_reading")],
        c.closed_not_reading,
    );
    o.family(
        "epochgate_operator_failed_total",
        "counter",
        "VMs failed by the operator through the admin socket (epochgate fail VM).",
    );
    o.sample("epochgate_operator_failed_total", &[], c.operator_failed);
    o.family(
        "epochgate_admin_refused_total",
        "counter",
        "Admin socket refusals: a peer not allowed, a write on a read-only socket or by a peer that may not write.",
    );
    o.sample(
        "epochgate_admin_refused_total",
        &[("reason", "peer")],
        c.admin_refused_peer,
    );
    o.sample(
        "epochgate_admin_refused_total",
        &[("reason", "write")],
        c.admin_writes_refused,
    );
    o.family(
        "epochgate_control_accept_errors_total",
        "counter",
        "accept() failures on the control socket.",
    );
    o.sample(
        "epochgate_control_accept_errors_total",
        &[],
        c.accept_errors,
    );
    o.family(
        "epochgate_control_timeouts_total",
        "counter",
        "Sessions closed for no Hello in time (hello) or for silence (liveness).",
    );
    o.sample(
        "epochgate_control_timeouts_total",
        &[("kind", "hello")],
        c.hello_timeouts,
    );
    o.sample(
        "epochgate_control_timeouts_total",
        &[("kind", "liveness")],
        c.liveness_timeouts,
    );

    // The packet pool.
    o.family(
        "epochgate_mbuf_pool_size",
        "gauge",
        "Mbufs the packet pool was created with (dataplane.mbufs).",
    );
    o.sample("epochgate_mbuf_pool_size", &[], snap.mbufs.size);
    o.family(
        "epochgate_mbufs",
        "gauge",
        "Mbufs of the packet pool in use (held, in rings, in flight) and available.",
    );
    o.sample("epochgate_mbufs", &[("state", "in_use")], snap.mbufs.in_use);
    o.sample(
        "epochgate_mbufs",
        &[("state", "available")],
        snap.mbufs.available,
    );

    // The poll loops.
    o.family(
        "epochgate_worker_rounds_total",
        "counter",
        "Rounds of the worker's poll loop: busy (moved a frame) or idle.",
    );
    for w in &snap.workers {
        let l = w.lcore.to_string();
        o.sample(
            "epochgate_worker_rounds_total",
            &[("lcore", &l), ("state", "busy")],
            w.busy_rounds,
        );
        o.sample(
            "epochgate_worker_rounds_total",
            &[("lcore", &l), ("state", "idle")],
            w.idle_rounds(),
        );
    }
    o.family(
        "epochgate_worker_cycles_total",
        "counter",
        "TSC cycles the worker spent in busy and in idle rounds.",
    );
    for w in &snap.workers {
        let l = w.lcore.to_string();
        o.sample(
            "epochgate_worker_cycles_total",
            &[("lcore", &l), ("state", "busy")],
            w.busy_cycles,
        );
        o.sample(
            "epochgate_worker_cycles_total",
            &[("lcore", &l), ("state", "idle")],
            w.idle_cycles,
        );
    }
    o.family(
        "epochgate_worker_tsc_hertz",
        "gauge",
        "The worker's TSC rate (cycles per second).",
    );
    for w in &snap.workers {
        o.sample(
            "epochgate_worker_tsc_hertz",
            &[("lcore", &w.lcore.to_string())],
            w.tsc_hz,
        );
    }
    o.family(
        "epochgate_worker_frames_total",
        "counter",
        "Frames the worker read from (rx) and sent on (tx) all its ports.",
    );
    for w in &snap.workers {
        let l = w.lcore.to_string();
        o.sample(
            "epochgate_worker_frames_total",
            &[("lcore", &l), ("direction", "rx")],
            w.rx_frames,
        );
        o.sample(
            "epochgate_worker_frames_total",
            &[("lcore", &l), ("direction", "tx")],
            w.tx_frames,
        );
    }
    o.text
}

/// Reads one number of a VM's snapshot.
type VmField = fn(&crate::stats::VmSnapshot) -> u64;

fn v_rx_frames(v: &crate::stats::VmSnapshot) -> u64 {
    v.rx_frames
}
fn v_tx_frames(v: &crate::stats::VmSnapshot) -> u64 {
    v.tx_frames
}
fn v_in_frames(v: &crate::stats::VmSnapshot) -> u64 {
    v.inbound_frames
}
fn v_rx_bytes(v: &crate::stats::VmSnapshot) -> u64 {
    v.rx_bytes
}
fn v_tx_bytes(v: &crate::stats::VmSnapshot) -> u64 {
    v.tx_bytes
}
fn v_in_bytes(v: &crate::stats::VmSnapshot) -> u64 {
    v.inbound_bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::tests::sample;
    use std::sync::atomic::AtomicU64;

    fn value(text: &str, series: &str) -> String {
        text.lines()
            .find_map(|l| {
                l.strip_prefix(series)?
                    .strip_prefix(' ')
                    .map(str::to_string)
            })
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
    }

    #[test]
    fn the_sample_is_rendered_with_conventional_names_and_labels() {
        let t = render(&sample());
        for (series, want) in [
            ("epochgate_uptime_seconds", "125.5"),
            (
                r#"epochgate_vm_frames_total{vm="web",direction="received"}"#,
                "1234567",
            ),
            (
                r#"epochgate_vm_frames_total{vm="web",direction="transmitted"}"#,
                "1234000",
            ),
            (
                r#"epochgate_vm_frames_total{vm="web",direction="inbound"}"#,
                "4242",
            ),
            (
                r#"epochgate_vm_dropped_frames_total{vm="web",reason="buffer-full"}"#,
                "11",
            ),
            (
                r#"epochgate_vm_dropped_frames_total{vm="web",reason="controller-lost"}"#,
                "0",
            ),
            (r#"epochgate_vm_held_frames{vm="ledger-primary"}"#, "200"),
            (r#"epochgate_vm_held_bytes{vm="ledger-primary"}"#, "25600"),
            (r#"epochgate_vm_open_epoch{vm="ledger-primary"}"#, "17"),
            (r#"epochgate_vm_sealed_epoch{vm="ledger-primary"}"#, "16"),
            (r#"epochgate_vm_committed_epoch{vm="ledger-primary"}"#, "15"),
            (
                r#"epochgate_vm_epoch_age_seconds{vm="ledger-primary"}"#,
                "0.0025",
            ),
            (
                r#"epochgate_vm_mode{vm="ledger-primary",mode="protected"}"#,
                "1",
            ),
            (
                r#"epochgate_vm_mode{vm="ledger-primary",mode="standby"}"#,
                "0",
            ),
            (
                r#"epochgate_vm_controller_attached{vm="ledger-primary"}"#,
                "1",
            ),
            (
                r#"epochgate_vm_checkpoint_requests_total{vm="ledger-primary",reason="immediate-frame"}"#,
                "13",
            ),
            (
                r#"epochgate_vm_checkpoint_requests_total{vm="ledger-primary",reason="deferral-expired"}"#,
                "0",
            ),
            (
                r#"epochgate_vm_verdicts_total{vm="ledger-primary",reason="tcp-pure-ack"}"#,
                "9",
            ),
            (
                r#"epochgate_vm_hold_time_seconds_bucket{vm="ledger-primary",le="0.000001"}"#,
                "3",
            ),
            (
                r#"epochgate_vm_hold_time_seconds_bucket{vm="ledger-primary",le="0.00005"}"#,
                "7",
            ),
            (
                r#"epochgate_vm_hold_time_seconds_bucket{vm="ledger-primary",le="+Inf"}"#,
                "9",
            ),
            (
                r#"epochgate_vm_hold_time_seconds_sum{vm="ledger-primary"}"#,
                "2",
            ),
            (
                r#"epochgate_vm_hold_time_seconds_count{vm="ledger-primary"}"#,
                "9",
            ),
            (
                r#"epochgate_port_driver_errors_total{port="net_pcap0",role="egress",kind="imissed"}"#,
                "77",
            ),
            (r#"epochgate_egress_frames_total{class="released"}"#, "4100"),
            (
                r#"epochgate_control_refused_total{reason="max_sessions"}"#,
                "31",
            ),
            (
                r#"epochgate_worker_rounds_total{lcore="1",state="busy"}"#,
                "250",
            ),
            (
                r#"epochgate_worker_rounds_total{lcore="1",state="idle"}"#,
                "750",
            ),
            (
                r#"epochgate_worker_cycles_total{lcore="1",state="idle"}"#,
                "1400",
            ),
            (
                r#"epochgate_worker_frames_total{lcore="1",direction="tx"}"#,
                "3000",
            ),
            ("epochgate_mbuf_pool_size", "8191"),
            (r#"epochgate_mbufs{state="in_use"}"#, "2191"),
            (r#"epochgate_mbufs{state="available"}"#, "6000"),
        ] {
            assert_eq!(value(&t, series), want, "{series}");
        }
        // Every family is declared once, with help and type, before its samples.
        let mut declared = std::collections::BTreeSet::new();
        for l in t.lines() {
            if let Some(rest) = l.strip_prefix("# TYPE ") {
                let name = rest.split(' ').next().unwrap();
                assert!(declared.insert(name.to_string()), "{name} declared twice");
            } else if !l.starts_with('#') {
                let name = l.split(['{', ' ']).next().unwrap();
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s).filter(|f| declared.contains(*f)))
                    .unwrap_or(name);
                assert!(declared.contains(family), "{name} before its # TYPE");
            }
        }
    }

    #[test]
    fn seconds_are_exact_and_label_values_escaped() {
        assert_eq!(seconds(0), "0");
        assert_eq!(seconds(2_500), "0.0000025");
        assert_eq!(seconds(10_000_000_000), "10");
        assert_eq!(seconds(1_234_567_891), "1.234567891");
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    fn start(calls: Arc<AtomicU64>) -> MetricsServer {
        MetricsServer::start(
            "127.0.0.1:0".parse().unwrap(),
            Arc::new(move || {
                if calls.fetch_add(1, Relaxed) == 1 {
                    panic!("test: the source fails once");
                }
                sample()
            }),
        )
        .expect("start")
    }

    fn exchange(addr: SocketAddr, request: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s.write_all(request).expect("send");
        let mut out = String::new();
        s.read_to_string(&mut out).expect("read the answer");
        out
    }

    fn status(answer: &str) -> &str {
        answer.split(' ').nth(1).unwrap_or("")
    }

    #[test]
    fn get_metrics_is_served_and_bad_requests_get_a_4xx() {
        let calls = Arc::new(AtomicU64::new(0));
        let server = start(calls.clone());
        let addr = server.local_addr();
        let ok = exchange(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(
            ok.contains(&format!("Content-Type: {CONTENT_TYPE}\r\n")),
            "{ok}"
        );
        let (head, body) = ok.split_once("\r\n\r\n").unwrap();
        let len: usize = value(head, "Content-Length:").parse().unwrap();
        assert_eq!(body.len(), len);
        assert_eq!(body, render(&sample()));
        // The source panics on the second call: a 500, and the server goes on.
        let e = exchange(addr, b"GET /metrics HTTP/1.1\r\n\r\n");
        assert_eq!(status(&e), "500", "{e}");
        for (req, code, why) in [
            (
                &b"GET / HTTP/1.1\r\n\r\n"[..],
                "404",
                "metrics are at /metrics",
            ),
            (
                b"GET /metricsx?a=1 HTTP/1.1\r\n\r\n",
                "404",
                "no such path \"/metricsx\"",
            ),
            (
                b"POST /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
                "405",
                "use GET",
            ),
            (
                b"DELETE /metrics HTTP/1.0\r\n\r\n",
                "405",
                "Allow: GET, HEAD",
            ),
            (b"hello\r\n\r\n", "400", "is not an HTTP request line"),
            (
                b"GET /metrics SPDY/3\r\n\r\n",
                "400",
                "speaks HTTP/1.0 and HTTP/1.1",
            ),
            (b"GET /metrics HTTP/2.0\r\n\r\n", "505", "speaks HTTP/1.0"),
            (b"\xff\xfe\r\n\r\n", "400", "not text"),
        ] {
            let a = exchange(addr, req);
            assert_eq!(status(&a), code, "{:?}: {a}", String::from_utf8_lossy(req));
            assert!(a.contains(why), "{:?}: {a}", String::from_utf8_lossy(req));
        }
        // Too long a head, with or without an end.
        let mut long = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
        long.extend(std::iter::repeat_n(b'a', MAX_REQUEST + 100));
        let a = exchange(addr, &long);
        assert_eq!(status(&a), "431", "{a}");
        // HEAD: the headers, no body; a query string is fine.
        let h = exchange(addr, b"HEAD /metrics?x=1 HTTP/1.1\r\n\r\n");
        assert!(
            h.starts_with("HTTP/1.1 200 OK") && h.ends_with("\r\n\r\n"),
            "{h}"
        );
        // A client that says nothing gets a 408 when its time is up, and meanwhile (one at a
        // time) the next client waits, then is served.
        let mut closed = TcpStream::connect(addr).unwrap();
        closed.shutdown(Shutdown::Write).unwrap();
        let mut a = String::new();
        closed.read_to_string(&mut a).unwrap();
        assert_eq!(status(&a), "400", "{a}");
        let mut silent = TcpStream::connect(addr).unwrap();
        silent
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut out = String::new();
        silent.read_to_string(&mut out).unwrap();
        assert_eq!(status(&out), "408", "{out}");
        assert!(exchange(addr, b"GET /metrics HTTP/1.0\n\n").starts_with("HTTP/1.1 200 OK"));
        server.stop();
        assert!(
            TcpStream::connect(addr).is_err(),
            "still listening after stop"
        );
    }

    #[test]
    fn a_port_in_use_is_named() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let e = MetricsServer::start(addr, Arc::new(sample))
            .err()
            .expect("the port is taken")
            .to_string();
        assert!(
            e.starts_with(&format!("admin.metrics_listen {addr}: cannot listen: ")),
            "{e}"
        );
        assert!(e.contains("another process"), "{e}");
        let e = MetricsServer::start("192.0.2.1:9716".parse().unwrap(), Arc::new(sample))
            .err()
            .expect("not this host's address")
            .to_string();
        assert!(
            e.contains("no interface of this host has that address"),
            "{e}"
        );
    }
}
