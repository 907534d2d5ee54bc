//! Packet capture files: reading what tcpdump and Wireshark write, and writing classic pcap.
//!
//! Reads:
//! - classic pcap, microsecond (magic `0xa1b2c3d4`) and nanosecond (`0xa1b23c4d`) timestamps, in
//!   either byte order;
//! - pcapng: Section Header, Interface Description, Enhanced Packet, Simple Packet and the obsolete
//!   Packet blocks, in either byte order (a file may hold several sections of different byte
//!   orders); every other block type is skipped by its length. `if_tsresol` (decimal and binary)
//!   and `if_tsoffset` are honoured.
//!
//! Only Ethernet (link type 1) captures are accepted. Timestamps become nanoseconds since the Unix
//! epoch, saturating instead of overflowing. No captured length (nor a pcap snaplen) may exceed
//! [`MAX_FRAME_LEN`] (256 KiB).
//!
//! Writes classic pcap ([`PcapWriter`], [`write_file`]): little-endian, link type 1, snaplen
//! 65535, microsecond or nanosecond timestamps.
//!
//! The promise: [`parse`] and [`read_file`] never panic on any input, however damaged; every error
//! names where (frame number, 1-based as Wireshark counts, and file offset, or block offset) and
//! why, and [`read_file`]'s errors also name the file.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

/// The largest captured length of one frame, and the largest pcap/pcapng snaplen, that is
/// accepted: 256 KiB, the bound tcpdump and Wireshark use for Ethernet.
pub const MAX_FRAME_LEN: u32 = 256 * 1024;

/// Snaplen written into the header by [`PcapWriter`]; frames longer than this are refused.
const WRITER_SNAPLEN: u32 = 65_535;
const LINKTYPE_ETHERNET: u32 = 1;
const PCAP_MICRO_MAGIC: u32 = 0xa1b2_c3d4;
const PCAP_NANO_MAGIC: u32 = 0xa1b2_3c4d;
const PCAP_HEADER_LEN: usize = 24;
const PCAP_RECORD_HEADER_LEN: usize = 16;
const PCAPNG_SHB: u32 = 0x0a0d_0d0a;
const PCAPNG_IDB: u32 = 1;
const PCAPNG_PB: u32 = 2;
const PCAPNG_SPB: u32 = 3;
const PCAPNG_EPB: u32 = 6;
const PCAPNG_BYTE_ORDER_MAGIC: u32 = 0x1a2b_3c4d;
const PCAPNG_MIN_BLOCK_LEN: usize = 12;
const OPT_ENDOFOPT: u16 = 0;
const OPT_IF_TSRESOL: u16 = 9;
const OPT_IF_TSOFFSET: u16 = 14;
const NS_PER_SEC: u64 = 1_000_000_000;

/// One captured frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Capture timestamp, nanoseconds since the Unix epoch (0 when the format records none, as in
    /// a pcapng Simple Packet Block).
    pub ts_ns: u64,
    /// The captured bytes, starting at the Ethernet header.
    pub data: Vec<u8>,
    /// Length of the frame on the wire; at least `data.len()` (more if the capture cut it short).
    pub orig_len: u32,
}

/// The container format a capture was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Classic pcap with microsecond timestamps (magic `0xa1b2c3d4`).
    PcapMicro,
    /// Classic pcap with nanosecond timestamps (magic `0xa1b23c4d`).
    PcapNano,
    /// pcapng.
    PcapNg,
}

/// A whole capture file, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capture {
    /// The container format.
    pub format: Format,
    /// Whether the file is big-endian; for pcapng, the byte order of its first section (later
    /// sections may differ).
    pub big_endian: bool,
    /// The frames, in file order.
    pub frames: Vec<Frame>,
}

/// Why a capture could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// The file could not be read at all.
    #[error("{}: cannot read: {io}", .path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        io: io::Error,
    },
    /// The file was read but its content is bad; `error` says how. Only [`read_file`] returns it.
    #[error("{}: {error}", .path.display())]
    InFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with its content (never itself `InFile` or `Io`).
        error: Box<CaptureError>,
    },
    /// The input is shorter than the header its format requires.
    #[error("file is truncated: {what} needs {need} bytes, the file has {len}")]
    TooShort {
        /// What could not be read.
        what: &'static str,
        /// Bytes needed for it.
        need: usize,
        /// Bytes the input has.
        len: usize,
    },
    /// The first four bytes are neither a pcap nor a pcapng magic number.
    #[error("not a capture file: magic {magic:#010x} is neither pcap nor pcapng")]
    BadMagic {
        /// The first four bytes, read little-endian.
        magic: u32,
    },
    /// A classic pcap file of a version other than 2.x.
    #[error("pcap version {major}.{minor} is not supported (only 2.x is)")]
    PcapVersion {
        /// Major version in the header.
        major: u16,
        /// Minor version in the header.
        minor: u16,
    },
    /// A classic pcap snaplen over [`MAX_FRAME_LEN`].
    #[error("snaplen {snaplen} exceeds the limit of {MAX_FRAME_LEN} bytes (256 KiB)")]
    Snaplen {
        /// The snaplen in the header.
        snaplen: u32,
    },
    /// A classic pcap file whose link type is not Ethernet.
    #[error("link type {link_type} is not Ethernet (1): only Ethernet captures are supported")]
    NotEthernet {
        /// The link type (low 16 bits of the header's last field).
        link_type: u32,
    },
    /// A bad classic pcap record.
    #[error("frame {frame} at offset {offset}: {problem}")]
    Record {
        /// 1-based frame number.
        frame: usize,
        /// File offset of the record header.
        offset: usize,
        /// What is wrong.
        problem: Problem,
    },
    /// A bad pcapng block that is not (or cannot be told to be) a packet.
    #[error("block at offset {offset}: {problem}")]
    Block {
        /// File offset of the block.
        offset: usize,
        /// What is wrong.
        problem: Problem,
    },
    /// A bad pcapng packet block (Enhanced, Simple or obsolete Packet Block).
    #[error("block at offset {offset} (frame {frame}): {problem}")]
    PacketBlock {
        /// File offset of the block.
        offset: usize,
        /// 1-based frame number the block would have been.
        frame: usize,
        /// What is wrong.
        problem: Problem,
    },
}

impl CaptureError {
    /// The error without the file-name layer: for [`CaptureError::InFile`] the error inside,
    /// otherwise `self`. Handy for matching on what went wrong.
    pub fn without_path(&self) -> &CaptureError {
        match self {
            CaptureError::InFile { error, .. } => error,
            other => other,
        }
    }
}

/// What is wrong with one record or block (inside [`CaptureError::Record`],
/// [`CaptureError::Block`] and [`CaptureError::PacketBlock`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    /// Fewer bytes remain than the record header needs: typically tcpdump was killed mid-write.
    #[error(
        "file ends {have} bytes into a {need}-byte record header (was the capture cut off mid-write?)"
    )]
    PartialHeader {
        /// Bytes present.
        have: usize,
        /// Bytes a record header needs.
        need: usize,
    },
    /// The record's data runs past the end of the file.
    #[error("record is truncated (header says {need} bytes, {left} left)")]
    RecordTruncated {
        /// Captured length from the record header.
        need: u32,
        /// Bytes left in the file after the record header.
        left: usize,
    },
    /// Captured length greater than the length on the wire.
    #[error("captured length {captured} exceeds wire length {wire}")]
    CapturedExceedsWire {
        /// Captured length.
        captured: u32,
        /// Length on the wire.
        wire: u32,
    },
    /// Captured length over [`MAX_FRAME_LEN`].
    #[error("captured length {len} exceeds the limit of {MAX_FRAME_LEN} bytes (256 KiB)")]
    TooLong {
        /// Captured length.
        len: u32,
    },
    /// A pcapng snaplen over [`MAX_FRAME_LEN`] (0, meaning "no limit", is accepted).
    #[error("interface snaplen {snaplen} exceeds the limit of {MAX_FRAME_LEN} bytes (256 KiB)")]
    Snaplen {
        /// The snaplen.
        snaplen: u32,
    },
    /// A pcapng interface whose link type is not Ethernet.
    #[error("link type {link_type} is not Ethernet (1): only Ethernet captures are supported")]
    NotEthernet {
        /// The link type.
        link_type: u32,
    },
    /// Fewer bytes remain than the smallest pcapng block.
    #[error("only {have} bytes left, too few for a block (at least 12)")]
    BlockHeaderTruncated {
        /// Bytes left in the file.
        have: usize,
    },
    /// Block total length under 12.
    #[error("block total length {len} is less than the minimum of 12")]
    BlockTooShort {
        /// The block total length.
        len: u32,
    },
    /// Block total length not a multiple of 4.
    #[error("block total length {len} is not a multiple of 4")]
    BlockUnaligned {
        /// The block total length.
        len: u32,
    },
    /// The block runs past the end of the file.
    #[error("block is truncated (header says {len} bytes, {left} left)")]
    BlockTruncated {
        /// The block total length.
        len: u32,
        /// Bytes left in the file from the block's start.
        left: usize,
    },
    /// The block total length at the end differs from the one at the start.
    #[error("trailing block length {trailing} does not match leading block length {leading}")]
    TrailerMismatch {
        /// Length at the start of the block.
        leading: u32,
        /// Length at the end of the block.
        trailing: u32,
    },
    /// A Section Header Block whose byte-order magic is wrong.
    #[error(
        "section header byte-order magic {magic:#010x} is not 0x1a2b3c4d in either byte order"
    )]
    ByteOrderMagic {
        /// The byte-order field, read little-endian.
        magic: u32,
    },
    /// A pcapng section of a major version other than 1.
    #[error("pcapng version {major}.{minor} is not supported (only 1.x is)")]
    PcapngVersion {
        /// Major version.
        major: u16,
        /// Minor version.
        minor: u16,
    },
    /// A block body too short for its fixed fields.
    #[error("{block} body is {have} bytes, too short for its {need} bytes of fixed fields")]
    BodyTooShort {
        /// Which kind of block.
        block: &'static str,
        /// Bytes of fixed fields.
        need: usize,
        /// Bytes the body has.
        have: usize,
    },
    /// A packet's captured length runs past the end of its block.
    #[error("captured length {captured} does not fit in the block ({room} bytes of room)")]
    DataOverrun {
        /// Captured length.
        captured: u32,
        /// Bytes available for packet data in the block.
        room: usize,
    },
    /// A packet refers to an interface not (yet) described in its section.
    #[error(
        "packet refers to interface {id}, but only {count} interface(s) are described in this section so far"
    )]
    UnknownInterface {
        /// Interface id in the packet.
        id: u32,
        /// Interfaces described so far in the section.
        count: usize,
    },
    /// An option runs past the end of its block.
    #[error("option {code} of {len} bytes runs past the end of the block")]
    OptionOverrun {
        /// Option code.
        code: u16,
        /// Option length.
        len: u16,
    },
    /// An option whose value has the wrong length.
    #[error("option {code} has {len} bytes, expected {expected}")]
    OptionLength {
        /// Option code.
        code: u16,
        /// Its length.
        len: u16,
        /// The length it must have.
        expected: u16,
    },
}

/// Reads and parses the capture file at `path`; every error names the file.
pub fn read_file(path: &Path) -> Result<Capture, CaptureError> {
    let bytes = std::fs::read(path).map_err(|io| CaptureError::Io {
        path: path.to_path_buf(),
        io,
    })?;
    parse(&bytes).map_err(|error| CaptureError::InFile {
        path: path.to_path_buf(),
        error: Box::new(error),
    })
}

/// Parses a whole capture (classic pcap or pcapng, told apart by the magic number).
pub fn parse(bytes: &[u8]) -> Result<Capture, CaptureError> {
    if bytes.len() < 4 {
        return Err(CaptureError::TooShort {
            what: "the magic number",
            need: 4,
            len: bytes.len(),
        });
    }
    let le = rd32(bytes, 0, false);
    let be = rd32(bytes, 0, true);
    match (le, be) {
        (PCAP_MICRO_MAGIC, _) => parse_pcap(bytes, false, false),
        (_, PCAP_MICRO_MAGIC) => parse_pcap(bytes, true, false),
        (PCAP_NANO_MAGIC, _) => parse_pcap(bytes, false, true),
        (_, PCAP_NANO_MAGIC) => parse_pcap(bytes, true, true),
        (PCAPNG_SHB, _) => parse_pcapng(bytes),
        _ => Err(CaptureError::BadMagic { magic: le }),
    }
}

/// Reads a `u16` at `at`; callers check bounds first, and a read out of bounds gives 0.
fn rd16(b: &[u8], at: usize, big: bool) -> u16 {
    let Some(s) = at.checked_add(2).and_then(|end| b.get(at..end)) else {
        return 0;
    };
    let a = [s[0], s[1]];
    if big {
        u16::from_be_bytes(a)
    } else {
        u16::from_le_bytes(a)
    }
}

/// Reads a `u32` at `at`; callers check bounds first, and a read out of bounds gives 0.
fn rd32(b: &[u8], at: usize, big: bool) -> u32 {
    let Some(s) = at.checked_add(4).and_then(|end| b.get(at..end)) else {
        return 0;
    };
    let a = [s[0], s[1], s[2], s[3]];
    if big {
        u32::from_be_bytes(a)
    } else {
        u32::from_le_bytes(a)
    }
}

/// Reads an `i64` at `at`; callers check bounds first, and a read out of bounds gives 0.
fn rd_i64(b: &[u8], at: usize, big: bool) -> i64 {
    let hi_first = (rd32(b, at, big), rd32(b, at + 4, big));
    let (hi, lo) = if big {
        hi_first
    } else {
        (hi_first.1, hi_first.0)
    };
    ((u64::from(hi) << 32) | u64::from(lo)) as i64
}

fn parse_pcap(bytes: &[u8], big: bool, nanos: bool) -> Result<Capture, CaptureError> {
    if bytes.len() < PCAP_HEADER_LEN {
        return Err(CaptureError::TooShort {
            what: "the pcap global header",
            need: PCAP_HEADER_LEN,
            len: bytes.len(),
        });
    }
    let major = rd16(bytes, 4, big);
    let minor = rd16(bytes, 6, big);
    if major != 2 {
        return Err(CaptureError::PcapVersion { major, minor });
    }
    let snaplen = rd32(bytes, 16, big);
    if snaplen > MAX_FRAME_LEN {
        return Err(CaptureError::Snaplen { snaplen });
    }
    let link_type = rd32(bytes, 20, big) & 0xffff;
    if link_type != LINKTYPE_ETHERNET {
        return Err(CaptureError::NotEthernet { link_type });
    }
    let frac_ns: u64 = if nanos { 1 } else { 1_000 };
    let mut frames = Vec::new();
    let mut pos = PCAP_HEADER_LEN;
    while pos < bytes.len() {
        let left = bytes.len() - pos;
        let err = |problem| CaptureError::Record {
            frame: frames.len() + 1,
            offset: pos,
            problem,
        };
        if left < PCAP_RECORD_HEADER_LEN {
            return Err(err(Problem::PartialHeader {
                have: left,
                need: PCAP_RECORD_HEADER_LEN,
            }));
        }
        let sec = rd32(bytes, pos, big);
        let frac = rd32(bytes, pos + 4, big);
        let incl = rd32(bytes, pos + 8, big);
        let orig = rd32(bytes, pos + 12, big);
        if incl > MAX_FRAME_LEN {
            return Err(err(Problem::TooLong { len: incl }));
        }
        if incl > orig {
            return Err(err(Problem::CapturedExceedsWire {
                captured: incl,
                wire: orig,
            }));
        }
        let data_start = pos + PCAP_RECORD_HEADER_LEN;
        let room = left - PCAP_RECORD_HEADER_LEN;
        let Some(data) = bytes.get(data_start..data_start + incl as usize) else {
            return Err(err(Problem::RecordTruncated {
                need: incl,
                left: room,
            }));
        };
        let ts_ns = u64::from(sec)
            .saturating_mul(NS_PER_SEC)
            .saturating_add(u64::from(frac).saturating_mul(frac_ns));
        frames.push(Frame {
            ts_ns,
            data: data.to_vec(),
            orig_len: orig,
        });
        pos = data_start + incl as usize;
    }
    Ok(Capture {
        format: if nanos {
            Format::PcapNano
        } else {
            Format::PcapMicro
        },
        big_endian: big,
        frames,
    })
}

/// Timestamp resolution of a pcapng interface.
#[derive(Debug, Clone, Copy)]
enum Resolution {
    /// Units of 10^-n seconds.
    Decimal(u32),
    /// Units of 2^-n seconds.
    Binary(u32),
}

#[derive(Debug, Clone, Copy)]
struct Interface {
    resolution: Resolution,
    /// `if_tsoffset`: seconds added to every timestamp.
    offset_s: i64,
    /// 0 = no limit.
    snaplen: u32,
}

impl Interface {
    /// Converts a timestamp in this interface's units to nanoseconds, saturating.
    fn ns_from(&self, units: u64) -> u64 {
        let units = u128::from(units);
        let ns: u128 = match self.resolution {
            Resolution::Decimal(n) if n <= 9 => units * 10u128.pow(9 - n),
            Resolution::Decimal(n) => match 10u128.checked_pow(n - 9) {
                Some(div) => units / div,
                None => 0,
            },
            // units < 2^64, so units * 10^9 < 2^94; n <= 127.
            Resolution::Binary(n) => (units * u128::from(NS_PER_SEC)) >> n,
        };
        let offset_ns = i128::from(self.offset_s) * i128::from(NS_PER_SEC);
        // |ns| < 2^94 and |offset_ns| < 2^94: no overflow in i128.
        let total = ns as i128 + offset_ns;
        total.clamp(0, i128::from(u64::MAX)) as u64
    }
}

fn parse_pcapng(bytes: &[u8]) -> Result<Capture, CaptureError> {
    let mut big = false;
    let mut first_big = None;
    let mut interfaces: Vec<Interface> = Vec::new();
    let mut frames: Vec<Frame> = Vec::new();
    let mut pos = 0usize;
    while pos < bytes.len() {
        let left = bytes.len() - pos;
        let block_err = |problem| CaptureError::Block {
            offset: pos,
            problem,
        };
        if left < PCAPNG_MIN_BLOCK_LEN {
            return Err(block_err(Problem::BlockHeaderTruncated { have: left }));
        }
        // The SHB type is a palindrome, so it reads the same in either byte order.
        let block_type = rd32(bytes, pos, big);
        if block_type == PCAPNG_SHB {
            let bom_le = rd32(bytes, pos + 8, false);
            big = if bom_le == PCAPNG_BYTE_ORDER_MAGIC {
                false
            } else if rd32(bytes, pos + 8, true) == PCAPNG_BYTE_ORDER_MAGIC {
                true
            } else {
                return Err(block_err(Problem::ByteOrderMagic { magic: bom_le }));
            };
            first_big.get_or_insert(big);
            interfaces.clear();
        }
        let len32 = rd32(bytes, pos + 4, big);
        let len = len32 as usize;
        if len < PCAPNG_MIN_BLOCK_LEN {
            return Err(block_err(Problem::BlockTooShort { len: len32 }));
        }
        if len & 3 != 0 {
            return Err(block_err(Problem::BlockUnaligned { len: len32 }));
        }
        if len > left {
            return Err(block_err(Problem::BlockTruncated { len: len32, left }));
        }
        let trailing = rd32(bytes, pos + len - 4, big);
        if trailing != len32 {
            return Err(block_err(Problem::TrailerMismatch {
                leading: len32,
                trailing,
            }));
        }
        let body = &bytes[pos + 8..pos + len - 4];
        match block_type {
            PCAPNG_SHB => parse_shb(body, big).map_err(block_err)?,
            PCAPNG_IDB => interfaces.push(parse_idb(body, big).map_err(block_err)?),
            PCAPNG_EPB | PCAPNG_PB | PCAPNG_SPB => {
                let frame =
                    parse_packet(block_type, body, big, &interfaces).map_err(|problem| {
                        CaptureError::PacketBlock {
                            offset: pos,
                            frame: frames.len() + 1,
                            problem,
                        }
                    })?;
                frames.push(frame);
            }
            _ => {}
        }
        pos += len;
    }
    Ok(Capture {
        format: Format::PcapNg,
        big_endian: first_big.unwrap_or(false),
        frames,
    })
}

fn parse_shb(body: &[u8], big: bool) -> Result<(), Problem> {
    const FIXED: usize = 16;
    if body.len() < FIXED {
        return Err(Problem::BodyTooShort {
            block: "section header block",
            need: FIXED,
            have: body.len(),
        });
    }
    let major = rd16(body, 4, big);
    let minor = rd16(body, 6, big);
    if major != 1 {
        return Err(Problem::PcapngVersion { major, minor });
    }
    Ok(())
}

fn parse_idb(body: &[u8], big: bool) -> Result<Interface, Problem> {
    const FIXED: usize = 8;
    if body.len() < FIXED {
        return Err(Problem::BodyTooShort {
            block: "interface description block",
            need: FIXED,
            have: body.len(),
        });
    }
    let link_type = u32::from(rd16(body, 0, big));
    if link_type != LINKTYPE_ETHERNET {
        return Err(Problem::NotEthernet { link_type });
    }
    let snaplen = rd32(body, 4, big);
    if snaplen > MAX_FRAME_LEN {
        return Err(Problem::Snaplen { snaplen });
    }
    let mut iface = Interface {
        resolution: Resolution::Decimal(6),
        offset_s: 0,
        snaplen,
    };
    let opts = &body[FIXED..];
    let mut p = 0usize;
    while p + 4 <= opts.len() {
        let code = rd16(opts, p, big);
        let olen = rd16(opts, p + 2, big);
        if code == OPT_ENDOFOPT {
            break;
        }
        let start = p + 4;
        let Some(value) = opts.get(start..start + usize::from(olen)) else {
            return Err(Problem::OptionOverrun { code, len: olen });
        };
        let exact = |expected: u16| {
            if olen == expected {
                Ok(())
            } else {
                Err(Problem::OptionLength {
                    code,
                    len: olen,
                    expected,
                })
            }
        };
        match code {
            OPT_IF_TSRESOL => {
                exact(1)?;
                let v = value[0];
                iface.resolution = if v & 0x80 != 0 {
                    Resolution::Binary(u32::from(v & 0x7f))
                } else {
                    Resolution::Decimal(u32::from(v))
                };
            }
            OPT_IF_TSOFFSET => {
                exact(8)?;
                iface.offset_s = rd_i64(value, 0, big);
            }
            _ => {}
        }
        p = start + usize::from(olen).next_multiple_of(4);
    }
    Ok(iface)
}

fn lookup(interfaces: &[Interface], id: u32) -> Result<&Interface, Problem> {
    usize::try_from(id)
        .ok()
        .and_then(|i| interfaces.get(i))
        .ok_or(Problem::UnknownInterface {
            id,
            count: interfaces.len(),
        })
}

fn parse_packet(
    block_type: u32,
    body: &[u8],
    big: bool,
    interfaces: &[Interface],
) -> Result<Frame, Problem> {
    if block_type == PCAPNG_SPB {
        const FIXED: usize = 4;
        if body.len() < FIXED {
            return Err(Problem::BodyTooShort {
                block: "simple packet block",
                need: FIXED,
                have: body.len(),
            });
        }
        let iface = lookup(interfaces, 0)?;
        let orig = rd32(body, 0, big);
        let room = body.len() - FIXED;
        let mut captured = (orig as usize).min(room);
        if iface.snaplen != 0 {
            captured = captured.min(iface.snaplen as usize);
        }
        if captured > MAX_FRAME_LEN as usize {
            return Err(Problem::TooLong {
                len: u32::try_from(captured).unwrap_or(u32::MAX),
            });
        }
        return Ok(Frame {
            ts_ns: 0,
            data: body[FIXED..FIXED + captured].to_vec(),
            orig_len: orig,
        });
    }
    // EPB: if_id u32; PB: if_id u16 + drops u16. Then ts_hi, ts_lo, caplen, origlen.
    const FIXED: usize = 20;
    if body.len() < FIXED {
        return Err(Problem::BodyTooShort {
            block: if block_type == PCAPNG_EPB {
                "enhanced packet block"
            } else {
                "packet block"
            },
            need: FIXED,
            have: body.len(),
        });
    }
    let if_id = if block_type == PCAPNG_EPB {
        rd32(body, 0, big)
    } else {
        u32::from(rd16(body, 0, big))
    };
    let iface = lookup(interfaces, if_id)?;
    let ts_units = (u64::from(rd32(body, 4, big)) << 32) | u64::from(rd32(body, 8, big));
    let captured = rd32(body, 12, big);
    let orig = rd32(body, 16, big);
    if captured > MAX_FRAME_LEN {
        return Err(Problem::TooLong { len: captured });
    }
    if captured > orig {
        return Err(Problem::CapturedExceedsWire {
            captured,
            wire: orig,
        });
    }
    let Some(data) = body.get(FIXED..FIXED + captured as usize) else {
        return Err(Problem::DataOverrun {
            captured,
            room: body.len() - FIXED,
        });
    };
    Ok(Frame {
        ts_ns: iface.ns_from(ts_units),
        data: data.to_vec(),
        orig_len: orig,
    })
}

/// Writes classic pcap: little-endian, microsecond (magic `0xa1b2c3d4`, from [`PcapWriter::new`])
/// or nanosecond (magic `0xa1b23c4d`, from [`PcapWriter::new_nanos`]) timestamps, version 2.4,
/// link type 1 (Ethernet), snaplen 65535. The global header is written on creation.
#[derive(Debug)]
pub struct PcapWriter<W: Write> {
    out: W,
    nanos: bool,
}

impl<W: Write> PcapWriter<W> {
    /// Starts a microsecond-timestamp pcap on `w` (writes the global header).
    pub fn new(w: W) -> io::Result<Self> {
        Self::start(w, false)
    }

    /// Starts a nanosecond-timestamp pcap on `w` (writes the global header).
    pub fn new_nanos(w: W) -> io::Result<Self> {
        Self::start(w, true)
    }

    fn start(mut out: W, nanos: bool) -> io::Result<Self> {
        let magic = if nanos {
            PCAP_NANO_MAGIC
        } else {
            PCAP_MICRO_MAGIC
        };
        let mut h = Vec::with_capacity(PCAP_HEADER_LEN);
        h.extend_from_slice(&magic.to_le_bytes());
        h.extend_from_slice(&2u16.to_le_bytes()); // version major
        h.extend_from_slice(&4u16.to_le_bytes()); // version minor
        h.extend_from_slice(&0i32.to_le_bytes()); // thiszone
        h.extend_from_slice(&0u32.to_le_bytes()); // sigfigs
        h.extend_from_slice(&WRITER_SNAPLEN.to_le_bytes());
        h.extend_from_slice(&LINKTYPE_ETHERNET.to_le_bytes());
        out.write_all(&h)?;
        Ok(PcapWriter { out, nanos })
    }

    /// Appends a frame captured whole (wire length = `data.len()`) at `ts_ns` nanoseconds since
    /// the Unix epoch. With microsecond timestamps the sub-microsecond part is dropped (rounded
    /// down). Fails with `InvalidInput`, writing nothing, if `data` is longer than the snaplen
    /// 65535 or the timestamp lies past 2106 (beyond pcap's 32-bit seconds).
    pub fn write(&mut self, ts_ns: u64, data: &[u8]) -> io::Result<()> {
        let orig_len = u32::try_from(data.len()).unwrap_or(u32::MAX);
        self.write_record(ts_ns, data, orig_len)
    }

    /// Appends `frame`, keeping its `orig_len` (so a frame the capture cut short stays so).
    /// Fails like [`PcapWriter::write`], and also if `orig_len < data.len()`.
    pub fn write_frame(&mut self, frame: &Frame) -> io::Result<()> {
        self.write_record(frame.ts_ns, &frame.data, frame.orig_len)
    }

    fn write_record(&mut self, ts_ns: u64, data: &[u8], orig_len: u32) -> io::Result<()> {
        let invalid = |msg: String| io::Error::new(io::ErrorKind::InvalidInput, msg);
        if data.len() > WRITER_SNAPLEN as usize {
            return Err(invalid(format!(
                "frame of {} bytes exceeds the snaplen {WRITER_SNAPLEN}",
                data.len()
            )));
        }
        // data.len() <= 65535, so the cast is exact.
        let incl = data.len() as u32;
        if orig_len < incl {
            return Err(invalid(format!(
                "wire length {orig_len} is less than the captured length {incl}"
            )));
        }
        let sec = u32::try_from(ts_ns / NS_PER_SEC).map_err(|_| {
            invalid(format!(
                "timestamp {ts_ns} ns is past 2106, beyond what pcap's 32-bit seconds can hold"
            ))
        })?;
        let sub = ts_ns % NS_PER_SEC;
        // sub < 10^9 < 2^32.
        let frac = (if self.nanos { sub } else { sub / 1_000 }) as u32;
        let mut h = [0u8; PCAP_RECORD_HEADER_LEN];
        h[0..4].copy_from_slice(&sec.to_le_bytes());
        h[4..8].copy_from_slice(&frac.to_le_bytes());
        h[8..12].copy_from_slice(&incl.to_le_bytes());
        h[12..16].copy_from_slice(&orig_len.to_le_bytes());
        self.out.write_all(&h)?;
        self.out.write_all(data)
    }

    /// Flushes and returns the underlying writer.
    pub fn into_inner(mut self) -> io::Result<W> {
        self.out.flush()?;
        Ok(self.out)
    }
}

/// Writes `frames` to a new file at `path` (created or truncated) as microsecond pcap, keeping
/// each frame's `orig_len`. Errors name the path.
pub fn write_file(path: &Path, frames: &[Frame]) -> io::Result<()> {
    let with_path = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", path.display()));
    let file = File::create(path).map_err(with_path)?;
    let mut w = PcapWriter::new(BufWriter::new(file)).map_err(with_path)?;
    for frame in frames {
        w.write_frame(frame).map_err(with_path)?;
    }
    let buffered = w.into_inner().map_err(with_path)?;
    buffered
        .into_inner()
        .map_err(|e| with_path(e.into_error()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn put16(v: &mut Vec<u8>, x: u16, big: bool) {
        v.extend_from_slice(&if big {
            x.to_be_bytes()
        } else {
            x.to_le_bytes()
        });
    }

    fn put32(v: &mut Vec<u8>, x: u32, big: bool) {
        v.extend_from_slice(&if big {
            x.to_be_bytes()
        } else {
            x.to_le_bytes()
        });
    }

    /// One classic pcap record: seconds, fraction (µs or ns), data, wire length.
    type Rec<'a> = (u32, u32, &'a [u8], u32);

    fn pcap_header(big: bool, nanos: bool, snaplen: u32, link: u32) -> Vec<u8> {
        let mut v = Vec::new();
        put32(
            &mut v,
            if nanos {
                PCAP_NANO_MAGIC
            } else {
                PCAP_MICRO_MAGIC
            },
            big,
        );
        put16(&mut v, 2, big);
        put16(&mut v, 4, big);
        put32(&mut v, 0, big);
        put32(&mut v, 0, big);
        put32(&mut v, snaplen, big);
        put32(&mut v, link, big);
        v
    }

    fn pcap_bytes(big: bool, nanos: bool, recs: &[Rec]) -> Vec<u8> {
        let mut v = pcap_header(big, nanos, 65535, 1);
        for &(sec, frac, data, orig) in recs {
            put32(&mut v, sec, big);
            put32(&mut v, frac, big);
            put32(&mut v, data.len() as u32, big);
            put32(&mut v, orig, big);
            v.extend_from_slice(data);
        }
        v
    }

    fn eth(len: usize, seed: u8) -> Vec<u8> {
        (0..len).map(|i| (i as u8).wrapping_mul(7) ^ seed).collect()
    }

    /// The frames the pcap and pcapng tests share.
    fn sample_frames() -> Vec<Frame> {
        vec![
            Frame {
                ts_ns: 1_700_000_000_123_456_000,
                data: eth(60, 1),
                orig_len: 60,
            },
            Frame {
                ts_ns: 1_700_000_001_000_001_000,
                data: eth(14, 2),
                orig_len: 1514,
            },
            Frame {
                ts_ns: 1_700_000_002_999_999_000,
                data: Vec::new(),
                orig_len: 0,
            },
        ]
    }

    fn sample_pcap(big: bool, nanos: bool) -> Vec<u8> {
        let frames = sample_frames();
        let recs: Vec<Rec> = frames
            .iter()
            .map(|f| {
                let sec = (f.ts_ns / NS_PER_SEC) as u32;
                let sub = (f.ts_ns % NS_PER_SEC) as u32;
                (
                    sec,
                    if nanos { sub } else { sub / 1000 },
                    &f.data[..],
                    f.orig_len,
                )
            })
            .collect();
        pcap_bytes(big, nanos, &recs)
    }

    #[test]
    fn pcap_all_four_variants_give_the_same_frames() {
        for (big, nanos, format) in [
            (false, false, Format::PcapMicro),
            (true, false, Format::PcapMicro),
            (false, true, Format::PcapNano),
            (true, true, Format::PcapNano),
        ] {
            let cap = parse(&sample_pcap(big, nanos)).unwrap();
            assert_eq!(cap.format, format);
            assert_eq!(cap.big_endian, big);
            assert_eq!(cap.frames, sample_frames(), "big={big} nanos={nanos}");
        }
    }

    #[test]
    fn pcap_magic_bytes_on_disk() {
        assert_eq!(&sample_pcap(false, false)[..4], &[0xd4, 0xc3, 0xb2, 0xa1]);
        assert_eq!(&sample_pcap(true, false)[..4], &[0xa1, 0xb2, 0xc3, 0xd4]);
        assert_eq!(&sample_pcap(false, true)[..4], &[0x4d, 0x3c, 0xb2, 0xa1]);
        assert_eq!(&sample_pcap(true, true)[..4], &[0xa1, 0xb2, 0x3c, 0x4d]);
    }

    #[test]
    fn pcap_nanosecond_precision_is_kept() {
        let bytes = pcap_bytes(false, true, &[(5, 123_456_789, &[1, 2, 3], 3)]);
        let cap = parse(&bytes).unwrap();
        assert_eq!(cap.frames[0].ts_ns, 5_123_456_789);
    }

    #[test]
    fn pcap_header_only_is_empty_capture() {
        let cap = parse(&pcap_header(false, false, 262_144, 1)).unwrap();
        assert!(cap.frames.is_empty());
    }

    #[test]
    fn pcap_link_type_upper_bits_ignored() {
        // FCS bits in the upper half of the link-type field do not change the link type.
        let mut v = pcap_header(false, false, 65535, 1 | 0x1400_0000);
        v.extend_from_slice(&sample_pcap(false, false)[24..]);
        assert_eq!(parse(&v).unwrap().frames, sample_frames());
    }

    // ---- pcapng builder ----

    struct Ng {
        big: bool,
        out: Vec<u8>,
    }

    impl Ng {
        fn new(big: bool) -> Ng {
            let mut ng = Ng {
                big,
                out: Vec::new(),
            };
            ng.shb();
            ng
        }

        fn block(&mut self, btype: u32, body: &[u8]) -> usize {
            let offset = self.out.len();
            let mut body = body.to_vec();
            body.resize(body.len().next_multiple_of(4), 0);
            let len = 12 + body.len() as u32;
            let big = self.big;
            put32(&mut self.out, btype, big);
            put32(&mut self.out, len, big);
            self.out.extend_from_slice(&body);
            put32(&mut self.out, len, big);
            offset
        }

        fn shb(&mut self) -> usize {
            let big = self.big;
            let mut b = Vec::new();
            put32(&mut b, PCAPNG_BYTE_ORDER_MAGIC, big);
            put16(&mut b, 1, big);
            put16(&mut b, 0, big);
            b.extend_from_slice(&[0xff; 8]); // section length: unknown
            self.block(PCAPNG_SHB, &b)
        }

        fn idb(&mut self, link: u16, snaplen: u32, opts: &[(u16, Vec<u8>)]) -> usize {
            let big = self.big;
            let mut b = Vec::new();
            put16(&mut b, link, big);
            put16(&mut b, 0, big);
            put32(&mut b, snaplen, big);
            if !opts.is_empty() {
                for (code, val) in opts {
                    put16(&mut b, *code, big);
                    put16(&mut b, val.len() as u16, big);
                    b.extend_from_slice(val);
                    b.resize(b.len().next_multiple_of(4), 0);
                }
                put32(&mut b, 0, big); // opt_endofopt
            }
            self.block(PCAPNG_IDB, &b)
        }

        fn epb_raw(&mut self, if_id: u32, ts: u64, caplen: u32, data: &[u8], orig: u32) -> usize {
            let big = self.big;
            let mut b = Vec::new();
            put32(&mut b, if_id, big);
            put32(&mut b, (ts >> 32) as u32, big);
            put32(&mut b, ts as u32, big);
            put32(&mut b, caplen, big);
            put32(&mut b, orig, big);
            b.extend_from_slice(data);
            self.block(PCAPNG_EPB, &b)
        }

        fn epb(&mut self, if_id: u32, ts: u64, data: &[u8], orig: u32) -> usize {
            self.epb_raw(if_id, ts, data.len() as u32, data, orig)
        }

        fn pb(&mut self, if_id: u16, ts: u64, data: &[u8], orig: u32) -> usize {
            let big = self.big;
            let mut b = Vec::new();
            put16(&mut b, if_id, big);
            put16(&mut b, 0, big);
            put32(&mut b, (ts >> 32) as u32, big);
            put32(&mut b, ts as u32, big);
            put32(&mut b, data.len() as u32, big);
            put32(&mut b, orig, big);
            b.extend_from_slice(data);
            self.block(PCAPNG_PB, &b)
        }

        fn spb(&mut self, orig: u32, data: &[u8]) -> usize {
            let big = self.big;
            let mut b = Vec::new();
            put32(&mut b, orig, big);
            b.extend_from_slice(data);
            self.block(PCAPNG_SPB, &b)
        }
    }

    fn tsresol(v: u8) -> (u16, Vec<u8>) {
        (OPT_IF_TSRESOL, vec![v])
    }

    /// A pcapng with a default (µs) interface, an ns interface, unknown blocks, EPBs, a PB and an
    /// SPB; returns it with the frames it must parse to.
    fn sample_pcapng(big: bool) -> (Vec<u8>, Vec<Frame>) {
        let mut ng = Ng::new(big);
        ng.idb(1, 262_144, &[]); // interface 0: µs
        ng.idb(1, 0, &[(2, b"eth0".to_vec()), tsresol(9)]); // interface 1: ns
        ng.block(0x0000_0bad, &[1, 2, 3, 4, 5]); // unknown / custom
        ng.block(4, &[0; 16]); // name resolution block, skipped
        let f = sample_frames();
        ng.epb(0, f[0].ts_ns / 1000, &f[0].data, f[0].orig_len);
        ng.epb(1, 1_700_000_000_123_456_789, &eth(61, 3), 61);
        ng.spb(64, &eth(64, 4));
        ng.spb(1514, &eth(37, 5)); // captured short: data ends at the block (padded to 40)
        ng.pb(1, 42, &f[1].data, f[1].orig_len);
        ng.block(5, &[0; 24]); // interface statistics block, skipped
        let expected = vec![
            f[0].clone(),
            Frame {
                ts_ns: 1_700_000_000_123_456_789,
                data: eth(61, 3),
                orig_len: 61,
            },
            Frame {
                ts_ns: 0,
                data: eth(64, 4),
                orig_len: 64,
            },
            Frame {
                ts_ns: 0,
                // min(orig_len, block_len - 16): the 3 bytes of padding are included.
                data: [eth(37, 5), vec![0; 3]].concat(),
                orig_len: 1514,
            },
            Frame {
                ts_ns: 42,
                data: f[1].data.clone(),
                orig_len: f[1].orig_len,
            },
        ];
        (ng.out, expected)
    }

    #[test]
    fn pcapng_little_and_big_endian() {
        for big in [false, true] {
            let (bytes, expected) = sample_pcapng(big);
            let cap = parse(&bytes).unwrap();
            assert_eq!(cap.format, Format::PcapNg);
            assert_eq!(cap.big_endian, big);
            assert_eq!(cap.frames, expected, "big={big}");
        }
    }

    #[test]
    fn pcapng_spb_respects_interface_snaplen() {
        let mut ng = Ng::new(false);
        ng.idb(1, 10, &[]);
        ng.spb(1514, &eth(10, 6)); // 10 bytes captured, block body padded to 12
        let cap = parse(&ng.out).unwrap();
        assert_eq!(cap.frames[0].data, eth(10, 6));
        assert_eq!(cap.frames[0].orig_len, 1514);
    }

    #[test]
    fn pcapng_binary_resolution_and_offset() {
        let mut ng = Ng::new(false);
        ng.idb(1, 0, &[tsresol(0x80 | 10)]); // 2^-10 s
        ng.idb(
            1,
            0,
            &[
                tsresol(3),
                (OPT_IF_TSOFFSET, 1_000_000i64.to_le_bytes().to_vec()),
            ],
        );
        ng.idb(1, 0, &[tsresol(0x80 | 127)]);
        ng.idb(1, 0, &[tsresol(100)]);
        ng.idb(1, 0, &[(OPT_IF_TSOFFSET, (-10i64).to_le_bytes().to_vec())]);
        ng.epb(0, 1024 + 512, &[], 0);
        ng.epb(1, 2_500, &[], 0);
        ng.epb(2, u64::MAX, &[], 0);
        ng.epb(3, u64::MAX, &[], 0);
        ng.epb(4, 5_000_000, &[], 0); // 5 s - 10 s clamps to 0
        let ts: Vec<u64> = parse(&ng.out)
            .unwrap()
            .frames
            .iter()
            .map(|f| f.ts_ns)
            .collect();
        assert_eq!(
            ts,
            vec![1_500_000_000, 1_000_002_500_000_000, 0, 0, 0],
            "binary, offset, tiny binary unit, tiny decimal unit, negative clamp"
        );
    }

    #[test]
    fn pcapng_huge_timestamps_saturate() {
        let mut ng = Ng::new(true);
        ng.idb(1, 0, &[tsresol(0)]); // seconds
        ng.epb(0, u64::MAX, &[], 0);
        assert_eq!(parse(&ng.out).unwrap().frames[0].ts_ns, u64::MAX);
    }

    #[test]
    fn pcapng_sections_change_byte_order_and_reset_interfaces() {
        let mut ng = Ng::new(false);
        ng.idb(1, 0, &[]);
        ng.epb(0, 1, &[0xaa], 1);
        ng.big = true;
        ng.shb();
        ng.idb(1, 0, &[tsresol(9)]);
        ng.epb(0, 7, &[0xbb], 1);
        let cap = parse(&ng.out).unwrap();
        assert!(!cap.big_endian);
        assert_eq!(
            cap.frames,
            vec![
                Frame {
                    ts_ns: 1000,
                    data: vec![0xaa],
                    orig_len: 1
                },
                Frame {
                    ts_ns: 7,
                    data: vec![0xbb],
                    orig_len: 1
                },
            ]
        );

        // Interface ids are per section.
        let mut ng = Ng::new(false);
        ng.idb(1, 0, &[]);
        ng.idb(1, 0, &[]);
        ng.shb();
        ng.idb(1, 0, &[]);
        let at = ng.epb(1, 0, &[], 0);
        let err = parse(&ng.out).unwrap_err();
        assert!(matches!(
            err,
            CaptureError::PacketBlock {
                offset,
                frame: 1,
                problem: Problem::UnknownInterface { id: 1, count: 1 },
            } if offset == at
        ));
    }

    // ---- errors ----

    fn msg(bytes: &[u8]) -> String {
        parse(bytes).unwrap_err().to_string()
    }

    #[test]
    fn error_wrong_magic() {
        let bytes = 0x1234_5678u32.to_le_bytes().repeat(10);
        assert_eq!(
            msg(&bytes),
            "not a capture file: magic 0x12345678 is neither pcap nor pcapng"
        );
    }

    #[test]
    fn error_too_short_inputs() {
        assert!(matches!(
            parse(&[]),
            Err(CaptureError::TooShort {
                len: 0,
                need: 4,
                ..
            })
        ));
        assert!(matches!(
            parse(&[0xd4, 0xc3]),
            Err(CaptureError::TooShort { len: 2, .. })
        ));
        let h = pcap_header(false, false, 65535, 1);
        assert_eq!(
            msg(&h[..20]),
            "file is truncated: the pcap global header needs 24 bytes, the file has 20"
        );
        let ng = Ng::new(false).out;
        assert_eq!(
            msg(&ng[..8]),
            "block at offset 0: only 8 bytes left, too few for a block (at least 12)"
        );
        assert_eq!(
            msg(&ng[..20]),
            "block at offset 0: block is truncated (header says 28 bytes, 20 left)"
        );
    }

    #[test]
    fn error_pcap_not_ethernet() {
        for big in [false, true] {
            let h = pcap_header(big, false, 65535, 113);
            assert_eq!(
                msg(&h),
                "link type 113 is not Ethernet (1): only Ethernet captures are supported"
            );
        }
    }

    #[test]
    fn error_pcap_version_and_snaplen() {
        let mut h = pcap_header(false, false, 65535, 1);
        h[4] = 3;
        assert!(matches!(
            parse(&h),
            Err(CaptureError::PcapVersion { major: 3, minor: 4 })
        ));
        assert!(parse(&pcap_header(false, false, MAX_FRAME_LEN, 1)).is_ok());
        let h = pcap_header(false, false, MAX_FRAME_LEN + 1, 1);
        assert_eq!(
            msg(&h),
            "snaplen 262145 exceeds the limit of 262144 bytes (256 KiB)"
        );
    }

    #[test]
    fn error_pcapng_not_ethernet() {
        let mut ng = Ng::new(true);
        let at = ng.idb(113, 0, &[]);
        assert_eq!(
            msg(&ng.out),
            format!(
                "block at offset {at}: link type 113 is not Ethernet (1): only Ethernet captures are supported"
            )
        );
    }

    #[test]
    fn error_truncated_record() {
        let full = eth(1514, 9);
        let mut bytes = pcap_bytes(false, false, &[(1, 0, &[0; 60], 60), (2, 0, &full, 1514)]);
        bytes.truncate(bytes.len() - (1514 - 800));
        let offset = 24 + 16 + 60;
        assert_eq!(
            msg(&bytes),
            format!("frame 2 at offset {offset}: record is truncated (header says 1514 bytes, 800 left)")
        );
    }

    #[test]
    fn error_trailing_partial_header() {
        let mut bytes = sample_pcap(true, false);
        let offset = bytes.len();
        bytes.extend_from_slice(&[0; 5]);
        let err = parse(&bytes).unwrap_err();
        assert!(matches!(
            err,
            CaptureError::Record {
                frame: 4,
                offset: o,
                problem: Problem::PartialHeader { have: 5, need: 16 },
            } if o == offset
        ));
        assert_eq!(
            err.to_string(),
            format!(
                "frame 4 at offset {offset}: file ends 5 bytes into a 16-byte record header \
                 (was the capture cut off mid-write?)"
            )
        );
    }

    #[test]
    fn error_record_over_256k_and_captured_over_wire() {
        let mut bytes = pcap_header(false, true, 0, 1);
        put32(&mut bytes, 0, false);
        put32(&mut bytes, 0, false);
        put32(&mut bytes, MAX_FRAME_LEN + 1, false);
        put32(&mut bytes, MAX_FRAME_LEN + 1, false);
        bytes.extend_from_slice(&vec![0; MAX_FRAME_LEN as usize + 1]);
        assert_eq!(
            msg(&bytes),
            "frame 1 at offset 24: captured length 262145 exceeds the limit of 262144 bytes (256 KiB)"
        );

        let bytes = pcap_bytes(false, false, &[(0, 0, &[0; 100], 60)]);
        assert_eq!(
            msg(&bytes),
            "frame 1 at offset 24: captured length 100 exceeds wire length 60"
        );

        // A record of exactly 256 KiB is fine.
        let big_frame = vec![7u8; MAX_FRAME_LEN as usize];
        let bytes = pcap_bytes(false, false, &[(0, 0, &big_frame, MAX_FRAME_LEN)]);
        assert_eq!(parse(&bytes).unwrap().frames[0].data.len(), big_frame.len());
    }

    #[test]
    fn error_pcapng_packet_lengths() {
        let mut ng = Ng::new(false);
        ng.idb(1, 0, &[]);
        let at = ng.epb_raw(0, 0, MAX_FRAME_LEN + 4, &[], MAX_FRAME_LEN + 4);
        assert_eq!(
            msg(&ng.out),
            format!("block at offset {at} (frame 1): captured length 262148 exceeds the limit of 262144 bytes (256 KiB)")
        );

        let mut ng = Ng::new(false);
        ng.idb(1, 0, &[]);
        ng.epb(0, 0, &[1], 1);
        let at = ng.epb_raw(0, 0, 100, &[0; 8], 100);
        assert_eq!(
            msg(&ng.out),
            format!("block at offset {at} (frame 2): captured length 100 does not fit in the block (8 bytes of room)")
        );

        let mut ng = Ng::new(false);
        ng.idb(1, 0, &[]);
        ng.epb(0, 0, &[0; 10], 4);
        assert!(matches!(
            parse(&ng.out),
            Err(CaptureError::PacketBlock {
                problem: Problem::CapturedExceedsWire {
                    captured: 10,
                    wire: 4
                },
                ..
            })
        ));

        let mut ng = Ng::new(false);
        ng.idb(1, MAX_FRAME_LEN + 1, &[]);
        assert!(matches!(
            parse(&ng.out),
            Err(CaptureError::Block {
                problem: Problem::Snaplen { snaplen: 262_145 },
                ..
            })
        ));
    }

    #[test]
    fn error_pcapng_trailing_length_mismatch() {
        let mut ng = Ng::new(true);
        ng.idb(1, 0, &[]);
        let at = ng.epb(0, 0, &[1, 2, 3, 4], 4);
        let end = ng.out.len();
        ng.out[end - 1] ^= 0x10; // corrupt the trailing length (big-endian: low byte last)
        let leading = 12 + 20 + 4;
        assert_eq!(
            msg(&ng.out),
            format!(
                "block at offset {at}: trailing block length {} does not match leading block length {leading}",
                leading ^ 0x10
            )
        );
    }

    #[test]
    fn error_pcapng_bad_block_lengths() {
        for (len, want) in [
            (8u32, "block total length 8 is less than the minimum of 12"),
            (14, "block total length 14 is not a multiple of 4"),
            (4096, "block is truncated (header says 4096 bytes, 16 left)"),
        ] {
            let mut ng = Ng::new(false);
            let at = ng.out.len();
            put32(&mut ng.out, 0x99, false);
            put32(&mut ng.out, len, false);
            put32(&mut ng.out, 0, false);
            put32(&mut ng.out, len, false);
            assert_eq!(msg(&ng.out), format!("block at offset {at}: {want}"));
        }
    }

    #[test]
    fn error_pcapng_epb_before_idb() {
        let mut ng = Ng::new(false);
        let at = ng.epb(0, 0, &[1, 2, 3], 3);
        assert_eq!(
            msg(&ng.out),
            format!(
                "block at offset {at} (frame 1): packet refers to interface 0, but only 0 \
                 interface(s) are described in this section so far"
            )
        );
        let mut ng = Ng::new(false);
        ng.spb(3, &[1, 2, 3]);
        assert!(matches!(
            parse(&ng.out),
            Err(CaptureError::PacketBlock {
                problem: Problem::UnknownInterface { id: 0, count: 0 },
                ..
            })
        ));
        let mut ng = Ng::new(false);
        ng.idb(1, 0, &[]);
        ng.epb(u32::MAX, 0, &[], 0);
        assert!(matches!(
            parse(&ng.out),
            Err(CaptureError::PacketBlock {
                problem: Problem::UnknownInterface {
                    id: u32::MAX,
                    count: 1
                },
                ..
            })
        ));
    }

    #[test]
    fn error_pcapng_section_header() {
        let mut ng = Ng::new(false);
        ng.out[8..12].copy_from_slice(&0xdead_beefu32.to_le_bytes());
        assert_eq!(
            msg(&ng.out),
            "block at offset 0: section header byte-order magic 0xdeadbeef is not 0x1a2b3c4d in either byte order"
        );
        let mut ng = Ng::new(false);
        ng.out[12] = 2;
        assert!(matches!(
            parse(&ng.out),
            Err(CaptureError::Block {
                offset: 0,
                problem: Problem::PcapngVersion { major: 2, minor: 0 }
            })
        ));
    }

    #[test]
    fn error_pcapng_bad_options() {
        let mut ng = Ng::new(false);
        ng.idb(1, 0, &[(OPT_IF_TSRESOL, vec![6, 6])]);
        assert!(matches!(
            parse(&ng.out),
            Err(CaptureError::Block {
                problem: Problem::OptionLength {
                    code: 9,
                    len: 2,
                    expected: 1
                },
                ..
            })
        ));
        // An option claiming more bytes than the block holds.
        let mut ng = Ng::new(false);
        let mut b = Vec::new();
        put16(&mut b, 1, false);
        put16(&mut b, 0, false);
        put32(&mut b, 0, false);
        put16(&mut b, 2, false);
        put16(&mut b, 200, false);
        b.extend_from_slice(b"eth0");
        ng.block(PCAPNG_IDB, &b);
        assert!(matches!(
            parse(&ng.out),
            Err(CaptureError::Block {
                problem: Problem::OptionOverrun { code: 2, len: 200 },
                ..
            })
        ));
    }

    #[test]
    fn read_file_errors_name_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pcap");
        let err = read_file(&missing).unwrap_err();
        assert!(matches!(err, CaptureError::Io { .. }));
        let s = err.to_string();
        assert!(
            s.starts_with(&format!("{}: cannot read: ", missing.display())),
            "{s}"
        );

        let bad = dir.path().join("bad.pcap");
        std::fs::write(&bad, 0x1234_5678u32.to_le_bytes().repeat(8)).unwrap();
        let err = read_file(&bad).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "{}: not a capture file: magic 0x12345678 is neither pcap nor pcapng",
                bad.display()
            )
        );
        assert!(matches!(
            err.without_path(),
            CaptureError::BadMagic { magic: 0x1234_5678 }
        ));
    }

    // ---- writer ----

    #[test]
    fn write_file_then_read_file_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.pcap");
        let frames = sample_frames(); // timestamps are whole microseconds
        write_file(&path, &frames).unwrap();
        let cap = read_file(&path).unwrap();
        assert_eq!(cap.format, Format::PcapMicro);
        assert!(!cap.big_endian);
        assert_eq!(cap.frames, frames);

        let raw = std::fs::read(&path).unwrap();
        assert_eq!(&raw[..4], &[0xd4, 0xc3, 0xb2, 0xa1]);
        assert_eq!(&raw[16..20], &65535u32.to_le_bytes());
        assert_eq!(&raw[20..24], &1u32.to_le_bytes());
    }

    #[test]
    fn write_file_error_names_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("no/such/dir/out.pcap");
        let err = write_file(&path, &[]).unwrap_err();
        assert!(err.to_string().contains(&path.display().to_string()));
    }

    #[test]
    fn micro_writer_rounds_down_to_microseconds() {
        let mut w = PcapWriter::new(Vec::new()).unwrap();
        w.write(1_999_999_999, &[1, 2]).unwrap();
        let cap = parse(&w.into_inner().unwrap()).unwrap();
        assert_eq!(cap.frames[0].ts_ns, 1_999_999_000);
        assert_eq!(cap.frames[0].orig_len, 2);
    }

    #[test]
    fn nanos_writer_round_trips_exactly() {
        let mut w = PcapWriter::new_nanos(Vec::new()).unwrap();
        w.write(1_700_000_000_123_456_789, &eth(100, 1)).unwrap();
        w.write(0, &[]).unwrap();
        w.write(u64::from(u32::MAX) * NS_PER_SEC + 999_999_999, &[9])
            .unwrap();
        let bytes = w.into_inner().unwrap();
        assert_eq!(&bytes[..4], &[0x4d, 0x3c, 0xb2, 0xa1]);
        let cap = parse(&bytes).unwrap();
        assert_eq!(cap.format, Format::PcapNano);
        let ts: Vec<u64> = cap.frames.iter().map(|f| f.ts_ns).collect();
        assert_eq!(
            ts,
            vec![
                1_700_000_000_123_456_789,
                0,
                u64::from(u32::MAX) * NS_PER_SEC + 999_999_999
            ]
        );
        assert_eq!(cap.frames[0].data, eth(100, 1));
    }

    #[test]
    fn writer_refuses_what_pcap_cannot_hold() {
        let mut w = PcapWriter::new(Vec::new()).unwrap();
        let past_2106 = (u64::from(u32::MAX) + 1) * NS_PER_SEC;
        let e = w.write(past_2106, &[1]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        let e = w.write(0, &vec![0; 65_536]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        let e = w
            .write_frame(&Frame {
                ts_ns: 0,
                data: vec![0; 10],
                orig_len: 9,
            })
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        w.write(0, &vec![0; 65_535]).unwrap();
        // Nothing was written for the refused frames.
        let cap = parse(&w.into_inner().unwrap()).unwrap();
        assert_eq!(cap.frames.len(), 1);
    }

    // ---- properties ----

    fn arb_frames() -> impl Strategy<Value = Vec<(u64, Vec<u8>, u32)>> {
        prop::collection::vec(
            (
                0..=u64::from(u32::MAX) * NS_PER_SEC + 999_999_999,
                prop::collection::vec(any::<u8>(), 0..2000),
                0u32..100,
            ),
            0..8,
        )
    }

    /// Valid captures of every format, to be mangled.
    fn valid_inputs() -> Vec<Vec<u8>> {
        vec![
            sample_pcap(false, false),
            sample_pcap(true, false),
            sample_pcap(false, true),
            sample_pcap(true, true),
            sample_pcapng(false).0,
            sample_pcapng(true).0,
        ]
    }

    proptest! {
        #[test]
        fn prop_nanos_writer_round_trip(frames in arb_frames()) {
            let mut w = PcapWriter::new_nanos(Vec::new()).unwrap();
            let mut expected = Vec::new();
            for (ts_ns, data, extra) in frames {
                let frame = Frame { ts_ns, orig_len: data.len() as u32 + extra, data };
                if extra == 0 {
                    w.write(frame.ts_ns, &frame.data).unwrap();
                } else {
                    w.write_frame(&frame).unwrap();
                }
                expected.push(frame);
            }
            let cap = parse(&w.into_inner().unwrap()).unwrap();
            prop_assert_eq!(cap.format, Format::PcapNano);
            prop_assert_eq!(cap.frames, expected);
        }

        #[test]
        fn prop_parse_arbitrary_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
            let _ = parse(&bytes);
        }

        #[test]
        fn prop_parse_after_known_magic_never_panics(
            which in 0usize..6,
            tail in prop::collection::vec(any::<u8>(), 0..600),
        ) {
            // Keep a valid header so the parsers themselves see the garbage.
            let base = &valid_inputs()[which];
            let keep = if which < 4 { 24 } else { 28 };
            let mut bytes = base[..keep].to_vec();
            bytes.extend_from_slice(&tail);
            let _ = parse(&bytes);
        }

        #[test]
        fn prop_parse_mangled_captures_never_panics(
            which in 0usize..6,
            edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut bytes = valid_inputs()[which].clone();
            for (at, value) in edits {
                let i = at.index(bytes.len());
                bytes[i] = value;
            }
            let _ = parse(&bytes);
            let cut = cut.index(bytes.len() + 1);
            if let Err(e) = parse(&bytes[..cut]) {
                prop_assert!(!e.to_string().is_empty());
            }
        }
    }
}
