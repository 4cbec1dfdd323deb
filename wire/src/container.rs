//! Container runtime log formats: the pure decoding of one CRI or Docker
//! json-file line, shared by the collector (which tails these files) and the
//! aggregator's `cri`/`docker` pipeline stages (for raw container lines sent
//! by other agents).
//!
//! - `cri` (containerd, CRI-O; what kubelet writes under `/var/log/pods`):
//!   `<RFC 3339 time> <stdout|stderr> <P|F>[:more tags] <message>`; `P`
//!   (partial) lines continue in the following line of the same stream.
//! - `docker` (Docker's json-file driver):
//!   `{"log":"message\n","stream":"stdout","time":"2024-…Z"}`; a `log`
//!   without its trailing `\n` is a partial line.
//!
//! A line that does not parse in its format decodes as itself, whole, on
//! `stdout`, with no time, so nothing is lost to a format mismatch.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

/// How the lines of a file are encoded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Each line is an entry, stamped with the time it was read.
    #[default]
    Plain,
    /// Kubernetes CRI log format (containerd, CRI-O).
    Cri,
    /// Docker json-file driver.
    Docker,
    /// `docker` for lines starting with `{`, else `cri`.
    Auto,
}

/// Index of the `stdout` stream in per-stream arrays.
pub const STDOUT: usize = 0;
/// Index of the `stderr` stream in per-stream arrays.
pub const STDERR: usize = 1;
/// Values of the `stream` label, by index.
pub const STREAM_NAMES: [&str; 2] = ["stdout", "stderr"];

/// One decoded line.
#[derive(Debug, PartialEq, Eq)]
pub struct Decoded<'a> {
    /// Time given by the runtime, in ns since the epoch.
    pub ts: Option<i64>,
    /// [`STDOUT`] or [`STDERR`].
    pub stream: usize,
    /// The runtime split this line: more of it follows.
    pub partial: bool,
    /// The message.
    pub msg: Cow<'a, [u8]>,
}

impl<'a> Decoded<'a> {
    fn whole(line: &'a [u8]) -> Self {
        Decoded { ts: None, stream: STDOUT, partial: false, msg: Cow::Borrowed(line) }
    }
}

/// Decodes `line` (without its `\n`) in `format`.
pub fn decode(format: LogFormat, line: &[u8]) -> Decoded<'_> {
    match format {
        LogFormat::Plain => Decoded::whole(line),
        LogFormat::Cri => decode_cri(line).unwrap_or_else(|| Decoded::whole(line)),
        LogFormat::Docker => decode_docker(line).unwrap_or_else(|| Decoded::whole(line)),
        LogFormat::Auto => {
            let d = if line.first() == Some(&b'{') { decode_docker(line) } else { decode_cri(line) };
            d.unwrap_or_else(|| Decoded::whole(line))
        }
    }
}

fn stream_index(s: &[u8]) -> Option<usize> {
    match s {
        b"stdout" => Some(STDOUT),
        b"stderr" => Some(STDERR),
        _ => None,
    }
}

fn decode_cri(line: &[u8]) -> Option<Decoded<'_>> {
    let mut parts = line.splitn(4, |&b| b == b' ');
    let ts = parts.next()?;
    let stream = stream_index(parts.next()?)?;
    let tags = parts.next()?;
    let msg = parts.next().unwrap_or_default();
    let partial = match tags.split(|&b| b == b':').next()? {
        b"P" => true,
        b"F" => false,
        _ => return None,
    };
    let ts = crate::time::parse_rfc3339_ns(std::str::from_utf8(ts).ok()?).ok()?;
    Some(Decoded { ts: Some(ts), stream, partial, msg: Cow::Borrowed(msg) })
}

#[derive(Deserialize)]
struct DockerLine<'a> {
    #[serde(borrow)]
    log: Cow<'a, str>,
    #[serde(borrow, default)]
    stream: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    time: Option<Cow<'a, str>>,
}

fn decode_docker(line: &[u8]) -> Option<Decoded<'_>> {
    let d: DockerLine<'_> = serde_json::from_slice(line).ok()?;
    let stream = match d.stream.as_deref() {
        None => STDOUT,
        Some(s) => stream_index(s.as_bytes())?,
    };
    let ts = match d.time.as_deref() {
        Some(t) => Some(crate::time::parse_rfc3339_ns(t).ok()?),
        None => None,
    };
    let (partial, msg) = match d.log {
        Cow::Borrowed(s) => match s.strip_suffix('\n') {
            Some(m) => (false, Cow::Borrowed(m.as_bytes())),
            None => (true, Cow::Borrowed(s.as_bytes())),
        },
        Cow::Owned(mut s) => {
            let partial = !s.ends_with('\n');
            if !partial {
                s.pop();
            }
            (partial, Cow::Owned(s.into_bytes()))
        }
    };
    Some(Decoded { ts, stream, partial, msg })
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: &str = "2024-05-01T10:00:00.123456789Z";
    const T0_NS: i64 = 1_714_557_600_123_456_789;

    #[test]
    fn cri_lines() {
        let l = format!("{T0} stderr F hello world");
        let d = decode(LogFormat::Cri, l.as_bytes());
        assert_eq!(d, Decoded { ts: Some(T0_NS), stream: STDERR, partial: false, msg: Cow::Borrowed(b"hello world") });
        let l = format!("{T0} stdout P:x part");
        let d = decode(LogFormat::Cri, l.as_bytes());
        assert!(d.partial && d.stream == STDOUT && &*d.msg == b"part");
        let l = format!("{T0} stdout F");
        let d = decode(LogFormat::Cri, l.as_bytes());
        assert_eq!(&*d.msg, b"");
        // Not CRI: kept whole.
        for bad in ["plain text line", "2024-05-01 stdout F x", "2024-05-01T10:00:00Z stdin F x", "nonsense stdout F x"]
        {
            let d = decode(LogFormat::Cri, bad.as_bytes());
            assert_eq!((d.ts, d.partial, &*d.msg), (None, false, bad.as_bytes()), "{bad}");
        }
    }

    #[test]
    fn docker_lines() {
        let line = format!(r#"{{"log":"a \"quoted\" line\n","stream":"stderr","time":"{T0}"}}"#);
        let d = decode(LogFormat::Docker, line.as_bytes());
        assert_eq!(d.ts, Some(T0_NS));
        assert_eq!(d.stream, STDERR);
        assert!(!d.partial);
        assert_eq!(&*d.msg, br#"a "quoted" line"#);
        let d = decode(LogFormat::Auto, br#"{"log":"no newline","stream":"stdout","time":"2024-05-01T10:00:00Z"}"#);
        assert!(d.partial);
        assert_eq!(&*d.msg, b"no newline");
        let d = decode(LogFormat::Auto, br#"{"log":"x\n"}"#);
        assert_eq!((d.ts, d.stream, d.partial), (None, STDOUT, false));
        let d = decode(LogFormat::Docker, b"{broken");
        assert_eq!(&*d.msg, b"{broken");
    }
}
