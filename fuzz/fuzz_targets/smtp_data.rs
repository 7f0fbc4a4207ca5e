//! Fuzz target: arbitrary bytes straight into the DATA/BDAT content
//! decoder (`smtp::DataDecoder`), in both framings, fed in fuzzer-chosen
//! pieces. Must never panic, never consume past the DATA terminator, never
//! keep more than the size limit, and piecewise feeding must give exactly
//! what one feed gives (the decoder is the SMTP smuggling defence).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tern::smtp::{DataDecoder, Framing};

const MAX_SIZE: u64 = 4096;

/// Feeds `input` in pieces of `piece` bytes; the kept bytes, the bytes
/// consumed, whether DATA finished, and the error at the end.
fn decode(framing: Framing, input: &[u8], piece: usize) -> (Vec<u8>, usize, bool, String) {
    let mut decoder = DataDecoder::new(framing, MAX_SIZE);
    let mut out = Vec::new();
    let mut consumed = 0;
    let mut finished = false;
    for chunk in input.chunks(piece) {
        let progress = decoder.feed(chunk, &mut out);
        assert!(progress.consumed <= chunk.len(), "consumed more than fed");
        consumed += progress.consumed;
        if progress.finished {
            finished = true;
            break;
        }
        assert_eq!(progress.consumed, chunk.len(), "stopped early unfinished");
    }
    assert!(out.len() as u64 <= MAX_SIZE, "kept past the size limit");
    let error = format!("{:?}", decoder.finish());
    (out, consumed, finished, error)
}

fuzz_target!(|input: &[u8]| {
    let Some((&selector, input)) = input.split_first() else {
        return;
    };
    let framing = if selector & 1 == 0 {
        Framing::DotStuffed
    } else {
        Framing::Chunked
    };
    let piece = usize::from(selector >> 1) + 1;
    let whole = decode(framing, input, input.len().max(1));
    let pieces = decode(framing, input, piece);
    assert_eq!(whole, pieces, "piecewise decoding differs");
    if framing == Framing::Chunked {
        assert!(!whole.2, "chunked content never finishes by itself");
    }
});
