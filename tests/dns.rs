//! MX routing against a real DNS server: an in-process hickory-server on
//! 127.0.0.1 (UDP, port 0) serving an in-memory zone (tests/common/dns_zone.rs),
//! with an `MxResolver` pointed at it. Also a server that only answers SERVFAIL and one that
//! never answers.
//!
//! Nothing here may leave 127.0.0.1 or wait longer than a few seconds.

mod common;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::rc::Rc;
use std::time::Duration;

use common::dns_zone::{a, aaaa, mx, serve_servfail, serve_zone, soa};
use hickory_server::proto::rr::Record;
use tern::relay::dns::{DnsConfig, MxResolver, MxRoute, RouteError};
use tokio::net::UdpSocket;

const ZONE: &str = "test.";
/// SOA minimum of the zone: the negative TTL (RFC 2308 4).
const NEGATIVE_TTL: u32 = 120;
const QUERY_TIMEOUT: Duration = Duration::from_millis(300);

fn loopback(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, last)
}

fn zone_records() -> Vec<Record> {
    vec![
        soa(ZONE, NEGATIVE_TTL),
        // Two preferences, fallback host listed first to prove sorting.
        mx("ordered.test.", 20, "backup.ordered.test."),
        mx("ordered.test.", 10, "primary.ordered.test."),
        a("primary.ordered.test.", loopback(10)),
        a("backup.ordered.test.", loopback(20)),
        aaaa("backup.ordered.test.", Ipv6Addr::LOCALHOST),
        // Three hosts at one preference, one behind them.
        mx("equal.test.", 10, "a.equal.test."),
        mx("equal.test.", 10, "b.equal.test."),
        mx("equal.test.", 10, "c.equal.test."),
        mx("equal.test.", 50, "last.equal.test."),
        a("a.equal.test.", loopback(31)),
        a("b.equal.test.", loopback(32)),
        a("c.equal.test.", loopback(33)),
        a("last.equal.test.", loopback(34)),
        // No MX: the domain's own addresses (implicit MX).
        a("implicit.test.", loopback(40)),
        aaaa("implicit.test.", Ipv6Addr::LOCALHOST),
        // RFC 7505 null MX.
        mx("nullmx.test.", 0, "."),
        // MX whose host has no address.
        mx("noaddress.test.", 10, "ghost.noaddress.test."),
        // empty.test exists (a name below it does) but has neither MX nor A.
        a("www.empty.test.", loopback(50)),
    ]
}

/// The authoritative server for the test zone; it lives as long as the
/// test's runtime.
async fn start_zone_server() -> SocketAddr {
    serve_zone(ZONE, zone_records()).await
}

fn resolver_for(server: SocketAddr) -> MxResolver {
    MxResolver::new(&DnsConfig {
        nameservers: Some(vec![server]),
        timeout: QUERY_TIMEOUT,
        attempts: 1,
    })
    .unwrap()
}

fn host_names(route: &MxRoute) -> Vec<&str> {
    route.hosts.iter().map(|host| host.name.as_str()).collect()
}

#[tokio::test(flavor = "current_thread")]
async fn mx_hosts_come_in_preference_order_with_their_addresses() {
    let resolver = resolver_for(start_zone_server().await);
    let route = resolver.route("Ordered.TEST.").await.unwrap();
    assert!(!route.implicit);
    assert_eq!(
        host_names(&route),
        ["primary.ordered.test", "backup.ordered.test"]
    );
    assert_eq!(route.hosts[0].preference, 10);
    assert_eq!(route.hosts[0].addrs, [IpAddr::from([127, 0, 0, 10])]);
    assert_eq!(route.hosts[1].preference, 20);
    assert_eq!(
        route.hosts[1].addrs,
        [
            IpAddr::from([127, 0, 0, 20]),
            IpAddr::V6(Ipv6Addr::LOCALHOST)
        ]
    );
}

#[tokio::test(flavor = "current_thread")]
async fn equal_preferences_come_in_both_orders_over_several_calls() {
    let resolver = resolver_for(start_zone_server().await);
    let mut firsts = Vec::new();
    for _ in 0..60 {
        let route = resolver.route("equal.test").await.unwrap();
        let names = host_names(&route);
        assert_eq!(names.len(), 4);
        assert_eq!(names[3], "last.equal.test");
        let mut equals = names[..3].to_vec();
        equals.sort_unstable();
        assert_eq!(equals, ["a.equal.test", "b.equal.test", "c.equal.test"]);
        if !firsts.contains(&names[0].to_owned()) {
            firsts.push(names[0].to_owned());
        }
    }
    assert_eq!(firsts.len(), 3, "seen first: {firsts:?}");
}

#[tokio::test(flavor = "current_thread")]
async fn domain_without_mx_uses_its_own_addresses() {
    let resolver = resolver_for(start_zone_server().await);
    let route = resolver.route("implicit.test").await.unwrap();
    assert!(route.implicit);
    assert_eq!(host_names(&route), ["implicit.test"]);
    assert_eq!(
        route.hosts[0].addrs,
        [
            IpAddr::from([127, 0, 0, 40]),
            IpAddr::V6(Ipv6Addr::LOCALHOST)
        ]
    );
}

#[tokio::test(flavor = "current_thread")]
async fn null_mx_is_refused_and_then_known_from_the_cache() {
    let resolver = resolver_for(start_zone_server().await);
    assert_eq!(resolver.cached("nullmx.test"), None);
    let error = resolver.route("nullmx.test").await.unwrap_err();
    assert_eq!(error, RouteError::NullMx);
    assert_eq!(error.smtp_status(), (556, "5.1.10"));
    assert_eq!(
        resolver.cached("NULLMX.test."),
        Some(Err(RouteError::NullMx))
    );
}

#[tokio::test(flavor = "current_thread")]
async fn missing_domain_is_permanent() {
    let resolver = resolver_for(start_zone_server().await);
    let error = resolver.route("missing.test").await.unwrap_err();
    assert!(
        matches!(&error, RouteError::NoSuchDomain(text) if text.contains("NXDOMAIN")),
        "{error:?}"
    );
    assert!(error.is_permanent());
    assert_eq!(error.smtp_status(), (550, "5.1.2"));
}

#[tokio::test(flavor = "current_thread")]
async fn domain_with_neither_mx_nor_address_is_permanent() {
    let resolver = resolver_for(start_zone_server().await);
    let error = resolver.route("empty.test").await.unwrap_err();
    assert!(
        matches!(&error, RouteError::NoSuchDomain(text) if text.contains("no MX")),
        "{error:?}"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn mx_host_without_address_is_permanent() {
    let resolver = resolver_for(start_zone_server().await);
    let error = resolver.route("noaddress.test").await.unwrap_err();
    assert!(matches!(error, RouteError::NoAddresses(_)), "{error:?}");
    assert_eq!(error.smtp_status(), (550, "5.4.4"));
}

#[tokio::test(flavor = "current_thread")]
async fn servfail_is_temporary_and_cached_briefly() {
    let resolver = resolver_for(serve_servfail().await);
    let error = resolver.route("example.test").await.unwrap_err();
    assert!(matches!(error, RouteError::Temporary(_)), "{error:?}");
    assert!(!error.is_permanent());
    assert_eq!(error.smtp_status(), (451, "4.4.3"));
    assert!(matches!(
        resolver.cached("example.test"),
        Some(Err(RouteError::Temporary(_)))
    ));
}

#[tokio::test(flavor = "current_thread")]
async fn silent_nameserver_times_out_as_temporary() {
    // Bound but never read: queries vanish and the resolver times out.
    let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let resolver = resolver_for(silent.local_addr().unwrap());
    let started = std::time::Instant::now();
    let error = resolver.route("example.test").await.unwrap_err();
    assert!(matches!(error, RouteError::Temporary(_)), "{error:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "current_thread")]
async fn zone_the_server_does_not_serve_is_temporary() {
    // The catalog REFUSEs names outside its zones.
    let resolver = resolver_for(start_zone_server().await);
    let error = resolver.route("elsewhere.example").await.unwrap_err();
    assert!(matches!(error, RouteError::Temporary(_)), "{error:?}");
}

#[tokio::test(flavor = "current_thread")]
async fn prefetch_fills_the_cache_in_the_background() {
    let server = start_zone_server().await;
    let local = tokio::task::LocalSet::new();
    local
        .run_until(async move {
            let resolver = Rc::new(resolver_for(server));
            resolver.prefetch("ordered.test");
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            while resolver.cached("ordered.test").is_none() {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "prefetch never finished"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let route = resolver.cached("ordered.test").unwrap().unwrap();
            assert_eq!(
                host_names(&route),
                ["primary.ordered.test", "backup.ordered.test"]
            );
        })
        .await;
}

fn series_value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn second_lookup_is_a_cache_hit_and_metrics_say_so() {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::with_local_recorder(&recorder, || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let resolver = resolver_for(start_zone_server().await);
            let first = resolver.route("ordered.test").await.unwrap();
            let second = resolver.route("ordered.test").await.unwrap();
            assert_eq!(first, second);
            let _ = resolver.route("nullmx.test").await;
        });
    });
    let text = handle.render();
    assert_eq!(
        series_value(&text, "tern_dns_cache_total{result=\"miss\"}"),
        2.0,
        "{text}"
    );
    assert_eq!(
        series_value(&text, "tern_dns_cache_total{result=\"hit\"}"),
        1.0,
        "{text}"
    );
    assert_eq!(
        series_value(&text, "tern_dns_lookups_total{result=\"ok\"}"),
        1.0,
        "{text}"
    );
    assert_eq!(
        series_value(&text, "tern_dns_lookups_total{result=\"nullmx\"}"),
        1.0,
        "{text}"
    );
    assert!(text.contains("tern_dns_lookup_seconds"), "{text}");
}

#[test]
fn concurrent_lookups_of_one_domain_share_one_resolution() {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::with_local_recorder(&recorder, || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let resolver = resolver_for(start_zone_server().await);
            let (first, second, third) = tokio::join!(
                resolver.route("ordered.test"),
                resolver.route("ordered.test"),
                resolver.route("ORDERED.test.")
            );
            let first = first.unwrap();
            assert_eq!(first, second.unwrap());
            assert_eq!(first, third.unwrap());
        });
    });
    let text = handle.render();
    assert_eq!(
        series_value(&text, "tern_dns_lookups_total{result=\"ok\"}"),
        1.0,
        "{text}"
    );
    // One MX query for the domain, one A query per MX host.
    assert_eq!(
        series_value(&text, "tern_dns_lookup_seconds_count{kind=\"mx\"}"),
        1.0,
        "{text}"
    );
    assert_eq!(
        series_value(&text, "tern_dns_lookup_seconds_count{kind=\"a\"}"),
        2.0,
        "{text}"
    );
}
