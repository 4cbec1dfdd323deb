//! Metric metadata (type, help, unit) received with remote_write, kept in
//! memory per tenant and metric family for `/api/v1/metadata`, as
//! Prometheus's remote-write receiver keeps only what it has seen since start.
//!
//! Bounded: at most [`MAX_FAMILIES_PER_TENANT`] families per tenant and
//! [`MAX_ENTRIES_PER_FAMILY`] distinct entries per family; more are dropped.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

/// Most metric families remembered per tenant.
pub const MAX_FAMILIES_PER_TENANT: usize = 100_000;
/// Most distinct (type, help, unit) entries remembered per family.
pub const MAX_ENTRIES_PER_FAMILY: usize = 10;

/// One metadata entry, as `/api/v1/metadata` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MetricMeta {
    /// `counter`, `gauge`, `histogram`, `gaugehistogram`, `summary`, `info`,
    /// `stateset` or `unknown`.
    #[serde(rename = "type")]
    pub kind: String,
    /// HELP text.
    pub help: String,
    /// Unit, often empty.
    pub unit: String,
}

/// Name of a remote_write `MetricMetadata.type` value.
pub fn type_name(t: i32) -> &'static str {
    cairn_wire::remote_write_v2::type_name(t)
}

/// The in-memory metadata cache.
#[derive(Default)]
pub struct MetadataCache {
    inner: Mutex<HashMap<String, BTreeMap<String, Vec<MetricMeta>>>>,
}

impl MetadataCache {
    /// Remembers `meta` for `family` of `tenant` (newest entry first).
    pub fn record(&self, tenant: &str, family: &str, meta: MetricMeta) {
        if family.is_empty() {
            return;
        }
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let t = g.entry(tenant.to_string()).or_default();
        if !t.contains_key(family) && t.len() >= MAX_FAMILIES_PER_TENANT {
            return;
        }
        let v = t.entry(family.to_string()).or_default();
        if let Some(i) = v.iter().position(|m| *m == meta) {
            v.remove(i);
        }
        v.insert(0, meta);
        v.truncate(MAX_ENTRIES_PER_FAMILY);
    }

    /// Metadata of `tenant`, by family name (sorted), optionally for one
    /// family only.
    pub fn get(&self, tenant: &str, family: Option<&str>) -> BTreeMap<String, Vec<MetricMeta>> {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let Some(t) = g.get(tenant) else { return BTreeMap::new() };
        match family {
            Some(f) => t.get(f).map(|v| BTreeMap::from([(f.to_string(), v.clone())])).unwrap_or_default(),
            None => t.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_first_deduplicated() {
        let c = MetadataCache::default();
        let m = |h: &str| MetricMeta { kind: "gauge".into(), help: h.into(), unit: String::new() };
        c.record("t", "up", m("a"));
        c.record("t", "up", m("b"));
        c.record("t", "up", m("a"));
        c.record("t", "", m("x"));
        assert_eq!(c.get("t", None)["up"], vec![m("a"), m("b")]);
        assert!(c.get("t", Some("nope")).is_empty());
        assert!(c.get("other", None).is_empty());
    }
}
