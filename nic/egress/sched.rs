//! The egress scheduler: which VM's head frame goes next in a TX burst.
//!
//! The scheduler is pure: no DPDK, no clock reads, no allocation after [`Scheduler::new`]. Time
//! is always an argument (`now`, in TSC ticks) and a bucket knows its clock rate (`hz`, ticks per
//! second) from construction. The worker builds each burst as
//! `begin(now); while room { grant; pop the granted run; sent_run }`: a [`Grant`] is the run
//! of frames that frame-by-frame `pick`/`sent` would give the same VM in a row, so the per-frame
//! work is only the pop (a property test checks that both give the same schedule).
//!
//! # Token buckets ([`Bucket`], [`Regulator`])
//!
//! A bucket keeps its level *scaled by `hz`* (`level = tokens * hz`, an `i128`), so a refill adds
//! exactly `rate * elapsed_ticks` and nothing is lost to rounding: over any run, what passes is
//! exactly what the bucket held at the start plus what refill added, minus what is left.
//! Invariants:
//!
//! - `level <= burst * hz` (a full bucket stays full; a huge `elapsed` just fills it).
//! - A take *fails* iff the bucket holds less than one whole token (`level < hz`); otherwise it
//!   takes the whole amount, and a take larger than the tokens held leaves the bucket in debt
//!   ([`Take::OverConsumption`]) by less than the amount. The debt is repaid by refill before
//!   anything else passes, so the long-run rate is exact.
//! - Time going backwards is no time passing. `rate == 0`: once spent, the bucket fails forever.
//! - `rate`, `burst` (>= 1), `hz` (>= 1) and amounts are clamped to `i64::MAX`, which keeps every
//!   product below 2^127: nothing overflows, whatever the input.
//!
//! # Classes and the starvation guard
//!
//! [`Class::Released`] (frames of protected VMs whose checkpoint committed) has strict priority
//! over [`Class::Passthrough`] (unprotected VMs), except for a guard that keeps `share_ppm` parts
//! per million of the egress *bytes* for Passthrough while both classes are backlogged. A pick is
//! *contended* when both classes have an eligible VM. One balance `b` (byte·ppm) decides it: a
//! contended pick serves Passthrough iff `b > 0`; it then adds `share * len` for a Released frame
//! and subtracts `(1_000_000 - share) * len` for a Passthrough frame. Uncontended picks leave `b`
//! alone. Hence, with `L` the longest frame of a contended pick so far:
//!
//! - `b` starts at 0 and stays in `(-(1_000_000 - share) * L, share * L]` once a contended frame
//!   was sent (so it never overflows: `L < 2^32`).
//! - Over any stretch of contended picks, `1e6 * passthrough_bytes >= share * all_bytes - 1e6 * L`.
//!   (`L` must include frames before the stretch: a debt left by an earlier jumbo Passthrough
//!   frame is repaid inside the stretch.)
//! - `share == 0` is plain strict priority.
//!
//! # Deficit round robin within a class
//!
//! Each class keeps its VMs in a round (in the order they joined the class) with a pointer. When
//! the pointer arrives at an *eligible* VM (it has a head frame and its regulator lets it send)
//! the VM's turn opens: `deficit += quantum`. The VM is picked while it is eligible and
//! `deficit > 0`; each frame sent subtracts its length, so a turn ends with
//! `-len < deficit <= 0` and the debt carries into the next turn. A VM found ineligible loses its
//! turn, and any positive deficit (`deficit = min(deficit, 0)`); it gets no quantum. So VMs that
//! stay backlogged have sent, at every completed round, the same bytes to within one frame.
//!
//! # Cost
//!
//! Within a burst nothing arrives and `now` is fixed, so eligibility only ever goes from yes to
//! no. Each class keeps a *live ring* (a doubly linked ring over its round, rebuilt lazily after
//! [`Scheduler::begin`], a class change or a regulator change) from which a VM found ineligible is unlinked for the
//! rest of the burst: a burst costs O(VMs + frames), and a class without VMs costs nothing. When
//! `quantum` is smaller than the frames, whole rounds in which no VM's deficit turns positive are
//! skipped in one step (O(VMs) per such skip) instead of being walked. A burst in which no VM
//! has a frame at all is [`Scheduler::idle`]: it does what such a burst does (every turn ends, no
//! positive deficit is kept) and, once that is done, costs nothing until the next pick.

/// Clamp for rates, depths, clocks and amounts: keeps every scaled product below 2^126.
const MAX_UNITS: u64 = i64::MAX as u64;

/// Parts per million: the unit of the guard's share.
const PPM: i64 = 1_000_000;

/// The outcome of [`Bucket::take`] (and [`Regulator::charge`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    /// The bucket held no whole token: nothing was taken.
    Fail,
    /// The bucket held the whole amount, which was taken.
    Success,
    /// The bucket held some tokens but fewer than the amount; the amount was taken anyway and the
    /// bucket is in debt until refill repays it.
    OverConsumption,
}

/// A token bucket with exact integer arithmetic (see the module documentation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bucket {
    /// Units per second.
    rate: u64,
    /// Depth in units, >= 1.
    burst: u64,
    /// Clock ticks per second, >= 1.
    hz: u64,
    /// Tokens times `hz`: `-MAX_UNITS * hz < level <= burst * hz`.
    level: i128,
    /// The tick of the last refill.
    last: u64,
}

impl Bucket {
    /// A bucket of `rate` units per second (bytes/s or frames/s), depth `burst` units (at least
    /// 1), on a clock of `hz` ticks per second (at least 1); it starts full at `now`.
    pub fn new(rate: u64, burst: u64, hz: u64, now: u64) -> Bucket {
        let burst = burst.clamp(1, MAX_UNITS);
        let hz = hz.clamp(1, MAX_UNITS);
        Bucket {
            rate: rate.min(MAX_UNITS),
            burst,
            hz,
            level: i128::from(burst) * i128::from(hz),
            last: now,
        }
    }

    /// The depth, scaled: `burst * hz < 2^126`.
    fn cap(&self) -> i128 {
        i128::from(self.burst) * i128::from(self.hz)
    }

    /// Adds what the time since the last refill earned, capped at the depth.
    fn refill(&mut self, now: u64) {
        if now <= self.last {
            return;
        }
        let elapsed = now - self.last;
        self.last = now;
        let cap = self.cap();
        if self.level >= cap {
            return;
        }
        // 0 < room < 2^127 (cap < 2^126, -level < 2^126); the product fits u128 for any inputs.
        let room = (cap - self.level) as u128;
        let earned = u128::from(elapsed) * u128::from(self.rate);
        self.level = if earned >= room {
            cap
        } else {
            self.level + earned as i128
        };
    }

    /// Takes `amount` units at `now`, after refilling for the time since the last call: fails
    /// (taking nothing) if the bucket holds less than one whole token, succeeds if it holds at
    /// least `amount`, and otherwise takes `amount` anyway ([`Take::OverConsumption`]), leaving a
    /// debt that later refill repays before anything else may pass.
    pub fn take(&mut self, now: u64, amount: u64) -> Take {
        self.refill(now);
        let hz = i128::from(self.hz);
        if self.level < hz {
            return Take::Fail;
        }
        let need = i128::from(amount.min(MAX_UNITS)) * hz;
        let outcome = if self.level >= need {
            Take::Success
        } else {
            Take::OverConsumption
        };
        // level >= hz > 0 and need < 2^126: the result stays above -2^126.
        self.level -= need;
        outcome
    }

    /// Whether [`Bucket::take`] would succeed (or over-consume) at `now`: at least one whole
    /// token. The same as `tokens(now) > 0`, without a division.
    pub fn ready(&mut self, now: u64) -> bool {
        self.refill(now);
        self.level >= i128::from(self.hz)
    }

    /// Whole tokens at `now` (rounded down; negative while in debt), without taking any. `take`
    /// fails exactly when this is `<= 0`.
    pub fn tokens(&mut self, now: u64) -> i64 {
        self.refill(now);
        let whole = self.level.div_euclid(i128::from(self.hz));
        i64::try_from(whole).unwrap_or(if whole < 0 { i64::MIN } else { i64::MAX })
    }

    /// The earliest tick `>= now` at which [`Bucket::take`] would not fail; `u64::MAX` if never
    /// (`rate == 0` and less than one token left).
    pub fn ready_at(&self, now: u64) -> u64 {
        let hz = i128::from(self.hz);
        if self.level >= hz {
            return now;
        }
        if self.rate == 0 {
            return u64::MAX;
        }
        // 0 < short < 2^127. The depth is at least one token, so the cap never stops the refill
        // short of `hz`: the level reaches it exactly `ceil(short / rate)` ticks after `last`.
        let short = (hz - self.level) as u128;
        let ticks = short.div_ceil(u128::from(self.rate));
        let at = u64::try_from(u128::from(self.last) + ticks).unwrap_or(u64::MAX);
        at.max(now)
    }

    /// Units per second.
    pub fn rate(&self) -> u64 {
        self.rate
    }

    /// Depth in units.
    pub fn burst(&self) -> u64 {
        self.burst
    }
}

/// A VM's regulator: a byte bucket (from its rate in Mbit/s) and/or a frame bucket (from its
/// rate in frames/s). A frame may start only if no bucket would fail.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Regulator {
    /// Bytes per second, if limited.
    pub bytes: Option<Bucket>,
    /// Frames per second, if limited.
    pub frames: Option<Bucket>,
}

impl Regulator {
    /// Whether a frame may start at `now`: every bucket holds at least one whole token. Takes
    /// nothing (but refills).
    pub fn may_send(&mut self, now: u64) -> bool {
        self.bytes.as_mut().is_none_or(|b| b.ready(now))
            && self.frames.as_mut().is_none_or(|b| b.ready(now))
    }

    /// Charges one frame of `len` bytes that was sent at `now` to both buckets. The result is
    /// [`Take::Fail`] if a bucket failed (a contract violation after `may_send(now)` returned
    /// true; that bucket takes nothing, the other is still charged), else
    /// [`Take::OverConsumption`] if a bucket went into debt, else [`Take::Success`].
    pub fn charge(&mut self, now: u64, len: u32) -> Take {
        let b = self.bytes.as_mut().map(|b| b.take(now, u64::from(len)));
        let f = self.frames.as_mut().map(|b| b.take(now, 1));
        let all = [b, f];
        if all.contains(&Some(Take::Fail)) {
            Take::Fail
        } else if all.contains(&Some(Take::OverConsumption)) {
            Take::OverConsumption
        } else {
            Take::Success
        }
    }

    /// Charges a run of `frames` frames and `bytes` bytes sent at `now`: the same as charging
    /// each frame in turn (a bucket's level is exact), in one step.
    pub fn charge_run(&mut self, now: u64, frames: u64, bytes: u64) {
        if let Some(b) = self.bytes.as_mut() {
            b.take(now, bytes);
        }
        if let Some(f) = self.frames.as_mut() {
            f.take(now, frames);
        }
    }

    /// How much may start at `now`: (frames, bytes), each the whole tokens of its bucket
    /// (`u64::MAX` without one). A frame may start while the frames and bytes already taken are
    /// below these.
    fn allowance(&mut self, now: u64) -> (u64, u64) {
        let whole = |b: &mut Bucket| u64::try_from(b.tokens(now)).unwrap_or(0);
        (
            self.frames.as_mut().map_or(u64::MAX, whole),
            self.bytes.as_mut().map_or(u64::MAX, whole),
        )
    }

    /// The earliest tick `>= now` at which [`Regulator::may_send`] is true; `u64::MAX` if never.
    pub fn ready_at(&self, now: u64) -> u64 {
        let b = self.bytes.as_ref().map_or(now, |b| b.ready_at(now));
        let f = self.frames.as_ref().map_or(now, |b| b.ready_at(now));
        b.max(f)
    }
}

/// The traffic class of a VM's egress frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    /// Frames of a protected VM whose checkpoint committed: strict priority (but for the guard).
    Released,
    /// Frames of an unprotected VM.
    Passthrough,
}

impl Class {
    /// Index into per-class arrays.
    fn idx(self) -> usize {
        match self {
            Class::Released => 0,
            Class::Passthrough => 1,
        }
    }
}

/// A run the worker may take from one VM's queue: frame after frame while fewer than `frames`
/// frames and fewer than `bytes` bytes have been taken (a frame may start below the byte
/// budget and end above it). Then [`Scheduler::sent_run`] with what was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    pub vm: usize,
    pub frames: u64,
    pub bytes: u64,
}

/// What the scheduler sees of the VMs' queues.
pub trait Backlog {
    /// Length in bytes of VM `vm`'s next frame that may be sent now (released / pass-through), if
    /// any. Within one burst (from one [`Scheduler::begin`] to the next) nothing may arrive: a
    /// VM without a head frame must not get one, though popping a head may reveal the next.
    fn head(&self, vm: usize) -> Option<u32>;
}

/// The scheduler's tunables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchedConfig {
    /// The share of egress bytes Passthrough keeps while both classes are backlogged, in parts
    /// per million (`0..=999_999`; larger values are clamped).
    pub share_ppm: u32,
    /// Deficit round robin quantum in bytes per turn (at least 1). With a quantum of at least
    /// the largest frame, every turn of an eligible VM sends at least one frame.
    pub quantum: u32,
}

/// Counters for stats.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SchedStats {
    /// Bytes sent from Released VMs.
    pub released_bytes: u64,
    /// Frames sent from Released VMs.
    pub released_frames: u64,
    /// Bytes sent from Passthrough VMs.
    pub passthrough_bytes: u64,
    /// Frames sent from Passthrough VMs.
    pub passthrough_frames: u64,
    /// Frames sent from contended picks (both classes had an eligible VM).
    pub contended: u64,
    /// Of those, the frames for which the guard served Passthrough.
    pub guarded: u64,
}

/// One VM's scheduling state.
#[derive(Debug, Clone)]
struct Vm {
    class: Class,
    /// Position in its class's round.
    pos: usize,
    /// Deficit round robin credit in bytes.
    deficit: i64,
    reg: Option<Regulator>,
}

impl Vm {
    /// Whether VM `id` (this one) may send its head frame at `now`.
    fn eligible(&mut self, id: usize, now: u64, backlog: &impl Backlog) -> bool {
        backlog.head(id).is_some() && self.reg.as_mut().is_none_or(|r| r.may_send(now))
    }
}

/// One class's round robin.
///
/// Invariants: `ptr < members.len()` unless the round is empty (then `ptr == 0`); unless
/// `stale`, `next`/`prev` link the `live` positions into a ring, and `ptr` is one of them
/// while `live > 0`.
#[derive(Debug, Clone)]
struct Round {
    /// VM ids in round order.
    members: Vec<usize>,
    /// Position of the VM whose turn is current (`open`) or next.
    ptr: usize,
    /// Whether the turn of `members[ptr]` has begun (its quantum was added).
    open: bool,
    /// Times the pointer went from the end of the round back to its start.
    rounds: u64,
    /// The live ring: positions not found ineligible in this burst.
    next: Vec<usize>,
    prev: Vec<usize>,
    live: usize,
    /// The ring must be rebuilt before use (new burst, or the members changed).
    stale: bool,
}

impl Round {
    fn new(cap: usize) -> Round {
        Round {
            members: Vec::with_capacity(cap),
            ptr: 0,
            open: false,
            rounds: 0,
            next: Vec::with_capacity(cap),
            prev: Vec::with_capacity(cap),
            live: 0,
            stale: true,
        }
    }

    /// Links every member into the live ring (no allocation: capacity was reserved).
    fn rebuild(&mut self) {
        let n = self.members.len();
        // Neighbours by comparison, not `%`: this runs once per burst.
        self.next.clear();
        self.next
            .extend((1..=n).map(|i| if i == n { 0 } else { i }));
        self.prev.clear();
        self.prev
            .extend((0..n).map(|i| if i == 0 { n - 1 } else { i - 1 }));
        self.live = n;
        self.stale = false;
    }

    /// Ends the current turn and moves the pointer to the next live position.
    fn advance(&mut self) {
        let to = self.next[self.ptr];
        if to <= self.ptr {
            self.rounds = self.rounds.saturating_add(1);
        }
        self.ptr = to;
        self.open = false;
    }

    /// Unlinks the pointer's position from the live ring (its VM was found ineligible) and moves
    /// the pointer on.
    fn unlink(&mut self) {
        let p = self.ptr;
        self.live -= 1;
        if self.live == 0 {
            // Nothing live: the pointer still moves past the VM that lost its turn.
            self.open = false;
            if p + 1 >= self.members.len() {
                self.rounds = self.rounds.saturating_add(1);
                self.ptr = 0;
            } else {
                self.ptr = p + 1;
            }
            return;
        }
        let (a, b) = (self.prev[p], self.next[p]);
        self.next[a] = b;
        self.prev[b] = a;
        self.advance();
    }

    /// Moves the pointer to the first eligible VM from its position on, unlinking (and taking
    /// any positive deficit from) the ineligible ones. Whether one was found.
    fn find(&mut self, vms: &mut [Vm], now: u64, backlog: &impl Backlog) -> bool {
        if self.members.is_empty() {
            return false;
        }
        if self.stale {
            self.rebuild();
        }
        while self.live > 0 {
            let id = self.members[self.ptr];
            let vm = &mut vms[id];
            if vm.eligible(id, now, backlog) {
                return true;
            }
            vm.deficit = vm.deficit.min(0);
            self.unlink();
        }
        false
    }

    /// The VM to pick, given that `find` just returned true: runs turns until an eligible VM
    /// has a positive deficit.
    fn serve(
        &mut self,
        vms: &mut [Vm],
        now: u64,
        backlog: &impl Backlog,
        quantum: i64,
    ) -> Option<usize> {
        // Consecutive turns that opened without a positive deficit. Eligibility cannot change
        // while this runs, so a VM that had one stays live: once there are as many as live VMs,
        // they are the whole ring.
        let mut idle = 0usize;
        loop {
            let id = self.members[self.ptr];
            let vm = &mut vms[id];
            if !self.open {
                vm.deficit = vm.deficit.saturating_add(quantum);
                self.open = true;
                if vm.deficit <= 0 {
                    idle += 1;
                }
            }
            if vm.deficit > 0 {
                return Some(id);
            }
            self.advance();
            if idle >= self.live {
                // Every live VM just had an idle turn (and was eligible): skip ahead.
                self.skip(vms, quantum);
                idle = 0;
            }
            if !self.find(vms, now, backlog) {
                return None;
            }
        }
    }

    /// With every live VM eligible, in debt (`deficit <= 0`) and the pointer at a turn not yet
    /// open: adds at once the whole rounds of quanta after which still none would be positive.
    fn skip(&mut self, vms: &mut [Vm], quantum: i64) {
        let q = i128::from(quantum.max(1));
        // Turns each VM needs to get positive: floor(-deficit / q) + 1; skip one round less than
        // the fewest.
        let mut rounds = i128::MAX;
        let mut p = self.ptr;
        for _ in 0..self.live {
            let d = i128::from(vms[self.members[p]].deficit.min(0));
            rounds = rounds.min((-d) / q);
            p = self.next[p];
        }
        if rounds <= 0 || rounds == i128::MAX {
            return;
        }
        let add = rounds * q;
        for _ in 0..self.live {
            let vm = &mut vms[self.members[p]];
            // deficit + add <= 0 by the choice of `rounds`.
            vm.deficit = i64::try_from(i128::from(vm.deficit) + add).unwrap_or(0);
            p = self.next[p];
        }
        self.rounds = self
            .rounds
            .saturating_add(u64::try_from(rounds).unwrap_or(u64::MAX));
    }

    /// Removes the member at `pos`, keeping the pointer on the VM whose turn is current or next.
    fn remove(&mut self, pos: usize) {
        if pos >= self.members.len() {
            return;
        }
        self.members.remove(pos);
        let n = self.members.len();
        if pos < self.ptr {
            self.ptr -= 1;
        } else if pos == self.ptr {
            // The next VM slid into the pointer's position; its turn has not begun.
            self.open = false;
            if self.ptr >= n {
                if n > 0 {
                    self.rounds = self.rounds.saturating_add(1);
                }
                self.ptr = 0;
            }
        }
        self.stale = true;
    }
}

/// The last pick, until [`Scheduler::sent`].
#[derive(Debug, Clone, Copy)]
struct Pick {
    vm: usize,
    class: Class,
    contended: bool,
}

/// The egress scheduler (see the module documentation).
#[derive(Debug, Clone)]
pub struct Scheduler {
    /// Guard share in ppm, `0..PPM`.
    share: i64,
    /// DRR quantum in bytes, >= 1.
    quantum: i64,
    vms: Vec<Vm>,
    /// Indexed by [`Class::idx`].
    rounds: [Round; 2],
    /// The guard balance, byte·ppm.
    balance: i64,
    /// The `now` of the current burst.
    now: u64,
    last: Option<Pick>,
    /// VMs with a regulator.
    regulated: usize,
    stats: SchedStats,
    /// No turn is open and no deficit is positive (what a burst with nothing to send leaves):
    /// [`Scheduler::idle`] has nothing to do. Only a pick opens a turn or adds a quantum.
    settled: bool,
}

impl Scheduler {
    /// A scheduler for `vms` VMs (ids `0..vms`), all Passthrough, none regulated. `share_ppm` is
    /// clamped to 999_999 and `quantum` to at least 1.
    pub fn new(cfg: SchedConfig, vms: usize) -> Scheduler {
        let mut pt = Round::new(vms);
        pt.members.extend(0..vms);
        Scheduler {
            share: i64::from(cfg.share_ppm.min(999_999)),
            quantum: i64::from(cfg.quantum.max(1)),
            vms: (0..vms)
                .map(|pos| Vm {
                    class: Class::Passthrough,
                    pos,
                    deficit: 0,
                    reg: None,
                })
                .collect(),
            rounds: [Round::new(vms), pt],
            balance: 0,
            now: 0,
            last: None,
            regulated: 0,
            stats: SchedStats::default(),
            settled: true,
        }
    }

    /// Moves VM `vm` to `class` (at the end of that class's round, with a fresh deficit). May be
    /// called at any time, also within a burst. Unknown VMs are ignored.
    pub fn set_class(&mut self, vm: usize, class: Class) {
        let Some(v) = self.vms.get_mut(vm) else {
            return;
        };
        if v.class == class {
            return;
        }
        let (old, pos) = (v.class, v.pos);
        v.class = class;
        v.deficit = 0;
        let to = &mut self.rounds[class.idx()];
        v.pos = to.members.len();
        to.members.push(vm);
        to.stale = true;
        let from = &mut self.rounds[old.idx()];
        from.remove(pos);
        for &id in &from.members[pos.min(from.members.len())..] {
            self.vms[id].pos -= 1;
        }
    }

    /// VM `vm`'s class (Passthrough for an unknown VM).
    pub fn class(&self, vm: usize) -> Class {
        self.vms.get(vm).map_or(Class::Passthrough, |v| v.class)
    }

    /// Sets or removes VM `vm`'s regulator. Unknown VMs are ignored.
    pub fn set_regulator(&mut self, vm: usize, r: Option<Regulator>) {
        let Some(v) = self.vms.get_mut(vm) else {
            return;
        };
        match (v.reg.is_some(), r.is_some()) {
            (false, true) => self.regulated += 1,
            (true, false) => self.regulated -= 1,
            _ => {}
        }
        v.reg = r;
        // A VM unlinked for lack of tokens may now be allowed: relink everything.
        for round in &mut self.rounds {
            round.stale = true;
        }
    }

    /// VM `vm`'s regulator, if any.
    pub fn regulator(&self, vm: usize) -> Option<&Regulator> {
        self.vms.get(vm)?.reg.as_ref()
    }

    /// Starts building one burst at `now`. Until the next `begin`, the backlogs may only shrink
    /// (by the frames the worker pops after each pick).
    pub fn begin(&mut self, now: u64) {
        self.now = now;
        self.last = None;
        for round in &mut self.rounds {
            round.stale = true;
        }
    }

    /// A burst in which no VM has a frame (the caller knows every backlog is empty): leaves
    /// the scheduler as [`begin`](Self::begin) and a [`pick`](Self::pick) returning `None`
    /// would (every turn ends and no VM keeps a positive deficit; regulators, the guard and
    /// the round pointers are untouched), without visiting the VMs if no pick came since the
    /// last time. The poll loop calls it in every round with nothing released.
    pub fn idle(&mut self) {
        self.last = None;
        if self.settled {
            return;
        }
        for v in &mut self.vms {
            v.deficit = v.deficit.min(0);
        }
        for round in &mut self.rounds {
            round.open = false;
            round.stale = true;
        }
        self.settled = true;
    }

    /// The VM whose head frame goes next, or `None` if no VM may send now. Charges nothing;
    /// asking again before [`Scheduler::sent`] gives the same answer.
    pub fn pick(&mut self, backlog: &impl Backlog) -> Option<usize> {
        self.last = None;
        self.settled = false;
        let now = self.now;
        let [rel, pt] = &mut self.rounds;
        let r = rel.find(&mut self.vms, now, backlog);
        let p = pt.find(&mut self.vms, now, backlog);
        let (round, class, contended) = match (r, p) {
            (false, false) => return None,
            (true, false) => (rel, Class::Released, false),
            (false, true) => (pt, Class::Passthrough, false),
            (true, true) if self.balance > 0 => (pt, Class::Passthrough, true),
            (true, true) => (rel, Class::Released, true),
        };
        let vm = round.serve(&mut self.vms, now, backlog, self.quantum)?;
        self.last = Some(Pick {
            vm,
            class,
            contended,
        });
        Some(vm)
    }

    /// The head frame of `vm` (`len` bytes), just picked, was taken: charges the VM's deficit,
    /// its regulator (at the `now` of [`Scheduler::begin`]) and, if the pick was contended, the
    /// guard balance.
    pub fn sent(&mut self, vm: usize, len: u32) {
        self.sent_run(vm, 1, u64::from(len));
    }

    /// The next run: the VM [`pick`](Self::pick) would choose, and how much it may send in a row
    /// before frame-by-frame picking would turn to another VM (its DRR deficit, its buckets'
    /// tokens, and, on a contended pick, what the guard balance allows). `None` if no VM may
    /// send now.
    pub fn grant(&mut self, backlog: &impl Backlog) -> Option<Grant> {
        let vm = self.pick(backlog)?;
        let pick = self.last?;
        let now = self.now;
        let v = &mut self.vms[vm];
        // `serve` picked it with a positive deficit: frames may start while below it.
        let mut bytes = u64::try_from(v.deficit).unwrap_or(0);
        let mut frames = u64::MAX;
        if let Some(r) = v.reg.as_mut() {
            let (f, b) = r.allowance(now);
            frames = f;
            bytes = bytes.min(b);
        }
        if pick.contended {
            // Released goes on while b <= 0 (b grows by share per byte); Passthrough while
            // b > 0 (b shrinks by 1e6 - share per byte).
            let guard = match pick.class {
                Class::Released if self.share == 0 => u64::MAX,
                Class::Released => u64::try_from(-self.balance / self.share + 1).unwrap_or(0),
                Class::Passthrough => {
                    let w = PPM - self.share;
                    u64::try_from((self.balance + w - 1) / w).unwrap_or(0)
                }
            };
            bytes = bytes.min(guard);
        }
        Some(Grant { vm, frames, bytes })
    }

    /// `frames` frames (`bytes`) of a pass-through VM went to TX without a grant (the poll
    /// loop's direct path, taken only while nothing else waits and the VM has no regulator):
    /// counted in the stats; deficits and the starvation guard are untouched, as there was
    /// no contention to arbitrate.
    #[inline]
    pub fn bypassed(&mut self, frames: u64, bytes: u64) {
        let s = &mut self.stats;
        s.passthrough_bytes = s.passthrough_bytes.saturating_add(bytes);
        s.passthrough_frames = s.passthrough_frames.saturating_add(frames);
    }

    /// The run granted to `vm` was taken: `frames` frames, `bytes` bytes. Charges what `sent`
    /// would for each frame (deficit, regulator, guard balance, stats), in one step.
    pub fn sent_run(&mut self, vm: usize, frames: u64, bytes: u64) {
        let pick = self.last.take();
        let Some(v) = self.vms.get_mut(vm) else {
            return;
        };
        let b = i64::try_from(bytes).unwrap_or(i64::MAX);
        v.deficit = v.deficit.saturating_sub(b);
        if let Some(r) = v.reg.as_mut() {
            r.charge_run(self.now, frames, bytes);
        }
        let pick = pick.filter(|p| p.vm == vm);
        let class = pick.map_or(v.class, |p| p.class);
        let s = &mut self.stats;
        match class {
            Class::Released => {
                s.released_bytes = s.released_bytes.saturating_add(bytes);
                s.released_frames = s.released_frames.saturating_add(frames);
            }
            Class::Passthrough => {
                s.passthrough_bytes = s.passthrough_bytes.saturating_add(bytes);
                s.passthrough_frames = s.passthrough_frames.saturating_add(frames);
            }
        }
        if pick.is_some_and(|p| p.contended) {
            s.contended = s.contended.saturating_add(frames);
            self.balance = match class {
                Class::Released => self.balance.saturating_add(self.share.saturating_mul(b)),
                Class::Passthrough => {
                    s.guarded = s.guarded.saturating_add(frames);
                    self.balance
                        .saturating_sub((PPM - self.share).saturating_mul(b))
                }
            };
        }
    }

    /// The earliest tick after `now` at which some VM that has a head frame but is held back by
    /// its regulator may send; `None` if there is none (or it never will: rate 0).
    pub fn next_ready(&self, backlog: &impl Backlog, now: u64) -> Option<u64> {
        if self.regulated == 0 {
            return None;
        }
        self.vms
            .iter()
            .enumerate()
            .filter_map(|(id, v)| {
                let r = v.reg.as_ref()?;
                backlog.head(id)?;
                let at = r.ready_at(now);
                (at > now && at != u64::MAX).then_some(at)
            })
            .min()
    }

    /// Counters since construction.
    pub fn stats(&self) -> SchedStats {
        self.stats
    }

    /// The guard balance in byte·ppm: a contended pick serves Passthrough iff it is positive.
    pub fn guard_balance(&self) -> i64 {
        self.balance
    }

    /// How many times `class`'s round robin pointer has completed a full round.
    pub fn rounds(&self, class: Class) -> u64 {
        self.rounds[class.idx()].rounds
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::VecDeque;

    const HZ: u64 = 1_000_000;

    /// A model backlog: per VM, frames as (sequence number, length).
    #[derive(Debug, Default, Clone)]
    struct Queues {
        q: Vec<VecDeque<(u64, u32)>>,
        seq: u64,
    }

    impl Backlog for Queues {
        fn head(&self, vm: usize) -> Option<u32> {
            self.q.get(vm)?.front().map(|f| f.1)
        }
    }

    impl Queues {
        fn new(vms: usize) -> Queues {
            Queues {
                q: vec![VecDeque::new(); vms],
                seq: 0,
            }
        }

        fn push(&mut self, vm: usize, len: u32) {
            self.seq += 1;
            self.q[vm].push_back((self.seq, len));
        }

        fn fill(&mut self, vm: usize, n: usize, len: u32) {
            for _ in 0..n {
                self.push(vm, len);
            }
        }
    }

    fn sched(share_ppm: u32, quantum: u32, vms: usize) -> Scheduler {
        Scheduler::new(SchedConfig { share_ppm, quantum }, vms)
    }

    /// Runs one burst of at most `room` frames; returns the VMs picked in order.
    fn burst(s: &mut Scheduler, q: &mut Queues, now: u64, room: usize) -> Vec<usize> {
        s.begin(now);
        let mut out = Vec::new();
        while out.len() < room {
            let Some(vm) = s.pick(q) else { break };
            let (_, len) = q.q[vm].pop_front().expect("picked VM has a frame");
            s.sent(vm, len);
            out.push(vm);
        }
        out
    }

    fn eligible(s: &Scheduler, q: &Queues, vm: usize, class: Class, now: u64) -> bool {
        s.class(vm) == class
            && q.head(vm).is_some()
            && s.regulator(vm).cloned().is_none_or(|mut r| r.may_send(now))
    }

    // ---- buckets ----

    #[test]
    fn bucket_is_exact() {
        // 3 tokens/s on a 7 Hz clock, depth 10: one token per 7/3 ticks.
        let mut b = Bucket::new(3, 10, 7, 0);
        assert_eq!(b.take(0, 10), Take::Success);
        assert_eq!(b.tokens(0), 0);
        assert_eq!(b.take(0, 1), Take::Fail);
        assert_eq!(b.ready_at(0), 3); // 3 ticks earn 9/7 of a token
        assert_eq!(b.tokens(2), 0); // 6/7
        assert_eq!(b.tokens(3), 1); // 9/7
        assert_eq!(b.tokens(7), 3); // 21/7, nothing lost between calls
        assert_eq!(b.take(7, 3), Take::Success);
        assert_eq!(b.ready_at(7), 10);
        // 7000 ticks later: 3000 tokens earned, capped at 10.
        assert_eq!(b.tokens(7007), 10);
    }

    #[test]
    fn bucket_over_consumption_is_a_debt() {
        let mut b = Bucket::new(1000, 100, HZ, 0);
        assert_eq!(b.take(0, 1500), Take::OverConsumption);
        assert_eq!(b.tokens(0), -1400);
        assert_eq!(b.take(0, 1), Take::Fail);
        // One whole token needs 1401 tokens' worth of refill: 1.401 s.
        assert_eq!(b.ready_at(0), 1_401_000);
        assert_eq!(b.take(1_400_999, 60), Take::Fail);
        assert_eq!(b.take(1_401_000, 1), Take::Success);
        assert_eq!(b.tokens(1_401_000), 0);
    }

    #[test]
    fn bucket_rate_zero_and_extremes() {
        let mut b = Bucket::new(0, 3, HZ, 5);
        for _ in 0..3 {
            assert_eq!(b.take(5, 1), Take::Success);
        }
        assert_eq!(b.take(u64::MAX, 1), Take::Fail);
        assert_eq!(b.ready_at(u64::MAX), u64::MAX);
        assert_eq!(b.tokens(u64::MAX), 0);

        let mut b = Bucket::new(u64::MAX, 0, 0, u64::MAX);
        assert_eq!(b.burst(), 1);
        assert_eq!(b.take(0, u64::MAX), Take::OverConsumption); // time going back: no refill
        assert!(b.tokens(0) < 0);
        assert_eq!(b.ready_at(0), u64::MAX); // the refill starts at `last`, the end of time
        let mut b = Bucket::new(u64::MAX, u64::MAX, u64::MAX, 0);
        assert_eq!(b.take(0, u64::MAX), Take::Success);
        assert_eq!(b.take(u64::MAX, u64::MAX), Take::Success);
        assert_eq!(b.tokens(u64::MAX), 0);
        assert_eq!(b.ready_at(u64::MAX), u64::MAX);
        assert_eq!(b.take(u64::MAX, u64::MAX), Take::Fail);
    }

    #[test]
    fn regulator_combines_buckets() {
        let mut r = Regulator {
            bytes: Some(Bucket::new(1_000_000, 3000, HZ, 0)),
            frames: Some(Bucket::new(1000, 2, HZ, 0)),
        };
        assert!(r.may_send(0));
        assert_eq!(r.charge(0, 1000), Take::Success);
        assert_eq!(r.charge(0, 2500), Take::OverConsumption);
        assert!(!r.may_send(0));
        // Bytes: -500 -> 1 token after 501 µs; frames: 0 -> 1 after 1000 µs.
        assert_eq!(r.ready_at(0), 1000);
        assert!(!r.may_send(999));
        assert!(r.may_send(1000));
        assert_eq!(Regulator::default().ready_at(7), 7);
        assert!(Regulator::default().may_send(0));
    }

    // ---- scheduler ----

    #[test]
    fn single_passthrough_vm_fills_the_burst() {
        let mut s = sched(100_000, 1500, 1);
        let mut q = Queues::new(1);
        q.fill(0, 40, 1500);
        assert_eq!(burst(&mut s, &mut q, 0, 32), vec![0; 32]);
        assert_eq!(burst(&mut s, &mut q, 1, 32), vec![0; 8]);
        assert_eq!(s.guard_balance(), 0);
        let st = s.stats();
        assert_eq!((st.passthrough_frames, st.passthrough_bytes), (40, 60_000));
        assert_eq!((st.contended, st.released_frames), (0, 0));
        assert_eq!(s.pick(&q), None);
    }

    #[test]
    fn released_has_priority() {
        let mut s = sched(0, 1500, 2);
        s.set_class(1, Class::Released);
        let mut q = Queues::new(2);
        q.fill(0, 5, 100);
        q.fill(1, 5, 1000);
        assert_eq!(burst(&mut s, &mut q, 0, 32), [1, 1, 1, 1, 1, 0, 0, 0, 0, 0]);
        let st = s.stats();
        assert_eq!((st.contended, st.guarded), (5, 0));
        // share 0: the balance never rises.
        assert_eq!(s.guard_balance(), 0);
    }

    #[test]
    fn share_zero_is_strict_priority() {
        let mut s = sched(0, 1500, 3);
        s.set_class(2, Class::Released);
        let mut q = Queues::new(3);
        for now in 0..50 {
            q.fill(0, 3, 1518);
            q.fill(1, 3, 60);
            q.fill(2, 40, 60);
            assert!(burst(&mut s, &mut q, now, 32).iter().all(|&vm| vm == 2));
        }
        assert_eq!(s.stats().passthrough_frames, 0);
        assert!(s.guard_balance() <= 0);
    }

    #[test]
    fn guard_alternates_one_in_four() {
        let mut s = sched(250_000, 1500, 2);
        s.set_class(0, Class::Released);
        let mut q = Queues::new(2);
        q.fill(0, 200, 1000);
        q.fill(1, 200, 1000);
        let mut picks = Vec::new();
        for now in 0..4 {
            picks.extend(burst(&mut s, &mut q, now, 32));
        }
        assert_eq!(&picks[..10], &[0, 1, 0, 0, 0, 1, 0, 0, 0, 1]);
        for w in picks.windows(4) {
            assert_eq!(w.iter().filter(|&&vm| vm == 1).count(), 1, "{picks:?}");
        }
        let st = s.stats();
        assert_eq!((st.contended, st.guarded), (128, 32));
        assert_eq!(
            st.passthrough_bytes * 4,
            st.released_bytes + st.passthrough_bytes
        );
    }

    #[test]
    fn drr_three_sizes() {
        let mut s = sched(0, 1500, 3);
        let mut q = Queues::new(3);
        q.fill(0, 100, 300);
        q.fill(1, 100, 600);
        q.fill(2, 100, 1500);
        let picks = burst(&mut s, &mut q, 0, 19);
        let round1 = [0, 0, 0, 0, 0, 1, 1, 1, 2];
        let round2 = [0, 0, 0, 0, 0, 1, 1, 2];
        assert_eq!(&picks[..9], &round1);
        assert_eq!(&picks[9..17], &round2);
        // Round 3 starts with VM 0 (the burst ends inside its turn): 3000 bytes each before it.
        assert_eq!(&picks[17..], &[0, 0]);
        assert_eq!(s.rounds(Class::Passthrough), 2);
        // The rest of VM 0's turn continues in the next burst, then VM 1 (1500: three frames).
        assert_eq!(burst(&mut s, &mut q, 1, 6), [0, 0, 0, 1, 1, 1]);
    }

    #[test]
    fn an_idle_burst_ends_every_turn_and_keeps_no_positive_deficit() {
        // VM 0 sends 500 of its 1500-byte quantum in a burst with room for one frame, its last:
        // its turn is open with 1000 left. Once a burst found nothing to send, VM 0 starts
        // afresh like VM 1.
        let run = |idle: bool| {
            let mut s = sched(0, 1500, 2);
            let mut q = Queues::new(2);
            q.push(0, 500);
            assert_eq!(burst(&mut s, &mut q, 0, 1), vec![0]);
            if idle {
                s.idle();
                s.idle();
            } else {
                assert!(burst(&mut s, &mut q, 1, 32).is_empty());
            }
            q.fill(0, 8, 600);
            q.fill(1, 8, 600);
            burst(&mut s, &mut q, 2, 8)
        };
        // The pointer stays on VM 0, whose turn opens anew: 1500 -> 900 -> 300 -> -300, three
        // frames (with the 1000 kept it would be five; in its old turn, two), then VM 1's.
        let expected = vec![0, 0, 0, 1, 1, 1, 0, 0];
        assert_eq!(run(false), expected, "a burst with nothing to send");
        assert_eq!(run(true), expected, "idle");
    }

    #[test]
    fn drr_small_quantum_skips_idle_rounds() {
        let mut s = sched(0, 1, 2);
        let mut q = Queues::new(2);
        q.fill(0, 10, 9000);
        q.fill(1, 20, 60);
        // Each VM sends one frame per turn; VM 0 then needs 9000 turns, VM 1 60.
        let picks = burst(&mut s, &mut q, 0, 12);
        assert_eq!(picks, [0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]);
        assert!(s.rounds(Class::Passthrough) >= 60 * 10);
        assert!(s.rounds(Class::Passthrough) < 9000);
    }

    #[test]
    fn idle_vm_loses_its_turn_and_credit() {
        let mut s = sched(0, 3000, 2);
        let mut q = Queues::new(2);
        q.fill(0, 1, 1000);
        q.fill(1, 10, 1000);
        // VM 0 sends its only frame and is found empty with 2000 credit: it loses it.
        assert_eq!(burst(&mut s, &mut q, 0, 4), [0, 1, 1, 1]);
        q.fill(0, 10, 1000);
        // VM 1's turn ends at 0 left; VM 0's next turn starts from 0 + 3000, not 2000 + 3000.
        assert_eq!(burst(&mut s, &mut q, 1, 6), [0, 0, 0, 1, 1, 1]);
    }

    #[test]
    fn regulated_vm_waits() {
        let mut s = sched(0, 1500, 2);
        s.set_regulator(
            0,
            Some(Regulator {
                bytes: None,
                frames: Some(Bucket::new(1000, 2, HZ, 0)),
            }),
        );
        let mut q = Queues::new(2);
        q.fill(0, 10, 100);
        assert_eq!(burst(&mut s, &mut q, 0, 32), [0, 0]);
        assert_eq!(s.next_ready(&q, 0), Some(1000));
        assert!(burst(&mut s, &mut q, 999, 32).is_empty());
        assert_eq!(s.next_ready(&q, 999), Some(1000));
        // The unregulated VM goes ahead meanwhile.
        q.fill(1, 3, 100);
        assert_eq!(burst(&mut s, &mut q, 999, 32), [1, 1, 1]);
        assert_eq!(burst(&mut s, &mut q, 1000, 32), [0]);
        assert_eq!(burst(&mut s, &mut q, 5000, 32), [0, 0]);
        assert_eq!(s.next_ready(&q, 5000), Some(6000));
        // Nothing waiting, nothing to report.
        q.q[0].clear();
        assert_eq!(s.next_ready(&q, 5000), None);
        // Rate 0: never ready, so not reported either.
        s.set_regulator(
            1,
            Some(Regulator {
                bytes: Some(Bucket::new(0, 1, HZ, 0)),
                frames: None,
            }),
        );
        q.fill(1, 3, 100);
        assert_eq!(burst(&mut s, &mut q, 6000, 32), [1]);
        assert!(burst(&mut s, &mut q, u64::MAX, 32).is_empty());
        assert_eq!(s.next_ready(&q, 7000), None);
        s.set_regulator(1, None);
        assert_eq!(burst(&mut s, &mut q, 7000, 32), [1, 1]);
        assert_eq!(s.next_ready(&q, 7000), None);
    }

    #[test]
    fn class_change_mid_run() {
        let mut s = sched(0, 1000, 3);
        let mut q = Queues::new(3);
        for vm in 0..3 {
            q.fill(vm, 6, 1000);
        }
        assert_eq!(burst(&mut s, &mut q, 0, 2), [0, 1]);
        // Mid-burst: VM 1 becomes protected; the pointer of Passthrough goes on to VM 2.
        s.begin(1);
        assert_eq!(s.pick(&q), Some(2));
        s.set_class(1, Class::Released);
        assert_eq!(s.class(1), Class::Released);
        let mut picks = Vec::new();
        while let Some(vm) = s.pick(&q) {
            let (_, len) = q.q[vm].pop_front().unwrap();
            s.sent(vm, len);
            picks.push(vm);
        }
        assert_eq!(picks, [1, 1, 1, 1, 1, 2, 0, 2, 0, 2, 0, 2, 0, 2, 0, 2]);
        // Back to Passthrough: it joins the end of the round.
        s.set_class(1, Class::Passthrough);
        for vm in 0..3 {
            q.fill(vm, 2, 1000);
        }
        assert_eq!(burst(&mut s, &mut q, 2, 32), [0, 2, 1, 0, 2, 1]);
        // Removing the VM whose turn is open, then the last one: nothing breaks.
        q.fill(2, 2, 1000);
        s.begin(3);
        assert_eq!(s.pick(&q), Some(2));
        s.set_class(2, Class::Released);
        s.set_class(0, Class::Released);
        s.set_class(1, Class::Released);
        assert_eq!(s.pick(&q), Some(2));
        s.set_class(7, Class::Released); // unknown VM: ignored
        assert_eq!(s.class(7), Class::Passthrough);
    }

    /// Counts `head` calls, to check the cost of a burst.
    struct Counted<'a>(&'a Queues, std::cell::Cell<usize>);

    impl Backlog for Counted<'_> {
        fn head(&self, vm: usize) -> Option<u32> {
            self.1.set(self.1.get() + 1);
            self.0.head(vm)
        }
    }

    #[test]
    fn burst_cost_is_linear() {
        // One busy VM among 200 idle ones of its class, one frame per turn, and a regulated
        // Released VM that is out of tokens: O(VMs + frames) per burst, not O(VMs) per frame.
        let mut s = sched(100_000, 1500, 202);
        s.set_class(201, Class::Released);
        s.set_regulator(
            201,
            Some(Regulator {
                bytes: None,
                frames: Some(Bucket::new(1, 1, HZ, 0)),
            }),
        );
        let mut q = Queues::new(202);
        q.fill(7, 100, 1500);
        q.fill(201, 100, 1500);
        for now in 0..3 {
            s.begin(now);
            let c = Counted(&q, std::cell::Cell::new(0));
            let mut picks = Vec::new();
            while picks.len() < 32 {
                let Some(vm) = s.pick(&c) else { break };
                s.sent(vm, 1500);
                picks.push(vm);
            }
            let calls = c.1.get();
            for &vm in &picks {
                q.q[vm].pop_front();
            }
            let expect: &[usize] = if now == 0 { &[201] } else { &[] };
            assert_eq!(&picks[..expect.len()], expect);
            assert!(picks[expect.len()..].iter().all(|&vm| vm == 7));
            assert_eq!(picks.len(), 32);
            assert!(calls <= 202 + 3 * 32, "{calls} head calls");
        }
        // The common case: one pass-through VM, nothing else; two looks per frame at most.
        let mut s = sched(100_000, 1500, 1);
        let mut q = Queues::new(1);
        q.fill(0, 40, 1500);
        s.begin(0);
        let c = Counted(&q, std::cell::Cell::new(0));
        for _ in 0..32 {
            let vm = s.pick(&c).unwrap();
            s.sent(vm, 1500);
        }
        assert!(c.1.get() <= 2 * 32, "{} head calls", c.1.get());
    }

    // ---- properties ----

    /// A regulator for the simulations (hz = 1 MHz).
    fn reg() -> impl Strategy<Value = Option<Regulator>> {
        let bytes = (0u64..=20_000_000, 1u64..=30_000).prop_map(|(r, b)| Bucket::new(r, b, HZ, 0));
        let frames = (0u64..=200_000, 1u64..=40).prop_map(|(r, b)| Bucket::new(r, b, HZ, 0));
        prop_oneof![
            3 => Just(None),
            1 => (proptest::option::of(bytes), proptest::option::of(frames))
                .prop_map(|(bytes, frames)| Some(Regulator { bytes, frames })),
        ]
    }

    fn share() -> impl Strategy<Value = u32> {
        prop_oneof![Just(0), Just(250_000), 0u32..1_000_000, Just(999_999)]
    }

    fn quantum() -> impl Strategy<Value = u32> {
        prop_oneof![1u32..=300, 1500u32..=3000, Just(9000)]
    }

    /// A frame length: 60..=1518, or 60..=9000 with jumbo frames.
    fn len(raw: u32, jumbo: bool) -> u32 {
        if jumbo {
            raw
        } else {
            60 + (raw - 60) % 1459
        }
    }

    #[derive(Debug, Clone)]
    struct Step {
        dt: u64,
        room: usize,
        arrivals: Vec<(usize, u32)>,
        /// A class change (VM, to Released, before which pick of the burst).
        switch: Option<(usize, bool, usize)>,
    }

    fn step() -> impl Strategy<Value = Step> {
        (
            0u64..=3000,
            1usize..=32,
            prop::collection::vec((0usize..8, 60u32..=9000), 0..24),
            proptest::option::weighted(0.2, (0usize..8, any::<bool>(), 0usize..=32)),
        )
            .prop_map(|(dt, room, arrivals, switch)| Step {
                dt,
                room,
                arrivals,
                switch,
            })
    }

    fn class_of(released: bool) -> Class {
        if released {
            Class::Released
        } else {
            Class::Passthrough
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Runs are the same schedule: draining each `grant` frame by frame gives exactly the
        /// frames (and guard balance and stats) that `pick`/`sent` one frame at a time give,
        /// over random classes, regulators, arrivals and shares. And `idle` is a burst with
        /// nothing to send: the run side calls it instead of a burst whenever every backlog is
        /// empty (as the poll loop does), and nothing that follows differs.
        #[test]
        fn grants_equal_frame_by_frame_picks(
            share in share(),
            quantum in quantum(),
            jumbo in any::<bool>(),
            classes in prop::collection::vec(any::<bool>(), 1..=8),
            regs in prop::collection::vec(reg(), 8),
            steps in prop::collection::vec(step(), 1..60),
        ) {
            let n = classes.len();
            let mut a = sched(share, quantum, n);
            for (vm, &r) in classes.iter().enumerate() {
                a.set_class(vm, class_of(r));
                a.set_regulator(vm, regs[vm].clone());
            }
            let mut b = a.clone();
            let (mut qa, mut qb) = (Queues::new(n), Queues::new(n));
            let mut now = 0u64;
            for st in &steps {
                now += st.dt;
                for &(vm, raw) in &st.arrivals {
                    qa.push(vm % n, len(raw, jumbo));
                    qb.push(vm % n, len(raw, jumbo));
                }
                let by_frame = burst(&mut a, &mut qa, now, st.room);
                let mut by_run = Vec::new();
                if qb.q.iter().all(VecDeque::is_empty) {
                    b.idle();
                    prop_assert_eq!(&by_run, &by_frame);
                    continue;
                }
                b.begin(now);
                while by_run.len() < st.room {
                    let Some(g) = b.grant(&qb) else { break };
                    prop_assert!(g.frames > 0 && g.bytes > 0, "empty grant {:?}", g);
                    let (mut frames, mut bytes) = (0u64, 0u64);
                    while by_run.len() < st.room && frames < g.frames && bytes < g.bytes {
                        let Some((_, l)) = qb.q[g.vm].pop_front() else { break };
                        frames += 1;
                        bytes += u64::from(l);
                        by_run.push(g.vm);
                    }
                    b.sent_run(g.vm, frames, bytes);
                }
                prop_assert_eq!(&by_run, &by_frame);
                prop_assert_eq!(b.guard_balance(), a.guard_balance());
                prop_assert_eq!(b.stats(), a.stats());
            }
        }

        /// Properties 1, 2 and 6 over random classes, regulators, arrivals and class changes:
        /// every pick is eligible and None means nothing is; the guard decides contended picks
        /// exactly by the sign of the balance; the guarantee holds over every stretch of
        /// contended picks; uncontended picks leave the balance alone; FIFO per VM; stats add up.
        #[test]
        fn picks_follow_the_rules(
            share in share(),
            quantum in quantum(),
            jumbo in any::<bool>(),
            classes in prop::collection::vec(any::<bool>(), 1..=8),
            regs in prop::collection::vec(reg(), 8),
            steps in prop::collection::vec(step(), 1..60),
        ) {
            let n = classes.len();
            let mut s = sched(share, quantum, n);
            for (vm, &r) in classes.iter().enumerate() {
                s.set_class(vm, class_of(r));
                s.set_regulator(vm, regs[vm].clone());
            }
            let mut q = Queues::new(n);
            let mut last_seq = vec![0u64; n];
            let mut now = 0u64;
            let s_ppm = i128::from(share.min(999_999));
            // Prefix form of the guard: f = 1e6 * pt_bytes - share * all_bytes over contended
            // picks; for i < j: f_j - f_i >= -1e6 * (longest contended frame up to j).
            let (mut f, mut f_max, mut longest) = (0i128, 0i128, 0u32);
            let (mut contended, mut guarded) = (0u64, 0u64);
            let (mut rel_bytes, mut pt_bytes) = (0u64, 0u64);
            for st in &steps {
                now += st.dt;
                for &(vm, raw) in &st.arrivals {
                    q.push(vm % n, len(raw, jumbo));
                }
                let mut switch = st.switch;
                s.begin(now);
                for i in 0..st.room {
                    if let Some((vm, r, _)) = switch.filter(|sw| sw.2 == i) {
                        s.set_class(vm % n, class_of(r));
                        switch = None;
                    }
                    let r_ok = (0..n).any(|vm| eligible(&s, &q, vm, Class::Released, now));
                    let p_ok = (0..n).any(|vm| eligible(&s, &q, vm, Class::Passthrough, now));
                    let b = s.guard_balance();
                    let Some(vm) = s.pick(&q) else {
                        prop_assert!(!r_ok && !p_ok, "None while a VM is eligible");
                        break;
                    };
                    let class = s.class(vm);
                    prop_assert!(eligible(&s, &q, vm, class, now), "picked ineligible VM {vm}");
                    prop_assert_eq!(s.pick(&q), Some(vm), "pick is not repeatable");
                    let (seq, l) = q.q[vm].pop_front().unwrap();
                    prop_assert!(seq > last_seq[vm]);
                    last_seq[vm] = seq;
                    s.sent(vm, l);
                    match class {
                        Class::Released => rel_bytes += u64::from(l),
                        Class::Passthrough => pt_bytes += u64::from(l),
                    }
                    if r_ok && p_ok {
                        // Priority: Passthrough while Released is eligible only if b > 0
                        // (and, the mechanism being exact, always then).
                        prop_assert_eq!(class == Class::Passthrough, b > 0, "b = {}", b);
                        contended += 1;
                        longest = longest.max(l);
                        if class == Class::Passthrough {
                            guarded += 1;
                            f += 1_000_000 * i128::from(l);
                        }
                        f -= s_ppm * i128::from(l);
                        prop_assert!(
                            f + 1_000_000 * i128::from(longest) >= f_max,
                            "guard violated: f {} max {} longest {}", f, f_max, longest
                        );
                        f_max = f_max.max(f);
                        prop_assert!(s.guard_balance() <= s_ppm as i64 * i64::from(longest));
                        prop_assert!(s.guard_balance() > -(1_000_000 - s_ppm as i64) * i64::from(longest));
                    } else {
                        prop_assert_eq!(class, if r_ok { Class::Released } else { Class::Passthrough });
                        prop_assert_eq!(s.guard_balance(), b);
                    }
                }
                if let Some((vm, r, _)) = switch {
                    s.set_class(vm % n, class_of(r));
                }
            }
            let st = s.stats();
            prop_assert_eq!((st.contended, st.guarded), (contended, guarded));
            prop_assert_eq!((st.released_bytes, st.passthrough_bytes), (rel_bytes, pt_bytes));
        }

        /// Property 3: VMs of one class, continuously backlogged and unregulated, have sent the
        /// same bytes to within one frame whenever the round pointer completes a round.
        #[test]
        fn drr_is_fair(
            quantum in quantum(),
            jumbo in any::<bool>(),
            released in any::<bool>(),
            sizes in prop::collection::vec(prop::collection::vec(60u32..=9000, 1..5), 2..=6),
            rooms in prop::collection::vec(1usize..=32, 1..60),
        ) {
            let n = sizes.len();
            let class = class_of(released);
            let mut s = sched(500_000, quantum, n);
            let mut q = Queues::new(n);
            let sizes: Vec<Vec<u32>> = sizes
                .iter()
                .map(|v| v.iter().map(|&raw| len(raw, jumbo)).collect())
                .collect();
            let longest = sizes.iter().flatten().copied().max().unwrap();
            let mut next = vec![0usize; n];
            for vm in 0..n {
                s.set_class(vm, class);
            }
            let mut sent = vec![0u64; n];
            let mut rounds = s.rounds(class);
            for (now, &room) in rooms.iter().enumerate() {
                // Keep everyone backlogged through the burst.
                for vm in 0..n {
                    while q.q[vm].len() < 33 {
                        let l = sizes[vm][next[vm] % sizes[vm].len()];
                        next[vm] += 1;
                        q.push(vm, l);
                    }
                }
                s.begin(now as u64);
                for _ in 0..room {
                    let vm = s.pick(&q).unwrap();
                    if s.rounds(class) != rounds {
                        rounds = s.rounds(class);
                        let (lo, hi) = (sent.iter().min().unwrap(), sent.iter().max().unwrap());
                        prop_assert!(hi - lo < u64::from(longest), "{:?} longest {}", sent, longest);
                    }
                    let (_, l) = q.q[vm].pop_front().unwrap();
                    s.sent(vm, l);
                    sent[vm] += u64::from(l);
                }
            }
        }

        /// Property 4: a bucket never holds more than its depth, never owes more than one take,
        /// and `ready_at` is exactly the first tick at which a take would not fail.
        #[test]
        fn bucket_bounds(
            rate in prop_oneof![Just(0u64), 1u64..=10_000, 1u64..=1_000_000_000, any::<u64>()],
            depth in prop_oneof![0u64..=100, 0u64..=10_000, any::<u64>()],
            hz in prop_oneof![1u64..=1000, 1u64..=1_000_000_000, any::<u64>()],
            start in any::<u64>(),
            ops in prop::collection::vec(
                (
                    prop_oneof![3 => 0u64..=2000, 1 => any::<u64>()],
                    prop::bool::weighted(0.2),
                    prop_oneof![0u64..=3, 0u64..=20_000, any::<u64>()],
                ),
                1..50,
            ),
        ) {
            let mut b = Bucket::new(rate, depth, hz, start);
            let mut now = start;
            let mut biggest = 0u64;
            for (dt, back, amount) in ops {
                now = if back { now.saturating_sub(dt) } else { now.saturating_add(dt) };
                let before = b.clone().tokens(now);
                prop_assert_eq!(b.clone().ready(now), before > 0);
                let got = b.take(now, amount);
                prop_assert_eq!(got == Take::Fail, before <= 0);
                if got != Take::Fail {
                    biggest = biggest.max(amount.min(MAX_UNITS));
                    prop_assert_eq!(got == Take::Success, before as u64 >= amount.min(MAX_UNITS));
                }
                let t = b.tokens(now);
                prop_assert!(t <= b.burst() as i64);
                prop_assert!(i128::from(t) >= -(biggest as i128));
                let at = b.ready_at(now);
                prop_assert!(at >= now);
                if at != u64::MAX {
                    prop_assert!(b.clone().tokens(at) > 0);
                }
                if at > now {
                    prop_assert!(b.clone().tokens(at - 1) <= 0);
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// Property 5: an always-backlogged VM behind a byte or a frame bucket sends, over 10 s of
        /// simulated time in random steps, the configured rate to within 1% (plus the depth and
        /// one frame), in FIFO order.
        #[test]
        fn long_run_rate(
            by_bytes in any::<bool>(),
            released in any::<bool>(),
            byte_rate in 50_000u64..=1_000_000,
            frame_rate in 50u64..=1_500,
            depth_ms in 2u64..=20,
            lens in prop::collection::vec(60u32..=1518, 1..16),
            seed in any::<u64>(),
        ) {
            let rate = if by_bytes { byte_rate } else { frame_rate };
            // Deep enough to bridge the longest step (2 ms) plus a frame.
            let depth = (rate * depth_ms).div_ceil(1000) + if by_bytes { 1518 } else { 1 };
            let bucket = Bucket::new(rate, depth, HZ, 0);
            let reg = if by_bytes {
                Regulator { bytes: Some(bucket), frames: None }
            } else {
                Regulator { bytes: None, frames: Some(bucket) }
            };
            let mut s = sched(100_000, 1500, 1);
            s.set_class(0, class_of(released));
            s.set_regulator(0, Some(reg));
            let mut q = Queues::new(1);
            let (mut now, mut rng, mut i) = (0u64, seed | 1, 0usize);
            let (mut units, mut last_seq) = (0u64, 0u64);
            let end = 10 * HZ;
            while now < end {
                // xorshift: steps of 1..=2000 ticks (1 µs each).
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                now += 1 + rng % 2000;
                while q.q[0].len() < 32 {
                    q.push(0, lens[i % lens.len()]);
                    i += 1;
                }
                s.begin(now);
                for _ in 0..32 {
                    let Some(vm) = s.pick(&q) else { break };
                    let (seq, l) = q.q[vm].pop_front().unwrap();
                    prop_assert!(seq > last_seq);
                    last_seq = seq;
                    s.sent(vm, l);
                    units += if by_bytes { u64::from(l) } else { 1 };
                }
                if let Some(at) = s.next_ready(&q, now) {
                    prop_assert!(at > now);
                }
            }
            // Exact bound: what passed <= depth + earned + (one frame of debt).
            let earned = u128::from(rate) * u128::from(now) / u128::from(HZ);
            let frame = if by_bytes { 1518 } else { 1 };
            prop_assert!(u128::from(units) < u128::from(depth) + earned + frame, "{} vs {}", units, earned);
            prop_assert!(u128::from(units) * 100 >= earned * 99, "{} vs {}", units, earned);
        }
    }
}
