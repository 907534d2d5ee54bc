//! On the wire: Ethernet/VLAN/IP parsing helpers ([`frame`]) and the frames epochgate builds
//! itself ([`announce`]).

pub mod announce;
pub mod frame;
