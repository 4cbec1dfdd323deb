//! The pods of this node, from the Kubernetes API (`[collector.kubernetes]`).
//!
//! - **Listing**: `GET <api>/api/v1/pods?fieldSelector=spec.nodeName=<node>&resourceVersion=0`
//!   every `refresh_interval` (and on demand, see [`PodIndex::request_refresh`]),
//!   with the pod's service account: `Authorization: Bearer <token_file>`
//!   (read again for every listing, as kubelet rotates projected tokens),
//!   the API server's certificate checked against `ca_file`.
//!   `resourceVersion=0` lets the API server answer from its watch cache,
//!   so a listing from every node costs it little. A failed listing keeps
//!   what the last one found.
//! - **Scrape targets** ([`pod_targets`]): running pods annotated
//!   `prometheus.io/scrape: "true"`, as the usual `kubernetes-pods`
//!   Prometheus job finds them: `prometheus.io/scheme` (`http`/`https`),
//!   `prometheus.io/path` (default `/metrics`), `prometheus.io/port` (else
//!   one target per declared TCP container port). Pods in phase `Pending`,
//!   `Succeeded`, `Failed` or `Completed`, or without an IP, are left out.
//!   Labels: `job`, `instance` (`<pod IP>:<port>`), `namespace`, `pod`,
//!   `container` (the container declaring the port; the only container if
//!   none does), `node`, plus the allow-listed pod labels.
//! - **Pod labels for logs** ([`PodIndex`]): the allow-listed pod labels of
//!   each pod, by UID (the UID is part of every pod log path; for a static
//!   pod, the `kubernetes.io/config.mirror` UID), published as
//!   an immutable snapshot with a generation number: the tailer looks at
//!   the generation once per poll and relabels its pod files only when it
//!   changed, so the per-line path never touches the index. Pods that
//!   disappear are kept for [`FORGET_AFTER`] so that the rest of their logs
//!   keeps its labels.
//!
//! Not done: the watch API (a listing every `refresh_interval` instead),
//! `prometheus.io/param_*` annotations, pods without declared ports and
//! without `prometheus.io/port` (Prometheus would scrape them on port 80).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::config::KubernetesConfig;
use crate::sink::error_chain;

/// How long the labels of a pod that is no longer listed are kept.
pub const FORGET_AFTER: Duration = Duration::from_secs(3600);

/// Largest pod list accepted from the API server.
const MAX_LIST_BYTES: u64 = 64 << 20;

/// Why the pods could not be listed.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    /// The client cannot be set up (no API URL, unreadable CA file, …).
    #[error("kubernetes: {0}")]
    Setup(String),
    /// Connection, TLS, timeout or transfer failure.
    #[error("GET {url}: {reason}")]
    Http {
        /// The request URL.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// The API server answered with another status than 200.
    #[error("GET {url}: HTTP {status}: {body}")]
    Status {
        /// The request URL.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The start of the answer (a Kubernetes `Status` object).
        body: String,
    },
    /// The answer is not a pod list.
    #[error("GET {url}: not a PodList: {reason}")]
    Decode {
        /// The request URL.
        url: String,
        /// What is wrong.
        reason: String,
    },
}

/// A `v1.PodList`, reduced to what the collector uses.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct PodList {
    /// `PodList`.
    pub kind: String,
    /// The pods.
    pub items: Vec<Pod>,
}

/// A `v1.Pod`, reduced to what the collector uses.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub struct Pod {
    /// Name, namespace, UID, labels and annotations.
    pub metadata: ObjectMeta,
    /// Node and containers.
    pub spec: PodSpec,
    /// Phase and IP.
    pub status: PodStatus,
}

/// `metadata` of a pod.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub struct ObjectMeta {
    /// Pod name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// UID (also in the pod's log directory name).
    pub uid: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Annotations.
    pub annotations: BTreeMap<String, String>,
}

/// `spec` of a pod.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct PodSpec {
    /// The node it is scheduled on.
    pub node_name: String,
    /// Its containers (init containers are not scraped).
    pub containers: Vec<Container>,
}

/// A container of a pod.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub struct Container {
    /// Container name.
    pub name: String,
    /// Declared ports.
    pub ports: Vec<ContainerPort>,
}

/// A declared container port.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ContainerPort {
    /// Port number.
    pub container_port: u32,
    /// `TCP` (the default when empty), `UDP` or `SCTP`.
    pub protocol: String,
    /// Port name.
    pub name: String,
}

/// `status` of a pod.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct PodStatus {
    /// `Pending`, `Running`, `Succeeded`, `Failed` or `Unknown`.
    pub phase: String,
    /// The pod's (primary) IP.
    #[serde(rename = "podIP")]
    pub pod_ip: String,
}

/// Decodes a `v1.PodList` JSON body.
pub fn decode_pod_list(body: &[u8]) -> Result<Vec<Pod>, String> {
    let list: PodList = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    if !list.kind.is_empty() && list.kind != "PodList" {
        return Err(format!("kind is {:?}", list.kind));
    }
    Ok(list.items)
}

/// Lists the pods of one node.
#[derive(Debug)]
pub struct KubeClient {
    client: reqwest::Client,
    url: String,
    token_file: PathBuf,
    timeout: Duration,
}

impl KubeClient {
    /// A client for the pods of `node`, from `cfg` (validated).
    pub fn new(cfg: &KubernetesConfig, node: &str) -> Result<KubeClient, KubeError> {
        let api = cfg.resolved_api_url().ok_or_else(|| {
            KubeError::Setup(
                "no API URL: set collector.kubernetes.api_url, or run in a pod (KUBERNETES_SERVICE_HOST is not set)"
                    .to_string(),
            )
        })?;
        crate::config::check_url(&api).map_err(KubeError::Setup)?;
        let mut url = reqwest::Url::parse(&format!("{api}/api/v1/pods"))
            .map_err(|e| KubeError::Setup(format!("API URL {api:?}: {e}")))?;
        url.query_pairs_mut()
            .append_pair("fieldSelector", &format!("spec.nodeName={node}"))
            .append_pair("resourceVersion", "0");
        let timeout = Duration::from_secs(30).min(cfg.refresh_interval.0.max(Duration::from_secs(5)));
        let mut b = reqwest::Client::builder()
            .user_agent(crate::sink::USER_AGENT)
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(5));
        if let Some(certs) = read_ca_file(&cfg.ca_file).map_err(KubeError::Setup)? {
            b = b.tls_certs_only(certs);
        }
        let client = b.build().map_err(|e| KubeError::Setup(format!("cannot build the HTTP client: {e}")))?;
        Ok(KubeClient { client, url: url.to_string(), token_file: cfg.token_file.clone(), timeout })
    }

    /// The listing URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Lists the node's pods.
    pub async fn list_pods(&self) -> Result<Vec<Pod>, KubeError> {
        let http = |reason: String| KubeError::Http { url: self.url.clone(), reason };
        let mut req = self.client.get(&self.url).timeout(self.timeout).header("Accept", "application/json");
        if let Some(token) = read_token(&self.token_file).map_err(http)? {
            req = req.bearer_auth(token);
        }
        let mut resp = req.send().await.map_err(|e| http(error_chain(&e)))?;
        let status = resp.status().as_u16();
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| http(error_chain(&e)))? {
            if body.len() as u64 + chunk.len() as u64 > MAX_LIST_BYTES {
                return Err(http(format!("pod list larger than {MAX_LIST_BYTES} bytes")));
            }
            body.extend_from_slice(&chunk);
        }
        if status != 200 {
            let text = String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned();
            return Err(KubeError::Status { url: self.url.clone(), status, body: text });
        }
        decode_pod_list(&body).map_err(|reason| KubeError::Decode { url: self.url.clone(), reason })
    }
}

/// The certificates of a PEM file; `None` when `path` is empty or missing.
pub(crate) fn read_ca_file(path: &Path) -> Result<Option<Vec<reqwest::Certificate>>, String> {
    if path.as_os_str().is_empty() {
        return Ok(None);
    }
    let pem = match std::fs::read(path) {
        Ok(p) => p,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::info!(path = %path.display(), "CA file not found; using the system's roots");
            return Ok(None);
        }
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificate in it", path.display()));
    }
    Ok(Some(certs))
}

/// The bearer token in `path` (trimmed); `None` when the file is missing
/// or empty.
fn read_token(path: &Path) -> Result<Option<String>, String> {
    if path.as_os_str().is_empty() {
        return Ok(None);
    }
    match std::fs::read_to_string(path) {
        Ok(t) => {
            let t = t.trim();
            if t.bytes().any(|b| !(0x20..0x7f).contains(&b)) {
                return Err(format!("{}: the token is not printable ASCII", path.display()));
            }
            Ok(Some(t.to_string()).filter(|t| !t.is_empty()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// A pod label name as a Prometheus label name: every character other than
/// `[A-Za-z0-9_]` becomes `_`, and a leading digit gets a `_` in front.
/// `None` for names that would be reserved (`__…`) or empty.
pub fn sanitize_label_name(name: &str) -> Option<String> {
    let mut out: String = name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect();
    if out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    (!out.is_empty() && !out.starts_with("__")).then_some(out)
}

/// The allow-listed labels of `pod`, renamed (see [`sanitize_label_name`])
/// and sorted by name.
pub fn allowed_pod_labels(pod: &Pod, allow: &[String]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for name in allow {
        let (Some(v), Some(n)) = (pod.metadata.labels.get(name), sanitize_label_name(name)) else { continue };
        if !out.iter().any(|(k, _)| *k == n) {
            out.push((n, v.clone()));
        }
    }
    out.sort();
    out
}

/// One pod endpoint to scrape.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodTarget {
    /// The scrape URL.
    pub url: String,
    /// Target labels (`job`, `instance`, `namespace`, `pod`, …), sorted.
    pub labels: Vec<(String, String)>,
}

/// Phases of pods that are not scraped (as the usual `kubernetes-pods` job).
const NOT_SCRAPED_PHASES: [&str; 4] = ["Pending", "Succeeded", "Failed", "Completed"];

/// The scrape targets among `pods` (see the module doc), sorted, without
/// duplicates.
pub fn pod_targets(pods: &[Pod], cfg: &KubernetesConfig, node: &str) -> Vec<PodTarget> {
    let mut out = Vec::new();
    for pod in pods {
        let ann = &pod.metadata.annotations;
        if ann.get("prometheus.io/scrape").map(String::as_str) != Some("true")
            || NOT_SCRAPED_PHASES.contains(&pod.status.phase.as_str())
            || pod.status.pod_ip.trim().is_empty()
        {
            continue;
        }
        let scheme = match ann.get("prometheus.io/scheme").map(|s| s.trim()) {
            Some("https") => "https",
            _ => "http",
        };
        let path = match ann.get("prometheus.io/path").map(|s| s.trim()).filter(|s| !s.is_empty()) {
            Some(p) if p.starts_with('/') => p.to_string(),
            Some(p) => format!("/{p}"),
            None => "/metrics".to_string(),
        };
        // (port, container)
        let mut endpoints: Vec<(u16, Option<&str>)> = Vec::new();
        match ann.get("prometheus.io/port").map(|s| s.trim()) {
            Some(p) => {
                let Ok(port) = p.parse::<u16>() else {
                    tracing::debug!(pod = %pod.metadata.name, port = %p, "prometheus.io/port is not a port number");
                    continue;
                };
                let declaring =
                    pod.spec.containers.iter().find(|c| c.ports.iter().any(|cp| cp.container_port == u32::from(port)));
                let container = match (declaring, pod.spec.containers.as_slice()) {
                    (Some(c), _) => Some(c.name.as_str()),
                    (None, [only]) => Some(only.name.as_str()),
                    (None, _) => None,
                };
                endpoints.push((port, container));
            }
            None => {
                for c in &pod.spec.containers {
                    for cp in &c.ports {
                        let tcp = cp.protocol.is_empty() || cp.protocol.eq_ignore_ascii_case("TCP");
                        if let (true, Ok(port)) = (tcp, u16::try_from(cp.container_port)) {
                            endpoints.push((port, Some(c.name.as_str())));
                        }
                    }
                }
            }
        }
        let ip = pod.status.pod_ip.trim();
        let host = if ip.contains(':') { format!("[{ip}]") } else { ip.to_string() };
        let extra = allowed_pod_labels(pod, &cfg.pod_labels);
        for (port, container) in endpoints {
            if port == 0 {
                continue;
            }
            let instance = format!("{host}:{port}");
            let mut labels: Vec<(String, String)> = vec![
                ("job".into(), cfg.job.clone()),
                ("instance".into(), instance.clone()),
                ("namespace".into(), pod.metadata.namespace.clone()),
                ("pod".into(), pod.metadata.name.clone()),
                (
                    "node".into(),
                    if pod.spec.node_name.is_empty() { node.to_string() } else { pod.spec.node_name.clone() },
                ),
            ];
            if let Some(c) = container {
                labels.push(("container".into(), c.to_string()));
            }
            for (k, v) in &extra {
                if !labels.iter().any(|(n, _)| n == k) {
                    labels.push((k.clone(), v.clone()));
                }
            }
            labels.retain(|(_, v)| !v.is_empty());
            labels.sort();
            out.push(PodTarget { url: format!("{scheme}://{instance}{path}"), labels });
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Extra labels of a pod, by name, sorted.
pub type PodLabels = Arc<Vec<(String, String)>>;

/// The allow-listed labels of this node's pods by UID, shared between the
/// discovery loop (writer) and the tailer (reader). See the module doc.
#[derive(Debug)]
pub struct PodIndex {
    allow: Vec<String>,
    generation: AtomicU64,
    inner: Mutex<IndexInner>,
    refresh: tokio::sync::Notify,
}

#[derive(Debug, Default)]
struct IndexInner {
    /// UID → (labels, last listed).
    pods: HashMap<String, (PodLabels, Instant)>,
    snapshot: Arc<HashMap<String, PodLabels>>,
}

impl PodIndex {
    /// An empty index keeping the pod labels named in `allow`.
    pub fn new(allow: &[String]) -> PodIndex {
        PodIndex {
            allow: allow.to_vec(),
            generation: AtomicU64::new(0),
            inner: Mutex::new(IndexInner::default()),
            refresh: tokio::sync::Notify::new(),
        }
    }

    /// Changes whenever the snapshot changes; 0 before the first listing.
    pub fn generation(&self) -> u64 {
        self.generation.load(Relaxed)
    }

    /// The labels of every known pod, by UID.
    pub fn snapshot(&self) -> Arc<HashMap<String, PodLabels>> {
        match self.inner.lock() {
            Ok(g) => g.snapshot.clone(),
            Err(p) => p.into_inner().snapshot.clone(),
        }
    }

    /// Asks the discovery loop for a listing now (a pod log of an unknown
    /// pod appeared). Cheap; callable from any thread.
    pub fn request_refresh(&self) {
        self.refresh.notify_one();
    }

    /// Resolves when [`PodIndex::request_refresh`] was called.
    pub(crate) async fn refresh_requested(&self) {
        self.refresh.notified().await;
    }

    /// Records a listing: pods listed now, pods gone for [`FORGET_AFTER`]
    /// forgotten. Bumps the generation if anything changed.
    pub fn update(&self, pods: &[Pod]) {
        let now = Instant::now();
        let mut g = match self.inner.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let mut changed = false;
        // A static pod's logs are under the UID kubelet gave it, which the
        // API shows as the mirror pod's `kubernetes.io/config.mirror`.
        let keys = pods.iter().flat_map(|p| {
            let mirror = p.metadata.annotations.get("kubernetes.io/config.mirror");
            std::iter::once((p, &p.metadata.uid)).chain(mirror.map(|m| (p, m)))
        });
        for (pod, uid) in keys {
            if uid.is_empty() {
                continue;
            }
            let labels = allowed_pod_labels(pod, &self.allow);
            match g.pods.get_mut(uid) {
                Some((old, seen)) => {
                    *seen = now;
                    if **old != labels {
                        *old = Arc::new(labels);
                        changed = true;
                    }
                }
                None => {
                    g.pods.insert(uid.clone(), (Arc::new(labels), now));
                    changed = true;
                }
            }
        }
        let before = g.pods.len();
        g.pods.retain(|_, (_, seen)| now.duration_since(*seen) < FORGET_AFTER);
        changed |= g.pods.len() != before;
        if changed || self.generation() == 0 {
            g.snapshot = Arc::new(g.pods.iter().map(|(k, (l, _))| (k.clone(), l.clone())).collect());
            self.generation.fetch_add(1, Relaxed);
        }
    }
}

/// The UID part of a kubelet pod log directory name,
/// `<namespace>_<pod>_<uid>`.
pub fn uid_of_pod_dir(dir: &str) -> Option<&str> {
    let mut it = dir.splitn(3, '_');
    match (it.next(), it.next(), it.next()) {
        (Some(_), Some(_), Some(uid)) if !uid.is_empty() => Some(uid),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `PodList` as the API server returns it (fields beyond those used
    /// are kept to check that they are ignored).
    pub(crate) const POD_LIST: &str = include_str!("../tests/data/podlist.json");

    fn cfg() -> KubernetesConfig {
        KubernetesConfig { pod_labels: vec!["app".into(), "app.kubernetes.io/name".into()], ..Default::default() }
    }

    #[test]
    fn decodes_a_real_pod_list() {
        let pods = decode_pod_list(POD_LIST.as_bytes()).unwrap();
        assert_eq!(pods.len(), 4);
        assert_eq!(pods[0].metadata.namespace, "shop");
        assert_eq!(pods[0].status.pod_ip, "10.42.0.17");
        assert_eq!(pods[0].spec.containers[0].ports[0].container_port, 9102);
        assert!(decode_pod_list(br#"{"kind":"Status","status":"Failure"}"#).is_err());
        assert!(decode_pod_list(b"[1,2]").is_err());
    }

    #[test]
    fn targets_follow_the_annotations() {
        let pods = decode_pod_list(POD_LIST.as_bytes()).unwrap();
        let t = pod_targets(&pods, &cfg(), "node-1");
        let shown: Vec<String> = t
            .iter()
            .map(|t| {
                let l: Vec<String> = t.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                format!("{} {}", t.url, l.join(","))
            })
            .collect();
        assert_eq!(
            shown,
            [
                "http://10.42.0.17:9102/metrics app=web,app_kubernetes_io_name=shop-web,container=web,instance=10.42.0.17:9102,job=kubernetes-pods,namespace=shop,node=node-1,pod=web-7d4b9c-x2x8q",
                "https://10.42.0.18:8443/stats/prom container=sidecar,instance=10.42.0.18:8443,job=kubernetes-pods,namespace=shop,node=node-1,pod=api-5f6d7-abcde",
            ]
        );
    }

    #[test]
    fn no_port_annotation_scrapes_each_tcp_port_and_ipv6_is_bracketed() {
        let mut pods = decode_pod_list(POD_LIST.as_bytes()).unwrap();
        let mut p = pods.remove(0);
        p.metadata.annotations.remove("prometheus.io/port");
        p.status.pod_ip = "fd00::17".into();
        p.spec.containers[0].ports.push(ContainerPort {
            container_port: 53,
            protocol: "UDP".into(),
            name: "dns".into(),
        });
        p.spec.containers[0].ports.push(ContainerPort {
            container_port: 8080,
            protocol: String::new(),
            name: "http".into(),
        });
        let t = pod_targets(&[p], &cfg(), "node-1");
        let urls: Vec<&str> = t.iter().map(|t| t.url.as_str()).collect();
        assert_eq!(urls, ["http://[fd00::17]:8080/metrics", "http://[fd00::17]:9102/metrics"]);
    }

    /// Serves `responses` in order, one per connection, on 127.0.0.1;
    /// returns the base URL and the requests' heads.
    async fn serve(responses: Vec<(u16, String)>) -> (String, tokio::task::JoinHandle<Vec<String>>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let h = tokio::spawn(async move {
            let mut heads = Vec::new();
            for (status, body) in responses {
                let (mut c, _) = l.accept().await.unwrap();
                let mut req = Vec::new();
                let mut buf = [0u8; 4096];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = c.read(&mut buf).await.unwrap();
                    if n == 0 {
                        break;
                    }
                    req.extend_from_slice(&buf[..n]);
                }
                heads.push(String::from_utf8_lossy(&req).into_owned());
                let resp = format!(
                    "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                c.write_all(resp.as_bytes()).await.unwrap();
            }
            heads
        });
        (url, h)
    }

    #[tokio::test]
    async fn client_lists_with_token_and_reports_refusals() {
        let forbidden = r#"{"kind":"Status","apiVersion":"v1","status":"Failure","message":"pods is forbidden: User \"system:serviceaccount:cairn:default\" cannot list resource \"pods\"","reason":"Forbidden","code":403}"#;
        let (url, h) = serve(vec![(403, forbidden.to_string()), (200, POD_LIST.to_string())]).await;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), "tok-1\n").unwrap();
        let cfg = KubernetesConfig {
            enabled: true,
            api_url: url,
            token_file: dir.path().join("token"),
            ca_file: dir.path().join("missing-ca.crt"),
            ..Default::default()
        };
        let c = KubeClient::new(&cfg, "node-1").unwrap();
        match c.list_pods().await {
            Err(KubeError::Status { status: 403, body, .. }) => assert!(body.contains("forbidden"), "{body}"),
            other => panic!("{other:?}"),
        }
        // The token file is read again: a rotated token is used at once.
        std::fs::write(dir.path().join("token"), "tok-2\n").unwrap();
        assert_eq!(c.list_pods().await.unwrap().len(), 4);
        let heads = h.await.unwrap();
        assert!(heads[0].starts_with("GET /api/v1/pods?fieldSelector=spec.nodeName%3Dnode-1&resourceVersion=0 "));
        assert!(heads[0].to_ascii_lowercase().contains("authorization: bearer tok-1"), "{}", heads[0]);
        assert!(heads[1].to_ascii_lowercase().contains("authorization: bearer tok-2"), "{}", heads[1]);

        let unset = KubernetesConfig { enabled: true, ..Default::default() };
        if std::env::var_os("KUBERNETES_SERVICE_HOST").is_none() {
            assert!(matches!(KubeClient::new(&unset, "n"), Err(KubeError::Setup(_))));
        }
    }

    #[test]
    fn label_names_are_sanitized() {
        assert_eq!(sanitize_label_name("app.kubernetes.io/name").as_deref(), Some("app_kubernetes_io_name"));
        assert_eq!(sanitize_label_name("3rd").as_deref(), Some("_3rd"));
        assert_eq!(sanitize_label_name("__x"), None);
        assert_eq!(sanitize_label_name(""), None);
    }

    #[test]
    fn index_bumps_its_generation_only_on_change_and_keeps_gone_pods() {
        let pods = decode_pod_list(POD_LIST.as_bytes()).unwrap();
        let idx = PodIndex::new(&cfg().pod_labels);
        assert_eq!(idx.generation(), 0);
        idx.update(&pods);
        assert_eq!(idx.generation(), 1);
        let snap = idx.snapshot();
        let web = snap.get("0f3c6a44-1b2d-4e5f-8a9b-0c1d2e3f4a5b").unwrap();
        assert_eq!(
            **web,
            [("app".to_string(), "web".to_string()), ("app_kubernetes_io_name".into(), "shop-web".into())]
        );
        idx.update(&pods);
        assert_eq!(idx.generation(), 1, "same listing, same generation");
        idx.update(&pods[1..]);
        assert_eq!(idx.generation(), 1, "a pod gone from the listing is kept for a while");
        let mut changed = pods.clone();
        changed[0].metadata.labels.insert("app".into(), "web2".into());
        idx.update(&changed);
        assert_eq!(idx.generation(), 2);
        assert_eq!(uid_of_pod_dir("shop_web-7d4b9c-x2x8q_0f3c6a44-1b2d"), Some("0f3c6a44-1b2d"));
        assert_eq!(uid_of_pod_dir("odd"), None);

        // A static pod is found under its mirror UID too.
        let mut mirror = pods[0].clone();
        mirror.metadata.uid = "api-uid".into();
        mirror.metadata.annotations.insert("kubernetes.io/config.mirror".into(), "3e1f8d".into());
        idx.update(&[mirror]);
        assert_eq!(idx.snapshot().get("3e1f8d"), idx.snapshot().get("api-uid"));
        assert!(idx.snapshot().contains_key("3e1f8d"));
    }
}
