//! The operator's TOML file, parsed into raw serde structs (strings for modes, MACs and ports, so
//! the messages are ours) and then validated into typed ones. A config is validated completely
//! before EAL starts; every error names its key and why.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::Deserialize;

use crate::wire::frame::MacAddr;

/// Why a config was rejected. Display is `<key>: <why>`, so the operator knows where to look.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: cannot read config file: {source}", .path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Not TOML, a value of the wrong type, or an unknown key. The text is toml's, which already
    /// names the line, the column and the field.
    #[error("config: {0}")]
    Parse(String),
    /// Well-formed TOML with a value epochgate cannot use.
    #[error("{key}: {why}")]
    Invalid { key: String, why: String },
}

fn invalid(key: impl Into<String>, why: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        why: why.into(),
    }
}

// ---------------------------------------------------------------------------------------------
// Typed configuration
// ---------------------------------------------------------------------------------------------

/// A validated configuration: every port parses, every VM is reachable, nothing is duplicated.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub eal: EalConfig,
    pub egress: PortSpec,
    /// The shared ingress port, on which VMs are told apart by source MAC (and VLAN).
    pub ingress: Option<PortSpec>,
    pub control: ControlConfig,
    /// `[admin]`: the operator's other ways in (the admin socket itself is `control.admin_socket`).
    pub admin: AdminConfig,
    pub dataplane: DataplaneConfig,
    pub classifier: ClassifierConfig,
    pub vms: Vec<VmConfig>,
    /// `[egress] passthrough_min_share` in parts per million: the share of egress bytes that
    /// pass-through traffic keeps while protected VMs' released frames are also waiting
    /// (released frames otherwise have strict priority). Below 1_000_000.
    pub passthrough_min_share_ppm: u32,
}

/// `[classifier]`: which held frames may wait for a checkpoint, and how long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassifierConfig {
    /// The checkpoint request policy, in nanoseconds.
    pub policy: crate::hold::policy::PolicyConfig,
    /// Track each flow's advertised TCP window; an ACK that opens a small window is immediate.
    pub window_updates: bool,
    /// Below this advertised window, in bytes after TCP window scaling (RFC 7323: the header
    /// value shifted left by the scale the flow's handshake agreed on; the raw header value for
    /// a flow whose handshake was not seen), an ACK raising it to this or more is a window
    /// update the sender waits for.
    pub window_update_threshold: u32,
    /// Flows the window table remembers (fixed; the least recently seen is evicted).
    pub flow_table: usize,
    /// `[[classifier.rule]]`, first match wins.
    pub rules: Vec<crate::classify::Rule>,
}

impl Default for ClassifierConfig {
    fn default() -> Self {
        RawClassifier::default()
            .validate()
            .expect("the defaults are valid")
    }
}

/// `[classifier]` as written; times in milliseconds.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "the [classifier] table")]
struct RawClassifier {
    defer_delay_ms: f64,
    max_defer_ms: f64,
    min_checkpoint_interval_ms: f64,
    window_updates: bool,
    window_update_threshold: u32,
    flow_table: usize,
    rule: Vec<crate::classify::RawRule>,
}

impl Default for RawClassifier {
    fn default() -> Self {
        RawClassifier {
            defer_delay_ms: 5.0,
            max_defer_ms: 10.0,
            min_checkpoint_interval_ms: 0.0,
            window_updates: true,
            window_update_threshold: 1460,
            flow_table: 4096,
            rule: Vec::new(),
        }
    }
}

const DEFER_MAX_MS: f64 = 10_000.0;
const FLOW_TABLE_MAX: usize = 1 << 20;

impl RawClassifier {
    fn validate(self) -> Result<ClassifierConfig, ConfigError> {
        let ns = |key: &str, ms: f64| -> Result<u64, ConfigError> {
            if !(0.0..=DEFER_MAX_MS).contains(&ms) {
                return Err(invalid(
                    format!("classifier.{key}"),
                    format!("{ms} is out of range 0..={DEFER_MAX_MS} ms"),
                ));
            }
            Ok((ms * 1e6).round() as u64)
        };
        let policy = crate::hold::policy::PolicyConfig {
            defer_delay_ns: ns("defer_delay_ms", self.defer_delay_ms)?,
            max_defer_ns: ns("max_defer_ms", self.max_defer_ms)?,
            min_interval_ns: ns(
                "min_checkpoint_interval_ms",
                self.min_checkpoint_interval_ms,
            )?,
            // Per VM now ([[vm]] high_water): the data plane sets each VM's own marks.
            high_water_frames: 0,
            high_water_bytes: 0,
        };
        if self.max_defer_ms < self.defer_delay_ms {
            return Err(invalid(
                "classifier.max_defer_ms",
                format!(
                    "{} is less than defer_delay_ms ({}): a deferral is capped at max_defer_ms after its first frame",
                    self.max_defer_ms, self.defer_delay_ms
                ),
            ));
        }
        if self.flow_table == 0 || self.flow_table > FLOW_TABLE_MAX {
            return Err(invalid(
                "classifier.flow_table",
                format!("{} is out of range 1..={FLOW_TABLE_MAX}", self.flow_table),
            ));
        }
        let rules = self
            .rule
            .into_iter()
            .enumerate()
            .map(|(i, r)| crate::classify::Rule::from_raw(i, r))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ConfigError::Invalid {
                key: e.key,
                why: e.why,
            })?;
        Ok(ClassifierConfig {
            policy,
            window_updates: self.window_updates,
            window_update_threshold: self.window_update_threshold,
            flow_table: self.flow_table,
            rules,
        })
    }
}

/// `[eal]`: what the DPDK environment abstraction layer is started with.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "the [eal] table")]
pub struct EalConfig {
    /// EAL `-l` list, e.g. "0-1" or "0,2-3".
    pub lcores: String,
    /// EAL `-m`, in megabytes.
    pub memory_mb: u32,
    /// `false` runs without hugepages (`--no-huge`): slow, but needs no host setup.
    pub hugepages: bool,
    /// EAL `--file-prefix`, so several instances on one host do not share runtime files.
    pub file_prefix: String,
    /// Extra EAL arguments, appended verbatim after the ones epochgate derives.
    pub args: Vec<String>,
}

impl Default for EalConfig {
    fn default() -> Self {
        EalConfig {
            lcores: "0-1".to_string(),
            memory_mb: 512,
            hugepages: true,
            file_prefix: "epochgate".to_string(),
            args: Vec::new(),
        }
    }
}

/// `[control]`: where the VMM shim and the operator talk to epochgate.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "the [control] table")]
pub struct ControlConfig {
    /// The socket the VMM shim uses for epoch fences and commits.
    pub socket: PathBuf,
    /// The socket for operator commands (`epochgate stats`, `epochgate vms`). Absent (or empty):
    /// `admin.sock` in `socket`'s directory, so one setting moves both.
    #[serde(default)]
    pub admin_socket: PathBuf,
    /// Permissions of the control socket file, in octal ("0660"). Connecting needs write
    /// permission on it; the peer's credentials are checked as well.
    pub socket_mode: String,
    /// Users whose VMM sessions are accepted, besides root and the user epochgate runs as
    /// (those two always are).
    pub allowed_uids: Vec<u32>,
    /// Groups whose members' sessions are accepted (checked against the peer's primary gid).
    pub allowed_gids: Vec<u32>,
    /// How long a fence may spend draining a paused VM's ingress before it seals anyway.
    pub fence_drain_ms: u64,
    /// A session that sends nothing (not even `Ping`) for this long is treated as a dead
    /// controller: its VM goes to `failed`. 0 turns the check off. Time a command of the
    /// session spends with the worker (a fence's drain) is not silence. When not 0 it must
    /// exceed `fence_drain_ms`.
    pub liveness_timeout_ms: u64,
    /// A session that has not adopted a VM (`Hello`) this long after connecting is told why
    /// and closed, so that connections that never speak cannot hold sessions.
    pub hello_timeout_ms: u64,
    /// At most this many sessions at once (at least one per VM); a connection beyond it is
    /// told the limit and closed.
    pub max_sessions: usize,
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            socket: PathBuf::from("/run/epochgate/control.sock"),
            admin_socket: PathBuf::from("/run/epochgate/admin.sock"),
            socket_mode: "0660".to_string(),
            allowed_uids: Vec::new(),
            allowed_gids: Vec::new(),
            fence_drain_ms: 10,
            liveness_timeout_ms: 0,
            hello_timeout_ms: 2000,
            max_sessions: 64,
        }
    }
}

impl ControlConfig {
    /// `socket_mode` as a number (validated when the config was loaded).
    pub fn mode_bits(&self) -> u32 {
        parse_mode(&self.socket_mode).unwrap_or(0o660)
    }
}

fn parse_mode(s: &str) -> Option<u32> {
    let digits = s.strip_prefix("0o").unwrap_or(s);
    if digits.is_empty() || digits.len() > 4 {
        return None;
    }
    u32::from_str_radix(digits, 8).ok().filter(|m| *m <= 0o777)
}

/// `[admin]`: the metrics endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AdminConfig {
    /// Where `/metrics` is served over HTTP (Prometheus text format), if anywhere.
    pub metrics_listen: Option<std::net::SocketAddr>,
}

/// `[admin]` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "the [admin] table")]
struct RawAdmin {
    metrics_listen: Option<String>,
}

impl RawAdmin {
    fn validate(self) -> Result<AdminConfig, ConfigError> {
        let metrics_listen = match self.metrics_listen {
            None => None,
            Some(s) => Some(parse_listen(&s).map_err(|why| invalid("admin.metrics_listen", why))?),
        };
        Ok(AdminConfig { metrics_listen })
    }
}

/// `PORT` (on loopback, 127.0.0.1), `IP:PORT`, `[IPv6]:PORT` or `localhost:PORT`.
pub fn parse_listen(s: &str) -> Result<std::net::SocketAddr, String> {
    use std::net::{IpAddr, Ipv4Addr, SocketAddr};
    let t = s.trim();
    let form = "expected PORT (on 127.0.0.1), IP:PORT or [IPv6]:PORT, e.g. \"127.0.0.1:9716\"";
    if t.is_empty() {
        return Err(format!("empty: {form}"));
    }
    let port = |p: &str| -> Result<u16, String> {
        p.parse::<u16>()
            .map_err(|_| format!("{s:?}: port {p:?} is not a number in 0..=65535 ({form})"))
    };
    if t.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port(t)?));
    }
    if let Some(p) = t.strip_prefix("localhost:") {
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port(p)?));
    }
    if let Ok(a) = t.parse::<SocketAddr>() {
        return Ok(a);
    }
    match t.rsplit_once(':') {
        Some((host, _)) if host.parse::<IpAddr>().is_err() => Err(format!(
            "{s:?}: {host:?} is not an IP address (host names other than localhost are not looked up; {form})"
        )),
        Some((_, p)) => port(p).and_then(|_| Err(format!("{s:?}: not an address ({form})"))),
        None => Err(format!("{s:?}: no port ({form})")),
    }
}

/// `[dataplane]`: pool, ring and queue sizes.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "the [dataplane] table")]
pub struct DataplaneConfig {
    /// Mbufs in the packet pool (2^n - 1 is what DPDK's ring-backed pools use best).
    pub mbufs: u32,
    /// Per-lcore mempool cache.
    pub mbuf_cache: u32,
    /// Descriptors per RX ring: a power of two in 64..=4096.
    pub rx_ring: u16,
    /// Descriptors per TX ring: a power of two in 64..=4096.
    pub tx_ring: u16,
    /// The default `max_held_frames` of each VM: how many frames epochgate keeps for it (held
    /// in epochs, or released and waiting for egress or its rate).
    pub vm_queue: u32,
    /// How often counters are published.
    pub stats_interval_ms: u64,
}

impl Default for DataplaneConfig {
    fn default() -> Self {
        DataplaneConfig {
            mbufs: 16383,
            mbuf_cache: 256,
            rx_ring: 1024,
            tx_ring: 1024,
            vm_queue: 1024,
            stats_interval_ms: 1000,
        }
    }
}

/// How epochgate treats a VM's outbound frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Mode {
    /// Not checkpointed: frames go straight to the egress scheduler.
    #[default]
    Passthrough,
    /// Frames are held until the epoch that produced them is committed.
    Protected,
    /// The secondary copy on this host: its frames are dropped (and counted) until it is promoted.
    Standby,
}

impl Mode {
    /// The spelling used in the config file and on the admin socket.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Passthrough => "passthrough",
            Mode::Protected => "protected",
            Mode::Standby => "standby",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a string is not a [`Mode`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown mode {0:?} (expected \"passthrough\", \"protected\" or \"standby\")")]
pub struct ModeParseError(pub String);

impl FromStr for Mode {
    type Err = ModeParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "passthrough" => Ok(Mode::Passthrough),
            "protected" => Ok(Mode::Protected),
            "standby" => Ok(Mode::Standby),
            _ => Err(ModeParseError(s.to_string())),
        }
    }
}

/// One `[[vm]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct VmConfig {
    pub name: String,
    /// The VM's own port; `None` means it sends on the shared ingress.
    pub port: Option<PortSpec>,
    /// On the shared ingress: the source MAC that identifies the VM. On its own port: the VM's
    /// address for the inbound path; `None` means it is learned from the VM's first frame.
    pub mac: Option<MacAddr>,
    /// Outer VLAN id that, together with `mac`, identifies the VM.
    pub vlan: Option<u16>,
    pub mode: Mode,
    /// Addresses announced (gratuitous ARP, unsolicited neighbour advertisement) when the VM
    /// is promoted on this host.
    pub announce: Vec<std::net::IpAddr>,
    /// Whether its held frames may be deferred: the rules and built-in classes, all, or never.
    pub defer: crate::classify::VmDefer,
    /// How much epochgate keeps for it, and what happens when that is full.
    pub limits: BufferLimits,
    /// Its regulator (token buckets); all zero: unlimited.
    pub rate: RateLimit,
}

/// What a VM's buffer does when full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnFull {
    /// Stop reading the VM's port until there is room again (only for a VM with its own port).
    #[default]
    Backpressure,
    /// Drop (and count) what does not fit.
    Drop,
}

impl OnFull {
    /// The spelling used in the config file: "backpressure" or "drop".
    pub fn as_str(self) -> &'static str {
        match self {
            OnFull::Backpressure => "backpressure",
            OnFull::Drop => "drop",
        }
    }
}

impl fmt::Display for OnFull {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A VM's buffer limits: everything epochgate keeps for it (held in epochs, or released and
/// waiting for egress or its rate).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufferLimits {
    /// `max_held_frames`.
    pub max_frames: u64,
    /// `max_held_bytes`; 0: no byte limit.
    pub max_bytes: u64,
    /// 0: off; a checkpoint is requested once this many frames are buffered.
    pub high_water_frames: u64,
    /// 0: off; a checkpoint is requested once this many bytes are buffered.
    pub high_water_bytes: u64,
    /// What happens to a frame that does not fit.
    pub on_full: OnFull,
}

impl BufferLimits {
    /// The limits of a VM that sets none of the keys: `vm_queue` frames, no byte limit, high
    /// water at 0.75, and `on_full` by attachment (backpressure on its own port, drop on the
    /// shared ingress).
    pub fn default_for(vm_queue: u32, own_port: bool) -> BufferLimits {
        let max_frames = u64::from(vm_queue);
        BufferLimits {
            max_frames,
            max_bytes: 0,
            high_water_frames: high_water_mark(HIGH_WATER_DEFAULT, max_frames),
            high_water_bytes: 0,
            on_full: if own_port {
                OnFull::Backpressure
            } else {
                OnFull::Drop
            },
        }
    }
}

/// A VM's regulator (token buckets). 0 = no limit for that dimension.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RateLimit {
    /// Ethernet frame bytes (no preamble, no FCS) per second.
    pub bytes_per_s: u64,
    /// Depth of the byte bucket.
    pub burst_bytes: u64,
    /// Frames per second.
    pub pps: u64,
    /// Depth of the frame bucket.
    pub burst_frames: u64,
}

impl RateLimit {
    /// No limit in either dimension.
    pub fn is_unlimited(&self) -> bool {
        self.bytes_per_s == 0 && self.pps == 0
    }
}

/// `ceil(fraction * n)`, where a product within rounding error of a whole number counts as that
/// number (0.7 * 100 is 70, not 71); 0 when `fraction` or `n` is 0.
fn high_water_mark(fraction: f64, n: u64) -> u64 {
    if fraction <= 0.0 || n == 0 {
        return 0;
    }
    let x = fraction * n as f64;
    let nearest = x.round();
    let mark = if (x - nearest).abs() <= 1e-9 * nearest.max(1.0) {
        nearest
    } else {
        x.ceil()
    };
    (mark as u64).clamp(1, n)
}

/// A DPDK port as the operator wrote it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PortSpec {
    /// A virtual device: `spec` is handed to `--vdev`, `name` (before the first comma) is the
    /// ethdev name.
    Vdev { spec: String, name: String },
    /// A PCI device, normalised to DPDK's device name: "0000:03:00.0".
    Pci { addr: String },
}

const PORT_SYNTAX: &str =
    "is neither a vdev spec (net_<driver><n>[,key=value...]) nor a PCI address (0000:03:00.0)";

// DPDK's RTE_ETH_NAME_MAX_LEN is 64 including the terminating NUL.
const MAX_DEV_NAME: usize = 63;

impl PortSpec {
    /// Parses a vdev spec or a PCI address; the error says why, quoting `s`.
    pub fn parse(s: &str) -> Result<PortSpec, String> {
        if let Some(pci) = parse_pci(s) {
            return pci.map(|addr| PortSpec::Pci { addr });
        }
        if s.starts_with("net_") {
            return parse_vdev(s).map(|name| PortSpec::Vdev {
                spec: s.to_string(),
                name,
            });
        }
        Err(format!("{s:?} {PORT_SYNTAX}"))
    }

    /// The vdev name or PCI address: what `rte_eth_dev_get_port_by_name` takes.
    pub fn device_name(&self) -> &str {
        match self {
            PortSpec::Vdev { name, .. } => name,
            PortSpec::Pci { addr } => addr,
        }
    }

    /// A PCI device (allow-listed with `-a`) rather than a vdev.
    pub fn is_pci(&self) -> bool {
        matches!(self, PortSpec::Pci { .. })
    }
}

impl fmt::Display for PortSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortSpec::Vdev { spec, .. } => f.write_str(spec),
            PortSpec::Pci { addr } => f.write_str(addr),
        }
    }
}

/// `None` if `s` does not look like a PCI address at all (so the caller can try a vdev);
/// otherwise the normalised address or why it is out of range.
fn parse_pci(s: &str) -> Option<Result<String, String>> {
    let is_hex = |p: &str, max: usize| {
        !p.is_empty() && p.len() <= max && p.bytes().all(|b| b.is_ascii_hexdigit())
    };
    let parts: Vec<&str> = s.split(':').collect();
    let (domain, bus, devfn) = match parts.as_slice() {
        [bus, devfn] => ("0", *bus, *devfn),
        [domain, bus, devfn] => (*domain, *bus, *devfn),
        _ => return None,
    };
    let (dev, func) = devfn.split_once('.')?;
    // Domains above ffff exist (Intel VMD uses 10000 and up), so allow a full u32.
    if !(is_hex(domain, 8) && is_hex(bus, 2) && is_hex(dev, 2) && is_hex(func, 2)) {
        return None;
    }
    let hex = |p: &str| u32::from_str_radix(p, 16).unwrap_or(u32::MAX);
    let (domain, bus, dev, func) = (hex(domain), hex(bus), hex(dev), hex(func));
    if dev > 0x1f {
        return Some(Err(format!(
            "{s:?} is not a valid PCI address: device {dev:#04x} is above 0x1f"
        )));
    }
    if func > 7 {
        return Some(Err(format!(
            "{s:?} is not a valid PCI address: function {func:#x} is above 7"
        )));
    }
    // The same format as DPDK's rte_pci_device_name, so the name finds the probed port.
    Some(Ok(format!("{domain:04x}:{bus:02x}:{dev:02x}.{func:x}")))
}

/// Checks a spec that starts with "net_"; returns its device name.
fn parse_vdev(s: &str) -> Result<String, String> {
    let bad = |why: String| format!("{s:?} is not a valid vdev spec: {why}");
    let mut items = s.split(',');
    let name = items.next().unwrap_or_default();
    let instance = &name["net_".len()..];
    if instance.is_empty() {
        return Err(bad(
            "the driver and instance are missing after \"net_\" (e.g. net_pcap0)".to_string(),
        ));
    }
    if let Some(c) = instance
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_'))
    {
        return Err(bad(format!(
            "the device name {name:?} contains {c:?} (allowed: A-Z a-z 0-9 _)"
        )));
    }
    if name.len() > MAX_DEV_NAME {
        return Err(bad(format!(
            "the device name is {} characters long (DPDK allows at most {MAX_DEV_NAME})",
            name.len()
        )));
    }
    let mut seen: Vec<&str> = Vec::new();
    for item in items {
        // A bare key is allowed: some drivers take flags (net_tap's "persist").
        let (key, value) = item.split_once('=').unwrap_or((item, "x"));
        let key_ok = !key.is_empty()
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !key_ok {
            return Err(bad(format!(
                "parameter {item:?} is not key=value (keys use A-Z a-z 0-9 _ -)"
            )));
        }
        if value.is_empty() {
            return Err(bad(format!("parameter {key:?} has an empty value")));
        }
        if seen.contains(&key) && !repeatable(name, key) {
            return Err(bad(format!(
                "parameter {key:?} is given twice: the driver would use one and silently drop the other"
            )));
        }
        seen.push(key);
        if let Some(kind) = resource_kind(name, key) {
            kind.check(value)
                .map_err(|why| bad(format!("{key}={value:?} {why}")))?;
        }
    }
    Ok(name.to_string())
}

// ---------------------------------------------------------------------------------------------
// What each port is attached to
// ---------------------------------------------------------------------------------------------

/// What a vdev key names. Two ports on one such resource are one device seen twice: a protected
/// VM's output could leave through the other port, so every resource must be unique.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ResourceKind {
    /// A kernel network interface (tap, af_packet, a pcap live capture).
    Interface,
    /// A file the port reads or writes (pcap).
    File,
    /// A unix socket or device path (vhost-user, virtio-user).
    Socket,
    /// A memif socket: one memif connection is (socket, `id=`).
    Memif,
    /// A `net_ring` ring: the name in `nodeaction=name:node:action`.
    Ring,
    /// A PCI device (the port itself).
    Pci,
    /// Another port, by its device name (a bond's members).
    Port,
}

/// Per driver (a prefix of the device name, matched the way DPDK's vdev bus matches drivers),
/// the keys that name a resource. A driver that is not here (net_null, ...) names none.
/// net_af_xdp is included although two of its ports on one interface with different queues
/// could be legitimate: conservatively, an interface is one port's.
const VDEV_RESOURCES: &[(&str, &[(&str, ResourceKind)])] = {
    use ResourceKind::*;
    &[
        ("net_tap", &[("iface", Interface), ("remote", Interface)]),
        ("net_tun", &[("iface", Interface)]),
        ("net_af_packet", &[("iface", Interface)]),
        (
            "net_pcap",
            &[
                ("iface", Interface),
                ("rx_iface", Interface),
                ("rx_iface_in", Interface),
                ("tx_iface", Interface),
                ("rx_pcap", File),
                ("tx_pcap", File),
            ],
        ),
        ("net_vhost", &[("iface", Socket)]),
        ("net_virtio_user", &[("path", Socket), ("iface", Interface)]),
        ("net_memif", &[("socket", Memif)]),
        ("net_ring", &[("nodeaction", Ring)]),
        ("net_af_xdp", &[("iface", Interface)]),
        ("net_bonding", &[("slave", Port), ("member", Port)]),
    ]
};

/// Keys a driver takes more than once (one ring per `nodeaction`, one member per `slave`).
const REPEATABLE_KEYS: &[(&str, &str)] = &[
    ("net_ring", "nodeaction"),
    ("net_bonding", "slave"),
    ("net_bonding", "member"),
];

/// memif's socket when `socket=` is absent (DPDK's ETH_MEMIF_DEFAULT_SOCKET_FILENAME).
const MEMIF_DEFAULT_SOCKET: &str = "/run/memif.sock";
/// Linux IFNAMSIZ is 16 with the terminating NUL.
const IFNAME_MAX: usize = 15;
/// `struct sockaddr_un.sun_path` is 108 bytes with the terminating NUL.
const SUN_PATH_MAX: usize = 107;

/// Net vdev drivers DPDK ships that name no resource here (see [`VDEV_RESOURCES`]).
const OTHER_VDEV_DRIVERS: &[&str] = &["net_null", "net_failsafe", "net_vdev_netvsc", "net_softnic"];

/// Whether `device` (a vdev name such as "net_pcap0") is of a DPDK driver epochgate knows; a
/// device of another driver may still be real (a PMD epochgate has not heard of).
pub fn known_vdev_driver(device: &str) -> bool {
    VDEV_RESOURCES
        .iter()
        .map(|(driver, _)| *driver)
        .chain(OTHER_VDEV_DRIVERS.iter().copied())
        .any(|driver| device.starts_with(driver))
}

fn driver_keys(device: &str) -> &'static [(&'static str, ResourceKind)] {
    VDEV_RESOURCES
        .iter()
        .find(|(driver, _)| device.starts_with(driver))
        .map_or(&[], |(_, keys)| keys)
}

fn resource_kind(device: &str, key: &str) -> Option<ResourceKind> {
    driver_keys(device)
        .iter()
        .find(|(k, _)| *k == key)
        .map(|(_, kind)| *kind)
}

fn repeatable(device: &str, key: &str) -> bool {
    REPEATABLE_KEYS
        .iter()
        .any(|(driver, k)| device.starts_with(driver) && *k == key)
}

impl ResourceKind {
    /// How the resource is called in messages.
    fn noun(self) -> &'static str {
        match self {
            ResourceKind::Interface => "interface",
            ResourceKind::File => "file",
            ResourceKind::Socket => "socket",
            ResourceKind::Memif => "memif socket",
            ResourceKind::Ring => "ring",
            ResourceKind::Pci => "PCI device",
            ResourceKind::Port => "port",
        }
    }

    /// Whether `value` can name such a resource at all; the error completes "key=value ...".
    fn check(self, value: &str) -> Result<(), String> {
        match self {
            // The kernel's dev_valid_name(): what it refuses, "no such device" reports later.
            ResourceKind::Interface => {
                if value.len() > IFNAME_MAX {
                    return Err(format!(
                        "is {} characters long: Linux interface names have at most {IFNAME_MAX} (IFNAMSIZ - 1)",
                        value.len()
                    ));
                }
                if value == "." || value == ".." {
                    return Err("is not an interface name Linux accepts".to_string());
                }
                if value.contains('%') {
                    return Err(
                        "contains '%': the kernel would pick the name (\"tap%d\" becomes tap0, tap1, ...), so it could be another port's interface; name it exactly".to_string(),
                    );
                }
                if let Some(c) = value
                    .chars()
                    .find(|c| *c == '/' || *c == ':' || c.is_whitespace())
                {
                    return Err(format!(
                        "contains {c:?}: Linux interface names may not contain '/', ':' or whitespace"
                    ));
                }
                Ok(())
            }
            ResourceKind::Socket | ResourceKind::Memif if value.len() > SUN_PATH_MAX => {
                Err(format!(
                    "is {} bytes long: a unix socket path has at most {SUN_PATH_MAX} (sun_path)",
                    value.len()
                ))
            }
            _ => Ok(()),
        }
    }
}

/// The identity of a resource: what two ports must not share.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Resource {
    Interface(String),
    /// A file or socket path, normalised lexically.
    Path(PathBuf),
    /// A memif socket (normalised) and the connection id on it.
    Memif(PathBuf, u64),
    Ring(String),
    Pci(String),
    /// An existing file, by device and inode: hard links and symlinks are one file.
    Inode(u64, u64),
    /// A port, by device name (a bond member, or the port itself).
    Port(String),
}

impl Resource {
    /// Two ports clash: one name, or a memif socket that is another port's file or socket.
    fn clashes(&self, other: &Resource) -> bool {
        match (self, other) {
            (Resource::Memif(p, _), Resource::Path(q))
            | (Resource::Path(p), Resource::Memif(q, _)) => p == q,
            // pcap's "any" captures every interface.
            (Resource::Interface(a), Resource::Interface(b)) => a == b || a == "any" || b == "any",
            _ => self == other,
        }
    }
}

/// One resource of a port: the vdev key that names it, as written, and its identity.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PortResource {
    kind: ResourceKind,
    key: &'static str,
    written: String,
    id: Resource,
}

impl PortResource {
    /// `interface "tap0"`, `memif socket "/run/memif.sock" (id 0)`.
    fn describe(&self) -> String {
        match &self.id {
            Resource::Memif(_, id) => {
                format!("{} {:?} (id {id})", self.kind.noun(), self.written)
            }
            _ => format!("{} {:?}", self.kind.noun(), self.written),
        }
    }
}

/// `p` made absolute, with symlinks resolved as far as the path exists (a file that does not
/// exist yet, such as a pcap to write, is resolved through its directory), else lexically.
fn normalise_path(p: &str) -> PathBuf {
    let lexical = lexical_path(p);
    if let Ok(real) = std::fs::canonicalize(&lexical) {
        return real;
    }
    match (lexical.parent(), lexical.file_name()) {
        (Some(dir), Some(name)) => std::fs::canonicalize(dir)
            .map(|d| d.join(name))
            .unwrap_or(lexical),
        _ => lexical,
    }
}

/// The identity of an existing file (device, inode), so hard links are seen as one file.
fn inode(p: &Path) -> Option<Resource> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p)
        .ok()
        .map(|m| Resource::Inode(m.dev(), m.ino()))
}

/// `p` made absolute against the working directory, without "." and "..", and with single
/// slashes; lexical only (symlinks are not followed, the file need not exist).
fn lexical_path(p: &str) -> PathBuf {
    use std::path::Component;
    let path = Path::new(p);
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir().map_or_else(|_| path.to_path_buf(), |d| d.join(path))
    };
    let mut out = PathBuf::new();
    for c in abs.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    out
}

/// Every resource `spec` is attached to, in the order its keys are written. A memif port
/// without `socket=` is on memif's default socket.
fn port_resources(spec: &PortSpec) -> Vec<PortResource> {
    let (spec, name) = match spec {
        PortSpec::Pci { addr } => {
            return vec![PortResource {
                kind: ResourceKind::Pci,
                key: "address",
                written: addr.clone(),
                id: Resource::Pci(addr.clone()),
            }]
        }
        PortSpec::Vdev { spec, name } => (spec, name),
    };
    let params: Vec<(&str, &str)> = spec
        .split(',')
        .skip(1)
        .filter_map(|kv| kv.split_once('='))
        .collect();
    let mut out = Vec::new();
    for &(key, value) in &params {
        let Some(&(key, kind)) = driver_keys(name).iter().find(|(k, _)| *k == key) else {
            continue;
        };
        let id = match kind {
            ResourceKind::Interface => Resource::Interface(value.to_string()),
            ResourceKind::File | ResourceKind::Socket => Resource::Path(normalise_path(value)),
            // Below, with its id; a PCI address is not a vdev key.
            ResourceKind::Memif | ResourceKind::Pci => continue,
            ResourceKind::Ring => Resource::Ring(value.split(':').next().unwrap_or(value).into()),
            ResourceKind::Port => Resource::Port(value.to_string()),
        };
        // An existing file or socket is also known by its inode (a hard link is the same file).
        if let Resource::Path(path) = &id {
            if let Some(ino) = inode(path) {
                out.push(PortResource {
                    kind,
                    key,
                    written: value.to_string(),
                    id: ino,
                });
            }
        }
        let written = match &id {
            Resource::Ring(ring) => ring.clone(),
            _ => value.to_string(),
        };
        out.push(PortResource {
            kind,
            key,
            written,
            id,
        });
    }
    // Every port is itself a resource a bond may name; a ring port without nodeaction= makes a
    // ring named after the device, which another ring port's nodeaction= may attach to.
    out.push(PortResource {
        kind: ResourceKind::Port,
        key: "device",
        written: name.clone(),
        id: Resource::Port(name.clone()),
    });
    if name.starts_with("net_ring") && !params.iter().any(|(k, _)| *k == "nodeaction") {
        out.push(PortResource {
            kind: ResourceKind::Ring,
            key: "device",
            written: name.clone(),
            id: Resource::Ring(name.clone()),
        });
    }
    if resource_kind(name, "socket") == Some(ResourceKind::Memif) {
        let get = |k: &str| params.iter().find(|(key, _)| *key == k).map(|(_, v)| *v);
        let socket = get("socket").unwrap_or(MEMIF_DEFAULT_SOCKET);
        // memif's id= is a u32; an unparsable one is EAL's to refuse, and collides with nothing.
        let id = get("id").map_or(Some(0), |v| v.parse().ok());
        if let Some(id) = id {
            out.push(PortResource {
                kind: ResourceKind::Memif,
                key: "socket",
                written: socket.to_string(),
                id: Resource::Memif(normalise_path(socket), id),
            });
        }
    }
    out
}

impl Config {
    /// Parses and validates a whole config.
    pub fn from_toml_str(s: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(s)
            .map_err(|e| misplaced_key(s).unwrap_or_else(|| ConfigError::Parse(e.to_string())))?;
        raw.validate()
    }

    /// Reads, parses and validates the config file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Config::from_toml_str(&text)
    }

    /// All ports in a stable order: egress first, then ingress, then VM ports in VM order.
    pub fn ports(&self) -> Vec<&PortSpec> {
        std::iter::once(&self.egress)
            .chain(self.ingress.as_ref())
            .chain(self.vms.iter().filter_map(|vm| vm.port.as_ref()))
            .collect()
    }

    /// Every port with the key it was configured under ("egress.port", "ingress.port",
    /// `vm[2] ("db").port`), in [`Config::ports`] order: what errors about a port name.
    pub fn port_keys(&self) -> Vec<(String, &PortSpec)> {
        std::iter::once(("egress.port".to_string(), &self.egress))
            .chain(
                self.ingress
                    .as_ref()
                    .map(|p| ("ingress.port".to_string(), p)),
            )
            .chain(self.vms.iter().enumerate().filter_map(|(i, vm)| {
                vm.port
                    .as_ref()
                    .map(|p| (format!("{}.port", vm_label(i, &vm.name)), p))
            }))
            .collect()
    }

    /// The resolved topology as human-readable text (what `epochgate check-config` prints).
    pub fn topology(&self) -> String {
        let mut out = String::new();
        let mut line = |s: String| {
            out.push_str(&s);
            out.push('\n');
        };
        let eal = eal_args(&self.eal, &self.ports());
        line(format!(
            "EAL:       {}",
            eal.iter()
                .map(|a| shell_quote(a))
                .collect::<Vec<_>>()
                .join(" ")
        ));
        line(format!(
            "egress:    {}, pass-through min share {}",
            describe_port(&self.egress),
            if self.passthrough_min_share_ppm == 0 {
                "0% (released frames have strict priority)".to_string()
            } else {
                format!(
                    "{}% (while released frames wait)",
                    f64::from(self.passthrough_min_share_ppm) / 1e4
                )
            }
        ));
        match &self.ingress {
            Some(p) => line(format!("ingress:   {}", describe_port(p))),
            None => line("ingress:   none (every VM has its own port)".to_string()),
        }
        for vm in &self.vms {
            let mut s = format!("vm {:?}: {}, ", vm.name, vm.mode);
            match &vm.port {
                Some(p) => {
                    s.push_str(&format!("port {}", describe_port(p)));
                    match vm.mac {
                        Some(mac) => s.push_str(&format!(", mac {mac}")),
                        None => s.push_str(", mac learned from its first frame"),
                    }
                }
                None => {
                    s.push_str("shared ingress");
                    if let Some(mac) = vm.mac {
                        s.push_str(&format!(", mac {mac}"));
                    }
                }
            }
            if let Some(vlan) = vm.vlan {
                s.push_str(&format!(", vlan {vlan}"));
            }
            if !vm.announce.is_empty() {
                let a: Vec<String> = vm.announce.iter().map(|a| a.to_string()).collect();
                s.push_str(&format!(", announces {} on promotion", a.join(" ")));
            }
            line(s);
            line(format!("  buffer:  {}", describe_limits(&vm.limits)));
            line(format!("  rate:    {}", describe_rate(&vm.rate)));
        }
        let c = &self.control;
        line(format!(
            "control:   socket {} (mode {}), admin socket {}, fence drain <= {} ms, liveness {}, Hello within {} ms, at most {} sessions",
            c.socket.display(),
            c.socket_mode,
            c.admin_socket.display(),
            c.fence_drain_ms,
            if c.liveness_timeout_ms == 0 {
                "off".to_string()
            } else {
                format!("{} ms", c.liveness_timeout_ms)
            },
            c.hello_timeout_ms,
            c.max_sessions
        ));
        let mut uids = vec!["root".to_string(), "owner".to_string()];
        uids.extend(c.allowed_uids.iter().map(u32::to_string));
        let gids: Vec<String> = c.allowed_gids.iter().map(u32::to_string).collect();
        line(format!(
            "sessions:  uids {}{}",
            uids.join(", "),
            if gids.is_empty() {
                String::new()
            } else {
                format!("; gids {}", gids.join(", "))
            }
        ));
        line(format!(
            "metrics:   {}",
            self.admin.metrics_listen.map_or_else(
                || "epochgate metrics (no HTTP endpoint: [admin] metrics_listen is not set)"
                    .to_string(),
                |a| format!("http://{a}/metrics"),
            )
        ));
        let d = &self.dataplane;
        line(format!(
            "dataplane: {} mbufs (cache {}), rx ring {}, tx ring {}, vm queue {} frames, stats every {} ms",
            d.mbufs, d.mbuf_cache, d.rx_ring, d.tx_ring, d.vm_queue, d.stats_interval_ms
        ));
        let c = &self.classifier;
        let ms = |ns: u64| ns as f64 / 1e6;
        line(format!(
            "classifier: defer {} ms (at most {} ms), min checkpoint interval {} ms, window updates {}, {} rule(s)",
            ms(c.policy.defer_delay_ns),
            ms(c.policy.max_defer_ns),
            ms(c.policy.min_interval_ns),
            if c.window_updates {
                format!(
                    "on (below {} bytes in {} flows)",
                    c.window_update_threshold, c.flow_table
                )
            } else {
                "off".to_string()
            },
            c.rules.len()
        ));
        out
    }
}

/// "at most 1024 frames (no byte limit), high water 768 frames, when full: backpressure".
fn describe_limits(l: &BufferLimits) -> String {
    let max = if l.max_bytes == 0 {
        format!("at most {} frames (no byte limit)", l.max_frames)
    } else {
        format!("at most {} frames and {} bytes", l.max_frames, l.max_bytes)
    };
    let high_water = match (l.high_water_frames, l.high_water_bytes) {
        (0, 0) => "off".to_string(),
        (f, 0) => format!("{f} frames"),
        (0, b) => format!("{b} bytes"),
        (f, b) => format!("{f} frames or {b} bytes"),
    };
    format!("{max}, high water {high_water}, when full: {}", l.on_full)
}

/// "100 Mbit/s (burst 12500 bytes), 20000 pps (burst 20 frames)", or "unlimited".
fn describe_rate(r: &RateLimit) -> String {
    if r.is_unlimited() {
        return "unlimited".to_string();
    }
    let bytes = if r.bytes_per_s == 0 {
        "no byte rate limit".to_string()
    } else {
        format!(
            "{} Mbit/s (burst {} bytes)",
            r.bytes_per_s as f64 * 8.0 / 1e6,
            r.burst_bytes
        )
    };
    let frames = if r.pps == 0 {
        "no frame rate limit".to_string()
    } else {
        format!("{} pps (burst {} frames)", r.pps, r.burst_frames)
    };
    format!("{bytes}, {frames}")
}

fn describe_port(p: &PortSpec) -> String {
    match p {
        PortSpec::Vdev { spec, name } if spec != name => format!("{spec} (vdev {name})"),
        PortSpec::Vdev { spec, .. } => format!("{spec} (vdev)"),
        PortSpec::Pci { addr } => format!("{addr} (PCI)"),
    }
}

// Only for display, so the printed EAL line can be pasted into a shell.
fn shell_quote(a: &str) -> String {
    let plain = !a.is_empty()
        && a.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.,:=/@+%".contains(&b));
    if plain {
        a.to_string()
    } else {
        format!("'{}'", a.replace('\'', r"'\''"))
    }
}

/// EAL arguments for `cfg` and `ports` (in [`Config::ports`] order). PCI ports are allow-listed
/// with `-a` so EAL never probes other devices; with no PCI port at all, `--no-pci`.
pub fn eal_args(cfg: &EalConfig, ports: &[&PortSpec]) -> Vec<String> {
    let mut v: Vec<String> = vec!["epochgate".into(), "-l".into(), cfg.lcores.clone()];
    if !cfg.hugepages {
        v.push("--no-huge".into());
    }
    v.extend([
        "-m".into(),
        cfg.memory_mb.to_string(),
        "--file-prefix".into(),
        cfg.file_prefix.clone(),
    ]);
    let mut any_pci = false;
    for p in ports {
        if let PortSpec::Pci { addr } = p {
            any_pci = true;
            v.extend(["-a".into(), addr.clone()]);
        }
    }
    if !any_pci {
        v.push("--no-pci".into());
    }
    for p in ports {
        if let PortSpec::Vdev { spec, .. } = p {
            v.extend(["--vdev".into(), spec.clone()]);
        }
    }
    v.extend(cfg.args.iter().cloned());
    v
}

// ---------------------------------------------------------------------------------------------
// Raw configuration and validation
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    eal: EalConfig,
    // Option rather than required, so a missing [egress] gets our message, not serde's.
    egress: Option<RawEgress>,
    ingress: Option<RawPort>,
    #[serde(default)]
    control: ControlConfig,
    #[serde(default)]
    admin: RawAdmin,
    #[serde(default)]
    dataplane: DataplaneConfig,
    #[serde(default)]
    classifier: RawClassifier,
    #[serde(default)]
    vm: Vec<RawVm>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table with a `port` key")]
struct RawPort {
    port: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table with a `port` key")]
struct RawEgress {
    port: Option<String>,
    passthrough_min_share: Option<f64>,
}

/// The buffer and rate keys of a [`RawVm`], taken out of it for validation.
struct RawLimits {
    max_held_frames: Option<i64>,
    max_held_bytes: Option<i64>,
    high_water: Option<f64>,
    on_full: Option<String>,
    rate_mbps: Option<f64>,
    rate_pps: Option<i64>,
    burst: Option<i64>,
    burst_frames: Option<i64>,
}

/// Keys that are no longer (or never were) valid where they are written, with what to do
/// instead: `(table, key, the error's key, why)`. Checked only when the file does not
/// deserialize, so the operator gets this rather than serde's generic unknown-field text.
const MISPLACED_KEYS: &[(&str, &str, &str, &str)] = &[
    (
        "classifier",
        "high_water_frames",
        "classifier.high_water_frames",
        "replaced by [[vm]] high_water (a fraction of max_held_frames / max_held_bytes)",
    ),
    (
        "ingress",
        "passthrough_min_share",
        "ingress.passthrough_min_share",
        "is an [egress] key: it shares the egress port between pass-through and released frames; move it to [egress]",
    ),
];

/// The error for the first [`MISPLACED_KEYS`] entry present in `text`, if it is TOML at all.
fn misplaced_key(text: &str) -> Option<ConfigError> {
    let doc: toml::Table = toml::from_str(text).ok()?;
    MISPLACED_KEYS
        .iter()
        .find(|(table, key, _, _)| {
            doc.get(*table)
                .and_then(|t| t.as_table())
                .is_some_and(|t| t.contains_key(*key))
        })
        .map(|(_, _, key, why)| invalid(*key, *why))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [[vm]] table")]
struct RawVm {
    name: Option<String>,
    port: Option<String>,
    mac: Option<String>,
    // i64, TOML's integer, so 5000 and -1 get our range message rather than serde's.
    vlan: Option<i64>,
    mode: Option<String>,
    #[serde(default)]
    announce: Vec<String>,
    defer: Option<String>,
    // Integers as i64 for the same reason as vlan.
    max_held_frames: Option<i64>,
    max_held_bytes: Option<i64>,
    high_water: Option<f64>,
    on_full: Option<String>,
    rate_mbps: Option<f64>,
    rate_pps: Option<i64>,
    burst: Option<i64>,
    burst_frames: Option<i64>,
}

const EGRESS_WHY: &str = "epochgate needs an egress port (a vdev spec such as \"net_pcap0,tx_pcap=out.pcap\" or a PCI address)";
const NAME_MAX: usize = 32;
const RING_MIN: u16 = 64;
const RING_MAX: u16 = 4096;
const MEMORY_MIN_MB: u32 = 64;
const MBUFS_MIN: u32 = 1023;
const MBUFS_MAX: u32 = (1 << 24) - 1;
/// DPDK's RTE_MAX_LCORE (Debian's build): `-l` refuses lcore ids from here on.
const LCORE_MAX: u32 = 128;
/// The longest `eal.file_prefix`. EAL binds `<runtime dir>/<prefix>/dpdk_telemetry.v2` (and
/// `mp_socket`), and a socket path has at most 107 bytes: under root's `/var/run/dpdk/` that is
/// 107 - 14 - 18 = 75 characters (measured: 75 starts, 76 fails); 64 leaves room for a non-root
/// user's `/run/user/<uid>/dpdk/`.
const FILE_PREFIX_MAX: usize = 64;
/// Pool memory per mbuf with hugepages: 2048 bytes of data room + 128 of headroom
/// (RTE_MBUF_DEFAULT_BUF_SIZE) + 128 for struct rte_mbuf + 64 for the mempool object header
/// (24 bytes, cache-line aligned) = 2368, + 8 to 16 for its slot in the pool's ring, rounded up
/// to whole cache lines: 2432.
const MBUF_BYTES_HUGE: u64 = 2432;
/// Without hugepages EAL's memory is 4 KiB pages and a mempool object never spans two pages, so
/// each mbuf takes a page (measured: a 64 MB --no-huge EAL holds 15 900 mbufs, not 16 000).
const MBUF_BYTES_NO_HUGE: u64 = 4096;
/// Memory kept for everything but the pool: EAL's own memzones (under 2 MiB measured), the
/// ports' descriptor rings and driver queues, the mempool's per-lcore cache structures.
const EAL_RESERVE_MB: u64 = 16;
/// One rx/tx burst of slack in the pool beyond what the rings and caches can hold.
const POOL_SLACK: u64 = 32;
// RTE_MEMPOOL_CACHE_MAX_SIZE: rte_pktmbuf_pool_create refuses larger caches.
const MBUF_CACHE_MAX: u32 = 512;
const VM_QUEUE_MIN: u32 = 32;
const MAX_HELD_FRAMES_MAX: u32 = 1 << 20;
const MAX_HELD_BYTES_MIN: i64 = 16384;
const HIGH_WATER_DEFAULT: f64 = 0.75;
const PASSTHROUGH_MIN_SHARE_DEFAULT: f64 = 0.1;
const RATE_MBPS_MAX: f64 = 1_000_000.0;
const RATE_PPS_MAX: i64 = 1_000_000_000;
const BURST_MIN: i64 = 64;
/// The least default byte-bucket depth: two full-size frames (1518 bytes: a 1500-byte payload
/// with a VLAN tag, no FCS).
const BURST_DEFAULT_MIN: u64 = 3036;
const BURST_FRAMES_DEFAULT_MIN: u64 = 8;
const VLAN_MAX: i64 = 4094;
const FENCE_DRAIN_MAX_MS: u64 = 1000;
const HELLO_TIMEOUT_MS: std::ops::RangeInclusive<u64> = 100..=60_000;
const MAX_SESSIONS_MAX: usize = 65_536;
const ANNOUNCE_MAX: usize = 16;

/// EAL options that epochgate derives from other keys; passing them again in `eal.args` would
/// contradict (or, for devices, bypass) the validated config. (option, the key that sets it)
const MANAGED_EAL_OPTIONS: &[(&str, &str)] = &[
    ("-l", "eal.lcores"),
    ("--lcores", "eal.lcores"),
    ("-c", "eal.lcores"),
    ("-m", "eal.memory_mb"),
    (
        "--socket-mem",
        "eal.memory_mb (EAL rejects it together with -m)",
    ),
    ("--no-huge", "eal.hugepages"),
    ("--file-prefix", "eal.file_prefix"),
    ("--no-pci", "the configured ports"),
    ("-a", "the configured ports"),
    ("--allow", "the configured ports"),
    ("-b", "the configured ports"),
    ("--block", "the configured ports"),
    ("--vdev", "the configured ports"),
];

impl RawConfig {
    fn validate(self) -> Result<Config, ConfigError> {
        let eal = validate_eal(self.eal)?;

        let passthrough_min_share_ppm = passthrough_share_ppm(
            self.egress
                .as_ref()
                .and_then(|e| e.passthrough_min_share)
                .unwrap_or(PASSTHROUGH_MIN_SHARE_DEFAULT),
        )?;
        let egress = match self.egress {
            None => {
                return Err(invalid(
                    "egress",
                    format!("missing [egress] section: {EGRESS_WHY}"),
                ))
            }
            Some(RawEgress { port: None, .. }) => {
                return Err(invalid("egress.port", format!("missing: {EGRESS_WHY}")))
            }
            Some(RawEgress { port: Some(p), .. }) => {
                PortSpec::parse(&p).map_err(|why| invalid("egress.port", why))?
            }
        };

        let ingress = match self.ingress {
            None => None,
            Some(RawPort { port: None }) => {
                return Err(invalid(
                    "ingress.port",
                    "missing: an [ingress] section needs a port (or remove the section if every VM has its own port)",
                ))
            }
            Some(RawPort { port: Some(p) }) => {
                Some(PortSpec::parse(&p).map_err(|why| invalid("ingress.port", why))?)
            }
        };

        let control = validate_control(self.control, self.vm.len())?;
        let admin = self.admin.validate()?;
        let dataplane = validate_dataplane(self.dataplane)?;
        let classifier = self.classifier.validate()?;

        if self.vm.is_empty() {
            return Err(invalid(
                "vm",
                "no [[vm]] entries: epochgate needs at least one VM to forward for",
            ));
        }
        let mut vms = Vec::with_capacity(self.vm.len());
        let mut names: HashMap<String, usize> = HashMap::new();
        // (mac, vlan) -> label of the VM that has it: the pair is what the data plane matches on.
        let mut addrs: HashMap<(MacAddr, Option<u16>), String> = HashMap::new();
        for (i, raw) in self.vm.into_iter().enumerate() {
            let vm = validate_vm(i, raw, ingress.is_some(), &dataplane)?;
            if let Some(&j) = names.get(&vm.name) {
                return Err(invalid(
                    format!("vm[{i}].name"),
                    format!("duplicate VM name {:?} (also vm[{j}])", vm.name),
                ));
            }
            names.insert(vm.name.clone(), i);
            let label = vm_label(i, &vm.name);
            if let Some(mac) = vm.mac {
                if let Some(other) = addrs.get(&(mac, vm.vlan)) {
                    let on_vlan = vm.vlan.map(|v| format!(" on VLAN {v}")).unwrap_or_default();
                    return Err(invalid(
                        format!("{label}.mac"),
                        format!("duplicate MAC {mac}{on_vlan} (also {other})"),
                    ));
                }
                addrs.insert((mac, vm.vlan), label);
            }
            vms.push(vm);
        }

        let config = Config {
            eal,
            egress,
            ingress,
            control,
            admin,
            dataplane,
            classifier,
            vms,
            passthrough_min_share_ppm,
        };
        check_devices_unique(&config)?;
        check_pool(&config)?;
        check_announce_unique(&config)?;
        for (i, rule) in config.classifier.rules.iter().enumerate() {
            if let Some(name) = &rule.vm {
                if !config.vms.iter().any(|v| &v.name == name) {
                    return Err(invalid(
                        format!("classifier.rule[{i}].vm"),
                        format!("no [[vm]] is named {name:?}"),
                    ));
                }
            }
        }
        Ok(config)
    }
}

/// `[egress] passthrough_min_share` in parts per million.
fn passthrough_share_ppm(share: f64) -> Result<u32, ConfigError> {
    let ppm = (share * 1e6).round();
    if !((0.0..1.0).contains(&share) && ppm < 1e6) {
        return Err(invalid(
            "egress.passthrough_min_share",
            format!(
                "{share} is out of range 0 <= x < 1: the fraction of egress bytes pass-through traffic keeps while protected VMs' released frames are also waiting (0: released frames have strict priority)"
            ),
        ));
    }
    Ok(ppm as u32)
}

fn vm_label(i: usize, name: &str) -> String {
    format!("vm[{i}] (\"{name}\")")
}

fn validate_eal(eal: EalConfig) -> Result<EalConfig, ConfigError> {
    if eal.lcores.is_empty() {
        return Err(invalid(
            "eal.lcores",
            "is empty: EAL needs at least one lcore (e.g. \"0-1\")",
        ));
    }
    if let Some(c) = eal
        .lcores
        .chars()
        .find(|c| !(c.is_ascii_digit() || ",-@()".contains(*c)))
    {
        // '@' and '()' pass here so that lcore_ids can say they are --lcores syntax.
        return Err(invalid(
            "eal.lcores",
            format!(
                "{:?} contains {c:?} (allowed: digits, ',' and '-')",
                eal.lcores
            ),
        ));
    }
    let lcores = lcore_ids(&eal.lcores).map_err(|why| invalid("eal.lcores", why))?;
    if lcores.len() < 2 {
        return Err(invalid(
            "eal.lcores",
            format!(
                "{:?} is one lcore: epochgate needs at least two (the main lcore runs control and stats, a worker runs the poll loop), e.g. \"0-1\"",
                eal.lcores
            ),
        ));
    }
    if eal.memory_mb < MEMORY_MIN_MB {
        return Err(invalid(
            "eal.memory_mb",
            format!(
                "{} is too small (at least {MEMORY_MIN_MB}: the mbuf pool and rings must fit)",
                eal.memory_mb
            ),
        ));
    }
    if eal.file_prefix.is_empty() {
        return Err(invalid(
            "eal.file_prefix",
            "is empty: EAL names its runtime files after it",
        ));
    }
    if eal.file_prefix.contains('/') {
        return Err(invalid(
            "eal.file_prefix",
            format!(
                "{:?} contains '/': it is a file name prefix, not a path",
                eal.file_prefix
            ),
        ));
    }
    if eal.file_prefix.len() > FILE_PREFIX_MAX {
        return Err(invalid(
            "eal.file_prefix",
            format!(
                "is {} characters long (at most {FILE_PREFIX_MAX}): EAL binds the unix socket <runtime dir>/<prefix>/dpdk_telemetry.v2 (runtime dir /var/run/dpdk as root, $XDG_RUNTIME_DIR/dpdk otherwise), and a socket path holds at most {SUN_PATH_MAX} bytes (sun_path): 75 characters under /var/run/dpdk, fewer under a longer runtime dir",
                eal.file_prefix.len()
            ),
        ));
    }
    for (k, arg) in eal.args.iter().enumerate() {
        if let Some(set_by) = managed_option(arg) {
            return Err(invalid(
                format!("eal.args[{k}]"),
                format!("{arg:?} is set by epochgate from {set_by}; use that instead"),
            ));
        }
    }
    Ok(eal)
}

/// The key that sets `arg`, if `arg` is an option epochgate passes itself ("-l", "-l0-3",
/// "--vdev", "--vdev=...").
fn managed_option(arg: &str) -> Option<&'static str> {
    MANAGED_EAL_OPTIONS.iter().find_map(|&(opt, key)| {
        let hit = if opt.starts_with("--") {
            arg == opt || arg.strip_prefix(opt).is_some_and(|r| r.starts_with('='))
        } else {
            // Short options take their value attached or separate: "-l0-3" or "-l" "0-3".
            arg.starts_with(opt) && !arg.starts_with("--")
        };
        hit.then_some(key)
    })
}

/// The lcore ids of an EAL `-l` core list ("0-1", "0,2-3"), sorted, each once. DPDK 22.11's
/// `-l` takes only this form: the `1@(0,1)` mappings are `--lcores` syntax, which `-l` refuses.
fn lcore_ids(list: &str) -> Result<Vec<u32>, String> {
    let syntax = "a core list such as \"0-1\" or \"0,2-3\"";
    if list.contains(['@', '(', ')']) {
        return Err(format!(
            "{list:?} is --lcores syntax (lcore@cpu): epochgate passes eal.lcores to EAL's -l, which takes {syntax}"
        ));
    }
    let id = |s: &str| -> Result<u32, String> {
        let n: u32 = s
            .parse()
            .map_err(|_| format!("{list:?} is not {syntax}: {s:?} is not an lcore id"))?;
        if n >= LCORE_MAX {
            return Err(format!(
                "{list:?} names lcore {n}: lcore ids are 0..={} (DPDK is built with RTE_MAX_LCORE {LCORE_MAX})",
                LCORE_MAX - 1
            ));
        }
        Ok(n)
    };
    let mut ids = std::collections::BTreeSet::new();
    for item in list.split(',') {
        let (lo, hi) = match item.split_once('-') {
            Some((lo, hi)) => (id(lo)?, id(hi)?),
            None => (id(item)?, id(item)?),
        };
        if lo > hi {
            return Err(format!(
                "{list:?} is not {syntax}: the range {item:?} runs backwards"
            ));
        }
        ids.extend(lo..=hi);
    }
    Ok(ids.into_iter().collect())
}

/// `vms`: how many `[[vm]]` entries there are (each needs a session).
fn validate_control(mut control: ControlConfig, vms: usize) -> Result<ControlConfig, ConfigError> {
    if control.socket.as_os_str().is_empty() {
        return Err(invalid(
            "control.socket",
            "is empty: it must be a socket path",
        ));
    }
    // Empty: not written (serde leaves it empty), so the default applies.
    let defaulted = control.admin_socket.as_os_str().is_empty();
    if defaulted {
        control.admin_socket = control.socket.with_file_name("admin.sock");
    }
    if control.socket == control.admin_socket && defaulted {
        return Err(invalid(
            "control.socket",
            format!(
                "{:?} is where the admin socket goes by default (admin.sock beside control.socket): \
                 name the control socket differently, or set control.admin_socket elsewhere",
                control.socket
            ),
        ));
    }
    if control.socket == control.admin_socket {
        return Err(invalid(
            "control.admin_socket",
            format!(
                "{:?} is also control.socket: the two sockets need different paths",
                control.admin_socket
            ),
        ));
    }
    if parse_mode(&control.socket_mode).is_none() {
        return Err(invalid(
            "control.socket_mode",
            format!(
                "{:?} is not a file mode: write permission bits in octal, e.g. \"0660\"",
                control.socket_mode
            ),
        ));
    }
    if control.fence_drain_ms == 0 || control.fence_drain_ms > FENCE_DRAIN_MAX_MS {
        return Err(invalid(
            "control.fence_drain_ms",
            format!(
                "{} is out of range 1..={FENCE_DRAIN_MAX_MS}: the guest stays paused while a fence drains",
                control.fence_drain_ms
            ),
        ));
    }
    if control.liveness_timeout_ms != 0 && control.liveness_timeout_ms <= control.fence_drain_ms {
        return Err(invalid(
            "control.liveness_timeout_ms",
            format!(
                "{} does not exceed control.fence_drain_ms ({}): a VMM waits that long for a fence's answer, \
                 so its controller cannot be judged by a shorter silence; make it larger (or 0: off)",
                control.liveness_timeout_ms, control.fence_drain_ms
            ),
        ));
    }
    if !HELLO_TIMEOUT_MS.contains(&control.hello_timeout_ms) {
        return Err(invalid(
            "control.hello_timeout_ms",
            format!(
                "{} is out of range {}..={}: a new session has this long to say Hello",
                control.hello_timeout_ms,
                HELLO_TIMEOUT_MS.start(),
                HELLO_TIMEOUT_MS.end()
            ),
        ));
    }
    if control.max_sessions > MAX_SESSIONS_MAX {
        return Err(invalid(
            "control.max_sessions",
            format!(
                "{} is above the maximum of {MAX_SESSIONS_MAX}",
                control.max_sessions
            ),
        ));
    }
    if control.max_sessions < vms.max(1) {
        return Err(invalid(
            "control.max_sessions",
            format!(
                "{} is fewer than the {vms} [[vm]] entries: each VM needs a session; raise it to at least {vms}",
                control.max_sessions
            ),
        ));
    }
    Ok(control)
}

fn validate_dataplane(d: DataplaneConfig) -> Result<DataplaneConfig, ConfigError> {
    if d.mbufs < MBUFS_MIN {
        return Err(invalid(
            "dataplane.mbufs",
            format!("{} is too few (at least {MBUFS_MIN})", d.mbufs),
        ));
    }
    if d.mbufs > MBUFS_MAX {
        return Err(invalid(
            "dataplane.mbufs",
            format!(
                "{} is too many (at most {MBUFS_MAX}, about {} GB of mbufs)",
                d.mbufs,
                u64::from(MBUFS_MAX) * MBUF_BYTES_HUGE / 1_000_000_000
            ),
        ));
    }
    if d.mbuf_cache > MBUF_CACHE_MAX {
        return Err(invalid(
            "dataplane.mbuf_cache",
            format!(
                "{} is above DPDK's per-lcore cache maximum of {MBUF_CACHE_MAX}",
                d.mbuf_cache
            ),
        ));
    }
    // DPDK also wants 1.5 x cache <= mbufs; the two bounds above already guarantee it.
    for (key, n) in [
        ("dataplane.rx_ring", d.rx_ring),
        ("dataplane.tx_ring", d.tx_ring),
    ] {
        if !(n.is_power_of_two() && (RING_MIN..=RING_MAX).contains(&n)) {
            return Err(invalid(
                key,
                format!("{n} is not a power of two in {RING_MIN}..={RING_MAX}"),
            ));
        }
    }
    if d.vm_queue < VM_QUEUE_MIN {
        return Err(invalid(
            "dataplane.vm_queue",
            format!(
                "{} is too small (at least {VM_QUEUE_MIN} frames)",
                d.vm_queue
            ),
        ));
    }
    if d.vm_queue > MAX_HELD_FRAMES_MAX {
        return Err(invalid(
            "dataplane.vm_queue",
            format!(
                "{} is too large (at most {MAX_HELD_FRAMES_MAX} frames): it is the default max_held_frames of each VM",
                d.vm_queue
            ),
        ));
    }
    Ok(d)
}

fn check_vm_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err(format!(
            "is empty: a VM name needs 1 to {NAME_MAX} characters from A-Z a-z 0-9 _ . -"
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "_.-".contains(*c)))
    {
        return Err(format!(
            "{name:?} contains {c:?} (allowed: A-Z a-z 0-9 _ . -)"
        ));
    }
    if name.len() > NAME_MAX {
        return Err(format!(
            "{name:?} is {} characters long (at most {NAME_MAX})",
            name.len()
        ));
    }
    Ok(())
}

/// Validates one VM on its own; names and addresses across VMs are the caller's business.
fn validate_vm(
    i: usize,
    raw: RawVm,
    have_ingress: bool,
    dataplane: &DataplaneConfig,
) -> Result<VmConfig, ConfigError> {
    let lim = RawLimits {
        max_held_frames: raw.max_held_frames,
        max_held_bytes: raw.max_held_bytes,
        high_water: raw.high_water,
        on_full: raw.on_full,
        rate_mbps: raw.rate_mbps,
        rate_pps: raw.rate_pps,
        burst: raw.burst,
        burst_frames: raw.burst_frames,
    };
    let name = raw.name.ok_or_else(|| {
        invalid(
            format!("vm[{i}].name"),
            format!("missing: every VM needs a name (1 to {NAME_MAX} characters from A-Z a-z 0-9 _ . -)"),
        )
    })?;
    check_vm_name(&name).map_err(|why| invalid(format!("vm[{i}].name"), why))?;
    let label = vm_label(i, &name);

    let mode = match raw.mode {
        None => Mode::default(),
        Some(m) => m
            .parse()
            .map_err(|e: ModeParseError| invalid(format!("{label}.mode"), e.to_string()))?,
    };
    let port = raw
        .port
        .map(|p| PortSpec::parse(&p))
        .transpose()
        .map_err(|why| invalid(format!("{label}.port"), why))?;
    let mac = match raw.mac {
        None => None,
        Some(m) => {
            let mac: MacAddr = m.parse().map_err(|e: crate::wire::frame::MacParseError| {
                invalid(format!("{label}.mac"), e.to_string())
            })?;
            if mac.is_group() {
                return Err(invalid(
                    format!("{label}.mac"),
                    format!("{mac} is a group (multicast or broadcast) address: a VM's MAC must be unicast"),
                ));
            }
            if !mac.is_unicast() {
                return Err(invalid(
                    format!("{label}.mac"),
                    format!(
                        "{mac} is the all-zero address: a VM's MAC must be a real unicast address"
                    ),
                ));
            }
            Some(mac)
        }
    };
    let vlan = match raw.vlan {
        None => None,
        Some(v) if !(0..=VLAN_MAX).contains(&v) => {
            return Err(invalid(
                format!("{label}.vlan"),
                format!("{v} is out of range (expected 0..={VLAN_MAX})"),
            ))
        }
        Some(_) if mac.is_none() => {
            return Err(invalid(
                format!("{label}.vlan"),
                "a VLAN without a mac identifies nothing: a VM is recognised by mac + VLAN",
            ))
        }
        Some(v) => u16::try_from(v).ok(),
    };

    if port.is_none() && !(mac.is_some() && have_ingress) {
        const BOTH: &str = "needs either its own port (vm.port) or a mac on the shared ingress ([ingress] port and vm.mac)";
        let detail = match (mac.is_some(), have_ingress) {
            (false, true) => "it has neither",
            (true, false) => "it has a mac but there is no [ingress] section",
            _ => "it has no port or mac, and there is no [ingress] section",
        };
        return Err(invalid(label, format!("{BOTH}: {detail}")));
    }

    if raw.announce.len() > ANNOUNCE_MAX {
        return Err(invalid(
            format!("{label}.announce"),
            format!(
                "{} addresses; at most {ANNOUNCE_MAX} are announced on promotion",
                raw.announce.len()
            ),
        ));
    }
    let mut announce = Vec::with_capacity(raw.announce.len());
    for (j, a) in raw.announce.iter().enumerate() {
        let ip: std::net::IpAddr = a.parse().map_err(|_| {
            invalid(
                format!("{label}.announce[{j}]"),
                format!("{a:?} is not an IPv4 or IPv6 address"),
            )
        })?;
        if ip.is_unspecified() || ip.is_multicast() {
            return Err(invalid(
                format!("{label}.announce[{j}]"),
                format!("{ip} cannot be a VM's address"),
            ));
        }
        announce.push(ip);
    }
    if !announce.is_empty() && mac.is_none() {
        return Err(invalid(
            format!("{label}.announce"),
            "announcing addresses needs the VM's mac (vm.mac): a promoted VM may not have sent a frame yet to learn it from",
        ));
    }

    if !announce.is_empty() && mode != Mode::Standby {
        return Err(invalid(
            format!("{label}.announce"),
            format!(
                "a {mode} VM is never promoted, so it never announces: only a standby VM can be promoted (and nothing makes a VM standby at run time); set mode = \"standby\" or remove announce"
            ),
        ));
    }

    let defer = match raw.defer.as_deref() {
        None | Some("builtin") => crate::classify::VmDefer::Builtin,
        Some("all") => crate::classify::VmDefer::All,
        Some("never") => crate::classify::VmDefer::Never,
        Some(other) => {
            return Err(invalid(
                format!("{label}.defer"),
                format!("{other:?} is not one of \"builtin\", \"all\", \"never\""),
            ))
        }
    };

    let limits = validate_limits(&label, &lim, port.is_some(), dataplane)?;
    let rate = validate_rate(&label, &lim)?;

    Ok(VmConfig {
        name,
        port,
        mac,
        vlan,
        mode,
        announce,
        defer,
        limits,
        rate,
    })
}

/// `max_held_frames`, `max_held_bytes`, `high_water` and `on_full` of the VM labelled `label`.
fn validate_limits(
    label: &str,
    raw: &RawLimits,
    own_port: bool,
    dataplane: &DataplaneConfig,
) -> Result<BufferLimits, ConfigError> {
    let (max_frames, frames_key) = match raw.max_held_frames {
        None => (
            i64::from(dataplane.vm_queue),
            "dataplane.vm_queue".to_string(),
        ),
        Some(n) => {
            let key = format!("{label}.max_held_frames");
            if !(i64::from(VM_QUEUE_MIN)..=i64::from(MAX_HELD_FRAMES_MAX)).contains(&n) {
                return Err(invalid(
                    key,
                    format!("{n} is out of range {VM_QUEUE_MIN}..={MAX_HELD_FRAMES_MAX} frames"),
                ));
            }
            (n, key)
        }
    };
    if max_frames > i64::from(dataplane.mbufs) {
        let what = if raw.max_held_frames.is_none() {
            format!(", the default max_held_frames of {label},")
        } else {
            String::new()
        };
        return Err(invalid(
            frames_key,
            format!(
                "{max_frames}{what} can never be reached: the mbuf pool (dataplane.mbufs) has only {}",
                dataplane.mbufs
            ),
        ));
    }
    let max_frames = max_frames as u64;

    let max_bytes = match raw.max_held_bytes {
        None | Some(0) => 0,
        Some(n) if n < MAX_HELD_BYTES_MIN => {
            return Err(invalid(
                format!("{label}.max_held_bytes"),
                format!(
                    "{n} is too small: a byte limit is at least {MAX_HELD_BYTES_MIN} bytes (0 or absent: no byte limit)"
                ),
            ))
        }
        Some(n) => n as u64,
    };

    let high_water = raw.high_water.unwrap_or(HIGH_WATER_DEFAULT);
    if !(high_water == 0.0 || (high_water > 0.0 && high_water <= 1.0)) {
        return Err(invalid(
            format!("{label}.high_water"),
            format!(
                "{high_water} is out of range: 0 (off) or a fraction in (0, 1] of max_held_frames / max_held_bytes at which a checkpoint is requested"
            ),
        ));
    }

    let on_full = match raw.on_full.as_deref() {
        None if own_port => OnFull::Backpressure,
        None => OnFull::Drop,
        Some("drop") => OnFull::Drop,
        Some("backpressure") if own_port => OnFull::Backpressure,
        Some("backpressure") => {
            return Err(invalid(
                format!("{label}.on_full"),
                "backpressure stops reading the VM's port, and on the shared ingress that would stall every VM on it; use \"drop\"",
            ))
        }
        Some(other) => {
            return Err(invalid(
                format!("{label}.on_full"),
                format!("{other:?} is not one of \"backpressure\", \"drop\""),
            ))
        }
    };

    Ok(BufferLimits {
        max_frames,
        max_bytes,
        high_water_frames: high_water_mark(high_water, max_frames),
        high_water_bytes: high_water_mark(high_water, max_bytes),
        on_full,
    })
}

/// `rate_mbps`, `rate_pps`, `burst` and `burst_frames` of the VM labelled `label`.
fn validate_rate(label: &str, raw: &RawLimits) -> Result<RateLimit, ConfigError> {
    let mut rate = RateLimit::default();
    if let Some(mbps) = raw.rate_mbps {
        let bytes_per_s = (mbps * 1e6 / 8.0).round();
        if !(mbps > 0.0 && mbps <= RATE_MBPS_MAX) {
            return Err(invalid(
                format!("{label}.rate_mbps"),
                format!(
                    "{mbps} is out of range: above 0 and at most {RATE_MBPS_MAX} (megabits per second of Ethernet frame bytes, without preamble and FCS)"
                ),
            ));
        }
        if bytes_per_s < 1.0 {
            return Err(invalid(
                format!("{label}.rate_mbps"),
                format!("{mbps} is below 1 byte per second (the least rate_mbps is 0.000004)"),
            ));
        }
        rate.bytes_per_s = bytes_per_s as u64;
        rate.burst_bytes = (rate.bytes_per_s / 1000).max(BURST_DEFAULT_MIN);
    }
    if let Some(pps) = raw.rate_pps {
        if !(1..=RATE_PPS_MAX).contains(&pps) {
            return Err(invalid(
                format!("{label}.rate_pps"),
                format!("{pps} is out of range 1..={RATE_PPS_MAX} frames per second"),
            ));
        }
        rate.pps = pps as u64;
        rate.burst_frames = (rate.pps / 1000).max(BURST_FRAMES_DEFAULT_MIN);
    }
    if let Some(burst) = raw.burst {
        if raw.rate_mbps.is_none() {
            return Err(invalid(
                format!("{label}.burst"),
                "needs rate_mbps: burst is the depth of the byte bucket that rate_mbps fills (the depth of rate_pps's bucket is burst_frames)",
            ));
        }
        if burst < BURST_MIN {
            return Err(invalid(
                format!("{label}.burst"),
                format!(
                    "{burst} is too small: at least {BURST_MIN} bytes (one minimum Ethernet frame)"
                ),
            ));
        }
        rate.burst_bytes = burst as u64;
    }
    if let Some(frames) = raw.burst_frames {
        if raw.rate_pps.is_none() {
            return Err(invalid(
                format!("{label}.burst_frames"),
                "needs rate_pps: burst_frames is the depth of the frame bucket that rate_pps fills (the depth of rate_mbps's bucket is burst)",
            ));
        }
        if frames < 1 {
            return Err(invalid(
                format!("{label}.burst_frames"),
                format!("{frames} is too small: at least 1 frame"),
            ));
        }
        rate.burst_frames = frames as u64;
    }
    Ok(rate)
}

/// The mbuf pool must fit in `eal.memory_mb` and be large enough to fill every port's rings.
fn check_pool(cfg: &Config) -> Result<(), ConfigError> {
    let d = &cfg.dataplane;
    let mbufs = u64::from(d.mbufs);
    let (per_mbuf, pages) = if cfg.eal.hugepages {
        (MBUF_BYTES_HUGE, "with hugepages")
    } else {
        (
            MBUF_BYTES_NO_HUGE,
            "without hugepages (one 4 KiB page each)",
        )
    };
    let mb = 1u64 << 20;
    let need_mb = (mbufs * per_mbuf).div_ceil(mb) + EAL_RESERVE_MB;
    let memory = u64::from(cfg.eal.memory_mb);
    if need_mb > memory {
        let fits = (memory.saturating_sub(EAL_RESERVE_MB) * mb) / per_mbuf;
        return Err(invalid(
            "dataplane.mbufs",
            format!(
                "{mbufs} mbufs do not fit in eal.memory_mb = {memory}: they need {need_mb} MB ({per_mbuf} bytes per mbuf {pages}, plus {EAL_RESERVE_MB} MB for EAL and the ports); lower dataplane.mbufs to at most {fits} or raise eal.memory_mb to {need_mb}"
            ),
        ));
    }
    let ports = cfg.ports().len() as u64;
    let lcores = lcore_ids(&cfg.eal.lcores).map_or(2, |l| l.len()) as u64;
    // A per-lcore cache holds up to 1.5 x its size before it flushes (CALC_CACHE_FLUSHTHRESH).
    let cache = u64::from(d.mbuf_cache).saturating_mul(3).div_ceil(2);
    let (rx, tx) = (u64::from(d.rx_ring), u64::from(d.tx_ring));
    let need = ports * (rx + tx) + lcores * cache + POOL_SLACK;
    if mbufs < need {
        return Err(invalid(
            "dataplane.mbufs",
            format!(
                "{mbufs} cannot fill the rings: {ports} port(s) x (dataplane.rx_ring {rx} + dataplane.tx_ring {tx}) + {lcores} lcores x {cache} (1.5 x dataplane.mbuf_cache, what a per-lcore cache may hold) + {POOL_SLACK} (a burst) = {need} mbufs are needed"
            ),
        ));
    }
    Ok(())
}

/// An address announced by two VMs would be taken from one by the other's promotion.
fn check_announce_unique(cfg: &Config) -> Result<(), ConfigError> {
    let mut seen: HashMap<std::net::IpAddr, String> = HashMap::new();
    for (i, vm) in cfg.vms.iter().enumerate() {
        for (j, ip) in vm.announce.iter().enumerate() {
            let key = format!("{}.announce[{j}]", vm_label(i, &vm.name));
            if let Some(other) = seen.get(ip) {
                return Err(invalid(
                    key,
                    format!("{ip} is also {other}: one address can be announced by one VM"),
                ));
            }
            seen.insert(*ip, key);
        }
    }
    Ok(())
}

/// Two keys naming the same device would make EAL probe it once and epochgate use it twice;
/// two ports on one underlying resource (interface, socket, file, ring, PCI device) would let a
/// VM's output leave through the other port. Both are refused, naming both keys.
fn check_devices_unique(cfg: &Config) -> Result<(), ConfigError> {
    let keyed = cfg.port_keys();
    // epochgate's own files (the sockets, and the state file beside the control socket) are
    // not a port's: a capture written over the state file would lose both.
    let state = crate::control::state::path_for(&cfg.control.socket);
    let own = [
        ("control.socket", cfg.control.socket.clone()),
        ("control.admin_socket", cfg.control.admin_socket.clone()),
        ("control.socket's state file", state),
    ];
    for (key, p) in &keyed {
        for r in port_resources(p) {
            let Resource::Path(path) = &r.id else {
                continue;
            };
            if let Some((what, _)) = own
                .iter()
                .find(|(_, f)| normalise_path(&f.to_string_lossy()) == *path)
            {
                return Err(invalid(
                    key.as_str(),
                    format!(
                        "{}= {:?} is {what}: a port may not use epochgate's own files",
                        r.key, r.written
                    ),
                ));
            }
        }
    }
    let mut seen: HashMap<&str, &str> = HashMap::new();
    for (key, p) in &keyed {
        let dev = p.device_name();
        if let Some(other) = seen.get(dev) {
            return Err(invalid(
                key.as_str(),
                format!("device {dev} is already used by {other}: each port needs its own device"),
            ));
        }
        seen.insert(dev, key);
    }
    // (port key, device name, resource) of the ports before this one.
    let mut taken: Vec<(&str, &str, PortResource)> = Vec::new();
    for (key, p) in &keyed {
        let mine = port_resources(p);
        for (j, r) in mine.iter().enumerate() {
            let what = r.describe();
            if let Some(twin) = mine[..j].iter().find(|o| o.id.clashes(&r.id)) {
                let hint = if r.kind == ResourceKind::Interface
                    && p.device_name().starts_with("net_pcap")
                {
                    " (iface= is one interface in both directions)"
                } else {
                    ""
                };
                return Err(invalid(
                    key.as_str(),
                    format!(
                        "{what} is named by both {}= and {}=: a port may use each device once{hint}",
                        twin.key, r.key
                    ),
                ));
            }
            if let Some((other, dev, o)) = taken.iter().find(|(_, _, o)| o.id.clashes(&r.id)) {
                let spelled = if o.written == r.written {
                    String::new()
                } else {
                    format!(", as {:?}", o.written)
                };
                return Err(invalid(
                    key.as_str(),
                    format!(
                        "{what} is already used by {other} ({dev}{spelled}): two ports on one device would let one VM's output leave through the other"
                    ),
                ));
            }
        }
        taken.extend(mine.into_iter().map(|r| (key.as_str(), p.device_name(), r)));
    }
    check_default_tap_names(&keyed)
}

/// A `net_tap` (`net_tun`) port without `iface=` gets an interface named `dtap<N>` (`dtun<N>`)
/// by the driver, N counting such ports in creation order; an explicit `iface=` with that
/// prefix could then name the same interface, so it is refused while any port leaves its name
/// to the driver.
fn check_default_tap_names(keyed: &[(String, &PortSpec)]) -> Result<(), ConfigError> {
    for (driver, prefix) in [("net_tap", "dtap"), ("net_tun", "dtun")] {
        let unnamed = keyed.iter().find(|(_, p)| match p {
            PortSpec::Vdev { spec, name } => {
                name.starts_with(driver)
                    && !spec.split(',').skip(1).any(|kv| kv.starts_with("iface="))
            }
            PortSpec::Pci { .. } => false,
        });
        let Some((unnamed_key, _)) = unnamed else {
            continue;
        };
        for (key, p) in keyed {
            let PortSpec::Vdev { spec, .. } = p else {
                continue;
            };
            if let Some(iface) = spec
                .split(',')
                .skip(1)
                .filter_map(|kv| kv.split_once('='))
                .filter(|(k, _)| k.contains("iface") || *k == "remote")
                .map(|(_, v)| v)
                .find(|v| v.starts_with(prefix))
            {
                return Err(invalid(
                    key.as_str(),
                    format!(
                        "interface {iface:?} may be the one the driver names for {unnamed_key}, which has no iface= ({prefix}N is its default): give {unnamed_key} an iface= of its own, or name this one otherwise"
                    ),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn an_explicit_interface_cannot_take_the_name_a_tap_driver_picks() {
        let cfg = |a: &str, b: &str| {
            format!(
                "[egress]\nport = \"net_pcap0,tx_pcap=o.pcap\"\n[[vm]]\nname = \"a\"\nport = \"{a}\"\n[[vm]]\nname = \"b\"\nport = \"{b}\"\n"
            )
        };
        let e = Config::from_toml_str(&cfg("net_tap0", "net_tap1,iface=dtap0"))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("vm[1] (\"b\").port:")
                && e.contains("vm[0] (\"a\").port")
                && e.contains("dtap"),
            "{e}"
        );
        let e = Config::from_toml_str(&cfg("net_tap0", "net_af_packet0,iface=dtap1"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("dtap1"), "{e}");
        // Both named, or both left to the driver: fine.
        Config::from_toml_str(&cfg("net_tap0,iface=dtap5", "net_tap1,iface=t1")).unwrap();
        Config::from_toml_str(&cfg("net_tap0", "net_tap1")).unwrap();
        Config::from_toml_str(&cfg("net_tap0", "net_pcap1,rx_pcap=dtap.pcap")).unwrap();
    }

    const MINIMAL: &str = r#"
[egress]
port = "net_pcap0,tx_pcap=out.pcap"

[[vm]]
name = "web"
port = "net_vhost0,iface=/tmp/web.sock"
"#;

    const FULL: &str = r#"
[eal]
lcores = "0,2-3"
memory_mb = 1024
hugepages = false
file_prefix = "eg1"
args = ["--log-level=lib.eal:debug", "--huge-dir=/mnt/huge"]

[egress]
port = "0000:03:00.0"
passthrough_min_share = 0.25

[ingress]
port = "net_pcap1,rx_pcap=in.pcap"

[control]
socket = "/tmp/eg/control.sock"
admin_socket = "/tmp/eg/admin.sock"
socket_mode = "0600"
allowed_uids = [1000, 1001]
allowed_gids = [27]
fence_drain_ms = 25
liveness_timeout_ms = 3000
hello_timeout_ms = 1500
max_sessions = 16

[dataplane]
mbufs = 32767
mbuf_cache = 128
rx_ring = 512
tx_ring = 2048
vm_queue = 4096
stats_interval_ms = 250

[[vm]]
name = "web"
port = "net_vhost0,iface=/tmp/web.sock,queues=1"
mode = "protected"
max_held_frames = 2048
max_held_bytes = 4000000
high_water = 0.5
rate_mbps = 100
burst = 50000
rate_pps = 20000

[[vm]]
name = "db"
mac = "52:54:00:00:00:02"
vlan = 10
mode = "standby"
announce = ["10.0.0.2", "fd00::2"]
defer = "all"
high_water = 0
rate_pps = 1000
burst_frames = 4

[[vm]]
name = "cache.1"
port = "04:00.1"
mac = "52:54:00:00:00:03"
on_full = "drop"
"#;

    fn err(toml: &str) -> String {
        match Config::from_toml_str(toml) {
            Ok(c) => panic!("accepted:\n{toml}\n=> {c:?}"),
            Err(e) => e.to_string(),
        }
    }

    fn mac(s: &str) -> MacAddr {
        s.parse().unwrap()
    }

    fn vdev(spec: &str) -> PortSpec {
        PortSpec::parse(spec).unwrap()
    }

    fn assert_contains(text: &str, parts: &[&str]) {
        for p in parts {
            assert!(text.contains(p), "{text:?} does not contain {p:?}");
        }
    }

    #[test]
    fn full_config_parses_every_key() {
        let c = Config::from_toml_str(FULL).unwrap();
        assert_eq!(
            c.eal,
            EalConfig {
                lcores: "0,2-3".into(),
                memory_mb: 1024,
                hugepages: false,
                file_prefix: "eg1".into(),
                args: vec![
                    "--log-level=lib.eal:debug".into(),
                    "--huge-dir=/mnt/huge".into()
                ],
            }
        );
        assert_eq!(
            c.egress,
            PortSpec::Pci {
                addr: "0000:03:00.0".into()
            }
        );
        assert_eq!(
            c.ingress,
            Some(PortSpec::Vdev {
                spec: "net_pcap1,rx_pcap=in.pcap".into(),
                name: "net_pcap1".into()
            })
        );
        assert_eq!(
            c.control,
            ControlConfig {
                socket: "/tmp/eg/control.sock".into(),
                admin_socket: "/tmp/eg/admin.sock".into(),
                socket_mode: "0600".into(),
                allowed_uids: vec![1000, 1001],
                allowed_gids: vec![27],
                fence_drain_ms: 25,
                liveness_timeout_ms: 3000,
                hello_timeout_ms: 1500,
                max_sessions: 16,
            }
        );
        assert_eq!(
            c.dataplane,
            DataplaneConfig {
                mbufs: 32767,
                mbuf_cache: 128,
                rx_ring: 512,
                tx_ring: 2048,
                vm_queue: 4096,
                stats_interval_ms: 250,
            }
        );
        assert_eq!(
            c.vms,
            vec![
                VmConfig {
                    name: "web".into(),
                    port: Some(vdev("net_vhost0,iface=/tmp/web.sock,queues=1")),
                    mac: None,
                    vlan: None,
                    mode: Mode::Protected,
                    announce: vec![],
                    defer: crate::classify::VmDefer::Builtin,
                    limits: BufferLimits {
                        max_frames: 2048,
                        max_bytes: 4_000_000,
                        high_water_frames: 1024,
                        high_water_bytes: 2_000_000,
                        on_full: OnFull::Backpressure,
                    },
                    rate: RateLimit {
                        bytes_per_s: 12_500_000,
                        burst_bytes: 50_000,
                        pps: 20_000,
                        burst_frames: 20,
                    },
                },
                VmConfig {
                    name: "db".into(),
                    port: None,
                    mac: Some(mac("52:54:00:00:00:02")),
                    vlan: Some(10),
                    mode: Mode::Standby,
                    announce: vec!["10.0.0.2".parse().unwrap(), "fd00::2".parse().unwrap()],
                    defer: crate::classify::VmDefer::All,
                    limits: BufferLimits {
                        max_frames: 4096,
                        max_bytes: 0,
                        high_water_frames: 0,
                        high_water_bytes: 0,
                        on_full: OnFull::Drop,
                    },
                    rate: RateLimit {
                        bytes_per_s: 0,
                        burst_bytes: 0,
                        pps: 1000,
                        burst_frames: 4,
                    },
                },
                VmConfig {
                    name: "cache.1".into(),
                    port: Some(PortSpec::Pci {
                        addr: "0000:04:00.1".into()
                    }),
                    mac: Some(mac("52:54:00:00:00:03")),
                    vlan: None,
                    mode: Mode::Passthrough,
                    announce: vec![],
                    defer: crate::classify::VmDefer::Builtin,
                    limits: BufferLimits {
                        max_frames: 4096,
                        max_bytes: 0,
                        high_water_frames: 3072,
                        high_water_bytes: 0,
                        on_full: OnFull::Drop,
                    },
                    rate: RateLimit::default(),
                },
            ]
        );
        assert_eq!(c.passthrough_min_share_ppm, 250_000);
        let names: Vec<&str> = c.ports().iter().map(|p| p.device_name()).collect();
        assert_eq!(
            names,
            ["0000:03:00.0", "net_pcap1", "net_vhost0", "0000:04:00.1"]
        );
    }

    #[test]
    fn metrics_listen_is_loopback_unless_an_address_is_given() {
        use std::net::SocketAddr;
        let a = |s: &str| parse_listen(s).unwrap_or_else(|e| panic!("{s}: {e}"));
        assert_eq!(a("9716"), "127.0.0.1:9716".parse::<SocketAddr>().unwrap());
        assert_eq!(
            a("localhost:9716"),
            "127.0.0.1:9716".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(a("[::1]:80"), "[::1]:80".parse::<SocketAddr>().unwrap());
        assert_eq!(
            a("0.0.0.0:9716"),
            "0.0.0.0:9716".parse::<SocketAddr>().unwrap()
        );
        for (bad, want) in [
            ("", "empty"),
            ("99999", "port \"99999\" is not a number"),
            ("127.0.0.1:x", "port \"x\" is not a number"),
            ("example.com:9716", "\"example.com\" is not an IP address"),
            ("127.0.0.1", "no port"),
            ("1.2.3:80", "\"1.2.3\" is not an IP address"),
        ] {
            let e = parse_listen(bad).unwrap_err();
            assert!(e.contains(want), "{bad:?}: {e}");
        }
        let toml = |admin: &str| {
            format!("{admin}\n[egress]\nport = \"net_null0\"\n[[vm]]\nname = \"a\"\nport = \"net_null1\"\n")
        };
        let c = Config::from_toml_str(&toml("[admin]\nmetrics_listen = \"9716\"")).unwrap();
        assert_eq!(c.admin.metrics_listen, Some(a("9716")));
        assert_eq!(
            Config::from_toml_str(&toml(""))
                .unwrap()
                .admin
                .metrics_listen,
            None
        );
        let e = Config::from_toml_str(&toml("[admin]\nmetrics_listen = \"web:80\""))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("admin.metrics_listen: \"web:80\": \"web\" is not an IP address"),
            "{e}"
        );
        let e = Config::from_toml_str(&toml("[admin]\nlisten = \"9716\""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `listen`"), "{e}");
    }

    #[test]
    fn the_admin_socket_defaults_to_the_control_sockets_directory() {
        let with = |control: &str| {
            let toml = format!("[control]\n{control}\n{MINIMAL}");
            Config::from_toml_str(&toml).unwrap().control.admin_socket
        };
        assert_eq!(
            with("socket = \"/srv/eg/ctl.sock\""),
            Path::new("/srv/eg/admin.sock")
        );
        assert_eq!(with("socket = \"ctl.sock\""), Path::new("admin.sock"));
        assert_eq!(
            with("socket = \"/srv/eg/ctl.sock\"\nadmin_socket = \"\""),
            Path::new("/srv/eg/admin.sock")
        );
        assert_eq!(
            with("socket = \"/srv/eg/ctl.sock\"\nadmin_socket = \"/run/a.sock\""),
            Path::new("/run/a.sock")
        );
    }

    #[test]
    fn absent_sections_take_defaults() {
        let c = Config::from_toml_str(MINIMAL).unwrap();
        assert_eq!(c.eal, EalConfig::default());
        assert_eq!(c.eal.lcores, "0-1");
        assert_eq!(c.eal.memory_mb, 512);
        assert!(c.eal.hugepages);
        assert_eq!(c.eal.file_prefix, "epochgate");
        assert_eq!(c.control.socket, Path::new("/run/epochgate/control.sock"));
        assert_eq!(
            c.control.admin_socket,
            Path::new("/run/epochgate/admin.sock")
        );
        assert_eq!(c.dataplane, DataplaneConfig::default());
        assert_eq!(c.dataplane.mbufs, 16383);
        assert_eq!(c.ingress, None);
        assert_eq!(c.vms[0].mode, Mode::Passthrough);
        assert_eq!(c.vms[0].mac, None);
        assert_eq!(c.passthrough_min_share_ppm, 100_000);
        assert_eq!(
            c.vms[0].limits,
            BufferLimits {
                max_frames: 1024,
                max_bytes: 0,
                high_water_frames: 768,
                high_water_bytes: 0,
                on_full: OnFull::Backpressure,
            }
        );
        assert_eq!(c.vms[0].limits, BufferLimits::default_for(1024, true));
        assert_eq!(c.vms[0].rate, RateLimit::default());
        assert!(c.vms[0].rate.is_unlimited());
        assert_eq!(c.classifier.policy.high_water_frames, 0);
        assert_eq!(c.classifier.policy.high_water_bytes, 0);
    }

    /// One VM with `keys` on its own port (`own`) or on the shared ingress.
    fn one_vm(own: bool, keys: &str) -> Config {
        let attach = if own {
            "port = \"net_tap0\""
        } else {
            "mac = \"52:54:00:00:00:01\""
        };
        let text = format!("{EGRESS}{INGRESS}[[vm]]\nname = \"a\"\n{attach}\n{keys}");
        Config::from_toml_str(&text).unwrap_or_else(|e| panic!("{e}\n---\n{text}"))
    }

    #[test]
    fn on_full_defaults_by_attachment() {
        assert_eq!(one_vm(true, "").vms[0].limits.on_full, OnFull::Backpressure);
        assert_eq!(one_vm(false, "").vms[0].limits.on_full, OnFull::Drop);
        assert_eq!(
            one_vm(false, "").vms[0].limits,
            BufferLimits::default_for(1024, false)
        );
        assert_eq!(
            one_vm(true, "on_full = \"drop\"").vms[0].limits.on_full,
            OnFull::Drop
        );
        assert_eq!(
            one_vm(false, "on_full = \"drop\"").vms[0].limits.on_full,
            OnFull::Drop
        );
        assert_eq!(
            one_vm(true, "on_full = \"backpressure\"").vms[0]
                .limits
                .on_full,
            OnFull::Backpressure
        );
        assert_eq!(OnFull::default(), OnFull::Backpressure);
        assert_eq!(OnFull::Backpressure.as_str(), "backpressure");
        assert_eq!(OnFull::Drop.as_str(), "drop");
    }

    #[test]
    fn high_water_is_computed_from_the_limits() {
        let l = |keys: &str| one_vm(true, keys).vms[0].limits;
        // (keys, frames, bytes)
        let cases: &[(&str, u64, u64)] = &[
            ("", 768, 0),
            // TOML tables may come in any order: this [dataplane] ends the [[vm]].
            ("[dataplane]\nvm_queue = 100", 75, 0),
            ("max_held_frames = 100\nhigh_water = 0.7", 70, 0), // 0.7 * 100 is 70.00000000000001
            ("max_held_frames = 100\nhigh_water = 0.3333", 34, 0),
            ("max_held_frames = 33\nhigh_water = 0.01", 1, 0),
            ("max_held_frames = 100\nhigh_water = 1", 100, 0),
            ("max_held_frames = 100\nhigh_water = 0", 0, 0),
            ("max_held_frames = 100\nmax_held_bytes = 100001", 75, 75001),
            (
                "max_held_frames = 100\nmax_held_bytes = 100001\nhigh_water = 0.5",
                50,
                50001,
            ),
            ("max_held_bytes = 16384\nhigh_water = 0", 0, 0),
            ("max_held_bytes = 0", 768, 0),
        ];
        for &(keys, frames, bytes) in cases {
            let got = l(keys);
            assert_eq!(
                (got.high_water_frames, got.high_water_bytes),
                (frames, bytes),
                "{keys:?}"
            );
        }
        assert_eq!(l("max_held_bytes = 20000").max_bytes, 20_000);
        assert_eq!(l("max_held_frames = 32").max_frames, 32);
        assert_eq!(l("max_held_frames = 16383").max_frames, 16383);
    }

    #[test]
    fn rate_and_burst_defaults() {
        let r = |keys: &str| one_vm(false, keys).vms[0].rate;
        let cases: &[(&str, RateLimit)] = &[
            ("", RateLimit::default()),
            (
                // 1 ms of 1 Mbit/s is 125 bytes: the floor of two full frames applies.
                "rate_mbps = 1",
                RateLimit {
                    bytes_per_s: 125_000,
                    burst_bytes: 3036,
                    pps: 0,
                    burst_frames: 0,
                },
            ),
            (
                "rate_mbps = 2.5",
                RateLimit {
                    bytes_per_s: 312_500,
                    burst_bytes: 3036,
                    pps: 0,
                    burst_frames: 0,
                },
            ),
            (
                "rate_mbps = 10000",
                RateLimit {
                    bytes_per_s: 1_250_000_000,
                    burst_bytes: 1_250_000,
                    pps: 0,
                    burst_frames: 0,
                },
            ),
            (
                "rate_mbps = 1000000\nburst = 64",
                RateLimit {
                    bytes_per_s: 125_000_000_000,
                    burst_bytes: 64,
                    pps: 0,
                    burst_frames: 0,
                },
            ),
            (
                "rate_mbps = 0.000004",
                RateLimit {
                    bytes_per_s: 1,
                    burst_bytes: 3036,
                    pps: 0,
                    burst_frames: 0,
                },
            ),
            (
                "rate_pps = 100",
                RateLimit {
                    bytes_per_s: 0,
                    burst_bytes: 0,
                    pps: 100,
                    burst_frames: 8,
                },
            ),
            (
                "rate_pps = 1000000",
                RateLimit {
                    bytes_per_s: 0,
                    burst_bytes: 0,
                    pps: 1_000_000,
                    burst_frames: 1000,
                },
            ),
            (
                "rate_pps = 1000000000\nburst_frames = 1",
                RateLimit {
                    bytes_per_s: 0,
                    burst_bytes: 0,
                    pps: 1_000_000_000,
                    burst_frames: 1,
                },
            ),
            (
                "rate_mbps = 8\nrate_pps = 5000\nburst = 100000\nburst_frames = 50",
                RateLimit {
                    bytes_per_s: 1_000_000,
                    burst_bytes: 100_000,
                    pps: 5000,
                    burst_frames: 50,
                },
            ),
        ];
        for (keys, want) in cases {
            assert_eq!(&r(keys), want, "{keys:?}");
        }
    }

    #[test]
    fn passthrough_min_share_in_ppm() {
        for (share, ppm) in [
            ("0", 0),
            ("0.0", 0),
            ("0.1", 100_000),
            ("0.25", 250_000),
            ("0.0000004", 0),
            ("0.9999994", 999_999),
        ] {
            let c = Config::from_toml_str(&format!(
                "[egress]\nport = \"net_null0\"\npassthrough_min_share = {share}\n[[vm]]\nname = \"a\"\nport = \"net_tap0\"\n"
            ))
            .unwrap();
            assert_eq!(c.passthrough_min_share_ppm, ppm, "{share}");
        }
    }

    /// Every limit, rate and share error, word for word.
    #[test]
    fn limit_and_rate_errors_are_exact() {
        const SHARE: &str = "is out of range 0 <= x < 1: the fraction of egress bytes pass-through traffic keeps while protected VMs' released frames are also waiting (0: released frames have strict priority)";
        let own = |keys: &str| {
            format!("{EGRESS}{INGRESS}[[vm]]\nname = \"a\"\nport = \"net_tap0\"\n{keys}\n")
        };
        let shared = |keys: &str| {
            format!(
                "{EGRESS}{INGRESS}[[vm]]\nname = \"a\"\nport = \"net_tap0\"\n[[vm]]\nname = \"b\"\nmac = \"52:54:00:00:00:01\"\n{keys}\n"
            )
        };
        let vm = "[[vm]]\nname = \"a\"\nport = \"net_tap0\"\n";
        let cases: Vec<(String, String)> = vec![
            (
                format!("[egress]\nport = \"net_null0\"\npassthrough_min_share = 1\n{vm}"),
                format!("egress.passthrough_min_share: 1 {SHARE}"),
            ),
            (
                format!("[egress]\nport = \"net_null0\"\npassthrough_min_share = -0.1\n{vm}"),
                format!("egress.passthrough_min_share: -0.1 {SHARE}"),
            ),
            (
                // Rounds to 1000000 ppm: as good as 1.
                format!("[egress]\nport = \"net_null0\"\npassthrough_min_share = 0.9999996\n{vm}"),
                format!("egress.passthrough_min_share: 0.9999996 {SHARE}"),
            ),
            (
                format!("[egress]\nport = \"net_null0\"\npassthrough_min_share = nan\n{vm}"),
                format!("egress.passthrough_min_share: NaN {SHARE}"),
            ),
            (
                format!("{EGRESS}[ingress]\nport = \"net_pcap1\"\npassthrough_min_share = 0.2\n{vm}"),
                "ingress.passthrough_min_share: is an [egress] key: it shares the egress port between pass-through and released frames; move it to [egress]".to_string(),
            ),
            (
                format!("[classifier]\nhigh_water_frames = 100\n{EGRESS}{vm}"),
                "classifier.high_water_frames: replaced by [[vm]] high_water (a fraction of max_held_frames / max_held_bytes)".to_string(),
            ),
            (
                // Even at 0, and even next to another mistake.
                format!("[classifier]\nhigh_water_frames = 0\nwindow_update = true\n{EGRESS}{vm}"),
                "classifier.high_water_frames: replaced by [[vm]] high_water (a fraction of max_held_frames / max_held_bytes)".to_string(),
            ),
            (
                own("max_held_frames = 31"),
                "vm[0] (\"a\").max_held_frames: 31 is out of range 32..=1048576 frames".to_string(),
            ),
            (
                own("max_held_frames = 1048577"),
                "vm[0] (\"a\").max_held_frames: 1048577 is out of range 32..=1048576 frames".to_string(),
            ),
            (
                own("max_held_frames = 16384"),
                "vm[0] (\"a\").max_held_frames: 16384 can never be reached: the mbuf pool (dataplane.mbufs) has only 16383".to_string(),
            ),
            (
                format!("[dataplane]\nmbufs = 1023\n{EGRESS}{vm}"),
                "dataplane.vm_queue: 1024, the default max_held_frames of vm[0] (\"a\"), can never be reached: the mbuf pool (dataplane.mbufs) has only 1023".to_string(),
            ),
            (
                format!("[dataplane]\nvm_queue = 1048577\n{EGRESS}{vm}"),
                "dataplane.vm_queue: 1048577 is too large (at most 1048576 frames): it is the default max_held_frames of each VM".to_string(),
            ),
            (
                own("max_held_bytes = 16383"),
                "vm[0] (\"a\").max_held_bytes: 16383 is too small: a byte limit is at least 16384 bytes (0 or absent: no byte limit)".to_string(),
            ),
            (
                own("max_held_bytes = -1"),
                "vm[0] (\"a\").max_held_bytes: -1 is too small: a byte limit is at least 16384 bytes (0 or absent: no byte limit)".to_string(),
            ),
            (
                own("high_water = 1.5"),
                "vm[0] (\"a\").high_water: 1.5 is out of range: 0 (off) or a fraction in (0, 1] of max_held_frames / max_held_bytes at which a checkpoint is requested".to_string(),
            ),
            (
                own("high_water = -0.25"),
                "vm[0] (\"a\").high_water: -0.25 is out of range: 0 (off) or a fraction in (0, 1] of max_held_frames / max_held_bytes at which a checkpoint is requested".to_string(),
            ),
            (
                own("high_water = nan"),
                "vm[0] (\"a\").high_water: NaN is out of range: 0 (off) or a fraction in (0, 1] of max_held_frames / max_held_bytes at which a checkpoint is requested".to_string(),
            ),
            (
                own("on_full = \"block\""),
                "vm[0] (\"a\").on_full: \"block\" is not one of \"backpressure\", \"drop\"".to_string(),
            ),
            (
                shared("on_full = \"backpressure\""),
                "vm[1] (\"b\").on_full: backpressure stops reading the VM's port, and on the shared ingress that would stall every VM on it; use \"drop\"".to_string(),
            ),
            (
                own("rate_mbps = 0"),
                "vm[0] (\"a\").rate_mbps: 0 is out of range: above 0 and at most 1000000 (megabits per second of Ethernet frame bytes, without preamble and FCS)".to_string(),
            ),
            (
                own("rate_mbps = 1000000.5"),
                "vm[0] (\"a\").rate_mbps: 1000000.5 is out of range: above 0 and at most 1000000 (megabits per second of Ethernet frame bytes, without preamble and FCS)".to_string(),
            ),
            (
                own("rate_mbps = inf"),
                "vm[0] (\"a\").rate_mbps: inf is out of range: above 0 and at most 1000000 (megabits per second of Ethernet frame bytes, without preamble and FCS)".to_string(),
            ),
            (
                own("rate_mbps = 0.000001"),
                "vm[0] (\"a\").rate_mbps: 0.000001 is below 1 byte per second (the least rate_mbps is 0.000004)".to_string(),
            ),
            (
                own("rate_pps = 0"),
                "vm[0] (\"a\").rate_pps: 0 is out of range 1..=1000000000 frames per second".to_string(),
            ),
            (
                own("rate_pps = 1000000001"),
                "vm[0] (\"a\").rate_pps: 1000000001 is out of range 1..=1000000000 frames per second".to_string(),
            ),
            (
                own("rate_pps = 1000\nburst = 3000"),
                "vm[0] (\"a\").burst: needs rate_mbps: burst is the depth of the byte bucket that rate_mbps fills (the depth of rate_pps's bucket is burst_frames)".to_string(),
            ),
            (
                own("rate_mbps = 10\nburst = 63"),
                "vm[0] (\"a\").burst: 63 is too small: at least 64 bytes (one minimum Ethernet frame)".to_string(),
            ),
            (
                own("rate_mbps = 10\nburst_frames = 10"),
                "vm[0] (\"a\").burst_frames: needs rate_pps: burst_frames is the depth of the frame bucket that rate_pps fills (the depth of rate_mbps's bucket is burst)".to_string(),
            ),
            (
                own("rate_pps = 10\nburst_frames = 0"),
                "vm[0] (\"a\").burst_frames: 0 is too small: at least 1 frame".to_string(),
            ),
        ];
        for (text, want) in &cases {
            let e = Config::from_toml_str(text).unwrap_err();
            assert!(matches!(e, ConfigError::Invalid { .. }), "{e}");
            assert_eq!(&e.to_string(), want, "\n---\n{text}");
        }
    }

    #[test]
    fn partial_sections_keep_other_defaults() {
        let c = Config::from_toml_str(&format!(
            "[eal]\nmemory_mb = 256\n[dataplane]\nrx_ring = 256\n{MINIMAL}"
        ))
        .unwrap();
        assert_eq!(c.eal.memory_mb, 256);
        assert_eq!(c.eal.lcores, "0-1");
        assert_eq!(c.dataplane.rx_ring, 256);
        assert_eq!(c.dataplane.tx_ring, 1024);
    }

    const EGRESS: &str = "[egress]\nport = \"net_pcap0,tx_pcap=out.pcap\"\n";
    const INGRESS: &str = "[ingress]\nport = \"net_pcap1,rx_pcap=in.pcap\"\n";

    #[test]
    fn vm_errors_name_the_vm_and_key() {
        let cases: &[(&str, &[&str])] = &[
            (
                "[[vm]]\nname = \"web\"\nmac = \"52:54:00:00:00:01\"\n[[vm]]\nname = \"db\"\nmac = \"52:54:zz:00:00:01\"\n",
                &["vm[1] (\"db\").mac: \"52:54:zz:00:00:01\" is not a MAC address (expected"],
            ),
            (
                "[[vm]]\nname = \"web\"\nmac = \"52:54:00:00:00:01\"\n[[vm]]\nname = \"db\"\nmac = \"52:54:00:00:00:02\"\n[[vm]]\nname = \"web\"\nmac = \"52:54:00:00:00:03\"\n",
                &["vm[2].name: duplicate VM name \"web\" (also vm[0])"],
            ),
            (
                "[[vm]]\nname = \"a\"\nmac = \"52:54:00:00:00:09\"\n[[vm]]\nname = \"y\"\nmac = \"52:54:00:00:00:01\"\n[[vm]]\nname = \"b\"\nmac = \"52:54:00:00:00:08\"\n[[vm]]\nname = \"x\"\nmac = \"52:54:00:00:00:01\"\n",
                &["vm[3] (\"x\").mac: duplicate MAC 52:54:00:00:00:01 (also vm[1] (\"y\"))"],
            ),
            (
                // A port VM's mac still may not clash with a shared-ingress VM's.
                "[[vm]]\nname = \"y\"\nmac = \"52:54:00:00:00:01\"\nvlan = 7\n[[vm]]\nname = \"x\"\nport = \"net_tap0\"\nmac = \"52:54:00:00:00:01\"\nvlan = 7\n",
                &["vm[1] (\"x\").mac: duplicate MAC 52:54:00:00:00:01 on VLAN 7 (also vm[0] (\"y\"))"],
            ),
            (
                "[[vm]]\nname = \"web\"\nmac = \"52:54:00:00:00:01\"\nmode = \"protectd\"\n",
                &["vm[0] (\"web\").mode: unknown mode \"protectd\" (expected \"passthrough\", \"protected\" or \"standby\")"],
            ),
            (
                "[[vm]]\nname = \"web\"\nmac = \"01:00:5e:00:00:01\"\n",
                &["vm[0] (\"web\").mac:", "group", "unicast"],
            ),
            (
                "[[vm]]\nname = \"web\"\nmac = \"00:00:00:00:00:00\"\n",
                &["vm[0] (\"web\").mac:", "all-zero"],
            ),
            (
                "[[vm]]\nname = \"web\"\nmac = \"52:54:00:00:00:01\"\nvlan = 4095\n",
                &["vm[0] (\"web\").vlan: 4095 is out of range (expected 0..=4094)"],
            ),
            (
                "[[vm]]\nname = \"web\"\nmac = \"52:54:00:00:00:01\"\nvlan = -1\n",
                &["vm[0] (\"web\").vlan: -1 is out of range"],
            ),
            (
                "[[vm]]\nname = \"web\"\nport = \"net_tap0\"\nvlan = 5\n",
                &["vm[0] (\"web\").vlan:", "without a mac"],
            ),
            (
                "[[vm]]\nname = \"web\"\nmac = \"52:54:00:00:00:01\"\n[[vm]]\nname = \"db\"\n",
                &["vm[1] (\"db\"): needs either its own port (vm.port) or a mac on the shared ingress ([ingress] port and vm.mac)", "neither"],
            ),
            (
                "[[vm]]\nport = \"net_tap0\"\n",
                &["vm[0].name: missing"],
            ),
            (
                "[[vm]]\nname = \"\"\nport = \"net_tap0\"\n",
                &["vm[0].name: is empty"],
            ),
            (
                "[[vm]]\nname = \"my vm\"\nport = \"net_tap0\"\n",
                &["vm[0].name: \"my vm\" contains ' '"],
            ),
            (
                "[[vm]]\nname = \"abcdefghijklmnopqrstuvwxyz0123456\"\nport = \"net_tap0\"\n",
                &["vm[0].name:", "33 characters long (at most 32)"],
            ),
            (
                "[[vm]]\nname = \"web\"\nport = \"eth0\"\n",
                &["vm[0] (\"web\").port: \"eth0\" is neither a vdev spec"],
            ),
            ("", &["vm: no [[vm]] entries"]),
        ];
        for (vms, expected) in cases {
            let text = format!("{EGRESS}{INGRESS}{vms}");
            assert_contains(&err(&text), expected);
        }
    }

    #[test]
    fn shared_ingress_vm_without_ingress_says_so() {
        let e = err(&format!(
            "{EGRESS}[[vm]]\nname = \"db\"\nmac = \"52:54:00:00:00:01\"\n"
        ));
        assert_contains(
            &e,
            &["vm[0] (\"db\"): needs either", "no [ingress] section"],
        );
        let e = err(&format!("{EGRESS}[[vm]]\nname = \"db\"\n"));
        assert_contains(&e, &["vm[0] (\"db\"): needs either", "no port or mac"]);
    }

    #[test]
    fn same_mac_on_different_vlans_is_fine() {
        let c = Config::from_toml_str(&format!(
            "{EGRESS}{INGRESS}[[vm]]\nname = \"a\"\nmac = \"52:54:00:00:00:01\"\nvlan = 1\n[[vm]]\nname = \"b\"\nmac = \"52:54:00:00:00:01\"\nvlan = 2\n[[vm]]\nname = \"c\"\nmac = \"52:54:00:00:00:01\"\n"
        ))
        .unwrap();
        assert_eq!(c.vms.len(), 3);
    }

    #[test]
    fn section_errors_name_the_key() {
        let vm = "[[vm]]\nname = \"web\"\nport = \"net_tap0\"\n";
        let cases: &[(String, &[&str])] = &[
            (
                vm.to_string(),
                &["egress: missing [egress] section: epochgate needs an egress port (a vdev spec such as \"net_pcap0,tx_pcap=out.pcap\" or a PCI address)"],
            ),
            (format!("[egress]\n{vm}"), &["egress.port: missing"]),
            (format!("{EGRESS}[ingress]\n{vm}"), &["ingress.port: missing"]),
            (
                format!("[egress]\nport = \"eth0\"\n{vm}"),
                &["egress.port: \"eth0\" is neither a vdev spec (net_<driver><n>[,key=value...]) nor a PCI address (0000:03:00.0)"],
            ),
            (
                format!("[egress]\nport = \"0000:03:00.0\"\n[ingress]\nport = \"03:00.0\"\n{vm}"),
                &["ingress.port: device 0000:03:00.0 is already used by egress.port"],
            ),
            (
                format!("{EGRESS}{INGRESS}[[vm]]\nname = \"web\"\nport = \"net_pcap1,iface=x\"\n"),
                &["vm[0] (\"web\").port: device net_pcap1 is already used by ingress.port"],
            ),
            (
                format!("{EGRESS}[[vm]]\nname = \"a\"\nport = \"net_tap0\"\n[[vm]]\nname = \"b\"\nport = \"net_tap0,iface=t0\"\n"),
                &["vm[1] (\"b\").port: device net_tap0 is already used by vm[0] (\"a\").port"],
            ),
            (format!("[eal]\nlcores = \"\"\n{EGRESS}{vm}"), &["eal.lcores: is empty"]),
            (format!("[eal]\nlcores = \"0-1 \"\n{EGRESS}{vm}"), &["eal.lcores: \"0-1 \" contains ' '"]),
            (format!("[eal]\nlcores = \"0,2-3\"\nmemory_mb = 32\n{EGRESS}{vm}"), &["eal.memory_mb: 32 is too small"]),
            (format!("[eal]\nfile_prefix = \"\"\n{EGRESS}{vm}"), &["eal.file_prefix: is empty"]),
            (format!("[eal]\nfile_prefix = \"a/b\"\n{EGRESS}{vm}"), &["eal.file_prefix: \"a/b\" contains '/'"]),
            (format!("[eal]\nargs = [\"-n\", \"4\", \"-l3\"]\n{EGRESS}{vm}"), &["eal.args[2]: \"-l3\" is set by epochgate from eal.lcores"]),
            (format!("[eal]\nargs = [\"--vdev=net_null0\"]\n{EGRESS}{vm}"), &["eal.args[0]:", "configured ports"]),
            (format!("[eal]\nargs = [\"-a\", \"0000:05:00.0\"]\n{EGRESS}{vm}"), &["eal.args[0]:", "configured ports"]),
            (format!("[control]\nsocket = \"/tmp/a\"\nadmin_socket = \"/tmp/a\"\n{EGRESS}{vm}"), &["control.admin_socket:", "also control.socket"]),
            (format!("[control]\nsocket = \"\"\n{EGRESS}{vm}"), &["control.socket: is empty"]),
            (format!("{EGRESS}[[vm]]\nname = \"a\"\nport = \"net_tap0\"\nmac = \"52:54:00:00:00:01\"\nannounce = [\"10.0.0.1\", \"10.0.0.300\"]\n"), &["vm[0] (\"a\").announce[1]: \"10.0.0.300\" is not an IPv4 or IPv6 address"]),
            (format!("{EGRESS}[[vm]]\nname = \"a\"\nport = \"net_tap0\"\nmac = \"52:54:00:00:00:01\"\nannounce = [\"ff02::1\"]\n"), &["vm[0] (\"a\").announce[0]: ff02::1 cannot be a VM's address"]),
            (format!("{EGRESS}[[vm]]\nname = \"a\"\nport = \"net_tap0\"\nannounce = [\"10.0.0.1\"]\n"), &["vm[0] (\"a\").announce: announcing addresses needs the VM's mac"]),
            (format!("[classifier]\nmax_defer_ms = 3\n{EGRESS}{vm}"), &["classifier.max_defer_ms: 3 is less than defer_delay_ms (5)"]),
            (format!("[classifier]\ndefer_delay_ms = -1\n{EGRESS}{vm}"), &["classifier.defer_delay_ms: -1 is out of range"]),
            (format!("[classifier]\nflow_table = 0\n{EGRESS}{vm}"), &["classifier.flow_table: 0 is out of range"]),
            (format!("[[classifier.rule]]\nverdict = \"defer\"\n[[classifier.rule]]\nprotocol = \"tcp\"\ndst_port = \"90-80\"\nverdict = \"defer\"\n{EGRESS}{vm}"), &["classifier.rule[1].dst_port:"]),
            (format!("[[classifier.rule]]\nverdict = \"later\"\n{EGRESS}{vm}"), &["classifier.rule[0].verdict:"]),
            (format!("[[classifier.rule]]\nvm = \"zz\"\nverdict = \"defer\"\n{EGRESS}{vm}"), &["classifier.rule[0].vm: no [[vm]] is named \"zz\""]),
            (format!("{EGRESS}[[vm]]\nname = \"a\"\nport = \"net_tap0\"\ndefer = \"sometimes\"\n"), &["vm[0] (\"a\").defer: \"sometimes\" is not one of"]),
            (format!("[control]\nsocket_mode = \"rw\"\n{EGRESS}{vm}"), &["control.socket_mode: \"rw\" is not a file mode"]),
            (format!("[control]\nsocket_mode = \"01777\"\n{EGRESS}{vm}"), &["control.socket_mode:"]),
            (format!("[control]\nsocket_mode = \"0999\"\n{EGRESS}{vm}"), &["control.socket_mode:"]),
            (format!("[control]\nfence_drain_ms = 0\n{EGRESS}{vm}"), &["control.fence_drain_ms: 0 is out of range"]),
            (format!("[control]\nfence_drain_ms = 500\nliveness_timeout_ms = 200\n{EGRESS}{vm}"), &["control.liveness_timeout_ms: 200 does not exceed control.fence_drain_ms (500)"]),
            (format!("[control]\nliveness_timeout_ms = 10\n{EGRESS}{vm}"), &["control.liveness_timeout_ms: 10 does not exceed control.fence_drain_ms (10)"]),
            (format!("[control]\nhello_timeout_ms = 0\n{EGRESS}{vm}"), &["control.hello_timeout_ms: 0 is out of range 100..=60000"]),
            (format!("[control]\nmax_sessions = 0\n{EGRESS}{vm}"), &["control.max_sessions: 0 is fewer than the 1 [[vm]] entries"]),
            (format!("[control]\nmax_sessions = 1\n{EGRESS}{vm}[[vm]]\nname = \"b\"\nport = \"net_tap9\"\n"), &["control.max_sessions: 1 is fewer than the 2 [[vm]] entries", "at least 2"]),
            (format!("[control]\nmax_sessions = 70000\n{EGRESS}{vm}"), &["control.max_sessions: 70000 is above the maximum of 65536"]),
            (format!("[control]\nsocket = \"/srv/eg/admin.sock\"\n{EGRESS}{vm}"), &["control.socket: \"/srv/eg/admin.sock\" is where the admin socket goes by default", "set control.admin_socket elsewhere"]),
            (format!("[control]\nallowed_uids = [-1]\n{EGRESS}{vm}"), &["allowed_uids"]),
            (format!("[dataplane]\nmbufs = 1000\n{EGRESS}{vm}"), &["dataplane.mbufs: 1000 is too few (at least 1023)"]),
            (format!("[dataplane]\nmbufs = 1023\nmbuf_cache = 1000\n{EGRESS}{vm}"), &["dataplane.mbuf_cache: 1000 is above"]),
            (format!("[dataplane]\nrx_ring = 1000\n{EGRESS}{vm}"), &["dataplane.rx_ring: 1000 is not a power of two in 64..=4096"]),
            (format!("[dataplane]\ntx_ring = 32\n{EGRESS}{vm}"), &["dataplane.tx_ring: 32 is not a power of two"]),
            (format!("[dataplane]\ntx_ring = 8192\n{EGRESS}{vm}"), &["dataplane.tx_ring: 8192"]),
            (format!("[dataplane]\nvm_queue = 31\n{EGRESS}{vm}"), &["dataplane.vm_queue: 31 is too small"]),
        ];
        for (text, expected) in cases {
            assert_contains(&err(text), expected);
        }
    }

    #[test]
    fn unknown_keys_fail_naming_the_field() {
        let vm = "[[vm]]\nname = \"web\"\nport = \"net_tap0\"\n";
        for (text, field) in [
            (format!("lcore = \"0\"\n{EGRESS}{vm}"), "lcore"),
            (format!("[eal]\nlcore = \"0\"\n{EGRESS}{vm}"), "lcore"),
            (
                format!("{EGRESS}[[vm]]\nname = \"web\"\nport = \"net_tap0\"\nvlna = 3\n"),
                "vlna",
            ),
            (format!("{EGRESS}\negres = 1\n{vm}"), "egres"),
            (
                format!("[dataplane]\nrx_rings = 64\n{EGRESS}{vm}"),
                "rx_rings",
            ),
            (format!("[contrl]\n{EGRESS}{vm}"), "contrl"),
            // A typo near the removed key still gets serde's text.
            (
                format!("[classifier]\nhigh_water = 0.5\n{EGRESS}{vm}"),
                "high_water",
            ),
            (
                format!("{EGRESS}[[vm]]\nname = \"web\"\nport = \"net_tap0\"\nrate_bps = 3\n"),
                "rate_bps",
            ),
        ] {
            let e = Config::from_toml_str(&text).unwrap_err();
            assert!(matches!(e, ConfigError::Parse(_)), "{e}");
            assert_contains(
                &e.to_string(),
                &[
                    "config: TOML parse error at line",
                    &format!("unknown field `{field}`"),
                ],
            );
        }
    }

    #[test]
    fn wrong_types_are_parse_errors_with_a_line() {
        let e = err(&format!("[eal]\nmemory_mb = \"lots\"\n{MINIMAL}"));
        assert_contains(&e, &["config: TOML parse error at line 2", "memory_mb"]);
        let e = err(&format!("[dataplane]\nrx_ring = 70000\n{MINIMAL}"));
        assert_contains(&e, &["line 2", "u16"]);
    }

    #[test]
    fn port_specs() {
        let ok: &[(&str, PortSpec)] = &[
            (
                "03:00.0",
                PortSpec::Pci {
                    addr: "0000:03:00.0".into(),
                },
            ),
            (
                "0000:03:00.0",
                PortSpec::Pci {
                    addr: "0000:03:00.0".into(),
                },
            ),
            (
                "0000:AF:1F.7",
                PortSpec::Pci {
                    addr: "0000:af:1f.7".into(),
                },
            ),
            (
                "10000:01:00.0",
                PortSpec::Pci {
                    addr: "10000:01:00.0".into(),
                },
            ),
            (
                "net_pcap0",
                PortSpec::Vdev {
                    spec: "net_pcap0".into(),
                    name: "net_pcap0".into(),
                },
            ),
            (
                "net_pcap0,tx_pcap=out.pcap",
                PortSpec::Vdev {
                    spec: "net_pcap0,tx_pcap=out.pcap".into(),
                    name: "net_pcap0".into(),
                },
            ),
            (
                "net_tap0,iface=tap0,persist",
                PortSpec::Vdev {
                    spec: "net_tap0,iface=tap0,persist".into(),
                    name: "net_tap0".into(),
                },
            ),
        ];
        for (s, want) in ok {
            assert_eq!(&PortSpec::parse(s).unwrap(), want, "{s}");
        }
        let bad: &[(&str, &str)] = &[
            ("eth0", "is neither"),
            ("", "is neither"),
            ("net_", "missing after"),
            ("net_pcap 0", "contains ' '"),
            ("net_pcap0,", "is not key=value"),
            ("net_pcap0,,a=b", "is not key=value"),
            ("net_pcap0,tx_pcap=", "empty value"),
            ("0000:03:20.0", "device 0x20 is above 0x1f"),
            ("0000:03:00.8", "function 0x8 is above 7"),
            ("0000:003:00.0", "is neither"),
            ("03:00", "is neither"),
            ("eth_pcap0", "is neither"),
        ];
        for (s, why) in bad {
            let e = PortSpec::parse(s).unwrap_err();
            assert!(
                e.contains(why) && e.contains(&format!("{s:?}")),
                "{s:?}: {e}"
            );
        }
        let p = PortSpec::parse("03:00.0").unwrap();
        assert!(p.is_pci());
        assert_eq!(p.to_string(), "0000:03:00.0");
        assert_eq!(p.device_name(), "0000:03:00.0");
        let v = vdev("net_pcap0,tx_pcap=out.pcap");
        assert!(!v.is_pci());
        assert_eq!(v.to_string(), "net_pcap0,tx_pcap=out.pcap");
        assert_eq!(v.device_name(), "net_pcap0");
    }

    #[test]
    fn modes_round_trip() {
        for m in [Mode::Passthrough, Mode::Protected, Mode::Standby] {
            assert_eq!(m.to_string().parse::<Mode>(), Ok(m));
        }
        assert!("Protected".parse::<Mode>().is_err());
    }

    #[test]
    fn eal_args_with_only_vdevs() {
        let c = Config::from_toml_str(MINIMAL).unwrap();
        let args = eal_args(&c.eal, &c.ports());
        assert_eq!(
            args,
            [
                "epochgate",
                "-l",
                "0-1",
                "-m",
                "512",
                "--file-prefix",
                "epochgate",
                "--no-pci",
                "--vdev",
                "net_pcap0,tx_pcap=out.pcap",
                "--vdev",
                "net_vhost0,iface=/tmp/web.sock",
            ]
        );
    }

    #[test]
    fn eal_args_with_pci_ports_allow_list_them() {
        let c = Config::from_toml_str(FULL).unwrap();
        let args = eal_args(&c.eal, &c.ports());
        assert_eq!(
            args,
            [
                "epochgate",
                "-l",
                "0,2-3",
                "--no-huge",
                "-m",
                "1024",
                "--file-prefix",
                "eg1",
                "-a",
                "0000:03:00.0",
                "-a",
                "0000:04:00.1",
                "--vdev",
                "net_pcap1,rx_pcap=in.pcap",
                "--vdev",
                "net_vhost0,iface=/tmp/web.sock,queues=1",
                "--log-level=lib.eal:debug",
                "--huge-dir=/mnt/huge",
            ]
        );
        assert!(!args.iter().any(|a| a == "--no-pci"));
    }

    #[test]
    fn no_huge_iff_hugepages_false() {
        let mut eal = EalConfig::default();
        let p = vdev("net_null0");
        assert!(!eal_args(&eal, &[&p]).iter().any(|a| a == "--no-huge"));
        eal.hugepages = false;
        assert_eq!(
            eal_args(&eal, &[&p])
                .iter()
                .filter(|a| *a == "--no-huge")
                .count(),
            1
        );
    }

    #[test]
    fn topology_describes_everything() {
        let t = Config::from_toml_str(FULL).unwrap().topology();
        assert_contains(
            &t,
            &[
                "EAL:       epochgate -l 0,2-3 --no-huge -m 1024",
                "egress:    0000:03:00.0 (PCI), pass-through min share 25% (while released frames wait)\n",
                "ingress:   net_pcap1,rx_pcap=in.pcap (vdev net_pcap1)",
                "vm \"web\": protected, port net_vhost0,iface=/tmp/web.sock,queues=1 (vdev net_vhost0), mac learned from its first frame\n  \
                 buffer:  at most 2048 frames and 4000000 bytes, high water 1024 frames or 2000000 bytes, when full: backpressure\n  \
                 rate:    100 Mbit/s (burst 50000 bytes), 20000 pps (burst 20 frames)\n",
                "vm \"db\": standby, shared ingress, mac 52:54:00:00:00:02, vlan 10, announces 10.0.0.2 fd00::2 on promotion\n  \
                 buffer:  at most 4096 frames (no byte limit), high water off, when full: drop\n  \
                 rate:    no byte rate limit, 1000 pps (burst 4 frames)\n",
                "vm \"cache.1\": passthrough, port 0000:04:00.1 (PCI), mac 52:54:00:00:00:03\n  \
                 buffer:  at most 4096 frames (no byte limit), high water 3072 frames, when full: drop\n  \
                 rate:    unlimited\n",
                "control:   socket /tmp/eg/control.sock (mode 0600), admin socket /tmp/eg/admin.sock, fence drain <= 25 ms, liveness 3000 ms, Hello within 1500 ms, at most 16 sessions",
                "sessions:  uids root, owner, 1000, 1001; gids 27",
                "dataplane: 32767 mbufs (cache 128), rx ring 512, tx ring 2048, vm queue 4096 frames, stats every 250 ms",
                "classifier: defer 5 ms (at most 10 ms), min checkpoint interval 0 ms, window updates on (below 1460 bytes in 4096 flows), 0 rule(s)",
            ],
        );
        assert!(!t.contains("high water off, window"), "{t}");
        let t = Config::from_toml_str(MINIMAL).unwrap().topology();
        assert_contains(
            &t,
            &[
                "ingress:   none",
                "egress:    net_pcap0,tx_pcap=out.pcap (vdev net_pcap0), pass-through min share 10% (while released frames wait)\n",
                "  buffer:  at most 1024 frames (no byte limit), high water 768 frames, when full: backpressure\n  rate:    unlimited\n",
            ],
        );
        let t = Config::from_toml_str(
            "[egress]\nport = \"net_null0\"\npassthrough_min_share = 0\n[[vm]]\nname = \"a\"\nport = \"net_tap0\"\nmax_held_bytes = 65536\nhigh_water = 0.5\nrate_mbps = 2.5\n"
        )
        .unwrap()
        .topology();
        assert_contains(
            &t,
            &[
                "egress:    net_null0 (vdev), pass-through min share 0% (released frames have strict priority)\n",
                "  buffer:  at most 1024 frames and 65536 bytes, high water 512 frames or 32768 bytes, when full: backpressure\n",
                "  rate:    2.5 Mbit/s (burst 3036 bytes), no frame rate limit\n",
            ],
        );
    }

    #[test]
    fn load_names_the_path() {
        let dir =
            std::env::temp_dir().join(format!("epochgate-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("missing.toml");
        let e = Config::load(&missing).unwrap_err();
        assert!(matches!(e, ConfigError::Io { .. }));
        assert_contains(
            &e.to_string(),
            &[&missing.display().to_string(), "cannot read"],
        );
        let file = dir.join("ok.toml");
        std::fs::write(&file, MINIMAL).unwrap();
        assert_eq!(
            Config::load(&file).unwrap(),
            Config::from_toml_str(MINIMAL).unwrap()
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    // --- issue 10: one device per port; what EAL would refuse at run time ---

    /// `egress` as the egress port and `vms` as VM ports (names a, b, c, ...).
    fn ports_config(egress: &str, vms: &[&str]) -> String {
        let mut text = format!("[egress]\nport = \"{egress}\"\n");
        for (i, p) in vms.iter().enumerate() {
            let name = (b'a' + i as u8) as char;
            text.push_str(&format!("[[vm]]\nname = \"{name}\"\nport = \"{p}\"\n"));
        }
        text
    }

    #[test]
    fn the_resource_table_names_each_drivers_devices() {
        use ResourceKind::*;
        let cwd = std::env::current_dir().unwrap();
        let path = |p: &str| Resource::Path(PathBuf::from(p));
        // (spec, [(kind, key, as written, identity)])
        type Want = Vec<(ResourceKind, &'static str, &'static str, Resource)>;
        let cases: Vec<(&str, Want)> = vec![
            (
                "net_tap0,iface=tap0,persist",
                vec![(
                    Interface,
                    "iface",
                    "tap0",
                    Resource::Interface("tap0".into()),
                )],
            ),
            (
                "net_tun0,iface=tun0",
                vec![(
                    Interface,
                    "iface",
                    "tun0",
                    Resource::Interface("tun0".into()),
                )],
            ),
            (
                "net_af_packet0,iface=eth1,qpairs=1",
                vec![(
                    Interface,
                    "iface",
                    "eth1",
                    Resource::Interface("eth1".into()),
                )],
            ),
            (
                "net_pcap0,iface=eth2",
                vec![(
                    Interface,
                    "iface",
                    "eth2",
                    Resource::Interface("eth2".into()),
                )],
            ),
            (
                "net_pcap0,rx_iface=eth3,tx_iface=eth4,rx_iface_in=eth5",
                vec![
                    (
                        Interface,
                        "rx_iface",
                        "eth3",
                        Resource::Interface("eth3".into()),
                    ),
                    (
                        Interface,
                        "tx_iface",
                        "eth4",
                        Resource::Interface("eth4".into()),
                    ),
                    (
                        Interface,
                        "rx_iface_in",
                        "eth5",
                        Resource::Interface("eth5".into()),
                    ),
                ],
            ),
            (
                "net_pcap0,rx_pcap=/tmp/in.pcap,tx_pcap=/tmp/x/../out.pcap",
                vec![
                    (File, "rx_pcap", "/tmp/in.pcap", path("/tmp/in.pcap")),
                    (File, "tx_pcap", "/tmp/x/../out.pcap", path("/tmp/out.pcap")),
                ],
            ),
            (
                "net_pcap0,tx_pcap=rel/out.pcap",
                vec![(
                    File,
                    "tx_pcap",
                    "rel/out.pcap",
                    Resource::Path(cwd.join("rel/out.pcap")),
                )],
            ),
            (
                "net_vhost0,iface=/tmp//./a.sock,queues=1",
                vec![(Socket, "iface", "/tmp//./a.sock", path("/tmp/a.sock"))],
            ),
            (
                "net_virtio_user0,path=/dev/vhost-net,iface=vtap0",
                vec![
                    (Socket, "path", "/dev/vhost-net", path("/dev/vhost-net")),
                    (
                        Interface,
                        "iface",
                        "vtap0",
                        Resource::Interface("vtap0".into()),
                    ),
                ],
            ),
            (
                "net_memif0",
                vec![(
                    Memif,
                    "socket",
                    "/run/memif.sock",
                    Resource::Memif("/run/memif.sock".into(), 0),
                )],
            ),
            (
                "net_memif0,socket=/tmp/m.sock,id=7,role=client",
                vec![(
                    Memif,
                    "socket",
                    "/tmp/m.sock",
                    Resource::Memif("/tmp/m.sock".into(), 7),
                )],
            ),
            (
                "net_ring0,nodeaction=r1:0:CREATE,nodeaction=r2:0:CREATE",
                vec![
                    (Ring, "nodeaction", "r1", Resource::Ring("r1".into())),
                    (Ring, "nodeaction", "r2", Resource::Ring("r2".into())),
                ],
            ),
            (
                "0000:03:00.0",
                vec![(
                    Pci,
                    "address",
                    "0000:03:00.0",
                    Resource::Pci("0000:03:00.0".into()),
                )],
            ),
            ("net_null0,size=64", vec![]),
            ("net_tap0", vec![]),
        ];
        for (spec, want) in cases {
            // (Every port is also a "device" resource a bond may name: checked below.)
            let got: Vec<_> = port_resources(&PortSpec::parse(spec).unwrap())
                .into_iter()
                .filter(|r| r.key != "device")
                .map(|r| (r.kind, r.key, r.written, r.id))
                .collect();
            let want: Vec<_> = want
                .into_iter()
                .map(|(k, key, w, id)| (k, key, w.to_string(), id))
                .collect();
            assert_eq!(got, want, "{spec}");
        }
        let of = |spec: &str| -> Vec<Resource> {
            port_resources(&PortSpec::parse(spec).unwrap())
                .into_iter()
                .map(|r| r.id)
                .collect()
        };
        assert!(
            of("net_bonding0,mode=0,slave=net_tap1").contains(&Resource::Port("net_tap1".into()))
        );
        assert!(of("net_tap1,iface=t1").contains(&Resource::Port("net_tap1".into())));
        assert!(of("net_ring0").contains(&Resource::Ring("net_ring0".into())));
        assert!(of("net_tap0,iface=a,remote=b").contains(&Resource::Interface("b".into())));
        assert!(of("net_af_xdp0,iface=x").contains(&Resource::Interface("x".into())));
        assert!(known_vdev_driver("net_pcap3") && known_vdev_driver("net_null0"));
        assert!(!known_vdev_driver("net_foo0"));
    }

    /// Every pair of resource-naming keys, on two VM ports, with one value: refused exactly when
    /// the two name one thing (one interface namespace; one filesystem namespace for files,
    /// sockets and memif sockets), and the error names both ports.
    #[test]
    fn every_pair_of_resource_keys_clashes_exactly_when_it_should() {
        // (spec with {} for the value, namespace)
        const IFACES: &[&str] = &[
            "net_tap{n},iface={}",
            "net_tun{n},iface={}",
            "net_af_packet{n},iface={}",
            "net_pcap{n},iface={}",
            "net_pcap{n},rx_iface={}",
            "net_pcap{n},rx_iface_in={}",
            "net_pcap{n},tx_iface={}",
            "net_virtio_user{n},path=/tmp/vu{n}.sock,iface={}",
        ];
        const PATHS: &[&str] = &[
            "net_pcap{n},rx_pcap={}",
            "net_pcap{n},tx_pcap={}",
            "net_vhost{n},iface={}",
            "net_virtio_user{n},path={}",
            "net_memif{n},socket={}",
        ];
        const RINGS: &[&str] = &["net_ring{n},nodeaction={}:0:CREATE"];
        let all: Vec<(&str, usize, &str)> = [(IFACES, "eg0"), (PATHS, "/tmp/eg/x"), (RINGS, "r0")]
            .iter()
            .enumerate()
            .flat_map(|(ns, (specs, v))| specs.iter().map(move |s| (*s, ns, *v)))
            .collect();
        let spec = |t: &str, n: usize, v: &str| t.replace("{n}", &n.to_string()).replace("{}", v);
        let mut refused = 0;
        for &(a, ns_a, va) in &all {
            for &(b, ns_b, vb) in &all {
                // One value for both when they share a namespace; VM "b" spells a path its own way.
                let vb = if ns_a == ns_b { va } else { vb };
                let vb = if ns_b == 1 {
                    vb.replace("/eg/", "/./eg//")
                } else {
                    vb.to_string()
                };
                let text = ports_config("net_null9", &[&spec(a, 1, va), &spec(b, 2, &vb)]);
                match Config::from_toml_str(&text) {
                    Ok(_) => assert_ne!(ns_a, ns_b, "accepted:\n{text}"),
                    Err(e) => {
                        assert_eq!(ns_a, ns_b, "{e}\n{text}");
                        refused += 1;
                        assert_contains(
                            &e.to_string(),
                            &[
                                "vm[1] (\"b\").port: ",
                                "is already used by vm[0] (\"a\").port (",
                            ],
                        );
                    }
                }
            }
        }
        let same = |ns: usize| all.iter().filter(|(_, n, _)| *n == ns).count();
        assert_eq!(refused, (0..3).map(|ns| same(ns) * same(ns)).sum::<usize>());
    }

    #[test]
    fn two_ports_on_one_device_are_refused_naming_both_keys() {
        const WHY: &str =
            "two ports on one device would let one VM's output leave through the other";
        let cwd = std::env::current_dir().unwrap().display().to_string();
        let cases: Vec<(String, String)> = vec![
            (
                format!("{EGRESS}[[vm]]\nname = \"prot\"\nport = \"net_tap1,iface=X\"\nmode = \"protected\"\n[[vm]]\nname = \"pt\"\nport = \"net_tap2,iface=X\"\n"),
                format!("vm[1] (\"pt\").port: interface \"X\" is already used by vm[0] (\"prot\").port (net_tap1): {WHY}"),
            ),
            (
                ports_config("net_null0", &["net_vhost0,iface=/tmp/a.sock", "net_vhost1,iface=/tmp//a.sock"]),
                format!("vm[1] (\"b\").port: socket \"/tmp//a.sock\" is already used by vm[0] (\"a\").port (net_vhost0, as \"/tmp/a.sock\"): {WHY}"),
            ),
            (
                ports_config("net_null0", &["net_vhost0,iface=/tmp/./a.sock", "net_vhost1,iface=/tmp/b/../a.sock"]),
                format!("vm[1] (\"b\").port: socket \"/tmp/b/../a.sock\" is already used by vm[0] (\"a\").port (net_vhost0, as \"/tmp/./a.sock\"): {WHY}"),
            ),
            (
                ports_config("net_null0", &["net_vhost0,iface=a.sock", &format!("net_vhost1,iface={cwd}/a.sock")]),
                format!("vm[1] (\"b\").port: socket \"{cwd}/a.sock\" is already used by vm[0] (\"a\").port (net_vhost0, as \"a.sock\"): {WHY}"),
            ),
            (
                ports_config("net_pcap0,tx_pcap=/tmp/x.pcap", &["net_pcap1,rx_pcap=/tmp/x.pcap"]),
                format!("vm[0] (\"a\").port: file \"/tmp/x.pcap\" is already used by egress.port (net_pcap0): {WHY}"),
            ),
            (
                "[egress]\nport = \"net_pcap0,tx_pcap=/tmp/o.pcap\"\n[ingress]\nport = \"net_pcap1,rx_iface=veth0\"\n[[vm]]\nname = \"a\"\nport = \"net_af_packet0,iface=veth0\"\n".to_string(),
                format!("vm[0] (\"a\").port: interface \"veth0\" is already used by ingress.port (net_pcap1): {WHY}"),
            ),
            (
                ports_config("net_null0", &["net_memif0", "net_memif1,role=client"]),
                format!("vm[1] (\"b\").port: memif socket \"/run/memif.sock\" (id 0) is already used by vm[0] (\"a\").port (net_memif0): {WHY}"),
            ),
            (
                ports_config("net_null0", &["net_memif0,socket=/tmp/m.sock,id=3", "net_vhost0,iface=/tmp/m.sock"]),
                format!("vm[1] (\"b\").port: socket \"/tmp/m.sock\" is already used by vm[0] (\"a\").port (net_memif0): {WHY}"),
            ),
            (
                ports_config("net_ring0,nodeaction=r1:0:CREATE", &["net_ring1,nodeaction=r1:0:ATTACH"]),
                format!("vm[0] (\"a\").port: ring \"r1\" is already used by egress.port (net_ring0): {WHY}"),
            ),
            (
                ports_config("net_pcap0,rx_pcap=/tmp/x.pcap,tx_pcap=/tmp/x.pcap", &["net_null0"]),
                "egress.port: file \"/tmp/x.pcap\" is named by both rx_pcap= and tx_pcap=: a port may use each device once".to_string(),
            ),
            (
                ports_config("net_pcap0,rx_iface=eth0,tx_iface=eth0", &["net_null0"]),
                "egress.port: interface \"eth0\" is named by both rx_iface= and tx_iface=: a port may use each device once (iface= is one interface in both directions)".to_string(),
            ),
            (
                ports_config("net_null0", &["net_tap0,iface=a,iface=b"]),
                "vm[0] (\"a\").port: \"net_tap0,iface=a,iface=b\" is not a valid vdev spec: parameter \"iface\" is given twice: the driver would use one and silently drop the other".to_string(),
            ),
            (
                ports_config("net_null0,size=64,size=128", &["net_null1"]),
                "egress.port: \"net_null0,size=64,size=128\" is not a valid vdev spec: parameter \"size\" is given twice: the driver would use one and silently drop the other".to_string(),
            ),
        ];
        for (text, want) in &cases {
            assert_eq!(&err(text), want, "\n---\n{text}");
        }
        // Different memif ids on one socket are two connections; tap ports without iface= get
        // names of their own from the driver.
        for ok in [
            ports_config("net_null0", &["net_memif0", "net_memif1,id=1"]),
            ports_config("net_null0", &["net_tap0", "net_tap1"]),
            ports_config(
                "net_pcap0,iface=eth0",
                &["net_ring0,nodeaction=a:0:CREATE,nodeaction=b:0:CREATE"],
            ),
        ] {
            Config::from_toml_str(&ok).unwrap_or_else(|e| panic!("{e}\n{ok}"));
        }
    }

    #[test]
    fn interface_names_and_socket_paths_follow_the_kernels_rules() {
        for name in ["eth0", "a", "abcdefghijklmno", "veth-eg0", "br0.10"] {
            let text = ports_config("net_null0", &[&format!("net_tap0,iface={name}")]);
            Config::from_toml_str(&text).unwrap_or_else(|e| panic!("{name:?}: {e}"));
        }
        // A name the kernel picks ("tap%d") could be another port's interface.
        let e = err(&ports_config("net_null0", &["net_tap0,iface=tap%d"]));
        assert!(e.contains("'%'"), "{e}");
        let bad = |spec: &str, why: &str| {
            let e = err(&ports_config(spec, &["net_null0"]));
            assert_eq!(
                e,
                format!("egress.port: {spec:?} is not a valid vdev spec: {why}")
            );
        };
        bad(
            "net_tap0,iface=abcdefghijklmnop",
            "iface=\"abcdefghijklmnop\" is 16 characters long: Linux interface names have at most 15 (IFNAMSIZ - 1)",
        );
        bad(
            "net_af_packet0,iface=eth0:1",
            "iface=\"eth0:1\" contains ':': Linux interface names may not contain '/', ':' or whitespace",
        );
        bad(
            "net_pcap0,rx_iface=a/b",
            "rx_iface=\"a/b\" contains '/': Linux interface names may not contain '/', ':' or whitespace",
        );
        bad(
            "net_pcap0,tx_iface=a\tb",
            "tx_iface=\"a\\tb\" contains '\\t': Linux interface names may not contain '/', ':' or whitespace",
        );
        bad(
            "net_tun0,iface=..",
            "iface=\"..\" is not an interface name Linux accepts",
        );
        bad(
            "net_virtio_user0,path=/tmp/u.sock,iface=.",
            "iface=\".\" is not an interface name Linux accepts",
        );
        let long = format!("/tmp/{}.sock", "s".repeat(98)); // 108 bytes
        bad(
            &format!("net_vhost0,iface={long}"),
            &format!(
                "iface={long:?} is 108 bytes long: a unix socket path has at most 107 (sun_path)"
            ),
        );
        bad(
            &format!("net_memif0,socket={long}"),
            &format!(
                "socket={long:?} is 108 bytes long: a unix socket path has at most 107 (sun_path)"
            ),
        );
        let fits = format!("/tmp/{}.sock", "s".repeat(97));
        Config::from_toml_str(&ports_config(
            &format!("net_vhost0,iface={fits}"),
            &["net_null0"],
        ))
        .unwrap();
        // A file (pcap) is no socket: long paths are fine.
        Config::from_toml_str(&ports_config(
            &format!("net_pcap0,tx_pcap={long}"),
            &["net_null0"],
        ))
        .unwrap();
    }

    #[test]
    fn lcore_lists_are_parsed_like_eals_dash_l() {
        for (list, ids) in [
            ("0-1", vec![0, 1]),
            ("0,2-3", vec![0, 2, 3]),
            ("0,0-1", vec![0, 1]),
            ("3,1", vec![1, 3]),
            ("126-127", vec![126, 127]),
        ] {
            assert_eq!(lcore_ids(list), Ok(ids), "{list}");
        }
        let eal = |lcores: &str| err(&format!("[eal]\nlcores = \"{lcores}\"\n{MINIMAL}"));
        let two = "epochgate needs at least two (the main lcore runs control and stats, a worker runs the poll loop), e.g. \"0-1\"";
        assert_eq!(eal("0"), format!("eal.lcores: \"0\" is one lcore: {two}"));
        assert_eq!(
            eal("1-1,1"),
            format!("eal.lcores: \"1-1,1\" is one lcore: {two}")
        );
        let list = "a core list such as \"0-1\" or \"0,2-3\"";
        assert_eq!(
            eal("1@(0,1)"),
            format!("eal.lcores: \"1@(0,1)\" is --lcores syntax (lcore@cpu): epochgate passes eal.lcores to EAL's -l, which takes {list}")
        );
        assert_eq!(
            eal("0,128"),
            "eal.lcores: \"0,128\" names lcore 128: lcore ids are 0..=127 (DPDK is built with RTE_MAX_LCORE 128)"
        );
        assert_eq!(
            eal("3-2"),
            format!("eal.lcores: \"3-2\" is not {list}: the range \"3-2\" runs backwards")
        );
        for bad in ["0,", "-1", "0--1", "0-1-2", ",0"] {
            assert_contains(&eal(bad), &["eal.lcores:", "is not an lcore id"]);
        }
    }

    #[test]
    fn the_mbuf_pool_must_fit_in_memory_and_fill_every_ring() {
        let with = |eal: &str, dataplane: &str, vms: &str| {
            format!("[eal]\n{eal}\n[dataplane]\n{dataplane}\n{EGRESS}{vms}")
        };
        let vm = "[[vm]]\nname = \"a\"\nport = \"net_tap0\"\n";
        // 64 MB without hugepages: (64 - 16) MB / 4096 = 12288 mbufs.
        let small = "memory_mb = 64\nhugepages = false";
        Config::from_toml_str(&with(small, "mbufs = 12288", vm)).unwrap();
        assert_eq!(
            err(&with(small, "mbufs = 12289", vm)),
            "dataplane.mbufs: 12289 mbufs do not fit in eal.memory_mb = 64: they need 65 MB (4096 bytes per mbuf without hugepages (one 4 KiB page each), plus 16 MB for EAL and the ports); lower dataplane.mbufs to at most 12288 or raise eal.memory_mb to 65"
        );
        // The defaults (16383 mbufs, hugepages) in 64 MB: 2432 bytes each.
        Config::from_toml_str(&with("memory_mb = 64", "", vm)).unwrap();
        assert_eq!(
            err(&with("", "mbufs = 4000000", vm)),
            "dataplane.mbufs: 4000000 mbufs do not fit in eal.memory_mb = 512: they need 9294 MB (2432 bytes per mbuf with hugepages, plus 16 MB for EAL and the ports); lower dataplane.mbufs to at most 213854 or raise eal.memory_mb to 9294"
        );
        assert_eq!(
            err(&with("memory_mb = 4000000", "mbufs = 16777216", vm)),
            "dataplane.mbufs: 16777216 is too many (at most 16777215, about 40 GB of mbufs)"
        );
        // Rings: 2 ports x (4096 + 1024) + 2 lcores x 384 + 32 = 11040.
        let rings = "rx_ring = 4096\nvm_queue = 512";
        assert_eq!(
            err(&with("", &format!("mbufs = 1023\n{rings}"), vm)),
            "dataplane.mbufs: 1023 cannot fill the rings: 2 port(s) x (dataplane.rx_ring 4096 + dataplane.tx_ring 1024) + 2 lcores x 384 (1.5 x dataplane.mbuf_cache, what a per-lcore cache may hold) + 32 (a burst) = 11040 mbufs are needed"
        );
        assert_contains(
            &err(&with("", &format!("mbufs = 11039\n{rings}"), vm)),
            &["= 11040 mbufs are needed"],
        );
        Config::from_toml_str(&with("", &format!("mbufs = 11040\n{rings}"), vm)).unwrap();
        // Every port counts (egress, ingress, VM ports) and every lcore's cache.
        let three = format!(
            "{INGRESS}{vm}[[vm]]\nname = \"b\"\nmac = \"52:54:00:00:00:02\"\n[[vm]]\nname = \"c\"\nport = \"net_tap1\"\n"
        );
        assert_contains(
            &err(&with("lcores = \"0-3\"", "mbufs = 4095\nmbuf_cache = 100\nvm_queue = 64", &three)),
            &["4 port(s) x (dataplane.rx_ring 1024 + dataplane.tx_ring 1024) + 4 lcores x 150 (1.5 x dataplane.mbuf_cache", "= 8824 mbufs are needed"],
        );
    }

    #[test]
    fn the_file_prefix_fits_eals_socket_paths() {
        let with = |n: usize| format!("[eal]\nfile_prefix = \"{}\"\n{MINIMAL}", "p".repeat(n));
        assert_eq!(
            Config::from_toml_str(&with(64))
                .unwrap()
                .eal
                .file_prefix
                .len(),
            64
        );
        let why = "EAL binds the unix socket <runtime dir>/<prefix>/dpdk_telemetry.v2 (runtime dir /var/run/dpdk as root, $XDG_RUNTIME_DIR/dpdk otherwise), and a socket path holds at most 107 bytes (sun_path): 75 characters under /var/run/dpdk, fewer under a longer runtime dir";
        assert_eq!(
            err(&with(65)),
            format!("eal.file_prefix: is 65 characters long (at most 64): {why}")
        );
        assert_eq!(
            err(&with(300)),
            format!("eal.file_prefix: is 300 characters long (at most 64): {why}")
        );
    }

    #[test]
    fn only_a_standby_vm_announces_and_each_address_once() {
        let vm = |name: &str, mac: u8, mode: &str, announce: &str| {
            format!("[[vm]]\nname = \"{name}\"\nport = \"net_tap{mac}\"\nmac = \"52:54:00:00:00:0{mac}\"\nmode = \"{mode}\"\nannounce = [{announce}]\n")
        };
        for mode in ["passthrough", "protected"] {
            assert_eq!(
                err(&format!("{EGRESS}{}", vm("web", 1, mode, "\"10.0.0.1\""))),
                format!("vm[0] (\"web\").announce: a {mode} VM is never promoted, so it never announces: only a standby VM can be promoted (and nothing makes a VM standby at run time); set mode = \"standby\" or remove announce")
            );
        }
        let ok = format!(
            "{EGRESS}{}{}",
            vm("a", 1, "standby", "\"10.0.0.1\", \"fd00::1\""),
            vm("b", 2, "standby", "\"10.0.0.2\"")
        );
        assert_eq!(Config::from_toml_str(&ok).unwrap().vms[0].announce.len(), 2);
        assert_eq!(
            err(&format!("{EGRESS}{}{}", vm("a", 1, "standby", "\"10.0.0.1\", \"fd00::1\""), vm("b", 2, "standby", "\"fd00:0::1\""))),
            "vm[1] (\"b\").announce[0]: fd00::1 is also vm[0] (\"a\").announce[1]: one address can be announced by one VM"
        );
        assert_eq!(
            err(&format!("{EGRESS}{}", vm("a", 1, "standby", "\"10.0.0.1\", \"10.0.0.1\""))),
            "vm[0] (\"a\").announce[1]: 10.0.0.1 is also vm[0] (\"a\").announce[0]: one address can be announced by one VM"
        );
    }

    #[test]
    fn port_keys_follow_the_port_order() {
        let c = Config::from_toml_str(FULL).unwrap();
        let keys: Vec<(String, &str)> = c
            .port_keys()
            .into_iter()
            .map(|(k, p)| (k, p.device_name()))
            .collect();
        assert_eq!(
            keys,
            [
                ("egress.port".to_string(), "0000:03:00.0"),
                ("ingress.port".to_string(), "net_pcap1"),
                ("vm[0] (\"web\").port".to_string(), "net_vhost0"),
                ("vm[2] (\"cache.1\").port".to_string(), "0000:04:00.1"),
            ]
        );
        let ports: Vec<&PortSpec> = c.port_keys().into_iter().map(|(_, p)| p).collect();
        assert_eq!(ports, c.ports());
    }

    // --- property: any generated valid config renders to TOML that parses back to itself ---

    #[derive(Debug, Clone)]
    struct GenVm {
        base: String,
        mac_hi: [u8; 4],
        has_mac: bool,
        upper_mac: bool,
        vlan: Option<u16>,
        mode: Mode,
        attach: u8, // 0 own vdev, 1 own PCI (short BDF), 2 own PCI (full), else shared ingress
        limits: GenLimits,
    }

    /// Optional per-VM keys: max_held_frames, high_water (index into HIGH_WATERS), rate_mbps
    /// (index into MBPS), rate_pps.
    #[derive(Debug, Clone)]
    struct GenLimits {
        max_frames: Option<u32>,
        high_water: Option<usize>,
        mbps: Option<usize>,
        pps: Option<u32>,
    }

    /// (as written, numerator, denominator): the mark is ceil(n * num / den).
    const HIGH_WATERS: &[(&str, u64, u64)] = &[
        ("0", 0, 1),
        ("0.3", 3, 10),
        ("0.5", 1, 2),
        ("0.75", 3, 4),
        ("0.7", 7, 10),
        ("1", 1, 1),
        ("1.0", 1, 1),
    ];
    /// (as written, bytes per second).
    const MBPS: &[(&str, u64)] = &[
        ("1", 125_000),
        ("2.5", 312_500),
        ("100", 12_500_000),
        ("40000", 5_000_000_000),
        ("0.1", 12_500),
    ];

    fn gen_limits() -> impl Strategy<Value = GenLimits> {
        (
            prop::option::of(32u32..=16383),
            prop::option::of(0..HIGH_WATERS.len()),
            prop::option::of(0..MBPS.len()),
            prop::option::of(1u32..=2_000_000),
        )
            .prop_map(|(max_frames, high_water, mbps, pps)| GenLimits {
                max_frames,
                high_water,
                mbps,
                pps,
            })
    }

    fn gen_vm() -> impl Strategy<Value = GenVm> {
        (
            "[A-Za-z0-9_.-]{1,28}",
            any::<[u8; 4]>(),
            any::<bool>(),
            any::<bool>(),
            prop::option::of(0u16..=4094),
            prop_oneof![
                Just(Mode::Passthrough),
                Just(Mode::Protected),
                Just(Mode::Standby)
            ],
            0u8..5,
            gen_limits(),
        )
            .prop_map(
                |(base, mac_hi, has_mac, upper_mac, vlan, mode, attach, limits)| GenVm {
                    base,
                    mac_hi,
                    has_mac,
                    upper_mac,
                    vlan,
                    mode,
                    attach,
                    limits,
                },
            )
    }

    fn quote(s: &str) -> String {
        // Generated strings hold no quotes, backslashes or control characters.
        format!("\"{s}\"")
    }

    /// Enough mbufs for the largest generated rings (9 ports x (4096 + 4096)); they need 528 MB
    /// without hugepages, the least generated memory_mb.
    const GEN_MBUFS: u32 = 131_071;

    #[allow(clippy::too_many_arguments)]
    fn build(
        vms: &[GenVm],
        egress_pci: bool,
        ingress: Option<bool>,
        hugepages: bool,
        lcores: &str,
        memory_mb: u32,
        args: &[String],
        ring_shift: (u32, u32),
    ) -> (String, Config) {
        let egress = if egress_pci {
            "0000:03:00.0"
        } else {
            "net_pcap0,tx_pcap=/tmp/out.pcap"
        };
        let ingress_spec = ingress.map(|pci| {
            if pci {
                "0000:04:00.1"
            } else {
                "net_pcap1,rx_pcap=/tmp/in.pcap"
            }
        });
        let mut text = format!(
            "[eal]\nlcores = {}\nmemory_mb = {memory_mb}\nhugepages = {hugepages}\nfile_prefix = \"eg\"\nargs = [{}]\n\n[egress]\nport = {}\n",
            quote(lcores),
            args.iter().map(|a| quote(a)).collect::<Vec<_>>().join(", "),
            quote(egress),
        );
        if let Some(spec) = ingress_spec {
            text.push_str(&format!("\n[ingress]\nport = {}\n", quote(spec)));
        }
        let rx_ring = 64u16 << ring_shift.0;
        let tx_ring = 64u16 << ring_shift.1;
        text.push_str(&format!(
            "\n[dataplane]\nmbufs = {GEN_MBUFS}\nrx_ring = {rx_ring}\ntx_ring = {tx_ring}\n"
        ));
        let mut expected = Vec::new();
        for (i, g) in vms.iter().enumerate() {
            // Index suffixes make names and MACs unique whatever the generator drew.
            let name = format!("{}-{i}", g.base);
            let m = MacAddr([
                (g.mac_hi[0] & 0xfc) | 0x02,
                g.mac_hi[1],
                g.mac_hi[2],
                g.mac_hi[3],
                0,
                i as u8,
            ]);
            let shared = g.attach >= 3 && ingress.is_some() && g.has_mac;
            let (port_text, port) = match g.attach {
                _ if shared => (None, None),
                1 => (
                    Some(format!("{:02X}:00.{}", 0x10 + i, i % 8)),
                    Some(PortSpec::Pci {
                        addr: format!("0000:{:02x}:00.{}", 0x10 + i, i % 8),
                    }),
                ),
                2 => (
                    Some(format!("0000:{:02x}:01.0", 0x10 + i)),
                    Some(PortSpec::Pci {
                        addr: format!("0000:{:02x}:01.0", 0x10 + i),
                    }),
                ),
                _ => {
                    let spec = format!("net_vhost{i},iface=/tmp/vm{i}.sock,queues=1");
                    (
                        Some(spec.clone()),
                        Some(PortSpec::Vdev {
                            spec,
                            name: format!("net_vhost{i}"),
                        }),
                    )
                }
            };
            let mac = g.has_mac.then_some(m);
            let vlan = if g.has_mac { g.vlan } else { None };
            text.push_str(&format!(
                "\n[[vm]]\nname = {}\nmode = {}\n",
                quote(&name),
                quote(g.mode.as_str())
            ));
            if let Some(p) = &port_text {
                text.push_str(&format!("port = {}\n", quote(p)));
            }
            if let Some(m) = mac {
                let s = m.to_string();
                let s = if g.upper_mac { s.to_uppercase() } else { s };
                text.push_str(&format!("mac = {}\n", quote(&s)));
            }
            if let Some(v) = vlan {
                text.push_str(&format!("vlan = {v}\n"));
            }
            let gl = &g.limits;
            let max_frames = u64::from(gl.max_frames.unwrap_or(1024));
            let (hw_text, num, den) = gl.high_water.map_or(("", 3, 4), |k| HIGH_WATERS[k]);
            if let Some(n) = gl.max_frames {
                text.push_str(&format!("max_held_frames = {n}\n"));
            }
            if gl.high_water.is_some() {
                text.push_str(&format!("high_water = {hw_text}\n"));
            }
            let mut rate = RateLimit::default();
            if let Some(k) = gl.mbps {
                text.push_str(&format!("rate_mbps = {}\n", MBPS[k].0));
                rate.bytes_per_s = MBPS[k].1;
                rate.burst_bytes = (MBPS[k].1 / 1000).max(3036);
            }
            if let Some(pps) = gl.pps {
                text.push_str(&format!("rate_pps = {pps}\n"));
                rate.pps = u64::from(pps);
                rate.burst_frames = (u64::from(pps) / 1000).max(8);
            }
            expected.push(VmConfig {
                name,
                port: port.clone(),
                mac,
                vlan,
                mode: g.mode,
                announce: vec![],
                defer: crate::classify::VmDefer::Builtin,
                limits: BufferLimits {
                    max_frames,
                    max_bytes: 0,
                    high_water_frames: (max_frames * num).div_ceil(den),
                    high_water_bytes: 0,
                    on_full: if port.is_some() {
                        OnFull::Backpressure
                    } else {
                        OnFull::Drop
                    },
                },
                rate,
            });
        }
        let config = Config {
            eal: EalConfig {
                lcores: lcores.to_string(),
                memory_mb,
                hugepages,
                file_prefix: "eg".into(),
                args: args.to_vec(),
            },
            egress: PortSpec::parse(egress).unwrap(),
            ingress: ingress_spec.map(|s| PortSpec::parse(s).unwrap()),
            control: ControlConfig::default(),
            admin: AdminConfig::default(),
            classifier: ClassifierConfig::default(),
            dataplane: DataplaneConfig {
                mbufs: GEN_MBUFS,
                rx_ring,
                tx_ring,
                ..DataplaneConfig::default()
            },
            vms: expected,
            passthrough_min_share_ppm: 100_000,
        };
        (text, config)
    }

    proptest! {
        #[test]
        fn generated_configs_round_trip(
            vms in prop::collection::vec(gen_vm(), 1..8),
            egress_pci in any::<bool>(),
            ingress in prop::option::of(any::<bool>()),
            hugepages in any::<bool>(),
            lcores in prop_oneof![Just("0-1"), Just("2-3"), Just("0,2-3"), Just("0,0-1"), Just("1,3,5-6")],
            memory_mb in 528u32..65536,
            args in prop::collection::vec(
                prop_oneof![Just("--log-level=lib.eal:debug"), Just("--huge-dir=/mnt/huge"), Just("-n"), Just("4"), Just("--iova-mode=va")],
                0..4,
            ),
            ring_shift in (0u32..=6, 0u32..=6),
        ) {
            let args: Vec<String> = args.into_iter().map(String::from).collect();
            let (text, expected) = build(&vms, egress_pci, ingress, hugepages, lcores, memory_mb, &args, ring_shift);
            let parsed = Config::from_toml_str(&text);
            prop_assert!(parsed.is_ok(), "{}\n---\n{}", parsed.unwrap_err(), text);
            let parsed = parsed.unwrap();
            prop_assert_eq!(&parsed, &expected);

            let eal = eal_args(&parsed.eal, &parsed.ports());
            let no_pci = eal.iter().any(|a| a == "--no-pci");
            let allow = eal.iter().any(|a| a == "-a");
            prop_assert!(no_pci != allow, "{:?}", eal);
            prop_assert_eq!(allow, parsed.ports().iter().any(|p| p.is_pci()));
            prop_assert_eq!(eal.iter().any(|a| a == "--no-huge"), !hugepages);
            prop_assert!(eal.ends_with(&args));
        }
    }
}
