//! Runtime modes that outlive the process: a restart is never less safe than the run before it.
//!
//! Each VM's mode as the VMMs left it (a VM configured `passthrough` may have been protected by
//! its VMM) is kept in a small file beside the control socket (`control.sock` ->
//! `control.sock.state`). The control thread rewrites it atomically (temporary file, fsync, rename,
//! fsync of the directory) whenever a VM's mode changes, and before the VMM is told of a change
//! that makes the VM safer; the data plane never waits for it. On start, a VM that was
//! `protected` or `failed` comes back `protected` in a new open epoch, holding its output until a
//! controller adopts it, whatever the config says; one that was `standby` (demoted) comes back
//! `standby`; any other VM starts in its configured mode.
//!
//! A state file that cannot be read or parsed is an error naming it (epochgate does not start:
//! guessing could leak). A missing file means a first start, unless the control socket file of
//! an earlier run is there too (epochgate leaves it when it stops, cleanly or not): then the file
//! was deleted, which VMs were protected is unknown, and that is an error as well.

use crate::config::{Config, Mode as ConfigMode};
use crate::control::Mode;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The format's version; a file of another version is refused.
const VERSION: u32 = 1;

/// Why the state file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state file {}: cannot read it: {source}; epochgate will not guess which VMs were protected (fix or remove it once no protected guest runs)", .path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("state file {}: corrupt: {why}; epochgate will not guess which VMs were protected (fix or remove it once no protected guest runs)", .path.display())]
    Corrupt { path: PathBuf, why: String },
    #[error("state file {} is missing, but control.socket {} was left by an earlier epochgate: which VMs were protected is unknown (epochgate never deletes its state file); remove the stale socket once no protected guest runs, or restore the state file", .path.display(), .socket.display())]
    MissingAfterCrash { path: PathBuf, socket: PathBuf },
    #[error("state file {}: cannot write it: {why}", .path.display())]
    Write { path: PathBuf, why: String },
}

/// The file's contents: one mode per VM, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    version: u32,
    #[serde(default)]
    vms: BTreeMap<String, String>,
}

/// Where the state of the epochgate serving `socket` lives: beside it, the socket's own file
/// name with `.state` appended (`control.sock` -> `control.sock.state`), so two sockets never
/// share a state file.
pub fn path_for(socket: &Path) -> PathBuf {
    let mut s = socket.as_os_str().to_owned();
    s.push(".state");
    PathBuf::from(s)
}

/// The runtime modes of the previous run, by VM name: `None` on a first start (no file and no
/// stale control socket).
pub fn load(path: &Path, socket: &Path) -> Result<Option<BTreeMap<String, Mode>>, StateError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if std::fs::symlink_metadata(socket).is_ok() {
                return Err(StateError::MissingAfterCrash {
                    path: path.to_path_buf(),
                    socket: socket.to_path_buf(),
                });
            }
            return Ok(None);
        }
        Err(source) => {
            return Err(StateError::Read {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    parse(&text).map(Some).map_err(|why| StateError::Corrupt {
        path: path.to_path_buf(),
        why,
    })
}

fn parse(text: &str) -> Result<BTreeMap<String, Mode>, String> {
    let f: File = toml::from_str(text).map_err(|e| e.to_string().trim().to_string())?;
    if f.version != VERSION {
        return Err(format!(
            "version {} (this epochgate reads version {VERSION})",
            f.version
        ));
    }
    f.vms
        .into_iter()
        .map(|(name, m)| match m.parse::<Mode>() {
            Ok(mode) => Ok((name, mode)),
            Err(_) => Err(format!("VM {name:?} has unknown mode {m:?}")),
        })
        .collect()
}

/// The mode a VM starts in: `protected` (holding, until a controller adopts it) if it was
/// protected or failed when the previous run ended, `standby` if it was standby (demoted, or
/// never promoted), else its configured mode.
pub fn restored(configured: ConfigMode, previous: Option<Mode>) -> ConfigMode {
    match previous {
        Some(Mode::Protected | Mode::Failed) => ConfigMode::Protected,
        // Demoted (its output moved to another host): it stays a standby copy until promoted.
        Some(Mode::Standby) => ConfigMode::Standby,
        _ => configured,
    }
}

/// How the VMs start, from the config and the previous run's state file.
pub struct Resumed {
    /// The mode each VM starts in, in config order.
    pub modes: Vec<ConfigMode>,
    /// The record the control thread keeps (not written yet: see [`Tracker::write`]).
    pub tracker: Tracker,
    /// What the operator should know: VMs that start holding their output, forgotten VMs, or
    /// that this is a first start.
    pub notes: Vec<String>,
}

/// The mode each VM of `cfg` starts in: a restart is never less safe than the run before it,
/// so a VM that was protected or failed comes back protected, holding its output until a
/// controller adopts it; every other VM starts in its configured mode.
pub fn resume(cfg: &Config) -> Result<Resumed, StateError> {
    let path = path_for(&cfg.control.socket);
    let previous = load(&path, &cfg.control.socket)?;
    let mut notes = Vec::new();
    if previous.is_none() {
        notes.push(format!(
            "{}: none yet (a first start): every VM starts in its configured mode",
            path.display()
        ));
    }
    let previous = previous.unwrap_or_default();
    let modes: Vec<ConfigMode> = cfg
        .vms
        .iter()
        .map(|vm| {
            let was = previous.get(&vm.name).copied();
            let mode = restored(vm.mode, was);
            if let Some(was) = was.filter(|w| holds(*w)) {
                notes.push(format!(
                    "vm {:?} was {was} when epochgate last stopped ({}): it starts {mode}, holding its output until a controller adopts it",
                    vm.name,
                    path.display()
                ));
            }
            mode
        })
        .collect();
    for name in previous.keys() {
        if !cfg.vms.iter().any(|vm| &vm.name == name) {
            notes.push(format!(
                "vm {name:?} of {} is not configured any more: forgotten",
                path.display()
            ));
        }
    }
    let tracker = Tracker::new(
        path,
        cfg.vms
            .iter()
            .zip(&modes)
            .map(|(vm, m)| (vm.name.clone(), wire(*m)))
            .collect(),
    );
    Ok(Resumed {
        modes,
        tracker,
        notes,
    })
}

/// A configured mode as the protocol (and the state file) names it.
pub fn wire(m: ConfigMode) -> Mode {
    match m {
        ConfigMode::Passthrough => Mode::Passthrough,
        ConfigMode::Protected => Mode::Protected,
        ConfigMode::Standby => Mode::Standby,
    }
}

/// Whether a VM in this mode would come back holding its output.
pub fn holds(mode: Mode) -> bool {
    matches!(mode, Mode::Protected | Mode::Failed)
}

/// Writes `modes` (name, mode) to `path` atomically: a reader (or a restart after a crash at
/// any point) sees the old file or the new one, never a part.
pub fn store<'a>(
    path: &Path,
    modes: impl IntoIterator<Item = (&'a str, Mode)>,
) -> Result<(), StateError> {
    let err = |why: String| StateError::Write {
        path: path.to_path_buf(),
        why,
    };
    let file = File {
        version: VERSION,
        vms: modes
            .into_iter()
            .map(|(n, m)| (n.to_string(), m.name().to_string()))
            .collect(),
    };
    let text = format!(
        "# epochgate's runtime VM modes, rewritten on every mode change: do not edit while it runs.\n{}",
        toml::to_string(&file).map_err(|e| err(e.to_string()))?
    );
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        err(e.to_string())
    })
}

/// The control thread's record of every VM's mode, kept in step with the file.
pub struct Tracker {
    path: PathBuf,
    names: Vec<String>,
    modes: Vec<Mode>,
}

impl Tracker {
    /// The record of the modes the VMs start in. Nothing is written until [`Tracker::write`]:
    /// only the process that owns the control socket may write its state.
    pub fn new(path: PathBuf, vms: Vec<(String, Mode)>) -> Tracker {
        let (names, modes) = vms.into_iter().unzip();
        Tracker { path, names, modes }
    }

    /// Where the state file is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// VM `vm`'s mode as last recorded.
    pub fn mode(&self, vm: usize) -> Mode {
        self.modes[vm]
    }

    /// Records that VM `vm` is now in `mode`; the file is rewritten if that changed anything.
    /// On error the record still has the new mode (the next write carries it).
    pub fn set(&mut self, vm: usize, mode: Mode) -> Result<(), StateError> {
        if self.modes[vm] == mode {
            return Ok(());
        }
        self.modes[vm] = mode;
        self.write()
    }

    /// Writes the whole record. The control server does so once it owns the socket, so every
    /// running epochgate has a state file and a missing one after a crash is noticed.
    pub fn write(&self) -> Result<(), StateError> {
        store(
            &self.path,
            self.names
                .iter()
                .map(String::as_str)
                .zip(self.modes.iter().copied()),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    #[test]
    fn the_state_lives_beside_the_control_socket() {
        assert_eq!(
            path_for(Path::new("/run/epochgate/control.sock")),
            Path::new("/run/epochgate/control.sock.state")
        );
        // Sockets that differ only in their extension have different state files.
        assert_ne!(
            path_for(Path::new("/run/eg.sock")),
            path_for(Path::new("/run/eg.ctl"))
        );
        assert_eq!(path_for(Path::new("/run/eg1")), Path::new("/run/eg1.state"));
    }

    #[test]
    fn modes_round_trip_through_the_file() {
        let d = dir();
        let p = d.path().join("control.state");
        let modes = [
            ("web", Mode::Protected),
            ("db", Mode::Passthrough),
            ("sec", Mode::Standby),
            ("dead", Mode::Failed),
        ];
        store(&p, modes).unwrap();
        let back = load(&p, &d.path().join("control.sock")).unwrap().unwrap();
        assert_eq!(
            back,
            modes.iter().map(|(n, m)| (n.to_string(), *m)).collect()
        );
        // Rewriting replaces the file and leaves no temporary file behind.
        store(&p, [("web", Mode::Passthrough)]).unwrap();
        let back = load(&p, Path::new("/nonexistent")).unwrap().unwrap();
        assert_eq!(back.get("web"), Some(&Mode::Passthrough));
        assert_eq!(back.len(), 1);
        let names: Vec<_> = std::fs::read_dir(d.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

    #[test]
    fn a_protected_or_failed_vm_comes_back_protected_whatever_the_config_says() {
        use ConfigMode as C;
        for configured in [C::Passthrough, C::Protected, C::Standby] {
            assert_eq!(restored(configured, Some(Mode::Protected)), C::Protected);
            assert_eq!(restored(configured, Some(Mode::Failed)), C::Protected);
            assert_eq!(restored(configured, Some(Mode::Passthrough)), configured);
            // Demoted (or never promoted): a standby copy stays one.
            assert_eq!(restored(configured, Some(Mode::Standby)), C::Standby);
            assert_eq!(restored(configured, None), configured);
        }
    }

    #[test]
    fn a_missing_file_is_a_first_start_unless_a_crashed_run_left_its_socket() {
        let d = dir();
        let p = d.path().join("control.state");
        let sock = d.path().join("control.sock");
        assert_eq!(load(&p, &sock).unwrap(), None);
        std::fs::write(&sock, b"").unwrap();
        let e = load(&p, &sock).unwrap_err().to_string();
        assert!(
            e.contains("control.state") && e.contains("control.sock") && e.contains("unknown"),
            "{e}"
        );
    }

    #[test]
    fn a_corrupt_file_is_an_error_naming_it_and_why() {
        let d = dir();
        let p = d.path().join("control.state");
        let sock = d.path().join("control.sock");
        for (text, why) in [
            ("version = 1\n[vms]\nweb = \"sideways\"\n", "unknown mode"),
            ("version = 9\n", "version 9"),
            ("vms = 3\n", "expected a map"),
            ("[vms]\nweb = \"protected\"\n", "version"),
            ("\u{0}\u{1}garbage", ""),
            ("version = 1\n[vms]\nweb = \"protected\"\nextra = 1\n", ""),
            ("version = 1\nsurprise = true\n", "surprise"),
        ] {
            std::fs::write(&p, text).unwrap();
            let e = load(&p, &sock).unwrap_err().to_string();
            assert!(
                e.contains("control.state") && e.contains("corrupt") && e.contains(why),
                "{text:?}: {e}"
            );
        }
        // Unreadable (a directory where the file should be): an error too, never a default.
        std::fs::remove_file(&p).unwrap();
        std::fs::create_dir(&p).unwrap();
        let e = load(&p, &sock).unwrap_err().to_string();
        assert!(e.contains("cannot read"), "{e}");
    }

    #[test]
    fn the_tracker_writes_at_start_and_on_every_change() {
        let d = dir();
        let p = d.path().join("control.state");
        let sock = d.path().join("control.sock");
        let mut t = Tracker::new(
            p.clone(),
            vec![("a".into(), Mode::Passthrough), ("b".into(), Mode::Standby)],
        );
        assert_eq!(
            load(&p, &sock).unwrap(),
            None,
            "nothing written before write()"
        );
        t.write().unwrap();
        let now = || load(&p, &sock).unwrap().unwrap();
        assert_eq!(now().get("a"), Some(&Mode::Passthrough));
        t.set(0, Mode::Protected).unwrap();
        assert_eq!(now().get("a"), Some(&Mode::Protected));
        assert_eq!(t.mode(0), Mode::Protected);
        t.set(1, Mode::Passthrough).unwrap();
        t.set(0, Mode::Failed).unwrap();
        assert_eq!(now().get("a"), Some(&Mode::Failed));
        assert_eq!(now().get("b"), Some(&Mode::Passthrough));
    }

    #[test]
    fn a_write_that_cannot_happen_says_so_and_leaves_the_old_file() {
        let d = dir();
        let p = d.path().join("control.state");
        store(&p, [("web", Mode::Protected)]).unwrap();
        let e = store(
            &d.path().join("no/such/dir/control.state"),
            [("web", Mode::Failed)],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("cannot write"), "{e}");
        let back = load(&p, Path::new("/nonexistent")).unwrap().unwrap();
        assert_eq!(back.get("web"), Some(&Mode::Protected));
    }
}
