//! From raw file lines to log entries: decoding of container runtime
//! formats (CRI, Docker json-file), reassembly of lines the runtime split
//! (CRI `P`/`F` tags, Docker lines without a trailing `\n`), and joining of
//! multiline entries such as stack traces (a first-line regex with a
//! maximum wait).
//!
//! # Formats
//! (The decoding of one line lives in [`cairn_wire::container`], shared with
//! the aggregator's `cri`/`docker` pipeline stages.)
//! - `plain`: the line is the entry; it is stamped with the time it was read.
//! - `cri` (containerd, CRI-O; what kubelet writes under `/var/log/pods`):
//!   `<RFC 3339 time> <stdout|stderr> <P|F>[:more tags] <message>`. The
//!   entry keeps the runtime's time and stream; `P` (partial) lines are
//!   joined with the following lines of the same stream up to the next `F`.
//! - `docker` (Docker's json-file driver):
//!   `{"log":"message\n","stream":"stdout","time":"2024-…Z"}`; a `log`
//!   without its trailing `\n` is a partial line, joined like CRI's `P`.
//! - `auto`: per line, `docker` if it starts with `{`, else `cri`.
//!
//! A line that does not parse in its format is kept whole, on `stdout`,
//! stamped with the read time, so nothing is lost to a format mismatch.
//!
//! # Checkpoints
//! Lines held for joining are not yet delivered: [`Assembler::low_water`]
//! is the file offset of the first held line, and the tailer checkpoints no
//! further than that. After a restart the held lines are read again.

use std::time::{Duration, Instant};

pub use cairn_wire::container::{Decoded, LogFormat, STDERR, STDOUT, STREAM_NAMES, decode};

/// Multiline joining rules (see [`crate::config::MultilineConfig`]).
#[derive(Debug, Clone)]
pub struct Multiline {
    /// A line matching this starts a new entry; other lines continue it.
    pub first_line: regex::bytes::Regex,
    /// A held entry is sent once no line was added for this long.
    pub max_wait: Duration,
    /// An entry is sent once it has this many lines.
    pub max_lines: usize,
}

/// An entry being assembled.
#[derive(Debug)]
struct Held {
    buf: Vec<u8>,
    ts: Option<i64>,
    /// File offset of its first line.
    start: u64,
    lines: usize,
    /// When the last line was added.
    touched: Instant,
    overflow: bool,
}

impl Held {
    fn new(msg: &[u8], ts: Option<i64>, start: u64, max: usize) -> Held {
        let mut h = Held { buf: Vec::new(), ts, start, lines: 0, touched: Instant::now(), overflow: false };
        h.add(msg, max, b"");
        h
    }

    fn add(&mut self, msg: &[u8], max: usize, sep: &[u8]) {
        self.lines += 1;
        self.touched = Instant::now();
        for part in [sep, msg] {
            let room = max.saturating_sub(self.buf.len());
            if part.len() > room {
                self.overflow = true;
            }
            self.buf.extend_from_slice(&part[..part.len().min(room)]);
        }
    }
}

/// Receives finished entries: (stream index, runtime time, message, truncated).
pub trait EntrySink {
    /// One finished entry.
    fn entry(&mut self, stream: usize, ts: Option<i64>, msg: &[u8], truncated: bool);
}

/// Per-file state of partial-line reassembly and multiline joining.
#[derive(Debug, Default)]
pub struct Assembler {
    format: LogFormat,
    multiline: Option<std::sync::Arc<Multiline>>,
    max: usize,
    partial: [Option<Held>; 2],
    multi: [Option<Held>; 2],
}

impl Assembler {
    /// Joins lines in `format` by the `multiline` rules, keeping at most
    /// `max` bytes of an entry.
    pub fn new(format: LogFormat, multiline: Option<std::sync::Arc<Multiline>>, max: usize) -> Assembler {
        Assembler { format, multiline, max, ..Assembler::default() }
    }

    /// Moves the held state out, leaving an empty assembler with the same
    /// rules in its place.
    pub fn take(&mut self) -> Assembler {
        let empty = Assembler::new(self.format, self.multiline.clone(), self.max);
        std::mem::replace(self, empty)
    }

    /// Feeds one raw line (without `\n`) that started at file offset
    /// `start`; finished entries go to `out`.
    pub fn line(&mut self, raw: &[u8], raw_truncated: bool, start: u64, out: &mut impl EntrySink) {
        let (max, multiline) = (self.max, self.multiline.clone());
        let ml = multiline.as_deref();
        let d = decode(self.format, raw);
        let s = d.stream;
        if d.partial {
            match &mut self.partial[s] {
                Some(h) => h.add(&d.msg, max, b""),
                None => self.partial[s] = Some(Held::new(&d.msg, d.ts, start, max)),
            }
            if raw_truncated && let Some(h) = &mut self.partial[s] {
                h.overflow = true;
            }
            return;
        }
        let joined = self.partial[s].take().map(|mut h| {
            h.add(&d.msg, max, b"");
            h
        });
        let (msg, ts, start, truncated) = match &joined {
            Some(h) => (&h.buf[..], h.ts, h.start, h.overflow || raw_truncated),
            None => (&d.msg[..], d.ts, start, raw_truncated),
        };
        let Some(ml) = ml else {
            out.entry(s, ts, msg, truncated);
            return;
        };
        let first = ml.first_line.is_match(msg);
        match &mut self.multi[s] {
            Some(h) if !first => {
                h.add(msg, max, b"\n");
                h.overflow |= truncated;
                if h.lines >= ml.max_lines {
                    Self::emit(&mut self.multi[s], s, out);
                }
                return;
            }
            Some(_) => Self::emit(&mut self.multi[s], s, out),
            None => {}
        }
        let mut h = Held::new(msg, ts, start, max);
        h.overflow |= truncated;
        if ml.max_lines <= 1 {
            out.entry(s, h.ts, &h.buf, h.overflow);
        } else {
            self.multi[s] = Some(h);
        }
    }

    fn emit(slot: &mut Option<Held>, s: usize, out: &mut impl EntrySink) {
        if let Some(h) = slot.take() {
            out.entry(s, h.ts, &h.buf, h.overflow);
        }
    }

    /// Sends multiline entries to which no line was added for `max_wait`.
    pub fn flush_idle(&mut self, out: &mut impl EntrySink) {
        let Some(ml) = self.multiline.clone() else { return };
        for s in [STDOUT, STDERR] {
            if self.multi[s].as_ref().is_some_and(|h| h.touched.elapsed() >= ml.max_wait) {
                Self::emit(&mut self.multi[s], s, out);
            }
        }
    }

    /// Sends everything held (the file ended for good: rotation, truncation).
    /// Partial lines go first, as entries of their own.
    pub fn flush_all(&mut self, out: &mut impl EntrySink) {
        for s in [STDOUT, STDERR] {
            if let Some(p) = self.partial[s].take() {
                match &mut self.multi[s] {
                    Some(h) => {
                        h.add(&p.buf, usize::MAX, b"\n");
                        h.overflow |= p.overflow;
                    }
                    None => out.entry(s, p.ts, &p.buf, p.overflow),
                }
            }
            Self::emit(&mut self.multi[s], s, out);
        }
    }

    /// File offset of the first line held for joining, if any.
    pub fn low_water(&self) -> Option<u64> {
        self.partial.iter().chain(&self.multi).flatten().map(|h| h.start).min()
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.low_water().is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Out(Vec<(usize, Option<i64>, String, bool)>);

    impl EntrySink for Out {
        fn entry(&mut self, stream: usize, ts: Option<i64>, msg: &[u8], truncated: bool) {
            self.0.push((stream, ts, String::from_utf8_lossy(msg).into_owned(), truncated));
        }
    }

    const T0: &str = "2024-05-01T10:00:00.123456789Z";
    const T0_NS: i64 = 1_714_557_600_123_456_789;

    #[test]
    fn cri_partials_are_joined_per_stream() {
        let mut a = Assembler::new(LogFormat::Cri, None, 1024);
        let mut out = Out::default();
        let lines = [
            format!("{T0} stdout P one-"),
            format!("{T0} stderr F err line"),
            "2024-05-01T10:00:01Z stdout P two-".to_string(),
            "2024-05-01T10:00:02Z stdout F three".to_string(),
        ];
        let mut off = 0;
        for (i, l) in lines.iter().enumerate() {
            a.line(l.as_bytes(), false, off, &mut out);
            if i < 3 {
                assert_eq!(a.low_water(), Some(0));
            }
            off += l.len() as u64 + 1;
        }
        assert!(a.is_empty());
        assert_eq!(
            out.0,
            [(STDERR, Some(T0_NS), "err line".into(), false), (STDOUT, Some(T0_NS), "one-two-three".into(), false)]
        );
    }

    #[test]
    fn joined_entries_are_bounded() {
        let mut a = Assembler::new(LogFormat::Cri, None, 8);
        let mut out = Out::default();
        for _ in 0..3 {
            a.line(format!("{T0} stdout P 12345").as_bytes(), false, 0, &mut out);
        }
        a.line(format!("{T0} stdout F end").as_bytes(), false, 0, &mut out);
        assert_eq!(out.0, [(STDOUT, Some(T0_NS), "12345123".into(), true)]);
    }

    fn ml(max_lines: usize) -> Option<std::sync::Arc<Multiline>> {
        Some(std::sync::Arc::new(Multiline {
            first_line: regex::bytes::Regex::new(r"^\d{4}-").unwrap(),
            max_wait: Duration::from_millis(50),
            max_lines,
        }))
    }

    #[test]
    fn multiline_joins_until_the_next_first_line() {
        let mut a = Assembler::new(LogFormat::Plain, ml(100), 1024);
        let mut out = Out::default();
        let text = "2024-01-01 ERROR boom\njava.lang.X: y\n\tat a.b(C.java:1)\n2024-01-01 INFO ok\n";
        let mut off = 0;
        for l in text.lines() {
            a.line(l.as_bytes(), false, off, &mut out);
            off += l.len() as u64 + 1;
        }
        assert_eq!(out.0.len(), 1);
        assert_eq!(out.0[0].2, "2024-01-01 ERROR boom\njava.lang.X: y\n\tat a.b(C.java:1)");
        assert_eq!(a.low_water(), Some(55));
        a.flush_idle(&mut out);
        assert_eq!(out.0.len(), 1, "not idle yet");
        std::thread::sleep(Duration::from_millis(60));
        a.flush_idle(&mut out);
        assert_eq!(out.0[1].2, "2024-01-01 INFO ok");
        assert!(a.is_empty());
    }

    #[test]
    fn multiline_max_lines_and_flush_all() {
        let mut a = Assembler::new(LogFormat::Plain, ml(2), 1024);
        let mut out = Out::default();
        for l in ["2024-x", "a", "b", "c"] {
            a.line(l.as_bytes(), false, 0, &mut out);
        }
        // "b" starts a held entry of its own (no first line before it).
        assert_eq!(out.0.iter().map(|e| e.2.as_str()).collect::<Vec<_>>(), ["2024-x\na", "b\nc"]);
        a.line(b"2024-y", false, 0, &mut out);
        a.flush_all(&mut out);
        assert_eq!(out.0.last().unwrap().2, "2024-y");
    }

    #[test]
    fn cri_with_multiline() {
        let mut a = Assembler::new(LogFormat::Cri, ml(100), 1024);
        let mut out = Out::default();
        for l in [
            format!("{T0} stdout F 2024-01-01 first"),
            format!("{T0} stdout P cont"),
            format!("{T0} stdout F inued"),
            format!("{T0} stdout F 2024-01-02 second"),
        ] {
            a.line(l.as_bytes(), false, 0, &mut out);
        }
        assert_eq!(out.0, [(STDOUT, Some(T0_NS), "2024-01-01 first\ncontinued".into(), false)]);
    }
}
