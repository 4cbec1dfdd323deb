//! Authentication and authorisation of HTTP requests: bearer tokens and
//! HTTP basic-auth users from `[auth]`, each mapped to a role and to the
//! tenants it may use (`docs/auth.md`).
//!
//! Contract:
//! - Off by default ([`AuthConfig::enabled`]); then every request is let
//!   through and the tenant is `X-Scope-OrgID`'s, as before.
//! - On: every request except `/ready` (and `/metrics` when
//!   `public_metrics`) carries `Authorization: Bearer <token>` or
//!   `Authorization: Basic …`. Missing or wrong credentials: 401 with
//!   `WWW-Authenticate`. A credential whose role does not allow the
//!   endpoint (push endpoints need `write`, everything else `read`;
//!   `admin` has both), or that asks for a tenant it is not granted in
//!   `X-Scope-OrgID`: 403 naming the credential and what it lacks.
//! - Tenant: `X-Scope-OrgID` when present (and granted), else the
//!   credential's first tenant. [`layer`] writes the resolved tenant into
//!   the request's `X-Scope-OrgID`, so every handler keeps resolving the
//!   tenant from that header alone.
//! - Nothing secret is in the config: tokens are stored as their SHA-256
//!   (tokens are long random strings, so a fast hash is enough: there is
//!   nothing to brute-force), passwords as salted PBKDF2-HMAC-SHA256 with
//!   600 000 iterations (OWASP's 2023 figure) — `cairn auth hash` makes
//!   both. The primitives come from aws-lc-rs, the crypto library rustls
//!   already links, so auth adds no crate of its own.
//! - Hot path: a bearer request costs one SHA-256 of the token and a
//!   hash-map lookup on the first 8 bytes of the digest, then a
//!   constant-time comparison of the full 32 bytes. A basic-auth header is
//!   verified with PBKDF2 once; afterwards the SHA-256 of the header finds
//!   it in a bounded cache the same way. PBKDF2 runs off the reactor, at
//!   most [`VERIFY_SLOTS`] at a time, so a flood of wrong passwords cannot
//!   take every core.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};

use aws_lc_rs::{constant_time, digest, pbkdf2, rand};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// PBKDF2 iterations of a new password hash.
pub const PBKDF2_ITERATIONS: u32 = 600_000;
/// Fewest PBKDF2 iterations a configured hash may use.
pub const PBKDF2_MIN_ITERATIONS: u32 = 10_000;
/// Salt bytes of a new password hash.
const SALT_LEN: usize = 16;
/// Derived key bytes of a new password hash.
const HASH_LEN: usize = 32;
/// PBKDF2 verifications running at once; more wait.
pub const VERIFY_SLOTS: usize = 2;
/// Verified basic-auth headers remembered; when full the cache is emptied.
const CACHE_MAX: usize = 4096;
/// The realm in `WWW-Authenticate`.
const REALM: &str = "cairn";
/// Paths that answer without credentials.
const ALWAYS_PUBLIC: &[&str] = &["/ready"];
/// Paths that write data: they need the `write` role.
const WRITE_PATHS: &[&str] = &["/api/v1/write", "/loki/api/v1/push"];

/// What a credential may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Queries, labels, series, tail, metadata, status: everything but push.
    Read,
    /// Push only (`/api/v1/write`, `/loki/api/v1/push`): for collectors.
    Write,
    /// Both.
    Admin,
}

impl Role {
    fn allows(self, need: Need) -> bool {
        matches!((self, need), (Role::Admin, _) | (Role::Read, Need::Read) | (Role::Write, Need::Write))
    }

    fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Write => "write",
            Role::Admin => "admin",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need {
    Read,
    Write,
}

fn default_tenants() -> Vec<String> {
    vec![cairn_wire::DEFAULT_TENANT.to_string()]
}

/// `[auth]`: who may use the HTTP API (`docs/auth.md`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Require credentials on every endpoint except `/ready` (and
    /// `/metrics` when `public_metrics`). Needs at least one token or user.
    pub enabled: bool,
    /// Serve `/metrics` (Cairn's own metrics) without credentials, for a
    /// scraper that cannot send any. Off: `/metrics` needs the `read` role.
    pub public_metrics: bool,
    /// `[[auth.tokens]]`: bearer tokens.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tokens: Vec<TokenConfig>,
    /// `[[auth.users]]`: HTTP basic-auth users.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<UserConfig>,
}

/// `[[auth.tokens]]`: one bearer token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// A name for errors and logs (not secret), e.g. `grafana`.
    #[serde(default)]
    pub name: String,
    /// SHA-256 of the token, 64 hex digits (`cairn auth hash`).
    pub sha256: String,
    /// `read`, `write` or `admin`.
    pub role: Role,
    /// Tenants it may use (`X-Scope-OrgID`); the first is used when the
    /// request names none. `["*"]`: any tenant (default `fake`).
    #[serde(default = "default_tenants")]
    pub tenants: Vec<String>,
}

/// `[[auth.users]]`: one basic-auth user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    /// The user name.
    pub username: String,
    /// `$pbkdf2-sha256$i=<iterations>$<salt>$<hash>` (`cairn auth hash --password`).
    pub password_hash: String,
    /// `read`, `write` or `admin`.
    pub role: Role,
    /// As for tokens.
    #[serde(default = "default_tenants")]
    pub tenants: Vec<String>,
}

/// An `[auth]` section that cannot work.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum AuthConfigError {
    /// `enabled` without anyone allowed in.
    #[error("auth.enabled = true but no [[auth.tokens]] or [[auth.users]] are configured: nobody could connect")]
    NoCredentials,
    /// Credentials configured while auth is off: they would protect nothing.
    #[error(
        "[[auth.tokens]] / [[auth.users]] are configured but auth.enabled = false, so they protect nothing; set auth.enabled = true (or remove them)"
    )]
    CredentialsWhileDisabled,
    /// One credential is wrong.
    #[error("{what}: {reason}")]
    Bad {
        /// `auth.tokens[2] ("grafana")`, `auth.users[0] ("bob")`.
        what: String,
        /// What is wrong.
        reason: String,
    },
}

impl AuthConfig {
    /// Checks the section; [`Authenticator::new`] accepts what passes.
    pub fn validate(&self) -> Result<(), AuthConfigError> {
        Authenticator::new(self).map(|_| ())
    }
}

/// Which tenants a credential may use.
#[derive(Debug, Clone, PartialEq)]
enum Grant {
    Any,
    List(Vec<String>),
}

/// A configured credential, as requests see it.
#[derive(Debug)]
struct Principal {
    /// `token "grafana"`, `user "bob"`.
    label: String,
    role: Role,
    grant: Grant,
}

impl Principal {
    fn default_tenant(&self) -> &str {
        match &self.grant {
            Grant::Any => cairn_wire::DEFAULT_TENANT,
            Grant::List(l) => l.first().map(String::as_str).unwrap_or(cairn_wire::DEFAULT_TENANT),
        }
    }

    fn may_use(&self, tenant: &str) -> bool {
        match &self.grant {
            Grant::Any => true,
            Grant::List(l) => l.iter().any(|t| t == tenant),
        }
    }
}

/// 32-byte digests found by their first 8 bytes, then compared in
/// constant time.
#[derive(Debug, Default)]
struct DigestMap {
    map: HashMap<u64, Vec<([u8; 32], usize)>>,
    len: usize,
}

impl DigestMap {
    fn key(d: &[u8; 32]) -> u64 {
        let mut k = [0u8; 8];
        k.copy_from_slice(&d[..8]);
        u64::from_le_bytes(k)
    }

    fn get(&self, d: &[u8; 32]) -> Option<usize> {
        let candidates = self.map.get(&Self::key(d))?;
        // Every candidate is compared in full, whether or not an earlier one matched.
        let mut found = None;
        for (stored, idx) in candidates {
            if constant_time::verify_slices_are_equal(stored, d).is_ok() {
                found = Some(*idx);
            }
        }
        found
    }

    /// Inserts; false when the digest is there already.
    fn insert(&mut self, d: [u8; 32], idx: usize) -> bool {
        if self.get(&d).is_some() {
            return false;
        }
        self.map.entry(Self::key(&d)).or_default().push((d, idx));
        self.len += 1;
        true
    }

    fn clear(&mut self) {
        self.map.clear();
        self.len = 0;
    }
}

/// A parsed `$pbkdf2-sha256$i=N$salt$hash` password hash.
#[derive(Debug, Clone, PartialEq)]
pub struct PasswordHash {
    iterations: NonZeroU32,
    salt: Vec<u8>,
    hash: Vec<u8>,
}

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD_NO_PAD;

impl PasswordHash {
    /// Parses the PHC-style string (`$pbkdf2-sha256$i=600000$<salt>$<hash>`,
    /// unpadded standard base64; `i=N,l=32` is accepted too, as the
    /// RustCrypto `pbkdf2` crate writes it).
    pub fn parse(s: &str) -> Result<PasswordHash, String> {
        let fields: Vec<&str> = s.trim().split('$').collect();
        let ["", "pbkdf2-sha256", params, salt, hash] = fields.as_slice() else {
            return Err(
                "expected \"$pbkdf2-sha256$i=<iterations>$<salt>$<hash>\" (make one with `cairn auth hash --password`)"
                    .into(),
            );
        };
        let mut iterations = None;
        for p in params.split(',') {
            match p.split_once('=') {
                Some(("i", n)) => iterations = n.parse::<u32>().ok(),
                Some(("l", _)) => {}
                _ => return Err(format!("unknown parameter {p:?} (expected i=<iterations>)")),
            }
        }
        let iterations = iterations.ok_or("missing or invalid i=<iterations>")?;
        if iterations < PBKDF2_MIN_ITERATIONS {
            return Err(format!("{iterations} iterations is too few (at least {PBKDF2_MIN_ITERATIONS})"));
        }
        let salt = B64.decode(salt.trim_end_matches('=')).map_err(|e| format!("salt is not base64: {e}"))?;
        let hash = B64.decode(hash.trim_end_matches('=')).map_err(|e| format!("hash is not base64: {e}"))?;
        if salt.len() < 8 {
            return Err("salt shorter than 8 bytes".into());
        }
        if !(16..=64).contains(&hash.len()) {
            return Err(format!("hash of {} bytes (expected 16 to 64)", hash.len()));
        }
        let iterations = NonZeroU32::new(iterations).ok_or("zero iterations")?;
        Ok(PasswordHash { iterations, salt, hash })
    }

    /// Whether `password` matches (constant-time comparison). Slow on
    /// purpose: run it off the reactor.
    pub fn verify(&self, password: &[u8]) -> bool {
        pbkdf2::verify(pbkdf2::PBKDF2_HMAC_SHA256, self.iterations, &self.salt, password, &self.hash).is_ok()
    }
}

/// Hashes a new password with a random salt: the `password_hash` value.
pub fn hash_password(password: &[u8]) -> Result<String, String> {
    hash_password_with(password, PBKDF2_ITERATIONS)
}

/// [`hash_password`] with a given iteration count (at least
/// [`PBKDF2_MIN_ITERATIONS`]).
pub fn hash_password_with(password: &[u8], iterations: u32) -> Result<String, String> {
    let n = NonZeroU32::new(iterations.max(PBKDF2_MIN_ITERATIONS)).ok_or("zero iterations")?;
    let mut salt = [0u8; SALT_LEN];
    rand::fill(&mut salt).map_err(|_| "the system random number generator failed".to_string())?;
    let mut out = [0u8; HASH_LEN];
    pbkdf2::derive(pbkdf2::PBKDF2_HMAC_SHA256, n, &salt, password, &mut out);
    Ok(format!("$pbkdf2-sha256$i={n}${}${}", B64.encode(salt), B64.encode(out)))
}

/// SHA-256 of a token, as 64 lower-case hex digits: the `sha256` value.
pub fn hash_token(token: &[u8]) -> String {
    let d = sha256(token);
    let mut s = String::with_capacity(64);
    for b in d {
        s.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
        s.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
    }
    s
}

/// A new random bearer token: `cairn_` and 43 URL-safe base64 characters
/// (256 bits).
pub fn generate_token() -> Result<String, String> {
    let mut b = [0u8; 32];
    rand::fill(&mut b).map_err(|_| "the system random number generator failed".to_string())?;
    Ok(format!("cairn_{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)))
}

fn sha256(data: &[u8]) -> [u8; 32] {
    let d = digest::digest(&digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

fn parse_hex32(s: &str) -> Option<[u8; 32]> {
    let s = s.trim().as_bytes();
    if s.len() != 64 {
        return None;
    }
    let nib = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = nib(s[2 * i])? << 4 | nib(s[2 * i + 1])?;
    }
    Some(out)
}

fn grant_of(tenants: &[String]) -> Result<Grant, String> {
    if tenants.is_empty() {
        return Err("tenants is empty (list the tenants it may use, or [\"*\"] for any)".into());
    }
    if tenants.iter().any(|t| t == "*") {
        if tenants.len() > 1 {
            return Err("\"*\" (any tenant) must be the only entry of tenants".into());
        }
        return Ok(Grant::Any);
    }
    for t in tenants {
        if !crate::http::valid_tenant_id(t) {
            return Err(format!("invalid tenant ID {t:?} (1 to 150 characters, no '|', not \".\" or \"..\")"));
        }
    }
    Ok(Grant::List(tenants.to_vec()))
}

/// The checker built from `[auth]`, shared by all requests.
#[derive(Debug)]
pub struct Authenticator {
    enabled: bool,
    public_metrics: bool,
    principals: Vec<Principal>,
    tokens: DigestMap,
    users: HashMap<String, (usize, PasswordHash)>,
    /// SHA-256 of verified basic-auth headers → principal.
    cache: Mutex<DigestMap>,
    verify_slots: tokio::sync::Semaphore,
    /// Verified when a user name is unknown, so a wrong name costs as much
    /// as a wrong password and names cannot be probed by timing.
    dummy: PasswordHash,
    /// `cairn_http_auth_denied_total`, by reason.
    denied: prometheus_client::metrics::family::Family<
        Vec<(&'static str, String)>,
        prometheus_client::metrics::counter::Counter,
    >,
}

/// Why a request was not let through.
#[derive(Debug, PartialEq)]
pub enum Denied {
    /// No credentials: 401.
    Missing,
    /// Malformed or wrong credentials: 401.
    Invalid(String),
    /// Valid credentials without the right: 403.
    Forbidden(String),
    /// Bad `X-Scope-OrgID`: 400.
    BadTenant(String),
}

impl Authenticator {
    /// Builds the checker; errors name the credential and the problem.
    pub fn new(cfg: &AuthConfig) -> Result<Authenticator, AuthConfigError> {
        let has_any = !cfg.tokens.is_empty() || !cfg.users.is_empty();
        if cfg.enabled && !has_any {
            return Err(AuthConfigError::NoCredentials);
        }
        if !cfg.enabled && has_any {
            return Err(AuthConfigError::CredentialsWhileDisabled);
        }
        let mut a = Authenticator {
            enabled: cfg.enabled,
            public_metrics: cfg.public_metrics,
            principals: Vec::new(),
            tokens: DigestMap::default(),
            users: HashMap::new(),
            cache: Mutex::new(DigestMap::default()),
            verify_slots: tokio::sync::Semaphore::new(VERIFY_SLOTS),
            dummy: PasswordHash {
                iterations: NonZeroU32::new(PBKDF2_ITERATIONS).unwrap_or(NonZeroU32::MIN),
                salt: vec![0; SALT_LEN],
                hash: vec![0; HASH_LEN],
            },
            denied: Default::default(),
        };
        for (i, t) in cfg.tokens.iter().enumerate() {
            let what = if t.name.is_empty() {
                format!("auth.tokens[{i}]")
            } else {
                format!("auth.tokens[{i}] ({:?})", t.name)
            };
            let bad = |reason: String| AuthConfigError::Bad { what: what.clone(), reason };
            let d = parse_hex32(&t.sha256).ok_or_else(|| {
                bad("sha256 must be 64 hex digits, the SHA-256 of the token (make it with `cairn auth hash`)".into())
            })?;
            let grant = grant_of(&t.tenants).map_err(bad)?;
            let label = if t.name.is_empty() { format!("token #{i}") } else { format!("token {:?}", t.name) };
            let idx = a.principals.len();
            a.principals.push(Principal { label, role: t.role, grant });
            if !a.tokens.insert(d, idx) {
                return Err(bad("the same token hash appears twice".into()));
            }
        }
        for (i, u) in cfg.users.iter().enumerate() {
            let what = format!("auth.users[{i}] ({:?})", u.username);
            let bad = |reason: String| AuthConfigError::Bad { what: what.clone(), reason };
            if u.username.is_empty() || u.username.contains(':') {
                return Err(bad("username must be non-empty and contain no ':'".into()));
            }
            let h = PasswordHash::parse(&u.password_hash).map_err(|e| bad(format!("password_hash: {e}")))?;
            let grant = grant_of(&u.tenants).map_err(bad)?;
            let idx = a.principals.len();
            a.principals.push(Principal { label: format!("user {:?}", u.username), role: u.role, grant });
            if a.users.insert(u.username.clone(), (idx, h)).is_some() {
                return Err(bad("the username appears twice".into()));
            }
        }
        Ok(a)
    }

    /// Whether credentials are required.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Counts refusals in `metrics` (`cairn_http_auth_denied_total`).
    pub fn with_metrics(mut self, metrics: &crate::selfmetrics::SelfMetrics) -> Authenticator {
        self.denied = metrics.auth_denied.clone();
        self
    }

    fn is_public(&self, path: &str) -> bool {
        ALWAYS_PUBLIC.contains(&path) || (self.public_metrics && path == "/metrics")
    }

    /// Finds the credential of an `Authorization` header value.
    async fn identify(&self, authz: &[u8]) -> Result<usize, Denied> {
        let invalid = |m: &str| Denied::Invalid(m.to_string());
        let (scheme, rest) = match authz.iter().position(|&b| b == b' ') {
            Some(i) => (&authz[..i], trim_ascii(&authz[i + 1..])),
            None => (authz, &b""[..]),
        };
        if scheme.eq_ignore_ascii_case(b"bearer") {
            if rest.is_empty() {
                return Err(invalid("empty bearer token"));
            }
            return self.tokens.get(&sha256(rest)).ok_or_else(|| invalid("invalid bearer token"));
        }
        if !scheme.eq_ignore_ascii_case(b"basic") {
            return Err(invalid("unsupported Authorization scheme (use Bearer or Basic)"));
        }
        let key = sha256(authz);
        if let Some(idx) = self.cache.lock().ok().and_then(|c| c.get(&key)) {
            return Ok(idx);
        }
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .map_err(|_| invalid("basic credentials are not base64"))?;
        let Some(colon) = decoded.iter().position(|&b| b == b':') else {
            return Err(invalid("basic credentials lack the ':' between user and password"));
        };
        let (user, password) = (&decoded[..colon], decoded[colon + 1..].to_vec());
        let found = std::str::from_utf8(user).ok().and_then(|u| self.users.get(u));
        let (idx, hash) = match found {
            Some((idx, h)) => (Some(*idx), h.clone()),
            None => (None, self.dummy.clone()),
        };
        let ok = {
            let _slot = self.verify_slots.acquire().await.map_err(|_| invalid("shutting down"))?;
            tokio::task::spawn_blocking(move || hash.verify(&password)).await.unwrap_or(false)
        };
        match (ok, idx) {
            (true, Some(idx)) => {
                if let Ok(mut c) = self.cache.lock() {
                    if c.len >= CACHE_MAX {
                        c.clear();
                    }
                    c.insert(key, idx);
                }
                Ok(idx)
            }
            _ => Err(invalid("invalid user name or password")),
        }
    }

    /// Decides a request: `Ok(Some(tenant))` to let it through as that
    /// tenant, `Ok(None)` to let it through untouched (auth off or a public
    /// path).
    pub async fn check(
        &self,
        path: &str,
        authz: Option<&[u8]>,
        scope: Option<&[u8]>,
    ) -> Result<Option<String>, Denied> {
        if !self.enabled || self.is_public(path) {
            return Ok(None);
        }
        let authz = authz.ok_or(Denied::Missing)?;
        let p = &self.principals[self.identify(authz).await?];
        let need = if WRITE_PATHS.contains(&path) { Need::Write } else { Need::Read };
        if !p.role.allows(need) {
            let (verb, needs) = match need {
                Need::Write => ("write (push)", "write or admin"),
                Need::Read => ("read (query)", "read or admin"),
            };
            return Err(Denied::Forbidden(format!(
                "{} has role {} and may not {verb}: {path} needs role {needs}",
                p.label,
                p.role.as_str()
            )));
        }
        let tenant = match scope {
            None => p.default_tenant().to_string(),
            Some(v) => {
                let s = std::str::from_utf8(v)
                    .map_err(|_| Denied::BadTenant("X-Scope-OrgID is not valid ASCII".into()))?
                    .trim();
                if !crate::http::valid_tenant_id(s) {
                    return Err(Denied::BadTenant(format!("invalid tenant ID {s:?} in X-Scope-OrgID")));
                }
                if !p.may_use(s) {
                    return Err(Denied::Forbidden(format!(
                        "{} may not use tenant {s:?} (X-Scope-OrgID); it may use: {}",
                        p.label,
                        match &p.grant {
                            Grant::Any => "any".to_string(),
                            Grant::List(l) => l.join(", "),
                        }
                    )));
                }
                s.to_string()
            }
        };
        Ok(Some(tenant))
    }
}

fn trim_ascii(b: &[u8]) -> &[u8] {
    b.trim_ascii()
}

/// Wraps `router` so every request passes [`Authenticator::check`]; with
/// auth off the router is returned as is.
pub fn layer(router: axum::Router, auth: Arc<Authenticator>) -> axum::Router {
    if !auth.enabled() {
        return router;
    }
    router.layer(axum::middleware::from_fn_with_state(auth, middleware))
}

async fn middleware(State(auth): State<Arc<Authenticator>>, mut req: Request, next: Next) -> Response {
    let res = {
        let h = req.headers();
        auth.check(
            req.uri().path(),
            h.get(header::AUTHORIZATION).map(HeaderValue::as_bytes),
            h.get("x-scope-orgid").map(HeaderValue::as_bytes),
        )
        .await
    };
    match res {
        Ok(None) => next.run(req).await,
        Ok(Some(tenant)) => {
            match HeaderValue::from_str(&tenant) {
                Ok(v) => {
                    req.headers_mut().insert("x-scope-orgid", v);
                }
                Err(_) => return super::http::text_error(StatusCode::BAD_REQUEST, "invalid tenant ID"),
            }
            next.run(req).await
        }
        Err(d) => {
            let reason = match &d {
                Denied::Missing => "missing",
                Denied::Invalid(_) => "invalid",
                Denied::Forbidden(_) => "forbidden",
                Denied::BadTenant(_) => "bad_tenant",
            };
            auth.denied.get_or_create(&vec![("reason", reason.to_string())]).inc();
            denied_response(d)
        }
    }
}

fn denied_response(d: Denied) -> Response {
    let challenge = |error: Option<&str>| {
        let bearer = match error {
            Some(e) => format!("Bearer realm=\"{REALM}\", error=\"{e}\""),
            None => format!("Bearer realm=\"{REALM}\""),
        };
        [bearer, format!("Basic realm=\"{REALM}\", charset=\"UTF-8\"")]
    };
    let (status, msg, challenges) = match d {
        Denied::Missing => (
            StatusCode::UNAUTHORIZED,
            "authentication required: send \"Authorization: Bearer <token>\" or HTTP basic auth (see docs/auth.md)"
                .to_string(),
            Some(challenge(None)),
        ),
        Denied::Invalid(m) => (StatusCode::UNAUTHORIZED, m, Some(challenge(Some("invalid_token")))),
        Denied::Forbidden(m) => (StatusCode::FORBIDDEN, m, None),
        Denied::BadTenant(m) => (StatusCode::BAD_REQUEST, m, None),
    };
    let mut resp = super::http::text_error(status, msg);
    for c in challenges.into_iter().flatten() {
        if let Ok(v) = HeaderValue::from_str(&c) {
            resp.headers_mut().append(header::WWW_AUTHENTICATE, v);
        }
    }
    resp.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(name: &str, secret: &str, role: Role, tenants: &[&str]) -> TokenConfig {
        TokenConfig {
            name: name.into(),
            sha256: hash_token(secret.as_bytes()),
            role,
            tenants: tenants.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn basic(user: &str, pass: &str) -> Vec<u8> {
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))).into_bytes()
    }

    fn bearer(t: &str) -> Vec<u8> {
        format!("Bearer {t}").into_bytes()
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
    }

    #[test]
    fn token_hash_is_sha256_hex() {
        // echo -n abc | sha256sum
        assert_eq!(hash_token(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(parse_hex32(&hash_token(b"abc").to_uppercase()), Some(sha256(b"abc")));
        assert_eq!(parse_hex32("abc"), None);
        assert_eq!(parse_hex32(&"g".repeat(64)), None);
    }

    #[test]
    fn password_hash_round_trip_and_rejects_wrong() {
        let h = hash_password_with(b"hunter2", PBKDF2_MIN_ITERATIONS).unwrap();
        assert!(h.starts_with("$pbkdf2-sha256$i=10000$"), "{h}");
        let p = PasswordHash::parse(&h).unwrap();
        assert!(p.verify(b"hunter2"));
        assert!(!p.verify(b"hunter3"));
        assert!(!p.verify(b""));
        // Salted: the same password hashes differently.
        assert_ne!(h, hash_password_with(b"hunter2", PBKDF2_MIN_ITERATIONS).unwrap());
    }

    /// A hash made by another PBKDF2 implementation (Python:
    /// `hashlib.pbkdf2_hmac('sha256', b'password', b'saltsaltsaltsalt', 10000)`)
    /// verifies, in the RustCrypto `i=N,l=32` form too.
    #[test]
    fn password_hash_interoperates() {
        let salt = B64.encode(b"saltsaltsaltsalt");
        let hash = "/HBtt7Z/7p0CzRvSN1B+KXrKNskvRts1UWw61zKTFUo";
        let p = PasswordHash::parse(&format!("$pbkdf2-sha256$i=10000${salt}${hash}")).unwrap();
        assert!(p.verify(b"password"));
        let p = PasswordHash::parse(&format!("$pbkdf2-sha256$i=10000,l=32${salt}${hash}")).unwrap();
        assert!(p.verify(b"password"));
    }

    #[test]
    fn bad_password_hashes_are_refused_with_reason() {
        for (h, want) in [
            ("plain", "expected"),
            ("$pbkdf2-sha1$i=10000$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA", "expected"),
            ("$pbkdf2-sha256$i=10$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA", "too few"),
            ("$pbkdf2-sha256$n=10000$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA", "unknown parameter"),
            ("$pbkdf2-sha256$i=10000$***$aGFzaGhhc2hoYXNoaGFzaA", "salt"),
            ("$pbkdf2-sha256$i=10000$c2FsdHNhbHQ$aGFzaA", "bytes"),
        ] {
            let e = PasswordHash::parse(h).unwrap_err();
            assert!(e.contains(want), "{h}: {e}");
        }
    }

    #[test]
    fn config_validation() {
        assert_eq!(AuthConfig::default().validate(), Ok(()));
        let on = AuthConfig { enabled: true, ..Default::default() };
        assert_eq!(on.validate(), Err(AuthConfigError::NoCredentials));
        let off_with = AuthConfig { tokens: vec![token("a", "s", Role::Read, &["fake"])], ..Default::default() };
        assert_eq!(off_with.validate(), Err(AuthConfigError::CredentialsWhileDisabled));
        let check = |tokens: Vec<TokenConfig>, users: Vec<UserConfig>| {
            AuthConfig { enabled: true, tokens, users, ..Default::default() }.validate().map_err(|e| e.to_string())
        };
        assert_eq!(check(vec![token("a", "s", Role::Read, &["fake"])], vec![]), Ok(()));
        let e = check(vec![token("a", "s", Role::Read, &[])], vec![]).unwrap_err();
        assert!(e.contains("auth.tokens[0] (\"a\")") && e.contains("tenants is empty"), "{e}");
        let e = check(vec![token("a", "s", Role::Read, &["*", "x"])], vec![]).unwrap_err();
        assert!(e.contains("only entry"), "{e}");
        let e = check(vec![token("a", "s", Role::Read, &["a|b"])], vec![]).unwrap_err();
        assert!(e.contains("invalid tenant ID"), "{e}");
        let e =
            check(vec![token("a", "s", Role::Read, &["x"]), token("b", "s", Role::Write, &["y"])], vec![]).unwrap_err();
        assert!(e.contains("auth.tokens[1]") && e.contains("twice"), "{e}");
        let mut t = token("", "s", Role::Read, &["x"]);
        t.sha256 = "s3cret".into();
        let e = check(vec![t], vec![]).unwrap_err();
        assert!(e.contains("auth.tokens[0]:") && e.contains("64 hex digits"), "{e}");
        let user = |name: &str, hash: &str| UserConfig {
            username: name.into(),
            password_hash: hash.into(),
            role: Role::Read,
            tenants: default_tenants(),
        };
        let e = check(vec![], vec![user("bob", "hunter2")]).unwrap_err();
        assert!(e.contains("auth.users[0] (\"bob\")") && e.contains("password_hash"), "{e}");
        let h = hash_password_with(b"x", PBKDF2_MIN_ITERATIONS).unwrap();
        let e = check(vec![], vec![user("a:b", &h)]).unwrap_err();
        assert!(e.contains("':'"), "{e}");
        let e = check(vec![], vec![user("bob", &h), user("bob", &h)]).unwrap_err();
        assert!(e.contains("twice"), "{e}");
        assert_eq!(check(vec![], vec![user("bob", &h)]), Ok(()));
    }

    #[test]
    fn config_parses_from_toml() {
        let cfg: AuthConfig = toml::from_str(&format!(
            "enabled = true\n[[tokens]]\nname = \"grafana\"\nsha256 = \"{}\"\nrole = \"read\"\n\
             [[users]]\nusername = \"bob\"\npassword_hash = \"{}\"\nrole = \"admin\"\ntenants = [\"*\"]\n",
            hash_token(b"t"),
            hash_password_with(b"p", PBKDF2_MIN_ITERATIONS).unwrap()
        ))
        .unwrap();
        assert_eq!(cfg.tokens[0].tenants, ["fake"]);
        assert_eq!(cfg.users[0].role, Role::Admin);
        cfg.validate().unwrap();
        let e = toml::from_str::<AuthConfig>("[[tokens]]\nsha256 = \"x\"\nrole = \"root\"\n").unwrap_err();
        assert!(e.to_string().contains("root"), "{e}");
        let e = toml::from_str::<AuthConfig>("[[tokens]]\nsha256 = \"x\"\n").unwrap_err();
        assert!(e.to_string().contains("role"), "{e}");
    }

    fn authenticator() -> Authenticator {
        let h = hash_password_with(b"pw", PBKDF2_MIN_ITERATIONS).unwrap();
        Authenticator::new(&AuthConfig {
            enabled: true,
            public_metrics: false,
            tokens: vec![
                token("reader", "r-secret", Role::Read, &["a"]),
                token("writer", "w-secret", Role::Write, &["a", "b"]),
                token("root", "admin-secret", Role::Admin, &["*"]),
            ],
            users: vec![UserConfig {
                username: "bob".into(),
                password_hash: h,
                role: Role::Read,
                tenants: vec!["b".into()],
            }],
        })
        .unwrap()
    }

    #[test]
    fn roles_and_tenants() {
        let a = authenticator();
        let rt = rt();
        let check = |path: &str, authz: Option<&[u8]>, scope: Option<&str>| {
            rt.block_on(a.check(path, authz, scope.map(str::as_bytes)))
        };
        let q = "/loki/api/v1/query_range";
        let w = "/loki/api/v1/push";
        // Public and missing.
        assert_eq!(check("/ready", None, None), Ok(None));
        assert_eq!(check("/metrics", None, None), Err(Denied::Missing));
        assert_eq!(check(q, None, None), Err(Denied::Missing));
        assert!(matches!(check(q, Some(b"Bearer nope"), None), Err(Denied::Invalid(_))));
        assert!(matches!(check(q, Some(b"Bearer"), None), Err(Denied::Invalid(_))));
        assert!(matches!(check(q, Some(b"Digest x"), None), Err(Denied::Invalid(_))));
        // Reader: reads its tenant, not others, never writes.
        assert_eq!(check(q, Some(&bearer("r-secret")), None), Ok(Some("a".into())));
        assert_eq!(check(q, Some(b"bearer   r-secret "), None), Ok(Some("a".into())));
        assert_eq!(check(q, Some(&bearer("r-secret")), Some("a")), Ok(Some("a".into())));
        let e = check(q, Some(&bearer("r-secret")), Some("b")).unwrap_err();
        assert!(matches!(&e, Denied::Forbidden(m) if m.contains("token \"reader\"") && m.contains("\"b\"")), "{e:?}");
        let e = check(w, Some(&bearer("r-secret")), None).unwrap_err();
        assert!(matches!(&e, Denied::Forbidden(m) if m.contains("role read")), "{e:?}");
        assert!(matches!(check("/api/v1/write", Some(&bearer("r-secret")), None), Err(Denied::Forbidden(_))));
        // Writer: writes to its tenants, first by default, never reads.
        assert_eq!(check(w, Some(&bearer("w-secret")), None), Ok(Some("a".into())));
        assert_eq!(check(w, Some(&bearer("w-secret")), Some("b")), Ok(Some("b".into())));
        assert!(matches!(check(w, Some(&bearer("w-secret")), Some("c")), Err(Denied::Forbidden(_))));
        assert!(matches!(check(q, Some(&bearer("w-secret")), None), Err(Denied::Forbidden(_))));
        assert!(matches!(check("/loki/api/v1/tail", Some(&bearer("w-secret")), None), Err(Denied::Forbidden(_))));
        // Admin: anything, any tenant.
        assert_eq!(check(q, Some(&bearer("admin-secret")), None), Ok(Some("fake".into())));
        assert_eq!(check(w, Some(&bearer("admin-secret")), Some("zz")), Ok(Some("zz".into())));
        assert!(matches!(check(w, Some(&bearer("admin-secret")), Some("a|b")), Err(Denied::BadTenant(_))));
        // Basic auth, then from the cache.
        for _ in 0..2 {
            assert_eq!(check(q, Some(&basic("bob", "pw")), None), Ok(Some("b".into())));
        }
        assert_eq!(a.cache.lock().unwrap().len, 1);
        assert!(matches!(check(q, Some(&basic("bob", "pW")), None), Err(Denied::Invalid(_))));
        assert!(matches!(check(q, Some(&basic("alice", "pw")), None), Err(Denied::Invalid(_))));
        assert!(matches!(check(q, Some(b"Basic !!!"), None), Err(Denied::Invalid(_))));
        assert!(matches!(check(q, Some(b"Basic Ym9i"), None), Err(Denied::Invalid(_))));
        assert_eq!(a.cache.lock().unwrap().len, 1);
    }

    #[test]
    fn public_metrics_and_disabled() {
        let mut cfg = AuthConfig {
            enabled: true,
            public_metrics: true,
            tokens: vec![token("r", "s", Role::Read, &["a"])],
            users: vec![],
        };
        let rt = rt();
        let a = Authenticator::new(&cfg).unwrap();
        assert_eq!(rt.block_on(a.check("/metrics", None, None)), Ok(None));
        assert_eq!(rt.block_on(a.check("/api/v1/query", None, None)), Err(Denied::Missing));
        cfg.enabled = false;
        cfg.tokens.clear();
        let a = Authenticator::new(&cfg).unwrap();
        assert_eq!(rt.block_on(a.check("/api/v1/write", None, Some(b"x"))), Ok(None));
    }

    #[test]
    fn generated_tokens_are_distinct_and_url_safe() {
        let a = generate_token().unwrap();
        let b = generate_token().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), "cairn_".len() + 43);
        assert!(a.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-'), "{a}");
    }

    #[test]
    fn digest_map_finds_only_exact_digests() {
        let mut m = DigestMap::default();
        let d = sha256(b"x");
        assert!(m.insert(d, 7));
        assert!(!m.insert(d, 8));
        assert_eq!(m.get(&d), Some(7));
        let mut near = d;
        near[31] ^= 1; // same 8-byte key, different digest
        assert_eq!(m.get(&near), None);
        assert!(m.insert(near, 9));
        assert_eq!(m.get(&near), Some(9));
        assert_eq!(m.get(&d), Some(7));
    }
}
