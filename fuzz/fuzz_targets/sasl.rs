//! Fuzz target: arbitrary bytes as a SASL client response, through the
//! base64 decoder (RFC 4648 4) and the PLAIN message parser (RFC 4616 2),
//! both on the raw bytes and on what the decoder gives back. Must never
//! panic, never decode to more bytes than the text could hold, and a
//! decoded value must re-encode to the text it came from.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tern::sasl::{decode_response, parse_plain};

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Padded standard base64, to check the decoder against.
fn encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fuzz_target!(|input: &[u8]| {
    if let Ok(text) = std::str::from_utf8(input) {
        if let Ok(decoded) = decode_response(text.as_bytes()) {
            assert!(decoded.len() <= text.len() / 4 * 3, "decoded grew");
            assert_eq!(encode(&decoded), text, "decoding is not canonical");
            if let Ok(credentials) = parse_plain(&decoded) {
                assert!(!credentials.authcid.is_empty() && !credentials.password.is_empty());
            }
        }
    }
    if let Ok(credentials) = parse_plain(input) {
        for field in [
            &credentials.authzid,
            &credentials.authcid,
            &credentials.password,
        ] {
            assert!(!field.contains('\0'), "NUL inside a PLAIN field");
        }
    }
});
