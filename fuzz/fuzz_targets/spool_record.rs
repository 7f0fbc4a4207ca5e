//! Fuzz target: arbitrary bytes as a spool record (what recovery meets in a
//! torn or corrupted segment), both raw (header and CRC checks) and sealed
//! with a valid CRC (so the envelope and update decoders behind the CRC are
//! reached). Decoding must return a record or an error, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tern::spool::record::seal_raw_record;
use tern::spool::{decode_record, SegmentLife};

fuzz_target!(|data: &[u8]| {
    let life = SegmentLife { seq: 7, salt: 0x1234_5678 };
    let _ = decode_record(data, life);
    if let Some((&kind, payload)) = data.split_first() {
        let sealed = seal_raw_record(kind % 4, life, payload);
        let _ = decode_record(&sealed, life);
    }
});
