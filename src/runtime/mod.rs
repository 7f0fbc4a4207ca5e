//! The per-core runtime: one OS thread per core, each with its own event
//! loop (plain tokio or tokio-uring), its own `SO_REUSEPORT` listeners and
//! its own spool writer. Nothing is shared on the accept or receive path.
//!
//! This module must never hold protocol logic; it binds, spawns, drives
//! and shuts down.

pub mod admin;
pub mod admission;
pub mod imap_backend;
pub mod imap_conn;
pub mod listener;
pub mod mailbox_append;
pub mod outbound;
pub mod pop3_backend;
pub mod pop3_conn;
pub mod session_io;
pub mod smtp_conn;
pub mod tls;
pub mod transport;

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tracing::{debug, error, info, warn};

use crate::config::{Config, IoMode, OutboundTls};
use crate::imap::ImapConfig;
use crate::limits::SessionLimits;
use crate::mailbox::MailboxStore;
use crate::pop3::Pop3Config;
use crate::queue::retry::RetryPolicy;
use crate::queue::scheduler::Scheduler;
use crate::relay::connection::Connector;
use crate::relay::delivery::{self, Relay, RelaySettings};
use crate::relay::dns::{DnsConfig, MxResolver};
use crate::relay::pool::ConnectionPool;
use crate::relay::recipient_check::RecipientCheck;
use crate::relay::routing::RouteTable;
use crate::smtp::{RelayAccess, SessionConfig};
use crate::spool::SpoolWriter;
use crate::spool::{QueueId, RecipientState, Spool, SpoolConfig, SpoolError};
use crate::users::UsersHandle;
use admin::{AdminCommand, AdminRequest, AdminSocket};
use admission::{Admission, AdmissionConfig, Permit, Refusal};
use imap_backend::ImapStores;
use imap_conn::ImapContext;
use listener::{Acceptor, BoundAddress, ListenerKind};
use outbound::{CertCheck, TokioConnector, UringConnector};
use pop3_backend::{MaildropLocks, Pop3Stores};
use pop3_conn::Pop3Context;
use smtp_conn::CoreContext;
use transport::Transport;

/// Folder of the mailbox journals inside the spool directory.
const MAILBOX_DIR: &str = "mailboxes";
/// Per query attempt; hickory's default.
const DNS_QUERY_TIMEOUT: Duration = Duration::from_secs(5);
/// Attempts per query (hickory's default), across the configured servers.
const DNS_QUERY_ATTEMPTS: usize = 2;
/// A refusal is one short line into a fresh socket's empty buffer; a peer
/// that does not take even that is dropped.
const REFUSAL_WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// The I/O driver a server runs on, after `auto` is resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    Epoll,
    Uring,
}

impl Driver {
    /// `auto` picks epoll: on the project's machine plain tokio ran 10-25%
    /// faster than tokio-uring 0.5 (see README, loadtest/accept.sh), and
    /// tokio-uring has had no release since 2024-05.
    pub fn from_mode(mode: IoMode) -> Driver {
        match mode {
            IoMode::Auto | IoMode::Epoll => Driver::Epoll,
            IoMode::Uring => Driver::Uring,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Driver::Epoll => "epoll",
            Driver::Uring => "uring",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("[spool] dir = {dir}: {source}")]
    Spool {
        dir: String,
        #[source]
        source: SpoolError,
    },
    #[error("{key} = {addr}: cannot listen: {source}")]
    Bind {
        key: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] tls::TlsSetupError),
    #[error("core {core}: {message}")]
    Core { core: usize, message: String },
    #[error("{key}: {message}")]
    Setting { key: &'static str, message: String },
    #[error("admin socket in {dir}: {source}")]
    Admin {
        dir: String,
        #[source]
        source: std::io::Error,
    },
}

/// A running server. Dropping it does not stop it; call `shutdown`.
pub struct ServerHandle {
    pub smtp_addrs: Vec<SocketAddr>,
    pub submission_addrs: Vec<SocketAddr>,
    pub pop3_addrs: Vec<SocketAddr>,
    pub pop3_tls_addrs: Vec<SocketAddr>,
    pub imap_addrs: Vec<SocketAddr>,
    pub imap_tls_addrs: Vec<SocketAddr>,
    pub driver: Driver,
    pub spool: Arc<Spool>,
    /// Local users' mailboxes (their messages stay in the spool).
    pub mailboxes: Arc<MailboxStore>,
    shutdown: watch::Sender<bool>,
    threads: Vec<JoinHandle<()>>,
    admin: Option<AdminSocket>,
}

impl ServerHandle {
    /// Stop accepting, let sessions finish for up to the configured
    /// shutdown timeout, then close the spool (pending syncs complete).
    pub fn shutdown(mut self) {
        if let Some(admin) = self.admin.take() {
            admin.stop();
        }
        let _ = self.shutdown.send(true);
        for thread in self.threads {
            if thread.join().is_err() {
                error!("a core thread panicked during shutdown");
            }
        }
        self.spool.close();
    }
}

/// Everything one core thread needs, moved into it.
struct CoreSetup {
    core: usize,
    driver: Driver,
    listeners: Vec<(ListenerKind, std::net::TcpListener)>,
    spool: Arc<Spool>,
    session_config: Arc<SessionConfig>,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: watch::Receiver<bool>,
    shutdown_timeout: Duration,
    ready: mpsc::Sender<Result<(), String>>,
    relay: CoreRelay,
    /// Mailbox releases to persist (core 0 only).
    releases: Option<tokio::sync::mpsc::UnboundedReceiver<(QueueId, u32)>>,
    pop3_config: Arc<Pop3Config>,
    imap_config: Arc<ImapConfig>,
    maildrop_locks: Arc<MaildropLocks>,
    admission: Arc<Admission>,
}

/// What one core's delivery worker is built from.
struct CoreRelay {
    parts: RelayParts,
    /// Messages recovered from the spool that this core delivers.
    recovered: Vec<(QueueId, Vec<RecipientState>)>,
    admin: tokio::sync::mpsc::UnboundedReceiver<AdminRequest>,
}

/// Open the spool (recovering it), bind every listener on every core and
/// start the core threads. Returns once every core is accepting.
pub fn start(config: &Config) -> Result<ServerHandle, StartError> {
    let cores = config.worker_count();
    let driver = Driver::from_mode(config.server.io);
    let tls = match (&config.tls.cert, &config.tls.key) {
        (Some(cert), Some(key)) => Some(tls::load_server_config(cert, key)?),
        _ => None,
    };
    let limits = &config.limits;
    let session_limits = SessionLimits {
        hard_error_limit: limits.hard_error_limit,
        data_min_rate: limits.data_min_rate,
    };
    let admission = Admission::new(
        AdmissionConfig {
            max_connections: limits.max_connections,
            max_connections_per_ip: limits.max_connections_per_ip,
            max_connection_rate_per_ip: limits.max_connection_rate_per_ip,
            exempt: if limits.mynetworks_exempt {
                config.relay.mynetworks.clone()
            } else {
                Vec::new()
            },
        },
        Instant::now(),
    );
    let session_config = Arc::new(SessionConfig {
        hostname: config.hostname(),
        max_message_size: config.smtp.max_message_size,
        max_recipients: config.smtp.max_recipients,
        starttls_available: tls.is_some(),
        command_timeout: config.smtp.command_timeout,
        data_timeout: config.smtp.data_timeout,
        relay_access: RelayAccess::new(
            &config.relay.mynetworks,
            &config.relay.local_domains,
            &config.relay.relay_domains,
        ),
        limits: session_limits,
        max_messages_per_connection: limits.max_messages_per_connection,
    });

    let mut bound: Vec<BoundAddress> = Vec::new();
    for (key, kind, addrs) in [
        ("[smtp] listen", ListenerKind::Smtp, &config.smtp.listen),
        (
            "[smtp] submission",
            ListenerKind::Submission,
            &config.smtp.submission,
        ),
        ("[pop3] listen", ListenerKind::Pop3, &config.pop3.listen),
        (
            "[pop3] tls_listen",
            ListenerKind::Pop3Tls,
            &config.pop3.tls_listen,
        ),
        ("[imap] listen", ListenerKind::Imap, &config.imap.listen),
        (
            "[imap] tls_listen",
            ListenerKind::ImapTls,
            &config.imap.tls_listen,
        ),
    ] {
        for &addr in addrs {
            let b = listener::bind_per_core(kind, addr, cores)
                .map_err(|source| StartError::Bind { key, addr, source })?;
            bound.push(b);
        }
    }
    let smtp_addrs = addrs_of(&bound, ListenerKind::Smtp);
    let mut kinds: Vec<ListenerKind> = bound.iter().map(|b| b.kind).collect();
    kinds.dedup();
    smtp_conn::register_metrics(&kinds);
    pop3_conn::register_metrics();
    imap_conn::register_metrics();
    register_refusal_metrics(&kinds);
    crate::limits::register_metrics();
    crate::mailbox::register_metrics();
    let submission_addrs = addrs_of(&bound, ListenerKind::Submission);
    let pop3_addrs = addrs_of(&bound, ListenerKind::Pop3);
    let pop3_tls_addrs = addrs_of(&bound, ListenerKind::Pop3Tls);
    let imap_addrs = addrs_of(&bound, ListenerKind::Imap);
    let imap_tls_addrs = addrs_of(&bound, ListenerKind::ImapTls);
    let imap_config = Arc::new(ImapConfig {
        hostname: config.hostname(),
        starttls_available: tls.is_some(),
        allow_plaintext_auth: config.imap.allow_plaintext_auth,
        literal_max: config.smtp.max_message_size,
        autologout: limits.imap_autologout,
        limits: session_limits,
    });
    let pop3_config = Arc::new(Pop3Config {
        hostname: config.hostname(),
        stls_available: tls.is_some(),
        allow_plaintext_auth: config.pop3.allow_plaintext_auth,
        autologout: limits.pop3_autologout,
        limits: session_limits,
    });
    let maildrop_locks = Arc::new(MaildropLocks::default());

    let spool = Spool::open(SpoolConfig {
        dir: config.spool.dir.clone(),
        segment_size: config.spool.segment_size,
        max_size: config.spool.max_size,
    })
    .map_err(|source| StartError::Spool {
        dir: config.spool.dir.display().to_string(),
        source,
    })?;

    // A mailbox lets go of a message on the commit thread; the spool
    // writer lives on a core, so the release travels to core 0.
    let (release_tx, release_rx) = tokio::sync::mpsc::unbounded_channel::<(QueueId, u32)>();
    let mailbox_dir = config.spool.dir.join(MAILBOX_DIR);
    let for_store = release_tx.clone();
    let mailboxes = MailboxStore::open(
        &mailbox_dir,
        Box::new(move |id, rcpt| {
            let _ = for_store.send((id, rcpt));
        }),
    )
    .map_err(|e| StartError::Setting {
        key: "[spool] dir",
        message: format!("mailboxes in {}: {e}", mailbox_dir.display()),
    })?;
    let relay_parts = RelayParts::from_config(config, cores, &mailboxes)?;
    delivery::register_metrics();
    // Each core delivers the recovered messages of some segments: spread
    // by segment so that the cores share the backlog after a restart.
    let mut recovered: Vec<Vec<(QueueId, Vec<RecipientState>)>> =
        (0..cores).map(|_| Vec::new()).collect();
    for message in spool.queued() {
        find_lost_releases(&message, &relay_parts.users, &mailboxes, &release_tx);
        let core = (message.id.segment_seq() % cores as u64) as usize;
        recovered[core].push((message.id, message.states));
    }
    drop(release_tx);
    let mut release_rx = Some(release_rx);
    let mut admin_senders = Vec::with_capacity(cores);

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (ready_tx, ready_rx) = mpsc::channel();
    let mut per_core: Vec<Vec<(ListenerKind, std::net::TcpListener)>> =
        (0..cores).map(|_| Vec::new()).collect();
    for b in bound {
        for (core, socket) in b.per_core.into_iter().enumerate() {
            per_core[core].push((b.kind, socket));
        }
    }
    let mut threads = Vec::with_capacity(cores);
    for ((core, listeners), recovered) in per_core.into_iter().enumerate().zip(recovered) {
        let (admin_tx, admin_rx) = tokio::sync::mpsc::unbounded_channel();
        admin_senders.push(admin_tx);
        let setup = CoreSetup {
            relay: relay_parts.for_core(recovered, admin_rx),
            releases: release_rx.take(),
            pop3_config: Arc::clone(&pop3_config),
            imap_config: Arc::clone(&imap_config),
            maildrop_locks: Arc::clone(&maildrop_locks),
            admission: Arc::clone(&admission),
            core,
            driver,
            listeners,
            spool: spool.clone(),
            session_config: session_config.clone(),
            tls: tls.clone(),
            shutdown: shutdown_rx.clone(),
            shutdown_timeout: config.server.shutdown_timeout,
            ready: ready_tx.clone(),
        };
        let thread = std::thread::Builder::new()
            .name(format!("tern-core-{core}"))
            .spawn(move || run_core(setup))
            .map_err(|e| StartError::Core {
                core,
                message: format!("cannot start thread: {e}"),
            })?;
        threads.push(thread);
    }
    drop(ready_tx);
    let mut handle = ServerHandle {
        smtp_addrs,
        submission_addrs,
        pop3_addrs,
        pop3_tls_addrs,
        imap_addrs,
        imap_tls_addrs,
        driver,
        spool,
        mailboxes,
        shutdown: shutdown_tx,
        threads,
        admin: None,
    };
    for core in 0..cores {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(message)) => {
                handle.shutdown();
                return Err(StartError::Core { core, message });
            }
            Err(_) => {
                handle.shutdown();
                return Err(StartError::Core {
                    core,
                    message: "core thread exited before it was ready".into(),
                });
            }
        }
    }
    match AdminSocket::start(&config.spool.dir, admin_senders) {
        Ok(admin) => handle.admin = Some(admin),
        Err(source) => {
            handle.shutdown();
            return Err(StartError::Admin {
                dir: config.spool.dir.display().to_string(),
                source,
            });
        }
    }
    info!(
        cores,
        io = driver.name(),
        hold = config.relay.hold,
        smtp = ?handle.smtp_addrs,
        submission = ?handle.submission_addrs,
        pop3 = ?handle.pop3_addrs,
        pop3s = ?handle.pop3_tls_addrs,
        imap = ?handle.imap_addrs,
        imaps = ?handle.imap_tls_addrs,
        starttls = session_config.starttls_available,
        "tern accepting"
    );
    Ok(handle)
}

/// The relay settings every core shares, checked once at start.
#[derive(Clone)]
struct RelayParts {
    hold: bool,
    routes: RouteTable,
    dns: DnsConfig,
    retry: RetryPolicy,
    connect_timeout: Duration,
    per_destination: usize,
    max_messages_per_connection: usize,
    idle_timeout: Duration,
    hostname: String,
    tls_any: Arc<rustls::ClientConfig>,
    tls_verified: Option<Arc<rustls::ClientConfig>>,
    users: UsersHandle,
    mailboxes: Arc<MailboxStore>,
}

impl RelayParts {
    fn from_config(
        config: &Config,
        cores: usize,
        mailboxes: &Arc<MailboxStore>,
    ) -> Result<RelayParts, StartError> {
        let relay = &config.relay;
        let routes = RouteTable::new(relay).map_err(|e| StartError::Setting {
            key: "[relay.routes]",
            message: e.to_string(),
        })?;
        let verify_wanted = relay.tls == OutboundTls::Verify
            || relay
                .routes
                .values()
                .any(|r| r.tls() == Some(OutboundTls::Verify));
        let tls_verified = if verify_wanted {
            let roots = match &relay.tls_ca_file {
                Some(path) => outbound::roots_from_pem(path).map_err(|e| StartError::Setting {
                    key: "[relay] tls_ca_file",
                    message: e.to_string(),
                })?,
                None => outbound::system_roots().map_err(|e| StartError::Setting {
                    key: "[relay] tls",
                    message: format!(
                        "\"verify\" needs trust anchors: {e}; set [relay] tls_ca_file"
                    ),
                })?,
            };
            Some(outbound::client_config(CertCheck::Roots(Arc::new(roots))))
        } else {
            None
        };
        Ok(RelayParts {
            hold: relay.hold,
            routes,
            dns: DnsConfig {
                nameservers: (!relay.nameservers.is_empty()).then(|| relay.nameservers.clone()),
                timeout: DNS_QUERY_TIMEOUT,
                attempts: DNS_QUERY_ATTEMPTS,
            },
            retry: RetryPolicy {
                first_retry: relay.first_retry,
                max_retry: relay.max_retry,
                lifetime: relay.lifetime,
            },
            connect_timeout: relay.connect_timeout,
            // The server-wide limit split over the cores, rounded up so
            // that every core can reach every destination.
            per_destination: relay.max_connections_per_destination.div_ceil(cores),
            max_messages_per_connection: relay.max_messages_per_connection,
            idle_timeout: relay.connection_idle_timeout,
            hostname: config.hostname(),
            tls_any: outbound::client_config(CertCheck::None),
            tls_verified,
            users: UsersHandle::open(&config.users.file).map_err(|e| StartError::Setting {
                key: "[users] file",
                message: e.to_string(),
            })?,
            mailboxes: Arc::clone(mailboxes),
        })
    }

    fn for_core(
        &self,
        recovered: Vec<(QueueId, Vec<RecipientState>)>,
        admin: tokio::sync::mpsc::UnboundedReceiver<AdminRequest>,
    ) -> CoreRelay {
        CoreRelay {
            parts: self.clone(),
            recovered,
            admin,
        }
    }
}

fn addrs_of(bound: &[BoundAddress], kind: ListenerKind) -> Vec<SocketAddr> {
    bound
        .iter()
        .filter(|b| b.kind == kind)
        .map(|b| b.local)
        .collect()
}

fn run_core(setup: CoreSetup) {
    let ready = setup.ready.clone();
    let core = setup.core;
    let outcome = match setup.driver {
        Driver::Epoll => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot build the tokio runtime: {e}"))
            .map(|rt| {
                let local = tokio::task::LocalSet::new();
                local.block_on(
                    &rt,
                    core_main(
                        setup,
                        |l| tokio::net::TcpListener::from_std(l),
                        TokioConnector,
                    ),
                );
            }),
        Driver::Uring => tokio_uring::Runtime::new(&tokio_uring::builder())
            .map_err(|e| {
                format!(
                    "[server] io = \"uring\": io_uring is unavailable here ({e}); use \"epoll\""
                )
            })
            .map(|rt| {
                rt.block_on(core_main(
                    setup,
                    |l| Ok(tokio_uring::net::TcpListener::from_std(l)),
                    UringConnector,
                ))
            }),
    };
    if let Err(message) = outcome {
        error!(core, "{message}");
        let _ = ready.send(Err(message));
    }
}

/// The body of one core: a spool writer, one accept loop per listener, the
/// delivery worker, and the shutdown wait.
async fn core_main<A, F, C>(setup: CoreSetup, adopt: F, connector: C)
where
    A: Acceptor + 'static,
    F: Fn(std::net::TcpListener) -> std::io::Result<A>,
    C: Connector + 'static,
{
    let CoreSetup {
        core,
        listeners,
        spool,
        session_config,
        tls,
        mut shutdown,
        shutdown_timeout,
        ready,
        relay,
        releases,
        pop3_config,
        imap_config,
        maildrop_locks,
        admission,
        ..
    } = setup;
    let writer = match spool.writer(core) {
        Ok(w) => w,
        Err(e) => {
            let _ = ready.send(Err(format!("spool writer: {e}")));
            return;
        }
    };
    let writer = Rc::new(RefCell::new(writer));
    let CoreRelay {
        parts,
        recovered,
        admin,
    } = relay;
    let scheduler = Rc::new(Scheduler::new(parts.hold));
    let resolver = match MxResolver::new(&parts.dns) {
        Ok(r) => Rc::new(r),
        Err(e) => {
            let _ = ready.send(Err(format!("[relay] nameservers: {e}")));
            return;
        }
    };
    schedule_recovered(&scheduler, recovered);
    let routes = Rc::new(parts.routes);
    let recipient_hook = Rc::new(RecipientCheck::new(
        Rc::clone(&resolver),
        Rc::clone(&routes),
        parts.users.clone(),
    ));
    let delivery = Rc::new(Relay::new(
        RelaySettings {
            hostname: parts.hostname,
            routes,
            retry: parts.retry,
            connect_timeout: parts.connect_timeout,
            tls_any: parts.tls_any,
            tls_verified: parts.tls_verified,
            users: parts.users.clone(),
            mailboxes: Arc::clone(&parts.mailboxes),
        },
        Rc::clone(&scheduler),
        Arc::clone(&spool),
        Rc::clone(&writer),
        Rc::clone(&resolver),
        Rc::new(ConnectionPool::new(
            parts.per_destination,
            parts.max_messages_per_connection,
            parts.idle_timeout,
        )),
        connector,
    ));
    let delivery_loop = tokio::task::spawn_local(delivery.run(shutdown.clone()));
    if let Some(releases) = releases {
        tokio::task::spawn_local(persist_releases(releases, Rc::clone(&writer)));
    }
    tokio::task::spawn_local(serve_admin(admin, Rc::clone(&scheduler)));
    let pop3 = Rc::new(Pop3Context {
        config: pop3_config,
        stores: Rc::new(Pop3Stores {
            users: parts.users.clone(),
            mailboxes: Arc::clone(&parts.mailboxes),
            spool: Arc::clone(&spool),
            locks: maildrop_locks,
        }),
        tls: tls.clone(),
    });
    let imap = Rc::new(ImapContext {
        config: imap_config,
        stores: Rc::new(ImapStores {
            users: parts.users.clone(),
            mailboxes: Arc::clone(&parts.mailboxes),
            spool: Arc::clone(&spool),
            writer: Rc::clone(&writer),
        }),
        tls: tls.clone(),
    });
    let ctx = Rc::new(CoreContext {
        core,
        session_config,
        tls,
        pop3,
        imap,
        spool: writer,
        scheduler: Rc::clone(&scheduler),
        recipient_hook,
    });
    let active = Rc::new(Cell::new(0usize));
    let mut accept_loops = Vec::new();
    for (kind, std_listener) in listeners {
        let acceptor = match adopt(std_listener) {
            Ok(a) => a,
            Err(e) => {
                let _ = ready.send(Err(format!("cannot register listener: {e}")));
                return;
            }
        };
        accept_loops.push(tokio::task::spawn_local(accept_loop(
            acceptor,
            kind,
            ctx.clone(),
            Arc::clone(&admission),
            active.clone(),
            shutdown.clone(),
        )));
    }
    let _ = ready.send(Ok(()));
    drop(ready);

    while !*shutdown.borrow() {
        if shutdown.changed().await.is_err() {
            break;
        }
    }
    for task in &accept_loops {
        task.abort();
    }
    let deadline = Instant::now() + shutdown_timeout;
    while (active.get() > 0 || scheduler.active() > 0) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if active.get() > 0 || scheduler.active() > 0 {
        warn!(
            core = ctx.core,
            sessions = active.get(),
            deliveries = scheduler.active(),
            "shutdown timeout: closing open sessions and deliveries (they are retried after restart)"
        );
    }
    let _ = delivery_loop.await;
}

/// Queue what the spool held at start: recipients still pending go now
/// (or wait for a release under hold), deferred ones keep their time.
fn schedule_recovered(scheduler: &Scheduler, recovered: Vec<(QueueId, Vec<RecipientState>)>) {
    for (id, states) in recovered {
        let pending = states.iter().any(|s| matches!(s, RecipientState::Pending));
        let next_retry = states
            .iter()
            .filter_map(|s| match s {
                RecipientState::Deferred { until_ms, .. } => Some(*until_ms),
                _ => None,
            })
            .min();
        match (pending, next_retry) {
            (true, _) => scheduler.submit(id),
            (false, Some(until_ms)) => scheduler.defer(id, until_ms),
            (false, None) => {}
        }
    }
}

/// A recipient whose message a mailbox no longer holds is delivered for
/// good: its record may go. Runs on core 0 for the whole store.
async fn persist_releases(
    mut releases: tokio::sync::mpsc::UnboundedReceiver<(QueueId, u32)>,
    writer: Rc<RefCell<SpoolWriter>>,
) {
    while let Some((id, rcpt)) = releases.recv().await {
        let update = [(rcpt as usize, RecipientState::Delivered)];
        let commit = writer.borrow_mut().update_recipients(&id, &update);
        let result = match commit {
            Ok(commit) => commit.await,
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => debug!(queue_id = %id, rcpt, "released by its mailbox"),
            // The record stays; the next start finds the release again.
            Err(e) => warn!(queue_id = %id, rcpt, error = %e, "mailbox release not persisted"),
        }
    }
}

/// A crash between a mailbox expunge and the spool update leaves a
/// recipient `InMailbox` that no mailbox holds: release it again.
fn find_lost_releases(
    message: &crate::spool::QueuedMessage,
    users: &UsersHandle,
    mailboxes: &MailboxStore,
    releases: &tokio::sync::mpsc::UnboundedSender<(QueueId, u32)>,
) {
    for (index, state) in message.states.iter().enumerate() {
        if *state != RecipientState::InMailbox {
            continue;
        }
        let Some(recipient) = message.envelope.recipients.get(index) else {
            continue;
        };
        // A removed user's mail has no reader left; a mailbox that cannot
        // be opened keeps everything (never release what may be held).
        let held = match users.find_login(&recipient.address) {
            None => false,
            Some(user) => match mailboxes.user(user.name()) {
                Ok(mailbox) => mailbox.holds(message.id, index as u32),
                Err(e) => {
                    warn!(user = user.name(), error = %e, "mailbox unreadable at start; its messages stay");
                    true
                }
            },
        };
        if !held {
            let _ = releases.send((message.id, index as u32));
        }
    }
}

/// Answer admin commands for this core.
async fn serve_admin(
    mut requests: tokio::sync::mpsc::UnboundedReceiver<AdminRequest>,
    scheduler: Rc<Scheduler>,
) {
    while let Some(request) = requests.recv().await {
        let count = match request.command {
            AdminCommand::Release => scheduler.release(),
            AdminCommand::Flush => scheduler.flush(),
        };
        let _ = request.reply.send(count);
    }
}

/// `tern_connections_refused_total` at zero for every listener and reason.
fn register_refusal_metrics(kinds: &[ListenerKind]) {
    for kind in kinds {
        for refusal in Refusal::ALL {
            metrics::counter!(
                "tern_connections_refused_total",
                "listener" => kind.label(),
                "reason" => refusal.label()
            )
            .increment(0);
        }
    }
}

/// Turn away a connection `admission` refused: the protocol's refusal in
/// place of its greeting, then close. An implicit-TLS listener closes
/// without a word: a TLS handshake costs more than the refusal protects.
async fn refuse<T: Transport>(mut stream: T, kind: ListenerKind, refusal: Refusal, hostname: &str) {
    let reply = match kind {
        ListenerKind::Smtp | ListenerKind::Submission => {
            crate::smtp::reply::connection_refused(hostname, refusal.text())
        }
        ListenerKind::Pop3 => crate::pop3::response::connection_refused(refusal.text()),
        ListenerKind::Imap => crate::imap::response::connection_refused(refusal.text()),
        ListenerKind::Pop3Tls | ListenerKind::ImapTls => return,
    };
    let _ = tokio::time::timeout(REFUSAL_WRITE_TIMEOUT, stream.write_all(reply)).await;
}

async fn accept_loop<A: Acceptor + 'static>(
    acceptor: A,
    kind: ListenerKind,
    ctx: Rc<CoreContext>,
    admission: Arc<Admission>,
    active: Rc<Cell<usize>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let label = kind.label();
    loop {
        let accepted = tokio::select! {
            r = acceptor.accept() => r,
            _ = shutdown.changed() => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                metrics::counter!("tern_connections_total", "listener" => label).increment(1);
                let permit: Permit = match admission.admit(peer.ip(), Instant::now()) {
                    Ok(permit) => permit,
                    Err(refusal) => {
                        metrics::counter!(
                            "tern_connections_refused_total",
                            "listener" => label,
                            "reason" => refusal.label()
                        )
                        .increment(1);
                        // Not info: a flood of refusals must not flood the log
                        // too (the metric counts them).
                        debug!(%peer, listener = label, reason = refusal.label(), "connection refused");
                        let hostname = ctx.session_config.hostname.clone();
                        tokio::task::spawn_local(async move {
                            refuse(stream, kind, refusal, &hostname).await
                        });
                        continue;
                    }
                };
                let gauge = metrics::gauge!("tern_connections_active", "listener" => label);
                gauge.increment(1.0);
                active.set(active.get() + 1);
                let ctx = ctx.clone();
                let active = active.clone();
                let session_shutdown = shutdown.clone();
                tokio::task::spawn_local(async move {
                    match kind {
                        ListenerKind::Smtp | ListenerKind::Submission => {
                            smtp_conn::serve(stream, peer, kind, ctx, session_shutdown).await
                        }
                        ListenerKind::Pop3 | ListenerKind::Pop3Tls => {
                            let implicit_tls = kind == ListenerKind::Pop3Tls;
                            let pop3 = Rc::clone(&ctx.pop3);
                            pop3_conn::serve(stream, peer, implicit_tls, pop3, session_shutdown)
                                .await
                        }
                        ListenerKind::Imap | ListenerKind::ImapTls => {
                            let implicit_tls = kind == ListenerKind::ImapTls;
                            let imap = Rc::clone(&ctx.imap);
                            imap_conn::serve(stream, peer, implicit_tls, imap, session_shutdown)
                                .await
                        }
                    }
                    drop(permit);
                    active.set(active.get() - 1);
                    gauge.decrement(1.0);
                });
            }
            Err(e) => {
                // EMFILE/ENFILE and friends: back off instead of spinning.
                warn!(listener = label, error = %e, "accept failed");
                metrics::counter!("tern_accept_errors_total", "listener" => label).increment(1);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
