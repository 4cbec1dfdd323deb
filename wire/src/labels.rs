//! Label sets: sorted, unique names, no empty values.

use std::fmt;

/// One label: a name and a value.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Label {
    /// Label name, e.g. `job`.
    pub name: String,
    /// Label value, never empty inside a [`Labels`].
    pub value: String,
}

/// Why a label set was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LabelsError {
    /// The name does not match `[a-zA-Z_][a-zA-Z0-9_]*`.
    #[error("invalid label name {name:?}")]
    InvalidName { name: String },
    /// The same name appears twice.
    #[error("duplicate label name {name:?}")]
    Duplicate { name: String },
    /// The `{a="b", …}` text could not be parsed.
    #[error("cannot parse label set {input:?} at byte {offset}: {reason}")]
    Syntax { input: String, offset: usize, reason: &'static str },
}

/// A label set sorted by name with unique names and no empty values.
/// Immutable and shared: a clone is a reference-count increment (query
/// evaluation copies label sets into every sample of every step).
///
/// The set's hash is computed once, when it is built: a series is looked up
/// in several maps per ingested request (batch merge, head, newest sample),
/// and hashing every name and value each time was a tenth of the metrics
/// ingest CPU. The hash is a fixed-seed function of the content, so equal
/// sets have equal hashes; maps still mix it with their own random seed.
#[derive(Clone)]
pub struct Labels(std::sync::Arc<[Label]>, u64);

/// The content hash kept in [`Labels`].
fn content_hash(labels: &[Label]) -> u64 {
    use std::hash::BuildHasher;
    foldhash::quality::FixedState::with_seed(0x6361_6972_6e5f_6c62).hash_one(labels)
}

impl Labels {
    /// Wraps a sorted, validated label list.
    fn from_sorted(labels: std::sync::Arc<[Label]>) -> Labels {
        let h = content_hash(&labels);
        Labels(labels, h)
    }
}

impl Default for Labels {
    fn default() -> Self {
        Labels::from_sorted(std::sync::Arc::from([]))
    }
}

impl std::fmt::Debug for Labels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Labels").field(&self.0).finish()
    }
}

impl PartialEq for Labels {
    #[inline]
    fn eq(&self, other: &Self) -> bool {
        // Shared label sets (see `crate::intern`) compare by pointer: the
        // ingest path looks series up with the head's own `Labels`.
        std::sync::Arc::ptr_eq(&self.0, &other.0) || (self.1 == other.1 && self.0[..] == other.0[..])
    }
}

impl Eq for Labels {}

impl PartialOrd for Labels {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Labels {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0[..].cmp(&other.0[..])
    }
}

impl std::hash::Hash for Labels {
    #[inline]
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(self.1);
    }
}

/// True when `name` is a valid Prometheus/Loki label name.
pub fn is_valid_label_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    match bytes.next() {
        Some(b) if b.is_ascii_alphabetic() || b == b'_' => {}
        _ => return false,
    }
    bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

impl Labels {
    /// The empty label set.
    pub fn empty() -> Self {
        Labels::default()
    }

    /// Builds a label set from pairs: validates names, drops empty values,
    /// sorts, and refuses duplicate names.
    pub fn from_pairs<N, V>(pairs: impl IntoIterator<Item = (N, V)>) -> Result<Self, LabelsError>
    where
        N: Into<String>,
        V: Into<String>,
    {
        let mut v: Vec<Label> = Vec::new();
        for (n, val) in pairs {
            let name = n.into();
            let value = val.into();
            if !is_valid_label_name(&name) {
                return Err(LabelsError::InvalidName { name });
            }
            if value.is_empty() {
                continue;
            }
            v.push(Label { name, value });
        }
        v.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        for w in v.windows(2) {
            if w[0].name == w[1].name {
                return Err(LabelsError::Duplicate { name: w[0].name.clone() });
            }
        }
        Ok(Labels::from_sorted(v.into()))
    }

    /// True when this set is exactly `pairs`, in order (as a sender that
    /// sorts its labels and leaves out empty values sends them).
    pub fn eq_pairs(&self, pairs: &[(&str, &str)]) -> bool {
        self.0.len() == pairs.len() && self.0.iter().zip(pairs).all(|(l, &(n, v))| l.name == n && l.value == v)
    }

    /// The value of `name`, if present.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.binary_search_by(|l| l.name.as_str().cmp(name)).ok().map(|i| self.0[i].value.as_str())
    }

    /// A 64-bit hash of the names and values, the same in every process
    /// (fixed seed): cheap identity for per-series bookkeeping. Not
    /// collision-proof; equal sets always hash equal.
    pub fn content_hash(&self) -> u64 {
        self.1
    }

    /// Labels in name order.
    pub fn iter(&self) -> impl Iterator<Item = &Label> {
        self.0.iter()
    }

    /// Number of labels.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when there are no labels.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// A copy without the label `name`.
    pub fn without(&self, name: &str) -> Labels {
        Labels::from_sorted(self.0.iter().filter(|l| l.name != name).cloned().collect())
    }

    /// Total bytes of names and values, for limits and accounting.
    pub fn byte_size(&self) -> usize {
        self.0.iter().map(|l| l.name.len() + l.value.len()).sum()
    }

    /// Parses Prometheus label-set text, `{a="b", c="d"}`, as Loki push
    /// requests carry it. Values use Go string escapes (`\"`, `\\`, `\n`, `\t`).
    pub fn parse(input: &str) -> Result<Labels, LabelsError> {
        let err = |offset: usize, reason: &'static str| LabelsError::Syntax {
            input: input.chars().take(200).collect(),
            offset,
            reason,
        };
        let b = input.as_bytes();
        let mut i = 0;
        let skip_ws = |i: &mut usize| {
            while *i < b.len() && b[*i].is_ascii_whitespace() {
                *i += 1;
            }
        };
        skip_ws(&mut i);
        if i >= b.len() || b[i] != b'{' {
            return Err(err(i, "expected '{'"));
        }
        i += 1;
        let mut pairs: Vec<(String, String)> = Vec::new();
        loop {
            skip_ws(&mut i);
            if i < b.len() && b[i] == b'}' {
                i += 1;
                break;
            }
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
            if start == i {
                return Err(err(i, "expected label name"));
            }
            let name = &input[start..i];
            skip_ws(&mut i);
            if i >= b.len() || b[i] != b'=' {
                return Err(err(i, "expected '='"));
            }
            i += 1;
            skip_ws(&mut i);
            let (value, next) = parse_quoted(input, i).map_err(|(o, r)| err(o, r))?;
            i = next;
            pairs.push((name.to_string(), value));
            skip_ws(&mut i);
            if i < b.len() && b[i] == b',' {
                i += 1;
                continue;
            }
            if i < b.len() && b[i] == b'}' {
                i += 1;
                break;
            }
            return Err(err(i, "expected ',' or '}'"));
        }
        skip_ws(&mut i);
        if i != b.len() {
            return Err(err(i, "trailing characters after '}'"));
        }
        Labels::from_pairs(pairs)
    }
}

/// Parses a double-quoted Go-style string starting at byte `i`; returns the
/// unescaped value and the index after the closing quote.
pub fn parse_quoted(input: &str, mut i: usize) -> Result<(String, usize), (usize, &'static str)> {
    let b = input.as_bytes();
    if i >= b.len() || b[i] != b'"' {
        return Err((i, "expected '\"'"));
    }
    i += 1;
    let mut out = String::new();
    let mut run_start = i;
    while i < b.len() {
        match b[i] {
            b'"' => {
                out.push_str(&input[run_start..i]);
                return Ok((out, i + 1));
            }
            b'\\' => {
                out.push_str(&input[run_start..i]);
                let c = *b.get(i + 1).ok_or((i, "unterminated escape"))?;
                match c {
                    b'"' => out.push('"'),
                    b'\\' => out.push('\\'),
                    b'n' => out.push('\n'),
                    b't' => out.push('\t'),
                    b'r' => out.push('\r'),
                    b'\'' => out.push('\''),
                    _ => return Err((i, "unknown escape sequence")),
                }
                i += 2;
                run_start = i;
            }
            _ => i += 1,
        }
    }
    Err((i, "unterminated string"))
}

impl fmt::Display for Labels {
    /// `{a="b", c="d"}` with Go-style escaping, as Prometheus prints label sets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("{")?;
        for (i, l) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{}=\"", l.name)?;
            for c in l.value.chars() {
                match c {
                    '"' => f.write_str("\\\"")?,
                    '\\' => f.write_str("\\\\")?,
                    '\n' => f.write_str("\\n")?,
                    c => write!(f, "{c}")?,
                }
            }
            f.write_str("\"")?;
        }
        f.write_str("}")
    }
}

impl<'a> IntoIterator for &'a Labels {
    type Item = &'a Label;
    type IntoIter = std::slice::Iter<'a, Label>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl serde::Serialize for Labels {
    /// A JSON object `{"name": "value", …}` in name order.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for l in self.0.iter() {
            m.serialize_entry(&l.name, &l.value)?;
        }
        m.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorted_unique_no_empty() {
        let l = Labels::from_pairs([("b", "2"), ("a", "1"), ("c", "")]).unwrap();
        assert_eq!(l.to_string(), r#"{a="1", b="2"}"#);
        assert_eq!(l.get("a"), Some("1"));
        assert_eq!(l.get("c"), None);
        assert!(matches!(Labels::from_pairs([("a", "1"), ("a", "2")]), Err(LabelsError::Duplicate { .. })));
        assert!(matches!(Labels::from_pairs([("1a", "1")]), Err(LabelsError::InvalidName { .. })));
    }

    #[test]
    fn parse_round_trip() {
        let l = Labels::parse(r#"{job="app", env="pr\"od\\x\n"}"#).unwrap();
        assert_eq!(l.get("env"), Some("pr\"od\\x\n"));
        assert_eq!(Labels::parse(&l.to_string()).unwrap(), l);
        assert_eq!(Labels::parse("{}").unwrap(), Labels::empty());
        assert_eq!(Labels::parse(" { a = \"b\" , } ").unwrap().get("a"), Some("b"));
    }

    #[test]
    fn parse_errors_do_not_panic() {
        for bad in [
            "",
            "{",
            "{a}",
            "{a=}",
            "{a=\"",
            "{a=\"b\"",
            "{a=\"b\"}x",
            "{=\"b\"}",
            "{a=\"\\",
            "{a=\"\\q\"}",
            "{é=\"x\"}",
        ] {
            assert!(Labels::parse(bad).is_err(), "{bad:?} should fail");
        }
    }
}
