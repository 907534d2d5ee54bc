//! Ports: [`PortSpec`] (a vdev spec or a PCI address), each vdev driver's keys and the
//! resources (interfaces, sockets, files, rings, devices) they name, and the check that no two
//! ports share a device.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use super::{invalid, Config, ConfigError};

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
pub(super) const SUN_PATH_MAX: usize = 107;

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

/// Two keys naming the same device would make EAL probe it once and epochgate use it twice;
/// two ports on one underlying resource (interface, socket, file, ring, PCI device) would let a
/// VM's output leave through the other port. Both are refused, naming both keys.
pub(super) fn check_devices_unique(cfg: &Config) -> Result<(), ConfigError> {
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
}
