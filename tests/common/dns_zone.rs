//! Test DNS servers on 127.0.0.1 (UDP, port 0): an in-process
//! hickory-server answering authoritatively for one zone given as records,
//! and a server that answers every query with SERVFAIL. Either runs on the
//! caller's tokio runtime or on a thread of its own (for tests whose
//! server under test runs its own threads).
//!
//! Never binds anything but 127.0.0.1 and never forwards a query elsewhere:
//! names outside the zone are REFUSED.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use hickory_server::net::runtime::TokioRuntimeProvider;
use hickory_server::proto::rr::rdata::{A, AAAA, MX, SOA, TXT};
use hickory_server::proto::rr::{LowerName, Name, RData, Record};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneType};
use hickory_server::Server;
use tokio::net::UdpSocket;

/// TTL of every record built here except the SOA.
const RECORD_TTL: u32 = 300;

/// A fully qualified name; panics on text that is no DNS name (test input).
pub fn name(text: &str) -> Name {
    Name::from_str(text).unwrap()
}

/// `owner MX preference exchange`; an exchange of "." is a null MX (RFC 7505).
pub fn mx(owner: &str, preference: u16, exchange: &str) -> Record {
    Record::from_rdata(
        name(owner),
        RECORD_TTL,
        RData::MX(MX::new(preference, name(exchange))),
    )
}

/// `owner A addr`.
pub fn a(owner: &str, addr: Ipv4Addr) -> Record {
    Record::from_rdata(name(owner), RECORD_TTL, RData::A(A(addr)))
}

/// `owner AAAA addr`.
pub fn aaaa(owner: &str, addr: Ipv6Addr) -> Record {
    Record::from_rdata(name(owner), RECORD_TTL, RData::AAAA(AAAA(addr)))
}

/// `owner TXT text`, as one record of character-strings of at most 255
/// octets (RFC 1035 3.3.14), the form DKIM keys longer than that take.
pub fn txt(owner: &str, text: &str) -> Record {
    let strings = text
        .as_bytes()
        .chunks(255)
        .map(|chunk| String::from_utf8(chunk.to_vec()).expect("ASCII record text"))
        .collect();
    Record::from_rdata(name(owner), RECORD_TTL, RData::TXT(TXT::new(strings)))
}

/// The zone's SOA; `negative_ttl` is its minimum field, the TTL of
/// NXDOMAIN and NODATA answers (RFC 2308 4).
pub fn soa(zone: &str, negative_ttl: u32) -> Record {
    Record::from_rdata(
        name(zone),
        3600,
        RData::SOA(SOA::new(
            name(&format!("ns.{zone}")),
            name(&format!("hostmaster.{zone}")),
            1,
            3600,
            600,
            86400,
            negative_ttl,
        )),
    )
}

/// Serve `records` as the zone `origin` on the current tokio runtime; the
/// server lives as long as the runtime. Returns its UDP address.
pub async fn serve_zone(origin: &str, records: Vec<Record>) -> SocketAddr {
    let origin = name(origin);
    let mut zone = InMemoryZoneHandler::<TokioRuntimeProvider>::empty(
        origin.clone(),
        ZoneType::Primary,
        AxfrPolicy::Deny,
    );
    for record in records {
        assert!(zone.upsert_mut(record, 1), "record accepted into the zone");
    }
    let mut catalog = Catalog::new();
    catalog.upsert(LowerName::new(&origin), vec![Arc::new(zone)]);
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let mut server = Server::new(catalog);
    server.register_socket(socket);
    tokio::spawn(async move {
        let _finished = server.block_until_done().await;
    });
    addr
}

/// A server that answers every query with SERVFAIL (header flags
/// rewritten, question echoed), on the current tokio runtime.
pub async fn serve_servfail() -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        while let Ok((len, peer)) = socket.recv_from(&mut buf).await {
            if len < 12 {
                continue;
            }
            let mut reply = buf[..len].to_vec();
            reply[2] = 0x80 | (reply[2] & 0x79); // QR=1, keep opcode and RD
            reply[3] = 0x80 | 2; // RA=1, RCODE=SERVFAIL
            let _sent = socket.send_to(&reply, peer).await;
        }
    });
    addr
}

/// A zone server on a thread of its own; stops when dropped.
pub struct ZoneThread {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ZoneThread {
    /// Serve `records` as the zone `origin` until dropped.
    pub fn start(origin: &str, records: Vec<Record>) -> ZoneThread {
        let origin = origin.to_string();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let addr = serve_zone(&origin, records).await;
                let _ = addr_tx.send(addr);
                let _ = stopped.await;
            });
        });
        let addr = addr_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("the zone server started");
        ZoneThread {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for ZoneThread {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
