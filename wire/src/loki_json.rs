//! The JSON form of a Loki push request:
//!
//! ```json
//! {"streams": [{"stream": {"job": "app"},
//!               "values": [["1700000000000000000", "a line"],
//!                          ["1700000000000000001", "another", {"trace_id": "abc"}]]}]}
//! ```
//!
//! Timestamps are strings of Unix nanoseconds (numbers are accepted too);
//! the optional third element of a value is structured metadata.

use serde::Deserialize;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use std::collections::BTreeMap;
use std::fmt;

/// A push request body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushRequest {
    /// The streams of the push.
    pub streams: Vec<Stream>,
}

/// One stream of a push.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stream {
    /// Stream labels.
    pub stream: BTreeMap<String, String>,
    /// Entries.
    pub values: Vec<Entry>,
}

/// One entry: timestamp in ns, line, optional structured metadata.
#[derive(Debug, PartialEq)]
pub struct Entry {
    /// Nanoseconds since the epoch.
    pub ts_ns: i64,
    /// The log line.
    pub line: String,
    /// Structured metadata (name, value) pairs.
    pub metadata: Vec<(String, String)>,
}

struct Ts(i64);

impl<'de> Deserialize<'de> for Ts {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Ts;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a timestamp in Unix nanoseconds (string or integer)")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Ts, E> {
                v.parse::<i64>()
                    .map(Ts)
                    .map_err(|_| E::custom(format!("timestamp {v:?} is not an integer of Unix nanoseconds")))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Ts, E> {
                Ok(Ts(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Ts, E> {
                i64::try_from(v).map(Ts).map_err(|_| E::custom("timestamp out of range"))
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for Entry {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Entry;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an array [timestamp, line] or [timestamp, line, {metadata}]")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Entry, A::Error> {
                let ts: Ts = seq.next_element()?.ok_or_else(|| de::Error::invalid_length(0, &self))?;
                let line: String = seq.next_element()?.ok_or_else(|| de::Error::invalid_length(1, &self))?;
                let meta: Option<BTreeMap<String, String>> = seq.next_element()?;
                if seq.next_element::<de::IgnoredAny>()?.is_some() {
                    return Err(de::Error::invalid_length(4, &self));
                }
                Ok(Entry { ts_ns: ts.0, line, metadata: meta.map(|m| m.into_iter().collect()).unwrap_or_default() })
            }
        }
        d.deserialize_seq(V)
    }
}

/// Parses a JSON push body.
pub fn parse(body: &[u8]) -> Result<PushRequest, serde_json::Error> {
    serde_json::from_slice(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_loki_json() {
        let r = parse(br#"{"streams":[{"stream":{"job":"x"},"values":[["10","a"],[11,"b",{"k":"v"}]]}]}"#).unwrap();
        assert_eq!(r.streams[0].stream["job"], "x");
        assert_eq!(
            r.streams[0].values[1],
            Entry { ts_ns: 11, line: "b".into(), metadata: vec![("k".into(), "v".into())] }
        );
    }

    #[test]
    fn rejects_bad_shapes() {
        for bad in [
            &br#"{"streams":[{"stream":{"job":"x"},"values":[["x","a"]]}]}"#[..],
            br#"{"streams":[{"stream":{"job":"x"},"values":[["1"]]}]}"#,
            br#"{"streams":[{"stream":{"job":"x"},"values":[["1","a",{},4]]}]}"#,
            br#"{"streams":[{"stream":{"job":1},"values":[]}]}"#,
            br#"{"streams":"#,
            br#"{"strams":[]}"#,
        ] {
            assert!(parse(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }
}
