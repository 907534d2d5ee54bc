//! What the classifier and the request policy cost per frame, measured in this process: the
//! term a protected VM adds to a pass-through VM's per-frame cost (issue 12's "no more than a
//! pass-through VM plus the classifier").

use epochgate::classify::{Classifier, VmDefer};
use epochgate::hold::policy::{FrameKind, PolicyConfig, RequestPolicy};
use std::time::Instant;

/// Nanoseconds per frame of classifying `frames` (cycled through, `n` in all) with the
/// built-in rules and feeding each verdict to a request policy that is fenced whenever it asks,
/// as the worker does for a protected VM.
pub fn classifier_policy_ns(frames: &[Vec<u8>], n: u64) -> f64 {
    assert!(!frames.is_empty(), "no frames to classify");
    let c = Classifier::default();
    let t = Instant::now();
    let mut policy = RequestPolicy::new(PolicyConfig::default(), 0);
    let mut requests = 0u64;
    for i in 0..n {
        let f = &frames[(i as usize) % frames.len()];
        let v = c.classify_with("vm0", VmDefer::Builtin, None, std::hint::black_box(f));
        let kind = if v.is_deferrable() {
            FrameKind::Deferrable
        } else {
            FrameKind::Immediate
        };
        if policy
            .on_frame_sized(i * 10, kind, i % 1024, f.len() as u64)
            .is_some()
        {
            requests += 1;
            policy.on_fence(i * 10);
        }
    }
    let ns = t.elapsed().as_nanos() as f64 / n.max(1) as f64;
    std::hint::black_box(requests);
    ns
}
