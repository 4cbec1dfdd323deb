#![no_main]
use libfuzzer_sys::fuzz_target;
use cairn_wire::time;

fuzz_target!(|data: &str| {
    let _ = time::parse_prom_time_ms(data);
    let _ = time::parse_prom_duration_ms(data);
    let _ = time::parse_loki_time_ns(data);
    let _ = time::parse_loki_duration_ns(data);
    let _ = time::parse_duration_ms(data);
});
