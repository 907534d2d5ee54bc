//! Who a frame belongs to. Outbound on the shared ingress: the VM whose (source MAC, VLAN) it
//! carries, or nobody (dropped as `unknown-source-mac`). Inbound from the uplink: the VM whose
//! (MAC, VLAN) is its destination; group addresses go to every active VM. Pure: frames are bytes.

use crate::frame::{self, MacAddr};

/// Index of a VM in the data plane's table.
pub type VmIdx = usize;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    mac: MacAddr,
    vlan: Option<u16>,
    vm: VmIdx,
}

/// Where an inbound frame goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inbound {
    /// To this one VM.
    Vm(VmIdx),
    /// A broadcast or multicast: to every active VM.
    All,
    /// To no known VM.
    Nobody,
    /// Too short to have an Ethernet header.
    Runt,
}

/// The address table. VM counts are small (tens), so a linear scan over a compact array beats a
/// hash in the poll loop and needs no allocation after set-up.
#[derive(Debug, Clone, Default)]
pub struct Demux {
    entries: Vec<Entry>,
}

impl Demux {
    pub fn new() -> Demux {
        Demux::default()
    }

    /// Binds (mac, vlan) to `vm`. Refused (false) if another VM already holds that address:
    /// the first owner keeps it, so learning can never steal a configured address.
    pub fn bind(&mut self, mac: MacAddr, vlan: Option<u16>, vm: VmIdx) -> bool {
        if !mac.is_unicast() {
            return false;
        }
        match self.entries.iter().find(|e| e.mac == mac && e.vlan == vlan) {
            Some(e) => e.vm == vm,
            None => {
                self.entries.push(Entry { mac, vlan, vm });
                true
            }
        }
    }

    /// The VM on the shared ingress that sent `frame`: the VM bound to its source MAC on its
    /// outer VLAN, else the VM bound to that MAC with no VLAN (which owns its MAC on any VLAN).
    #[inline]
    pub fn source(&self, frame: &[u8]) -> Option<VmIdx> {
        let src = frame::src_mac(frame)?;
        self.lookup_any_vlan(src, frame::outer_vlan(frame))
    }

    /// The destination of a frame from the uplink.
    #[inline]
    pub fn destination(&self, frame: &[u8]) -> Inbound {
        let Some(dst) = frame::dst_mac(frame) else {
            return Inbound::Runt;
        };
        if dst.is_group() {
            return Inbound::All;
        }
        match self.lookup_any_vlan(dst, frame::outer_vlan(frame)) {
            Some(vm) => Inbound::Vm(vm),
            None => Inbound::Nobody,
        }
    }

    /// Exact (mac, vlan) first; then the VM bound to `mac` without a VLAN.
    #[inline]
    fn lookup_any_vlan(&self, mac: MacAddr, vlan: Option<u16>) -> Option<VmIdx> {
        self.lookup(mac, vlan)
            .or_else(|| vlan.and_then(|_| self.lookup(mac, None)))
    }

    #[inline]
    fn lookup(&self, mac: MacAddr, vlan: Option<u16>) -> Option<VmIdx> {
        self.entries
            .iter()
            .find(|e| e.mac == mac && e.vlan == vlan)
            .map(|e| e.vm)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn mac(last: u8) -> MacAddr {
        MacAddr([0x52, 0x54, 0, 0, 0, last])
    }

    fn frame(dst: MacAddr, src: MacAddr, vlan: Option<u16>) -> Vec<u8> {
        let mut f = Vec::with_capacity(64);
        f.extend_from_slice(&dst.0);
        f.extend_from_slice(&src.0);
        if let Some(v) = vlan {
            f.extend_from_slice(&0x8100u16.to_be_bytes());
            f.extend_from_slice(&v.to_be_bytes());
        }
        f.extend_from_slice(&0x0800u16.to_be_bytes());
        f.resize(60, 0);
        f
    }

    #[test]
    fn source_matches_mac_and_vlan() {
        let mut d = Demux::new();
        assert!(d.bind(mac(1), None, 0));
        assert!(d.bind(mac(2), Some(10), 1));
        assert!(d.bind(mac(1), Some(20), 2));
        assert_eq!(d.source(&frame(MacAddr::BROADCAST, mac(1), None)), Some(0));
        // A VM bound without VLAN owns its MAC on any VLAN not bound to another VM.
        assert_eq!(
            d.source(&frame(MacAddr::BROADCAST, mac(1), Some(10))),
            Some(0)
        );
        assert_eq!(
            d.source(&frame(MacAddr::BROADCAST, mac(1), Some(20))),
            Some(2)
        );
        assert_eq!(
            d.source(&frame(MacAddr::BROADCAST, mac(2), Some(10))),
            Some(1)
        );
        assert_eq!(d.source(&frame(MacAddr::BROADCAST, mac(2), None)), None);
        assert_eq!(d.source(&frame(MacAddr::BROADCAST, mac(3), None)), None);
        assert_eq!(d.source(&[0u8; 11]), None);
    }

    #[test]
    fn destination_kinds() {
        let mut d = Demux::new();
        d.bind(mac(1), None, 0);
        d.bind(mac(2), Some(10), 1);
        assert_eq!(d.destination(&frame(mac(1), mac(9), None)), Inbound::Vm(0));
        assert_eq!(
            d.destination(&frame(mac(2), mac(9), Some(10))),
            Inbound::Vm(1)
        );
        // A tagged frame for an untagged VM's MAC still reaches it (the tag is the network's).
        assert_eq!(
            d.destination(&frame(mac(1), mac(9), Some(5))),
            Inbound::Vm(0)
        );
        assert_eq!(d.destination(&frame(mac(3), mac(9), None)), Inbound::Nobody);
        assert_eq!(
            d.destination(&frame(MacAddr::BROADCAST, mac(9), None)),
            Inbound::All
        );
        let mcast: MacAddr = "01:00:5e:00:00:01".parse().unwrap();
        assert_eq!(d.destination(&frame(mcast, mac(9), None)), Inbound::All);
        assert_eq!(d.destination(&[0u8; 5]), Inbound::Runt);
    }

    #[test]
    fn an_address_has_one_owner() {
        let mut d = Demux::new();
        assert!(d.bind(mac(1), None, 0));
        assert!(
            !d.bind(mac(1), None, 1),
            "a second VM must not take a bound address"
        );
        assert!(
            d.bind(mac(1), None, 0),
            "rebinding to the same VM is harmless"
        );
        assert!(
            d.bind(mac(1), Some(7), 1),
            "the same MAC on another VLAN is another address"
        );
        assert!(!d.bind(MacAddr::BROADCAST, None, 2));
        assert!(!d.bind(MacAddr([0; 6]), None, 2));
    }

    proptest! {
        /// A frame belongs to the VM bound to its (MAC, VLAN), else to the VM bound to its MAC
        /// without VLAN, else to nobody.
        #[test]
        fn source_finds_exactly_the_bound_vm(
            vms in proptest::collection::btree_map((1u8..=250, proptest::option::of(0u16..4095)), any::<u8>(), 1..20),
            probe_mac in 1u8..=250, probe_vlan in proptest::option::of(0u16..4095),
        ) {
            let mut d = Demux::new();
            for (i, (&(m, v), _)) in vms.iter().enumerate() {
                prop_assert!(d.bind(mac(m), v, i));
            }
            let expect = vms.keys().position(|k| *k == (probe_mac, probe_vlan))
                .or_else(|| probe_vlan.and_then(|_| vms.keys().position(|k| *k == (probe_mac, None))));
            prop_assert_eq!(d.source(&frame(MacAddr::BROADCAST, mac(probe_mac), probe_vlan)), expect);
        }
    }
}
