//! Cost of the `[auth]` check per request (`cairn_aggregator::auth`), the
//! work the middleware adds in front of every push and query:
//!
//! - a bearer token: SHA-256 of the token, a hash-map lookup on 8 bytes of
//!   the digest, a constant-time comparison of 32 bytes, role and tenant
//!   checks; with 100 configured tokens;
//! - a basic-auth header already verified once (SHA-256 of the header,
//!   cache lookup);
//! - a wrong bearer token;
//! - the first verification of a basic-auth password: PBKDF2-HMAC-SHA256
//!   with 600 000 iterations, paid once per distinct header.
//!
//! No peer: Loki and Prometheus have no built-in auth (they are put behind
//! a proxy). For scale, Cairn's ingest of one push request costs tens of
//! microseconds and more (`cargo bench --bench ingest_logs`).
//!
//! Run: `cargo bench --bench auth` (`AUTH_BENCH_N` checks per case,
//! default 1 000 000).

use std::time::Instant;

use cairn_aggregator::auth::{AuthConfig, Authenticator, Role, TokenConfig, UserConfig, hash_password, hash_token};

fn main() {
    let n: u32 = std::env::var("AUTH_BENCH_N").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let tokens: Vec<String> =
        (0..100).map(|i| format!("cairn_benchmark_token_{i:04}_abcdefghijklmnopqrstuvwxyz")).collect();
    let t0 = Instant::now();
    let password_hash = hash_password(b"correct horse battery staple").unwrap();
    let hash_time = t0.elapsed();
    let cfg = AuthConfig {
        enabled: true,
        public_metrics: false,
        tokens: tokens
            .iter()
            .enumerate()
            .map(|(i, t)| TokenConfig {
                name: format!("t{i}"),
                sha256: hash_token(t.as_bytes()),
                role: Role::Admin,
                tenants: vec!["fake".into(), "lab".into()],
            })
            .collect(),
        users: vec![UserConfig {
            username: "grafana".into(),
            password_hash,
            role: Role::Read,
            tenants: vec!["fake".into()],
        }],
    };
    let auth = Authenticator::new(&cfg).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let bearer = format!("Bearer {}", tokens[57]);
    // base64("grafana:correct horse battery staple")
    let basic = "Basic Z3JhZmFuYTpjb3JyZWN0IGhvcnNlIGJhdHRlcnkgc3RhcGxl";

    let t0 = Instant::now();
    let first = rt.block_on(auth.check("/api/v1/query", Some(basic.as_bytes()), None));
    let verify_time = t0.elapsed();
    assert_eq!(first, Ok(Some("fake".to_string())));

    println!("auth check per request ({n} each, {} tokens configured):", cfg.tokens.len());
    // (name, path, Authorization, X-Scope-OrgID, expect success)
    type Case<'a> = (&'a str, &'a str, &'a [u8], Option<&'a [u8]>, bool);
    let cases: [Case; 4] = [
        ("bearer token, push", "/loki/api/v1/push", bearer.as_bytes(), None, true),
        ("bearer token, X-Scope-OrgID", "/api/v1/query", bearer.as_bytes(), Some(b"lab"), true),
        ("basic auth, cached", "/api/v1/query", basic.as_bytes(), None, true),
        ("wrong bearer token", "/api/v1/query", b"Bearer not-a-configured-token-at-all-xxxxxxxx", None, false),
    ];
    for (name, path, authz, scope, ok) in cases {
        let t0 = Instant::now();
        rt.block_on(async {
            for _ in 0..n {
                let r = auth.check(std::hint::black_box(path), Some(std::hint::black_box(authz)), scope).await;
                assert_eq!(r.is_ok(), ok);
            }
        });
        let ns = t0.elapsed().as_nanos() as f64 / f64::from(n);
        println!("  {name:<30} {ns:>8.0} ns/check");
    }
    println!(
        "  {:<30} {:>8.1} ms (once per distinct header; hashing it: {:.1} ms)",
        "basic auth, first (PBKDF2)",
        verify_time.as_secs_f64() * 1e3,
        hash_time.as_secs_f64() * 1e3
    );
}
