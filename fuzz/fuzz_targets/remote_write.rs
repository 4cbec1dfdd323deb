#![no_main]
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    if let Ok(raw) = cairn_wire::proto::snappy_decompress(data, 1 << 20) {
        if let Ok(req) = cairn_wire::proto::WriteRequest::decode(raw.as_slice()) {
            for ts in req.timeseries {
                let _ = cairn_wire::Labels::from_pairs(ts.labels.into_iter().map(|l| (l.name, l.value)));
            }
        }
    }
    let _ = cairn_wire::proto::WriteRequest::decode(data);
});
