//! The whole configuration file: one section per component, each defined by
//! the crate that owns it. Unknown keys are errors; every key has a default,
//! printed by `cairn config default` and documented in
//! `docs/configuration.md`.

use std::path::Path;

use anyhow::Context;
use cairn_aggregator::auth::AuthConfig;
use cairn_aggregator::config::{
    AggregatorConfig, LimitsConfig, QueryConfig, ServerConfig, StorageConfig, TenantConfig,
};
use cairn_aggregator::pipeline::{Pipeline, PipelineConfig};
use cairn_collector::config::CollectorConfig;
use serde::{Deserialize, Serialize};

/// The default configuration, with comments; `cairn config default` prints it.
pub const DEFAULT_CONFIG: &str = include_str!("default-config.toml");

/// Everything in a Cairn config file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `[server]`
    pub server: ServerConfig,
    /// `[auth]`: who may use the HTTP API.
    pub auth: AuthConfig,
    /// `[storage]`
    pub storage: StorageConfig,
    /// `[limits]`
    pub limits: LimitsConfig,
    /// `[query]`
    pub query: QueryConfig,
    /// `[collector]`
    pub collector: CollectorConfig,
    /// `[tenants."<id>"]`: per-tenant overrides.
    pub tenants: std::collections::BTreeMap<String, TenantConfig>,
    /// `[[pipeline]]`: ingest stage chains (docs/pipeline.md).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pipeline: Vec<PipelineConfig>,
}

impl Config {
    /// Parses config text; errors name the key, line and column.
    pub fn parse(text: &str) -> Result<Config, toml::de::Error> {
        toml::from_str(text)
    }

    /// Reads and parses a config file, then validates it.
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("cannot read config file {}", path.display()))?;
        let cfg = Config::parse(&text).map_err(|e| anyhow::anyhow!("in config file {}: {e}", path.display()))?;
        cfg.validate().with_context(|| format!("in config file {}", path.display()))?;
        Ok(cfg)
    }

    /// Checks values that parse but make no sense.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.storage.wal.fsync_interval.0.is_zero() {
            anyhow::bail!("storage.wal.fsync_interval must be greater than 0");
        }
        if self.storage.wal.segment_size.0 < 1 << 20 {
            anyhow::bail!("storage.wal.segment_size must be at least 1MiB");
        }
        if self.storage.logs.head_max_size.0 == 0 {
            anyhow::bail!("storage.logs.head_max_size must be greater than 0");
        }
        if self.storage.logs.flush_interval.0.is_zero() {
            anyhow::bail!("storage.logs.flush_interval must be greater than 0");
        }
        if self.storage.metrics.head_max_samples == 0 {
            anyhow::bail!("storage.metrics.head_max_samples must be greater than 0");
        }
        if self.storage.metrics.flush_interval.0.is_zero() {
            anyhow::bail!("storage.metrics.flush_interval must be greater than 0");
        }
        if self.limits.max_labels_per_series == 0 {
            anyhow::bail!("limits.max_labels_per_series must be at least 1");
        }
        if self.query.lookback_delta.0.is_zero() {
            anyhow::bail!("query.lookback_delta must be greater than 0");
        }
        if self.query.max_concurrency == 0 {
            anyhow::bail!("query.max_concurrency must be at least 1");
        }
        if self.query.max_series == 0 {
            anyhow::bail!("query.max_series must be at least 1");
        }
        if self.query.max_samples == 0 {
            anyhow::bail!("query.max_samples must be at least 1");
        }
        self.server.tls.validate().map_err(anyhow::Error::msg)?;
        self.auth.validate()?;
        self.collector.validate().map_err(|e| anyhow::anyhow!("collector: {e}"))?;
        let agg = self.aggregator();
        agg.tenant_limits().map_err(anyhow::Error::msg)?;
        agg.tenant_query().map_err(anyhow::Error::msg)?;
        let metrics = cairn_aggregator::selfmetrics::SelfMetrics::new();
        Pipeline::new(&self.pipeline, self.aggregator().pipeline_limits(), &metrics)?;
        Ok(())
    }

    /// The aggregator's part.
    pub fn aggregator(&self) -> AggregatorConfig {
        AggregatorConfig {
            server: self.server.clone(),
            storage: self.storage.clone(),
            limits: self.limits.clone(),
            query: self.query.clone(),
            tenants: self.tenants.clone(),
            pipeline: self.pipeline.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shipped default config parses to exactly `Config::default()`.
    #[test]
    fn default_config_file_matches_defaults() {
        let parsed = Config::parse(DEFAULT_CONFIG).unwrap();
        assert_eq!(parsed, Config::default());
        parsed.validate().unwrap();
    }

    /// Every key of the default config is documented in docs/configuration.md.
    #[test]
    fn every_key_is_documented() {
        let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/configuration.md")).unwrap();
        let v: toml::Value = toml::from_str(DEFAULT_CONFIG).unwrap();
        fn walk(prefix: &str, v: &toml::Value, out: &mut Vec<String>) {
            match v {
                toml::Value::Table(t) => {
                    for (k, v) in t {
                        let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                        // `labels` tables are free-form maps: the map is the key.
                        if !matches!(v, toml::Value::Table(_)) || k == "labels" {
                            out.push(key.clone());
                        }
                        if k != "labels" {
                            walk(&key, v, out);
                        }
                    }
                }
                toml::Value::Array(a) => {
                    for item in a {
                        walk(prefix, item, out);
                    }
                }
                _ => {}
            }
        }
        let mut keys = Vec::new();
        walk("", &v, &mut keys);
        assert!(keys.len() > 10);
        let missing: Vec<_> = keys.iter().filter(|k| !doc.contains(&format!("`{k}`"))).collect();
        assert!(missing.is_empty(), "undocumented config keys: {missing:?}");
    }

    /// A config with pipeline chains prints (`cairn config check`) as TOML
    /// that parses back to the same config, and bad chains fail validation.
    #[test]
    fn pipelines_round_trip_and_validate() {
        let text = r#"
[[pipeline]]
selector = '{job="app"}'
[[pipeline.stage]]
type = "json"
fields = { a = "b.c" }
[[pipeline.stage]]
type = "labels"
fields = { lvl = "level" }
[[pipeline.stage]]
type = "metrics"
name = "x"
kind = "histogram"
source = "d"
buckets = [0.1, 1.0]
"#;
        let cfg = Config::parse(text).unwrap();
        cfg.validate().unwrap();
        let printed = toml::to_string_pretty(&cfg).unwrap();
        assert_eq!(Config::parse(&printed).unwrap(), cfg, "{printed}");
        let bad = Config::parse(
            "[[pipeline]]\nselector = '{job=\"a\"}'\n[[pipeline.stage]]\ntype = \"sample\"\nrate = 3.0\n",
        )
        .unwrap();
        let e = format!("{:#}", bad.validate().unwrap_err());
        assert!(e.contains("stage 0 (sample)"), "{e}");
    }

    /// `[tenants."<id>".limits]` and `.query` take any key of their section
    /// and apply on top of it; bad ones fail validation naming the tenant.
    #[test]
    fn tenant_limits_and_query_overlay_the_defaults() {
        let cfg = Config::parse(
            "[limits]\nmax_active_streams = 7\n[tenants.\"a\".limits]\nlogs_ingestion_rate = \"1MiB\"\n\
             [tenants.\"a\".query]\nmax_series = 10\n[tenants.\"b\"]\nlogs_retention_time = \"1d\"\n",
        )
        .unwrap();
        cfg.validate().unwrap();
        let agg = cfg.aggregator();
        let limits = agg.tenant_limits().unwrap();
        assert_eq!(limits["a"].logs_ingestion_rate.0, 1 << 20);
        assert_eq!(limits["a"].max_active_streams, 7, "keys the tenant does not set come from [limits]");
        assert!(!limits.contains_key("b"), "tenants without a limits table use [limits] itself");
        let query = agg.tenant_query().unwrap();
        assert_eq!(query["a"].max_series, 10);
        assert_eq!(query["a"].max_samples, QueryConfig::default().max_samples);
        for (text, want) in [
            ("[tenants.\"a\".limits]\nmax_lines = 1\n", "tenants.\"a\".limits: unknown field `max_lines`"),
            ("[tenants.\"a\".limits]\nmax_line_size = \"big\"\n", "tenants.\"a\".limits: invalid size"),
            ("[tenants.\"a\".query]\nmax_concurrency = 2\n", "one pool for the whole server"),
            ("[tenants.\"a\".limits]\nmax_labels_per_series = 0\n", "max_labels_per_series must be at least 1"),
        ] {
            let e = format!("{:#}", Config::parse(text).unwrap().validate().unwrap_err());
            assert!(e.contains(want), "{text}: {e}");
        }
    }

    #[test]
    fn unknown_keys_and_bad_values_name_key_and_line() {
        let e = Config::parse("[server]\nlisten = \"127.0.0.1:3100\"\nlisen = 1\n").unwrap_err().to_string();
        assert!(e.contains("line 3") && e.contains("lisen"), "{e}");
        let e = Config::parse("[storage.wal]\nfsync = \"sometimes\"\n").unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("sometimes"), "{e}");
        let e = Config::parse("[server]\nlisten = \"nowhere\"\n").unwrap_err().to_string();
        assert!(e.contains("line 2"), "{e}");
        let e = Config::parse("[collector.node]\ninterval = \"15\"\n").unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("interval"), "{e}");
    }
}
