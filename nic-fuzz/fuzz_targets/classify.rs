//! Feeds arbitrary frames to the classifier: `parse`, `Classifier::classify` (with and without
//! rules, under every per-VM setting) and `classify_with` a small window table.
//!
//! Beyond "never panics", it checks the classifier's promises: a malformed frame is Immediate
//! `malformed` whatever is configured (a frame shorter than an Ethernet header always is), and
//! `classify` is `classify_info` of `parse`.

#![no_main]

use std::sync::OnceLock;

use epochgate::classify::{
    builtin, parse, Classified, Classifier, RawRule, Reason, Verdict, VmDefer, WindowTable,
};
use libfuzzer_sys::fuzz_target;

fn rules() -> &'static Classifier {
    static RULES: OnceLock<Classifier> = OnceLock::new();
    RULES.get_or_init(|| {
        let rule =
            |protocol: Option<&str>, dst_port: Option<&str>, dst_ip: Option<&str>, v: &str| {
                RawRule {
                    protocol: protocol.map(Into::into),
                    dst_port: dst_port.map(Into::into),
                    dst_ip: dst_ip.map(Into::into),
                    verdict: Some(v.into()),
                    ..RawRule::default()
                }
            };
        Classifier::from_raw([
            rule(Some("tcp"), Some("1-1023"), None, "immediate"),
            rule(Some("udp"), None, Some("10.0.0.0/8"), "defer"),
            rule(None, None, Some("fd00::/8"), "builtin"),
            rule(Some("icmpv6"), None, None, "defer"),
        ])
        .expect("valid rules")
    })
}

fuzz_target!(|frame: &[u8]| {
    let info = parse(frame);
    // A frame too short for its Ethernet header is malformed, hence immediate, at once.
    if frame.len() < 14 {
        assert!(info.malformed, "a {}-byte frame parsed", frame.len());
    }
    let plain = Classifier::default();
    let malformed = Classified {
        verdict: Verdict::Immediate,
        reason: Reason::Malformed,
    };
    assert_eq!(
        plain.classify("vm", VmDefer::Builtin, frame),
        builtin(&info)
    );
    let mut table = WindowTable::new(8, 1024);
    for c in [&plain, rules()] {
        for defer in [VmDefer::Builtin, VmDefer::All, VmDefer::Never] {
            let got = c.classify("vm", defer, frame);
            assert_eq!(got, c.classify_info("vm", defer, &info));
            let with = c.classify_with("vm", defer, Some(&mut table), frame);
            if info.malformed {
                assert_eq!(got, malformed);
                assert_eq!(with, malformed);
            }
        }
    }
});
