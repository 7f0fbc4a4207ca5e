//! criterion benches of the ingest hot path: command parsing, DATA stream
//! decoding, a whole pipelined SMTP transaction through the sans-IO session,
//! and spool append + group commit on a real file system.
//! Run: `cargo bench --bench ingest`. Numbers belong in the README only as
//! measured on one machine, never as test assertions.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use tern::envelope::{BodyType, ClientInfo, Envelope, Notify, Recipient};
use tern::limits::SessionLimits;
use tern::smtp::{
    parse_command, DataDecoder, Framing, RelayAccess, ServerSession, SessionConfig, SessionEvent,
};
use tern::spool::{Spool, SpoolConfig};

fn body(size: usize) -> Vec<u8> {
    let mut b = b"From: a@example.org\r\nTo: b@example.net\r\nSubject: bench\r\n\r\n".to_vec();
    let line = b"The quick brown fox jumps over the lazy dog. 0123456789 abcdefghij.\r\n";
    while b.len() < size {
        b.extend_from_slice(line);
    }
    b.truncate(size - 2);
    b.extend_from_slice(b"\r\n");
    b
}

fn dot_stuffed(body: &[u8]) -> Vec<u8> {
    let mut out = body.to_vec();
    out.extend_from_slice(b".\r\n");
    out
}

fn bench_commands(c: &mut Criterion) {
    let mut g = c.benchmark_group("parse_command");
    for line in [
        &b"MAIL FROM:<sender@example.org> SIZE=1024 BODY=8BITMIME"[..],
        &b"RCPT TO:<recipient@example.net> NOTIFY=FAILURE,DELAY ORCPT=rfc822;recipient@example.net"
            [..],
        &b"EHLO client.example.org"[..],
    ] {
        let name = String::from_utf8_lossy(&line[..4]).to_string();
        g.bench_function(name, |b| {
            b.iter(|| black_box(parse_command(black_box(line))))
        });
    }
    g.finish();
}

fn bench_data(c: &mut Criterion) {
    let mut g = c.benchmark_group("data_decoder");
    for size in [1024usize, 32 * 1024] {
        let input = dot_stuffed(&body(size));
        g.throughput(Throughput::Bytes(input.len() as u64));
        g.bench_function(format!("{}B", size), |b| {
            let mut out = Vec::with_capacity(size + 64);
            b.iter(|| {
                out.clear();
                let mut d = DataDecoder::new(Framing::DotStuffed, 1 << 30);
                black_box(d.feed(black_box(&input), &mut out));
            })
        });
    }
    g.finish();
}

fn session_config() -> Arc<SessionConfig> {
    Arc::new(SessionConfig {
        hostname: "bench.example".into(),
        max_message_size: 25 << 20,
        max_recipients: 100,
        starttls_available: false,
        command_timeout: Duration::from_secs(300),
        data_timeout: Duration::from_secs(180),
        relay_access: RelayAccess::new(&["127.0.0.0/8".parse().unwrap()], &[], &[]),
        submission: None,
        limits: SessionLimits::default(),
        max_messages_per_connection: 1000,
    })
}

fn bench_session(c: &mut Criterion) {
    let mut g = c.benchmark_group("session_transaction");
    let config = session_config();
    for size in [1024usize, 32 * 1024] {
        let mut script = b"EHLO client.example\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n".to_vec();
        script.extend_from_slice(&dot_stuffed(&body(size)));
        script.extend_from_slice(b"QUIT\r\n");
        g.throughput(Throughput::Elements(1));
        g.bench_function(format!("{}B", size), |b| {
            b.iter(|| {
                let mut s =
                    ServerSession::new(config.clone(), IpAddr::V4(Ipv4Addr::LOCALHOST), false);
                s.receive(&script);
                loop {
                    match s.poll() {
                        SessionEvent::Message(m) => {
                            black_box(&m.data);
                            s.message_stored(Ok("0".into()));
                        }
                        SessionEvent::NeedInput | SessionEvent::Close => break,
                        SessionEvent::StartTls => unreachable!("TLS not offered"),
                        SessionEvent::Authenticate { .. } => unreachable!("AUTH not offered"),
                    }
                }
                let n = s.output().len();
                s.consume_output(n);
            })
        });
    }
    g.finish();
}

fn envelope() -> Envelope {
    Envelope {
        sender: "sender@example.org".into(),
        body: BodyType::EightBitMime,
        smtputf8: false,
        ret: None,
        envid: None,
        declared_size: None,
        recipients: vec![Recipient {
            address: "recipient@example.net".into(),
            notify: Notify::default(),
            orcpt: None,
        }],
        client: ClientInfo {
            ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            helo: "client.example".into(),
            esmtp: true,
            tls: false,
            auth: None,
        },
        received_at_ms: 1_700_000_000_000,
    }
}

fn bench_spool(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let spool = Spool::open(SpoolConfig {
        dir: dir.path().join("spool"),
        segment_size: 64 << 20,
        max_size: 0,
    })
    .expect("spool opens");
    let mut writer = spool.writer(0).expect("writer");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let env = envelope();
    let mut g = c.benchmark_group("spool");
    g.sample_size(20);
    for size in [1024usize, 32 * 1024] {
        let data = body(size);
        // One message, appended and awaited alone: one fdatasync each.
        g.throughput(Throughput::Elements(1));
        g.bench_function(format!("append_commit_single_{size}B"), |b| {
            b.iter(|| {
                let (_, commit) = writer.append(&env, &data).expect("append");
                rt.block_on(commit).expect("durable");
            })
        });
        // 64 messages appended, then all awaited: group commit.
        g.throughput(Throughput::Elements(64));
        g.bench_function(format!("append_commit_batch64_{size}B"), |b| {
            b.iter_batched(
                || (),
                |()| {
                    let commits: Vec<_> = (0..64)
                        .map(|_| writer.append(&env, &data).expect("append").1)
                        .collect();
                    rt.block_on(async {
                        for c in commits {
                            c.await.expect("durable");
                        }
                    });
                },
                BatchSize::PerIteration,
            )
        });
    }
    g.finish();
    drop(writer);
    spool.close();
}

criterion_group!(
    benches,
    bench_commands,
    bench_data,
    bench_session,
    bench_spool
);
criterion_main!(benches);
