//! The systemd journal, read through `journalctl --output=json --follow`
//! (so the journal's own file format, compression and rotation are
//! journald's business), resuming after the cursor of the last
//! acknowledged entry.
//!
//! - A reader thread runs `journalctl` and hands its output lines to the
//!   collector through a bounded channel (when the collector falls behind,
//!   `journalctl` blocks on its pipe: nothing is skipped).
//! - Each entry becomes a line (`MESSAGE`) stamped with
//!   `__REALTIME_TIMESTAMP`, in the stream `{<labels>, unit, priority,
//!   hostname}`: `unit` from `_SYSTEMD_UNIT` (else `SYSLOG_IDENTIFIER`),
//!   `priority` as the syslog keyword (`emerg` … `debug`, from `PRIORITY`),
//!   `hostname` from `_HOSTNAME`; absent fields give no label.
//! - The batch holding an entry carries its `__CURSOR`; once the batch is
//!   acknowledged the cursor is saved in `positions.json`, and the next
//!   start runs `journalctl --after-cursor=<cursor>`. Without a cursor,
//!   reading starts `max_age` back.
//! - If `journalctl` exits (journal rotated away, binary missing), it is
//!   started again after [`RESTART_DELAY`] from the last cursor read.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_wire::{Entry, Labels};
use serde::Deserialize;

use crate::config::JournalConfig;
use crate::tail::LogBatch;

/// Wait before `journalctl` is started again after it exited.
pub const RESTART_DELAY: Duration = Duration::from_secs(5);
/// Output lines buffered between `journalctl` and the collector.
const CHANNEL_LINES: usize = 8192;
/// Syslog priority keywords by number.
pub const PRIORITIES: [&str; 8] = ["emerg", "alert", "crit", "err", "warning", "notice", "info", "debug"];

/// A running journal reader.
#[derive(Debug)]
pub struct Journal {
    rx: Receiver<Vec<u8>>,
    notify: Arc<tokio::sync::Notify>,
    stop: Arc<AtomicBool>,
    child: Arc<Mutex<Option<Child>>>,
    labels: Vec<(String, String)>,
    cache: HashMap<[Option<String>; 3], Labels>,
    stats: Arc<crate::Stats>,
}

/// The `journalctl` arguments for `cfg`, resuming after `cursor`.
pub fn journalctl_args(cfg: &JournalConfig, cursor: Option<&str>) -> Vec<String> {
    let mut args: Vec<String> =
        // `--follow` alone shows only the last 10 entries: `--lines=all`.
        ["--output=json", "--follow", "--lines=all", "--all", "--no-pager", "--quiet"].iter().map(|s| s.to_string()).collect();
    if !cfg.directory.as_os_str().is_empty() {
        args.push(format!("--directory={}", cfg.directory.display()));
        // Every journal in the directory, whatever machine and boot wrote
        // it (without this, --follow keeps to the current boot).
        args.push("--merge".to_string());
    }
    match cursor {
        Some(c) => args.push(format!("--after-cursor={c}")),
        None => args.push(format!("--since=-{}s", cfg.max_age.0.as_secs().max(1))),
    }
    args
}

impl Journal {
    /// Starts reading the journal after `cursor` (or `max_age` back).
    pub fn start(cfg: &JournalConfig, cursor: Option<String>, stats: Arc<crate::Stats>) -> Journal {
        let (tx, rx) = sync_channel(CHANNEL_LINES);
        let notify = Arc::new(tokio::sync::Notify::new());
        let stop = Arc::new(AtomicBool::new(false));
        let child = Arc::new(Mutex::new(None));
        let (c, n, s, ch) = (cfg.clone(), notify.clone(), stop.clone(), child.clone());
        std::thread::Builder::new()
            .name("journalctl".into())
            .spawn(move || reader_thread(c, cursor, tx, n, s, ch))
            .ok();
        Journal {
            rx,
            notify,
            stop,
            child,
            labels: cfg.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            cache: HashMap::new(),
            stats,
        }
    }

    /// Notified when entries are waiting.
    pub fn notifier(&self) -> Arc<tokio::sync::Notify> {
        self.notify.clone()
    }

    /// Moves waiting entries into `batch` (about `budget` bytes at most);
    /// returns true if more are waiting.
    pub fn drain(&mut self, batch: &mut LogBatch, budget: usize) -> bool {
        let mut used = 0;
        while used < budget {
            let line = match self.rx.try_recv() {
                Ok(l) => l,
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => return false,
            };
            let Some(e) = parse_entry(&line) else {
                tracing::debug!("unparsable journalctl output line skipped");
                continue;
            };
            used += e.message.len().max(1);
            let key = [e.unit, e.priority.map(str::to_string), e.hostname];
            let labels = match self.cache.get(&key) {
                Some(l) => l.clone(),
                None => {
                    let names = ["unit", "priority", "hostname"];
                    let pairs = self
                        .labels
                        .iter()
                        .map(|(k, v)| (k.as_str(), v.as_str()))
                        .chain(names.iter().zip(&key).filter_map(|(n, v)| Some((*n, v.as_deref()?))));
                    let l = Labels::from_pairs(pairs).unwrap_or_default();
                    if self.cache.len() > 10_000 {
                        self.cache.clear();
                    }
                    self.cache.insert(key, l.clone());
                    l
                }
            };
            batch.push_entry(&labels, Entry { ts: e.ts, line: e.message, metadata: Vec::new() });
            batch.set_cursor(e.cursor);
            self.stats.lines_read.fetch_add(1, Ordering::Relaxed);
        }
        true
    }

    /// Stops `journalctl` and the reader thread.
    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(c) = self.child.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            let _ = c.kill();
        }
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(c) = self.child.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            let _ = c.kill();
        }
    }
}

fn reader_thread(
    cfg: JournalConfig,
    mut cursor: Option<String>,
    tx: SyncSender<Vec<u8>>,
    notify: Arc<tokio::sync::Notify>,
    stop: Arc<AtomicBool>,
    slot: Arc<Mutex<Option<Child>>>,
) {
    let mut warned = false;
    while !stop.load(Ordering::Relaxed) {
        let args = journalctl_args(&cfg, cursor.as_deref());
        let spawned = Command::new(&cfg.journalctl_path)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        match spawned {
            Ok(mut child) => {
                let out = child.stdout.take();
                let mut err = child.stderr.take();
                *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(child);
                if let Some(out) = out {
                    let mut r = BufReader::with_capacity(64 << 10, out);
                    let mut line = Vec::new();
                    loop {
                        line.clear();
                        match r.read_until(b'\n', &mut line) {
                            Ok(0) | Err(_) => break,
                            Ok(_) => {}
                        }
                        if line.last() == Some(&b'\n') {
                            line.pop();
                        }
                        if line.is_empty() {
                            continue;
                        }
                        if let Some(c) = cursor_of(&line) {
                            cursor = Some(c);
                        }
                        if tx.send(std::mem::take(&mut line)).is_err() {
                            return;
                        }
                        notify.notify_one();
                    }
                }
                let mut msg = String::new();
                if let Some(e) = err.as_mut() {
                    let _ = e.take(4096).read_to_string(&mut msg);
                }
                let status = slot.lock().unwrap_or_else(|e| e.into_inner()).take().map(|mut c| c.wait());
                if !stop.load(Ordering::Relaxed) && !warned {
                    warned = true;
                    tracing::warn!(status = ?status, stderr = %msg.trim(), "journalctl exited; starting it again");
                }
            }
            Err(e) => {
                if !warned {
                    warned = true;
                    tracing::warn!(path = %cfg.journalctl_path.display(), error = %e, "cannot run journalctl; retrying");
                }
            }
        }
        let mut slept = Duration::ZERO;
        while slept < RESTART_DELAY && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(100));
            slept += Duration::from_millis(100);
        }
    }
}

/// The `__CURSOR` of a JSON line, without parsing all of it.
fn cursor_of(line: &[u8]) -> Option<String> {
    let key = b"\"__CURSOR\":\"";
    let at = memchr::memmem::find(line, key)? + key.len();
    let end = memchr::memchr(b'"', &line[at..])?;
    String::from_utf8(line[at..at + end].to_vec()).ok()
}

/// One journal entry.
#[derive(Debug, PartialEq, Eq)]
pub struct JournalEntry {
    /// `__CURSOR`.
    pub cursor: String,
    /// `__REALTIME_TIMESTAMP` in ns.
    pub ts: i64,
    /// `MESSAGE` (binary messages decoded lossily).
    pub message: String,
    /// `_SYSTEMD_UNIT`, else `SYSLOG_IDENTIFIER`.
    pub unit: Option<String>,
    /// Priority keyword.
    pub priority: Option<&'static str>,
    /// `_HOSTNAME`.
    pub hostname: Option<String>,
}

#[derive(Deserialize)]
struct Raw {
    #[serde(rename = "__CURSOR")]
    cursor: String,
    #[serde(rename = "__REALTIME_TIMESTAMP")]
    realtime: String,
    #[serde(rename = "MESSAGE", default)]
    message: serde_json::Value,
    #[serde(rename = "_SYSTEMD_UNIT", default)]
    unit: Option<String>,
    #[serde(rename = "SYSLOG_IDENTIFIER", default)]
    ident: Option<serde_json::Value>,
    #[serde(rename = "PRIORITY", default)]
    priority: Option<String>,
    #[serde(rename = "_HOSTNAME", default)]
    hostname: Option<String>,
}

/// Parses one line of `journalctl --output=json`. Fields journald could
/// not show as text are arrays of byte values; `null` means too large.
pub fn parse_entry(line: &[u8]) -> Option<JournalEntry> {
    let r: Raw = serde_json::from_slice(line).ok()?;
    let us: i64 = r.realtime.parse().ok()?;
    let message = match r.message {
        serde_json::Value::String(s) => s,
        serde_json::Value::Array(a) => {
            let bytes: Vec<u8> = a.iter().filter_map(|v| v.as_u64().and_then(|b| u8::try_from(b).ok())).collect();
            String::from_utf8_lossy(&bytes).into_owned()
        }
        _ => String::new(),
    };
    let ident = match r.ident {
        Some(serde_json::Value::String(s)) => Some(s),
        _ => None,
    };
    Some(JournalEntry {
        cursor: r.cursor,
        ts: us.checked_mul(1000)?,
        message,
        unit: r.unit.or(ident).filter(|s| !s.is_empty()),
        priority: r.priority.and_then(|p| p.parse::<usize>().ok()).and_then(|p| PRIORITIES.get(p).copied()),
        hostname: r.hostname.filter(|s| !s.is_empty()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_journalctl_json() {
        let line = br#"{"__CURSOR":"s=739ad463348b4ceca5a9e69c95a3c93f;i=4ece8;b=6c7c6013a8c84d19a6a2d4b4b3b1a0c2;m=1d1c4e3;t=5c1a2b3c4d5e6;x=2b4d1d1e2f3a4b5c","__REALTIME_TIMESTAMP":"1622547800123456","__MONOTONIC_TIMESTAMP":"30524643","_BOOT_ID":"6c7c6013a8c84d19a6a2d4b4b3b1a0c2","PRIORITY":"3","_HOSTNAME":"nas","SYSLOG_IDENTIFIER":"sshd","_SYSTEMD_UNIT":"ssh.service","MESSAGE":"error: kex_exchange_identification: Connection closed by remote host","_PID":"1234"}"#;
        let e = parse_entry(line).unwrap();
        assert_eq!(e.ts, 1_622_547_800_123_456_000);
        assert_eq!(e.unit.as_deref(), Some("ssh.service"));
        assert_eq!(e.priority, Some("err"));
        assert_eq!(e.hostname.as_deref(), Some("nas"));
        assert!(e.message.starts_with("error: kex"));
        assert_eq!(cursor_of(line).as_deref(), Some(e.cursor.as_str()));

        // A binary message, no unit (kernel), no priority.
        let line =
            br#"{"__CURSOR":"c1","__REALTIME_TIMESTAMP":"1000","SYSLOG_IDENTIFIER":"kernel","MESSAGE":[104,105,255]}"#;
        let e = parse_entry(line).unwrap();
        assert_eq!((e.message.as_str(), e.unit.as_deref(), e.priority), ("hi\u{fffd}", Some("kernel"), None));
        assert!(parse_entry(b"-- No entries --").is_none());
    }

    #[test]
    fn arguments_resume_after_the_cursor() {
        let cfg = JournalConfig { directory: "/host/var/log/journal".into(), ..JournalConfig::default() };
        let a = journalctl_args(&cfg, Some("s=1;i=2"));
        assert!(a.contains(&"--after-cursor=s=1;i=2".to_string()), "{a:?}");
        assert!(a.contains(&"--directory=/host/var/log/journal".to_string()));
        let a = journalctl_args(&JournalConfig::default(), None);
        assert!(a.contains(&"--since=-25200s".to_string()), "{a:?}");
        assert!(a.contains(&"--output=json".to_string()) && a.contains(&"--follow".to_string()));
    }
}
