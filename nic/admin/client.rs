//! The admin socket's client: [`query`] sends one request and decodes the snapshot it is
//! answered with, or says what failed ([`QueryError`]).

use super::MAX_REQUEST;
use crate::stats::Snapshot;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// How long [`query`] waits for the answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest answer [`query`] reads (a snapshot of many VMs is a few hundred kB).
const MAX_REPLY: u64 = 64 << 20;

/// Why [`query`] returned no snapshot.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// Nothing accepts connections at the socket path.
    #[error("cannot reach epochgate at {path} (is it running? its config's control.admin_socket): {why}")]
    Connect {
        /// The socket path tried.
        path: String,
        /// The connection error.
        why: String,
    },
    /// The request is not one line the server could accept.
    #[error("request {request:?} cannot be sent: {why}")]
    Request {
        /// The request as given.
        request: String,
        /// What is wrong with it.
        why: String,
    },
    /// Sending the request or reading the answer failed.
    #[error("epochgate at {path}: {why}")]
    Io {
        /// The socket path.
        path: String,
        /// What failed.
        why: String,
    },
    /// The server answered with an error line.
    #[error("epochgate at {path} refused the request: {message}")]
    Server {
        /// The socket path.
        path: String,
        /// The server's error text.
        message: String,
    },
    /// The answer is not a snapshot.
    #[error("epochgate at {path} sent an answer that is not a snapshot: {why}")]
    BadReply {
        /// The socket path.
        path: String,
        /// Why it did not decode.
        why: String,
    },
}

/// Sends `request` (`"stats"` or `"vms"`) to the admin socket at `path` and returns the
/// snapshot it answers with.
pub fn query(path: &Path, request: &str) -> Result<Snapshot, QueryError> {
    let line = exchange(path, request)?;
    decode(&line).map_err(|e| match e {
        Decoded::Error(message) => QueryError::Server {
            path: path.display().to_string(),
            message,
        },
        Decoded::Bad(why) => QueryError::BadReply {
            path: path.display().to_string(),
            why,
        },
    })
}

/// Sends a write request (`"fail web"`) to the admin socket at `path` and returns its JSON
/// answer, or the server's refusal as [`QueryError::Server`].
pub fn command(path: &Path, request: &str) -> Result<serde_json::Value, QueryError> {
    let line = exchange(path, request)?;
    let p = || path.display().to_string();
    if let Some(message) = error_of(&line) {
        return Err(QueryError::Server { path: p(), message });
    }
    serde_json::from_slice(&line).map_err(|e| QueryError::BadReply {
        path: p(),
        why: e.to_string(),
    })
}

/// Sends one request line and returns the answer line (without its newline).
fn exchange(path: &Path, request: &str) -> Result<Vec<u8>, QueryError> {
    let p = || path.display().to_string();
    let request = request.trim();
    if request.contains('\n') || request.len() + 1 > MAX_REQUEST {
        return Err(QueryError::Request {
            request: request.to_string(),
            why: format!("a request is one line of at most {MAX_REQUEST} bytes"),
        });
    }
    let mut sock = UnixStream::connect(path).map_err(|e| QueryError::Connect {
        path: p(),
        why: e.to_string(),
    })?;
    let io = |what: &str, e: std::io::Error| QueryError::Io {
        path: p(),
        why: format!("{what}: {e}"),
    };
    sock.set_read_timeout(Some(CLIENT_TIMEOUT))
        .and_then(|()| sock.set_write_timeout(Some(CLIENT_TIMEOUT)))
        .map_err(|e| io("cannot set a timeout", e))?;
    // A server that answered before reading (and closed) may still have left its answer: on a
    // failed send, the answer is looked for before the send's error is reported.
    let sent = sock.write_all(format!("{request}\n").as_bytes());
    // Read up to the newline: the end of the answer (the connection's end may come as an error).
    let mut reply = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    let mut limited = (&sock).take(MAX_REPLY);
    while !reply.contains(&b'\n') {
        match limited.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => reply.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) if sent.is_err() => break,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Err(QueryError::Io {
                    path: p(),
                    why: format!("no answer within {} s", CLIENT_TIMEOUT.as_secs()),
                })
            }
            Err(e) => return Err(io("reading the answer failed", e)),
        }
    }
    let Some(end) = reply.iter().position(|b| *b == b'\n') else {
        if let Err(e) = sent {
            return Err(io("cannot send the request", e));
        }
        return Err(QueryError::Io {
            path: p(),
            why: if reply.is_empty() {
                "the connection closed without an answer".into()
            } else {
                format!(
                    "the answer ended after {} bytes without its newline",
                    reply.len()
                )
            },
        });
    };
    reply.truncate(end);
    Ok(reply)
}

enum Decoded {
    Error(String),
    Bad(String),
}

/// The server's error text, if `line` is an error line (`{"error":"..."}`).
fn error_of(line: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct ErrorLine {
        error: String,
    }
    serde_json::from_slice::<ErrorLine>(line)
        .ok()
        .map(|e| e.error)
}

fn decode(line: &[u8]) -> Result<Snapshot, Decoded> {
    if let Some(e) = error_of(line) {
        return Err(Decoded::Error(e));
    }
    serde_json::from_slice(line).map_err(|e| Decoded::Bad(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::tests::sample;

    #[test]
    fn a_bad_answer_is_named() {
        assert!(matches!(decode(b"{\"error\":\"nope\"}"), Err(Decoded::Error(m)) if m == "nope"));
        assert!(matches!(decode(b"{\"uptime_ms\":1}"), Err(Decoded::Bad(_))));
        assert!(matches!(decode(b"not json"), Err(Decoded::Bad(_))));
        let line = serde_json::to_vec(&sample()).unwrap();
        assert_eq!(decode(&line).ok(), Some(sample()));
        let err = query(Path::new("/x"), "a\nb").unwrap_err().to_string();
        assert!(err.contains("one line"), "{err}");
    }
}
