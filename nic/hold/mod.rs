//! What a protected VM holds: its epoch queue ([`epoch`], output commit) and the checkpoint
//! request policy ([`policy`]).

pub mod epoch;
pub mod policy;
