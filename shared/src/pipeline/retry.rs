//! How the write loop retries: how many reads and transient retries one object gets, and
//! how long it waits before each.

use std::time::Duration;

use crate::error::Error;

/// Reads of the object before giving up (each write refused with 409 costs one, and so
/// does each transient retry).
pub(super) const MAX_WRITE_ATTEMPTS: u32 = 6;
/// Transient API failures (5xx, 429, timeouts) retried within one invocation.
pub(super) const MAX_TRANSIENT_RETRIES: u32 = 2;

/// Exponential backoff with jitter between conflicting writes: 10, 20, 40 ms ... plus up
/// to the same again, so racing invocations spread out instead of colliding again.
pub(super) fn conflict_backoff(attempt: u32) -> Duration {
    let base = 10u64 << attempt.min(6);
    crate::backoff::jittered(base, base)
}

/// Backoff before retrying a transient failure: 100 ms, 200 ms (plus jitter), or the
/// server's `Retry-After` when it says so, capped at two seconds.
pub(super) fn transient_backoff(error: &Error, retry: u32) -> Duration {
    let server_hint = match error {
        Error::Kube { source, .. } => match source.as_ref() {
            kube::Error::Api(status) => status
                .details
                .as_ref()
                .map(|d| u64::from(d.retry_after_seconds))
                .filter(|s| *s > 0),
            _ => None,
        },
        _ => None,
    };
    match server_hint {
        Some(seconds) => Duration::from_secs(seconds).min(Duration::from_secs(2)),
        None => conflict_backoff(retry + 3),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_bounded() {
        assert!(conflict_backoff(0) <= Duration::from_millis(20));
        assert!(conflict_backoff(3) >= Duration::from_millis(80));
        assert!(conflict_backoff(50) <= Duration::from_millis(1280));
    }
}
