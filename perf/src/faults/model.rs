//! What the campaign knows about each VM's frames, and the check of an egress capture against
//! it. Pure: no processes, no sockets, unit-tested below.
//!
//! The driver is sequential: it sends a VM's frames and waits until epochgate has counted
//! them before it fences, commits, discards, changes a mode or kills anything. So the campaign
//! knows, for every frame, the epoch it can be in, and the rule is exact:
//!
//! - a frame may reach egress only if it was sent while its VM was pass-through, or it was
//!   sealed into an epoch that a `Commit` covered (sent, whatever its answer), or held when
//!   an `Unprotect{release}` released everything, with no discard of it in between (a
//!   `Discard`, an `Unprotect{drop}`, a lost or frozen controller, an exit of epochgate);
//! - a frame sent while its VM was failed may never reach it;
//! - a frame whose commit was answered `Committed` (or sent while pass-through) in a run of
//!   epochgate that ended by SIGTERM must reach egress, unless a drop that epochgate counted
//!   explains it;
//! - each VM's frames reach egress in the order sent, each at most once.

use std::collections::BTreeMap;

/// Where a frame stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// Held in an open or sealed epoch that nothing has committed (yet).
    Pending,
    /// May reach egress.
    Allowed,
    /// May never reach egress, for this reason.
    Forbidden(&'static str),
}

/// One frame the campaign sent.
#[derive(Debug, Clone, Copy)]
pub struct Sent {
    pub fate: Fate,
    /// It must reach egress (its commit was answered, or it was sent while pass-through),
    /// provided its epochgate process ends by SIGTERM.
    pub required: bool,
    /// The epochgate process (0, 1, ..) it was sent to.
    pub incarnation: u32,
}

/// The mode the campaign believes a VM is in (it checks this against epochgate's answers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Protected,
    Passthrough,
    Failed,
}

/// One VM's frames and epochs, as the campaign drove them.
#[derive(Debug, Clone)]
pub struct VmModel {
    pub mode: Mode,
    /// Frames in the open epoch.
    open: Vec<u64>,
    /// Sealed epochs not yet covered by a commit, oldest first.
    sealed: Vec<(u64, Vec<u64>)>,
    /// Every frame sent, by sequence number.
    pub frames: Vec<Sent>,
}

impl VmModel {
    pub fn new(mode: Mode) -> VmModel {
        VmModel {
            mode,
            open: Vec::new(),
            sealed: Vec::new(),
            frames: Vec::new(),
        }
    }

    /// A frame sent now to epochgate process `incarnation`; returns its sequence number.
    pub fn send(&mut self, incarnation: u32) -> u64 {
        let seq = self.frames.len() as u64;
        let (fate, required) = match self.mode {
            Mode::Passthrough => (Fate::Allowed, true),
            Mode::Failed => (Fate::Forbidden("sent while its VM was failed"), false),
            Mode::Protected => {
                self.open.push(seq);
                (Fate::Pending, false)
            }
        };
        self.frames.push(Sent {
            fate,
            required,
            incarnation,
        });
        seq
    }

    /// Frames held now (open and sealed epochs), as epochgate should count them.
    pub fn pending(&self) -> u64 {
        (self.open.len() + self.sealed.iter().map(|(_, s)| s.len()).sum::<usize>()) as u64
    }

    /// Frames in sealed epochs not yet committed, if there is such an epoch.
    pub fn sealed_frames(&self) -> Option<u64> {
        (!self.sealed.is_empty()).then(|| self.sealed.iter().map(|(_, s)| s.len() as u64).sum())
    }

    /// Frames in the open epoch.
    pub fn open_frames(&self) -> u64 {
        self.open.len() as u64
    }

    /// `Fenced{epoch}`: the open epoch is sealed as `epoch`.
    pub fn fenced(&mut self, epoch: u64) {
        let frames = std::mem::take(&mut self.open);
        self.sealed.push((epoch, frames));
    }

    /// `Commit{epoch}` was sent; `answered` if epochgate said `Committed`. Covers every sealed
    /// epoch up to `epoch`.
    pub fn commit(&mut self, epoch: u64, answered: bool) {
        let (covered, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.sealed)
            .into_iter()
            .partition(|(e, _)| *e <= epoch);
        self.sealed = rest;
        for (_, seqs) in covered {
            self.allow(&seqs, answered);
        }
    }

    /// `Unprotect{release}`: everything held may leave; the VM is pass-through.
    pub fn release_all(&mut self) {
        let mut all = std::mem::take(&mut self.open);
        for (_, s) in std::mem::take(&mut self.sealed) {
            all.extend(s);
        }
        self.allow(&all, true);
        self.mode = Mode::Passthrough;
    }

    fn allow(&mut self, seqs: &[u64], required: bool) {
        for &s in seqs {
            let f = &mut self.frames[s as usize];
            if f.fate == Fate::Pending {
                f.fate = Fate::Allowed;
                f.required = required;
            }
        }
    }

    /// Everything held is discarded, for `why` (a `Discard`, an `Unprotect{drop}`, a lost
    /// controller, an exit of epochgate). Returns how many frames that was.
    pub fn discard(&mut self, why: &'static str) -> u64 {
        let n = self.pending();
        let mut all = std::mem::take(&mut self.open);
        for (_, s) in std::mem::take(&mut self.sealed) {
            all.extend(s);
        }
        for s in all {
            let f = &mut self.frames[s as usize];
            if f.fate == Fate::Pending {
                f.fate = Fate::Forbidden(why);
            }
        }
        n
    }

    /// Epochgate process `incarnation` was killed (SIGKILL): what it had released but maybe
    /// not sent is no longer required.
    pub fn killed(&mut self, incarnation: u32) {
        for f in &mut self.frames {
            if f.incarnation == incarnation {
                f.required = false;
            }
        }
    }
}

/// The stamp at the end of every frame the campaign sends: magic, run, VM, sequence number
/// and a check word, so that a frame cut or altered on the way is told from a stray one.
pub const STAMP_LEN: usize = 24;
const MAGIC: &[u8; 4] = b"EGFC";

fn check_word(run: u32, vm: u32, seq: u64) -> u32 {
    let x = (u64::from(run) << 40) ^ (u64::from(vm) << 32) ^ seq ^ 0x9e37_79b9_7f4a_7c15;
    let x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    (x ^ (x >> 31)) as u32
}

pub fn stamp(run: u32, vm: u32, seq: u64) -> [u8; STAMP_LEN] {
    let mut s = [0u8; STAMP_LEN];
    s[..4].copy_from_slice(MAGIC);
    s[4..8].copy_from_slice(&run.to_le_bytes());
    s[8..12].copy_from_slice(&vm.to_le_bytes());
    s[12..20].copy_from_slice(&seq.to_le_bytes());
    s[20..].copy_from_slice(&check_word(run, vm, seq).to_le_bytes());
    s
}

/// The (run, VM, sequence number) a frame carries, if it carries a valid stamp.
pub fn read_stamp(frame: &[u8]) -> Option<(u32, u32, u64)> {
    let s = frame.get(frame.len().checked_sub(STAMP_LEN)?..)?;
    if &s[..4] != MAGIC {
        return None;
    }
    let run = u32::from_le_bytes(s[4..8].try_into().ok()?);
    let vm = u32::from_le_bytes(s[8..12].try_into().ok()?);
    let seq = u64::from_le_bytes(s[12..20].try_into().ok()?);
    let word = u32::from_le_bytes(s[20..].try_into().ok()?);
    (word == check_word(run, vm, seq)).then_some((run, vm, seq))
}

/// The outcome of checking one run's egress capture.
#[derive(Debug, Default)]
pub struct Checked {
    /// Frames of the run found on egress.
    pub frames: u64,
    /// Per VM and epochgate process, frames found on egress.
    pub per_incarnation: BTreeMap<(usize, u32), u64>,
    /// Per VM, required frames that did not reach egress.
    pub missing: Vec<u64>,
    pub violations: Vec<String>,
}

/// Checks `egress` (the frames captured on the uplink during run `run`, in order) against
/// what the campaign sent. `explained[vm]` is how many missing required frames of the VM the
/// drops epochgate counted can explain (`buffer-full`, `shutdown`, in processes that ended by
/// SIGTERM).
pub fn check(run: u32, vms: &[(&str, &VmModel)], egress: &[Vec<u8>], explained: &[u64]) -> Checked {
    let mut c = Checked {
        missing: vec![0; vms.len()],
        ..Checked::default()
    };
    let mut seen: Vec<Vec<bool>> = vms
        .iter()
        .map(|(_, m)| vec![false; m.frames.len()])
        .collect();
    let mut last: Vec<Option<u64>> = vec![None; vms.len()];
    let say = |c: &mut Checked, v: String| {
        if c.violations.len() < 20 {
            c.violations.push(v);
        }
    };
    for (i, f) in egress.iter().enumerate() {
        let Some((r, vm, seq)) = read_stamp(f) else {
            say(
                &mut c,
                format!(
                    "egress frame #{i} ({} bytes) is not one the campaign sent",
                    f.len()
                ),
            );
            continue;
        };
        if r != run {
            say(
                &mut c,
                format!("egress frame #{i} belongs to run {r}, not this run"),
            );
            continue;
        }
        let Some((name, m)) = vms.get(vm as usize) else {
            say(
                &mut c,
                format!("egress frame #{i} names VM {vm}, which the run does not have"),
            );
            continue;
        };
        let Some(sent) = m.frames.get(seq as usize) else {
            say(
                &mut c,
                format!("egress frame #{i}: {name} #{seq} was never sent"),
            );
            continue;
        };
        c.frames += 1;
        *c.per_incarnation
            .entry((vm as usize, sent.incarnation))
            .or_default() += 1;
        let v = vm as usize;
        if seen[v][seq as usize] {
            say(&mut c, format!("{name} #{seq} reached egress twice"));
        }
        seen[v][seq as usize] = true;
        if let Some(prev) = last[v] {
            if seq <= prev {
                say(
                    &mut c,
                    format!("{name} #{seq} reached egress after #{prev}: order broken"),
                );
            }
        }
        last[v] = Some(last[v].map_or(seq, |p| p.max(seq)));
        match sent.fate {
            Fate::Allowed => {}
            Fate::Pending => say(
                &mut c,
                format!("{name} #{seq} reached egress, but no commit ever covered its epoch"),
            ),
            Fate::Forbidden(why) => say(
                &mut c,
                format!("{name} #{seq} reached egress, but it was discarded ({why})"),
            ),
        }
    }
    for (v, (name, m)) in vms.iter().enumerate() {
        let missing: Vec<usize> = m
            .frames
            .iter()
            .enumerate()
            .filter(|(s, f)| f.required && !seen[v][*s])
            .map(|(s, _)| s)
            .collect();
        c.missing[v] = missing.len() as u64;
        if c.missing[v] > explained[v] {
            say(
                &mut c,
                format!(
                    "{name}: {} committed frame(s) never reached egress (first #{}), only {} explained by counted drops",
                    missing.len(),
                    missing[0],
                    explained[v]
                ),
            );
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(run: u32, vm: u32, seq: u64) -> Vec<u8> {
        let mut f = vec![0u8; 40];
        f.extend_from_slice(&stamp(run, vm, seq));
        f
    }

    /// a: 0,1 committed (answered); 2 sealed, never committed; 3 open.
    fn scenario() -> VmModel {
        let mut m = VmModel::new(Mode::Protected);
        m.send(0);
        m.send(0);
        m.fenced(1);
        m.commit(1, true);
        m.send(0);
        m.fenced(2);
        m.send(0);
        m
    }

    #[test]
    fn committed_frames_in_order_pass_and_uncommitted_ones_are_violations() {
        let m = scenario();
        let ok = check(7, &[("a", &m)], &[frame(7, 0, 0), frame(7, 0, 1)], &[0]);
        assert!(ok.violations.is_empty(), "{:?}", ok.violations);
        assert_eq!(ok.frames, 2);

        let leak = check(
            7,
            &[("a", &m)],
            &[frame(7, 0, 0), frame(7, 0, 1), frame(7, 0, 2)],
            &[0],
        );
        assert_eq!(leak.violations.len(), 1, "{:?}", leak.violations);
        assert!(
            leak.violations[0].contains("no commit ever covered"),
            "{:?}",
            leak.violations
        );
    }

    #[test]
    fn order_duplicates_strays_and_missing_commits_are_reported() {
        let m = scenario();
        let c = check(7, &[("a", &m)], &[frame(7, 0, 1), frame(7, 0, 0)], &[0]);
        assert!(
            c.violations.iter().any(|v| v.contains("order broken")),
            "{:?}",
            c.violations
        );
        let c = check(
            7,
            &[("a", &m)],
            &[frame(7, 0, 0), frame(7, 0, 0), frame(7, 0, 1)],
            &[0],
        );
        assert!(
            c.violations.iter().any(|v| v.contains("twice")),
            "{:?}",
            c.violations
        );
        let c = check(7, &[("a", &m)], &[frame(6, 0, 0), vec![1; 60]], &[2]);
        assert_eq!(c.violations.len(), 2, "{:?}", c.violations);
        // #1 committed and answered, absent: only a counted drop excuses it.
        let c = check(7, &[("a", &m)], &[frame(7, 0, 0)], &[0]);
        assert!(
            c.violations.iter().any(|v| v.contains("never reached")),
            "{:?}",
            c.violations
        );
        assert_eq!(c.missing, vec![1]);
        let c = check(7, &[("a", &m)], &[frame(7, 0, 0)], &[1]);
        assert!(c.violations.is_empty(), "{:?}", c.violations);
        // A stamp altered on the way is not a frame the campaign sent.
        let mut f = frame(7, 0, 0);
        let n = f.len();
        f[n - 9] ^= 1;
        assert_eq!(read_stamp(&f), None);
    }

    #[test]
    fn discards_poison_what_they_drop_and_a_later_commit_does_not_revive_it() {
        let mut m = VmModel::new(Mode::Protected);
        m.send(0); // 0
        m.fenced(1);
        m.send(0); // 1
        assert_eq!(m.discard("Discard"), 2);
        m.send(0); // 2
        m.fenced(2);
        m.commit(2, true);
        assert_eq!(m.frames[0].fate, Fate::Forbidden("Discard"));
        assert_eq!(m.frames[1].fate, Fate::Forbidden("Discard"));
        assert_eq!(m.frames[2].fate, Fate::Allowed);
        let c = check(1, &[("a", &m)], &[frame(1, 0, 0), frame(1, 0, 2)], &[0]);
        assert!(
            c.violations[0].contains("discarded (Discard)"),
            "{:?}",
            c.violations
        );
    }

    #[test]
    fn release_failure_and_kill_rules() {
        let mut m = VmModel::new(Mode::Protected);
        m.send(0); // 0: released by Unprotect{release}
        m.release_all();
        assert_eq!(m.mode, Mode::Passthrough);
        m.send(0); // 1: pass-through
        m.mode = Mode::Protected;
        m.send(0); // 2
        m.fenced(5);
        m.commit(5, false); // sent, no answer: allowed, not required
        m.mode = Mode::Failed;
        m.send(0); // 3: forbidden
        assert!(m.frames[0].required && m.frames[1].required);
        assert_eq!(m.frames[2].fate, Fate::Allowed);
        assert!(!m.frames[2].required);
        assert!(matches!(m.frames[3].fate, Fate::Forbidden(_)));
        m.killed(0);
        assert!(m.frames.iter().all(|f| !f.required));
        let c = check(1, &[("a", &m)], &[], &[0]);
        assert!(c.violations.is_empty(), "{:?}", c.violations);
    }

    #[test]
    fn a_commit_covers_every_sealed_epoch_up_to_it_and_no_later_one() {
        let mut m = VmModel::new(Mode::Protected);
        m.send(0);
        m.fenced(1);
        m.send(0);
        m.fenced(2);
        m.send(0);
        m.fenced(3);
        m.commit(2, true);
        assert_eq!(m.frames[0].fate, Fate::Allowed);
        assert_eq!(m.frames[1].fate, Fate::Allowed);
        assert_eq!(m.frames[2].fate, Fate::Pending);
        assert_eq!(m.pending(), 1);
    }
}
