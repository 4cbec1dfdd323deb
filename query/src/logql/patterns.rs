//! Log patterns for `/loki/api/v1/patterns` (Grafana's Logs Drilldown):
//! lines clustered by the Drain algorithm (He et al., "Drain: An Online Log
//! Parsing Approach with Fixed Depth Tree", ICWS 2017), as Loki's pattern
//! ingester does, with a count per pattern, level and step.
//!
//! Differences from Loki, which mines patterns continuously at ingest in a
//! separate component: Cairn mines them at query time from the newest
//! [`MAX_PATTERN_LINES`] lines of the range (so counts cover those lines),
//! and tokenizes by whitespace, with `key=value` split after the `=` so
//! logfmt values vary on their own.
//!
//! Drain in short: lines are routed through a tree by their token count
//! and first tokens (tokens with digits go to a wildcard child); at the leaf
//! the most similar cluster of equal length is taken when at least
//! [`SIM_THRESHOLD`] of its literal tokens are equal, and its template then
//! replaces differing tokens with `<_>`; otherwise the line starts a new
//! cluster.

use std::collections::{BTreeMap, HashMap};

use cairn_store::logs::LogStore;

use super::ast::{Direction, LogSelector};
use super::eval::{LogQuery, eval_log_query};
use super::metric::EvalError;

/// Lines a patterns request reads, at most (the newest of its range).
pub const MAX_PATTERN_LINES: usize = 50_000;
/// The template token standing for any value.
const PARAM: &str = "<_>";
/// Tree depth: the token-count layer plus this many token layers.
const MAX_NODE_DEPTH: usize = 28;
/// Fraction of equal literal tokens that joins a line to a cluster.
const SIM_THRESHOLD: f64 = 0.3;
/// Children per tree node before further tokens share the wildcard child.
const MAX_CHILDREN: usize = 15;
/// Clusters kept; the least recently matched one is dropped beyond this.
const MAX_CLUSTERS: usize = 300;
/// Longer lines are not clustered (as Loki's `max_allowed_line_length`).
const MAX_LINE_LEN: usize = 3000;
/// Lines with more tokens are not clustered.
const MAX_TOKENS: usize = 100;

/// One pattern of a patterns response.
#[derive(Debug, Clone, PartialEq)]
pub struct PatternSeries {
    /// The template, e.g. `<_> level=info msg=<_>`.
    pub pattern: String,
    /// The lines' `detected_level` (`unknown` without one).
    pub level: String,
    /// (step start in seconds, lines) for steps with lines, ascending.
    pub samples: Vec<(i64, u64)>,
}

/// A token of a line: its text, and whether it follows the previous token
/// without a space (a value after `key=`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Token {
    text: String,
    glued: bool,
}

fn tokenize(line: &str) -> Vec<Token> {
    let mut out = Vec::new();
    for word in line.split_whitespace() {
        match word.find('=') {
            Some(i) if i > 0 && i + 1 < word.len() => {
                out.push(Token { text: word[..=i].to_string(), glued: false });
                out.push(Token { text: word[i + 1..].to_string(), glued: true });
            }
            _ => out.push(Token { text: word.to_string(), glued: false }),
        }
    }
    out
}

fn render(tokens: &[Token]) -> String {
    let mut s = String::new();
    for (i, t) in tokens.iter().enumerate() {
        if i > 0 && !t.glued {
            s.push(' ');
        }
        s.push_str(&t.text);
    }
    s
}

#[derive(Default)]
struct Node {
    children: HashMap<String, Node>,
    clusters: Vec<usize>,
}

struct Cluster {
    tokens: Vec<Token>,
    last_used: u64,
    /// (level, step index) → lines.
    counts: HashMap<(String, i64), u64>,
}

/// A Drain clusterer.
#[derive(Default)]
struct Drain {
    root: HashMap<usize, Node>,
    clusters: Vec<Option<Cluster>>,
    live: usize,
    clock: u64,
}

impl Drain {
    /// Adds a line; returns its cluster's index.
    fn train(&mut self, tokens: Vec<Token>) -> usize {
        self.clock += 1;
        let found = self.search(&tokens);
        match found {
            Some(id) => {
                let c = self.clusters[id].as_mut().expect("search returns live clusters");
                for (t, new) in c.tokens.iter_mut().zip(&tokens) {
                    if t.text != new.text {
                        t.text = PARAM.to_string();
                    }
                }
                c.last_used = self.clock;
                id
            }
            None => {
                if self.live >= MAX_CLUSTERS {
                    self.evict();
                }
                let id = self.clusters.len();
                self.add_to_tree(&tokens, id);
                self.clusters.push(Some(Cluster { tokens, last_used: self.clock, counts: HashMap::new() }));
                self.live += 1;
                id
            }
        }
    }

    fn evict(&mut self) {
        let oldest = self
            .clusters
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.as_ref().map(|c| (c.last_used, i)))
            .min()
            .map(|(_, i)| i);
        if let Some(i) = oldest {
            self.clusters[i] = None;
            self.live -= 1;
        }
    }

    fn search(&self, tokens: &[Token]) -> Option<usize> {
        let mut node = self.root.get(&tokens.len())?;
        for t in tokens.iter().take(MAX_NODE_DEPTH.min(tokens.len().saturating_sub(1))) {
            node = node.children.get(&t.text).or_else(|| node.children.get(PARAM))?;
        }
        let mut best: Option<(f64, usize, usize)> = None;
        for &id in &node.clusters {
            let Some(c) = self.clusters[id].as_ref() else { continue };
            let (mut same, mut params) = (0usize, 0usize);
            for (a, b) in c.tokens.iter().zip(tokens) {
                if a.text == PARAM {
                    params += 1;
                } else if a.text == b.text {
                    same += 1;
                }
            }
            let sim = if tokens.is_empty() { 1.0 } else { same as f64 / tokens.len() as f64 };
            if best.is_none_or(|(s, p, _)| sim > s || (sim == s && params > p)) {
                best = Some((sim, params, id));
            }
        }
        best.filter(|&(s, _, _)| s >= SIM_THRESHOLD).map(|(_, _, id)| id)
    }

    fn add_to_tree(&mut self, tokens: &[Token], id: usize) {
        let clusters = &self.clusters;
        let mut node = self.root.entry(tokens.len()).or_default();
        for t in tokens.iter().take(MAX_NODE_DEPTH.min(tokens.len().saturating_sub(1))) {
            let key = if node.children.contains_key(&t.text) {
                t.text.clone()
            } else if t.text.bytes().any(|b| b.is_ascii_digit()) || node.children.len() + 1 >= MAX_CHILDREN {
                PARAM.to_string()
            } else {
                t.text.clone()
            };
            node = node.children.entry(key).or_default();
        }
        node.clusters.retain(|&c| clusters.get(c).is_some_and(|c| c.is_some()));
        node.clusters.push(id);
    }
}

/// Patterns of the newest [`MAX_PATTERN_LINES`] lines of `sel` in
/// `[q.start, q.end)`, with line counts per `step` (ns) from `q.start`.
/// `q.limit`, `q.direction` and `q.categorize` are ignored.
pub fn detect_patterns(
    store: &LogStore,
    sel: &LogSelector,
    q: &LogQuery<'_>,
    step: i64,
) -> Result<Vec<PatternSeries>, EvalError> {
    let q = LogQuery { limit: MAX_PATTERN_LINES, direction: Direction::Backward, categorize: true, ..q.clone() };
    let step = step.max(1);
    let mut drain = Drain::default();
    for stream in eval_log_query(store, sel, &q)? {
        for e in &stream.entries {
            if e.line.len() > MAX_LINE_LEN {
                continue;
            }
            let tokens = tokenize(&e.line);
            if tokens.is_empty() || tokens.len() > MAX_TOKENS {
                continue;
            }
            let id = drain.train(tokens);
            let level = e.metadata.iter().find(|(k, _)| k == "detected_level").map_or("unknown", |(_, v)| v.as_str());
            let bucket = (e.ts - q.start).div_euclid(step);
            if let Some(c) = drain.clusters[id].as_mut() {
                *c.counts.entry((level.to_string(), bucket)).or_default() += 1;
            }
        }
    }
    let mut out = Vec::new();
    for c in drain.clusters.into_iter().flatten() {
        // A template of nothing but `<_>` says nothing (Loki drops them too).
        if c.tokens.iter().all(|t| t.text == PARAM) {
            continue;
        }
        let pattern = render(&c.tokens);
        let mut by_level: BTreeMap<String, Vec<(i64, u64)>> = BTreeMap::new();
        for ((level, bucket), n) in c.counts {
            let t = q.start.saturating_add(bucket.saturating_mul(step)).div_euclid(1_000_000_000);
            by_level.entry(level).or_default().push((t, n));
        }
        for (level, mut samples) in by_level {
            samples.sort_unstable();
            out.push(PatternSeries { pattern: pattern.clone(), level, samples });
        }
    }
    let total = |p: &PatternSeries| p.samples.iter().map(|s| s.1).sum::<u64>();
    out.sort_by(|a, b| total(b).cmp(&total(a)).then_with(|| a.pattern.cmp(&b.pattern)).then(a.level.cmp(&b.level)));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mine(lines: &[&str]) -> Vec<String> {
        let mut d = Drain::default();
        for l in lines {
            d.train(tokenize(l));
        }
        let mut v: Vec<String> = d.clusters.into_iter().flatten().map(|c| render(&c.tokens)).collect();
        v.sort();
        v
    }

    #[test]
    fn similar_lines_share_a_template() {
        let got = mine(&[
            "ts=1 level=info msg=\"request done\" took=12ms path=/a",
            "ts=2 level=info msg=\"request done\" took=7ms path=/b",
            "ts=3 level=info msg=\"request done\" took=9ms path=/a",
            "connection from 10.0.0.1 closed",
            "connection from 10.0.0.7 closed",
            "disk /dev/sda1 is 91% full",
        ]);
        assert_eq!(
            got,
            [
                "connection from <_> closed",
                "disk /dev/sda1 is 91% full",
                "ts=<_> level=info msg=\"request done\" took=<_> path=<_>",
            ]
        );
    }

    #[test]
    fn different_lengths_and_dissimilar_lines_stay_apart() {
        let got = mine(&["alpha beta gamma", "alpha beta gamma delta", "one two three"]);
        assert_eq!(got, ["alpha beta gamma", "alpha beta gamma delta", "one two three"]);
    }

    #[test]
    fn cluster_count_is_bounded() {
        let mut d = Drain::default();
        for i in 0..(MAX_CLUSTERS * 3) {
            // Every line its own shape: distinct token counts and words.
            let line: Vec<String> = (0..(i % 7 + 1)).map(|k| format!("w{}x{k}", i * 31 + k)).collect();
            d.train(tokenize(&line.join(" ")));
        }
        assert!(d.live <= MAX_CLUSTERS);
    }
}
