//! `epochgate-peer`: the other end of epochgate's ports, as a VMM or the network would be. It
//! attaches DPDK ports (virtio-user to epochgate's vhost-user sockets, typically), waits for
//! every link, then plays a capture into each port and records what each port receives, until
//! every expected count is met or the timeout passes. One JSON line of results on stdout.
//!
//! ```text
//! epochgate-peer --port net_virtio_user0,path=/tmp/vm1.sock --port net_virtio_user1,path=/tmp/up.sock \
//!     --send 0=vm1-out.pcap --recv 0=vm1-in.pcap --expect 0=40 \
//!     --send 1=uplink-in.pcap --recv 1=egress.pcap --expect 1=1000
//! ```
//!
//! With `--interactive` it also takes commands on stdin, one per line, so a test can play a
//! guest that sends in steps: `send IDX FILE` (queue a capture's frames on port IDX; a
//! `{"event":"sent",...}` line follows once TX has taken all of them), `count` (a
//! `{"event":"count",...}` line with frames sent and received per port), `pause IDX` /
//! `resume IDX` (stop / start reading port IDX, as a receiver that stalls: its ring fills and
//! the sender's TX backs up; answered with `{"event":"paused"|"resumed",...}`), `rotate IDX
//! FILE` (close port IDX's recording and record into FILE from now on: a long-lived peer hands
//! a test one complete capture per run; answered with `{"event":"rotated","port":IDX,
//! "frames":N}`, N the frames in the capture just closed), `quit` (or end of input: finish and
//! report).

use anyhow::{bail, Context, Result};
use clap::Parser;
use epochgate::dpdk::{self, Burst, Mbuf, Mempool, Port, PortConf};
use epochgate::tools::capture::{self, Frame, PcapWriter};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[derive(Parser)]
#[command(
    name = "epochgate-peer",
    about = "Attach to epochgate's ports like a VMM, play captures in, record what comes out"
)]
struct Args {
    /// A vdev spec to attach (repeat; ports are numbered from 0 in this order).
    #[arg(long = "port", required = true)]
    ports: Vec<String>,
    /// `IDX=FILE`: transmit this capture's frames on port IDX once its link is up.
    #[arg(long = "send", value_parser = idx_value::<PathBuf>)]
    send: Vec<(usize, PathBuf)>,
    /// `IDX=FILE`: write the frames port IDX receives to this pcap.
    #[arg(long = "recv", value_parser = idx_value::<PathBuf>)]
    recv: Vec<(usize, PathBuf)>,
    /// `IDX=N`: done once port IDX has received N frames.
    #[arg(long = "expect", value_parser = idx_value::<u64>)]
    expect: Vec<(usize, u64)>,
    /// After the expected counts are met, keep receiving this long (to catch extra frames).
    #[arg(long, default_value_t = 0.3)]
    linger: f64,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 60.0)]
    timeout: f64,
    /// EAL --file-prefix (distinct per concurrently running DPDK process).
    #[arg(long, default_value = "epochgate-peer")]
    file_prefix: String,
    /// Take `send IDX FILE`, `count` and `quit` commands on stdin; run until `quit`.
    #[arg(long)]
    interactive: bool,
}

fn idx_value<T: std::str::FromStr>(s: &str) -> Result<(usize, T), String> {
    let (i, v) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected IDX=VALUE"))?;
    let i = i
        .parse()
        .map_err(|_| format!("{s:?}: {i:?} is not a port index"))?;
    let v = v.parse().map_err(|_| format!("{s:?}: bad value {v:?}"))?;
    Ok((i, v))
}

struct PeerPort {
    port: Port,
    rx: dpdk::RxQueue,
    tx: dpdk::TxQueue,
    to_send: std::collections::VecDeque<Frame>,
    staged: Burst,
    sent: u64,
    received: u64,
    expect: Option<u64>,
    out: Option<PcapWriter<std::io::BufWriter<std::fs::File>>>,
    /// Frames written to `out` since it was opened.
    recorded: u64,
    /// Not read while paused.
    paused: bool,
}

enum Cmd {
    Nothing,
    Quit,
    Count,
    /// Queued this many frames on this port.
    Sent(usize, usize),
    /// Port paused (true) or resumed.
    Pause(usize, bool),
    /// Port's recording rotated; the closed capture held this many frames.
    Rotated(usize, u64),
}

fn recording(path: &std::path::Path) -> Result<PcapWriter<std::io::BufWriter<std::fs::File>>> {
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    Ok(PcapWriter::new_nanos(std::io::BufWriter::new(file))?)
}

/// Stdin lines, read on their own thread so the poll loop never blocks; end of input is `quit`.
fn stdin_lines() -> crossbeam::channel::Receiver<String> {
    let (tx, rx) = crossbeam::channel::unbounded();
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                return;
            }
        }
        let _ = tx.send("quit".to_string());
    });
    rx
}

/// Port `idx` of a command line, or an error naming the line and why.
fn port_of<'a, P>(line: &str, idx: &str, ports: &'a mut [P]) -> Result<(usize, &'a mut P)> {
    let i: usize = idx
        .parse()
        .with_context(|| format!("{line:?}: {idx:?} is not a port index"))?;
    let p = ports
        .get_mut(i)
        .with_context(|| format!("{line:?}: there is no port {i}"))?;
    Ok((i, p))
}

fn command(line: &str, ports: &mut [PeerPort]) -> Result<Cmd> {
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        [] => Ok(Cmd::Nothing),
        ["quit"] => Ok(Cmd::Quit),
        ["count"] => Ok(Cmd::Count),
        ["send", idx, file] => {
            let (i, p) = port_of(line, idx, ports)?;
            let frames = capture::read_file(std::path::Path::new(file))?.frames;
            let n = frames.len();
            p.to_send.extend(frames);
            Ok(Cmd::Sent(i, n))
        }
        [verb @ ("pause" | "resume"), idx] => {
            let (i, p) = port_of(line, idx, ports)?;
            p.paused = *verb == "pause";
            Ok(Cmd::Pause(i, p.paused))
        }
        ["rotate", idx, file] => {
            let (i, p) = port_of(line, idx, ports)?;
            let next = recording(std::path::Path::new(file))?;
            if let Some(w) = p.out.replace(next) {
                w.into_inner()?;
            }
            Ok(Cmd::Rotated(i, std::mem::take(&mut p.recorded)))
        }
        _ => bail!(
            "{line:?}: expected `send IDX FILE`, `pause IDX`, `resume IDX`, `rotate IDX FILE`, `count` or `quit`"
        ),
    }
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("epochgate-peer: {e:#}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> Result<()> {
    let n = args.ports.len();
    let indices = args.send.iter().map(|(i, _)| ("send", *i));
    let indices = indices.chain(args.recv.iter().map(|(i, _)| ("recv", *i)));
    for (flag, i) in indices.chain(args.expect.iter().map(|(i, _)| ("expect", *i))) {
        if i >= n {
            bail!("--{flag} {i}=...: there are only {n} ports (numbered from 0)");
        }
    }
    let mut eal_args: Vec<String> = [
        "epochgate-peer",
        "-l",
        "0",
        "--no-huge",
        "-m",
        "256",
        "--no-pci",
        "--file-prefix",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    eal_args.push(args.file_prefix.clone());
    for p in &args.ports {
        eal_args.push("--vdev".into());
        eal_args.push(p.clone());
    }
    let eal = dpdk::init(&eal_args)?;
    let pool = Mempool::create(eal, "peer_pool", 8191, 256)?;
    let conf = PortConf {
        rx_queues: 1,
        tx_queues: 1,
        rx_ring: 1024,
        tx_ring: 1024,
    };
    let mut ports = Vec::new();
    for (i, spec) in args.ports.iter().enumerate() {
        let name = spec.split(',').next().unwrap_or(spec);
        let (port, mut rx, mut tx) = Port::start(eal, name, &pool, conf)?;
        let to_send = match args.send.iter().find(|(j, _)| *j == i) {
            Some((_, path)) => capture::read_file(path)?.frames,
            None => Vec::new(),
        };
        let out = match args.recv.iter().find(|(j, _)| *j == i) {
            Some((_, path)) => Some(recording(path)?),
            None => None,
        };
        ports.push(PeerPort {
            port,
            rx: rx.pop().context("port has no rx queue")?,
            tx: tx.pop().context("port has no tx queue")?,
            to_send: to_send.into(),
            staged: Burst::new(),
            sent: 0,
            received: 0,
            expect: args.expect.iter().find(|(j, _)| *j == i).map(|&(_, e)| e),
            out,
            recorded: 0,
            paused: false,
        });
    }

    let start = Instant::now();
    let timeout = Duration::from_secs_f64(args.timeout);
    while !ports.iter().all(|p| p.port.link_up()) {
        if start.elapsed() > timeout {
            bail!("timed out waiting for every link to come up");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    println!("{{\"event\":\"ready\"}}");

    let commands = args.interactive.then(stdin_lines);
    // (port, its `sent` count at which the batch is all out, frames in the batch)
    let mut batches: Vec<(usize, u64, usize)> = Vec::new();
    let mut quit = false;
    let mut met_at: Option<Instant> = None;
    loop {
        if let Some(rx) = &commands {
            while let Ok(line) = rx.try_recv() {
                match command(&line, &mut ports)? {
                    Cmd::Nothing => {}
                    Cmd::Quit => quit = true,
                    Cmd::Count => {
                        let sent: Vec<u64> = ports.iter().map(|p| p.sent).collect();
                        let received: Vec<u64> = ports.iter().map(|p| p.received).collect();
                        println!(
                            "{}",
                            serde_json::json!({"event": "count", "sent": sent, "received": received})
                        );
                    }
                    Cmd::Rotated(i, frames) => {
                        println!(
                            "{}",
                            serde_json::json!({"event": "rotated", "port": i, "frames": frames})
                        );
                    }
                    Cmd::Pause(i, paused) => {
                        let event = if paused { "paused" } else { "resumed" };
                        println!("{}", serde_json::json!({"event": event, "port": i}));
                    }
                    Cmd::Sent(i, n) => {
                        let p = &ports[i];
                        let target = p.sent + (p.staged.len() + p.to_send.len()) as u64;
                        batches.push((i, target, n));
                    }
                }
            }
        }
        batches.retain(|&(i, target, n)| {
            let done = ports[i].sent >= target;
            if done {
                println!(
                    "{}",
                    serde_json::json!({"event": "sent", "port": i, "frames": n, "total": ports[i].sent})
                );
            }
            !done
        });
        let mut busy = false;
        for p in ports.iter_mut() {
            // Send: keep a burst staged; what TX does not take is retried, never dropped.
            while !p.staged.is_full() {
                let Some(f) = p.to_send.pop_front() else {
                    break;
                };
                let m =
                    Mbuf::from_bytes(&pool, &f.data).context("mempool empty or frame too large")?;
                p.staged.push(m);
            }
            let sent = p.tx.tx_burst(&mut p.staged);
            p.sent += sent as u64;
            busy |= sent > 0;
            if p.paused {
                continue;
            }
            let mut burst = Burst::new();
            let got = p.rx.rx_burst(&mut burst);
            busy |= got > 0;
            p.received += got as u64;
            if let Some(w) = p.out.as_mut() {
                for m in &burst {
                    w.write(now_ns(), m.data())?;
                }
                p.recorded += got as u64;
            }
        }
        let all_sent = ports
            .iter()
            .all(|p| p.staged.is_empty() && p.to_send.is_empty());
        let all_met = ports
            .iter()
            .all(|p| p.expect.is_none_or(|e| p.received >= e));
        let finished = if commands.is_some() {
            quit && all_sent
        } else {
            all_sent && all_met
        };
        if finished {
            let at = *met_at.get_or_insert_with(Instant::now);
            if at.elapsed().as_secs_f64() >= args.linger {
                break;
            }
        }
        if start.elapsed() > timeout {
            break;
        }
        if !busy && batches.is_empty() {
            // A test peer, not a data plane: leave the CPU to epochgate when idle.
            std::thread::sleep(Duration::from_micros(50));
        }
    }

    let mut ok = true;
    let mut report = Vec::new();
    for (i, p) in ports.into_iter().enumerate() {
        if let Some(w) = p.out {
            w.into_inner()?;
        }
        ok &=
            p.expect.is_none_or(|e| p.received >= e) && p.to_send.is_empty() && p.staged.is_empty();
        report.push(serde_json::json!({"port": i, "sent": p.sent, "received": p.received, "expected": p.expect}));
        drop((p.rx, p.tx, p.staged));
        let _ = p.port.close();
    }
    println!(
        "{}",
        serde_json::json!({"event": "done", "ok": ok, "ports": report})
    );
    if !ok {
        bail!(
            "not every frame was sent or not every expected frame arrived within {:?}",
            timeout
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::port_of;

    #[test]
    fn a_command_names_its_port_or_says_why_not() {
        let mut ports = vec!['a', 'b'];
        let (i, p) = port_of("pause 1", "1", &mut ports).expect("port 1 exists");
        assert_eq!((i, *p), (1, 'b'));
        let e = port_of("pause 2", "2", &mut ports).unwrap_err().to_string();
        assert_eq!(e, "\"pause 2\": there is no port 2");
        let e = port_of("send x f", "x", &mut ports)
            .unwrap_err()
            .to_string();
        assert_eq!(e, "\"send x f\": \"x\" is not a port index");
    }
}
