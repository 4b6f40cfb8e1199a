//! Per-token rate limit: a token bucket per user, refilled at `rate` requests
//! per second up to `burst`. A phone posting every 2–5 s, a watcher polling
//! and an offline upload in many batches all fit well inside the defaults;
//! a runaway client gets 429 with Retry-After instead of starving others.
//!
//! The map holds one small entry per user seen recently; `sweep` (run by the
//! server's sweeper) drops buckets that have been full for a minute, so it is
//! bounded by the users active in that time.

use std::time::Duration;

use tokio::time::Instant;

use dashmap::DashMap;
use uuid::Uuid;

pub struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: DashMap<Uuid, Bucket>,
}

struct Bucket {
    tokens: f64,
    last: Instant,
}

impl RateLimiter {
    pub fn new(rate_per_s: f64, burst: f64) -> RateLimiter {
        RateLimiter {
            rate: rate_per_s.max(0.001),
            burst: burst.max(1.0),
            buckets: DashMap::new(),
        }
    }

    /// Takes one request from the user's bucket, or says how many whole
    /// seconds until one is available.
    pub fn check(&self, user: Uuid) -> Result<(), u32> {
        let now = Instant::now();
        let mut bucket = self.buckets.entry(user).or_insert(Bucket {
            tokens: self.burst,
            last: now,
        });
        let refill = now.duration_since(bucket.last).as_secs_f64() * self.rate;
        bucket.tokens = (bucket.tokens + refill).min(self.burst);
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - bucket.tokens) / self.rate).ceil().max(1.0) as u32)
        }
    }

    /// Forgets buckets that would be full again and have been idle a minute.
    pub fn sweep(&self) {
        let now = Instant::now();
        let idle = Duration::from_secs(60);
        self.buckets.retain(|_, b| {
            let full_at = b.last + Duration::from_secs_f64((self.burst - b.tokens) / self.rate);
            now.duration_since(b.last) < idle || now < full_at
        });
    }
}

impl crate::startup::Sweep for RateLimiter {
    fn sweep(&self, _now: crate::domain::time::Millis) {
        RateLimiter::sweep(self);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_the_rate_applies() {
        let limiter = RateLimiter::new(2.0, 3.0);
        let user = Uuid::nil();
        for _ in 0..3 {
            assert_eq!(limiter.check(user), Ok(()));
        }
        assert_eq!(limiter.check(user), Err(1));
        assert_eq!(limiter.check(Uuid::max()), Ok(()), "buckets are per user");
    }
}
