//! `epochgate-shim session` as a script sees it: the built binary, driven through pipes,
//! against a fake epochgate on a real socket.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::Duration;

use common::{wait_for, FakeServer, Model, PATIENCE};
use serde_json::{json, Value};
use vmm_shim::proto::{ErrorCode, Mode, Release, Reply, Request, RequestReason, Urgency};

const BIN: &str = env!("CARGO_BIN_EXE_epochgate-shim");

/// A running `epochgate-shim session`, read line by line.
struct Shim {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    stderr: tempfile::NamedTempFile,
}

impl Shim {
    fn start(socket: &Path, vm: &str) -> Shim {
        Shim::start_with(socket, vm, &[])
    }

    /// [`Shim::start`] with more options before `session`.
    fn start_with(socket: &Path, vm: &str, options: &[&str]) -> Shim {
        let stderr = tempfile::NamedTempFile::new().unwrap();
        let mut child = Command::new(BIN)
            .arg("--socket")
            .arg(socket)
            .args(["--vm", vm])
            .args(options)
            .arg("session")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr.reopen().unwrap())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                if tx.send(line.unwrap()).is_err() {
                    return;
                }
            }
        });
        Shim {
            stdin: child.stdin.take(),
            child,
            lines,
            stderr,
        }
    }

    fn send(&mut self, text: &str) {
        let stdin = self.stdin.as_mut().unwrap();
        stdin.write_all(text.as_bytes()).unwrap();
        stdin.flush().unwrap();
    }

    /// The next line on stdout, raw.
    fn raw(&self) -> String {
        self.lines
            .recv_timeout(PATIENCE)
            .unwrap_or_else(|e| panic!("no line from epochgate-shim: {e}"))
    }

    /// The next line on stdout, which must be one JSON object.
    fn next(&self) -> Value {
        let line = self.raw();
        let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
        assert!(v.is_object(), "{line}");
        v
    }

    /// Closes stdin (if still open), waits for the exit and returns its code and any lines
    /// printed that were not read yet.
    fn finish(mut self) -> (Option<i32>, Vec<String>) {
        drop(self.stdin.take());
        let status = wait_for(&mut self.child);
        let mut rest = Vec::new();
        loop {
            match self.lines.recv_timeout(Duration::from_secs(5)) {
                Ok(line) => rest.push(line),
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => panic!("stdout was not closed"),
            }
        }
        let stderr = std::fs::read_to_string(self.stderr.path()).unwrap();
        assert_eq!(stderr, "", "nothing on stderr");
        (status.code(), rest)
    }
}

#[test]
fn an_interactive_session_prints_one_json_line_per_reply_and_event() {
    let server = FakeServer::start(|s| {
        while let Some(req) = s.recv() {
            if let Request::Commit { .. } = req {
                // An event that arrives while the shim waits for the reply.
                s.send(&Reply::CheckpointRequest {
                    epoch: 2,
                    urgency: Urgency::Now,
                    reason: RequestReason::ImmediateFrame,
                });
            }
            s.answer(&req);
            if req == Request::Protect {
                // An event that arrives while the shim waits for input.
                thread::sleep(Duration::from_millis(50));
                s.send(&Reply::CheckpointRequest {
                    epoch: 1,
                    urgency: Urgency::Within { ns: 5_000_000 },
                    reason: RequestReason::DeferralExpired,
                });
            }
        }
    });
    let mut shim = Shim::start(server.path(), "web");
    assert_eq!(
        shim.raw(),
        r#"{"reply":"welcome","vm":"web","epoch":0,"mode":"passthrough"}"#
    );
    shim.send("protect\n");
    assert_eq!(shim.raw(), r#"{"reply":"protected","epoch":1}"#);
    // Nothing more is written to stdin until this line came.
    assert_eq!(
        shim.raw(),
        r#"{"event":"checkpoint-request","epoch":1,"urgency":"within","within_ns":5000000,"reason":"deferral-expired"}"#
    );
    shim.send("# a comment\n\n  fence x  \n");
    assert_eq!(
        shim.next(),
        json!({"reply": "error", "error": "bad-command", "code": 0,
               "text": "line 4: \"fence x\": N must be a positive integer"})
    );
    shim.send("fence 2\n");
    assert_eq!(
        shim.next(),
        json!({"reply": "error", "error": "wrong-epoch", "code": 7,
               "text": "fence of epoch 2, but the open epoch is 1"})
    );
    shim.send("fence 1\n");
    assert_eq!(
        shim.next(),
        json!({"reply": "fenced", "epoch": 1, "frames": 10, "bytes": 640, "drain_ns": 1001})
    );
    shim.send("commit 1\n");
    assert_eq!(
        shim.raw(),
        r#"{"event":"checkpoint-request","epoch":2,"urgency":"now","reason":"immediate-frame"}"#
    );
    assert_eq!(
        shim.next(),
        json!({"reply": "committed", "epoch": 1, "frames": 10})
    );
    shim.send("stats\nping\n");
    assert_eq!(
        shim.next(),
        json!({"reply": "stats", "mode": "protected", "open_epoch": 2, "sealed_epoch": 1,
               "committed_epoch": 1, "held_frames": 0, "held_bytes": 0, "rx_frames": 100,
               "tx_frames": 90, "dropped": 0})
    );
    assert_eq!(shim.next(), json!({"reply": "pong"}));
    shim.send("promote protected\n");
    let v = shim.next();
    assert_eq!(v["error"], "wrong-mode");
    assert_eq!(v["code"], 10);
    shim.send("unprotect drop\n");
    assert_eq!(
        shim.next(),
        json!({"reply": "unprotected", "released": 0, "dropped": 3})
    );
    shim.send("discard\n");
    assert_eq!(
        shim.next(),
        json!({"reply": "error", "error": "not-protected", "code": 9,
               "text": "discard needs a protected VM"})
    );
    let (code, rest) = shim.finish();
    assert_eq!(code, Some(0), "end of input ends the session");
    assert!(rest.is_empty(), "{rest:?}");

    let requests = server.finish();
    assert_eq!(requests.len(), 10, "{requests:?}");
    assert_eq!(requests[0], Request::hello("web").unwrap());
    assert_eq!(
        requests[1..6],
        [
            Request::Protect,
            Request::Fence { epoch: 2 },
            Request::Fence { epoch: 1 },
            Request::Commit { epoch: 1 },
            Request::Stats,
        ]
    );
    assert!(matches!(requests[6], Request::Ping { .. }));
    assert_eq!(
        requests[7..],
        [
            Request::Promote {
                mode: Mode::Protected
            },
            Request::Unprotect { how: Release::Drop },
            Request::Discard,
        ]
    );
}

#[test]
fn a_whole_script_at_once_runs_to_the_end() {
    let mut standby = Model::new("web");
    standby.mode = Mode::Standby;
    let server = FakeServer::with_model(standby, |s| s.serve());
    let mut shim = Shim::start(server.path(), "web");
    // The last line has no newline; a bad line in the middle does not stop the script.
    shim.send("promote passthrough\npromote standby\nping\nstats");
    let (code, lines) = shim.finish();
    assert_eq!(code, Some(0));
    let lines: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 5, "{lines:?}");
    assert_eq!(
        lines[0],
        json!({"reply": "welcome", "vm": "web", "epoch": 0, "mode": "standby"})
    );
    assert_eq!(
        lines[1],
        json!({"reply": "promoted", "mode": "passthrough", "announced": 2})
    );
    assert_eq!(
        lines[2],
        json!({"reply": "error", "error": "bad-command", "code": 0,
               "text": "line 2: \"promote standby\": MODE must be passthrough or protected, not standby"})
    );
    assert_eq!(lines[3], json!({"reply": "pong"}));
    assert_eq!(lines[4]["reply"], "stats");
    assert_eq!(lines[4]["mode"], "passthrough");
    let requests = server.finish();
    assert_eq!(requests.len(), 4, "{requests:?}");
}

#[test]
fn epochgate_shutting_down_while_the_shim_waits_for_input_exits_1() {
    let server = FakeServer::start(|s| {
        let req = s.recv().unwrap();
        s.answer(&req);
        let req = s.recv().unwrap();
        assert_eq!(req, Request::Protect);
        s.answer(&req);
        thread::sleep(Duration::from_millis(50));
        s.send(&Reply::error(
            ErrorCode::ShuttingDown,
            "epochgate is stopping: reconnect to the new process",
        ));
    });
    let mut shim = Shim::start(server.path(), "web");
    assert_eq!(shim.next()["reply"], "welcome");
    shim.send("protect\n");
    assert_eq!(shim.next(), json!({"reply": "protected", "epoch": 1}));
    // stdin stays open: the shim notices on its own.
    assert_eq!(
        shim.next(),
        json!({"event": "closed", "text": "epochgate is stopping: reconnect to the new process"})
    );
    let (code, rest) = shim.finish();
    assert_eq!(code, Some(1));
    assert!(rest.is_empty(), "{rest:?}");
    server.finish();
}

#[test]
fn epochgate_shutting_down_during_a_command_exits_1() {
    let server = FakeServer::start(|s| {
        let req = s.recv().unwrap();
        s.answer(&req);
        s.recv().unwrap();
        s.send(&Reply::error(ErrorCode::ShuttingDown, "stopping"));
    });
    let mut shim = Shim::start(server.path(), "web");
    assert_eq!(shim.next()["reply"], "welcome");
    shim.send("stats\nping\n");
    assert_eq!(shim.next(), json!({"event": "closed", "text": "stopping"}));
    let (code, rest) = shim.finish();
    assert_eq!(code, Some(1));
    assert!(rest.is_empty(), "the ping is not tried: {rest:?}");
    assert_eq!(server.finish().len(), 2);
}

#[test]
fn with_reconnect_a_session_that_ends_is_started_again_in_a_new_epoch() {
    let first: common::Handler = Box::new(|s| {
        let req = s.recv().unwrap();
        s.answer(&req);
        loop {
            match s.recv().unwrap() {
                Request::Stats => break,
                other => {
                    s.answer(&other);
                }
            }
        }
        s.send(&Reply::error(ErrorCode::ShuttingDown, "stopping"));
    });
    let second: common::Handler = Box::new(|s| s.serve());
    let server = FakeServer::one_after_another(vec![first, second]);
    let mut shim = Shim::start_with(server.path(), "web", &["--reconnect", "20s"]);
    assert_eq!(shim.next()["reply"], "welcome");
    shim.send("stats\n");
    assert_eq!(shim.next(), json!({"event": "closed", "text": "stopping"}));
    let r = shim.next();
    assert_eq!(r["event"], "reconnected", "{r}");
    assert_eq!(r["vm"], "web");
    assert_eq!(r["new_epoch"], true);
    assert!(r["attempts"].as_u64().is_some_and(|n| n >= 1), "{r}");
    let e = shim.next();
    assert_eq!(e["reply"], "error", "{e}");
    assert_eq!(e["error"], "reconnected", "{e}");
    // The new session takes commands.
    shim.send("ping\n");
    assert_eq!(shim.next(), json!({"reply": "pong"}));
    let (code, rest) = shim.finish();
    assert_eq!(code, Some(0));
    assert!(rest.is_empty(), "{rest:?}");
    let requests = server.finish();
    assert_eq!(
        requests
            .iter()
            .filter(|r| matches!(r, Request::Hello { .. }))
            .count(),
        2,
        "{requests:?}"
    );
}

#[test]
fn epochgate_closing_the_socket_exits_1() {
    let server = FakeServer::start(|s| {
        let req = s.recv().unwrap();
        s.answer(&req);
    });
    let shim = Shim::start(server.path(), "web");
    assert_eq!(shim.next()["reply"], "welcome");
    assert_eq!(
        shim.next(),
        json!({"event": "closed", "text": "epochgate closed the session"})
    );
    let (code, _) = shim.finish();
    assert_eq!(code, Some(1));
    server.finish();
}

#[test]
fn a_refused_hello_exits_2_with_the_servers_code_and_text() {
    let server = FakeServer::start(|s| s.serve());
    let shim = Shim::start(server.path(), "db");
    assert_eq!(
        shim.next(),
        json!({"reply": "error", "error": "unknown-vm", "code": 3,
               "text": "no VM is named \"db\" (configured: [\"web\"])"})
    );
    let (code, rest) = shim.finish();
    assert_eq!(code, Some(2));
    assert!(rest.is_empty(), "{rest:?}");
    assert_eq!(server.finish(), [Request::hello("db").unwrap()]);
}

#[test]
fn an_unreachable_socket_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nobody.sock");
    let shim = Shim::start(&path, "web");
    let v = shim.next();
    assert_eq!(v["reply"], "error");
    assert_eq!(v["error"], "connect");
    assert_eq!(v["code"], 0);
    let text = v["text"].as_str().unwrap();
    assert!(
        text.starts_with(&format!("cannot connect to {}: ", path.display())),
        "{text}"
    );
    let (code, _) = shim.finish();
    assert_eq!(code, Some(2));
}

#[test]
fn help_explains_the_session_commands_and_json_lines() {
    for args in [&["--help"][..], &["session", "--help"]] {
        let out = Command::new(BIN).args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}");
        let help = String::from_utf8(out.stdout).unwrap();
        if args[0] == "--help" {
            assert!(help.contains("--socket <PATH>"), "{help}");
            assert!(help.contains(vmm_shim::DEFAULT_CONTROL_SOCKET), "{help}");
            assert!(help.contains("--vm <NAME>"), "{help}");
        }
        for needle in [
            "fence N",
            "commit N",
            "unprotect release|drop",
            "promote MODE",
            r#"{"reply":"fenced","epoch":1,"frames":10,"bytes":640,"drain_ns":1234}"#,
            r#""event":"checkpoint-request""#,
            r#"{"event":"closed","text":"..."}"#,
            "EXIT STATUS",
        ] {
            assert!(
                help.contains(needle),
                "{args:?}: {needle:?} missing from:\n{help}"
            );
        }
    }
}
