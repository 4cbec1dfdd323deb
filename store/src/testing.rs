//! Support for the damage tests (`store/tests/damage.rs`) and the fuzz
//! targets (`fuzz/fuzz_targets/{wal_replay,block_open}.rs`): open a data
//! directory's engines and read every byte a query could reach. Not part of
//! the stable API.

use std::path::Path;

use crate::logs::{LogStore, Order, ScanRequest};
use crate::metrics::MetricsStore;
use crate::{StoreError, WalOptions};

/// Opens `root/logs` and `root/metrics` (as the aggregator lays them out)
/// and reads everything of tenant `t` in both directions, with and without
/// a line filter, plus timestamps, stream and series listings. Read errors
/// are expected on damaged data and ignored; an open error is returned.
pub fn open_and_read_all(root: &Path, wal: WalOptions) -> Result<(), StoreError> {
    let logs = LogStore::open(&root.join(crate::layout::LOGS_DIR), wal.clone())?;
    let req = ScanRequest {
        tenant: "t",
        matchers: &[],
        start: i64::MIN,
        end: i64::MAX,
        needles: &[b"took=7ms".as_slice()],
        order: Order::Backward,
    };
    let _ = logs.scan_entries(&req, &mut |_, es| {
        for e in es {
            std::hint::black_box(e.line.len());
            std::hint::black_box(e.metadata.iter().count());
        }
        None
    });
    let req = ScanRequest { needles: &[], order: Order::Forward, ..req };
    let _ = logs.scan_entries(&req, &mut |_, _| None);
    let _ = logs.scan_timestamps("t", &[], i64::MIN, i64::MAX, true, &mut |_, _, _, _| {});
    // every other chunk counted whole from the index, the rest decoded
    let whole = |a: i64, _: i64| a % 2 == 0;
    let _ = logs.scan_counts("t", &[], i64::MIN, i64::MAX - 1, false, Some(&whole), &mut |_, b| {
        std::hint::black_box(b);
    });
    let _ = logs.streams("t", &[], i64::MIN, i64::MAX);
    drop(logs);
    let metrics = MetricsStore::open(&root.join(crate::layout::METRICS_DIR), wal)?;
    let _ = metrics.select("t", &[], i64::MIN, i64::MAX);
    let all = crate::metrics::SelectLimits { series: usize::MAX, samples: usize::MAX };
    let _ = metrics.select_mixed_limited("t", &[], i64::MIN, i64::MAX, all);
    let _ = metrics.series("t", &[], i64::MIN, i64::MAX);
    Ok(())
}
