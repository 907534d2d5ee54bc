//! Deterministic test traffic: frames of mixed kinds (IPv4 UDP/TCP, IPv6 UDP, ARP, 802.1Q-tagged
//! IPv4, sizes from 60 to 1514 bytes) that each carry a stream id and sequence number, so whoever
//! receives them can check that every frame arrived once and in order. Used by `epochgate demo`,
//! the integration tests and the perf harness; built with etherparse, no DPDK.

use crate::wire::frame::MacAddr;
use etherparse::PacketBuilder;

/// Marker in front of the stream id and sequence number in each generated payload.
pub const MAGIC: [u8; 4] = *b"EGSQ";

/// The kinds of frame the generator cycles through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Ipv4Udp,
    Ipv4Tcp,
    Ipv6Udp,
    Arp,
    Vlan,
}

const KINDS: [Kind; 5] = [
    Kind::Ipv4Udp,
    Kind::Ipv4Tcp,
    Kind::Ipv6Udp,
    Kind::Arp,
    Kind::Vlan,
];

/// A stream of frames from one source.
#[derive(Debug, Clone)]
pub struct Stream {
    pub id: u32,
    pub src: MacAddr,
    pub dst: MacAddr,
    /// Every frame tagged with this VLAN (the `Vlan` kind tags with 100 + id otherwise).
    pub vlan: Option<u16>,
}

/// Frame `seq` of `stream`: its kind and size follow from `seq` so the stream is reproducible.
pub fn frame(stream: &Stream, seq: u32) -> Vec<u8> {
    let kind = KINDS[seq as usize % KINDS.len()];
    // Sizes spread over 60..=1514 with a cheap deterministic hash of (id, seq).
    let h = seq
        .wrapping_mul(2_654_435_761)
        .wrapping_add(stream.id.wrapping_mul(40_503));
    let target = 60 + (h % (1514 - 60 + 1)) as usize;
    let mut payload = Vec::with_capacity(1514);
    payload.extend_from_slice(&MAGIC);
    payload.extend_from_slice(&stream.id.to_be_bytes());
    payload.extend_from_slice(&seq.to_be_bytes());

    let (src, dst) = (stream.src.0, stream.dst.0);
    let ip4 = |b: u8| [10, 7, (stream.id & 0xff) as u8, b];
    let vlan = match (stream.vlan, kind) {
        (Some(v), _) => Some(v),
        (None, Kind::Vlan) => Some(100 + (stream.id % 3000) as u16),
        _ => None,
    };
    let eth = PacketBuilder::ethernet2(src, dst);
    let mut out = Vec::with_capacity(1518);
    match kind {
        Kind::Arp => {
            // etherparse has no ARP builder: Ethernet header + 28-byte ARP request, payload after
            // it (receivers ignore trailing bytes), then padding to the target size.
            out.extend_from_slice(&dst);
            out.extend_from_slice(&src);
            if let Some(v) = vlan {
                out.extend_from_slice(&0x8100u16.to_be_bytes());
                out.extend_from_slice(&v.to_be_bytes());
            }
            out.extend_from_slice(&0x0806u16.to_be_bytes());
            out.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
            out.extend_from_slice(&src);
            out.extend_from_slice(&ip4(1));
            out.extend_from_slice(&[0; 6]);
            out.extend_from_slice(&ip4(2));
            out.extend_from_slice(&payload);
        }
        _ => {
            let hdr_len = 14
                + if vlan.is_some() { 4 } else { 0 }
                + match kind {
                    Kind::Ipv6Udp => 40 + 8,
                    Kind::Ipv4Tcp => 20 + 20,
                    _ => 20 + 8,
                };
            payload.resize(target.saturating_sub(hdr_len).max(payload.len()), 0xa5);
            let link = eth;
            let res = match kind {
                Kind::Ipv6Udp => {
                    let mut a = [0u8; 16];
                    a[0] = 0xfd;
                    a[15] = 1;
                    let mut b = a;
                    b[15] = 2;
                    link.ipv6(a, b, 64)
                        .udp(4000, 5000)
                        .write(&mut out, &payload)
                }
                Kind::Ipv4Tcp => link
                    .ipv4(ip4(1), ip4(2), 64)
                    .tcp(4000, 80, seq, 65535)
                    .ack(1)
                    .write(&mut out, &payload),
                _ => link
                    .ipv4(ip4(1), ip4(2), 64)
                    .udp(4000, 5000)
                    .write(&mut out, &payload),
            };
            res.expect("writing to a Vec cannot fail and payload sizes are within limits");
            if let Some(v) = vlan {
                // etherparse's VLAN builder is another type: tag the finished frame instead.
                crate::wire::frame::insert_vlan(&mut out, v);
            }
        }
    }
    if out.len() < target {
        out.resize(target, 0);
    }
    out
}

/// The first `n` frames of `stream`.
pub fn frames(stream: &Stream, n: u32) -> Vec<Vec<u8>> {
    (0..n).map(|seq| frame(stream, seq)).collect()
}

/// Where a generated frame came from: (stream id, sequence number), if it carries the marker.
pub fn stamp(frame: &[u8]) -> Option<(u32, u32)> {
    let at = frame.windows(4).position(|w| w == MAGIC)?;
    let rest = frame.get(at + 4..at + 12)?;
    let id = u32::from_be_bytes(rest[0..4].try_into().ok()?);
    let seq = u32::from_be_bytes(rest[4..8].try_into().ok()?);
    Some((id, seq))
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::SlicedPacket;

    fn stream(id: u32) -> Stream {
        Stream {
            id,
            src: MacAddr([0x52, 0x54, 0, 0, 0, id as u8]),
            dst: MacAddr([0x52, 0x54, 0, 0, 1, 0]),
            vlan: None,
        }
    }

    #[test]
    fn frames_are_valid_sized_and_stamped() {
        let s = stream(3);
        for seq in 0..500 {
            let f = frame(&s, seq);
            assert!(
                (60..=1518).contains(&f.len()),
                "frame {seq} is {} bytes",
                f.len()
            );
            assert_eq!(stamp(&f), Some((3, seq)));
            assert_eq!(&f[6..12], &s.src.0);
            if !matches!(KINDS[seq as usize % 5], Kind::Arp) {
                SlicedPacket::from_ethernet(&f).expect("generated frame parses");
            }
        }
    }

    #[test]
    fn covers_every_kind_and_size_range() {
        let s = stream(1);
        let frames: Vec<_> = (0..1000).map(|q| frame(&s, q)).collect();
        let ethertype = |f: &Vec<u8>| u16::from_be_bytes([f[12], f[13]]);
        for et in [0x0800, 0x86dd, 0x0806, 0x8100] {
            assert!(
                frames.iter().any(|f| ethertype(f) == et),
                "no ethertype {et:#x}"
            );
        }
        assert!(frames.iter().any(|f| f.len() < 100));
        assert!(frames.iter().any(|f| f.len() > 1400));
    }

    #[test]
    fn forced_vlan_tags_every_frame() {
        let mut s = stream(2);
        s.vlan = Some(10);
        for seq in 0..20 {
            let f = frame(&s, seq);
            assert_eq!(crate::wire::frame::outer_vlan(&f), Some(10));
        }
    }
}
