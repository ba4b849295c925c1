//! The agent channel's frames, as each side reads the other's: any bytes, cut into chunks
//! anywhere, give messages or an error, never a panic; a message read encodes into a frame that
//! reads again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qb_agent_proto::{AgentMessage, ControllerMessage, FrameDecoder, encode};
use serde::Serialize;
use serde::de::DeserializeOwned;

fuzz_target!(|data: &[u8]| {
    // The first byte says where the stream is cut into chunks.
    let Some((&cut, stream)) = data.split_first() else {
        return;
    };
    read::<AgentMessage>(stream, cut);
    read::<ControllerMessage>(stream, cut);
});

fn read<T: Serialize + DeserializeOwned>(stream: &[u8], cut: u8) {
    let mut decoder = FrameDecoder::default();
    for chunk in stream.chunks(usize::from(cut).max(1)) {
        decoder.push(chunk);
        loop {
            match decoder.next_message::<T>() {
                Ok(Some(message)) => {
                    let mut again = FrameDecoder::default();
                    again.push(&encode(&message));
                    let reread = again.next_message::<T>();
                    assert!(
                        matches!(reread, Ok(Some(_))),
                        "a message read does not read again once encoded: {:?}",
                        reread.err()
                    );
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
}
