//! The per-tenant ingestion rate limiter: a token bucket of line bytes.
//!
//! Owns only the buckets. The rate and burst come from the tenant's current
//! [`LimitsConfig`](super::LimitsConfig) on every call, so an override takes effect on the
//! next push. Like Loki's local strategy, a push is admitted whole or refused whole (429),
//! and a refused push consumes nothing.

use std::collections::HashMap;
use std::time::Instant;

use parking_lot::Mutex;

use super::LimitsConfig;
use crate::tenant::TenantId;

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Token buckets of ingested line bytes, one per tenant.
#[derive(Debug, Default)]
pub struct IngestionRateLimiter {
    buckets: Mutex<HashMap<TenantId, Bucket>>,
}

impl IngestionRateLimiter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes `bytes` from the tenant's bucket if they are there. Buckets start full.
    /// `ingestion_rate_mb: 0` disables the limit.
    pub fn allow(
        &self,
        tenant: &TenantId,
        bytes: u64,
        limits: &LimitsConfig,
        now: Instant,
    ) -> bool {
        let rate = limits.ingestion_rate_bytes();
        if rate <= 0.0 {
            return true;
        }
        let burst = limits.ingestion_burst_bytes();
        let mut buckets = self.buckets.lock();
        let bucket = buckets.entry(tenant.clone()).or_insert(Bucket {
            tokens: burst,
            last: now,
        });
        let elapsed = now.saturating_duration_since(bucket.last).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(burst);
        bucket.last = bucket.last.max(now);
        let want = bytes as f64;
        if want <= bucket.tokens {
            bucket.tokens -= want;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn limits(rate_mb: f64, burst_mb: f64) -> LimitsConfig {
        LimitsConfig {
            ingestion_rate_mb: rate_mb,
            ingestion_burst_size_mb: burst_mb,
            ..Default::default()
        }
    }

    #[test]
    fn burst_is_available_at_once_then_refills_at_the_rate() {
        let rl = IngestionRateLimiter::new();
        let t = TenantId::new("a").unwrap();
        let l = limits(1.0, 2.0);
        let t0 = Instant::now();
        let mib = 1 << 20;
        assert!(rl.allow(&t, 2 * mib, &l, t0));
        assert!(!rl.allow(&t, 1, &l, t0));
        // Half a second refills half a MiB.
        assert!(!rl.allow(&t, mib, &l, t0 + Duration::from_millis(500)));
        assert!(rl.allow(&t, mib / 2, &l, t0 + Duration::from_millis(500)));
        // The bucket never holds more than the burst.
        assert!(!rl.allow(&t, 2 * mib + 1, &l, t0 + Duration::from_secs(100)));
        assert!(rl.allow(&t, 2 * mib, &l, t0 + Duration::from_secs(100)));
    }

    #[test]
    fn tenants_have_separate_buckets_and_zero_rate_means_unlimited() {
        let rl = IngestionRateLimiter::new();
        let a = TenantId::new("a").unwrap();
        let b = TenantId::new("b").unwrap();
        let l = limits(1.0, 1.0);
        let now = Instant::now();
        assert!(rl.allow(&a, 1 << 20, &l, now));
        assert!(!rl.allow(&a, 1, &l, now));
        assert!(rl.allow(&b, 1 << 20, &l, now));
        assert!(rl.allow(&a, u64::MAX / 2, &limits(0.0, 0.0), now));
    }
}
