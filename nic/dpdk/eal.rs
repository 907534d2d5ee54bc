//! EAL start (once per process, for ever), time from the TSC, and launching closures on pinned
//! worker lcores.

use super::{ffi, last_errno, strerror, DpdkError};
use std::ffi::{c_int, c_void, CString};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Proof that the EAL is initialised in this process. Everything that needs the EAL takes `&Eal`.
#[derive(Debug)]
pub struct Eal {
    args: Vec<String>,
    tsc_hz: u64,
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
    // The TSC is calibrated across rte_eal_init, which takes longer than the window needs.
    let origin = Instant::now();
    let start = stamp(origin);
    // SAFETY: argv points to argc valid NUL-terminated strings that live for the rest of the
    // process (leaked above); INIT_LOCK plus the OnceLock make this the only rte_eal_init call.
    let rc = unsafe { ffi::rte_eal_init(argc, argv.as_mut_ptr()) };
    if rc < 0 {
        return Err(DpdkError::Eal(strerror(last_errno())));
    }
    if let Some(rest) = CALIBRATION.checked_sub(origin.elapsed()) {
        std::thread::sleep(rest);
    }
    let end = stamp(origin);
    // SAFETY: the EAL is initialised (rc >= 0), which calibrates its own TSC frequency.
    let eal_hz = unsafe { ffi::rte_get_tsc_hz() };
    Ok(EAL.get_or_init(|| Eal {
        args: args.to_vec(),
        // To the MHz (at most 0.02% of a 2 GHz TSC): ms and us then convert to whole ticks,
        // so a 500 ms deadline is 500 ms, not 200 ns short of it by truncation.
        tsc_hz: tsc_hz_between(start, end)
            .map(|hz| (hz + 500_000) / 1_000_000 * 1_000_000)
            .filter(|&hz| hz > 0)
            .unwrap_or(eal_hz),
    }))
}

/// How long the TSC is measured against the system clock: at least this, and the narrowest of
/// [`STAMP_TRIES`] brackets at each end, so its error is a few parts per million.
const CALIBRATION: Duration = Duration::from_millis(100);
const STAMP_TRIES: usize = 16;

/// A TSC reading matched with a clock reading (ns since some origin): the clock was read
/// between two TSC reads `width` ticks apart, and `tsc` is their midpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stamp {
    pub tsc: u64,
    pub ns: u64,
    pub width: u64,
}

fn stamp(origin: Instant) -> Stamp {
    narrowest_stamp(tsc, || origin.elapsed().as_nanos() as u64, STAMP_TRIES)
}

/// The narrowest of `tries` brackets `tsc, clock, tsc`: a bracket the thread was preempted or
/// interrupted in is wide, and loses to one that was not.
pub(crate) fn narrowest_stamp(
    mut tsc: impl FnMut() -> u64,
    mut clock: impl FnMut() -> u64,
    tries: usize,
) -> Stamp {
    let mut best: Option<Stamp> = None;
    for _ in 0..tries.max(1) {
        let a = tsc();
        let ns = clock();
        let b = tsc();
        let width = b.saturating_sub(a);
        let s = Stamp {
            tsc: a + width / 2,
            ns,
            width,
        };
        if best.is_none_or(|x| s.width < x.width) {
            best = Some(s);
        }
    }
    best.expect("at least one try")
}

/// TSC ticks per second between two stamps, or `None` when the clock or the TSC did not move
/// forward between them.
pub(crate) fn tsc_hz_between(a: Stamp, b: Stamp) -> Option<u64> {
    let ticks = b.tsc.checked_sub(a.tsc).filter(|&t| t > 0)?;
    let ns = b.ns.checked_sub(a.ns).filter(|&n| n > 0)?;
    u64::try_from(u128::from(ticks) * 1_000_000_000 / u128::from(ns)).ok()
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

/// TSC ticks per second, measured against the system clock while the EAL started.
///
/// Not `rte_get_tsc_hz`: where the CPU does not report its TSC frequency (most VMs), DPDK times
/// one 100 ms sleep with unbracketed reads and rounds the result to 10 MHz. The rounding alone
/// is up to 0.25% of a 2 GHz TSC, and a preemption between a pair of reads adds as much as it
/// lasted (1 ms is 1%): every rate limit, deadline and latency would be off by that much.
pub fn tsc_hz(eal: &Eal) -> u64 {
    eal.tsc_hz
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    /// A TSC at 2 GHz and a clock in ns, both driven by one simulated time that the test can
    /// jump (a preemption).
    struct Sim {
        ns: Cell<u64>,
        jumps: Cell<Vec<u64>>,
    }

    impl Sim {
        fn tsc(&self) -> u64 {
            let mut j = self.jumps.take();
            let jump = if j.is_empty() { 0 } else { j.remove(0) };
            self.jumps.set(j);
            self.ns.set(self.ns.get() + 10 + jump);
            self.ns.get() * 2
        }
        fn clock(&self) -> u64 {
            self.ns.set(self.ns.get() + 20);
            self.ns.get()
        }
    }

    #[test]
    fn a_preempted_bracket_loses_to_a_narrow_one() {
        // The first two brackets are preempted (1 ms and 5 ms between their TSC reads).
        let sim = Sim {
            ns: Cell::new(1_000),
            jumps: Cell::new(vec![0, 1_000_000, 0, 5_000_000]),
        };
        let s = narrowest_stamp(|| sim.tsc(), || sim.clock(), 4);
        assert_eq!(s.width, 60, "{s:?}: two 30 ns steps at 2 GHz");
        // Reads at ns - 20 (first TSC), ns (clock), ns + 10 (second TSC): the midpoint is ns - 5.
        assert_eq!(s.tsc / 2 + 5, s.ns, "{s:?}: the midpoint of the bracket");
    }

    #[test]
    fn the_frequency_is_exact_across_preemptions_at_either_end() {
        let sim = Sim {
            ns: Cell::new(0),
            jumps: Cell::new(vec![0, 3_000_000]),
        };
        let a = narrowest_stamp(|| sim.tsc(), || sim.clock(), 8);
        sim.ns.set(sim.ns.get() + 100_000_000);
        sim.jumps.set(vec![2_000_000, 0, 0, 7_000_000]);
        let b = narrowest_stamp(|| sim.tsc(), || sim.clock(), 8);
        assert_eq!(tsc_hz_between(a, b), Some(2_000_000_000));
    }

    #[test]
    fn no_frequency_without_progress() {
        let s = Stamp {
            tsc: 10,
            ns: 10,
            width: 1,
        };
        assert_eq!(tsc_hz_between(s, s), None);
        assert_eq!(
            tsc_hz_between(
                s,
                Stamp {
                    tsc: 5,
                    ns: 20,
                    width: 1
                }
            ),
            None
        );
        assert_eq!(
            tsc_hz_between(
                s,
                Stamp {
                    tsc: 20,
                    ns: 5,
                    width: 1
                }
            ),
            None
        );
    }
}
