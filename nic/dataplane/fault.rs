//! A fault hook for the tests of failing closed (a worker that panics or whose loop returns
//! while nobody told it to stop). It exists only in builds with debug assertions (the
//! integration tests run the debug binary): in a release build this module and its one call in
//! [`super::Worker::run`] are not compiled at all.
//!
//! `EPOCHGATE_FAULT`, read once when the worker starts:
//! - `worker-panic-after-frames:N`: the poll loop panics at the start of the first round after
//!   the worker received N frames (on all its ports);
//! - `worker-return-after-frames:N`: the poll loop returns there instead, without its shutdown
//!   drain.

/// The variable the hook is read from.
pub const VAR: &str = "EPOCHGATE_FAULT";

/// What the hook does, and after how many received frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    None,
    PanicAfter(u64),
    ReturnAfter(u64),
}

impl Fault {
    /// The hook as `EPOCHGATE_FAULT` sets it. A value it does not understand is said on stderr
    /// and ignored (the test that set it then fails, saying why).
    pub fn from_env() -> Fault {
        let Ok(v) = std::env::var(VAR) else {
            return Fault::None;
        };
        Fault::parse(&v).unwrap_or_else(|| {
            eprintln!("epochgate: {VAR}={v:?} is not understood; no fault is injected");
            Fault::None
        })
    }

    fn parse(v: &str) -> Option<Fault> {
        let (what, n) = v.split_once(':')?;
        let n = n.parse().ok()?;
        match what {
            "worker-panic-after-frames" => Some(Fault::PanicAfter(n)),
            "worker-return-after-frames" => Some(Fault::ReturnAfter(n)),
            _ => None,
        }
    }

    /// Called once per round with the frames received so far: panics, or returns true when
    /// the loop must return now.
    #[inline]
    pub fn fires(self, received: u64) -> bool {
        match self {
            Fault::PanicAfter(n) if received >= n => {
                panic!("fault hook {VAR}: injected worker panic after {received} frames received")
            }
            Fault::ReturnAfter(n) => received >= n,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Fault;

    #[test]
    fn the_hook_is_parsed_or_ignored() {
        assert_eq!(
            Fault::parse("worker-panic-after-frames:7"),
            Some(Fault::PanicAfter(7))
        );
        assert_eq!(
            Fault::parse("worker-return-after-frames:0"),
            Some(Fault::ReturnAfter(0))
        );
        assert_eq!(Fault::parse("worker-panic-after-frames"), None);
        assert_eq!(Fault::parse("worker-panic-after-frames:x"), None);
        assert_eq!(Fault::parse("other:1"), None);
        assert!(!Fault::None.fires(u64::MAX));
        assert!(!Fault::ReturnAfter(3).fires(2));
        assert!(Fault::ReturnAfter(3).fires(3));
        assert!(!Fault::PanicAfter(3).fires(2));
        let panicked = std::panic::catch_unwind(|| Fault::PanicAfter(3).fires(3));
        assert!(panicked.is_err());
    }
}
