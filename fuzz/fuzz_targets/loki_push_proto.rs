#![no_main]
use libfuzzer_sys::fuzz_target;
use prost::Message;

// Snappy block decode with a cap, then Loki PushRequest, then label parsing:
// what /loki/api/v1/push does with a protobuf body.
fuzz_target!(|data: &[u8]| {
    if let Ok(raw) = cairn_wire::proto::snappy_decompress(data, 1 << 20) {
        if let Ok(req) = cairn_wire::proto::PushRequest::decode(raw.as_slice()) {
            for s in req.streams {
                let _ = cairn_wire::Labels::parse(&s.labels);
            }
        }
    }
    let _ = cairn_wire::proto::PushRequest::decode(data);
});
