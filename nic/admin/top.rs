//! `epochgate top`: a live view of a running epochgate, read through its admin socket every
//! interval: per VM its mode, epoch and the epoch's age, what it holds, its rates in and out,
//! checkpoint requests, drops by reason and hold-time p99; per worker busy and idle poll rounds
//! and frames per busy round (like `ovs-appctl dpif-netdev/pmd-stats-show`); and the totals.
//!
//! On a terminal the view refreshes in place (the alternate screen, raw input) and keys sort
//! it or quit; anywhere else (a pipe, a file, `--batch`) it prints plain snapshots, one after
//! another, with no escape codes. Rates are the difference between two snapshots divided by the
//! time between them as epochgate measured it (its uptime), so a slow reader does not skew them.

use crate::stats::{Snapshot, VmSnapshot, WorkerSnapshot};
use std::fmt::Write as _;
use std::io::{IsTerminal, Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

/// What the VM rows are sorted by (keys in brackets).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Sort {
    /// [n] by name.
    #[default]
    Name,
    /// [i] frames per second in (from the VM), highest first.
    In,
    /// [o] frames per second out (to the uplink), highest first.
    Out,
    /// [h] frames held, most first.
    Held,
    /// [d] frames dropped, most first.
    Drops,
    /// [p] hold-time p99, longest first.
    P99,
    /// [a] the open epoch's age, oldest first.
    Age,
}

impl Sort {
    /// The key that selects each order.
    pub const KEYS: [(char, Sort); 7] = [
        ('n', Sort::Name),
        ('i', Sort::In),
        ('o', Sort::Out),
        ('h', Sort::Held),
        ('d', Sort::Drops),
        ('p', Sort::P99),
        ('a', Sort::Age),
    ];

    fn of_key(c: char) -> Option<Sort> {
        Sort::KEYS.iter().find(|(k, _)| *k == c).map(|(_, s)| *s)
    }

    fn name(self) -> &'static str {
        match self {
            Sort::Name => "name",
            Sort::In => "rate in",
            Sort::Out => "rate out",
            Sort::Held => "held",
            Sort::Drops => "drops",
            Sort::P99 => "hold p99",
            Sort::Age => "epoch age",
        }
    }
}

/// One VM's row, with its rates.
struct Row<'a> {
    vm: &'a VmSnapshot,
    in_pps: f64,
    out_pps: f64,
    drops: u64,
}

fn rate(now: u64, before: u64, secs: f64) -> f64 {
    if secs <= 0.0 {
        0.0
    } else {
        now.saturating_sub(before) as f64 / secs
    }
}

fn human(n: f64) -> String {
    if n >= 10e9 {
        format!("{:.1}G", n / 1e9)
    } else if n >= 10e6 {
        format!("{:.1}M", n / 1e6)
    } else if n >= 10e3 {
        format!("{:.1}k", n / 1e3)
    } else {
        format!("{n:.0}")
    }
}

fn duration(ns: u64) -> String {
    if ns == 0 {
        "-".to_string()
    } else if ns < 10_000 {
        format!("{ns}ns")
    } else if ns < 10_000_000 {
        format!("{}us", ns / 1_000)
    } else if ns < 10_000_000_000 {
        format!("{}ms", ns / 1_000_000)
    } else {
        format!("{}s", ns / 1_000_000_000)
    }
}

/// The view of `cur` (rates against `prev`, if any), as lines of at most `width` characters.
pub fn render(prev: Option<&Snapshot>, cur: &Snapshot, sort: Sort, width: usize) -> Vec<String> {
    let secs = prev.map_or(0.0, |p| {
        cur.uptime_ms.saturating_sub(p.uptime_ms) as f64 / 1000.0
    });
    let before = |name: &str| prev.and_then(|p| p.vms.iter().find(|v| v.name == name));
    let mut rows: Vec<Row> = cur
        .vms
        .iter()
        .map(|v| {
            let (rx0, tx0) =
                before(&v.name).map_or((v.rx_frames, v.tx_frames), |b| (b.rx_frames, b.tx_frames));
            Row {
                vm: v,
                in_pps: rate(v.rx_frames, rx0, secs),
                out_pps: rate(v.tx_frames, tx0, secs),
                drops: v.dropped.values().sum(),
            }
        })
        .collect();
    let desc = |a: f64, b: f64| b.partial_cmp(&a).unwrap_or(std::cmp::Ordering::Equal);
    rows.sort_by(|a, b| {
        let by = match sort {
            Sort::Name => std::cmp::Ordering::Equal,
            Sort::In => desc(a.in_pps, b.in_pps),
            Sort::Out => desc(a.out_pps, b.out_pps),
            Sort::Held => b.vm.held_frames.cmp(&a.vm.held_frames),
            Sort::Drops => b.drops.cmp(&a.drops),
            Sort::P99 => b.vm.hold_time.p99_ns.cmp(&a.vm.hold_time.p99_ns),
            Sort::Age => b.vm.epoch_age_ns.cmp(&a.vm.epoch_age_ns),
        };
        by.then_with(|| a.vm.name.cmp(&b.vm.name))
    });

    let mut out = Vec::new();
    let total_in: f64 = rows.iter().map(|r| r.in_pps).sum();
    let total_out: f64 = rows.iter().map(|r| r.out_pps).sum();
    let held: u64 = cur.vms.iter().map(|v| v.held_frames).sum();
    let held_bytes: u64 = cur.vms.iter().map(|v| v.held_bytes).sum();
    let drops: u64 = rows.iter().map(|r| r.drops).sum();
    let requests: u64 = cur
        .vms
        .iter()
        .flat_map(|v| v.checkpoint_requests.values())
        .sum();
    out.push(format!(
        "epochgate up {:.1}s  {} VM(s)  in {}/s  out {}/s  held {} frames {} bytes  requests {}  dropped {}  sessions {}",
        cur.uptime_ms as f64 / 1000.0,
        cur.vms.len(),
        human(total_in),
        human(total_out),
        held,
        held_bytes,
        requests,
        drops,
        cur.control.sessions,
    ));
    out.push(format!(
        "sort: {} (keys: {}; q quit)",
        sort.name(),
        Sort::KEYS
            .iter()
            .map(|(k, s)| format!("{k} {}", s.name()))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    out.push(String::new());
    out.push(format!(
        "{:<16} {:<11} {:>14} {:>7} {:>8} {:>10} {:>8} {:>8} {:>6} {:>8}  DROPS",
        "VM", "MODE", "EPOCH o/s/c", "AGE", "HELD", "HELD B", "IN/s", "OUT/s", "REQ", "HOLD p99"
    ));
    for r in &rows {
        let v = r.vm;
        let epoch = if v.open_epoch == 0 && v.committed_epoch == 0 {
            "-".to_string()
        } else {
            format!("{}/{}/{}", v.open_epoch, v.sealed_epoch, v.committed_epoch)
        };
        let reqs: u64 = v.checkpoint_requests.values().sum();
        let drops = if v.dropped.is_empty() {
            "-".to_string()
        } else {
            v.dropped
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        out.push(format!(
            "{:<16} {:<11} {:>14} {:>7} {:>8} {:>10} {:>8} {:>8} {:>6} {:>8}  {}",
            v.name,
            if v.mode == "protected" && !v.controller {
                "protected*".to_string()
            } else {
                v.mode.clone()
            },
            epoch,
            duration(v.epoch_age_ns),
            v.held_frames,
            v.held_bytes,
            human(r.in_pps),
            human(r.out_pps),
            reqs,
            duration(v.hold_time.p99_ns),
            drops
        ));
    }
    if cur
        .vms
        .iter()
        .any(|v| v.mode == "protected" && !v.controller)
    {
        out.push(
            "  * protected with no controller session: its output is held until a VMM adopts it"
                .to_string(),
        );
    }
    out.push(String::new());
    out.push(format!(
        "{:<8} {:>12} {:>12} {:>7} {:>10} {:>10} {:>12}",
        "WORKER", "BUSY ROUNDS", "IDLE ROUNDS", "BUSY%", "RX/s", "TX/s", "FRAMES/ROUND"
    ));
    for w in &cur.workers {
        let w0: WorkerSnapshot = prev
            .and_then(|p| p.workers.iter().find(|x| x.lcore == w.lcore))
            .copied()
            .unwrap_or_default();
        // Over the interval when there is one, since the start otherwise.
        let d = |now: u64, then: u64| now.saturating_sub(then);
        let (busy, idle) = (
            d(w.busy_rounds, w0.busy_rounds),
            d(w.idle_rounds(), w0.idle_rounds()),
        );
        let (bc, ic) = (
            d(w.busy_cycles, w0.busy_cycles),
            d(w.idle_cycles, w0.idle_cycles),
        );
        let frames = d(w.rx_frames, w0.rx_frames) + d(w.tx_frames, w0.tx_frames);
        out.push(format!(
            "lcore {:<2} {:>12} {:>12} {:>6.1}% {:>10} {:>10} {:>12.1}",
            w.lcore,
            busy,
            idle,
            if bc + ic == 0 {
                0.0
            } else {
                100.0 * bc as f64 / (bc + ic) as f64
            },
            human(rate(w.rx_frames, w0.rx_frames, secs)),
            human(rate(w.tx_frames, w0.tx_frames, secs)),
            if busy == 0 {
                0.0
            } else {
                frames as f64 / busy as f64
            }
        ));
    }
    for l in &mut out {
        if l.chars().count() > width {
            *l = l.chars().take(width).collect();
        }
    }
    out
}

/// How `top` runs.
pub struct TopOptions {
    pub interval: Duration,
    /// Stop after this many views (batch mode runs until killed without it).
    pub iterations: Option<u64>,
    /// Plain snapshots even on a terminal.
    pub batch: bool,
    pub sort: Sort,
}

/// Runs the view against the admin socket `socket` until `q` (or the iterations are done).
pub fn run(socket: &Path, opts: &TopOptions) -> anyhow::Result<()> {
    // The first reading decides whether there is anything to show: an unreachable socket is
    // the operator's error, said at once.
    let first = crate::admin::query(socket, "stats")?;
    let stdout = std::io::stdout();
    let interactive = !opts.batch && stdout.is_terminal() && std::io::stdin().is_terminal();
    if interactive {
        interactive_loop(socket, opts, first)
    } else {
        batch_loop(socket, opts, first)
    }
}

fn batch_loop(socket: &Path, opts: &TopOptions, first: Snapshot) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    let mut prev: Option<Snapshot> = None;
    let mut cur = Ok(first);
    let mut n = 0u64;
    loop {
        match &cur {
            Ok(s) => {
                for l in render(prev.as_ref(), s, opts.sort, usize::MAX) {
                    writeln!(out, "{l}")?;
                }
            }
            Err(e) => writeln!(out, "epochgate: {e}; retrying")?,
        }
        writeln!(out)?;
        out.flush()?;
        n += 1;
        if opts.iterations.is_some_and(|max| n >= max) {
            return Ok(());
        }
        std::thread::sleep(opts.interval);
        if let Ok(s) = cur {
            prev = Some(s);
        }
        cur = crate::admin::query(socket, "stats");
    }
}

/// The terminal in raw mode on the alternate screen, restored when dropped (also on a panic).
struct Screen {
    saved: Option<rustix::termios::Termios>,
}

impl Screen {
    fn enter() -> anyhow::Result<Screen> {
        let stdin = std::io::stdin();
        let saved = rustix::termios::tcgetattr(&stdin)
            .map_err(|e| anyhow::anyhow!("top: cannot read the terminal's settings: {e}"))?;
        let mut raw = saved.clone();
        raw.make_raw();
        // Keep output processing, so "\n" still returns the carriage.
        raw.output_modes = saved.output_modes;
        rustix::termios::tcsetattr(&stdin, rustix::termios::OptionalActions::Now, &raw)
            .map_err(|e| anyhow::anyhow!("top: cannot put the terminal in raw mode: {e}"))?;
        let mut out = std::io::stdout();
        // Alternate screen, cursor hidden.
        let _ = out.write_all(b"\x1b[?1049h\x1b[?25l");
        let _ = out.flush();
        Ok(Screen { saved: Some(saved) })
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        let mut out = std::io::stdout();
        let _ = out.write_all(b"\x1b[?25h\x1b[?1049l");
        let _ = out.flush();
        if let Some(t) = self.saved.take() {
            let _ = rustix::termios::tcsetattr(
                std::io::stdin(),
                rustix::termios::OptionalActions::Now,
                &t,
            );
        }
    }
}

fn width() -> usize {
    rustix::termios::tcgetwinsize(std::io::stdout())
        .ok()
        .map(|w| usize::from(w.ws_col))
        .filter(|w| *w > 0)
        .unwrap_or(80)
}

fn draw(
    prev: Option<&Snapshot>,
    cur: &Result<Snapshot, String>,
    sort: Sort,
    every: Duration,
) -> std::io::Result<()> {
    let lines = match cur {
        Ok(s) => render(prev, s, sort, width()),
        Err(e) => vec![format!("epochgate: {e}; retrying every {every:?}")],
    };
    // Home, each line cleared to its end, then everything below cleared: no flicker.
    let mut frame = String::from("\x1b[H");
    for l in lines {
        let _ = write!(frame, "{l}\x1b[K\r\n");
    }
    frame.push_str("\x1b[J");
    let mut out = std::io::stdout().lock();
    out.write_all(frame.as_bytes())?;
    out.flush()
}

fn interactive_loop(socket: &Path, opts: &TopOptions, first: Snapshot) -> anyhow::Result<()> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;
    let _screen = Screen::enter()?;
    let mut sort = opts.sort;
    let mut prev: Option<Snapshot> = None;
    let mut cur: Result<Snapshot, String> = Ok(first);
    let mut n = 0u64;
    let stdin = std::io::stdin();
    loop {
        draw(prev.as_ref(), &cur, sort, opts.interval)?;
        n += 1;
        if opts.iterations.is_some_and(|max| n >= max) {
            return Ok(());
        }
        // Keys until the next refresh; a new order shows at once, on the same numbers.
        let next = Instant::now() + opts.interval;
        loop {
            let left = next.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
            let mut fds = [PollFd::new(stdin.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, PollTimeout::from(ms)) {
                Ok(0) => break,
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => anyhow::bail!("top: reading keys: {e}"),
            }
            let mut buf = [0u8; 32];
            let k = stdin.lock().read(&mut buf)?;
            if k == 0 {
                return Ok(()); // the terminal went away
            }
            for &b in &buf[..k] {
                match b {
                    // q, Ctrl-C, Ctrl-D (not Esc: arrow keys start with it).
                    b'q' | b'Q' | 0x03 | 0x04 => return Ok(()),
                    b' ' => draw(prev.as_ref(), &cur, sort, opts.interval)?,
                    b => {
                        if let Some(s) = Sort::of_key(char::from(b).to_ascii_lowercase()) {
                            sort = s;
                            draw(prev.as_ref(), &cur, sort, opts.interval)?;
                        }
                    }
                }
            }
        }
        if let Ok(s) = cur {
            prev = Some(s);
        }
        cur = crate::admin::query(socket, "stats").map_err(|e| e.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{ControlSnapshot, EgressSnapshot, Latency, VmSetup};
    use std::collections::BTreeMap;

    fn vm(name: &str, rx: u64, tx: u64, held: u64) -> VmSnapshot {
        VmSnapshot {
            name: name.into(),
            mode: "passthrough".into(),
            mac: None,
            rx_frames: rx,
            rx_bytes: rx * 64,
            released_frames: tx,
            released_bytes: tx * 64,
            tx_frames: tx,
            tx_bytes: tx * 64,
            waiting: held,
            ready_frames: 0,
            ready_bytes: 0,
            staged_frames: 0,
            backpressure: 0,
            inbound_frames: 0,
            inbound_bytes: 0,
            dropped: BTreeMap::new(),
            open_epoch: 0,
            sealed_epoch: 0,
            committed_epoch: 0,
            held_frames: held,
            held_bytes: held * 64,
            epochs_sealed: 0,
            epochs_committed: 0,
            epochs_discarded: 0,
            fences_cut_short: 0,
            fences_unproven: 0,
            verdicts: BTreeMap::new(),
            checkpoint_requests: BTreeMap::new(),
            hold_time: Latency::default(),
            commit_to_wire: Latency::default(),
            fence_drain: Latency::default(),
            setup: VmSetup::default(),
            epoch_age_ns: 0,
            controller: false,
            histograms: Default::default(),
        }
    }

    fn snap(uptime_ms: u64, vms: Vec<VmSnapshot>) -> Snapshot {
        Snapshot {
            uptime_ms,
            vms,
            ports: vec![],
            egress: EgressSnapshot::default(),
            control: ControlSnapshot::default(),
            workers: vec![WorkerSnapshot {
                lcore: 1,
                rounds: uptime_ms * 10,
                busy_rounds: uptime_ms,
                rx_frames: uptime_ms * 8,
                tx_frames: uptime_ms * 8,
                busy_cycles: uptime_ms * 100,
                idle_cycles: uptime_ms * 300,
                tsc_hz: 1_000_000,
            }],
            mbufs: Default::default(),
        }
    }

    fn row<'a>(lines: &'a [String], name: &str) -> &'a str {
        lines
            .iter()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no row {name} in {lines:#?}"))
    }

    #[test]
    fn rates_come_from_two_snapshots_over_epochgates_own_clock() {
        let a = snap(1_000, vec![vm("web", 100, 100, 0), vm("db", 0, 0, 0)]);
        let b = snap(3_000, vec![vm("web", 4_100, 2_100, 0), vm("db", 50, 0, 7)]);
        let lines = render(Some(&a), &b, Sort::Name, usize::MAX);
        let web: Vec<&str> = row(&lines, "web").split_whitespace().collect();
        // VM MODE EPOCH AGE HELD HELDB IN OUT REQ P99 DROPS
        assert_eq!(web[6], "2000", "{web:?}"); // (4100 - 100) / 2 s
        assert_eq!(web[7], "1000", "{web:?}");
        let db: Vec<&str> = row(&lines, "db").split_whitespace().collect();
        assert_eq!((db[4], db[6]), ("7", "25"), "{db:?}");
        // Without a previous snapshot there is no rate yet.
        let first = render(None, &b, Sort::Name, usize::MAX);
        assert_eq!(row(&first, "web").split_whitespace().nth(6), Some("0"));
        // The worker: 2000 busy and 18000 idle rounds in the interval, 25% busy cycles,
        // (16000 + 16000) / 2000 = 16 frames per busy round.
        let w = lines.iter().find(|l| l.starts_with("lcore 1")).unwrap();
        let f: Vec<&str> = w.split_whitespace().collect();
        assert_eq!(&f[2..5], ["2000", "18000", "25.0%"], "{w}");
        assert_eq!(f.last(), Some(&"16.0"), "{w}");
    }

    #[test]
    fn keys_sort_the_rows_and_lines_fit_the_width() {
        let a = snap(
            1_000,
            vec![vm("a", 0, 0, 1), vm("b", 0, 0, 9), vm("c", 0, 0, 5)],
        );
        let b = snap(
            2_000,
            vec![vm("a", 300, 0, 1), vm("b", 100, 0, 9), vm("c", 200, 0, 5)],
        );
        let order = |s: Sort| -> Vec<char> {
            render(Some(&a), &b, s, usize::MAX)
                .iter()
                .filter(|l| l.len() > 2 && l.as_bytes()[1] == b' ' && "abc".contains(&l[..1]))
                .map(|l| l.chars().next().unwrap())
                .collect()
        };
        assert_eq!(order(Sort::Name), ['a', 'b', 'c']);
        assert_eq!(order(Sort::Held), ['b', 'c', 'a']);
        assert_eq!(order(Sort::In), ['a', 'c', 'b']);
        assert_eq!(Sort::of_key('h'), Some(Sort::Held));
        assert_eq!(Sort::of_key('x'), None);
        assert!(render(Some(&a), &b, Sort::Name, 40)
            .iter()
            .all(|l| l.chars().count() <= 40));
    }
}
