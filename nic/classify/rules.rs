//! Operator rules (`[[classifier.rule]]`) and the per-VM override: validation of the TOML form
//! ([`RawRule`] -> [`Rule`], every error naming `classifier.rule[N].key`) and allocation-free
//! matching against a [`FrameInfo`].

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops::RangeInclusive;
use std::str::FromStr;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use super::FrameInfo;
use crate::wire::frame::MacAddr;

const PROTO_ICMP: u8 = 1;
const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;
const PROTO_ICMPV6: u8 = 58;

/// What a matching rule decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RuleVerdict {
    /// Deferrable, reason `rule:N`.
    Defer,
    /// Immediate, reason `rule:N`.
    Immediate,
    /// The built-in classification decides (the frame is taken out of later rules).
    Builtin,
}

/// Per-VM setting, applied before the rules: `"all"` frames deferrable (reason `vm-all`),
/// `"never"` (reason `vm-never`), or `"builtin"` (the default: rules, then built-in).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VmDefer {
    /// Every frame of the VM is deferrable (`vm-all`).
    All,
    /// No frame of the VM is deferrable (`vm-never`).
    Never,
    /// The rules, then the built-in classification.
    #[default]
    Builtin,
}

/// An IPv4 or IPv6 prefix. Host bits must be zero (`10.0.0.1/8` is refused as a likely typo
/// for `10.0.0.0/8` or `10.0.0.1/32`); a bare address is a /32 or /128.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IpNet {
    /// `addr/len`, len 0..=32.
    V4 {
        /// The network address.
        addr: Ipv4Addr,
        /// The prefix length.
        len: u8,
    },
    /// `addr/len`, len 0..=128.
    V6 {
        /// The network address.
        addr: Ipv6Addr,
        /// The prefix length.
        len: u8,
    },
}

/// Why a string is not an [`IpNet`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct IpNetParseError(pub String);

impl IpNet {
    /// The prefix `addr/len`; refuses a length beyond the family's width and set host bits.
    pub fn new(addr: IpAddr, len: u8) -> Result<IpNet, IpNetParseError> {
        let net = match addr {
            IpAddr::V4(addr) => IpNet::V4 { addr, len },
            IpAddr::V6(addr) => IpNet::V6 { addr, len },
        };
        let width = if addr.is_ipv4() { 32 } else { 128 };
        if len > width {
            return Err(IpNetParseError(format!(
                "prefix length {len} is out of range (0..={width} for {})",
                if addr.is_ipv4() { "IPv4" } else { "IPv6" }
            )));
        }
        let host_bits = match net {
            IpNet::V4 { addr, len } => u32::from(addr) & !mask32(len) != 0,
            IpNet::V6 { addr, len } => u128::from(addr) & !mask128(len) != 0,
        };
        if host_bits {
            let network = match net {
                IpNet::V4 { addr, len } => {
                    IpAddr::V4(Ipv4Addr::from(u32::from(addr) & mask32(len)))
                }
                IpNet::V6 { addr, len } => {
                    IpAddr::V6(Ipv6Addr::from(u128::from(addr) & mask128(len)))
                }
            };
            return Err(IpNetParseError(format!(
                "host bits are set in {addr}/{len} (the network is {network}/{len})"
            )));
        }
        Ok(net)
    }

    /// Whether `ip` is in this prefix (never across families).
    #[inline]
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (*self, ip) {
            (IpNet::V4 { addr, len }, IpAddr::V4(ip)) => {
                (u32::from(ip) ^ u32::from(addr)) & mask32(len) == 0
            }
            (IpNet::V6 { addr, len }, IpAddr::V6(ip)) => {
                (u128::from(ip) ^ u128::from(addr)) & mask128(len) == 0
            }
            _ => false,
        }
    }
}

/// The netmask of an IPv4 prefix length (lengths past 32 count as 32).
#[inline]
pub(super) fn mask32(len: u8) -> u32 {
    u32::MAX
        .checked_shl(32 - u32::from(len.min(32)))
        .unwrap_or(0)
}

/// The netmask of an IPv6 prefix length (lengths past 128 count as 128).
#[inline]
pub(super) fn mask128(len: u8) -> u128 {
    u128::MAX
        .checked_shl(128 - u32::from(len.min(128)))
        .unwrap_or(0)
}

impl FromStr for IpNet {
    type Err = IpNetParseError;

    fn from_str(s: &str) -> Result<IpNet, IpNetParseError> {
        let (addr_text, len_text) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr = addr_text.parse().map_err(|_| {
            IpNetParseError(format!(
                "{s:?} is not an IP address or prefix (e.g. \"10.0.0.0/8\", \"fd00::/16\", \"192.0.2.1\")"
            ))
        })?;
        let len = match len_text {
            None => {
                if addr.is_ipv4() {
                    32
                } else {
                    128
                }
            }
            Some(l) => l.parse::<u8>().map_err(|_| {
                IpNetParseError(format!(
                    "prefix length {l:?} is out of range (0..={} for {})",
                    if addr.is_ipv4() { 32 } else { 128 },
                    if addr.is_ipv4() { "IPv4" } else { "IPv6" }
                ))
            })?,
        };
        IpNet::new(addr, len)
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IpNet::V4 { addr, len } => write!(f, "{addr}/{len}"),
            IpNet::V6 { addr, len } => write!(f, "{addr}/{len}"),
        }
    }
}

/// A TOML value that may be written as an integer or a string (`protocol`, `src_port`,
/// `dst_port`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IntOrString {
    /// Written as a TOML integer.
    Int(i64),
    /// Written as a TOML string.
    Str(String),
}

impl From<&str> for IntOrString {
    fn from(s: &str) -> IntOrString {
        IntOrString::Str(s.to_string())
    }
}

impl From<i64> for IntOrString {
    fn from(n: i64) -> IntOrString {
        IntOrString::Int(n)
    }
}

impl fmt::Display for IntOrString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IntOrString::Int(n) => write!(f, "{n}"),
            IntOrString::Str(s) => write!(f, "{s:?}"),
        }
    }
}

impl<'de> Deserialize<'de> for IntOrString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<IntOrString, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = IntOrString;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an integer or a string")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<IntOrString, E> {
                Ok(IntOrString::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<IntOrString, E> {
                Ok(IntOrString::Int(i64::try_from(v).unwrap_or(i64::MAX)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<IntOrString, E> {
                Ok(IntOrString::Str(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// A rule as written in TOML (`[[classifier.rule]]`); [`Rule::from_raw`] validates it.
///
/// ```toml
/// [[classifier.rule]]
/// vm = "db1"                 # only this VM (default: all)
/// src_mac = "52:54:00:12:34:56"
/// dst_mac = "52:54:00:65:43:21"
/// src_ip = "10.0.0.0/8"      # prefix, or a bare address (= /32, /128)
/// dst_ip = "fd00::/16"
/// protocol = "tcp"           # "tcp" | "udp" | "icmp" | "icmpv6" | 0..=255
/// src_port = 80              # or "80", or "1000-2000"; needs protocol tcp or udp
/// dst_port = "1000-2000"
/// verdict = "defer"          # "defer" | "immediate" | "builtin" (required)
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    /// A VM name: the rule applies to that VM only.
    pub vm: Option<String>,
    /// `"52:54:00:12:34:56"`.
    pub src_mac: Option<String>,
    /// `"52:54:00:12:34:56"`.
    pub dst_mac: Option<String>,
    /// `"10.0.0.0/8"`, `"fd00::/16"`, or a bare address.
    pub src_ip: Option<String>,
    /// `"10.0.0.0/8"`, `"fd00::/16"`, or a bare address.
    pub dst_ip: Option<String>,
    /// `"tcp"`, `"udp"`, `"icmp"`, `"icmpv6"`, or 0..=255.
    pub protocol: Option<IntOrString>,
    /// `80`, `"80"` or `"1000-2000"`; needs protocol tcp or udp.
    pub src_port: Option<IntOrString>,
    /// `80`, `"80"` or `"1000-2000"`; needs protocol tcp or udp.
    pub dst_port: Option<IntOrString>,
    /// `"defer"`, `"immediate"` or `"builtin"`; required (optional here so that its absence
    /// is reported with the rule's index).
    pub verdict: Option<String>,
}

/// Why a rule was refused. Display is `classifier.rule[N].key: why` (N is 0-based).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {why}")]
pub struct RuleError {
    /// `classifier.rule[N].key`, or `classifier.rule[N]` for the rule as a whole.
    pub key: String,
    /// What is wrong with the value.
    pub why: String,
}

/// A validated rule. Every key that is `Some` must match (an empty rule matches every frame);
/// a frame that lacks the field (no IP layer, no ports) does not match a rule that tests it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Only frames of the VM with this name.
    pub vm: Option<String>,
    /// Source MAC.
    pub src_mac: Option<[u8; 6]>,
    /// Destination MAC.
    pub dst_mac: Option<[u8; 6]>,
    /// Source address prefix (a frame of the other family does not match).
    pub src_net: Option<IpNet>,
    /// Destination address prefix.
    pub dst_net: Option<IpNet>,
    /// The upper-layer protocol (after IPv6 extension headers).
    pub protocol: Option<u8>,
    /// TCP/UDP source ports (a non-first fragment has none, so it does not match).
    pub src_ports: Option<RangeInclusive<u16>>,
    /// TCP/UDP destination ports.
    pub dst_ports: Option<RangeInclusive<u16>>,
    /// What a match decides.
    pub verdict: RuleVerdict,
}

impl Rule {
    /// A rule with no conditions and this verdict (matches every frame).
    pub fn any(verdict: RuleVerdict) -> Rule {
        Rule {
            vm: None,
            src_mac: None,
            dst_mac: None,
            src_net: None,
            dst_net: None,
            protocol: None,
            src_ports: None,
            dst_ports: None,
            verdict,
        }
    }

    /// Validates rule number `index` (0-based, its position in `[[classifier.rule]]`). Errors
    /// name `classifier.rule[index].key`: an empty vm, a bad MAC, a bad prefix (length out of
    /// range, host bits set), an unknown protocol, a bad port or range (not a number, beyond
    /// 65535, start > end), ports without protocol tcp/udp, a missing or unknown verdict, or
    /// more than 65536 rules.
    pub fn from_raw(index: usize, raw: RawRule) -> Result<Rule, RuleError> {
        let err = |key: &str, why: String| RuleError {
            key: if key.is_empty() {
                format!("classifier.rule[{index}]")
            } else {
                format!("classifier.rule[{index}].{key}")
            },
            why,
        };
        if u16::try_from(index).is_err() {
            return Err(err(
                "",
                format!(
                    "too many rules: at most {} are allowed",
                    u32::from(u16::MAX) + 1
                ),
            ));
        }
        if let Some(vm) = &raw.vm {
            if vm.is_empty() {
                return Err(err("vm", "is empty: it must name a VM".into()));
            }
        }
        let mac = |key: &str, v: &Option<String>| -> Result<Option<[u8; 6]>, RuleError> {
            v.as_deref()
                .map(|s| {
                    s.parse::<MacAddr>()
                        .map(|m| m.0)
                        .map_err(|e| err(key, e.to_string()))
                })
                .transpose()
        };
        let net = |key: &str, v: &Option<String>| -> Result<Option<IpNet>, RuleError> {
            v.as_deref()
                .map(|s| s.parse::<IpNet>().map_err(|e| err(key, e.0)))
                .transpose()
        };
        let src_mac = mac("src_mac", &raw.src_mac)?;
        let dst_mac = mac("dst_mac", &raw.dst_mac)?;
        let src_net = net("src_ip", &raw.src_ip)?;
        let dst_net = net("dst_ip", &raw.dst_ip)?;
        let protocol = raw
            .protocol
            .as_ref()
            .map(|p| parse_protocol(p).map_err(|why| err("protocol", why)))
            .transpose()?;
        let ports = |key: &str, v: &Option<IntOrString>| {
            let Some(spec) = v else {
                return Ok(None);
            };
            let range = parse_ports(spec).map_err(|why| err(key, why))?;
            match protocol {
                Some(PROTO_TCP | PROTO_UDP) => Ok(Some(range)),
                Some(p) => Err(err(
                    key,
                    format!("ports need protocol \"tcp\" or \"udp\", not protocol {p}"),
                )),
                None => Err(err(
                    key,
                    "ports need protocol = \"tcp\" or \"udp\" in the same rule".into(),
                )),
            }
        };
        let src_ports = ports("src_port", &raw.src_port)?;
        let dst_ports = ports("dst_port", &raw.dst_port)?;
        const VERDICTS: &str = "one of \"defer\", \"immediate\", \"builtin\"";
        let verdict = match raw.verdict.as_deref() {
            Some("defer") => RuleVerdict::Defer,
            Some("immediate") => RuleVerdict::Immediate,
            Some("builtin") => RuleVerdict::Builtin,
            Some(other) => return Err(err("verdict", format!("{other:?} is not {VERDICTS}"))),
            None => return Err(err("verdict", format!("is missing: it must be {VERDICTS}"))),
        };
        Ok(Rule {
            vm: raw.vm,
            src_mac,
            dst_mac,
            src_net,
            dst_net,
            protocol,
            src_ports,
            dst_ports,
            verdict,
        })
    }

    /// Whether this rule matches a frame of VM `vm`. Allocation-free.
    #[inline]
    pub fn matches(&self, vm: &str, info: &FrameInfo) -> bool {
        if self.vm.as_deref().is_some_and(|v| v != vm)
            || self.src_mac.is_some_and(|m| m != info.src_mac)
            || self.dst_mac.is_some_and(|m| m != info.dst_mac)
        {
            return false;
        }
        if self.src_net.is_some() || self.dst_net.is_some() || self.protocol.is_some() {
            let Some(ip) = info.ip else {
                return false;
            };
            if self.src_net.is_some_and(|n| !n.contains(ip.src))
                || self.dst_net.is_some_and(|n| !n.contains(ip.dst))
                || self.protocol.is_some_and(|p| p != ip.protocol)
            {
                return false;
            }
        }
        if self.src_ports.is_some() || self.dst_ports.is_some() {
            let Some(ports) = info.ports else {
                return false;
            };
            if self
                .src_ports
                .as_ref()
                .is_some_and(|r| !r.contains(&ports.src))
                || self
                    .dst_ports
                    .as_ref()
                    .is_some_and(|r| !r.contains(&ports.dst))
            {
                return false;
            }
        }
        true
    }
}

fn parse_protocol(p: &IntOrString) -> Result<u8, String> {
    let named = "\"tcp\", \"udp\", \"icmp\", \"icmpv6\" or a number 0..=255";
    match p {
        IntOrString::Int(n) => {
            u8::try_from(*n).map_err(|_| format!("{n} is out of range: use {named}"))
        }
        IntOrString::Str(s) => match s.as_str() {
            "tcp" => Ok(PROTO_TCP),
            "udp" => Ok(PROTO_UDP),
            "icmp" => Ok(PROTO_ICMP),
            "icmpv6" => Ok(PROTO_ICMPV6),
            other => other
                .parse::<u8>()
                .map_err(|_| format!("{other:?} is not a known protocol: use {named}")),
        },
    }
}

fn parse_ports(p: &IntOrString) -> Result<RangeInclusive<u16>, String> {
    let port =
        |n: i64| u16::try_from(n).map_err(|_| format!("port {n} is out of range (0..=65535)"));
    let port_text = |s: &str| -> Result<u16, String> {
        let t = s.trim();
        let n: i64 = t
            .parse()
            .map_err(|_| format!("{p} is not a port or range (e.g. 80, \"80\", \"1000-2000\")"))?;
        port(n)
    };
    match p {
        IntOrString::Int(n) => port(*n).map(|n| n..=n),
        IntOrString::Str(s) => {
            let (start, end) = match s.split_once('-') {
                Some((a, b)) => (port_text(a)?, port_text(b)?),
                None => {
                    let n = port_text(s)?;
                    (n, n)
                }
            };
            if start > end {
                return Err(format!(
                    "range {s:?} is empty: its start {start} is above its end {end}"
                ));
            }
            Ok(start..=end)
        }
    }
}
