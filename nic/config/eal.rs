//! EAL: the argument list derived from the config ([`eal_args`]), and validating `[eal]` (lcore
//! lists, the options epochgate passes itself).

use super::ports::SUN_PATH_MAX;
use super::{invalid, ConfigError, EalConfig, PortSpec};

const MEMORY_MIN_MB: u32 = 64;
/// DPDK's RTE_MAX_LCORE (Debian's build): `-l` refuses lcore ids from here on.
const LCORE_MAX: u32 = 128;
/// The longest `eal.file_prefix`. EAL binds `<runtime dir>/<prefix>/dpdk_telemetry.v2` (and
/// `mp_socket`), and a socket path has at most 107 bytes: under root's `/var/run/dpdk/` that is
/// 107 - 14 - 18 = 75 characters (measured: 75 starts, 76 fails); 64 leaves room for a non-root
/// user's `/run/user/<uid>/dpdk/`.
const FILE_PREFIX_MAX: usize = 64;

/// EAL arguments for `cfg` and `ports` (in [`Config::ports`](super::Config::ports) order). PCI
/// ports are allow-listed with `-a` so EAL never probes other devices; with no PCI port at all,
/// `--no-pci`.
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

pub(super) fn validate_eal(eal: EalConfig) -> Result<EalConfig, ConfigError> {
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
pub(super) fn lcore_ids(list: &str) -> Result<Vec<u32>, String> {
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
