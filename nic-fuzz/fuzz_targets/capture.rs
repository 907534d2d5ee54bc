//! Feeds arbitrary bytes to the capture reader (`epochgate::tools::capture::parse`, what
//! `read_file` runs on a file's bytes): classic pcap in both byte orders and timestamp
//! resolutions, and pcapng.
//!
//! Beyond "never panics", it checks the reader's promises: an error says what is wrong (its text
//! is not empty); a capture read is no larger than its file (a header's claimed length never
//! makes the reader allocate more than the file holds), every frame within the 256 KiB limit and
//! no longer than its wire length; and whatever was read, written out again as nanosecond pcap,
//! reads back as the same frames.

#![no_main]

use epochgate::tools::capture::{parse, Format, PcapWriter, MAX_FRAME_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let cap = match parse(data) {
        Ok(cap) => cap,
        Err(e) => {
            assert!(!e.to_string().is_empty(), "an error with no text: {e:?}");
            return;
        }
    };
    let mut total = 0usize;
    for f in &cap.frames {
        assert!(
            f.data.len() <= MAX_FRAME_LEN as usize,
            "frame over the limit"
        );
        assert!(
            f.data.len() as u64 <= u64::from(f.orig_len),
            "captured > wire"
        );
        total += f.data.len();
    }
    assert!(
        total <= data.len(),
        "{total} bytes of frames from a {}-byte file",
        data.len()
    );
    match cap.format {
        Format::PcapMicro | Format::PcapNano => assert!(data.len() >= 24),
        Format::PcapNg => assert!(data.len() >= 12),
    }

    // Round trip: what was read, written as nanosecond pcap (when the writer can hold it: frames
    // up to its 65535-byte snaplen, timestamps before 2106), reads back the same.
    let Ok(mut w) = PcapWriter::new_nanos(Vec::new()) else {
        return;
    };
    for f in &cap.frames {
        if w.write_frame(f).is_err() {
            return;
        }
    }
    let bytes = w.into_inner().expect("a Vec takes everything");
    let again = parse(&bytes).expect("our own pcap reads back");
    assert_eq!(again.format, Format::PcapNano);
    assert!(!again.big_endian);
    assert_eq!(again.frames, cap.frames);
});
