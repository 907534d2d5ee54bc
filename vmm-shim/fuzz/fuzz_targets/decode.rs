//! Feeds arbitrary datagrams to both control-protocol decoders.
//!
//! Beyond "never panics", it checks the decoders' promise: whatever they accept is a valid
//! value whose encoding is exactly the bytes that were accepted, and decodes back to itself.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vmm_shim::proto::{decode_reply, decode_request};

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = decode_request(data) {
        assert_eq!(req.validate(), Ok(()));
        let bytes = req.encode();
        assert_eq!(bytes, data, "request encoding is not canonical");
        assert_eq!(decode_request(&bytes), Ok(req));
    }
    if let Ok(reply) = decode_reply(data) {
        assert_eq!(reply.validate(), Ok(()));
        let bytes = reply.encode();
        assert_eq!(bytes, data, "reply encoding is not canonical");
        assert_eq!(decode_reply(&bytes), Ok(reply));
    }
});
