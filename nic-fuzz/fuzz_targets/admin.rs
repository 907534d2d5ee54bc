//! Feeds arbitrary byte streams to the admin socket's request framing and parsing
//! (`epochgate::admin::{frame_request, parse_request}`), as the server's poll loop does: the
//! stream arrives in chunks, the input so far is framed after each one, and the line is parsed.
//!
//! The first byte chooses the chunk size (1..=256 bytes, the server reads 256 at a time) and
//! whether the client shuts down its side at the end; the rest is the stream.
//!
//! Beyond "never panics", it checks the framing's and the parser's promises: a line is what came
//! before the first newline within the first `MAX_REQUEST` bytes (or, at a shutdown, all of an
//! unterminated short request), a verdict once given does not change as more bytes arrive; a
//! request is accepted exactly when its trimmed text is one of `REQUESTS`, and a refusal names
//! what was sent and what is accepted, and its JSON answer is one line.

#![no_main]

use epochgate::admin::{frame_request, parse_request, Framed, MAX_REQUEST, REQUESTS};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&knobs, stream)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(knobs >> 1) % 256 + 1;
    let eof = knobs & 1 == 1;

    // As the server reads: chunk by chunk, stopping once a verdict is in.
    let mut input = Vec::new();
    let mut verdict = Framed::More;
    for piece in stream.chunks(chunk) {
        input.extend_from_slice(piece);
        verdict = frame_request(&input, false);
        assert_ne!(verdict, Framed::Closed, "no shutdown yet");
        if verdict != Framed::More {
            break;
        }
    }
    if verdict == Framed::More {
        verdict = frame_request(&input, eof);
    }
    // A verdict depends only on the stream, not on how it was cut up or what followed it.
    let whole = frame_request(stream, eof);
    assert_eq!(verdict, whole);

    let newline = stream.iter().position(|b| *b == b'\n');
    match verdict {
        Framed::Line(line) => {
            assert!(line.len() < MAX_REQUEST);
            assert!(!line.contains(&b'\n'));
            assert!(stream.starts_with(&line));
            assert!(newline == Some(line.len()) || (eof && newline.is_none()));
            check_request(&line);
        }
        Framed::TooLong => {
            assert!(stream.len() >= MAX_REQUEST);
            assert!(newline.is_none_or(|n| n >= MAX_REQUEST));
        }
        Framed::Closed => assert!(eof && stream.is_empty()),
        Framed::More => assert!(!eof && newline.is_none() && stream.len() < MAX_REQUEST),
    }
});

fn check_request(line: &[u8]) {
    let text = String::from_utf8_lossy(line);
    match parse_request(line) {
        Ok(r) => {
            assert!(REQUESTS.contains(&r));
            assert_eq!(text.trim(), r);
        }
        Err(why) => {
            assert!(!REQUESTS.contains(&text.trim()), "{text:?} refused: {why}");
            assert!(why.starts_with("unknown request "), "{why}");
            assert!(why.contains(&format!("{:?}", text.trim())), "{why}");
            for r in REQUESTS {
                assert!(why.contains(&format!("{r:?}")), "{why}");
            }
            let answer = serde_json::json!({ "error": why }).to_string();
            assert!(!answer.contains('\n'), "{answer}");
        }
    }
}
