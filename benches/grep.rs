//! `cairn grep --data-dir` against `zstdcat | rg` (issue 8): the PEERS.md
//! log workload (see `common/peers_logs.rs`) is pushed into a real `cairn
//! serve`, which is then stopped (heads flushed to blocks); the same lines,
//! in the same order, are written to one file compressed with `zstd` at the
//! store's flush level (`cairn_store::logs::ZSTD_LEVEL`). Then the rare
//! token of PEERS.md is searched for, each way, as a whole process:
//!
//! - `cairn grep -F ZQX9rareTOKEN '{job="bench"}' --data-dir DIR --only-line`
//!   over the whole span (opens the store read-only, replays its WAL, uses
//!   the content index);
//! - `zstdcat lines.zst | rg -F ZQX9rareTOKEN` (ripgrep from Debian).
//!
//! The same `cairn grep` against the restarted server (`--addr`) is timed
//! too, for reference.
//!
//! Both must print the same number of lines. Reports the first run and the
//! median of three more, and the ratio `zstdcat | rg` / `cairn grep`
//! (above 1: cairn grep is faster).
//!
//! Run: `apt-get install -y ripgrep zstd; cargo bench --bench grep`
//! (env `CAIRN_BENCH_REPLAYS`, default 20: ~1 M lines, ~250 MB raw).

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Instant;

use common::peers_logs::{self, RARE_TOKEN};
use common::{Server, dir_size, send_all_ordered, shared_dir};

/// Runs `cmd` `n` times; (seconds of each run, lines printed by the last).
fn time_runs(n: usize, mut cmd: impl FnMut() -> Command) -> (Vec<f64>, usize) {
    let mut times = Vec::new();
    let mut lines = 0;
    for _ in 0..n {
        let t = Instant::now();
        let out = cmd().stderr(Stdio::inherit()).output().expect("run");
        times.push(t.elapsed().as_secs_f64());
        assert!(out.status.code().is_some_and(|c| c <= 1), "{:?} failed: {}", cmd(), out.status);
        lines = out.stdout.split(|&b| b == b'\n').filter(|l| !l.is_empty()).count();
    }
    (times, lines)
}

fn first_and_median(t: &[f64]) -> (f64, f64) {
    let mut warm = t[1..].to_vec();
    warm.sort_by(|a, b| a.total_cmp(b));
    (t[0], warm[warm.len() / 2])
}

fn have(tool: &str) -> bool {
    Command::new(tool).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok()
}

fn main() {
    if !common::is_bench_run("grep") {
        return;
    }
    let files = peers_logs::files(&shared_dir().join("datasets/logs"));
    let replays: usize = std::env::var("CAIRN_BENCH_REPLAYS").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let raw_path = tmp.path().join("lines.txt");
    let zst_path = tmp.path().join("lines.txt.zst");

    let mut raw = std::io::BufWriter::new(std::fs::File::create(&raw_path).unwrap());
    let w = peers_logs::build(&files, replays, &mut |l| {
        raw.write_all(l).unwrap();
        raw.write_all(b"\n").unwrap();
    });
    raw.flush().unwrap();
    drop(raw);
    println!(
        "grep: {} lines, {:.1} MB raw ({} files x {replays} replays), {} rare-token lines expected",
        w.lines,
        w.raw_bytes as f64 / 1e6,
        files.len(),
        w.lines / 200_000
    );

    let server = Server::start(&data);
    let t = Instant::now();
    send_all_ordered(
        &server.client,
        &format!("{}/loki/api/v1/push", server.url),
        &[("Content-Type", "application/x-protobuf")],
        w.requests,
        &w.streams,
        4,
    );
    println!("grep: loaded in {:.1}s", t.elapsed().as_secs_f64());
    server.stop();

    let (from, to) = ((w.span_start / 1_000_000_000).to_string(), (w.now_ns / 1_000_000_000 + 1).to_string());
    let bin = env!("CARGO_BIN_EXE_cairn");
    let (cairn_t, cairn_n) = time_runs(4, || {
        let mut c = Command::new(bin);
        c.args(["grep", "-F", RARE_TOKEN, r#"{job="bench"}"#, "--only-line", "--no-progress", "--from", &from])
            .args(["--to", &to, "--data-dir"])
            .arg(&data);
        c
    });
    let (cf, cw) = first_and_median(&cairn_t);
    // The same search against the restarted server, over HTTP.
    let server = Server::start(&data);
    let (http_t, http_n) =
        time_runs(4, || {
            let mut c = Command::new(bin);
            c.args(["grep", "-F", RARE_TOKEN, r#"{job="bench"}"#, "--only-line", "--no-progress", "--from", &from])
                .args(["--to", &to, "--addr", &server.url]);
            c
        });
    server.stop();
    let (hf, hw) = first_and_median(&http_t);
    println!("{:<48} {:>10} {:>10} {:>8}", "search for the rare token (seconds)", "first", "warm", "lines");
    println!("{:<48} {:>10.3} {:>10.3} {:>8}", "cairn grep -F --data-dir", cf, cw, cairn_n);
    println!("{:<48} {:>10.3} {:>10.3} {:>8}", "cairn grep -F --addr (server restarted)", hf, hw, http_n);
    println!("  data directory: {:.1} MB", dir_size(&data) as f64 / 1e6);
    assert_eq!(cairn_n, http_n, "offline and HTTP found different numbers of lines");

    if !(have("zstd") && have("rg")) {
        println!("zstdcat | rg: not run (apt-get install -y zstd ripgrep)");
        return;
    }
    let level = cairn_store::logs::ZSTD_LEVEL;
    let st = Command::new("zstd")
        .args([&format!("-{level}"), "-q", "-T1", "-o"])
        .arg(&zst_path)
        .arg(&raw_path)
        .status()
        .expect("zstd");
    assert!(st.success());
    std::fs::remove_file(&raw_path).unwrap();
    let pipeline = format!("set -o pipefail; zstdcat '{}' | rg -F {RARE_TOKEN}", zst_path.display());
    let (peer_t, peer_n) = time_runs(4, || {
        let mut c = Command::new("bash");
        c.args(["-c", &pipeline]);
        c
    });
    let (pf, pw) = first_and_median(&peer_t);
    println!("{:<48} {:>10.3} {:>10.3} {:>8}", format!("zstdcat | rg -F (zstd -{level})"), pf, pw, peer_n);
    println!("  zstd file: {:.1} MB", std::fs::metadata(&zst_path).map(|m| m.len()).unwrap_or(0) as f64 / 1e6);
    println!(
        "ratio zstdcat|rg / cairn grep: first {:.1}x, warm {:.1}x (above 1: cairn grep is faster)",
        pf / cf,
        pw / cw
    );
    assert_eq!(cairn_n, peer_n, "cairn grep and rg found different numbers of lines");
}
