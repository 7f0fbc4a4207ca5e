//! The per-core delivery worker: takes due messages from the core's
//! `Scheduler`, routes each recipient (static route, smarthost or MX),
//! sends all recipients of one message for one destination in one
//! transaction over a pooled connection, persists every recipient's new
//! state, queues the DSN a bounce owes, and schedules the retry.
//!
//! It must never mark a recipient final before the spool says the update
//! is durable, never bounce before the DSN is durable (a crash in between
//! repeats the attempt, it never loses the bounce), and never send a DSN
//! for a message from the null sender (build_dsn refuses).

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::connection::{Connector, OpenError, OutboundConnection};
use super::dns::{MxResolver, RouteError};
use super::next_hop::{HopHost, NextHop};
use super::pool::{Acquired, ConnectionPool, PoolKey, Pooled};
use super::routing::{Hop, RouteTable};
use crate::clock::now_ms;
use crate::config::OutboundTls;
use crate::mailauth::DkimSigners;
use crate::mailbox::{Flags, MailboxError, MailboxStore, NewMessage, INBOX};
use crate::queue::dsn::{build_dsn, BounceRequest, DsnAction, RecipientReport};
use crate::queue::retry::RetryPolicy;
use crate::queue::scheduler::Scheduler;
use crate::queue::settle::{settle, AttemptOutcome, BounceReport};
use crate::smtp::client::{
    ClientConfig, OutboundTransaction, ReceivedReply, RecipientOutcome, TlsPolicy,
};
use crate::smtp::received_header;
use crate::smtp::reply::class_label;
use crate::spool::{MessageView, QueueId, RecipientState, Spool, SpoolError, SpoolWriter};
use crate::users::{User, UsersHandle};

mod operator;
pub use operator::{Finish, OperatorOutcome};

/// A configured next hop's addresses are looked up again after this.
const NEXT_HOP_ADDRESS_TTL: Duration = Duration::from_secs(60);

/// The results a delivery attempt is counted under.
pub const ATTEMPT_RESULTS: [&str; 3] = ["delivered", "deferred", "bounced"];

/// Everything one core's delivery worker is configured with.
pub struct RelaySettings {
    pub hostname: String,
    /// Replaced by a configuration reload (`Relay::reload`).
    pub routes: RefCell<Rc<RouteTable>>,
    /// Replaced by a configuration reload (`Relay::reload`).
    pub retry: Cell<RetryPolicy>,
    pub connect_timeout: Duration,
    /// STARTTLS without certificate checks (opportunistic, required).
    pub tls_any: Arc<rustls::ClientConfig>,
    /// STARTTLS with the chain checked (verify); None when no route asks.
    pub tls_verified: Option<Arc<rustls::ClientConfig>>,
    /// Owners of local addresses.
    pub users: UsersHandle,
    /// Where local recipients' messages are filed.
    pub mailboxes: Arc<MailboxStore>,
    /// DKIM keys for mail that leaves; None when none is configured.
    /// Replaced by a configuration reload (`Relay::reload`).
    pub dkim: RefCell<Option<Arc<DkimSigners>>>,
}

/// The user whose INBOX gets mail for `recipient`, a local address: the
/// user it names (an address, or the login of mail a client uploaded),
/// else for postmaster the `[relay] postmaster` user. RCPT accepts exactly
/// the recipients this can serve, plus postmaster without an owner yet.
fn mailbox_owner(users: &UsersHandle, routes: &RouteTable, recipient: &str) -> Option<User> {
    users
        .find_login(recipient)
        .or_else(|| users.find(routes.postmaster_for(recipient)?))
}

/// A group of recipients of one message that share one transaction.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum GroupKey {
    Static {
        next_hop: NextHop,
        tls: OutboundTls,
    },
    Mx {
        domain: String,
        port: u16,
        tls: OutboundTls,
    },
}

/// Where one group goes: hosts in order of preference, each with its
/// addresses (the port included).
type Targets = Vec<(String, Vec<SocketAddr>)>;

pub struct Relay<C: Connector> {
    settings: RelaySettings,
    scheduler: Rc<Scheduler>,
    spool: Arc<Spool>,
    writer: Rc<RefCell<SpoolWriter>>,
    resolver: Rc<MxResolver>,
    pool: Rc<ConnectionPool<C::Stream>>,
    connector: C,
    /// One client config per STARTTLS policy.
    session_configs: HashMap<OutboundTls, Arc<ClientConfig>>,
    next_hop_addresses: RefCell<HashMap<NextHop, (Instant, Vec<IpAddr>)>>,
}

/// Create every relay series (delivery, outbound SMTP, DNS, DSN) at zero,
/// so dashboards and `rate()` see them before the first event.
pub fn register_metrics() {
    for result in ATTEMPT_RESULTS {
        for class in ["2xx", "4xx", "5xx", "none"] {
            metrics::counter!("tern_delivery_attempts_total", "result" => result, "class" => class)
                .increment(0);
        }
    }
    for state in crate::queue::scheduler::QUEUE_STATES {
        metrics::gauge!("tern_queue_messages", "state" => state).increment(0.0);
    }
    metrics::gauge!("tern_queue_oldest_message_age_seconds").set(0.0);
    metrics::gauge!("tern_outbound_connections_active").increment(0.0);
    for result in ["ok", "error"] {
        metrics::counter!("tern_outbound_connections_total", "result" => result).increment(0);
    }
    metrics::counter!("tern_outbound_tls_fallbacks_total").increment(0);
    for class in ["4xx", "5xx"] {
        metrics::counter!("tern_smtp_recipient_hook_refused_total", "class" => class).increment(0);
    }
    for class in crate::smtp::reply::REPLY_CLASSES {
        metrics::counter!("tern_smtp_client_replies_total", "class" => class).increment(0);
    }
    metrics::counter!("tern_smtp_client_timeouts_total").increment(0);
    metrics::counter!("tern_smtp_client_protocol_errors_total").increment(0);
    for result in ["ok", "nxdomain", "nullmx", "noaddress", "temporary"] {
        metrics::counter!("tern_dns_lookups_total", "result" => result).increment(0);
    }
    for result in ["hit", "miss"] {
        metrics::counter!("tern_dns_cache_total", "result" => result).increment(0);
    }
    for action in ["failed", "delayed"] {
        metrics::counter!("tern_dsn_built_total", "action" => action).increment(0);
    }
    for reason in ["null_sender", "notify"] {
        metrics::counter!("tern_dsn_suppressed_total", "reason" => reason).increment(0);
    }
}

impl<C: Connector + 'static> Relay<C> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        settings: RelaySettings,
        scheduler: Rc<Scheduler>,
        spool: Arc<Spool>,
        writer: Rc<RefCell<SpoolWriter>>,
        resolver: Rc<MxResolver>,
        pool: Rc<ConnectionPool<C::Stream>>,
        connector: C,
    ) -> Relay<C> {
        let session_configs = [
            (OutboundTls::Off, TlsPolicy::Off),
            (OutboundTls::Opportunistic, TlsPolicy::Opportunistic),
            (OutboundTls::Required, TlsPolicy::Required),
            (OutboundTls::Verify, TlsPolicy::Required),
        ]
        .into_iter()
        .map(|(tls, policy)| {
            (
                tls,
                Arc::new(ClientConfig::new(settings.hostname.clone(), policy)),
            )
        })
        .collect();
        Relay {
            settings,
            scheduler,
            spool,
            writer,
            resolver,
            pool,
            connector,
            session_configs,
            next_hop_addresses: RefCell::new(HashMap::new()),
        }
    }

    /// New routes, retry times and DKIM keys from a configuration reload;
    /// attempts under way finish with the ones they started with.
    pub fn reload(
        &self,
        routes: Rc<RouteTable>,
        retry: RetryPolicy,
        dkim: Option<Arc<DkimSigners>>,
    ) {
        *self.settings.routes.borrow_mut() = routes;
        self.settings.retry.set(retry);
        *self.settings.dkim.borrow_mut() = dkim;
    }

    /// Start attempts as messages fall due, until shutdown.
    pub async fn run(self: Rc<Self>, mut shutdown: watch::Receiver<bool>) {
        tokio::task::spawn_local(Rc::clone(&self.pool).reap());
        loop {
            if *shutdown.borrow() {
                break;
            }
            let now = now_ms();
            while let Some(id) = self.scheduler.next_due(now) {
                let relay = Rc::clone(&self);
                tokio::task::spawn_local(async move {
                    if let Some(due_ms) = relay.attempt(id).await {
                        relay.scheduler.defer(id, due_ms);
                    }
                    relay.scheduler.finished(&id);
                });
            }
            let wait = self
                .scheduler
                .next_retry_ms()
                .map(|due| Duration::from_millis(due.saturating_sub(now)))
                .unwrap_or(Duration::from_secs(3600));
            tokio::select! {
                _ = self.scheduler.changed() => {}
                _ = tokio::time::sleep(wait) => {}
                changed = shutdown.changed() => {
                    if changed.is_err() {
                        break;
                    }
                }
            }
        }
        self.pool.close_all_idle();
    }

    /// One attempt for every due recipient of `id`. Returns when the
    /// message should be tried again, None when nothing is left to try
    /// here (delivered, bounced, or waiting for local delivery).
    async fn attempt(self: &Rc<Self>, id: QueueId) -> Option<u64> {
        // A flushed message tries its recipients not yet due as well.
        let forced = self.scheduler.take_forced(&id);
        let view = match self.spool.read(&id) {
            Ok(view) => Rc::new(view),
            // Final in the meantime (or never live): nothing to do.
            Err(SpoolError::NotFound(_)) => return None,
            Err(e) => {
                warn!(queue_id = %id, error = %e, "cannot read queued message; will retry");
                return Some(now_ms() + self.settings.retry.get().first_retry.as_millis() as u64);
            }
        };
        let now = now_ms();
        let routes = Rc::clone(&self.settings.routes.borrow());
        let mut groups: BTreeMap<GroupKey, Vec<usize>> = BTreeMap::new();
        let mut local: Vec<usize> = Vec::new();
        let mut later: Option<u64> = None;
        for (index, recipient) in view.envelope.recipients.iter().enumerate() {
            match view.states.get(index) {
                Some(RecipientState::Pending) => {}
                Some(RecipientState::Deferred { until_ms, .. }) if *until_ms <= now || forced => {}
                Some(RecipientState::Deferred { until_ms, .. }) => {
                    later = Some(later.map_or(*until_ms, |l| l.min(*until_ms)));
                    continue;
                }
                _ => continue,
            }
            let key = match routes.hop_for(&recipient.address) {
                Hop::Local => {
                    local.push(index);
                    continue;
                }
                Hop::Static { next_hop, tls } => GroupKey::Static { next_hop, tls },
                Hop::Mx { port, tls } => GroupKey::Mx {
                    domain: domain_of(&recipient.address),
                    port,
                    tls,
                },
            };
            groups.entry(key).or_default().push(index);
        }
        if groups.is_empty() && local.is_empty() {
            return later;
        }
        let trace = Rc::new(
            received_header(&view.envelope, &id.to_string(), &self.settings.hostname).into_bytes(),
        );
        let mut outcomes = self.deliver_local(&view, &trace, &local).await;
        // Signed once per attempt, for every group: the signature goes
        // under the trace, which no signature covers.
        let dkim = self.settings.dkim.borrow().clone();
        let trace = match (dkim, groups.is_empty()) {
            (Some(signers), false) => match signers.signature_fields(&view.envelope, view.data()) {
                Some(signature) => Rc::new([trace.as_slice(), &signature].concat()),
                None => trace,
            },
            _ => trace,
        };
        let mut tasks = Vec::with_capacity(groups.len());
        for (key, indexes) in groups {
            let relay = Rc::clone(self);
            let view = Rc::clone(&view);
            let trace = Rc::clone(&trace);
            tasks.push(tokio::task::spawn_local(async move {
                relay.deliver_group(&view, &trace, &key, indexes).await
            }));
        }
        for task in tasks {
            match task.await {
                Ok(group) => outcomes.extend(group),
                Err(e) => warn!(queue_id = %id, error = %e, "delivery task failed"),
            }
        }
        let next = self.record(id, &view, outcomes).await;
        match (next, later) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Local recipients: into the INBOX of the user who owns the address.
    /// The mailbox refers to the spool record (no copy) and serves it
    /// behind a `Return-Path:` and the `Received:` trace.
    async fn deliver_local(
        &self,
        view: &MessageView,
        trace: &[u8],
        indexes: &[usize],
    ) -> Vec<(usize, AttemptOutcome)> {
        let mut outcomes = Vec::with_capacity(indexes.len());
        // Users who got their copy in this attempt.
        let mut filed: Vec<String> = Vec::new();
        for &index in indexes {
            let outcome = self.deliver_to_mailbox(view, trace, index, &filed).await;
            if let AttemptOutcome::Stored { user } = &outcome {
                filed.push(user.clone());
            }
            outcomes.push((index, outcome));
        }
        outcomes
    }

    /// Files recipient `index` for its owner, unless the owner is in
    /// `filed` already: a user reached by several recipients of one
    /// message (two of their addresses, or postmaster and their own) gets
    /// one copy, as Postfix's local delivery does, and the later
    /// recipients count as delivered.
    async fn deliver_to_mailbox(
        &self,
        view: &MessageView,
        trace: &[u8],
        index: usize,
        filed: &[String],
    ) -> AttemptOutcome {
        let temporary = |text: String| AttemptOutcome::Temporary {
            reply: ReceivedReply::local(451, (4, 3, 0), &text),
            host: None,
        };
        let Some(recipient) = view.envelope.recipients.get(index) else {
            return temporary(format!("recipient {index} out of range"));
        };
        // The user may have been removed since RCPT was accepted.
        let routes = Rc::clone(&self.settings.routes.borrow());
        let Some(user) = mailbox_owner(&self.settings.users, &routes, &recipient.address) else {
            if routes.is_postmaster(&recipient.address) {
                // Accepted without an owner (RFC 5321 4.5.1): it waits for
                // the operator to name one, and bounces only at lifetime.
                return temporary(
                    "no mailbox for postmaster yet: set [relay] postmaster to a user of the users file"
                        .into(),
                );
            }
            return AttemptOutcome::Permanent {
                reply: ReceivedReply::local(
                    550,
                    (5, 1, 1),
                    "user unknown in local recipient table",
                ),
                host: None,
            };
        };
        let mailboxes = match self.settings.mailboxes.user(user.name()) {
            Ok(m) => m,
            Err(e) => return temporary(format!("mailbox of {}: {e}", user.name())),
        };
        let stored = AttemptOutcome::Stored {
            user: user.name().to_owned(),
        };
        let rcpt = index as u32;
        if mailboxes.holds(view.id, rcpt) {
            // Stored before a crash cut the spool update short. Checked
            // before the duplicate rule: a held reference must stay
            // `InMailbox`, or the record could die under it.
            return stored;
        }
        if filed.iter().any(|name| name == user.name()) {
            return AttemptOutcome::Delivered {
                host: format!("mailbox of {} (one copy for the message)", user.name()),
            };
        }
        let mut prefix = format!("Return-Path: <{}>\r\n", view.envelope.sender).into_bytes();
        prefix.extend_from_slice(trace);
        let message = NewMessage {
            id: view.id,
            rcpt,
            size: (prefix.len() + view.data().len()) as u64,
            internal_date_ms: view.envelope.received_at_ms,
            prefix,
        };
        match mailboxes.deliver(INBOX, message, Flags::default()) {
            Ok((_uid, durable)) => match durable.await {
                Ok(()) => stored,
                Err(e) => temporary(format!("mailbox of {}: {e}", user.name())),
            },
            Err(MailboxError::AlreadyHeld { .. }) => stored,
            Err(e) => temporary(format!("mailbox of {}: {e}", user.name())),
        }
    }

    /// Persist the outcomes (queueing the DSN first when one is owed) and
    /// return the earliest retry time among them.
    async fn record(
        &self,
        id: QueueId,
        view: &MessageView,
        outcomes: Vec<(usize, AttemptOutcome)>,
    ) -> Option<u64> {
        let now = now_ms();
        let envelope = &view.envelope;
        let mut updates = Vec::with_capacity(outcomes.len());
        let mut bounces: Vec<(usize, BounceReport)> = Vec::new();
        for (index, outcome) in &outcomes {
            let previous = view
                .states
                .get(*index)
                .cloned()
                .unwrap_or(RecipientState::Pending);
            let (state, report) = settle(
                &previous,
                outcome,
                &self.settings.retry.get(),
                envelope.received_at_ms,
                now,
            );
            self.count_attempt(id, view, *index, outcome, &state, now);
            if let Some(report) = report {
                bounces.push((*index, report));
            }
            updates.push((*index, state));
        }
        if !bounces.is_empty() {
            if let Err(e) = self.queue_dsn(view, &bounces, now).await {
                // Without a durable DSN the bounce must not be final: try
                // the recipients again later, which bounces them again.
                warn!(queue_id = %id, error = %e, "cannot queue the DSN; bounce postponed");
                let retry_at = now + self.settings.retry.get().first_retry.as_millis() as u64;
                for (index, state) in updates.iter_mut() {
                    if let RecipientState::Bounced { reason } = state {
                        if bounces.iter().any(|(i, _)| i == index) {
                            *state = RecipientState::Deferred {
                                until_ms: retry_at,
                                attempts: 0,
                                last_error: reason.clone(),
                            };
                        }
                    }
                }
            }
        }
        let next = updates
            .iter()
            .filter_map(|(_, state)| match state {
                RecipientState::Deferred { until_ms, .. } => Some(*until_ms),
                _ => None,
            })
            .min();
        let commit = self.writer.borrow_mut().update_recipients(&id, &updates);
        match commit {
            Ok(commit) => {
                if let Err(e) = commit.await {
                    warn!(queue_id = %id, error = %e, "recipient states not persisted; will retry");
                }
            }
            Err(e) => {
                warn!(queue_id = %id, error = %e, "recipient states not persisted; will retry")
            }
        }
        next
    }

    fn count_attempt(
        &self,
        id: QueueId,
        view: &MessageView,
        index: usize,
        outcome: &AttemptOutcome,
        state: &RecipientState,
        now: u64,
    ) {
        let address = view
            .envelope
            .recipients
            .get(index)
            .map_or("", |r| r.address.as_str());
        let (result, class) = match (outcome, state) {
            (AttemptOutcome::Delivered { .. } | AttemptOutcome::Stored { .. }, _) => {
                ("delivered", "2xx")
            }
            (AttemptOutcome::Temporary { reply, .. }, RecipientState::Deferred { .. }) => {
                ("deferred", reply_class(reply))
            }
            (AttemptOutcome::Temporary { reply, .. }, _)
            | (AttemptOutcome::Permanent { reply, .. }, _) => ("bounced", reply_class(reply)),
        };
        metrics::counter!("tern_delivery_attempts_total", "result" => result, "class" => class)
            .increment(1);
        match (outcome, state) {
            (AttemptOutcome::Delivered { host }, _) => {
                let latency_ms = now.saturating_sub(view.envelope.received_at_ms);
                metrics::histogram!("tern_delivery_latency_seconds")
                    .record(latency_ms as f64 / 1000.0);
                info!(queue_id = %id, to = %address, relay = %host, delay_ms = latency_ms, "delivered");
            }
            (AttemptOutcome::Stored { user }, _) => {
                let latency_ms = now.saturating_sub(view.envelope.received_at_ms);
                metrics::histogram!("tern_delivery_latency_seconds")
                    .record(latency_ms as f64 / 1000.0);
                info!(queue_id = %id, to = %address, mailbox = %user, delay_ms = latency_ms, "delivered to mailbox");
            }
            (
                _,
                RecipientState::Deferred {
                    until_ms,
                    attempts,
                    last_error,
                },
            ) => info!(
                queue_id = %id, to = %address, attempts, retry_in_s = until_ms.saturating_sub(now) / 1000,
                error = %last_error, "deferred"
            ),
            (_, RecipientState::Bounced { reason }) => {
                info!(queue_id = %id, to = %address, reason = %reason, "bounced")
            }
            _ => {}
        }
    }

    /// Build and durably queue the DSN for `bounces`; Ok when none is owed.
    async fn queue_dsn(
        &self,
        view: &MessageView,
        bounces: &[(usize, BounceReport)],
        now: u64,
    ) -> Result<(), SpoolError> {
        let reports = bounces
            .iter()
            .map(|(index, report)| RecipientReport {
                index: *index,
                action: DsnAction::Failed,
                status: &report.status,
                diagnostic: Some(&report.diagnostic),
                remote_mta: report.remote_mta.as_deref(),
                last_attempt_ms: Some(now),
                will_retry_until_ms: None,
            })
            .collect();
        let request = BounceRequest {
            reporting_mta: &self.settings.hostname,
            envelope: &view.envelope,
            original: view.data(),
            reports,
            now_ms: now,
            message_id_domain: &self.settings.hostname,
        };
        let Some(dsn) = build_dsn(&request) else {
            return Ok(());
        };
        let (dsn_id, commit) = self.writer.borrow_mut().append(&dsn.envelope, &dsn.data)?;
        commit.await?;
        info!(queue_id = %dsn_id, original = %view.id, to = %dsn.recipient, "DSN queued");
        self.scheduler.submit(dsn_id);
        Ok(())
    }

    /// Deliver `indexes` of one message to one destination: every host in
    /// order, every address of a host, until one takes the transaction.
    async fn deliver_group(
        &self,
        view: &MessageView,
        trace: &[u8],
        key: &GroupKey,
        indexes: Vec<usize>,
    ) -> Vec<(usize, AttemptOutcome)> {
        let (targets, tls) = match self.targets(key).await {
            Ok(found) => found,
            Err(outcome) => return indexes.into_iter().map(|i| (i, outcome.clone())).collect(),
        };
        let mut last_failure: Option<(String, Option<ReceivedReply>)> = None;
        for (host, addrs) in &targets {
            for addr in addrs {
                let pool_key = PoolKey {
                    host: host.clone(),
                    addr: *addr,
                    tls,
                };
                // A pooled connection may have been closed by the peer while
                // idle; such a failure earns one fresh connection.
                for _ in 0..2 {
                    let (pooled, reused) = match self.connection(&pool_key).await {
                        Ok(found) => found,
                        Err(e) => {
                            debug!(host = %host, %addr, error = %e, "no connection");
                            let reply = match &e {
                                OpenError::Refused { reply, .. } => reply.clone(),
                                _ => None,
                            };
                            last_failure = Some((e.to_string(), reply));
                            break;
                        }
                    };
                    let tx = OutboundTransaction {
                        envelope: &view.envelope,
                        recipients: indexes.clone(),
                        trace,
                        data: view.data(),
                    };
                    let (result, alive) = self.pool.send(&pool_key, pooled, tx).await;
                    let stale = reused
                        && !alive
                        && result
                            .outcomes
                            .iter()
                            .all(|(_, o)| matches!(o, RecipientOutcome::TempFailed(_)));
                    if stale {
                        continue;
                    }
                    return collect_outcomes(&indexes, result.outcomes, host);
                }
            }
        }
        let (text, reply) =
            last_failure.unwrap_or_else(|| ("no address to connect to".into(), None));
        // A refusal at greeting or EHLO is not about the recipients: even a
        // 554 greeting is retried (RFC 5321 3.1 lets a server refuse a
        // connection for reasons that pass).
        let code = reply
            .as_ref()
            .map_or(451, |r| if r.class() == 4 { r.code } else { 451 });
        let reply = ReceivedReply::local(code, (4, 4, 1), &text);
        let outcome = AttemptOutcome::Temporary { reply, host: None };
        indexes.into_iter().map(|i| (i, outcome.clone())).collect()
    }

    /// An idle pooled connection, or a new one (falling back to cleartext
    /// when an opportunistic STARTTLS handshake fails, RFC 7435).
    async fn connection(&self, key: &PoolKey) -> Result<(Pooled<C::Stream>, bool), OpenError> {
        let permit = match self.pool.acquire(key).await {
            Acquired::Reused(pooled) => return Ok((*pooled, true)),
            Acquired::Open(permit) => permit,
        };
        let opened = self.open(key, key.tls).await;
        let opened = match opened {
            Err(OpenError::Tls { host, message }) if key.tls == OutboundTls::Opportunistic => {
                info!(host = %host, addr = %key.addr, error = %message,
                    "opportunistic STARTTLS failed; delivering in clear");
                metrics::counter!("tern_outbound_tls_fallbacks_total").increment(1);
                self.open(key, OutboundTls::Off).await
            }
            other => other,
        };
        match opened {
            Ok(conn) => {
                metrics::counter!("tern_outbound_connections_total", "result" => "ok").increment(1);
                Ok((self.pool.wrap(conn, permit), false))
            }
            Err(e) => {
                metrics::counter!("tern_outbound_connections_total", "result" => "error")
                    .increment(1);
                Err(e)
            }
        }
    }

    async fn open(
        &self,
        key: &PoolKey,
        tls: OutboundTls,
    ) -> Result<OutboundConnection<C::Stream>, OpenError> {
        let session_config = match self.session_configs.get(&tls) {
            Some(config) => Arc::clone(config),
            None => Arc::new(ClientConfig::new(
                self.settings.hostname.clone(),
                TlsPolicy::Off,
            )),
        };
        let tls_config = match (tls, &self.settings.tls_verified) {
            (OutboundTls::Verify, Some(verified)) => Arc::clone(verified),
            (OutboundTls::Verify, None) => {
                return Err(OpenError::Tls {
                    host: key.host.clone(),
                    message: "tls = \"verify\" without trust anchors".into(),
                })
            }
            _ => Arc::clone(&self.settings.tls_any),
        };
        OutboundConnection::open(
            &self.connector,
            key.addr,
            &key.host,
            session_config,
            tls_config,
            self.settings.connect_timeout,
        )
        .await
    }

    /// The hosts of a group, or the outcome for all its recipients when
    /// there are none.
    async fn targets(&self, key: &GroupKey) -> Result<(Targets, OutboundTls), AttemptOutcome> {
        match key {
            GroupKey::Static { next_hop: hop, tls } => {
                let addrs = self.next_hop_addresses(hop).await?;
                let name = match &hop.host {
                    HopHost::Name(name) => name.clone(),
                    HopHost::Ip(ip) => ip.to_string(),
                };
                let addrs = addrs
                    .into_iter()
                    .map(|ip| SocketAddr::new(ip, hop.port))
                    .collect();
                Ok((vec![(name, addrs)], *tls))
            }
            GroupKey::Mx { domain, port, tls } => match self.resolver.route(domain).await {
                Ok(route) => Ok((
                    route
                        .hosts
                        .into_iter()
                        .map(|host| {
                            let addrs = host
                                .addrs
                                .iter()
                                .map(|ip| SocketAddr::new(*ip, *port))
                                .collect();
                            (host.name, addrs)
                        })
                        .collect(),
                    *tls,
                )),
                Err(error) => Err(route_failure(domain, &error)),
            },
        }
    }

    /// A configured next hop's addresses: literal, or looked up with the
    /// system resolver (so /etc/hosts applies, as an operator expects for
    /// names they wrote themselves), cached briefly.
    async fn next_hop_addresses(&self, hop: &NextHop) -> Result<Vec<IpAddr>, AttemptOutcome> {
        let name = match &hop.host {
            HopHost::Ip(ip) => return Ok(vec![*ip]),
            HopHost::Name(name) => name,
        };
        if let Some((at, addrs)) = self.next_hop_addresses.borrow().get(hop) {
            if at.elapsed() < NEXT_HOP_ADDRESS_TTL {
                return Ok(addrs.clone());
            }
        }
        let failure = |text: String| AttemptOutcome::Temporary {
            reply: ReceivedReply::local(451, (4, 4, 3), &text),
            host: None,
        };
        let found = tokio::net::lookup_host((name.as_str(), hop.port))
            .await
            .map_err(|e| failure(format!("next hop {name}: {e}")))?;
        let mut addrs: Vec<IpAddr> = found.map(|a| a.ip()).collect();
        addrs.dedup();
        if addrs.is_empty() {
            return Err(failure(format!("next hop {name}: no address")));
        }
        self.next_hop_addresses
            .borrow_mut()
            .insert(hop.clone(), (Instant::now(), addrs.clone()));
        Ok(addrs)
    }
}

fn domain_of(address: &str) -> String {
    address
        .rsplit_once('@')
        .map(|(_, domain)| domain.trim_end_matches('.').to_ascii_lowercase())
        .unwrap_or_default()
}

fn reply_class(reply: &ReceivedReply) -> &'static str {
    if reply.text.starts_with("local:") && reply.class() == 4 {
        // No reply from a peer: connection, DNS or local trouble.
        return "none";
    }
    class_label(reply.code)
}

fn route_failure(domain: &str, error: &RouteError) -> AttemptOutcome {
    let (code, status) = error.smtp_status();
    let mut parts = status.split('.').map(|p| p.parse::<u16>().unwrap_or(0));
    let enhanced = (
        parts.next().unwrap_or(4) as u8,
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    );
    let reply = ReceivedReply::local(code, enhanced, &format!("{domain}: {error}"));
    if error.is_permanent() {
        AttemptOutcome::Permanent { reply, host: None }
    } else {
        AttemptOutcome::Temporary { reply, host: None }
    }
}

/// The transaction's outcomes for `indexes`; a recipient the session gave
/// no outcome (connection lost) is a temporary failure.
fn collect_outcomes(
    indexes: &[usize],
    outcomes: Vec<(usize, RecipientOutcome)>,
    host: &str,
) -> Vec<(usize, AttemptOutcome)> {
    let mut by_index: HashMap<usize, RecipientOutcome> = outcomes.into_iter().collect();
    indexes
        .iter()
        .map(|index| {
            let outcome = match by_index.remove(index) {
                Some(RecipientOutcome::Delivered(_)) => AttemptOutcome::Delivered {
                    host: host.to_owned(),
                },
                Some(RecipientOutcome::TempFailed(reply)) => AttemptOutcome::Temporary {
                    reply,
                    host: Some(host.to_owned()),
                },
                Some(RecipientOutcome::PermFailed(reply)) => AttemptOutcome::Permanent {
                    reply,
                    host: Some(host.to_owned()),
                },
                None => AttemptOutcome::Temporary {
                    reply: ReceivedReply::local(451, (4, 4, 2), "connection lost"),
                    host: Some(host.to_owned()),
                },
            };
            (*index, outcome)
        })
        .collect()
}
