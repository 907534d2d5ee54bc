//! Egress: the scheduler, its regulators and the TX order ([`sched`]).

pub mod sched;
