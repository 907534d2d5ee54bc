//! `epochgate-shim`: drive one VM's output commit from a script.
//!
//! `epochgate-shim [--socket PATH] --vm NAME session` adopts the VM, then reads one command
//! per line on stdin and prints every reply, and every checkpoint request epochgate sends on
//! its own, as one JSON line on stdout (flushed at once, for pipes and coprocesses). See
//! [`SESSION_HELP`] (also `epochgate-shim --help`).
//!
//! `epochgate-shim --vm NAME vmm --qmp PATH ...` is the reference checkpoint loop for a QEMU
//! guest ([`vmm_shim::vmm`]): pause over QMP, fence, resume, transfer, commit, until SIGTERM.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use serde_json::Value;
use vmm_shim::proto::{ErrorCode, Mode, Release, Urgency};
use vmm_shim::{Client, Event, Options, ShimError};

const SESSION_HELP: &str = r#"SESSION
  `session` connects, adopts the VM (Hello) and prints the welcome; then it reads one command
  per line on stdin, sends it, and prints the reply. Blank lines and lines starting with '#'
  are ignored.

    protect                   start holding the VM's output per epoch
    fence N                   seal the open epoch N (N >= 1)
    commit N                  epoch N's checkpoint is durable: release its output
    unprotect release|drop    stop protecting; send or drop what is held
    discard                   drop everything held (after a failed checkpoint)
    promote MODE              make this standby VM live: MODE is passthrough or protected
    demote                    return the VM to standby (its output stops; what waits is dropped)
    stats                     the VM's mode and counters
    ping                      check that epochgate answers

OUTPUT
  Every line on stdout is one JSON object, flushed at once:

    {"reply":"welcome","vm":"web","epoch":1,"mode":"protected"}
    {"reply":"protected","epoch":1}
    {"reply":"fenced","epoch":1,"frames":10,"bytes":640,"drain_ns":1234}
    {"reply":"committed","epoch":1,"frames":10}
    {"reply":"unprotected","released":3,"dropped":0}
    {"reply":"discarded","frames":3}
    {"reply":"promoted","mode":"protected","announced":0}
    {"reply":"demoted","dropped":0}
    {"reply":"pong"}
    {"reply":"stats","mode":"protected","open_epoch":2,"sealed_epoch":1,
     "committed_epoch":1,"held_frames":0,"held_bytes":0,"rx_frames":10,"tx_frames":10,
     "dropped":0}                                              (on one line)

  epochgate refused the command (the session goes on); "error" is the code's name:
    {"reply":"error","error":"wrong-epoch","code":7,"text":"..."}
  a line that is not a command (nothing is sent; the session goes on):
    {"reply":"error","error":"bad-command","code":0,"text":"line 3: \"fence x\": ..."}
  no reply in time, or a malformed or out-of-place one (the session goes on):
    {"reply":"error","error":"timeout"|"protocol"|"unexpected","code":0,"text":"..."}

  Checkpoint requests are printed as they arrive, also while waiting for input:
    {"event":"checkpoint-request","epoch":3,"urgency":"now","reason":"immediate-frame"}
    {"event":"checkpoint-request","epoch":3,"urgency":"within","within_ns":5000000,
     "reason":"high-water"}                                    (on one line)
  reason is immediate-frame, deferral-expired or high-water.

  epochgate closed the session, is shutting down, failed the VM because the session missed
  its pings (liveness-timeout), or stopped answering the shim's pings:
    {"event":"closed","text":"..."}

  Unless --no-pinger, the shim pings epochgate by itself while idle, at the interval
  epochgate asks for ([control] ping_interval_ms), so an idle session stays alive; when
  epochgate does not answer within its liveness timeout, the session ends with
  {"event":"closed","text":"epochgate stopped answering: ..."} and exit status 1.

  With --reconnect DURATION, a session that ends (after its "closed" line) is started again
  on the same socket, retrying for up to DURATION (epochgate restarting for an upgrade):
    {"event":"reconnected","vm":"web","epoch":1,"mode":"protected","previous_epoch":9,
     "attempts":4,"new_epoch":true}                              (on one line)
  and a command that was running when the session ended gets
    {"reply":"error","error":"reconnected","code":0,"text":"..."}
  so a loop waiting for its reply goes on. The new session is in a new epoch: the old
  session's epochs are gone with what they held; start again from "epoch". If no session
  can be had in time, the error is printed as a "closed" line and the exit status is 1.

EXIT STATUS
  0  end of input (the session is closed)
  1  epochgate closed the session
  2  connecting or adopting the VM failed (an error line says why: the server's code and
     text, or "error":"connect")
  3  stdin or stdout failed"#;

/// Drive one VM's output commit in epochgate from a script: commands on stdin, one JSON line
/// per reply and event on stdout.
#[derive(Debug, Parser)]
#[command(name = "epochgate-shim", version, after_help = SESSION_HELP)]
struct Cli {
    /// epochgate's control socket.
    #[arg(long, value_name = "PATH", default_value = vmm_shim::DEFAULT_CONTROL_SOCKET)]
    socket: PathBuf,
    /// The VM to drive, as epochgate's configuration names it.
    #[arg(long, value_name = "NAME")]
    vm: String,
    /// Do not ping epochgate in the background while idle (send `ping` yourself at least
    /// every `[control] ping_interval_ms`, or epochgate fails the VM after
    /// `liveness_timeout_ms`).
    #[arg(long, conflicts_with_all = ["ping_interval", "answer_timeout"])]
    no_pinger: bool,
    /// Ping this often while idle [default: epochgate's `[control] ping_interval_ms`].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    ping_interval: Option<Duration>,
    /// epochgate has stopped answering after this long with nothing back [default: its
    /// `[control] liveness_timeout_ms`, or 4 ping intervals].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    answer_timeout: Option<Duration>,
    /// When epochgate ends the session (it stops for an upgrade, or the socket closes), start
    /// a new one on the same socket, trying for up to this long (`session` only). The new
    /// session is in a new epoch: a `{"event":"reconnected",...}` line gives it, and the old
    /// epochs are gone with what they held (checkpoint them again).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    reconnect: Option<Duration>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Adopt the VM, then run the commands read on stdin, one per line (see below).
    #[command(after_help = SESSION_HELP)]
    Session,
    /// Checkpoint a QEMU guest over QMP until SIGTERM: the reference VMM loop (see below).
    #[command(after_help = VMM_HELP)]
    Vmm(VmmArgs),
}

const VMM_HELP: &str = r#"LOOP
  Each checkpoint n: QMP `stop`, `fence n`, QMP `cont`, the transfer (--transfer-cmd, or
  --transfer-delay standing in for one), `commit n`. A checkpoint starts --interval-max after
  the last fence, or earlier when epochgate asks for one (unless --no-requests), never sooner
  than --interval-min. SIGTERM or SIGINT: the epochs not committed are discarded (never
  released), the guest is left running, exit 0. Durations: 25ms, 1s, 500us (a bare number is
  milliseconds).

OUTPUT (--log, default stdout; one JSON object per line, flushed)
  {"event":"started","vm":"web","epoch":1,"t_ns":...}
  {"epoch":1,"frames":12,"bytes":3400,"released":12,"trigger":"interval","stop_ns":...,
   "fence_ns":...,"cont_ns":...,"commit_ns":...}               (one per commit, on one line)
  {"event":"stopped","reason":"signal","open_epoch":9,"committed":8,"discarded":3,"t_ns":...}
  reason is signal, or qemu-exited when QEMU closed QMP (the guest powered off).
  Times are nanoseconds since the Unix epoch; commit_ns is taken before `commit` is sent, so
  no frame of that epoch reaches the wire before it. trigger is interval, immediate-frame,
  deferral-expired or high-water.

EXIT STATUS
  0  stopped by a signal, or QEMU exited;  1  QMP, epochgate or the transfer failed (stderr
  says which)"#;

/// `epochgate-shim vmm`'s arguments.
#[derive(Debug, clap::Args)]
struct VmmArgs {
    /// QEMU's QMP socket (`-qmp unix:PATH,server=on,wait=off`).
    #[arg(long, value_name = "PATH")]
    qmp: PathBuf,
    /// No checkpoint sooner than this after the last fence.
    #[arg(long, value_name = "DURATION", default_value = "0ms", value_parser = parse_duration)]
    interval_min: Duration,
    /// A checkpoint at the latest this long after the last fence.
    #[arg(long, value_name = "DURATION", default_value = "25ms", value_parser = parse_duration)]
    interval_max: Duration,
    /// Run `sh -c CMD` per checkpoint (EPOCHGATE_EPOCH=n); exit 0 means it is safe.
    #[arg(long, value_name = "CMD", conflicts_with = "transfer_delay")]
    transfer_cmd: Option<String>,
    /// Instead of a transfer command, wait this long per checkpoint.
    #[arg(long, value_name = "DURATION", default_value = "0ms", value_parser = parse_duration)]
    transfer_delay: Duration,
    /// Ignore epochgate's checkpoint requests: checkpoint every --interval-max.
    #[arg(long)]
    no_requests: bool,
    /// Write the commit records here instead of stdout.
    #[arg(long, value_name = "PATH")]
    log: Option<PathBuf>,
}

/// `25ms`, `1s`, `500us`, or a bare number of milliseconds.
impl Cli {
    fn options(&self) -> Options {
        Options {
            pinger: !self.no_pinger,
            ping_interval: self.ping_interval,
            answer_timeout: self.answer_timeout,
            reconnect: self.reconnect,
        }
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "ms"),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (expected e.g. 25ms, 1s, 500us)"))?;
    match unit {
        "us" => Ok(Duration::from_micros(n)),
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        _ => Err(format!(
            "{s:?}: unknown unit {unit:?} (expected us, ms or s)"
        )),
    }
}

fn vmm(cli: &Cli, args: &VmmArgs) -> anyhow::Result<ExitCode> {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use vmm_shim::vmm::{self as reference, Log, LoopConfig, Qmp, Transfer};
    if args.interval_max.is_zero() || args.interval_max < args.interval_min {
        anyhow::bail!(
            "--interval-max ({:?}) must be above 0 and at least --interval-min ({:?})",
            args.interval_max,
            args.interval_min
        );
    }
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst))
        .context("installing the SIGTERM handler")?;
    let out: Box<dyn Write> = match &args.log {
        Some(p) => Box::new(
            File::create(p).with_context(|| format!("--log {}: cannot create", p.display()))?,
        ),
        None => Box::new(io::stdout()),
    };
    let mut qmp = Qmp::connect(&args.qmp)?;
    let mut client =
        Client::connect_with(&cli.socket, &cli.vm, cli.options()).with_context(|| {
            format!(
                "epochgate control socket {} (vm {:?})",
                cli.socket.display(),
                cli.vm
            )
        })?;
    let cfg = LoopConfig {
        interval_min: args.interval_min,
        interval_max: args.interval_max,
        follow_requests: !args.no_requests,
        transfer: match &args.transfer_cmd {
            Some(cmd) => Transfer::Command(cmd.clone()),
            None => Transfer::Delay(args.transfer_delay),
        },
    };
    let s = reference::run(&mut qmp, &mut client, &cfg, &stop, &mut Log::new(out))?;
    eprintln!(
        "epochgate-shim vmm: stopped ({}) after {} checkpoints; {} uncommitted frames discarded",
        s.reason, s.committed, s.discarded
    );
    Ok(ExitCode::SUCCESS)
}

/// One session command, as [`parse_line`] reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Command {
    Protect,
    Fence(u64),
    Commit(u64),
    Unprotect(Release),
    Discard,
    Promote(Mode),
    Demote,
    Stats,
    Ping,
}

const COMMANDS: &str =
    "protect, fence N, commit N, unprotect release|drop, discard, promote MODE, demote, stats or ping";

/// Reads one input line: `Ok(None)` for a blank line or a comment, `Err(why)` for anything
/// that is not a command.
fn parse_line(line: &str) -> Result<Option<Command>, String> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    let mut words = line.split_whitespace();
    let name = words.next().unwrap_or_default();
    let args: Vec<&str> = words.collect();
    let none = |cmd: Command| {
        if args.is_empty() {
            Ok(Some(cmd))
        } else {
            Err(format!("{name} takes no argument"))
        }
    };
    let one = |what: &str| match args.as_slice() {
        [arg] => Ok(*arg),
        [] => Err(format!("{name} needs {what}")),
        _ => Err(format!("{name} takes one argument, {what}")),
    };
    let epoch = || -> Result<u64, String> {
        let arg = one("an epoch N")?;
        arg.parse::<u64>()
            .ok()
            .filter(|n| *n > 0 && arg.bytes().all(|b| b.is_ascii_digit()))
            .ok_or_else(|| "N must be a positive integer".to_string())
    };
    match name {
        "protect" => none(Command::Protect),
        "discard" => none(Command::Discard),
        "demote" => none(Command::Demote),
        "stats" => none(Command::Stats),
        "ping" => none(Command::Ping),
        "fence" => Ok(Some(Command::Fence(epoch()?))),
        "commit" => Ok(Some(Command::Commit(epoch()?))),
        "unprotect" => {
            let how = one("release or drop")?.parse::<Release>()?;
            Ok(Some(Command::Unprotect(how)))
        }
        "promote" => {
            let mode = one("a MODE (passthrough or protected)")?.parse::<Mode>()?;
            if !mode.is_promote_target() {
                return Err(format!("MODE must be passthrough or protected, not {mode}"));
            }
            Ok(Some(Command::Promote(mode)))
        }
        other => Err(format!("unknown command {other:?}: expected {COMMANDS}")),
    }
}

/// A JSON object whose keys keep the order they were added in.
struct Line(Vec<(&'static str, Value)>);

impl Line {
    fn reply(kind: &str) -> Line {
        Line(vec![("reply", Value::from(kind))])
    }

    fn event(kind: &str) -> Line {
        Line(vec![("event", Value::from(kind))])
    }

    fn with(mut self, key: &'static str, value: impl Into<Value>) -> Line {
        self.0.push((key, value.into()));
        self
    }

    fn render(&self) -> String {
        let fields: Vec<String> = self
            .0
            .iter()
            .map(|(k, v)| format!("{}:{v}", Value::from(*k)))
            .collect();
        format!("{{{}}}", fields.join(","))
    }
}

fn emit(line: &Line) -> io::Result<()> {
    let mut out = io::stdout().lock();
    writeln!(out, "{}", line.render())?;
    out.flush()
}

fn error_line(error: &str, code: u16, text: &str) -> Line {
    Line::reply("error")
        .with("error", error)
        .with("code", code)
        .with("text", text)
}

fn refused_line(code: ErrorCode, text: &str) -> Line {
    error_line(code.name(), code.code(), text)
}

fn event_line(e: Event) -> Line {
    let mut line = Line::event("checkpoint-request").with("epoch", e.epoch);
    line = match e.urgency {
        Urgency::Now => line.with("urgency", "now"),
        Urgency::Within { ns } => line.with("urgency", "within").with("within_ns", ns),
    };
    line.with("reason", e.reason.name())
}

fn closed_line(text: &str) -> Line {
    Line::event("closed").with("text", text)
}

/// Sends `cmd` and renders the reply.
fn execute(client: &mut Client, cmd: Command) -> Result<Line, ShimError> {
    Ok(match cmd {
        Command::Protect => Line::reply("protected").with("epoch", client.protect()?),
        Command::Fence(epoch) => {
            let f = client.fence(epoch)?;
            Line::reply("fenced")
                .with("epoch", f.epoch)
                .with("frames", f.frames)
                .with("bytes", f.bytes)
                .with("drain_ns", f.drain_ns)
        }
        Command::Commit(epoch) => {
            let frames = client.commit(epoch)?;
            Line::reply("committed")
                .with("epoch", epoch)
                .with("frames", frames)
        }
        Command::Unprotect(how) => {
            let (released, dropped) = client.unprotect(how)?;
            Line::reply("unprotected")
                .with("released", released)
                .with("dropped", dropped)
        }
        Command::Discard => Line::reply("discarded").with("frames", client.discard()?),
        Command::Promote(mode) => {
            let announced = client.promote(mode)?;
            Line::reply("promoted")
                .with("mode", mode.name())
                .with("announced", announced)
        }
        Command::Demote => Line::reply("demoted").with("dropped", client.demote()?),
        Command::Stats => {
            let s = client.stats()?;
            Line::reply("stats")
                .with("mode", s.mode.name())
                .with("open_epoch", s.open_epoch)
                .with("sealed_epoch", s.sealed_epoch)
                .with("committed_epoch", s.committed_epoch)
                .with("held_frames", s.held_frames)
                .with("held_bytes", s.held_bytes)
                .with("rx_frames", s.rx_frames)
                .with("tx_frames", s.tx_frames)
                .with("dropped", s.dropped)
        }
        Command::Ping => {
            client.ping()?;
            Line::reply("pong")
        }
    })
}

/// What a failed call means for the session: a line to print, and whether it is over.
fn failure(e: &ShimError) -> (Line, bool) {
    match e {
        ShimError::Refused {
            code: ErrorCode::ShuttingDown | ErrorCode::LivenessTimeout,
            text,
        } => (closed_line(text), true),
        ShimError::Unresponsive { .. } => (closed_line(&e.to_string()), true),
        ShimError::Refused { code, text } => (refused_line(*code, text), false),
        ShimError::Closed | ShimError::Io(_) | ShimError::Connect { .. } => {
            (closed_line(&e.to_string()), true)
        }
        ShimError::Timeout => (error_line("timeout", 0, &e.to_string()), false),
        ShimError::Proto(_) => (error_line("protocol", 0, &e.to_string()), false),
        ShimError::Unexpected { .. } => (error_line("unexpected", 0, &e.to_string()), false),
        ShimError::BadArgument(_) => (error_line("bad-command", 0, &e.to_string()), false),
    }
}

/// Runs input line number `lineno`; `Some(status)` when the session is over.
fn run_line(client: &mut Client, lineno: u64, raw: &[u8]) -> io::Result<Option<ExitCode>> {
    let text = String::from_utf8_lossy(raw);
    let line = text.trim();
    let cmd = match parse_line(line) {
        Ok(None) => return Ok(None),
        Ok(Some(cmd)) => cmd,
        Err(why) => {
            let text = format!("line {lineno}: {line:?}: {why}");
            emit(&error_line("bad-command", 0, &text))?;
            return Ok(None);
        }
    };
    match execute(client, cmd) {
        Ok(reply) => {
            emit(&reply)?;
            Ok(None)
        }
        Err(e) => {
            let (line, over) = failure(&e);
            emit(&line)?;
            Ok(over.then_some(ExitCode::from(1)))
        }
    }
}

/// After the session ended: with `--reconnect`, starts a new one and says so (and, when a
/// command was running, answers it so a loop waiting for its reply goes on); `false` when
/// there is no new session (the caller then exits with its status).
fn renew(client: &mut Client, cli: &Cli, during_command: bool) -> io::Result<bool> {
    if cli.reconnect.is_none() {
        return Ok(false);
    }
    match client.reconnect() {
        Ok(r) => {
            emit(
                &Line::event("reconnected")
                    .with("vm", cli.vm.as_str())
                    .with("epoch", r.welcome.epoch)
                    .with("mode", r.welcome.mode.name())
                    .with("previous_epoch", r.previous.epoch)
                    .with("attempts", r.attempts)
                    .with("new_epoch", true),
            )?;
            if during_command {
                let text = format!(
                    "the session ended during this command and was started again in epoch {}: the old epochs are gone with what they held",
                    r.welcome.epoch
                );
                emit(&error_line("reconnected", 0, &text))?;
            }
            while let Ok(Some(e)) = client.next_event(Some(Duration::ZERO)) {
                emit(&event_line(e))?;
            }
            Ok(true)
        }
        Err(e) => {
            emit(&closed_line(&format!("reconnecting failed: {e}")))?;
            Ok(false)
        }
    }
}

/// Which of stdin and the session socket are ready (waiting as long as it takes).
fn wait_for_input(stdin: &File, client: &Client) -> io::Result<(bool, bool)> {
    loop {
        let mut fds = [
            PollFd::new(stdin.as_fd(), PollFlags::POLLIN),
            PollFd::new(client.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {
                let ready = |fd: &PollFd| fd.any().unwrap_or(false);
                return Ok((ready(&fds[0]), ready(&fds[1])));
            }
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// Prints what came on the session socket while no command was running.
fn pump_events(client: &mut Client) -> io::Result<Option<ExitCode>> {
    // With the callback set, events are printed by it; this only surfaces the rest.
    match client.next_event(Some(Duration::ZERO)) {
        Ok(_) => Ok(None),
        Err(e @ (ShimError::Proto(_) | ShimError::Unexpected { .. })) => {
            emit(&failure(&e).0)?;
            Ok(None)
        }
        Err(ShimError::Refused { text, .. }) => {
            // Said on its own: epochgate is stopping or gave up on the session.
            emit(&closed_line(&text))?;
            Ok(Some(ExitCode::from(1)))
        }
        Err(e) => {
            emit(&closed_line(&e.to_string()))?;
            Ok(Some(ExitCode::from(1)))
        }
    }
}

fn session(cli: &Cli) -> anyhow::Result<ExitCode> {
    let mut client = match Client::connect_with(&cli.socket, &cli.vm, cli.options()) {
        Ok(c) => c,
        Err(ShimError::Refused { code, text }) => {
            emit(&refused_line(code, &text)).context("stdout")?;
            return Ok(ExitCode::from(2));
        }
        Err(e) => {
            emit(&error_line("connect", 0, &e.to_string())).context("stdout")?;
            return Ok(ExitCode::from(2));
        }
    };
    let welcome = client.welcome();
    emit(
        &Line::reply("welcome")
            .with("vm", cli.vm.as_str())
            .with("epoch", welcome.epoch)
            .with("mode", welcome.mode.name()),
    )
    .context("stdout")?;
    // Events read before this (with the welcome) are still queued: print them first.
    while let Ok(Some(e)) = client.next_event(Some(Duration::ZERO)) {
        emit(&event_line(e)).context("stdout")?;
    }
    // Print events the moment they are read, also in the middle of a command. A failed write
    // is noticed by the next reply's.
    client.on_event(|e| {
        let _ = emit(&event_line(e));
    });

    // Read stdin unbuffered (a private copy of fd 0): poll must see every byte still unread.
    let mut stdin = File::from(io::stdin().as_fd().try_clone_to_owned().context("stdin")?);
    let mut pending: Vec<u8> = Vec::new();
    let mut lineno = 0u64;
    let mut buf = [0u8; 4096];
    loop {
        let (input, socket) = wait_for_input(&stdin, &client).context("poll")?;
        if socket {
            if let Some(status) = pump_events(&mut client).context("stdout")? {
                if !renew(&mut client, cli, false).context("stdout")? {
                    return Ok(status);
                }
                continue;
            }
        }
        if !input {
            continue;
        }
        let n = match stdin.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).context("stdin"),
        };
        if n == 0 {
            // End of input; a last line without a newline still counts.
            if !pending.is_empty() {
                lineno += 1;
                if let Some(status) = run_line(&mut client, lineno, &pending).context("stdout")? {
                    return Ok(status);
                }
            }
            return Ok(ExitCode::SUCCESS);
        }
        pending.extend_from_slice(&buf[..n]);
        while let Some(at) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=at).collect();
            lineno += 1;
            if let Some(status) = run_line(&mut client, lineno, &line).context("stdout")? {
                if !renew(&mut client, cli, true).context("stdout")? {
                    return Ok(status);
                }
            }
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Session => session(&cli),
        Cmd::Vmm(ref args) => match vmm(&cli, args) {
            Ok(status) => Ok(status),
            Err(e) => {
                eprintln!("epochgate-shim vmm: {e:#}");
                return ExitCode::from(1);
            }
        },
    };
    match result {
        Ok(status) => status,
        Err(e) => {
            eprintln!("epochgate-shim: {e:#}");
            ExitCode::from(3)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_command() {
        let cases = [
            ("protect", Command::Protect),
            ("fence 1", Command::Fence(1)),
            ("fence 18446744073709551615", Command::Fence(u64::MAX)),
            ("commit 42", Command::Commit(42)),
            ("unprotect release", Command::Unprotect(Release::Release)),
            ("unprotect drop", Command::Unprotect(Release::Drop)),
            ("discard", Command::Discard),
            ("demote", Command::Demote),
            ("promote passthrough", Command::Promote(Mode::Passthrough)),
            ("promote protected", Command::Promote(Mode::Protected)),
            ("stats", Command::Stats),
            ("ping", Command::Ping),
            ("  fence\t7  \r\n", Command::Fence(7)),
        ];
        for (line, cmd) in cases {
            assert_eq!(parse_line(line), Ok(Some(cmd)), "{line:?}");
        }
    }

    #[test]
    fn skips_blank_lines_and_comments() {
        for line in ["", "   ", "\t\n", "# protect", "  #fence 1", "#"] {
            assert_eq!(parse_line(line), Ok(None), "{line:?}");
        }
    }

    #[test]
    fn rejects_every_malformed_form() {
        let cases = [
            ("fence x", "N must be a positive integer"),
            ("fence 0", "N must be a positive integer"),
            ("fence -1", "N must be a positive integer"),
            ("fence +1", "N must be a positive integer"),
            ("commit 1.5", "N must be a positive integer"),
            ("commit 18446744073709551616", "N must be a positive integer"),
            ("fence", "fence needs an epoch N"),
            ("commit", "commit needs an epoch N"),
            ("fence 1 2", "fence takes one argument, an epoch N"),
            ("protect now", "protect takes no argument"),
            ("discard 3", "discard takes no argument"),
            ("demote now", "demote takes no argument"),
            ("stats x", "stats takes no argument"),
            ("ping 1", "ping takes no argument"),
            ("unprotect", "unprotect needs release or drop"),
            (
                "unprotect keep",
                "unknown release choice \"keep\": expected release or drop",
            ),
            (
                "unprotect release drop",
                "unprotect takes one argument, release or drop",
            ),
            ("promote", "promote needs a MODE (passthrough or protected)"),
            (
                "promote standby",
                "MODE must be passthrough or protected, not standby",
            ),
            (
                "promote failed",
                "MODE must be passthrough or protected, not failed",
            ),
            (
                "promote live",
                "unknown mode \"live\": expected passthrough, protected, standby or failed",
            ),
            (
                "Protect",
                "unknown command \"Protect\": expected protect, fence N, commit N, unprotect release|drop, discard, promote MODE, demote, stats or ping",
            ),
            (
                "hello web",
                "unknown command \"hello\": expected protect, fence N, commit N, unprotect release|drop, discard, promote MODE, demote, stats or ping",
            ),
        ];
        for (line, why) in cases {
            assert_eq!(parse_line(line), Err(why.to_string()), "{line:?}");
        }
    }

    #[test]
    fn json_lines_keep_their_key_order_and_escape_text() {
        let line = error_line("wrong-epoch", 7, "a \"quoted\"\nline");
        assert_eq!(
            line.render(),
            r#"{"reply":"error","error":"wrong-epoch","code":7,"text":"a \"quoted\"\nline"}"#
        );
        let e = Event {
            epoch: 3,
            urgency: Urgency::Within { ns: 5 },
            reason: vmm_shim::proto::RequestReason::HighWater,
        };
        assert_eq!(
            event_line(e).render(),
            r#"{"event":"checkpoint-request","epoch":3,"urgency":"within","within_ns":5,"reason":"high-water"}"#
        );
    }

    #[test]
    fn the_cli_definition_is_valid() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from(["epochgate-shim", "--vm", "web", "session"]).unwrap();
        assert_eq!(cli.socket, PathBuf::from(vmm_shim::DEFAULT_CONTROL_SOCKET));
        assert!(Cli::try_parse_from(["epochgate-shim", "session"]).is_err());
    }

    #[test]
    fn durations_take_a_unit_or_mean_milliseconds() {
        assert_eq!(parse_duration("25ms"), Ok(Duration::from_millis(25)));
        assert_eq!(parse_duration("25"), Ok(Duration::from_millis(25)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("500us"), Ok(Duration::from_micros(500)));
        assert_eq!(
            parse_duration("5m"),
            Err(r#""5m": unknown unit "m" (expected us, ms or s)"#.to_string())
        );
        assert!(parse_duration("ms").is_err());
        assert!(parse_duration("-1ms").is_err());
    }
}
