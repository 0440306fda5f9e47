//! Jittered waits between retries, so that invocations racing for one object spread out
//! instead of colliding again.

use std::time::Duration;

/// `base_ms` plus up to `spread_ms` more, drawn from the clock's nanoseconds (no random
/// number generator needed for spreading a handful of contenders).
pub(crate) fn jittered(base_ms: u64, spread_ms: u64) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    Duration::from_millis(base_ms + u64::from(nanos) % (spread_ms + 1))
}
