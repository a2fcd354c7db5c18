//! The message decoders on arbitrary payloads. Whatever decodes must encode to a payload that
//! decodes to the same message. (Not to the same bytes: a decoder may accept a non-minimal
//! varint that the encoder never writes.)
#![no_main]

use archfarm_shared::codec;
use archfarm_shared::protocol::{AgentMessage, ClientRequest, ClientResponse, CoordinatorMessage, EnrollRequest};
use libfuzzer_sys::fuzz_target;

fn round_trip<T>(data: &[u8])
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    if let Ok(msg) = codec::decode::<T>(data) {
        let frame = codec::encode(&msg, u32::MAX).expect("a decoded message encodes");
        assert_eq!(codec::decode::<T>(&frame[4..]).unwrap(), msg);
    }
}

fuzz_target!(|data: &[u8]| {
    round_trip::<ClientRequest>(data);
    round_trip::<ClientResponse>(data);
    round_trip::<AgentMessage>(data);
    round_trip::<CoordinatorMessage>(data);
    round_trip::<EnrollRequest>(data);
});
