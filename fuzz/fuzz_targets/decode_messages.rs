//! Every DAP-18 decoder: the first byte picks the message type. Decoding never panics, and
//! whatever decodes re-encodes to exactly the same bytes.
#![no_main]

use duet_common::messages::*;
use duet_common::{Decode, Encode};
use libfuzzer_sys::fuzz_target;

fn canonical<T: Decode + Encode>(bytes: &[u8]) {
    if let Ok(v) = T::get_decoded(bytes) {
        assert_eq!(v.get_encoded().unwrap(), bytes, "non-canonical decoding");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((which, bytes)) = data.split_first() else { return };
    match which % 16 {
        0 => canonical::<HpkeConfig>(bytes),
        1 => canonical::<HpkeConfigList>(bytes),
        2 => canonical::<Report>(bytes),
        3 => canonical::<UploadRequest>(bytes),
        4 => canonical::<UploadErrors>(bytes),
        5 => canonical::<PlaintextInputShare>(bytes),
        6 => canonical::<TaskConfiguration>(bytes),
        7 => canonical::<AggregationJobInitReq>(bytes),
        8 => canonical::<AggregationJobResp>(bytes),
        9 => canonical::<AggregationJobContinueReq>(bytes),
        10 => canonical::<CollectionJobReq>(bytes),
        11 => canonical::<CollectionJobResp>(bytes),
        12 => canonical::<AggregateShareReq>(bytes),
        13 => canonical::<AggregateShare>(bytes),
        14 => canonical::<Query>(bytes),
        _ => canonical::<BatchSelector>(bytes),
    }
});
