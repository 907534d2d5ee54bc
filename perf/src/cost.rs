//! What the classifier and the request policy cost per frame, measured in this process: the
//! term a protected VM adds to a pass-through VM's per-frame cost (issue 12's "no more than a
//! pass-through VM plus the classifier").

use epochgate::classify::{Classifier, VmDefer};
use epochgate::hold::policy::{FrameKind, PolicyConfig, RequestPolicy};
use std::time::Instant;

/// Nanoseconds per frame of classifying `frames` (cycled through, `n` in all) with the
/// built-in rules and feeding each verdict to a request policy as the VM core does for a
/// protected VM: the policy is asked about each frame until the epoch's request is out (then
/// it has nothing to say), and the epoch is fenced every `epoch_frames` frames.
///
/// Fencing more often than the VM does would count a request and a fence that the worker
/// makes once per epoch into every frame's cost (with immediate frames, one per frame).
pub fn classifier_policy_ns(frames: &[Vec<u8>], n: u64, epoch_frames: u64) -> f64 {
    measure(frames, n, epoch_frames).0
}

/// The time per frame and the requests made.
fn measure(frames: &[Vec<u8>], n: u64, epoch_frames: u64) -> (f64, u64) {
    assert!(!frames.is_empty(), "no frames to classify");
    let epoch_frames = epoch_frames.max(1);
    let c = Classifier::default();
    let t = Instant::now();
    let mut policy = RequestPolicy::new(PolicyConfig::default(), 0);
    let (mut requests, mut held, mut held_bytes) = (0u64, 0u64, 0u64);
    for i in 0..n {
        let f = &frames[(i as usize) % frames.len()];
        let v = c.classify_with("vm0", VmDefer::Builtin, None, std::hint::black_box(f));
        let kind = if v.is_deferrable() {
            FrameKind::Deferrable
        } else {
            FrameKind::Immediate
        };
        held += 1;
        held_bytes += f.len() as u64;
        if !policy.requested()
            && policy
                .on_frame_sized(i * 10, kind, held, held_bytes)
                .is_some()
        {
            requests += 1;
        }
        if held == epoch_frames {
            policy.on_fence(i * 10);
            (held, held_bytes) = (0, 0);
        }
    }
    (t.elapsed().as_nanos() as f64 / n.max(1) as f64, requests)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_is_asked_as_the_vm_core_asks_it() {
        // Immediate frames (non-IP zeros): one request per epoch of 1024 frames, not one per
        // frame (which a loop fencing on every request would make).
        let zeros = vec![0u8; 64];
        assert_eq!(measure(&[zeros], 4096, 1024).1, 4);
        // An IPv4 TCP pure ACK is deferrable: 4096 frames 10 ns apart stay inside the 5 ms
        // deferral, so no request at all.
        let mut ack = vec![0u8; 64];
        ack[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        ack[14] = 0x45;
        ack[16..18].copy_from_slice(&40u16.to_be_bytes());
        ack[22] = 64;
        ack[23] = 6;
        ack[34 + 12] = 5 << 4;
        ack[34 + 13] = 0x10;
        assert_eq!(measure(&[ack], 4096, 1024).1, 0);
    }
}
