//! Tenants are kept apart (`X-Scope-OrgID`, as Loki and Mimir): data written
//! by one tenant is never visible to another through any read endpoint, and
//! a request without the header is the default tenant's.

use crate::harness::{Cairn, now_ns, write_request};

const SECRET: &str = "tenant-b-secret";

fn push_logs(c: &Cairn, tenant: &str, job: &str, t: i64) {
    let body = serde_json::json!({"streams": [{
        "stream": {"job": job, "level": "error"},
        "values": [[t.to_string(), format!("level=error msg=\"{job}\" user={job} took=12ms")]],
    }]});
    let (s, b) = c.post_raw(
        "/loki/api/v1/push",
        &[("Content-Type", "application/json"), ("X-Scope-OrgID", tenant)],
        serde_json::to_vec(&body).unwrap(),
    );
    assert_eq!(s, 204, "{b}");
}

fn write_metric(c: &Cairn, tenant: &str, job: &str, t_ms: i64) {
    let body =
        write_request(&[(&[("__name__", "tenant_metric"), ("job", job)], vec![(t_ms, 1.0), (t_ms + 15_000, 2.0)])]);
    let (s, b) = c.post_raw(
        "/api/v1/write",
        &[("Content-Type", "application/x-protobuf"), ("Content-Encoding", "snappy"), ("X-Scope-OrgID", tenant)],
        body,
    );
    assert_eq!(s, 204, "{b}");
}

#[test]
fn no_read_endpoint_shows_another_tenants_data() {
    let dir = tempfile::tempdir().unwrap();
    let c = Cairn::serve(dir.path());
    let now = now_ns();
    let t = now - 60_000_000_000;
    push_logs(&c, "tenant-a", "tenant-a-job", t);
    push_logs(&c, "tenant-b", SECRET, t);
    write_metric(&c, "tenant-a", "tenant-a-job", t / 1_000_000);
    write_metric(&c, "tenant-b", SECRET, t / 1_000_000);
    let (start, end) = ((now - 3_600_000_000_000).to_string(), (now + 60_000_000_000).to_string());
    let (start_s, end_s) = (((now / 1_000_000_000) - 3600).to_string(), ((now / 1_000_000_000) + 60).to_string());
    let time_s = (t / 1_000_000_000 + 10).to_string();
    let logs = |p: &'static str, extra: &[(&'static str, &'static str)]| {
        let mut v = vec![("start", start.clone()), ("end", end.clone())];
        v.extend(extra.iter().map(|(k, x)| (*k, x.to_string())));
        (p, v)
    };
    let prom = |p: &'static str, extra: &[(&'static str, &'static str)]| {
        let mut v = vec![("start", start_s.clone()), ("end", end_s.clone())];
        v.extend(extra.iter().map(|(k, x)| (*k, x.to_string())));
        (p, v)
    };
    let mut calls = vec![
        logs("/loki/api/v1/query_range", &[("query", r#"{job=~".+"}"#)]),
        logs(
            "/loki/api/v1/query_range",
            &[("query", r#"sum by (job) (count_over_time({job=~".+"}[1h]))"#), ("step", "60")],
        ),
        logs("/loki/api/v1/labels", &[]),
        logs("/loki/api/v1/label/job/values", &[]),
        logs("/loki/api/v1/series", &[("match[]", r#"{job=~".+"}"#)]),
        logs("/loki/api/v1/index/stats", &[("query", r#"{job=~".+"}"#)]),
        logs("/loki/api/v1/index/volume", &[("query", r#"{job=~".+"}"#)]),
        logs("/loki/api/v1/index/volume_range", &[("query", r#"{job=~".+"}"#), ("step", "60")]),
        logs("/loki/api/v1/detected_labels", &[("query", r#"{job=~".+"}"#)]),
        logs("/loki/api/v1/detected_fields", &[("query", r#"{job=~".+"}"#)]),
        logs("/loki/api/v1/detected_field/user/values", &[("query", r#"{job=~".+"}"#)]),
        prom("/api/v1/query_range", &[("query", r#"tenant_metric"#), ("step", "15")]),
        prom("/api/v1/series", &[("match[]", r#"{job=~".+"}"#)]),
        prom("/api/v1/labels", &[]),
        prom("/api/v1/label/job/values", &[]),
        prom("/api/v1/status/tsdb", &[]),
        prom("/api/v1/metadata", &[]),
    ];
    calls.push((
        "/loki/api/v1/query",
        vec![("query", r#"count_over_time({job=~".+"}[1h])"#.to_string()), ("time", end.clone())],
    ));
    calls.push(("/api/v1/query", vec![("query", "tenant_metric".to_string()), ("time", time_s.clone())]));
    for (path, params) in &calls {
        let params: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
        for tenant in [Some("tenant-a"), None] {
            let headers: Vec<(&str, &str)> = tenant.map(|t| ("X-Scope-OrgID", t)).into_iter().collect();
            let (s, body) = c.get_with(path, &params, &headers);
            assert_eq!(s, 200, "{path} as {tenant:?}: {body}");
            assert!(!body.contains(SECRET), "{path} as {tenant:?} shows tenant-b's data: {body}");
            // where the answer names streams or series, tenant-a's are there
            let names_data = ["query", "series", "values", "volume"].iter().any(|k| path.contains(k));
            if tenant.is_some() && names_data && !path.contains("detected_field/") {
                assert!(body.contains("tenant-a-job"), "{path} as tenant-a does not show tenant-a's data: {body}");
            }
        }
    }
    // tenant-b still sees its own
    let (s, body) = c.get_with(
        "/loki/api/v1/query_range",
        &[("query", r#"{job=~".+"}"#), ("start", &start), ("end", &end)],
        &[("X-Scope-OrgID", "tenant-b")],
    );
    assert_eq!(s, 200, "{body}");
    assert!(body.contains(SECRET) && !body.contains("tenant-a-job"), "{body}");
    c.stop();
}
