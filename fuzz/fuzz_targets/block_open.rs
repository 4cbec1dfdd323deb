//! Input: one selector byte (bit 0: logs or metrics engine), then a block file of the log or metrics engine, opened and read in full.
//! The store opens it and every query path reads it (`cairn_store::testing`).
//! Checksums are not enforced under `--cfg fuzzing`, so the decoders behind
//! them are reached. Seeds: `fuzz/seeds/block_open/`.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, file)) = data.split_first() else {
        return;
    };
    let root = tempfile::tempdir().expect("temporary directory");
    let engine = if sel & 1 == 0 { cairn_store::layout::LOGS_DIR } else { cairn_store::layout::METRICS_DIR };
    let dir = root.path().join(engine).join(cairn_store::layout::BLOCKS_DIR);
    std::fs::create_dir_all(&dir).expect("create directory");
    std::fs::write(dir.join(cairn_store::layout::block_name(1)), file).expect("write input");
    let _ = cairn_store::testing::open_and_read_all(root.path(), cairn_store::WalOptions::default());
});
