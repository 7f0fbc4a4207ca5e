//! Fuzz target: arbitrary bytes into the SMTP server session, split at a
//! fuzzer-chosen point, with every event answered as a runtime would, on a
//! relay or a submission listener (AUTH in clear allowed, so the SASL
//! states are reachable without a handshake). Must never panic, never grow
//! output without bound, never emit a message whose bytes contain a bare
//! CR or LF, and never accept mail for a foreign domain from a client that
//! did not authenticate (no open relay).
#![no_main]

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use tern::limits::SessionLimits;
use tern::smtp::{
    AuthenticatedUser, RelayAccess, ServerSession, SessionConfig, SessionEvent, SubmissionPolicy,
};

fn canonical(data: &[u8]) -> bool {
    let mut prev = 0u8;
    for (i, &b) in data.iter().enumerate() {
        if b == b'\n' && prev != b'\r' {
            return false;
        }
        if prev == b'\r' && b != b'\n' {
            return false;
        }
        prev = b;
        if i + 1 == data.len() && b == b'\r' {
            return false;
        }
    }
    true
}

/// The one user the fuzzed runtime knows: `alice` / `secret`.
fn check_password(login: &str, password: &str) -> Option<AuthenticatedUser> {
    (login == "alice" && password == "secret").then(|| AuthenticatedUser {
        name: "alice".into(),
        addresses: vec!["alice@example.org".into()],
    })
}

fuzz_target!(|input: &[u8]| {
    let submission = input.get(1).is_some_and(|&b| b & 1 == 1);
    let config = Arc::new(SessionConfig {
        hostname: "fuzz.example".into(),
        max_message_size: 64 * 1024,
        max_recipients: 100,
        starttls_available: true,
        command_timeout: Duration::from_secs(300),
        data_timeout: Duration::from_secs(180),
        relay_access: RelayAccess::new(&[], &["example.org".into()], &[]),
        submission: submission.then_some(SubmissionPolicy {
            allow_plaintext_auth: true,
            any_sender: false,
        }),
        // The fuzzer reaches the limits too, without every input ending at
        // the default 20 errors.
        limits: SessionLimits {
            hard_error_limit: input.get(1).map_or(20, |&b| u32::from(b) + 1),
            data_min_rate: 500,
        },
        max_messages_per_connection: 2,
    });
    let split = input.first().map(|&b| b as usize).unwrap_or(0).min(input.len());
    let (first, second) = input.split_at(split);
    let mut session = ServerSession::new(config, IpAddr::V4(Ipv4Addr::LOCALHOST), false);
    let mut stored = 0u32;
    for chunk in [first, second] {
        session.receive(chunk);
        loop {
            match session.poll() {
                SessionEvent::NeedInput | SessionEvent::Close => break,
                SessionEvent::Message(m) => {
                    assert!(canonical(&m.data), "message with bare CR/LF accepted");
                    if m.envelope.client.auth.is_none() {
                        for rcpt in &m.envelope.recipients {
                            let domain = rcpt.address.rsplit_once('@').map(|(_, d)| d);
                            assert!(
                                domain.is_none_or(|d| d.trim_end_matches('.').eq_ignore_ascii_case("example.org")),
                                "relayed for a stranger: {}",
                                rcpt.address
                            );
                        }
                    }
                    stored += 1;
                    session.message_stored(Ok(format!("ID{stored}")));
                }
                SessionEvent::StartTls => session.tls_started(),
                SessionEvent::Authenticate { login, password } => {
                    session.auth_done(check_password(&login, &password))
                }
            }
        }
        let n = session.output().len();
        session.consume_output(n);
    }
    session.timed_out();
    let _ = session.poll();
});
