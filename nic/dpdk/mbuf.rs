//! The owning mbuf. One `Mbuf` is one reference to an `rte_mbuf`: dropping it frees that
//! reference; TX takes it without a copy. Data is only ever read through `&[u8]`, which is what
//! makes sharing one buffer between several owners (`share`) sound.

use super::{ffi, Mempool};
use arrayvec::ArrayVec;
use std::fmt;
use std::ptr::NonNull;

/// Frames per rx/tx burst.
pub const BURST: usize = 32;

/// A burst of owned mbufs in a fixed array: no allocation per burst or per frame.
pub type Burst = ArrayVec<Mbuf, BURST>;

/// Frees every mbuf of `frames` with one call (`rte_pktmbuf_free_bulk`), leaving it empty.
#[inline]
pub fn free_all<const N: usize>(frames: &mut ArrayVec<Mbuf, N>) {
    let n = frames.len();
    if n == 0 {
        return;
    }
    // SAFETY: the first n slots are initialised Mbufs (repr(transparent) owning pointers); the
    // bulk free releases exactly those n references, and setting the length to 0 first keeps
    // their Drop from running again.
    unsafe {
        frames.set_len(0);
        ffi::eg_pktmbuf_free_bulk(frames.as_mut_ptr().cast(), n as u32);
    }
}

/// An owned reference to a packet buffer.
#[repr(transparent)]
pub struct Mbuf(NonNull<ffi::rte_mbuf>);

// SAFETY: an Mbuf is a unique owning reference (like Box); DPDK mbufs may be freed from any
// thread, and the only shared access is read-only data (see `share`).
unsafe impl Send for Mbuf {}

impl Mbuf {
    /// Takes ownership of one reference to `p`.
    ///
    /// # Safety
    /// `p` must be a valid mbuf whose reference the caller owns and gives up.
    #[inline]
    pub(crate) unsafe fn from_owned(p: NonNull<ffi::rte_mbuf>) -> Mbuf {
        Mbuf(p)
    }

    /// A new single-segment mbuf holding a copy of `bytes`; `None` if the pool is empty or the
    /// bytes do not fit one segment. (For generated frames: the data path itself never copies.)
    pub fn from_bytes(pool: &Mempool, bytes: &[u8]) -> Option<Mbuf> {
        let m = pool.alloc()?;
        let len = u16::try_from(bytes.len()).ok()?;
        // SAFETY: m is a fresh mbuf we own exclusively (refcnt 1), so appending is not visible to
        // anyone else; append returns null if len does not fit the tailroom.
        let dst = unsafe { ffi::eg_pktmbuf_append(m.0.as_ptr(), len) };
        if dst.is_null() {
            return None; // m is dropped (freed)
        }
        // SAFETY: dst points to `len` writable bytes inside m's data room, which cannot overlap
        // `bytes` (a Rust slice we hold a shared borrow of).
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), dst.cast::<u8>(), bytes.len()) };
        Some(m)
    }

    /// A new single-segment mbuf of `len` bytes that `fill` writes in place (a generator stamps
    /// a template this way with one copy); `None` if the pool is empty or `len` does not fit.
    pub fn from_fn(pool: &Mempool, len: usize, fill: impl FnOnce(&mut [u8])) -> Option<Mbuf> {
        let m = pool.alloc()?;
        let n = u16::try_from(len).ok()?;
        // SAFETY: m is a fresh mbuf we own exclusively (refcnt 1); append returns null if n does
        // not fit the tailroom.
        let dst = unsafe { ffi::eg_pktmbuf_append(m.0.as_ptr(), n) };
        if dst.is_null() {
            return None;
        }
        // SAFETY: dst points to `len` bytes inside m's data room that only we can reach (m is
        // not shared yet); the slice lives only for the call to `fill`. The bytes may hold old
        // data, never uninitialised memory (the pool's data rooms are allocated zeroed).
        let buf = unsafe { std::slice::from_raw_parts_mut(dst.cast::<u8>(), len) };
        fill(buf);
        Some(m)
    }

    /// The frame's bytes in its first segment (all of it for single-segment frames).
    #[inline]
    pub fn data(&self) -> &[u8] {
        // SAFETY: buf_addr + data_off is rte_pktmbuf_mtod, and data_len bytes from there are the
        // initialised data of the first segment (bindgen's layout assertions pin these fields to
        // the C struct). The data lives as long as our reference and is never written while shared.
        unsafe {
            let m = self.0.as_ref();
            let start = m.buf_addr.cast::<u8>().add(usize::from(m.data_off));
            std::slice::from_raw_parts(start, usize::from(m.data_len))
        }
    }

    /// Starts loading the frame's first bytes (its headers) into the cache, for a frame that
    /// is about to be parsed: a burst is prefetched before its first frame is classified, so
    /// the loads overlap instead of stalling one after another.
    #[inline]
    pub fn prefetch_data(&self) {
        // SAFETY: reads buf_addr and data_off of a valid mbuf we hold a reference to (the
        // header was just written by the PMD's RX, so this read hits the cache).
        let start = unsafe {
            let m = self.0.as_ref();
            m.buf_addr.cast::<u8>().add(usize::from(m.data_off))
        };
        prefetch(start);
    }

    /// Starts loading the mbuf's header (both of its cache lines: TX and free read `refcnt`,
    /// `nb_segs`, `pool` and `next`) for a frame that is about to be sent after being held.
    #[inline]
    pub fn prefetch_header(&self) {
        let m = self.0.as_ptr().cast::<u8>();
        prefetch(m);
        prefetch(m.wrapping_add(64));
    }

    /// Length of the whole frame on the wire (all segments).
    #[inline]
    pub fn len(&self) -> usize {
        // SAFETY: reads pkt_len of a valid mbuf we hold a reference to.
        unsafe { self.0.as_ref().pkt_len as usize }
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of segments.
    pub fn segments(&self) -> u16 {
        // SAFETY: reads nb_segs of a valid mbuf we hold a reference to.
        unsafe { ffi::eg_mbuf_nb_segs(self.0.as_ptr()) }
    }

    /// A second owner of the same buffer (reference count + 1), for sending one frame to several
    /// ports without copying. Sound because nobody writes an mbuf's data through this API.
    #[inline]
    pub fn share(&self) -> Mbuf {
        // SAFETY: we hold a reference, so the mbuf is alive; the new reference is owned by the
        // returned Mbuf and released by its Drop.
        unsafe { ffi::eg_mbuf_refcnt_update(self.0.as_ptr(), 1) };
        Mbuf(self.0)
    }

    /// Current reference count (1 unless shared).
    pub fn refcnt(&self) -> u16 {
        // SAFETY: reads the refcnt of a valid mbuf.
        unsafe { ffi::eg_mbuf_refcnt_read(self.0.as_ptr()) }
    }
}

impl Drop for Mbuf {
    #[inline]
    fn drop(&mut self) {
        // SAFETY: we own one reference, released exactly once here.
        unsafe { ffi::eg_pktmbuf_free(self.0.as_ptr()) }
    }
}

impl fmt::Debug for Mbuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Mbuf({} bytes)", self.len())
    }
}

/// A hint that `p` will be read soon. Never dereferences `p`, so any address is allowed.
#[inline(always)]
fn prefetch(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint: it never faults and has no effect the program can observe
    // whatever `p` points to; SSE is part of the x86_64 baseline.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast::<i8>())
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}
