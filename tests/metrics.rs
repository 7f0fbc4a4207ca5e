//! Metrics as an operator scrapes them: the real binary serves `/metrics`,
//! the ingest counters move when a message is accepted, the relay ones when
//! it is delivered (MX from an in-process DNS zone, to an in-process sink),
//! and every metric the Grafana dashboard queries is one tern exports.

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::dns_zone::{a, mx, soa, ZoneThread};
use common::sink::{wait_for, Sink, SinkConfig};
use common::{data_frame, signal, spawn_tern, tern_cli, RawClient};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn scrape(addr: SocketAddr) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(mut s) = TcpStream::connect(addr) {
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
                .unwrap();
            let mut body = String::new();
            if s.read_to_string(&mut body).is_ok() && body.starts_with("HTTP/1") {
                return body;
            }
        }
        assert!(Instant::now() < deadline, "metrics endpoint never answered");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn value(scrape: &str, series: &str) -> f64 {
    scrape
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("series {series} not exported"))
}

fn dashboard_metric_names() -> BTreeSet<String> {
    let text = include_str!("../dashboards/tern.json");
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("tern_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

#[test]
fn metrics_move_and_dashboard_names_exist() {
    let dir = tempfile::tempdir().unwrap();
    let metrics_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let sink = Sink::start(SinkConfig::default());
    let dns = ZoneThread::start(
        "test.",
        vec![
            soa("test.", 1),
            mx("metrics.test.", 10, "mx.metrics.test."),
            a("mx.metrics.test.", "127.0.0.1".parse().unwrap()),
        ],
    );
    let config = dir.path().join("t.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nworkers = 1\n[smtp]\nlisten = [\"127.0.0.1:0\"]\nsubmission = []\n\
             [spool]\ndir = \"{}\"\nsegment_size = \"32MiB\"\n\
             [relay]\nnameservers = [\"{}\"]\nremote_port = {}\nconnection_idle_timeout = \"200ms\"\n\
             local_domains = [\"local.test\"]\n\
             [pop3]\nlisten = []\n[imap]\nlisten = []\n[users]\nfile = \"{}\"\n\
             [metrics]\nlisten = \"{metrics_addr}\"\n",
            dir.path().join("spool").display(),
            dns.addr,
            sink.port(),
            dir.path().join("users.toml").display()
        ),
    )
    .unwrap();
    let mut users = tern::users::Users::new();
    users
        .add("alice", b"secret", &["alice@local.test".to_string()])
        .unwrap();
    users.save(&dir.path().join("users.toml")).unwrap();
    let (_server, smtp) = spawn_tern(&config);

    let before = scrape(metrics_addr);
    assert_eq!(value(&before, "tern_messages_accepted_total"), 0.0);

    let (mut c, _) = RawClient::connect(smtp).unwrap();
    c.cmd("EHLO metrics.test").unwrap();
    c.cmd("MAIL FROM:<a@example.org>").unwrap();
    c.cmd("RCPT TO:<b@metrics.test>").unwrap();
    // One recipient is local: the mailbox series move too.
    c.cmd("RCPT TO:<alice@local.test>").unwrap();
    c.cmd("DATA").unwrap();
    c.send(&data_frame(b"Subject: m\r\n\r\nhi\r\n")).unwrap();
    assert_eq!(c.read_reply().unwrap().code, 250);
    c.cmd("QUIT").unwrap();

    assert_eq!(sink.wait_for_messages(1, Duration::from_secs(10)).len(), 1);
    // The connection closes after the idle timeout: that records its
    // messages-per-connection observation.
    assert!(wait_for(Duration::from_secs(10), || {
        value(&scrape(metrics_addr), "tern_outbound_connections_active") == 0.0
    }));
    let after = scrape(metrics_addr);
    assert_eq!(value(&after, "tern_messages_accepted_total"), 1.0);
    assert_eq!(
        value(
            &after,
            "tern_delivery_attempts_total{result=\"delivered\",class=\"2xx\"}"
        ),
        2.0
    );
    assert_eq!(value(&after, "tern_delivery_latency_seconds_count"), 2.0);
    assert_eq!(value(&after, "tern_mailbox_deliveries_total"), 1.0);
    assert_eq!(
        value(&after, "tern_outbound_messages_per_connection_sum"),
        1.0
    );
    assert!(value(&after, "tern_dns_lookups_total{result=\"ok\"}") >= 1.0);
    assert!(value(&after, "tern_spool_syncs_total") >= 1.0);
    assert!(value(&after, "tern_connections_total{listener=\"smtp\"}") >= 1.0);
    assert!(value(&after, "tern_smtp_replies_total{class=\"2xx\"}") >= 4.0);
    assert!(value(&after, "tern_spool_commit_seconds_count") >= 1.0);

    let exported: BTreeSet<&str> = after
        .lines()
        .filter(|l| l.starts_with("tern_"))
        .map(|l| l.split(['{', ' ']).next().unwrap())
        .collect();
    for name in dashboard_metric_names() {
        assert!(
            exported.contains(name.as_str()),
            "dashboards/tern.json queries {name}, which tern does not export; exported: {exported:?}"
        );
    }
}

/// Grafana draws what the file says: no two panels overlap, and each
/// panel sits below its own row header and above the next one.
#[test]
fn dashboard_panels_sit_under_their_rows_without_overlap() {
    let dashboard: serde_json::Value =
        serde_json::from_str(include_str!("../dashboards/tern.json")).unwrap();
    let grid = |panel: &serde_json::Value| {
        let at = |key: &str| panel["gridPos"][key].as_u64().unwrap();
        (at("x"), at("y"), at("w"), at("h"))
    };
    let panels = dashboard["panels"].as_array().unwrap();
    for (i, a) in panels.iter().enumerate() {
        let (ax, ay, aw, ah) = grid(a);
        assert!(ax + aw <= 24, "{} is wider than the grid", a["title"]);
        for b in &panels[i + 1..] {
            let (bx, by, bw, bh) = grid(b);
            let apart = ax + aw <= bx || bx + bw <= ax || ay + ah <= by || by + bh <= ay;
            assert!(apart, "{} overlaps {}", a["title"], b["title"]);
        }
    }
    let mut row_y = None;
    for (i, panel) in panels.iter().enumerate() {
        let (_, y, _, h) = grid(panel);
        if panel["type"] == "row" {
            row_y = Some(y);
            continue;
        }
        let row_y = row_y.expect("the first panel is a row");
        let next_row_y = panels[i..]
            .iter()
            .find(|p| p["type"] == "row")
            .map_or(u64::MAX, |row| grid(row).1);
        assert!(
            row_y < y && y + h <= next_row_y,
            "{} is not inside its row",
            panel["title"]
        );
    }
}

/// The queue's age gauge reports a held message as it waits, and an
/// empty queue as 0.
#[test]
fn queue_age_reports_the_oldest_waiting_message() {
    let dir = tempfile::tempdir().unwrap();
    let metrics_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = one_core_config(dir.path(), metrics_addr, "hold = true\n");
    let (_server, smtp) = spawn_tern(&config);
    let age = || {
        value(
            &scrape(metrics_addr),
            "tern_queue_oldest_message_age_seconds",
        )
    };
    assert_eq!(age(), 0.0, "nothing queued yet");

    let (mut c, _) = RawClient::connect(smtp).unwrap();
    c.cmd("EHLO metrics.test").unwrap();
    c.cmd("MAIL FROM:<a@example.org>").unwrap();
    c.cmd("RCPT TO:<b@example.net>").unwrap();
    c.cmd("DATA").unwrap();
    c.send(&data_frame(b"Subject: held\r\n\r\nhi\r\n")).unwrap();
    assert_eq!(c.read_reply().unwrap().code, 250);
    c.cmd("QUIT").unwrap();

    assert!(
        wait_for(Duration::from_secs(30), || age() > 0.0),
        "the held message's age never showed"
    );
}

/// SIGHUP outcomes as an operator alerts on them: reloads counted by
/// result, the last one's success, and settings waiting for a restart;
/// and the `tern queue` commands run against the server.
#[test]
fn reloads_are_counted_and_a_failed_one_shows() {
    let dir = tempfile::tempdir().unwrap();
    let metrics_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = one_core_config(dir.path(), metrics_addr, "hold = true\n");
    let (server, _smtp) = spawn_tern(&config);
    let start = scrape(metrics_addr);
    assert_eq!(
        value(&start, "tern_config_reloads_total{result=\"ok\"}"),
        0.0
    );
    assert_eq!(value(&start, "tern_config_last_reload_successful"), 1.0);
    assert!(value(&start, "tern_config_last_reload_success_timestamp_seconds") > 1.7e9);

    // One live change and one that needs a restart.
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("hold = true", "hold = false")
            .replace("workers = 1", "workers = 2"),
    )
    .unwrap();
    signal(&server, libc::SIGHUP);
    assert!(wait_for(Duration::from_secs(20), || {
        value(
            &scrape(metrics_addr),
            "tern_config_reloads_total{result=\"ok\"}",
        ) == 1.0
    }));
    let applied = scrape(metrics_addr);
    assert_eq!(value(&applied, "tern_config_restart_pending_settings"), 1.0);
    assert_eq!(value(&applied, "tern_config_last_reload_successful"), 1.0);

    std::fs::write(&config, "[smtp\nlisten = ").unwrap();
    signal(&server, libc::SIGHUP);
    assert!(wait_for(Duration::from_secs(20), || {
        value(
            &scrape(metrics_addr),
            "tern_config_reloads_total{result=\"error\"}",
        ) == 1.0
    }));
    let failed = scrape(metrics_addr);
    assert_eq!(value(&failed, "tern_config_last_reload_successful"), 0.0);
    assert_eq!(
        value(&failed, "tern_config_reloads_total{result=\"ok\"}"),
        1.0
    );

    // Operator commands over the admin socket are counted too (the file is
    // whole again: the CLI reads the spool folder from it).
    std::fs::write(&config, text).unwrap();
    let (ok, out, err) = tern_cli(&config, &["queue", "flush"]);
    assert!(ok, "{out}{err}");
    let after = scrape(metrics_addr);
    let flushes = "tern_admin_commands_total{command=\"flush\",result=\"ok\"}";
    assert_eq!(value(&after, flushes), 1.0);
    let bounces = "tern_admin_commands_total{command=\"bounce\",result=\"error\"}";
    assert_eq!(value(&after, bounces), 0.0);
}

/// One core, SMTP on an ephemeral port, no retrieval listeners, metrics on
/// `metrics_addr`; `relay` goes into the `[relay]` table.
fn one_core_config(dir: &Path, metrics_addr: SocketAddr, relay: &str) -> PathBuf {
    let config = dir.join("t.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nworkers = 1\n[smtp]\nlisten = [\"127.0.0.1:0\"]\nsubmission = []\n\
             [spool]\ndir = \"{}\"\nsegment_size = \"32MiB\"\n[relay]\n{relay}\
             [pop3]\nlisten = []\n[imap]\nlisten = []\n[users]\nfile = \"{}\"\n\
             [metrics]\nlisten = \"{metrics_addr}\"\n",
            dir.join("spool").display(),
            dir.join("users.toml").display()
        ),
    )
    .unwrap();
    config
}
