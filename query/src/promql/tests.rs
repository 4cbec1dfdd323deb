use super::*;
use cairn_store::WalOptions;
use cairn_store::metrics::SeriesSamples;

fn store() -> (tempfile::TempDir, MetricsStore) {
    let d = tempfile::tempdir().unwrap();
    let s = MetricsStore::open(d.path(), WalOptions::default()).unwrap();
    let mk = |name: &str, job: &str, pts: &[(i64, f64)]| SeriesSamples {
        labels: Labels::from_pairs([("__name__", name), ("job", job)]).unwrap(),
        samples: pts.to_vec(),
    };
    let stale = f64::from_bits(cairn_wire::STALE_NAN_BITS);
    s.append(
        "t",
        vec![
            mk("up", "a", &[(0, 1.0), (60_000, 1.0), (120_000, 0.0)]),
            mk("up", "b", &[(0, 1.0), (60_000, stale)]),
            mk("other", "a", &[(0, 7.0)]),
        ],
    )
    .unwrap();
    (d, s)
}

fn inst(s: &MetricsStore, q: &str, t: i64) -> Result<Value, QueryError> {
    instant_query(s, "t", &parse(q)?, t, &QueryOptions::default())
}

fn vec_of(v: Value) -> Vec<(String, f64)> {
    match v {
        Value::Vector(vs) => vs.into_iter().map(|s| (s.labels.to_string(), s.v)).collect(),
        other => panic!("not a vector: {other:?}"),
    }
}

#[test]
fn selectors_lookback_and_staleness() {
    let (_d, s) = store();
    assert_eq!(
        vec_of(inst(&s, "up", 30_000).unwrap()),
        vec![(r#"{__name__="up", job="a"}"#.into(), 1.0), (r#"{__name__="up", job="b"}"#.into(), 1.0)]
    );
    // b went stale at 60s
    assert_eq!(vec_of(inst(&s, "up", 90_000).unwrap()).len(), 1);
    // lookback of 5 minutes: at 420s the 120s sample is out (left-open window)
    assert_eq!(vec_of(inst(&s, r#"up{job="a"}"#, 419_999).unwrap()), vec![(r#"{__name__="up", job="a"}"#.into(), 0.0)]);
    assert!(vec_of(inst(&s, r#"up{job="a"}"#, 420_000).unwrap()).is_empty());
    assert_eq!(vec_of(inst(&s, r#"{__name__=~"up|other", job!="b"}"#, 1000).unwrap()).len(), 2);
    assert_eq!(vec_of(inst(&s, r#"{job!~"a", job=~".+"}"#, 1000).unwrap()).len(), 1);
    // offset and @
    assert_eq!(vec_of(inst(&s, r#"up{job="a"} offset 2m"#, 120_000).unwrap())[0].1, 1.0);
    assert_eq!(vec_of(inst(&s, r#"up{job="a"} @ 120"#, 0).unwrap())[0].1, 0.0);
}

#[test]
fn scalar_and_vector_arithmetic() {
    let (_d, s) = store();
    assert_eq!(inst(&s, "1+1", 5).unwrap(), Value::Scalar(5, 2.0));
    assert_eq!(inst(&s, "2 ^ 3 * -1", 5).unwrap(), Value::Scalar(5, -8.0));
    assert_eq!(inst(&s, "1 < bool 2", 5).unwrap(), Value::Scalar(5, 1.0));
    assert!(inst(&s, "1 < 2", 5).is_err());
    assert_eq!(vec_of(inst(&s, r#"other * 2"#, 0).unwrap()), vec![(r#"{job="a"}"#.into(), 14.0)]);
    assert_eq!(vec_of(inst(&s, r#"up > 0"#, 120_000).unwrap()), vec![]);
    assert_eq!(vec_of(inst(&s, r#"up == bool 0"#, 120_000).unwrap()), vec![(r#"{job="a"}"#.into(), 1.0)]);
    assert!(matches!(inst(&s, r#"{job="a"} + 1"#, 0), Err(QueryError::Execution(_))));
    // No start timestamps stored: 0, as Prometheus answers.
    assert_eq!(
        vec_of(inst(&s, "start_timestamp(up)", 0).unwrap()),
        vec![(r#"{job="a"}"#.into(), 0.0), (r#"{job="b"}"#.into(), 0.0)]
    );
    assert!(matches!(inst(&s, "up{", 0), Err(QueryError::Parse(_))));
}

#[test]
fn matrix_and_range_queries() {
    let (_d, s) = store();
    match inst(&s, r#"up{job="a"}[2m]"#, 120_000).unwrap() {
        Value::Matrix(m) => assert_eq!(m[0].points, vec![(60_000, 1.0), (120_000, 0.0)]),
        other => panic!("{other:?}"),
    }
    let e = parse(r#"up"#).unwrap();
    let m = range_query(&s, "t", &e, 0, 120_000, 60_000, &QueryOptions::default()).unwrap();
    assert_eq!(m.len(), 2);
    assert_eq!(m[0].points, vec![(0, 1.0), (60_000, 1.0), (120_000, 0.0)]);
    assert_eq!(m[1].points, vec![(0, 1.0)]);
    let m = range_query(&s, "t", &parse("1+1").unwrap(), 0, 10_000, 5_000, &QueryOptions::default()).unwrap();
    assert_eq!(m[0].labels, Labels::empty());
    assert_eq!(m[0].points.len(), 3);
    assert!(range_query(&s, "t", &parse("up[1m]").unwrap(), 0, 1, 1, &QueryOptions::default()).is_err());
    assert!(range_query(&s, "t", &e, 0, 1_000_000_000, 1, &QueryOptions::default()).is_err());
    assert!(range_query(&s, "t", &e, 0, 10, 0, &QueryOptions::default()).is_err());
}

#[test]
fn limits_timeout_and_max_samples() {
    let (_d, s) = store();
    let e = parse("up").unwrap();
    let past = QueryOptions { deadline: Some(std::time::Instant::now()), ..QueryOptions::default() };
    std::thread::sleep(std::time::Duration::from_millis(2));
    assert_eq!(instant_query(&s, "t", &e, 0, &past), Err(QueryError::Timeout));
    assert_eq!(QueryError::Timeout.error_type(), "timeout");
    // up{job="a"} has 3 samples and up{job="b"} 2 in range: 5 selected.
    let few = QueryOptions { max_samples: 4, ..QueryOptions::default() };
    assert_eq!(range_query(&s, "t", &e, 0, 120_000, 60_000, &few), Err(QueryError::TooManySamples { max_samples: 4 }));
    // Selected 5 plus result points 4 fit in 9, not in 8.
    let nine = QueryOptions { max_samples: 9, ..QueryOptions::default() };
    assert!(range_query(&s, "t", &e, 0, 120_000, 60_000, &nine).is_ok());
    let eight = QueryOptions { max_samples: 8, ..QueryOptions::default() };
    assert!(range_query(&s, "t", &e, 0, 120_000, 60_000, &eight).is_err());
}

#[test]
fn max_series_counts_every_selector() {
    let (_d, s) = store();
    let two = QueryOptions { max_series: 2, ..QueryOptions::default() };
    let too_many = QueryError::TooManySeries { max_series: 2 };
    // up selects 2 series, {job="a"} 2: together 4.
    assert!(instant_query(&s, "t", &parse("up").unwrap(), 0, &two).is_ok());
    assert_eq!(instant_query(&s, "t", &parse(r#"up + on(job) {job="a"}"#).unwrap(), 0, &two), Err(too_many.clone()));
    assert_eq!(instant_query(&s, "t", &parse(r#"{job=~"a|b"}"#).unwrap(), 0, &two), Err(too_many.clone()));
    let rate = parse(r#"rate({job=~".+"}[5m])"#).unwrap();
    assert_eq!(range_query(&s, "t", &rate, 0, 60_000, 1000, &two), Err(too_many));
    assert_eq!(QueryError::TooManySeries { max_series: 2 }.error_type(), "execution");
    // The sample limit also stops a selection part-way.
    let one = QueryOptions { max_samples: 1, ..QueryOptions::default() };
    assert_eq!(
        instant_query(&s, "t", &parse("up[10m]").unwrap(), 120_000, &one),
        Err(QueryError::TooManySamples { max_samples: 1 })
    );
}

/// Odd but valid queries: each must evaluate or fail with a typed error,
/// never panic, as instant and as range queries.
#[test]
fn odd_queries_do_not_panic() {
    let (_d, s) = store();
    let opts = QueryOptions {
        deadline: Some(std::time::Instant::now() + std::time::Duration::from_secs(20)),
        ..Default::default()
    };
    for q in [
        "up offset 292y",
        "up offset -292y",
        "up @ 9999999999",
        "rate(up[1ms])",
        "rate(up[5m:0s])",
        "max_over_time(up[100y:1y])",
        "sort_by_label(up)",
        "topk(1e300, up)",
        "topk(-1, up)",
        "bottomk(NaN, up)",
        "quantile(NaN, up)",
        "count_values(\"a b\", up)",
        "count_values(\"v\", up)",
        "label_replace(up, \"x\", \"$1\", \"job\", \"(\")",
        "label_replace(up, \"1x\", \"$1\", \"job\", \"(.*)\")",
        "label_join(up, \"x\", \",\")",
        "histogram_quantile(0.5, up)",
        "histogram_quantile(2, {le=\"1\"})",
        "round(up, 0)",
        "clamp(up, 2, 1)",
        "predict_linear(up[5m], 1e308)",
        "double_exponential_smoothing(up[5m], 0.5, 0.5)",
        "double_exponential_smoothing(up[5m], 1, 0.5)",
        "up / on() group_left up",
        "up + ignoring(job) up",
        "up == bool on(job) group_right other",
        "(up or other) unless on(__name__) up",
        "absent(nonexistent{a=\"b\",a=\"c\"})",
        "absent_over_time(nonexistent[1m])",
        "year(vector(1e300))",
        "day_of_week(vector(-1e18))",
        "days_in_month(vector(NaN))",
        "timestamp(up offset 1m)",
        "scalar(up) * vector(1)",
        "step() + range() + start() + end()",
        "min_of(NaN, 1)",
        "limit_ratio(0.5, up)",
        "limitk(1, up)",
        "mad_over_time(up[10m])",
        "stdvar_over_time(up[10m]) + stddev_over_time(up[10m])",
        "-(-up)",
        "up[5m:1m] offset 1m",
    ] {
        let Ok(e) = parse(q) else { continue };
        let _ = instant_query(&s, "t", &e, 120_000, &opts);
        let _ = range_query(&s, "t", &e, 0, 240_000, 30_000, &opts);
    }
}

#[test]
fn limit_ratio_splits_series_stably() {
    let d = tempfile::tempdir().unwrap();
    let s = MetricsStore::open(d.path(), WalOptions::default()).unwrap();
    let batch: Vec<SeriesSamples> = (0..50)
        .map(|i| SeriesSamples {
            labels: Labels::from_pairs([("__name__", "m".to_string()), ("i", i.to_string())]).unwrap(),
            samples: vec![(0, 1.0)],
        })
        .collect();
    s.append("t", batch).unwrap();
    let count = |q: &str| vec_of(inst(&s, q, 0).unwrap()).len();
    let (a, b) = (count("limit_ratio(0.4, m)"), count("limit_ratio(-0.6, m)"));
    assert_eq!(a + b, 50, "a ratio and its complement partition the series");
    assert!(a > 5 && a < 35, "{a} of 50 chosen for 0.4");
    assert_eq!(count("limit_ratio(0.4, m) and limit_ratio(-0.6, m)"), 0);
    assert_eq!(count("limit_ratio(1, m)"), 50);
    assert_eq!(count("limit_ratio(0, m)"), 0);
    assert_eq!(count("limitk(3, m)"), 3);
    assert_eq!(inst(&s, "limit_ratio(NaN, m)", 0), Err(QueryError::Execution("Ratio value is NaN".into())));
}

/// Deterministic garbage for the parser and evaluator (the `promql` fuzz
/// target does this at scale): queries from a small corpus with bytes
/// replaced, inserted and deleted must parse-and-evaluate or fail with a
/// typed error, never panic.
#[test]
fn mutated_queries_never_panic() {
    let (_d, s) = store();
    let corpus = [
        r#"sum by (job) (rate(up{job=~"a|b"}[5m] offset 1m))"#,
        "histogram_quantile(0.9, sum by (le) (rate(x_bucket[5m])))",
        "max_over_time(deriv(up[2m])[10m:30s] @ 120)",
        r#"label_replace(up, "x", "$1", "job", "(.*)") or on(job) group_left topk(2, other)"#,
        "absent_over_time(nothing[1m]) + count_values(\"v\", up) / quantile(0.5, up) > bool 1",
    ];
    let alphabet = b"()[]{}:,\"'=~!@+-*/^%<> 0123456789.eEsmhdwyabcdefgnopqrstuvxz_$\\\n";
    let mut rng: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for round in 0..3000 {
        let mut q = corpus[round % corpus.len()].as_bytes().to_vec();
        for _ in 0..1 + next() % 4 {
            let at = (next() as usize) % (q.len() + 1);
            let c = alphabet[(next() as usize) % alphabet.len()];
            match next() % 3 {
                0 if at < q.len() => q[at] = c,
                1 => q.insert(at, c),
                _ if at < q.len() => {
                    q.remove(at);
                }
                _ => q.push(c),
            }
        }
        let text = String::from_utf8_lossy(&q);
        let Ok(expr) = parse_for(&text, 15_000, 600_000) else { continue };
        let opts = QueryOptions {
            deadline: Some(std::time::Instant::now() + std::time::Duration::from_millis(200)),
            max_samples: 100_000,
            ..QueryOptions::default()
        };
        let _ = instant_query(&s, "t", &expr, 120_000, &opts);
        let _ = range_query(&s, "t", &expr, 0, 240_000, 30_000, &opts);
    }
}

/// The series-at-a-time evaluator answers range queries exactly as the
/// step evaluator does (values bit for bit, errors alike), over counters
/// with resets, gaps, stale markers, NaN, and names that collide once
/// dropped.
#[test]
fn series_at_a_time_matches_the_step_evaluator() {
    let d = tempfile::tempdir().unwrap();
    let s = MetricsStore::open(d.path(), WalOptions::default()).unwrap();
    let stale = f64::from_bits(cairn_wire::STALE_NAN_BITS);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut batch = Vec::new();
    for name in ["m_total", "g", "h_total"] {
        for inst in ["a", "b", "c"] {
            for mode in ["idle", "user"] {
                let mut v = 0.0;
                let mut pts = Vec::new();
                // Instance "c" scrapes on the step grid: windows and the
                // lookback then end exactly on samples.
                let jitter = inst != "c";
                let mut t = if jitter { (rnd() % 15_000) as i64 } else { 0 };
                while t < 3_600_000 {
                    match rnd() % 50 {
                        0 => v = 0.0,              // counter reset
                        1 => t += 400_000,         // gap past the lookback
                        2 => pts.push((t, stale)), // stale marker
                        3 if name == "g" => pts.push((t, f64::NAN)),
                        _ => {
                            v += (rnd() % 100) as f64 / 4.0;
                            pts.push((t, if name == "g" { v % 17.0 - 5.0 } else { v }));
                        }
                    }
                    t += if jitter { 15_000 + (rnd() % 7) as i64 - 3 } else { 15_000 };
                }
                pts.dedup_by_key(|p| p.0);
                let labels =
                    Labels::from_pairs([("__name__", name), ("instance", inst), ("job", "j"), ("mode", mode)]).unwrap();
                batch.push(SeriesSamples { labels, samples: pts });
            }
        }
    }
    s.append("t", batch).unwrap();
    let queries = [
        "m_total",
        "g offset 3m",
        "g @ 1800",
        "-g",
        "rate(m_total[5m])",
        "irate(m_total[1m])",
        "increase(h_total[10m] offset 90s)",
        "delta(g[5m])",
        "idelta(g[2m])",
        "avg_over_time(g[7m])",
        "sum_over_time(g[5m])",
        "count_over_time(m_total[3m])",
        "min_over_time(g[5m])",
        "max_over_time(g[5m])",
        "last_over_time(g[5m])",
        "present_over_time(g[5m])",
        "stddev_over_time(g[10m])",
        "stdvar_over_time(g[10m])",
        "sum by (instance) (rate(m_total{mode!=\"idle\"}[5m]))",
        "avg by (instance) (g)",
        "count by (__name__) ({__name__=~\".+\"})",
        "group by (mode) ({job=\"j\"})",
        "min without (mode) (g)",
        "max(g)",
        "sum by (__name__) (rate({__name__=~\".*_total\"}[5m]))",
        "sum by (__name__) ({__name__=~\".*_total\"} or rate(g[5m]))",
        "100 * (1 - avg by (instance) (rate(m_total{mode=\"idle\"}[5m])))",
        "g / m_total",
        "rate(m_total[5m]) + rate(h_total[5m])",
        "g > 3",
        "2 < g",
        "g >= bool 1",
        "g - on (instance, mode) m_total",
        "g / ignoring (mode) sum without (mode) (g)",
        "sum by (instance) (g) * on (instance) group by (instance) (m_total)",
        "g * on (instance) m_total",
        "rate({__name__=~\"m_total|h_total\"}[5m])",
        "1 + 2 * 3",
        "(g) - -(2)",
        "max by (instance) (irate(m_total[1m])) > bool 1",
    ];
    for q in queries {
        for (start, end, step) in [(0, 3_600_000, 60_000), (100_000, 2_000_000, 7_000), (3_000_000, 3_000_000, 1000)] {
            let e = parse_for(q, step, end - start).unwrap();
            let opts = QueryOptions::default();
            let before = fast::ANSWERED.with(|c| c.get());
            let fast = range_query_with(&s, "t", &e, (start, end, step), &opts, true);
            let answered = fast::ANSWERED.with(|c| c.get()) > before;
            // Set operators, many-to-one matches and names that collide
            // once dropped need the step evaluator.
            let stepwise = q.contains(" or ")
                || q.starts_with("g * on")
                || q.starts_with("g / ignoring")
                || q.starts_with("sum by (__name__) (rate")
                || q.starts_with("rate({__name__");
            assert_eq!(answered, !stepwise, "{q}: series at a time {answered}");
            let slow = range_query_with(&s, "t", &e, (start, end, step), &opts, false);
            let bits = |r: &Result<(Vec<Series>, Annotations), QueryError>| {
                r.as_ref().map_err(Clone::clone).map(|(m, a)| {
                    let m: Vec<_> = m
                        .iter()
                        .map(|s| {
                            (s.labels.to_string(), s.points.iter().map(|p| (p.0, p.1.to_bits())).collect::<Vec<_>>())
                        })
                        .collect();
                    (m, a.clone())
                })
            };
            assert_eq!(bits(&fast), bits(&slow), "{q} over {start}..{end} step {step}");
            if q == "rate(m_total[5m])" && step == 60_000 {
                assert!(fast.as_ref().is_ok_and(|(m, _)| m.len() == 6 && m.iter().all(|s| s.points.len() > 20)));
            }
        }
    }
}

/// The server's threads have 8 MiB stacks (`cairn`'s runtime); a query just
/// under the nesting limit parses and evaluates on one, one over it is
/// refused without recursing. Debug builds use the most stack.
#[test]
fn deep_nesting_is_bounded() {
    let r = std::thread::Builder::new()
        .stack_size(8 << 20)
        .spawn(|| {
            let (_d, s) = store();
            let n = 450;
            let parens = format!("{}1{}", "(".repeat(n), ")".repeat(n));
            assert_eq!(inst(&s, &parens, 5).unwrap(), Value::Scalar(5, 1.0));
            let chain = format!("1{}", "+1".repeat(MAX_NESTING - 1));
            assert_eq!(inst(&s, &chain, 5).unwrap(), Value::Scalar(5, MAX_NESTING as f64));
            let unary = format!("{}up", "-".repeat(MAX_NESTING));
            assert!(inst(&s, &unary, 30_000).is_ok());
            for q in [
                format!("{}1{}", "(".repeat(50_000), ")".repeat(50_000)),
                format!("1{}", "+1".repeat(MAX_NESTING + 1)),
                format!("{}up", "-".repeat(100_000)),
                format!("{}up{}", "sum(".repeat(5_000), ")".repeat(5_000)),
            ] {
                match parse(&q) {
                    Ok(_) => panic!("a query of {} bytes parsed", q.len()),
                    Err(e) => assert!(e.to_string().contains("query too complex"), "{e}"),
                }
            }
            // strings and label matchers do not count
            let long = format!(r#"up{{job=~"{}"}}"#, "(a)+".repeat(2_000));
            assert!(parse(&long).is_ok());
        })
        .unwrap()
        .join();
    assert!(r.is_ok());
}

#[test]
fn start_timestamps_are_read_per_tenant_and_only_by_their_functions() {
    use cairn_store::metrics::SeriesStartTimestamps;
    let d = tempfile::tempdir().unwrap();
    let s = MetricsStore::open(d.path(), WalOptions::default()).unwrap();
    let labels = Labels::from_pairs([("__name__", "c_total"), ("job", "a")]).unwrap();
    // A counter that restarts every minute from 0 and counts to 60 just
    // before the next start: values never decrease from sample to sample
    // (each restart is seen only in the start timestamp).
    let pts: Vec<(i64, f64)> = (1..=10).map(|i| (i * 60_000, 60.0)).collect();
    for tenant in ["with", "without"] {
        s.append(tenant, vec![SeriesSamples { labels: labels.clone(), samples: pts.clone() }]).unwrap();
    }
    let sts = pts.iter().map(|p| (p.0, p.0 - 60_000)).collect();
    s.append_start_timestamps("with", vec![SeriesStartTimestamps { labels: labels.clone(), pairs: sts }]).unwrap();
    let q = |tenant: &str, q: &str, t: i64| {
        vec_of(instant_query(&s, tenant, &parse(q).unwrap(), t, &QueryOptions::default()).unwrap())
    };
    // Every sample is a delta of 60 over its minute: 5 of them in 5 minutes.
    assert_eq!(q("with", "increase(c_total[5m])", 600_000), vec![(r#"{job="a"}"#.into(), 300.0)]);
    // Five samples in the window, four restarts between them.
    assert_eq!(q("with", "resets(c_total[5m])", 600_000), vec![(r#"{job="a"}"#.into(), 4.0)]);
    assert_eq!(q("with", "irate(c_total[5m])", 600_000), vec![(r#"{job="a"}"#.into(), 1.0)]);
    assert_eq!(q("with", "start_timestamp(c_total)", 600_000), vec![(r#"{job="a"}"#.into(), 540.0)]);
    // The other tenant's identical series has none: a flat counter.
    assert_eq!(q("without", "increase(c_total[5m])", 600_000), vec![(r#"{job="a"}"#.into(), 0.0)]);
    assert_eq!(q("without", "start_timestamp(c_total)", 600_000), vec![(r#"{job="a"}"#.into(), 0.0)]);
    // Through a subquery or an expression they are gone, as in Prometheus.
    assert_eq!(q("with", "resets(c_total[5m:1m])", 600_000), vec![(r#"{job="a"}"#.into(), 0.0)]);
    assert_eq!(q("with", "start_timestamp(c_total * 1)", 600_000), vec![]);
    // A range query with start timestamps runs on the step evaluator and
    // agrees with the instant queries; the companion tenant is invisible.
    let e = parse_for("increase(c_total[5m])", 60_000, 120_000).unwrap();
    let before = fast::ANSWERED.with(|c| c.get());
    let (m, _) = range_query_with(&s, "with", &e, (480_000, 600_000, 60_000), &QueryOptions::default(), true).unwrap();
    assert_eq!(fast::ANSWERED.with(|c| c.get()), before);
    assert_eq!(m[0].points.iter().map(|p| p.1).collect::<Vec<_>>(), vec![300.0, 300.0, 300.0]);
    let all = [cairn_wire::Matcher::equal("__name__", "c_total")];
    assert_eq!(s.series("with", &all, 0, i64::MAX), vec![labels]);
}
