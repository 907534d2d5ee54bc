use super::eal::lcore_ids;
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
ping_interval_ms = 500
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
            ping_interval_ms: Some(500),
            hello_timeout_ms: 1500,
            max_sessions: 16,
            ..ControlConfig::default()
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
            mbufs_derived: false,
            vm_queue_derived: false,
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
                announce_count: 5,
                announce_interval_ms: 100,
                defer: crate::classify::VmDefer::Builtin,
                limits: BufferLimits {
                    max_frames: 2048,
                    max_bytes: 4_000_000,
                    high_water_frames: 1024,
                    high_water_bytes: 2_000_000,
                    on_full: OnFull::Backpressure,
                },
                hold_from: HoldFrom {
                    frames: FramesFrom::MaxHeldFrames,
                    bytes_set: true,
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
                announce_count: 5,
                announce_interval_ms: 100,
                defer: crate::classify::VmDefer::All,
                limits: BufferLimits {
                    max_frames: 4096,
                    max_bytes: 4096 * 1518,
                    high_water_frames: 0,
                    high_water_bytes: 0,
                    on_full: OnFull::Drop,
                },
                hold_from: HoldFrom {
                    frames: FramesFrom::VmQueue,
                    bytes_set: false,
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
                announce_count: 5,
                announce_interval_ms: 100,
                defer: crate::classify::VmDefer::Builtin,
                limits: BufferLimits {
                    max_frames: 4096,
                    max_bytes: 4096 * 1518,
                    high_water_frames: 3072,
                    high_water_bytes: 4096 * 1518 * 3 / 4,
                    on_full: OnFull::Drop,
                },
                hold_from: HoldFrom {
                    frames: FramesFrom::VmQueue,
                    bytes_set: false,
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
        format!(
            "{admin}\n[egress]\nport = \"net_null0\"\n[[vm]]\nname = \"a\"\nport = \"net_null1\"\n"
        )
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
    // 512 MB less 16 for EAL, at 2432 bytes per mbuf (hugepages); one VM: the cap of 8192.
    assert_eq!(c.dataplane.mbufs, 213_854);
    assert_eq!(c.dataplane.vm_queue, 8192);
    assert!(c.dataplane.mbufs_derived && c.dataplane.vm_queue_derived);
    assert_eq!(c.ingress, None);
    assert_eq!(c.vms[0].mode, Mode::Passthrough);
    assert_eq!(c.vms[0].mac, None);
    assert_eq!(c.passthrough_min_share_ppm, 100_000);
    assert_eq!(
        c.vms[0].limits,
        BufferLimits {
            max_frames: 8192,
            max_bytes: 8192 * 1518,
            high_water_frames: 6144,
            high_water_bytes: 8192 * 1518 * 3 / 4,
            on_full: OnFull::Backpressure,
        }
    );
    assert_eq!(c.vms[0].limits, BufferLimits::default_for(8192, true));
    assert_eq!(
        c.vms[0].hold_from,
        HoldFrom {
            frames: FramesFrom::Pool,
            bytes_set: false
        }
    );
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
        BufferLimits::default_for(8192, false)
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
        // The default budget: 8192 frames of 1518 bytes.
        ("", 6144, 9_326_592),
        // TOML tables may come in any order: this [dataplane] ends the [[vm]].
        ("[dataplane]\nvm_queue = 100", 75, 113_850),
        // 0.7 * 100 is 70.00000000000001; 0.7 * 151800 is 106259.99999999999.
        ("max_held_frames = 100\nhigh_water = 0.7", 70, 106_260),
        ("max_held_frames = 100\nhigh_water = 0.3333", 34, 50_595),
        ("max_held_frames = 33\nhigh_water = 0.01", 1, 501),
        ("max_held_frames = 100\nhigh_water = 1", 100, 151_800),
        ("max_held_frames = 100\nhigh_water = 0", 0, 0),
        ("max_held_frames = 100\nmax_held_bytes = 100001", 75, 75001),
        (
            "max_held_frames = 100\nmax_held_bytes = 100001\nhigh_water = 0.5",
            50,
            50001,
        ),
        ("max_held_bytes = 16384\nhigh_water = 0", 0, 0),
        ("max_held_bytes = 0", 6144, 0),
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
            own("max_held_frames = 300000"),
            "vm[0] (\"a\").max_held_frames: 300000 can never be reached: the mbuf pool (dataplane.mbufs) has only 213854".to_string(),
        ),
        (
            format!("[dataplane]\nmbufs = 8191\nvm_queue = 8192\n{EGRESS}{vm}"),
            "dataplane.vm_queue: 8192, the default max_held_frames of vm[0] (\"a\"), can never be reached: the mbuf pool (dataplane.mbufs) has only 8191".to_string(),
        ),
        (
            // 2 ports x 2048 + 2 lcores x 384 + 32 = 4896 for the rings and caches: 4 left.
            format!("[dataplane]\nmbufs = 4900\n{EGRESS}{vm}"),
            "dataplane.mbufs: 4900 mbufs leave 4 for the hold budgets of 1 VM(s) without max_held_frames (after 4896 for the rings and caches and 0 for the written max_held_frames): 4 each is fewer than 32; raise dataplane.mbufs (to 8960 for two 25 ms epochs at 1 Gb/s each, with eal.memory_mb at least 37), set dataplane.vm_queue, or give the VMs max_held_frames".to_string(),
        ),
        (
            // Without hugepages 64 MB hold (64 - 16) x 256 = 12288 mbufs; 4 ports' rings take 8992.
            format!("[eal]\nmemory_mb = 64\nhugepages = false\n{EGRESS}{INGRESS}{vm}[[vm]]\nname = \"b\"\nport = \"net_tap1\"\nmax_held_frames = 3250\n[[vm]]\nname = \"c\"\nmac = \"52:54:00:00:00:03\"\n"),
            "eal.memory_mb: 64 holds 12288 mbufs (dataplane.mbufs is not set), which leave 46 for the hold budgets of 2 VM(s) without max_held_frames (after 8992 for the rings and caches and 3250 for the written max_held_frames): 23 each is fewer than 32; raise dataplane.mbufs (to 20370 for two 25 ms epochs at 1 Gb/s each, with eal.memory_mb at least 96), set dataplane.vm_queue, or give the VMs max_held_frames".to_string(),
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
        (format!("[control]\nping_interval_ms = 0\n{EGRESS}{vm}"), &["control.ping_interval_ms: 0 is out of range 1..=3600000"]),
        (format!("[control]\nliveness_timeout_ms = 900\nping_interval_ms = 301\n{EGRESS}{vm}"), &["control.ping_interval_ms: 301 is more than a third of control.liveness_timeout_ms (900)", "make it at most 300"]),
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
                 budget:  2048 frames / 3.8 MiB = 248.1 ms at its rate limit 100 Mbit/s and 20000 pps (of 1500-byte frames); frames: max_held_frames, bytes: max_held_bytes\n  \
                 rate:    100 Mbit/s (burst 50000 bytes), 20000 pps (burst 20 frames)\n",
            "vm \"db\": standby, shared ingress, mac 52:54:00:00:00:02, vlan 10, announces 10.0.0.2 fd00::2 on promotion (5 times, 100 ms apart)\n  \
                 buffer:  at most 4096 frames and 6217728 bytes, high water off, when full: drop\n  \
                 budget:  4096 frames / 5.9 MiB = 4.10 s at its rate limit 1000 pps (of 1500-byte frames); frames: dataplane.vm_queue, bytes: 1518 per frame\n  \
                 rate:    no byte rate limit, 1000 pps (burst 4 frames)\n",
            "vm \"cache.1\": passthrough, port 0000:04:00.1 (PCI), mac 52:54:00:00:00:03\n  \
                 buffer:  at most 4096 frames and 6217728 bytes, high water 3072 frames or 4663296 bytes, when full: drop\n  \
                 budget:  4096 frames / 5.9 MiB = 50.4 ms at 1 Gb/s of 1500-byte frames (no rate limit); frames: dataplane.vm_queue, bytes: 1518 per frame\n  \
                 rate:    unlimited\n",
            "control:   socket /tmp/eg/control.sock (mode 0600), admin socket /tmp/eg/admin.sock, fence drain <= 25 ms, liveness 3000 ms, pings every 500 ms, Hello within 1500 ms, at most 16 sessions",
            "sessions:  uids root, owner, 1000, 1001; gids 27",
            "dataplane: 32767 mbufs (cache 128), rx ring 512, tx ring 2048, vm queue 4096 frames, stats every 250 ms\n",
            // 4 ports x (512 + 2048) + 3 lcores x 192 + 32 = 10848; 2048 + 2 x 4096 held.
            "pool:      32767 mbufs (dataplane.mbufs; 4096 bytes each without hugepages, 16 MB more for EAL): 10848 for 4 port(s)' rings and 3 lcores' caches, 10240 for 3 VM(s)' hold budgets, 11679 spare\n",
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
            "  buffer:  at most 8192 frames and 12435456 bytes, high water 6144 frames or 9326592 bytes, when full: backpressure\n  \
             budget:  8192 frames / 11.9 MiB = 100.8 ms at 1 Gb/s of 1500-byte frames (no rate limit); frames: the pool's share, bytes: 1518 per frame\n  \
             rate:    unlimited\n",
            "dataplane: 213854 mbufs (cache 256), rx ring 1024, tx ring 1024, vm queue 8192 frames (the pool's share, at most 8192), stats every 1000 ms\n",
            "pool:      213854 mbufs (from eal.memory_mb = 512; 2432 bytes each with hugepages, 16 MB more for EAL): 4896 for 2 port(s)' rings and 2 lcores' caches, 8192 for 1 VM(s)' hold budgets, 200766 spare\n",
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
            "  buffer:  at most 8192 frames and 65536 bytes, high water 4096 frames or 32768 bytes, when full: backpressure\n",
            // The byte limit binds: 43 frames of 1514 bytes at 2.5 Mbit/s.
            "  budget:  8192 frames / 64.0 KiB = 208.3 ms (the byte limit holds 43 1500-byte frames) at its rate limit 2.5 Mbit/s (of 1500-byte frames); frames: the pool's share, bytes: max_held_bytes\n",
            "  rate:    2.5 Mbit/s (burst 3036 bytes), no frame rate limit\n",
        ],
    );
}

#[test]
fn load_names_the_path() {
    let dir = std::env::temp_dir().join(format!("epochgate-config-test-{}", std::process::id()));
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
    const WHY: &str = "two ports on one device would let one VM's output leave through the other";
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
        &format!("iface={long:?} is 108 bytes long: a unix socket path has at most 107 (sun_path)"),
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
fn any_vm_may_announce_and_each_address_once() {
    let vm = |name: &str, mac: u8, mode: &str, announce: &str| {
        format!("[[vm]]\nname = \"{name}\"\nport = \"net_tap{mac}\"\nmac = \"52:54:00:00:00:0{mac}\"\nmode = \"{mode}\"\nannounce = [{announce}]\n")
    };
    // A protected or pass-through VM announces when it is promoted back after a Demote.
    for mode in ["passthrough", "protected"] {
        let c = Config::from_toml_str(&format!("{EGRESS}{}", vm("web", 1, mode, "\"10.0.0.1\"")))
            .unwrap_or_else(|e| panic!("{mode}: {e}"));
        assert_eq!(c.vms[0].announce.len(), 1, "{mode}");
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
    // The default hold budget: the pool's mbufs after the rings, caches (1.5 x 256 per lcore)
    // and the written max_held_frames, shared, at most 8192; where that share is under 32 the
    // config would be refused, so vm_queue is written instead.
    let ports = 1
        + u64::from(ingress.is_some())
        + vms
            .iter()
            .filter(|g| !(g.attach >= 3 && ingress.is_some() && g.has_mac))
            .count() as u64;
    let lcore_count = lcore_ids(lcores).unwrap().len() as u64;
    let rings = ports * (u64::from(rx_ring) + u64::from(tx_ring)) + lcore_count * 384 + 32;
    let written: u64 = vms
        .iter()
        .filter_map(|g| g.limits.max_frames)
        .map(u64::from)
        .sum();
    let defaulted = vms.iter().filter(|g| g.limits.max_frames.is_none()).count() as u64;
    let share = (u64::from(GEN_MBUFS) - rings).saturating_sub(written) / defaulted.max(1);
    let (vm_queue, vm_queue_text, from) = if defaulted > 0 && share < 32 {
        (1024, "vm_queue = 1024\n", FramesFrom::VmQueue)
    } else {
        (share.clamp(32, 8192), "", FramesFrom::Pool)
    };
    text.push_str(&format!(
        "\n[dataplane]\nmbufs = {GEN_MBUFS}\nrx_ring = {rx_ring}\ntx_ring = {tx_ring}\n{vm_queue_text}"
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
        let max_frames = gl.max_frames.map_or(vm_queue, u64::from);
        let max_bytes = max_frames * 1518;
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
            announce_count: 5,
            announce_interval_ms: 100,
            defer: crate::classify::VmDefer::Builtin,
            limits: BufferLimits {
                max_frames,
                max_bytes,
                high_water_frames: (max_frames * num).div_ceil(den),
                high_water_bytes: (max_bytes * num).div_ceil(den),
                on_full: if port.is_some() {
                    OnFull::Backpressure
                } else {
                    OnFull::Drop
                },
            },
            hold_from: HoldFrom {
                frames: if gl.max_frames.is_some() {
                    FramesFrom::MaxHeldFrames
                } else {
                    from
                },
                bytes_set: false,
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
            vm_queue: vm_queue as u32,
            mbufs_derived: false,
            vm_queue_derived: from == FramesFrom::Pool,
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

/// `n` VMs, each on its own vhost port, the first protected, every size left to the defaults.
fn own_port_vms(eal: &str, dataplane: &str, n: usize, extra: &str) -> String {
    let mut t = format!("[eal]\n{eal}\n[dataplane]\n{dataplane}\n{EGRESS}");
    for i in 0..n {
        let mode = if i == 0 { "protected" } else { "passthrough" };
        t.push_str(&format!(
            "[[vm]]\nname = \"vm{i}\"\nport = \"net_vhost{i},iface=/tmp/vm{i}.sock\"\nmode = \"{mode}\"\n{}",
            if i == 0 { extra } else { "" }
        ));
    }
    t
}

#[test]
fn the_target_is_two_25_ms_epochs_at_1_gbps_of_1500_byte_frames() {
    // 1 Gb/s of 1500-byte payloads: 1538 bytes on the wire each, 81 274 frames/s; 50 ms of it.
    assert_eq!(HOLD_TARGET_FRAMES, 4064);
    assert!(HOLD_TARGET_FRAMES as f64 >= 0.050 * 1e9 / (8.0 * 1538.0));
    assert!(((HOLD_TARGET_FRAMES - 1) as f64) < 0.050 * 1e9 / (8.0 * 1538.0));
    assert_eq!(HOLD_DEFAULT_MAX_FRAMES, 8192);
    // The default byte limit does not bind before the frames for 1500-byte payloads.
    const { assert!(HOLD_BYTES_PER_FRAME >= BUDGET_FRAME_BYTES + 4) };
}

#[test]
fn the_default_config_holds_two_25_ms_epochs_at_1_gbps_for_each_vm() {
    let at_1_gbps = 1e9 / (8.0 * BUDGET_WIRE_BYTES as f64);
    // The default [eal] (512 MB), with and without hugepages; up to 20 VMs with their own
    // ports (34 with hugepages), and as many on the shared ingress.
    for (eal, most) in [("", 34), ("hugepages = false", 20)] {
        for n in (1..=most).chain([most / 2]) {
            let c = Config::from_toml_str(&own_port_vms(eal, "", n, "")).unwrap();
            let pool = c.pool();
            assert!(pool.held <= pool.free(), "{eal:?} {n}: {pool:?}");
            assert!(c.warnings().is_empty(), "{eal:?} {n}: {:?}", c.warnings());
            for vm in &c.vms {
                let l = vm.limits;
                assert_eq!(vm.hold_from.frames, FramesFrom::Pool);
                assert!(l.max_frames >= HOLD_TARGET_FRAMES, "{eal:?} {n}: {l:?}");
                assert!(l.max_frames <= HOLD_DEFAULT_MAX_FRAMES);
                assert!(
                    l.max_frames as f64 / at_1_gbps >= 0.050,
                    "{eal:?} {n}: {l:?}"
                );
                // ~6.1 MB of 1514-byte frames fit in the byte limit too.
                assert!(l.max_bytes >= HOLD_TARGET_FRAMES * BUDGET_FRAME_BYTES);
                assert_eq!(l.max_bytes, l.max_frames * HOLD_BYTES_PER_FRAME);
            }
        }
        // One more VM than that gets less: said, not refused.
        let c = Config::from_toml_str(&own_port_vms(eal, "", most + 1, "")).unwrap();
        assert!(c.dataplane.vm_queue < HOLD_TARGET_FRAMES as u32);
        let w = c.warnings();
        assert_eq!(w.len(), 1, "{w:?}");
        assert_contains(
            &w[0],
            &[
                "dataplane.vm_queue: the pool (",
                &format!(
                    "gives each of the {} VM(s) without max_held_frames",
                    most + 1
                ),
                "fewer than the 4064 of two 25 ms epochs at 1 Gb/s of 1500-byte frames",
            ],
        );
    }
    // The example configurations: every VM that sets nothing meets the target.
    for name in ["demo.toml", "qemu-vhost.toml", "physical-nic.toml"] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("config")
            .join(name);
        let c = Config::load(&path).unwrap();
        assert!(c.warnings().is_empty(), "{name}: {:?}", c.warnings());
        for vm in &c.vms {
            if vm.hold_from.frames != FramesFrom::MaxHeldFrames {
                assert!(vm.limits.max_frames >= HOLD_TARGET_FRAMES, "{name}: {vm:?}");
            }
        }
    }
}

#[test]
fn the_pool_is_derived_from_memory_and_shared_by_the_vms() {
    // (512 - 16) MB at 2432 bytes (hugepages) or 4096 (without).
    let c = Config::from_toml_str(&own_port_vms("", "", 1, "")).unwrap();
    assert_eq!(c.dataplane.mbufs, 213_854);
    let c = Config::from_toml_str(&own_port_vms("hugepages = false", "", 1, "")).unwrap();
    assert_eq!(c.dataplane.mbufs, 126_976);
    let c = Config::from_toml_str(&own_port_vms("memory_mb = 2048", "", 1, "")).unwrap();
    assert_eq!(c.dataplane.mbufs, ((2048 - 16) << 20) / 2432);
    // 64 MB without hugepages: 12288 mbufs; rings 2 x 2048 + 768 + 32 = 4896; one VM: 7392.
    let c = Config::from_toml_str(&own_port_vms(
        "memory_mb = 64\nhugepages = false",
        "",
        1,
        "",
    ))
    .unwrap();
    assert_eq!((c.dataplane.mbufs, c.pool().rings), (12_288, 4896));
    assert_eq!(c.vms[0].limits.max_frames, 7392);
    // Three VMs: (12288 - 4 x 2048 - 800) / 3 = 1098 each, and the warning says it is short.
    let c = Config::from_toml_str(&own_port_vms(
        "memory_mb = 64\nhugepages = false",
        "",
        3,
        "",
    ))
    .unwrap();
    assert!(c.vms.iter().all(|v| v.limits.max_frames == 1098));
    assert_eq!(c.dataplane.vm_queue, 1098);
    let p = c.pool();
    assert_eq!((p.held, p.free()), (3 * 1098, 3296));
    assert_eq!(c.warnings().len(), 1);
    // A written max_held_frames is taken first; the others share the rest.
    let c = Config::from_toml_str(&own_port_vms(
        "memory_mb = 64\nhugepages = false",
        "",
        3,
        "max_held_frames = 2000\n",
    ))
    .unwrap();
    let frames: Vec<u64> = c.vms.iter().map(|v| v.limits.max_frames).collect();
    assert_eq!(frames, [2000, 648, 648]);
    assert_eq!(c.vms[0].hold_from.frames, FramesFrom::MaxHeldFrames);
    assert_eq!(c.vms[1].hold_from.frames, FramesFrom::Pool);
}

#[test]
fn written_sizes_win_over_the_derived_ones() {
    let c = Config::from_toml_str(&own_port_vms(
        "hugepages = false",
        "mbufs = 65535\nvm_queue = 2048",
        2,
        "max_held_frames = 5000\nmax_held_bytes = 1000000\n",
    ))
    .unwrap();
    let d = &c.dataplane;
    assert_eq!((d.mbufs, d.vm_queue), (65_535, 2048));
    assert!(!d.mbufs_derived && !d.vm_queue_derived);
    assert_eq!(
        (c.vms[0].limits.max_frames, c.vms[0].limits.max_bytes),
        (5000, 1_000_000)
    );
    assert_eq!(
        c.vms[0].hold_from,
        HoldFrom {
            frames: FramesFrom::MaxHeldFrames,
            bytes_set: true
        }
    );
    assert_eq!(
        (c.vms[1].limits.max_frames, c.vms[1].limits.max_bytes),
        (2048, 2048 * 1518)
    );
    assert_eq!(c.vms[1].hold_from.frames, FramesFrom::VmQueue);
    // max_held_bytes = 0 is no byte limit, as before.
    let c = Config::from_toml_str(&own_port_vms("", "", 1, "max_held_bytes = 0\n")).unwrap();
    assert_eq!(c.vms[0].limits.max_bytes, 0);
    assert!(c.vms[0].hold_from.bytes_set);
    assert_contains(
        &c.topology(),
        &["  budget:  8192 frames / no byte limit = 100.8 ms at 1 Gb/s"],
    );
    // A written vm_queue is not capped at 8192, and the pool is not shared out.
    let c = Config::from_toml_str(&own_port_vms("", "vm_queue = 50000", 2, "")).unwrap();
    assert!(c.vms.iter().all(|v| v.limits.max_frames == 50_000));
    assert!(c.warnings().is_empty());
}

#[test]
fn hold_budgets_beyond_the_pool_are_reported_naming_keys_and_numbers() {
    // 2 ports x 2048 + 2 x 384 + 32 = 4896 of 16383 for the rings: 11487 left, 12000 asked.
    let c = Config::from_toml_str(&own_port_vms(
        "",
        "mbufs = 16383\nvm_queue = 4000",
        2,
        "max_held_frames = 8000\n",
    ))
    .unwrap();
    let p = c.pool();
    assert_eq!((p.rings, p.free(), p.held), (6944, 9439, 12_000));
    let w = c.warnings();
    assert_eq!(w.len(), 1, "{w:?}");
    assert_eq!(
        w[0],
        "dataplane.mbufs: the VMs' hold budgets add up to 12000 frames (dataplane.vm_queue = 4000 for 1 VM(s) (vm[1] (\"vm1\")) + vm[0] (\"vm0\").max_held_frames = 8000), more than the 9439 mbufs the pool (dataplane.mbufs = 16383) has left after the rings and caches take 6944: if they all fill, the ports run out of mbufs and drop what they receive, even for VMs on backpressure; lower them, or raise dataplane.mbufs to 18944 (eal.memory_mb to at least 60 with hugepages)"
    );
    let t = c.topology();
    assert_contains(
        &t,
        &[
            "pool:      16383 mbufs (dataplane.mbufs; 2432 bytes each with hugepages, 16 MB more for EAL): 6944 for 3 port(s)' rings and 2 lcores' caches, 12000 for 2 VM(s)' hold budgets, 2561 more than the pool has (see the warning)\n",
            &format!("warning:   {}\n", w[0]),
        ],
    );
    // With the pool derived, the warning names eal.memory_mb.
    let c = Config::from_toml_str(&own_port_vms(
        "memory_mb = 64\nhugepages = false",
        "",
        1,
        "max_held_frames = 12000\n",
    ))
    .unwrap();
    assert_contains(
        &c.warnings()[0],
        &[
            "eal.memory_mb: the VMs' hold budgets add up to 12000 frames (vm[0] (\"vm0\").max_held_frames = 12000)",
            "the pool (12288 mbufs, derived from eal.memory_mb = 64)",
            "raise dataplane.mbufs to 16896 (eal.memory_mb to at least 82 without hugepages)",
        ],
    );
}

#[test]
fn announcements_repeat_five_times_100_ms_apart_unless_configured_and_bad_values_are_named() {
    let base = "[egress]\nport = \"net_null0\"\n[[vm]]\nname = \"a\"\nport = \"net_null1\"\nmac = \"52:54:00:00:00:01\"\nmode = \"standby\"\nannounce = [\"10.0.0.1\"]\n";
    let c = Config::from_toml_str(base).expect("valid");
    assert_eq!(
        (c.vms[0].announce_count, c.vms[0].announce_interval_ms),
        (5, 100)
    );
    let c = Config::from_toml_str(&format!(
        "{base}announce_count = 2\nannounce_interval_ms = 30\n"
    ))
    .expect("valid");
    assert_eq!(
        (c.vms[0].announce_count, c.vms[0].announce_interval_ms),
        (2, 30)
    );
    for (extra, key, why) in [
        (
            "announce_count = 0",
            "vm[0] (\"a\").announce_count",
            "1 to 100 times",
        ),
        (
            "announce_count = 101",
            "vm[0] (\"a\").announce_count",
            "1 to 100 times",
        ),
        (
            "announce_interval_ms = 0",
            "vm[0] (\"a\").announce_interval_ms",
            "1 to 60000 ms",
        ),
        (
            "announce_interval_ms = -5",
            "vm[0] (\"a\").announce_interval_ms",
            "1 to 60000 ms",
        ),
    ] {
        let e = Config::from_toml_str(&format!("{base}{extra}\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains(key) && e.contains(why), "{extra}: {e}");
    }
}

/// Socket owners and modes: names and numeric ids resolve at load, an unknown user or group or
/// a bad mode is refused naming its key.
#[test]
fn socket_owner_group_and_admin_mode_resolve_or_are_refused_naming_the_key() {
    let base = "[egress]\nport = \"net_null0\"\n[[vm]]\nname = \"a\"\nport = \"net_tap0\"\n";
    let load = |control: &str| Config::from_toml_str(&format!("[control]\n{control}\n{base}"));
    let c = load("socket_owner = 65534\nsocket_group = \"root\"\nadmin_socket_mode = \"0640\"")
        .expect("valid");
    assert_eq!(c.control.owner_uid, Some(65534));
    assert_eq!(c.control.group_gid, Some(0));
    assert_eq!(c.control.admin_mode_bits(), 0o640);
    assert_eq!(
        c.control.admin_perms().mode_key,
        "control.admin_socket_mode"
    );
    let c = load("socket_owner = \"root\"").expect("valid");
    assert_eq!(c.control.owner_uid, Some(0));
    assert_eq!(c.control.group_gid, None);
    assert_eq!(c.control.admin_mode_bits(), 0o660, "socket_mode by default");
    let text = c.topology();
    assert!(text.contains("sockets:   owner root (0), group epochgate's group; control socket mode 0660, admin socket mode 0660 (control.socket_mode)"), "{text}");
    assert!(text.contains("admin:     read-only"), "{text}");
    for (control, key, why) in [
        (
            "socket_owner = \"no-such-user-eg\"",
            "control.socket_owner",
            "no user is named \"no-such-user-eg\"",
        ),
        (
            "socket_group = \"no-such-group-eg\"",
            "control.socket_group",
            "no group is named \"no-such-group-eg\"",
        ),
        (
            "socket_owner = -1",
            "control.socket_owner",
            "-1 is not a user id",
        ),
        (
            "admin_socket_mode = \"0999\"",
            "control.admin_socket_mode",
            "is not a file mode",
        ),
        (
            "socket_mode = \"rw\"",
            "control.socket_mode",
            "is not a file mode",
        ),
    ] {
        let e = load(control).expect_err(control).to_string();
        assert!(e.starts_with(&format!("{key}: ")), "{control}: {e}");
        assert!(e.contains(why), "{control}: {e}");
    }
    let e = Config::from_toml_str(&format!("[admin]\nwrite_uids = [5]\n{base}"))
        .expect_err("write_uids without writable")
        .to_string();
    assert!(
        e.starts_with("admin.write_uids: ") && e.contains("admin.writable"),
        "{e}"
    );
    let c = Config::from_toml_str(&format!(
        "[admin]\nwritable = true\nwrite_uids = [5]\n{base}"
    ))
    .expect("valid");
    assert!(c.admin.writable);
    assert!(c
        .topology()
        .contains("admin:     writable (fail VM) by uids root, owner, 5"));
}
