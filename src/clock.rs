//! The process's monotonic millisecond clock, for times kept in atomics
//! (ejections, slow-start ramps, TTLs, held-back removals, idle
//! connections).
//!
//! It reads tokio's clock (`tokio::time::Instant`), which outside tests is
//! the same monotonic clock as `std::time::Instant` at the same cost. In
//! tests run with `#[tokio::test(start_paused = true)]` it follows the
//! paused clock, so `tokio::time::advance` drives every state machine that
//! reads it, without sleeping.

use std::sync::OnceLock;

use tokio::time::Instant;

static START: OnceLock<Instant> = OnceLock::new();

/// Milliseconds since the first call in this process, never 0 (0 means
/// "unset" in the atomics that store these values).
#[inline]
pub fn now_ms() -> u64 {
    let start = *START.get_or_init(Instant::now);
    Instant::now().saturating_duration_since(start).as_millis() as u64 + 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn follows_tokio_paused_time() {
        let before = now_ms();
        assert!(before >= 1, "never 0");
        assert_eq!(now_ms(), before, "paused: no time passes by itself");
        tokio::time::advance(Duration::from_millis(2_500)).await;
        assert_eq!(now_ms(), before + 2_500);
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(now_ms(), before + 62_500, "auto-advanced by the sleep");
    }
}
