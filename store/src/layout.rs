//! Every on-disk name Cairn uses, in one place.
//!
//! ```text
//! <data-dir>/
//!   cairn.lock            advisory lock held by the running process
//!   metrics/wal/          metrics write-ahead log segments
//!   metrics/blocks/       immutable metric blocks, `<wal_through>.blk`
//!   logs/wal/             log write-ahead log segments
//!   logs/blocks/          immutable log blocks, `<wal_through>.blk`
//!   collector/            collector state (names in collector/src/tail.rs,
//!                         format in docs/format/positions.md)
//! ```

use std::path::{Path, PathBuf};

/// Lock file that keeps two processes off one data directory.
pub const LOCK_FILE: &str = "cairn.lock";
/// Directory of the metrics engine.
pub const METRICS_DIR: &str = "metrics";
/// Directory of the log engine.
pub const LOGS_DIR: &str = "logs";
/// WAL directory inside an engine directory.
pub const WAL_DIR: &str = "wal";
/// Extension of WAL segment files (`00000001.wal`).
pub const WAL_SEGMENT_EXT: &str = "wal";

/// Directory of blocks inside an engine directory.
pub const BLOCKS_DIR: &str = "blocks";
/// Extension of block files.
pub const BLOCK_EXT: &str = "blk";
/// Suffix appended to a block file found corrupt at open (`<name>.blk.corrupt`).
pub const CORRUPT_SUFFIX: &str = "corrupt";

/// File name of the block covering WAL segments up to `wal_through`.
pub fn block_name(wal_through: u64) -> String {
    format!("{wal_through:08}.{BLOCK_EXT}")
}

/// `<data-dir>/metrics`
pub fn metrics_dir(data_dir: &Path) -> PathBuf {
    data_dir.join(METRICS_DIR)
}

/// `<data-dir>/logs`
pub fn logs_dir(data_dir: &Path) -> PathBuf {
    data_dir.join(LOGS_DIR)
}

/// `<data-dir>/metrics/wal`
pub fn metrics_wal(data_dir: &Path) -> PathBuf {
    data_dir.join(METRICS_DIR).join(WAL_DIR)
}

/// `<data-dir>/logs/wal`
pub fn logs_wal(data_dir: &Path) -> PathBuf {
    data_dir.join(LOGS_DIR).join(WAL_DIR)
}

/// File name of WAL segment `n`.
pub fn wal_segment_name(n: u64) -> String {
    format!("{n:08}.{WAL_SEGMENT_EXT}")
}

/// Parses a WAL segment file name back into its number.
pub fn parse_wal_segment_name(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(WAL_SEGMENT_EXT)?.strip_suffix('.')?;
    if stem.is_empty() || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

/// Holds the data directory's advisory lock for as long as it lives.
#[derive(Debug)]
pub struct DirLock {
    _file: std::fs::File,
}

/// Creates `data_dir` if needed and takes its exclusive lock.
pub fn lock_data_dir(data_dir: &Path) -> Result<DirLock, crate::StoreError> {
    std::fs::create_dir_all(data_dir).map_err(crate::StoreError::io("create directory", data_dir))?;
    let path = data_dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(crate::StoreError::io("open", &path))?;
    match file.try_lock() {
        Ok(()) => Ok(DirLock { _file: file }),
        Err(std::fs::TryLockError::WouldBlock) => Err(crate::StoreError::Locked { path: data_dir.to_path_buf() }),
        Err(std::fs::TryLockError::Error(e)) => Err(crate::StoreError::io("lock", &path)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_round_trip() {
        assert_eq!(wal_segment_name(7), "00000007.wal");
        assert_eq!(parse_wal_segment_name("00000007.wal"), Some(7));
        assert_eq!(parse_wal_segment_name("x.wal"), None);
        assert_eq!(parse_wal_segment_name("00000007.tmp"), None);
    }

    #[test]
    fn second_lock_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let _a = lock_data_dir(d.path()).unwrap();
        assert!(matches!(lock_data_dir(d.path()), Err(crate::StoreError::Locked { .. })));
    }
}
