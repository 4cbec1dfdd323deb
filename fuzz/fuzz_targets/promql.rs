#![no_main]
//! PromQL parsing and planning: any text either fails to parse with a typed
//! error or evaluates (instant and range) over a small store within a short
//! deadline and small sample/series limits, without panicking.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use cairn_query::promql::{self, QueryOptions};
use cairn_store::WalOptions;
use cairn_store::metrics::{MetricsStore, SeriesSamples};
use cairn_wire::Labels;
use libfuzzer_sys::fuzz_target;

fn store() -> &'static MetricsStore {
    static STORE: OnceLock<(tempfile::TempDir, MetricsStore)> = OnceLock::new();
    &STORE
        .get_or_init(|| {
            let dir = tempfile::tempdir().expect("tempdir");
            let s = MetricsStore::open(dir.path(), WalOptions::default()).expect("store");
            let mut batch = Vec::new();
            for (name, job, le) in [
                ("up", "a", None),
                ("up", "b", None),
                ("http_requests_total", "a", None),
                ("req_seconds_bucket", "a", Some("0.1")),
                ("req_seconds_bucket", "a", Some("+Inf")),
            ] {
                let mut pairs = vec![("__name__", name), ("job", job)];
                if let Some(le) = le {
                    pairs.push(("le", le));
                }
                let labels = Labels::from_pairs(pairs).expect("labels");
                let samples = (0..40).map(|i| (i * 15_000, (i * i % 7) as f64 + i as f64)).collect();
                batch.push(SeriesSamples { labels, samples });
            }
            s.append("t", batch).expect("append");
            (dir, s)
        })
        .1
}

fuzz_target!(|data: &str| {
    let Ok(expr) = promql::parse_for(data, 15_000, 600_000) else { return };
    let opts = QueryOptions {
        deadline: Some(Instant::now() + Duration::from_millis(200)),
        max_samples: 100_000,
        max_series: 1_000,
        ..QueryOptions::default()
    };
    let s = store();
    let _ = promql::instant_query(s, "t", &expr, 300_000, &opts);
    let _ = promql::range_query(s, "t", &expr, 0, 600_000, 15_000, &opts);
});
