//! Per-epoch output commit: the egress queue of one VM.
//!
//! The rule: while the VM is protected, a frame of epoch n is never releasable before commit(m),
//! m >= n, where epoch n is everything the VM sent between fence(n-1) and fence(n); while it is
//! not protected, every frame is releasable as soon as it is pushed. Frames leave in the order
//! they were pushed, and every frame is at any time exactly one of held, releasable, popped or
//! discarded.
//!
//! Layout: one [`VecDeque`] holds `[releasable | sealed epochs ... | open epoch]`. Positions are
//! absolute sequence numbers counted since the queue was created ("the k-th frame ever made
//! releasable"), so the boundary recorded by a fence never has to be rewritten when frames leave
//! the front, and a commit only moves the release point: O(1) in frames.

use std::collections::vec_deque::Drain;
use std::collections::VecDeque;

/// What a frame weighs on the wire, so the queue can count bytes per epoch.
///
/// The answer must not change while the frame is in the queue (the queue subtracts on the way out
/// what it added on the way in).
pub trait Weighed {
    /// The frame's length in bytes.
    fn bytes(&self) -> u64;
}

impl Weighed for Vec<u8> {
    fn bytes(&self) -> u64 {
        self.len() as u64
    }
}

/// What [`EpochQueue::unprotect`] does with the frames it still holds: the protocol's own
/// `Unprotect{release|drop}` (every held frame becomes releasable in order, or is dropped).
pub use vmm_shim::proto::Release;

/// The answer to a successful [`EpochQueue::fence`]: the epoch sealed and what it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sealed {
    /// The epoch just sealed.
    pub epoch: u64,
    /// Frames in the sealed epoch.
    pub frames: u64,
    /// Bytes in the sealed epoch.
    pub bytes: u64,
}

/// The answer to a successful [`EpochQueue::commit`]: what the commit made releasable, i.e. the
/// frames of every epoch <= `epoch` that was sealed and not yet committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Committed {
    /// The epoch committed.
    pub epoch: u64,
    /// Frames made releasable by this commit.
    pub frames: u64,
    /// Bytes made releasable by this commit.
    pub bytes: u64,
}

/// A number of frames and their bytes (held, discarded, released by unprotect).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Count {
    /// Frames.
    pub frames: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// Why a fence or a commit was refused. An error never changes the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EpochError {
    /// Fence or commit while the VM is not protected.
    #[error("the VM is not protected: there are no epochs")]
    NotProtected,
    /// Fence of an epoch other than the open one.
    #[error("epoch {got} is not the open epoch {open}: fence the open epoch")]
    FenceNotOpen {
        /// The epoch asked for.
        got: u64,
        /// The open epoch.
        open: u64,
    },
    /// Commit of the open epoch, which has not been fenced.
    #[error(
        "epoch {got} is not sealed yet (the open epoch is {open}): fence it before committing"
    )]
    NotSealed {
        /// The epoch asked for.
        got: u64,
        /// The open epoch.
        open: u64,
    },
    /// Commit of an epoch that has not been opened.
    #[error("epoch {got} does not exist yet (the open epoch is {open})")]
    Future {
        /// The epoch asked for.
        got: u64,
        /// The open epoch.
        open: u64,
    },
    /// Commit of an epoch at or below the last commit.
    #[error("epoch {got} is already committed (last commit: {committed})")]
    AlreadyCommitted {
        /// The epoch asked for.
        got: u64,
        /// The highest epoch committed so far.
        committed: u64,
    },
    /// Commit of an epoch above the last commit that is no longer outstanding: its frames were
    /// discarded, or the protection period it belonged to ended (unprotect released or dropped
    /// its frames, or it was still open then).
    #[error("epoch {got} was discarded or ended by unprotect: it can no longer be committed")]
    Discarded {
        /// The epoch asked for.
        got: u64,
    },
    /// Fence or commit of epoch 0.
    #[error("epoch 0 does not exist: epochs start at 1")]
    Zero,
}

/// Where a sealed, not yet committed epoch ends, in absolute positions.
#[derive(Debug, Clone, Copy)]
struct Boundary {
    epoch: u64,
    /// Frames ever pushed into the held region up to and including this epoch's last frame.
    end_seq: u64,
    /// Same, in bytes.
    end_bytes: u64,
}

/// The egress queue of one VM: frames wait here until the checkpoint covering them commits (or at
/// once, when the VM is not protected), and leave from the front in the order they were pushed.
///
/// Absolute counters are u64 and only grow (except the tail, which a discard moves back to the
/// release point): they, and the epoch numbers, would overflow only after 2^64 frames, bytes or
/// checkpoints, which no VM reaches.
#[derive(Debug)]
pub struct EpochQueue<T> {
    /// `[releasable | held]`; the held part is the sealed epochs then the open epoch.
    frames: VecDeque<T>,
    /// Frames at the front of `frames` that may be popped.
    releasable: usize,
    /// Their bytes.
    releasable_bytes: u64,
    /// The release point: frames ever made releasable.
    released_seq: u64,
    /// Bytes ever made releasable.
    released_bytes: u64,
    /// `released_seq` + held frames.
    tail_seq: u64,
    /// `released_bytes` + held bytes.
    tail_bytes: u64,
    /// Sealed, not yet committed epochs, oldest first; their numbers are contiguous and the last
    /// one is the open epoch - 1, so a commit finds its boundary by index.
    sealed: VecDeque<Boundary>,
    protected: bool,
    /// The highest epoch ever opened; the open epoch while protected.
    last_opened: u64,
    sealed_epoch: u64,
    committed_epoch: u64,
}

/// Sealed epochs outstanding at once before the boundary list has to grow: deep pipelining is
/// rare, and growing is amortised anyway.
const SEALED_CAPACITY: usize = 64;

impl<T: Weighed> EpochQueue<T> {
    /// An empty, unprotected queue with room for `capacity` frames before it allocates.
    pub fn new(capacity: usize) -> Self {
        Self {
            frames: VecDeque::with_capacity(capacity),
            releasable: 0,
            releasable_bytes: 0,
            released_seq: 0,
            released_bytes: 0,
            tail_seq: 0,
            tail_bytes: 0,
            sealed: VecDeque::with_capacity(SEALED_CAPACITY),
            protected: false,
            last_opened: 0,
            sealed_epoch: 0,
            committed_epoch: 0,
        }
    }

    /// Whether frames are being held (between [`protect`](Self::protect) and
    /// [`unprotect`](Self::unprotect)).
    pub fn protected(&self) -> bool {
        self.protected
    }

    /// Starts holding: frames pushed from now on belong to the open epoch. Returns the open epoch.
    /// If already protected: no change, returns the open epoch.
    ///
    /// Epoch numbers only grow over the queue's life: the first protect opens epoch 1; a later
    /// protect (after unprotect) opens the highest epoch ever opened + 1, so a late commit meant
    /// for an earlier protection period can never release frames of this one.
    pub fn protect(&mut self) -> u64 {
        if !self.protected {
            self.last_opened += 1;
            self.protected = true;
        }
        self.debug_check();
        self.last_opened
    }

    /// The epoch that frames pushed now belong to; `None` when not protected.
    pub fn open_epoch(&self) -> Option<u64> {
        self.protected.then_some(self.last_opened)
    }

    /// The highest epoch ever sealed (0 if none).
    pub fn sealed_epoch(&self) -> u64 {
        self.sealed_epoch
    }

    /// The highest epoch ever committed (0 if none).
    pub fn committed_epoch(&self) -> u64 {
        self.committed_epoch
    }

    /// Queues a frame: releasable at once when not protected, otherwise held in the open epoch.
    /// Never refuses: capacity limits are the caller's business.
    pub fn push(&mut self, frame: T) {
        let bytes = frame.bytes();
        self.frames.push_back(frame);
        self.tail_seq += 1;
        self.tail_bytes += bytes;
        if !self.protected {
            // Unprotected, nothing is held, so the tail is the release point and the new frame
            // lands right behind the releasable ones.
            self.release_to(self.tail_seq, self.tail_bytes);
        }
        self.debug_check();
    }

    /// Seals the open epoch (which `epoch` must name) and opens `epoch + 1`. O(1). An empty epoch
    /// is fine (0 frames).
    ///
    /// # Errors
    ///
    /// Checked in this order, and none changes the queue: 0 is [`EpochError::Zero`]; not
    /// protected is [`EpochError::NotProtected`]; any epoch but the open one is
    /// [`EpochError::FenceNotOpen`].
    pub fn fence(&mut self, epoch: u64) -> Result<Sealed, EpochError> {
        self.check_fence(epoch)?;
        let (start_seq, start_bytes) = self.open_start();
        self.sealed.push_back(Boundary {
            epoch,
            end_seq: self.tail_seq,
            end_bytes: self.tail_bytes,
        });
        self.sealed_epoch = epoch;
        self.last_opened = epoch + 1;
        self.debug_check();
        Ok(Sealed {
            epoch,
            frames: self.tail_seq - start_seq,
            bytes: self.tail_bytes - start_bytes,
        })
    }

    /// Whether [`fence`](Self::fence) of `epoch` would succeed now, and if not why (the same
    /// errors in the same order), without changing anything.
    pub fn check_fence(&self, epoch: u64) -> Result<(), EpochError> {
        if epoch == 0 {
            return Err(EpochError::Zero);
        }
        let open = self.open_epoch().ok_or(EpochError::NotProtected)?;
        if epoch != open {
            return Err(EpochError::FenceNotOpen { got: epoch, open });
        }
        Ok(())
    }

    /// Checkpoint `epoch` is safe: makes every sealed epoch <= `epoch` releasable. O(1) in frames
    /// (O(epochs released) in boundaries).
    ///
    /// # Errors
    ///
    /// Checked in this order, and none changes the queue: 0 is [`EpochError::Zero`]; not
    /// protected is [`EpochError::NotProtected`]; above the open epoch is [`EpochError::Future`];
    /// the open epoch is [`EpochError::NotSealed`]; at or below the last commit is
    /// [`EpochError::AlreadyCommitted`]; any other epoch that is not outstanding (discarded, or
    /// ended by an unprotect) is [`EpochError::Discarded`]. Sealed epochs still outstanding when
    /// [`unprotect`](Self::unprotect) runs are released or dropped by it, never committed.
    pub fn commit(&mut self, epoch: u64) -> Result<Committed, EpochError> {
        if epoch == 0 {
            return Err(EpochError::Zero);
        }
        let open = self.open_epoch().ok_or(EpochError::NotProtected)?;
        if epoch > open {
            return Err(EpochError::Future { got: epoch, open });
        }
        if epoch == open {
            return Err(EpochError::NotSealed { got: epoch, open });
        }
        let first = match self.sealed.front() {
            Some(b) if b.epoch <= epoch => b.epoch,
            _ if epoch <= self.committed_epoch => {
                return Err(EpochError::AlreadyCommitted {
                    got: epoch,
                    committed: self.committed_epoch,
                })
            }
            _ => return Err(EpochError::Discarded { got: epoch }),
        };
        // The sealed epochs are contiguous and end at open - 1, and first <= epoch < open, so
        // the index is below `sealed.len()` and fits in usize.
        let index = (epoch - first) as usize;
        let boundary = self.sealed[index];
        debug_assert_eq!(boundary.epoch, epoch);
        let frames = boundary.end_seq - self.released_seq;
        let bytes = boundary.end_bytes - self.released_bytes;
        self.release_to(boundary.end_seq, boundary.end_bytes);
        self.sealed.drain(..=index);
        self.committed_epoch = epoch;
        self.debug_check();
        Ok(Committed {
            epoch,
            frames,
            bytes,
        })
    }

    /// Drops every held frame (sealed-uncommitted epochs and the open epoch); releasable frames
    /// stay, they were committed. A later commit of a discarded sealed epoch is
    /// [`EpochError::Discarded`]. The open epoch keeps its number. Returns what was dropped (zero
    /// when not protected, as nothing is held then). O(frames dropped).
    pub fn discard(&mut self) -> Count {
        let dropped = self.held();
        self.frames.truncate(self.releasable);
        self.tail_seq = self.released_seq;
        self.tail_bytes = self.released_bytes;
        // Forgetting the boundaries is what makes their epochs "discarded": they are above the
        // last commit and no longer outstanding.
        self.sealed.clear();
        self.debug_check();
        dropped
    }

    /// Stops holding. [`Release::Release`]: every held frame becomes releasable, in order (returns
    /// how many); [`Release::Drop`]: like [`discard`](Self::discard) (returns how many were
    /// dropped). Afterwards pushed frames are releasable at once and there is no open epoch.
    /// Not protected: no change, returns zero.
    pub fn unprotect(&mut self, how: Release) -> Count {
        let count = match how {
            Release::Release => {
                let held = self.held();
                self.release_to(self.tail_seq, self.tail_bytes);
                self.sealed.clear();
                held
            }
            Release::Drop => self.discard(),
        };
        self.protected = false;
        self.debug_check();
        count
    }

    /// Sealed epochs not yet committed (what a discard now would throw away besides the open
    /// epoch).
    pub fn outstanding(&self) -> u64 {
        self.sealed.len() as u64
    }

    /// Frames and bytes not yet releasable.
    pub fn held(&self) -> Count {
        Count {
            frames: self.tail_seq - self.released_seq,
            bytes: self.tail_bytes - self.released_bytes,
        }
    }

    /// Frames ever made releasable (the release point as a sequence number): a frame pushed as
    /// the k-th (from 1) is released once this reaches k.
    pub fn released_total(&self) -> u64 {
        self.released_seq
    }

    /// Bytes ever made releasable.
    pub fn released_total_bytes(&self) -> u64 {
        self.released_bytes
    }

    /// Frames at the front that may be popped now.
    pub fn releasable(&self) -> usize {
        self.releasable
    }

    /// Bytes of the frames that may be popped now.
    pub fn releasable_bytes(&self) -> u64 {
        self.releasable_bytes
    }

    /// Frames in the queue, releasable and held.
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    /// Whether the queue holds no frame at all, releasable or held.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Takes the first releasable frame, if any.
    pub fn pop_released(&mut self) -> Option<T> {
        if self.releasable == 0 {
            return None;
        }
        let frame = self.frames.pop_front()?;
        self.releasable -= 1;
        self.take_releasable_bytes(frame.bytes());
        self.debug_check();
        Some(frame)
    }

    /// The first releasable frame, if any, without taking it.
    pub fn front_released(&self) -> Option<&T> {
        if self.releasable == 0 {
            return None;
        }
        self.frames.front()
    }

    /// Takes up to `max` releasable frames from the front, in order (for building a TX burst
    /// without a per-frame call). The frames leave the queue even if the iterator is dropped
    /// before it is consumed.
    pub fn drain_released(&mut self, max: usize) -> Drain<'_, T> {
        let n = max.min(self.releasable);
        // Summing now is O(n), which the caller pays anyway by iterating the burst; it keeps the
        // byte count exact without wrapping the iterator.
        let bytes: u64 = self.frames.range(..n).map(Weighed::bytes).sum();
        self.releasable -= n;
        self.take_releasable_bytes(bytes);
        // No `debug_check` here: the frames leave only when the drain does; the next change
        // checks the result.
        self.frames.drain(..n)
    }

    /// Takes a run from the front of the releasable frames, in order: frame after frame while
    /// fewer than `max_frames` frames and fewer than `max_bytes` bytes were taken (a frame may
    /// start below the byte budget and end above it: the scheduler's grant). Returns the frames
    /// and what they count, computed in one pass.
    pub fn drain_run(&mut self, max_frames: usize, max_bytes: u64) -> (Drain<'_, T>, Count) {
        let limit = max_frames.min(self.releasable);
        let (mut n, mut bytes) = (0usize, 0u64);
        // Over the ring's two contiguous halves: no index arithmetic per frame.
        let (front, back) = self.frames.as_slices();
        for frame in front.iter().chain(back).take(limit) {
            if bytes >= max_bytes {
                break;
            }
            bytes += frame.bytes();
            n += 1;
        }
        self.releasable -= n;
        self.take_releasable_bytes(bytes);
        let count = Count {
            frames: n as u64,
            bytes,
        };
        (self.frames.drain(..n), count)
    }

    /// Puts a frame back at the front of the releasable region, keeping order (a frame the TX
    /// ring did not take). The caller guarantees it is the frame most recently taken from this
    /// queue.
    pub fn unpop_released(&mut self, frame: T) {
        self.releasable_bytes += frame.bytes();
        self.releasable += 1;
        self.frames.push_front(frame);
        self.debug_check();
    }

    /// Where the open epoch begins: the end of the last sealed epoch, or the release point.
    fn open_start(&self) -> (u64, u64) {
        match self.sealed.back() {
            Some(b) => (b.end_seq, b.end_bytes),
            None => (self.released_seq, self.released_bytes),
        }
    }

    /// Moves the release point forward to `seq` (which must not pass the tail).
    fn release_to(&mut self, seq: u64, bytes: u64) {
        debug_assert!(self.released_seq <= seq && seq <= self.tail_seq);
        debug_assert!(self.released_bytes <= bytes && bytes <= self.tail_bytes);
        // At most the held frames, which are in `frames`, so the difference fits in usize.
        self.releasable += (seq - self.released_seq) as usize;
        self.releasable_bytes += bytes - self.released_bytes;
        self.released_seq = seq;
        self.released_bytes = bytes;
    }

    fn take_releasable_bytes(&mut self, bytes: u64) {
        debug_assert!(bytes <= self.releasable_bytes, "Weighed::bytes changed");
        // Saturating so that a frame whose weight changed in the queue skews a statistic rather
        // than panicking the data plane.
        self.releasable_bytes = self.releasable_bytes.saturating_sub(bytes);
    }

    /// The structural invariants, checked after every change in debug builds.
    fn debug_check(&self) {
        if !cfg!(debug_assertions) {
            return;
        }
        let held = self.tail_seq - self.released_seq;
        debug_assert_eq!(self.frames.len() as u64, self.releasable as u64 + held);
        debug_assert!(self.released_bytes <= self.tail_bytes);
        debug_assert!(self.releasable != 0 || self.releasable_bytes == 0);
        debug_assert!(self.committed_epoch <= self.sealed_epoch);
        debug_assert!(self.sealed_epoch < self.last_opened || self.last_opened == 0);
        if !self.protected {
            debug_assert_eq!(held, 0, "nothing is held while unprotected");
            debug_assert!(self.sealed.is_empty());
        }
        let mut prev: Option<Boundary> = None;
        for b in &self.sealed {
            debug_assert!(b.epoch > self.committed_epoch);
            debug_assert!(self.released_seq <= b.end_seq && b.end_seq <= self.tail_seq);
            debug_assert!(self.released_bytes <= b.end_bytes && b.end_bytes <= self.tail_bytes);
            if let Some(p) = prev {
                debug_assert_eq!(p.epoch + 1, b.epoch, "sealed epochs are contiguous");
                debug_assert!(p.end_seq <= b.end_seq && p.end_bytes <= b.end_bytes);
            }
            prev = Some(*b);
        }
        if let Some(last) = prev {
            debug_assert_eq!(
                last.epoch + 1,
                self.last_opened,
                "the open epoch follows the sealed"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    /// A frame that knows who it is, so order and membership can be checked.
    #[derive(Debug, Clone, PartialEq, Eq)]
    struct F {
        id: u64,
        len: u64,
    }

    impl Weighed for F {
        fn bytes(&self) -> u64 {
            self.len
        }
    }

    fn f(id: u64, len: u64) -> F {
        F { id, len }
    }

    /// Everything the queue is, public and private: an error must leave it identical.
    fn state(q: &EpochQueue<F>) -> String {
        format!("{q:?}")
    }

    fn ids(q: &EpochQueue<F>) -> Vec<u64> {
        q.frames.iter().map(|x| x.id).collect()
    }

    fn pop_all(q: &mut EpochQueue<F>) -> Vec<u64> {
        std::iter::from_fn(|| q.pop_released())
            .map(|x| x.id)
            .collect()
    }

    fn count(frames: u64, bytes: u64) -> Count {
        Count { frames, bytes }
    }

    #[test]
    fn drain_run_takes_frames_while_below_both_budgets() {
        let mut q = EpochQueue::new(8);
        for (id, len) in [(1, 100), (2, 300), (3, 50), (4, 1000), (5, 60)] {
            q.push(f(id, len));
        }
        q.protect();
        q.push(f(6, 70));
        // Bytes: 1 starts at 0 < 350, 2 at 100, 3 at 400 >= 350 stops.
        let (run, c) = q.drain_run(10, 350);
        assert_eq!(run.map(|x| x.id).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(c, count(2, 400));
        assert_eq!((q.releasable(), q.releasable_bytes()), (3, 1110));
        // Frames: at most one.
        let (run, c) = q.drain_run(1, u64::MAX);
        assert_eq!(run.map(|x| x.id).collect::<Vec<_>>(), [3]);
        assert_eq!(c, count(1, 50));
        // Never past the releasable region (6 is held).
        let (run, c) = q.drain_run(usize::MAX, u64::MAX);
        assert_eq!(run.map(|x| x.id).collect::<Vec<_>>(), [4, 5]);
        assert_eq!(c, count(2, 1060));
        assert_eq!(q.releasable(), 0);
        assert_eq!(q.held(), count(1, 70));
        let (run, c) = q.drain_run(usize::MAX, u64::MAX);
        assert_eq!(run.count(), 0);
        assert_eq!(c, count(0, 0));
        assert_eq!(q.len(), 1);
    }

    #[test]
    fn weighed_vec_is_its_length() {
        assert_eq!(vec![0u8; 60].bytes(), 60);
        assert_eq!(Vec::<u8>::new().bytes(), 0);
    }

    #[test]
    fn new_queue_is_unprotected_and_empty() {
        let q = EpochQueue::<F>::new(8);
        assert!(!q.protected());
        assert_eq!(q.open_epoch(), None);
        assert_eq!((q.sealed_epoch(), q.committed_epoch()), (0, 0));
        assert_eq!(q.held(), Count::default());
        assert_eq!((q.releasable(), q.releasable_bytes(), q.len()), (0, 0, 0));
        assert!(q.is_empty());
        assert!(q.front_released().is_none());
    }

    #[test]
    fn unprotected_push_is_releasable_at_once() {
        let mut q = EpochQueue::new(8);
        q.push(f(1, 100));
        q.push(f(2, 50));
        assert_eq!((q.releasable(), q.releasable_bytes()), (2, 150));
        assert_eq!(q.held(), Count::default());
        assert_eq!(q.front_released(), Some(&f(1, 100)));
        assert_eq!(pop_all(&mut q), [1, 2]);
        assert!(q.is_empty());
        assert_eq!(q.releasable_bytes(), 0);
    }

    #[test]
    fn protect_opens_epoch_one_and_is_idempotent() {
        let mut q = EpochQueue::<F>::new(8);
        assert_eq!(q.protect(), 1);
        assert!(q.protected());
        assert_eq!(q.open_epoch(), Some(1));
        q.push(f(1, 10));
        let before = state(&q);
        assert_eq!(q.protect(), 1);
        assert_eq!(state(&q), before);
    }

    #[test]
    fn protected_push_is_held_until_commit() {
        let mut q = EpochQueue::new(8);
        q.push(f(1, 10)); // before protect: releasable
        q.protect();
        q.push(f(2, 20));
        q.push(f(3, 30));
        assert_eq!(q.held(), count(2, 50));
        assert_eq!((q.releasable(), q.len()), (1, 3));
        assert_eq!(pop_all(&mut q), [1]);
        q.fence(1).unwrap();
        assert_eq!(q.pop_released(), None, "sealed is not committed");
        q.commit(1).unwrap();
        assert_eq!(pop_all(&mut q), [2, 3]);
    }

    #[test]
    fn fence_seals_open_epoch_and_opens_next() {
        let mut q = EpochQueue::new(8);
        q.protect();
        q.push(f(1, 10));
        q.push(f(2, 20));
        let s = q.fence(1).unwrap();
        assert_eq!(
            s,
            Sealed {
                epoch: 1,
                frames: 2,
                bytes: 30
            }
        );
        assert_eq!((q.open_epoch(), q.sealed_epoch()), (Some(2), 1));
        q.push(f(3, 5));
        assert_eq!(
            q.fence(2).unwrap(),
            Sealed {
                epoch: 2,
                frames: 1,
                bytes: 5
            }
        );
        assert_eq!(q.held(), count(3, 35));
        assert_eq!(q.committed_epoch(), 0);
    }

    #[test]
    fn fence_errors() {
        let mut q = EpochQueue::<F>::new(8);
        assert_eq!(q.fence(1), Err(EpochError::NotProtected));
        assert_eq!(q.fence(0), Err(EpochError::Zero));
        q.protect();
        assert_eq!(q.fence(0), Err(EpochError::Zero));
        assert_eq!(
            q.fence(2),
            Err(EpochError::FenceNotOpen { got: 2, open: 1 })
        );
        q.fence(1).unwrap();
        assert_eq!(
            q.fence(1),
            Err(EpochError::FenceNotOpen { got: 1, open: 2 })
        );
    }

    #[test]
    fn commit_errors_each_variant() {
        let mut q = EpochQueue::<F>::new(8);
        assert_eq!(q.commit(1), Err(EpochError::NotProtected));
        assert_eq!(q.commit(0), Err(EpochError::Zero));
        q.protect();
        assert_eq!(q.commit(0), Err(EpochError::Zero));
        assert_eq!(q.commit(1), Err(EpochError::NotSealed { got: 1, open: 1 }));
        assert_eq!(q.commit(2), Err(EpochError::Future { got: 2, open: 1 }));
        q.fence(1).unwrap();
        q.commit(1).unwrap();
        assert_eq!(
            q.commit(1),
            Err(EpochError::AlreadyCommitted {
                got: 1,
                committed: 1
            })
        );
        q.fence(2).unwrap();
        q.discard();
        assert_eq!(q.commit(2), Err(EpochError::Discarded { got: 2 }));
        // Every error has a message naming the epochs involved.
        let msg = EpochError::FenceNotOpen { got: 7, open: 9 }.to_string();
        assert!(msg.contains('7') && msg.contains('9'), "{msg}");
    }

    #[test]
    fn errors_change_nothing() {
        let mut q = EpochQueue::new(8);
        q.push(f(0, 1));
        q.protect();
        q.push(f(1, 10));
        q.fence(1).unwrap();
        q.push(f(2, 20));
        q.fence(2).unwrap();
        q.commit(1).unwrap();
        q.push(f(3, 30));
        q.fence(3).unwrap();
        q.discard();
        q.push(f(4, 40));
        // Now: committed 1, epochs 2 and 3 discarded, open 4 holding frame 4.
        let before = state(&q);
        let bad = [
            q.fence(0).unwrap_err(),
            q.fence(3).unwrap_err(),
            q.fence(5).unwrap_err(),
            q.commit(0).unwrap_err(),
            q.commit(1).unwrap_err(),
            q.commit(2).unwrap_err(),
            q.commit(3).unwrap_err(),
            q.commit(4).unwrap_err(),
            q.commit(5).unwrap_err(),
        ];
        assert_eq!(state(&q), before);
        assert!(matches!(bad[4], EpochError::AlreadyCommitted { .. }));
        assert!(matches!(bad[5], EpochError::Discarded { got: 2 }));
        assert!(matches!(bad[7], EpochError::NotSealed { .. }));
        q.unprotect(Release::Release);
        let before = state(&q);
        assert_eq!(q.fence(5), Err(EpochError::NotProtected));
        assert_eq!(q.commit(4), Err(EpochError::NotProtected));
        assert_eq!(state(&q), before);
    }

    #[test]
    fn pipelining_commit_releases_only_covered_epochs() {
        let mut q = EpochQueue::new(8);
        q.protect();
        q.push(f(1, 1));
        q.fence(1).unwrap();
        q.push(f(2, 2));
        q.fence(2).unwrap();
        q.push(f(3, 3));
        assert_eq!(
            q.commit(1).unwrap(),
            Committed {
                epoch: 1,
                frames: 1,
                bytes: 1
            }
        );
        assert_eq!(pop_all(&mut q), [1]);
        assert_eq!(
            q.commit(2).unwrap(),
            Committed {
                epoch: 2,
                frames: 1,
                bytes: 2
            }
        );
        assert_eq!(pop_all(&mut q), [2]);
        assert_eq!(q.held(), count(1, 3), "the open epoch stays held");
    }

    #[test]
    fn commit_releases_several_sealed_epochs_at_once() {
        let mut q = EpochQueue::new(8);
        q.protect();
        for e in 1..=4 {
            q.push(f(e, 10 * e));
            q.fence(e).unwrap();
        }
        assert_eq!(
            q.commit(3).unwrap(),
            Committed {
                epoch: 3,
                frames: 3,
                bytes: 60
            }
        );
        assert_eq!(q.committed_epoch(), 3);
        assert_eq!(
            q.commit(2),
            Err(EpochError::AlreadyCommitted {
                got: 2,
                committed: 3
            })
        );
        assert_eq!(pop_all(&mut q), [1, 2, 3]);
        assert_eq!(
            q.commit(4).unwrap(),
            Committed {
                epoch: 4,
                frames: 1,
                bytes: 40
            }
        );
        assert_eq!(pop_all(&mut q), [4]);
    }

    #[test]
    fn empty_epochs() {
        let mut q = EpochQueue::new(8);
        q.protect();
        assert_eq!(
            q.fence(1).unwrap(),
            Sealed {
                epoch: 1,
                frames: 0,
                bytes: 0
            }
        );
        assert_eq!(
            q.commit(1).unwrap(),
            Committed {
                epoch: 1,
                frames: 0,
                bytes: 0
            }
        );
        q.fence(2).unwrap();
        q.push(f(1, 7));
        q.fence(3).unwrap();
        q.fence(4).unwrap();
        assert_eq!(
            q.commit(2).unwrap(),
            Committed {
                epoch: 2,
                frames: 0,
                bytes: 0
            }
        );
        assert_eq!(q.pop_released(), None);
        assert_eq!(
            q.commit(4).unwrap(),
            Committed {
                epoch: 4,
                frames: 1,
                bytes: 7
            }
        );
        assert_eq!(pop_all(&mut q), [1]);
    }

    #[test]
    fn discard_drops_held_and_keeps_releasable() {
        let mut q = EpochQueue::new(8);
        q.push(f(0, 5)); // unprotected: releasable
        q.protect();
        q.push(f(1, 10));
        q.fence(1).unwrap();
        q.commit(1).unwrap();
        q.push(f(2, 20));
        q.fence(2).unwrap();
        q.push(f(3, 30));
        assert_eq!(q.discard(), count(2, 50));
        assert_eq!(q.open_epoch(), Some(3), "the open epoch keeps its number");
        assert_eq!(q.held(), Count::default());
        assert_eq!((q.releasable(), q.releasable_bytes(), q.len()), (2, 15, 2));
        assert_eq!(q.discard(), Count::default());
        assert_eq!(pop_all(&mut q), [0, 1]);
        // Not protected: nothing to discard, releasable frames stay.
        let mut u = EpochQueue::new(8);
        u.push(f(9, 9));
        assert_eq!(u.discard(), Count::default());
        assert_eq!(pop_all(&mut u), [9]);
    }

    #[test]
    fn discarded_epoch_commit_is_discarded_and_next_works() {
        let mut q = EpochQueue::new(8);
        q.protect();
        q.push(f(1, 1));
        q.fence(1).unwrap();
        q.push(f(2, 2));
        q.fence(2).unwrap();
        q.push(f(3, 3));
        assert_eq!(q.discard(), count(3, 6));
        assert_eq!(q.commit(1), Err(EpochError::Discarded { got: 1 }));
        assert_eq!(q.commit(2), Err(EpochError::Discarded { got: 2 }));
        q.push(f(4, 4));
        assert_eq!(
            q.fence(3).unwrap(),
            Sealed {
                epoch: 3,
                frames: 1,
                bytes: 4
            }
        );
        assert_eq!(
            q.commit(3).unwrap(),
            Committed {
                epoch: 3,
                frames: 1,
                bytes: 4
            }
        );
        assert_eq!(pop_all(&mut q), [4]);
        assert_eq!(
            q.commit(2),
            Err(EpochError::AlreadyCommitted {
                got: 2,
                committed: 3
            })
        );
    }

    #[test]
    fn unprotect_release_releases_everything_in_order() {
        let mut q = EpochQueue::new(8);
        q.push(f(0, 1));
        q.protect();
        q.push(f(1, 10));
        q.fence(1).unwrap();
        q.commit(1).unwrap();
        q.push(f(2, 20));
        q.fence(2).unwrap();
        q.push(f(3, 30));
        q.fence(3).unwrap();
        q.push(f(4, 40));
        assert_eq!(q.unprotect(Release::Release), count(3, 90));
        assert!(!q.protected());
        assert_eq!(q.open_epoch(), None);
        assert_eq!(q.held(), Count::default());
        q.push(f(5, 50));
        assert_eq!((q.releasable(), q.releasable_bytes()), (6, 151));
        assert_eq!(pop_all(&mut q), [0, 1, 2, 3, 4, 5]);
        assert_eq!(q.committed_epoch(), 1, "unprotect is not a commit");
        assert_eq!(q.unprotect(Release::Release), Count::default());
    }

    #[test]
    fn unprotect_drop_drops_held() {
        let mut q = EpochQueue::new(8);
        q.protect();
        q.push(f(1, 10));
        q.fence(1).unwrap();
        q.commit(1).unwrap();
        q.push(f(2, 20));
        q.fence(2).unwrap();
        q.push(f(3, 30));
        assert_eq!(q.unprotect(Release::Drop), count(2, 50));
        assert!(!q.protected());
        q.push(f(4, 40));
        assert_eq!(pop_all(&mut q), [1, 4]);
        assert_eq!(q.unprotect(Release::Drop), Count::default());
    }

    #[test]
    fn protect_after_unprotect_opens_larger_epoch() {
        let mut q = EpochQueue::<F>::new(8);
        assert_eq!(q.protect(), 1);
        q.fence(1).unwrap();
        q.fence(2).unwrap();
        q.unprotect(Release::Release);
        assert_eq!(q.protect(), 4, "epoch 3 was opened before");
        // Epochs of the earlier protection period cannot be committed now.
        assert_eq!(q.commit(2), Err(EpochError::Discarded { got: 2 }));
        assert_eq!(q.commit(3), Err(EpochError::Discarded { got: 3 }));
        assert_eq!(q.commit(4), Err(EpochError::NotSealed { got: 4, open: 4 }));
        q.unprotect(Release::Drop);
        assert_eq!(q.protect(), 5);
        q.fence(5).unwrap();
        q.commit(5).unwrap();
        assert_eq!(q.committed_epoch(), 5);
    }

    #[test]
    fn bytes_accounting() {
        let mut q = EpochQueue::new(8);
        q.push(f(0, 64));
        q.protect();
        q.push(f(1, 1500));
        q.push(f(2, 0));
        q.fence(1).unwrap();
        q.push(f(3, 9000));
        assert_eq!(q.held(), count(3, 10_500));
        assert_eq!(q.releasable_bytes(), 64);
        q.commit(1).unwrap();
        assert_eq!(q.held(), count(1, 9000));
        assert_eq!(q.releasable_bytes(), 1564);
        q.pop_released();
        assert_eq!(q.releasable_bytes(), 1500);
        let burst: Vec<F> = q.drain_released(8).collect();
        assert_eq!(burst, [f(1, 1500), f(2, 0)]);
        assert_eq!((q.releasable(), q.releasable_bytes()), (0, 0));
        assert_eq!(q.unprotect(Release::Release), count(1, 9000));
        assert_eq!(q.releasable_bytes(), 9000);
    }

    #[test]
    fn drain_released_takes_at_most_max_in_order() {
        let mut q = EpochQueue::new(8);
        for i in 0..5 {
            q.push(f(i, 1));
        }
        q.protect();
        q.push(f(5, 1));
        let first: Vec<u64> = q.drain_released(3).map(|x| x.id).collect();
        assert_eq!(first, [0, 1, 2]);
        // Dropping the iterator unconsumed still takes the frames.
        drop(q.drain_released(1));
        let rest: Vec<u64> = q.drain_released(100).map(|x| x.id).collect();
        assert_eq!(rest, [4], "held frames are never drained");
        assert_eq!(q.drain_released(100).count(), 0);
        assert_eq!((q.releasable(), q.len(), q.releasable_bytes()), (0, 1, 0));
    }

    #[test]
    fn unpop_released_restores_front() {
        let mut q = EpochQueue::new(8);
        q.push(f(1, 10));
        q.push(f(2, 20));
        q.protect();
        q.push(f(3, 30));
        let x = q.pop_released().unwrap();
        q.unpop_released(x);
        assert_eq!((q.releasable(), q.releasable_bytes()), (2, 30));
        assert_eq!(ids(&q), [1, 2, 3]);
        q.fence(1).unwrap();
        q.commit(1).unwrap();
        assert_eq!(pop_all(&mut q), [1, 2, 3]);
    }

    // ---- property tests against a model ----

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum St {
        Held,
        Releasable,
        Popped,
        Discarded,
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Es {
        Open,
        Sealed,
        Committed,
        Discarded,
        /// Its protection period ended (unprotect) before it was committed.
        Ended,
    }

    #[derive(Debug)]
    struct MFrame {
        id: u64,
        len: u64,
        /// `None`: pushed while unprotected.
        epoch: Option<u64>,
        st: St,
        released_by_unprotect: bool,
    }

    /// The obvious O(n) version: every frame carries its epoch and state.
    #[derive(Debug, Default)]
    struct Model {
        frames: Vec<MFrame>,
        epochs: BTreeMap<u64, Es>,
        protected: bool,
        last_opened: u64,
        sealed_max: u64,
        committed_max: u64,
        /// Frames and bytes pushed since the last fence, discard or protect: what the next
        /// fence must report.
        since_fence: Count,
    }

    impl Model {
        fn count(&self, pick: impl Fn(&MFrame) -> bool) -> Count {
            self.frames
                .iter()
                .filter(|x| pick(x))
                .fold(Count::default(), |c, x| {
                    count(c.frames + 1, c.bytes + x.len)
                })
        }

        fn outstanding(&self) -> Vec<u64> {
            let sealed = self.epochs.iter().filter(|(_, s)| **s == Es::Sealed);
            sealed.map(|(e, _)| *e).collect()
        }

        fn protect(&mut self) -> u64 {
            if !self.protected {
                self.protected = true;
                self.last_opened += 1;
                self.epochs.insert(self.last_opened, Es::Open);
                self.since_fence = Count::default();
            }
            self.last_opened
        }

        fn push(&mut self, id: u64, len: u64) {
            let (epoch, st) = match self.protected {
                true => (Some(self.last_opened), St::Held),
                false => (None, St::Releasable),
            };
            self.frames.push(MFrame {
                id,
                len,
                epoch,
                st,
                released_by_unprotect: false,
            });
            self.since_fence = count(self.since_fence.frames + 1, self.since_fence.bytes + len);
        }

        fn fence(&mut self, n: u64) -> Result<Sealed, EpochError> {
            if n == 0 {
                return Err(EpochError::Zero);
            }
            if !self.protected {
                return Err(EpochError::NotProtected);
            }
            if n != self.last_opened {
                return Err(EpochError::FenceNotOpen {
                    got: n,
                    open: self.last_opened,
                });
            }
            let c = self.count(|x| x.epoch == Some(n) && x.st == St::Held);
            assert_eq!(
                c, self.since_fence,
                "the epoch is what was pushed since the fence"
            );
            self.since_fence = Count::default();
            self.epochs.insert(n, Es::Sealed);
            self.sealed_max = n;
            self.last_opened = n + 1;
            self.epochs.insert(n + 1, Es::Open);
            Ok(Sealed {
                epoch: n,
                frames: c.frames,
                bytes: c.bytes,
            })
        }

        fn commit(&mut self, n: u64) -> Result<Committed, EpochError> {
            let open = self.last_opened;
            if n == 0 {
                return Err(EpochError::Zero);
            }
            if !self.protected {
                return Err(EpochError::NotProtected);
            }
            if n > open {
                return Err(EpochError::Future { got: n, open });
            }
            if n == open {
                return Err(EpochError::NotSealed { got: n, open });
            }
            if self.epochs.get(&n) != Some(&Es::Sealed) {
                return Err(match n <= self.committed_max {
                    true => EpochError::AlreadyCommitted {
                        got: n,
                        committed: self.committed_max,
                    },
                    false => EpochError::Discarded { got: n },
                });
            }
            assert!(n > self.committed_max);
            let released: Vec<u64> = self.outstanding().into_iter().filter(|e| *e <= n).collect();
            let mut c = Count::default();
            for x in &mut self.frames {
                if x.st == St::Held && x.epoch.is_some_and(|e| released.contains(&e)) {
                    x.st = St::Releasable;
                    c = count(c.frames + 1, c.bytes + x.len);
                }
            }
            for e in released {
                self.epochs.insert(e, Es::Committed);
            }
            self.committed_max = n;
            Ok(Committed {
                epoch: n,
                frames: c.frames,
                bytes: c.bytes,
            })
        }

        fn discard(&mut self) -> Count {
            let c = self.count(|x| x.st == St::Held);
            for x in &mut self.frames {
                if x.st == St::Held {
                    x.st = St::Discarded;
                }
            }
            for s in self.epochs.values_mut() {
                if *s == Es::Sealed {
                    *s = Es::Discarded;
                }
            }
            self.since_fence = Count::default();
            c
        }

        fn unprotect(&mut self, how: Release) -> Count {
            if !self.protected {
                return Count::default();
            }
            let c = self.count(|x| x.st == St::Held);
            for x in &mut self.frames {
                if x.st == St::Held {
                    x.st = match how {
                        Release::Release => St::Releasable,
                        Release::Drop => St::Discarded,
                    };
                    x.released_by_unprotect = how == Release::Release;
                }
            }
            for s in self.epochs.values_mut() {
                if matches!(s, Es::Open | Es::Sealed) {
                    *s = Es::Ended;
                }
            }
            self.protected = false;
            c
        }

        /// The next frame to pop: the first releasable one, which must come after every frame
        /// that is not gone yet (order: nothing before it may still be waiting).
        fn pop(&mut self) -> Option<u64> {
            let i = self.frames.iter().position(|x| x.st == St::Releasable)?;
            let earlier = &self.frames[..i];
            assert!(earlier
                .iter()
                .all(|x| matches!(x.st, St::Popped | St::Discarded)));
            let x = &mut self.frames[i];
            // Output commit: a protected frame leaves only once its epoch committed, or when
            // unprotect released it.
            if let Some(e) = x.epoch {
                assert!(
                    x.released_by_unprotect
                        || (e <= self.committed_max && self.epochs[&e] == Es::Committed),
                    "frame {} of epoch {e} popped, committed {}",
                    x.id,
                    self.committed_max
                );
            }
            x.st = St::Popped;
            Some(x.id)
        }
    }

    #[derive(Debug, Clone)]
    enum Pick {
        Open,
        Rel(i64),
        Abs(u64),
        Outstanding(usize),
        Committed,
    }

    #[derive(Debug, Clone)]
    enum Op {
        Push(u64),
        Fence(Pick),
        Commit(Pick),
        Pop(usize),
        Drain(usize),
        PopUnpop,
        Discard,
        Unprotect(Release),
        Protect,
    }

    fn resolve(m: &Model, p: &Pick) -> u64 {
        match *p {
            Pick::Open => m.last_opened,
            Pick::Rel(d) => m.last_opened.saturating_add_signed(d),
            Pick::Abs(n) => n,
            Pick::Outstanding(i) => {
                let out = m.outstanding();
                if out.is_empty() {
                    m.last_opened
                } else {
                    out[i % out.len()]
                }
            }
            Pick::Committed => m.committed_max,
        }
    }

    fn op() -> impl Strategy<Value = Op> {
        let fence = prop_oneof![
            6 => Just(Pick::Open),
            1 => (-3i64..=3).prop_map(Pick::Rel),
            1 => (0u64..8).prop_map(Pick::Abs),
        ];
        let commit = prop_oneof![
            6 => any::<usize>().prop_map(Pick::Outstanding),
            1 => Just(Pick::Open),
            1 => (-4i64..=2).prop_map(Pick::Rel),
            1 => (0u64..12).prop_map(Pick::Abs),
            1 => Just(Pick::Committed),
        ];
        prop_oneof![
            30 => (0u64..1600).prop_map(Op::Push),
            10 => fence.prop_map(Op::Fence),
            10 => commit.prop_map(Op::Commit),
            6 => (0usize..5).prop_map(Op::Pop),
            4 => (0usize..8).prop_map(Op::Drain),
            2 => Just(Op::PopUnpop),
            1 => Just(Op::Discard),
            1 => prop_oneof![Just(Release::Release), Just(Release::Drop)].prop_map(Op::Unprotect),
            3 => Just(Op::Protect),
        ]
    }

    /// Invariant 4 (nothing lost, the counts add up) and the epoch counters, after every step.
    fn check(q: &EpochQueue<F>, m: &Model) {
        let held = m.count(|x| x.st == St::Held);
        let releasable = m.count(|x| x.st == St::Releasable);
        let popped = m.count(|x| x.st == St::Popped).frames;
        let discarded = m.count(|x| x.st == St::Discarded).frames;
        let pushed = m.frames.len() as u64;
        assert_eq!(pushed, held.frames + releasable.frames + popped + discarded);
        assert_eq!(q.held(), held);
        assert_eq!(q.releasable() as u64, releasable.frames);
        assert_eq!(q.releasable_bytes(), releasable.bytes);
        assert_eq!(q.len() as u64, held.frames + releasable.frames);
        assert_eq!(q.is_empty(), held.frames + releasable.frames == 0);
        let waiting: Vec<u64> = m
            .frames
            .iter()
            .filter(|x| matches!(x.st, St::Held | St::Releasable))
            .map(|x| x.id)
            .collect();
        assert_eq!(
            ids(q),
            waiting,
            "the queue holds exactly the waiting frames, in order"
        );
        let front = m
            .frames
            .iter()
            .find(|x| x.st == St::Releasable)
            .map(|x| x.id);
        assert_eq!(q.front_released().map(|x| x.id), front);
        assert_eq!(q.protected(), m.protected);
        assert_eq!(q.open_epoch(), m.protected.then_some(m.last_opened));
        assert_eq!(q.sealed_epoch(), m.sealed_max);
        assert_eq!(q.committed_epoch(), m.committed_max);
    }

    fn run(start_protected: bool, ops: &[Op]) {
        let mut q = EpochQueue::new(16);
        let mut m = Model::default();
        let mut next_id = 0u64;
        let mut last_popped: Option<u64> = None;
        if start_protected {
            assert_eq!(q.protect(), m.protect());
        }
        let mut popped = |id: u64, m: &mut Model| {
            // Invariants 1 and 3 are asserted inside the model's pop; this is the queue's answer.
            assert_eq!(Some(id), m.pop(), "the queue popped a different frame");
            assert!(
                last_popped.is_none_or(|l| l < id),
                "order: {id} after {last_popped:?}"
            );
            last_popped = Some(id);
        };
        for op in ops {
            let before = state(&q);
            match op {
                Op::Push(len) => {
                    q.push(f(next_id, *len));
                    m.push(next_id, *len);
                    next_id += 1;
                }
                Op::Fence(p) => {
                    let n = resolve(&m, p);
                    let got = q.fence(n);
                    assert_eq!(got, m.fence(n), "fence({n})");
                    if got.is_err() {
                        assert_eq!(state(&q), before, "a failed fence changed the queue");
                    }
                }
                Op::Commit(p) => {
                    let n = resolve(&m, p);
                    let got = q.commit(n);
                    assert_eq!(got, m.commit(n), "commit({n})");
                    if got.is_err() {
                        assert_eq!(state(&q), before, "a failed commit changed the queue");
                    }
                }
                Op::Pop(k) => {
                    for _ in 0..*k {
                        match q.pop_released() {
                            Some(x) => popped(x.id, &mut m),
                            None => assert_eq!(
                                m.frames
                                    .iter()
                                    .find(|x| x.st == St::Releasable)
                                    .map(|x| x.id),
                                None
                            ),
                        }
                    }
                }
                Op::Drain(k) => {
                    let expect = (*k).min(q.releasable());
                    let burst: Vec<F> = q.drain_released(*k).collect();
                    assert_eq!(burst.len(), expect);
                    for x in burst {
                        popped(x.id, &mut m);
                    }
                }
                Op::PopUnpop => {
                    if let Some(x) = q.pop_released() {
                        q.unpop_released(x);
                    }
                    assert_eq!(state(&q), before, "unpop restores the queue");
                }
                Op::Discard => assert_eq!(q.discard(), m.discard()),
                Op::Unprotect(how) => assert_eq!(q.unprotect(*how), m.unprotect(*how)),
                Op::Protect => assert_eq!(q.protect(), m.protect()),
            }
            check(&q, &m);
        }
        // Drain at the end: unprotect(Release) lets everything out, in order, nothing missing.
        let released = q.unprotect(Release::Release);
        assert_eq!(released, m.unprotect(Release::Release));
        while let Some(x) = q.pop_released() {
            popped(x.id, &mut m);
        }
        check(&q, &m);
        assert!(q.is_empty());
        assert!(m
            .frames
            .iter()
            .all(|x| matches!(x.st, St::Popped | St::Discarded)));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn prop_queue_matches_model(
            start_protected in any::<bool>(),
            ops in proptest::collection::vec(op(), 0..200),
        ) {
            run(start_protected, &ops);
        }

        /// Mostly fences and commits, so deep pipelines and multi-epoch commits are common.
        #[test]
        fn prop_pipelined_epochs(
            ops in proptest::collection::vec(
                prop_oneof![
                    4 => (0u64..100).prop_map(Op::Push),
                    3 => Just(Op::Fence(Pick::Open)),
                    2 => any::<usize>().prop_map(|i| Op::Commit(Pick::Outstanding(i))),
                    1 => (1usize..10).prop_map(Op::Drain),
                    1 => (-4i64..=1).prop_map(|d| Op::Commit(Pick::Rel(d))),
                ],
                0..200,
            ),
        ) {
            run(true, &ops);
        }
    }
}
