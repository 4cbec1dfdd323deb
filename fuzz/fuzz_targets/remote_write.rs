#![no_main]
//! The remote_write ingest path: snappy, then the zero-copy decoder the
//! server uses, checked against prost on the same bytes (both accept and
//! agree, or both refuse), then label interning; and the Remote-Write 2.0
//! decoder on the same bytes.
use libfuzzer_sys::fuzz_target;
use prost::Message;

fn check(buf: &[u8]) {
    let raw = cairn_wire::remote_write::decode(buf);
    let prost = cairn_wire::proto::WriteRequest::decode(buf);
    // the server decodes label pairs lazily; all of them must decode for
    // the request to be valid
    let raw = raw.and_then(|r| {
        let pairs = r.series.iter().map(|s| r.label_pairs(s)).collect::<Result<Vec<_>, _>>()?;
        Ok((r, pairs))
    });
    match (&raw, &prost) {
        (Ok((r, all_pairs)), Ok(p)) => {
            assert_eq!(r.series.len(), p.timeseries.len());
            for ((s, ts), pairs) in r.series.iter().zip(&p.timeseries).zip(all_pairs) {
                assert_eq!(pairs.len(), ts.labels.len());
                for (&(n, v), l) in pairs.iter().zip(&ts.labels) {
                    assert_eq!((n, v), (l.name.as_str(), l.value.as_str()));
                }
                let samples = r.samples(s);
                assert_eq!(samples.len(), ts.samples.len());
                for (&(t, v), x) in samples.iter().zip(&ts.samples) {
                    assert_eq!((t, v.to_bits()), (x.timestamp, x.value.to_bits()));
                }
                assert_eq!(s.histograms, ts.histograms);
            }
            // equal keys stand for equal label sets
            let mut interner = cairn_wire::intern::LabelsInterner::new(64);
            let mut scratch = Vec::new();
            for (s, pairs) in r.series.iter().zip(all_pairs) {
                let want = cairn_wire::Labels::from_pairs(pairs.iter().copied());
                let got = interner.get(r.label_key(s, &mut scratch), || want.clone());
                assert_eq!(got, want);
            }
        }
        (Err(_), Err(_)) => {}
        _ => panic!("raw decoder and prost disagree: raw ok {}, prost ok {}", raw.is_ok(), prost.is_ok()),
    }
}

/// Remote-Write 2.0 (same endpoint, chosen by content type): decoding and
/// resolving symbol references either succeeds or errors, and every
/// resolved label is one of the request's symbols.
fn check_v2(buf: &[u8]) {
    if let Ok(series) = cairn_wire::remote_write_v2::decode(buf) {
        let req = cairn_wire::remote_write_v2::Request::decode(buf).expect("decoded once already");
        for s in &series {
            for (n, v) in &s.labels {
                assert!(req.symbols.contains(n) && req.symbols.contains(v));
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(raw) = cairn_wire::proto::snappy_decompress(data, 1 << 20) {
        check(&raw);
        check_v2(&raw);
    }
    check(data);
    check_v2(data);
});
