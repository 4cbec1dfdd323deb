//! The log pipeline: a reader task turns files (and the journal) into
//! batches, encodes each once as a Loki push body and appends it to the
//! on-disk [`Queue`]; a sender task delivers queued records in order and,
//! once the receiver acknowledged one, checkpoints its positions in
//! `positions.json` (see [`crate::queue`] and `docs/format/collector.md`).
//!
//! Flow control: while the receiver accepts data, the reader stays at
//! most `4 × batch_max_bytes` (at least 4 MiB) ahead of it (the files are the buffer). While
//! pushes fail, it reads on into the queue, which drops its oldest records
//! (counted) beyond `queue_max_bytes`.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{Notify, watch};
use tokio::time::{Instant, MissedTickBehavior};

use crate::config::CollectorConfig;
use crate::journal::Journal;
use crate::queue::{Checkpoint, Queue, QueueError};
use crate::runtime::{Backoff, CollectorError, FINAL_FLUSH, Stats, blocking, is_stopped, stopped};
use crate::sink::{Sink, SinkError};
use crate::tail::{LogBatch, SavedState, Tailer};

/// State shared by the reader and the sender.
#[derive(Debug)]
pub(crate) struct Shipping {
    queue: Queue,
    saved: SavedState,
    state_dir: PathBuf,
    /// The last push attempt failed.
    failing: bool,
    /// The reader stopped and queued everything it read.
    reader_done: bool,
}

/// Bytes the reader may queue ahead of the receiver while it accepts data.
pub(crate) fn read_ahead(cfg: &CollectorConfig) -> u64 {
    cfg.batch_max_bytes.0.saturating_mul(4).max(4 << 20).min(cfg.queue_max_bytes.0 / 2).max(1)
}

impl Shipping {
    /// Loads `positions.json` and opens the queue. Returns the state and
    /// the checkpoint reading resumes from beyond `positions.json` (that of
    /// the records still queued).
    pub(crate) fn open(
        state_dir: &Path,
        max_bytes: u64,
        fsync: bool,
    ) -> Result<(Shipping, Checkpoint), CollectorError> {
        let saved = SavedState::load(state_dir)?;
        let mut queue = Queue::open(&state_dir.join(crate::queue::QUEUE_DIR), max_bytes, saved.queue_acked)
            .map_err(CollectorError::Queue)?;
        queue.set_fsync(fsync);
        let pending = queue.pending_checkpoint();
        if !queue.is_empty() {
            tracing::info!(
                batches = queue.len(),
                bytes = queue.live_bytes(),
                "resending log batches queued before the restart"
            );
        }
        Ok((Shipping { queue, saved, state_dir: state_dir.to_path_buf(), failing: false, reader_done: false }, pending))
    }

    /// The journal cursor to resume after: the last queued one, else the
    /// last acknowledged one.
    pub(crate) fn resume_cursor(&self, pending: &Checkpoint) -> Option<String> {
        pending.cursor.clone().or_else(|| self.saved.journal_cursor.clone())
    }

    fn persist(&mut self) {
        self.saved.positions.retain(|p, _| p.exists());
        match self.saved.save(&self.state_dir) {
            Ok(()) => {
                if let Err(e) = self.queue.remove_done_segments() {
                    tracing::error!(error = %e, "cannot remove delivered queue segments");
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot checkpoint positions; lines may be sent again after a restart")
            }
        }
    }

    /// Records up to `seq` were acknowledged (or refused for good).
    fn ack(&mut self, seq: u64, stats: &Stats) {
        if let Some(c) = self.queue.ack(seq) {
            self.saved.merge(&c);
            self.saved.queue_acked = seq;
            self.persist();
        }
        stats.queue_bytes.store(self.queue.live_bytes(), Relaxed);
    }

    fn push(&mut self, batch: &LogBatch, body: &[u8], stats: &Stats) -> Result<(), QueueError> {
        let cp = Checkpoint { positions: batch.checkpoint().clone(), cursor: batch.cursor().map(str::to_string) };
        let d = self.queue.push(batch.lines() as u64, batch.bytes() as u64, cp, body)?;
        if d.records > 0 {
            stats.queue_dropped_lines.fetch_add(d.lines, Relaxed);
            stats.queue_dropped_batches.fetch_add(d.records, Relaxed);
            tracing::warn!(
                batches = d.records,
                lines = d.lines,
                bytes = d.bytes,
                "log queue full (collector.queue_max_bytes) while the receiver is failing: dropped the oldest lines"
            );
            self.saved.merge(&d.checkpoint);
            self.saved.queue_acked = d.last_seq;
            self.persist();
        }
        stats.queue_bytes.store(self.queue.live_bytes(), Relaxed);
        Ok(())
    }
}

fn lock(s: &Mutex<Shipping>) -> MutexGuard<'_, Shipping> {
    // A panic while holding the lock is a bug elsewhere; the state is still
    // consistent at every await point, so keep going.
    s.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs the reader and the sender until shutdown.
pub(crate) async fn run<S: Sink>(
    tailer: Option<Tailer>,
    journal: Option<Journal>,
    shipping: Shipping,
    cfg: &CollectorConfig,
    sink: &S,
    shutdown: watch::Receiver<bool>,
    stats: &Arc<Stats>,
) -> Result<(), CollectorError> {
    let shared = Arc::new(Mutex::new(shipping));
    let wake_sender = Arc::new(Notify::new());
    let wake_reader = Arc::new(Notify::new());
    let reader = read_loop(
        tailer,
        journal,
        cfg,
        shared.clone(),
        wake_sender.clone(),
        wake_reader.clone(),
        shutdown.clone(),
        stats,
    );
    let sender = send_loop(sink, shared, wake_sender, wake_reader, shutdown, stats);
    let (a, b) = tokio::join!(reader, sender);
    a.and(b)
}

#[allow(clippy::too_many_arguments)]
async fn read_loop(
    mut tailer: Option<Tailer>,
    mut journal: Option<Journal>,
    cfg: &CollectorConfig,
    shared: Arc<Mutex<Shipping>>,
    wake_sender: Arc<Notify>,
    wake_reader: Arc<Notify>,
    mut shutdown: watch::Receiver<bool>,
    stats: &Arc<Stats>,
) -> Result<(), CollectorError> {
    let max_bytes = cfg.batch_max_bytes.0 as usize;
    let batch_wait = cfg.batch_wait.0;
    let ahead = read_ahead(cfg);
    let mut tick = tokio::time::interval(cfg.poll_interval.0);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut batch = LogBatch::new();
    let mut enc = BodyEncoder::default();
    let mut more = false;
    let watcher = tailer.as_ref().and_then(|t| crate::watch::Watcher::new(&t.watch_dirs()));
    let journal_ready = journal.as_ref().map(Journal::notifier);
    let mut polls: u64 = 0;
    let mut open_before = 0;
    loop {
        if more {
            if is_stopped(&shutdown) {
                break;
            }
        } else {
            let journal_ready = async {
                match &journal_ready {
                    Some(n) => n.notified().await,
                    None => std::future::pending().await,
                }
            };
            let changed = async {
                match &watcher {
                    Some(w) => w.changed().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = tick.tick() => {}
                _ = wake_reader.notified() => {}
                _ = journal_ready => {}
                _ = changed => {}
                _ = stopped(&mut shutdown) => break,
            }
        }
        more = false;
        let (queued, failing) = {
            let s = lock(&shared);
            (s.queue.live_bytes(), s.failing)
        };
        if !failing && queued >= ahead {
            // The receiver is busy: wait for an acknowledgement.
            continue;
        }
        let budget = max_bytes.saturating_sub(batch.bytes());
        if budget > 0 {
            polls += 1;
            let refresh = watcher.is_some() && polls.is_multiple_of(20);
            let (t, j, b, m, dirs) = blocking(move || {
                let mut more = false;
                let mut left = budget;
                if let Some(j) = &mut journal {
                    let before = batch.bytes();
                    more |= j.drain(&mut batch, left);
                    left = left.saturating_sub(batch.bytes() - before);
                }
                let mut dirs = None;
                if let Some(t) = &mut tailer {
                    if left > 0 {
                        more |= t.poll(&mut batch, left).more;
                    }
                    if refresh || t.open_files() != open_before {
                        dirs = Some(t.watch_dirs());
                    }
                }
                (tailer, journal, batch, more, dirs)
            })
            .await?;
            (tailer, journal, batch, more) = (t, j, b, m);
            if let Some(t) = &tailer {
                open_before = t.open_files();
                stats.files_open.store(open_before as u64, Relaxed);
            }
            if let (Some(w), Some(d)) = (&watcher, dirs) {
                w.update(&d);
            }
        }
        if batch.is_empty() || !(more || batch.bytes() >= max_bytes || batch.age() >= batch_wait) {
            continue;
        }
        (batch, enc) = enqueue(batch, enc, &shared, stats).await?;
        wake_sender.notify_one();
    }
    if !batch.is_empty() {
        (batch, enc) = enqueue(batch, enc, &shared, stats).await?;
        drop(enc);
        if !batch.is_empty() {
            tracing::warn!(
                lines = batch.lines(),
                "could not queue the last lines; they are read again at the next start"
            );
        }
    }
    if let Some(j) = journal {
        j.stop();
    }
    lock(&shared).reader_done = true;
    wake_sender.notify_one();
    Ok(())
}

/// Reusable buffers of batch encoding.
#[derive(Default)]
pub(crate) struct BodyEncoder {
    pb: Vec<u8>,
    body: Vec<u8>,
}

impl BodyEncoder {
    /// The Loki push body of `batch`: protobuf, snappy block format.
    fn encode(&mut self, batch: &LogBatch) -> &[u8] {
        self.pb.clear();
        batch.encode_push_request(&mut self.pb);
        self.body.resize(snap::raw::max_compress_len(self.pb.len()), 0);
        // Compressing an in-memory slice fails only beyond 4 GiB.
        let n = snap::raw::Encoder::new().compress(&self.pb, &mut self.body).unwrap_or(0);
        self.body.truncate(n);
        &self.body
    }
}

/// Encodes `batch` and appends it to the queue; returns the batch cleared,
/// or unchanged if the queue could not take it (tried again later).
async fn enqueue(
    mut batch: LogBatch,
    mut enc: BodyEncoder,
    shared: &Arc<Mutex<Shipping>>,
    stats: &Arc<Stats>,
) -> Result<(LogBatch, BodyEncoder), CollectorError> {
    let (shared, stats) = (shared.clone(), stats.clone());
    blocking(move || {
        let body = enc.encode(&batch);
        let mut s = lock(&shared);
        match s.push(&batch, body, &stats) {
            Ok(()) => batch.clear(),
            Err(e) => tracing::error!(error = %e, "cannot write to the log queue; holding the batch and retrying"),
        }
        drop(s);
        (batch, enc)
    })
    .await
}

async fn send_loop<S: Sink>(
    sink: &S,
    shared: Arc<Mutex<Shipping>>,
    wake_sender: Arc<Notify>,
    wake_reader: Arc<Notify>,
    mut shutdown: watch::Receiver<bool>,
    stats: &Arc<Stats>,
) -> Result<(), CollectorError> {
    let mut backoff = Backoff::new();
    let mut deadline: Option<Instant> = None;
    loop {
        if deadline.is_none() && is_stopped(&shutdown) {
            deadline = Some(Instant::now() + FINAL_FLUSH);
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            let left = lock(&shared).queue.len();
            if left > 0 {
                tracing::warn!(batches = left, "stopping with log batches queued; they are sent at the next start");
            }
            return Ok(());
        }
        let sh = shared.clone();
        let head = blocking(move || {
            let s = lock(&sh);
            let done = s.reader_done;
            (s.queue.head().map(|r| (r.seq, r.lines, s.queue.payload(r))), done)
        })
        .await?;
        let (seq, lines, payload) = match head {
            (Some((seq, lines, Ok(p))), _) => (seq, lines, p),
            (Some((seq, _, Err(e))), _) => {
                // Dropped while we looked (the segment went away), or damaged.
                if lock(&shared).queue.head().is_some_and(|r| r.seq == seq) {
                    tracing::error!(error = %e, seq, "cannot read a queued log batch; skipping it");
                    stats.batches_dropped.fetch_add(1, Relaxed);
                    lock(&shared).ack(seq, stats);
                }
                continue;
            }
            (None, reader_done) => {
                if deadline.is_some() && reader_done {
                    return Ok(());
                }
                match deadline {
                    Some(d) => {
                        let _ = tokio::time::timeout_at(d, wake_sender.notified()).await;
                    }
                    None => tokio::select! {
                        _ = wake_sender.notified() => {}
                        _ = stopped(&mut shutdown) => {}
                    },
                }
                continue;
            }
        };
        let res = match deadline {
            Some(d) => match tokio::time::timeout_at(d, sink.push_log_body(payload)).await {
                Ok(r) => r,
                Err(_) => continue,
            },
            None => tokio::select! {
                r = sink.push_log_body(payload) => r,
                _ = stopped(&mut shutdown) => continue,
            },
        };
        match res {
            Ok(()) => {
                if backoff.attempts > 0 {
                    tracing::info!(failures = backoff.attempts, "log push succeeded after retries");
                }
                backoff = Backoff::new();
                stats.batches_sent.fetch_add(1, Relaxed);
                stats.lines_sent.fetch_add(lines, Relaxed);
                let mut s = lock(&shared);
                s.failing = false;
                s.ack(seq, stats);
                drop(s);
                wake_reader.notify_one();
            }
            Err(SinkError::Permanent(msg)) => {
                stats.batches_dropped.fetch_add(1, Relaxed);
                tracing::error!(error = %msg, lines, "receiver refused a log batch; dropped");
                lock(&shared).ack(seq, stats);
                wake_reader.notify_one();
            }
            Err(e) => {
                let msg = e.to_string();
                stats.send_failures.fetch_add(1, Relaxed);
                lock(&shared).failing = true;
                wake_reader.notify_one();
                if deadline.is_some() {
                    continue;
                }
                let delay = backoff.next_delay().max(e.retry_after());
                if backoff.attempts == 1 || backoff.attempts.is_multiple_of(10) {
                    tracing::warn!(error = %msg, attempt = backoff.attempts, retry_in = ?delay, "log push failed; retrying");
                } else {
                    tracing::debug!(error = %msg, attempt = backoff.attempts, retry_in = ?delay, "log push failed; retrying");
                }
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stopped(&mut shutdown) => {}
                }
            }
        }
    }
}
