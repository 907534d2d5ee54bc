//! Invariant 4 ("nothing lost silently") in one place: where every frame a VM sent is.
//!
//! A frame enters the ledger once, when it is received, in a [`Place`]; afterwards it only ever
//! moves from one place to another ([`Ledger::moved`]). No count is added anywhere else, so
//! received = held + ready + staged + transmitted + dropped by reason holds by construction, at
//! every moment. What the ledger cannot know by itself is whether its places agree with the
//! queues they describe; [`crate::hold::vm::VmCore`] checks that after every change in debug
//! builds and the model test checks it after every step.

use crate::stats::DropReason;

/// Where a frame of a VM is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// In an epoch not yet committed.
    Held,
    /// Released: waiting for the egress scheduler or the VM's rate.
    Ready,
    /// In the egress TX burst; TX has not taken it yet.
    Staged,
    /// Taken by the egress TX queue.
    Transmitted,
    /// Dropped, and why.
    Dropped(DropReason),
}

/// A VM's frames by place (plain numbers: only its worker writes them), plus bytes where they
/// are needed for stats (received and transmitted; held and ready bytes are the queue's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ledger {
    pub rx_frames: u64,
    pub rx_bytes: u64,
    pub held: u64,
    pub ready: u64,
    pub staged: u64,
    pub tx_frames: u64,
    pub tx_bytes: u64,
    pub drops: [u64; DropReason::ALL.len()],
}

impl Default for Ledger {
    fn default() -> Self {
        Ledger {
            rx_frames: 0,
            rx_bytes: 0,
            held: 0,
            ready: 0,
            staged: 0,
            tx_frames: 0,
            tx_bytes: 0,
            drops: [0; DropReason::ALL.len()],
        }
    }
}

impl Ledger {
    /// `frames` frames of `bytes` bytes were received and are now at `to`.
    #[inline]
    pub fn received(&mut self, frames: u64, bytes: u64, to: Place) {
        self.rx_frames += frames;
        self.rx_bytes += bytes;
        *self.slot(to) += frames;
        if to == Place::Transmitted {
            self.tx_bytes += bytes;
        }
    }

    /// `frames` frames moved from `from` to `to`; `bytes` matters only when they were
    /// transmitted (it is what the transmitted bytes count grows by).
    #[inline]
    pub fn moved(&mut self, from: Place, to: Place, frames: u64, bytes: u64) {
        let f = self.slot(from);
        debug_assert!(*f >= frames, "{frames} frames from {from:?}, which has {f}");
        *f -= frames;
        *self.slot(to) += frames;
        if to == Place::Transmitted {
            self.tx_bytes += bytes;
        }
    }

    fn slot(&mut self, p: Place) -> &mut u64 {
        match p {
            Place::Held => &mut self.held,
            Place::Ready => &mut self.ready,
            Place::Staged => &mut self.staged,
            Place::Transmitted => &mut self.tx_frames,
            Place::Dropped(r) => &mut self.drops[r as usize],
        }
    }

    /// Frames dropped for `reason`.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.drops[reason as usize]
    }

    /// Frames received and not yet transmitted or dropped: held + ready + staged.
    pub fn waiting(&self) -> u64 {
        self.held + self.ready + self.staged
    }

    /// Whether the places add up to what was received (they always do, unless a move took
    /// from an empty place, which debug builds refuse).
    pub fn balanced(&self) -> bool {
        self.rx_frames == self.waiting() + self.tx_frames + self.drops.iter().sum::<u64>()
    }
}

#[cfg(test)]
mod tests {
    use super::{Ledger, Place};
    use crate::stats::DropReason;
    use proptest::prelude::*;

    fn place(i: u8) -> Place {
        match i % 6 {
            0 => Place::Held,
            1 => Place::Ready,
            2 => Place::Staged,
            3 => Place::Transmitted,
            4 => Place::Dropped(DropReason::Discarded),
            _ => Place::Dropped(DropReason::Standby),
        }
    }

    proptest! {
        #[test]
        fn any_sequence_of_moves_keeps_the_ledger_balanced(
            ops in prop::collection::vec((any::<bool>(), any::<u8>(), any::<u8>(), 0u64..40), 0..200)
        ) {
            let mut l = Ledger::default();
            for (rx, a, b, n) in ops {
                if rx {
                    l.received(n, n * 60, place(a));
                } else {
                    let from = place(a);
                    let have = *l.clone().slot(from);
                    l.moved(from, place(b), n.min(have), 0);
                }
                prop_assert!(l.balanced(), "{l:?}");
            }
        }
    }
}
