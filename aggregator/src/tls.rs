//! HTTPS for the HTTP API: rustls (with aws-lc-rs, as the collector's
//! client) behind axum, with the certificate reloaded when its files
//! change (`server.tls.cert_file` / `key_file`).
//!
//! - [`CertStore`] holds the current certificate and key and is the
//!   server's [`ResolvesServerCert`]: every handshake takes the current
//!   pair, so a reload affects new connections only. [`CertStore::watch`]
//!   looks at both files' modification time, size and inode every
//!   [`RELOAD_POLL`]; when either changed it loads the pair again. A pair
//!   that fails to load (unreadable, not PEM, key does not match the
//!   certificate — e.g. caught half-way through a renewal) keeps the old
//!   one in service and is logged; the next change is tried again.
//! - [`listen`] turns a TCP listener into an axum [`Listener`] of TLS
//!   streams. Handshakes run in their own tasks with a time limit, so a
//!   client that connects and says nothing holds up nobody else.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use axum::serve::Listener;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// How often the certificate files are checked for changes.
pub const RELOAD_POLL: Duration = Duration::from_secs(2);
/// Longest a TLS handshake may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A certificate or key could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The file holds no usable PEM of the expected kind.
    #[error("{path}: {reason}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The key is not usable with the certificate.
    #[error("{key} does not fit {cert}: {reason}")]
    Key {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What rustls said.
        reason: String,
    },
}

/// What identifies a version of a file without reading it.
type FileStamp = Option<(SystemTime, u64, u64)>;

fn stamp(p: &Path) -> FileStamp {
    let m = std::fs::metadata(p).ok()?;
    #[cfg(unix)]
    let ino = std::os::unix::fs::MetadataExt::ino(&m);
    #[cfg(not(unix))]
    let ino = 0;
    Some((m.modified().ok()?, m.len(), ino))
}

/// The server's certificate and key, reloaded when their files change.
#[derive(Debug)]
pub struct CertStore {
    cert_file: PathBuf,
    key_file: PathBuf,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
    /// Stamps of the files at the last load attempt.
    seen: Mutex<(FileStamp, FileStamp)>,
}

impl CertStore {
    /// Loads the pair; an error names the file and the problem.
    pub fn load(cert_file: &Path, key_file: &Path) -> Result<Arc<CertStore>, TlsError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let seen = (stamp(cert_file), stamp(key_file));
        let ck = read_pair(cert_file, key_file, &provider)?;
        Ok(Arc::new(CertStore {
            cert_file: cert_file.to_path_buf(),
            key_file: key_file.to_path_buf(),
            provider,
            current: RwLock::new(Arc::new(ck)),
            seen: Mutex::new(seen),
        }))
    }

    /// Loads the pair again if either file changed since the last attempt:
    /// `Ok(true)` when a new pair is in service, `Ok(false)` when nothing
    /// changed, `Err` when the new files do not load (the old pair stays).
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let now = (stamp(&self.cert_file), stamp(&self.key_file));
        {
            let Ok(mut seen) = self.seen.lock() else { return Ok(false) };
            if *seen == now {
                return Ok(false);
            }
            *seen = now;
        }
        let ck = read_pair(&self.cert_file, &self.key_file, &self.provider)?;
        if let Ok(mut cur) = self.current.write() {
            *cur = Arc::new(ck);
        }
        Ok(true)
    }

    /// A rustls server configuration answering with this store's pair
    /// (HTTP/1.1 over ALPN).
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let mut cfg = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Key {
                cert: self.cert_file.clone(),
                key: self.key_file.clone(),
                reason: e.to_string(),
            })?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(cfg))
    }

    /// Checks the files every [`RELOAD_POLL`] until `stop` turns true.
    pub async fn watch(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(RELOAD_POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            let me = self.clone();
            match tokio::task::spawn_blocking(move || me.reload_if_changed()).await {
                Ok(Ok(true)) => tracing::info!(cert = %self.cert_file.display(), "TLS certificate reloaded"),
                Ok(Ok(false)) => {}
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "TLS certificate reload failed; still serving the previous one")
                }
                Err(e) => tracing::error!(error = %e, "TLS certificate reload task failed"),
            }
        }
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|c| c.clone())
    }
}

fn read_pair(cert_file: &Path, key_file: &Path, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
    let read = |p: &Path| std::fs::read(p).map_err(|source| TlsError::Read { path: p.to_path_buf(), source });
    let cert_pem = read(cert_file)?;
    let key_pem = read(key_file)?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Pem { path: cert_file.to_path_buf(), reason: format!("bad PEM: {}", pem_error(&e)) })?;
    if certs.is_empty() {
        return Err(TlsError::Pem { path: cert_file.to_path_buf(), reason: "no CERTIFICATE in it".into() });
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::Pem {
        path: key_file.to_path_buf(),
        reason: format!("no usable private key (PKCS#8, PKCS#1 or SEC1 PEM): {}", pem_error(&e)),
    })?;
    CertifiedKey::from_der(certs, key, provider).map_err(|e| TlsError::Key {
        cert: cert_file.to_path_buf(),
        key: key_file.to_path_buf(),
        reason: e.to_string(),
    })
}

/// rustls-pki-types prints markers as byte arrays; say it in words.
fn pem_error(e: &rustls::pki_types::pem::Error) -> String {
    use rustls::pki_types::pem::Error as E;
    match e {
        E::MissingSectionEnd { end_marker } => {
            format!("no END {} line after its BEGIN line (truncated file?)", String::from_utf8_lossy(end_marker))
        }
        E::IllegalSectionStart { line } => format!("bad BEGIN line {:?}", String::from_utf8_lossy(line)),
        E::NoItemsFound => "nothing of the expected kind in it".to_string(),
        other => other.to_string(),
    }
}

/// TLS connections of a TCP listener, as axum's [`Listener`].
pub struct TlsListener {
    rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

/// Accepts TCP connections on `tcp` and completes their TLS handshakes in
/// the background; the listener yields the finished ones.
pub fn listen(tcp: TcpListener, config: Arc<rustls::ServerConfig>) -> io::Result<TlsListener> {
    let local = tcp.local_addr()?;
    let (tx, rx) = mpsc::channel(64);
    let acceptor = TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let (stream, addr) = tokio::select! {
                _ = tx.closed() => return,
                r = tcp.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of file descriptors and the like: wait, as axum does.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(s)) => {
                        let _ = tx.send((s, addr)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(client = %addr, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(client = %addr, "TLS handshake timed out"),
                }
            });
        }
    });
    Ok(TlsListener { rx, local })
}

impl Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(c) => c,
            // The accept task only ends once this receiver is gone.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(dir: &Path, name: &str) -> (PathBuf, PathBuf, Vec<u8>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap().self_signed(&key).unwrap();
        let (c, k) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k, cert.der().to_vec())
    }

    fn served(s: &CertStore) -> Vec<u8> {
        s.current.read().unwrap().cert[0].as_ref().to_vec()
    }

    #[test]
    fn load_reload_and_keep_old_on_failure() {
        let dir = tempfile::tempdir().unwrap();
        let (c1, k1, der1) = pair(dir.path(), "one");
        let (c2, k2, der2) = pair(dir.path(), "two");
        let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        std::fs::copy(&c1, &cert).unwrap();
        std::fs::copy(&k1, &key).unwrap();
        let s = CertStore::load(&cert, &key).unwrap();
        assert_eq!(served(&s), der1);
        assert!(!s.reload_if_changed().unwrap());
        // Half-way through a renewal: new certificate, old key.
        std::fs::rename(&c2, &cert).unwrap();
        let e = s.reload_if_changed().unwrap_err();
        assert!(matches!(e, TlsError::Key { .. }), "{e}");
        assert_eq!(served(&s), der1, "the old pair stays in service");
        // Not retried while nothing changes.
        assert!(!s.reload_if_changed().unwrap());
        std::fs::rename(&k2, &key).unwrap();
        assert!(s.reload_if_changed().unwrap());
        assert_eq!(served(&s), der2);
        // Garbage keeps the pair too.
        std::fs::write(dir.path().join("junk"), "not pem").unwrap();
        std::fs::rename(dir.path().join("junk"), &cert).unwrap();
        let e = s.reload_if_changed().unwrap_err().to_string();
        assert!(e.contains("tls.crt") && e.contains("no CERTIFICATE"), "{e}");
        assert_eq!(served(&s), der2);
    }

    #[test]
    fn load_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let (c, k, _) = pair(dir.path(), "one");
        let e = CertStore::load(&dir.path().join("missing.crt"), &k).unwrap_err().to_string();
        assert!(e.contains("missing.crt"), "{e}");
        let e = CertStore::load(&c, &c).unwrap_err().to_string();
        assert!(e.contains("one.crt") && e.contains("private key"), "{e}");
        assert!(CertStore::load(&c, &k).unwrap().server_config().is_ok());
    }
}
