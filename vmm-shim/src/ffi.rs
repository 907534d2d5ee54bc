//! The C ABI: [`Client`] for VMMs written in C, declared in `include/epochgate_shim.h`.
//!
//! This module is the crate's only `unsafe` code, and it needs it for one reason: a C caller
//! hands us raw pointers (the `eg_shim` handle, C strings, out-parameters, the callback's
//! `user` pointer) and calls us through unmangled symbols (`#[no_mangle]`), and neither can be
//! expressed in safe Rust. Each `unsafe` block dereferences a pointer only after checking it
//! is not NULL, and relies only on what the header asks of the caller, which its `// SAFETY:`
//! comment names. Everything else (the protocol, the socket, the session) is the safe
//! [`Client`].
//!
//! Rules kept at this boundary:
//! - no panic crosses it: every entry point runs inside [`catch_unwind`], and a panic becomes
//!   an error return (its message in `eg_shim_last_error()`);
//! - NULL pointers are rejected with `-1`, never dereferenced (NULL out-pointers are allowed:
//!   that value is then not returned);
//! - return codes: `0` done, a positive `EG_ERR_*` code when epochgate refused (see
//!   [`ErrorCode`]), `-1` for anything else; the message of the last failure on the calling
//!   thread is in `eg_shim_last_error()`;
//! - a handle serves one call at a time: a call made while another is running on the same
//!   handle (from another thread, or from inside the event callback) fails with `-1` rather
//!   than touching the session.
#![allow(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn)]

use std::cell::RefCell;
use std::ffi::{c_char, c_int, c_void, CStr, OsStr};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::ffi::OsStrExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::atomic::{AtomicI32, AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, TryLockError};
use std::time::Duration;

use crate::client::{Client, Event, Options, ShimError};
use crate::proto::{ErrorCode, Mode, Release, Urgency, VmStats, VERSION};

/// `eg_fenced`: what `eg_shim_fence` returns.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EgFenced {
    /// The sealed epoch.
    pub epoch: u64,
    /// Frames held in it.
    pub frames: u64,
    /// Bytes held in it.
    pub bytes: u64,
    /// Time taken to drain in-flight frames into it, in nanoseconds.
    pub drain_ns: u64,
}

/// `eg_stats`: what `eg_shim_stats` returns.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EgStats {
    /// `EG_MODE_*`.
    pub mode: u32,
    /// The epoch frames are currently added to (0 if none).
    pub open_epoch: u64,
    /// The newest sealed epoch (0 if none).
    pub sealed_epoch: u64,
    /// The newest committed epoch (0 if none).
    pub committed_epoch: u64,
    /// Frames currently held.
    pub held_frames: u64,
    /// Bytes currently held.
    pub held_bytes: u64,
    /// Frames received from the VM.
    pub rx_frames: u64,
    /// Frames sent on.
    pub tx_frames: u64,
    /// Frames dropped.
    pub dropped: u64,
}

/// `eg_event`: a checkpoint request.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EgEvent {
    /// The epoch to checkpoint.
    pub epoch: u64,
    /// `EG_URGENCY_NOW` or `EG_URGENCY_WITHIN`.
    pub urgency: u32,
    /// For `EG_URGENCY_WITHIN`: the deadline in nanoseconds; 0 for `EG_URGENCY_NOW`.
    pub within_ns: u64,
    /// `EG_REASON_*`.
    pub reason: u32,
}

/// `EG_MODE_PASSTHROUGH`.
pub const EG_MODE_PASSTHROUGH: u32 = Mode::Passthrough as u32;
/// `EG_MODE_PROTECTED`.
pub const EG_MODE_PROTECTED: u32 = Mode::Protected as u32;
/// `EG_MODE_STANDBY`.
pub const EG_MODE_STANDBY: u32 = Mode::Standby as u32;
/// `EG_MODE_FAILED`.
pub const EG_MODE_FAILED: u32 = Mode::Failed as u32;
/// `EG_RELEASE`.
pub const EG_RELEASE: u32 = Release::Release as u32;
/// `EG_DROP`.
pub const EG_DROP: u32 = Release::Drop as u32;
/// `EG_URGENCY_NOW`.
pub const EG_URGENCY_NOW: u32 = 0;
/// `EG_URGENCY_WITHIN`.
pub const EG_URGENCY_WITHIN: u32 = 1;

impl From<Event> for EgEvent {
    fn from(e: Event) -> EgEvent {
        let (urgency, within_ns) = match e.urgency {
            Urgency::Now => (EG_URGENCY_NOW, 0),
            Urgency::Within { ns } => (EG_URGENCY_WITHIN, ns),
        };
        EgEvent {
            epoch: e.epoch,
            urgency,
            within_ns,
            reason: e.reason as u32,
        }
    }
}

impl From<VmStats> for EgStats {
    fn from(s: VmStats) -> EgStats {
        EgStats {
            mode: s.mode as u32,
            open_epoch: s.open_epoch,
            sealed_epoch: s.sealed_epoch,
            committed_epoch: s.committed_epoch,
            held_frames: s.held_frames,
            held_bytes: s.held_bytes,
            rx_frames: s.rx_frames,
            tx_frames: s.tx_frames,
            dropped: s.dropped,
        }
    }
}

/// `eg_shim`: the opaque handle C holds (a `Box<EgShim>` from `eg_shim_connect`).
///
/// What the read-only accessors need is kept outside the lock, so they work even from inside
/// the event callback.
pub struct EgShim {
    /// What the session's `Hello` got (epoch, and mode as `EG_MODE_*`); atomics because
    /// `eg_shim_reconnect` renews them while the accessors may read them from a callback.
    welcome_epoch: AtomicU64,
    welcome_mode: AtomicU32,
    fd: AtomicI32,
    /// The pinger's interval and answer timeout in ms; 0 without a pinger.
    ping_interval_ms: AtomicI64,
    answer_timeout_ms: AtomicI64,
    client: Mutex<Client>,
}

fn millis(d: Option<Duration>) -> i64 {
    d.map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl EgShim {
    fn new(client: Client) -> Box<EgShim> {
        let shim = Box::new(EgShim {
            welcome_epoch: AtomicU64::new(0),
            welcome_mode: AtomicU32::new(0),
            fd: AtomicI32::new(-1),
            ping_interval_ms: AtomicI64::new(0),
            answer_timeout_ms: AtomicI64::new(0),
            client: Mutex::new(client),
        });
        if let Ok(c) = shim.client.lock() {
            shim.note(&c);
        }
        shim
    }

    /// Records what the accessors give for `client` (a new session after a reconnection).
    fn note(&self, client: &Client) {
        let pinger = client.ping_interval().zip(client.answer_timeout());
        self.welcome_epoch
            .store(client.welcome().epoch, Ordering::Release);
        self.welcome_mode
            .store(client.welcome().mode as u32, Ordering::Release);
        self.fd.store(client.as_fd().as_raw_fd(), Ordering::Release);
        self.ping_interval_ms
            .store(millis(pinger.map(|p| p.0)), Ordering::Release);
        self.answer_timeout_ms
            .store(millis(pinger.map(|p| p.1)), Ordering::Release);
    }
}

/// The pinger options `eg_shim_connect_with` takes.
fn options_of(ping_interval_ms: i32, answer_timeout_ms: i32) -> Result<Options, ShimError> {
    let ms = |v: i32| Duration::from_millis(u64::from(v.unsigned_abs()));
    if answer_timeout_ms < 0 {
        return Err(bad(format!(
            "answer_timeout_ms is {answer_timeout_ms}: 0 (epochgate's liveness timeout) or more"
        )));
    }
    let answer_timeout = (answer_timeout_ms > 0).then(|| ms(answer_timeout_ms));
    Ok(match ping_interval_ms {
        -1 => Options::without_pinger(),
        0 => Options {
            answer_timeout,
            ..Options::default()
        },
        n if n > 0 => Options {
            ping_interval: Some(ms(n)),
            answer_timeout,
            ..Options::default()
        },
        n => {
            return Err(bad(format!(
                "ping_interval_ms is {n}: -1 (no pinger), 0 (epochgate's interval) or more"
            )))
        }
    })
}

/// The event callback C registers.
pub type EgEventCallback = Option<unsafe extern "C" fn(event: *const EgEvent, user: *mut c_void)>;

/// The callback's `user` pointer, carried into the `Send` closure the client keeps.
struct UserData(*mut c_void);

// SAFETY: Rust never dereferences the pointer; it only hands it back, unchanged, to the C
// callback, on whatever thread makes an `eg_shim_*` call. Whether the data behind it may be
// used from that thread is the C caller's business, as the header says.
unsafe impl Send for UserData {}

impl UserData {
    /// A method, so that closures capture the whole (`Send`) struct and not the raw field.
    fn get(&self) -> *mut c_void {
        self.0
    }
}

/// Room for the last error message, NUL included; longer messages are cut.
const LAST_ERROR_MAX: usize = 1024;

thread_local! {
    /// The message of the last failure on this thread, NUL-terminated. A fixed buffer, so the
    /// pointer `eg_shim_last_error` returns stays valid for the thread's life (only the text
    /// changes), even in C code that evaluates it before the call that fails.
    static LAST_ERROR: RefCell<[u8; LAST_ERROR_MAX]> = const { RefCell::new([0; LAST_ERROR_MAX]) };
}

fn set_last_error(msg: &str) {
    let msg = msg.replace('\0', "\\0");
    let mut n = msg.len().min(LAST_ERROR_MAX - 1);
    while !msg.is_char_boundary(n) {
        n -= 1;
    }
    // Fails only while the thread is being torn down; the message is then lost.
    let _ = LAST_ERROR.try_with(|buf| {
        if let Ok(mut buf) = buf.try_borrow_mut() {
            buf[..n].copy_from_slice(&msg.as_bytes()[..n]);
            buf[n] = 0;
        }
    });
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    let what = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_string());
    format!("internal error in vmm-shim (a bug): {what}")
}

fn bad(msg: impl Into<String>) -> ShimError {
    ShimError::BadArgument(msg.into())
}

/// The C return code for `e`: the `EG_ERR_*` code for a refusal, else -1.
fn code_of(e: &ShimError) -> c_int {
    match e.code().map(ErrorCode::code) {
        Some(n) if n > 0 => c_int::from(n),
        _ => -1,
    }
}

/// Runs one entry point: 0 on success, else the code for the failure (message recorded).
fn entry(f: impl FnOnce() -> Result<(), ShimError>) -> c_int {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => 0,
        Ok(Err(e)) => {
            set_last_error(&e.to_string());
            code_of(&e)
        }
        Err(panic) => {
            set_last_error(&panic_message(&*panic));
            -1
        }
    }
}

/// Runs `f` on the client behind `shim`, if the handle is not NULL and not busy.
///
/// # Safety
///
/// `shim` is NULL or a handle from `eg_shim_connect` that was not closed.
unsafe fn with_client<T>(
    shim: *const EgShim,
    f: impl FnOnce(&mut Client) -> Result<T, ShimError>,
) -> Result<T, ShimError> {
    // SAFETY: NULL is handled by `as_ref`; any other value is a live handle from
    // `eg_shim_connect` (the function's contract). Only a shared reference is made, so
    // calls made from inside the callback (which alias it) are sound; the lock then says no.
    let Some(shim) = (unsafe { shim.as_ref() }) else {
        return Err(bad("the eg_shim handle is NULL"));
    };
    let mut client = match shim.client.try_lock() {
        Ok(c) => c,
        // A panic inside an earlier call was caught; the client itself is still whole.
        Err(TryLockError::Poisoned(p)) => p.into_inner(),
        Err(TryLockError::WouldBlock) => {
            return Err(bad(
                "the eg_shim handle is busy: another call on it is running (on another thread, or this is the event callback calling back in)",
            ))
        }
    };
    f(&mut client)
}

/// Stores `v` through `out` unless `out` is NULL.
///
/// # Safety
///
/// `out` is NULL or valid for writing one properly aligned `T`.
unsafe fn put<T>(out: *mut T, v: T) {
    if !out.is_null() {
        // SAFETY: not NULL, and the caller promises a writable, aligned T there (the header's
        // contract for every out-pointer). `write` does not read or drop the old value, so
        // uninitialised memory is fine.
        unsafe { out.write(v) }
    }
}

/// The C string at `p`, which must not be NULL.
///
/// # Safety
///
/// `p` is NULL or points to a NUL-terminated string that lives for the call.
unsafe fn c_str<'a>(p: *const c_char, what: &str) -> Result<&'a CStr, ShimError> {
    if p.is_null() {
        return Err(bad(format!("{what} is NULL")));
    }
    // SAFETY: not NULL, and the caller promises a NUL-terminated string that outlives the
    // call (the header's contract for every string argument).
    Ok(unsafe { CStr::from_ptr(p) })
}

/// The protocol version this library speaks (`VERSION` in the protocol).
#[no_mangle]
pub extern "C" fn eg_shim_version() -> u32 {
    u32::from(VERSION)
}

/// Connects to epochgate's control socket and adopts VM `vm`; NULL on failure (see
/// `eg_shim_last_error`).
///
/// # Safety
///
/// `socket_path` and `vm` are NULL or NUL-terminated strings.
#[no_mangle]
pub unsafe extern "C" fn eg_shim_connect(
    socket_path: *const c_char,
    vm: *const c_char,
) -> *mut EgShim {
    // SAFETY: the same contract as this function's.
    unsafe { eg_shim_connect_with(socket_path, vm, 0, 0) }
}

/// `eg_shim_connect` with the background pinger chosen: `ping_interval_ms` -1 for none (the
/// caller pings itself), 0 for the interval epochgate asks for (`[control] ping_interval_ms`,
/// what `eg_shim_connect` does), or the interval; `answer_timeout_ms` 0 for epochgate's
/// liveness timeout (4 intervals if it has none), or how long with nothing back means
/// epochgate stopped answering.
///
/// # Safety
///
/// `socket_path` and `vm` are NULL or NUL-terminated strings.
#[no_mangle]
pub unsafe extern "C" fn eg_shim_connect_with(
    socket_path: *const c_char,
    vm: *const c_char,
    ping_interval_ms: i32,
    answer_timeout_ms: i32,
) -> *mut EgShim {
    let made = catch_unwind(AssertUnwindSafe(|| -> Result<Box<EgShim>, ShimError> {
        let opts = options_of(ping_interval_ms, answer_timeout_ms)?;
        // SAFETY: the caller's contract: NULL or a NUL-terminated string.
        let path = unsafe { c_str(socket_path, "socket_path") }?;
        // SAFETY: as above.
        let vm = unsafe { c_str(vm, "vm") }?
            .to_str()
            .map_err(|_| bad("vm is not valid UTF-8"))?;
        let path = Path::new(OsStr::from_bytes(path.to_bytes()));
        Ok(EgShim::new(Client::connect_with(path, vm, opts)?))
    }));
    match made {
        Ok(Ok(shim)) => Box::into_raw(shim),
        Ok(Err(e)) => {
            set_last_error(&e.to_string());
            std::ptr::null_mut()
        }
        Err(panic) => {
            set_last_error(&panic_message(&*panic));
            std::ptr::null_mut()
        }
    }
}

/// Closes the session and frees the handle; NULL is fine. Refused (the handle stays open)
/// while a call on it is running, i.e. from inside the event callback.
///
/// # Safety
///
/// `shim` is NULL or a handle from `eg_shim_connect` that was not closed; it is invalid
/// afterwards.
#[no_mangle]
pub unsafe extern "C" fn eg_shim_close(shim: *mut EgShim) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        if shim.is_null() {
            return;
        }
        // SAFETY: not NULL, so a live handle (the contract); only shared access here.
        let busy = matches!(
            unsafe { &*shim }.client.try_lock(),
            Err(TryLockError::WouldBlock)
        );
        if busy {
            set_last_error("eg_shim_close: a call on this handle is running (the event callback may not close it); not closed");
            return;
        }
        // SAFETY: the handle came from `Box::into_raw` in `eg_shim_connect`, is not closed
        // (the contract) and no call is using it (checked just above), so ownership can be
        // taken back; the caller does not use it again.
        drop(unsafe { Box::from_raw(shim) });
    }));
}

/// The open epoch `Hello` reported (0 if none; 0 for NULL).
///
/// # Safety
///
/// `shim` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn eg_shim_welcome_epoch(shim: *const EgShim) -> u64 {
    // SAFETY: NULL or a live handle (the contract); shared access to an atomic field.
    catch_unwind(|| unsafe { shim.as_ref() }.map_or(0, |s| s.welcome_epoch.load(Ordering::Acquire)))
        .unwrap_or(0)
}

/// The mode `Hello` reported (`EG_MODE_*`; `UINT32_MAX` for NULL).
///
/// # Safety
///
/// `shim` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn eg_shim_welcome_mode(shim: *const EgShim) -> u32 {
    catch_unwind(|| {
        // SAFETY: NULL or a live handle (the contract); shared access to an atomic field.
        unsafe { shim.as_ref() }.map_or(u32::MAX, |s| s.welcome_mode.load(Ordering::Acquire))
    })
    .unwrap_or(u32::MAX)
}

/// The background pinger's interval in milliseconds; 0 when the handle has no pinger
/// (`eg_shim_connect_with(.., -1, ..)`), -1 for NULL.
///
/// # Safety
///
/// `shim` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn eg_shim_ping_interval_ms(shim: *const EgShim) -> i64 {
    catch_unwind(|| {
        // SAFETY: NULL or a live handle (the contract); shared access to an atomic field.
        unsafe { shim.as_ref() }.map_or(-1, |s| s.ping_interval_ms.load(Ordering::Acquire))
    })
    .unwrap_or(-1)
}

/// How long, in milliseconds, the pinger waits for any answer before a call fails saying
/// epochgate stopped answering; 0 without a pinger, -1 for NULL.
///
/// # Safety
///
/// `shim` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn eg_shim_answer_timeout_ms(shim: *const EgShim) -> i64 {
    catch_unwind(|| {
        // SAFETY: NULL or a live handle (the contract); shared access to an atomic field.
        unsafe { shim.as_ref() }.map_or(-1, |s| s.answer_timeout_ms.load(Ordering::Acquire))
    })
    .unwrap_or(-1)
}

/// What to poll for events (-1 for NULL): readable when a message is waiting to be read
/// with `eg_shim_next_event`. The session's socket, or with the pinger (the default) a
/// descriptor the pinger keeps readable while it holds messages for the caller.
///
/// # Safety
///
/// `shim` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn eg_shim_fd(shim: *const EgShim) -> c_int {
    // SAFETY: NULL or a live handle (the contract); shared access to an atomic field.
    catch_unwind(|| unsafe { shim.as_ref() }.map_or(-1, |s| s.fd.load(Ordering::Acquire)))
        .unwrap_or(-1)
}

/// After the session ended (`EG_ERR_SHUTTING_DOWN`, or -1 saying epochgate closed it):
/// starts a new session for the same VM on the same socket path, with the same pinger
/// options, retrying every 50 ms for up to `timeout_ms` (0: once) while epochgate is not there
/// or is still shutting down. Returns 0 (the handle now drives the new session), or the code
/// of the last failure. The new session is in a **new epoch**: `eg_shim_welcome_epoch` and
/// `eg_shim_welcome_mode` give it, `eg_shim_fd` may have changed. The old epochs are gone with
/// what they held; checkpoint again from the new one.
///
/// # Safety
///
/// `shim` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn eg_shim_reconnect(shim: *mut EgShim, timeout_ms: i64) -> c_int {
    entry(|| {
        if timeout_ms < 0 {
            return Err(bad(format!(
                "timeout_ms is {timeout_ms}: 0 (one attempt) or more"
            )));
        }
        let within = Duration::from_millis(timeout_ms.unsigned_abs());
        // SAFETY: NULL or a live handle (the contract); only a shared reference is made.
        let Some(s) = (unsafe { shim.as_ref() }) else {
            return Err(bad("the eg_shim handle is NULL"));
        };
        // SAFETY: NULL or a live handle (the contract).
        unsafe {
            with_client(shim, |c| {
                c.reconnect_within(within)?;
                s.note(c);
                Ok(())
            })
        }
    })
}

/// Sets how long each call waits for its reply (default 30 s); `timeout_ms < 0` waits forever.
///
/// # Safety
///
/// `shim` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn eg_shim_set_timeout(shim: *mut EgShim, timeout_ms: i32) -> c_int {
    entry(|| {
        let t = u64::try_from(timeout_ms).ok().map(Duration::from_millis);
        // SAFETY: NULL or a live handle (the contract).
        unsafe {
            with_client(shim, |c| {
                c.set_timeout(t);
                Ok(())
            })
        }
    })
}

/// Starts protection; the first protected epoch goes to `epoch_out`.
///
/// # Safety
///
/// `shim` is NULL or a live handle; `epoch_out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn eg_shim_protect(shim: *mut EgShim, epoch_out: *mut u64) -> c_int {
    entry(|| {
        // SAFETY: NULL or a live handle (the contract).
        let epoch = unsafe { with_client(shim, Client::protect) }?;
        // SAFETY: NULL or writable (the contract).
        unsafe { put(epoch_out, epoch) };
        Ok(())
    })
}

/// Seals epoch `epoch`; what it holds goes to `out`.
///
/// # Safety
///
/// `shim` is NULL or a live handle; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn eg_shim_fence(shim: *mut EgShim, epoch: u64, out: *mut EgFenced) -> c_int {
    entry(|| {
        // SAFETY: NULL or a live handle (the contract).
        let f = unsafe { with_client(shim, |c| c.fence(epoch)) }?;
        let f = EgFenced {
            epoch: f.epoch,
            frames: f.frames,
            bytes: f.bytes,
            drain_ns: f.drain_ns,
        };
        // SAFETY: NULL or writable (the contract).
        unsafe { put(out, f) };
        Ok(())
    })
}

/// Commits sealed epoch `epoch`; the frames released go to `frames_out`.
///
/// # Safety
///
/// `shim` is NULL or a live handle; `frames_out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn eg_shim_commit(
    shim: *mut EgShim,
    epoch: u64,
    frames_out: *mut u64,
) -> c_int {
    entry(|| {
        // SAFETY: NULL or a live handle (the contract).
        let frames = unsafe { with_client(shim, |c| c.commit(epoch)) }?;
        // SAFETY: NULL or writable (the contract).
        unsafe { put(frames_out, frames) };
        Ok(())
    })
}

/// Stops protection, releasing (`EG_RELEASE`) or dropping (`EG_DROP`) held frames.
///
/// # Safety
///
/// `shim` is NULL or a live handle; the out-pointers are NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn eg_shim_unprotect(
    shim: *mut EgShim,
    how: u32,
    released_out: *mut u64,
    dropped_out: *mut u64,
) -> c_int {
    entry(|| {
        let how = u8::try_from(how)
            .ok()
            .and_then(Release::from_u8)
            .ok_or_else(|| {
                bad(format!(
                    "how is {how}: expected EG_RELEASE (0) or EG_DROP (1)"
                ))
            })?;
        // SAFETY: NULL or a live handle (the contract).
        let (released, dropped) = unsafe { with_client(shim, |c| c.unprotect(how)) }?;
        // SAFETY: NULL or writable (the contract).
        unsafe {
            put(released_out, released);
            put(dropped_out, dropped);
        }
        Ok(())
    })
}

/// Drops every held frame; how many goes to `frames_out`.
///
/// # Safety
///
/// `shim` is NULL or a live handle; `frames_out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn eg_shim_discard(shim: *mut EgShim, frames_out: *mut u64) -> c_int {
    entry(|| {
        // SAFETY: NULL or a live handle (the contract).
        let frames = unsafe { with_client(shim, Client::discard) }?;
        // SAFETY: NULL or writable (the contract).
        unsafe { put(frames_out, frames) };
        Ok(())
    })
}

/// Makes this standby VM live in `mode` (`EG_MODE_PASSTHROUGH` or `EG_MODE_PROTECTED`).
///
/// # Safety
///
/// `shim` is NULL or a live handle; `announced_out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn eg_shim_promote(
    shim: *mut EgShim,
    mode: u32,
    announced_out: *mut u32,
) -> c_int {
    entry(|| {
        let mode = u8::try_from(mode)
            .ok()
            .and_then(Mode::from_u8)
            .ok_or_else(|| bad(format!("mode {mode} is not an EG_MODE_* value")))?;
        // SAFETY: NULL or a live handle (the contract).
        let announced = unsafe { with_client(shim, |c| c.promote(mode)) }?;
        // SAFETY: NULL or writable (the contract).
        unsafe { put(announced_out, announced) };
        Ok(())
    })
}

/// Returns this VM to standby (its output stops leaving this host; what it held or had
/// waiting is dropped); how many frames were dropped goes to `dropped_out`.
///
/// # Safety
///
/// `shim` is NULL or a live handle; `dropped_out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn eg_shim_demote(shim: *mut EgShim, dropped_out: *mut u64) -> c_int {
    entry(|| {
        // SAFETY: NULL or a live handle (the contract).
        let dropped = unsafe { with_client(shim, Client::demote) }?;
        // SAFETY: NULL or writable (the contract).
        unsafe { put(dropped_out, dropped) };
        Ok(())
    })
}

/// Checks that epochgate answers.
///
/// # Safety
///
/// `shim` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn eg_shim_ping(shim: *mut EgShim) -> c_int {
    // SAFETY: NULL or a live handle (the contract).
    entry(|| unsafe { with_client(shim, Client::ping) })
}

/// The VM's mode and counters, into `out`.
///
/// # Safety
///
/// `shim` is NULL or a live handle; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn eg_shim_stats(shim: *mut EgShim, out: *mut EgStats) -> c_int {
    entry(|| {
        // SAFETY: NULL or a live handle (the contract).
        let s = unsafe { with_client(shim, Client::stats) }?;
        // SAFETY: NULL or writable (the contract).
        unsafe { put(out, EgStats::from(s)) };
        Ok(())
    })
}

/// The next checkpoint request, waiting up to `timeout_ms` (< 0: forever): 1 = one was
/// stored in `out`, 0 = none came (or the callback got them), -1 = failure.
///
/// # Safety
///
/// `shim` is NULL or a live handle; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn eg_shim_next_event(
    shim: *mut EgShim,
    timeout_ms: i32,
    out: *mut EgEvent,
) -> c_int {
    let mut got = false;
    let rc = entry(|| {
        let t = u64::try_from(timeout_ms).ok().map(Duration::from_millis);
        // SAFETY: NULL or a live handle (the contract).
        if let Some(e) = unsafe { with_client(shim, |c| c.next_event(t)) }? {
            got = true;
            // SAFETY: NULL or writable (the contract).
            unsafe { put(out, EgEvent::from(e)) };
        }
        Ok(())
    });
    match rc {
        0 => c_int::from(got),
        // 1 means "got one" here, so a refusal cannot be its code: every failure is -1.
        _ => -1,
    }
}

/// Has every later event passed to `cb(event, user)` as soon as it is read, on the calling
/// thread inside whichever `eg_shim_*` call reads it; a NULL `cb` queues events again.
///
/// # Safety
///
/// `shim` is NULL or a live handle; `cb`, if not NULL, may be called with `user` on any
/// thread that makes a call on this handle, until the handle is closed or the callback
/// replaced.
#[no_mangle]
pub unsafe extern "C" fn eg_shim_set_event_callback(
    shim: *mut EgShim,
    cb: EgEventCallback,
    user: *mut c_void,
) -> c_int {
    entry(|| {
        let user = UserData(user);
        let install = move |c: &mut Client| {
            match cb {
                Some(cb) => c.on_event(move |e| {
                    let event = EgEvent::from(e);
                    // SAFETY: `cb` is the C function the caller registered for exactly this
                    // signature; `event` lives across the call; `user` goes back unchanged,
                    // as the header promises.
                    unsafe { cb(&event, user.get()) }
                }),
                None => c.clear_on_event(),
            }
            Ok(())
        };
        // SAFETY: NULL or a live handle (the contract).
        unsafe { with_client(shim, install) }
    })
}

/// The message of the last failure on this thread ("" if none). The pointer stays valid for
/// the thread's life; the text is replaced by the next failure on this thread.
#[no_mangle]
pub extern "C" fn eg_shim_last_error() -> *const c_char {
    catch_unwind(|| {
        LAST_ERROR
            .try_with(|buf| buf.as_ptr().cast::<c_char>().cast_const())
            .unwrap_or(c"".as_ptr())
    })
    .unwrap_or(c"".as_ptr())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::pair;
    use crate::proto::{Reply, Request, RequestReason};
    use std::mem::{offset_of, size_of};
    use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
    use std::thread;

    // What include/epochgate_shim.h implies on LP64 (x86-64, aarch64): u64 fields aligned to
    // 8, u32 fields to 4, padding after a u32 that precedes a u64 and at the end.
    #[test]
    fn struct_layouts_match_the_header() {
        assert_eq!(size_of::<EgFenced>(), 32);
        assert_eq!(offset_of!(EgFenced, epoch), 0);
        assert_eq!(offset_of!(EgFenced, frames), 8);
        assert_eq!(offset_of!(EgFenced, bytes), 16);
        assert_eq!(offset_of!(EgFenced, drain_ns), 24);

        assert_eq!(size_of::<EgStats>(), 72);
        assert_eq!(offset_of!(EgStats, mode), 0);
        assert_eq!(offset_of!(EgStats, open_epoch), 8);
        assert_eq!(offset_of!(EgStats, sealed_epoch), 16);
        assert_eq!(offset_of!(EgStats, committed_epoch), 24);
        assert_eq!(offset_of!(EgStats, held_frames), 32);
        assert_eq!(offset_of!(EgStats, held_bytes), 40);
        assert_eq!(offset_of!(EgStats, rx_frames), 48);
        assert_eq!(offset_of!(EgStats, tx_frames), 56);
        assert_eq!(offset_of!(EgStats, dropped), 64);

        assert_eq!(size_of::<EgEvent>(), 32);
        assert_eq!(offset_of!(EgEvent, epoch), 0);
        assert_eq!(offset_of!(EgEvent, urgency), 8);
        assert_eq!(offset_of!(EgEvent, within_ns), 16);
        assert_eq!(offset_of!(EgEvent, reason), 24);
    }

    #[test]
    fn header_constants_match_the_protocol() {
        let header = include_str!("../include/epochgate_shim.h");
        let value = |name: &str| -> i64 {
            let at = header
                .find(&format!("{name} = "))
                .unwrap_or_else(|| panic!("{name} is not in the header"));
            let rest = &header[at + name.len() + 3..];
            let end = rest.find(|c: char| !c.is_ascii_digit()).unwrap();
            rest[..end].parse().unwrap()
        };
        for mode in Mode::ALL {
            let name = format!("EG_MODE_{}", mode.name().to_uppercase());
            assert_eq!(value(&name), mode as i64, "{name}");
        }
        assert_eq!(value("EG_RELEASE"), i64::from(EG_RELEASE));
        assert_eq!(value("EG_DROP"), i64::from(EG_DROP));
        assert_eq!(value("EG_URGENCY_NOW"), i64::from(EG_URGENCY_NOW));
        assert_eq!(value("EG_URGENCY_WITHIN"), i64::from(EG_URGENCY_WITHIN));
        for n in 1..=3u8 {
            let r = crate::proto::RequestReason::from_u8(n).unwrap();
            let name = format!("EG_REASON_{}", r.name().to_uppercase().replace('-', "_"));
            assert_eq!(value(&name), i64::from(n), "{name}");
        }
        for n in 1..=15u16 {
            let code = ErrorCode::from_u16(n);
            assert!(!matches!(code, ErrorCode::Other(_)), "code {n} is named");
            let name = format!("EG_ERR_{}", code.name().to_uppercase().replace('-', "_"));
            assert_eq!(value(&name), i64::from(n), "{name}");
        }
        assert_eq!(
            ErrorCode::from_u16(16),
            ErrorCode::Other(16),
            "no 16th code yet"
        );
    }

    #[test]
    fn connect_with_maps_its_arguments_to_options() {
        assert_eq!(options_of(-1, 0).unwrap(), Options::without_pinger());
        assert_eq!(options_of(0, 0).unwrap(), Options::default());
        assert_eq!(
            options_of(25, 400).unwrap(),
            Options {
                pinger: true,
                ping_interval: Some(Duration::from_millis(25)),
                answer_timeout: Some(Duration::from_millis(400)),
                reconnect: None,
            }
        );
        assert!(options_of(-2, 0).is_err());
        assert!(options_of(0, -1).is_err());
    }

    #[test]
    fn null_handles_and_arguments_are_refused() {
        fn last_error() -> String {
            // SAFETY: eg_shim_last_error returns a valid NUL-terminated string.
            unsafe { CStr::from_ptr(eg_shim_last_error()) }
                .to_string_lossy()
                .into_owned()
        }
        let null = std::ptr::null_mut();
        // SAFETY: NULL handles and NULL out-pointers are allowed by every entry point.
        unsafe {
            assert_eq!(eg_shim_protect(null, std::ptr::null_mut()), -1);
            assert!(last_error().contains("NULL"), "{}", last_error());
            assert_eq!(eg_shim_ping(null), -1);
            assert_eq!(eg_shim_demote(null, std::ptr::null_mut()), -1);
            assert_eq!(eg_shim_next_event(null, 0, std::ptr::null_mut()), -1);
            assert_eq!(eg_shim_set_event_callback(null, None, null.cast()), -1);
            assert_eq!(eg_shim_fd(null), -1);
            assert_eq!(eg_shim_reconnect(null, 0), -1);
            assert_eq!(eg_shim_ping_interval_ms(null), -1);
            assert_eq!(eg_shim_answer_timeout_ms(null), -1);
            assert!(
                eg_shim_connect_with(c"/nonexistent/x.sock".as_ptr(), c"web".as_ptr(), -2, 0)
                    .is_null()
            );
            assert!(
                last_error().contains("ping_interval_ms is -2"),
                "{}",
                last_error()
            );
            assert!(
                eg_shim_connect_with(c"/nonexistent/x.sock".as_ptr(), c"web".as_ptr(), 0, -5)
                    .is_null()
            );
            assert!(
                last_error().contains("answer_timeout_ms is -5"),
                "{}",
                last_error()
            );
            assert_eq!(eg_shim_welcome_epoch(null), 0);
            assert_eq!(eg_shim_welcome_mode(null), u32::MAX);
            eg_shim_close(null);
            assert!(eg_shim_connect(std::ptr::null(), c"web".as_ptr()).is_null());
            assert!(last_error().contains("socket_path is NULL"));
            assert!(eg_shim_connect(c"/nonexistent/eg.sock".as_ptr(), std::ptr::null()).is_null());
            assert!(last_error().contains("vm is NULL"));
            assert!(eg_shim_connect(c"/nonexistent/eg.sock".as_ptr(), c"web".as_ptr()).is_null());
            assert!(last_error().starts_with("cannot connect to /nonexistent/eg.sock"));
        }
        assert_eq!(eg_shim_version(), u32::from(VERSION));
    }

    static CALLBACK_EPOCH: AtomicU64 = AtomicU64::new(0);
    static REENTRANT_RC: AtomicI32 = AtomicI32::new(0);

    /// A C-style callback that records the event and tries to call back into its handle.
    unsafe extern "C" fn reentrant(event: *const EgEvent, user: *mut c_void) {
        // SAFETY: the event is valid during the call; `user` is the handle (set below).
        let epoch = unsafe { (*event).epoch };
        CALLBACK_EPOCH.store(epoch, Ordering::SeqCst);
        let shim = user.cast::<EgShim>();
        // SAFETY: a live handle; calling back in must be refused, not alias the client.
        unsafe {
            REENTRANT_RC.store(eg_shim_ping(shim), Ordering::SeqCst);
            eg_shim_close(shim);
        }
    }

    #[test]
    fn a_handle_over_a_pair_delivers_events_and_refuses_reentry() {
        let (conn, mut server) = pair().unwrap();
        let t = thread::spawn(move || {
            server.recv().unwrap();
            server
                .send(&Reply::Welcome {
                    epoch: 3,
                    mode: Mode::Protected,
                })
                .unwrap();
            assert_eq!(server.recv().unwrap(), Request::Stats);
            server
                .send(&Reply::CheckpointRequest {
                    epoch: 5,
                    urgency: Urgency::Now,
                    reason: RequestReason::HighWater,
                })
                .unwrap();
            server.send(&Reply::Stats(STATS)).unwrap();
            let Request::Ping { token } = server.recv().unwrap() else {
                panic!("expected a ping");
            };
            server.send(&Reply::Pong { token }).unwrap();
            server
                .send(&Reply::CheckpointRequest {
                    epoch: 6,
                    urgency: Urgency::Within { ns: 7 },
                    reason: RequestReason::DeferralExpired,
                })
                .unwrap();
            assert!(matches!(server.recv(), Err(ShimError::Closed)));
        });
        let shim = Box::into_raw(EgShim::new(Client::over(conn, "web").unwrap()));
        // SAFETY: `shim` is live until the eg_shim_close at the end; out-pointers are locals.
        unsafe {
            assert_eq!(eg_shim_welcome_epoch(shim), 3);
            assert_eq!(eg_shim_welcome_mode(shim), EG_MODE_PROTECTED);
            assert!(eg_shim_fd(shim) >= 0);
            assert_eq!(
                eg_shim_set_event_callback(shim, Some(reentrant), shim.cast()),
                0
            );
            let mut stats = EgStats::default();
            assert_eq!(eg_shim_stats(shim, &mut stats), 0);
            assert_eq!(stats, EgStats::from(STATS));
            assert_eq!(CALLBACK_EPOCH.load(Ordering::SeqCst), 5);
            assert_eq!(REENTRANT_RC.load(Ordering::SeqCst), -1, "busy");
            // The close from inside the callback was refused: the handle still works.
            assert_eq!(eg_shim_ping(shim), 0);
            assert_eq!(
                eg_shim_set_event_callback(shim, None, std::ptr::null_mut()),
                0
            );
            let mut ev = EgEvent::default();
            assert_eq!(eg_shim_next_event(shim, 10_000, &mut ev), 1);
            assert_eq!(
                ev,
                EgEvent {
                    epoch: 6,
                    urgency: EG_URGENCY_WITHIN,
                    within_ns: 7,
                    reason: RequestReason::DeferralExpired as u32,
                }
            );
            assert_eq!(eg_shim_next_event(shim, 0, &mut ev), 0);
            assert_eq!(eg_shim_fence(shim, 0, std::ptr::null_mut()), -1);
            assert!(CStr::from_ptr(eg_shim_last_error())
                .to_str()
                .unwrap()
                .starts_with("bad argument: fence: bad epoch"));
            assert_eq!(
                eg_shim_unprotect(shim, 2, std::ptr::null_mut(), std::ptr::null_mut()),
                -1
            );
            assert_eq!(eg_shim_promote(shim, 9, std::ptr::null_mut()), -1);
            eg_shim_close(shim);
        }
        t.join().unwrap();
    }

    const STATS: VmStats = VmStats {
        mode: Mode::Protected,
        open_epoch: 4,
        sealed_epoch: 3,
        committed_epoch: 2,
        held_frames: 9,
        held_bytes: 900,
        rx_frames: 50,
        tx_frames: 41,
        dropped: 1,
    };

    #[test]
    fn refusals_map_to_positive_codes() {
        let refused = |code| ShimError::Refused {
            code,
            text: String::new(),
        };
        assert_eq!(code_of(&refused(ErrorCode::WrongEpoch)), 7);
        assert_eq!(code_of(&refused(ErrorCode::Internal)), 14);
        assert_eq!(code_of(&refused(ErrorCode::Other(300))), 300);
        assert_eq!(code_of(&refused(ErrorCode::Other(0))), -1);
        assert_eq!(code_of(&ShimError::Timeout), -1);
        assert_eq!(
            entry(|| panic!("boom")),
            -1,
            "a panic becomes an error return"
        );
        // SAFETY: a valid NUL-terminated string.
        let msg = unsafe { CStr::from_ptr(eg_shim_last_error()) };
        assert!(msg.to_str().unwrap().contains("boom"));
    }

    /// A fake epochgate on `path` for one session: `Hello` gets `epoch`, then `serve` runs.
    fn serve_once(
        path: &Path,
        epoch: u64,
        serve: impl FnOnce(&mut crate::client::ServerEnd) + Send + 'static,
    ) -> std::thread::JoinHandle<()> {
        use socket2::{Domain, SockAddr, Socket, Type};
        let _ = std::fs::remove_file(path);
        let l = Socket::new(Domain::UNIX, Type::SEQPACKET, None).unwrap();
        l.bind(&SockAddr::unix(path).unwrap()).unwrap();
        l.listen(4).unwrap();
        std::thread::spawn(move || {
            let (sock, _) = l.accept().unwrap();
            let mut s = crate::client::ServerEnd::from_socket(sock);
            assert!(matches!(
                s.recv().unwrap(),
                crate::proto::Request::Hello { .. }
            ));
            s.send(&Reply::Welcome {
                epoch,
                mode: Mode::Protected,
            })
            .unwrap();
            serve(&mut s);
        })
    }

    #[test]
    fn reconnect_renews_the_handle_in_a_new_epoch() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        let first = serve_once(&path, 4, |s| {
            s.recv().unwrap();
            s.send(&Reply::error(ErrorCode::ShuttingDown, "stopping"))
                .unwrap();
        });
        let cpath = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
        // SAFETY: valid NUL-terminated strings; `shim` is live until the eg_shim_close.
        unsafe {
            let shim = eg_shim_connect_with(cpath.as_ptr(), c"web".as_ptr(), -1, 0);
            assert!(!shim.is_null());
            assert_eq!(eg_shim_welcome_epoch(shim), 4);
            assert_eq!(
                eg_shim_ping(shim),
                c_int::from(ErrorCode::ShuttingDown.code())
            );
            first.join().unwrap();
            let second = serve_once(&path, 1, |_| {});
            assert_eq!(eg_shim_reconnect(shim, -1), -1, "a negative timeout");
            assert_eq!(eg_shim_reconnect(shim, 10_000), 0);
            assert_eq!(eg_shim_welcome_epoch(shim), 1);
            assert_eq!(eg_shim_welcome_mode(shim), EG_MODE_PROTECTED);
            assert!(eg_shim_fd(shim) >= 0);
            second.join().unwrap();
            eg_shim_close(shim);
        }
    }
}
