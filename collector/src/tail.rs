//! File tailing with checkpoints: turns growing, rotating log files into
//! log entries, and remembers how far it got only once those entries were
//! delivered.
//!
//! # How files are followed
//! - Every poll expands the globs of each target; a file matched for the
//!   first time is read from offset 0 (or from its checkpoint, see below).
//!   A path matched by several targets belongs to the first one.
//! - A file is read through an open handle, identified by (device, inode).
//!   Only complete lines (ending in `\n`) become entries; a trailing `\r` is
//!   removed; a partial last line stays in memory until its `\n` arrives.
//!   Lines longer than `max_line_bytes` are cut at a character boundary and
//!   counted; invalid UTF-8 becomes U+FFFD.
//! - **Rename rotation**: when the path names a different inode (or no file),
//!   the old handle is read to its end first, then kept open and read for a
//!   grace period ([`ROTATION_GRACE`]) in case the writer has not yet
//!   reopened; the new file is read from offset 0.
//! - **Copytruncate**: when a file is shorter than the offset already read,
//!   or its first bytes (up to 256, hashed) changed, it was truncated: the
//!   rest of the copy (a file in the same directory starting with the same
//!   bytes) is read first, then the file from 0.
//! - Each entry is stamped with the time it was read, in nanoseconds,
//!   strictly increasing across all files of one [`Tailer`].
//!
//! # Checkpoints: `positions.json`
//! The entries of a poll go into a [`LogBatch`] together with, for each
//! path, the position just after its last complete line in the batch. The
//! caller sends the batch and, only once the receiver acknowledged it,
//! calls [`Tailer::commit`], which merges those positions and persists them
//! atomically (temp file, fsync, rename, fsync of the directory). After a
//! crash or restart, reading resumes at the last committed position: lines
//! sent but not acknowledged are sent again (at-least-once), none is
//! skipped.
//!
//! The file, `<state_dir>/positions.json`, is UTF-8 JSON:
//! ```json
//! {"version": 1,
//!  "positions": {"/var/log/syslog": {"dev": 2049, "ino": 1311, "offset": 52344,
//!                                    "head_len": 256, "head_hash": 1234567890}}}
//! ```
//! - `version`: format version, `1`; another value is refused with
//!   [`TailError::UnknownPositionsVersion`].
//! - `positions`: by path (lossy UTF-8 for non-UTF-8 paths):
//!   - `dev`, `ino`: the file's device and inode numbers when checkpointed.
//!   - `offset`: byte offset just after the last delivered line.
//!   - `head_len`, `head_hash`: length (≤ 256) and 64-bit FNV-1a hash of
//!     the file's first bytes, so that a different file that reused the
//!     inode number is read from 0 instead of from `offset`. Optional
//!     (defaults 0, which matches any file).
//!
//! A checkpoint is used only if device, inode and head hash still match
//! and the file is at least `offset` long; otherwise the file starts at 0.
//! A `positions.json` that is not valid JSON is moved aside to
//! `positions.json.corrupt` and reading starts over (duplicates, no loss).
//!
//! At start-up, a checkpointed path that now names another file (or none)
//! was rotated while the collector was stopped: the directory of the path is
//! searched for the checkpointed file (same device, inode and head hash,
//! e.g. `app.log.1`), whose rest is read before the new file.
//!
//! # Limits
//! - A file rotated while the collector was stopped is found again only if
//!   it stayed, uncompressed, in the same directory.
//! - A file created and rotated away between two polls, or entirely while
//!   the collector was stopped, is never seen.
//! - A file truncated and regrown past the old offset between two polls,
//!   with the same first bytes as before, looks unchanged.
//!
//! All methods do blocking file I/O: call them from a blocking thread.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use cairn_wire::{Entry, Labels, StreamEntries};
use serde::{Deserialize, Serialize};

use crate::Stats;
use crate::config::{FILENAME_LABEL, FileTarget, HOST_LABEL, POD_LABELS, PodLogsConfig, STREAM_LABEL};
use crate::kube::{PodIndex, PodLabels, uid_of_pod_dir};
use crate::logline::{Assembler, EntrySink, LogFormat, Multiline, STDERR, STDOUT, STREAM_NAMES};

/// Name of the checkpoint file inside the state directory.
pub const POSITIONS_FILE: &str = "positions.json";
/// Temporary name used while writing [`POSITIONS_FILE`].
pub const POSITIONS_TMP_FILE: &str = "positions.json.tmp";
/// Where an unreadable [`POSITIONS_FILE`] is moved.
pub const POSITIONS_CORRUPT_FILE: &str = "positions.json.corrupt";
/// Current version of [`POSITIONS_FILE`].
pub const POSITIONS_VERSION: u32 = 1;

/// How long a rotated-away file is still read after its path moved on.
pub const ROTATION_GRACE: Duration = Duration::from_secs(5);

/// How long a new pod log file waits for its pod's labels (see
/// [`Tailer::set_pod_index`]) before it is read without them.
pub const POD_LABELS_WAIT: Duration = Duration::from_secs(5);

/// Bytes at the start of a file hashed to recognise it (see the module doc).
const HEAD_BYTES: usize = 256;
/// Size of one read.
const READ_CHUNK: usize = 64 << 10;

/// Errors of the tailer.
#[derive(Debug, thiserror::Error)]
pub enum TailError {
    /// The positions file could not be read.
    #[error("cannot read positions file {path}: {source}")]
    ReadPositions {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The positions file could not be written.
    #[error("cannot write positions file {path}: {source}")]
    WritePositions {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The positions file has a version this build does not know.
    #[error(
        "positions file {path} has version {version}, this build reads version {POSITIONS_VERSION} (written by a newer Cairn?); move it away to read all files from the start"
    )]
    UnknownPositionsVersion {
        /// The file.
        path: PathBuf,
        /// The version found.
        version: u32,
    },
    /// A file target could not be compiled.
    #[error("files[{index}]: {reason}")]
    Target {
        /// Index in `files`.
        index: usize,
        /// What is wrong.
        reason: String,
    },
}

/// A checkpoint of one path: which file it was and how far it was delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// Device number of the file.
    pub dev: u64,
    /// Inode number of the file.
    pub ino: u64,
    /// Byte offset just after the last delivered line.
    pub offset: u64,
    /// Number of leading bytes hashed into `head_hash` (≤ 256).
    #[serde(default)]
    pub head_len: u32,
    /// FNV-1a 64 hash of the first `head_len` bytes.
    #[serde(default)]
    pub head_hash: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct PositionsFile {
    version: u32,
    positions: BTreeMap<String, Position>,
    /// Last on-disk queue record acknowledged (or dropped); 0 = none.
    #[serde(default, skip_serializing_if = "is_zero")]
    queue_acked: u64,
    /// Journal cursor after the last acknowledged journal entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    journal_cursor: Option<String>,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// Everything `positions.json` holds: what was delivered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SavedState {
    /// File positions by path.
    pub positions: BTreeMap<PathBuf, Position>,
    /// Last queue record acknowledged or dropped (see [`crate::queue`]).
    pub queue_acked: u64,
    /// Journal cursor (see [`crate::journal`]).
    pub journal_cursor: Option<String>,
}

impl SavedState {
    /// Reads `<dir>/positions.json` (empty if absent; moved aside if corrupt).
    pub fn load(dir: &Path) -> Result<SavedState, TailError> {
        load_positions(dir)
    }

    /// Writes `<dir>/positions.json` atomically and durably.
    pub fn save(&self, dir: &Path) -> Result<(), TailError> {
        save_positions(dir, self)
    }

    /// Merges a delivered checkpoint.
    pub fn merge(&mut self, c: &crate::queue::Checkpoint) {
        for (p, pos) in &c.positions {
            self.positions.insert(p.clone(), *pos);
        }
        if c.cursor.is_some() {
            self.journal_cursor.clone_from(&c.cursor);
        }
    }
}

/// Lines read but not yet delivered, grouped by stream, with the positions
/// to checkpoint once they are. Line bytes live in one buffer (no
/// allocation per line), and [`LogBatch::clear`] keeps the allocations for
/// the next batch.
#[derive(Debug, Default)]
pub struct LogBatch {
    labels: Vec<Labels>,
    /// Per stream: (timestamp, start in `arena`, length).
    entries: Vec<Vec<(i64, u32, u32)>>,
    /// The lines' bytes, each valid UTF-8.
    arena: Vec<u8>,
    index: HashMap<Labels, usize>,
    /// Changes on every clear: stream indexes cached by readers are valid
    /// only for one generation.
    generation: u64,
    bytes: usize,
    lines: usize,
    checkpoint: BTreeMap<PathBuf, Position>,
    cursor: Option<String>,
    started: Option<Instant>,
}

static BATCH_GENERATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl LogBatch {
    /// An empty batch.
    pub fn new() -> Self {
        LogBatch { generation: BATCH_GENERATION.fetch_add(1, Relaxed), ..LogBatch::default() }
    }

    /// Empties the batch, keeping its allocations.
    pub fn clear(&mut self) {
        self.labels.clear();
        for e in &mut self.entries {
            e.clear();
        }
        self.arena.clear();
        self.index.clear();
        self.generation = BATCH_GENERATION.fetch_add(1, Relaxed);
        self.bytes = 0;
        self.lines = 0;
        self.checkpoint.clear();
        self.cursor = None;
        self.started = None;
    }

    /// True when the batch holds no line.
    pub fn is_empty(&self) -> bool {
        self.lines == 0
    }

    /// Bytes of lines held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Number of lines held.
    pub fn lines(&self) -> usize {
        self.lines
    }

    /// Time since the first line was added (zero when empty).
    pub fn age(&self) -> Duration {
        self.started.map(|s| s.elapsed()).unwrap_or_default()
    }

    /// The entries, by stream (a copy).
    pub fn streams(&self) -> Vec<StreamEntries> {
        self.labels
            .iter()
            .zip(&self.entries)
            .map(|(l, es)| StreamEntries {
                labels: l.clone(),
                entries: es
                    .iter()
                    .map(|&(ts, at, len)| Entry {
                        ts,
                        line: String::from_utf8_lossy(&self.arena[at as usize..(at + len) as usize]).into_owned(),
                        metadata: Vec::new(),
                    })
                    .collect(),
            })
            .collect()
    }

    /// Positions to commit once the batch is delivered.
    pub fn checkpoint(&self) -> &BTreeMap<PathBuf, Position> {
        &self.checkpoint
    }

    /// Journal cursor after the batch's last journal entry, if any.
    pub fn cursor(&self) -> Option<&str> {
        self.cursor.as_deref()
    }

    pub(crate) fn set_cursor(&mut self, cursor: String) {
        self.cursor = Some(cursor);
    }

    pub(crate) fn push_entry(&mut self, labels: &Labels, entry: Entry) {
        let i = self.stream_index(labels);
        self.push_line(i, entry.ts, &entry.line);
    }

    /// Index of the stream `labels`, added if new.
    pub(crate) fn stream_index(&mut self, labels: &Labels) -> usize {
        if let Some(&i) = self.index.get(labels) {
            return i;
        }
        let i = self.labels.len();
        self.index.insert(labels.clone(), i);
        self.labels.push(labels.clone());
        if self.entries.len() <= i {
            self.entries.push(Vec::new());
        }
        i
    }

    /// Adds a line to stream `i` (from [`LogBatch::stream_index`]).
    pub(crate) fn push_line(&mut self, i: usize, ts: i64, line: &str) {
        self.bytes += line.len();
        self.lines += 1;
        self.started.get_or_insert_with(Instant::now);
        // Offsets are u32: a batch is far below 4 GiB (batch_max_bytes plus
        // one line of at most max_line_bytes).
        let at = self.arena.len() as u32;
        self.arena.extend_from_slice(line.as_bytes());
        self.entries[i].push((ts, at, line.len() as u32));
    }

    /// Appends the batch as a Loki `logproto.PushRequest` (protobuf, not
    /// compressed) to `out`, without copying lines into messages first.
    pub fn encode_push_request(&self, out: &mut Vec<u8>) {
        use prost::encoding::{encode_varint, encoded_len_varint as vlen};
        fn ts_parts(ts: i64) -> (i64, i64) {
            (ts.div_euclid(1_000_000_000), ts.rem_euclid(1_000_000_000))
        }
        fn ts_len(ts: i64) -> usize {
            let (s, n) = ts_parts(ts);
            (if s != 0 { 1 + vlen(s as u64) } else { 0 }) + (if n != 0 { 1 + vlen(n as u64) } else { 0 })
        }
        // proto3: an empty line is left out, as prost does.
        fn entry_len(ts: i64, len: usize) -> usize {
            let t = ts_len(ts);
            1 + vlen(t as u64) + t + if len > 0 { 1 + vlen(len as u64) + len } else { 0 }
        }
        let mut text = String::new();
        for (labels, entries) in self.labels.iter().zip(&self.entries) {
            if entries.is_empty() {
                continue;
            }
            text.clear();
            use std::fmt::Write as _;
            let _ = write!(text, "{labels}");
            let mut stream_len = 1 + vlen(text.len() as u64) + text.len();
            for &(ts, _, len) in entries {
                let e = entry_len(ts, len as usize);
                stream_len += 1 + vlen(e as u64) + e;
            }
            out.reserve(stream_len + 10);
            out.push(0x0a); // PushRequest.streams
            encode_varint(stream_len as u64, out);
            out.push(0x0a); // StreamAdapter.labels
            encode_varint(text.len() as u64, out);
            out.extend_from_slice(text.as_bytes());
            for &(ts, at, len) in entries {
                out.push(0x12); // StreamAdapter.entries
                encode_varint(entry_len(ts, len as usize) as u64, out);
                out.push(0x0a); // EntryAdapter.timestamp
                encode_varint(ts_len(ts) as u64, out);
                let (secs, nanos) = ts_parts(ts);
                if secs != 0 {
                    out.push(0x08);
                    encode_varint(secs as u64, out);
                }
                if nanos != 0 {
                    out.push(0x10);
                    encode_varint(nanos as u64, out);
                }
                if len > 0 {
                    out.push(0x12); // EntryAdapter.line
                    encode_varint(u64::from(len), out);
                    out.extend_from_slice(&self.arena[at as usize..(at + len) as usize]);
                }
            }
        }
    }
}

/// What a poll found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PollOutcome {
    /// The byte budget ran out before every file was read to its end: poll
    /// again soon.
    pub more: bool,
}

/// A compiled [`FileTarget`].
#[derive(Debug)]
struct Target {
    patterns: Vec<String>,
    /// `patterns` compiled, to find the target of a checkpointed path.
    matchers: Vec<glob::Pattern>,
    exclude: Vec<glob::Pattern>,
    /// Configured labels plus `host` (unless configured), or for pods the
    /// configured labels plus `node`.
    labels: Vec<(String, String)>,
    format: LogFormat,
    multiline: Option<Arc<Multiline>>,
    /// Pod logs: labels come from the path below this root.
    pods_root: Option<PathBuf>,
    /// Pod logs: extra labels of pods by UID (from the Kubernetes API).
    pod_meta: Option<Arc<HashMap<String, PodLabels>>>,
}

impl Target {
    fn compile(index: usize, t: &FileTarget, host: &str) -> Result<Target, TailError> {
        let exclude = t
            .exclude
            .iter()
            .map(|p| {
                glob::Pattern::new(p).map_err(|e| TailError::Target { index, reason: format!("exclude {p:?}: {e}") })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if t.labels.contains_key(FILENAME_LABEL) {
            return Err(TailError::Target {
                index,
                reason: format!("label {FILENAME_LABEL:?} is set by the collector"),
            });
        }
        let mut labels: Vec<(String, String)> = t.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        if !t.labels.contains_key(HOST_LABEL) {
            labels.push((HOST_LABEL.to_string(), host.to_string()));
        }
        Labels::from_pairs(labels.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .map_err(|e| TailError::Target { index, reason: e.to_string() })?;
        let matchers = t
            .paths
            .iter()
            .map(|p| glob::Pattern::new(p).map_err(|e| TailError::Target { index, reason: format!("path {p:?}: {e}") }))
            .collect::<Result<Vec<_>, _>>()?;
        let multiline = t.multiline.compile().map_err(|reason| TailError::Target { index, reason })?.map(Arc::new);
        Ok(Target {
            patterns: t.paths.clone(),
            matchers,
            exclude,
            labels,
            format: t.format,
            multiline,
            pods_root: None,
            pod_meta: None,
        })
    }

    /// The target of Kubernetes pod logs: `<root>/*/*/*.log`.
    fn pods(cfg: &PodLogsConfig, node: &str) -> Result<Target, TailError> {
        let index = usize::MAX;
        let root = cfg.root.to_string_lossy().trim_end_matches('/').to_string();
        let pattern = format!("{}/*/*/*.log", glob::Pattern::escape(&root));
        let file = FileTarget {
            paths: vec![pattern],
            labels: cfg.labels.clone(),
            exclude: cfg.exclude.clone(),
            format: cfg.format,
            multiline: cfg.multiline.clone(),
        };
        let mut t = Target::compile(index, &file, node)
            .map_err(|e| TailError::Target { index, reason: format!("pods: {e}") })?;
        t.labels.retain(|(k, _)| k != HOST_LABEL);
        t.labels.push(("node".to_string(), node.to_string()));
        t.pods_root = Some(PathBuf::from(root));
        Ok(t)
    }

    fn matches(&self, path: &Path) -> bool {
        self.matchers.iter().any(|m| m.matches_path(path)) && !self.exclude.iter().any(|e| e.matches_path(path))
    }

    /// Labels of the `stdout` and `stderr` streams of `path` (the same for
    /// plain files).
    fn stream_labels(&self, path: &Path) -> [Labels; 2] {
        let mut pairs: BTreeMap<&str, String> = self.labels.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        match &self.pods_root {
            Some(root) => {
                for (k, v) in pod_labels(root, path) {
                    pairs.insert(k, v);
                }
                if !pairs.contains_key("job") {
                    let job = format!(
                        "{}/{}",
                        pairs.get("namespace").map_or("", |s| s.as_str()),
                        pairs.get("container").map_or("", |s| s.as_str())
                    );
                    pairs.insert("job", job);
                }
                // Pod labels from the API: never over a label set above,
                // nor over the ones the collector sets itself.
                if let Some(extra) = self.pod_meta.as_ref().and_then(|m| pod_uid(root, path).and_then(|u| m.get(u))) {
                    for (k, v) in extra.iter() {
                        if !POD_LABELS.contains(&k.as_str()) && !pairs.contains_key(k.as_str()) && !v.is_empty() {
                            pairs.insert(k.as_str(), v.clone());
                        }
                    }
                }
            }
            None => {
                pairs.insert(FILENAME_LABEL, path.to_string_lossy().into_owned());
            }
        }
        let build = |stream: Option<&str>| {
            let extra = stream.map(|s| (STREAM_LABEL, s.to_string()));
            // Names were validated in `compile`, which also refuses the
            // names the collector sets.
            Labels::from_pairs(pairs.iter().map(|(k, v)| (*k, v.clone())).chain(extra)).unwrap_or_default()
        };
        if self.format == LogFormat::Plain {
            let l = build(None);
            [l.clone(), l]
        } else {
            [build(Some(STREAM_NAMES[STDOUT])), build(Some(STREAM_NAMES[STDERR]))]
        }
    }
}

/// `namespace`, `pod`, `container` of a kubelet pod log path,
/// `<root>/<namespace>_<pod>_<uid>/<container>/<n>.log`. Namespace and pod
/// names cannot contain `_`, so the split is unambiguous; a directory not
/// in that form yields `pod` only.
fn pod_labels(root: &Path, path: &Path) -> Vec<(&'static str, String)> {
    let Ok(rel) = path.strip_prefix(root) else { return Vec::new() };
    let parts: Vec<String> = rel.iter().map(|c| c.to_string_lossy().into_owned()).collect();
    let [dir, container, _file] = parts.as_slice() else { return Vec::new() };
    let mut out = vec![("container", container.clone())];
    let mut it = dir.splitn(3, '_');
    match (it.next(), it.next(), it.next()) {
        (Some(ns), Some(pod), Some(_uid)) => {
            out.push(("namespace", ns.to_string()));
            out.push(("pod", pod.to_string()));
        }
        _ => out.push(("pod", dir.clone())),
    }
    out
}

/// The pod UID of a kubelet pod log path (see [`pod_labels`]).
fn pod_uid<'a>(root: &Path, path: &'a Path) -> Option<&'a str> {
    let rel = path.strip_prefix(root).ok()?;
    uid_of_pod_dir(rel.iter().next()?.to_str()?)
}

/// Expands the targets' globs: every regular file matched, with the index of
/// the first target matching it.
fn expand(targets: &[Target], errors: &mut HashSet<String>) -> BTreeMap<PathBuf, usize> {
    let mut out = BTreeMap::new();
    for (ti, t) in targets.iter().enumerate() {
        for pat in &t.patterns {
            let paths = match glob::glob(pat) {
                Ok(p) => p,
                Err(e) => {
                    if errors.insert(pat.clone()) {
                        tracing::warn!(pattern = %pat, error = %e, "invalid glob");
                    }
                    continue;
                }
            };
            for entry in paths {
                match entry {
                    Ok(p) => {
                        if out.contains_key(&p) || t.exclude.iter().any(|e| e.matches_path(&p)) || !p.is_file() {
                            continue;
                        }
                        out.insert(p, ti);
                    }
                    Err(e) => tracing::debug!(pattern = %pat, error = %e, "glob: cannot read a directory"),
                }
            }
        }
    }
    out
}

/// Number of files the targets match right now (for start-up messages).
pub fn count_files(targets: &[FileTarget]) -> usize {
    let compiled: Vec<Target> =
        targets.iter().enumerate().filter_map(|(i, t)| Target::compile(i, t, "").ok()).collect();
    expand(&compiled, &mut HashSet::new()).len()
}

/// One open file.
#[derive(Debug)]
struct Tracked {
    path: PathBuf,
    file: File,
    dev: u64,
    ino: u64,
    /// Next byte to read.
    read_pos: u64,
    /// Start of the line being assembled: the position to checkpoint.
    line_start: u64,
    /// Bytes of the line being assembled (at most `max_line_bytes`).
    pending: Vec<u8>,
    /// The line being assembled was longer than `max_line_bytes`.
    overflow: bool,
    /// Stream labels by [`STDOUT`] / [`STDERR`].
    labels: [Labels; 2],
    format: LogFormat,
    multiline: Option<Arc<Multiline>>,
    /// Split lines and multiline entries being joined.
    asm: Assembler,
    /// Batch generation and indexes of `labels` in that batch.
    stream_cache: (u64, [Option<usize>; 2]),
    head_len: u32,
    head_hash: u64,
    /// When the path stopped naming this file (rotation), if it did.
    rotated_at: Option<Instant>,
    /// The last read failed (logged once until it succeeds).
    failing: bool,
}

impl Tracked {
    fn position(&self) -> Position {
        Position {
            dev: self.dev,
            ino: self.ino,
            offset: self.asm.low_water().map_or(self.line_start, |l| l.min(self.line_start)),
            head_len: self.head_len,
            head_hash: self.head_hash,
        }
    }

    /// Hashes the first bytes again if the file grew since last time and
    /// the hash does not yet cover [`HEAD_BYTES`].
    fn refresh_head(&mut self, len: u64) -> io::Result<()> {
        if (self.head_len as usize) < HEAD_BYTES && len > u64::from(self.head_len) {
            let (n, h) = head_hash(&self.file, HEAD_BYTES)?;
            self.head_len = n as u32;
            self.head_hash = h;
        }
        Ok(())
    }
}

/// Length and FNV-1a 64 hash of up to `max` leading bytes of `file`.
fn head_hash(file: &File, max: usize) -> io::Result<(usize, u64)> {
    let mut buf = [0u8; HEAD_BYTES];
    let max = max.min(HEAD_BYTES);
    let mut n = 0;
    while n < max {
        match file.read_at(&mut buf[n..max], n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok((n, fnv1a(&buf[..n])))
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Follows the files of a set of targets. See the module doc.
#[derive(Debug)]
pub struct Tailer {
    targets: Vec<Target>,
    max_line: usize,
    current: BTreeMap<PathBuf, Tracked>,
    draining: Vec<Tracked>,
    /// Positions to resume from (what `positions.json` holds, plus the
    /// positions of batches still queued).
    positions: BTreeMap<PathBuf, Position>,
    /// The rest of `positions.json`, kept by [`Tailer::commit`].
    saved: SavedState,
    /// Paths opened before in this process: they start at 0 when they reappear.
    opened: HashSet<PathBuf>,
    state_dir: PathBuf,
    buf: Vec<u8>,
    last_ts: i64,
    rr: usize,
    /// The start-up search for files rotated while stopped was done.
    recovered: bool,
    glob_errors: HashSet<String>,
    open_failures: HashSet<PathBuf>,
    stats: Arc<Stats>,
    /// Pod labels from the Kubernetes API, and the generation applied.
    pod_index: Option<(Arc<PodIndex>, u64)>,
    /// New pod log files waiting for their pod's labels, since when.
    waiting: HashMap<PathBuf, Instant>,
}

/// Per-poll reading context, split from [`Tailer`] for the borrow checker.
struct Reader<'a> {
    buf: &'a mut Vec<u8>,
    /// Read time stamped on lines without their own: taken once per read.
    now: i64,
    max_line: usize,
    budget: usize,
    last_ts: &'a mut i64,
    stats: &'a Stats,
}

impl Tailer {
    /// A tailer for `targets`, labelling streams with `host`, keeping its
    /// checkpoint in `state_dir/positions.json` (the directory must exist).
    pub fn new(
        targets: &[FileTarget],
        host: &str,
        max_line_bytes: usize,
        state_dir: &Path,
        stats: Arc<Stats>,
    ) -> Result<Tailer, TailError> {
        let targets =
            targets.iter().enumerate().map(|(i, t)| Target::compile(i, t, host)).collect::<Result<Vec<_>, _>>()?;
        let saved = load_positions(state_dir)?;
        let positions = saved.positions.clone();
        Ok(Tailer {
            targets,
            max_line: max_line_bytes.max(1),
            current: BTreeMap::new(),
            draining: Vec::new(),
            positions,
            saved,
            opened: HashSet::new(),
            state_dir: state_dir.to_path_buf(),
            buf: vec![0; READ_CHUNK],
            last_ts: 0,
            rr: 0,
            recovered: false,
            glob_errors: HashSet::new(),
            open_failures: HashSet::new(),
            stats,
            pod_index: None,
            waiting: HashMap::new(),
        })
    }

    /// Adds the labels of each pod (from the Kubernetes API) to the streams
    /// of its log files. The index is looked at once per poll; when it
    /// changed, followed pod files are relabelled. A new pod log file of a
    /// pod the index does not know yet asks for a listing and waits up to
    /// [`POD_LABELS_WAIT`] before it is read without the labels.
    pub fn set_pod_index(&mut self, index: Arc<PodIndex>) {
        self.pod_index = Some((index, u64::MAX));
    }

    /// Applies a changed pod index to the pods target and the files open.
    fn refresh_pod_labels(&mut self) {
        let Some((index, seen)) = &mut self.pod_index else { return };
        let generation = index.generation();
        if generation == *seen {
            return;
        }
        *seen = generation;
        let snapshot = index.snapshot();
        for t in self.targets.iter_mut().filter(|t| t.pods_root.is_some()) {
            t.pod_meta = Some(snapshot.clone());
        }
        let targets = &self.targets;
        for tr in self.current.values_mut().chain(self.draining.iter_mut()) {
            if let Some(t) = targets.iter().find(|t| t.pods_root.as_ref().is_some_and(|r| tr.path.starts_with(r))) {
                let labels = t.stream_labels(&tr.path);
                if labels != tr.labels {
                    tr.labels = labels;
                    tr.stream_cache = (0, [None, None]);
                }
            }
        }
    }

    /// True when `path` (of target `ti`) is a pod log whose pod labels are
    /// not known yet and it may still wait for them.
    fn wait_for_pod_labels(&mut self, path: &Path, ti: usize) -> bool {
        let (Some((index, _)), Some(root)) = (&self.pod_index, &self.targets[ti].pods_root) else { return false };
        let known = pod_uid(root, path)
            .is_none_or(|uid| self.targets[ti].pod_meta.as_ref().is_some_and(|m| m.contains_key(uid)));
        if known {
            self.waiting.remove(path);
            return false;
        }
        let since = *self.waiting.entry(path.to_path_buf()).or_insert_with(|| {
            index.request_refresh();
            Instant::now()
        });
        if since.elapsed() < POD_LABELS_WAIT {
            return true;
        }
        self.waiting.remove(path);
        tracing::info!(path = %path.display(), "pod unknown to the Kubernetes API so far; reading its log without pod labels");
        false
    }

    /// Also follows Kubernetes pod logs (see [`PodLogsConfig`]), labelled
    /// with `node`.
    pub fn add_pods(&mut self, cfg: &PodLogsConfig, node: &str) -> Result<(), TailError> {
        self.targets.push(Target::pods(cfg, node)?);
        Ok(())
    }

    /// Resumes files from `later` (positions of batches read before a
    /// restart and still queued) rather than from `positions.json`.
    pub fn resume_from(&mut self, later: &BTreeMap<PathBuf, Position>) {
        for (p, pos) in later {
            self.positions.insert(p.clone(), *pos);
        }
    }

    /// Directories where files of the targets may appear: the literal
    /// prefix of each glob, the directories its parent glob matches now,
    /// and those of the files followed (for [`crate::watch::Watcher`]).
    pub fn watch_dirs(&self) -> std::collections::BTreeSet<PathBuf> {
        let mut out = std::collections::BTreeSet::new();
        for t in &self.targets {
            for pat in &t.patterns {
                let p = Path::new(pat);
                let mut prefix = PathBuf::new();
                for c in p.components() {
                    let s = c.as_os_str().to_string_lossy();
                    if s.contains(['*', '?', '[']) {
                        break;
                    }
                    prefix.push(c);
                }
                if prefix.is_dir() {
                    out.insert(prefix);
                } else if let Some(parent) = prefix.parent().filter(|p| p.is_dir()) {
                    out.insert(parent.to_path_buf());
                }
                if let Some(parent) = p.parent().map(|x| x.to_string_lossy().into_owned())
                    && parent.contains(['*', '?', '['])
                    && let Ok(dirs) = glob::glob(&parent)
                {
                    out.extend(dirs.flatten().filter(|d| d.is_dir()));
                }
            }
        }
        for path in self.current.keys() {
            if let Some(d) = path.parent() {
                out.insert(d.to_path_buf());
            }
        }
        out
    }

    /// Number of files open (followed or draining after rotation).
    pub fn open_files(&self) -> usize {
        self.current.len() + self.draining.len()
    }

    /// Committed positions.
    pub fn positions(&self) -> &BTreeMap<PathBuf, Position> {
        &self.positions
    }

    /// Reads new complete lines of every file into `batch`, stopping once
    /// about `budget` bytes of lines were added.
    pub fn poll(&mut self, batch: &mut LogBatch, budget: usize) -> PollOutcome {
        self.refresh_pod_labels();
        let found = expand(&self.targets, &mut self.glob_errors);
        let mut wait: HashSet<PathBuf> = HashSet::new();
        for (path, ti) in &found {
            if !self.current.contains_key(path) && self.wait_for_pod_labels(path, *ti) {
                wait.insert(path.clone());
            }
        }
        self.waiting.retain(|p, _| found.contains_key(p));
        let mut rd = Reader {
            buf: &mut self.buf,
            now: cairn_wire::time::now_ns(),
            max_line: self.max_line,
            budget: budget.max(1),
            last_ts: &mut self.last_ts,
            stats: &self.stats,
        };

        // Once: files rotated while the collector was stopped.
        if !self.recovered {
            self.recovered = true;
            for (path, pos) in &self.positions {
                let now_id = std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()));
                if now_id == Some((pos.dev, pos.ino)) {
                    continue;
                }
                let Some(target) = self.targets.iter().find(|t| t.matches(path)) else { continue };
                if let Some(mut t) = find_rotated(path, pos, target, self.max_line) {
                    rd.read(&mut t, batch, false);
                    self.draining.push(t);
                }
            }
        }

        // Files already followed, in a rotating order so that one busy file
        // cannot starve the others when the budget is small.
        let mut keys: Vec<PathBuf> = self.current.keys().cloned().collect();
        if !keys.is_empty() {
            let k = self.rr % keys.len();
            keys.rotate_left(k);
        }
        self.rr = self.rr.wrapping_add(1);
        for path in keys {
            if rd.budget == 0 {
                return PollOutcome { more: true };
            }
            let Some(mut t) = self.current.remove(&path) else { continue };
            let now_id = std::fs::metadata(&path).ok().filter(|m| m.is_file()).map(|m| (m.dev(), m.ino()));
            if found.contains_key(&path) && now_id == Some((t.dev, t.ino)) {
                rd.read(&mut t, batch, true);
                self.current.insert(path, t);
                continue;
            }
            // Rotated, removed or no longer matched: finish the old file first.
            if !rd.read(&mut t, batch, true) {
                self.current.insert(path, t);
                return PollOutcome { more: true };
            }
            tracing::info!(path = %path.display(), "file rotated or removed; following the new file, if any");
            t.rotated_at = Some(Instant::now());
            self.draining.push(t);
            if let Some(&ti) = found.get(&path)
                && let Some(mut nt) = open(&path, &self.targets[ti], None, self.max_line, &mut self.open_failures)
            {
                rd.read(&mut nt, batch, true);
                self.current.insert(path, nt);
            }
        }

        // Files seen for the first time.
        for (path, ti) in &found {
            if rd.budget == 0 {
                return PollOutcome { more: true };
            }
            if self.current.contains_key(path) || wait.contains(path) {
                continue;
            }
            // A checkpoint applies only to the first opening in this process.
            let resume = if self.opened.contains(path) { None } else { self.positions.get(path) };
            let Some(mut t) = open(path, &self.targets[*ti], resume, self.max_line, &mut self.open_failures) else {
                continue;
            };
            self.opened.insert(path.clone());
            rd.read(&mut t, batch, true);
            self.current.insert(path.clone(), t);
        }

        // Rotated-away files: read what the writer still appends, then close.
        let mut i = 0;
        while i < self.draining.len() {
            if rd.budget == 0 {
                return PollOutcome { more: true };
            }
            let t = &mut self.draining[i];
            let before = t.read_pos;
            let done = rd.read(t, batch, false);
            let idle = done && t.read_pos == before;
            if idle && t.rotated_at.is_some_and(|r| r.elapsed() >= ROTATION_GRACE) {
                let mut t = self.draining.swap_remove(i);
                // The writer has moved on: a last line without '\n' is complete.
                rd.finish(&mut t, batch);
                tracing::debug!(path = %t.path.display(), "closed rotated file");
                continue;
            }
            i += 1;
        }
        PollOutcome { more: rd.budget == 0 }
    }

    /// Records `checkpoint` (from a delivered [`LogBatch`]) as committed and
    /// persists all positions atomically. Positions of paths that are
    /// neither followed nor present any more are forgotten.
    pub fn commit(&mut self, checkpoint: &BTreeMap<PathBuf, Position>) -> Result<(), TailError> {
        for (p, pos) in checkpoint {
            self.positions.insert(p.clone(), *pos);
        }
        self.positions.retain(|p, _| self.current.contains_key(p) || p.exists());
        self.saved.positions.clone_from(&self.positions);
        save_positions(&self.state_dir, &self.saved)
    }
}

/// Opens `path` for tailing; `resume` is its checkpoint, used if it still
/// describes this file. Failures are logged once per path.
fn open(
    path: &Path,
    target: &Target,
    resume: Option<&Position>,
    max_line: usize,
    failures: &mut HashSet<PathBuf>,
) -> Option<Tracked> {
    let opened = File::open(path).and_then(|f| {
        let m = f.metadata()?;
        Ok((f, m))
    });
    let (file, meta) = match opened {
        Ok(x) => x,
        Err(e) => {
            if failures.insert(path.to_path_buf()) {
                tracing::warn!(path = %path.display(), error = %e, "cannot open log file; will retry");
            }
            return None;
        }
    };
    failures.remove(path);
    if !meta.is_file() {
        return None;
    }
    let (head_len, hash) = head_hash(&file, HEAD_BYTES).unwrap_or((0, fnv1a(&[])));
    let mut start = 0;
    if let Some(p) = resume {
        let same_file = p.dev == meta.dev() && p.ino == meta.ino();
        let same_head = same_file
            && (p.head_len as usize) <= HEAD_BYTES
            && head_hash(&file, p.head_len as usize).is_ok_and(|(n, h)| n == p.head_len as usize && h == p.head_hash);
        if same_head && p.offset <= meta.len() {
            start = p.offset;
        } else {
            tracing::info!(path = %path.display(), "checkpoint is for another file or a truncated one; reading from the start");
        }
    }
    Some(Tracked {
        path: path.to_path_buf(),
        file,
        dev: meta.dev(),
        ino: meta.ino(),
        read_pos: start,
        line_start: start,
        pending: Vec::new(),
        overflow: false,
        labels: target.stream_labels(path),
        format: target.format,
        multiline: target.multiline.clone(),
        asm: Assembler::new(target.format, target.multiline.clone(), max_line),
        stream_cache: (0, [None, None]),
        head_len: head_len as u32,
        head_hash: hash,
        rotated_at: None,
        failing: false,
    })
}

/// Looks in the directory of `path` for the file `pos` was checkpointed
/// for, and opens it at the checkpoint as a rotated file.
fn find_rotated(path: &Path, pos: &Position, target: &Target, max_line: usize) -> Option<Tracked> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let entries = std::fs::read_dir(dir).ok()?;
    for entry in entries.flatten() {
        let Ok(m) = entry.metadata() else { continue };
        if !m.is_file() || m.dev() != pos.dev || m.ino() != pos.ino {
            continue;
        }
        let rotated = entry.path();
        let file = File::open(&rotated).ok()?;
        let fm = file.metadata().ok()?;
        let (n, h) = head_hash(&file, pos.head_len as usize).ok()?;
        if (fm.dev(), fm.ino()) != (pos.dev, pos.ino)
            || fm.len() < pos.offset
            || n != pos.head_len as usize
            || h != pos.head_hash
        {
            return None;
        }
        tracing::info!(
            path = %path.display(), rotated = %rotated.display(), offset = pos.offset,
            "file was rotated while stopped; reading the rest of the old file"
        );
        return Some(Tracked {
            path: rotated,
            file,
            dev: pos.dev,
            ino: pos.ino,
            read_pos: pos.offset,
            line_start: pos.offset,
            pending: Vec::new(),
            overflow: false,
            labels: target.stream_labels(path),
            format: target.format,
            multiline: target.multiline.clone(),
            asm: Assembler::new(target.format, target.multiline.clone(), max_line),
            stream_cache: (0, [None, None]),
            head_len: pos.head_len,
            head_hash: pos.head_hash,
            rotated_at: Some(Instant::now()),
            failing: false,
        });
    }
    None
}

impl Reader<'_> {
    /// Reads `t` up to its end or until the budget runs out; returns true if
    /// the end was reached (or the file is unreadable). With `checkpoint`,
    /// the batch records the file's new position.
    fn read(&mut self, t: &mut Tracked, batch: &mut LogBatch, checkpoint: bool) -> bool {
        let lines_before = batch.lines;
        let res = self.read_inner(t, batch);
        if t.multiline.is_some() {
            let mut out = Emit {
                batch,
                labels: &t.labels,
                cache: &mut t.stream_cache,
                last_ts: self.last_ts,
                now: cairn_wire::time::now_ns(),
                stats: self.stats,
            };
            t.asm.flush_idle(&mut out);
        }
        if checkpoint && batch.lines > lines_before {
            match batch.checkpoint.get_mut(&t.path) {
                Some(p) => *p = t.position(),
                None => {
                    batch.checkpoint.insert(t.path.clone(), t.position());
                }
            }
        }
        match res {
            Ok(at_end) => {
                if t.failing {
                    t.failing = false;
                    tracing::info!(path = %t.path.display(), "log file readable again");
                }
                at_end
            }
            Err(e) => {
                if !t.failing {
                    t.failing = true;
                    tracing::warn!(path = %t.path.display(), error = %e, "cannot read log file; will retry");
                }
                true
            }
        }
    }

    fn read_inner(&mut self, t: &mut Tracked, batch: &mut LogBatch) -> io::Result<bool> {
        let len = t.file.metadata()?.len();
        // Truncated (copytruncate) — also when it grew past our offset again
        // before we looked: then its first bytes changed.
        let regrown = len != t.read_pos
            && t.head_len > 0
            && len >= u64::from(t.head_len)
            && head_hash(&t.file, t.head_len as usize).is_ok_and(|(n, h)| n == t.head_len as usize && h != t.head_hash);
        if len < t.read_pos || regrown {
            tracing::info!(path = %t.path.display(), size = len, offset = t.read_pos, "file truncated; reading from the start");
            // copytruncate: lines written after our last read and before
            // the truncation are only in the copy. Read its rest if found.
            self.read_copy(t, batch);
            // Entries held for joining came from the old content: send them.
            let mut out = Emit {
                batch,
                labels: &t.labels,
                cache: &mut t.stream_cache,
                last_ts: self.last_ts,
                now: cairn_wire::time::now_ns(),
                stats: self.stats,
            };
            t.asm.flush_all(&mut out);
            if !t.pending.is_empty() {
                self.line(t, batch, LineRef::Pending);
            }
            t.read_pos = 0;
            t.line_start = 0;
            t.pending.clear();
            t.overflow = false;
            t.head_len = 0;
        }
        t.refresh_head(len)?;
        loop {
            if self.budget == 0 {
                return Ok(false);
            }
            let n = match t.file.read_at(self.buf, t.read_pos) {
                Ok(0) => return Ok(true),
                Ok(n) => {
                    self.now = cairn_wire::time::now_ns();
                    n
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            let mut i = 0;
            while i < n {
                let rest = &self.buf[i..n];
                match memchr::memchr(b'\n', rest) {
                    Some(j) => {
                        let mut seg = &rest[..j];
                        if let Some(s) = seg.strip_suffix(b"\r") {
                            seg = s;
                        } else if seg.is_empty() && !t.overflow && t.pending.last() == Some(&b'\r') {
                            t.pending.pop();
                        }
                        let line_len;
                        if t.pending.is_empty() && seg.len() <= self.max_line {
                            // The whole line is in the buffer: no copy.
                            line_len = seg.len();
                            self.line(t, batch, LineRef::Buf(i, i + seg.len()));
                        } else {
                            append(t, seg, self.max_line);
                            line_len = t.pending.len();
                            self.line(t, batch, LineRef::Pending);
                        }
                        i += j + 1;
                        t.line_start = t.read_pos + i as u64;
                        self.budget = self.budget.saturating_sub(line_len.max(1));
                        if self.budget == 0 {
                            self.consumed(t, i);
                            return Ok(false);
                        }
                    }
                    None => {
                        append(t, rest, self.max_line);
                        i = n;
                    }
                }
            }
            self.consumed(t, n);
        }
    }

    /// After `t` was truncated: looks in its directory for the copy
    /// logrotate's `copytruncate` made (another regular file starting with
    /// the same bytes, at least as long as what was read) and reads the
    /// part of it not yet read, ending with a complete line.
    fn read_copy(&mut self, t: &mut Tracked, batch: &mut LogBatch) {
        if t.head_len == 0 {
            return;
        }
        let dir = match t.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for entry in entries.flatten() {
            let Ok(m) = entry.metadata() else { continue };
            if !m.is_file() || (m.dev(), m.ino()) == (t.dev, t.ino) || m.len() < t.read_pos {
                continue;
            }
            let Ok(file) = File::open(entry.path()) else { continue };
            let Ok((n, h)) = head_hash(&file, t.head_len as usize) else { continue };
            if n != t.head_len as usize || h != t.head_hash {
                continue;
            }
            tracing::info!(path = %t.path.display(), copy = %entry.path().display(), offset = t.read_pos, "reading the rest of the copy made before truncation");
            let mut copy = Tracked {
                path: entry.path(),
                file,
                dev: m.dev(),
                ino: m.ino(),
                read_pos: t.read_pos,
                line_start: t.line_start,
                pending: std::mem::take(&mut t.pending),
                overflow: t.overflow,
                labels: t.labels.clone(),
                format: t.format,
                multiline: t.multiline.clone(),
                asm: t.asm.take(),
                stream_cache: (0, [None, None]),
                head_len: t.head_len,
                head_hash: t.head_hash,
                rotated_at: None,
                failing: false,
            };
            let budget = std::mem::replace(&mut self.budget, usize::MAX);
            let _ = self.read_inner(&mut copy, batch);
            self.budget = budget.saturating_sub(usize::MAX - self.budget);
            self.finish(&mut copy, batch);
            t.overflow = false;
            return;
        }
    }

    fn consumed(&mut self, t: &mut Tracked, n: usize) {
        t.read_pos += n as u64;
        self.stats.bytes_read.fetch_add(n as u64, Relaxed);
    }

    /// A complete raw line, starting at `t.line_start`: decoded, joined if
    /// configured, and added to the batch.
    fn line(&mut self, t: &mut Tracked, batch: &mut LogBatch, at: LineRef) {
        let raw: &[u8] = match at {
            LineRef::Buf(a, b) => &self.buf[a..b],
            LineRef::Pending => &t.pending,
        };
        let mut out = Emit {
            batch,
            labels: &t.labels,
            cache: &mut t.stream_cache,
            last_ts: self.last_ts,
            now: self.now,
            stats: self.stats,
        };
        if t.format == LogFormat::Plain && t.multiline.is_none() {
            out.entry(STDOUT, None, raw, t.overflow);
        } else {
            t.asm.line(raw, t.overflow, t.line_start, &mut out);
        }
        t.pending.clear();
        t.overflow = false;
    }

    /// Emits everything `t` still holds (a last line without `\n`, entries
    /// being joined) and moves its checkpoint past it: the file ended.
    fn finish(&mut self, t: &mut Tracked, batch: &mut LogBatch) {
        if !t.pending.is_empty() {
            self.line(t, batch, LineRef::Pending);
        }
        let mut out = Emit {
            batch,
            labels: &t.labels,
            cache: &mut t.stream_cache,
            last_ts: self.last_ts,
            now: cairn_wire::time::now_ns(),
            stats: self.stats,
        };
        t.asm.flush_all(&mut out);
        t.line_start = t.read_pos;
    }
}

/// Where a complete raw line is.
#[derive(Clone, Copy)]
enum LineRef {
    /// `Reader::buf[a..b]`.
    Buf(usize, usize),
    /// `Tracked::pending`.
    Pending,
}

/// Adds finished entries to a batch.
struct Emit<'a> {
    batch: &'a mut LogBatch,
    labels: &'a [Labels; 2],
    /// Stream indexes in `batch` of `labels`, valid for `cache.0`.
    cache: &'a mut (u64, [Option<usize>; 2]),
    last_ts: &'a mut i64,
    /// The read time of lines without their own timestamp.
    now: i64,
    stats: &'a Stats,
}

impl EntrySink for Emit<'_> {
    fn entry(&mut self, stream: usize, ts: Option<i64>, msg: &[u8], truncated: bool) {
        let mut line = msg;
        if truncated {
            // Do not end a truncated line with a partial character.
            if let Err(e) = std::str::from_utf8(line)
                && e.error_len().is_none()
            {
                line = &line[..e.valid_up_to()];
            }
            self.stats.lines_truncated.fetch_add(1, Relaxed);
        }
        let ts = ts.unwrap_or_else(|| {
            let ts = if self.now > *self.last_ts { self.now } else { *self.last_ts + 1 };
            *self.last_ts = ts;
            ts
        });
        let s = stream.min(STDERR);
        if self.cache.0 != self.batch.generation {
            *self.cache = (self.batch.generation, [None, None]);
        }
        let i = match self.cache.1[s] {
            Some(i) => i,
            None => {
                let i = self.batch.stream_index(&self.labels[s]);
                self.cache.1[s] = Some(i);
                i
            }
        };
        match std::str::from_utf8(line) {
            Ok(text) => self.batch.push_line(i, ts, text),
            Err(_) => self.batch.push_line(i, ts, &String::from_utf8_lossy(line)),
        }
        self.stats.lines_read.fetch_add(1, Relaxed);
    }
}

/// Appends `seg` to the line being assembled, keeping at most `max` bytes.
fn append(t: &mut Tracked, seg: &[u8], max: usize) {
    let room = max.saturating_sub(t.pending.len());
    if seg.len() > room {
        t.overflow = true;
    }
    t.pending.extend_from_slice(&seg[..seg.len().min(room)]);
}

fn load_positions(dir: &Path) -> Result<SavedState, TailError> {
    let path = dir.join(POSITIONS_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(SavedState::default()),
        Err(source) => return Err(TailError::ReadPositions { path, source }),
    };
    #[derive(Deserialize)]
    struct VersionOnly {
        version: u32,
    }
    let parsed = serde_json::from_slice::<VersionOnly>(&bytes).and_then(|v| {
        if v.version != POSITIONS_VERSION {
            return Ok(Err(v.version));
        }
        serde_json::from_slice::<PositionsFile>(&bytes).map(Ok)
    });
    match parsed {
        Ok(Ok(f)) => Ok(SavedState {
            positions: f.positions.into_iter().map(|(k, v)| (PathBuf::from(k), v)).collect(),
            queue_acked: f.queue_acked,
            journal_cursor: f.journal_cursor,
        }),
        Ok(Err(version)) => Err(TailError::UnknownPositionsVersion { path, version }),
        Err(e) => {
            let aside = dir.join(POSITIONS_CORRUPT_FILE);
            tracing::error!(
                path = %path.display(), error = %e, moved_to = %aside.display(),
                "positions file is not valid; reading all files from the start (lines may be sent again)"
            );
            std::fs::rename(&path, &aside).map_err(|source| TailError::WritePositions { path, source })?;
            Ok(SavedState::default())
        }
    }
}

fn save_positions(dir: &Path, state: &SavedState) -> Result<(), TailError> {
    let file = PositionsFile {
        version: POSITIONS_VERSION,
        positions: state.positions.iter().map(|(k, v)| (k.to_string_lossy().into_owned(), *v)).collect(),
        queue_acked: state.queue_acked,
        journal_cursor: state.journal_cursor.clone(),
    };
    let tmp = dir.join(POSITIONS_TMP_FILE);
    let dst = dir.join(POSITIONS_FILE);
    let werr = |path: &Path| {
        let path = path.to_path_buf();
        move |source| TailError::WritePositions { path, source }
    };
    let body =
        serde_json::to_vec(&file).map_err(|e| TailError::WritePositions { path: dst.clone(), source: e.into() })?;
    let mut f = File::create(&tmp).map_err(werr(&tmp))?;
    f.write_all(&body).map_err(werr(&tmp))?;
    f.sync_all().map_err(werr(&tmp))?;
    drop(f);
    std::fs::rename(&tmp, &dst).map_err(werr(&dst))?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(werr(dir))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::OpenOptions;

    struct Fixture {
        dir: tempfile::TempDir,
        state: tempfile::TempDir,
        stats: Arc<Stats>,
    }

    impl Fixture {
        fn new() -> Self {
            Fixture { dir: tempfile::tempdir().unwrap(), state: tempfile::tempdir().unwrap(), stats: Arc::default() }
        }

        fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }

        fn tailer(&self, max_line: usize) -> Tailer {
            let target = FileTarget {
                paths: vec![format!("{}/*.log", self.dir.path().display())],
                labels: BTreeMap::from([("job".to_string(), "test".to_string())]),
                exclude: vec![format!("{}/skip*.log", self.dir.path().display())],
                ..FileTarget::default()
            };
            Tailer::new(&[target], "box1", max_line, self.state.path(), self.stats.clone()).unwrap()
        }

        /// A tailer of pod logs under `dir` only.
        fn pod_tailer(&self, multiline: &str) -> Tailer {
            let mut t = Tailer::new(&[], "box1", 1024, self.state.path(), self.stats.clone()).unwrap();
            let cfg = PodLogsConfig {
                enabled: true,
                root: self.dir.path().to_path_buf(),
                multiline: crate::config::MultilineConfig { first_line: multiline.into(), ..Default::default() },
                ..PodLogsConfig::default()
            };
            t.add_pods(&cfg, "node-1").unwrap();
            t
        }

        fn append(&self, name: &str, data: &[u8]) {
            let mut f = OpenOptions::new().create(true).append(true).open(self.path(name)).unwrap();
            f.write_all(data).unwrap();
        }
    }

    /// Polls once and returns the lines in read order.
    fn poll(t: &mut Tailer) -> (Vec<String>, LogBatch) {
        let mut b = LogBatch::new();
        t.poll(&mut b, usize::MAX);
        (lines(&b), b)
    }

    fn lines(b: &LogBatch) -> Vec<String> {
        let streams = b.streams();
        let mut all: Vec<&Entry> = streams.iter().flat_map(|s| &s.entries).collect();
        all.sort_by_key(|e| e.ts);
        all.iter().map(|e| e.line.clone()).collect()
    }

    #[test]
    fn appended_lines_with_labels() {
        let fx = Fixture::new();
        fx.append("a.log", b"one\ntwo\n");
        fx.append("skip-me.log", b"excluded\n");
        fx.append("other.txt", b"not matched\n");
        let mut t = fx.tailer(1024);
        let (l, b) = poll(&mut t);
        assert_eq!(l, ["one", "two"]);
        let streams = b.streams();
        let s = &streams[0];
        assert_eq!(s.labels.get("job"), Some("test"));
        assert_eq!(s.labels.get("host"), Some("box1"));
        assert_eq!(s.labels.get("filename"), Some(fx.path("a.log").to_str().unwrap()));
        assert!(s.entries.windows(2).all(|w| w[0].ts < w[1].ts));
        assert_eq!(b.checkpoint()[&fx.path("a.log")].offset, 8);

        assert!(poll(&mut t).0.is_empty());
        fx.append("a.log", b"three\n");
        fx.append("b.log", b"bee\n");
        let mut got = poll(&mut t).0;
        got.sort();
        assert_eq!(got, ["bee", "three"]);
        assert_eq!(fx.stats.lines_read.load(Relaxed), 4);
        assert_eq!(t.open_files(), 2);
    }

    /// The batch's own protobuf encoder produces what prost produces from
    /// the same entries.
    #[test]
    fn batch_encoding_matches_prost() {
        use cairn_wire::proto::PushRequest;
        use prost::Message;
        let mut b = LogBatch::new();
        let a = Labels::from_pairs([("job", "a"), ("host", "h")]).unwrap();
        let z = Labels::from_pairs([("job", "z")]).unwrap();
        for (l, ts, line) in [
            (&a, 1_700_000_000_123_456_789, "first ü"),
            (&z, 5, ""),
            (&a, 0, "zero time"),
            (&z, 2_000_000_000, "whole second"),
            (&a, -1_500_000_000, "before 1970"),
        ] {
            b.push_entry(l, Entry { ts, line: line.into(), metadata: vec![] });
        }
        let mut ours = Vec::new();
        b.encode_push_request(&mut ours);
        let theirs =
            cairn_wire::proto::snappy_decompress(&crate::sink::encode_push_request(&b.streams()), 1 << 20).unwrap();
        assert_eq!(PushRequest::decode(ours.as_slice()).unwrap(), PushRequest::decode(theirs.as_slice()).unwrap());
        assert_eq!(ours, theirs);
        // Cleared batches reuse their buffers and start over.
        b.clear();
        assert!(b.is_empty() && b.streams().is_empty());
        b.push_entry(&z, Entry { ts: 1, line: "again".into(), metadata: vec![] });
        assert_eq!(b.streams().len(), 1);
        assert_eq!(b.streams()[0].entries[0].line, "again");
    }

    #[test]
    fn partial_lines_wait_for_their_newline() {
        let fx = Fixture::new();
        fx.append("a.log", b"par");
        let mut t = fx.tailer(1024);
        assert!(poll(&mut t).0.is_empty());
        fx.append("a.log", b"tial\r\nnext");
        let (l, b) = poll(&mut t);
        assert_eq!(l, ["partial"]);
        assert_eq!(b.checkpoint()[&fx.path("a.log")].offset, 9);
        fx.append("a.log", b"\r");
        assert!(poll(&mut t).0.is_empty());
        fx.append("a.log", b"\n\n");
        assert_eq!(poll(&mut t).0, ["next", ""]);
    }

    #[test]
    fn long_lines_are_truncated_and_bad_utf8_replaced() {
        let fx = Fixture::new();
        // 'é' is two bytes: a cut at 5 bytes would split the third one.
        fx.append("a.log", "ééééé\nok\n".as_bytes());
        fx.append("a.log", b"bad \xff byte\n");
        let mut t = fx.tailer(5);
        assert_eq!(poll(&mut t).0, ["éé", "ok", "bad \u{fffd}"]);
        assert_eq!(fx.stats.lines_truncated.load(Relaxed), 2);
    }

    #[test]
    fn rename_rotation_reads_old_file_to_end_then_new_from_start() {
        let fx = Fixture::new();
        fx.append("app.log", b"1\n2\n");
        let mut t = fx.tailer(1024);
        assert_eq!(poll(&mut t).0, ["1", "2"]);
        fx.append("app.log", b"3\n");
        std::fs::rename(fx.path("app.log"), fx.path("app.log.1")).unwrap();
        fx.append("app.log", b"4\n");
        let (l, b) = poll(&mut t);
        assert_eq!(l, ["3", "4"]);
        let new_ino = std::fs::metadata(fx.path("app.log")).unwrap().ino();
        assert_eq!(b.checkpoint()[&fx.path("app.log")].ino, new_ino);
        assert_eq!(b.checkpoint()[&fx.path("app.log")].offset, 2);
        // The writer still had the old file open for a moment.
        fx.append("app.log.1", b"late\n");
        fx.append("app.log", b"5\n");
        let mut got = poll(&mut t).0;
        got.sort();
        assert_eq!(got, ["5", "late"]);
        assert_eq!(t.open_files(), 2);
    }

    #[test]
    fn removed_file_is_finished_and_a_new_one_starts_at_zero() {
        let fx = Fixture::new();
        fx.append("app.log", b"1\n");
        let mut t = fx.tailer(1024);
        assert_eq!(poll(&mut t).0, ["1"]);
        fx.append("app.log", b"2\n");
        std::fs::remove_file(fx.path("app.log")).unwrap();
        assert_eq!(poll(&mut t).0, ["2"]);
        fx.append("app.log", b"new\n");
        assert_eq!(poll(&mut t).0, ["new"]);
    }

    #[test]
    fn copytruncate_restarts_at_zero() {
        let fx = Fixture::new();
        fx.append("app.log", b"aaaa\nbbbb\n");
        let mut t = fx.tailer(1024);
        assert_eq!(poll(&mut t).0, ["aaaa", "bbbb"]);
        OpenOptions::new().write(true).truncate(true).open(fx.path("app.log")).unwrap();
        fx.append("app.log", b"c\n");
        let (l, b) = poll(&mut t);
        assert_eq!(l, ["c"]);
        assert_eq!(b.checkpoint()[&fx.path("app.log")].offset, 2);
    }

    #[test]
    fn copytruncate_reads_the_rest_of_the_copy() {
        let fx = Fixture::new();
        fx.append("app.log", b"aaaa\nbbbb\n");
        let mut t = fx.tailer(1024);
        assert_eq!(poll(&mut t).0, ["aaaa", "bbbb"]);
        // Written after our last read, then copied away and truncated.
        fx.append("app.log", b"cccc\n");
        std::fs::copy(fx.path("app.log"), fx.dir.path().join("app.log.1")).unwrap();
        OpenOptions::new().write(true).truncate(true).open(fx.path("app.log")).unwrap();
        fx.append("app.log", b"d\n");
        let (l, b) = poll(&mut t);
        assert_eq!(l, ["cccc", "d"]);
        assert_eq!(b.checkpoint()[&fx.path("app.log")].offset, 2);
    }

    #[test]
    fn restart_resumes_at_last_commit_without_loss_or_duplicates() {
        let fx = Fixture::new();
        fx.append("a.log", b"1\n2\n");
        {
            let mut t = fx.tailer(1024);
            let (l, b) = poll(&mut t);
            assert_eq!(l, ["1", "2"]);
            t.commit(b.checkpoint()).unwrap();
            fx.append("a.log", b"3\npart");
            // Read but never acknowledged: must come again after a restart.
            assert_eq!(poll(&mut t).0, ["3"]);
        }
        let saved: serde_json::Value =
            serde_json::from_slice(&std::fs::read(fx.state.path().join(POSITIONS_FILE)).unwrap()).unwrap();
        assert_eq!(saved["version"], 1);
        assert_eq!(saved["positions"][fx.path("a.log").to_str().unwrap()]["offset"], 4);

        fx.append("a.log", b"ial\n");
        let mut t = fx.tailer(1024);
        let (l, b) = poll(&mut t);
        assert_eq!(l, ["3", "partial"]);
        t.commit(b.checkpoint()).unwrap();
        fx.append("a.log", b"4\n");
        let mut t = fx.tailer(1024);
        assert_eq!(poll(&mut t).0, ["4"]);
    }

    #[test]
    fn rotation_while_stopped_is_recovered() {
        let fx = Fixture::new();
        fx.append("app.log", b"1\n2\n");
        {
            let mut t = fx.tailer(1024);
            let (l, b) = poll(&mut t);
            assert_eq!(l, ["1", "2"]);
            t.commit(b.checkpoint()).unwrap();
        }
        fx.append("app.log", b"3\n");
        std::fs::rename(fx.path("app.log"), fx.path("app.log.1")).unwrap();
        fx.append("app.log", b"4\n");
        let mut t = fx.tailer(1024);
        let (l, b) = poll(&mut t);
        assert_eq!(l, ["3", "4"]);
        assert!(b.streams().iter().all(|s| s.labels.get("filename") == Some(fx.path("app.log").to_str().unwrap())));
        assert!(poll(&mut t).0.is_empty());
    }

    #[test]
    fn checkpoint_of_another_file_is_not_applied() {
        let fx = Fixture::new();
        fx.append("a.log", b"first line of a new file\nsecond\n");
        let m = std::fs::metadata(fx.path("a.log")).unwrap();
        // Same device and inode (as after inode reuse), different content.
        let mut pos = BTreeMap::new();
        pos.insert(fx.path("a.log"), Position { dev: m.dev(), ino: m.ino(), offset: 25, head_len: 30, head_hash: 42 });
        save_positions(fx.state.path(), &SavedState { positions: pos.clone(), ..Default::default() }).unwrap();
        let mut t = fx.tailer(1024);
        assert_eq!(poll(&mut t).0, ["first line of a new file", "second"]);

        // A checkpoint past the end of the file (truncated while stopped).
        let (n, h) = head_hash(&File::open(fx.path("a.log")).unwrap(), 256).unwrap();
        pos.insert(
            fx.path("a.log"),
            Position { dev: m.dev(), ino: m.ino(), offset: 999, head_len: n as u32, head_hash: h },
        );
        save_positions(fx.state.path(), &SavedState { positions: pos.clone(), ..Default::default() }).unwrap();
        assert_eq!(poll(&mut fx.tailer(1024)).0.len(), 2);

        // The matching checkpoint is applied.
        pos.insert(
            fx.path("a.log"),
            Position { dev: m.dev(), ino: m.ino(), offset: 25, head_len: n as u32, head_hash: h },
        );
        save_positions(fx.state.path(), &SavedState { positions: pos.clone(), ..Default::default() }).unwrap();
        assert_eq!(poll(&mut fx.tailer(1024)).0, ["second"]);
    }

    #[test]
    fn budget_limits_a_poll_without_losing_lines() {
        let fx = Fixture::new();
        let mut want = Vec::new();
        for i in 0..100 {
            fx.append("a.log", format!("line {i:03}\n").as_bytes());
            want.push(format!("line {i:03}"));
        }
        let mut t = fx.tailer(1024);
        let mut got = Vec::new();
        let mut polls = 0;
        loop {
            let mut b = LogBatch::new();
            let out = t.poll(&mut b, 64);
            assert!(b.bytes() <= 64 + 8);
            got.extend(lines(&b));
            t.commit(b.checkpoint()).unwrap();
            polls += 1;
            if !out.more {
                break;
            }
        }
        assert!(polls > 10);
        assert_eq!(got, want);
        assert!(poll(&mut fx.tailer(1024)).0.is_empty());
    }

    /// `positions.json` as written before `queue_acked` and
    /// `journal_cursor` existed still reads; the new fields round-trip.
    #[test]
    fn positions_file_without_and_with_the_optional_fields() {
        let fx = Fixture::new();
        std::fs::write(
            fx.state.path().join(POSITIONS_FILE),
            br#"{"version":1,"positions":{"/var/log/a.log":{"dev":1,"ino":2,"offset":3}}}"#,
        )
        .unwrap();
        let s = SavedState::load(fx.state.path()).unwrap();
        assert_eq!(s.queue_acked, 0);
        assert_eq!(s.journal_cursor, None);
        assert_eq!(s.positions[Path::new("/var/log/a.log")].offset, 3);
        let s2 = SavedState { queue_acked: 7, journal_cursor: Some("s=1;i=2".into()), ..s };
        s2.save(fx.state.path()).unwrap();
        assert_eq!(SavedState::load(fx.state.path()).unwrap(), s2);
    }

    #[test]
    fn corrupt_or_future_positions_files() {
        let fx = Fixture::new();
        fx.append("a.log", b"x\n");
        std::fs::write(fx.state.path().join(POSITIONS_FILE), b"{not json").unwrap();
        let mut t = fx.tailer(1024);
        assert_eq!(poll(&mut t).0, ["x"]);
        assert!(fx.state.path().join(POSITIONS_CORRUPT_FILE).exists());

        std::fs::write(fx.state.path().join(POSITIONS_FILE), br#"{"version": 9, "positions": {}}"#).unwrap();
        let e = Tailer::new(&[], "h", 10, fx.state.path(), Arc::default()).unwrap_err();
        assert!(matches!(e, TailError::UnknownPositionsVersion { version: 9, .. }), "{e}");
    }

    const POD: &str = "default_web-7d4b9_0b1c2d3e-1111-2222-3333-444455556666/nginx";

    #[test]
    fn pod_logs_cri_with_partial_lines_and_checkpoints() {
        let fx = Fixture::new();
        std::fs::create_dir_all(fx.path(POD)).unwrap();
        let f = format!("{POD}/0.log");
        fx.append(&f, b"2024-05-01T10:00:00.000000001Z stdout F hello\n");
        fx.append(&f, b"2024-05-01T10:00:00.000000002Z stdout P hel\n");
        fx.append(&f, b"2024-05-01T10:00:00.000000003Z stderr F oops\n");
        let mut t = fx.pod_tailer("");
        let (_, b) = poll(&mut t);
        let find = |b: &LogBatch, stream: &str| -> Vec<(i64, String)> {
            b.streams()
                .iter()
                .filter(|s| s.labels.get("stream") == Some(stream))
                .flat_map(|s| s.entries.iter().map(|e| (e.ts, e.line.clone())))
                .collect()
        };
        let base = 1_714_557_600_000_000_000;
        assert_eq!(find(&b, "stdout"), [(base + 1, "hello".to_string())]);
        assert_eq!(find(&b, "stderr"), [(base + 3, "oops".to_string())]);
        let streams = b.streams();
        let s = streams.iter().find(|s| s.labels.get("stream") == Some("stderr")).unwrap();
        assert_eq!(
            s.labels.to_string(),
            r#"{container="nginx", job="default/nginx", namespace="default", node="node-1", pod="web-7d4b9", stream="stderr"}"#
        );
        // The checkpoint stops before the held partial line.
        let first_len = "2024-05-01T10:00:00.000000001Z stdout F hello\n".len() as u64;
        assert_eq!(b.checkpoint()[&fx.path(&f)].offset, first_len);
        t.commit(b.checkpoint()).unwrap();

        // A restart re-reads the partial line, then joins it with its end.
        fx.append(&f, b"2024-05-01T10:00:00.000000004Z stdout F lo again\n");
        let mut t = fx.pod_tailer("");
        let (_, b) = poll(&mut t);
        // The stderr line after the partial one is read again, with the
        // same timestamp (the receiver drops the identical copy).
        assert_eq!(find(&b, "stderr"), [(base + 3, "oops".to_string())]);
        assert_eq!(find(&b, "stdout"), [(base + 2, "hello again".to_string())]);
        assert_eq!(b.checkpoint()[&fx.path(&f)].offset, std::fs::metadata(fx.path(&f)).unwrap().len());
    }

    #[test]
    fn pod_logs_docker_json_and_multiline() {
        let fx = Fixture::new();
        std::fs::create_dir_all(fx.path(POD)).unwrap();
        let f = format!("{POD}/1.log");
        for (log, t) in [
            (r#"2024-05-01 ERROR failed\n"#, 1),
            (r#"Traceback (most recent call last):\n"#, 2),
            (r#"  File \"x.py\", line 1\n"#, 3),
            (r#"2024-05-01 INFO "#, 4),
            (r#"recovered\n"#, 5),
            (r#"2024-05-01 INFO next\n"#, 6),
        ] {
            fx.append(&f, format!(r#"{{"log":"{log}","stream":"stdout","time":"2024-05-01T10:00:0{t}Z"}}"#).as_bytes());
            fx.append(&f, b"\n");
        }
        let mut t = fx.pod_tailer(r"^\d{4}-");
        let (l, b) = poll(&mut t);
        assert_eq!(
            l,
            [
                "2024-05-01 ERROR failed\nTraceback (most recent call last):\n  File \"x.py\", line 1",
                "2024-05-01 INFO recovered"
            ]
        );
        let streams = b.streams();
        let e = &streams[0].entries[0];
        assert_eq!(e.ts, 1_714_557_601_000_000_000);
        // The last entry is held (more continuation lines may come).
        let held_at: u64 =
            std::fs::read_to_string(fx.path(&f)).unwrap().lines().take(5).map(|l| l.len() as u64 + 1).sum();
        assert_eq!(b.checkpoint()[&fx.path(&f)].offset, held_at);
    }

    /// Regression: after reading the rest of a copytruncate copy, the
    /// truncated file's lines were no longer decoded (its line assembler
    /// was replaced by a plain-text one).
    #[tokio::test]
    async fn pod_labels_from_the_api_wait_for_the_listing_and_follow_changes() {
        let fx = Fixture::new();
        std::fs::create_dir_all(fx.path(POD)).unwrap();
        let f = format!("{POD}/0.log");
        fx.append(&f, b"2024-05-01T10:00:00.000000001Z stdout F first\n");
        let index = Arc::new(PodIndex::new(&["app".to_string(), "app.kubernetes.io/name".to_string()]));
        let mut t = fx.pod_tailer("");
        t.set_pod_index(index.clone());

        // The pod is unknown: its log waits, and a listing is asked for.
        let (l, _) = poll(&mut t);
        assert!(l.is_empty(), "{l:?}");
        tokio::time::timeout(Duration::from_secs(5), index.refresh_requested()).await.expect("refresh asked");

        let mut pod = crate::kube::Pod::default();
        pod.metadata.uid = "0b1c2d3e-1111-2222-3333-444455556666".into();
        pod.metadata.labels = BTreeMap::from([
            ("app".to_string(), "web".to_string()),
            ("app.kubernetes.io/name".to_string(), "shop-web".to_string()),
            // Would clash with labels the collector sets: ignored.
            ("stream".to_string(), "x".to_string()),
            ("unlisted".to_string(), "y".to_string()),
        ]);
        index.update(std::slice::from_ref(&pod));
        let (l, b) = poll(&mut t);
        assert_eq!(l, ["first"]);
        assert_eq!(
            b.streams()[0].labels.to_string(),
            r#"{app="web", app_kubernetes_io_name="shop-web", container="nginx", job="default/nginx", namespace="default", node="node-1", pod="web-7d4b9", stream="stdout"}"#
        );

        // A relabelled pod: the next lines carry the new value.
        pod.metadata.labels.insert("app".into(), "web2".into());
        index.update(std::slice::from_ref(&pod));
        fx.append(&f, b"2024-05-01T10:00:00.000000002Z stdout F second\n");
        let (l, b) = poll(&mut t);
        assert_eq!(l, ["second"]);
        assert_eq!(b.streams()[0].labels.get("app"), Some("web2"));
    }

    #[test]
    fn pod_log_copytruncate_keeps_decoding() {
        let fx = Fixture::new();
        std::fs::create_dir_all(fx.path(POD)).unwrap();
        let f = format!("{POD}/0.log");
        fx.append(&f, b"2024-05-01T10:00:00Z stdout F one\n");
        let mut t = fx.pod_tailer("");
        assert_eq!(poll(&mut t).0, ["one"]);
        fx.append(&f, b"2024-05-01T10:00:01Z stderr F two\n");
        std::fs::copy(fx.path(&f), fx.path(&format!("{f}.1"))).unwrap();
        OpenOptions::new().write(true).truncate(true).open(fx.path(&f)).unwrap();
        fx.append(&f, b"2024-05-01T10:00:02Z stdout F three\n");
        let (l, b) = poll(&mut t);
        assert_eq!(l, ["two", "three"]);
        assert!(b.streams().iter().all(|s| s.labels.get("stream").is_some()));
        fx.append(&f, b"2024-05-01T10:00:03Z stderr F four\n");
        let (l, b) = poll(&mut t);
        assert_eq!(l, ["four"]);
        assert_eq!(b.streams()[0].labels.get("stream"), Some("stderr"));
    }

    #[test]
    fn pod_paths_to_labels() {
        let root = Path::new("/var/log/pods");
        let l = pod_labels(root, Path::new("/var/log/pods/kube-system_coredns-1_abc/coredns/3.log"));
        assert_eq!(
            l,
            [("container", "coredns".into()), ("namespace", "kube-system".into()), ("pod", "coredns-1".into())]
        );
        let l = pod_labels(root, Path::new("/var/log/pods/odd/c/0.log"));
        assert_eq!(l, [("container", "c".into()), ("pod", "odd".into())]);
        assert!(pod_labels(root, Path::new("/elsewhere/a/b/0.log")).is_empty());
    }

    #[test]
    fn commit_forgets_vanished_files() {
        let fx = Fixture::new();
        fx.append("a.log", b"x\n");
        fx.append("b.log", b"y\n");
        let mut t = fx.tailer(1024);
        let (_, b) = poll(&mut t);
        t.commit(b.checkpoint()).unwrap();
        assert_eq!(t.positions().len(), 2);
        std::fs::remove_file(fx.path("b.log")).unwrap();
        poll(&mut t);
        t.commit(&BTreeMap::new()).unwrap();
        assert_eq!(t.positions().keys().collect::<Vec<_>>(), [&fx.path("a.log")]);
        assert_eq!(
            count_files(&[FileTarget {
                paths: vec![format!("{}/*", fx.dir.path().display())],
                ..FileTarget::default()
            }]),
            1
        );
    }
}
