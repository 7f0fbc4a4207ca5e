//! Fuzz target: arbitrary bytes as a remote server's replies to the SMTP
//! client session, which tries one transaction and then quits. Must never
//! panic or loop; the bytes are split at a fuzzer-chosen point so partial
//! replies are exercised too.
#![no_main]

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use tern::envelope::{BodyType, ClientInfo, Envelope, Notify, Recipient};
use tern::smtp::client::{ClientConfig, ClientEvent, ClientSession, OutboundTransaction, TlsPolicy};

fuzz_target!(|input: &[u8]| {
    let envelope = Envelope {
        sender: "a@example.org".into(),
        body: BodyType::EightBitMime,
        smtputf8: false,
        ret: None,
        envid: Some("env+1".into()),
        declared_size: None,
        recipients: vec![
            Recipient {
                address: "b@example.net".into(),
                notify: Notify::default(),
                orcpt: Some("rfc822;b@example.net".into()),
            },
            Recipient {
                address: "c@example.net".into(),
                notify: Notify::default(),
                orcpt: None,
            },
        ],
        client: ClientInfo {
            ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            helo: "fuzz".into(),
            esmtp: true,
            tls: false,
            auth: None,
        },
        received_at_ms: 0,
    };
    let data = b"Subject: x\r\n\r\n.dot\r\nbody\r\n";
    let config = Arc::new(ClientConfig::new("fuzz.example".into(), TlsPolicy::Opportunistic));
    let mut session = ClientSession::new(config, false);
    let split = input.first().map(|&b| b as usize).unwrap_or(0).min(input.len());
    let (first, second) = input.split_at(split);
    let mut sent = false;
    let mut spare = Vec::new();
    for chunk in [first, second] {
        session.receive(chunk);
        // Each event either consumes input or changes state; bound the loop anyway.
        for _ in 0..10_000 {
            match session.poll() {
                ClientEvent::NeedInput => break,
                ClientEvent::StartTls => session.tls_started(),
                ClientEvent::Ready if !sent => {
                    sent = true;
                    let tx = OutboundTransaction {
                        trace: &[],
                        envelope: &envelope,
                        recipients: vec![0, 1],
                        data,
                    };
                    let _ = session.start_transaction(tx);
                }
                ClientEvent::Ready => session.quit(),
                ClientEvent::TransactionDone(_) => {}
                ClientEvent::Closed(_) => return,
            }
            spare = session.take_output(spare);
        }
    }
    session.peer_closed();
    let _ = session.poll();
});
