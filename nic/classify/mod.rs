//! Deferrable-traffic classifier: per outgoing frame of a protected VM, whether the checkpoint
//! may wait a bounded time for it (TCP ACKs without PSH, IP fragments but the last) or must be
//! taken now (everything else, malformed frames included), with operator rules, a per-VM
//! override and a window-update check on top. Nothing here allocates per frame or panics on
//! any input.

mod compiled;
mod parse;
mod rules;
mod window;

#[cfg(test)]
mod tests;

use std::borrow::Cow;
use std::fmt;

use compiled::RuleSet;

pub use parse::{
    parse, parse_into, FrameInfo, IpFragment, IpInfo, Ports, TcpInfo, ETHERTYPE_ARP,
    ETHERTYPE_IPV4, ETHERTYPE_IPV6, ETHERTYPE_QINQ, ETHERTYPE_QINQ_OLD, ETHERTYPE_VLAN,
};
pub use rules::{
    IntOrString, IpNet, IpNetParseError, RawRule, Rule, RuleError, RuleVerdict, VmDefer,
};
pub use window::WindowTable;

/// Whether a frame may wait for a later checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// The checkpoint may wait a bounded time for this frame.
    Defer,
    /// The frame needs a checkpoint now.
    Immediate,
}

/// Why a frame got its verdict. [`Reason::name`] is the stable text used in stats and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// `tcp-pure-ack`: TCP with exactly ACK set (NS ignored) and no payload.
    TcpPureAck,
    /// `tcp-ack-no-psh`: TCP with exactly ACK set (NS ignored) and a payload.
    TcpAckNoPsh,
    /// `ipv4-more-fragments`: an IPv4 fragment with More-Fragments set (first or middle).
    Ipv4MoreFragments,
    /// `ipv6-more-fragments`: an IPv6 packet whose Fragment header has M set.
    Ipv6MoreFragments,
    /// `window-update`: a builtin-deferrable ACK that raises its flow's advertised window, in
    /// bytes after window scaling, from below the [`WindowTable`] threshold to at least it;
    /// immediate.
    WindowUpdate,
    /// `rule:N`: rule number N (0-based, in configuration order) matched.
    Rule(u16),
    /// `vm-all`: the VM is configured with [`VmDefer::All`]; deferrable.
    VmAll,
    /// `vm-never`: the VM is configured with [`VmDefer::Never`]; immediate.
    VmNever,
    /// `malformed`: the frame is shorter than the headers it declares, or a header is invalid.
    Malformed,
    /// `other`: anything else (ARP, ICMP, UDP, TCP with other flags, last fragments, ...).
    Other,
}

impl Reason {
    /// The stable name: `tcp-pure-ack`, `tcp-ack-no-psh`, `ipv4-more-fragments`,
    /// `ipv6-more-fragments`, `window-update`, `rule:N`, `vm-all`, `vm-never`, `malformed`,
    /// `other`. Only `rule:N` allocates; use [`fmt::Display`] to write it without allocating.
    pub fn name(&self) -> Cow<'static, str> {
        match self {
            Reason::Rule(i) => Cow::Owned(format!("rule:{i}")),
            other => Cow::Borrowed(other.static_name()),
        }
    }

    /// The name of every reason but `Rule(_)` (for which it is just "rule").
    fn static_name(&self) -> &'static str {
        match self {
            Reason::TcpPureAck => "tcp-pure-ack",
            Reason::TcpAckNoPsh => "tcp-ack-no-psh",
            Reason::Ipv4MoreFragments => "ipv4-more-fragments",
            Reason::Ipv6MoreFragments => "ipv6-more-fragments",
            Reason::WindowUpdate => "window-update",
            Reason::VmAll => "vm-all",
            Reason::VmNever => "vm-never",
            Reason::Malformed => "malformed",
            Reason::Other => "other",
            Reason::Rule(_) => "rule",
        }
    }

    /// The verdict that goes with this reason when it comes from the built-in classifier (or
    /// the per-VM setting): Defer for the two TCP ACK kinds, the two fragment kinds and
    /// `vm-all`; Immediate otherwise. A rule's verdict is its own, so `Rule(_)` answers the safe
    /// side, Immediate: read [`Classified::verdict`] instead.
    pub const fn verdict_of_builtin(&self) -> Verdict {
        match self {
            Reason::TcpPureAck
            | Reason::TcpAckNoPsh
            | Reason::Ipv4MoreFragments
            | Reason::Ipv6MoreFragments
            | Reason::VmAll => Verdict::Defer,
            Reason::WindowUpdate
            | Reason::Rule(_)
            | Reason::VmNever
            | Reason::Malformed
            | Reason::Other => Verdict::Immediate,
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Rule(i) => write!(f, "rule:{i}"),
            other => f.write_str(other.static_name()),
        }
    }
}

/// A verdict and the reason for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Classified {
    /// Whether the checkpoint may wait for the frame.
    pub verdict: Verdict,
    /// What decided it.
    pub reason: Reason,
}

impl Classified {
    /// `reason` with the verdict [`Reason::verdict_of_builtin`] gives it.
    #[inline]
    pub const fn builtin(reason: Reason) -> Classified {
        Classified {
            verdict: reason.verdict_of_builtin(),
            reason,
        }
    }

    /// Whether the checkpoint may wait for this frame.
    #[inline]
    pub fn is_deferrable(&self) -> bool {
        self.verdict == Verdict::Defer
    }
}

/// The built-in classification of a parsed frame, in this order: malformed -> Immediate
/// `malformed`; an IP fragment with More-Fragments (IPv4 MF / IPv6 M) set -> Defer
/// `ipv4-more-fragments` / `ipv6-more-fragments`, whatever its transport; the last fragment ->
/// Immediate `other`; TCP whose flags are exactly ACK (NS ignored) -> Defer `tcp-pure-ack`
/// without payload, `tcp-ack-no-psh` with; everything else Immediate `other`.
#[inline]
pub fn builtin(info: &FrameInfo) -> Classified {
    if info.malformed {
        return Classified::builtin(Reason::Malformed);
    }
    let Some(ip) = info.ip else {
        return Classified::builtin(Reason::Other);
    };
    if let Some(frag) = ip.fragment {
        return Classified::builtin(match (frag.more, ip.src.is_ipv4()) {
            (true, true) => Reason::Ipv4MoreFragments,
            (true, false) => Reason::Ipv6MoreFragments,
            (false, _) => Reason::Other,
        });
    }
    match info.tcp {
        Some(tcp) if tcp.is_only_ack() => Classified::builtin(if info.payload_len == 0 {
            Reason::TcpPureAck
        } else {
            Reason::TcpAckNoPsh
        }),
        _ => Classified::builtin(Reason::Other),
    }
}

/// Operator rules plus the built-in classification, for all VMs of a data-plane worker.
/// Immutable once built; [`Classifier::classify`] takes `&self` and never allocates.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Classifier {
    rules: Vec<Rule>,
    /// `rules`, flattened and indexed for the data path (same order).
    compiled: RuleSet,
}

impl Classifier {
    /// A classifier with these rules, tried in order (the first match wins).
    pub fn new(rules: Vec<Rule>) -> Classifier {
        let compiled = RuleSet::new(&rules);
        Classifier { rules, compiled }
    }

    /// Validates `[[classifier.rule]]` tables in order (their index is their position) and
    /// builds a classifier; the first invalid rule's error is returned.
    pub fn from_raw(raw: impl IntoIterator<Item = RawRule>) -> Result<Classifier, RuleError> {
        let rules = raw
            .into_iter()
            .enumerate()
            .map(|(i, r)| Rule::from_raw(i, r))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Classifier::new(rules))
    }

    /// The rules, in matching order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Classifies one frame of VM `vm` (its configured name; rules with a `vm` key match only
    /// it) whose per-VM setting is `defer`. Order: a malformed frame is Immediate `malformed`
    /// whatever else is configured; then [`VmDefer::All`] -> Defer `vm-all`,
    /// [`VmDefer::Never`] -> Immediate `vm-never`; then the rules in order (the first match
    /// decides: Defer/Immediate with `rule:N`, or [`RuleVerdict::Builtin`] -> [`builtin`]);
    /// then [`builtin`].
    #[inline]
    pub fn classify(&self, vm: &str, defer: VmDefer, frame: &[u8]) -> Classified {
        let mut info = FrameInfo::default();
        parse_into(frame, &mut info);
        self.classify_info(vm, defer, &info)
    }

    /// [`Classifier::classify`] for a frame already parsed.
    #[inline]
    pub fn classify_info(&self, vm: &str, defer: VmDefer, info: &FrameInfo) -> Classified {
        self.decide(vm, defer, info).0
    }

    /// [`Classifier::classify`], plus the window-update check: when `table` is given, every
    /// well-formed unfragmented TCP segment with ACK or SYN set whose verdict comes from
    /// [`builtin`] (no rule matched, or a [`RuleVerdict::Builtin`] rule did) is recorded in it
    /// (SYNs and SYN-ACKs, Immediate `other`, for the window scale their options set), and a
    /// pure ACK (`tcp-pure-ack`) that raises its flow's window,
    /// in bytes after window scaling, to the threshold becomes Immediate `window-update`.
    /// Frames decided by the per-VM setting or by a Defer/Immediate rule are neither recorded
    /// nor changed.
    pub fn classify_with(
        &self,
        vm: &str,
        defer: VmDefer,
        table: Option<&mut WindowTable>,
        frame: &[u8],
    ) -> Classified {
        let mut info = FrameInfo::default();
        parse_into(frame, &mut info);
        let (classified, from_builtin) = self.decide(vm, defer, &info);
        if let (true, Some(table)) = (from_builtin, table) {
            let update = table.observe(&info);
            // Only a pure ACK: a segment with data is the sender's own progress, not the
            // receiver's window opening.
            if update && classified.reason == Reason::TcpPureAck {
                return Classified::builtin(Reason::WindowUpdate);
            }
        }
        classified
    }

    /// The verdict, and whether it came from [`builtin`].
    #[inline]
    fn decide(&self, vm: &str, defer: VmDefer, info: &FrameInfo) -> (Classified, bool) {
        if info.malformed {
            return (Classified::builtin(Reason::Malformed), false);
        }
        match defer {
            VmDefer::All => return (Classified::builtin(Reason::VmAll), false),
            VmDefer::Never => return (Classified::builtin(Reason::VmNever), false),
            VmDefer::Builtin => {}
        }
        if self.compiled.is_empty() {
            return (builtin(info), true);
        }
        let Some((i, verdict)) = self.compiled.first_match(vm, info) else {
            return (builtin(info), true);
        };
        // Rule::from_raw refuses an index beyond u16; a rule built by hand past that is
        // reported as the last representable index rather than wrapping.
        let reason = Reason::Rule(u16::try_from(i).unwrap_or(u16::MAX));
        match verdict {
            RuleVerdict::Defer => (
                Classified {
                    verdict: Verdict::Defer,
                    reason,
                },
                false,
            ),
            RuleVerdict::Immediate => (
                Classified {
                    verdict: Verdict::Immediate,
                    reason,
                },
                false,
            ),
            RuleVerdict::Builtin => (builtin(info), true),
        }
    }
}
