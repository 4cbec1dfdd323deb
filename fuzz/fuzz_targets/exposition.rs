#![no_main]
use std::collections::BTreeMap;

use cairn_collector::scrape::parse::Format;
use cairn_collector::scrape::{TargetLabels, append_exposition};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // First byte picks the format and the label options; the rest is the body.
    let Some((&sel, body)) = data.split_first() else { return };
    let text = String::from_utf8_lossy(body);
    let format = if sel & 1 == 0 { Format::Text } else { Format::OpenMetrics };
    let target = TargetLabels {
        labels: vec![("instance".into(), "h:1".into()), ("job".into(), "j".into())],
        honor_labels: sel & 2 != 0,
        honor_timestamps: sel & 4 != 0,
    };
    let mut out = Vec::new();
    let mut meta = BTreeMap::new();
    match append_exposition(&text, format, &target, 0, &mut out, &mut meta) {
        // Every sample is one series carrying the target's job (unless the
        // target may override it).
        Ok(o) => {
            assert_eq!(o.samples, out.len());
            if !target.honor_labels {
                assert!(out.iter().all(|s| s.labels.get("job") == Some("j")));
            }
        }
        // All or nothing.
        Err(_) => assert!(out.is_empty()),
    }
});
