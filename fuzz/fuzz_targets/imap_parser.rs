//! Fuzz target: arbitrary bytes into the IMAP CommandReader, pushed in
//! fuzzer-chosen pieces, with IDLE and AUTHENTICATE modes entered as a
//! session would; every FETCH section parsed is then located in the same
//! bytes taken as a message, whose ENVELOPE and BODYSTRUCTURE are written.
//! Must never panic, never buffer more than one command's bounded text plus
//! its accepted literals, and every parsed mailbox name must survive a
//! modified UTF-7 round trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tern::imap::{
    mime, structure, CommandBody, CommandReader, FetchAttribute, Parsed, COMMAND_TEXT_MAX,
};

const LITERAL_MAX: u64 = 4096;

fuzz_target!(|input: &[u8]| {
    let mut reader = CommandReader::new(LITERAL_MAX);
    let chunk = input.first().map(|&b| usize::from(b % 64) + 1).unwrap_or(1);
    for piece in input.chunks(chunk) {
        reader.push(piece);
        while let Some(parsed) = reader.next() {
            match parsed {
                Parsed::Command(command) => match command.body {
                    CommandBody::Idle => reader.expect_done(),
                    CommandBody::Authenticate {
                        initial_response: None,
                        ..
                    } => reader.expect_auth_response(),
                    CommandBody::Select { mailbox } | CommandBody::Create { mailbox } => {
                        let wire = mailbox.to_wire();
                        let back = tern::imap::MailboxName::from_wire(wire.as_bytes())
                            .expect("encoded name decodes");
                        assert_eq!(back, mailbox);
                    }
                    CommandBody::Fetch { attributes, .. } => {
                        for attribute in attributes {
                            if let FetchAttribute::BodySection {
                                section, partial, ..
                            } = attribute
                            {
                                if let (Some(data), Some(window)) =
                                    (mime::section(input, &section), partial)
                                {
                                    assert!(mime::partial(&data, window).len() <= data.len());
                                }
                            }
                        }
                    }
                    _ => {}
                },
                Parsed::NeedContinuation
                | Parsed::Bad { .. }
                | Parsed::TooBig { .. }
                | Parsed::Done
                | Parsed::AuthResponse(_) => {}
            }
        }
        // Pending input was consumed or is a bounded tail; the command being
        // assembled holds bounded text plus accepted literals.
        assert!(
            reader.buffered() <= piece.len() + 2 * COMMAND_TEXT_MAX + LITERAL_MAX as usize + 64,
            "reader holds {} bytes",
            reader.buffered()
        );
    }
    let mut out = Vec::new();
    structure::write_envelope(&mut out, input);
    structure::write_body_structure(&mut out, input, true);
});
