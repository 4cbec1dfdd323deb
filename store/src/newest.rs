//! The newest timestamp of every series or stream, per tenant: the point an
//! out-of-order window is measured back from. Kept beside the head (a flush
//! empties the head but must not reset it), rebuilt at open from the blocks'
//! chunk references and the replayed head.

use std::collections::HashMap;

use cairn_wire::Labels;

use crate::block::Block;

/// Tenant → labels → newest timestamp (the engine's unit).
pub(crate) type NewestMap = HashMap<String, crate::LabelMap<i64>>;

/// Raises the newest timestamp of `labels` in `tenant` to `ts`.
pub(crate) fn note(m: &mut NewestMap, tenant: &str, labels: &Labels, ts: i64) {
    let per = match m.get_mut(tenant) {
        Some(per) => per,
        None => m.entry(tenant.to_string()).or_default(),
    };
    match per.get_mut(labels) {
        Some(n) => *n = (*n).max(ts),
        None => {
            per.insert(labels.clone(), ts);
        }
    }
}

/// The newest timestamps recorded in `blocks`' chunk references.
pub(crate) fn from_blocks<'a>(blocks: impl IntoIterator<Item = &'a std::sync::Arc<Block>>) -> NewestMap {
    let mut m = NewestMap::new();
    for b in blocks {
        for s in &b.streams {
            if let Some(mx) = s.chunks.iter().map(|c| c.max_ts).max() {
                note(&mut m, &s.tenant, &s.labels, mx);
            }
        }
    }
    m
}

/// Forgets series and streams whose newest data is older than their
/// tenant's `cutoff` (gone quiet before the retention limit).
pub(crate) fn forget_before(m: &mut NewestMap, cutoff: impl Fn(&str) -> Option<i64>) {
    for (tenant, per) in m.iter_mut() {
        if let Some(min_ts) = cutoff(tenant) {
            per.retain(|_, t| *t >= min_ts);
        }
    }
    m.retain(|_, per| !per.is_empty());
}
