//! The deployment files in `deploy/` checked against the real thing:
//! every dashboard query runs against a `cairn up` holding representative
//! data, the shipped configs pass `cairn config check`, and — where the
//! tools are installed (`.ci/run` installs them) — systemd units pass
//! `systemd-analyze verify`, every `.nix` file parses with
//! `nix-instantiate --parse`, and the Kubernetes manifests render with
//! `kubectl kustomize` and validate against the Kubernetes OpenAPI schemas
//! with `kubernetes-validate`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{Cairn, cairn_bin, free_port, now_ns, run_cli, stop_child};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn in_ci() -> bool {
    std::env::var("CI").map(|v| v == "true" || v == "1").unwrap_or(false)
}

/// `../shared` (or `CAIRN_SHARED`); `None` (after printing why) on a dev
/// machine without it, a panic under CI.
fn shared_dir(test: &str) -> Option<PathBuf> {
    let p = std::env::var("CAIRN_SHARED").map(PathBuf::from).unwrap_or_else(|_| repo().join("../shared"));
    if p.join("datasets/logs").is_dir() {
        return Some(p);
    }
    assert!(!in_ci(), "{test}: {} is missing (set CAIRN_SHARED)", p.display());
    println!("{test}: skipped: {} is missing (set CAIRN_SHARED)", p.display());
    None
}

/// An external program: on PATH or in `target/ci-tools/bin` (where
/// `.ci/run` installs Python tools). `None` (after printing why) on a dev
/// machine without it, a panic under CI.
fn tool(test: &str, name: &str, install: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> =
        std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default();
    dirs.push(repo().join("target/ci-tools/bin"));
    if let Some(found) = dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file()) {
        return Some(found);
    }
    assert!(!in_ci(), "{test}: `{name}` is not installed ({install}; .ci/run does this)");
    println!("{test}: skipped: `{name}` is not installed ({install})");
    None
}

/// Files under `dir` (recursively) whose name ends with `suffix`, sorted.
fn files_with(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if p.is_dir() {
                if name != "target" && name != ".git" && name != "fuzz" {
                    stack.push(p);
                }
            } else if name.ends_with(suffix) {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

// ------------------------------------------------------------- dashboards

/// One query of a dashboard: a panel target or a template variable.
#[derive(Debug, Clone)]
struct DashQuery {
    /// "file: panel title / refId" for messages.
    origin: String,
    /// "prometheus" or "loki".
    kind: String,
    expr: String,
    instant: bool,
}

/// Template variable values for one run over the dashboards.
struct Vars {
    values: BTreeMap<String, String>,
}

impl Vars {
    /// Grafana's built-ins for a 15-minute window, 15 s step and 15 s
    /// scrape interval (what Grafana computes for such a panel).
    fn builtins() -> BTreeMap<String, String> {
        BTreeMap::from([
            ("__rate_interval".into(), "1m".into()),
            ("__interval".into(), "15s".into()),
            ("__interval_ms".into(), "15000".into()),
            ("__range".into(), "900s".into()),
            ("__range_s".into(), "900".into()),
            ("__auto".into(), "15s".into()),
        ])
    }

    /// Replaces `${name}`, `${name:fmt}` and `$name` (longest names first).
    fn substitute(&self, expr: &str) -> String {
        let mut names: Vec<&String> = self.values.keys().collect();
        names.sort_by_key(|n| std::cmp::Reverse(n.len()));
        let mut s = expr.to_string();
        for n in names {
            let v = &self.values[n];
            for fmt in ["", ":regex", ":pipe", ":raw"] {
                s = s.replace(&format!("${{{n}{fmt}}}"), v);
            }
            s = s.replace(&format!("${n}"), v);
        }
        s
    }
}

/// A `$` that still starts a variable reference after substitution.
fn unresolved_variable(expr: &str) -> Option<String> {
    let b = expr.as_bytes();
    for (i, c) in b.iter().enumerate() {
        if *c == b'$' && b.get(i + 1).is_some_and(|n| n.is_ascii_alphabetic() || *n == b'_' || *n == b'{') {
            return Some(expr[i..].chars().take(24).collect());
        }
    }
    None
}

/// Every panel target of a dashboard (rows' nested panels included), with
/// the data source type resolved through the dashboard's datasource
/// variables.
fn panel_queries(file: &str, dash: &Value) -> Vec<DashQuery> {
    let ds_kind: BTreeMap<String, String> = dash["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["type"] == "datasource")
        .map(|v| (format!("${{{}}}", v["name"].as_str().unwrap()), v["query"].as_str().unwrap().to_string()))
        .collect();
    let mut panels: Vec<&Value> = Vec::new();
    for p in dash["panels"].as_array().expect("dashboard without panels") {
        panels.push(p);
        if let Some(inner) = p["panels"].as_array() {
            panels.extend(inner);
        }
    }
    let mut out = Vec::new();
    for p in panels {
        if p["type"] == "row" {
            continue;
        }
        let title = p["title"].as_str().unwrap_or("?");
        let targets = p["targets"].as_array().unwrap_or_else(|| panic!("{file}: panel {title:?} has no targets"));
        assert!(!targets.is_empty(), "{file}: panel {title:?} has no targets");
        for t in targets {
            let ds = if t["datasource"].is_object() { &t["datasource"] } else { &p["datasource"] };
            let uid = ds["uid"].as_str().unwrap_or("");
            let kind = ds["type"].as_str().unwrap_or("").to_string();
            assert_eq!(
                ds_kind.get(uid).map(String::as_str),
                Some(kind.as_str()),
                "{file}: panel {title:?} uses data source {uid:?} of type {kind:?}, not one of the dashboard's datasource variables {ds_kind:?}"
            );
            let expr = t["expr"].as_str().unwrap_or_else(|| panic!("{file}: panel {title:?} target without expr"));
            let instant = t["instant"] == true || t["queryType"] == "instant";
            out.push(DashQuery {
                origin: format!("{file}: {title:?} / {}", t["refId"].as_str().unwrap_or("?")),
                kind,
                expr: expr.to_string(),
                instant,
            });
        }
    }
    out
}

/// Template variables of type `query`: (name, data source kind, label, metric match).
fn query_variables(file: &str, dash: &Value) -> Vec<(String, String, String, Option<String>)> {
    let mut out = Vec::new();
    for v in dash["templating"]["list"].as_array().into_iter().flatten() {
        if v["type"] != "query" {
            continue;
        }
        let name = v["name"].as_str().unwrap().to_string();
        let kind = v["datasource"]["type"].as_str().unwrap_or("").to_string();
        let q = &v["query"];
        let (label, matcher) = if kind == "loki" {
            assert_eq!(q["type"], 1, "{file}: variable {name}: only label-values variables are used");
            (q["label"].as_str().unwrap().to_string(), q["stream"].as_str().filter(|s| !s.is_empty()).map(String::from))
        } else {
            // label_values(metric, label)
            let text = q["query"].as_str().or(q.as_str()).unwrap();
            let inner = text
                .strip_prefix("label_values(")
                .and_then(|r| r.strip_suffix(')'))
                .unwrap_or_else(|| panic!("{file}: variable {name}: not label_values(): {text}"));
            let (m, l) = inner.rsplit_once(',').unwrap_or(("", inner));
            (l.trim().to_string(), Some(m.trim().to_string()).filter(|m| !m.is_empty()))
        };
        out.push((name, kind, label, matcher));
    }
    out
}

/// The values a label-values variable offers (as Grafana asks for them).
fn variable_values(c: &Cairn, kind: &str, label: &str, matcher: Option<&str>, start: i64, end: i64) -> Vec<String> {
    let (s, e) = (start.to_string(), end.to_string());
    let v: Value = if kind == "loki" {
        let mut p = vec![("start", format!("{}", start * 1_000_000_000)), ("end", format!("{}", end * 1_000_000_000))];
        if let Some(m) = matcher {
            p.push(("query", m.to_string()));
        }
        let p: Vec<(&str, &str)> = p.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (st, body) = c.get_params(&format!("/loki/api/v1/label/{label}/values"), &p);
        assert_eq!(st, 200, "label values {label}: {body}");
        serde_json::from_str(&body).unwrap()
    } else {
        let mut p = vec![("start", s.as_str()), ("end", e.as_str()), ("limit", "40000")];
        if let Some(m) = matcher {
            p.push(("match[]", m));
        }
        let (st, v) = c.prom(&format!("/api/v1/label/{label}/values"), &p);
        assert_eq!(st, 200, "label values {label}: {v}");
        v
    };
    v["data"].as_array().map(|a| a.iter().filter_map(|x| x.as_str().map(String::from)).collect()).unwrap_or_default()
}

/// Runs one query as Grafana would; Ok(number of series/streams) or Err(why).
fn run_query(c: &Cairn, q: &DashQuery, expr: &str, start: i64, end: i64) -> Result<usize, String> {
    let (status, body) = match (q.kind.as_str(), q.instant) {
        ("prometheus", false) => c.post_form(
            "/api/v1/query_range",
            &[("query", expr), ("start", &start.to_string()), ("end", &end.to_string()), ("step", "15")],
        ),
        ("prometheus", true) => c.post_form("/api/v1/query", &[("query", expr), ("time", &end.to_string())]),
        ("loki", false) => c.get_params(
            "/loki/api/v1/query_range",
            &[
                ("query", expr),
                ("start", &(start * 1_000_000_000).to_string()),
                ("end", &(end * 1_000_000_000).to_string()),
                ("step", "15000ms"),
                ("limit", "1000"),
                ("direction", "backward"),
            ],
        ),
        ("loki", true) => c.get_params(
            "/loki/api/v1/query",
            &[("query", expr), ("time", &(end * 1_000_000_000).to_string()), ("limit", "1000")],
        ),
        (k, _) => return Err(format!("unknown data source type {k:?}")),
    };
    if status != 200 {
        return Err(format!("HTTP {status}: {body}"));
    }
    let v: Value = serde_json::from_str(&body).map_err(|e| format!("not JSON ({e}): {body}"))?;
    if v["status"] != "success" {
        return Err(format!("status {}: {body}", v["status"]));
    }
    let n = v["data"]["result"].as_array().map(Vec::len).ok_or_else(|| format!("no result array: {body}"))?;
    if n == 0 {
        return Err(format!("empty result ({})", v["data"]["resultType"]));
    }
    Ok(n)
}

/// A sysfs with one hwmon chip and one thermal zone, as a Raspberry Pi or a
/// laptop has (this machine, a VM, has neither).
fn fake_sysfs(dir: &Path) {
    let hw = dir.join("class/hwmon/hwmon0");
    std::fs::create_dir_all(&hw).unwrap();
    std::fs::write(hw.join("name"), "coretemp\n").unwrap();
    std::fs::write(hw.join("temp1_input"), "45000\n").unwrap();
    std::fs::write(hw.join("temp1_label"), "Package id 0\n").unwrap();
    std::fs::write(hw.join("temp1_crit"), "100000\n").unwrap();
    let tz = dir.join("class/thermal/thermal_zone0");
    std::fs::create_dir_all(&tz).unwrap();
    std::fs::write(tz.join("type"), "cpu-thermal\n").unwrap();
    std::fs::write(tz.join("temp"), "47500\n").unwrap();
}

/// (namespace, pod, container, dataset file): real logs as pods would write
/// them. Every namespace has some error lines, so the error panels have data
/// whichever namespace is picked.
const POD_LOGS: &[(&str, &str, &str, &str)] = &[
    ("kube-system", "coredns-5d78c9869d-x7k2p", "coredns", "loki-drain-kubernetes.log"),
    ("kube-system", "calico-node-7xk2p", "calico-node", "loki-drain-calico.log"),
    ("monitoring", "grafana-agent-0", "agent", "loki-drain-agent-logfmt.log"),
    ("web", "laravel-6c5f7b-x2x9q", "php", "lnav-laravel-stacktrace.log"),
    ("db", "mongo-0", "mongod", "mtools-mongod-3.6.23.log"),
    ("data", "rsync-0", "rsyncd", "mtail-rsyncd.log"),
    ("data", "kafka-0", "kafka", "elastic-kafka-controller.log"),
];

fn level_of(line: &str) -> &'static str {
    let l = line.to_ascii_lowercase();
    if ["error", "fatal", "panic", "exception"].iter().any(|w| l.contains(w)) {
        "error"
    } else if l.contains("warn") {
        "warn"
    } else if l.contains("debug") {
        "debug"
    } else {
        "info"
    }
}

/// Pushes the dataset files as pod logs of the last 10 minutes, one stream
/// per (pod, level), labelled as the collector labels pod logs.
fn push_pod_logs(c: &Cairn, shared: &Path, host: &str) -> usize {
    let now = now_ns();
    let mut total = 0;
    for (ns, pod, container, file) in POD_LOGS {
        let text = std::fs::read(shared.join("datasets/logs").join(file)).unwrap();
        let text = String::from_utf8_lossy(&text);
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).take(1000).collect();
        let span = 600_000_000_000i64;
        let mut by_level: BTreeMap<&str, Vec<(i64, String)>> = BTreeMap::new();
        for (i, l) in lines.iter().enumerate() {
            let ts = now - span + span * i as i64 / lines.len() as i64;
            by_level.entry(level_of(l)).or_default().push((ts, l.to_string()));
        }
        for (level, entries) in by_level {
            total += entries.len();
            let labels: &[(&str, &str)] = &[
                ("job", "kubernetes-pods"),
                ("host", host),
                ("namespace", ns),
                ("pod", pod),
                ("container", container),
                ("level", level),
            ];
            let (st, body) = c.push_logs_json(&[(labels, entries)]);
            assert_eq!(st, 204, "push {file}: {body}");
        }
    }
    total
}

#[test]
fn dashboards_queries_return_data() {
    let Some(shared) = shared_dir("dashboards_queries_return_data") else { return };
    let dir = tempfile::tempdir().unwrap();
    let sys = dir.path().join("sys");
    fake_sysfs(&sys);
    let port = free_port();
    let host = "node-a";
    // The Kubernetes deployment's two configs, as shipped, with test paths,
    // a 1 s cycle, and a small log head so flushes and compactions happen
    // within the test: the aggregator (`cairn up`, scraping its own
    // /metrics) and a `cairn collect` (node metrics, pod log files and the
    // node's log files) pushing to it.
    let k8s = repo().join("deploy/kubernetes/base");
    let agg_cfg = edit_config(
        &std::fs::read_to_string(k8s.join("aggregator.toml")).unwrap(),
        &[
            ("targets = [\"127.0.0.1:3100\"]", format!("targets = [\"127.0.0.1:{port}\"]")),
            ("interval = \"15s\"", "interval = \"1s\"\ntimeout = \"1s\"".into()),
            ("[storage.logs]\n", "[storage.logs]\nhead_max_size = \"128KiB\"\n".into()),
        ],
    );
    let agg_path = dir.path().join("aggregator.toml");
    std::fs::write(&agg_path, agg_cfg).unwrap();
    let data = dir.path().join("data");
    let c = Cairn::start_on(&format!("127.0.0.1:{port}"), &["up"], &data, &["--config", agg_path.to_str().unwrap()]);

    // A node's log files: one pod's container log (CRI format, as the
    // kubelet writes it) and a syslog file.
    let pod_dir = dir.path().join("pods/kube-system_coredns-5d78c9869d-x7k2p_0c6a/coredns");
    std::fs::create_dir_all(&pod_dir).unwrap();
    let kube = std::fs::read_to_string(shared.join("datasets/logs/loki-drain-kubernetes.log")).unwrap();
    let cri: String = kube
        .lines()
        .take(200)
        .map(|l| format!("{} stdout F {l}\n", cairn_wire::time::format_rfc3339_ns(now_ns() - 60_000_000_000)))
        .collect();
    std::fs::write(pod_dir.join("0.log"), cri).unwrap();
    let varlog = dir.path().join("varlog");
    std::fs::create_dir_all(&varlog).unwrap();
    std::fs::copy(shared.join("datasets/logs/lnav-syslog-centos.log"), varlog.join("syslog.log")).unwrap();
    let col_cfg = edit_config(
        &std::fs::read_to_string(k8s.join("collector.toml")).unwrap(),
        &[
            ("host = \"\"", format!("host = \"{host}\"")),
            ("proc_path = \"/host/proc\"", "proc_path = \"/proc\"\ninterval = \"1s\"".into()),
            ("sys_path = \"/host/sys\"", format!("sys_path = \"{}\"", sys.display())),
            ("rootfs_path = \"/host/root\"", "rootfs_path = \"/\"".into()),
            ("root = \"/var/log/pods\"", format!("root = \"{}/pods\"", dir.path().display())),
            (
                "paths = [\"/var/log/*.log\", \"/var/log/syslog\", \"/var/log/messages\"]",
                format!("paths = [\"{}/*.log\"]", varlog.display()),
            ),
            ("http://cairn.cairn.svc.cluster.local:3100", c.url.clone()),
            // No API server and no node journal here (tests/e2e/kubernetes.rs
            // and collector_logs.rs cover them).
            ("[collector.journal]\nenabled = true", "[collector.journal]\nenabled = false".into()),
            ("[collector.kubernetes]\nenabled = true", "[collector.kubernetes]\nenabled = false".into()),
        ],
    );
    let col_path = dir.path().join("collector.toml");
    std::fs::write(&col_path, col_cfg).unwrap();
    let collector = Collector(Some(
        Command::new(cairn_bin())
            .args(["collect", "--config", col_path.to_str().unwrap(), "--data-dir"])
            .arg(dir.path().join("collector-state"))
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn cairn collect"),
    ));

    let lines = push_pod_logs(&c, &shared, host);
    assert!(lines > 3000, "only {lines} lines pushed");
    // One refused write, so the rejections panel has something to show.
    let (st, _) =
        c.remote_write(&[(&[("__name__", "bad_series"), ("bad-label", "x")], vec![(now_ns() / 1_000_000, 1.0)])]);
    assert_eq!(st, 400);

    let mut dashboards = files_with(&repo().join("deploy/grafana/dashboards"), ".json");
    assert!(dashboards.len() >= 3, "dashboards missing: {dashboards:?}");
    dashboards.sort();
    // Besides the dashboards: what the shipped collector config must deliver.
    let mut queries = vec![
        DashQuery {
            origin: "collector.toml: node metrics".into(),
            kind: "prometheus".into(),
            expr: format!("node_load1{{instance=\"{host}\", job=\"node\"}}"),
            instant: true,
        },
        DashQuery {
            origin: "collector.toml: pod log files".into(),
            kind: "loki".into(),
            expr: format!(
                "sum(count_over_time({{job=\"kubernetes-pods\", node=\"{host}\", namespace=\"kube-system\", container=\"coredns\", stream=\"stdout\"}}[1h]))"
            ),
            instant: true,
        },
        DashQuery {
            origin: "collector.toml: node log files".into(),
            kind: "loki".into(),
            expr: format!("sum(count_over_time({{job=\"varlogs\", host=\"{host}\"}}[1h]))"),
            instant: true,
        },
        DashQuery {
            origin: "aggregator.toml: self-scrape".into(),
            kind: "prometheus".into(),
            expr: "up{job=\"cairn\"} == 1".into(),
            instant: true,
        },
    ];
    let mut variables = Vec::new();
    let mut uids = std::collections::BTreeSet::new();
    for f in &dashboards {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        let dash: Value = serde_json::from_str(&std::fs::read_to_string(f).unwrap())
            .unwrap_or_else(|e| panic!("{name}: not JSON: {e}"));
        assert!(uids.insert(dash["uid"].as_str().unwrap().to_string()), "{name}: duplicate uid");
        let mut ids = std::collections::BTreeSet::new();
        for p in dash["panels"].as_array().unwrap() {
            assert!(ids.insert(p["id"].as_i64().unwrap()), "{name}: duplicate panel id {}", p["id"]);
        }
        queries.extend(panel_queries(&name, &dash));
        variables.extend(query_variables(&name, &dash).into_iter().map(|v| (name.clone(), dash.clone(), v)));
    }
    // The provisioned data sources are the ones the dashboards default to.
    let ds_yaml = std::fs::read_to_string(repo().join("deploy/grafana/provisioning/datasources/cairn.yaml")).unwrap();
    for f in &dashboards {
        let dash: Value = serde_json::from_str(&std::fs::read_to_string(f).unwrap()).unwrap();
        for v in dash["templating"]["list"].as_array().unwrap().iter().filter(|v| v["type"] == "datasource") {
            let uid = v["current"]["value"].as_str().unwrap();
            assert!(ds_yaml.contains(&format!("uid: {uid}\n")), "{f:?}: data source uid {uid} is not provisioned");
        }
    }

    // Warm up the query counters and histograms the self-monitoring
    // dashboard reads, then poll until every query has data (node metrics
    // and self-scrapes arrive every second, flushes and compactions follow
    // the pushes).
    let end = now_ns() / 1_000_000_000 + 60;
    let start = end - 900 - 60;
    let _ = c.prom("/api/v1/query", &[("query", "up")]);
    let _ = c.get_params("/loki/api/v1/query", &[("query", "count_over_time({job=\"kubernetes-pods\"}[5m])")]);

    let started = Instant::now();
    let deadline = started + Duration::from_secs(60);
    let mut ran;
    loop {
        let mut failures = Vec::new();
        // Variable values first: "All" and then each dashboard's first value.
        let mut runs: Vec<(String, Vars)> = Vec::new();
        let mut all = Vars::builtins();
        let mut first = Vars::builtins();
        let mut var_ok = true;
        for (file, dash, (name, kind, label, matcher)) in &variables {
            let vals = variable_values(&c, kind, label, matcher.as_deref(), start, end);
            if vals.is_empty() {
                failures.push(format!("{file}: variable ${name} (label_values {label}) has no values"));
                var_ok = false;
                continue;
            }
            let allv = dash["templating"]["list"]
                .as_array()
                .unwrap()
                .iter()
                .find(|v| v["name"] == name.as_str())
                .and_then(|v| v["allValue"].as_str())
                .unwrap_or(".*")
                .to_string();
            all.insert(name.clone(), allv);
            first.insert(name.clone(), vals[0].clone());
        }
        for (_, dash, _) in &variables {
            for v in dash["templating"]["list"].as_array().unwrap().iter().filter(|v| v["type"] == "textbox") {
                let n = v["name"].as_str().unwrap().to_string();
                let q = v["query"].as_str().unwrap_or("").to_string();
                all.insert(n.clone(), q.clone());
                first.insert(n, q);
            }
        }
        runs.push(("all".into(), Vars { values: all }));
        runs.push(("first value".into(), Vars { values: first }));
        ran = 0;
        if var_ok {
            for (what, vars) in &runs {
                for q in &queries {
                    let expr = vars.substitute(&q.expr);
                    if let Some(rest) = unresolved_variable(&expr) {
                        failures.push(format!("{} [{what}]: unresolved variable at {rest:?} in {expr}", q.origin));
                        continue;
                    }
                    match run_query(&c, q, &expr, start, end) {
                        Ok(_) => ran += 1,
                        Err(e) => failures.push(format!("{} [{what}]: {expr}\n    -> {e}", q.origin)),
                    }
                }
            }
        }
        if failures.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            panic!("{} dashboard queries failed (of {}):\n{}", failures.len(), queries.len() * 2, failures.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(1000));
    }
    println!(
        "dashboards: {} queries x 2 variable settings answered with data ({ran} runs, {:.1}s)",
        queries.len(),
        started.elapsed().as_secs_f64()
    );
    collector.stop();
    c.stop();
}

/// Applies (from, to) replacements to a shipped config, each of which must
/// match, so a changed config file fails here rather than silently testing
/// something else.
fn edit_config(text: &str, edits: &[(&str, String)]) -> String {
    let mut s = text.to_string();
    for (from, to) in edits {
        assert!(s.contains(from), "shipped config no longer contains {from:?}");
        s = s.replacen(from, to, 1);
    }
    s
}

/// A `cairn collect` child, killed if the test fails.
struct Collector(Option<std::process::Child>);

impl Collector {
    fn stop(mut self) {
        let st = stop_child(self.0.take().unwrap(), "TERM", Duration::from_secs(10));
        assert!(st.success(), "cairn collect exited with {st}");
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

// ---------------------------------------------------------------- configs

#[test]
fn deploy_configs_pass_config_check() {
    let mut configs = files_with(&repo().join("deploy"), ".toml");
    assert!(configs.len() >= 4, "configs missing: {configs:?}");
    configs.sort();
    for f in &configs {
        let (code, out, err) = run_cli(&["config", "check", f.to_str().unwrap()]);
        assert_eq!(code, 0, "{}: cairn config check failed: {err}{out}", f.display());
    }
}

// ---------------------------------------------------------------- systemd

#[test]
fn systemd_units_verify() {
    let Some(sa) = tool("systemd_units_verify", "systemd-analyze", "apt-get install systemd") else { return };
    let units = files_with(&repo().join("deploy/systemd"), ".service");
    assert!(units.len() >= 3, "units missing: {units:?}");
    let dir = tempfile::tempdir().unwrap();
    for u in &units {
        // verify checks that ExecStart's program exists: point it at the
        // binary under test.
        let text = std::fs::read_to_string(u).unwrap();
        assert!(text.contains("/usr/local/bin/cairn "), "{}: ExecStart is not /usr/local/bin/cairn", u.display());
        let copy = dir.path().join(u.file_name().unwrap());
        std::fs::write(&copy, text.replace("/usr/local/bin/cairn ", &format!("{} ", cairn_bin()))).unwrap();
        let out = Command::new(&sa).arg("verify").arg(&copy).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        // Messages about the unit file itself (unknown keys, bad values) go
        // to stderr; other units' warnings on the host are not ours.
        let ours: Vec<&str> = stderr
            .lines()
            .filter(|l| l.contains(copy.file_name().unwrap().to_str().unwrap()) || l.contains(copy.to_str().unwrap()))
            .collect();
        assert!(
            out.status.success() && ours.is_empty(),
            "systemd-analyze verify {}: {}\n{stderr}",
            u.display(),
            out.status
        );
    }
    // The sandboxing holds: systemd's own exposure score (0 = fully locked
    // down, 10 = unprotected; these units score 1.5-1.9, an unhardened
    // service about 9.6).
    for u in &units {
        let copy = dir.path().join(u.file_name().unwrap());
        let out = Command::new(&sa).args(["security", "--offline=true", "--no-pager"]).arg(&copy).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let score: f64 = text
            .lines()
            .find_map(|l| l.split_once("Overall exposure level for ").map(|(_, r)| r))
            .and_then(|r| r.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no exposure level from systemd-analyze security {}: {text}", u.display()));
        println!("{}: exposure {score}", u.display());
        assert!(score <= 2.0, "{}: systemd-analyze security exposure {score} > 2.0:\n{text}", u.display());
    }

    // And it does catch mistakes: a misspelt key and a bad value.
    let bad = dir.path().join("bad.service");
    std::fs::write(
        &bad,
        format!("[Service]\nExecStart={} serve\nProtectSystm=strict\nDynamicUser=maybe\n", cairn_bin()),
    )
    .unwrap();
    let out = Command::new(&sa).arg("verify").arg(&bad).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("ProtectSystm") && stderr.contains("maybe"), "verify missed the errors: {stderr}");
}

// ---------------------------------------------------------------- nix

#[test]
fn nix_files_parse() {
    let Some(nix) = tool("nix_files_parse", "nix-instantiate", "apt-get install nix-bin") else { return };
    let files = files_with(&repo(), ".nix");
    assert!(files.iter().any(|f| f.ends_with("flake.nix")), "flake.nix missing: {files:?}");
    assert!(files.iter().any(|f| f.ends_with("deploy/nixos/module.nix")), "module missing: {files:?}");
    for f in &files {
        let out = Command::new(&nix).arg("--parse").arg(f).output().unwrap();
        assert!(
            out.status.success(),
            "nix-instantiate --parse {}: {}",
            f.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let bad = tempfile::Builder::new().suffix(".nix").tempfile().unwrap();
    std::fs::write(bad.path(), "{ a = ; }").unwrap();
    let out = Command::new(&nix).arg("--parse").arg(bad.path()).output().unwrap();
    assert!(!out.status.success(), "nix-instantiate accepted a syntax error");
}

// ---------------------------------------------------------------- kubernetes

/// Kubernetes versions the manifests are validated against: recent minors
/// (k3s releases follow upstream's), up to the newest the validator ships.
const K8S_VERSIONS: &[&str] = &["1.34.0", "1.35.0", "1.37.0"];

#[test]
fn kubernetes_manifests_render_and_validate() {
    let t = "kubernetes_manifests_render_and_validate";
    let Some(kubectl) = tool(t, "kubectl", "the kubectl package") else { return };
    let Some(validate) = tool(t, "kubernetes-validate", "pip install kubernetes-validate") else { return };
    let k8s = repo().join("deploy/kubernetes");
    let dir = tempfile::tempdir().unwrap();
    let mut rendered = Vec::new();
    let mut kustomizations: Vec<PathBuf> =
        files_with(&k8s, "kustomization.yaml").into_iter().map(|p| p.parent().unwrap().to_path_buf()).collect();
    kustomizations.sort();
    assert!(kustomizations.len() >= 3, "base and two overlays expected: {kustomizations:?}");
    for k in &kustomizations {
        let out = Command::new(&kubectl).arg("kustomize").arg(k).output().unwrap();
        assert!(out.status.success(), "kubectl kustomize {}: {}", k.display(), String::from_utf8_lossy(&out.stderr));
        let yaml = String::from_utf8(out.stdout).unwrap();
        let name = k.strip_prefix(&k8s).unwrap().to_string_lossy().replace('/', "-");
        let path = dir.path().join(format!("{name}.yaml"));
        std::fs::write(&path, &yaml).unwrap();
        rendered.push((name, yaml, path));
    }
    for (name, yaml, _) in &rendered {
        for kind in [
            "kind: Namespace",
            "kind: StatefulSet",
            "kind: DaemonSet",
            "kind: Service",
            "kind: ConfigMap",
            "kind: ServiceAccount",
            "kind: ClusterRole",
            "kind: ClusterRoleBinding",
        ] {
            assert!(yaml.contains(kind), "{name}: no {kind}");
        }
        for must in ["namespace: cairn", "fieldPath: spec.nodeName", "name: NODE_NAME", "readOnlyRootFilesystem: true"]
        {
            assert!(yaml.contains(must), "{name}: missing {must:?}");
        }
    }
    let get = |n: &str| &rendered.iter().find(|r| r.0 == n).unwrap_or_else(|| panic!("no {n} rendered")).1;
    assert!(get("overlays-single-node").contains("nodePort: 30100"));
    assert!(get("overlays-single-node").contains("storageClassName: local-path"));
    assert!(get("overlays-retention").contains(r#"retention_time = "90d""#));
    assert!(get("overlays-retention").contains("storage: 100Gi"));
    // The rendered ConfigMaps hold configs Cairn accepts.
    for (name, yaml, _) in &rendered {
        for file in ["aggregator.toml", "collector.toml"] {
            let body = configmap_file(yaml, file).unwrap_or_else(|| panic!("{name}: no {file} in the ConfigMap"));
            let p = dir.path().join(format!("{name}-{file}"));
            std::fs::write(&p, body).unwrap();
            let (code, out, err) = run_cli(&["config", "check", p.to_str().unwrap()]);
            assert_eq!(code, 0, "{name}: {file}: {err}{out}");
        }
    }
    // The Grafana ConfigMaps (for the Helm chart's sidecar): every
    // dashboard and the data sources, labelled for the sidecar.
    let out = Command::new(&kubectl).arg("kustomize").arg(repo().join("deploy/grafana")).output().unwrap();
    assert!(out.status.success(), "kubectl kustomize deploy/grafana: {}", String::from_utf8_lossy(&out.stderr));
    let grafana = String::from_utf8(out.stdout).unwrap();
    for must in ["grafana_dashboard: \"1\"", "grafana_datasource: \"1\"", "uid: cairn-prometheus", "namespace: cairn"] {
        assert!(grafana.contains(must), "deploy/grafana: missing {must:?}");
    }
    for f in files_with(&repo().join("deploy/grafana/dashboards"), ".json") {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        assert!(grafana.contains(&format!("  {name}: |")), "deploy/grafana: {name} is not in the ConfigMap");
    }
    let grafana_path = dir.path().join("grafana.yaml");
    std::fs::write(&grafana_path, &grafana).unwrap();

    // Schema validation: the rendered output and every resource file.
    let mut files: Vec<PathBuf> = rendered.iter().map(|r| r.2.clone()).collect();
    files.push(grafana_path);
    files.extend(files_with(&k8s, ".yaml").into_iter().filter(|p| !p.ends_with("kustomization.yaml")));
    for v in K8S_VERSIONS {
        let out = Command::new(&validate).args(["--strict", "--quiet", "-k", v]).args(&files).output().unwrap();
        assert!(
            out.status.success(),
            "kubernetes-validate -k {v}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // And it does reject a broken manifest.
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, rendered[0].1.replace("hostNetwork: true", "hostNetwork: true\n      hostNetwrk: true"))
        .unwrap();
    let out = Command::new(&validate).args(["--strict", "--quiet", "-k", K8S_VERSIONS[0]]).arg(&bad).output().unwrap();
    assert!(!out.status.success(), "kubernetes-validate accepted an unknown field");
}

/// The content of `file` in a rendered ConfigMap (a `|` block under `data:`).
fn configmap_file(yaml: &str, file: &str) -> Option<String> {
    let key = format!("  {file}: |");
    let mut lines = yaml.lines().skip_while(|l| !l.starts_with(&key));
    lines.next()?;
    let mut out = String::new();
    for l in lines {
        if let Some(rest) = l.strip_prefix("    ") {
            out.push_str(rest);
            out.push('\n');
        } else if l.is_empty() {
            out.push('\n');
        } else {
            break;
        }
    }
    Some(out)
}

// ---------------------------------------------------------------- container image

/// The Dockerfile parsed with BuildKit's own parser (PyPI `dockerfile`,
/// which wraps it), checked for what deploy/README.md promises; the binary
/// needs no library beyond the distroless `cc` base's glibc and libgcc; and
/// `.dockerignore` leaves every tracked source file in the build context.
/// Building the image needs a container daemon and is not done here.
#[test]
fn dockerfile_parses_and_fits_its_base() {
    let t = "dockerfile_parses_and_fits_its_base";
    let Some(python) = tool(t, "python3", "apt-get install python3") else { return };
    // .ci/run installs the parser into target/ci-tools; prefer that Python.
    let venv = repo().join("target/ci-tools/bin/python3");
    let python = if venv.is_file() { venv } else { python };
    let probe = Command::new(&python).args(["-c", "import dockerfile"]).output().unwrap();
    if !probe.status.success() {
        assert!(!in_ci(), "{t}: the Python package `dockerfile` is missing (.ci/run installs it)");
        println!("{t}: skipped: the Python package `dockerfile` is missing (pip install dockerfile)");
        return;
    }
    let script = "import dockerfile, json, sys\n\
                  print(json.dumps([[c.cmd, list(c.flags), list(c.value)] for c in dockerfile.parse_file(sys.argv[1])]))";
    let out = Command::new(&python).args(["-c", script]).arg(repo().join("Dockerfile")).output().unwrap();
    assert!(out.status.success(), "Dockerfile does not parse: {}", String::from_utf8_lossy(&out.stderr));
    let ins: Vec<(String, Vec<String>, Vec<String>)> = serde_json::from_slice(&out.stdout).unwrap();
    const KNOWN: &[&str] = &[
        "ADD",
        "ARG",
        "CMD",
        "COPY",
        "ENTRYPOINT",
        "ENV",
        "EXPOSE",
        "FROM",
        "HEALTHCHECK",
        "LABEL",
        "MAINTAINER",
        "ONBUILD",
        "RUN",
        "SHELL",
        "STOPSIGNAL",
        "USER",
        "VOLUME",
        "WORKDIR",
    ];
    for i in &ins {
        assert!(KNOWN.contains(&i.0.as_str()), "Dockerfile: unknown instruction {}", i.0);
        assert!(!i.2.is_empty(), "Dockerfile: {} without arguments", i.0);
    }
    let froms: Vec<&Vec<String>> = ins.iter().filter(|i| i.0 == "FROM").map(|i| &i.2).collect();
    assert!(froms.len() >= 2, "not multi-stage: {froms:?}");
    let stages: Vec<String> =
        froms.iter().filter(|v| v.len() == 3 && v[1].eq_ignore_ascii_case("as")).map(|v| v[2].clone()).collect();
    for i in ins.iter().filter(|i| i.0 == "COPY") {
        for f in &i.1 {
            if let Some(stage) = f.strip_prefix("--from=") {
                assert!(stages.contains(&stage.to_string()), "COPY --from={stage}: no such stage in {stages:?}");
            }
        }
    }
    let run = ins.iter().filter(|i| i.0 == "RUN").map(|i| i.2.join(" ")).collect::<String>();
    assert!(run.contains("cargo build --release --locked --package cairn"), "no release build: {run}");
    let last_from = ins.iter().rposition(|i| i.0 == "FROM").unwrap();
    let user = ins[last_from..].iter().rfind(|i| i.0 == "USER").map(|i| i.2[0].clone());
    let user = user.expect("the runtime stage sets no USER (runs as root)");
    assert!(!user.starts_with("0") && !user.starts_with("root"), "runtime USER is root: {user}");
    let entry = ins.iter().rfind(|i| i.0 == "ENTRYPOINT").map(|i| i.2.clone()).expect("no ENTRYPOINT");
    assert_eq!(entry, vec!["/usr/local/bin/cairn".to_string()]);

    // The runtime base holds glibc and libgcc only.
    if let Some(ldd) = tool(t, "ldd", "apt-get install libc-bin") {
        let out = Command::new(ldd).arg(cairn_bin()).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        for l in text.lines() {
            let lib = l.split_whitespace().next().unwrap_or("");
            let ok = ["linux-vdso.so", "libgcc_s.so", "libm.so", "libc.so", "ld-linux", "libpthread.so", "libdl.so"]
                .iter()
                .any(|p| lib.contains(p));
            assert!(ok, "cairn links {lib}, which the distroless cc base does not have:\n{text}");
        }
    }

    // .dockerignore keeps every tracked source file.
    let ignore = std::fs::read_to_string(repo().join(".dockerignore")).unwrap();
    let patterns: Vec<&str> = ignore.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
    let Ok(out) = Command::new("git").args(["ls-files"]).current_dir(repo()).output() else { return };
    if !out.status.success() {
        return;
    }
    for f in String::from_utf8_lossy(&out.stdout).lines() {
        let excluded = patterns.iter().any(|p| match p.strip_suffix('/') {
            Some(dir) => f.starts_with(&format!("{dir}/")),
            None => match p.strip_prefix("**/*") {
                Some(suffix) => f.ends_with(suffix),
                None => f == *p,
            },
        });
        assert!(
            !excluded || f == "Dockerfile" || f == ".dockerignore",
            ".dockerignore leaves out the tracked file {f}"
        );
    }
}

/// The image's `journal` stage (`deploy/docker/journalctl-bundle.sh`) must
/// give a journalctl that runs on a root holding only what the distroless
/// cc base has (glibc, libgcc) plus the bundle: checked in a chroot built
/// that way (root only; the machine's journalctl is the same Debian release).
#[test]
fn journalctl_bundle_runs_on_a_glibc_only_root() {
    let t = "journalctl_bundle_runs_on_a_glibc_only_root";
    let Some(journalctl) = tool(t, "journalctl", "apt-get install systemd") else { return };
    let Some(ldd) = tool(t, "ldd", "apt-get install libc-bin") else { return };
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let st = Command::new("sh").arg(repo().join("deploy/docker/journalctl-bundle.sh")).arg(&root).status().unwrap();
    assert!(st.success(), "journalctl-bundle.sh failed");
    assert!(root.join("usr/bin/journalctl").is_file());
    // The base's part: the loader, libc, libm, libgcc_s.
    let out = Command::new(ldd).arg(&journalctl).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    for l in text.lines() {
        let words: Vec<&str> = l.split_whitespace().collect();
        let (name, path) = match words.as_slice() {
            [name, "=>", path, ..] => (*name, *path),
            [path, ..] if path.starts_with('/') => (*path, *path),
            _ => continue,
        };
        let base = ["ld-linux", "libc.so", "libm.so", "libgcc_s.so"].iter().any(|b| name.contains(b));
        if base {
            let dest = root.join(path.trim_start_matches('/'));
            std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
            std::fs::copy(path, &dest).unwrap();
        } else {
            let canonical = std::fs::canonicalize(Path::new(path).parent().unwrap()).unwrap().join(name);
            assert!(
                root.join(canonical.strip_prefix("/").unwrap()).is_file(),
                "the bundle lacks {name} ({path}):\n{text}"
            );
        }
    }
    let out = match Command::new("chroot").arg(&root).args(["/usr/bin/journalctl", "--version"]).output() {
        Ok(o) => o,
        Err(e) => {
            println!("{t}: skipped the chroot run: {e}");
            return;
        }
    };
    let err = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() && err.contains("Operation not permitted") {
        println!("{t}: skipped the chroot run: not root");
        return;
    }
    assert!(out.status.success(), "journalctl in the glibc-only root failed: {err}");
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("systemd "), "{}", String::from_utf8_lossy(&out.stdout));
}
