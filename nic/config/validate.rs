//! Validating the other sections: `[egress]`'s share, `[control]`, `[dataplane]`, each
//! `[[vm]]` with its buffer and rate limits, the mbuf pool against memory, announced addresses.

use std::collections::HashMap;

use super::eal::lcore_ids;
use super::PING_INTERVAL_MAX_MS;
use super::{
    high_water_mark, invalid, parse_mode, vm_label, BufferLimits, Config, ConfigError,
    ControlConfig, DataplaneConfig, EalConfig, FramesFrom, HoldFrom, IdSpec, Mode, ModeParseError,
    OnFull, PortSpec, RateLimit, RawDataplane, RawLimits, RawVm, VmConfig, HIGH_WATER_DEFAULT,
    HOLD_BYTES_PER_FRAME, HOLD_DEFAULT_MAX_FRAMES, HOLD_TARGET_FRAMES,
};
use crate::wire::frame::MacAddr;

const NAME_MAX: usize = 32;
const RING_MIN: u16 = 64;
const RING_MAX: u16 = 4096;
const MBUFS_MIN: u32 = 1023;
const MBUFS_MAX: u32 = (1 << 24) - 1;
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
/// Announcement rounds after a promotion, and their spacing, by default (QEMU's
/// `announce-self` sends 5 rounds, 50 ms then 100 ms more apart each; a fixed 100 ms keeps
/// the schedule simple to check).
const ANNOUNCE_COUNT_DEFAULT: u32 = 5;
const ANNOUNCE_INTERVAL_MS_DEFAULT: u64 = 100;
const ANNOUNCE_COUNT_MAX: i64 = 100;
const ANNOUNCE_INTERVAL_MS_MAX: i64 = 60_000;

/// `[egress] passthrough_min_share` in parts per million.
pub(super) fn passthrough_share_ppm(share: f64) -> Result<u32, ConfigError> {
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

/// `vms`: how many `[[vm]]` entries there are (each needs a session).
pub(super) fn validate_control(
    mut control: ControlConfig,
    vms: usize,
) -> Result<ControlConfig, ConfigError> {
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
    if let Some(m) = &control.admin_socket_mode {
        if parse_mode(m).is_none() {
            return Err(invalid(
                "control.admin_socket_mode",
                format!(
                    "{m:?} is not a file mode: write permission bits in octal, e.g. \"0640\" (or leave it out: control.socket_mode)"
                ),
            ));
        }
    }
    control.owner_uid = control
        .socket_owner
        .as_ref()
        .map(|o| resolve_id("control.socket_owner", o, IdKind::User))
        .transpose()?;
    control.group_gid = control
        .socket_group
        .as_ref()
        .map(|g| resolve_id("control.socket_group", g, IdKind::Group))
        .transpose()?;
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
    if let Some(p) = control.ping_interval_ms {
        if p == 0 || p > PING_INTERVAL_MAX_MS {
            return Err(invalid(
                "control.ping_interval_ms",
                format!(
                    "{p} is out of range 1..={PING_INTERVAL_MAX_MS}: how often an idle shim pings"
                ),
            ));
        }
        let t = control.liveness_timeout_ms;
        if t != 0 && p > t / 3 {
            return Err(invalid(
                "control.ping_interval_ms",
                format!(
                    "{p} is more than a third of control.liveness_timeout_ms ({t}): a session must be able to \
                     miss two pings (or have them delayed) before it is failed; make it at most {} \
                     (or leave it out: a quarter of control.liveness_timeout_ms)",
                    t / 3
                ),
            ));
        }
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

#[derive(Clone, Copy)]
enum IdKind {
    User,
    Group,
}

/// A user or group name (looked up in the system's user database now, when the config is
/// loaded) or a numeric id (taken as it is, within 0..2^32-1: a socket may belong to an id
/// with no name).
fn resolve_id(key: &str, spec: &IdSpec, kind: IdKind) -> Result<u32, ConfigError> {
    let what = match kind {
        IdKind::User => "user",
        IdKind::Group => "group",
    };
    match spec {
        IdSpec::Id(n) => u32::try_from(*n)
            .ok()
            .filter(|n| *n != u32::MAX)
            .ok_or_else(|| invalid(key, format!("{n} is not a {what} id (0..=4294967294)"))),
        IdSpec::Name(name) => {
            if let Ok(n) = name.parse::<u32>() {
                return resolve_id(key, &IdSpec::Id(i64::from(n)), kind);
            }
            let found = match kind {
                IdKind::User => {
                    nix::unistd::User::from_name(name).map(|u| u.map(|u| u.uid.as_raw()))
                }
                IdKind::Group => {
                    nix::unistd::Group::from_name(name).map(|g| g.map(|g| g.gid.as_raw()))
                }
            };
            match found {
                Ok(Some(id)) => Ok(id),
                Ok(None) => Err(invalid(
                    key,
                    format!("no {what} is named {name:?} on this system (write an existing {what} name or a numeric id)"),
                )),
                Err(e) => Err(invalid(
                    key,
                    format!("cannot look up {what} {name:?}: {e}"),
                )),
            }
        }
    }
}

/// The pool `eal.memory_mb` holds when `dataplane.mbufs` is not written: everything
/// [`check_pool`] lets it take (the memory less [`EAL_RESERVE_MB`], at [`mbuf_bytes`] each),
/// within 1023..=2^24 - 1.
pub(super) fn default_mbufs(memory_mb: u32, hugepages: bool) -> u32 {
    let bytes = u64::from(memory_mb).saturating_sub(EAL_RESERVE_MB) << 20;
    (bytes / mbuf_bytes(hugepages)).clamp(u64::from(MBUFS_MIN), u64::from(MBUFS_MAX)) as u32
}

/// Pool memory per mbuf: [`MBUF_BYTES_HUGE`] or [`MBUF_BYTES_NO_HUGE`].
pub(super) fn mbuf_bytes(hugepages: bool) -> u64 {
    if hugepages {
        MBUF_BYTES_HUGE
    } else {
        MBUF_BYTES_NO_HUGE
    }
}

/// The written `[dataplane]` keys; `mbufs` is derived from `eal` when absent, `vm_queue` (when
/// absent) by [`resolve_hold_budgets`] once the VMs are known.
pub(super) fn validate_dataplane(
    raw: RawDataplane,
    eal: &EalConfig,
) -> Result<DataplaneConfig, ConfigError> {
    let d = raw.resolve(eal, VM_QUEUE_MIN);
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
    if !d.vm_queue_derived && d.vm_queue < VM_QUEUE_MIN {
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
pub(super) fn validate_vm(
    i: usize,
    raw: RawVm,
    have_ingress: bool,
) -> Result<(VmConfig, LimitsDraft), ConfigError> {
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

    // Any VM may announce: a standby copy when it is promoted, and a protected or pass-through
    // VM too once it has been demoted (`Demote`) and is promoted back (a failback).
    let announce_count = match raw.announce_count {
        None => ANNOUNCE_COUNT_DEFAULT,
        Some(n) if (1..=ANNOUNCE_COUNT_MAX).contains(&n) => n as u32,
        Some(n) => {
            return Err(invalid(
                format!("{label}.announce_count"),
                format!("{n}: the addresses are announced 1 to {ANNOUNCE_COUNT_MAX} times after a promotion"),
            ))
        }
    };
    let announce_interval_ms = match raw.announce_interval_ms {
        None => ANNOUNCE_INTERVAL_MS_DEFAULT,
        Some(n) if (1..=ANNOUNCE_INTERVAL_MS_MAX).contains(&n) => n as u64,
        Some(n) => {
            return Err(invalid(
                format!("{label}.announce_interval_ms"),
                format!("{n}: announcements are 1 to {ANNOUNCE_INTERVAL_MS_MAX} ms apart"),
            ))
        }
    };

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

    let draft = validate_limits(&label, &lim, port.is_some())?;
    let rate = validate_rate(&label, &lim)?;

    let vm = VmConfig {
        name,
        port,
        mac,
        vlan,
        mode,
        announce,
        announce_count,
        announce_interval_ms,
        defer,
        // Set by resolve_hold_budgets once every VM is known.
        limits: BufferLimits::default_for(0, draft.on_full == OnFull::Backpressure),
        hold_from: HoldFrom {
            frames: FramesFrom::Pool,
            bytes_set: false,
        },
        rate,
    };
    Ok((vm, draft))
}

/// A VM's buffer keys, checked one by one; its frames (when not written) come from the pool,
/// which needs every VM (see [`resolve_hold_budgets`]).
pub(super) struct LimitsDraft {
    /// `max_held_frames`, when written (32..=2^20).
    frames: Option<u64>,
    /// `max_held_bytes`, when written (0: no byte limit).
    bytes: Option<u64>,
    high_water: f64,
    on_full: OnFull,
}

/// `max_held_frames`, `max_held_bytes`, `high_water` and `on_full` of the VM labelled `label`.
fn validate_limits(
    label: &str,
    raw: &RawLimits,
    own_port: bool,
) -> Result<LimitsDraft, ConfigError> {
    let frames = match raw.max_held_frames {
        None => None,
        Some(n) => {
            if !(i64::from(VM_QUEUE_MIN)..=i64::from(MAX_HELD_FRAMES_MAX)).contains(&n) {
                return Err(invalid(
                    format!("{label}.max_held_frames"),
                    format!("{n} is out of range {VM_QUEUE_MIN}..={MAX_HELD_FRAMES_MAX} frames"),
                ));
            }
            Some(n as u64)
        }
    };

    let bytes = match raw.max_held_bytes {
        None => None,
        Some(0) => Some(0),
        Some(n) if n < MAX_HELD_BYTES_MIN => {
            return Err(invalid(
                format!("{label}.max_held_bytes"),
                format!(
                    "{n} is too small: a byte limit is at least {MAX_HELD_BYTES_MIN} bytes (0 or absent: no byte limit)"
                ),
            ))
        }
        Some(n) => Some(n as u64),
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

    Ok(LimitsDraft {
        frames,
        bytes,
        high_water,
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

/// How the mbuf pool is spent: what the ports' rings and the per-lcore caches can take, and the
/// VMs' hold budgets (`max_held_frames`), which must fit in the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolPlan {
    /// `dataplane.mbufs`.
    pub mbufs: u64,
    /// Ports: the egress, the shared ingress and every VM port.
    pub ports: u64,
    /// Worker and main lcores, each with a cache.
    pub lcores: u64,
    /// What one per-lcore cache may hold: 1.5 x `dataplane.mbuf_cache`.
    pub cache: u64,
    /// `ports x (rx_ring + tx_ring) + lcores x cache + a burst`: mbufs the VMs cannot have.
    pub rings: u64,
    /// The VMs' `max_held_frames`, added up.
    pub held: u64,
    /// Pool memory per mbuf (with or without hugepages).
    pub mbuf_bytes: u64,
}

impl PoolPlan {
    /// The mbufs left for hold budgets once the rings and caches are full.
    pub fn free(&self) -> u64 {
        self.mbufs.saturating_sub(self.rings)
    }

    /// The `eal.memory_mb` that a pool of `mbufs` needs (what [`check_pool`] asks for).
    pub fn memory_mb_for(&self, mbufs: u64) -> u64 {
        (mbufs * self.mbuf_bytes).div_ceil(1 << 20) + EAL_RESERVE_MB
    }
}

impl Config {
    /// How the mbuf pool is spent (see [`PoolPlan`]).
    pub fn pool(&self) -> PoolPlan {
        let d = &self.dataplane;
        let lcores = lcore_ids(&self.eal.lcores).map_or(2, |l| l.len()) as u64;
        // A per-lcore cache holds up to 1.5 x its size before it flushes (CALC_CACHE_FLUSHTHRESH).
        let cache = u64::from(d.mbuf_cache).saturating_mul(3).div_ceil(2);
        let ports = self.ports().len() as u64;
        PoolPlan {
            mbufs: u64::from(d.mbufs),
            ports,
            lcores,
            cache,
            rings: ports * (u64::from(d.rx_ring) + u64::from(d.tx_ring))
                + lcores * cache
                + POOL_SLACK,
            held: self.vms.iter().map(|v| v.limits.max_frames).sum(),
            mbuf_bytes: mbuf_bytes(self.eal.hugepages),
        }
    }

    /// What is valid but probably not meant: hold budgets that add up to more than the pool
    /// has after its rings and caches, or a derived budget below the target of the defaults.
    /// `epochgate check-config` prints them, `epochgate run` too (on stderr).
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        let p = self.pool();
        let d = &self.dataplane;
        let pool_from = if d.mbufs_derived {
            format!(
                "{} mbufs, derived from eal.memory_mb = {}",
                p.mbufs, self.eal.memory_mb
            )
        } else {
            format!("dataplane.mbufs = {}", p.mbufs)
        };
        if p.held > p.free() {
            let mut parts = Vec::new();
            let defaulted: Vec<String> = self
                .vms
                .iter()
                .enumerate()
                .filter(|(_, v)| v.hold_from.frames != FramesFrom::MaxHeldFrames)
                .map(|(i, v)| vm_label(i, &v.name))
                .collect();
            if !defaulted.is_empty() {
                parts.push(format!(
                    "dataplane.vm_queue = {} for {} VM(s) ({})",
                    d.vm_queue,
                    defaulted.len(),
                    defaulted.join(", ")
                ));
            }
            for (i, v) in self.vms.iter().enumerate() {
                if v.hold_from.frames == FramesFrom::MaxHeldFrames {
                    parts.push(format!(
                        "{}.max_held_frames = {}",
                        vm_label(i, &v.name),
                        v.limits.max_frames
                    ));
                }
            }
            let need = p.held + p.rings;
            out.push(format!(
                "{}: the VMs' hold budgets add up to {} frames ({}), more than the {} mbufs the pool ({pool_from}) has left after the rings and caches take {}: if they all fill, the ports run out of mbufs and drop what they receive, even for VMs on backpressure; lower them, or raise dataplane.mbufs to {need} (eal.memory_mb to at least {} {})",
                if d.mbufs_derived { "eal.memory_mb" } else { "dataplane.mbufs" },
                p.held,
                parts.join(" + "),
                p.free(),
                p.rings,
                p.memory_mb_for(need),
                if self.eal.hugepages { "with hugepages" } else { "without hugepages" },
            ));
        }
        let pooled = self
            .vms
            .iter()
            .filter(|v| v.hold_from.frames == FramesFrom::Pool)
            .count() as u64;
        if pooled > 0 && u64::from(d.vm_queue) < HOLD_TARGET_FRAMES {
            let explicit: u64 = self
                .vms
                .iter()
                .filter(|v| v.hold_from.frames == FramesFrom::MaxHeldFrames)
                .map(|v| v.limits.max_frames)
                .sum();
            let need = p.rings + explicit + pooled * HOLD_TARGET_FRAMES;
            out.push(format!(
                "dataplane.vm_queue: the pool ({pool_from}) gives each of the {pooled} VM(s) without max_held_frames {} frames, fewer than the {HOLD_TARGET_FRAMES} of two 25 ms epochs at 1 Gb/s of 1500-byte frames; raise dataplane.mbufs to {need} (eal.memory_mb to at least {}), or set max_held_frames",
                d.vm_queue,
                p.memory_mb_for(need),
            ));
        }
        out
    }
}

/// The mbuf pool must fit in `eal.memory_mb` and be large enough to fill every port's rings.
pub(super) fn check_pool(cfg: &Config) -> Result<(), ConfigError> {
    let d = &cfg.dataplane;
    let plan = cfg.pool();
    let mbufs = plan.mbufs;
    let per_mbuf = plan.mbuf_bytes;
    let pages = if cfg.eal.hugepages {
        "with hugepages"
    } else {
        "without hugepages (one 4 KiB page each)"
    };
    let mb = 1u64 << 20;
    let need_mb = plan.memory_mb_for(mbufs);
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
    let (ports, lcores, cache, need) = (plan.ports, plan.lcores, plan.cache, plan.rings);
    let (rx, tx) = (u64::from(d.rx_ring), u64::from(d.tx_ring));
    if mbufs < need {
        let (key, lead) = if d.mbufs_derived {
            (
                "eal.memory_mb",
                format!("{memory} holds {mbufs} mbufs {pages} (dataplane.mbufs is not set), which"),
            )
        } else {
            ("dataplane.mbufs", mbufs.to_string())
        };
        return Err(invalid(
            key,
            format!(
                "{lead} cannot fill the rings: {ports} port(s) x (dataplane.rx_ring {rx} + dataplane.tx_ring {tx}) + {lcores} lcores x {cache} (1.5 x dataplane.mbuf_cache, what a per-lcore cache may hold) + {POOL_SLACK} (a burst) = {need} mbufs are needed"
            ),
        ));
    }
    Ok(())
}

/// Each VM's hold budget: `max_held_frames` when written, else `dataplane.vm_queue`; that,
/// when not written, is the pool's mbufs left after the rings, caches and the written
/// `max_held_frames`, shared by the VMs without one, at most [`HOLD_DEFAULT_MAX_FRAMES`].
/// `max_held_bytes` when written, else [`HOLD_BYTES_PER_FRAME`] per frame.
pub(super) fn resolve_hold_budgets(
    cfg: &mut Config,
    drafts: &[LimitsDraft],
) -> Result<(), ConfigError> {
    let plan = cfg.pool();
    let free = plan.free();
    let written: u64 = drafts.iter().filter_map(|d| d.frames).sum();
    let defaulted = drafts.iter().filter(|d| d.frames.is_none()).count() as u64;
    let memory_mb = cfg.eal.memory_mb;
    let d = &mut cfg.dataplane;
    if d.vm_queue_derived {
        let left = free.saturating_sub(written);
        let share = left / defaulted.max(1);
        if defaulted > 0 && share < u64::from(VM_QUEUE_MIN) {
            let (key, pool) = if d.mbufs_derived {
                (
                    "eal.memory_mb",
                    format!(
                        "{memory_mb} holds {} mbufs (dataplane.mbufs is not set), which leave",
                        plan.mbufs
                    ),
                )
            } else {
                ("dataplane.mbufs", format!("{} mbufs leave", plan.mbufs))
            };
            let need = plan.rings + written + defaulted * HOLD_TARGET_FRAMES;
            return Err(invalid(
                key,
                format!(
                    "{pool} {left} for the hold budgets of {defaulted} VM(s) without max_held_frames (after {} for the rings and caches and {written} for the written max_held_frames): {share} each is fewer than {VM_QUEUE_MIN}; raise dataplane.mbufs (to {need} for two 25 ms epochs at 1 Gb/s each, with eal.memory_mb at least {}), set dataplane.vm_queue, or give the VMs max_held_frames",
                    plan.rings,
                    plan.memory_mb_for(need),
                ),
            ));
        }
        d.vm_queue = share.clamp(u64::from(VM_QUEUE_MIN), HOLD_DEFAULT_MAX_FRAMES) as u32;
    }
    let (vm_queue, mbufs, derived) = (d.vm_queue, d.mbufs, d.vm_queue_derived);
    for (i, (vm, draft)) in cfg.vms.iter_mut().zip(drafts).enumerate() {
        let label = vm_label(i, &vm.name);
        let (max_frames, frames) = match draft.frames {
            Some(n) => (n, FramesFrom::MaxHeldFrames),
            None if derived => (u64::from(vm_queue), FramesFrom::Pool),
            None => (u64::from(vm_queue), FramesFrom::VmQueue),
        };
        if max_frames > u64::from(mbufs) {
            let (key, what) = match frames {
                FramesFrom::MaxHeldFrames => (format!("{label}.max_held_frames"), String::new()),
                _ => (
                    "dataplane.vm_queue".to_string(),
                    format!(", the default max_held_frames of {label},"),
                ),
            };
            return Err(invalid(
                key,
                format!(
                    "{max_frames}{what} can never be reached: the mbuf pool (dataplane.mbufs) has only {mbufs}"
                ),
            ));
        }
        let max_bytes = draft.bytes.unwrap_or(max_frames * HOLD_BYTES_PER_FRAME);
        vm.limits = BufferLimits {
            max_frames,
            max_bytes,
            high_water_frames: high_water_mark(draft.high_water, max_frames),
            high_water_bytes: high_water_mark(draft.high_water, max_bytes),
            on_full: draft.on_full,
        };
        vm.hold_from = HoldFrom {
            frames,
            bytes_set: draft.bytes.is_some(),
        };
    }
    Ok(())
}

/// An address announced by two VMs would be taken from one by the other's promotion.
pub(super) fn check_announce_unique(cfg: &Config) -> Result<(), ConfigError> {
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
