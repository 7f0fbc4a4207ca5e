//! MX routing for the relay: turns a recipient domain into the ordered hosts
//! and addresses to deliver to (RFC 5321 5.1 with implicit MX, RFC 7505 null
//! MX), caching answers and failures per core.
//!
//! It must never connect to a mail host, never block the thread, and never be
//! shared between cores: each core builds its own `MxResolver` (not `Send`).

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant};

use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig};
use hickory_resolver::lookup::Lookup;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError, NoRecords};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{Name, RData, RecordType};
use hickory_resolver::{Resolver, TokioResolver};
use tokio::sync::OnceCell;

use super::destination::{Destination, DestinationError};
use super::expiring_cache::ExpiringCache;

/// Longest time a positive answer is kept, whatever its TTL: a relay that
/// runs for weeks should notice a moved MX within the hour. Policy, not RFC.
const POSITIVE_TTL_MAX: Duration = Duration::from_secs(3600);
/// Longest time a negative answer is kept: "one to three hours" (RFC 2308 5).
const NEGATIVE_TTL_MAX: Duration = Duration::from_secs(3 * 3600);
/// Negative answers without an SOA carry no TTL (RFC 2308 5): keep them
/// only briefly.
const NEGATIVE_TTL_DEFAULT: Duration = Duration::from_secs(60);
/// A failing DNS server is asked again at most this often per domain.
const TEMPORARY_FAILURE_TTL: Duration = Duration::from_secs(30);
/// RFC 5321 5.1 allows "a configurable limit on the number of alternate
/// addresses"; this bounds the A/AAAA lookups one domain can cause.
const MX_HOSTS_MAX: usize = 16;
/// Domains remembered per core (memory bound of the route cache).
const CACHED_DOMAINS_MAX: usize = 10_000;

/// How to reach DNS.
#[derive(Debug, Clone)]
pub struct DnsConfig {
    /// None = the system resolver (/etc/resolv.conf); Some = these servers,
    /// UDP (tests use 127.0.0.1:port).
    pub nameservers: Option<Vec<SocketAddr>>,
    /// Per query attempt.
    pub timeout: Duration,
    pub attempts: usize,
}

/// One host to try, with its addresses (IPv4 first, then IPv6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MxHost {
    pub preference: u16,
    /// Lower case, no trailing dot (ASCII form for IDNs).
    pub name: String,
    pub addrs: Vec<IpAddr>,
}

/// Where the mail for one recipient domain goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MxRoute {
    /// Hosts to try in order: preference ascending, random order among equal
    /// preferences (shuffled per `route()` call from the cached set), each
    /// with its A/AAAA addresses.
    pub hosts: Vec<MxHost>,
    /// No MX record: the domain itself was used (RFC 5321 5.1 implicit MX).
    /// Also true for an address literal, where the destination itself is
    /// the only host and DNS was not asked.
    pub implicit: bool,
}

/// Why no route could be found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// RFC 7505 null MX ("0 ."): the domain accepts no mail.
    #[error("the domain publishes a null MX and accepts no mail (RFC 7505)")]
    NullMx,
    /// NXDOMAIN, no MX and no A/AAAA, or a name DNS cannot carry.
    #[error("no such domain: {0}")]
    NoSuchDomain(String),
    /// MX records exist but every listed host has authoritatively no
    /// A/AAAA record. RFC 5321 5.1: an MX list with no usable host "MUST be
    /// reported as an error"; like Postfix we make it permanent with 5.4.4
    /// (RFC 3463: unable to route). When any host's address lookup failed
    /// temporarily the result is `Temporary` instead.
    #[error("no mail exchanger has an address: {0}")]
    NoAddresses(String),
    /// SERVFAIL, timeout, refused, I/O.
    #[error("temporary DNS failure: {0}")]
    Temporary(String),
}

impl RouteError {
    /// Whether retrying later cannot help.
    pub fn is_permanent(&self) -> bool {
        !matches!(self, RouteError::Temporary(_))
    }

    /// Reply code and enhanced status code (RFC 3463) to report this with.
    pub fn smtp_status(&self) -> (u16, &'static str) {
        match self {
            // RFC 7505 4.2 (and RFC 7504 for 556).
            RouteError::NullMx => (556, "5.1.10"),
            // RFC 3463 3.2: X.1.2 bad destination system address.
            RouteError::NoSuchDomain(_) => (550, "5.1.2"),
            // RFC 3463 3.5: X.4.4 unable to route.
            RouteError::NoAddresses(_) => (550, "5.4.4"),
            // RFC 3463 3.5: X.4.3 directory server failure.
            RouteError::Temporary(_) => (451, "4.4.3"),
        }
    }

    fn metric_label(&self) -> &'static str {
        match self {
            RouteError::NullMx => "nullmx",
            RouteError::NoSuchDomain(_) => "nxdomain",
            RouteError::NoAddresses(_) => "noaddress",
            RouteError::Temporary(_) => "temporary",
        }
    }
}

impl From<DestinationError> for RouteError {
    fn from(error: DestinationError) -> Self {
        RouteError::NoSuchDomain(error.to_string())
    }
}

/// The resolver could not be built.
#[derive(Debug, thiserror::Error)]
pub enum DnsSetupError {
    #[error("[relay] nameservers is an empty list")]
    NoNameservers,
    #[error("the DNS query timeout must be greater than zero")]
    ZeroTimeout,
    #[error("cannot set up the DNS resolver: {0}")]
    Resolver(#[from] NetError),
}

type Outcome = Result<MxRoute, RouteError>;

/// An outcome and how long it may be cached.
struct Resolved {
    outcome: Outcome,
    ttl: Duration,
}

/// How one DNS query failed.
enum QueryFailure {
    /// The name does not exist (RFC 2308 2.1).
    NxDomain {
        ttl: Duration,
    },
    /// The name exists without records of that type (RFC 2308 2.2).
    NoData {
        ttl: Duration,
    },
    Temporary(String),
}

/// A and AAAA of one host.
struct HostAddresses {
    addrs: Vec<IpAddr>,
    ttl: Duration,
    /// The first temporary failure, if any query failed that way.
    temporary: Option<String>,
}

/// One per core (not Send). Caches answers (positive by their TTL, capped;
/// negative by the SOA minimum or a capped default; temporary failures
/// briefly so a failing DNS server is not hammered).
pub struct MxResolver {
    resolver: TokioResolver,
    cache: RefCell<ExpiringCache<Outcome>>,
    in_flight: RefCell<HashMap<String, Rc<OnceCell<Outcome>>>>,
}

impl MxResolver {
    pub fn new(config: &DnsConfig) -> Result<Self, DnsSetupError> {
        if config.timeout.is_zero() {
            return Err(DnsSetupError::ZeroTimeout);
        }
        let mut builder = match &config.nameservers {
            None => TokioResolver::builder_tokio()?,
            Some(servers) if servers.is_empty() => return Err(DnsSetupError::NoNameservers),
            Some(servers) => {
                let name_servers = servers
                    .iter()
                    .map(|server| {
                        let mut udp = ConnectionConfig::udp();
                        udp.port = server.port();
                        NameServerConfig::new(server.ip(), true, vec![udp])
                    })
                    .collect();
                Resolver::builder_with_config(
                    ResolverConfig::from_name_servers(name_servers),
                    TokioRuntimeProvider::default(),
                )
            }
        };
        let options = builder.options_mut();
        options.timeout = config.timeout;
        options.attempts = config.attempts;
        // Our own cache keeps whole routes; a second cache below it would
        // only serve answers with stale TTLs.
        options.cache_size = 0;
        // MX hosts are remote: /etc/hosts must not redirect them.
        options.use_hosts_file = ResolveHosts::Never;
        Ok(Self {
            resolver: builder.build()?,
            cache: RefCell::new(ExpiringCache::new(CACHED_DOMAINS_MAX)),
            in_flight: RefCell::new(HashMap::new()),
        })
    }

    /// The resolver under the route cache (same servers, timeout and
    /// attempts), for the core's other DNS users: mail authentication.
    pub fn resolver(&self) -> TokioResolver {
        self.resolver.clone()
    }

    /// Resolve (or serve from cache) the route for a recipient domain.
    /// Concurrent calls for the same domain share one lookup.
    pub async fn route(&self, domain: &str) -> Result<MxRoute, RouteError> {
        let (key, name) = match Destination::parse(domain)? {
            Destination::Literal(addr) => return Ok(literal_route(addr)),
            Destination::Domain { key, name } => (key, name),
        };
        if let Some(outcome) = self.cached_at(&key, Instant::now()) {
            metrics::counter!("tern_dns_cache_total", "result" => "hit").increment(1);
            return outcome;
        }
        metrics::counter!("tern_dns_cache_total", "result" => "miss").increment(1);
        let shared = Rc::clone(self.in_flight.borrow_mut().entry(key.clone()).or_default());
        let waiter = InFlightWaiter {
            resolver: self,
            key: &key,
            shared: &shared,
        };
        let outcome = waiter
            .shared
            .get_or_init(|| self.resolve_and_store(&key, &name))
            .await
            .clone();
        outcome.map(shuffled)
    }

    /// Cache-only peek (used at RCPT time to refuse null-MX domains at
    /// once): None if unknown. Address literals and names DNS cannot carry
    /// are always known.
    pub fn cached(&self, domain: &str) -> Option<Result<MxRoute, RouteError>> {
        match Destination::parse(domain) {
            Ok(Destination::Domain { key, .. }) => self.cached_at(&key, Instant::now()),
            Ok(Destination::Literal(addr)) => Some(Ok(literal_route(addr))),
            Err(error) => Some(Err(error.into())),
        }
    }

    /// Start a lookup in the background (tokio::task::spawn_local) without
    /// waiting: the early lookup done as soon as RCPT is accepted. Must be
    /// called inside a LocalSet. Does nothing when the answer is cached or a
    /// lookup for the domain is already running.
    pub fn prefetch(self: &Rc<Self>, domain: &str) {
        let Ok(Destination::Domain { key, .. }) = Destination::parse(domain) else {
            return;
        };
        if self.in_flight.borrow().contains_key(&key)
            || self.cached_at(&key, Instant::now()).is_some()
        {
            return;
        }
        let resolver = Rc::clone(self);
        tokio::task::spawn_local(async move {
            // The outcome lands in the cache; nobody waits for it here.
            let _outcome = resolver.route(&key).await;
        });
    }

    fn cached_at(&self, key: &str, now: Instant) -> Option<Outcome> {
        let cache = self.cache.borrow();
        let outcome = cache.get(key, now)?.clone();
        Some(outcome.map(shuffled))
    }

    fn store_at(&self, key: &str, resolved: &Resolved, now: Instant) {
        self.cache
            .borrow_mut()
            .insert(key.to_owned(), resolved.outcome.clone(), resolved.ttl, now);
    }

    /// Runs once per domain however many callers wait: the answer goes to
    /// the cache before the in-flight entry is dropped, so no caller in
    /// between starts a second lookup.
    async fn resolve_and_store(&self, key: &str, name: &Name) -> Outcome {
        let resolved = self.resolve(key, name).await;
        let label = match &resolved.outcome {
            Ok(_) => "ok",
            Err(error) => error.metric_label(),
        };
        metrics::counter!("tern_dns_lookups_total", "result" => label).increment(1);
        self.store_at(key, &resolved, Instant::now());
        self.in_flight.borrow_mut().remove(key);
        resolved.outcome
    }

    async fn resolve(&self, domain: &str, name: &Name) -> Resolved {
        match self.query(name, RecordType::MX).await {
            Ok(lookup) => self.resolve_exchangers(domain, name, &lookup).await,
            Err(error) => match classify(&error) {
                QueryFailure::NxDomain { ttl } => Resolved {
                    outcome: Err(RouteError::NoSuchDomain(format!(
                        "{domain}: the domain does not exist (NXDOMAIN)"
                    ))),
                    ttl,
                },
                QueryFailure::NoData { ttl } => self.resolve_implicit(domain, name, ttl).await,
                QueryFailure::Temporary(reason) => temporary(format!("MX {domain}: {reason}")),
            },
        }
    }

    /// MX records were found: null MX, or the hosts with their addresses.
    async fn resolve_exchangers(&self, domain: &str, name: &Name, lookup: &Lookup) -> Resolved {
        let mut ttl = POSITIVE_TTL_MAX;
        let mut null_mx = false;
        let mut exchangers: Vec<(u16, Name)> = Vec::new();
        for record in lookup.answers() {
            if let RData::MX(mx) = &record.data {
                ttl = ttl.min(Duration::from_secs(u64::from(record.ttl)));
                if mx.exchange.is_root() {
                    null_mx = true;
                } else {
                    exchangers.push((mx.preference, mx.exchange.clone()));
                }
            }
        }
        if exchangers.is_empty() {
            if null_mx {
                return Resolved {
                    outcome: Err(RouteError::NullMx),
                    ttl: ttl.min(NEGATIVE_TTL_MAX),
                };
            }
            // An answer without MX records (only a CNAME chain, say) is
            // NODATA for MX: fall back to the implicit MX.
            return self
                .resolve_implicit(domain, name, NEGATIVE_TTL_DEFAULT)
                .await;
        }
        // RFC 7505 3 forbids a null MX next to real ones; when a zone does
        // it anyway, the real hosts are the only useful part.
        exchangers.sort_by_key(|(preference, _)| *preference);
        let mut seen = HashSet::with_capacity(exchangers.len());
        exchangers.retain(|(_, exchange)| seen.insert(exchange.clone()));
        exchangers.truncate(MX_HOSTS_MAX);

        let mut hosts = Vec::with_capacity(exchangers.len());
        let mut temporary_failure = None;
        let mut negative_ttl = NEGATIVE_TTL_MAX;
        for (preference, exchange) in exchangers {
            let found = self.addresses(&exchange).await;
            if found.temporary.is_some() && temporary_failure.is_none() {
                temporary_failure = found.temporary;
            }
            if found.addrs.is_empty() {
                negative_ttl = negative_ttl.min(found.ttl);
            } else {
                ttl = ttl.min(found.ttl);
                hosts.push(MxHost {
                    preference,
                    name: host_name(&exchange),
                    addrs: found.addrs,
                });
            }
        }
        match (hosts.is_empty(), temporary_failure) {
            (true, Some(reason)) => temporary(format!("MX hosts of {domain}: {reason}")),
            (true, None) => Resolved {
                outcome: Err(RouteError::NoAddresses(format!(
                    "{domain}: no MX host has an A or AAAA record"
                ))),
                ttl: negative_ttl,
            },
            // Some hosts are usable; ask again soon for the ones that failed.
            (false, Some(_)) => Resolved {
                outcome: Ok(MxRoute {
                    hosts,
                    implicit: false,
                }),
                ttl: ttl.min(TEMPORARY_FAILURE_TTL),
            },
            (false, None) => Resolved {
                outcome: Ok(MxRoute {
                    hosts,
                    implicit: false,
                }),
                ttl,
            },
        }
    }

    /// No MX records: the domain itself is the host (RFC 5321 5.1).
    async fn resolve_implicit(
        &self,
        domain: &str,
        name: &Name,
        mx_negative_ttl: Duration,
    ) -> Resolved {
        let found = self.addresses(name).await;
        if !found.addrs.is_empty() {
            return Resolved {
                outcome: Ok(MxRoute {
                    hosts: vec![MxHost {
                        preference: 0,
                        name: host_name(name),
                        addrs: found.addrs,
                    }],
                    implicit: true,
                }),
                // The route holds only while the domain has no MX: an MX
                // added later must be seen when the negative answer expires.
                ttl: found.ttl.min(mx_negative_ttl),
            };
        }
        match found.temporary {
            Some(reason) => temporary(format!("A/AAAA {domain}: {reason}")),
            None => Resolved {
                outcome: Err(RouteError::NoSuchDomain(format!(
                    "{domain}: no MX and no A or AAAA record"
                ))),
                ttl: found.ttl.min(mx_negative_ttl),
            },
        }
    }

    /// A and AAAA of one host, asked at the same time.
    async fn addresses(&self, name: &Name) -> HostAddresses {
        let (v4, v6) = tokio::join!(
            self.query(name, RecordType::A),
            self.query(name, RecordType::AAAA)
        );
        let mut found = HostAddresses {
            addrs: Vec::new(),
            ttl: POSITIVE_TTL_MAX,
            temporary: None,
        };
        for answer in [v4, v6] {
            match answer {
                Ok(lookup) => {
                    for record in lookup.answers() {
                        let addr = match &record.data {
                            RData::A(a) => IpAddr::V4(a.0),
                            RData::AAAA(aaaa) => IpAddr::V6(aaaa.0),
                            _ => continue,
                        };
                        found.ttl = found.ttl.min(Duration::from_secs(u64::from(record.ttl)));
                        if !found.addrs.contains(&addr) {
                            found.addrs.push(addr);
                        }
                    }
                }
                Err(error) => match classify(&error) {
                    QueryFailure::NxDomain { ttl } | QueryFailure::NoData { ttl } => {
                        if found.addrs.is_empty() {
                            found.ttl = found.ttl.min(ttl);
                        }
                    }
                    QueryFailure::Temporary(reason) => {
                        found.temporary.get_or_insert(reason);
                    }
                },
            }
        }
        found
    }

    async fn query(&self, name: &Name, record_type: RecordType) -> Result<Lookup, NetError> {
        let kind = match record_type {
            RecordType::MX => "mx",
            RecordType::A => "a",
            RecordType::AAAA => "aaaa",
            _ => "other",
        };
        let started = Instant::now();
        let answer = self.resolver.lookup(name.clone(), record_type).await;
        metrics::histogram!("tern_dns_lookup_seconds", "kind" => kind)
            .record(started.elapsed().as_secs_f64());
        answer
    }
}

/// One caller waiting on a shared lookup. If the last waiter goes away
/// (its future dropped) before the answer came, the unfinished entry is
/// removed so it neither lingers nor stops a later `prefetch`.
struct InFlightWaiter<'a> {
    resolver: &'a MxResolver,
    key: &'a str,
    shared: &'a Rc<OnceCell<Outcome>>,
}

impl Drop for InFlightWaiter<'_> {
    fn drop(&mut self) {
        // Two owners left: the map and this waiter's caller.
        if self.shared.initialized() || Rc::strong_count(self.shared) > 2 {
            return;
        }
        if let Ok(mut in_flight) = self.resolver.in_flight.try_borrow_mut() {
            if in_flight
                .get(self.key)
                .is_some_and(|entry| Rc::ptr_eq(entry, self.shared))
            {
                in_flight.remove(self.key);
            }
        }
    }
}

fn temporary(reason: String) -> Resolved {
    Resolved {
        outcome: Err(RouteError::Temporary(reason)),
        ttl: TEMPORARY_FAILURE_TTL,
    }
}

fn classify(error: &NetError) -> QueryFailure {
    match error {
        NetError::Dns(DnsError::NoRecordsFound(NoRecords {
            response_code,
            negative_ttl,
            ..
        })) => {
            let ttl = negative_ttl
                .map_or(NEGATIVE_TTL_DEFAULT, |secs| {
                    Duration::from_secs(u64::from(secs))
                })
                .min(NEGATIVE_TTL_MAX);
            if *response_code == ResponseCode::NXDomain {
                QueryFailure::NxDomain { ttl }
            } else {
                QueryFailure::NoData { ttl }
            }
        }
        other => QueryFailure::Temporary(other.to_string()),
    }
}

fn host_name(name: &Name) -> String {
    let mut ascii = name.to_ascii();
    if ascii.ends_with('.') {
        ascii.pop();
    }
    ascii.make_ascii_lowercase();
    ascii
}

fn literal_route(addr: IpAddr) -> MxRoute {
    MxRoute {
        hosts: vec![MxHost {
            preference: 0,
            name: addr.to_string(),
            addrs: vec![addr],
        }],
        implicit: true,
    }
}

fn shuffled(mut route: MxRoute) -> MxRoute {
    order_hosts(&mut route.hosts, &mut fastrand::Rng::new());
    route
}

/// Preference ascending; hosts of equal preference in random order
/// (RFC 5321 5.1: "the SMTP client SHOULD randomize them").
fn order_hosts(hosts: &mut [MxHost], rng: &mut fastrand::Rng) {
    hosts.sort_by_key(|host| host.preference);
    for equals in hosts.chunk_by_mut(|a, b| a.preference == b.preference) {
        rng.shuffle(equals);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_resolver::proto::op::Query;
    use std::net::Ipv4Addr;

    fn host(preference: u16, name: &str) -> MxHost {
        MxHost {
            preference,
            name: name.to_owned(),
            addrs: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
        }
    }

    fn names(hosts: &[MxHost]) -> Vec<&str> {
        hosts.iter().map(|host| host.name.as_str()).collect()
    }

    /// A resolver pointed at a port nobody answers; the tests below never
    /// let it send a query.
    fn offline_resolver() -> MxResolver {
        MxResolver::new(&DnsConfig {
            nameservers: Some(vec![SocketAddr::from((Ipv4Addr::LOCALHOST, 9))]),
            timeout: Duration::from_millis(100),
            attempts: 1,
        })
        .unwrap()
    }

    #[test]
    fn hosts_are_ordered_by_preference() {
        let mut hosts = vec![host(30, "c"), host(10, "a"), host(20, "b")];
        order_hosts(&mut hosts, &mut fastrand::Rng::with_seed(1));
        assert_eq!(names(&hosts), ["a", "b", "c"]);
    }

    #[test]
    fn equal_preferences_are_shuffled_but_stay_in_their_rank() {
        let mut seen_first = Vec::new();
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..64 {
            let mut hosts = vec![host(20, "z"), host(10, "a"), host(10, "b"), host(10, "c")];
            order_hosts(&mut hosts, &mut rng);
            assert_eq!(hosts[3].name, "z");
            let mut rank: Vec<&str> = names(&hosts[..3]);
            rank.sort_unstable();
            assert_eq!(rank, ["a", "b", "c"]);
            if !seen_first.contains(&hosts[0].name) {
                seen_first.push(hosts[0].name.clone());
            }
        }
        assert_eq!(
            seen_first.len(),
            3,
            "every equal host should come first sometimes"
        );
    }

    #[test]
    fn order_of_nothing_is_nothing() {
        let mut hosts: Vec<MxHost> = Vec::new();
        order_hosts(&mut hosts, &mut fastrand::Rng::with_seed(1));
        assert!(hosts.is_empty());
    }

    #[test]
    fn statuses_follow_the_rfcs() {
        assert_eq!(RouteError::NullMx.smtp_status(), (556, "5.1.10"));
        assert_eq!(
            RouteError::NoSuchDomain(String::new()).smtp_status(),
            (550, "5.1.2")
        );
        assert_eq!(
            RouteError::NoAddresses(String::new()).smtp_status(),
            (550, "5.4.4")
        );
        assert_eq!(
            RouteError::Temporary(String::new()).smtp_status(),
            (451, "4.4.3")
        );
        assert!(RouteError::NullMx.is_permanent());
        assert!(RouteError::NoSuchDomain(String::new()).is_permanent());
        assert!(RouteError::NoAddresses(String::new()).is_permanent());
        assert!(!RouteError::Temporary(String::new()).is_permanent());
    }

    #[test]
    fn negative_answers_are_told_apart_from_failures() {
        let query = Query::query(Name::from_ascii("example.org.").unwrap(), RecordType::MX);
        let mut nxdomain = NoRecords::new(query.clone(), ResponseCode::NXDomain);
        nxdomain.negative_ttl = Some(600);
        assert!(matches!(
            classify(&NetError::from(DnsError::NoRecordsFound(nxdomain))),
            QueryFailure::NxDomain { ttl } if ttl == Duration::from_secs(600)
        ));
        let nodata = NoRecords::new(query, ResponseCode::NoError);
        assert!(matches!(
            classify(&NetError::from(DnsError::NoRecordsFound(nodata))),
            QueryFailure::NoData { ttl } if ttl == NEGATIVE_TTL_DEFAULT
        ));
        assert!(matches!(
            classify(&NetError::from(DnsError::ResponseCode(
                ResponseCode::ServFail
            ))),
            QueryFailure::Temporary(_)
        ));
        assert!(matches!(
            classify(&NetError::Timeout),
            QueryFailure::Temporary(_)
        ));
    }

    #[test]
    fn negative_ttl_is_capped() {
        let query = Query::query(Name::from_ascii("example.org.").unwrap(), RecordType::MX);
        let mut nxdomain = NoRecords::new(query, ResponseCode::NXDomain);
        nxdomain.negative_ttl = Some(u32::MAX);
        assert!(matches!(
            classify(&NetError::from(DnsError::NoRecordsFound(nxdomain))),
            QueryFailure::NxDomain { ttl } if ttl == NEGATIVE_TTL_MAX
        ));
    }

    #[test]
    fn host_names_lose_the_root_dot_and_case() {
        assert_eq!(
            host_name(&Name::from_ascii("MX1.Example.ORG.").unwrap()),
            "mx1.example.org"
        );
        assert_eq!(
            host_name(&Name::from_utf8("mx.bücher.example.").unwrap()),
            "mx.xn--bcher-kva.example"
        );
    }

    #[test]
    fn cached_routes_expire_with_their_ttl() {
        let resolver = offline_resolver();
        let start = Instant::now();
        let route = MxRoute {
            hosts: vec![host(10, "mx.example.org")],
            implicit: false,
        };
        let resolved = Resolved {
            outcome: Ok(route.clone()),
            ttl: Duration::from_secs(300),
        };
        resolver.store_at("example.org", &resolved, start);
        assert_eq!(
            resolver.cached_at("example.org", start + Duration::from_secs(299)),
            Some(Ok(route))
        );
        assert_eq!(
            resolver.cached_at("example.org", start + Duration::from_secs(300)),
            None
        );
    }

    #[test]
    fn temporary_failures_are_cached_briefly() {
        let resolver = offline_resolver();
        let start = Instant::now();
        resolver.store_at("example.org", &temporary("SERVFAIL".to_owned()), start);
        assert!(matches!(
            resolver.cached_at(
                "example.org",
                start + TEMPORARY_FAILURE_TTL - Duration::from_secs(1)
            ),
            Some(Err(RouteError::Temporary(_)))
        ));
        assert_eq!(
            resolver.cached_at("example.org", start + TEMPORARY_FAILURE_TTL),
            None
        );
    }

    #[test]
    fn cached_peek_uses_the_normalised_domain() {
        let resolver = offline_resolver();
        assert_eq!(resolver.cached("Example.ORG."), None);
        let resolved = Resolved {
            outcome: Err(RouteError::NullMx),
            ttl: Duration::from_secs(300),
        };
        resolver.store_at("example.org", &resolved, Instant::now());
        assert_eq!(
            resolver.cached("Example.ORG."),
            Some(Err(RouteError::NullMx))
        );
    }

    #[test]
    fn literals_and_bad_names_are_known_without_dns() {
        let resolver = offline_resolver();
        let literal = resolver.cached("[IPv6:2001:db8::1]").unwrap().unwrap();
        assert!(literal.implicit);
        assert_eq!(literal.hosts.len(), 1);
        assert_eq!(
            literal.hosts[0].addrs,
            ["2001:db8::1".parse::<IpAddr>().unwrap()]
        );
        assert!(matches!(
            resolver.cached("[bogus]"),
            Some(Err(RouteError::NoSuchDomain(_)))
        ));
        assert!(matches!(
            resolver.cached(""),
            Some(Err(RouteError::NoSuchDomain(_)))
        ));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn literal_route_needs_no_dns() {
        let resolver = offline_resolver();
        let route = resolver.route("[192.0.2.1]").await.unwrap();
        assert_eq!(route.hosts, [host_at(0, "192.0.2.1", [192, 0, 2, 1])]);
    }

    fn host_at(preference: u16, name: &str, octets: [u8; 4]) -> MxHost {
        MxHost {
            preference,
            name: name.to_owned(),
            addrs: vec![IpAddr::from(octets)],
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn abandoned_lookup_leaves_nothing_in_flight() {
        // The silent socket never answers, so the lookup is still running
        // when the caller gives up.
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let resolver = MxResolver::new(&DnsConfig {
            nameservers: Some(vec![silent.local_addr().unwrap()]),
            timeout: Duration::from_secs(5),
            attempts: 1,
        })
        .unwrap();
        let gave_up =
            tokio::time::timeout(Duration::from_millis(50), resolver.route("example.org")).await;
        assert!(gave_up.is_err());
        assert!(resolver.in_flight.borrow().is_empty());
        assert_eq!(resolver.cached("example.org"), None);
    }

    #[test]
    fn setup_refuses_empty_server_list_and_zero_timeout() {
        let empty = MxResolver::new(&DnsConfig {
            nameservers: Some(Vec::new()),
            timeout: Duration::from_secs(1),
            attempts: 1,
        });
        assert!(matches!(empty, Err(DnsSetupError::NoNameservers)));
        let zero = MxResolver::new(&DnsConfig {
            nameservers: None,
            timeout: Duration::ZERO,
            attempts: 1,
        });
        assert!(matches!(zero, Err(DnsSetupError::ZeroTimeout)));
    }
}
