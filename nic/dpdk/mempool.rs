//! Packet mempools. A pool lives for the rest of the process: an mbuf may outlive any owner of
//! the pool (held in a driver ring, or in a queue being torn down), so freeing the pool would be
//! unsound; pools are created once at start-up.

use super::{ffi, last_errno, strerror, DpdkError, Eal, Mbuf};
use std::ffi::CString;
use std::ptr::NonNull;

/// A handle to a packet mempool that is never freed.
#[derive(Debug, Clone, Copy)]
pub struct Mempool {
    ptr: NonNull<ffi::rte_mempool>,
}

// SAFETY: DPDK mempools are safe to use from several threads (lock-free rings); the handle is a
// pointer to a pool that lives until the process exits.
unsafe impl Send for Mempool {}
// SAFETY: as above; every operation on the pool through &Mempool is thread-safe in DPDK.
unsafe impl Sync for Mempool {}

impl Mempool {
    /// Creates a pool of `n` mbufs with default data room (2048 + headroom) on any socket.
    pub fn create(_eal: &Eal, name: &str, n: u32, cache: u32) -> Result<Mempool, DpdkError> {
        let cname = CString::new(name).map_err(|_| DpdkError::Mempool {
            name: name.into(),
            reason: "name contains NUL".into(),
        })?;
        let room = u16::try_from(ffi::RTE_MBUF_DEFAULT_BUF_SIZE).unwrap_or(u16::MAX);
        // SAFETY: the EAL is initialised (we hold &Eal) and cname is a valid C string.
        let p = unsafe {
            ffi::rte_pktmbuf_pool_create(cname.as_ptr(), n, cache, 0, room, ffi::SOCKET_ID_ANY)
        };
        NonNull::new(p)
            .map(|ptr| Mempool { ptr })
            .ok_or_else(|| DpdkError::Mempool {
                name: name.into(),
                reason: format!("cannot create {n} mbufs: {}", strerror(last_errno())),
            })
    }

    /// One mbuf, or `None` when the pool is empty.
    #[inline]
    pub fn alloc(&self) -> Option<Mbuf> {
        // SAFETY: self.ptr is a live pool; the returned mbuf (if any) is ours with refcnt 1.
        let m = unsafe { ffi::eg_pktmbuf_alloc(self.ptr.as_ptr()) };
        // SAFETY: m is either null or an mbuf we exclusively own.
        NonNull::new(m).map(|p| unsafe { Mbuf::from_owned(p) })
    }

    /// Mbufs currently free in the pool (including per-lcore caches).
    pub fn available(&self) -> u32 {
        // SAFETY: self.ptr is a live pool; the count is a racy but harmless read.
        unsafe { ffi::eg_mempool_avail_count(self.ptr.as_ptr()) }
    }

    /// Mbufs the pool was created with; those in use are `size() - available()` (what
    /// rte_mempool_in_use_count computes), from one reading of `available()`.
    pub fn size(&self) -> u32 {
        // SAFETY: self.ptr is a live pool; its size field is set at creation and never changes.
        unsafe { ffi::eg_mempool_size(self.ptr.as_ptr()) }
    }

    pub(crate) fn as_ptr(&self) -> *mut ffi::rte_mempool {
        self.ptr.as_ptr()
    }
}
