//! Field extraction shared by LogQL's parsers and the aggregator's ingest
//! pipeline (`cairn_aggregator::pipeline`): JSON flattening, JSON paths
//! and logfmt pairs, with Loki's naming rules.
//!
//! [`flatten_json`] streams the line through serde without building a
//! `serde_json::Value`: keys are written into one reused buffer and string
//! values without escapes are passed on borrowed from the line, so a line
//! costs no allocation per field.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

pub use super::ast::JsonPathPart;
pub use super::parser::parse_json_path;
pub use super::pipeline::{LogfmtPair, logfmt_pairs, sanitize_label_name};

/// Why a line could not be flattened as JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JsonError {
    /// Valid JSON, but not an object.
    NotAnObject,
    /// Not valid JSON (serde_json's message).
    Syntax(String),
}

impl fmt::Display for JsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JsonError::NotAnObject => f.write_str("Value looks like object, but can't find closing '}' symbol"),
            JsonError::Syntax(e) => f.write_str(e),
        }
    }
}

/// Largest nesting depth followed; deeper objects are skipped (serde_json
/// itself refuses more than 128 levels).
const MAX_DEPTH: usize = 64;

/// Flattens a JSON object as Loki's `json` parser does without parameters:
/// nested object keys are joined with `_`, every name is sanitized
/// ([`sanitize_label_name`]), strings, numbers and booleans are emitted as
/// text, arrays and nulls are skipped. Calls `emit(name, value)` in document
/// order (a repeated name is emitted again; the caller's last write wins).
pub fn flatten_json(line: &str, emit: &mut dyn FnMut(&str, &str)) -> Result<(), JsonError> {
    let mut de = serde_json::Deserializer::from_str(line);
    let mut key = String::new();
    let mut scratch = String::new();
    let top = Node { key: &mut key, scratch: &mut scratch, emit, depth: 0 };
    match top.deserialize(&mut de) {
        Ok(true) => {}
        Ok(false) => return Err(JsonError::NotAnObject),
        Err(e) => return Err(JsonError::Syntax(e.to_string())),
    }
    de.end().map_err(|e| JsonError::Syntax(e.to_string()))
}

/// Follows a JSON path (from [`parse_json_path`]) into a parsed value and
/// returns the scalar found there as text (objects and arrays as their JSON
/// text; nothing for null or a missing path).
pub fn json_path_value(v: &serde_json::Value, path: &[JsonPathPart]) -> Option<String> {
    let mut cur = v;
    for part in path {
        cur = match (cur, part) {
            (serde_json::Value::Object(m), JsonPathPart::Key(k)) => m.get(k)?,
            (serde_json::Value::Array(a), JsonPathPart::Index(i)) => a.get(*i)?,
            _ => return None,
        };
    }
    json_scalar(cur)
}

/// A JSON value as label text (`None` for null).
pub fn json_scalar(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        serde_json::Value::Null => None,
        other => Some(other.to_string()),
    }
}

/// One value at `key` (the flattened name so far). Deserializing it
/// returns whether the value was an object.
struct Node<'k, 'e> {
    key: &'k mut String,
    scratch: &'k mut String,
    emit: &'k mut (dyn FnMut(&str, &str) + 'e),
    depth: usize,
}

impl<'de> DeserializeSeed<'de> for Node<'_, '_> {
    type Value = bool;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_any(self)
    }
}

impl Node<'_, '_> {
    fn scalar(self, v: &str) -> bool {
        if !self.key.is_empty() {
            (self.emit)(self.key, v);
        }
        false
    }

    fn number(self, v: impl fmt::Display) -> bool {
        use fmt::Write as _;
        self.scratch.clear();
        let _ = write!(self.scratch, "{v}");
        if !self.key.is_empty() {
            (self.emit)(self.key, self.scratch);
        }
        false
    }
}

impl<'de> Visitor<'de> for Node<'_, '_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<bool, E> {
        Ok(self.scalar(if v { "true" } else { "false" }))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<bool, E> {
        Ok(self.number(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<bool, E> {
        Ok(self.number(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<bool, E> {
        // serde_json's own float text (ryu), as `Value::to_string` gives.
        match serde_json::Number::from_f64(v) {
            Some(n) => Ok(self.number(n)),
            None => Ok(false),
        }
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<bool, E> {
        Ok(self.scalar(v))
    }
    fn visit_unit<E: de::Error>(self) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_none<E: de::Error>(self) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<bool, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(false)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
        let base = self.key.len();
        loop {
            self.key.truncate(base);
            if map.next_key_seed(Key { key: self.key, prefixed: base > 0 })?.is_none() {
                break;
            }
            if self.depth >= MAX_DEPTH {
                map.next_value::<IgnoredAny>()?;
                continue;
            }
            let child =
                Node { key: &mut *self.key, scratch: &mut *self.scratch, emit: &mut *self.emit, depth: self.depth + 1 };
            map.next_value_seed(child)?;
        }
        self.key.truncate(base);
        Ok(true)
    }
}

/// Appends a map key, sanitized, to the flattened name (after `_` when
/// nested).
struct Key<'k> {
    key: &'k mut String,
    prefixed: bool,
}

impl<'de> DeserializeSeed<'de> for Key<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object key")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        if self.prefixed {
            self.key.push('_');
        }
        let first = self.key.is_empty();
        for (i, c) in v.chars().enumerate() {
            if c.is_ascii_alphabetic() || c == '_' || ((i > 0 || !first) && c.is_ascii_digit()) {
                self.key.push(c);
            } else if i == 0 && first && c.is_ascii_digit() {
                self.key.push('_');
                self.key.push(c);
            } else {
                self.key.push('_');
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flat(line: &str) -> Result<Vec<(String, String)>, JsonError> {
        let mut out = Vec::new();
        flatten_json(line, &mut |k, v| out.push((k.to_string(), v.to_string())))?;
        Ok(out)
    }

    #[test]
    fn flattens_like_loki() {
        let got = flat(
            r#"{"level":"error","a":{"b":1.5,"c":[1,{"x":1}],"d":{"e":"f\"g"}},"n":null,"t":true,"2x":7,"a-b":-3}"#,
        )
        .unwrap();
        let want = [("level", "error"), ("a_b", "1.5"), ("a_d_e", "f\"g"), ("t", "true"), ("_2x", "7"), ("a_b", "-3")];
        assert_eq!(got, want.map(|(a, b)| (a.to_string(), b.to_string())));
        assert_eq!(flat("[1]"), Err(JsonError::NotAnObject));
        assert_eq!(flat("\"x\""), Err(JsonError::NotAnObject));
        assert!(matches!(flat("{\"a\":1"), Err(JsonError::Syntax(_))));
        assert!(matches!(flat("{\"a\":1} x"), Err(JsonError::Syntax(_))));
        assert_eq!(flat("{}").unwrap(), []);
        // Deep nesting is bounded, never a stack overflow.
        let deep = format!("{}1{}", "{\"a\":".repeat(100), "}".repeat(100));
        assert_eq!(flat(&deep).unwrap(), []);
    }

    #[test]
    fn json_paths() {
        let v: serde_json::Value = serde_json::from_str(r#"{"a":{"b":[10,{"c":"x"}]},"n":null}"#).unwrap();
        let p = |s: &str| parse_json_path(s).unwrap();
        assert_eq!(json_path_value(&v, &p("a.b[0]")), Some("10".into()));
        assert_eq!(json_path_value(&v, &p(r#"a.b[1]["c"]"#)), Some("x".into()));
        assert_eq!(json_path_value(&v, &p("a.z")), None);
        assert_eq!(json_path_value(&v, &p("n")), None);
    }
}
