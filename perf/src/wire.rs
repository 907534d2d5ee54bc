//! The harness's frames: traffic profiles built as templates once, and the 16-byte stamp every
//! generated frame carries in its last 16 bytes (VM id, per-VM sequence number, TX TSC).
//!
//! Sizes are Ethernet frame sizes as RFC 2544 counts them (with the 4-byte FCS the wire adds),
//! so a "64 B" frame is 60 bytes in the mbuf. The stamp lives at the end of the frame: inside
//! the UDP payload of UDP frames and fragments, and in the Ethernet padding after a pure TCP
//! ACK (the IPv4 total length excludes it, so the classifier still sees an ACK without data).
//! Checksums: IPv4 header checksums are right; UDP checksums are 0 (allowed in IPv4); TCP
//! checksums are not recomputed after stamping (nothing on the path verifies them).

use serde::{Deserialize, Serialize};

/// Bytes of the stamp at the end of every generated frame.
pub const STAMP_LEN: usize = 16;
const MAGIC: [u8; 2] = [0xeb, 0x9a];
/// The destination MAC of all generated frames (an address no VM has).
pub const DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xfe];
/// Smallest frame size (with FCS) that carries a stamp after a pure ACK: 54 + 16 + 4.
pub const MIN_ACK_SIZE: u32 = 74;

/// What a generated frame says about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Index of the simulated VM in the plan.
    pub vm: u16,
    /// Per-VM sequence number, from 1.
    pub seq: u32,
    /// The generator's TSC when it built the frame.
    pub tsc: u64,
}

impl Stamp {
    pub fn write(&self, frame: &mut [u8]) {
        let n = frame.len();
        let s = &mut frame[n - STAMP_LEN..];
        s[0..2].copy_from_slice(&MAGIC);
        s[2..4].copy_from_slice(&self.vm.to_be_bytes());
        s[4..8].copy_from_slice(&self.seq.to_be_bytes());
        s[8..16].copy_from_slice(&self.tsc.to_le_bytes());
    }

    /// The stamp of a generated frame; `None` for anything else.
    pub fn read(frame: &[u8]) -> Option<Stamp> {
        let s = frame.get(frame.len().checked_sub(STAMP_LEN)?..)?;
        if s[0..2] != MAGIC {
            return None;
        }
        Some(Stamp {
            vm: u16::from_be_bytes([s[2], s[3]]),
            seq: u32::from_be_bytes([s[4], s[5], s[6], s[7]]),
            tsc: u64::from_le_bytes(s[8..16].try_into().ok()?),
        })
    }
}

/// A traffic profile: the kinds and sizes of frame a simulated VM sends, cycled in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Profile {
    /// UDP over IPv4 at one frame size (64..=1518).
    Udp { size: u32 },
    /// Simple IMIX: 64, 570 and 1518-byte UDP frames, 7:4:1.
    Imix,
    /// A TCP-like ACK-heavy stream: seven pure ACKs (deferrable) per 1518-byte data segment.
    Acks,
    /// Pure TCP ACKs only (74 B, every one deferrable by the built-in classifier): a VM whose
    /// checkpoint requests all come from deferrals running out.
    Ack,
    /// IPv4 fragments of `size`-byte UDP datagrams: a first fragment (more-fragments set,
    /// deferrable) and a last one (immediate), each `size` bytes on the wire.
    Fragments { size: u32 },
    /// All of the above in turn: UDP 64 B, IMIX, ACKs, fragments of 1518 B.
    Mix,
}

impl Profile {
    /// Parses `udp64`, `udp1518`, `imix`, `acks`, `ack`, `frag1518`, `mix`.
    pub fn parse(s: &str) -> Result<Profile, String> {
        let size = |rest: &str| -> Result<u32, String> {
            let n: u32 = rest
                .parse()
                .map_err(|_| format!("profile {s:?}: {rest:?} is not a frame size"))?;
            if !(64..=1518).contains(&n) {
                return Err(format!(
                    "profile {s:?}: frame size {n} is outside 64..=1518"
                ));
            }
            Ok(n)
        };
        match s {
            "imix" => Ok(Profile::Imix),
            "acks" => Ok(Profile::Acks),
            "ack" => Ok(Profile::Ack),
            "mix" => Ok(Profile::Mix),
            _ if s.starts_with("udp") => Ok(Profile::Udp {
                size: size(&s[3..])?,
            }),
            _ if s.starts_with("frag") => Ok(Profile::Fragments {
                size: size(&s[4..])?.max(96),
            }),
            _ => Err(format!(
                "unknown profile {s:?}: expected udpN (N = 64..1518), imix, acks, ack, fragN or mix"
            )),
        }
    }

    pub fn name(&self) -> String {
        match self {
            Profile::Udp { size } => format!("udp{size}"),
            Profile::Imix => "imix".into(),
            Profile::Acks => "acks".into(),
            Profile::Ack => "ack".into(),
            Profile::Fragments { size } => format!("frag{size}"),
            Profile::Mix => "mix".into(),
        }
    }

    /// The templates of VM `vm` (source MAC `mac`), in the order they are sent.
    pub fn templates(&self, vm: u16, mac: [u8; 6]) -> Vec<Vec<u8>> {
        let src_ip = [10, 9, (vm >> 8) as u8, vm as u8];
        let udp = |size: u32| udp_frame(mac, src_ip, size);
        match *self {
            Profile::Udp { size } => vec![udp(size)],
            Profile::Imix => {
                let mut v = vec![udp(64); 7];
                v.extend(std::iter::repeat_n(udp(570), 4));
                v.push(udp(1518));
                v
            }
            Profile::Acks => {
                let mut v: Vec<Vec<u8>> = (0..7)
                    .map(|i| tcp_frame(mac, src_ip, MIN_ACK_SIZE, 1 + i, false))
                    .collect();
                v.push(tcp_frame(mac, src_ip, 1518, 8, true));
                v
            }
            Profile::Ack => vec![tcp_frame(mac, src_ip, MIN_ACK_SIZE, 1, false)],
            Profile::Fragments { size } => fragments(mac, src_ip, size),
            Profile::Mix => {
                let mut v = vec![udp(64)];
                v.extend(Profile::Imix.templates(vm, mac));
                v.extend(Profile::Acks.templates(vm, mac));
                v.extend(fragments(mac, src_ip, 1518));
                v
            }
        }
    }
}

/// Ethernet + IPv4 header (no options) of an IPv4 packet of `ip_len` bytes.
fn eth_ipv4(mac: [u8; 6], src: [u8; 4], ip_len: usize, proto: u8, frag: u16) -> Vec<u8> {
    let mut f = Vec::with_capacity(1514);
    f.extend_from_slice(&DST_MAC);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&(ip_len as u16).to_be_bytes());
    ip[4..6].copy_from_slice(&0x4547u16.to_be_bytes()); // identification
    ip[6..8].copy_from_slice(&frag.to_be_bytes());
    ip[8] = 64;
    ip[9] = proto;
    ip[12..16].copy_from_slice(&src);
    ip[16..20].copy_from_slice(&[10, 9, 255, 1]);
    let sum = checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    f.extend_from_slice(&ip);
    f
}

fn checksum(bytes: &[u8]) -> u16 {
    let mut s: u32 = bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

/// The mbuf length of a frame of `size` bytes on the wire (FCS excluded).
fn mbuf_len(size: u32) -> usize {
    size as usize - 4
}

fn udp_frame(mac: [u8; 6], src: [u8; 4], size: u32) -> Vec<u8> {
    let len = mbuf_len(size);
    let ip_len = len - 14;
    let mut f = eth_ipv4(mac, src, ip_len, 17, 0);
    f.extend_from_slice(&4000u16.to_be_bytes());
    f.extend_from_slice(&5000u16.to_be_bytes());
    f.extend_from_slice(&((ip_len - 20) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]); // no checksum
    f.resize(len, 0xa5);
    f
}

/// A TCP segment: a pure ACK whose stamp sits in the Ethernet padding, or a data segment.
fn tcp_frame(mac: [u8; 6], src: [u8; 4], size: u32, seq: u32, data: bool) -> Vec<u8> {
    let len = mbuf_len(size);
    let ip_len = if data { len - 14 } else { 40 };
    let mut f = eth_ipv4(mac, src, ip_len, 6, 0x4000);
    f.extend_from_slice(&4000u16.to_be_bytes());
    f.extend_from_slice(&80u16.to_be_bytes());
    f.extend_from_slice(&(seq * 1460).to_be_bytes());
    f.extend_from_slice(&(seq * 7).to_be_bytes());
    let flags: u8 = if data { 0x18 } else { 0x10 }; // PSH|ACK or ACK
    f.extend_from_slice(&[0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    f.resize(len, 0);
    f
}

fn fragments(mac: [u8; 6], src: [u8; 4], size: u32) -> Vec<Vec<u8>> {
    let len = mbuf_len(size);
    // First: IP header + UDP header + payload, a multiple of 8 bytes after the IP header.
    let first_payload = (len - 34) / 8 * 8;
    let mut first = eth_ipv4(mac, src, 20 + first_payload, 17, 0x2000);
    first.extend_from_slice(&4000u16.to_be_bytes());
    first.extend_from_slice(&5000u16.to_be_bytes());
    first.extend_from_slice(&((first_payload + len - 34) as u16).to_be_bytes());
    first.extend_from_slice(&[0, 0]);
    first.resize(34 + first_payload, 0xa5);
    let offset = (first_payload / 8) as u16;
    let mut last = eth_ipv4(mac, src, len - 14, 17, offset);
    last.resize(len, 0x5a);
    vec![first, last]
}

#[cfg(test)]
mod tests {
    use super::*;
    use epochgate::classify::{builtin, parse};

    fn all_profiles() -> Vec<Profile> {
        vec![
            Profile::Udp { size: 64 },
            Profile::Udp { size: 1518 },
            Profile::Imix,
            Profile::Acks,
            Profile::Ack,
            Profile::Fragments { size: 1518 },
            Profile::Fragments { size: 96 },
            Profile::Mix,
        ]
    }

    #[test]
    fn stamps_round_trip_at_every_size_of_every_profile() {
        for p in all_profiles() {
            for (i, mut t) in p.templates(3, [2, 0, 0, 0, 0, 3]).into_iter().enumerate() {
                let s = Stamp {
                    vm: 3,
                    seq: 0xdead_0000 + i as u32,
                    tsc: 0x0123_4567_89ab_cdef,
                };
                s.write(&mut t);
                assert_eq!(Stamp::read(&t), Some(s), "{p:?} template {i}");
                let info = parse(&t);
                assert!(!info.malformed, "{p:?} template {i} parses as malformed");
            }
        }
        assert_eq!(Stamp::read(&[0u8; 60]), None);
        assert_eq!(Stamp::read(&[0u8; 3]), None);
    }

    #[test]
    fn sizes_are_wire_sizes() {
        assert_eq!(Profile::Udp { size: 64 }.templates(0, [2; 6])[0].len(), 60);
        assert_eq!(
            Profile::Udp { size: 1518 }.templates(0, [2; 6])[0].len(),
            1514
        );
        let imix: Vec<usize> = Profile::Imix
            .templates(0, [2; 6])
            .iter()
            .map(Vec::len)
            .collect();
        assert_eq!(imix.iter().filter(|&&l| l == 60).count(), 7);
        assert_eq!(imix.iter().filter(|&&l| l == 566).count(), 4);
        assert_eq!(imix.iter().filter(|&&l| l == 1514).count(), 1);
    }

    #[test]
    fn the_classifier_sees_what_each_profile_promises() {
        let deferrable = |p: Profile| -> Vec<bool> {
            p.templates(1, [2, 0, 0, 0, 0, 1])
                .iter()
                .map(|t| builtin(&parse(t)).is_deferrable())
                .collect()
        };
        assert_eq!(deferrable(Profile::Udp { size: 64 }), vec![false]);
        let acks = deferrable(Profile::Acks);
        assert_eq!(acks, [vec![true; 7], vec![false]].concat());
        assert_eq!(deferrable(Profile::Ack), vec![true]);
        assert_eq!(
            deferrable(Profile::Fragments { size: 1518 }),
            vec![true, false]
        );
    }

    #[test]
    fn profiles_parse_and_bad_ones_say_why() {
        assert_eq!(Profile::parse("udp64"), Ok(Profile::Udp { size: 64 }));
        assert_eq!(
            Profile::parse("frag1518"),
            Ok(Profile::Fragments { size: 1518 })
        );
        assert!(Profile::parse("udp63").unwrap_err().contains("64..=1518"));
        assert!(Profile::parse("udpx")
            .unwrap_err()
            .contains("not a frame size"));
        assert!(Profile::parse("tcp")
            .unwrap_err()
            .contains("unknown profile"));
        for p in all_profiles() {
            assert_eq!(Profile::parse(&p.name()).map(|q| q.name()), Ok(p.name()));
        }
    }
}
