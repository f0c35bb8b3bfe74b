//! An upstream model server's streamed answer, as inference reads it: arbitrary bytes split at
//! an arbitrary point into the server-sent-events decoder, each event's data parsed as a chat
//! chunk. Nothing may panic, and the decoder's buffer stays bounded.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let cut = data.first().map_or(0, |b| usize::from(*b)).min(data.len());
    let mut decoder = keel_openai::SseDecoder::new();
    for part in [&data[..cut], &data[cut..]] {
        let Ok(events) = decoder.push(part) else {
            return;
        };
        for ev in events {
            assert!(ev.data.len() <= keel_openai::sse::MAX_LINE);
            let _ = serde_json::from_str::<keel_openai::ChatChunk>(&ev.data);
            let _ = serde_json::from_str::<keel_openai::EmbeddingsResponse>(&ev.data);
        }
    }
});
