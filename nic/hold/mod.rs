//! What a VM holds and how it lives on its worker: [`vm`] is one VM's pure state machine
//! (modes, fences, commits, limits, checkpoint requests) over its epoch queue ([`epoch`],
//! output commit) and request policy ([`policy`]), with every frame counted in its [`ledger`]
//! (invariant 4).

pub mod epoch;
pub mod ledger;
pub mod policy;
pub mod vm;
