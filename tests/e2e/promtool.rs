//! A real Prometheus client against Cairn: `promtool query instant` and
//! `promtool query range` (Debian package `prometheus`, installed by
//! `.ci/run`) over samples sent by remote_write, checking promtool's own
//! text and JSON output. Without promtool the test prints why it skipped,
//! unless `CI=true`, where that is a failure.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

use crate::harness::{Cairn, TestLabels, now_ns};

/// The peer program `name` from PATH; `None` (with a message) when absent
/// outside CI; a panic when absent in CI.
pub(crate) fn peer(name: &str, test: &str) -> Option<PathBuf> {
    let found =
        std::env::var_os("PATH").and_then(|p| std::env::split_paths(&p).map(|d| d.join(name)).find(|f| f.is_file()));
    if found.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{test}: `{name}` is not installed (Debian package `prometheus`; .ci/run installs it)"
        );
        println!("{test}: skipped: `{name}` is not installed (apt-get install prometheus)");
    }
    found
}

/// Runs promtool, returning (exit ok, stdout, stderr).
fn promtool(bin: &PathBuf, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(bin).args(args).output().expect("run promtool");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

/// Checks promtool's PromQL-format text line by line: labels and
/// timestamps exactly, values within 1e-9 relative (float rounding as
/// Prometheus itself would produce, e.g. 1.9999999999999998 for 2).
fn assert_text(got: &str, want: &str) {
    let g: Vec<&str> = got.trim_end().lines().collect();
    let w: Vec<&str> = want.trim_end().lines().collect();
    assert_eq!(g.len(), w.len(), "got:\n{got}\nwant:\n{want}");
    // `<prefix>VALUE @[TS]`: split off the value.
    let split = |l: &str| -> (String, f64, String) {
        let (head, ts) = l.rsplit_once(" @[").unwrap_or_else(|| panic!("no timestamp in {l:?}"));
        let (prefix, v) = head.rsplit_once(' ').unwrap_or(("", head));
        (prefix.to_string(), v.parse().unwrap_or_else(|_| panic!("no value in {l:?}")), ts.to_string())
    };
    for (gl, wl) in g.iter().zip(&w) {
        if !wl.contains(" @[") {
            assert_eq!(gl, wl, "got:\n{got}\nwant:\n{want}");
            continue;
        }
        let (gp, gv, gt) = split(gl);
        let (wp, wv, wt) = split(wl);
        assert_eq!((gp, gt), (wp, wt), "got:\n{got}\nwant:\n{want}");
        assert!((gv - wv).abs() <= 1e-9 * wv.abs().max(1.0), "{gv} != {wv}\ngot:\n{got}\nwant:\n{want}");
    }
}

#[test]
fn promtool_instant_and_range_queries() {
    let Some(bin) = peer("promtool", "promtool_instant_and_range_queries") else { return };
    let dir = tempfile::tempdir().unwrap();
    let c = Cairn::serve(dir.path());
    // 10 minutes of data at 15 s: a counter rising 30 per scrape (2/s) on
    // two instances, and a gauge.
    let t0 = (now_ns() / 1_000_000 / 60_000 - 20) * 60_000;
    let steps: Vec<i64> = (0..=40).map(|i| t0 + i * 15_000).collect();
    let counter = |k: f64| steps.iter().enumerate().map(|(i, &t)| (t, k * 30.0 * i as f64)).collect::<Vec<_>>();
    let gauge: Vec<(i64, f64)> =
        steps.iter().enumerate().map(|(i, &t)| (t, 20.0 + ((i + 1) % 4) as f64 * 0.5)).collect();
    let series: Vec<(TestLabels, Vec<(i64, f64)>)> = vec![
        (&[("__name__", "demo_requests_total"), ("instance", "a"), ("job", "api")], counter(1.0)),
        (&[("__name__", "demo_requests_total"), ("instance", "b"), ("job", "api")], counter(2.0)),
        (&[("__name__", "demo_temperature_celsius"), ("room", "lab")], gauge),
    ];
    let (s, b) = c.remote_write(&series);
    assert_eq!(s, 204, "{b}");
    let end = t0 + 600_000;
    let end_s = (end / 1000).to_string();

    // Instant query, promtool's PromQL text output.
    let (ok, out, err) = promtool(
        &bin,
        &[
            "query",
            "instant",
            "--time",
            &end_s,
            &c.url,
            "sort_desc(sum by (instance, job) (rate(demo_requests_total[5m])))",
        ],
    );
    assert!(ok, "promtool failed: {err}");
    assert_text(
        &out,
        &format!("{{instance=\"b\", job=\"api\"}} => 4 @[{end_s}]\n{{instance=\"a\", job=\"api\"}} => 2 @[{end_s}]\n"),
    );

    // Instant query, JSON output: a vector with the metric name kept.
    let (ok, out, err) =
        promtool(&bin, &["query", "instant", "-o", "json", "--time", &end_s, &c.url, "demo_temperature_celsius > 20"]);
    assert!(ok, "promtool failed: {err}");
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let arr = v.as_array().unwrap_or_else(|| panic!("not a vector: {out}"));
    assert_eq!(arr.len(), 1, "{out}");
    assert_eq!(arr[0]["metric"]["__name__"], "demo_temperature_celsius");
    assert_eq!(arr[0]["metric"]["room"], "lab");
    // The last sample: 20 + (41 % 4) * 0.5.
    assert_eq!(arr[0]["value"][1], "20.5", "{out}");

    // Range query: one line per point, at promtool's step.
    let start_s = ((end - 180_000) / 1000).to_string();
    let (ok, out, err) = promtool(
        &bin,
        &[
            "query",
            "range",
            "--start",
            &start_s,
            "--end",
            &end_s,
            "--step",
            "1m",
            &c.url,
            "sum(increase(demo_requests_total[1m]))",
        ],
    );
    assert!(ok, "promtool failed: {err}");
    let mut want = String::from("{} =>\n");
    for k in 0..4 {
        // 90/scrape × 4 scrapes in 1m, extrapolated over the window: 360.
        want.push_str(&format!("360 @[{}]\n", (end - 180_000 + k * 60_000) / 1000));
    }
    assert_text(&out, &want);

    // Scalar results and parse errors as promtool prints them.
    let (ok, out, _) = promtool(&bin, &["query", "instant", "--time", &end_s, &c.url, "1+1"]);
    assert!(ok);
    assert_text(&out, &format!("scalar: 2 @[{end_s}]"));
    let (ok, _, err) = promtool(&bin, &["query", "instant", &c.url, "sum(rate(x[5m])"]);
    assert!(!ok);
    assert!(err.contains("1:16: parse error: unclosed left parenthesis"), "{err}");
}
