//! The control protocol between a VMM shim (client) and the epochgate appliance (server).
//!
//! It runs over `SOCK_SEQPACKET`, so one datagram carries exactly one message and the
//! socket keeps the boundaries; this module is pure encode/decode and does no I/O.
//!
//! # The rule
//!
//! Every message is a fixed 8-byte header followed by a body:
//!
//! | bytes | field      | value                                              |
//! |-------|------------|----------------------------------------------------|
//! | 0..2  | `magic`    | `b"EG"` ([`MAGIC`])                                |
//! | 2     | `version`  | [`VERSION`]                                        |
//! | 3     | `kind`     | `0x01..=0x0B` requests, `0x81..=0x8D` replies      |
//! | 4..8  | `body_len` | `u32` little-endian; the datagram is exactly `8 + body_len` bytes |
//!
//! All integers are little-endian; a string is a `u16` little-endian byte length followed by
//! that many bytes of UTF-8. A whole datagram is at most [`MAX_MESSAGE`] bytes.
//!
//! The decoders ([`decode_request`], [`decode_reply`]) reject, with a [`ProtoError`] saying
//! what and why, anything that is not exactly one well-formed message of this version:
//! short, oversize, foreign, other-version, unknown-kind, misframed, too short or too long
//! a body, or a field out of range. After `decode_*` returned `Ok`, no field is out of
//! range, and encoding the value again gives back the very same bytes (the encoding is
//! canonical), so a peer can never smuggle two readings of one message past the checks.

use std::fmt;
use std::str::FromStr;

/// The protocol version this side speaks; a message carrying another one is refused.
pub const VERSION: u8 = 1;
/// The first two bytes of every message.
pub const MAGIC: [u8; 2] = *b"EG";
/// Length of the fixed header that precedes every body.
pub const HEADER_LEN: usize = 8;
/// Largest whole datagram (header + body) either side accepts.
pub const MAX_MESSAGE: usize = 1024;
/// Longest VM name, in bytes of UTF-8, that `Hello` may carry.
pub const MAX_VM_NAME: usize = 64;
/// Longest `Error` text, in bytes of UTF-8.
pub const MAX_TEXT: usize = 512;

const K_HELLO: u8 = 0x01;
const K_PROTECT: u8 = 0x02;
const K_FENCE: u8 = 0x03;
const K_COMMIT: u8 = 0x04;
const K_UNPROTECT: u8 = 0x05;
const K_DISCARD: u8 = 0x06;
const K_PROMOTE: u8 = 0x07;
const K_PING: u8 = 0x08;
const K_STATS: u8 = 0x09;
const K_DEMOTE: u8 = 0x0A;
const K_LIVENESS: u8 = 0x0B;

const K_WELCOME: u8 = 0x81;
const K_PROTECTED: u8 = 0x82;
const K_FENCED: u8 = 0x83;
const K_COMMITTED: u8 = 0x84;
const K_UNPROTECTED: u8 = 0x85;
const K_DISCARDED: u8 = 0x86;
const K_PROMOTED: u8 = 0x87;
const K_PONG: u8 = 0x88;
const K_STATS_REPLY: u8 = 0x89;
const K_CHECKPOINT_REQUEST: u8 = 0x8A;
const K_ERROR: u8 = 0x8B;
const K_DEMOTED: u8 = 0x8C;
const K_LIVENESS_REPLY: u8 = 0x8D;

fn request_kind_name(kind: u8) -> Option<&'static str> {
    Some(match kind {
        K_HELLO => "hello",
        K_PROTECT => "protect",
        K_FENCE => "fence",
        K_COMMIT => "commit",
        K_UNPROTECT => "unprotect",
        K_DISCARD => "discard",
        K_PROMOTE => "promote",
        K_PING => "ping",
        K_STATS => "stats",
        K_DEMOTE => "demote",
        K_LIVENESS => "liveness",
        _ => return None,
    })
}

fn reply_kind_name(kind: u8) -> Option<&'static str> {
    Some(match kind {
        K_WELCOME => "welcome",
        K_PROTECTED => "protected",
        K_FENCED => "fenced",
        K_COMMITTED => "committed",
        K_UNPROTECTED => "unprotected",
        K_DISCARDED => "discarded",
        K_PROMOTED => "promoted",
        K_PONG => "pong",
        K_STATS_REPLY => "stats",
        K_CHECKPOINT_REQUEST => "checkpoint-request",
        K_ERROR => "error",
        K_DEMOTED => "demoted",
        K_LIVENESS_REPLY => "liveness",
        _ => return None,
    })
}

// ---------------------------------------------------------------------------------------
// Small value types
// ---------------------------------------------------------------------------------------

/// What epochgate does with a VM's egress traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Frames go out as they come; nothing is held.
    Passthrough = 0,
    /// Frames are held per epoch and released only when that epoch commits.
    Protected = 1,
    /// The VM is a backup that has not taken over; its egress is not sent.
    Standby = 2,
    /// Protection broke down; the VM needs operator attention.
    Failed = 3,
}

impl Mode {
    /// Every mode, in wire-code order.
    pub const ALL: [Mode; 4] = [
        Mode::Passthrough,
        Mode::Protected,
        Mode::Standby,
        Mode::Failed,
    ];

    /// The lowercase name used in logs, the CLI and [`FromStr`].
    pub fn name(self) -> &'static str {
        match self {
            Mode::Passthrough => "passthrough",
            Mode::Protected => "protected",
            Mode::Standby => "standby",
            Mode::Failed => "failed",
        }
    }

    /// The mode with wire code `v`, if there is one.
    pub fn from_u8(v: u8) -> Option<Mode> {
        Mode::ALL.into_iter().find(|m| *m as u8 == v)
    }

    /// Whether `Promote` may name this mode as its target.
    pub fn is_promote_target(self) -> bool {
        matches!(self, Mode::Passthrough | Mode::Protected)
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Mode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Mode::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| {
                format!("unknown mode {s:?}: expected passthrough, protected, standby or failed")
            })
    }
}

/// What `Unprotect` does with the frames still held when protection ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Release {
    /// Send them.
    Release = 0,
    /// Throw them away.
    Drop = 1,
}

impl Release {
    /// The lowercase name used in logs, the CLI and [`FromStr`].
    pub fn name(self) -> &'static str {
        match self {
            Release::Release => "release",
            Release::Drop => "drop",
        }
    }

    /// The choice with wire code `v`, if there is one.
    pub fn from_u8(v: u8) -> Option<Release> {
        match v {
            0 => Some(Release::Release),
            1 => Some(Release::Drop),
            _ => None,
        }
    }
}

impl fmt::Display for Release {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Release {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "release" => Ok(Release::Release),
            "drop" => Ok(Release::Drop),
            _ => Err(format!(
                "unknown release choice {s:?}: expected release or drop"
            )),
        }
    }
}

/// How soon the appliance wants the checkpoint it asks for.
///
/// On the wire: a `u8` tag (0 = now, 1 = within) and a `u64` of nanoseconds, which must be 0
/// for `Now` so that each value has a single encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Urgency {
    /// As soon as possible.
    Now,
    /// Within `ns` nanoseconds of the request being sent.
    Within {
        /// The deadline, in nanoseconds.
        ns: u64,
    },
}

/// Why the appliance asks for a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequestReason {
    /// A frame arrived that policy says must not wait for the next periodic checkpoint.
    ImmediateFrame = 1,
    /// Held frames have waited as long as the deferral limit allows.
    DeferralExpired = 2,
    /// The hold buffer reached its high-water mark.
    HighWater = 3,
}

impl RequestReason {
    /// The lowercase name used in logs and the CLI.
    pub fn name(self) -> &'static str {
        match self {
            RequestReason::ImmediateFrame => "immediate-frame",
            RequestReason::DeferralExpired => "deferral-expired",
            RequestReason::HighWater => "high-water",
        }
    }

    /// The reason with wire code `v`, if there is one.
    pub fn from_u8(v: u8) -> Option<RequestReason> {
        match v {
            1 => Some(RequestReason::ImmediateFrame),
            2 => Some(RequestReason::DeferralExpired),
            3 => Some(RequestReason::HighWater),
            _ => None,
        }
    }
}

impl fmt::Display for RequestReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why the appliance refused a command; the `u16` wire code is in parentheses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// (1) Malformed, truncated or oversize message, or an unknown kind.
    BadMessage,
    /// (2) Wrong protocol version.
    Version,
    /// (3) No VM of that name.
    UnknownVm,
    /// (4) Another session has adopted that VM.
    VmBusy,
    /// (5) A command before `Hello`.
    NotAdopted,
    /// (6) A second `Hello` on a session.
    AlreadyAdopted,
    /// (7) The epoch named is not the one the command applies to.
    WrongEpoch,
    /// (8) Commit of an epoch that is not sealed.
    NotSealed,
    /// (9) The command needs the VM to be protected.
    NotProtected,
    /// (10) The command is not valid in the VM's current mode.
    WrongMode,
    /// (11) The appliance cannot take the command now.
    Busy,
    /// (12) The peer may not do that.
    PermissionDenied,
    /// (13) The appliance is shutting down.
    ShuttingDown,
    /// (14) The appliance failed internally.
    Internal,
    /// (15) The session missed its pings for `control.liveness_timeout_ms`: its VM is failed
    /// and the session is over.
    LivenessTimeout,
    /// A code this version does not know, kept so that newer peers stay understood.
    ///
    /// Only codes with no named variant (0 and 16 and up) are valid here: `Other(1)` would
    /// encode as `BadMessage` and not round-trip, so [`Reply::validate`] rejects it.
    Other(u16),
}

impl ErrorCode {
    const KNOWN: [ErrorCode; 15] = [
        ErrorCode::BadMessage,
        ErrorCode::Version,
        ErrorCode::UnknownVm,
        ErrorCode::VmBusy,
        ErrorCode::NotAdopted,
        ErrorCode::AlreadyAdopted,
        ErrorCode::WrongEpoch,
        ErrorCode::NotSealed,
        ErrorCode::NotProtected,
        ErrorCode::WrongMode,
        ErrorCode::Busy,
        ErrorCode::PermissionDenied,
        ErrorCode::ShuttingDown,
        ErrorCode::Internal,
        ErrorCode::LivenessTimeout,
    ];

    /// The wire code.
    pub fn code(self) -> u16 {
        match self {
            ErrorCode::BadMessage => 1,
            ErrorCode::Version => 2,
            ErrorCode::UnknownVm => 3,
            ErrorCode::VmBusy => 4,
            ErrorCode::NotAdopted => 5,
            ErrorCode::AlreadyAdopted => 6,
            ErrorCode::WrongEpoch => 7,
            ErrorCode::NotSealed => 8,
            ErrorCode::NotProtected => 9,
            ErrorCode::WrongMode => 10,
            ErrorCode::Busy => 11,
            ErrorCode::PermissionDenied => 12,
            ErrorCode::ShuttingDown => 13,
            ErrorCode::Internal => 14,
            ErrorCode::LivenessTimeout => 15,
            ErrorCode::Other(n) => n,
        }
    }

    /// The code for wire value `n`; values this version does not know become `Other(n)`.
    pub fn from_u16(n: u16) -> ErrorCode {
        ErrorCode::KNOWN
            .into_iter()
            .find(|c| c.code() == n)
            .unwrap_or(ErrorCode::Other(n))
    }

    /// The lowercase name used in logs and the CLI (`"other"` for [`ErrorCode::Other`]).
    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::BadMessage => "bad-message",
            ErrorCode::Version => "version",
            ErrorCode::UnknownVm => "unknown-vm",
            ErrorCode::VmBusy => "vm-busy",
            ErrorCode::NotAdopted => "not-adopted",
            ErrorCode::AlreadyAdopted => "already-adopted",
            ErrorCode::WrongEpoch => "wrong-epoch",
            ErrorCode::NotSealed => "not-sealed",
            ErrorCode::NotProtected => "not-protected",
            ErrorCode::WrongMode => "wrong-mode",
            ErrorCode::Busy => "busy",
            ErrorCode::PermissionDenied => "permission-denied",
            ErrorCode::ShuttingDown => "shutting-down",
            ErrorCode::Internal => "internal",
            ErrorCode::LivenessTimeout => "liveness-timeout",
            ErrorCode::Other(_) => "other",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ErrorCode::Other(n) => write!(f, "other ({n})"),
            c => f.write_str(c.name()),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Messages
// ---------------------------------------------------------------------------------------

/// A message from the VMM shim to the appliance.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Request {
    /// Adopt the VM named `vm` for this session; must come first (kind 0x01).
    Hello {
        /// The protocol version the client speaks (normally [`VERSION`]); never 0.
        version: u8,
        /// 1..=[`MAX_VM_NAME`] bytes of UTF-8, no control characters, no whitespace at
        /// either end. [`Request::hello`] checks this.
        vm: String,
    },
    /// Start holding the VM's egress per epoch (kind 0x02).
    Protect,
    /// Seal epoch `epoch` (≥ 1): frames sent after this belong to the next one (kind 0x03).
    Fence {
        /// The epoch to seal.
        epoch: u64,
    },
    /// The checkpoint of sealed epoch `epoch` (≥ 1) is durable: release its frames (kind 0x04).
    Commit {
        /// The epoch to commit.
        epoch: u64,
    },
    /// Stop protecting; held frames are released or dropped as `how` says (kind 0x05).
    Unprotect {
        /// What to do with frames still held.
        how: Release,
    },
    /// Drop every held frame, e.g. after a failed checkpoint (kind 0x06).
    Discard,
    /// Make this (standby) VM live in `mode`, which must be passthrough or protected
    /// (kind 0x07).
    Promote {
        /// The mode to go live in.
        mode: Mode,
    },
    /// Liveness check; the appliance echoes `token` in `Pong` (kind 0x08).
    Ping {
        /// Any value, echoed back.
        token: u64,
    },
    /// Ask for the VM's counters (kind 0x09).
    Stats,
    /// Return this live (or failed) VM to standby: its output stops leaving this host, and
    /// everything it holds or has waiting is dropped (kind 0x0A). The opposite of `Promote`,
    /// for an HA manager that moves the VM's output to another host.
    Demote,
    /// Ask for the session's liveness parameters (kind 0x0B): answered with
    /// [`Reply::Liveness`], before or after `Hello`. Added after version 1 shipped, so an older
    /// epochgate answers it with an `Error` (`bad-message`, unknown kind) and changes nothing:
    /// a shim that gets that falls back to its own settings.
    Liveness,
}

/// The VM's state and counters, as the `Stats` reply carries them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VmStats {
    /// The VM's current mode.
    pub mode: Mode,
    /// The epoch frames are currently being added to (0 if none).
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

/// A message from the appliance to the VMM shim: an answer to a [`Request`], or an event.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Reply {
    /// `Hello` accepted: the VM's current epoch and mode (kind 0x81).
    Welcome {
        /// The VM's open epoch (0 if none).
        epoch: u64,
        /// The VM's current mode.
        mode: Mode,
    },
    /// `Protect` done; frames now go into `epoch` (kind 0x82).
    Protected {
        /// The first protected epoch.
        epoch: u64,
    },
    /// `Fence` done: `epoch` is sealed with `frames` frames of `bytes` bytes; sealing took
    /// `drain_ns` nanoseconds (kind 0x83).
    Fenced {
        /// The sealed epoch.
        epoch: u64,
        /// Frames held in it.
        frames: u64,
        /// Bytes held in it.
        bytes: u64,
        /// Time taken to drain in-flight frames into it.
        drain_ns: u64,
    },
    /// `Commit` done: `frames` frames of `epoch` were released (kind 0x84).
    Committed {
        /// The committed epoch.
        epoch: u64,
        /// Frames released.
        frames: u64,
    },
    /// `Unprotect` done (kind 0x85).
    Unprotected {
        /// Held frames that were sent.
        released: u64,
        /// Held frames that were dropped.
        dropped: u64,
    },
    /// `Discard` done (kind 0x86).
    Discarded {
        /// Held frames that were dropped.
        frames: u64,
    },
    /// `Promote` done: the VM is live in `mode` (passthrough or protected), and `announced`
    /// gratuitous announcements were sent for it (kind 0x87).
    Promoted {
        /// The mode the VM is now in.
        mode: Mode,
        /// Announcements sent.
        announced: u32,
    },
    /// `Demote` done: the VM is in standby; `dropped` frames it held or had waiting were
    /// dropped (kind 0x8C).
    Demoted {
        /// Frames dropped.
        dropped: u64,
    },
    /// Answer to `Liveness` (kind 0x8D): ping at least every `ping_interval_ms` while idle;
    /// a session silent for `timeout_ms` is failed (0: epochgate does not time sessions out).
    Liveness {
        /// `control.ping_interval_ms`: how often a shim pings while idle (never 0).
        ping_interval_ms: u64,
        /// `control.liveness_timeout_ms` (0: off).
        timeout_ms: u64,
    },
    /// Answer to `Ping` (kind 0x88).
    Pong {
        /// The token from the `Ping`.
        token: u64,
    },
    /// Answer to `Stats` (kind 0x89).
    Stats(VmStats),
    /// Unsolicited event: the appliance wants epoch `epoch` checkpointed (kind 0x8A).
    CheckpointRequest {
        /// The epoch to checkpoint.
        epoch: u64,
        /// How soon.
        urgency: Urgency,
        /// Why.
        reason: RequestReason,
    },
    /// The request was refused (kind 0x8B). `text` is at most [`MAX_TEXT`] bytes and may be
    /// empty; [`Reply::error`] truncates it to fit.
    Error {
        /// What went wrong, for programs.
        code: ErrorCode,
        /// What went wrong, for people.
        text: String,
    },
}

// ---------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------

/// Why a datagram was not accepted as a message (or a value is not a valid one).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    /// Fewer bytes than the header.
    #[error("message of {got} bytes is shorter than the {HEADER_LEN}-byte header")]
    Truncated {
        /// The datagram length.
        got: usize,
    },
    /// More bytes than [`MAX_MESSAGE`].
    #[error("message of {len} bytes exceeds the maximum of {MAX_MESSAGE}")]
    Oversize {
        /// The datagram length.
        len: usize,
    },
    /// The first two bytes are not [`MAGIC`].
    #[error("not an epochgate control message (bad magic)")]
    BadMagic,
    /// The header names another protocol version.
    #[error("protocol version {got} is not supported (this side speaks {VERSION})")]
    Version {
        /// The version in the header.
        got: u8,
    },
    /// The kind is not one this direction carries.
    #[error("unknown message kind 0x{kind:02x}")]
    UnknownKind {
        /// The kind byte.
        kind: u8,
    },
    /// The header's `body_len` disagrees with the datagram's length.
    #[error("{kind} header declares a body of {declared} bytes but the datagram carries {actual}")]
    Length {
        /// The message kind's name.
        kind: &'static str,
        /// `body_len` from the header.
        declared: usize,
        /// Bytes after the header.
        actual: usize,
    },
    /// The body's length is wrong for its kind (too short, or trailing bytes).
    #[error("{kind} body is {got} bytes but must be {expected}")]
    Body {
        /// The message kind's name.
        kind: &'static str,
        /// The length the kind needs (for a kind with a string: the least it needs, or
        /// where its last field ended).
        expected: usize,
        /// The body's length.
        got: usize,
    },
    /// A field's value is out of range.
    #[error("{kind}: bad {field}: {why}")]
    Field {
        /// The message kind's name.
        kind: &'static str,
        /// The field's name.
        field: &'static str,
        /// What is wrong with it.
        why: String,
    },
}

impl ProtoError {
    /// The [`ErrorCode`] to answer a peer with when its message failed to decode.
    pub fn code(&self) -> ErrorCode {
        match self {
            ProtoError::Version { .. } => ErrorCode::Version,
            _ => ErrorCode::BadMessage,
        }
    }
}

fn field_err(kind: &'static str, field: &'static str, why: impl Into<String>) -> ProtoError {
    ProtoError::Field {
        kind,
        field,
        why: why.into(),
    }
}

// ---------------------------------------------------------------------------------------
// Field checks, shared by the decoders and `validate` so the two cannot drift apart
// ---------------------------------------------------------------------------------------

fn check_epoch(kind: &'static str, epoch: u64) -> Result<u64, ProtoError> {
    if epoch == 0 {
        return Err(field_err(
            kind,
            "epoch",
            "epoch 0 does not exist (epochs start at 1)",
        ));
    }
    Ok(epoch)
}

fn check_ping_interval(ms: u64) -> Result<(), ProtoError> {
    if ms == 0 {
        return Err(field_err("liveness", "ping_interval_ms", "must not be 0"));
    }
    Ok(())
}

fn check_hello_version(version: u8) -> Result<u8, ProtoError> {
    if version == 0 {
        return Err(field_err(
            "hello",
            "version",
            "version 0 is not a protocol version",
        ));
    }
    Ok(version)
}

fn check_vm_name(vm: &str) -> Result<(), ProtoError> {
    let why = if vm.is_empty() {
        "the name is empty".to_string()
    } else if vm.len() > MAX_VM_NAME {
        format!(
            "the name is {} bytes, longer than the maximum of {MAX_VM_NAME}",
            vm.len()
        )
    } else if let Some(c) = vm.chars().find(|c| c.is_control()) {
        format!("the name contains the control character {c:?}")
    } else if vm.trim() != vm {
        "the name starts or ends with whitespace".to_string()
    } else {
        return Ok(());
    };
    Err(field_err("hello", "vm", why))
}

fn check_text(text: &str) -> Result<(), ProtoError> {
    if text.len() > MAX_TEXT {
        return Err(field_err(
            "error",
            "text",
            format!(
                "the text is {} bytes, longer than the maximum of {MAX_TEXT}",
                text.len()
            ),
        ));
    }
    Ok(())
}

fn check_promote_mode(kind: &'static str, mode: Mode) -> Result<Mode, ProtoError> {
    if !mode.is_promote_target() {
        return Err(field_err(
            kind,
            "mode",
            format!("a VM cannot be promoted to {mode} (only passthrough or protected)"),
        ));
    }
    Ok(mode)
}

fn check_error_code(code: ErrorCode) -> Result<(), ProtoError> {
    if let ErrorCode::Other(n) = code {
        if ErrorCode::from_u16(n) != code {
            return Err(field_err(
                "error",
                "code",
                format!("Other({n}) must be written as {}", ErrorCode::from_u16(n)),
            ));
        }
    }
    Ok(())
}

fn mode_from(kind: &'static str, v: u8) -> Result<Mode, ProtoError> {
    Mode::from_u8(v).ok_or_else(|| field_err(kind, "mode", format!("unknown mode code {v}")))
}

/// The longest prefix of `s` that is at most `max` bytes and ends on a char boundary.
fn truncate_at_char(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or_default()
}

// ---------------------------------------------------------------------------------------
// Reader and writer
// ---------------------------------------------------------------------------------------

/// Cursor over one body; every read is checked, so no input can make it panic.
struct Reader<'a> {
    kind: &'static str,
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(kind: &'static str, buf: &'a [u8]) -> Self {
        Reader { kind, buf, pos: 0 }
    }

    fn body_err(&self, expected: usize) -> ProtoError {
        ProtoError::Body {
            kind: self.kind,
            expected,
            got: self.buf.len(),
        }
    }

    /// For fixed-size kinds: the body must be exactly `n` bytes.
    fn exact(&self, n: usize) -> Result<(), ProtoError> {
        if self.buf.len() != n {
            return Err(self.body_err(n));
        }
        Ok(())
    }

    /// For kinds with a string: the body must hold at least the fixed part.
    fn at_least(&self, n: usize) -> Result<(), ProtoError> {
        if self.buf.len() < n {
            return Err(self.body_err(n));
        }
        Ok(())
    }

    fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], ProtoError> {
        let end = self.pos.saturating_add(n);
        let bytes = self
            .buf
            .get(self.pos..end)
            .ok_or_else(|| self.body_err(end))?;
        self.pos = end;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], ProtoError> {
        let bytes = self.take(N)?;
        <[u8; N]>::try_from(bytes).map_err(|_| self.body_err(self.pos))
    }

    fn u8(&mut self) -> Result<u8, ProtoError> {
        Ok(u8::from_le_bytes(self.array()?))
    }

    fn u16(&mut self) -> Result<u16, ProtoError> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, ProtoError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, ProtoError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// A `u16`-length-prefixed UTF-8 string of at most `max` bytes.
    fn str(&mut self, field: &'static str, max: usize) -> Result<String, ProtoError> {
        let len = usize::from(self.u16()?);
        if len > self.remaining() {
            return Err(field_err(
                self.kind,
                field,
                format!(
                    "its length {len} points past the end of the body ({} bytes left)",
                    self.remaining()
                ),
            ));
        }
        if len > max {
            return Err(field_err(
                self.kind,
                field,
                format!("it is {len} bytes, longer than the maximum of {max}"),
            ));
        }
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|e| field_err(self.kind, field, format!("it is not valid UTF-8: {e}")))
    }

    /// No trailing bytes may follow the last field.
    fn finish(self) -> Result<(), ProtoError> {
        if self.pos != self.buf.len() {
            return Err(self.body_err(self.pos));
        }
        Ok(())
    }
}

/// Builds one message; the header's length is filled in by [`Writer::finish`].
struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    fn new(kind: u8) -> Self {
        let mut buf = Vec::with_capacity(64);
        buf.extend_from_slice(&MAGIC);
        buf.push(VERSION);
        buf.push(kind);
        buf.extend_from_slice(&[0; 4]);
        Writer { buf }
    }

    fn u8(mut self, v: u8) -> Self {
        self.buf.push(v);
        self
    }

    fn u16(mut self, v: u16) -> Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }

    fn u32(mut self, v: u32) -> Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }

    fn u64(mut self, v: u64) -> Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// Writes at most `max` bytes of `s`, cut at a char boundary: the length prefix can
    /// then neither wrap nor push the message past [`MAX_MESSAGE`].
    fn str(self, s: &str, max: usize) -> Self {
        let s = truncate_at_char(s, max);
        let len = u16::try_from(s.len()).expect("string limits are below u16::MAX");
        let mut w = self.u16(len);
        w.buf.extend_from_slice(s.as_bytes());
        w
    }

    fn finish(mut self) -> Vec<u8> {
        let body_len = self.buf.len() - HEADER_LEN;
        let body_len = u32::try_from(body_len).expect("bodies are smaller than MAX_MESSAGE");
        self.buf[4..HEADER_LEN].copy_from_slice(&body_len.to_le_bytes());
        debug_assert!(self.buf.len() <= MAX_MESSAGE);
        self.buf
    }
}

// ---------------------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------------------

fn urgency_parts(u: Urgency) -> (u8, u64) {
    match u {
        Urgency::Now => (0, 0),
        Urgency::Within { ns } => (1, ns),
    }
}

const STATS_BODY: usize = 1 + 8 * 8;

impl Request {
    /// A `Hello` for VM `vm` at this side's [`VERSION`], if `vm` is a valid name.
    pub fn hello(vm: &str) -> Result<Request, ProtoError> {
        check_vm_name(vm)?;
        Ok(Request::Hello {
            version: VERSION,
            vm: vm.to_string(),
        })
    }

    /// The wire kind code.
    pub fn kind(&self) -> u8 {
        match self {
            Request::Hello { .. } => K_HELLO,
            Request::Protect => K_PROTECT,
            Request::Fence { .. } => K_FENCE,
            Request::Commit { .. } => K_COMMIT,
            Request::Unprotect { .. } => K_UNPROTECT,
            Request::Discard => K_DISCARD,
            Request::Promote { .. } => K_PROMOTE,
            Request::Ping { .. } => K_PING,
            Request::Stats => K_STATS,
            Request::Demote => K_DEMOTE,
            Request::Liveness => K_LIVENESS,
        }
    }

    /// The lowercase name of the kind, as logs and errors use it.
    pub fn name(&self) -> &'static str {
        request_kind_name(self.kind()).unwrap_or("unknown")
    }

    /// Checks every field against the range [`decode_request`] enforces: `Ok` here means
    /// `decode_request(&self.encode()) == Ok(self.clone())`.
    pub fn validate(&self) -> Result<(), ProtoError> {
        match self {
            Request::Hello { version, vm } => {
                check_hello_version(*version)?;
                check_vm_name(vm)
            }
            Request::Fence { epoch } => check_epoch("fence", *epoch).map(drop),
            Request::Commit { epoch } => check_epoch("commit", *epoch).map(drop),
            Request::Promote { mode } => check_promote_mode("promote", *mode).map(drop),
            Request::Protect
            | Request::Unprotect { .. }
            | Request::Discard
            | Request::Ping { .. }
            | Request::Stats
            | Request::Demote
            | Request::Liveness => Ok(()),
        }
    }

    /// The datagram for this request.
    ///
    /// Values are written as they are; one that fails [`Request::validate`] (say, a `Fence`
    /// of epoch 0) yields a message the peer will reject. The one exception is a `Hello`
    /// name over [`MAX_VM_NAME`] bytes, which is cut at a char boundary so the message stays
    /// well framed. Use [`Request::hello`] to get a name checked up front.
    pub fn encode(&self) -> Vec<u8> {
        let w = Writer::new(self.kind());
        match self {
            Request::Hello { version, vm } => w.u8(*version).str(vm, MAX_VM_NAME),
            Request::Protect
            | Request::Discard
            | Request::Stats
            | Request::Demote
            | Request::Liveness => w,
            Request::Fence { epoch } | Request::Commit { epoch } => w.u64(*epoch),
            Request::Unprotect { how } => w.u8(*how as u8),
            Request::Promote { mode } => w.u8(*mode as u8),
            Request::Ping { token } => w.u64(*token),
        }
        .finish()
    }
}

impl Reply {
    /// An `Error` reply; `text` is cut to [`MAX_TEXT`] bytes at a char boundary.
    pub fn error(code: ErrorCode, text: impl Into<String>) -> Reply {
        let mut text = text.into();
        let keep = truncate_at_char(&text, MAX_TEXT).len();
        text.truncate(keep);
        Reply::Error {
            code: ErrorCode::from_u16(code.code()),
            text,
        }
    }

    /// Whether this is an unsolicited event rather than the answer to a request.
    pub fn is_event(&self) -> bool {
        matches!(self, Reply::CheckpointRequest { .. })
    }

    /// The wire kind code.
    pub fn kind(&self) -> u8 {
        match self {
            Reply::Welcome { .. } => K_WELCOME,
            Reply::Protected { .. } => K_PROTECTED,
            Reply::Fenced { .. } => K_FENCED,
            Reply::Committed { .. } => K_COMMITTED,
            Reply::Unprotected { .. } => K_UNPROTECTED,
            Reply::Discarded { .. } => K_DISCARDED,
            Reply::Promoted { .. } => K_PROMOTED,
            Reply::Pong { .. } => K_PONG,
            Reply::Stats(_) => K_STATS_REPLY,
            Reply::CheckpointRequest { .. } => K_CHECKPOINT_REQUEST,
            Reply::Error { .. } => K_ERROR,
            Reply::Demoted { .. } => K_DEMOTED,
            Reply::Liveness { .. } => K_LIVENESS_REPLY,
        }
    }

    /// The lowercase name of the kind, as logs and errors use it.
    pub fn name(&self) -> &'static str {
        reply_kind_name(self.kind()).unwrap_or("unknown")
    }

    /// Checks every field against the range [`decode_reply`] enforces: `Ok` here means
    /// `decode_reply(&self.encode()) == Ok(self.clone())`.
    pub fn validate(&self) -> Result<(), ProtoError> {
        match self {
            Reply::Promoted { mode, .. } => check_promote_mode("promoted", *mode).map(drop),
            Reply::Error { code, text } => {
                check_error_code(*code)?;
                check_text(text)
            }
            Reply::Liveness {
                ping_interval_ms, ..
            } => check_ping_interval(*ping_interval_ms),
            Reply::Welcome { .. }
            | Reply::Protected { .. }
            | Reply::Fenced { .. }
            | Reply::Committed { .. }
            | Reply::Unprotected { .. }
            | Reply::Discarded { .. }
            | Reply::Demoted { .. }
            | Reply::Pong { .. }
            | Reply::Stats(_)
            | Reply::CheckpointRequest { .. } => Ok(()),
        }
    }

    /// The datagram for this reply.
    ///
    /// Values are written as they are; one that fails [`Reply::validate`] yields a message
    /// the peer will reject. The one exception is `Error` text over [`MAX_TEXT`] bytes,
    /// which is cut at a char boundary so the message stays well framed (as
    /// [`Reply::error`] already does).
    pub fn encode(&self) -> Vec<u8> {
        let w = Writer::new(self.kind());
        match self {
            Reply::Welcome { epoch, mode } => w.u64(*epoch).u8(*mode as u8),
            Reply::Protected { epoch } => w.u64(*epoch),
            Reply::Fenced {
                epoch,
                frames,
                bytes,
                drain_ns,
            } => w.u64(*epoch).u64(*frames).u64(*bytes).u64(*drain_ns),
            Reply::Committed { epoch, frames } => w.u64(*epoch).u64(*frames),
            Reply::Unprotected { released, dropped } => w.u64(*released).u64(*dropped),
            Reply::Discarded { frames } => w.u64(*frames),
            Reply::Demoted { dropped } => w.u64(*dropped),
            Reply::Promoted { mode, announced } => w.u8(*mode as u8).u32(*announced),
            Reply::Pong { token } => w.u64(*token),
            Reply::Liveness {
                ping_interval_ms,
                timeout_ms,
            } => w.u64(*ping_interval_ms).u64(*timeout_ms),
            Reply::Stats(s) => w
                .u8(s.mode as u8)
                .u64(s.open_epoch)
                .u64(s.sealed_epoch)
                .u64(s.committed_epoch)
                .u64(s.held_frames)
                .u64(s.held_bytes)
                .u64(s.rx_frames)
                .u64(s.tx_frames)
                .u64(s.dropped),
            Reply::CheckpointRequest {
                epoch,
                urgency,
                reason,
            } => {
                let (tag, ns) = urgency_parts(*urgency);
                w.u64(*epoch).u8(tag).u64(ns).u8(*reason as u8)
            }
            Reply::Error { code, text } => w.u16(code.code()).str(text, MAX_TEXT),
        }
        .finish()
    }
}

// ---------------------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------------------

/// Checks the header in the documented order and returns the kind's name, code and body.
fn split(
    buf: &[u8],
    kind_name: fn(u8) -> Option<&'static str>,
) -> Result<(&'static str, u8, &[u8]), ProtoError> {
    let Some((header, body)) = buf.split_at_checked(HEADER_LEN) else {
        return Err(ProtoError::Truncated { got: buf.len() });
    };
    if buf.len() > MAX_MESSAGE {
        return Err(ProtoError::Oversize { len: buf.len() });
    }
    let Ok([m0, m1, version, kind, l0, l1, l2, l3]) = <[u8; HEADER_LEN]>::try_from(header) else {
        return Err(ProtoError::Truncated { got: buf.len() });
    };
    if [m0, m1] != MAGIC {
        return Err(ProtoError::BadMagic);
    }
    if version != VERSION {
        return Err(ProtoError::Version { got: version });
    }
    let name = kind_name(kind).ok_or(ProtoError::UnknownKind { kind })?;
    let declared = usize::try_from(u32::from_le_bytes([l0, l1, l2, l3])).unwrap_or(usize::MAX);
    if declared != body.len() {
        return Err(ProtoError::Length {
            kind: name,
            declared,
            actual: body.len(),
        });
    }
    Ok((name, kind, body))
}

/// Decodes one datagram from a client. See the [module docs](self) for what is rejected.
pub fn decode_request(buf: &[u8]) -> Result<Request, ProtoError> {
    let (name, kind, body) = split(buf, request_kind_name)?;
    let mut r = Reader::new(name, body);
    let req = match kind {
        K_HELLO => {
            r.at_least(1 + 2)?;
            let version = check_hello_version(r.u8()?)?;
            let vm = r.str("vm", MAX_VM_NAME)?;
            check_vm_name(&vm)?;
            Request::Hello { version, vm }
        }
        K_PROTECT => {
            r.exact(0)?;
            Request::Protect
        }
        K_FENCE => {
            r.exact(8)?;
            Request::Fence {
                epoch: check_epoch(name, r.u64()?)?,
            }
        }
        K_COMMIT => {
            r.exact(8)?;
            Request::Commit {
                epoch: check_epoch(name, r.u64()?)?,
            }
        }
        K_UNPROTECT => {
            r.exact(1)?;
            let v = r.u8()?;
            let how = Release::from_u8(v)
                .ok_or_else(|| field_err(name, "how", format!("unknown release code {v}")))?;
            Request::Unprotect { how }
        }
        K_DISCARD => {
            r.exact(0)?;
            Request::Discard
        }
        K_DEMOTE => {
            r.exact(0)?;
            Request::Demote
        }
        K_PROMOTE => {
            r.exact(1)?;
            let mode = check_promote_mode(name, mode_from(name, r.u8()?)?)?;
            Request::Promote { mode }
        }
        K_PING => {
            r.exact(8)?;
            Request::Ping { token: r.u64()? }
        }
        K_STATS => {
            r.exact(0)?;
            Request::Stats
        }
        K_LIVENESS => {
            r.exact(0)?;
            Request::Liveness
        }
        _ => return Err(ProtoError::UnknownKind { kind }),
    };
    r.finish()?;
    Ok(req)
}

/// Decodes one datagram from the appliance. See the [module docs](self) for what is
/// rejected.
pub fn decode_reply(buf: &[u8]) -> Result<Reply, ProtoError> {
    let (name, kind, body) = split(buf, reply_kind_name)?;
    let mut r = Reader::new(name, body);
    let reply = match kind {
        K_WELCOME => {
            r.exact(9)?;
            Reply::Welcome {
                epoch: r.u64()?,
                mode: mode_from(name, r.u8()?)?,
            }
        }
        K_PROTECTED => {
            r.exact(8)?;
            Reply::Protected { epoch: r.u64()? }
        }
        K_FENCED => {
            r.exact(32)?;
            Reply::Fenced {
                epoch: r.u64()?,
                frames: r.u64()?,
                bytes: r.u64()?,
                drain_ns: r.u64()?,
            }
        }
        K_COMMITTED => {
            r.exact(16)?;
            Reply::Committed {
                epoch: r.u64()?,
                frames: r.u64()?,
            }
        }
        K_UNPROTECTED => {
            r.exact(16)?;
            Reply::Unprotected {
                released: r.u64()?,
                dropped: r.u64()?,
            }
        }
        K_DISCARDED => {
            r.exact(8)?;
            Reply::Discarded { frames: r.u64()? }
        }
        K_DEMOTED => {
            r.exact(8)?;
            Reply::Demoted { dropped: r.u64()? }
        }
        K_PROMOTED => {
            r.exact(5)?;
            Reply::Promoted {
                mode: check_promote_mode(name, mode_from(name, r.u8()?)?)?,
                announced: r.u32()?,
            }
        }
        K_PONG => {
            r.exact(8)?;
            Reply::Pong { token: r.u64()? }
        }
        K_LIVENESS_REPLY => {
            r.exact(16)?;
            let ping_interval_ms = r.u64()?;
            check_ping_interval(ping_interval_ms)?;
            Reply::Liveness {
                ping_interval_ms,
                timeout_ms: r.u64()?,
            }
        }
        K_STATS_REPLY => {
            r.exact(STATS_BODY)?;
            Reply::Stats(VmStats {
                mode: mode_from(name, r.u8()?)?,
                open_epoch: r.u64()?,
                sealed_epoch: r.u64()?,
                committed_epoch: r.u64()?,
                held_frames: r.u64()?,
                held_bytes: r.u64()?,
                rx_frames: r.u64()?,
                tx_frames: r.u64()?,
                dropped: r.u64()?,
            })
        }
        K_CHECKPOINT_REQUEST => {
            r.exact(8 + 1 + 8 + 1)?;
            let epoch = r.u64()?;
            let tag = r.u8()?;
            let ns = r.u64()?;
            let urgency = match (tag, ns) {
                (0, 0) => Urgency::Now,
                (0, _) => {
                    return Err(field_err(
                        name,
                        "urgency",
                        format!("\"now\" must carry 0 ns, not {ns}"),
                    ))
                }
                (1, ns) => Urgency::Within { ns },
                (t, _) => return Err(field_err(name, "urgency", format!("unknown tag {t}"))),
            };
            let v = r.u8()?;
            let reason = RequestReason::from_u8(v)
                .ok_or_else(|| field_err(name, "reason", format!("unknown reason code {v}")))?;
            Reply::CheckpointRequest {
                epoch,
                urgency,
                reason,
            }
        }
        K_ERROR => {
            r.at_least(2 + 2)?;
            let code = ErrorCode::from_u16(r.u16()?);
            let text = r.str("text", MAX_TEXT)?;
            Reply::Error { code, text }
        }
        _ => return Err(ProtoError::UnknownKind { kind }),
    };
    r.finish()?;
    Ok(reply)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // --- helpers ---------------------------------------------------------------------

    /// Pins a request to its exact wire bytes, both ways.
    fn pin_request(bytes: &[u8], req: Request) {
        assert_eq!(req.validate(), Ok(()), "{req:?} should be valid");
        assert_eq!(req.encode(), bytes, "encoding of {req:?}");
        assert_eq!(decode_request(bytes), Ok(req));
    }

    /// Pins a reply to its exact wire bytes, both ways.
    fn pin_reply(bytes: &[u8], reply: Reply) {
        assert_eq!(reply.validate(), Ok(()), "{reply:?} should be valid");
        assert_eq!(reply.encode(), bytes, "encoding of {reply:?}");
        assert_eq!(decode_reply(bytes), Ok(reply));
    }

    /// A well-framed message of `kind` around `body`, for bodies the encoder will not make.
    fn frame(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![b'E', b'G', VERSION, kind];
        v.extend_from_slice(&u32::try_from(body.len()).unwrap().to_le_bytes());
        v.extend_from_slice(body);
        v
    }

    fn body_of(msg: &[u8]) -> &[u8] {
        &msg[HEADER_LEN..]
    }

    fn hello_body(version: u8, name: &[u8]) -> Vec<u8> {
        let mut b = vec![version];
        b.extend_from_slice(&u16::try_from(name.len()).unwrap().to_le_bytes());
        b.extend_from_slice(name);
        b
    }

    fn field_of(e: ProtoError) -> (&'static str, &'static str) {
        match e {
            ProtoError::Field { kind, field, .. } => (kind, field),
            other => panic!("expected a Field error, got {other:?}"),
        }
    }

    fn sample_requests() -> Vec<Request> {
        vec![
            Request::hello("vm-0").unwrap(),
            Request::Hello {
                version: u8::MAX,
                vm: "é".repeat(MAX_VM_NAME / 2),
            },
            Request::Protect,
            Request::Fence { epoch: 1 },
            Request::Fence { epoch: u64::MAX },
            Request::Commit { epoch: u64::MAX },
            Request::Unprotect {
                how: Release::Release,
            },
            Request::Unprotect { how: Release::Drop },
            Request::Discard,
            Request::Promote {
                mode: Mode::Passthrough,
            },
            Request::Promote {
                mode: Mode::Protected,
            },
            Request::Ping { token: 0 },
            Request::Ping { token: u64::MAX },
            Request::Stats,
            Request::Demote,
            Request::Liveness,
        ]
    }

    fn sample_replies() -> Vec<Reply> {
        let mut out = vec![
            Reply::Liveness {
                ping_interval_ms: 1,
                timeout_ms: 0,
            },
            Reply::Liveness {
                ping_interval_ms: u64::MAX,
                timeout_ms: u64::MAX,
            },
            Reply::Welcome {
                epoch: 0,
                mode: Mode::Standby,
            },
            Reply::Protected { epoch: u64::MAX },
            Reply::Fenced {
                epoch: u64::MAX,
                frames: 0,
                bytes: u64::MAX,
                drain_ns: 1,
            },
            Reply::Committed {
                epoch: 3,
                frames: u64::MAX,
            },
            Reply::Unprotected {
                released: 0,
                dropped: u64::MAX,
            },
            Reply::Discarded { frames: 0 },
            Reply::Demoted { dropped: u64::MAX },
            Reply::Promoted {
                mode: Mode::Protected,
                announced: u32::MAX,
            },
            Reply::Pong { token: u64::MAX },
            Reply::Stats(VmStats {
                mode: Mode::Failed,
                open_epoch: u64::MAX,
                sealed_epoch: 1,
                committed_epoch: 2,
                held_frames: 3,
                held_bytes: 4,
                rx_frames: 5,
                tx_frames: 6,
                dropped: u64::MAX,
            }),
            Reply::CheckpointRequest {
                epoch: 1,
                urgency: Urgency::Now,
                reason: RequestReason::HighWater,
            },
            Reply::CheckpointRequest {
                epoch: u64::MAX,
                urgency: Urgency::Within { ns: 0 },
                reason: RequestReason::DeferralExpired,
            },
            Reply::error(ErrorCode::Other(0), ""),
            Reply::error(ErrorCode::Other(u16::MAX), "x".repeat(MAX_TEXT)),
        ];
        out.extend(Mode::ALL.map(|mode| Reply::Welcome { epoch: 9, mode }));
        out
    }

    // --- round trips -----------------------------------------------------------------

    #[test]
    fn every_request_kind_round_trips() {
        let samples = sample_requests();
        let mut kinds: Vec<u8> = samples.iter().map(Request::kind).collect();
        kinds.dedup();
        assert_eq!(kinds, (K_HELLO..=K_LIVENESS).collect::<Vec<_>>());
        for req in samples {
            assert_eq!(req.validate(), Ok(()));
            let bytes = req.encode();
            assert!(bytes.len() <= MAX_MESSAGE);
            assert_eq!(decode_request(&bytes), Ok(req.clone()), "{req:?}");
            // A request is never a reply.
            assert_eq!(
                decode_reply(&bytes),
                Err(ProtoError::UnknownKind { kind: req.kind() })
            );
        }
    }

    #[test]
    fn every_reply_kind_round_trips() {
        let samples = sample_replies();
        let mut kinds: Vec<u8> = samples.iter().map(Reply::kind).collect();
        kinds.sort_unstable();
        kinds.dedup();
        assert_eq!(kinds, (K_WELCOME..=K_LIVENESS_REPLY).collect::<Vec<_>>());
        for reply in samples {
            assert_eq!(reply.validate(), Ok(()));
            let bytes = reply.encode();
            assert!(bytes.len() <= MAX_MESSAGE);
            assert_eq!(decode_reply(&bytes), Ok(reply.clone()), "{reply:?}");
            assert_eq!(
                decode_request(&bytes),
                Err(ProtoError::UnknownKind { kind: reply.kind() })
            );
        }
    }

    #[test]
    fn names_and_events() {
        let names: Vec<_> = sample_requests().iter().map(Request::name).collect();
        for n in [
            "hello",
            "protect",
            "fence",
            "commit",
            "unprotect",
            "discard",
            "promote",
            "ping",
            "stats",
            "demote",
        ] {
            assert!(names.contains(&n), "{n}");
        }
        let replies = sample_replies();
        let names: Vec<_> = replies.iter().map(Reply::name).collect();
        for n in [
            "welcome",
            "protected",
            "fenced",
            "committed",
            "unprotected",
            "discarded",
            "promoted",
            "pong",
            "stats",
            "checkpoint-request",
            "error",
            "demoted",
        ] {
            assert!(names.contains(&n), "{n}");
        }
        for r in &replies {
            assert_eq!(r.is_event(), matches!(r, Reply::CheckpointRequest { .. }));
        }
    }

    #[test]
    fn small_types_names_and_codes() {
        for m in Mode::ALL {
            assert_eq!(m.to_string().parse::<Mode>(), Ok(m));
            assert_eq!(Mode::from_u8(m as u8), Some(m));
        }
        assert_eq!(Mode::from_u8(4), None);
        assert!("Protected"
            .parse::<Mode>()
            .unwrap_err()
            .contains("passthrough"));
        for r in [Release::Release, Release::Drop] {
            assert_eq!(r.to_string().parse::<Release>(), Ok(r));
            assert_eq!(Release::from_u8(r as u8), Some(r));
        }
        assert_eq!(Release::from_u8(2), None);
        assert!("keep".parse::<Release>().unwrap_err().contains("drop"));
        assert_eq!(RequestReason::from_u8(0), None);
        assert_eq!(RequestReason::from_u8(4), None);
        assert_eq!(RequestReason::ImmediateFrame.name(), "immediate-frame");
        assert_eq!(RequestReason::DeferralExpired.name(), "deferral-expired");
        assert_eq!(RequestReason::HighWater.name(), "high-water");
        for (n, c) in (1u16..).zip(ErrorCode::KNOWN) {
            assert_eq!(c.code(), n);
            assert_eq!(ErrorCode::from_u16(n), c);
            assert_ne!(c.name(), "other");
        }
        assert_eq!(ErrorCode::from_u16(0), ErrorCode::Other(0));
        assert_eq!(ErrorCode::from_u16(16), ErrorCode::Other(16));
        assert_eq!(ErrorCode::Other(16).name(), "other");
        assert_eq!(ErrorCode::VmBusy.name(), "vm-busy");
        assert_eq!(ErrorCode::PermissionDenied.to_string(), "permission-denied");
    }

    // --- pinned wire bytes -------------------------------------------------------------

    static HELLO_BYTES: [u8; 15] = [
        b'E', b'G', 0x01, 0x01, 0x07, 0x00, 0x00, 0x00, // header: body 7
        0x01, // version 1
        0x04, 0x00, b'v', b'm', b'-', b'7', // "vm-7"
    ];

    #[test]
    fn wire_hello() {
        pin_request(&HELLO_BYTES, Request::hello("vm-7").unwrap());
    }

    static PROTECT_BYTES: [u8; 8] = [b'E', b'G', 0x01, 0x02, 0, 0, 0, 0];

    #[test]
    fn wire_protect() {
        pin_request(&PROTECT_BYTES, Request::Protect);
    }

    static FENCE_BYTES: [u8; 16] = [
        b'E', b'G', 0x01, 0x03, 0x08, 0x00, 0x00, 0x00, //
        0x2a, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // epoch 42
    ];

    #[test]
    fn wire_fence() {
        pin_request(&FENCE_BYTES, Request::Fence { epoch: 42 });
    }

    static COMMIT_BYTES: [u8; 16] = [
        b'E', b'G', 0x01, 0x04, 0x08, 0x00, 0x00, 0x00, //
        0x08, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01, // epoch 0x0102030405060708
    ];

    #[test]
    fn wire_commit() {
        pin_request(
            &COMMIT_BYTES,
            Request::Commit {
                epoch: 0x0102_0304_0506_0708,
            },
        );
    }

    static UNPROTECT_BYTES: [u8; 9] = [b'E', b'G', 0x01, 0x05, 0x01, 0, 0, 0, 0x01];

    #[test]
    fn wire_unprotect() {
        pin_request(&UNPROTECT_BYTES, Request::Unprotect { how: Release::Drop });
    }

    static DISCARD_BYTES: [u8; 8] = [b'E', b'G', 0x01, 0x06, 0, 0, 0, 0];

    static DEMOTE_BYTES: [u8; 8] = [b'E', b'G', 0x01, 0x0A, 0, 0, 0, 0];

    #[test]
    fn wire_demote() {
        pin_request(&DEMOTE_BYTES, Request::Demote);
    }

    static DEMOTED_BYTES: [u8; 16] = [
        b'E', b'G', 0x01, 0x8C, 0x08, 0, 0, 0, //
        0x2A, 0, 0, 0, 0, 0, 0, 0, // dropped 42
    ];

    #[test]
    fn wire_demoted() {
        pin_reply(&DEMOTED_BYTES, Reply::Demoted { dropped: 42 });
    }

    #[test]
    fn wire_discard() {
        pin_request(&DISCARD_BYTES, Request::Discard);
    }

    static PROMOTE_BYTES: [u8; 9] = [b'E', b'G', 0x01, 0x07, 0x01, 0, 0, 0, 0x01];

    #[test]
    fn wire_promote() {
        pin_request(
            &PROMOTE_BYTES,
            Request::Promote {
                mode: Mode::Protected,
            },
        );
    }

    static PING_BYTES: [u8; 16] = [
        b'E', b'G', 0x01, 0x08, 0x08, 0, 0, 0, //
        0xef, 0xbe, 0xad, 0xde, 0, 0, 0, 0, // token 0xdeadbeef
    ];

    #[test]
    fn wire_ping() {
        pin_request(&PING_BYTES, Request::Ping { token: 0xdead_beef });
    }

    static STATS_REQ_BYTES: [u8; 8] = [b'E', b'G', 0x01, 0x09, 0, 0, 0, 0];

    #[test]
    fn wire_stats_request() {
        pin_request(&STATS_REQ_BYTES, Request::Stats);
    }

    static WELCOME_BYTES: [u8; 17] = [
        b'E', b'G', 0x01, 0x81, 0x09, 0, 0, 0, //
        0x05, 0, 0, 0, 0, 0, 0, 0,    // epoch 5
        0x02, // standby
    ];

    #[test]
    fn wire_welcome() {
        pin_reply(
            &WELCOME_BYTES,
            Reply::Welcome {
                epoch: 5,
                mode: Mode::Standby,
            },
        );
    }

    static PROTECTED_BYTES: [u8; 16] = [
        b'E', b'G', 0x01, 0x82, 0x08, 0, 0, 0, //
        0x01, 0, 0, 0, 0, 0, 0, 0, // epoch 1
    ];

    #[test]
    fn wire_protected() {
        pin_reply(&PROTECTED_BYTES, Reply::Protected { epoch: 1 });
    }

    static FENCED_BYTES: [u8; 40] = [
        b'E', b'G', 0x01, 0x83, 0x20, 0, 0, 0, //
        0x2a, 0, 0, 0, 0, 0, 0, 0, // epoch 42
        0x03, 0, 0, 0, 0, 0, 0, 0, // frames 3
        0xdc, 0x05, 0, 0, 0, 0, 0, 0, // bytes 1500
        0x40, 0x42, 0x0f, 0, 0, 0, 0, 0, // drain_ns 1_000_000
    ];

    #[test]
    fn wire_fenced() {
        pin_reply(
            &FENCED_BYTES,
            Reply::Fenced {
                epoch: 42,
                frames: 3,
                bytes: 1500,
                drain_ns: 1_000_000,
            },
        );
    }

    static COMMITTED_BYTES: [u8; 24] = [
        b'E', b'G', 0x01, 0x84, 0x10, 0, 0, 0, //
        0x2a, 0, 0, 0, 0, 0, 0, 0, // epoch 42
        0x03, 0, 0, 0, 0, 0, 0, 0, // frames 3
    ];

    #[test]
    fn wire_committed() {
        pin_reply(
            &COMMITTED_BYTES,
            Reply::Committed {
                epoch: 42,
                frames: 3,
            },
        );
    }

    static UNPROTECTED_BYTES: [u8; 24] = [
        b'E', b'G', 0x01, 0x85, 0x10, 0, 0, 0, //
        0x07, 0, 0, 0, 0, 0, 0, 0, // released 7
        0x01, 0, 0, 0, 0, 0, 0, 0, // dropped 1
    ];

    #[test]
    fn wire_unprotected() {
        pin_reply(
            &UNPROTECTED_BYTES,
            Reply::Unprotected {
                released: 7,
                dropped: 1,
            },
        );
    }

    static DISCARDED_BYTES: [u8; 16] = [
        b'E', b'G', 0x01, 0x86, 0x08, 0, 0, 0, //
        0x09, 0, 0, 0, 0, 0, 0, 0, // frames 9
    ];

    #[test]
    fn wire_discarded() {
        pin_reply(&DISCARDED_BYTES, Reply::Discarded { frames: 9 });
    }

    static PROMOTED_BYTES: [u8; 13] = [
        b'E', b'G', 0x01, 0x87, 0x05, 0, 0, 0,    //
        0x00, // passthrough
        0x02, 0x01, 0, 0, // announced 258
    ];

    #[test]
    fn wire_promoted() {
        pin_reply(
            &PROMOTED_BYTES,
            Reply::Promoted {
                mode: Mode::Passthrough,
                announced: 258,
            },
        );
    }

    static PONG_BYTES: [u8; 16] = [
        b'E', b'G', 0x01, 0x88, 0x08, 0, 0, 0, //
        0xef, 0xbe, 0xad, 0xde, 0, 0, 0, 0, // token 0xdeadbeef
    ];

    #[test]
    fn wire_pong() {
        pin_reply(&PONG_BYTES, Reply::Pong { token: 0xdead_beef });
    }

    #[test]
    fn wire_liveness() {
        pin_request(&[b'E', b'G', 0x01, 0x0B, 0, 0, 0, 0], Request::Liveness);
        let bytes = [
            b'E', b'G', 0x01, 0x8D, 16, 0, 0, 0, //
            0xE8, 0x03, 0, 0, 0, 0, 0, 0, // ping_interval_ms 1000
            0xA0, 0x0F, 0, 0, 0, 0, 0, 0, // timeout_ms 4000
        ];
        pin_reply(
            &bytes,
            Reply::Liveness {
                ping_interval_ms: 1000,
                timeout_ms: 4000,
            },
        );
        let mut zero = bytes;
        zero[8] = 0;
        zero[9] = 0;
        assert_eq!(
            field_of(decode_reply(&zero).unwrap_err()),
            ("liveness", "ping_interval_ms")
        );
        assert!(decode_reply(&frame(0x8D, &[0; 15])).is_err());
        assert!(decode_request(&frame(0x0B, &[0])).is_err());
    }

    static STATS_REPLY_BYTES: [u8; 73] = [
        b'E', b'G', 0x01, 0x89, 0x41, 0, 0, 0,    //
        0x01, // protected
        1, 0, 0, 0, 0, 0, 0, 0, // open_epoch
        2, 0, 0, 0, 0, 0, 0, 0, // sealed_epoch
        3, 0, 0, 0, 0, 0, 0, 0, // committed_epoch
        4, 0, 0, 0, 0, 0, 0, 0, // held_frames
        5, 0, 0, 0, 0, 0, 0, 0, // held_bytes
        6, 0, 0, 0, 0, 0, 0, 0, // rx_frames
        7, 0, 0, 0, 0, 0, 0, 0, // tx_frames
        8, 0, 0, 0, 0, 0, 0, 0, // dropped
    ];

    #[test]
    fn wire_stats_reply() {
        pin_reply(
            &STATS_REPLY_BYTES,
            Reply::Stats(VmStats {
                mode: Mode::Protected,
                open_epoch: 1,
                sealed_epoch: 2,
                committed_epoch: 3,
                held_frames: 4,
                held_bytes: 5,
                rx_frames: 6,
                tx_frames: 7,
                dropped: 8,
            }),
        );
    }

    static CHECKPOINT_REQUEST_BYTES: [u8; 26] = [
        b'E', b'G', 0x01, 0x8a, 0x12, 0, 0, 0, //
        0x2b, 0, 0, 0, 0, 0, 0, 0,    // epoch 43
        0x01, // within
        0x80, 0x96, 0x98, 0, 0, 0, 0, 0,    // 10_000_000 ns
        0x03, // high-water
    ];

    static CHECKPOINT_NOW_BYTES: [u8; 26] = [
        b'E', b'G', 0x01, 0x8a, 0x12, 0, 0, 0, //
        0x2b, 0, 0, 0, 0, 0, 0, 0,    // epoch 43
        0x00, // now
        0, 0, 0, 0, 0, 0, 0, 0,    // ns must be 0
        0x01, // immediate-frame
    ];

    #[test]
    fn wire_checkpoint_request() {
        pin_reply(
            &CHECKPOINT_REQUEST_BYTES,
            Reply::CheckpointRequest {
                epoch: 43,
                urgency: Urgency::Within { ns: 10_000_000 },
                reason: RequestReason::HighWater,
            },
        );
        pin_reply(
            &CHECKPOINT_NOW_BYTES,
            Reply::CheckpointRequest {
                epoch: 43,
                urgency: Urgency::Now,
                reason: RequestReason::ImmediateFrame,
            },
        );
    }

    static ERROR_BYTES: [u8; 19] = [
        b'E', b'G', 0x01, 0x8b, 0x0b, 0, 0, 0, //
        0x07, 0x00, // wrong-epoch
        0x07, 0x00, b'w', b'a', b'n', b't', b' ', b'4', b'2', // "want 42"
    ];

    static ERROR_EMPTY_BYTES: [u8; 12] = [
        b'E', b'G', 0x01, 0x8b, 0x04, 0, 0, 0, //
        0x10, 0x00, // code 16, unknown to this version
        0x00, 0x00, // ""
    ];

    #[test]
    fn wire_error() {
        pin_reply(&ERROR_BYTES, Reply::error(ErrorCode::WrongEpoch, "want 42"));
        pin_reply(&ERROR_EMPTY_BYTES, Reply::error(ErrorCode::Other(16), ""));
    }

    // --- rejections: framing -----------------------------------------------------------

    #[test]
    fn rejects_short_buffers() {
        for len in 0..HEADER_LEN {
            let buf = &PROTECT_BYTES[..len];
            assert_eq!(decode_request(buf), Err(ProtoError::Truncated { got: len }));
            assert_eq!(decode_reply(buf), Err(ProtoError::Truncated { got: len }));
        }
        assert_eq!(
            ProtoError::Truncated { got: 3 }.to_string(),
            "message of 3 bytes is shorter than the 8-byte header"
        );
    }

    #[test]
    fn rejects_oversize() {
        // A well-formed header claiming the whole 1025 bytes: size is checked before all else.
        let big = frame(K_ERROR, &[0; MAX_MESSAGE + 1 - HEADER_LEN]);
        assert_eq!(big.len(), 1025);
        assert_eq!(decode_reply(&big), Err(ProtoError::Oversize { len: 1025 }));
        assert_eq!(
            decode_request(&[0; 1025]),
            Err(ProtoError::Oversize { len: 1025 })
        );
        assert_eq!(
            ProtoError::Oversize { len: 1025 }.to_string(),
            "message of 1025 bytes exceeds the maximum of 1024"
        );
    }

    #[test]
    fn rejects_bad_magic() {
        for magic in [*b"GE", *b"eg", [0, 0], *b"EH"] {
            let mut m = FENCE_BYTES;
            m[..2].copy_from_slice(&magic);
            assert_eq!(decode_request(&m), Err(ProtoError::BadMagic));
            assert_eq!(decode_reply(&m), Err(ProtoError::BadMagic));
        }
    }

    #[test]
    fn rejects_other_versions() {
        for v in [0, 2, 0xff] {
            let mut m = FENCE_BYTES;
            m[2] = v;
            let err = decode_request(&m).unwrap_err();
            assert_eq!(err, ProtoError::Version { got: v });
            assert_eq!(err.code(), ErrorCode::Version);
        }
        let mut m = FENCED_BYTES;
        m[2] = 2;
        assert_eq!(decode_reply(&m), Err(ProtoError::Version { got: 2 }));
        assert_eq!(
            ProtoError::Version { got: 2 }.to_string(),
            "protocol version 2 is not supported (this side speaks 1)"
        );
    }

    #[test]
    fn rejects_unknown_kinds() {
        for kind in [0x00, 0x0c, 0x7f, 0x80, 0x8e, 0xff] {
            let m = frame(kind, &[]);
            assert_eq!(decode_request(&m), Err(ProtoError::UnknownKind { kind }));
            assert_eq!(decode_reply(&m), Err(ProtoError::UnknownKind { kind }));
        }
        // Each direction refuses the other's kinds.
        assert_eq!(
            decode_request(&FENCED_BYTES),
            Err(ProtoError::UnknownKind { kind: K_FENCED })
        );
        assert_eq!(
            decode_reply(&FENCE_BYTES),
            Err(ProtoError::UnknownKind { kind: K_FENCE })
        );
        assert_eq!(
            ProtoError::UnknownKind { kind: 0x0b }.to_string(),
            "unknown message kind 0x0b"
        );
        assert_eq!(
            ProtoError::UnknownKind { kind: 0 }.code(),
            ErrorCode::BadMessage
        );
    }

    #[test]
    fn rejects_header_length_mismatch() {
        // Declared longer than carried (datagram cut short).
        let cut = &FENCE_BYTES[..12];
        assert_eq!(
            decode_request(cut),
            Err(ProtoError::Length {
                kind: "fence",
                declared: 8,
                actual: 4
            })
        );
        // Declared shorter than carried (bytes appended).
        let mut long = FENCE_BYTES.to_vec();
        long.push(0);
        assert_eq!(
            decode_request(&long),
            Err(ProtoError::Length {
                kind: "fence",
                declared: 8,
                actual: 9
            })
        );
        // A body_len that does not even fit in a message.
        let mut huge = PROTECT_BYTES;
        huge[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            decode_request(&huge),
            Err(ProtoError::Length {
                kind: "protect",
                declared: u32::MAX as usize,
                actual: 0
            })
        );
        let mut m = ERROR_BYTES;
        m[4] = 0x0a;
        assert!(matches!(
            decode_reply(&m),
            Err(ProtoError::Length {
                kind: "error",
                declared: 10,
                actual: 11
            })
        ));
    }

    #[test]
    fn rejects_wrong_body_length_for_fixed_kinds() {
        let requests: [&[u8]; 9] = [
            &DEMOTE_BYTES,
            &PROTECT_BYTES,
            &FENCE_BYTES,
            &COMMIT_BYTES,
            &UNPROTECT_BYTES,
            &DISCARD_BYTES,
            &PROMOTE_BYTES,
            &PING_BYTES,
            &STATS_REQ_BYTES,
        ];
        for msg in requests {
            let (kind, body) = (msg[3], body_of(msg));
            let name = request_kind_name(kind).unwrap();
            if let Some((_, short)) = body.split_last() {
                assert_eq!(
                    decode_request(&frame(kind, short)),
                    Err(ProtoError::Body {
                        kind: name,
                        expected: body.len(),
                        got: body.len() - 1
                    })
                );
            }
            let mut long = body.to_vec();
            long.push(0);
            assert_eq!(
                decode_request(&frame(kind, &long)),
                Err(ProtoError::Body {
                    kind: name,
                    expected: body.len(),
                    got: body.len() + 1
                })
            );
        }
        let replies: [&[u8]; 11] = [
            &DEMOTED_BYTES,
            &WELCOME_BYTES,
            &PROTECTED_BYTES,
            &FENCED_BYTES,
            &COMMITTED_BYTES,
            &UNPROTECTED_BYTES,
            &DISCARDED_BYTES,
            &PROMOTED_BYTES,
            &PONG_BYTES,
            &STATS_REPLY_BYTES,
            &CHECKPOINT_REQUEST_BYTES,
        ];
        for msg in replies {
            let (kind, body) = (msg[3], body_of(msg));
            let name = reply_kind_name(kind).unwrap();
            let short = &body[..body.len() - 1];
            assert_eq!(
                decode_reply(&frame(kind, short)),
                Err(ProtoError::Body {
                    kind: name,
                    expected: body.len(),
                    got: body.len() - 1
                })
            );
            let mut long = body.to_vec();
            long.push(0);
            assert_eq!(
                decode_reply(&frame(kind, &long)),
                Err(ProtoError::Body {
                    kind: name,
                    expected: body.len(),
                    got: body.len() + 1
                })
            );
        }
    }

    #[test]
    fn rejects_wrong_body_length_for_string_kinds() {
        // Too short for the fixed part.
        for len in 0..3 {
            assert_eq!(
                decode_request(&frame(K_HELLO, &body_of(&HELLO_BYTES)[..len])),
                Err(ProtoError::Body {
                    kind: "hello",
                    expected: 3,
                    got: len
                })
            );
        }
        for len in 0..4 {
            assert_eq!(
                decode_reply(&frame(K_ERROR, &body_of(&ERROR_BYTES)[..len])),
                Err(ProtoError::Body {
                    kind: "error",
                    expected: 4,
                    got: len
                })
            );
        }
        // A byte after the string.
        let mut long = body_of(&HELLO_BYTES).to_vec();
        long.push(b'x');
        assert_eq!(
            decode_request(&frame(K_HELLO, &long)),
            Err(ProtoError::Body {
                kind: "hello",
                expected: 7,
                got: 8
            })
        );
        let mut long = body_of(&ERROR_BYTES).to_vec();
        long.push(0);
        assert_eq!(
            decode_reply(&frame(K_ERROR, &long)),
            Err(ProtoError::Body {
                kind: "error",
                expected: 11,
                got: 12
            })
        );
    }

    // --- rejections: fields ------------------------------------------------------------

    #[test]
    fn rejects_epoch_zero() {
        for req in [Request::Fence { epoch: 0 }, Request::Commit { epoch: 0 }] {
            let err = decode_request(&req.encode()).unwrap_err();
            assert_eq!(field_of(err.clone()), (req.name(), "epoch"));
            assert_eq!(req.validate(), Err(err));
        }
    }

    #[test]
    fn rejects_unknown_codes() {
        for v in [2, 3, 0xff] {
            let err = decode_request(&frame(K_UNPROTECT, &[v])).unwrap_err();
            assert_eq!(field_of(err), ("unprotect", "how"));
        }
        for v in [4, 0xff] {
            let err = decode_request(&frame(K_PROMOTE, &[v])).unwrap_err();
            assert_eq!(field_of(err), ("promote", "mode"));
            let err = decode_reply(&frame(K_PROMOTED, &[v, 0, 0, 0, 0])).unwrap_err();
            assert_eq!(field_of(err), ("promoted", "mode"));
            let mut m = WELCOME_BYTES;
            m[16] = v;
            assert_eq!(field_of(decode_reply(&m).unwrap_err()), ("welcome", "mode"));
            let mut m = STATS_REPLY_BYTES;
            m[8] = v;
            assert_eq!(field_of(decode_reply(&m).unwrap_err()), ("stats", "mode"));
        }
        // Urgency tag 2 and 0xff.
        for tag in [2, 0xff] {
            let mut m = CHECKPOINT_REQUEST_BYTES;
            m[16] = tag;
            assert_eq!(
                field_of(decode_reply(&m).unwrap_err()),
                ("checkpoint-request", "urgency")
            );
        }
        // "now" with a non-zero deadline has two encodings of one value: refused.
        let mut m = CHECKPOINT_NOW_BYTES;
        m[17] = 1;
        assert_eq!(
            field_of(decode_reply(&m).unwrap_err()),
            ("checkpoint-request", "urgency")
        );
        for reason in [0, 4, 0xff] {
            let mut m = CHECKPOINT_REQUEST_BYTES;
            m[25] = reason;
            assert_eq!(
                field_of(decode_reply(&m).unwrap_err()),
                ("checkpoint-request", "reason")
            );
        }
    }

    #[test]
    fn rejects_promote_to_standby_or_failed() {
        for mode in [Mode::Standby, Mode::Failed] {
            let req = Request::Promote { mode };
            let err = decode_request(&req.encode()).unwrap_err();
            assert_eq!(field_of(err.clone()), ("promote", "mode"));
            assert_eq!(req.validate(), Err(err));
            let reply = Reply::Promoted { mode, announced: 1 };
            let err = decode_reply(&reply.encode()).unwrap_err();
            assert_eq!(field_of(err.clone()), ("promoted", "mode"));
            assert_eq!(reply.validate(), Err(err));
        }
    }

    #[test]
    fn rejects_bad_hello() {
        let bad_names: [&[u8]; 9] = [
            b"",
            &[b'a'; MAX_VM_NAME + 1],
            b"\xff\xfe",
            b"vm\xc3",               // cut inside a char
            b"vm\n1",                // control char inside
            b"\x7fvm",               // DEL is a control char
            b" vm",                  // leading whitespace
            b"vm\t",                 // trailing whitespace (and control)
            "vm\u{3000}".as_bytes(), // trailing ideographic space
        ];
        for name in bad_names {
            let err = decode_request(&frame(K_HELLO, &hello_body(1, name))).unwrap_err();
            assert_eq!(field_of(err.clone()), ("hello", "vm"), "{name:?}");
            assert_eq!(err.code(), ErrorCode::BadMessage);
            if let Ok(s) = std::str::from_utf8(name) {
                if s.len() <= MAX_VM_NAME {
                    assert_eq!(Request::hello(s), Err(err), "{name:?}");
                }
            }
        }
        // Version 0 in the body.
        let err = decode_request(&frame(K_HELLO, &hello_body(0, b"vm"))).unwrap_err();
        assert_eq!(field_of(err), ("hello", "version"));
        // A string length that points past the body.
        let mut body = hello_body(1, b"vm");
        body[1] = 3;
        let err = decode_request(&frame(K_HELLO, &body)).unwrap_err();
        assert_eq!(field_of(err), ("hello", "vm"));
        let mut body = hello_body(1, b"vm");
        body[1..3].copy_from_slice(&u16::MAX.to_le_bytes());
        let err = decode_request(&frame(K_HELLO, &body)).unwrap_err();
        assert_eq!(field_of(err), ("hello", "vm"));
        // The longest name is fine; `hello` refuses a longer one outright.
        let longest = "a".repeat(MAX_VM_NAME);
        pin_request(
            &frame(K_HELLO, &hello_body(1, longest.as_bytes())),
            Request::hello(&longest).unwrap(),
        );
        assert_eq!(
            field_of(Request::hello(&"a".repeat(MAX_VM_NAME + 1)).unwrap_err()),
            ("hello", "vm")
        );
        // Inner spaces and non-ASCII are allowed.
        assert!(Request::hello("my vm ü").is_ok());
    }

    #[test]
    fn encode_cuts_overlong_strings_at_a_char_boundary() {
        // 3-byte chars: 64 bytes cuts inside the 22nd, so 21 chars (63 bytes) survive.
        let req = Request::Hello {
            version: 1,
            vm: "€".repeat(40),
        };
        assert!(req.validate().is_err());
        assert_eq!(
            decode_request(&req.encode()),
            Ok(Request::Hello {
                version: 1,
                vm: "€".repeat(21)
            })
        );
        let reply = Reply::Error {
            code: ErrorCode::Busy,
            text: "€".repeat(200),
        };
        assert!(reply.validate().is_err());
        let bytes = reply.encode();
        assert!(bytes.len() <= MAX_MESSAGE);
        assert_eq!(
            decode_reply(&bytes),
            Ok(Reply::error(ErrorCode::Busy, "€".repeat(170)))
        );
        assert_eq!(
            Reply::error(ErrorCode::Busy, "€".repeat(200)),
            Reply::error(ErrorCode::Busy, "€".repeat(170))
        );
    }

    #[test]
    fn rejects_bad_error_text() {
        // 513 bytes of text inside a body that holds them all.
        let mut body = vec![0x0b, 0x00];
        body.extend_from_slice(&u16::try_from(MAX_TEXT + 1).unwrap().to_le_bytes());
        body.extend(std::iter::repeat_n(b'x', MAX_TEXT + 1));
        let err = decode_reply(&frame(K_ERROR, &body)).unwrap_err();
        assert_eq!(field_of(err), ("error", "text"));
        // Invalid UTF-8.
        let err = decode_reply(&frame(K_ERROR, &[1, 0, 2, 0, 0xc3, 0x28])).unwrap_err();
        assert_eq!(field_of(err), ("error", "text"));
        // A length past the body.
        let err = decode_reply(&frame(K_ERROR, &[1, 0, 9, 0, b'a'])).unwrap_err();
        assert_eq!(field_of(err), ("error", "text"));
        // Too long a text in a value.
        let reply = Reply::Error {
            code: ErrorCode::Busy,
            text: "x".repeat(MAX_TEXT + 1),
        };
        assert_eq!(field_of(reply.validate().unwrap_err()), ("error", "text"));
    }

    #[test]
    fn unknown_error_codes_are_kept() {
        for n in [0u16, 16, 0x1234, u16::MAX] {
            let mut body = n.to_le_bytes().to_vec();
            body.extend_from_slice(&[0, 0]);
            let m = frame(K_ERROR, &body);
            assert_eq!(
                decode_reply(&m),
                Ok(Reply::Error {
                    code: ErrorCode::Other(n),
                    text: String::new()
                })
            );
        }
        // `Other` spelling a known code is not a valid value; `error` normalises it.
        let bad = Reply::Error {
            code: ErrorCode::Other(2),
            text: String::new(),
        };
        assert_eq!(field_of(bad.validate().unwrap_err()), ("error", "code"));
        assert_eq!(
            Reply::error(ErrorCode::Other(2), ""),
            Reply::error(ErrorCode::Version, "")
        );
    }

    #[test]
    fn error_messages_name_the_problem() {
        let e = decode_request(&frame(K_FENCE, &[0; 8])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "fence: bad epoch: epoch 0 does not exist (epochs start at 1)"
        );
        let e = decode_request(&frame(K_FENCE, &[1; 7])).unwrap_err();
        assert_eq!(e.to_string(), "fence body is 7 bytes but must be 8");
        let e = decode_request(&FENCE_BYTES[..15]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "fence header declares a body of 8 bytes but the datagram carries 7"
        );
        assert_eq!(
            decode_request(b"XXXXXXXX").unwrap_err().to_string(),
            "not an epochgate control message (bad magic)"
        );
    }

    // --- property tests --------------------------------------------------------------

    fn arb_vm_name() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z][a-z0-9._-]{0,63}",
            proptest::collection::vec(any::<char>(), 1..80).prop_filter_map(
                "no valid name left",
                |chars| {
                    let s: String = chars.into_iter().filter(|c| !c.is_control()).collect();
                    let s = truncate_at_char(&s, MAX_VM_NAME).trim().to_string();
                    (!s.is_empty()).then_some(s)
                }
            ),
        ]
    }

    fn arb_text() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<String>(),
            proptest::collection::vec(any::<char>(), 100..600)
                .prop_map(|c| c.into_iter().collect::<String>()),
        ]
        .prop_map(|s| truncate_at_char(&s, MAX_TEXT).to_string())
    }

    fn arb_mode() -> impl Strategy<Value = Mode> {
        proptest::sample::select(Mode::ALL.to_vec())
    }

    fn arb_promote_mode() -> impl Strategy<Value = Mode> {
        proptest::sample::select(vec![Mode::Passthrough, Mode::Protected])
    }

    fn arb_epoch() -> impl Strategy<Value = u64> {
        prop_oneof![Just(1u64), Just(u64::MAX), 1..=u64::MAX]
    }

    fn arb_error_code() -> impl Strategy<Value = ErrorCode> {
        prop_oneof![
            proptest::sample::select(ErrorCode::KNOWN.to_vec()),
            any::<u16>().prop_map(ErrorCode::from_u16),
        ]
    }

    fn arb_request() -> impl Strategy<Value = Request> {
        prop_oneof![
            (1..=u8::MAX, arb_vm_name()).prop_map(|(version, vm)| Request::Hello { version, vm }),
            Just(Request::Protect),
            arb_epoch().prop_map(|epoch| Request::Fence { epoch }),
            arb_epoch().prop_map(|epoch| Request::Commit { epoch }),
            proptest::sample::select(vec![Release::Release, Release::Drop])
                .prop_map(|how| Request::Unprotect { how }),
            Just(Request::Discard),
            arb_promote_mode().prop_map(|mode| Request::Promote { mode }),
            any::<u64>().prop_map(|token| Request::Ping { token }),
            Just(Request::Stats),
            Just(Request::Demote),
            Just(Request::Liveness),
        ]
    }

    fn arb_stats() -> impl Strategy<Value = VmStats> {
        (arb_mode(), any::<[u64; 8]>()).prop_map(|(mode, v)| {
            let [open_epoch, sealed_epoch, committed_epoch, held_frames, held_bytes, rx_frames, tx_frames, dropped] =
                v;
            VmStats {
                mode,
                open_epoch,
                sealed_epoch,
                committed_epoch,
                held_frames,
                held_bytes,
                rx_frames,
                tx_frames,
                dropped,
            }
        })
    }

    fn arb_reply() -> impl Strategy<Value = Reply> {
        let urgency = prop_oneof![
            Just(Urgency::Now),
            any::<u64>().prop_map(|ns| Urgency::Within { ns }),
        ];
        let reason = proptest::sample::select(vec![
            RequestReason::ImmediateFrame,
            RequestReason::DeferralExpired,
            RequestReason::HighWater,
        ]);
        prop_oneof![
            (1..=u64::MAX, any::<u64>()).prop_map(|(ping_interval_ms, timeout_ms)| {
                Reply::Liveness {
                    ping_interval_ms,
                    timeout_ms,
                }
            }),
            (any::<u64>(), arb_mode()).prop_map(|(epoch, mode)| Reply::Welcome { epoch, mode }),
            any::<u64>().prop_map(|epoch| Reply::Protected { epoch }),
            any::<[u64; 4]>().prop_map(|[epoch, frames, bytes, drain_ns]| Reply::Fenced {
                epoch,
                frames,
                bytes,
                drain_ns
            }),
            any::<[u64; 2]>().prop_map(|[epoch, frames]| Reply::Committed { epoch, frames }),
            any::<[u64; 2]>()
                .prop_map(|[released, dropped]| Reply::Unprotected { released, dropped }),
            any::<u64>().prop_map(|frames| Reply::Discarded { frames }),
            any::<u64>().prop_map(|dropped| Reply::Demoted { dropped }),
            (arb_promote_mode(), any::<u32>())
                .prop_map(|(mode, announced)| Reply::Promoted { mode, announced }),
            any::<u64>().prop_map(|token| Reply::Pong { token }),
            arb_stats().prop_map(Reply::Stats),
            (any::<u64>(), urgency, reason).prop_map(|(epoch, urgency, reason)| {
                Reply::CheckpointRequest {
                    epoch,
                    urgency,
                    reason,
                }
            }),
            (arb_error_code(), arb_text()).prop_map(|(code, text)| Reply::Error { code, text }),
        ]
    }

    /// Decodes `buf` both ways; whatever decodes must re-encode to exactly `buf`.
    fn decode_is_canonical(buf: &[u8]) -> Result<(), TestCaseError> {
        if let Ok(req) = decode_request(buf) {
            prop_assert_eq!(req.validate(), Ok(()));
            prop_assert_eq!(req.encode(), buf);
        }
        if let Ok(reply) = decode_reply(buf) {
            prop_assert_eq!(reply.validate(), Ok(()));
            prop_assert_eq!(reply.encode(), buf);
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]

        #[test]
        fn prop_arbitrary_bytes_never_panic(buf in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let _ = decode_request(&buf);
            let _ = decode_reply(&buf);
            decode_is_canonical(&buf)?;
        }

        /// Random bodies behind a valid header reach the body parsers far more often than
        /// fully random bytes do.
        #[test]
        fn prop_framed_bytes_never_panic(
            kind in prop_oneof![K_HELLO..=K_STATS, K_WELCOME..=K_ERROR, any::<u8>()],
            body in proptest::collection::vec(any::<u8>(), 0..80),
        ) {
            decode_is_canonical(&frame(kind, &body))?;
        }

        #[test]
        fn prop_requests_round_trip(req in arb_request()) {
            prop_assert_eq!(req.validate(), Ok(()));
            let bytes = req.encode();
            prop_assert!(bytes.len() <= MAX_MESSAGE);
            prop_assert_eq!(decode_request(&bytes), Ok(req));
        }

        #[test]
        fn prop_replies_round_trip(reply in arb_reply()) {
            prop_assert_eq!(reply.validate(), Ok(()));
            let bytes = reply.encode();
            prop_assert!(bytes.len() <= MAX_MESSAGE);
            prop_assert_eq!(decode_reply(&bytes), Ok(reply));
        }

        #[test]
        fn prop_mutated_requests(
            req in arb_request(),
            at in any::<proptest::sample::Index>(),
            byte in any::<u8>(),
            cut in any::<proptest::sample::Index>(),
        ) {
            let mut bytes = req.encode();
            decode_is_canonical(&bytes[..cut.index(bytes.len())])?;
            let i = at.index(bytes.len());
            bytes[i] = byte;
            decode_is_canonical(&bytes)?;
        }

        #[test]
        fn prop_mutated_replies(
            reply in arb_reply(),
            at in any::<proptest::sample::Index>(),
            byte in any::<u8>(),
            cut in any::<proptest::sample::Index>(),
        ) {
            let mut bytes = reply.encode();
            decode_is_canonical(&bytes[..cut.index(bytes.len())])?;
            let i = at.index(bytes.len());
            bytes[i] = byte;
            decode_is_canonical(&bytes)?;
        }
    }
}
