//! Damaged data directories never panic the engines. A small data directory
//! of both engines (blocks, a compacted block, WAL segments) is copied and
//! one file is damaged at random — bytes flipped, cut short, overwritten,
//! junk appended — hundreds of times with a fixed seed; each copy is opened
//! and read in full. Open may refuse only a newer format version; otherwise
//! it must start (setting damaged blocks aside, cutting torn WAL tails), and
//! reads must return data or a typed error. The fuzz targets `wal_replay` and
//! `block_open` (fuzz/) search the same space with coverage guidance.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use cairn_store::logs::LogStore;
use cairn_store::metrics::MetricsStore;
use cairn_store::{CompactionPolicy, StoreError, WalOptions};
use cairn_wire::{Entry, Histogram, Labels, SeriesHistograms, SeriesSamples, StreamEntries};

/// xorshift64*: deterministic, dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn wal() -> WalOptions {
    WalOptions { segment_bytes: 4 << 10, ..WalOptions::default() }
}

/// Writes two flushed parts (then compacted into one block), one more
/// flushed part and an unflushed WAL tail, for both engines.
fn build(root: &Path) {
    let logs = LogStore::open(&root.join("logs"), wal()).unwrap();
    let metrics = MetricsStore::open(&root.join("metrics"), wal()).unwrap();
    for part in 0..4i64 {
        for s in 0..3 {
            let labels = Labels::from_pairs([("job", format!("j{s}")), ("part", part.to_string())]).unwrap();
            let entries = (0..40)
                .map(|i| Entry {
                    ts: 1_000_000_000_000 + part * 1_000_000_000 + i * 1_000_003,
                    line: format!("level=info part={part} stream={s} request {i} took={}ms", i * 7),
                    metadata: if i % 7 == 0 { vec![("trace_id".into(), format!("t{i}"))] } else { vec![] },
                })
                .collect();
            logs.push("t", vec![StreamEntries { labels: labels.clone(), entries }]).unwrap();
            let mut ml = vec![("__name__".to_string(), "m".to_string())];
            ml.push(("job".to_string(), format!("j{s}")));
            ml.push(("part".to_string(), part.to_string()));
            let samples = (0..40).map(|i| (1_000_000 + part * 1_000 + i * 15, (i * s) as f64 * 0.5)).collect();
            let ml = Labels::from_pairs(ml).unwrap();
            metrics.append("t", vec![SeriesSamples { labels: ml.clone(), samples }]).unwrap();
            // Native histograms in the same series, after its floats.
            let histograms = (0..10)
                .map(|i| {
                    let h = Histogram {
                        schema: s as i32,
                        count: (3 * i) as f64,
                        sum: i as f64 * 0.25,
                        positive: vec![(-1, i as f64), (2, (2 * i) as f64)],
                        ..Histogram::default()
                    };
                    (1_000_000 + part * 1_000 + 600 + i * 15, h)
                })
                .collect();
            metrics.append_histograms("t", vec![SeriesHistograms { labels: ml, histograms }]).unwrap();
        }
        if part < 3 {
            logs.flush().unwrap();
            metrics.flush().unwrap();
        }
        if part == 1 {
            let policy = CompactionPolicy { ranges: vec![i64::MAX / 4], max_block_bytes: u64::MAX };
            logs.compact(&policy, 10).unwrap();
            metrics.compact(&policy, 10).unwrap();
        }
    }
}

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files(&p, out);
        } else if !p.ends_with("cairn.lock") {
            out.push(p);
        }
    }
}

fn damage(path: &Path, rng: &mut Rng) -> String {
    let mut b = fs::read(path).unwrap();
    let what = match rng.below(4) {
        0 => {
            let n = 1 + rng.below(4);
            for _ in 0..n {
                let i = rng.below(b.len());
                if let Some(x) = b.get_mut(i) {
                    *x ^= 1 << rng.below(8);
                }
            }
            format!("{n} bits flipped")
        }
        1 => {
            let at = rng.below(b.len());
            b.truncate(at);
            format!("cut at {at}")
        }
        2 => {
            let at = rng.below(b.len());
            let n = 1 + rng.below(64);
            for x in b.iter_mut().skip(at).take(n) {
                *x = rng.next() as u8;
            }
            format!("{n} bytes overwritten at {at}")
        }
        _ => {
            let n = 1 + rng.below(100);
            b.extend((0..n).map(|_| rng.next() as u8));
            format!("{n} bytes appended")
        }
    };
    fs::write(path, b).unwrap();
    what
}

/// Opens both engines and reads everything; panics only on a panic inside
/// the store or an open error other than a version refusal.
fn open_and_read(root: &Path, what: &str) {
    match cairn_store::testing::open_and_read_all(root, wal()) {
        Ok(()) | Err(StoreError::UnsupportedVersion { .. }) => {}
        Err(e) => panic!("did not open after {what}: {e}"),
    }
}

#[test]
fn damaged_files_never_panic_and_open_recovers() {
    let built = tempfile::tempdir().unwrap();
    build(built.path());
    let mut all = Vec::new();
    files(built.path(), &mut all);
    assert!(all.iter().filter(|p| p.extension().is_some_and(|e| e == "blk")).count() >= 4, "{all:?}");
    assert!(all.iter().filter(|p| p.extension().is_some_and(|e| e == "wal")).count() >= 2, "{all:?}");
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let rounds = std::env::var("CAIRN_DAMAGE_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(250);
    for round in 0..rounds {
        let copy = tempfile::tempdir().unwrap();
        common::copy_dir(built.path(), copy.path());
        let victim = &all[rng.below(all.len())];
        let rel = victim.strip_prefix(built.path()).unwrap();
        let what = damage(&copy.path().join(rel), &mut rng);
        let what = format!("round {round}: {} {what}", rel.display());
        let res = std::panic::catch_unwind(|| open_and_read(copy.path(), &what));
        assert!(res.is_ok(), "{what}");
    }
}

/// Writes the fuzz seeds (`fuzz/seeds/{wal_replay,block_open}/`): every WAL
/// segment and block of [`build`]'s directory, behind the selector byte.
/// Run: `CAIRN_WRITE_FUZZ_SEEDS=1 cargo test -p cairn-store --test damage -- --ignored`.
#[test]
#[ignore]
fn write_fuzz_seeds() {
    if std::env::var("CAIRN_WRITE_FUZZ_SEEDS").is_err() {
        return;
    }
    let built = tempfile::tempdir().unwrap();
    build(built.path());
    let mut all = Vec::new();
    files(built.path(), &mut all);
    let seeds = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds");
    for p in all {
        let rel = p.strip_prefix(built.path()).unwrap().to_string_lossy().replace('/', "-");
        let sel = u8::from(rel.starts_with("metrics"));
        let target = match p.extension().and_then(|e| e.to_str()) {
            Some("wal") => "wal_replay",
            Some("blk") => "block_open",
            _ => continue,
        };
        let dir = seeds.join(target);
        fs::create_dir_all(&dir).unwrap();
        let mut bytes = vec![sel];
        bytes.extend(fs::read(&p).unwrap());
        fs::write(dir.join(rel), bytes).unwrap();
    }
}
