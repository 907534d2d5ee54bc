//! The operator's TOML file, parsed into raw serde structs (strings for modes, MACs and ports, so
//! the messages are ours) and then validated into typed ones. A config is validated completely
//! before EAL starts; every error names its key and why.
//!
//! This module is the schema: [`Config`] and its sections, [`ConfigError`], the entry points
//! ([`Config::load`], [`Config::from_toml_str`]) and the raw serde types. Beside it: `ports`
//! (port specs, vdev drivers' keys and resources, one device per port), `eal` (the EAL argument
//! list and `[eal]`), `validate` (the other sections' checks) and `render` (what
//! `epochgate check-config` prints).

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::Deserialize;

use crate::wire::frame::MacAddr;

mod eal;
mod ports;
mod render;
mod validate;

#[cfg(test)]
mod tests;

pub use eal::eal_args;
pub use ports::{known_vdev_driver, PortSpec};
pub use validate::PoolPlan;

use eal::validate_eal;
use ports::check_devices_unique;
use validate::{
    check_announce_unique, check_pool, passthrough_share_ppm, resolve_hold_budgets,
    validate_control, validate_dataplane, validate_vm,
};

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
    /// Permissions of the admin socket file, in octal. Absent: `socket_mode`.
    #[serde(default)]
    pub admin_socket_mode: Option<String>,
    /// The user (a name or a numeric uid) both socket files are given with chown. Absent: the
    /// user epochgate runs as. Resolved when the config is loaded ([`ControlConfig::owner_uid`]).
    #[serde(default)]
    pub socket_owner: Option<IdSpec>,
    /// The group (a name or a numeric gid) both socket files are given. Absent: epochgate's
    /// group. With `socket_mode = "0660"`, the members of this group may connect.
    #[serde(default)]
    pub socket_group: Option<IdSpec>,
    /// `socket_owner` resolved to a uid (set by validation, never written in the file).
    #[serde(skip)]
    pub owner_uid: Option<u32>,
    /// `socket_group` resolved to a gid (set by validation).
    #[serde(skip)]
    pub group_gid: Option<u32>,
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
    /// How often a shim pings while its session is idle; epochgate tells each session this
    /// (with `liveness_timeout_ms`, in the answer to `Liveness`) and the shim's pinger follows
    /// it. Absent: a quarter of `liveness_timeout_ms` (so a session can miss three pings, or
    /// have them delayed by a loaded host, before it is failed), or 1000 when liveness is off
    /// (the shim still notices a silent epochgate). At least 1; when liveness is on at most a
    /// third of `liveness_timeout_ms`. See [`ControlConfig::ping_interval_ms`].
    #[serde(default)]
    pub ping_interval_ms: Option<u64>,
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
            admin_socket_mode: None,
            socket_owner: None,
            socket_group: None,
            owner_uid: None,
            group_gid: None,
            allowed_uids: Vec::new(),
            allowed_gids: Vec::new(),
            fence_drain_ms: 10,
            liveness_timeout_ms: 0,
            ping_interval_ms: None,
            hello_timeout_ms: 2000,
            max_sessions: 64,
        }
    }
}

/// The ping interval when liveness is off and `[control] ping_interval_ms` is not set.
pub const PING_INTERVAL_OFF_MS: u64 = 1000;
/// The largest `[control] ping_interval_ms`.
pub const PING_INTERVAL_MAX_MS: u64 = 3_600_000;

impl ControlConfig {
    /// The ping interval sessions are told: `ping_interval_ms`, else a quarter of
    /// `liveness_timeout_ms` (at least 1), else (liveness off) [`PING_INTERVAL_OFF_MS`].
    pub fn ping_interval_ms(&self) -> u64 {
        self.ping_interval_ms
            .unwrap_or(if self.liveness_timeout_ms > 0 {
                (self.liveness_timeout_ms / 4).max(1)
            } else {
                PING_INTERVAL_OFF_MS
            })
    }

    /// `socket_mode` as a number (validated when the config was loaded).
    pub fn mode_bits(&self) -> u32 {
        parse_mode(&self.socket_mode).unwrap_or(0o660)
    }

    /// `admin_socket_mode` (else `socket_mode`) as a number.
    pub fn admin_mode_bits(&self) -> u32 {
        self.admin_socket_mode
            .as_deref()
            .and_then(parse_mode)
            .unwrap_or_else(|| self.mode_bits())
    }

    /// How the control socket file is set up: its mode and owner, and the keys that say so.
    pub fn control_perms(&self) -> SocketPerms {
        SocketPerms {
            mode: self.mode_bits(),
            mode_key: "control.socket_mode",
            uid: self.owner_uid,
            gid: self.group_gid,
        }
    }

    /// How the admin socket file is set up.
    pub fn admin_perms(&self) -> SocketPerms {
        SocketPerms {
            mode: self.admin_mode_bits(),
            mode_key: if self.admin_socket_mode.is_some() {
                "control.admin_socket_mode"
            } else {
                "control.socket_mode"
            },
            uid: self.owner_uid,
            gid: self.group_gid,
        }
    }
}

/// A socket file's mode and owner as the config sets them (`chmod`, `chown` after bind).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketPerms {
    pub mode: u32,
    /// The key the mode comes from, for errors.
    pub mode_key: &'static str,
    /// `control.socket_owner`, resolved; `None`: left as created (epochgate's user).
    pub uid: Option<u32>,
    /// `control.socket_group`, resolved; `None`: left as created.
    pub gid: Option<u32>,
}

/// A user or group as written: a name (`"epochgate"`, `"kvm"`) or a numeric id (`65534`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(
    untagged,
    expecting = "a user or group name (a string) or a numeric id"
)]
pub enum IdSpec {
    Id(i64),
    Name(String),
}

impl fmt::Display for IdSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdSpec::Id(n) => write!(f, "{n}"),
            IdSpec::Name(s) => write!(f, "{s:?}"),
        }
    }
}

fn parse_mode(s: &str) -> Option<u32> {
    let digits = s.strip_prefix("0o").unwrap_or(s);
    if digits.is_empty() || digits.len() > 4 {
        return None;
    }
    u32::from_str_radix(digits, 8).ok().filter(|m| *m <= 0o777)
}

/// `[admin]`: the metrics endpoint and whether the admin socket takes operator writes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AdminConfig {
    /// Where `/metrics` is served over HTTP (Prometheus text format), if anywhere.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Whether the admin socket takes write requests (`fail VM`); read-only by default.
    pub writable: bool,
    /// Who may write besides root and epochgate's own user (only with `writable`).
    pub write_uids: Vec<u32>,
    /// Groups whose members may write (the peer's primary gid; only with `writable`).
    pub write_gids: Vec<u32>,
}

/// `[admin]` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "the [admin] table")]
struct RawAdmin {
    metrics_listen: Option<String>,
    writable: bool,
    write_uids: Vec<u32>,
    write_gids: Vec<u32>,
}

impl RawAdmin {
    fn validate(self) -> Result<AdminConfig, ConfigError> {
        let metrics_listen = match self.metrics_listen {
            None => None,
            Some(s) => Some(parse_listen(&s).map_err(|why| invalid("admin.metrics_listen", why))?),
        };
        if !self.writable {
            let key = match (self.write_uids.is_empty(), self.write_gids.is_empty()) {
                (false, _) => Some("admin.write_uids"),
                (_, false) => Some("admin.write_gids"),
                _ => None,
            };
            if let Some(key) = key {
                return Err(invalid(
                    key,
                    "is set but admin.writable is false: the admin socket takes no writes from anyone; \
                     set admin.writable = true, or remove the key",
                ));
            }
        }
        Ok(AdminConfig {
            metrics_listen,
            writable: self.writable,
            write_uids: self.write_uids,
            write_gids: self.write_gids,
        })
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

/// `[dataplane]`: pool, ring and queue sizes, resolved: what is not written is derived (the pool
/// from `eal.memory_mb`, each VM's default hold budget from the pool; see [`HoldFrom`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataplaneConfig {
    /// Mbufs in the packet pool. Default: as many as `eal.memory_mb` holds after what EAL and
    /// the ports keep (see `check_pool`).
    pub mbufs: u32,
    /// Per-lcore mempool cache.
    pub mbuf_cache: u32,
    /// Descriptors per RX ring: a power of two in 64..=4096.
    pub rx_ring: u16,
    /// Descriptors per TX ring: a power of two in 64..=4096.
    pub tx_ring: u16,
    /// The default `max_held_frames` of each VM: how many frames epochgate keeps for it (held
    /// in epochs, or released and waiting for egress or its rate). Default: the pool's mbufs
    /// left after the rings and caches (and the VMs that set `max_held_frames`), shared by the
    /// VMs that do not, at most [`HOLD_DEFAULT_MAX_FRAMES`] each.
    pub vm_queue: u32,
    /// How often counters are published.
    pub stats_interval_ms: u64,
    /// `mbufs` was derived from `eal.memory_mb` (not written).
    pub mbufs_derived: bool,
    /// `vm_queue` was derived from the pool (not written).
    pub vm_queue_derived: bool,
}

impl Default for DataplaneConfig {
    /// The sizes of a config that writes none with the default `[eal]` and few VMs (the pool's
    /// share is then above the cap): what a replay without a config assumes.
    fn default() -> Self {
        RawDataplane::default().resolve(&EalConfig::default(), HOLD_DEFAULT_MAX_FRAMES as u32)
    }
}

/// `[dataplane]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "the [dataplane] table")]
struct RawDataplane {
    mbufs: Option<u32>,
    mbuf_cache: u32,
    rx_ring: u16,
    tx_ring: u16,
    vm_queue: Option<u32>,
    stats_interval_ms: u64,
}

impl Default for RawDataplane {
    fn default() -> Self {
        RawDataplane {
            mbufs: None,
            mbuf_cache: 256,
            rx_ring: 1024,
            tx_ring: 1024,
            vm_queue: None,
            stats_interval_ms: 1000,
        }
    }
}

impl RawDataplane {
    /// The written sizes, `mbufs` derived from `eal` when absent and `vm_queue` set to
    /// `vm_queue` when absent (the caller derives it from the pool once it knows the VMs).
    fn resolve(self, eal: &EalConfig, vm_queue: u32) -> DataplaneConfig {
        DataplaneConfig {
            mbufs: self
                .mbufs
                .unwrap_or_else(|| validate::default_mbufs(eal.memory_mb, eal.hugepages)),
            mbuf_cache: self.mbuf_cache,
            rx_ring: self.rx_ring,
            tx_ring: self.tx_ring,
            vm_queue: self.vm_queue.unwrap_or(vm_queue),
            stats_interval_ms: self.stats_interval_ms,
            mbufs_derived: self.mbufs.is_none(),
            vm_queue_derived: self.vm_queue.is_none(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Hold budgets: what the defaults are sized for
// ---------------------------------------------------------------------------------------------

/// The frame hold budgets are measured in: a 1500-byte payload with its 14-byte Ethernet
/// header, as epochgate counts frame bytes (no preamble, no FCS; what `rate_mbps` counts).
pub const BUDGET_FRAME_BYTES: u64 = 1514;
/// The same frame on the wire: + 4 bytes of FCS, 8 of preamble and 12 of inter-frame gap.
pub const BUDGET_WIRE_BYTES: u64 = 1538;
/// The line rate a budget of a VM without a rate limit is stated at: 1 Gb/s (on the wire),
/// about 81 274 frames/s of [`BUDGET_FRAME_BYTES`].
pub const BUDGET_LINE_BPS: u64 = 1_000_000_000;
/// The target of the defaults: two 25 ms epochs (one open, one waiting for its commit).
pub const HOLD_TARGET_NS: u64 = 2 * 25_000_000;
/// [`HOLD_TARGET_NS`] of [`BUDGET_FRAME_BYTES`]-frames at [`BUDGET_LINE_BPS`], rounded up:
/// 50 ms x 10^9 / (8 x 1538) = 4064 frames (6.15 MB).
pub const HOLD_TARGET_FRAMES: u64 = (HOLD_TARGET_NS as u128 * BUDGET_LINE_BPS as u128)
    .div_ceil(1_000_000_000 * 8 * BUDGET_WIRE_BYTES as u128)
    as u64;
/// The most a VM's default hold budget takes from the pool: twice the target, as a power of
/// two (8192 frames, ~100 ms at 1 Gb/s). A bigger queue mostly adds latency for a VM waiting
/// on egress or its rate (8192 full frames are 2 s at 50 Mbit/s); `max_held_frames` sets more.
pub const HOLD_DEFAULT_MAX_FRAMES: u64 = (2 * HOLD_TARGET_FRAMES).next_power_of_two();
/// The default `max_held_bytes` per frame of `max_held_frames`: a full-size frame (1500-byte
/// payload, 14-byte header, 4-byte VLAN tag; no FCS), so a budget of standard frames is bound
/// by its frames and one of larger frames (an mbuf carries up to 2048 bytes) by its bytes.
pub const HOLD_BYTES_PER_FRAME: u64 = 1518;

/// Where a VM's hold budget (`max_held_frames`, `max_held_bytes`) came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HoldFrom {
    pub frames: FramesFrom,
    /// `max_held_bytes` was written (0 included: no byte limit); otherwise it is
    /// [`HOLD_BYTES_PER_FRAME`] per frame of the budget.
    pub bytes_set: bool,
}

/// Where a VM's `max_held_frames` came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FramesFrom {
    /// `[[vm]] max_held_frames`.
    MaxHeldFrames,
    /// `[dataplane] vm_queue`, written.
    VmQueue,
    /// The pool's share (`vm_queue` derived).
    Pool,
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
    /// How many times the addresses are announced after a promotion (`announce_count`), and
    /// how far apart (`announce_interval_ms`): QEMU's `announce-self` repeats, as a switch or
    /// a peer may miss one frame.
    pub announce_count: u32,
    pub announce_interval_ms: u64,
    /// Whether its held frames may be deferred: the rules and built-in classes, all, or never.
    pub defer: crate::classify::VmDefer,
    /// How much epochgate keeps for it, and what happens when that is full.
    pub limits: BufferLimits,
    /// Where `limits`' frames and bytes came from (written or derived).
    pub hold_from: HoldFrom,
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
    /// The limits of a VM that sets none of the keys: `vm_queue` frames,
    /// [`HOLD_BYTES_PER_FRAME`] bytes per frame, high water at 0.75, and `on_full` by
    /// attachment (backpressure on its own port, drop on the shared ingress).
    pub fn default_for(vm_queue: u32, own_port: bool) -> BufferLimits {
        let max_frames = u64::from(vm_queue);
        let max_bytes = max_frames * HOLD_BYTES_PER_FRAME;
        BufferLimits {
            max_frames,
            max_bytes,
            high_water_frames: high_water_mark(HIGH_WATER_DEFAULT, max_frames),
            high_water_bytes: high_water_mark(HIGH_WATER_DEFAULT, max_bytes),
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
    dataplane: RawDataplane,
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
    announce_count: Option<i64>,
    announce_interval_ms: Option<i64>,
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
const HIGH_WATER_DEFAULT: f64 = 0.75;
const PASSTHROUGH_MIN_SHARE_DEFAULT: f64 = 0.1;

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
        let dataplane = validate_dataplane(self.dataplane, &eal)?;
        let classifier = self.classifier.validate()?;

        if self.vm.is_empty() {
            return Err(invalid(
                "vm",
                "no [[vm]] entries: epochgate needs at least one VM to forward for",
            ));
        }
        let mut vms = Vec::with_capacity(self.vm.len());
        let mut drafts = Vec::with_capacity(self.vm.len());
        let mut names: HashMap<String, usize> = HashMap::new();
        // (mac, vlan) -> label of the VM that has it: the pair is what the data plane matches on.
        let mut addrs: HashMap<(MacAddr, Option<u16>), String> = HashMap::new();
        for (i, raw) in self.vm.into_iter().enumerate() {
            let (vm, draft) = validate_vm(i, raw, ingress.is_some())?;
            drafts.push(draft);
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

        let mut config = Config {
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
        resolve_hold_budgets(&mut config, &drafts)?;
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

fn vm_label(i: usize, name: &str) -> String {
    format!("vm[{i}] (\"{name}\")")
}
