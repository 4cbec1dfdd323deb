//! `cairn pipeline test CONFIG < lines`: runs the `[[pipeline]]` chains of a
//! config file over sample lines, offline, and prints what they do to each
//! line — its stream labels, structured metadata, time and line as they
//! would be stored, or which stage dropped it and why — then the metric
//! samples `metrics` stages derived. Nothing is stored.

use std::io::{BufRead, Write};
use std::path::PathBuf;

use cairn_aggregator::pipeline::{Outcome, dry_run};
use cairn_wire::Labels;
use clap::{Args, Subcommand};

use super::{CliError, CliResult};
use crate::config::Config;

/// `cairn pipeline …`
#[derive(Subcommand, Debug)]
pub enum PipelineCommand {
    /// Show what the [[pipeline]] chains of CONFIG do to lines read from
    /// standard input (one entry per line), without storing anything.
    Test(TestArgs),
}

/// `cairn pipeline test`
#[derive(Args, Debug)]
pub struct TestArgs {
    /// Config file with [[pipeline]] chains.
    pub config: PathBuf,
    /// Stream labels of the input lines, as pushed (chains whose selector
    /// matches them run).
    #[arg(long, short = 'l', default_value = r#"{job="test"}"#, value_name = "LABELS")]
    pub labels: String,
    /// Tenant the lines are pushed for.
    #[arg(long, default_value = cairn_wire::DEFAULT_TENANT, value_name = "ID")]
    pub tenant: String,
    /// One JSON object per input line instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Runs a `cairn pipeline` subcommand.
pub fn run(cmd: PipelineCommand) -> CliResult<i32> {
    match cmd {
        PipelineCommand::Test(a) => test(a, &mut std::io::stdin().lock(), &mut std::io::stdout().lock()),
    }
}

fn test(a: TestArgs, input: &mut dyn BufRead, out: &mut dyn Write) -> CliResult<i32> {
    let cfg = Config::load(&a.config).map_err(|e| CliError::Usage(format!("{e:#}")))?;
    let labels = Labels::parse(&a.labels).map_err(|e| CliError::Usage(format!("--labels: {e}")))?;
    if labels.is_empty() {
        return Err(CliError::Usage("--labels: at least one label is needed, e.g. {job=\"app\"}".into()));
    }
    let agg = cfg.aggregator();
    let now = cairn_wire::time::now_ns();
    let mut lines = Vec::new();
    for l in input.lines() {
        lines.push(l.map_err(|e| CliError::Usage(format!("cannot read standard input: {e}")))?);
    }
    let inputs = lines.clone();
    let cairn_aggregator::pipeline::DryRun { pipelines: matching, traced, metrics: derived } =
        dry_run(&agg.pipeline, agg.pipeline_limits(), &a.tenant, labels.clone(), lines, now)
            .map_err(|e| CliError::Usage(e.to_string()))?;
    if !a.json {
        if matching.is_empty() {
            writeln!(out, "no pipeline matches {labels} for tenant {:?}: lines are stored as they come", a.tenant)?;
        } else {
            writeln!(out, "pipelines for {labels}, tenant {:?}: {}", a.tenant, matching.join(", "))?;
        }
    }
    for t in traced {
        let n = t.input + 1;
        let input = inputs.get(t.input).map(String::as_str).unwrap_or("");
        if a.json {
            let v = t.to_json(now);
            writeln!(out, "{v}")?;
            continue;
        }
        writeln!(out, "#{n} {input}")?;
        match &t.outcome {
            Outcome::Kept { labels, entry, refused_labels } => {
                writeln!(out, "  labels:   {labels}")?;
                if !entry.metadata.is_empty() {
                    let md: Vec<String> = entry.metadata.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
                    writeln!(out, "  metadata: {}", md.join(" "))?;
                }
                if !refused_labels.is_empty() {
                    writeln!(out, "  refused:  {} (label value limit; kept as metadata)", refused_labels.join(", "))?;
                }
                let when = if entry.ts == now { " (arrival)" } else { "" };
                writeln!(out, "  time:     {}{when}", cairn_wire::time::format_rfc3339_ns(entry.ts))?;
                writeln!(out, "  line:     {}", entry.line)?;
            }
            Outcome::Dropped { pipeline, stage, kind, why } => {
                writeln!(out, "  dropped by {pipeline} stage {stage} ({kind}): {why}")?;
            }
            Outcome::Joined => writeln!(out, "  joined: partial line, continued by a later line")?,
        }
    }
    if !a.json && !derived.is_empty() {
        writeln!(out, "derived metrics:")?;
        for (l, v) in &derived {
            let name = l.get(cairn_wire::METRIC_NAME).unwrap_or_default();
            writeln!(out, "  {name}{} {}", l.without(cairn_wire::METRIC_NAME), cairn_wire::format_float(*v))?;
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shows_labels_metadata_drops_and_metrics() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("c.toml");
        std::fs::write(
            &cfg,
            r#"
[[pipeline]]
name = "app"
selector = '{job="app"}'
[[pipeline.stage]]
type = "json"
[[pipeline.stage]]
type = "drop"
source = "level"
value = "debug"
[[pipeline.stage]]
type = "labels"
fields = ["level"]
[[pipeline.stage]]
type = "structured_metadata"
fields = ["user"]
[[pipeline.stage]]
type = "redact"
[[pipeline.stage]]
type = "metrics"
name = "app_lines_total"
"#,
        )
        .unwrap();
        let run = |json: bool, labels: &str| {
            let args = TestArgs { config: cfg.clone(), labels: labels.into(), tenant: "fake".into(), json };
            let mut input: &[u8] =
                b"{\"level\":\"info\",\"user\":\"bob\",\"msg\":\"token=abc\"}\n{\"level\":\"debug\"}\n";
            let mut out = Vec::new();
            assert_eq!(test(args, &mut input, &mut out).unwrap(), 0);
            String::from_utf8(out).unwrap()
        };
        let text = run(false, r#"{job="app"}"#);
        assert!(text.contains("pipelines for {job=\"app\"}, tenant \"fake\": app"), "{text}");
        assert!(text.contains("  labels:   {job=\"app\", level=\"info\"}"), "{text}");
        assert!(text.contains("  metadata: user=\"bob\""), "{text}");
        assert!(text.contains(r#"token=<redacted>"#), "{text}");
        assert!(
            text.contains("#2 {\"level\":\"debug\"}\n  dropped by app stage 1 (drop): level is \"debug\""),
            "{text}"
        );
        assert!(text.contains("app_lines_total"), "{text}");
        let json = run(true, r#"{job="app"}"#);
        let first: serde_json::Value = serde_json::from_str(json.lines().next().unwrap()).unwrap();
        assert_eq!(first["labels"]["level"], "info");
        assert_eq!(first["metadata"]["user"], "bob");
        let second: serde_json::Value = serde_json::from_str(json.lines().nth(1).unwrap()).unwrap();
        assert_eq!((second["result"].as_str(), second["stage"].as_u64()), (Some("dropped"), Some(1)));
        let other = run(false, r#"{job="other"}"#);
        assert!(other.starts_with("no pipeline matches"), "{other}");
        assert!(other.contains("  line:     {\"level\":\"debug\"}"), "{other}");
    }
}
