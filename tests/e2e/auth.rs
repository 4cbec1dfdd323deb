//! `[auth]` and `[server.tls]` end to end: bearer tokens and basic-auth
//! users with roles and tenants (made by `cairn auth`), the websocket tail,
//! the CLI's and the collector's credentials, HTTPS with a certificate
//! replaced while running, and the refusal to serve a non-loopback address
//! without auth.

use std::io::Write;
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose};

use crate::harness::{Cairn, cairn_bin, now_ns, run_cli, stop_child};

/// Runs `cairn <args>` with `input` on stdin: (exit code, stdout, stderr).
fn run_with_stdin(args: &[&str], input: &str) -> (i32, String, String) {
    let mut child = Command::new(cairn_bin())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `cairn auth token`: (token, `sha256 = "…"` line).
fn new_token() -> (String, String) {
    let (code, out, err) = run_cli(&["auth", "token"]);
    assert_eq!(code, 0, "{err}");
    let mut lines = out.lines();
    let token = lines.next().unwrap().to_string();
    let line = lines.next().unwrap().to_string();
    assert!(token.starts_with("cairn_") && line.starts_with("sha256 = \""), "{out}");
    (token, line)
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

fn basic(user: &str, pass: &str) -> String {
    // RFC 7617 by hand: the harness has no base64 crate.
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let b = format!("{user}:{pass}").into_bytes();
    let mut s = String::new();
    for c in b.chunks(3) {
        let n =
            (u32::from(c[0]) << 16) | (u32::from(*c.get(1).unwrap_or(&0)) << 8) | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                s.push(char::from(A[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                s.push('=');
            }
        }
    }
    format!("Basic {s}")
}

fn push(c: &Cairn, auth: Option<&str>, tenant: Option<&str>, job: &str, line: &str) -> (u16, String) {
    let body = serde_json::json!({"streams": [{
        "stream": {"job": job},
        "values": [[(now_ns() - 1_000_000_000).to_string(), line]],
    }]});
    let mut h = vec![("Content-Type", "application/json")];
    if let Some(a) = auth {
        h.push(("Authorization", a));
    }
    if let Some(t) = tenant {
        h.push(("X-Scope-OrgID", t));
    }
    c.post_raw("/loki/api/v1/push", &h, serde_json::to_vec(&body).unwrap())
}

/// Lines of every stream visible to a query with these credentials.
fn read(c: &Cairn, auth: Option<&str>, tenant: Option<&str>) -> (u16, Vec<String>) {
    let start = (now_ns() - 3_600_000_000_000).to_string();
    let end = (now_ns() + 60_000_000_000).to_string();
    let mut h = Vec::new();
    if let Some(a) = auth {
        h.push(("Authorization", a));
    }
    if let Some(t) = tenant {
        h.push(("X-Scope-OrgID", t));
    }
    let (s, b) = c.get_with(
        "/loki/api/v1/query_range",
        &[("query", r#"{job=~".+"}"#), ("start", &start), ("end", &end), ("limit", "100")],
        &h,
    );
    if s != 200 {
        return (s, vec![b]);
    }
    let v: serde_json::Value = serde_json::from_str(&b).unwrap();
    let mut lines: Vec<String> = v["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["values"].as_array().unwrap().iter().map(|e| e[1].as_str().unwrap().to_string()))
        .collect();
    lines.sort();
    (s, lines)
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

struct Creds {
    reader: String,
    writer: String,
    admin: String,
    config: String,
}

/// Tokens from `cairn auth token` and `cairn auth hash`, a user from
/// `cairn auth hash --password`, and the `[auth]` section naming them.
fn creds() -> Creds {
    let (reader, reader_line) = new_token();
    let (writer, writer_line) = new_token();
    let admin = "an-admin-token-chosen-by-the-operator".to_string();
    let (code, admin_line, err) = run_with_stdin(&["auth", "hash"], &format!("{admin}\n"));
    assert_eq!(code, 0, "{err}");
    // echo -n an-admin-token-chosen-by-the-operator | sha256sum
    assert_eq!(admin_line.trim(), "sha256 = \"9655cc42350c9f68d1a68226e42d71abac67381be26f4075255f0e2d360a2775\"");
    let (code, pw_line, err) = run_with_stdin(&["auth", "hash", "--password"], "correct horse\n");
    assert_eq!(code, 0, "{err}");
    assert!(pw_line.starts_with("password_hash = \"$pbkdf2-sha256$i=600000$"), "{pw_line}");
    let config = format!(
        "[auth]\nenabled = true\n\n\
         [[auth.tokens]]\nname = \"reader\"\n{reader_line}\nrole = \"read\"\ntenants = [\"a\"]\n\n\
         [[auth.tokens]]\nname = \"writer\"\n{writer_line}\nrole = \"write\"\ntenants = [\"a\", \"b\"]\n\n\
         [[auth.tokens]]\nname = \"admin\"\n{}\nrole = \"admin\"\ntenants = [\"*\"]\n\n\
         [[auth.users]]\nusername = \"grafana\"\n{}\nrole = \"read\"\ntenants = [\"b\"]\n",
        admin_line.trim(),
        pw_line.trim()
    );
    Creds { reader, writer, admin, config }
}

#[test]
fn tokens_users_roles_and_tenants() {
    let dir = tempfile::tempdir().unwrap();
    let cr = creds();
    let cfg = dir.path().join("cairn.toml");
    std::fs::write(&cfg, &cr.config).unwrap();
    let c = Cairn::start(&["serve"], &dir.path().join("data"), &["--config", cfg.to_str().unwrap()]);
    assert!(c.banner.contains("auth:        on (3 tokens, 1 users"), "{}", c.banner);
    let (reader, writer, admin) = (bearer(&cr.reader), bearer(&cr.writer), bearer(&cr.admin));

    // Health needs nothing; everything else needs credentials.
    assert_eq!(c.get("/ready").0, 200);
    let r = c.client().get(format!("{}/loki/api/v1/labels", c.url)).send().unwrap();
    assert_eq!(r.status(), 401);
    let challenges: Vec<_> = r.headers().get_all("www-authenticate").iter().map(|v| v.to_str().unwrap()).collect();
    assert!(challenges.iter().any(|v| v.starts_with("Bearer realm=\"cairn\"")), "{challenges:?}");
    assert!(challenges.iter().any(|v| v.starts_with("Basic realm=\"cairn\"")), "{challenges:?}");
    let (s, b) = push(&c, None, None, "x", "anonymous");
    assert_eq!(s, 401, "{b}");
    assert!(b.contains("authentication required"), "{b}");
    assert_eq!(c.remote_write(&[(&[("__name__", "m")], vec![(1, 1.0)])]).0, 401);
    assert_eq!(c.get("/metrics").0, 401);
    assert_eq!(c.get("/api/v1/query?query=1").0, 401);
    assert_eq!(push(&c, Some("Bearer wrong-token"), None, "x", "wrong").0, 401);
    assert_eq!(read(&c, Some(&bearer("wrong-token")), None).0, 401);

    // The read-only token cannot push; the write token cannot read.
    let (s, b) = push(&c, Some(&reader), None, "x", "from reader");
    assert_eq!(s, 403, "{b}");
    assert!(b.contains("token \"reader\"") && b.contains("role read"), "{b}");
    let (s, b) = read(&c, Some(&writer), None);
    assert_eq!(s, 403, "{b:?}");

    // The write token pushes to its first tenant by default, or to another
    // of its tenants by X-Scope-OrgID, never to one it lacks.
    assert_eq!(push(&c, Some(&writer), None, "app", "line for a").0, 204);
    assert_eq!(push(&c, Some(&writer), Some("b"), "app", "line for b").0, 204);
    let (s, b) = push(&c, Some(&writer), Some("c"), "app", "line for c");
    assert_eq!(s, 403, "{b}");
    assert!(b.contains("may not use tenant \"c\""), "{b}");

    // Tenant mapping: the reader (tenant a) sees a's data only, and may not
    // ask for b's even by naming it.
    assert_eq!(read(&c, Some(&reader), None), (200, vec!["line for a".to_string()]));
    assert_eq!(read(&c, Some(&reader), Some("a")), (200, vec!["line for a".to_string()]));
    let (s, b) = read(&c, Some(&reader), Some("b"));
    assert_eq!(s, 403, "{b:?}");
    // Basic auth: grafana (tenant b), twice (the second from the cache).
    for _ in 0..2 {
        assert_eq!(read(&c, Some(&basic("grafana", "correct horse")), None), (200, vec!["line for b".to_string()]));
    }
    assert_eq!(read(&c, Some(&basic("grafana", "wrong horse")), None).0, 401);
    assert_eq!(read(&c, Some(&basic("nobody", "correct horse")), None).0, 401);
    // Admin: any tenant; without the header the default one (empty here).
    assert_eq!(read(&c, Some(&admin), Some("b")), (200, vec!["line for b".to_string()]));
    assert_eq!(read(&c, Some(&admin), None), (200, vec![]));
    let (s, m) = c.get_with("/metrics", &[], &[("Authorization", &admin)]);
    assert_eq!(s, 200);
    for reason in ["missing", "invalid", "forbidden"] {
        assert!(m.contains(&format!("cairn_http_auth_denied_total{{reason=\"{reason}\"}}")), "{reason}: {m}");
    }
    // Prometheus API too.
    assert_eq!(c.get_with("/api/v1/labels", &[], &[("Authorization", &reader)]).0, 200);
    assert_eq!(c.get_with("/api/v1/labels", &[], &[("Authorization", &writer)]).0, 403);

    // The websocket tail is authenticated like the rest.
    let ws = |auth: Option<&str>| {
        use tungstenite::client::IntoClientRequest;
        let url = format!("{}/loki/api/v1/tail?query=%7Bjob%3D%22app%22%7D", c.url.replacen("http", "ws", 1));
        let mut req = url.into_client_request().unwrap();
        if let Some(a) = auth {
            req.headers_mut().insert("authorization", a.parse().unwrap());
        }
        match tungstenite::connect(req) {
            Ok((mut s, _)) => {
                let _ = s.close(None);
                101
            }
            Err(tungstenite::Error::Http(r)) => r.status().as_u16(),
            Err(e) => panic!("tail: {e}"),
        }
    };
    assert_eq!(ws(None), 401);
    assert_eq!(ws(Some(&writer)), 403);
    assert_eq!(ws(Some(&reader)), 101);

    // The CLI sends --token / CAIRN_TOKEN as a bearer token.
    let query = |token: Option<&str>| {
        let mut cmd = Command::new(cairn_bin());
        cmd.args(["query", "--addr", &c.url, r#"{job="app"}"#, "--range", "1h"]).env_remove("CAIRN_TOKEN");
        if let Some(t) = token {
            cmd.env("CAIRN_TOKEN", t);
        }
        let out = cmd.stdin(Stdio::null()).output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = query(Some(&cr.reader));
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("line for a") && !out.contains("line for b"), "{out}");
    let (code, _, err) = query(None);
    assert_eq!(code, Some(2));
    assert!(err.contains("401") && err.contains("authentication required"), "{err}");
    let (code, out, err) =
        run_cli(&["query", "--addr", &c.url, "--token", &cr.admin, "--tenant", "b", r#"{job="app"}"#, "--range", "1h"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("line for b"), "{out}");

    // The collector pushes with collector.push.bearer_token_file.
    let logs = dir.path().join("logs");
    std::fs::create_dir(&logs).unwrap();
    std::fs::write(logs.join("app.log"), "collected one\ncollected two\n").unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{}\n", cr.writer)).unwrap();
    let ccfg = dir.path().join("collect.toml");
    std::fs::write(
        &ccfg,
        format!(
            "[collector]\npoll_interval = \"100ms\"\nbatch_wait = \"100ms\"\n[collector.node]\nenabled = false\n\
             [[collector.files]]\npaths = [\"{}/*.log\"]\nlabels = {{ job = \"collected\" }}\n\
             [collector.push]\nbearer_token_file = \"{}\"\n",
            logs.display(),
            token_file.display()
        ),
    )
    .unwrap();
    let collector = Command::new(cairn_bin())
        .args(["collect", "--push-url", &c.url, "--config"])
        .arg(&ccfg)
        .arg("--data-dir")
        .arg(dir.path().join("collector-state"))
        .env("RUST_LOG", "error")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the collector's lines in tenant a", || {
        read(&c, Some(&reader), None).1.iter().filter(|l| l.starts_with("collected")).count() == 2
    });
    assert!(stop_child(collector, "TERM", Duration::from_secs(10)).success());
    c.stop();
}

#[test]
fn public_metrics_is_open_and_the_rest_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let (_, line) = new_token();
    let cfg = dir.path().join("cairn.toml");
    std::fs::write(
        &cfg,
        format!("[auth]\nenabled = true\npublic_metrics = true\n[[auth.tokens]]\n{line}\nrole = \"read\"\n"),
    )
    .unwrap();
    let c = Cairn::start(&["serve"], &dir.path().join("data"), &["--config", cfg.to_str().unwrap()]);
    assert_eq!(c.get("/metrics").0, 200);
    assert_eq!(c.get("/loki/api/v1/labels").0, 401);
    c.stop();
}

#[test]
fn refuses_non_loopback_without_auth() {
    let dir = tempfile::tempdir().unwrap();
    for sub in ["serve", "up"] {
        let data = dir.path().join(sub);
        // Port 0 on 0.0.0.0: nothing is bound, the check comes first.
        let (code, _, err) = run_cli(&[sub, "--listen", "0.0.0.0:0", "--data-dir", data.to_str().unwrap()]);
        assert_eq!(code, 1, "{err}");
        assert!(
            err.contains("refusing to listen on 0.0.0.0:0 without authentication")
                && err.contains("--insecure")
                && err.contains("[auth]"),
            "{err}"
        );
        assert!(!data.exists(), "nothing is opened before the check");
    }
    // Credentials in the config while auth is off are refused too.
    let (_, line) = new_token();
    let cfg = dir.path().join("off.toml");
    std::fs::write(&cfg, format!("[[auth.tokens]]\n{line}\nrole = \"read\"\n")).unwrap();
    let (code, _, err) = run_cli(&["config", "check", cfg.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("auth.enabled = false"), "{err}");
}

#[test]
fn auth_hash_reads_stdin() {
    // echo -n abc | sha256sum
    let (code, out, _) = run_with_stdin(&["auth", "hash"], "abc");
    assert_eq!(code, 0);
    assert_eq!(out, "sha256 = \"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad\"\n");
    let (code, out2, err) = run_with_stdin(&["auth", "hash"], "abc\r\n");
    assert_eq!((code, out2), (0, out));
    assert!(err.contains("short"), "{err}");
    let (code, _, err) = run_with_stdin(&["auth", "hash"], "\n");
    assert_eq!(code, 1);
    assert!(err.contains("empty"), "{err}");
}

// ------------------------------------------------------------------ TLS

struct Leaf {
    cert_pem: String,
    key_pem: String,
    der: Vec<u8>,
}

fn ca() -> CertifiedIssuer<'static, KeyPair> {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, "cairn auth test CA");
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap()
}

fn leaf(ca: &CertifiedIssuer<'static, KeyPair>, cn: &str) -> Leaf {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    p.distinguished_name.push(DnType::CommonName, cn);
    let cert = p.signed_by(&key, ca).unwrap();
    Leaf { cert_pem: cert.pem(), key_pem: key.serialize_pem(), der: cert.der().to_vec() }
}

/// Replaces `path` atomically (write aside, rename), as cert-manager and
/// certbot do.
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The certificate a new TLS connection to `port` is served, verified
/// against `ca_der`.
fn served_cert(port: u16, ca_der: &[u8]) -> Vec<u8> {
    use rustls::pki_types::{CertificateDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(ca_der.to_vec())).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut conn = rustls::ClientConnection::new(Arc::new(cfg), ServerName::try_from("localhost").unwrap()).unwrap();
    let mut sock = TcpStream::connect(("127.0.0.1", port)).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    while conn.is_handshaking() {
        conn.complete_io(&mut sock).unwrap();
    }
    conn.peer_certificates().unwrap()[0].as_ref().to_vec()
}

#[test]
fn https_with_auth_and_certificate_reload() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca();
    let (one, two) = (leaf(&ca, "first"), leaf(&ca, "second"));
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&cert, &one.cert_pem).unwrap();
    std::fs::write(&key, &one.key_pem).unwrap();
    let (token, line) = new_token();
    let cfg = dir.path().join("cairn.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n[auth]\nenabled = true\n[[auth.tokens]]\n{line}\nrole = \"admin\"\n",
            cert.display(),
            key.display()
        ),
    )
    .unwrap();
    let http = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .tls_certs_merge(reqwest::Certificate::from_pem_bundle(ca.pem().as_bytes()).unwrap())
        .build()
        .unwrap();
    let c = Cairn::start_with_client(
        "127.0.0.1:0",
        &["serve"],
        &dir.path().join("data"),
        &["--config", cfg.to_str().unwrap()],
        http,
    );
    assert!(c.url.starts_with("https://127.0.0.1:"), "{}", c.banner);
    let port: u16 = c.url.rsplit(':').next().unwrap().parse().unwrap();

    // HTTPS with a token: push and read back.
    let auth = bearer(&token);
    assert_eq!(push(&c, Some(&auth), None, "tls", "over https").0, 204);
    assert_eq!(read(&c, Some(&auth), None), (200, vec!["over https".to_string()]));
    assert_eq!(read(&c, None, None).0, 401);
    // Plain HTTP to the HTTPS port gets no answer.
    let plain = reqwest::blocking::Client::new().get(format!("http://127.0.0.1:{port}/ready")).send();
    assert!(plain.map(|r| r.status() != 200).unwrap_or(true));

    // The CLI over HTTPS, trusting the CA with --ca-file: a query, and the
    // live tail over wss://.
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let ca_arg = ca_file.to_str().unwrap();
    let (code, out, err) = run_cli(&[
        "query",
        "--addr",
        &c.url,
        "--ca-file",
        ca_arg,
        "--token",
        &token,
        r#"{job="tls"}"#,
        "--range",
        "1h",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("over https"), "{out}");
    let (code, _, err) = run_cli(&["query", "--addr", &c.url, "--token", &token, r#"{job="tls"}"#, "--range", "1h"]);
    assert_eq!(code, 2, "a server certificate from an unknown CA is refused: {err}");
    let mut tail = Command::new(cairn_bin())
        .args(["tail", "--addr", &c.url, "--ca-file", ca_arg, "--token", &token, r#"{job="tls"}"#])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = tail.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for l in std::io::BufReader::new(stdout).lines() {
            let Ok(l) = l else { break };
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    let first = rx.recv_timeout(Duration::from_secs(30)).expect("cairn tail printed nothing over wss://");
    assert!(first.contains("over https"), "{first}");
    let _ = tail.kill();
    let _ = tail.wait();

    let ca_der = ca.der().to_vec();
    assert_eq!(served_cert(port, &ca_der), one.der);
    // A broken certificate file is not taken: the old pair keeps serving.
    replace(&cert, "-----BEGIN CERTIFICATE-----\nbroken\n");
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(served_cert(port, &ca_der), one.der);
    // A renewal (key, then certificate) is picked up by new connections.
    replace(&key, &two.key_pem);
    replace(&cert, &two.cert_pem);
    wait_for("the new certificate", || served_cert(port, &ca_der) == two.der);
    assert_eq!(read(&c, Some(&auth), None), (200, vec!["over https".to_string()]));
    c.stop();
}
