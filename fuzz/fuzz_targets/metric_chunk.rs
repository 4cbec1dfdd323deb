//! Input: a metric chunk of a version-2 block (encoding byte first: XOR,
//! decimal, histogram is elsewhere, grid), decoded; then the same bytes read
//! as samples (16 bytes each: timestamp i64 LE, value bits u64 LE; sorted,
//! duplicates dropped, the values also snapped to decimals so the grid
//! encoding is reached), encoded with `xor::encode_chunk` and decoded again,
//! which must return them bit-exactly. Seeds: `fuzz/seeds/metric_chunk/`.
#![no_main]
use cairn_store::xor;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = xor::decode_chunk(data, &mut Vec::new());
    let mut samples: Vec<(i64, f64)> = data
        .chunks_exact(16)
        .map(|c| {
            let t = i64::from_le_bytes(c[..8].try_into().expect("8 bytes"));
            let v = u64::from_le_bytes(c[8..].try_into().expect("8 bytes"));
            (t, f64::from_bits(v))
        })
        .collect();
    samples.sort_by_key(|p| p.0);
    samples.dedup_by_key(|p| p.0);
    let decimals: Vec<(i64, f64)> =
        samples.iter().map(|&(t, v)| (t, ((v.to_bits() % 2_000_001) as f64 - 1e6) / 100.0)).collect();
    for s in [&samples, &decimals] {
        let mut buf = Vec::new();
        xor::encode_chunk(&mut buf, s);
        let mut out = Vec::new();
        xor::decode_chunk(&buf, &mut out).expect("an encoded chunk decodes");
        let bits = |v: &[(i64, f64)]| v.iter().map(|p| (p.0, p.1.to_bits())).collect::<Vec<_>>();
        assert_eq!(bits(&out), bits(s), "round trip");
    }
});
