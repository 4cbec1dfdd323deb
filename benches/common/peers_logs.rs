//! The PEERS.md log workload as Loki push requests: the `.log` files of
//! `../shared/datasets/logs/`, each split round-robin into 4 streams
//! (`job="bench"`, `source`, `host=node-0..3`, `level`), about half of the
//! digit runs re-randomised per replay, ` ZQX9rareTOKEN` appended to every
//! 200,000th line, timestamps spread evenly over the 24 h ending an hour
//! ago, ~1 MB of lines per request, one stream per request. Used by
//! `ingest_logs.rs` and `grep.rs`.

use std::path::{Path, PathBuf};

use cairn_wire::proto::{EntryAdapter, PushRequest, StreamAdapter, Timestamp, snappy_compress};
use prost::Message;

/// The rare token of PEERS.md.
pub const RARE_TOKEN: &str = "ZQX9rareTOKEN";

/// What [`build`] produced.
pub struct Workload {
    /// Snappy-compressed protobuf push bodies, in time order.
    pub requests: Vec<Vec<u8>>,
    /// The stream of each request (for [`super::send_all_ordered`]: a
    /// stream's requests are delivered in order, as one agent sends them).
    pub streams: Vec<usize>,
    /// Lines and their raw bytes.
    pub lines: u64,
    pub raw_bytes: u64,
    /// Time span of the entries (ns).
    pub span_start: i64,
    pub now_ns: i64,
}

/// The `.log` files of `logs_dir`, sorted.
pub fn files(logs_dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(logs_dir)
        .unwrap_or_else(|e| panic!("{}: {e} (set CAIRN_SHARED)", logs_dir.display()))
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    files.sort();
    files
}

/// How the lines are cut into streams.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// Streams each file is split into, round-robin (PEERS.md: 4).
    pub streams_per_file: usize,
    /// Labels added to each stream's four (PEERS.md: 0).
    pub extra_labels: usize,
}

/// The PEERS.md shape.
pub const PEERS: Shape = Shape { streams_per_file: 4, extra_labels: 0 };

/// Builds the workload; `on_line` sees every line in generation (time) order.
pub fn build(files: &[PathBuf], replays: usize, on_line: &mut dyn FnMut(&[u8])) -> Workload {
    build_shaped(files, replays, PEERS, on_line)
}

/// [`build`] with another stream shape (which no longer matches the peers'
/// figures).
pub fn build_shaped(files: &[PathBuf], replays: usize, shape: Shape, on_line: &mut dyn FnMut(&[u8])) -> Workload {
    let streams_per_file = shape.streams_per_file.max(1);
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
    let mut pending: std::collections::HashMap<(usize, usize), (Vec<EntryAdapter>, usize)> = Default::default();
    let mut requests: Vec<Vec<u8>> = Vec::new();
    let mut streams: Vec<usize> = Vec::new();
    let (mut lines, mut raw_bytes) = (0u64, 0u64);
    let mut i_global: i64 = 0;
    let encode = |fi: usize, k: usize, entries: Vec<EntryAdapter>| -> Vec<u8> {
        let extra: String = (0..shape.extra_labels).map(|e| format!(r#", label_{e}="value-{}-{e}""#, k % 7)).collect();
        let req = PushRequest {
            streams: vec![StreamAdapter {
                labels: format!(
                    r#"{{job="bench", source="{}", host="node-{k}", level="{}"{extra}}}"#,
                    contents[fi].0,
                    LEVELS[k % 4]
                ),
                entries,
            }],
        };
        snappy_compress(&req.encode_to_vec())
    };
    for _ in 0..replays {
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
                    line.extend_from_slice(b" ");
                    line.extend_from_slice(RARE_TOKEN.as_bytes());
                }
                let k = li % streams_per_file;
                let ts = span_start + i_global * step;
                i_global += 1;
                lines += 1;
                raw_bytes += line.len() as u64;
                on_line(&line);
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
                    requests.push(encode(fi, k, entries));
                    streams.push(fi * streams_per_file + k);
                }
            }
        }
    }
    let mut rest: Vec<_> = pending.into_iter().filter(|(_, v)| !v.0.is_empty()).collect();
    rest.sort_by_key(|(key, _)| *key);
    for ((fi, k), (entries, _)) in rest {
        requests.push(encode(fi, k, entries));
        streams.push(fi * streams_per_file + k);
    }
    Workload { requests, streams, lines, raw_bytes, span_start, now_ns }
}
