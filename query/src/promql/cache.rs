//! A cache of range-query answers (VictoriaMetrics's "rollup result
//! cache"): a dashboard refreshing every few seconds asks for the same
//! query over a window that moved a little, so the steps already answered
//! are taken from the cache and only the newer ones are evaluated.
//!
//! - **What is cached**: per (tenant, query text, step, start modulo step,
//!   lookback), the answer's points for steps up to `now - offset` (the
//!   "cache timestamp offset": newer steps are still filling in and are
//!   always evaluated). A range query's answer at a step depends only on
//!   the data and the step's time, so a later query with the same key
//!   takes the cached steps in its range and evaluates the rest. Queries
//!   whose answer at a step depends on more than that are never cached:
//!   `@` (`start()`/`end()` move with the range), negative offsets and the
//!   `smoothed` modifier (they read past the step), `range()` duration
//!   expressions, and answers with warnings or infos (they describe the
//!   whole range).
//! - **Never a stale answer**: every entry remembers the time range of the
//!   data its steps read (each selector's lookback, range, offsets and
//!   subquery ranges back from the first step, up to the last step). The
//!   store tells the cache of every write before acknowledging it
//!   ([`MetricsStore::on_change`]): a write with a sample inside an entry's
//!   range drops the entry (out-of-order samples, backfill, a new series
//!   in the past), and a deletion (retention) drops every entry. A query
//!   evaluating while such a write lands does not store its answer. A
//!   tenant's retention override hides data continuously: an entry that
//!   read data older than the tenant's visible start is not used.
//! - **Bounded**: entries are counted at their size in memory and the
//!   least recently used are dropped past `max_bytes`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use cairn_store::metrics::{Change, MetricsStore};
use cairn_wire::Labels;
use promql_parser::parser::{Expr, Offset};

use super::{Annotations, QueryError, QueryOptions, Series};

/// Hit and miss counts of a [`ResultCache`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Queries answered from the cache alone.
    pub hits: u64,
    /// Queries that took some steps from the cache and evaluated the rest.
    pub partial_hits: u64,
    /// Cacheable queries with nothing usable cached.
    pub misses: u64,
    /// Queries that do not use the cache (`nocache=1`, or not cacheable).
    pub bypassed: u64,
    /// Entries dropped because data was written into or deleted from the
    /// range they read.
    pub invalidations: u64,
    /// Entries dropped to stay within the size limit.
    pub evictions: u64,
    /// Entries held.
    pub entries: u64,
    /// Their size in memory, estimated.
    pub bytes: u64,
}

/// How a query used the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheUse {
    /// Answered from the cache alone.
    Hit,
    /// Some steps from the cache, the newer ones evaluated.
    PartialHit,
    /// Evaluated in full.
    Miss,
    /// The cache was not used.
    Bypass,
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct Key {
    tenant: String,
    query: String,
    step: i64,
    phase: i64,
    lookback: i64,
}

struct Entry {
    /// First and last cached step.
    first: i64,
    last: i64,
    /// Time range of the data those steps read.
    read: (i64, i64),
    series: Vec<Series>,
    bytes: usize,
    used: u64,
}

/// A query being evaluated for the cache: its answer is stored only if no
/// write lands in `read` meanwhile.
struct InFlight {
    id: u64,
    tenant: String,
    read: (i64, i64),
    dirty: bool,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<Key, Entry>,
    /// Per tenant, the newest data time any entry or in-flight query read:
    /// writes all newer than it (the usual case: new scrapes) touch
    /// nothing.
    newest_read: HashMap<String, i64>,
    inflight: Vec<InFlight>,
    bytes: usize,
    tick: u64,
}

/// The range-query answer cache (see the module doc).
pub struct ResultCache {
    max_bytes: usize,
    offset_ms: i64,
    inner: Mutex<Inner>,
    hits: AtomicU64,
    partial_hits: AtomicU64,
    misses: AtomicU64,
    bypassed: AtomicU64,
    invalidations: AtomicU64,
    evictions: AtomicU64,
}

impl ResultCache {
    /// A cache of at most `max_bytes` (0: off) that caches steps at least
    /// `offset_ms` older than the time of the query.
    pub fn new(max_bytes: usize, offset_ms: i64) -> ResultCache {
        ResultCache {
            max_bytes,
            offset_ms: offset_ms.max(0),
            inner: Mutex::new(Inner::default()),
            hits: AtomicU64::new(0),
            partial_hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            bypassed: AtomicU64::new(0),
            invalidations: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
        }
    }

    /// Whether the cache is on (a size limit above 0).
    pub fn enabled(&self) -> bool {
        self.max_bytes > 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts so far.
    pub fn stats(&self) -> CacheStats {
        let (entries, bytes) = {
            let i = self.lock();
            (i.entries.len() as u64, i.bytes as u64)
        };
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            partial_hits: self.partial_hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            bypassed: self.bypassed.load(Ordering::Relaxed),
            invalidations: self.invalidations.load(Ordering::Relaxed),
            evictions: self.evictions.load(Ordering::Relaxed),
            entries,
            bytes,
        }
    }

    /// Takes note of a change of the store's data (install with
    /// [`MetricsStore::on_change`]): drops the entries it may change and
    /// marks the queries in flight that read there.
    pub fn changed(&self, c: Change<'_>) {
        let mut inner = self.lock();
        let inner = &mut *inner;
        let (tenant, lo, hi) = match c {
            Change::Written { tenant, min_ts, max_ts } => {
                // A companion tenant ("<tenant>|st", start timestamps) is
                // data of its tenant's series.
                let tenant = tenant.split('|').next().unwrap_or(tenant);
                if inner.newest_read.get(tenant).is_none_or(|&n| min_ts > n) {
                    return;
                }
                (Some(tenant), min_ts, max_ts)
            }
            Change::Removed => (None, i64::MIN, i64::MAX),
        };
        let hit = |t: &str, read: (i64, i64)| tenant.is_none_or(|x| x == t) && lo <= read.1 && hi >= read.0;
        for f in inner.inflight.iter_mut() {
            if hit(&f.tenant, f.read) {
                f.dirty = true;
            }
        }
        let before = inner.entries.len();
        let mut freed = 0;
        inner.entries.retain(|k, e| {
            let keep = !hit(&k.tenant, e.read);
            if !keep {
                freed += e.bytes;
            }
            keep
        });
        inner.bytes -= freed;
        self.invalidations.fetch_add((before - inner.entries.len()) as u64, Ordering::Relaxed);
    }

    /// Evaluates the range query `q` (as [`super::range_query_annotated`]
    /// would, same answer) with what the cache holds for it; `nocache`
    /// neither reads nor fills the cache. `now_ms` is the current time.
    #[allow(clippy::too_many_arguments)]
    pub fn range_query(
        &self,
        store: &MetricsStore,
        tenant: &str,
        q: &str,
        (start, end, step): (i64, i64, i64),
        opts: &QueryOptions,
        now_ms: i64,
        nocache: bool,
    ) -> Result<(Vec<Series>, Annotations, CacheUse), QueryError> {
        let expr = super::parse_for(q, step, end.saturating_sub(start))?;
        super::check_range(&expr, start, end, step)?;
        let back = if self.enabled() && !nocache && !q.contains("range(") {
            reach_back(&expr, opts.lookback_ms)
        } else {
            None
        };
        let Some(back) = back else {
            self.bypassed.fetch_add(1, Ordering::Relaxed);
            let (m, a) = super::range_query_annotated(store, tenant, &expr, start, end, step, opts)?;
            return Ok((m, a, CacheUse::Bypass));
        };
        // Data up to the step's time and `back` before it; a margin of a
        // step for the rounding of subquery and step times.
        let back = back.saturating_add(step).saturating_add(1);
        let key = Key {
            tenant: tenant.to_string(),
            query: q.to_string(),
            step,
            phase: start.rem_euclid(step),
            lookback: opts.lookback_ms,
        };
        // The last step to keep: at least `offset` old, within the query.
        let horizon = now_ms.saturating_sub(self.offset_ms).min(end);
        let keep_last = if horizon < start { None } else { Some(start + (horizon - start) / step * step) };
        let read = (start.saturating_sub(back), keep_last.unwrap_or(start));
        let visible = store.visible_from(tenant);
        // Register before reading anything, so a write landing from now on
        // marks this query.
        let (id, cached) = {
            let mut inner = self.lock();
            inner.tick += 1;
            let (id, tick) = (inner.tick, inner.tick);
            let cached = match inner.entries.get_mut(&key) {
                Some(e) if e.first <= start && e.last >= start && e.read.0 >= visible => {
                    e.used = tick;
                    let upto = e.last.min(end);
                    Some((upto, slice(&e.series, start, upto)))
                }
                _ => None,
            };
            if keep_last.is_some() {
                inner.inflight.push(InFlight { id, tenant: tenant.to_string(), read, dirty: false });
                let n = inner.newest_read.entry(tenant.to_string()).or_insert(i64::MIN);
                *n = (*n).max(read.1);
            }
            (id, cached)
        };
        let result = self.evaluate(store, tenant, &expr, (start, end, step), opts, cached);
        let mut inner = self.lock();
        let dirty = match inner.inflight.iter().position(|f| f.id == id) {
            Some(i) => inner.inflight.swap_remove(i).dirty,
            None => true,
        };
        let (series, ann, used) = result?;
        match used {
            CacheUse::Hit => self.hits.fetch_add(1, Ordering::Relaxed),
            CacheUse::PartialHit => self.partial_hits.fetch_add(1, Ordering::Relaxed),
            _ => self.misses.fetch_add(1, Ordering::Relaxed),
        };
        if let Some(last) = keep_last
            && !dirty
            && ann.warnings.is_empty()
            && ann.infos.is_empty()
        {
            let kept = slice(&series, start, last);
            let bytes = size_of_entry(&key, &kept);
            // An entry over a quarter of the cache would push out the rest.
            if bytes <= self.max_bytes / 4 {
                if let Some(old) = inner.entries.remove(&key) {
                    inner.bytes -= old.bytes;
                }
                let used = inner.tick;
                inner.bytes += bytes;
                inner.entries.insert(key, Entry { first: start, last, read, series: kept, bytes, used });
                while inner.bytes > self.max_bytes {
                    let Some(k) = inner.entries.iter().min_by_key(|(_, e)| e.used).map(|(k, _)| k.clone()) else {
                        break;
                    };
                    if let Some(e) = inner.entries.remove(&k) {
                        inner.bytes -= e.bytes;
                        self.evictions.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
        if inner.entries.is_empty() && inner.inflight.is_empty() {
            inner.newest_read.clear();
        }
        Ok((series, ann, used))
    }

    /// The answer: the cached steps `(upto, series)` (steps from `start`
    /// through `upto`) and the later ones evaluated.
    fn evaluate(
        &self,
        store: &MetricsStore,
        tenant: &str,
        expr: &Expr,
        (start, end, step): (i64, i64, i64),
        opts: &QueryOptions,
        cached: Option<(i64, Vec<Series>)>,
    ) -> Result<(Vec<Series>, Annotations, CacheUse), QueryError> {
        let Some((upto, cached)) = cached else {
            let (m, a) = super::range_query_annotated(store, tenant, expr, start, end, step, opts)?;
            return Ok((m, a, CacheUse::Miss));
        };
        let from = upto.saturating_add(step);
        if from > end {
            return Ok((cached, Annotations::default(), CacheUse::Hit));
        }
        let (fresh, ann) = super::range_query_annotated(store, tenant, expr, from, end, step, opts)?;
        Ok((merge(cached, fresh), ann, CacheUse::PartialHit))
    }
}

/// The points of `series` at steps in `[from, to]`; series with none left
/// out.
fn slice(series: &[Series], from: i64, to: i64) -> Vec<Series> {
    series
        .iter()
        .filter_map(|s| {
            let pts = |t: i64| (from..=to).contains(&t);
            let points: Vec<(i64, f64)> = s.points.iter().filter(|p| pts(p.0)).copied().collect();
            let hist: Vec<_> = s.hist.iter().filter(|p| pts(p.0)).cloned().collect();
            (!points.is_empty() || !hist.is_empty()).then(|| Series { labels: s.labels.clone(), points, hist })
        })
        .collect()
}

/// Series of `a` (earlier steps) and `b` (later steps) joined by labels,
/// sorted by labels as answers are.
fn merge(a: Vec<Series>, b: Vec<Series>) -> Vec<Series> {
    let mut by: std::collections::BTreeMap<Labels, Series> = a.into_iter().map(|s| (s.labels.clone(), s)).collect();
    for s in b {
        match by.get_mut(&s.labels) {
            Some(e) => {
                e.points.extend(s.points);
                e.hist.extend(s.hist);
            }
            None => {
                by.insert(s.labels.clone(), s);
            }
        }
    }
    by.into_values().collect()
}

fn size_of_entry(key: &Key, series: &[Series]) -> usize {
    let labels = |l: &Labels| l.iter().map(|x| x.name.len() + x.value.len() + 16).sum::<usize>() + 32;
    key.query.len()
        + key.tenant.len()
        + 128
        + series
            .iter()
            .map(|s| {
                labels(&s.labels)
                    + 64
                    + s.points.len() * 16
                    + s.hist
                        .iter()
                        .map(|(_, h)| {
                            16 + std::mem::size_of_val(h)
                                + 16 * (h.positive.len() + h.negative.len())
                                + 8 * h.custom_values.len()
                        })
                        .sum::<usize>()
            })
            .sum::<usize>()
}

/// How far before a step the answer at that step reads data (ms), with
/// `lookback` the query's lookback delta, or `None` when the answer depends
/// on more than the data up to the step's time (see the module doc).
fn reach_back(e: &Expr, lookback: i64) -> Option<i64> {
    fn offset(o: &Option<Offset>) -> Option<i64> {
        match o {
            None => Some(0),
            Some(Offset::Pos(d)) => Some(d.as_millis() as i64),
            Some(Offset::Neg(d)) if d.is_zero() => Some(0),
            Some(Offset::Neg(_)) => None,
        }
    }
    /// A selector read `range` back (a matrix) or a lookback back (an
    /// instant selector); `anchored` reads a lookback more.
    fn selector(vs: &promql_parser::parser::VectorSelector, range: i64, lookback: i64) -> Option<i64> {
        if vs.at.is_some() {
            return None;
        }
        let extra = match super::eval::ext_of(vs) {
            Some(super::eval::Ext::Smoothed) => return None,
            Some(super::eval::Ext::Anchored) => lookback,
            None => 0,
        };
        Some(offset(&vs.offset)?.saturating_add(range).saturating_add(extra))
    }
    fn walk(e: &Expr, lookback: i64) -> Option<i64> {
        Some(match e {
            Expr::VectorSelector(vs) => selector(vs, lookback, lookback)?,
            Expr::MatrixSelector(ms) => selector(&ms.vs, ms.range.as_millis() as i64, lookback)?,
            Expr::Subquery(sq) => {
                if sq.at.is_some() {
                    return None;
                }
                let step = sq.step.map_or(super::eval::DEFAULT_SUBQUERY_STEP_MS, |s| s.as_millis() as i64);
                walk(&sq.expr, lookback)?
                    .saturating_add(sq.range.as_millis() as i64)
                    .saturating_add(step)
                    .saturating_add(offset(&sq.offset)?)
            }
            Expr::Paren(p) => walk(&p.expr, lookback)?,
            Expr::Unary(u) => walk(&u.expr, lookback)?,
            Expr::Binary(b) => walk(&b.lhs, lookback)?.max(walk(&b.rhs, lookback)?),
            Expr::Aggregate(a) => {
                let p = match &a.param {
                    Some(p) => walk(p, lookback)?,
                    None => 0,
                };
                walk(&a.expr, lookback)?.max(p)
            }
            Expr::Call(c) => {
                let mut m = 0i64;
                for a in &c.args.args {
                    m = m.max(walk(a, lookback)?);
                }
                m
            }
            Expr::NumberLiteral(_) | Expr::StringLiteral(_) => 0,
            Expr::Extension(_) => return None,
        })
    }
    walk(e, lookback.max(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_store::metrics::{MetricsStoreOptions, SeriesSamples};
    use std::sync::Arc;
    use std::time::Duration;

    const MIN: i64 = 60_000;

    fn labels(job: &str) -> Labels {
        Labels::from_pairs([("__name__", "m"), ("job", job)]).unwrap()
    }

    /// A store with the cache told of its writes.
    fn setup(max_bytes: usize) -> (tempfile::TempDir, MetricsStore, Arc<ResultCache>) {
        let d = tempfile::tempdir().unwrap();
        let opts = MetricsStoreOptions { out_of_order_window: Duration::from_secs(86_400 * 365), ..Default::default() };
        let s = MetricsStore::open_with(d.path(), opts).unwrap();
        let c = Arc::new(ResultCache::new(max_bytes, 5 * MIN));
        let c2 = c.clone();
        assert!(s.on_change(move |ch| c2.changed(ch)));
        (d, s, c)
    }

    fn write(s: &MetricsStore, tenant: &str, job: &str, pts: impl IntoIterator<Item = (i64, f64)>) {
        s.append(tenant, vec![SeriesSamples { labels: labels(job), samples: pts.into_iter().collect() }]).unwrap();
    }

    /// The cache's answer, checked against the plain evaluation's.
    fn query(s: &MetricsStore, c: &ResultCache, tenant: &str, q: &str, range: (i64, i64), now: i64) -> CacheUse {
        let step = MIN;
        let opts = QueryOptions::default();
        let (got, ann, used) = c.range_query(s, tenant, q, (range.0, range.1, step), &opts, now, false).unwrap();
        let expr = super::super::parse_for(q, step, range.1 - range.0).unwrap();
        let (want, want_ann) =
            super::super::range_query_annotated(s, tenant, &expr, range.0, range.1, step, &opts).unwrap();
        assert_eq!(got, want, "{q} over {range:?} ({used:?})");
        assert_eq!(ann, want_ann);
        used
    }

    #[test]
    fn hits_then_partial_hits_as_the_window_moves() {
        let (_d, s, c) = setup(1 << 20);
        write(&s, "t", "a", (0..240).map(|i| (i * 15_000, i as f64)));
        let now = 60 * MIN;
        let q = "sum(rate(m[5m]))";
        assert_eq!(query(&s, &c, "t", q, (10 * MIN, 50 * MIN), now), CacheUse::Miss);
        assert_eq!(query(&s, &c, "t", q, (10 * MIN, 50 * MIN), now), CacheUse::Hit);
        // Later start (same phase), same end: all cached.
        assert_eq!(query(&s, &c, "t", q, (20 * MIN, 50 * MIN), now), CacheUse::Hit);
        // The window moved on: the cached steps and the new ones.
        assert_eq!(query(&s, &c, "t", q, (21 * MIN, 59 * MIN), now + MIN), CacheUse::PartialHit);
        // Another phase, another tenant, another step: not the same entry.
        assert_eq!(query(&s, &c, "t", q, (21 * MIN + 1, 50 * MIN), now), CacheUse::Miss);
        assert_eq!(query(&s, &c, "u", q, (21 * MIN, 50 * MIN), now), CacheUse::Miss);
        // Steps newer than the offset are never stored.
        assert_eq!(query(&s, &c, "t", "m", (56 * MIN, 59 * MIN), now), CacheUse::Miss);
        assert_eq!(query(&s, &c, "t", "m", (56 * MIN, 59 * MIN), now), CacheUse::Miss);
        // nocache=1 neither reads nor fills.
        let opts = QueryOptions::default();
        let (_, _, used) = c.range_query(&s, "t", q, (10 * MIN, 50 * MIN, MIN), &opts, now, true).unwrap();
        assert_eq!(used, CacheUse::Bypass);
        let st = c.stats();
        assert_eq!((st.hits, st.partial_hits, st.bypassed), (2, 1, 1));
    }

    #[test]
    fn a_write_into_a_cached_range_changes_the_next_answer() {
        let (_d, s, c) = setup(1 << 20);
        write(&s, "t", "a", (0..240).map(|i| (i * 15_000, 1.0)));
        let now = 120 * MIN;
        let q = "sum(m)";
        let range = (10 * MIN, 50 * MIN);
        assert_eq!(query(&s, &c, "t", q, range, now), CacheUse::Miss);
        assert_eq!(query(&s, &c, "t", q, range, now), CacheUse::Hit);
        // Newer than anything the entry read: it stays.
        write(&s, "t", "a", [(100 * MIN, 1.0)]);
        // Another tenant's write in the range: it stays.
        write(&s, "u", "a", [(30 * MIN + 1, 1.0)]);
        assert_eq!(query(&s, &c, "t", q, range, now), CacheUse::Hit);
        assert_eq!(c.stats().invalidations, 0);
        // Backfill of a new series in the range.
        write(&s, "t", "b", [(30 * MIN, 5.0)]);
        assert_eq!(query(&s, &c, "t", q, range, now), CacheUse::Miss);
        assert_eq!(query(&s, &c, "t", q, range, now), CacheUse::Hit);
        // An out-of-order sample of an existing series, read only through
        // the lookback before the first step.
        write(&s, "t", "a", [(6 * MIN + 7_000, 9.0)]);
        assert_eq!(query(&s, &c, "t", q, range, now), CacheUse::Miss);
        // A matrix selector reads its range back from the first step.
        let q2 = "sum(max_over_time(m[20m]))";
        assert_eq!(query(&s, &c, "t", q2, range, now), CacheUse::Miss);
        write(&s, "t", "c", [(-9 * MIN, 100.0)]);
        assert_eq!(query(&s, &c, "t", q2, range, now), CacheUse::Miss);
        assert_eq!(c.stats().invalidations, 3);
    }

    #[test]
    fn deletions_drop_everything_and_inflight_writes_block_storing() {
        let (_d, s, c) = setup(1 << 20);
        write(&s, "t", "a", (0..240).map(|i| (i * 15_000, 1.0)));
        let now = 120 * MIN;
        assert_eq!(query(&s, &c, "t", "m", (10 * MIN, 50 * MIN), now), CacheUse::Miss);
        c.changed(Change::Removed);
        assert_eq!(c.stats().entries, 0);
        assert_eq!(query(&s, &c, "t", "m", (10 * MIN, 50 * MIN), now), CacheUse::Miss);
        // A query in flight whose range a write lands in is marked.
        c.lock().inflight.push(InFlight { id: u64::MAX, tenant: "t".into(), read: (0, 10), dirty: false });
        c.changed(Change::Written { tenant: "t", min_ts: 11, max_ts: 20 });
        assert!(!c.lock().inflight[0].dirty);
        c.changed(Change::Written { tenant: "t", min_ts: 5, max_ts: 20 });
        assert!(c.lock().inflight[0].dirty);
        c.changed(Change::Written { tenant: "u", min_ts: 5, max_ts: 20 });
        c.lock().inflight.clear();
    }

    #[test]
    fn stays_within_its_size_and_skips_what_it_cannot_cache() {
        let (_d, s, c) = setup(4 << 10);
        for j in 0..20 {
            write(&s, "t", &format!("j{j}"), (0..240).map(|i| (i * 15_000, i as f64)));
        }
        let now = 120 * MIN;
        for k in 0..10 {
            query(&s, &c, "t", &format!("sum(m) * {k}"), (10 * MIN, 50 * MIN), now);
            assert!(c.stats().bytes <= 4 << 10);
        }
        let st = c.stats();
        assert!(st.evictions > 0 && st.entries > 1, "{st:?}");
        for q in ["m @ 600", "m offset -5m", "max_over_time(m[10m:1m] @ end())", "sum_over_time(m[range()])"] {
            let opts = QueryOptions::default();
            let used = c.range_query(&s, "t", q, (10 * MIN, 50 * MIN, MIN), &opts, now, false).map(|r| r.2);
            assert_eq!(used, Ok(CacheUse::Bypass), "{q}");
        }
        // Same errors as without the cache.
        let opts = QueryOptions::default();
        assert!(matches!(
            c.range_query(&s, "t", "m[5m]", (10 * MIN, 50 * MIN, MIN), &opts, now, false),
            Err(QueryError::BadData(_))
        ));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(32))]
        /// Writes (in order, late, backfilled, new series) between queries
        /// over a moving window: the cache's answer is always the plain one
        /// (`query` compares them).
        #[test]
        fn answers_match_uncached_under_writes(
            ops in proptest::collection::vec((0u8..3, 0i64..120, 0u8..3, -2i32..3), 1..40),
        ) {
            let (_d, s, c) = setup(1 << 20);
            write(&s, "t", "j0", (0..200).map(|i| (i * 15_000, (i % 7) as f64)));
            let queries = ["sum(m)", "sum by (job) (rate(m[3m]))", "max_over_time(m[10m]) - m offset 2m"];
            let mut now = 60 * MIN;
            for (what, t, job, v) in ops {
                match what {
                    0 => write(&s, "t", &format!("j{job}"), [(t * 30_000 + 1, f64::from(v))]),
                    1 => now += MIN,
                    _ => {}
                }
                for q in queries {
                    let end = now - (now % MIN);
                    query(&s, &c, "t", q, (end - 40 * MIN, end), now);
                }
            }
        }
    }
}
