//! `epochgate top` in a real terminal (tmux, on a tmux server of the test's own, `-L`): the view
//! shows each VM and the worker, refreshes in place (one header, a changing uptime), a key
//! re-sorts it, `q` quits with status 0 and gives the terminal back; with its output piped it
//! prints plain snapshots with no escape codes.

mod common;
use common::*;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// The test's own tmux server, killed (by its socket) when dropped.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn run(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("tmux (scripts/setup.sh installs it)")
    }

    fn pane(&self) -> String {
        text(&self.run(&["capture-pane", "-p", "-t", "top"]).stdout)
    }

    /// Waits until the pane shows what `cond` wants; returns it.
    fn wait(&self, what: &str, cond: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            let p = self.pane();
            if cond(&p) {
                return p;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "timed out waiting for {what}; pane:\n{p}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
    }
}

fn row<'a>(pane: &'a str, name: &str) -> Option<&'a str> {
    pane.lines().find(|l| l.starts_with(&format!("{name} ")))
}

fn position(pane: &str, name: &str) -> usize {
    pane.lines()
        .position(|l| l.starts_with(&format!("{name} ")))
        .unwrap_or(usize::MAX)
}

fn config(d: &Path) -> String {
    let web = guest_frames(1, 64);
    let zeta = guest_frames(2, 40);
    write_pcap(&d.join("web.pcap"), &web);
    write_pcap(&d.join("zeta.pcap"), &zeta);
    // web replays its capture for ever (a rate to show) into a null egress; zeta is protected
    // and holds its 40 frames.
    format!(
        "{}[egress]\nport = \"net_null0,no-rx=1\"\n\n\
         [[vm]]\nname = \"web\"\nport = \"net_pcap1,rx_pcap={d}/web.pcap,infinite_rx=1\"\n\n\
         [[vm]]\nname = \"zeta\"\nmode = \"protected\"\n\
         port = \"net_pcap2,rx_pcap={d}/zeta.pcap,tx_pcap={d}/zeta-in.pcap\"\n",
        eal_and_control(d, "eg-top"),
        d = d.display()
    )
}

#[test]
fn top_in_a_terminal_and_in_a_pipe() {
    let _g = serial();
    let dir = tempdir();
    let d = dir.path();
    let mut eg = Running::start(d, &config(d));
    let admin = d.join("admin.sock");
    eg.wait_for("zeta's frames held", |s| {
        u(vm(s, "zeta"), "held_frames") == 40
    });

    // In a pipe: plain snapshots, no escape codes.
    let out = Command::new(EPOCHGATE)
        .args(["top", "-n", "2", "--interval", "0.2", "--socket"])
        .arg(&admin)
        .output()
        .unwrap();
    let plain = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!plain.contains('\x1b'), "escape codes in a pipe: {plain:?}");
    assert_eq!(plain.matches("epochgate up ").count(), 2, "{plain}");
    let z = row(&plain, "zeta").unwrap_or_else(|| panic!("no zeta row\n{plain}"));
    let f: Vec<&str> = z.split_whitespace().collect();
    // VM MODE EPOCH AGE HELD ...: protected, no controller, epoch 1 open, 40 frames held.
    assert_eq!((f[1], f[2], f[4]), ("protected*", "1/0/0", "40"), "{z}");
    assert!(plain.contains("lcore 1"), "{plain}");

    // In a terminal.
    let tmux = Tmux {
        socket: format!("eg-top-{}", std::process::id()),
    };
    let cmd = format!(
        "{EPOCHGATE} top --interval 0.3 --socket {}; echo \"top exited $?\"; sleep 600",
        admin.display()
    );
    let out = tmux.run(&[
        "new-session",
        "-d",
        "-s",
        "top",
        "-x",
        "200",
        "-y",
        "40",
        &cmd,
    ]);
    assert!(out.status.success(), "tmux: {}", text(&out.stderr));
    let first = tmux.wait("the view with a rate for web", |p| {
        row(p, "web").is_some_and(|r| r.split_whitespace().nth(6).is_some_and(|v| v != "0"))
            && p.contains("WORKER")
    });
    let uptime = |p: &str| -> String {
        p.lines()
            .find(|l| l.starts_with("epochgate up "))
            .and_then(|l| l.split_whitespace().nth(2))
            .unwrap_or_default()
            .to_string()
    };
    // Refreshed in place: a new uptime, still one header, rows where they were.
    let before = uptime(&first);
    let later = tmux.wait("a refresh", |p| {
        !uptime(p).is_empty() && uptime(p) != before
    });
    assert_eq!(later.matches("epochgate up ").count(), 1, "{later}");
    assert_eq!(later.matches("WORKER").count(), 1, "{later}");
    assert!(later.contains("sort: name"), "{later}");
    assert!(
        position(&later, "web") < position(&later, "zeta"),
        "{later}"
    );
    let worker = later
        .lines()
        .find(|l| l.starts_with("lcore 1"))
        .unwrap_or_else(|| panic!("no worker row\n{later}"));
    let busy: u64 = worker.split_whitespace().nth(2).unwrap().parse().unwrap();
    assert!(
        busy > 0,
        "web replays its capture, so rounds are busy: {worker}"
    );

    // `h` sorts by held: zeta (40) comes first.
    tmux.run(&["send-keys", "-t", "top", "h"]);
    let held = tmux.wait("sort by held", |p| p.contains("sort: held"));
    assert!(position(&held, "zeta") < position(&held, "web"), "{held}");
    // `q` quits with status 0 and restores the terminal (the view is gone).
    tmux.run(&["send-keys", "-t", "top", "q"]);
    let done = tmux.wait("top to exit", |p| p.contains("top exited"));
    assert!(done.contains("top exited 0"), "{done}");
    assert!(
        !done.contains("WORKER"),
        "the view stayed on screen:\n{done}"
    );
    drop(tmux);
    let _ = eg.stop();
}
