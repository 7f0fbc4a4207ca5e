//! The durability promise, tested the hard way: many concurrent clients
//! send to the real `tern` binary, every `250` is recorded, the server is
//! killed with SIGKILL mid-stream, restarted, and every acknowledged message
//! must be in the queue with identical bytes.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{data_frame, queue_id_of, queue_list_json, spawn_tern, RawClient};

const CLIENTS: usize = 24;
/// Stop sending after this many acknowledgements even if the kill is late.
const MAX_ACKS: usize = 20_000;

fn write_config(dir: &Path, io: &str) -> std::path::PathBuf {
    let path = dir.join("tern.toml");
    let text = format!(
        "[server]\nworkers = 2\nio = \"{io}\"\nhostname = \"crash.test\"\n\
         [smtp]\nlisten = [\"127.0.0.1:0\"]\nsubmission = []\nmax_message_size = \"64KiB\"\nmax_recipients = 100\n\
         [spool]\ndir = \"{}\"\nsegment_size = \"512KiB\"\n\
         [relay]\nhold = true\n[pop3]\nlisten = []\n[imap]\nlisten = []\n\
         [users]\nfile = \"{}\"\n[metrics]\nlisten = \"\"\n[log]\nlevel = \"info\"\n",
        dir.join("spool").display(),
        dir.join("users.toml").display()
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn body(client: usize, seq: usize) -> Vec<u8> {
    // Sizes vary from a few hundred bytes to ~20 KiB so records straddle
    // pages and segments roll over during the run.
    let filler_lines = (client * 7 + seq * 13) % 200;
    let mut b =
        format!("Message-ID: <{client}.{seq}@crash.test>\r\nSubject: crash {client}/{seq}\r\n\r\n")
            .into_bytes();
    for i in 0..filler_lines {
        b.extend_from_slice(format!("{client:04} {seq:06} line {i:03} ").as_bytes());
        b.extend_from_slice(&[b'a' + (i % 26) as u8; 60]);
        b.extend_from_slice(b"\r\n");
    }
    b
}

fn client_loop(
    client: usize,
    addr: SocketAddr,
    stop: &AtomicBool,
    acked: &Mutex<Vec<(String, Vec<u8>)>>,
    count: &AtomicUsize,
) {
    let Ok((mut c, _)) = RawClient::connect(addr) else {
        return;
    };
    if c.cmd("EHLO crash.client").is_err() {
        return;
    }
    let mut seq = 0;
    while !stop.load(Ordering::Relaxed) {
        let b = body(client, seq);
        let mut batch =
            b"MAIL FROM:<load@example.org>\r\nRCPT TO:<sink@example.net>\r\nDATA\r\n".to_vec();
        let ok = c.send(&batch).is_ok()
            && c.read_reply().map(|r| r.code == 250).unwrap_or(false)
            && c.read_reply().map(|r| r.code == 250).unwrap_or(false)
            && c.read_reply().map(|r| r.code == 354).unwrap_or(false);
        if !ok {
            return;
        }
        batch = data_frame(&b);
        if c.send(&batch).is_err() {
            return;
        }
        match c.read_reply() {
            Ok(r) if r.code == 250 => {
                let id = queue_id_of(&r).expect("queue id in 250");
                acked.lock().unwrap().push((id, b));
                if count.fetch_add(1, Ordering::Relaxed) + 1 >= MAX_ACKS {
                    return;
                }
            }
            _ => return,
        }
        seq += 1;
    }
}

#[test]
fn every_acknowledged_message_survives_kill_9_epoll() {
    kill_9_under_load("epoll");
}

#[test]
fn every_acknowledged_message_survives_kill_9_io_uring() {
    kill_9_under_load("uring");
}

fn kill_9_under_load(io: &str) {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), io);
    let acked = Arc::new(Mutex::new(Vec::new()));
    let count = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));

    let (mut child, addr) = spawn_tern(&config);
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let (acked, count, stop) = (acked.clone(), count.clone(), stop.clone());
            std::thread::spawn(move || client_loop(i, addr, &stop, &acked, &count))
        })
        .collect();
    // Kill once the load is well under way (or after a bounded wait).
    let started = Instant::now();
    while count.load(Ordering::Relaxed) < 3000 && started.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(10));
    }
    child.0.kill().expect("SIGKILL delivered");
    child.0.wait().unwrap();
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let acked = std::mem::take(&mut *acked.lock().unwrap());
    assert!(
        acked.len() >= 100,
        "too few messages acknowledged before the kill: {}",
        acked.len()
    );

    // Restart: recovery must run cleanly and the server must come up.
    let (child, addr) = spawn_tern(&config);
    let (mut c, greeting) = RawClient::connect(addr).unwrap();
    assert_eq!(greeting.code, 220);
    c.cmd("QUIT").unwrap();

    // The offline tools agree with what was acknowledged.
    let listed = queue_list_json(&config);
    let listed_ids: std::collections::HashSet<String> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect();
    let scanned = tern::spool::Spool::scan_readonly(&dir.path().join("spool")).unwrap();
    let by_id: std::collections::HashMap<String, &tern::spool::MessageView> =
        scanned.iter().map(|m| (m.id.to_string(), m)).collect();
    let mut missing = Vec::new();
    for (id, bytes) in &acked {
        assert!(listed_ids.contains(id) || !by_id.contains_key(id));
        match by_id.get(id) {
            Some(m) => assert_eq!(m.data(), &bytes[..], "message {id} changed"),
            None => missing.push(id.clone()),
        }
    }
    // One `queue show` through the CLI, byte for byte.
    let (sample_id, sample_bytes) = &acked[acked.len() / 2];
    let show = Command::new(env!("CARGO_BIN_EXE_tern"))
        .args(["queue", "show", sample_id, "-c"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(show.status.success());
    assert!(show.stdout.ends_with(sample_bytes));

    drop(child);
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged messages lost: {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(10)]
    );
    eprintln!(
        "crash test ({io}): {} acknowledged, {} in spool after restart, 0 lost",
        acked.len(),
        scanned.len()
    );
}
