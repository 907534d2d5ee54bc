//! Bounded per-flow memory of the last advertised TCP window, to spot the ACK that reopens a
//! closed (or nearly closed) receive window: the peer is stalled until it sees that ACK.

use std::net::IpAddr;

use super::FrameInfo;

/// Entries per set: a lookup compares at most this many keys.
const WAYS: usize = 4;

/// A flow as the VM sends it: the window in its ACKs is the VM's receive window for the
/// reverse direction. IPv4 addresses sit in the last 4 bytes, told apart by `v6`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct FlowKey {
    src: [u8; 16],
    dst: [u8; 16],
    src_port: u16,
    dst_port: u16,
    v6: bool,
}

impl FlowKey {
    /// The key of a well-formed, unfragmented TCP segment with ACK set.
    fn of(info: &FrameInfo) -> Option<FlowKey> {
        let (ip, ports, tcp) = (info.ip?, info.ports?, info.tcp?);
        if info.malformed || ip.fragment.is_some() || !tcp.has_ack() {
            return None;
        }
        let mut key = FlowKey {
            src_port: ports.src,
            dst_port: ports.dst,
            ..FlowKey::default()
        };
        match (ip.src, ip.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                key.src[12..].copy_from_slice(&s.octets());
                key.dst[12..].copy_from_slice(&d.octets());
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                key.src = s.octets();
                key.dst = d.octets();
                key.v6 = true;
            }
            _ => return None,
        }
        Some(key)
    }

    /// A fast non-cryptographic hash (multiply-rotate over 64-bit words, then one
    /// xor-shift-multiply). A crafted collision only costs the colliding flows their entries.
    #[inline]
    fn hash(&self) -> u64 {
        const K: u64 = 0x9e37_79b9_7f4a_7c15;
        let word = |b: &[u8; 16], half: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[half * 8..half * 8 + 8]);
            u64::from_le_bytes(w)
        };
        let tail =
            u64::from(self.src_port) | u64::from(self.dst_port) << 16 | u64::from(self.v6) << 32;
        let mut h = 0u64;
        for w in [
            word(&self.src, 0),
            word(&self.src, 1),
            word(&self.dst, 0),
            word(&self.dst, 1),
            tail,
        ] {
            h = (h.rotate_left(23) ^ w).wrapping_mul(K);
        }
        (h ^ (h >> 31)).wrapping_mul(0xff51_afd7_ed55_8ccd)
    }
}

/// The hot part of one set, in one cache line: a lookup reads this line and, on a tag hit,
/// one key.
#[derive(Debug, Clone, Copy, Default)]
#[repr(C, align(64))]
struct Bucket {
    /// Low hash bits of each way's key with bit 0 forced to 1; 0 = empty way.
    tags: [u32; WAYS],
    /// Last advertised window of each way.
    windows: [u16; WAYS],
    /// The table's clock when each way was last seen (wrapping; compared as ages).
    seen: [u32; WAYS],
}

/// Fixed-capacity map from TCP flow (source/destination address and port, IPv4 or IPv6) to
/// the last window it advertised. The window is the raw 16-bit header value: window scaling is
/// not tracked (the scale is fixed per flow, so "below the threshold" keeps its meaning up to
/// that factor; pick the threshold in header units).
///
/// Layout: 4-way set-associative, all memory allocated in [`WindowTable::new`] and never
/// grown. A flow hashes to one set; when the set is full the least recently seen flow of
/// that set is evicted (LRU by a per-table clock). An evicted flow is simply seen for the
/// first time again later, which is never reported as an update.
#[derive(Debug, Clone)]
pub struct WindowTable {
    buckets: Box<[Bucket]>,
    /// `WAYS` keys per bucket, parallel to `buckets`.
    keys: Box<[FlowKey]>,
    threshold: u32,
    len: usize,
    clock: u32,
}

impl WindowTable {
    /// A table for `capacity` flows (rounded up to a multiple of 4, at least 4) reporting
    /// windows that rise from below `threshold` to at least `threshold`. With threshold 0
    /// nothing is ever an update; with 1, only an opening from zero is.
    pub fn new(capacity: usize, threshold: u32) -> WindowTable {
        let sets = capacity.div_ceil(WAYS).max(1);
        WindowTable {
            buckets: vec![Bucket::default(); sets].into_boxed_slice(),
            keys: vec![FlowKey::default(); sets * WAYS].into_boxed_slice(),
            threshold,
            len: 0,
            clock: 0,
        }
    }

    /// Records the window of a well-formed, unfragmented TCP segment with ACK set (meant for
    /// ACKs judged `tcp-pure-ack` / `tcp-ack-no-psh`; any ACK keeps the record current), and
    /// returns true when it raises the flow's window from below the threshold (zero
    /// included) to at least the threshold: a window update the peer is waiting for. The
    /// first segment seen of a flow only records. Other frames are ignored (false).
    pub fn observe(&mut self, info: &FrameInfo) -> bool {
        let (Some(key), Some(tcp)) = (FlowKey::of(info), info.tcp) else {
            return false;
        };
        self.clock = self.clock.wrapping_add(1);
        let clock = self.clock;
        let hash = key.hash();
        let tag = (hash as u32) | 1;
        // Lemire's multiply-shift maps the hash onto 0..sets without a division.
        let set = ((u128::from(hash) * self.buckets.len() as u128) >> 64) as usize;
        let (Some(bucket), Some(keys)) = (
            self.buckets.get_mut(set),
            self.keys.get_mut(set * WAYS..set * WAYS + WAYS),
        ) else {
            return false;
        };
        for (way, stored) in keys.iter().enumerate() {
            if bucket.tags[way] == tag && *stored == key {
                let before = u32::from(bucket.windows[way]);
                bucket.windows[way] = tcp.window;
                bucket.seen[way] = clock;
                return before < self.threshold && u32::from(tcp.window) >= self.threshold;
            }
        }
        // Not present: take an empty way, else the one unseen for longest.
        let mut victim = 0;
        let mut oldest = 0u32;
        for way in 0..WAYS {
            if bucket.tags[way] == 0 {
                victim = way;
                self.len += 1;
                break;
            }
            let age = clock.wrapping_sub(bucket.seen[way]);
            if age >= oldest {
                oldest = age;
                victim = way;
            }
        }
        bucket.tags[victim] = tag;
        bucket.windows[victim] = tcp.window;
        bucket.seen[victim] = clock;
        keys[victim] = key;
        false
    }

    /// Flows currently recorded (never more than [`WindowTable::capacity`]).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no flow is recorded.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// How many flows fit (the constructor's capacity rounded up to a multiple of 4).
    pub fn capacity(&self) -> usize {
        self.keys.len()
    }

    /// The threshold given to [`WindowTable::new`].
    pub fn threshold(&self) -> u32 {
        self.threshold
    }

    /// Forgets every flow, keeping the memory.
    pub fn clear(&mut self) {
        self.buckets.fill(Bucket::default());
        self.len = 0;
    }
}
