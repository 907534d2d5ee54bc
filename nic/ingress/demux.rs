//! Who a frame belongs to. Outbound on the shared ingress: the VM *attached to the shared
//! ingress* whose (source MAC, VLAN) it carries; a frame carrying the address of a VM that has
//! its own port is a spoof (dropped as `spoofed-source-mac`), one carrying nobody's is dropped as
//! `unknown-source-mac`. So a sender on the shared ingress can never put frames into another
//! VM's epochs. Inbound from the uplink: the VM whose (MAC, VLAN) is its destination; group
//! addresses go to every active VM. Pure: frames are bytes.

use crate::wire::frame::{self, MacAddr};

/// Index of a VM in the data plane's table.
pub type VmIdx = usize;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    mac: MacAddr,
    vlan: Option<u16>,
    vm: VmIdx,
    attach: Attach,
}

/// Where a VM sends from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attach {
    /// The shared ingress, where it is recognised by source MAC (and VLAN).
    Shared,
    /// Its own port: frames from it are its own whatever they carry.
    OwnPort,
}

/// Whose a frame on the shared ingress is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A VM attached to the shared ingress.
    Vm(VmIdx),
    /// It carries the address of this VM, which has its own port: a spoof.
    Spoofed(VmIdx),
    /// It carries no VM's address.
    Unknown,
    /// Too short to have an Ethernet header.
    Runt,
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

    /// Binds (mac, vlan) to `vm`, which sends from `attach`. Refused (false) if another VM
    /// already holds that address: the first owner keeps it, so learning can never steal a
    /// configured address.
    pub fn bind(&mut self, mac: MacAddr, vlan: Option<u16>, vm: VmIdx, attach: Attach) -> bool {
        if !mac.is_unicast() {
            return false;
        }
        match self.entries.iter().find(|e| e.mac == mac && e.vlan == vlan) {
            Some(e) => e.vm == vm,
            None => {
                self.entries.push(Entry {
                    mac,
                    vlan,
                    vm,
                    attach,
                });
                true
            }
        }
    }

    /// Who sent `frame` on the shared ingress: the VM bound to its source MAC on its outer
    /// VLAN, else the VM bound to that MAC with no VLAN (which owns its MAC on any VLAN); only
    /// a VM attached to the shared ingress can be the sender.
    #[inline]
    pub fn source(&self, frame: &[u8]) -> Source {
        let Some(src) = frame::src_mac(frame) else {
            return Source::Runt;
        };
        match self.entry_any_vlan(src, frame::outer_vlan(frame)) {
            Some(Entry {
                vm,
                attach: Attach::Shared,
                ..
            }) => Source::Vm(*vm),
            Some(Entry { vm, .. }) => Source::Spoofed(*vm),
            None => Source::Unknown,
        }
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
        match self.entry_any_vlan(dst, frame::outer_vlan(frame)) {
            Some(e) => Inbound::Vm(e.vm),
            None => Inbound::Nobody,
        }
    }

    /// Exact (mac, vlan) first; then the entry of `mac` without a VLAN.
    #[inline]
    fn entry_any_vlan(&self, mac: MacAddr, vlan: Option<u16>) -> Option<&Entry> {
        self.entry(mac, vlan)
            .or_else(|| vlan.and_then(|_| self.entry(mac, None)))
    }

    #[inline]
    fn entry(&self, mac: MacAddr, vlan: Option<u16>) -> Option<&Entry> {
        self.entries.iter().find(|e| e.mac == mac && e.vlan == vlan)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use Attach::{OwnPort, Shared};

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
        assert!(d.bind(mac(1), None, 0, Shared));
        assert!(d.bind(mac(2), Some(10), 1, Shared));
        assert!(d.bind(mac(1), Some(20), 2, Shared));
        assert_eq!(
            d.source(&frame(MacAddr::BROADCAST, mac(1), None)),
            Source::Vm(0)
        );
        // A VM bound without VLAN owns its MAC on any VLAN not bound to another VM.
        assert_eq!(
            d.source(&frame(MacAddr::BROADCAST, mac(1), Some(10))),
            Source::Vm(0)
        );
        assert_eq!(
            d.source(&frame(MacAddr::BROADCAST, mac(1), Some(20))),
            Source::Vm(2)
        );
        assert_eq!(
            d.source(&frame(MacAddr::BROADCAST, mac(2), Some(10))),
            Source::Vm(1)
        );
        assert_eq!(
            d.source(&frame(MacAddr::BROADCAST, mac(2), None)),
            Source::Unknown
        );
        assert_eq!(
            d.source(&frame(MacAddr::BROADCAST, mac(3), None)),
            Source::Unknown
        );
        assert_eq!(d.source(&[0u8; 11]), Source::Runt);
    }

    #[test]
    fn destination_kinds() {
        let mut d = Demux::new();
        d.bind(mac(1), None, 0, Shared);
        d.bind(mac(2), Some(10), 1, Shared);
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
        assert!(d.bind(mac(1), None, 0, Shared));
        assert!(
            !d.bind(mac(1), None, 1, Shared),
            "a second VM must not take a bound address"
        );
        assert!(
            d.bind(mac(1), None, 0, Shared),
            "rebinding to the same VM is harmless"
        );
        assert!(
            d.bind(mac(1), Some(7), 1, Shared),
            "the same MAC on another VLAN is another address"
        );
        assert!(!d.bind(MacAddr::BROADCAST, None, 2, Shared));
        assert!(!d.bind(MacAddr([0; 6]), None, 2, Shared));
    }

    #[test]
    fn a_vm_with_its_own_port_is_never_the_sender_on_the_shared_ingress() {
        let mut d = Demux::new();
        assert!(d.bind(mac(1), None, 0, OwnPort)); // configured or learned on its own port
        assert!(d.bind(mac(2), Some(10), 1, Shared));
        assert!(d.bind(mac(3), Some(10), 2, OwnPort));
        // Its MAC on any VLAN, or with its own VLAN: a spoof, never its output.
        for vlan in [None, Some(10), Some(99)] {
            assert_eq!(
                d.source(&frame(MacAddr::BROADCAST, mac(1), vlan)),
                Source::Spoofed(0)
            );
        }
        assert_eq!(
            d.source(&frame(MacAddr::BROADCAST, mac(3), Some(10))),
            Source::Spoofed(2)
        );
        assert_eq!(
            d.source(&frame(MacAddr::BROADCAST, mac(2), Some(10))),
            Source::Vm(1)
        );
        // The inbound path still reaches every VM by its address.
        assert_eq!(d.destination(&frame(mac(1), mac(9), None)), Inbound::Vm(0));
        assert_eq!(
            d.destination(&frame(mac(3), mac(9), Some(10))),
            Inbound::Vm(2)
        );
    }

    proptest! {
        /// Only a VM attached to the shared ingress is ever named as a sender there; a frame
        /// with the address of a VM on its own port is a spoof of exactly that VM.
        #[test]
        fn the_shared_ingress_names_only_its_own_vms(
            vms in proptest::collection::btree_map((1u8..=250, proptest::option::of(0u16..4095)), any::<bool>(), 1..20),
            probe_mac in 1u8..=250, probe_vlan in proptest::option::of(0u16..4095),
        ) {
            let mut d = Demux::new();
            let attach = |shared: bool| if shared { Shared } else { OwnPort };
            for (i, (&(m, v), &shared)) in vms.iter().enumerate() {
                prop_assert!(d.bind(mac(m), v, i, attach(shared)));
            }
            let owner = vms.keys().position(|k| *k == (probe_mac, probe_vlan))
                .or_else(|| probe_vlan.and_then(|_| vms.keys().position(|k| *k == (probe_mac, None))));
            let expect = match owner {
                None => Source::Unknown,
                Some(i) if *vms.values().nth(i).unwrap() => Source::Vm(i),
                Some(i) => Source::Spoofed(i),
            };
            prop_assert_eq!(d.source(&frame(MacAddr::BROADCAST, mac(probe_mac), probe_vlan)), expect);
        }
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
                prop_assert!(d.bind(mac(m), v, i, Shared));
            }
            let expect = vms.keys().position(|k| *k == (probe_mac, probe_vlan))
                .or_else(|| probe_vlan.and_then(|_| vms.keys().position(|k| *k == (probe_mac, None))));
            let expect = expect.map_or(Source::Unknown, Source::Vm);
            prop_assert_eq!(d.source(&frame(MacAddr::BROADCAST, mac(probe_mac), probe_vlan)), expect);
        }
    }
}
