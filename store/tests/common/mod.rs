//! Helpers shared by the frozen-format tests.

use std::path::{Path, PathBuf};

/// A directory of committed sample files under `store/tests/frozen/`.
#[allow(dead_code)] // not every test binary that shares this module uses it
pub fn frozen(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/frozen").join(name)
}

/// Copies `from` into `to` recursively (tests open copies, never the
/// committed files).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

/// The stream every frozen log data set is written under.
#[allow(dead_code)]
pub fn frozen_stream() -> cairn_wire::Labels {
    cairn_wire::Labels::from_pairs([("job", "frozen")]).unwrap()
}

/// Opens a copy of the log data in `dir` (kept alive by the returned
/// directory).
#[allow(dead_code)]
pub fn open_logs_copy(dir: &Path) -> (tempfile::TempDir, cairn_store::logs::LogStore) {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(dir, tmp.path());
    let s = cairn_store::logs::LogStore::open(tmp.path(), cairn_store::WalOptions::default()).unwrap();
    (tmp, s)
}

/// Every entry of the frozen stream, in order (checking the stream's labels).
#[allow(dead_code)]
pub fn read_frozen_stream(s: &cairn_store::logs::LogStore) -> Vec<cairn_wire::Entry> {
    let mut got = Vec::new();
    s.try_scan("t", &[cairn_wire::Matcher::equal("job", "frozen")], 0, i64::MAX, &mut |l, es| {
        assert_eq!(l, &frozen_stream());
        got.extend_from_slice(es);
    })
    .unwrap();
    got
}

/// The entries of tenant `t` holding `needle`, and what the scan read.
#[allow(dead_code)]
pub fn needle_hits(
    s: &cairn_store::logs::LogStore,
    needle: &[u8],
    order: cairn_store::logs::Order,
) -> (Vec<cairn_wire::Entry>, cairn_store::logs::ScanStats) {
    let mut hits = Vec::new();
    let req = cairn_store::logs::ScanRequest {
        tenant: "t",
        matchers: &[],
        start: 0,
        end: i64::MAX,
        needles: &[needle],
        order,
    };
    let st = s
        .scan_entries(&req, &mut |_, b| {
            hits.extend(b.iter().map(|e| e.to_owned()));
            None
        })
        .unwrap();
    (hits, st)
}
