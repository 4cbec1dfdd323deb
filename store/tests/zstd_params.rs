//! Measurement, not a test (ignored): compressed size and compression speed
//! of log chunk bodies under several zstd parameter sets, on the lines of a
//! real data directory (e.g. the one `cargo bench --bench ingest_logs` keeps
//! with `CAIRN_BENCH_DATA`). The figures behind the level choices in
//! `docs/format/logs.md`, "Choices and measurements".
//!
//! ```sh
//! CAIRN_ZSTD_SAMPLE=/path/to/data-dir CAIRN_ZSTD_SAMPLE_HOURS=1 \
//!   cargo test --release -p cairn-store --test zstd_params -- --ignored --nocapture
//! ```
//!
//! `CAIRN_ZSTD_UNITS=350000,1048576` (bytes of lines per chunk, the
//! default) and `CAIRN_ZSTD_SETS="level 1,level 9"` (names below) narrow
//! the run. Speeds are this thread's CPU time, so other load on the machine
//! counts less than in wall time, but still some.

use cairn_store::block::{Block, BlockKind};
use zstd::zstd_safe::{CParameter, Strategy};

/// Sets a compressor's parameters.
type Setup = Box<dyn Fn(&mut zstd::bulk::Compressor<'static>)>;

fn custom(
    c: &mut zstd::bulk::Compressor<'static>,
    strategy: Strategy,
    hash: u32,
    chain: u32,
    search: u32,
    min_match: u32,
    target: u32,
) {
    for p in [
        CParameter::Strategy(strategy),
        CParameter::HashLog(hash),
        CParameter::ChainLog(chain),
        CParameter::SearchLog(search),
        CParameter::MinMatch(min_match),
        CParameter::TargetLength(target),
    ] {
        c.set_parameter(p).expect("zstd parameter");
    }
}

#[test]
#[ignore = "measurement: needs CAIRN_ZSTD_SAMPLE=<data dir>"]
fn zstd_parameter_sets() {
    let Some(dir) = std::env::var_os("CAIRN_ZSTD_SAMPLE") else {
        eprintln!("CAIRN_ZSTD_SAMPLE not set: nothing measured");
        return;
    };
    let hours: i64 = std::env::var("CAIRN_ZSTD_SAMPLE_HOURS").ok().and_then(|v| v.parse().ok()).unwrap_or(2);
    // Each stream's lines in time order (from its chunks' bodies), from the
    // oldest `hours` hours of the blocks.
    let mut streams: Vec<Vec<u8>> = Vec::new();
    let blocks = std::path::Path::new(&dir).join("logs/blocks");
    for f in std::fs::read_dir(&blocks).expect("blocks dir").flatten() {
        if f.path().extension().is_none_or(|e| e != "blk") {
            continue;
        }
        let b = Block::open(&f.path(), BlockKind::Logs).expect("open block");
        let end = b.min_ts.saturating_add(hours * 3_600_000_000_000);
        for s in &b.streams {
            let mut lines = Vec::new();
            for c in s.chunks.iter().filter(|c| c.min_ts < end) {
                let bytes = b.chunk_bytes(c).expect("chunk");
                assert_eq!(bytes[0], 2, "version 2 chunks only");
                let mut at = 1;
                let _head_len = uvarint(&bytes, &mut at);
                let head_zlen = uvarint(&bytes, &mut at) as usize;
                at += head_zlen;
                let body = zstd::bulk::decompress(&bytes[at..], c.payload as usize).expect("body");
                lines.extend_from_slice(&body[..c.raw_bytes as usize]);
            }
            streams.push(lines);
        }
    }
    let raw: usize = streams.iter().map(Vec::len).sum();
    composition(std::path::Path::new(&dir));
    println!("{} streams, {:.1} MB of lines over {hours} h", streams.len(), raw as f64 / 1e6);
    let level = |l: i32| {
        move |c: &mut zstd::bulk::Compressor<'static>| c.set_parameter(CParameter::CompressionLevel(l)).unwrap()
    };
    let sets: Vec<(&str, Setup)> = vec![
        ("level 1", Box::new(level(1))),
        ("level 2", Box::new(level(2))),
        ("level 3", Box::new(level(3))),
        ("level 6", Box::new(level(6))),
        ("level 9", Box::new(level(9))),
        ("fast h17 m6", Box::new(|c| custom(c, Strategy::ZSTD_fast, 17, 16, 1, 6, 0))),
        ("fast h18 m7", Box::new(|c| custom(c, Strategy::ZSTD_fast, 18, 16, 1, 7, 0))),
        ("dfast h18 c17 m6", Box::new(|c| custom(c, Strategy::ZSTD_dfast, 18, 17, 1, 6, 0))),
        ("dfast h19 c18 m7", Box::new(|c| custom(c, Strategy::ZSTD_dfast, 19, 18, 1, 7, 0))),
        ("greedy h19 c18 s2 m6", Box::new(|c| custom(c, Strategy::ZSTD_greedy, 19, 18, 2, 6, 0))),
        ("lazy h19 c18 s2 m6", Box::new(|c| custom(c, Strategy::ZSTD_lazy, 19, 18, 2, 6, 8))),
        ("lazy2 h19 c18 s2 m6", Box::new(|c| custom(c, Strategy::ZSTD_lazy2, 19, 18, 2, 6, 16))),
        ("lazy2 h20 c18 s3 m6", Box::new(|c| custom(c, Strategy::ZSTD_lazy2, 20, 18, 3, 6, 16))),
        ("lazy2 h20 c19 s2 m6", Box::new(|c| custom(c, Strategy::ZSTD_lazy2, 20, 19, 2, 6, 16))),
        ("lazy2 h19 c18 s3 m6", Box::new(|c| custom(c, Strategy::ZSTD_lazy2, 19, 18, 3, 6, 16))),
        ("lazy2 h19 c18 s2 m6 t64", Box::new(|c| custom(c, Strategy::ZSTD_lazy2, 19, 18, 2, 6, 64))),
        ("lazy h20 c19 s3 m6", Box::new(|c| custom(c, Strategy::ZSTD_lazy, 20, 19, 3, 6, 16))),
        ("lazy2 h20 c18 s3 m7", Box::new(|c| custom(c, Strategy::ZSTD_lazy2, 20, 18, 3, 7, 16))),
    ];
    let only = std::env::var("CAIRN_ZSTD_SETS").ok();
    let units: Vec<usize> = std::env::var("CAIRN_ZSTD_UNITS")
        .ok()
        .map(|v| v.split(',').filter_map(|x| x.parse().ok()).collect())
        .unwrap_or_else(|| vec![350_000, 1 << 20]);
    for unit in units {
        // Cut each stream in `unit` bytes (the flush cuts whole lines).
        let mut pieces: Vec<&[u8]> = Vec::new();
        for s in &streams {
            pieces.extend(s.chunks(unit));
        }
        println!("unit {unit} B: {} chunks", pieces.len());
        for (name, setup) in &sets {
            if only.as_ref().is_some_and(|o| !o.split(',').any(|x| x == *name)) {
                continue;
            }
            let mut c = zstd::bulk::Compressor::new(0).unwrap();
            setup(&mut c);
            let mut out = Vec::new();
            let mut best = f64::MAX;
            let mut size = 0usize;
            for _ in 0..1 {
                let t = thread_cpu();
                size = 0;
                for p in &pieces {
                    out.clear();
                    out.reserve(zstd::zstd_safe::compress_bound(p.len()));
                    c.compress_to_buffer(p, &mut out).unwrap();
                    size += out.len();
                }
                best = best.min(thread_cpu() - t);
            }
            println!(
                "  {name:<24} ratio {:.4}  {:>6.0} MB per CPU s  {:>5.2} CPU s/GB",
                size as f64 / raw as f64,
                raw as f64 / 1e6 / best,
                best / (raw as f64 / 1e9)
            );
        }
    }
}

/// Where a data directory's log block bytes go: chunk head frames, chunk
/// bodies, content filters, and the rest (index, header, footer).
fn composition(dir: &std::path::Path) {
    let blocks = dir.join("logs/blocks");
    let Ok(rd) = std::fs::read_dir(&blocks) else { return };
    let (mut size, mut heads, mut chunks, mut filters, mut raw, mut n) = (0u64, 0u64, 0u64, 0u64, 0u64, 0u64);
    for f in rd.flatten() {
        let p = f.path();
        if p.extension().is_none_or(|e| e != "blk") {
            continue;
        }
        let b = cairn_store::block::Block::open(&p, cairn_store::block::BlockKind::Logs).expect("open block");
        size += b.size;
        if let Some(s) = b.streams.first() {
            println!("{}: {} streams, e.g. tenant {:?} {}", p.display(), b.streams.len(), s.tenant, s.labels);
        }
        for s in &b.streams {
            for c in &s.chunks {
                n += 1;
                chunks += c.len;
                filters += c.filter_len;
                raw += c.raw_bytes;
                let bytes = b.chunk_bytes(c).expect("chunk");
                if bytes.first() == Some(&2) {
                    let mut at = 1;
                    let _ = uvarint(&bytes, &mut at);
                    heads += uvarint(&bytes, &mut at);
                }
            }
        }
    }
    let f = |x: u64| x as f64 / raw.max(1) as f64;
    println!(
        "blocks: {n} chunks, {:.1} MB raw lines; of raw: files {:.4}, chunk heads {:.4}, chunk bodies {:.4}, filters {:.4}, rest {:.4}",
        raw as f64 / 1e6,
        f(size),
        f(heads),
        f(chunks - heads),
        f(filters),
        f(size - chunks - filters)
    );
}

fn uvarint(b: &[u8], at: &mut usize) -> u64 {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let x = b[*at];
        *at += 1;
        v |= u64::from(x & 0x7f) << shift;
        if x < 0x80 {
            break;
        }
    }
    v
}

/// This thread's CPU time, s (from /proc: 10 ms resolution, and not wall
/// time, so other load on the machine counts less).
fn thread_cpu() -> f64 {
    let s = std::fs::read_to_string("/proc/thread-self/stat").expect("read /proc/thread-self/stat");
    let rest = &s[s.rfind(')').expect("stat") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    ticks / 100.0
}
