//! End-to-end log ingest benchmark: replays `../shared/datasets/logs/` as
//! PEERS.md describes (188 streams, digit runs re-randomised per replay,
//! 24 h of timestamps) through Loki push (protobuf + snappy, ~1 MB of lines
//! per request, one stream per request, 4 concurrent senders) into a real
//! `cairn serve`, then
//! reports lines/s, MB/s, server CPU seconds per GB, peak RSS and disk per
//! raw byte, next to the Loki and VictoriaLogs figures measured on this
//! machine kind (`../shared/PEERS.md`; neither peer is installable here).
//!
//! Run: `cargo bench --bench ingest_logs` (env `CAIRN_BENCH_REPLAYS`, default
//! 3; `CAIRN_BENCH_STREAMS_PER_FILE`, default 4; `CAIRN_BENCH_EXTRA_LABELS`,
//! default 0, labels added to each stream's 4).
//! The numbers are printed, never asserted.

mod common;

use std::path::PathBuf;
use std::time::Instant;

use common::{Server, dir_size, proc_usage, send_all, shared_dir};

use cairn_wire::proto::{EntryAdapter, PushRequest, StreamAdapter, Timestamp, snappy_compress};
use prost::Message;

fn main() {
    if !common::is_bench_run("ingest_logs") {
        return;
    }
    let logs_dir = shared_dir().join("datasets/logs");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&logs_dir)
        .unwrap_or_else(|e| panic!("{}: {e} (set CAIRN_SHARED)", logs_dir.display()))
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    files.sort();
    let env = |k: &str, d: usize| std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d);
    let replays = env("CAIRN_BENCH_REPLAYS", 3);
    // PEERS.md: 4 streams per file, 4 labels per stream. More streams or
    // labels change the workload (and no longer match the peers' figures).
    let streams_per_file = env("CAIRN_BENCH_STREAMS_PER_FILE", 4).max(1);
    let extra_labels = env("CAIRN_BENCH_EXTRA_LABELS", 0);

    // With CAIRN_BENCH_DATA=DIR the data directory is kept (and DIR.span
    // records the time span); a later run with the same DIR skips ingest
    // and only runs the queries (for iterating on the read path).
    let keep = std::env::var_os("CAIRN_BENCH_DATA").map(PathBuf::from);
    let span_file = keep.as_ref().map(|d| {
        let mut p = d.clone().into_os_string();
        p.push(".span");
        PathBuf::from(p)
    });
    let reuse = span_file.as_ref().and_then(|f| std::fs::read_to_string(f).ok()).and_then(|s| {
        let mut it = s.split_whitespace().map(str::parse::<i64>);
        Some((it.next()?.ok()?, it.next()?.ok()?))
    });
    let tmp = tempfile::tempdir().unwrap();
    let data_path = keep.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    let (span_start, now_ns, ingest) = if let Some((a, b)) = reuse {
        println!("ingest_logs: reusing {} (queries only)", data_path.display());
        (a, b, None)
    } else {
        // The PEERS.md workload: each file split round-robin into 4 streams
        // (job, source, host=node-0..3, level), about half of the digit runs of
        // every line re-randomised on each replay (so repetition does not flatter
        // compression), timestamps spread evenly over the 24 h ending an hour ago,
        // ~1 MB of lines per request, one stream per request, sent in time order.
        let mut rng: u64 = 0x243f_6a88_85a3_08d3;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let contents: Vec<(String, Vec<Vec<u8>>)> = files
            .iter()
            .map(|f| {
                let text = std::fs::read(f).unwrap();
                let lines = text.split(|&b| b == b'\n').filter(|l| !l.is_empty()).map(<[u8]>::to_vec).collect();
                (f.file_name().unwrap().to_string_lossy().to_string(), lines)
            })
            .collect();
        let total_lines: usize = contents.iter().map(|c| c.1.len()).sum::<usize>() * replays;
        let now_ns = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as i64;
        let span_start = now_ns - 25 * 3_600_000_000_000;
        let step = (24 * 3_600_000_000_000i64) / total_lines.max(1) as i64;
        const LEVELS: [&str; 4] = ["info", "warn", "error", "debug"];
        // Per stream: pending entries; a request is cut at ~1 MB.
        let mut pending: std::collections::HashMap<(usize, usize), (Vec<EntryAdapter>, usize)> = Default::default();
        let mut requests: Vec<Vec<u8>> = Vec::new();
        let (mut lines, mut raw_bytes) = (0u64, 0u64);
        let mut i_global: i64 = 0;
        let encode = |fi: usize, k: usize, entries: Vec<EntryAdapter>, names: &[(String, Vec<Vec<u8>>)]| -> Vec<u8> {
            let extra: String = (0..extra_labels).map(|e| format!(r#", label_{e}="value-{}-{e}""#, k % 7)).collect();
            let req = PushRequest {
                streams: vec![StreamAdapter {
                    labels: format!(
                        r#"{{job="bench", source="{}", host="node-{k}", level="{}"{extra}}}"#,
                        names[fi].0,
                        LEVELS[k % 4]
                    ),
                    entries,
                }],
            };
            snappy_compress(&req.encode_to_vec())
        };
        for _ in 0..replays {
            // interleave files so requests go out roughly in time order
            let longest = contents.iter().map(|c| c.1.len()).max().unwrap_or(0);
            for li in 0..longest {
                for (fi, (_, flines)) in contents.iter().enumerate() {
                    let Some(line) = flines.get(li) else { continue };
                    let mut line = line.clone();
                    let mut j = 0;
                    while j < line.len() {
                        if line[j].is_ascii_digit() {
                            let start = j;
                            while j < line.len() && line[j].is_ascii_digit() {
                                j += 1;
                            }
                            if next() % 2 == 0 {
                                for d in &mut line[start..j] {
                                    *d = b'0' + (next() % 10) as u8;
                                }
                            }
                        } else {
                            j += 1;
                        }
                    }
                    if (i_global + 1) % 200_000 == 0 {
                        line.extend_from_slice(b" ZQX9rareTOKEN");
                    }
                    let k = li % streams_per_file;
                    let ts = span_start + i_global * step;
                    i_global += 1;
                    lines += 1;
                    raw_bytes += line.len() as u64;
                    let slot = pending.entry((fi, k)).or_default();
                    slot.1 += line.len();
                    slot.0.push(EntryAdapter {
                        timestamp: Some(Timestamp::from_ns(ts)),
                        line,
                        structured_metadata: vec![],
                    });
                    if slot.1 >= 1 << 20 {
                        let entries = std::mem::take(&mut slot.0);
                        slot.1 = 0;
                        requests.push(encode(fi, k, entries, &contents));
                    }
                }
            }
        }
        let mut rest: Vec<_> = pending.into_iter().filter(|(_, v)| !v.0.is_empty()).collect();
        rest.sort_by_key(|(key, _)| *key);
        for ((fi, k), (entries, _)) in rest {
            requests.push(encode(fi, k, entries, &contents));
        }

        let server = Server::start(&data_path);
        let pid = server.pid();
        let (cpu0, _) = proc_usage(pid);
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let tracer = common::trace_server(server.url.clone(), pid, stop.clone());
        let started = Instant::now();
        send_all(
            &server.client,
            &format!("{}/loki/api/v1/push", server.url),
            &[("Content-Type", "application/x-protobuf")],
            requests,
            4,
        );
        let wall = started.elapsed().as_secs_f64();
        let (cpu1, hwm) = proc_usage(pid);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = tracer {
            let _ = t.join();
        }
        server.stop();
        let disk = dir_size(&data_path);
        if let Some(f) = &span_file {
            std::fs::write(f, format!("{span_start} {now_ns}\n")).expect("write span file");
        }
        (span_start, now_ns, Some((lines, raw_bytes, wall, cpu1 - cpu0, hwm, disk)))
    };

    // Queries of PEERS.md over the whole 24 h, after a restart: "first" is
    // the first run, "warm" the median of two more.
    let server = Server::start(&data_path);
    let start_s = (span_start / 1_000_000_000).to_string();
    let end_s = (now_ns / 1_000_000_000).to_string();
    let first_file = files[0].file_name().unwrap_or_default().to_string_lossy().to_string();
    let one_stream = format!(r#"{{job="bench", source="{first_file}", host="node-0", level="info"}}"#);
    type Query<'a> = (&'a str, String, Vec<(&'a str, String)>);
    let queries: Vec<Query> = vec![
        ("rare token |=", r#"{job="bench"} |= "ZQX9rareTOKEN""#.into(), vec![("limit", "1000".into())]),
        (
            "regex |~, limit 100",
            r#"{job="bench"} |~ "(?i)exception|timed? ?out""#.into(),
            vec![("limit", "100".into())],
        ),
        (
            "sum by (level) count_over_time 1h",
            r#"sum by (level) (count_over_time({job="bench"}[1h]))"#.into(),
            vec![("step", "3600".into())],
        ),
        ("newest 1000 lines of one stream", one_stream, vec![("limit", "1000".into())]),
    ];
    let mut query_rows = Vec::new();
    for (name, q, extra) in &queries {
        let mut times = Vec::new();
        let mut summary = String::new();
        for _ in 0..3 {
            let mut params: Vec<(&str, String)> =
                vec![("query", q.clone()), ("start", start_s.clone()), ("end", end_s.clone())];
            params.extend(extra.iter().cloned());
            let t = Instant::now();
            let r = server
                .client
                .get(format!("{}/loki/api/v1/query_range", server.url))
                .query(&params)
                .send()
                .expect("query");
            let status = r.status();
            let body: serde_json::Value = r.json().unwrap_or_default();
            times.push(t.elapsed().as_secs_f64());
            let result = body["data"]["result"].as_array().cloned().unwrap_or_default();
            let n: usize = result.iter().map(|s| s["values"].as_array().map(Vec::len).unwrap_or(0)).sum();
            summary = format!("HTTP {status}, {} series/streams, {n} values", result.len());
        }
        let mut warm = [times[1], times[2]];
        warm.sort_by(|a, b| a.total_cmp(b));
        query_rows.push((name.to_string(), times[0], warm[0], summary));
    }
    server.stop();

    if let Some((lines, raw_bytes, wall, cpu, hwm, disk)) = ingest {
        let gb = raw_bytes as f64 / 1e9;
        println!(
            "ingest_logs: {lines} lines, {:.1} MB raw, {} files x {replays} replays",
            raw_bytes as f64 / 1e6,
            files.len()
        );
        println!("{:<44} {:>12} {:>12} {:>12}", "figure", "cairn", "VictoriaLogs", "Loki");
        println!(
            "{:<44} {:>12.0} {:>12} {:>12}",
            "lines/s (wall, client on same 2 cores)",
            lines as f64 / wall,
            "452000",
            "478000"
        );
        println!("{:<44} {:>12.1} {:>12} {:>12}", "MB/s of raw lines", raw_bytes as f64 / 1e6 / wall, "107", "113");
        println!("{:<44} {:>12.1} {:>12} {:>12}", "server CPU s per GB", cpu / gb, "16.5", "17.7");
        println!("{:<44} {:>12.0} {:>12} {:>12}", "peak RSS MB", hwm as f64 / 1e6, "697", "1217");
        println!(
            "{:<44} {:>12.3} {:>12} {:>12}",
            "disk after flush + stop / raw bytes",
            disk as f64 / raw_bytes as f64,
            "0.180",
            "0.249"
        );
    }
    println!("{:<44} {:>12} {:>12} {:>12}", "query (warm / first, seconds)", "cairn", "VictoriaLogs", "Loki");
    let peers = [
        ("0.016 / 0.041", "3.9 / 4.4"),
        ("0.47 warm", "6.8 warm"),
        ("0.043 warm", "9.2 warm"),
        ("0.108 warm", "0.023 warm"),
    ];
    for ((name, first, warm, summary), (vl, loki)) in query_rows.iter().zip(peers) {
        println!("{name:<44} {:>12} {vl:>12} {loki:>12}   ({summary})", format!("{warm:.3} / {first:.3}"));
    }
    println!("(peers: ../shared/PEERS.md, 100 replays = 5.26M lines; CAIRN_BENCH_REPLAYS=100 reproduces that size)");
}
