//! When to ask the VMM for a checkpoint: per protected VM and open epoch, request one as soon as
//! an immediate frame arrives or the held frames reach the high-water mark, or once a deferral
//! armed by housekeeping frames runs out; never sooner than the minimum interval after the last
//! fence, and at most once per epoch.
//!
//! The machine is pure: it allocates nothing, makes no syscalls and never reads a clock. Every
//! method takes the current time `now` (nanoseconds from a monotonic clock); calls are expected
//! with non-decreasing `now`, and all arithmetic saturates, so times near `u64::MAX` are safe.
//!
//! # Rules (per epoch, i.e. between two fences)
//!
//! 1. An [`FrameKind::Immediate`] frame requests now ([`Why::ImmediateFrame`]).
//! 2. The first [`FrameKind::Deferrable`] frame arms a deadline `now + defer_delay`; each later
//!    deferrable frame that arrives *before* the deadline moves it to its own
//!    `now + defer_delay`, but never past `first + max_defer`. Once `now >= deadline`, the
//!    deferral has expired and a request is due ([`Why::DeferralExpired`]); [`RequestPolicy::poll`]
//!    observes this, and so does [`RequestPolicy::on_frame`] (which first runs the timers, see
//!    below).
//! 3. An immediate frame cancels an armed (not yet expired) deferral and requests now.
//! 4. A frame after which `held >= high_water_frames` (or held bytes `>= high_water_bytes`)
//!    requests now ([`Why::HighWater`]); 0 disables each. The worker counts what the VM's
//!    buffer holds, so the mark sits below its `max_held_frames` / `max_held_bytes`. If one frame is both immediate and at the
//!    high-water mark, the reason is [`Why::ImmediateFrame`].
//! 5. No request is emitted before `last_fence + min_interval`. A request that becomes due
//!    earlier is *postponed*, keeping its reason, and emitted by the first `poll` (or `on_frame`)
//!    with `now >= last_fence + min_interval`.
//! 6. [`RequestPolicy::on_fence`] starts a new epoch: nothing armed, nothing postponed, nothing
//!    requested, and the fence time becomes the base of the minimum interval. A postponed request
//!    that was not emitted before the fence is dropped: the checkpoint it asked for happened.
//!
//! **At most one request per epoch.** Once a request is emitted (or postponed), every later cause
//! in the same epoch is ignored, including a high-water crossing after a deferral-expired
//! request: the VMM already owes a checkpoint, and only the fence that ends the epoch frees the
//! held frames, so a second request would carry no new information. Memory pressure while the
//! VMM is slow is the egress queue's business (its own limits), not a reason to repeat. Likewise a
//! postponed request keeps the reason of the first cause.
//!
//! **Timers run first.** `on_frame(now, ..)` behaves like `poll(now)` followed by the frame, so
//! the outcome does not depend on whether the worker happened to poll just before: a frame that
//! arrives at or after an unobserved deferral deadline finds the deferral already expired (the
//! reason is then [`Why::DeferralExpired`], and a deferrable frame does not extend it), and a
//! postponed request whose time has come is emitted by the frame's call. Likewise a deferral that
//! is expired as soon as it is armed (`defer_delay_ns == 0`) is due in the frame's own call.

/// Nanoseconds per millisecond.
const MS: u64 = 1_000_000;

/// The tunables of [`RequestPolicy`], in nanoseconds (and frames).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PolicyConfig {
    /// How long the first deferrable frame (and each later one, up to `max_defer_ns`) may wait.
    pub defer_delay_ns: u64,
    /// The longest a deferral may last, counted from the first deferrable frame of the epoch.
    /// Must be `>= defer_delay_ns` (see [`PolicyConfig::validate`]).
    pub max_defer_ns: u64,
    /// The minimum time between a fence and the next request (0: no minimum).
    pub min_interval_ns: u64,
    /// Request as soon as this many frames are held (0: no high-water mark in frames).
    pub high_water_frames: u64,
    /// Request as soon as this many bytes are held (0: no high-water mark in bytes).
    pub high_water_bytes: u64,
}

impl Default for PolicyConfig {
    /// Defer 5 ms, at most 10 ms; no minimum interval; no high-water mark.
    fn default() -> Self {
        PolicyConfig {
            defer_delay_ns: 5 * MS,
            max_defer_ns: 10 * MS,
            min_interval_ns: 0,
            high_water_frames: 0,
            high_water_bytes: 0,
        }
    }
}

impl PolicyConfig {
    /// Checks the configuration; a config loader calls this and reports the message.
    ///
    /// The only constraint is `max_defer_ns >= defer_delay_ns`. The message names the fields in
    /// milliseconds (`max_defer_ms (3) is less than defer_delay_ms (5)`) when both values are
    /// whole milliseconds, otherwise in nanoseconds.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_defer_ns >= self.defer_delay_ns {
            return Ok(());
        }
        if self.max_defer_ns % MS == 0 && self.defer_delay_ns % MS == 0 {
            Err(format!(
                "max_defer_ms ({}) is less than defer_delay_ms ({})",
                self.max_defer_ns / MS,
                self.defer_delay_ns / MS
            ))
        } else {
            Err(format!(
                "max_defer_ns ({}) is less than defer_delay_ns ({})",
                self.max_defer_ns, self.defer_delay_ns
            ))
        }
    }

    /// The configuration [`RequestPolicy`] actually uses: `max_defer_ns` raised to
    /// `defer_delay_ns` if it is smaller (a deferral always lasts at least `defer_delay_ns`).
    fn clamped(self) -> Self {
        PolicyConfig {
            max_defer_ns: self.max_defer_ns.max(self.defer_delay_ns),
            ..self
        }
    }
}

/// How the classifier labelled a held frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// Housekeeping (TCP ACKs, non-final fragments): may wait for a deferral to run out.
    Deferrable,
    /// Anything else: a checkpoint should be requested now.
    Immediate,
}

/// Why a checkpoint is requested; maps 1:1 to the wire's
/// [`RequestReason`](vmm_shim::proto::RequestReason).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Why {
    /// An immediate frame arrived.
    ImmediateFrame,
    /// The deferral armed by deferrable frames ran out.
    DeferralExpired,
    /// The held frames reached the high-water mark.
    HighWater,
}

impl From<Why> for vmm_shim::proto::RequestReason {
    fn from(why: Why) -> Self {
        use vmm_shim::proto::RequestReason;
        match why {
            Why::ImmediateFrame => RequestReason::ImmediateFrame,
            Why::DeferralExpired => RequestReason::DeferralExpired,
            Why::HighWater => RequestReason::HighWater,
        }
    }
}

/// A checkpoint request to send to the VMM now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// Why it is requested.
    pub why: Why,
    /// The `now` of the call that emitted it.
    pub at: u64,
}

/// An armed deferral.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Deferral {
    /// When the first deferrable frame of the epoch arrived.
    first: u64,
    /// When the deferral runs out: `<= first + max_defer`.
    deadline: u64,
}

/// The request state machine of one protected VM's open epoch (see the [module docs](self)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestPolicy {
    /// The effective (clamped) configuration.
    cfg: PolicyConfig,
    /// When the epoch opened (last fence, or protection).
    fenced_at: u64,
    /// A request was emitted in this epoch.
    requested: bool,
    /// The armed deferral, if any (never together with `postponed` or `requested`).
    deferral: Option<Deferral>,
    /// A request that became due before `fenced_at + min_interval`, with its reason.
    postponed: Option<Why>,
}

impl RequestPolicy {
    /// A machine for a VM whose epoch opened (was last fenced, or protected) at `now`.
    ///
    /// An invalid `cfg` (see [`PolicyConfig::validate`]) is a bug of the caller: it trips a
    /// debug assertion, and in release builds `max_defer_ns` is raised to `defer_delay_ns`.
    pub fn new(cfg: PolicyConfig, now: u64) -> Self {
        debug_assert!(cfg.validate().is_ok(), "{:?}", cfg.validate());
        RequestPolicy {
            cfg: cfg.clamped(),
            fenced_at: now,
            requested: false,
            deferral: None,
            postponed: None,
        }
    }

    /// A frame was appended to the open epoch; `held` = frames held after appending it. Returns a
    /// request to emit now, if any.
    ///
    /// Runs the timers first (as [`poll`](Self::poll) would), so a request that was due at `now`
    /// anyway is returned even if the frame itself would not cause one.
    pub fn on_frame(&mut self, now: u64, kind: FrameKind, held: u64) -> Option<Request> {
        self.on_frame_sized(now, kind, held, 0)
    }

    /// [`on_frame`](Self::on_frame) with the bytes held too, for a high-water mark in bytes.
    pub fn on_frame_sized(
        &mut self,
        now: u64,
        kind: FrameKind,
        held: u64,
        held_bytes: u64,
    ) -> Option<Request> {
        if let Some(request) = self.poll(now) {
            return Some(request);
        }
        if self.requested || self.postponed.is_some() {
            return None;
        }
        let high_water = (self.cfg.high_water_frames != 0 && held >= self.cfg.high_water_frames)
            || (self.cfg.high_water_bytes != 0 && held_bytes >= self.cfg.high_water_bytes);
        match kind {
            FrameKind::Immediate => self.due(now, Why::ImmediateFrame),
            FrameKind::Deferrable if high_water => self.due(now, Why::HighWater),
            FrameKind::Deferrable => {
                let wanted = now.saturating_add(self.cfg.defer_delay_ns);
                self.deferral = Some(match self.deferral {
                    None => Deferral {
                        first: now,
                        deadline: wanted,
                    },
                    Some(d) => {
                        let cap = d.first.saturating_add(self.cfg.max_defer_ns);
                        Deferral {
                            first: d.first,
                            deadline: d.deadline.max(wanted.min(cap)),
                        }
                    }
                });
                // Only with `defer_delay_ns == 0` (or saturated at `u64::MAX`): due at once.
                self.poll(now)
            }
        }
    }

    /// Timers: the deferral deadline and postponed requests. Call when
    /// `now >= self.next_wakeup()` (cheap to call any time).
    pub fn poll(&mut self, now: u64) -> Option<Request> {
        if self.requested {
            return None;
        }
        if let Some(why) = self.postponed {
            return self.due(now, why);
        }
        match self.deferral {
            Some(d) if now >= d.deadline => self.due(now, Why::DeferralExpired),
            _ => None,
        }
    }

    /// The earliest `now` at which [`poll`](Self::poll) may emit something (None if nothing is
    /// pending). The worker compares this with its TSC clock once per loop.
    ///
    /// With a deferral armed this is `max(deadline, last_fence + min_interval)`: polling at the
    /// deadline itself would only postpone.
    pub fn next_wakeup(&self) -> Option<u64> {
        if self.requested {
            None
        } else if self.postponed.is_some() {
            Some(self.earliest())
        } else {
            self.deferral.map(|d| d.deadline.max(self.earliest()))
        }
    }

    /// The epoch was sealed at `now`: reset for the next one.
    pub fn on_fence(&mut self, now: u64) {
        self.fenced_at = now;
        self.requested = false;
        self.deferral = None;
        self.postponed = None;
    }

    /// Whether a request was already emitted in this epoch.
    pub fn requested(&self) -> bool {
        self.requested
    }

    /// The pending deadline if deferral is armed (None once it expired, was cancelled or the
    /// epoch requested or postponed a request).
    pub fn deadline(&self) -> Option<u64> {
        self.deferral.map(|d| d.deadline)
    }

    /// The effective configuration (`max_defer_ns` clamped to at least `defer_delay_ns`).
    pub fn config(&self) -> PolicyConfig {
        self.cfg
    }

    /// When the open epoch began (the last fence, or the creation time).
    pub fn fenced_at(&self) -> u64 {
        self.fenced_at
    }

    /// No request before this time in the open epoch.
    fn earliest(&self) -> u64 {
        self.fenced_at.saturating_add(self.cfg.min_interval_ns)
    }

    /// A request for `why` is due at `now` (the caller checked that none was emitted yet): emit
    /// it, or postpone it until the minimum interval has passed.
    fn due(&mut self, now: u64, why: Why) -> Option<Request> {
        self.deferral = None;
        if now >= self.earliest() {
            self.postponed = None;
            self.requested = true;
            Some(Request { why, at: now })
        } else {
            self.postponed = Some(why);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const US: u64 = 1_000;

    fn cfg(defer_ms: u64, max_ms: u64, min_ms: u64, hw: u64) -> PolicyConfig {
        PolicyConfig {
            defer_delay_ns: defer_ms * MS,
            max_defer_ns: max_ms * MS,
            min_interval_ns: min_ms * MS,
            high_water_frames: hw,
            high_water_bytes: 0,
        }
    }

    fn req(why: Why, at: u64) -> Option<Request> {
        Some(Request { why, at })
    }

    #[test]
    fn default_config_is_5ms_10ms_0_0() {
        let c = PolicyConfig::default();
        assert_eq!(c, cfg(5, 10, 0, 0));
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(RequestPolicy::new(c, 0).config(), c);
    }

    #[test]
    fn validate_rejects_max_below_defer() {
        assert_eq!(
            cfg(5, 3, 0, 0).validate(),
            Err("max_defer_ms (3) is less than defer_delay_ms (5)".to_string())
        );
        let odd = PolicyConfig {
            max_defer_ns: 4_999_999,
            ..cfg(5, 0, 0, 0)
        };
        assert_eq!(
            odd.validate(),
            Err("max_defer_ns (4999999) is less than defer_delay_ns (5000000)".to_string())
        );
        assert_eq!(cfg(5, 5, 0, 0).validate(), Ok(()));
        assert_eq!(cfg(0, 0, 7, 3).validate(), Ok(()));
    }

    /// In debug builds an invalid config trips the assertion; in release builds it is clamped.
    #[test]
    #[cfg_attr(debug_assertions, should_panic(expected = "max_defer_ms (3)"))]
    fn new_clamps_max_defer_below_delay() {
        let mut p = RequestPolicy::new(cfg(5, 3, 0, 0), 0);
        assert_eq!(p.config(), cfg(5, 5, 0, 0));
        assert_eq!(p.on_frame(0, FrameKind::Deferrable, 1), None);
        assert_eq!(p.on_frame(4 * MS, FrameKind::Deferrable, 2), None);
        assert_eq!(p.deadline(), Some(5 * MS));
        assert_eq!(p.poll(5 * MS), req(Why::DeferralExpired, 5 * MS));
    }

    #[test]
    fn deferral_extends_and_caps_at_max_defer() {
        let mut p = RequestPolicy::new(PolicyConfig::default(), 0);
        assert_eq!(p.next_wakeup(), None);
        for (i, (at_ms, deadline_ms)) in [(0, 5), (3, 8), (6, 10), (9, 10)].into_iter().enumerate()
        {
            assert_eq!(p.poll(at_ms * MS), None);
            assert_eq!(
                p.on_frame(at_ms * MS, FrameKind::Deferrable, i as u64 + 1),
                None
            );
            assert_eq!(
                p.deadline(),
                Some(deadline_ms * MS),
                "after frame at {at_ms} ms"
            );
            assert_eq!(p.next_wakeup(), Some(deadline_ms * MS));
        }
        assert_eq!(p.poll(10 * MS - US), None); // 9.999 ms
        assert!(!p.requested());
        assert_eq!(p.poll(10 * MS), req(Why::DeferralExpired, 10 * MS));
        assert!(p.requested());
        assert_eq!(p.deadline(), None);
        assert_eq!(p.next_wakeup(), None);
        assert_eq!(p.poll(11 * MS), None);
    }

    #[test]
    fn single_deferrable_expires_after_defer_delay() {
        let mut p = RequestPolicy::new(PolicyConfig::default(), 100);
        assert_eq!(p.on_frame(1_000, FrameKind::Deferrable, 1), None);
        assert_eq!(p.poll(1_000 + 5 * MS - 1), None);
        // A late poll reports the time of the call, not the deadline.
        assert_eq!(
            p.poll(1_000 + 7 * MS),
            req(Why::DeferralExpired, 1_000 + 7 * MS)
        );
    }

    #[test]
    fn frame_at_or_after_unobserved_deadline_finds_deferral_expired() {
        let mut p = RequestPolicy::new(PolicyConfig::default(), 0);
        assert_eq!(p.on_frame(0, FrameKind::Deferrable, 1), None);
        // No poll at 5 ms: the deferrable frame at 5 ms must not extend the expired deferral.
        assert_eq!(
            p.on_frame(5 * MS, FrameKind::Deferrable, 2),
            req(Why::DeferralExpired, 5 * MS)
        );
        let mut p = RequestPolicy::new(PolicyConfig::default(), 0);
        assert_eq!(p.on_frame(0, FrameKind::Deferrable, 1), None);
        assert_eq!(
            p.on_frame(6 * MS, FrameKind::Immediate, 2),
            req(Why::DeferralExpired, 6 * MS)
        );
    }

    #[test]
    fn immediate_requests_now_once_per_epoch() {
        let mut p = RequestPolicy::new(PolicyConfig::default(), 0);
        assert_eq!(
            p.on_frame(2 * MS, FrameKind::Immediate, 1),
            req(Why::ImmediateFrame, 2 * MS)
        );
        assert!(p.requested());
        assert_eq!(p.on_frame(3 * MS, FrameKind::Immediate, 2), None);
        assert_eq!(p.on_frame(4 * MS, FrameKind::Deferrable, 3), None);
        assert_eq!(p.deadline(), None);
        assert_eq!(p.next_wakeup(), None);
        assert_eq!(p.poll(100 * MS), None);
    }

    #[test]
    fn immediate_cancels_armed_deferral_and_requests_now() {
        let mut p = RequestPolicy::new(PolicyConfig::default(), 0);
        assert_eq!(p.on_frame(0, FrameKind::Deferrable, 1), None);
        assert_eq!(p.on_frame(2 * MS, FrameKind::Deferrable, 2), None);
        assert_eq!(p.deadline(), Some(7 * MS));
        assert_eq!(
            p.on_frame(3 * MS, FrameKind::Immediate, 3),
            req(Why::ImmediateFrame, 3 * MS)
        );
        assert_eq!(p.deadline(), None);
        assert_eq!(p.next_wakeup(), None);
        assert_eq!(p.poll(7 * MS), None);
    }

    #[test]
    fn high_water_requests_now_once_per_epoch() {
        let mut p = RequestPolicy::new(cfg(5, 10, 0, 3), 0);
        assert_eq!(p.on_frame(0, FrameKind::Deferrable, 1), None);
        assert_eq!(p.on_frame(MS, FrameKind::Deferrable, 2), None);
        assert_eq!(p.deadline(), Some(6 * MS));
        assert_eq!(
            p.on_frame(2 * MS, FrameKind::Deferrable, 3),
            req(Why::HighWater, 2 * MS)
        );
        assert_eq!(p.deadline(), None);
        assert_eq!(p.on_frame(3 * MS, FrameKind::Deferrable, 4), None);
        assert_eq!(p.on_frame(3 * MS, FrameKind::Immediate, 5), None);
        assert_eq!(p.poll(20 * MS), None);
        // Next epoch: the mark applies again.
        p.on_fence(30 * MS);
        assert_eq!(
            p.on_frame(31 * MS, FrameKind::Deferrable, 7),
            req(Why::HighWater, 31 * MS)
        );
    }

    #[test]
    fn high_water_zero_means_none() {
        let mut p = RequestPolicy::new(cfg(5, 10, 0, 0), 0);
        assert_eq!(p.on_frame(0, FrameKind::Deferrable, u64::MAX), None);
        assert_eq!(p.deadline(), Some(5 * MS));
    }

    #[test]
    fn immediate_at_high_water_reports_immediate() {
        let mut p = RequestPolicy::new(cfg(5, 10, 0, 1), 0);
        assert_eq!(
            p.on_frame(0, FrameKind::Immediate, 1),
            req(Why::ImmediateFrame, 0)
        );
    }

    #[test]
    fn high_water_in_bytes() {
        let mut p = RequestPolicy::new(
            PolicyConfig {
                high_water_bytes: 3000,
                ..cfg(5, 10, 0, 0)
            },
            0,
        );
        assert_eq!(p.on_frame_sized(0, FrameKind::Deferrable, 1, 1500), None);
        assert_eq!(
            p.on_frame_sized(MS, FrameKind::Deferrable, 2, 3000),
            Some(Request {
                why: Why::HighWater,
                at: MS
            })
        );
    }

    #[test]
    fn min_interval_postpones_immediate() {
        let fence = 50 * MS;
        let mut p = RequestPolicy::new(cfg(5, 10, 4, 0), 0);
        p.on_fence(fence);
        assert_eq!(p.fenced_at(), fence);
        assert_eq!(p.on_frame(fence + MS, FrameKind::Immediate, 1), None);
        assert!(!p.requested());
        assert_eq!(p.next_wakeup(), Some(fence + 4 * MS));
        assert_eq!(p.poll(fence + 2 * MS), None);
        assert_eq!(p.poll(fence + 4 * MS - 1), None);
        assert_eq!(
            p.poll(fence + 4 * MS),
            req(Why::ImmediateFrame, fence + 4 * MS)
        );
        assert!(p.requested());
        assert_eq!(p.next_wakeup(), None);
    }

    #[test]
    fn min_interval_postpones_deferral_keeping_its_reason() {
        let mut p = RequestPolicy::new(cfg(1, 2, 4, 5), 0);
        assert_eq!(p.on_frame(0, FrameKind::Deferrable, 1), None);
        // Polling at the deadline would only postpone: the wakeup is the end of the interval.
        assert_eq!(p.next_wakeup(), Some(4 * MS));
        assert_eq!(p.poll(MS), None);
        assert_eq!(p.deadline(), None);
        assert_eq!(p.next_wakeup(), Some(4 * MS));
        // Later causes neither emit nor change the reason.
        assert_eq!(p.on_frame(2 * MS, FrameKind::Immediate, 5), None);
        assert_eq!(p.next_wakeup(), Some(4 * MS));
        // The postponed request is also emitted by a frame's call once due.
        assert_eq!(
            p.on_frame(4 * MS, FrameKind::Deferrable, 6),
            req(Why::DeferralExpired, 4 * MS)
        );
    }

    #[test]
    fn min_interval_does_not_delay_late_requests() {
        let mut p = RequestPolicy::new(cfg(5, 10, 4, 0), 0);
        assert_eq!(
            p.on_frame(4 * MS, FrameKind::Immediate, 1),
            req(Why::ImmediateFrame, 4 * MS)
        );
    }

    #[test]
    fn fence_resets_the_epoch() {
        let mut p = RequestPolicy::new(cfg(5, 10, 2, 0), 0);
        assert_eq!(
            p.on_frame(3 * MS, FrameKind::Immediate, 1),
            req(Why::ImmediateFrame, 3 * MS)
        );
        p.on_fence(10 * MS);
        assert!(!p.requested());
        assert_eq!(p.deadline(), None);
        assert_eq!(p.next_wakeup(), None);
        assert_eq!(p.on_frame(11 * MS, FrameKind::Deferrable, 1), None);
        assert_eq!(p.deadline(), Some(16 * MS));
        p.on_fence(12 * MS);
        assert_eq!(p.deadline(), None);
        assert_eq!(p.next_wakeup(), None);
        assert_eq!(p.poll(16 * MS), None);
        // The minimum interval counts from the new fence.
        assert_eq!(p.on_frame(13 * MS, FrameKind::Immediate, 1), None);
        assert_eq!(p.next_wakeup(), Some(14 * MS));
        assert_eq!(p.poll(14 * MS), req(Why::ImmediateFrame, 14 * MS));
    }

    #[test]
    fn fence_drops_a_postponed_request() {
        let mut p = RequestPolicy::new(cfg(5, 10, 4, 0), 0);
        assert_eq!(p.on_frame(MS, FrameKind::Immediate, 1), None);
        assert_eq!(p.next_wakeup(), Some(4 * MS));
        p.on_fence(2 * MS);
        assert_eq!(p.next_wakeup(), None);
        assert_eq!(p.poll(4 * MS), None);
        assert_eq!(p.poll(6 * MS), None);
    }

    #[test]
    fn one_request_per_epoch_whatever_the_causes() {
        let mut p = RequestPolicy::new(cfg(5, 10, 0, 2), 0);
        assert_eq!(p.on_frame(0, FrameKind::Deferrable, 1), None);
        assert_eq!(p.poll(5 * MS), req(Why::DeferralExpired, 5 * MS));
        assert_eq!(p.on_frame(6 * MS, FrameKind::Deferrable, 2), None);
        assert_eq!(p.on_frame(7 * MS, FrameKind::Immediate, 3), None);
        assert_eq!(p.poll(30 * MS), None);
        assert_eq!(p.deadline(), None);
        assert_eq!(p.next_wakeup(), None);
    }

    #[test]
    fn saturates_near_u64_max() {
        let t = u64::MAX - MS;
        let mut p = RequestPolicy::new(cfg(5, 10, 4, 0), t);
        assert_eq!(p.on_frame(t, FrameKind::Deferrable, 1), None);
        assert_eq!(p.deadline(), Some(u64::MAX));
        assert_eq!(p.next_wakeup(), Some(u64::MAX));
        assert_eq!(p.poll(u64::MAX - 1), None);
        assert_eq!(p.poll(u64::MAX), req(Why::DeferralExpired, u64::MAX));
        p.on_fence(u64::MAX);
        assert_eq!(
            p.on_frame(u64::MAX, FrameKind::Immediate, u64::MAX),
            req(Why::ImmediateFrame, u64::MAX)
        );
    }

    #[test]
    fn why_maps_to_wire_reason() {
        use vmm_shim::proto::RequestReason;
        assert_eq!(
            RequestReason::from(Why::ImmediateFrame),
            RequestReason::ImmediateFrame
        );
        assert_eq!(
            RequestReason::from(Why::DeferralExpired),
            RequestReason::DeferralExpired
        );
        assert_eq!(
            RequestReason::from(Why::HighWater),
            RequestReason::HighWater
        );
    }

    // ---- property tests -------------------------------------------------------------------

    #[derive(Debug, Clone, Copy)]
    enum Ev {
        Frame(FrameKind, u64),
        Poll,
        Fence,
    }

    /// One event and the time step (ns) before it.
    fn step() -> impl Strategy<Value = (u64, Ev)> {
        let dt = prop_oneof![
            2 => Just(0u64),
            1 => Just(1u64),
            4 => (0u64..=3).prop_map(|k| k * MS / 2),
            4 => 0u64..3 * MS,
        ];
        let ev = prop_oneof![
            4 => (0u64..12).prop_map(|held| Ev::Frame(FrameKind::Deferrable, held)),
            1 => (0u64..12).prop_map(|held| Ev::Frame(FrameKind::Immediate, held)),
            4 => Just(Ev::Poll),
            1 => Just(Ev::Fence),
        ];
        (dt, ev)
    }

    fn config() -> impl Strategy<Value = PolicyConfig> {
        let ns = |max_ms: u64| {
            prop_oneof![
                3 => (0..=max_ms).prop_map(|k| k * MS),
                1 => 0..=max_ms * MS,
            ]
        };
        (ns(6), ns(6), ns(8), prop_oneof![Just(0u64), 1u64..10]).prop_map(
            |(defer, extra, min, hw)| PolicyConfig {
                defer_delay_ns: defer,
                max_defer_ns: defer + extra,
                min_interval_ns: min,
                high_water_frames: hw,
                high_water_bytes: 0,
            },
        )
    }

    fn start() -> impl Strategy<Value = u64> {
        prop_oneof![
            Just(0u64),
            0u64..1 << 40,
            (0u64..50 * MS).prop_map(|d| u64::MAX - d),
            any::<u64>(),
        ]
    }

    /// The deferral deadline implied by the deferrable frames `frames` (in arrival order) of an
    /// epoch, by the rule's definition: the deadline `D` satisfies
    /// `D == min(l + defer_delay, first + max_defer)` where `l` is the last deferrable frame
    /// with `l < D` (frames at or after `D` find the deferral expired).
    fn implied_deadline(cfg: &PolicyConfig, frames: &[u64]) -> Option<u64> {
        let (&first, rest) = frames.split_first()?;
        let cap = first.saturating_add(cfg.max_defer_ns);
        let mut d = first.saturating_add(cfg.defer_delay_ns);
        for &f in rest {
            if f >= d {
                break;
            }
            d = f.saturating_add(cfg.defer_delay_ns).min(cap);
        }
        Some(d)
    }

    /// What the observer knows about the open epoch.
    #[derive(Debug, Default)]
    struct Epoch {
        fence: u64,
        /// Times of the deferrable frames that arrived before the epoch's first cause.
        deferrables: Vec<u64>,
        first_immediate: Option<u64>,
        first_high_water: Option<u64>,
        /// The first cause and when it occurred (for a deferral: its deadline).
        cause: Option<(Why, u64)>,
        emitted: Vec<Request>,
        /// `now` of the previous frame or poll in this epoch, if it came after the last
        /// deferrable frame (which fixed the deferral's deadline).
        prev: Option<u64>,
    }

    /// Replays `steps` on a machine and checks the invariants after every step.
    fn check(cfg: PolicyConfig, t0: u64, steps: &[(u64, Ev)]) -> Result<(), TestCaseError> {
        let mut p = RequestPolicy::new(cfg, t0);
        let min = cfg.min_interval_ns;
        let mut ep = Epoch {
            fence: t0,
            ..Epoch::default()
        };
        let mut now = t0;
        for (i, &(dt, ev)) in steps.iter().enumerate() {
            now = now.saturating_add(dt);
            let earliest = ep.fence.saturating_add(min);
            let emitted = match ev {
                Ev::Fence => {
                    p.on_fence(now);
                    ep = Epoch {
                        fence: now,
                        ..Epoch::default()
                    };
                    prop_assert!(!p.requested() && p.deadline().is_none());
                    prop_assert_eq!(p.next_wakeup(), None);
                    continue;
                }
                Ev::Poll => p.poll(now),
                Ev::Frame(kind, held) => p.on_frame(now, kind, held),
            };
            // Timers run first: an expired deferral is the cause if nothing came before it.
            if ep.cause.is_none() {
                if let Some(d) = implied_deadline(&cfg, &ep.deferrables) {
                    if now >= d {
                        ep.cause = Some((Why::DeferralExpired, d));
                    }
                }
            }
            if let Ev::Frame(kind, held) = ev {
                let hw = cfg.high_water_frames != 0 && held >= cfg.high_water_frames;
                if kind == FrameKind::Immediate && ep.first_immediate.is_none() {
                    ep.first_immediate = Some(now);
                }
                if hw && ep.first_high_water.is_none() {
                    ep.first_high_water = Some(now);
                }
                if ep.cause.is_none() {
                    if kind == FrameKind::Immediate {
                        ep.cause = Some((Why::ImmediateFrame, now));
                    } else if hw {
                        ep.cause = Some((Why::HighWater, now));
                    } else {
                        ep.deferrables.push(now);
                        ep.prev = None;
                        // A deferral of 0 expires at once.
                        let d = implied_deadline(&cfg, &ep.deferrables).unwrap();
                        if now >= d {
                            ep.cause = Some((Why::DeferralExpired, d));
                        }
                    }
                }
            }
            if let Some(r) = emitted {
                prop_assert_eq!(r.at, now, "step {}: a request carries the call's time", i);
                ep.emitted.push(r);
            }
            let ctx = format!("step {i} at {now}: {ev:?}, {ep:?}, {p:?}");

            // (a) at most one request per epoch; `requested()` reports it.
            prop_assert!(ep.emitted.len() <= 1, "(a) {}", ctx);
            prop_assert_eq!(p.requested(), !ep.emitted.is_empty(), "{}", ctx);
            // (b) never before last_fence + min_interval.
            if let Some(r) = emitted {
                prop_assert!(r.at >= earliest, "(b) {}", ctx);
            }
            // (c) an immediate frame at t: requested by the first event at/after
            //     max(t, last_fence + min_interval).
            if let Some(t) = ep.first_immediate {
                if now >= t.max(earliest) {
                    prop_assert!(p.requested(), "(c) {}", ctx);
                }
            }
            // (g) the high-water mark reached at t: likewise.
            if let Some(t) = ep.first_high_water {
                if now >= t.max(earliest) {
                    prop_assert!(p.requested(), "(g) {}", ctx);
                }
            }
            // (d) a deferral-expired request: its deadline D is implied by the deferrable
            //     frames (first + defer_delay <= D <= first + max_defer, and
            //     D == min(l + defer_delay, first + max_defer) for the last frame l < D), no
            //     immediate frame or high-water crossing came before D, and the request is
            //     emitted by the first event at/after max(D, last_fence + min_interval).
            if let Some(r) = emitted.filter(|r| r.why == Why::DeferralExpired) {
                let first = ep.deferrables[0];
                let d = implied_deadline(&cfg, &ep.deferrables).unwrap();
                prop_assert!(first.saturating_add(cfg.defer_delay_ns) <= d, "(d) {}", ctx);
                prop_assert!(d <= first.saturating_add(cfg.max_defer_ns), "(d) {}", ctx);
                let l = *ep.deferrables.iter().rfind(|&&f| f < d).unwrap_or(&first);
                prop_assert_eq!(
                    d,
                    l.saturating_add(cfg.defer_delay_ns)
                        .min(first.saturating_add(cfg.max_defer_ns)),
                    "(d) {}",
                    ctx
                );
                prop_assert!(ep.first_immediate.is_none_or(|t| t >= d), "(d) {}", ctx);
                prop_assert!(ep.first_high_water.is_none_or(|t| t >= d), "(d) {}", ctx);
                let due = d.max(earliest);
                prop_assert!(r.at >= due, "(d) {}", ctx);
                prop_assert!(ep.prev.is_none_or(|t| t < due), "(d) late: {}", ctx);
            }
            // Exactness: the request is emitted at the first event at/after its due time and
            // carries the reason of the epoch's first cause.
            match ep.cause {
                Some((why, t)) if now >= t.max(earliest) => {
                    prop_assert_eq!(ep.emitted.len(), 1, "due: {}", ctx);
                    prop_assert_eq!(ep.emitted[0].why, why, "reason: {}", ctx);
                }
                _ => prop_assert!(ep.emitted.is_empty(), "early: {}", ctx),
            }
            // (f) next_wakeup: None iff nothing is pending, else no later than the due time
            //     (and in the future, so the worker does not spin).
            let pending = match ep.cause {
                _ if p.requested() => None,
                Some((_, t)) => Some(t.max(earliest)),
                None => implied_deadline(&cfg, &ep.deferrables).map(|d| d.max(earliest)),
            };
            match (p.next_wakeup(), pending) {
                (None, None) => {}
                (Some(w), Some(due)) => {
                    prop_assert!(w <= due, "(f) {}", ctx);
                    prop_assert!(w > now, "(f) {}", ctx);
                    prop_assert_eq!(w, due, "(f) {}", ctx);
                }
                (w, due) => prop_assert!(false, "(f) wakeup {:?}, due {:?}: {}", w, due, ctx),
            }
            // deadline(): the armed deferral only.
            let armed = (ep.cause.is_none() && !ep.deferrables.is_empty())
                .then(|| implied_deadline(&cfg, &ep.deferrables).unwrap());
            prop_assert_eq!(p.deadline(), armed, "deadline: {}", ctx);
            ep.prev = Some(now);
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Invariants (a)-(d), (f), (g) and the exact reason/time after every step of random
        /// event sequences.
        #[test]
        fn prop_invariants_hold_after_every_step(
            cfg in config(),
            t0 in start(),
            steps in proptest::collection::vec(step(), 0..80),
        ) {
            check(cfg, t0, &steps)?;
        }

        /// (e) Only deferrable frames, polls every millisecond: the request comes no later than
        /// max(first + max_defer, last_fence + min_interval) + 1 ms, and not before
        /// max(first + defer_delay, last_fence + min_interval).
        #[test]
        fn prop_deferrable_only_requests_within_max_defer(
            cfg in config().prop_map(|c| PolicyConfig { high_water_frames: 0, ..c }),
            t0 in start().prop_map(|t| t.min(u64::MAX - 100 * MS)),
            mut offsets in proptest::collection::vec(0u64..30 * MS, 1..20),
        ) {
            offsets.sort_unstable();
            let mut p = RequestPolicy::new(cfg, t0);
            let first = t0 + offsets[0];
            let earliest = t0 + cfg.min_interval_ns;
            let latest = (first + cfg.max_defer_ns).max(earliest) + MS;
            let mut frames = offsets.iter().map(|o| t0 + o).peekable();
            let mut got = None;
            for k in 0..=60 {
                let tick = t0 + k * MS;
                if let Some(r) = p.poll(tick) {
                    got = Some(r);
                    break;
                }
                while let Some(f) = frames.next_if(|&f| f < tick + MS) {
                    if let Some(r) = p.on_frame(f, FrameKind::Deferrable, 1) {
                        got = Some(r);
                        break;
                    }
                }
                if got.is_some() {
                    break;
                }
            }
            let r = got.expect("a request within 60 ms");
            prop_assert_eq!(r.why, Why::DeferralExpired);
            prop_assert!(r.at <= latest, "{:?} later than {}", r, latest);
            prop_assert!(r.at >= (first + cfg.defer_delay_ns).max(earliest), "{:?} too early", r);
        }

        /// The machine never panics and keeps its accessors consistent with arbitrary
        /// (even decreasing) times.
        #[test]
        fn prop_arbitrary_times_do_not_panic(
            cfg in config(),
            events in proptest::collection::vec((any::<u64>(), step()), 0..40),
        ) {
            let mut p = RequestPolicy::new(cfg, 0);
            for (now, (_, ev)) in events {
                let r = match ev {
                    Ev::Frame(kind, held) => p.on_frame(now, kind, held),
                    Ev::Poll => p.poll(now),
                    Ev::Fence => { p.on_fence(now); None }
                };
                if r.is_some() {
                    prop_assert!(p.requested());
                }
                prop_assert!(!p.requested() || p.next_wakeup().is_none());
            }
        }
    }
}
