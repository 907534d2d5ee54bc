//! The receiver's checks, pure: no DPDK, no clock, no threads. The traffic loop feeds it what
//! the VMM simulator did (fences with the last sequence number sent before each, commits with
//! the TSC at which each was sent) and every frame the receiver gets (VM, sequence number, the
//! TSC at which the receiver saw it), and it decides:
//!
//! - **output commit**: a frame of a protected VM belongs to the first epoch whose fence came
//!   after it was sent (sequence number <= that fence's last-sent); it may be seen only after
//!   that epoch's commit was sent. Seen earlier, or belonging to an epoch not yet committed,
//!   is a violation;
//! - **order**: per VM, sequence numbers strictly increase (a repeat of the last one is a
//!   duplicate, a smaller one is out of order); a jump is frames lost, counted;
//! - **seal**: a fence sealed no more frames than were sent in its epoch (fewer is a fence cut
//!   short or frames dropped, counted for the caller to match with epochgate's own counters).
//!
//! A frame whose epoch has no commit on record yet comes back as [`Seen::Uncommitted`]: the
//! caller knows whether a commit record may still be on its way (see `traffic.rs`) and then
//! either feeds it and asks again or calls [`Checker::early`].

/// What is known of one VM.
#[derive(Debug, Clone, Default)]
pub struct VmLog {
    pub protected: bool,
    /// Last sequence number sent before fence `i` (epoch `i` = `(fences[i-1], fences[i]]`).
    fences: Vec<u32>,
    /// TSC at which the commit of epoch `i` was sent.
    commits: Vec<u64>,
    /// Highest sequence number received (0: none).
    last: u32,
    /// Epoch of the last frame received.
    cursor: usize,
    /// (epoch, first rx TSC, last rx TSC) of the epoch being received.
    releasing: Option<(usize, u64, u64)>,
    pub received: u64,
    /// Frames skipped by jumps in the sequence numbers.
    pub gaps: u64,
    /// Frames sealed by all fences so far, and after each fence.
    sealed: u64,
    sealed_cum: Vec<u64>,
    /// The epoch epochgate sealed the last frame received into (by the seal counts).
    sealed_cursor: usize,
    /// Fences after which fewer frames were sealed, in all, than had been sent before them
    /// (the rest went into a later epoch: a fence cut short).
    pub short_fences: u64,
    /// Per released epoch: (first frame seen - commit sent, last frame seen - commit sent), ticks.
    pub release: Vec<(u64, u64)>,
}

/// A broken promise, with the frame that showed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    /// Seen before its epoch's commit was sent (`commit_tsc` None: not sent at all).
    Early {
        vm: u16,
        seq: u32,
        epoch: usize,
        seen_tsc: u64,
        commit_tsc: Option<u64>,
    },
    Duplicate {
        vm: u16,
        seq: u32,
    },
    OutOfOrder {
        vm: u16,
        seq: u32,
        after: u32,
    },
    /// Fences up to this one sealed more frames than the VM had sent before it.
    OverSealed {
        vm: u16,
        epoch: usize,
        sealed: u64,
        sent: u64,
    },
    /// A stamp names a VM that is not in the plan.
    UnknownVm {
        vm: u16,
    },
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Violation::Early {
                vm,
                seq,
                epoch,
                seen_tsc,
                commit_tsc: Some(c),
            } => write!(
                f,
                "vm {vm} frame {seq} of epoch {epoch} reached the receiver {} ticks before its commit was sent",
                c - seen_tsc
            ),
            Violation::Early {
                vm, seq, epoch, ..
            } => write!(
                f,
                "vm {vm} frame {seq} of epoch {epoch} reached the receiver before its commit was sent (no commit sent)"
            ),
            Violation::Duplicate { vm, seq } => write!(f, "vm {vm} frame {seq} received twice"),
            Violation::OutOfOrder { vm, seq, after } => {
                write!(f, "vm {vm} frame {seq} received after frame {after}")
            }
            Violation::OverSealed {
                vm,
                epoch,
                sealed,
                sent,
            } => write!(
                f,
                "vm {vm} fence of epoch {epoch}: {sealed} frames sealed up to it but only {sent} were sent before it"
            ),
            Violation::UnknownVm { vm } => write!(f, "a frame stamped with unknown vm {vm}"),
        }
    }
}

/// The answer for one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    Ok,
    /// Its epoch has no commit on record: the caller resolves it (see the module doc).
    Uncommitted {
        epoch: usize,
    },
    /// A violation was recorded.
    Violation,
}

/// How many violations are kept in full (all are counted).
const KEEP: usize = 16;

#[derive(Debug, Default)]
pub struct Checker {
    pub vms: Vec<VmLog>,
    /// The first violations, in order.
    pub violations: Vec<Violation>,
    pub violation_count: u64,
    pub checked: u64,
}

impl Checker {
    /// One entry per VM of the plan: `true` for the protected ones.
    pub fn new(protected: &[bool]) -> Checker {
        Checker {
            vms: protected
                .iter()
                .map(|&p| VmLog {
                    protected: p,
                    ..VmLog::default()
                })
                .collect(),
            ..Checker::default()
        }
    }

    fn violate(&mut self, v: Violation) -> Seen {
        self.violation_count += 1;
        if self.violations.len() < KEEP {
            self.violations.push(v);
        }
        Seen::Violation
    }

    /// Fence `vms[vm].fences.len()` closed after frame `last_sent` and sealed `sealed` frames.
    /// Frames sent before a fence may be sealed by a later one (a fence cut short leaves them
    /// in the next epoch, which is safe), never by an earlier one: so, counted from the start,
    /// no fence may have sealed more frames than were sent before it.
    pub fn fence(&mut self, vm: u16, last_sent: u32, sealed: u64) {
        let Some(log) = self.vms.get_mut(usize::from(vm)) else {
            return;
        };
        let epoch = log.fences.len();
        let prev = log.fences.last().copied().unwrap_or(0);
        log.fences.push(last_sent.max(prev));
        log.sealed += sealed;
        log.sealed_cum.push(log.sealed);
        let sent = u64::from(last_sent.max(prev));
        if log.sealed < sent {
            log.short_fences += 1;
        } else if log.sealed > sent {
            let total = log.sealed;
            self.violate(Violation::OverSealed {
                vm,
                epoch,
                sealed: total,
                sent,
            });
        }
    }

    /// The commit of epoch `epoch` of `vm` was sent at `tsc`. Commits come in epoch order.
    pub fn commit(&mut self, vm: u16, epoch: usize, tsc: u64) {
        if let Some(log) = self.vms.get_mut(usize::from(vm)) {
            debug_assert_eq!(epoch, log.commits.len(), "commits out of order");
            log.commits.push(tsc);
        }
    }

    /// Commits on record for `vm`.
    pub fn commits(&self, vm: u16) -> usize {
        self.vms.get(usize::from(vm)).map_or(0, |l| l.commits.len())
    }

    /// Frame `seq` of `vm` was seen at `seen_tsc`.
    pub fn frame(&mut self, vm: u16, seq: u32, seen_tsc: u64) -> Seen {
        let Some(log) = self.vms.get(usize::from(vm)) else {
            return self.violate(Violation::UnknownVm { vm });
        };
        let last = log.last;
        if seq <= last {
            self.checked += 1;
            return self.violate(if seq == last {
                Violation::Duplicate { vm, seq }
            } else {
                Violation::OutOfOrder {
                    vm,
                    seq,
                    after: last,
                }
            });
        }
        if log.protected {
            // The epoch: the first fence at or after seq (frames arrive in order, so the
            // search starts at the last frame's epoch).
            let mut e = log.cursor;
            while e < log.fences.len() && seq > log.fences[e] {
                e += 1;
            }
            match log.commits.get(e) {
                None => return Seen::Uncommitted { epoch: e },
                Some(&c) if seen_tsc < c => {
                    self.checked += 1;
                    self.advance(vm, seq);
                    return self.violate(Violation::Early {
                        vm,
                        seq,
                        epoch: e,
                        seen_tsc,
                        commit_tsc: Some(c),
                    });
                }
                Some(_) => {
                    self.vms[usize::from(vm)].cursor = e;
                    self.time_release(vm, seq, seen_tsc);
                }
            }
        }
        self.checked += 1;
        self.advance(vm, seq);
        Seen::Ok
    }

    /// Release timing goes by what epochgate sealed, not by what was sent before each fence:
    /// a fence cut short leaves frames for the next epoch, and they are released at its
    /// commit. Frames are sealed in order, so epoch e holds the frames numbered
    /// `(sealed_cum[e-1], sealed_cum[e]]` (while the VM loses none).
    fn time_release(&mut self, vm: u16, seq: u32, seen_tsc: u64) {
        let log = &mut self.vms[usize::from(vm)];
        let mut e = log.sealed_cursor;
        while e < log.sealed_cum.len() && u64::from(seq) > log.sealed_cum[e] {
            e += 1;
        }
        log.sealed_cursor = e;
        if e >= log.commits.len() {
            return;
        }
        match &mut log.releasing {
            Some((re, _, l)) if *re == e => *l = seen_tsc,
            r => {
                if let Some((re, first, l)) = r.take() {
                    let c0 = log.commits[re];
                    log.release
                        .push((first.saturating_sub(c0), l.saturating_sub(c0)));
                }
                *r = Some((e, seen_tsc, seen_tsc));
            }
        }
    }

    fn advance(&mut self, vm: u16, seq: u32) {
        let log = &mut self.vms[usize::from(vm)];
        log.gaps += u64::from(seq - log.last - 1);
        log.last = seq;
        log.received += 1;
    }

    /// The caller established that no commit of `epoch` had been sent when frame `seq` was seen.
    pub fn early(&mut self, vm: u16, seq: u32, epoch: usize, seen_tsc: u64) {
        self.checked += 1;
        self.advance(vm, seq);
        self.violate(Violation::Early {
            vm,
            seq,
            epoch,
            seen_tsc,
            commit_tsc: None,
        });
    }

    /// Closes the epochs still being received (call once, at the end).
    pub fn finish(&mut self) {
        for log in &mut self.vms {
            if let Some((e, first, last)) = log.releasing.take() {
                let c = log.commits[e];
                log.release
                    .push((first.saturating_sub(c), last.saturating_sub(c)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A correct release: epochs of `sizes[i]` frames, each fenced, committed at 100*(i+1) and
    /// seen from then on, one tick apart.
    fn correct(sizes: &[u32]) -> (Checker, Vec<(u32, u64)>) {
        let mut c = Checker::new(&[true]);
        let (mut seq, mut frames) = (0u32, Vec::new());
        for (i, &n) in sizes.iter().enumerate() {
            let commit = 100_000 * (i as u64 + 1);
            for k in 0..n {
                seq += 1;
                frames.push((seq, commit + u64::from(k) + 1));
            }
            c.fence(0, seq, u64::from(n));
            c.commit(0, i, commit);
        }
        (c, frames)
    }

    #[test]
    fn a_correct_release_passes_and_measures_each_epoch() {
        let (mut c, frames) = correct(&[3, 1, 4]);
        for (seq, t) in frames {
            assert_eq!(c.frame(0, seq, t), Seen::Ok);
        }
        c.finish();
        assert_eq!(c.violation_count, 0);
        assert_eq!(c.checked, 8);
        assert_eq!(c.vms[0].release, vec![(1, 3), (1, 1), (1, 4)]);
    }

    #[test]
    fn a_frame_before_its_commit_is_caught() {
        let (mut c, frames) = correct(&[3, 3]);
        let (seq, _) = frames[4]; // epoch 1, committed at 200_000
        for &(s, t) in &frames[..4] {
            assert_eq!(c.frame(0, s, t), Seen::Ok);
        }
        assert_eq!(c.frame(0, seq, 199_999), Seen::Violation);
        assert_eq!(
            c.violations[0],
            Violation::Early {
                vm: 0,
                seq,
                epoch: 1,
                seen_tsc: 199_999,
                commit_tsc: Some(200_000)
            }
        );
    }

    #[test]
    fn a_frame_of_an_uncommitted_or_unfenced_epoch_is_handed_back() {
        let mut c = Checker::new(&[true]);
        c.fence(0, 2, 2);
        assert_eq!(c.frame(0, 1, 10), Seen::Uncommitted { epoch: 0 });
        c.commit(0, 0, 5);
        assert_eq!(c.frame(0, 1, 10), Seen::Ok);
        assert_eq!(c.frame(0, 2, 11), Seen::Ok);
        // Frame 3 was sent after the only fence: its epoch was never even fenced.
        assert_eq!(c.frame(0, 3, 12), Seen::Uncommitted { epoch: 1 });
        c.early(0, 3, 1, 12);
        assert_eq!(c.violation_count, 1);
        assert!(c.violations[0].to_string().contains("no commit sent"));
    }

    #[test]
    fn a_reordered_pair_and_a_duplicate_are_caught() {
        let (mut c, frames) = correct(&[5]);
        let t = |i: usize| frames[i].1;
        assert_eq!(c.frame(0, 1, t(0)), Seen::Ok);
        assert_eq!(c.frame(0, 3, t(1)), Seen::Ok);
        assert_eq!(c.frame(0, 2, t(2)), Seen::Violation);
        assert_eq!(c.frame(0, 3, t(3)), Seen::Violation);
        assert_eq!(
            c.violations,
            vec![
                Violation::OutOfOrder {
                    vm: 0,
                    seq: 2,
                    after: 3
                },
                Violation::Duplicate { vm: 0, seq: 3 }
            ]
        );
    }

    #[test]
    fn unprotected_vms_are_checked_for_order_and_losses_only() {
        let mut c = Checker::new(&[false]);
        assert_eq!(c.frame(0, 1, 0), Seen::Ok);
        assert_eq!(c.frame(0, 4, 0), Seen::Ok);
        assert_eq!(c.vms[0].gaps, 2);
        assert_eq!(c.frame(0, 4, 0), Seen::Violation);
        assert_eq!(c.frame(9, 1, 0), Seen::Violation);
        assert_eq!(c.violations[1], Violation::UnknownVm { vm: 9 });
    }

    #[test]
    fn seals_are_checked_from_the_start() {
        let mut c = Checker::new(&[true]);
        c.fence(0, 10, 10);
        c.fence(0, 20, 7);
        assert_eq!(c.vms[0].short_fences, 1);
        // The 3 left over are sealed by the next fence with its own 5: fine.
        c.fence(0, 25, 8);
        assert_eq!(c.violation_count, 0);
        assert_eq!(c.vms[0].short_fences, 1);
        // One frame more than was ever sent before this fence: a frame sent after it was sealed.
        c.fence(0, 30, 6);
        assert_eq!(
            c.violations,
            vec![Violation::OverSealed {
                vm: 0,
                epoch: 3,
                sealed: 31,
                sent: 30
            }]
        );
    }

    proptest! {
        /// Any correct release passes; moving any one frame before its commit is caught.
        #[test]
        fn every_single_early_frame_is_caught(
            sizes in proptest::collection::vec(1u32..20, 1..12),
            pick in any::<proptest::sample::Index>(),
            by in 1u64..50_000,
        ) {
            let (mut ok, frames) = correct(&sizes);
            for &(s, t) in &frames {
                prop_assert_eq!(ok.frame(0, s, t), Seen::Ok);
            }
            prop_assert_eq!(ok.violation_count, 0);

            let (mut bad, frames) = correct(&sizes);
            let i = pick.index(frames.len());
            // The epoch of frame i and its commit (commit at 100_000 * (epoch + 1)).
            let mut e = 0;
            let mut end = sizes[0];
            while frames[i].0 > end { e += 1; end += sizes[e]; }
            let commit = 100_000 * (e as u64 + 1);
            for (k, &(s, t)) in frames.iter().enumerate() {
                let t = if k == i { commit - by.min(commit) } else { t };
                bad.frame(0, s, t);
            }
            prop_assert_eq!(bad.violation_count, 1);
            let is_early = matches!(bad.violations[0], Violation::Early { .. });
            prop_assert!(is_early);
        }
    }
}
