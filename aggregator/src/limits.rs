//! The per-tenant write limits that keep state: ingestion rate (a token
//! bucket per tenant and engine) and active streams and series
//! (cardinality). The stateless limits (sizes, label counts, timestamps) are
//! checked by the ingest functions of [`crate::Aggregator`].
//!
//! State lives in memory only: after a restart every tenant starts with a
//! full bucket and no active streams or series, and builds them up again as
//! writes arrive.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::config::LimitsConfig;

/// A write refused by an ingestion rate limit: HTTP 429 with `Retry-After`.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimited {
    /// What was refused and which limit did it.
    pub message: String,
    /// Whole seconds until the same write would be admitted (at least 1).
    pub retry_after_secs: u64,
}

/// Which engine a write is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// Log streams (Loki push).
    Logs,
    /// Metric series (remote_write).
    Metrics,
}

/// A token bucket: `rate` tokens a second, holding at most `burst`.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn full(burst: f64, now: Instant) -> Bucket {
        Bucket { tokens: burst, last: now }
    }

    /// Takes `n` tokens if there are that many, or if the bucket is full: a
    /// single write larger than the burst passes after an idle spell, and
    /// the debt it leaves delays the next ones, so the long-run rate holds
    /// and no write size is refused forever. Err: seconds until it passes.
    fn take(&mut self, n: f64, rate: f64, burst: f64, now: Instant) -> Result<(), f64> {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * rate).min(burst);
        if n <= self.tokens || self.tokens >= burst {
            self.tokens -= n;
            Ok(())
        } else {
            Err((n.min(burst) - self.tokens) / rate)
        }
    }
}

/// Streams or series of one tenant written to recently: content hash of the
/// label set → second (since the limiter started) of the last write. A hash
/// collision makes two label sets count as one, which can only admit, never
/// refuse, a write.
#[derive(Debug, Default)]
struct ActiveSet {
    last_write: HashMap<u64, u32, foldhash::fast::RandomState>,
}

impl ActiveSet {
    fn prune(&mut self, oldest: u32) {
        self.last_write.retain(|_, t| *t >= oldest);
    }
}

#[derive(Debug, Default)]
struct TenantState {
    logs_bucket: Option<Bucket>,
    metrics_bucket: Option<Bucket>,
    streams: ActiveSet,
    series: ActiveSet,
}

/// Rate and cardinality state of every tenant that wrote recently.
#[derive(Debug)]
pub struct Limiter {
    epoch: Instant,
    tenants: Mutex<HashMap<String, Arc<Mutex<TenantState>>>>,
}

impl Default for Limiter {
    fn default() -> Self {
        Limiter { epoch: Instant::now(), tenants: Mutex::default() }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Limiter {
    fn tenant(&self, tenant: &str) -> Arc<Mutex<TenantState>> {
        let mut all = lock(&self.tenants);
        if let Some(t) = all.get(tenant) {
            return t.clone();
        }
        let t = Arc::new(Mutex::new(TenantState::default()));
        all.insert(tenant.to_string(), t.clone());
        t
    }

    fn now_secs(&self) -> u32 {
        self.epoch.elapsed().as_secs().min(u32::MAX as u64) as u32
    }

    /// Admits a push of `lines` log lines totalling `bytes` (lines plus
    /// structured metadata) under `limits.logs_ingestion_rate`.
    pub fn admit_logs(&self, tenant: &str, limits: &LimitsConfig, lines: usize, bytes: u64) -> Result<(), RateLimited> {
        let (rate, burst) = (limits.logs_ingestion_rate.0 as f64, limits.logs_ingestion_burst.0 as f64);
        if rate <= 0.0 {
            return Ok(());
        }
        self.take(tenant, Engine::Logs, rate, burst, bytes as f64).map_err(|secs| RateLimited {
            message: format!(
                "ingestion rate limit exceeded for tenant {tenant:?} (limits.logs_ingestion_rate = {}/s, \
                 limits.logs_ingestion_burst = {}) while attempting to ingest {lines} lines totaling {bytes} bytes; \
                 nothing was stored: retry after {} s, reduce the log volume, or raise the limit",
                limits.logs_ingestion_rate,
                limits.logs_ingestion_burst,
                retry_secs(secs)
            ),
            retry_after_secs: retry_secs(secs),
        })
    }

    /// Admits a write of `samples` samples under
    /// `limits.metrics_ingestion_rate`.
    pub fn admit_samples(&self, tenant: &str, limits: &LimitsConfig, samples: usize) -> Result<(), RateLimited> {
        let (rate, burst) = (limits.metrics_ingestion_rate as f64, limits.metrics_ingestion_burst as f64);
        if rate <= 0.0 {
            return Ok(());
        }
        self.take(tenant, Engine::Metrics, rate, burst, samples as f64).map_err(|secs| RateLimited {
            message: format!(
                "ingestion rate limit exceeded for tenant {tenant:?} (limits.metrics_ingestion_rate = {rate} \
                 samples/s, limits.metrics_ingestion_burst = {burst}) while attempting to ingest {samples} samples; \
                 nothing was stored: retry after {} s, reduce the number of series or the scrape frequency, or \
                 raise the limit",
                retry_secs(secs)
            ),
            retry_after_secs: retry_secs(secs),
        })
    }

    fn take(&self, tenant: &str, engine: Engine, rate: f64, burst: f64, n: f64) -> Result<(), f64> {
        let t = self.tenant(tenant);
        let mut t = lock(&t);
        let now = Instant::now();
        let bucket = match engine {
            Engine::Logs => &mut t.logs_bucket,
            Engine::Metrics => &mut t.metrics_bucket,
        };
        bucket.get_or_insert_with(|| Bucket::full(burst, now)).take(n, rate, burst, now)
    }

    /// Marks the streams or series with label-set hashes `keys` as written
    /// now and says, for each, whether it may be written: one already active
    /// always, a new one while the tenant has fewer than `max` active
    /// (`max` 0: no limit, and nothing is tracked).
    pub fn admit_active(&self, tenant: &str, engine: Engine, max: usize, keys: &[u64]) -> Vec<bool> {
        if max == 0 {
            return vec![true; keys.len()];
        }
        let now = self.now_secs();
        let t = self.tenant(tenant);
        let mut t = lock(&t);
        let set = match engine {
            Engine::Logs => &mut t.streams,
            Engine::Metrics => &mut t.series,
        };
        keys.iter()
            .map(|k| {
                if let Some(seen) = set.last_write.get_mut(k) {
                    *seen = now;
                    true
                } else if set.last_write.len() < max {
                    set.last_write.insert(*k, now);
                    true
                } else {
                    false
                }
            })
            .collect()
    }

    /// Forgets streams and series not written to within their tenant's
    /// `active_window`, and tenants with nothing left to remember.
    pub fn prune(&self, window: impl Fn(&str) -> Duration) {
        let now = self.epoch.elapsed();
        let mut all = lock(&self.tenants);
        all.retain(|tenant, t| {
            let oldest = now.saturating_sub(window(tenant)).as_secs().min(u32::MAX as u64) as u32;
            let mut t = lock(t);
            t.streams.prune(oldest);
            t.series.prune(oldest);
            // A bucket idle this long has refilled; dropping it is the same.
            !(t.streams.last_write.is_empty() && t.series.last_write.is_empty() && idle(&t, now, &self.epoch))
        });
    }

    /// Active (tracked) streams and series by tenant, for `/metrics`.
    pub fn active_counts(&self) -> Vec<(String, usize, usize)> {
        let all = lock(&self.tenants);
        let mut v: Vec<_> = all
            .iter()
            .map(|(id, t)| {
                let t = lock(t);
                (id.clone(), t.streams.last_write.len(), t.series.last_write.len())
            })
            .collect();
        v.sort();
        v
    }
}

/// Whether neither bucket of `t` was used in the last minute.
fn idle(t: &TenantState, now: Duration, epoch: &Instant) -> bool {
    let used_recently =
        |b: &Option<Bucket>| b.as_ref().is_some_and(|b| now.saturating_sub(b.last.duration_since(*epoch)) < IDLE);
    !used_recently(&t.logs_bucket) && !used_recently(&t.metrics_bucket)
}

const IDLE: Duration = Duration::from_secs(60);

fn retry_secs(secs: f64) -> u64 {
    (secs.ceil() as u64).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_wire::config::ByteSize;

    fn limits() -> LimitsConfig {
        LimitsConfig {
            logs_ingestion_rate: ByteSize(1000),
            logs_ingestion_burst: ByteSize(3000),
            metrics_ingestion_rate: 100,
            metrics_ingestion_burst: 200,
            ..LimitsConfig::default()
        }
    }

    #[test]
    fn bucket_refills_at_the_rate_and_caps_at_the_burst() {
        let t0 = Instant::now();
        let mut b = Bucket::full(3000.0, t0);
        assert!(b.take(2500.0, 1000.0, 3000.0, t0).is_ok());
        // 500 left: 1000 more needs 0.5 s
        let wait = b.take(1000.0, 1000.0, 3000.0, t0).unwrap_err();
        assert!((wait - 0.5).abs() < 1e-9, "{wait}");
        // after 0.5 s there are exactly 1000
        assert!(b.take(1000.0, 1000.0, 3000.0, t0 + Duration::from_millis(500)).is_ok());
        // an hour idle refills to the burst, not beyond
        let later = t0 + Duration::from_secs(3600);
        assert!(b.take(3000.0, 1000.0, 3000.0, later).is_ok());
        assert!(b.take(1.0, 1000.0, 3000.0, later).is_err());
    }

    #[test]
    fn a_write_larger_than_the_burst_passes_only_from_a_full_bucket() {
        let t0 = Instant::now();
        let mut b = Bucket::full(100.0, t0);
        assert!(b.take(250.0, 10.0, 100.0, t0).is_ok(), "full bucket admits an oversized write");
        assert_eq!(b.tokens, -150.0);
        // the debt is paid before anything else passes: 25 s to be full again
        let wait = b.take(250.0, 10.0, 100.0, t0).unwrap_err();
        assert!((wait - 25.0).abs() < 1e-9, "{wait}");
        assert!(b.take(250.0, 10.0, 100.0, t0 + Duration::from_secs(24)).is_err());
        assert!(b.take(250.0, 10.0, 100.0, t0 + Duration::from_secs(25)).is_ok());
    }

    #[test]
    fn rate_limits_are_per_tenant_and_name_the_limit() {
        let l = Limiter::default();
        let lim = limits();
        assert!(l.admit_logs("a", &lim, 3, 3000).is_ok());
        let e = l.admit_logs("a", &lim, 1, 500).unwrap_err();
        assert!(e.message.contains("limits.logs_ingestion_rate = 1000B/s"), "{}", e.message);
        assert!(e.message.contains("tenant \"a\""), "{}", e.message);
        assert_eq!(e.retry_after_secs, 1);
        // another tenant has its own bucket, and metrics their own
        assert!(l.admit_logs("b", &lim, 1, 3000).is_ok());
        assert!(l.admit_samples("a", &lim, 200).is_ok());
        let e = l.admit_samples("a", &lim, 150).unwrap_err();
        assert!(e.message.contains("limits.metrics_ingestion_rate = 100 samples/s"), "{}", e.message);
        assert_eq!(e.retry_after_secs, 2);
        // no limit configured: everything passes
        let off = LimitsConfig::default();
        assert!(l.admit_logs("a", &off, 1, u64::MAX / 2).is_ok());
        assert!(l.admit_samples("a", &off, usize::MAX / 2).is_ok());
    }

    #[test]
    fn active_limit_admits_known_keys_and_refuses_new_ones_past_the_limit() {
        let l = Limiter::default();
        assert_eq!(l.admit_active("a", Engine::Metrics, 2, &[1, 2, 3]), vec![true, true, false]);
        // known ones still pass, new ones still do not; repeats in one write agree
        assert_eq!(l.admit_active("a", Engine::Metrics, 2, &[3, 2, 1, 4, 4]), vec![false, true, true, false, false]);
        // streams are counted apart from series, tenants apart from each other
        assert_eq!(l.admit_active("a", Engine::Logs, 2, &[7, 8]), vec![true, true]);
        assert_eq!(l.admit_active("b", Engine::Metrics, 2, &[3, 4]), vec![true, true]);
        assert_eq!(l.active_counts(), vec![("a".into(), 2, 2), ("b".into(), 0, 2)]);
        // 0: no limit and nothing tracked
        assert_eq!(l.admit_active("c", Engine::Metrics, 0, &[1, 2, 3]), vec![true; 3]);
        assert_eq!(l.active_counts().len(), 2);
    }

    #[test]
    fn prune_forgets_what_was_not_written_within_the_window() {
        let l = Limiter::default();
        assert_eq!(l.admit_active("a", Engine::Metrics, 1, &[1]), vec![true]);
        l.prune(|_| Duration::from_secs(3600));
        assert_eq!(l.admit_active("a", Engine::Metrics, 1, &[2]), vec![false], "still active within the window");
        // a zero window forgets every key written before this second
        std::thread::sleep(Duration::from_millis(1100));
        l.prune(|_| Duration::ZERO);
        assert!(l.active_counts().is_empty(), "tenant with nothing active is dropped");
        assert_eq!(l.admit_active("a", Engine::Metrics, 1, &[2]), vec![true]);
    }
}
