//! A cheap monotonic millisecond clock for state stored in atomics.

use std::sync::OnceLock;
use std::time::Instant;

static START: OnceLock<Instant> = OnceLock::new();

/// Milliseconds since the first call in this process, never 0 (0 means
/// "unset" in the atomics that store these values).
#[inline]
pub fn now_ms() -> u64 {
    let start = *START.get_or_init(Instant::now);
    start.elapsed().as_millis() as u64 + 1
}
