//! TLS for the e2e tests: a CA made at run time (rcgen) with a server
//! certificate for `localhost` / `127.0.0.1`, and a small HTTP/1.1 server
//! over rustls on a free 127.0.0.1 port (one request per connection,
//! answered with `Connection: close`). It stands in for servers the
//! collector talks to over HTTPS: the Kubernetes API server and a
//! TLS-terminating proxy in front of an aggregator.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A CA and a server configuration with a certificate it signed.
pub struct TestCa {
    /// The CA certificate, PEM: what clients must trust.
    pub ca_pem: String,
    config: Arc<rustls::ServerConfig>,
}

impl TestCa {
    /// A fresh CA and a `localhost`/`127.0.0.1` server certificate.
    pub fn new() -> TestCa {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(DnType::CommonName, "cairn e2e test CA");
        ca_params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();

        let leaf_key = KeyPair::generate().unwrap();
        let mut leaf = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        leaf.distinguished_name.push(DnType::CommonName, "localhost");
        let cert = leaf.signed_by(&leaf_key, &ca).unwrap();

        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from(cert.der().to_vec())],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
            )
            .unwrap();
        TestCa { ca_pem: ca.pem(), config: Arc::new(config) }
    }
}

/// One HTTP request as the server read it.
#[derive(Debug, Clone)]
pub struct Request {
    /// `GET`, `POST`, …
    pub method: String,
    /// Path and query, as sent.
    pub target: String,
    /// Header names (lower-cased) and values.
    pub headers: Vec<(String, String)>,
    /// The body (by `Content-Length`).
    pub body: Vec<u8>,
}

impl Request {
    /// The first header named `name` (lower-case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// An HTTPS server answering each request with `handler(request)` (the
/// whole response: status line, headers, body), until dropped.
pub struct TlsServer {
    /// The port on 127.0.0.1.
    pub port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TlsServer {
    /// Starts serving with `ca`'s server certificate.
    pub fn start(ca: &TestCa, handler: impl Fn(&Request) -> Vec<u8> + Send + Sync + 'static) -> TlsServer {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let port = l.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let (s, config, handler) = (stop.clone(), ca.config.clone(), Arc::new(handler));
        let thread = std::thread::spawn(move || {
            let mut conns = Vec::new();
            while !s.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((c, _)) => {
                        let (config, handler) = (config.clone(), handler.clone());
                        conns.push(std::thread::spawn(move || serve_one(c, config, &*handler)));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
                conns.retain(|h: &std::thread::JoinHandle<()>| !h.is_finished());
            }
            for h in conns {
                let _ = h.join();
            }
        });
        TlsServer { port, stop, thread: Some(thread) }
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve_one(c: TcpStream, config: Arc<rustls::ServerConfig>, handler: &(dyn Fn(&Request) -> Vec<u8> + Sync)) {
    let _ = c.set_nonblocking(false);
    let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
    let Ok(conn) = rustls::ServerConnection::new(config) else { return };
    let mut tls = rustls::StreamOwned::new(conn, c);
    // A client that does not trust the CA aborts the handshake: no request.
    let Some(req) = read_request(&mut tls) else { return };
    let resp = handler(&req);
    let _ = tls.write_all(&resp);
    tls.conn.send_close_notify();
    let _ = tls.flush();
}

/// Reads one request (headers, then `Content-Length` bytes of body).
pub fn read_request(r: &mut impl Read) -> Option<Request> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match r.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(k) => buf.extend_from_slice(&chunk[..k]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let (method, target) = (first.next()?.to_string(), first.next()?.to_string());
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let len: usize = headers.iter().find(|(k, _)| k == "content-length").and_then(|(_, v)| v.parse().ok()).unwrap_or(0);
    let mut body = buf[head_end..].to_vec();
    while body.len() < len {
        match r.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(k) => body.extend_from_slice(&chunk[..k]),
        }
    }
    body.truncate(len);
    Some(Request { method, target, headers, body })
}

/// A `200 OK` response with a JSON body.
pub fn json_response(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Forwards `req` over plain HTTP to `upstream` (`host:port`) and returns
/// its whole response: a TLS-terminating proxy, one request at a time.
pub fn forward(req: &Request, upstream: &str) -> Vec<u8> {
    let Ok(mut up) = TcpStream::connect(upstream) else {
        return b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec();
    };
    let _ = up.set_read_timeout(Some(Duration::from_secs(30)));
    let mut head = format!("{} {} HTTP/1.1\r\n", req.method, req.target);
    for (k, v) in &req.headers {
        if k != "connection" {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
    }
    head.push_str("connection: close\r\n\r\n");
    let mut out = Vec::new();
    if up.write_all(head.as_bytes()).is_ok() && up.write_all(&req.body).is_ok() {
        let _ = up.read_to_end(&mut out);
    }
    out
}
