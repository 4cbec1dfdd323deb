#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &str| {
    if let Ok(l) = cairn_wire::Labels::parse(data) {
        // Printing and re-parsing is lossless.
        assert_eq!(cairn_wire::Labels::parse(&l.to_string()).ok(), Some(l));
    }
});
