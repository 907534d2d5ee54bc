//! Ethernet addressing as the data plane sees it: MAC addresses and the L2 header fields used to
//! demultiplex a frame to its VM. Pure; never panics on short input (a runt frame has no address).

use std::fmt;
use std::str::FromStr;

/// A 48-bit Ethernet address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    pub const BROADCAST: MacAddr = MacAddr([0xff; 6]);

    /// Group addresses (broadcast and multicast) have the I/G bit set.
    #[inline]
    pub fn is_group(&self) -> bool {
        self.0[0] & 0x01 != 0
    }

    /// A unicast address that is not all zeroes: the only kind a VM can be learned from.
    #[inline]
    pub fn is_unicast(&self) -> bool {
        !self.is_group() && self.0 != [0; 6]
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Why a string is not a MAC address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a MAC address (expected six hex bytes separated by ':', e.g. \"52:54:00:12:34:56\")")]
pub struct MacParseError(pub String);

impl FromStr for MacAddr {
    type Err = MacParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || MacParseError(s.to_string());
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for byte in out.iter_mut() {
            let p = parts.next().ok_or_else(err)?;
            if p.len() != 2 {
                return Err(err());
            }
            *byte = u8::from_str_radix(p, 16).map_err(|_| err())?;
        }
        if parts.next().is_some() {
            return Err(err());
        }
        Ok(MacAddr(out))
    }
}

const ETH_HDR: usize = 14;
const TPID_8021Q: u16 = 0x8100;
const TPID_8021AD: u16 = 0x88a8;
/// The pre-standard QinQ outer tag, still sent by some switches (the classifier walks it too).
const TPID_QINQ_OLD: u16 = 0x9100;

/// Destination MAC of a frame, or `None` for a runt shorter than an Ethernet header.
#[inline]
pub fn dst_mac(frame: &[u8]) -> Option<MacAddr> {
    if frame.len() < ETH_HDR {
        return None;
    }
    let mut m = [0u8; 6];
    m.copy_from_slice(&frame[0..6]);
    Some(MacAddr(m))
}

/// Source MAC of a frame, or `None` for a runt shorter than an Ethernet header.
#[inline]
pub fn src_mac(frame: &[u8]) -> Option<MacAddr> {
    if frame.len() < ETH_HDR {
        return None;
    }
    let mut m = [0u8; 6];
    m.copy_from_slice(&frame[6..12]);
    Some(MacAddr(m))
}

/// Tags an untagged frame with 802.1Q VLAN `vlan`: the tag goes after the two MACs.
pub fn insert_vlan(frame: &mut Vec<u8>, vlan: u16) {
    let [a, b] = 0x8100u16.to_be_bytes();
    let [c, d] = vlan.to_be_bytes();
    frame.splice(12..12, [a, b, c, d]);
}

/// The outer VLAN id (802.1Q or 802.1ad tag right after the source MAC), if the frame has one.
#[inline]
pub fn outer_vlan(frame: &[u8]) -> Option<u16> {
    if frame.len() < ETH_HDR + 4 {
        return None;
    }
    let tpid = u16::from_be_bytes([frame[12], frame[13]]);
    if tpid == TPID_8021Q || tpid == TPID_8021AD || tpid == TPID_QINQ_OLD {
        Some(u16::from_be_bytes([frame[14], frame[15]]) & 0x0fff)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_outer_vlan_of_every_tag_the_classifier_walks() {
        for tpid in [0x8100u16, 0x88a8, 0x9100] {
            let mut f = vec![0u8; 12];
            f.extend_from_slice(&tpid.to_be_bytes());
            f.extend_from_slice(&0x200au16.to_be_bytes()); // PCP 1, VID 10
            f.extend_from_slice(&0x0800u16.to_be_bytes());
            f.resize(60, 0);
            assert_eq!(outer_vlan(&f), Some(10), "TPID {tpid:#06x}");
        }
    }

    #[test]
    fn parses_and_prints_mac() {
        let m: MacAddr = "52:54:00:12:34:5A".parse().unwrap();
        assert_eq!(m.0, [0x52, 0x54, 0x00, 0x12, 0x34, 0x5a]);
        assert_eq!(m.to_string(), "52:54:00:12:34:5a");
    }

    #[test]
    fn rejects_malformed_macs() {
        for bad in [
            "",
            "52:54:00:12:34",
            "52:54:00:12:34:56:78",
            "5:54:00:12:34:56",
            "zz:54:00:12:34:56",
            "52-54-00-12-34-56",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn group_and_unicast() {
        assert!(MacAddr::BROADCAST.is_group());
        assert!("33:33:00:00:00:01".parse::<MacAddr>().unwrap().is_group());
        assert!("52:54:00:00:00:01".parse::<MacAddr>().unwrap().is_unicast());
        assert!(!MacAddr([0; 6]).is_unicast());
    }

    #[test]
    fn header_fields_and_runts() {
        let mut f = vec![0u8; 60];
        f[0..6].copy_from_slice(&[0xff; 6]);
        f[6..12].copy_from_slice(&[0x52, 0x54, 0, 0, 0, 7]);
        f[12..14].copy_from_slice(&0x8100u16.to_be_bytes());
        f[14..16].copy_from_slice(&0x2064u16.to_be_bytes()); // PCP 1, VID 100
        assert_eq!(dst_mac(&f), Some(MacAddr::BROADCAST));
        assert_eq!(src_mac(&f).unwrap().0[5], 7);
        assert_eq!(outer_vlan(&f), Some(100));
        f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        assert_eq!(outer_vlan(&f), None);
        assert_eq!(src_mac(&f[..13]), None);
        assert_eq!(outer_vlan(&f[..17]), None);
    }
}
