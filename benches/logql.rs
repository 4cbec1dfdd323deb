//! LogQL evaluation benchmark: fixed-seed logfmt lines in an in-process
//! `LogStore`, then the queries Grafana sends most — a filtered log query,
//! Explore's log volume histogram, a parsed and grouped metric query, and an
//! unwrap quantile — each timed over several runs; prints lines scanned per
//! second. No peer is run: Loki is not installable here (see
//! `../shared/PEERS.md` for the figures measured elsewhere).
//!
//! Run: `cargo bench --bench logql` (env `CAIRN_BENCH_LINES`, default
//! 400000). The numbers are printed, never asserted.

use std::time::Instant;

use cairn_query::logql::{self, Direction, Expr, LogQuery, MetricQuery};
use cairn_store::WalOptions;
use cairn_store::logs::{Entry, LogStore, StreamEntries};
use cairn_wire::Labels;

const S: i64 = 1_000_000_000;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("logql: skipped (run with `cargo bench --bench logql`)");
        return;
    }
    let lines: usize = std::env::var("CAIRN_BENCH_LINES").ok().and_then(|v| v.parse().ok()).unwrap_or(400_000);
    let dir = tempfile::tempdir().expect("temp dir");
    let store = LogStore::open(dir.path(), WalOptions::default()).expect("open store");
    let t0 = 1_700_000_000 * S;
    let streams = 20;
    let per = lines / streams;
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let load = Instant::now();
    for s in 0..streams {
        let labels =
            Labels::from_pairs([("job", format!("app{}", s % 5)), ("pod", format!("pod-{s}"))]).expect("labels");
        let mut batch = Vec::with_capacity(per);
        for i in 0..per {
            let r = rnd();
            let level = ["info", "info", "info", "warn", "error"][(r % 5) as usize];
            batch.push(Entry {
                ts: t0 + (i as i64) * (3600 * S / per as i64),
                line: format!(
                    "ts=2023-11-14T22:13:20Z level={level} method=GET path=/api/v1/item/{} status={} duration={}ms msg=\"handled request\"",
                    r % 1000,
                    [200, 200, 200, 404, 500][(r >> 8) as usize % 5],
                    (r >> 16) % 900 + 1
                ),
                metadata: vec![],
            });
        }
        for chunk in batch.chunks(10_000) {
            store.push("t", vec![StreamEntries { labels: labels.clone(), entries: chunk.to_vec() }]).expect("push");
        }
    }
    println!("loaded {} lines in {:.2}s", per * streams, load.elapsed().as_secs_f64());
    let total = (per * streams) as f64;
    let end = t0 + 3600 * S;
    let bench = |name: &str, q: &str, step: i64| {
        let expr = logql::parse(q).expect("query parses");
        let mut best = f64::MAX;
        let mut out = 0usize;
        for _ in 0..3 {
            let t = Instant::now();
            out = match &expr {
                Expr::Log(sel) => logql::eval_log_query(
                    &store,
                    sel,
                    &LogQuery {
                        tenant: "t",
                        start: t0,
                        end,
                        limit: 1000,
                        direction: Direction::Backward,
                        categorize: false,
                        ctl: &logql::QueryCtl::default(),
                    },
                )
                .expect("eval")
                .iter()
                .map(|s| s.entries.len())
                .sum(),
                Expr::Sample(e) => {
                    match logql::eval_metric(
                        &store,
                        e,
                        &MetricQuery { tenant: "t", start: t0, end, step, ctl: &logql::QueryCtl::default() },
                    )
                    .expect("eval")
                    {
                        logql::MetricValue::Matrix(m) => m.len(),
                        logql::MetricValue::Vector(_, v) => v.len(),
                        logql::MetricValue::Scalar(..) => 1,
                    }
                }
            };
            best = best.min(t.elapsed().as_secs_f64());
        }
        println!("{name:<28} {best:>8.3}s  {:>12.0} lines/s  ({out} results)", total / best);
    };
    bench("log query |= filter", r#"{job=~"app.+"} |= "status=500""#, 0);
    bench(
        "log volume histogram",
        r#"sum by (level, detected_level) (count_over_time({job=~"app.+"} |= "GET" | drop __error__ [1m]))"#,
        60 * S,
    );
    bench("logfmt + sum by (status)", r#"sum by (status) (count_over_time({job=~"app.+"} | logfmt [1m]))"#, 60 * S);
    bench(
        "unwrap quantile by (job)",
        r#"quantile_over_time(0.99, {job=~"app.+"} | logfmt | unwrap duration(duration) [5m]) by (job)"#,
        60 * S,
    );
    println!(
        "machine: {} logical CPUs; store: in-memory head (current stage)",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    );
}
