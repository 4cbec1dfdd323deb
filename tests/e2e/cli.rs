//! The command line: help on every subcommand, config default/check, config
//! errors that name the key and line.

use crate::harness::run_cli;

#[test]
fn help_everywhere() {
    let (code, out, _) = run_cli(&["--help"]);
    assert_eq!(code, 0);
    for sub in ["up", "serve", "collect", "config"] {
        assert!(out.contains(sub), "top-level help lacks {sub}: {out}");
        let (code, out, err) = run_cli(&[sub, "--help"]);
        assert_eq!(code, 0, "{sub} --help: {err}");
        assert!(out.contains("Usage"), "{out}");
    }
    let (code, out, _) = run_cli(&["up", "--help"]);
    assert_eq!(code, 0);
    assert!(out.contains("--listen") && out.contains("--data-dir") && out.contains("--config"));
    assert!(!out.to_lowercase().contains("not implemented"));
    let (code, out, _) = run_cli(&["--version"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("cairn "));
}

#[test]
fn default_config_round_trips_through_check() {
    let (code, default, _) = run_cli(&["config", "default"]);
    assert_eq!(code, 0);
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("c.toml");
    std::fs::write(&p, &default).unwrap();
    let (code, out, err) = run_cli(&["config", "check", p.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("listen = \"127.0.0.1:3100\""), "{out}");
}

#[test]
fn config_errors_name_key_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("c.toml");
    std::fs::write(&p, "[server]\nlisten = \"127.0.0.1:3100\"\n\n[storage.wal]\nfsync = \"sometimes\"\n").unwrap();
    let (code, _, err) = run_cli(&["serve", "--config", p.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("line 5") && err.contains("sometimes") && err.contains("c.toml"), "{err}");
    std::fs::write(&p, "[storage]\ndata_dri = \"/tmp/x\"\n").unwrap();
    let (code, _, err) = run_cli(&["up", "--config", p.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("line 2") && err.contains("data_dri"), "{err}");
    let (code, _, err) = run_cli(&["collect"]);
    assert_eq!(code, 1);
    assert!(err.contains("--push-url"), "{err}");
}
