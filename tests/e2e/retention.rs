//! A tenant with its own retention (`[tenants."<id>"]`): its logs and
//! metrics past the limit are not returned, while the default tenant keeps
//! the same data.

use serde_json::{Value, json};

use crate::harness::{Cairn, now_ns};

fn push(c: &Cairn, tenant: Option<&str>, ts_ns: i64, what: &str) {
    let body = json!({"streams": [{"stream": {"job": "ret"}, "values": [[ts_ns.to_string(), what]]}]});
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(t) = tenant {
        headers.push(("X-Scope-OrgID", t));
    }
    let (s, b) = c.post_raw("/loki/api/v1/push", &headers, serde_json::to_vec(&body).unwrap());
    assert_eq!(s, 204, "{b}");
}

fn lines(c: &Cairn, tenant: Option<&str>, from_ns: i64) -> Vec<String> {
    let headers: Vec<(&str, &str)> = tenant.map(|t| ("X-Scope-OrgID", t)).into_iter().collect();
    let (s, b) = c.get_with(
        "/loki/api/v1/query_range",
        &[("query", r#"{job="ret"}"#), ("start", &from_ns.to_string()), ("direction", "forward")],
        &headers,
    );
    assert_eq!(s, 200, "{b}");
    let v: Value = serde_json::from_str(&b).unwrap();
    let mut out = Vec::new();
    for st in v["data"]["result"].as_array().unwrap() {
        for e in st["values"].as_array().unwrap() {
            out.push(e[1].as_str().unwrap().to_string());
        }
    }
    out
}

#[test]
fn tenant_retention_override_hides_older_logs() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("cairn.toml");
    std::fs::write(&cfg, "[tenants.\"guests\"]\nlogs_retention_time = \"1h\"\n").unwrap();
    let c = Cairn::start(&["serve"], &dir.path().join("data"), &["--config", cfg.to_str().unwrap()]);
    let now = now_ns();
    let hour = 3_600_000_000_000i64;
    for tenant in [None, Some("guests")] {
        push(&c, tenant, now - 2 * hour, "two hours old");
        push(&c, tenant, now - 60_000_000_000, "a minute old");
    }
    assert_eq!(lines(&c, None, now - 3 * hour), ["two hours old", "a minute old"]);
    assert_eq!(lines(&c, Some("guests"), now - 3 * hour), ["a minute old"]);
    // still so after a restart (the data went to blocks at shutdown)
    c.stop();
    let c = Cairn::start(&["serve"], &dir.path().join("data"), &["--config", cfg.to_str().unwrap()]);
    assert_eq!(lines(&c, Some("guests"), now - 3 * hour), ["a minute old"]);
    assert_eq!(lines(&c, None, now - 3 * hour), ["two hours old", "a minute old"]);
    c.stop();
}
