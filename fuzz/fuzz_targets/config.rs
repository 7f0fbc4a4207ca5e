//! Fuzz target: arbitrary bytes as a config file must give a config or a
//! clean error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tern::config::{Config, Source};

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(config) = Config::parse(text, &Source::Embedded) {
            let _ = config.validate(&Source::Embedded);
        }
    }
});
