//! The rules in the form the data path evaluates: bitmaps keep only the rules that can match
//! the frame's protocol, address family and port presence, and each remaining rule is a few
//! fixed-width comparisons (an absent key compares as "any"). [`Rule::matches`] is the
//! reference; tests check that both agree.

use std::net::IpAddr;

use super::rules::{mask128, mask32};
use super::{FrameInfo, IpNet, Rule, RuleVerdict};

/// `proto` of a rule without a protocol key; a frame's protocol is at most 0x100.
const ANY_PROTO: u16 = 0xffff;
/// `proto` of a frame without an IP layer.
const NO_PROTO: u16 = 0x100;

/// An address prefix as `(addr & mask) == net`, for one family (0 = any family, any frame).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Net {
    family: u8,
    net: u128,
    mask: u128,
}

impl Net {
    const ANY: Net = Net {
        family: 0,
        net: 0,
        mask: 0,
    };

    fn of(net: Option<IpNet>) -> Net {
        match net {
            None => Net::ANY,
            Some(IpNet::V4 { addr, len }) => {
                let mask = u128::from(mask32(len));
                Net {
                    family: 4,
                    net: u128::from(u32::from(addr)) & mask,
                    mask,
                }
            }
            Some(IpNet::V6 { addr, len }) => {
                let mask = mask128(len);
                Net {
                    family: 6,
                    net: u128::from(addr) & mask,
                    mask,
                }
            }
        }
    }

    #[inline(always)]
    fn test(&self, family: u8, addr: u128) -> bool {
        (self.family == 0) | ((self.family == family) & (addr & self.mask == self.net))
    }
}

/// The frame fields the rules read, widened once per frame.
#[derive(Debug, Clone, Copy)]
pub(super) struct Probe {
    src_mac: u64,
    dst_mac: u64,
    /// 4, 6, or 0 without an IP layer.
    family: u8,
    src: u128,
    dst: u128,
    proto: u16,
    has_ports: bool,
    src_port: u16,
    dst_port: u16,
}

#[inline(always)]
fn mac64(m: [u8; 6]) -> u64 {
    u64::from_be_bytes([0, 0, m[0], m[1], m[2], m[3], m[4], m[5]])
}

#[inline(always)]
fn addr128(a: IpAddr) -> u128 {
    match a {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

impl Probe {
    #[inline]
    pub(super) fn of(info: &FrameInfo) -> Probe {
        let (family, src, dst, proto) = match info.ip {
            Some(ip) => (
                if ip.src.is_ipv4() { 4 } else { 6 },
                addr128(ip.src),
                addr128(ip.dst),
                u16::from(ip.protocol),
            ),
            None => (0, 0, 0, NO_PROTO),
        };
        let ports = info.ports.unwrap_or(super::Ports { src: 0, dst: 0 });
        Probe {
            src_mac: mac64(info.src_mac),
            dst_mac: mac64(info.dst_mac),
            family,
            src,
            dst,
            proto,
            has_ports: info.ports.is_some(),
            src_port: ports.src,
            dst_port: ports.dst,
        }
    }
}

/// One [`Rule`], flattened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct CompiledRule {
    /// Tested last, and only when everything else matched (a string comparison).
    vm: Option<Box<str>>,
    any_src_mac: bool,
    src_mac: u64,
    any_dst_mac: bool,
    dst_mac: u64,
    src_net: Net,
    dst_net: Net,
    proto: u16,
    /// Some port range is given: a frame without ports does not match.
    needs_ports: bool,
    src_lo: u16,
    src_hi: u16,
    dst_lo: u16,
    dst_hi: u16,
    pub(super) verdict: RuleVerdict,
}

impl CompiledRule {
    pub(super) fn of(rule: &Rule) -> CompiledRule {
        let range = |r: &Option<std::ops::RangeInclusive<u16>>| {
            r.as_ref().map_or((0, u16::MAX), |r| (*r.start(), *r.end()))
        };
        let (src_lo, src_hi) = range(&rule.src_ports);
        let (dst_lo, dst_hi) = range(&rule.dst_ports);
        CompiledRule {
            vm: rule.vm.as_deref().map(Box::from),
            any_src_mac: rule.src_mac.is_none(),
            src_mac: rule.src_mac.map_or(0, mac64),
            any_dst_mac: rule.dst_mac.is_none(),
            dst_mac: rule.dst_mac.map_or(0, mac64),
            src_net: Net::of(rule.src_net),
            dst_net: Net::of(rule.dst_net),
            proto: rule.protocol.map_or(ANY_PROTO, u16::from),
            needs_ports: rule.src_ports.is_some() || rule.dst_ports.is_some(),
            src_lo,
            src_hi,
            dst_lo,
            dst_hi,
            verdict: rule.verdict,
        }
    }

    #[inline(always)]
    pub(super) fn matches(&self, vm: &str, p: &Probe) -> bool {
        let ports = (p.src_port >= self.src_lo)
            & (p.src_port <= self.src_hi)
            & (p.dst_port >= self.dst_lo)
            & (p.dst_port <= self.dst_hi);
        ((self.proto == ANY_PROTO) | (self.proto == p.proto))
            && (self.any_src_mac | (self.src_mac == p.src_mac))
                & (self.any_dst_mac | (self.dst_mac == p.dst_mac))
                & (!self.needs_ports | (p.has_ports & ports))
            && self.src_net.test(p.family, p.src) & self.dst_net.test(p.family, p.dst)
            && self.vm.as_deref().is_none_or(|v| v == vm)
    }
}

/// The compiled rules plus bitmaps that prefilter them by the frame's protocol, address family
/// and whether it has ports: only rules that can match are tested, in order, so a frame pays
/// for the handful of rules about its kind of traffic, not for all of them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(super) struct RuleSet {
    rules: Vec<CompiledRule>,
    /// 64-bit words per bitmap (bit i of word i / 64 = rule i).
    words: usize,
    /// `(NO_PROTO + 1) * words`: rules that can match each protocol value (0..=255, none).
    by_proto: Vec<u64>,
    /// `3 * words`: rules that can match a frame of family 0 (no IP), 4 and 6.
    by_family: Vec<u64>,
    /// `words`: rules that do not need ports.
    portless: Vec<u64>,
}

fn family_index(family: u8) -> usize {
    match family {
        4 => 1,
        6 => 2,
        _ => 0,
    }
}

impl RuleSet {
    pub(super) fn new(rules: &[Rule]) -> RuleSet {
        let rules: Vec<CompiledRule> = rules.iter().map(CompiledRule::of).collect();
        let words = rules.len().div_ceil(64);
        let mut set = RuleSet {
            words,
            by_proto: vec![0; (usize::from(NO_PROTO) + 1) * words],
            by_family: vec![0; 3 * words],
            portless: vec![0; words],
            rules,
        };
        for (i, r) in set.rules.iter().enumerate() {
            let (word, bit) = (i / 64, 1u64 << (i % 64));
            for proto in 0..=NO_PROTO {
                if r.proto == ANY_PROTO || r.proto == proto {
                    set.by_proto[usize::from(proto) * words + word] |= bit;
                }
            }
            for family in [0u8, 4, 6] {
                let fits = |n: &Net| n.family == 0 || n.family == family;
                if fits(&r.src_net) && fits(&r.dst_net) {
                    set.by_family[family_index(family) * words + word] |= bit;
                }
            }
            if !r.needs_ports {
                set.portless[word] |= bit;
            }
        }
        set
    }

    pub(super) fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The index and verdict of the first rule that matches.
    #[inline]
    pub(super) fn first_match(&self, vm: &str, info: &FrameInfo) -> Option<(usize, RuleVerdict)> {
        let p = Probe::of(info);
        let proto_base = usize::from(p.proto.min(NO_PROTO)) * self.words;
        let family_base = family_index(p.family) * self.words;
        for w in 0..self.words {
            let (Some(&proto), Some(&family), Some(&portless)) = (
                self.by_proto.get(proto_base + w),
                self.by_family.get(family_base + w),
                self.portless.get(w),
            ) else {
                return None;
            };
            let mut candidates = proto & family & if p.has_ports { u64::MAX } else { portless };
            while candidates != 0 {
                let i = w * 64 + candidates.trailing_zeros() as usize;
                if let Some(rule) = self.rules.get(i) {
                    if rule.matches(vm, &p) {
                        return Some((i, rule.verdict));
                    }
                }
                candidates &= candidates - 1;
            }
        }
        None
    }
}
