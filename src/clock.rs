//! The server's one source of "now".
//!
//! Every rule that depends on time (lagged playback, TTLs, idle eviction,
//! share expiry, automatic finishing) reads the time through a `Clock`
//! handed down from `run`, never from the system directly, so that tests can
//! run those rules with tokio's paused time.
//!
//! - `Clock::System` (production) is the wall clock.
//! - `Clock::tokio()` is wall time as of its creation, moved forward by
//!   `tokio::time::Instant`: under `tokio::time::pause()` it stands still and
//!   moves only with `advance()` (or tokio's auto-advance), so a test can
//!   cross a 20-minute rule in milliseconds. Timers (`sleep`, `interval`) use
//!   the same tokio clock, so the two never disagree.

use std::time::Duration;

use crate::domain::time::Millis;

#[derive(Debug, Clone, Copy, Default)]
pub enum Clock {
    #[default]
    System,
    Tokio {
        wall_origin: Millis,
        origin: tokio::time::Instant,
    },
}

impl Clock {
    /// Wall time that follows tokio's clock (see the module comment).
    pub fn tokio() -> Clock {
        Clock::Tokio {
            wall_origin: system_ms(),
            origin: tokio::time::Instant::now(),
        }
    }

    /// Milliseconds since the Unix epoch.
    pub fn now_ms(&self) -> Millis {
        match self {
            Clock::System => system_ms(),
            Clock::Tokio {
                wall_origin,
                origin,
            } => *wall_origin + origin.elapsed().as_millis() as Millis,
        }
    }

    /// The tokio instant at which this clock will read `at` (for timers
    /// that wait for a wall-clock moment, such as a share's expiry).
    pub fn instant_at(&self, at: Millis) -> tokio::time::Instant {
        let wait = (at - self.now_ms()).max(0) as u64;
        tokio::time::Instant::now() + Duration::from_millis(wait)
    }
}

fn system_ms() -> Millis {
    chrono::Utc::now().timestamp_millis()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_tokio_clock_moves_only_with_tokio_time() {
        let clock = Clock::tokio();
        let t0 = clock.now_ms();
        assert_eq!(clock.now_ms(), t0);
        tokio::time::advance(Duration::from_secs(20 * 60)).await;
        assert_eq!(clock.now_ms(), t0 + 20 * 60 * 1000);
        let due = clock.instant_at(t0 + 21 * 60 * 1000);
        assert_eq!(due - tokio::time::Instant::now(), Duration::from_secs(60));
    }

    #[test]
    fn the_system_clock_is_the_wall_clock() {
        let now = chrono::Utc::now().timestamp_millis();
        assert!((Clock::System.now_ms() - now).abs() < 1_000);
    }
}
