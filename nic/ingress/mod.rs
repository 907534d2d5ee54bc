//! Ingress: telling VMs apart on their ports and on the shared ingress, and the spoof checks
//! ([`demux`]).

pub mod demux;
