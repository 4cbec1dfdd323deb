#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &str| {
    if let Err(e) = cairn_query::logql::parse(data) {
        let _ = e.to_string();
    }
});
