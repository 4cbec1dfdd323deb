//! Retention per tenant: a tenant with its own, shorter age limit loses its
//! old data from reads at once and from disk at the next retention pass
//! (whole blocks deleted, shared blocks rewritten without its chunks),
//! while other tenants in the same blocks keep everything.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cairn_store::logs::LogStore;
use cairn_store::metrics::MetricsStore;
use cairn_store::{Retention, WalOptions};
use cairn_wire::{Entry, Labels, SeriesSamples, StreamEntries};

const HOUR: Duration = Duration::from_secs(3600);

fn now_ns() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as i64
}

fn policy() -> Retention {
    Retention { time: Some(30 * 24 * HOUR), tenants: HashMap::from([("short".to_string(), Some(HOUR))]), size: 0 }
}

fn push_logs(s: &LogStore, tenant: &str, ts: i64, what: &str) {
    let labels = Labels::from_pairs([("job", what)]).unwrap();
    let entries = (0..200)
        .map(|i| Entry { ts: ts + i, line: format!("{what} {i} {}", "x".repeat(200)), metadata: vec![] })
        .collect();
    s.push(tenant, vec![StreamEntries { labels, entries }]).unwrap();
}

fn count_logs(s: &LogStore, tenant: &str) -> usize {
    let mut n = 0;
    s.try_scan(tenant, &[], i64::MIN, i64::MAX, &mut |_, es| n += es.len()).unwrap();
    n
}

#[test]
fn log_tenant_with_shorter_retention_is_hidden_then_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let now = now_ns();
    let old = now - 3 * 3_600_000_000_000;
    let s = LogStore::open(dir.path(), WalOptions::default()).unwrap();
    // block 1: only "short"'s old data; block 2: both tenants, old and new
    push_logs(&s, "short", old - 1_000_000, "old-only");
    s.flush().unwrap();
    for tenant in ["short", "long"] {
        push_logs(&s, tenant, old, "old");
        push_logs(&s, tenant, now, "new");
    }
    s.flush().unwrap();
    assert_eq!((count_logs(&s, "short"), count_logs(&s, "long")), (600, 400));

    s.set_retention(policy());
    // hidden at once, before any deletion
    assert_eq!((count_logs(&s, "short"), count_logs(&s, "long")), (200, 400));
    let st = s.apply_retention_policy().unwrap();
    assert_eq!(st.blocks_deleted, 1, "{st:?}");
    assert_eq!(st.blocks_rewritten, 1, "{st:?}");
    assert!(st.bytes_dropped > 0, "{st:?}");
    assert_eq!(s.block_stats().0, 1);
    assert_eq!((count_logs(&s, "short"), count_logs(&s, "long")), (200, 400));
    // a second pass has nothing left to do
    let st = s.apply_retention_policy().unwrap();
    assert_eq!((st.blocks_deleted, st.blocks_rewritten), (0, 0), "{st:?}");
    drop(s);
    // gone from disk: reopened without any retention, nothing comes back
    let s = LogStore::open(dir.path(), WalOptions::default()).unwrap();
    assert_eq!((count_logs(&s, "short"), count_logs(&s, "long")), (200, 400));
}

#[test]
fn metric_tenant_with_shorter_retention_is_hidden_then_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let now = now_ns() / 1_000_000;
    let old = now - 3 * 3_600_000;
    let s = MetricsStore::open(dir.path(), WalOptions::default()).unwrap();
    let wide = cairn_store::metrics::MetricsStoreOptions { out_of_order_window: 24 * HOUR, ..Default::default() };
    drop(s);
    let s = MetricsStore::open_with(dir.path(), wide).unwrap();
    for tenant in ["short", "long"] {
        for (name, t0) in [("old", old), ("new", now)] {
            let labels = Labels::from_pairs([("__name__", name)]).unwrap();
            // values that do not compress to nothing (square roots: XOR
            // chunks), so the expired chunk is over a tenth of the block
            let samples = (0..100).map(|i| (t0 + i * 1000, (i as f64).sqrt())).collect();
            s.append(tenant, vec![SeriesSamples { labels, samples }]).unwrap();
        }
    }
    s.flush().unwrap();
    let count = |s: &MetricsStore, tenant: &str| {
        s.select(tenant, &[], i64::MIN, i64::MAX).iter().map(|x| x.samples.len()).sum::<usize>()
    };
    assert_eq!((count(&s, "short"), count(&s, "long")), (200, 200));
    s.set_retention(policy());
    assert_eq!((count(&s, "short"), count(&s, "long")), (100, 200));
    assert_eq!(s.series("short", &[], i64::MIN, i64::MAX).len(), 1);
    let st = s.apply_retention_policy().unwrap();
    assert_eq!((st.blocks_deleted, st.blocks_rewritten), (0, 1), "{st:?}");
    drop(s);
    let s = MetricsStore::open(dir.path(), WalOptions::default()).unwrap();
    assert_eq!((count(&s, "short"), count(&s, "long")), (100, 200));
}
