//! The log engine: streams (a tenant plus a label set) of entries
//! (nanosecond timestamp, line, structured metadata), written through the WAL.
//!
//! Entries may arrive in any order and are kept sorted by timestamp; entries
//! with equal timestamps keep their arrival order. An entry identical to one
//! already stored (same stream, timestamp and line) is accepted as a no-op,
//! as Loki does.
//!
//! Current stage: the head keeps entries uncompressed in memory and is rebuilt
//! from the WAL at start; compressed chunks, the content index, blocks and
//! retention replace this in the log-storage issue without changing this
//! API's meaning.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Mutex, RwLock};

pub use cairn_wire::{Entry, StreamEntries};
use cairn_wire::{Labels, Matcher, matcher::matches_all};

use crate::codec::{Reader, put_bytes, put_uvarint, put_varint};
use crate::wal::{ReplayStats, Wal, WalOptions};
use crate::{StoreError, WriteOutcome};

/// WAL record type of a log write batch.
pub const RECORD_ENTRIES: u8 = 2;

struct Stream {
    labels: Labels,
    /// Sorted by `ts`; stable for equal timestamps.
    entries: Vec<Entry>,
}

#[derive(Default)]
struct TenantLogs {
    streams: Vec<Stream>,
    by_labels: HashMap<Labels, usize>,
}

/// Size of one stream's data within a time range.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamStats {
    /// Entries in the range.
    pub entries: u64,
    /// Bytes of their lines.
    pub bytes: u64,
    /// Chunks holding them (0 until the store has chunks).
    pub chunks: u64,
}

/// The log store.
pub struct LogStore {
    wal: Wal,
    write_lock: Mutex<()>,
    head: RwLock<HashMap<String, TenantLogs>>,
    replay: ReplayStats,
}

fn encode_batch(buf: &mut Vec<u8>, tenant: &str, batch: &[StreamEntries]) {
    put_bytes(buf, tenant.as_bytes());
    put_uvarint(buf, batch.len() as u64);
    for s in batch {
        put_uvarint(buf, s.labels.len() as u64);
        for l in &s.labels {
            put_bytes(buf, l.name.as_bytes());
            put_bytes(buf, l.value.as_bytes());
        }
        put_uvarint(buf, s.entries.len() as u64);
        for e in &s.entries {
            put_varint(buf, e.ts);
            put_bytes(buf, e.line.as_bytes());
            put_uvarint(buf, e.metadata.len() as u64);
            for (k, v) in &e.metadata {
                put_bytes(buf, k.as_bytes());
                put_bytes(buf, v.as_bytes());
            }
        }
    }
}

fn decode_batch(payload: &[u8]) -> Result<(String, Vec<StreamEntries>), crate::codec::DecodeError> {
    let mut r = Reader::new(payload);
    let tenant = r.str()?.to_string();
    let n = r.count(2)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let nl = r.count(2)?;
        let mut pairs = Vec::with_capacity(nl);
        for _ in 0..nl {
            pairs.push((r.str()?.to_string(), r.str()?.to_string()));
        }
        let labels = Labels::from_pairs(pairs)
            .map_err(|_| crate::codec::DecodeError { offset: 0, reason: "invalid label set in WAL record" })?;
        let ne = r.count(3)?;
        let mut entries = Vec::with_capacity(ne);
        for _ in 0..ne {
            let ts = r.varint()?;
            let line = r.str()?.to_string();
            let nm = r.count(2)?;
            let mut metadata = Vec::with_capacity(nm);
            for _ in 0..nm {
                metadata.push((r.str()?.to_string(), r.str()?.to_string()));
            }
            entries.push(Entry { ts, line, metadata });
        }
        out.push(StreamEntries { labels, entries });
    }
    Ok((tenant, out))
}

/// Position after the last entry with timestamp `ts` (upper bound).
fn upper_bound(entries: &[Entry], ts: i64) -> usize {
    entries.partition_point(|e| e.ts <= ts)
}

fn is_duplicate(entries: &[Entry], e: &Entry) -> bool {
    let hi = upper_bound(entries, e.ts);
    entries[..hi].iter().rev().take_while(|x| x.ts == e.ts).any(|x| x.line == e.line)
}

fn apply(head: &mut HashMap<String, TenantLogs>, tenant: &str, batch: Vec<StreamEntries>) {
    let tl = head.entry(tenant.to_string()).or_default();
    for s in batch {
        let idx = match tl.by_labels.get(&s.labels) {
            Some(&i) => i,
            None => {
                let i = tl.streams.len();
                tl.by_labels.insert(s.labels.clone(), i);
                tl.streams.push(Stream { labels: s.labels, entries: Vec::new() });
                i
            }
        };
        let st = &mut tl.streams[idx];
        for e in s.entries {
            if is_duplicate(&st.entries, &e) {
                continue;
            }
            match st.entries.last() {
                Some(last) if last.ts > e.ts => {
                    let pos = upper_bound(&st.entries, e.ts);
                    st.entries.insert(pos, e);
                }
                _ => st.entries.push(e),
            }
        }
    }
}

impl LogStore {
    /// Opens the store in `dir` (its WAL lives in `dir` itself) and replays it.
    pub fn open(dir: &Path, wal_opts: WalOptions) -> Result<Self, StoreError> {
        let mut head = HashMap::new();
        let (wal, replay) = Wal::open(dir, wal_opts, |typ, payload| {
            if typ != RECORD_ENTRIES {
                return Err(StoreError::Corrupt {
                    path: dir.to_path_buf(),
                    offset: 0,
                    reason: format!("unknown log WAL record type {typ}"),
                });
            }
            let (tenant, batch) = decode_batch(payload).map_err(|e| StoreError::Corrupt {
                path: dir.to_path_buf(),
                offset: e.offset as u64,
                reason: format!("log WAL record: {}", e.reason),
            })?;
            apply(&mut head, &tenant, batch);
            Ok(())
        })?;
        Ok(LogStore { wal, write_lock: Mutex::new(()), head: RwLock::new(head), replay })
    }

    /// What the WAL replay at open found.
    pub fn replay_stats(&self) -> &ReplayStats {
        &self.replay
    }

    /// Writes a batch; returns once it is in the WAL. Validation of lines and
    /// labels against limits happens before this call, in the aggregator.
    pub fn push(&self, tenant: &str, batch: Vec<StreamEntries>) -> Result<WriteOutcome, StoreError> {
        let accepted = batch.iter().map(|s| s.entries.len()).sum();
        let batch: Vec<StreamEntries> = batch.into_iter().filter(|s| !s.entries.is_empty()).collect();
        if !batch.is_empty() {
            let _w = self.write_lock.lock().unwrap_or_else(|p| p.into_inner());
            let mut buf = Vec::new();
            encode_batch(&mut buf, tenant, &batch);
            self.wal.append(RECORD_ENTRIES, &buf)?;
            let mut head = self.head.write().unwrap_or_else(|p| p.into_inner());
            apply(&mut head, tenant, batch);
        }
        Ok(WriteOutcome { accepted, rejected: Vec::new() })
    }

    /// Calls `f(labels, entries)` for every stream of `tenant` matching all
    /// `matchers`, with its entries in `[start, end)` sorted by timestamp
    /// (streams with none are skipped). Holds a read lock during the calls.
    pub fn scan(&self, tenant: &str, matchers: &[Matcher], start: i64, end: i64, f: &mut dyn FnMut(&Labels, &[Entry])) {
        let head = self.head.read().unwrap_or_else(|p| p.into_inner());
        let Some(tl) = head.get(tenant) else {
            return;
        };
        for s in &tl.streams {
            if !matches_all(matchers, &s.labels) {
                continue;
            }
            let lo = s.entries.partition_point(|e| e.ts < start);
            let hi = s.entries.partition_point(|e| e.ts < end);
            if lo < hi {
                f(&s.labels, &s.entries[lo..hi]);
            }
        }
    }

    /// Streams of `tenant` matching all `matchers` (empty: every stream) with
    /// at least one entry in `[start, end)`, sorted by labels, with the size
    /// of their data in that range. Backs `/loki/api/v1/series`, `/labels`,
    /// `/label/…/values`, `/index/stats` and `/index/volume`.
    pub fn streams(&self, tenant: &str, matchers: &[Matcher], start: i64, end: i64) -> Vec<(Labels, StreamStats)> {
        let mut out = Vec::new();
        self.scan(tenant, matchers, start, end, &mut |labels, entries| {
            let bytes = entries.iter().map(|e| e.line.len() as u64).sum();
            out.push((labels.clone(), StreamStats { entries: entries.len() as u64, bytes, chunks: 0 }));
        });
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Number of streams and entries held, over all tenants.
    pub fn counts(&self) -> (usize, usize) {
        let head = self.head.read().unwrap_or_else(|p| p.into_inner());
        head.values().fold((0, 0), |(s, n), t| {
            (s + t.streams.len(), n + t.streams.iter().map(|x| x.entries.len()).sum::<usize>())
        })
    }

    /// Bytes of WAL on disk.
    pub fn wal_size_bytes(&self) -> u64 {
        self.wal.size_bytes()
    }

    /// Flushes the WAL (for `fsync = "interval"` and at shutdown).
    pub fn sync(&self) -> Result<(), StoreError> {
        self.wal.sync()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(ts: i64, line: &str) -> Entry {
        Entry { ts, line: line.into(), metadata: vec![] }
    }

    #[test]
    fn out_of_order_dedup_restart() {
        let d = tempfile::tempdir().unwrap();
        let l = Labels::from_pairs([("job", "x")]).unwrap();
        {
            let s = LogStore::open(d.path(), WalOptions::default()).unwrap();
            s.push("t", vec![StreamEntries { labels: l.clone(), entries: vec![e(30, "c"), e(10, "a")] }]).unwrap();
            s.push("t", vec![StreamEntries { labels: l.clone(), entries: vec![e(20, "b"), e(10, "a"), e(10, "a2")] }])
                .unwrap();
        }
        let s = LogStore::open(d.path(), WalOptions::default()).unwrap();
        let mut got = Vec::new();
        s.scan("t", &[Matcher::equal("job", "x")], 0, 100, &mut |_, es| got.extend(es.iter().map(|e| e.line.clone())));
        assert_eq!(got, ["a", "a2", "b", "c"]);
        let mut got = Vec::new();
        s.scan("t", &[], 10, 30, &mut |_, es| got.extend(es.iter().map(|e| e.ts)));
        assert_eq!(got, [10, 10, 20], "end is exclusive");
        let mut n = 0;
        s.scan("other", &[], 0, 100, &mut |_, es| n += es.len());
        assert_eq!(n, 0);
        assert_eq!(s.streams("t", &[], 0, 100), vec![(l.clone(), StreamStats { entries: 4, bytes: 5, chunks: 0 })]);
        assert_eq!(s.streams("t", &[], 15, 25)[0].1.entries, 1);
        assert!(s.streams("t", &[], 31, 100).is_empty());
    }

    #[test]
    fn batch_codec_round_trip_and_garbage() {
        let batch = vec![StreamEntries {
            labels: Labels::from_pairs([("job", "x")]).unwrap(),
            entries: vec![Entry { ts: -1, line: "héllo".into(), metadata: vec![("k".into(), "v".into())] }],
        }];
        let mut b = Vec::new();
        encode_batch(&mut b, "ten", &batch);
        assert_eq!(decode_batch(&b).unwrap(), ("ten".to_string(), batch));
        for cut in 0..b.len() {
            assert!(decode_batch(&b[..cut]).is_err());
        }
    }
}
