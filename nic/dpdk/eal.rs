//! EAL start (once per process, for ever), time from the TSC, and launching closures on pinned
//! worker lcores.

use super::{ffi, last_errno, strerror, DpdkError};
use std::ffi::{c_int, c_void, CString};
use std::sync::{Mutex, OnceLock};

/// Proof that the EAL is initialised in this process. Everything that needs the EAL takes `&Eal`.
#[derive(Debug)]
pub struct Eal {
    args: Vec<String>,
}

static EAL: OnceLock<Eal> = OnceLock::new();
static INIT_LOCK: Mutex<()> = Mutex::new(());

/// Starts the EAL with `args` (argv[0] included). DPDK allows one `rte_eal_init` per process for
/// ever; a later call with the same arguments returns the running EAL, with other arguments it
/// is an error.
pub fn init(args: &[String]) -> Result<&'static Eal, DpdkError> {
    let _guard = INIT_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(eal) = EAL.get() {
        return if eal.args == args {
            Ok(eal)
        } else {
            Err(DpdkError::Eal(format!(
                "already initialised in this process with {:?}; DPDK allows one EAL per process",
                eal.args
            )))
        };
    }
    let cargs: Vec<CString> = args
        .iter()
        .map(|a| CString::new(a.as_str()))
        .collect::<Result<_, _>>()
        .map_err(|_| DpdkError::Eal("an EAL argument contains a NUL byte".into()))?;
    // rte_eal_init may permute argv and keeps pointers into it: leak both for the process lifetime.
    let cargs: &'static [CString] = Box::leak(cargs.into_boxed_slice());
    let argv: &'static mut [*mut std::ffi::c_char] = Box::leak(
        cargs
            .iter()
            .map(|c| c.as_ptr().cast_mut())
            .collect::<Vec<_>>()
            .into_boxed_slice(),
    );
    let argc =
        c_int::try_from(argv.len()).map_err(|_| DpdkError::Eal("too many arguments".into()))?;
    // SAFETY: argv points to argc valid NUL-terminated strings that live for the rest of the
    // process (leaked above); INIT_LOCK plus the OnceLock make this the only rte_eal_init call.
    let rc = unsafe { ffi::rte_eal_init(argc, argv.as_mut_ptr()) };
    if rc < 0 {
        return Err(DpdkError::Eal(strerror(last_errno())));
    }
    Ok(EAL.get_or_init(|| Eal {
        args: args.to_vec(),
    }))
}

/// Releases EAL resources (hugepage files, runtime directory). Call last: after it, no DPDK call
/// may be made in this process, so only a binary's `main` calls it, right before exiting.
pub fn cleanup(_eal: &'static Eal) {
    // SAFETY: the caller is main, all lcores have been joined and ports closed, and no DPDK call
    // follows (documented contract of this function).
    unsafe {
        ffi::rte_eal_cleanup();
    }
}

/// The TSC now. Cheap (rdtsc): this is the data plane's clock.
#[inline]
pub fn tsc() -> u64 {
    // SAFETY: reads the time stamp counter; no memory is touched.
    unsafe { ffi::eg_rdtsc() }
}

/// TSC ticks per second, as calibrated by the EAL.
pub fn tsc_hz(_eal: &Eal) -> u64 {
    // SAFETY: the EAL is initialised (we hold &Eal), which calibrates the TSC frequency.
    unsafe { ffi::rte_get_tsc_hz() }
}

/// The worker lcores of the EAL lcore list (every enabled lcore except the main one), in order.
pub fn worker_lcores(_eal: &Eal) -> Vec<u32> {
    let mut out = Vec::new();
    let mut i: u32 = u32::MAX; // -1: start of the iteration
    loop {
        // SAFETY: the EAL is initialised; rte_get_next_lcore only reads the lcore configuration.
        i = unsafe { ffi::rte_get_next_lcore(i, 1, 0) };
        if i >= 128 {
            break;
        }
        out.push(i);
    }
    out
}

type Work = Box<dyn FnOnce() -> i32 + Send + 'static>;

extern "C" fn trampoline(arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the Box<Work> leaked by launch_on for exactly this one call.
    let work: Box<Work> = unsafe { Box::from_raw(arg.cast::<Work>()) };
    // A panic must not unwind into C: report it as a failed lcore instead.
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)).unwrap_or(-1)
}

/// A closure running on a worker lcore; `wait` joins it.
#[derive(Debug)]
pub struct LaunchHandle {
    lcore: u32,
}

impl LaunchHandle {
    /// Blocks until the lcore's closure has returned, and gives its return value (-1 if it panicked).
    pub fn wait(self) -> i32 {
        // SAFETY: the lcore was launched by launch_on and is waited for once (self is consumed).
        unsafe { ffi::rte_eal_wait_lcore(self.lcore) }
    }

    pub fn lcore(&self) -> u32 {
        self.lcore
    }
}

/// Runs `f` on worker lcore `lcore` (pinned by the EAL to its CPU).
pub fn launch_on<F>(_eal: &Eal, lcore: u32, f: F) -> Result<LaunchHandle, DpdkError>
where
    F: FnOnce() -> i32 + Send + 'static,
{
    let work: Box<Work> = Box::new(Box::new(f));
    let arg = Box::into_raw(work);
    // SAFETY: trampoline matches lcore_function_t; arg is a valid Box<Work> that trampoline
    // takes back exactly once. On failure the closure never ran and we reclaim it below.
    let rc = unsafe { ffi::rte_eal_remote_launch(Some(trampoline), arg.cast(), lcore) };
    if rc != 0 {
        // SAFETY: the launch failed, so trampoline will never see arg: we still own it.
        drop(unsafe { Box::from_raw(arg) });
        return Err(DpdkError::Lcore {
            lcore,
            reason: format!("cannot launch: {}", strerror(rc)),
        });
    }
    Ok(LaunchHandle { lcore })
}
