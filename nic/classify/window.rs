//! Bounded per-flow memory of the last advertised TCP window, in bytes, to spot the ACK that
//! reopens a closed (or nearly closed) receive window: the peer is stalled until it sees that
//! ACK. The window scale each direction uses (RFC 7323) is learnt from the handshake.

use std::net::IpAddr;

use super::{FrameInfo, TcpInfo};

/// Entries per set: a lookup compares at most this many keys.
const WAYS: usize = 4;

/// RFC 7323 §2.3: a Window Scale shift count above 14 is used as 14.
const MAX_SHIFT: u8 = 14;
/// `Bucket::offer` of a direction whose SYN (or SYN-ACK) has not been seen.
const OFFER_UNKNOWN: u8 = 0xff;
/// `Bucket::offer` of a direction whose SYN (or SYN-ACK) carried no Window Scale option.
const OFFER_NONE: u8 = 0xfe;

/// A flow direction as the VM sends it: the window in its ACKs is the VM's receive window for
/// the reverse direction. IPv4 addresses sit in the last 4 bytes, told apart by `v6`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct FlowKey {
    src: [u8; 16],
    dst: [u8; 16],
    src_port: u16,
    dst_port: u16,
    v6: bool,
}

impl FlowKey {
    /// The key of a well-formed, unfragmented TCP segment with ACK or SYN set.
    fn of(info: &FrameInfo) -> Option<FlowKey> {
        let (ip, ports, tcp) = (info.ip?, info.ports?, info.tcp?);
        if info.malformed || ip.fragment.is_some() || tcp.flags & (TcpInfo::ACK | TcpInfo::SYN) == 0
        {
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

    /// The other direction of the same connection.
    fn reversed(&self) -> FlowKey {
        FlowKey {
            src: self.dst,
            dst: self.src,
            src_port: self.dst_port,
            dst_port: self.src_port,
            v6: self.v6,
        }
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
    /// Last advertised window of each way, in bytes.
    windows: [u32; WAYS],
    /// The table's clock when each way was last seen (wrapping; compared as ages).
    seen: [u32; WAYS],
    /// The shift count applied to each way's window field: 0 until a handshake agreed on
    /// scaling (0..=14).
    shift: [u8; WAYS],
    /// What each way's direction offered in its SYN or SYN-ACK: a shift count (clamped to 14),
    /// `OFFER_NONE` or `OFFER_UNKNOWN`.
    offer: [u8; WAYS],
}

/// Fixed-capacity map from TCP flow direction (source -> destination address and port, IPv4
/// or IPv6) to the last window it advertised, in bytes: the 16-bit header value shifted left
/// by the direction's window scale (RFC 7323), so the threshold is in bytes.
///
/// The scale is learnt from the handshake. A SYN records the Window Scale option its sender
/// offered (or that it offered none); the SYN-ACK records the other side's, and if the SYN was
/// seen, each direction's shift becomes its own offer when both sides offered one, else 0 (no
/// scaling). A SYN-ACK whose SYN was not seen still fixes its own direction's shift: RFC 7323
/// §2.2 lets a SYN-ACK carry the option only when the SYN did, so its option (or its absence)
/// says whether scaling is on. Shift counts above 14 count as 14 (RFC 7323 §2.3). The window
/// of a SYN or SYN-ACK is never scaled and is recorded as it is.
///
/// A direction whose handshake was not seen (a connection older than the capture or the
/// table, a flow evicted since, or a connection the VM opened, whose SYN-ACK comes from the
/// peer) has an unknown scale, taken as 0: its window is the raw header value, as Wireshark
/// shows it when it has not seen the handshake. With scaling in effect such a window is
/// understated by the scale factor (2^7 for Linux's usual shift 7), so a small byte threshold
/// may miss a reopening to a few raw units, and rises between raw values below the threshold
/// count as updates.
///
/// Layout: 4-way set-associative, all memory allocated in [`WindowTable::new`] and never
/// grown. A direction hashes to one set; when the set is full the least recently seen
/// direction of that set is evicted (LRU by a per-table clock). An evicted direction is simply
/// seen for the first time again later (with an unknown scale), which is never reported as an
/// update.
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
    /// A table for `capacity` flow directions (rounded up to a multiple of 4, at least 4)
    /// reporting windows that rise from below `threshold` bytes to at least `threshold` bytes.
    /// With threshold 0 nothing is ever an update; with 1, only an opening from zero is.
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

    /// Records a well-formed, unfragmented TCP segment with ACK or SYN set (meant for the
    /// segments the built-in classification judges; any ACK keeps the record current), and
    /// returns true when it is not a SYN and raises its direction's window, in bytes, from
    /// below the threshold (zero included) to at least the threshold: a window update the peer
    /// is waiting for. A SYN or SYN-ACK records its unscaled window and its Window Scale
    /// option (see [`WindowTable`]) and is never an update; neither is the first segment seen
    /// of a direction. Other frames are ignored (false).
    pub fn observe(&mut self, info: &FrameInfo) -> bool {
        let (Some(key), Some(tcp)) = (FlowKey::of(info), info.tcp) else {
            return false;
        };
        self.clock = self.clock.wrapping_add(1);
        if tcp.flags & TcpInfo::SYN != 0 {
            self.handshake(key, tcp);
            return false;
        }
        let (set, tag) = self.place(&key);
        let (clock, threshold) = (self.clock, self.threshold);
        let (Some(bucket), Some(keys)) = (
            self.buckets.get_mut(set),
            self.keys.get(set * WAYS..set * WAYS + WAYS),
        ) else {
            return false;
        };
        for (way, stored) in keys.iter().enumerate() {
            if bucket.tags[way] == tag && *stored == key {
                // At most 65535 << 14 < 2^30: no overflow.
                let window = u32::from(tcp.window) << bucket.shift[way];
                let before = bucket.windows[way];
                bucket.windows[way] = window;
                bucket.seen[way] = clock;
                return before < threshold && window >= threshold;
            }
        }
        // First sight: the scale is unknown (0), the window as in the header.
        self.insert(set, tag, key, u32::from(tcp.window));
        false
    }

    /// A SYN or SYN-ACK of `key`: its window, unscaled, and its offer; on a SYN-ACK, the shift
    /// of this direction and, if its SYN was seen, of the other. Out of line (and taking the
    /// key by value) so that the path of every other segment keeps the key in registers.
    #[cold]
    #[inline(never)]
    fn handshake(&mut self, key: FlowKey, tcp: TcpInfo) {
        let (set, tag) = self.place(&key);
        let Some(way) = self
            .find(set, tag, &key)
            .or_else(|| self.insert(set, tag, key, 0))
        else {
            return;
        };
        let offer = tcp.wscale.map_or(OFFER_NONE, |s| s.min(MAX_SHIFT));
        let clock = self.clock;
        if let Some(bucket) = self.buckets.get_mut(set) {
            // RFC 7323 §2.2: the window field of a SYN is never scaled.
            bucket.windows[way] = u32::from(tcp.window);
            bucket.seen[way] = clock;
            bucket.offer[way] = offer;
            // Until the other side's offer is seen, the scale is not known.
            bucket.shift[way] = 0;
        }
        if !tcp.has_ack() {
            return;
        }
        let reverse = key.reversed();
        let (rset, rtag) = self.place(&reverse);
        let rway = self.find(rset, rtag, &reverse);
        let peer_offer = rway
            .and_then(|w| self.buckets.get(rset).map(|b| b.offer[w]))
            .unwrap_or(OFFER_UNKNOWN);
        let (shift, peer_shift) = match (offer, peer_offer) {
            // The SYN was not seen: this SYN-ACK's option says whether both sides offered.
            (OFFER_NONE, OFFER_UNKNOWN) => (0, None),
            (own, OFFER_UNKNOWN) => (own, None),
            (OFFER_NONE, _) | (_, OFFER_NONE) => (0, Some(0)),
            (own, peer) => (own, Some(peer)),
        };
        if let Some(bucket) = self.buckets.get_mut(set) {
            bucket.shift[way] = shift;
        }
        if let (Some(w), Some(s)) = (rway, peer_shift) {
            if let Some(bucket) = self.buckets.get_mut(rset) {
                bucket.shift[w] = s;
            }
        }
    }

    /// The set of `key` and its tag.
    #[inline]
    fn place(&self, key: &FlowKey) -> (usize, u32) {
        let hash = key.hash();
        // Lemire's multiply-shift maps the hash onto 0..sets without a division.
        let set = ((u128::from(hash) * self.buckets.len() as u128) >> 64) as usize;
        (set, (hash as u32) | 1)
    }

    /// The way holding `key` in `set`, if any.
    #[inline]
    fn find(&self, set: usize, tag: u32, key: &FlowKey) -> Option<usize> {
        let bucket = self.buckets.get(set)?;
        let keys = self.keys.get(set * WAYS..set * WAYS + WAYS)?;
        (0..WAYS).find(|&way| bucket.tags[way] == tag && keys[way] == *key)
    }

    /// Takes an empty way of `set` for `key`, else the one unseen for longest; it starts with
    /// `window` and an unknown scale.
    #[inline]
    fn insert(&mut self, set: usize, tag: u32, key: FlowKey, window: u32) -> Option<usize> {
        let clock = self.clock;
        let (Some(bucket), Some(keys)) = (
            self.buckets.get_mut(set),
            self.keys.get_mut(set * WAYS..set * WAYS + WAYS),
        ) else {
            return None;
        };
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
        bucket.windows[victim] = window;
        bucket.seen[victim] = clock;
        bucket.shift[victim] = 0;
        bucket.offer[victim] = OFFER_UNKNOWN;
        keys[victim] = key;
        Some(victim)
    }

    /// Flow directions currently recorded (never more than [`WindowTable::capacity`]).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no flow direction is recorded.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// How many flow directions fit (the constructor's capacity rounded up to a multiple of
    /// 4).
    pub fn capacity(&self) -> usize {
        self.keys.len()
    }

    /// The threshold given to [`WindowTable::new`], in bytes.
    pub fn threshold(&self) -> u32 {
        self.threshold
    }

    /// Forgets every flow direction, keeping the memory.
    pub fn clear(&mut self) {
        self.buckets.fill(Bucket::default());
        self.len = 0;
    }
}
