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
