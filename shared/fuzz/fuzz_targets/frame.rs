//! The frame reader on arbitrary bytes: length prefixes, truncation, oversize. Every frame it
//! returns is then decoded as each message type. It must never panic or allocate past the limit.
#![no_main]

use archfarm_shared::codec;
use archfarm_shared::protocol::{AgentMessage, ClientRequest, CoordinatorMessage};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    rt.block_on(async {
        let mut r = data;
        // A small limit so oversized prefixes are exercised as well as accepted ones.
        while let Ok(Some(frame)) = codec::read_frame(&mut r, 4096).await {
            let _ = codec::decode::<ClientRequest>(&frame);
            let _ = codec::decode::<AgentMessage>(&frame);
            let _ = codec::decode::<CoordinatorMessage>(&frame);
        }
    });
});
