//! systemd's readiness protocol (`sd_notify`), without libsystemd: one datagram such as
//! `READY=1` to the Unix socket named by `$NOTIFY_SOCKET` (a path, or `@name` for the abstract
//! namespace). Without `$NOTIFY_SOCKET` (not started by systemd with `Type=notify`) nothing is
//! sent. epochgate says `READY=1` once its ports, control socket, admin socket and metrics
//! endpoint are up, and `STOPPING=1` when a signal starts its clean stop.

use std::os::unix::net::{SocketAddr, UnixDatagram};

/// Why a notification could not be sent.
#[derive(Debug, thiserror::Error)]
#[error("NOTIFY_SOCKET {socket:?}: cannot send {what:?} to systemd: {why}")]
pub struct NotifyError {
    pub socket: String,
    pub what: String,
    pub why: String,
}

/// Sends `state` (newline-separated `KEY=VALUE` lines) to `$NOTIFY_SOCKET`; `Ok(false)` if the
/// variable is not set.
pub fn notify(state: &str) -> Result<bool, NotifyError> {
    match std::env::var_os("NOTIFY_SOCKET") {
        None => Ok(false),
        Some(s) => notify_to(&s.to_string_lossy(), state).map(|()| true),
    }
}

/// Sends `state` to the notification socket `socket` (a path, or `@name`: abstract).
pub fn notify_to(socket: &str, state: &str) -> Result<(), NotifyError> {
    let err = |why: String| NotifyError {
        socket: socket.to_string(),
        what: state.to_string(),
        why,
    };
    let addr = address(socket).map_err(err)?;
    let sock = UnixDatagram::unbound().map_err(|e| err(e.to_string()))?;
    let n = sock
        .send_to_addr(state.as_bytes(), &addr)
        .map_err(|e| err(e.to_string()))?;
    if n != state.len() {
        return Err(err(format!("only {n} of {} bytes sent", state.len())));
    }
    Ok(())
}

fn address(socket: &str) -> Result<SocketAddr, String> {
    if let Some(name) = socket.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        return SocketAddr::from_abstract_name(name.as_bytes()).map_err(|e| e.to_string());
    }
    if !socket.starts_with('/') {
        return Err("not an absolute path or an @abstract name".to_string());
    }
    SocketAddr::from_pathname(socket).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_reaches_a_datagram_socket_by_path_and_by_abstract_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let sock = UnixDatagram::bind(&path).unwrap();
        notify_to(path.to_str().unwrap(), "READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = sock.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");

        use std::os::linux::net::SocketAddrExt;
        let name = format!("eg-notify-test-{}", std::process::id());
        let abs = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(&name).unwrap()).unwrap();
        notify_to(&format!("@{name}"), "STOPPING=1").unwrap();
        let n = abs.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1");
    }

    #[test]
    fn a_bad_socket_is_named() {
        let e = notify_to("relative/sock", "READY=1")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("NOTIFY_SOCKET \"relative/sock\": cannot send \"READY=1\""),
            "{e}"
        );
        assert!(e.contains("absolute path"), "{e}");
        let e = notify_to("/nonexistent/eg/notify", "READY=1")
            .unwrap_err()
            .to_string();
        assert!(e.contains("No such file"), "{e}");
    }
}
