//! The VMM simulator: one thread and one shim session per protected VM, checkpointing it as a
//! Remus-style VMM does. Every `epoch_ms` (or at once when epochgate asks and
//! `honour_requests` is set) it pauses the VM's generator (the guest is paused), sends `Fence`,
//! resumes the VM when `Fenced` comes back, waits `transfer_ms` (the checkpoint going to the
//! secondary), then sends `Commit`. It tells the traffic loop, in this order, the last sequence
//! number sent before each fence, and the TSC at which each commit was sent.
//!
//! The commit's TSC is announced with a two-step protocol so that the checker never misses a
//! commit that was already sent: `pending_commit` is raised first (SeqCst), then the TSC is
//! read, recorded and the commit sent. A receiver that finds a frame of an epoch with no commit
//! on record reads `pending_commit`: not raised means the commit had not been sent when the
//! frame was seen (a leak); raised means its record is on the way.

use crate::plan::SimPlan;
use crossbeam::channel::Sender;
use epochgate::dpdk::tsc;
use std::path::PathBuf;
use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering::*};
use std::sync::Arc;
use std::time::{Duration, Instant};
use vmm_shim::client::Client;
use vmm_shim::proto::Mode;

/// What the generator and a simulated VMM share about one VM.
#[derive(Debug)]
pub struct VmShared {
    /// The VMM wants the VM paused: the number of this pause (0: run).
    pub want_pause: AtomicU64,
    /// The last pause the generator carried out, and ...
    pub paused_ticket: AtomicU64,
    /// ... how many frames it had sent when it did (its last sequence number).
    pub paused_at: AtomicU64,
    /// Epochs whose commit is about to be or has been sent.
    pub pending_commit: AtomicU64,
    /// TSC of the first frame sent since the VM last resumed (0: none yet).
    pub first_tx_tsc: AtomicU64,
}

impl Default for VmShared {
    fn default() -> Self {
        VmShared {
            want_pause: AtomicU64::new(0),
            paused_ticket: AtomicU64::new(0),
            paused_at: AtomicU64::new(0),
            pending_commit: AtomicU64::new(0),
            first_tx_tsc: AtomicU64::new(0),
        }
    }
}

/// What a simulated VMM reports to the traffic loop, in the order it happened.
#[derive(Debug)]
pub enum SimEvent {
    Fence {
        vm: u16,
        last_sent: u32,
        sealed: u64,
        rtt_ns: u64,
        paused_ns: u64,
    },
    Commit {
        vm: u16,
        epoch: usize,
        tsc: u64,
    },
    /// A checkpoint request arrived; latency from the epoch's first frame sent, if any.
    Request {
        vm: u16,
        latency_ns: Option<u64>,
    },
    Done {
        vm: u16,
        error: Option<String>,
    },
}

pub struct Sim {
    pub vm: u16,
    pub name: String,
    pub plan: SimPlan,
    pub control: PathBuf,
    pub shared: Arc<VmShared>,
    pub stop: Arc<AtomicBool>,
    pub events: Sender<SimEvent>,
    pub tsc_hz: u64,
}

impl Sim {
    pub fn spawn(self) -> std::thread::JoinHandle<()> {
        std::thread::Builder::new()
            .name(format!("vmm-{}", self.name))
            .spawn(move || {
                let r = self.run();
                let _ = self.events.send(SimEvent::Done {
                    vm: self.vm,
                    error: r.err().map(|e| format!("{e:#}")),
                });
                // Never leave the VM paused for the generator.
                self.shared.want_pause.store(0, SeqCst);
            })
            .expect("spawning a VMM simulator thread")
    }

    fn ticks_to_ns(&self, t: u64) -> u64 {
        (t as u128 * 1_000_000_000 / u128::from(self.tsc_hz.max(1))) as u64
    }

    /// Records a checkpoint request for `open` (the open epoch); true if `ev` is one.
    fn request(&self, ev: Option<vmm_shim::client::Event>, open: u64) -> bool {
        match ev {
            Some(ev) if ev.epoch == open => {
                let first = self.shared.first_tx_tsc.load(SeqCst);
                let now = tsc();
                let latency_ns = (first != 0 && now > first).then(|| self.ticks_to_ns(now - first));
                let _ = self.events.send(SimEvent::Request {
                    vm: self.vm,
                    latency_ns,
                });
                true
            }
            _ => false,
        }
    }

    fn run(&self) -> anyhow::Result<()> {
        use anyhow::Context;
        let mut client = Client::connect(&self.control, &self.name).with_context(|| {
            format!("vm {}: connecting to {}", self.name, self.control.display())
        })?;
        client.set_timeout(Some(Duration::from_secs(10)));
        let w = client.welcome();
        let mut epoch = if w.mode == Mode::Protected && w.epoch > 0 {
            w.epoch
        } else {
            client.protect().context("protect")?
        };
        let epoch_len = Duration::from_secs_f64(self.plan.epoch_ms / 1e3);
        let transfer = Duration::from_secs_f64(self.plan.transfer_ms / 1e3);
        let mut index = 0usize;
        let mut ticket = 0u64;
        let mut next = Instant::now() + epoch_len;
        loop {
            let stopping = self.stop.load(Relaxed);
            if !stopping {
                let now = Instant::now();
                if now < next {
                    let wait = (next - now).min(Duration::from_millis(20));
                    let ev = client
                        .next_event(Some(wait))
                        .context("waiting for events")?;
                    if !(self.request(ev, epoch) && self.plan.honour_requests) {
                        continue;
                    }
                }
            }
            // Checkpoint: pause the guest, fence, resume.
            let t_pause = tsc();
            let fence_at = Instant::now();
            ticket += 1;
            self.shared.want_pause.store(ticket, SeqCst);
            let deadline = Instant::now() + Duration::from_secs(10);
            let last_sent = loop {
                if self.shared.paused_ticket.load(SeqCst) == ticket {
                    break self.shared.paused_at.load(SeqCst);
                }
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "the generator did not pause the VM within 10 s"
                );
                // Sleep, never spin: the generator runs at the lowest priority on this core.
                std::thread::sleep(Duration::from_micros(5));
            };
            let t0 = tsc();
            let fenced = client.fence(epoch).context("fence")?;
            let rtt = tsc() - t0;
            self.shared.want_pause.store(0, SeqCst);
            let _ = self.events.send(SimEvent::Fence {
                vm: self.vm,
                last_sent: u32::try_from(last_sent).unwrap_or(u32::MAX),
                sealed: fenced.frames,
                rtt_ns: self.ticks_to_ns(rtt),
                paused_ns: self.ticks_to_ns(tsc() - t_pause),
            });
            // The checkpoint transfer. Requests for the new epoch that arrive meanwhile are
            // timed as they arrive and start the next checkpoint right after this commit.
            let open = fenced.epoch + 1;
            let transferred = Instant::now() + transfer;
            let mut asked = false;
            while let Some(left) = transferred.checked_duration_since(Instant::now()) {
                if left.is_zero() {
                    break;
                }
                let ev = client
                    .next_event(Some(left))
                    .context("waiting for events")?;
                asked |= self.request(ev, open);
            }
            if self.plan.early_release {
                // The injected fault: the commit goes out before the checker hears of it.
                client.commit(epoch).context("commit")?;
                std::thread::sleep(Duration::from_millis(2));
            }
            self.shared.pending_commit.store(index as u64 + 1, SeqCst);
            fence(SeqCst);
            let c = tsc();
            let _ = self.events.send(SimEvent::Commit {
                vm: self.vm,
                epoch: index,
                tsc: c,
            });
            if !self.plan.early_release {
                client.commit(epoch).context("commit")?;
            }
            index += 1;
            epoch = open;
            next = if asked && self.plan.honour_requests {
                Instant::now()
            } else {
                fence_at + epoch_len
            };
            if stopping {
                // End protection the way a VMM does when it stops checkpointing: everything
                // has been committed, so the VM goes on unprotected.
                client
                    .unprotect(vmm_shim::proto::Release::Release)
                    .context("unprotect")?;
                return Ok(());
            }
        }
    }
}
