//! The per-core runtime: one OS thread per core, each with its own event
//! loop (plain tokio or tokio-uring), its own `SO_REUSEPORT` listeners and
//! its own spool writer. Nothing is shared on the accept or receive path.
//!
//! This module must never hold protocol logic; it binds, spawns, drives
//! and shuts down.

pub mod admin;
pub mod admission;
pub mod auth_throttle;
pub mod compaction;
pub mod imap_backend;
pub mod imap_conn;
pub mod listener;
pub mod mailbox_append;
pub mod outbound;
pub mod pop3_backend;
pub mod pop3_conn;
pub mod reload;
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

use crate::config::{Config, IoMode, RelaySection, Source};
use crate::mailauth::InboundAuth;
use crate::mailbox::MailboxStore;
use crate::queue::hold::HoldList;
use crate::queue::scheduler::Scheduler;
use crate::relay::connection::Connector;
use crate::relay::delivery::{self, Relay, RelaySettings};
use crate::relay::dns::{DnsConfig, MxResolver};
use crate::relay::pool::ConnectionPool;
use crate::relay::recipient_check::RecipientCheck;
use crate::relay::routing::RouteTable;
use crate::spool::SpoolWriter;
use crate::spool::{QueueId, RecipientState, Spool, SpoolConfig, SpoolError};
use crate::users::UsersHandle;
use admin::{AdminRequest, AdminSocket, CoreOrder};
use admission::{Admission, Permit, Refusal};
use auth_throttle::AuthThrottle;
use imap_backend::ImapStores;
use imap_conn::ImapContext;
use listener::{Acceptor, BoundAddress, ListenerKind};
use outbound::{CertCheck, TokioConnector, UringConnector};
use pop3_backend::{MaildropLocks, Pop3Stores};
use pop3_conn::Pop3Context;
use reload::LiveSettings;
use smtp_conn::CoreContext;
use transport::Transport;

/// Folder of the mailbox journals inside the spool directory.
const MAILBOX_DIR: &str = "mailboxes";
/// Per query attempt; hickory's default.
const DNS_QUERY_TIMEOUT: Duration = Duration::from_secs(5);
/// Attempts per query (hickory's default), across the configured servers.
const DNS_QUERY_ATTEMPTS: usize = 2;
/// How often core 0 measures the age of the oldest queued message.
const QUEUE_AGE_INTERVAL: Duration = Duration::from_secs(5);
/// How long a reload waits for each core to take the new settings.
const RELOAD_ACK_TIMEOUT: Duration = Duration::from_secs(10);
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
    #[error("cannot start the spool compactor: {0}")]
    Compactor(#[source] std::io::Error),
    #[error(transparent)]
    DkimKey(#[from] crate::mailauth::SigningSetupError),
    #[error("admin socket in {dir}: {source}")]
    Admin {
        dir: String,
        #[source]
        source: std::io::Error,
    },
    #[error("hold list: {0}")]
    Hold(#[from] crate::queue::hold::HoldError),
}

/// Why a reload was refused (the old configuration stays in force).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Settings(#[from] StartError),
    #[error("{0}")]
    Merge(String),
    #[error("core {0} did not take the new settings (shutting down?)")]
    Core(usize),
}

/// What a reload changed, by setting name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadReport {
    pub applied: Vec<String>,
    pub restart_needed: Vec<String>,
}

/// New settings for one core, and where it says it has them.
struct Reload {
    settings: Arc<LiveSettings>,
    done: mpsc::Sender<()>,
}

/// A running server. Dropping it does not stop it; call `shutdown`.
pub struct ServerHandle {
    pub smtp_addrs: Vec<SocketAddr>,
    pub submission_addrs: Vec<SocketAddr>,
    pub submission_tls_addrs: Vec<SocketAddr>,
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
    reloads: Vec<tokio::sync::mpsc::UnboundedSender<Reload>>,
    /// The configuration in force (start-up's, plus reloaded settings).
    config: Config,
    /// Whether `verify` trust anchors were loaded at start.
    verify_loaded: bool,
    compactor: Option<JoinHandle<()>>,
    /// The users every core sees, for checks on reload.
    users: UsersHandle,
}

impl ServerHandle {
    /// Apply the live settings of `new` (read from `source`) on every
    /// core; new connections and attempts use them, open sessions keep
    /// theirs. Nothing changes when this fails.
    pub fn reload(&mut self, new: &Config, source: &Source) -> Result<ReloadReport, ReloadError> {
        let merged = reload::merge_live(&self.config, new).map_err(ReloadError::Merge)?;
        merged.config.validate(source)?;
        if reload::verify_wanted(&merged.config.relay) && !self.verify_loaded {
            return Err(ReloadError::Settings(StartError::Setting {
                key: "[relay.routes]",
                message: "tls = \"verify\" was not in use at start: it needs a restart".into(),
            }));
        }
        let settings = Arc::new(LiveSettings::from_config(&merged.config)?);
        let (done, acks) = mpsc::channel();
        for (core, sender) in self.reloads.iter().enumerate() {
            let reload = Reload {
                settings: Arc::clone(&settings),
                done: done.clone(),
            };
            if sender.send(reload).is_err() {
                return Err(ReloadError::Core(core));
            }
        }
        drop(done);
        for core in 0..self.reloads.len() {
            if acks.recv_timeout(RELOAD_ACK_TIMEOUT).is_err() {
                return Err(ReloadError::Core(core));
            }
        }
        warn_if_postmaster_unowned(&merged.config.relay, &self.users);
        self.config = merged.config;
        Ok(ReloadReport {
            applied: merged.applied,
            restart_needed: merged.restart_needed,
        })
    }

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
        if let Some(compactor) = self.compactor.take() {
            if compactor.join().is_err() {
                error!("the spool compactor panicked");
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
    shutdown: watch::Receiver<bool>,
    shutdown_timeout: Duration,
    ready: mpsc::Sender<Result<(), String>>,
    relay: CoreRelay,
    /// Mailbox releases to persist (core 0 only).
    releases: Option<tokio::sync::mpsc::UnboundedReceiver<(QueueId, u32)>>,
    /// The settings a reload can replace, as at start.
    live: Arc<LiveSettings>,
    reloads: tokio::sync::mpsc::UnboundedReceiver<Reload>,
    maildrop_locks: Arc<MaildropLocks>,
    admission: Arc<Admission>,
}

/// What one core's delivery worker is built from.
struct CoreRelay {
    parts: RelayParts,
    /// Messages recovered from the spool that this core delivers.
    recovered: Vec<(QueueId, Vec<RecipientState>)>,
    /// The recovered messages on the hold list.
    pinned: Vec<QueueId>,
    admin: tokio::sync::mpsc::UnboundedReceiver<AdminRequest>,
}

/// Open the spool (recovering it), bind every listener on every core and
/// start the core threads. Returns once every core is accepting.
pub fn start(config: &Config) -> Result<ServerHandle, StartError> {
    let cores = config.worker_count();
    let driver = Driver::from_mode(config.server.io);
    if config.submission.allow_plaintext_auth {
        warn!(
            "[submission] allow_plaintext_auth = true: submission listeners accept passwords \
             without TLS; use this for tests only"
        );
    }
    let live = Arc::new(LiveSettings::from_config(config)?);
    let admission = Admission::new(Instant::now());
    let mut bound: Vec<BoundAddress> = Vec::new();
    for (key, kind, addrs) in [
        ("[smtp] listen", ListenerKind::Smtp, &config.smtp.listen),
        (
            "[smtp] submission",
            ListenerKind::Submission,
            &config.smtp.submission,
        ),
        (
            "[smtp] submissions",
            ListenerKind::SubmissionTls,
            &config.smtp.submissions,
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
    reload::register_metrics();
    let submission_addrs = addrs_of(&bound, ListenerKind::Submission);
    let submission_tls_addrs = addrs_of(&bound, ListenerKind::SubmissionTls);
    let pop3_addrs = addrs_of(&bound, ListenerKind::Pop3);
    let pop3_tls_addrs = addrs_of(&bound, ListenerKind::Pop3Tls);
    let imap_addrs = addrs_of(&bound, ListenerKind::Imap);
    let imap_tls_addrs = addrs_of(&bound, ListenerKind::ImapTls);
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
    crate::mailauth::register_metrics();
    // Each core delivers the recovered messages of some segments: spread
    // by segment so that the cores share the backlog after a restart.
    let mut recovered: Vec<Vec<(QueueId, Vec<RecipientState>)>> =
        (0..cores).map(|_| Vec::new()).collect();
    let mut pinned: Vec<Vec<QueueId>> = (0..cores).map(|_| Vec::new()).collect();
    // The hold list keeps only messages still queued.
    let mut hold = HoldList::load(&config.spool.dir)?;
    let mut still_held = std::collections::BTreeSet::new();
    for message in spool.queued() {
        find_lost_releases(&message, &relay_parts.users, &mailboxes, &release_tx);
        let core = (message.id.segment_seq() % cores as u64) as usize;
        if hold.contains(&message.id) {
            still_held.insert(message.id);
            pinned[core].push(message.id);
        }
        recovered[core].push((message.id, message.states));
    }
    hold.replace(still_held)?;
    drop(release_tx);
    let mut release_rx = Some(release_rx);
    let mut admin_senders = Vec::with_capacity(cores);
    let mut reload_senders = Vec::with_capacity(cores);

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
    for (((core, listeners), recovered), pinned) in
        per_core.into_iter().enumerate().zip(recovered).zip(pinned)
    {
        let (admin_tx, admin_rx) = tokio::sync::mpsc::unbounded_channel();
        admin_senders.push(admin_tx);
        let (reload_tx, reload_rx) = tokio::sync::mpsc::unbounded_channel();
        reload_senders.push(reload_tx);
        let setup = CoreSetup {
            relay: relay_parts.for_core(recovered, pinned, admin_rx),
            releases: release_rx.take(),
            live: Arc::clone(&live),
            reloads: reload_rx,
            maildrop_locks: Arc::clone(&maildrop_locks),
            admission: Arc::clone(&admission),
            core,
            driver,
            listeners,
            spool: spool.clone(),
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
        submission_tls_addrs,
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
        reloads: reload_senders,
        config: config.clone(),
        verify_loaded: relay_parts.tls_verified.is_some(),
        compactor: None,
        users: relay_parts.users.clone(),
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
    match AdminSocket::start(
        Arc::clone(&handle.spool),
        hold,
        &config.spool.dir,
        admin_senders,
    ) {
        Ok(admin) => handle.admin = Some(admin),
        Err(source) => {
            handle.shutdown();
            return Err(StartError::Admin {
                dir: config.spool.dir.display().to_string(),
                source,
            });
        }
    }
    let compaction = compaction::CompactionSettings {
        below: config.spool.compact_below,
        interval: config.spool.compact_interval,
    };
    match compaction::spawn(
        Arc::clone(&handle.spool),
        Arc::clone(&handle.mailboxes),
        relay_parts.users.clone(),
        compaction,
        shutdown_rx.clone(),
    ) {
        Ok(compactor) => handle.compactor = compactor,
        Err(source) => {
            handle.shutdown();
            return Err(StartError::Compactor(source));
        }
    }
    warn_if_postmaster_unowned(&config.relay, &relay_parts.users);
    info!(
        cores,
        io = driver.name(),
        hold = config.relay.hold,
        smtp = ?handle.smtp_addrs,
        submission = ?handle.submission_addrs,
        submissions = ?handle.submission_tls_addrs,
        pop3 = ?handle.pop3_addrs,
        pop3s = ?handle.pop3_tls_addrs,
        imap = ?handle.imap_addrs,
        imaps = ?handle.imap_tls_addrs,
        starttls = live.session_config.starttls_available,
        "tern accepting"
    );
    Ok(handle)
}

/// RFC 5321 4.5.1 requires accepting mail for postmaster at every local
/// domain; tern does, and says so when such mail has nowhere to go. Not an
/// error: the users file can gain the user later without a restart.
fn warn_if_postmaster_unowned(relay: &RelaySection, users: &UsersHandle) {
    if users.find(&relay.postmaster).is_none() {
        warn!(
            postmaster = %relay.postmaster,
            users_file = %users.path().display(),
            "[relay] postmaster names no user of the users file: mail to postmaster at the \
             local domains waits in the queue (deferred) until that user exists or a user \
             owns the address"
        );
    }
}

/// The relay settings every core shares, checked once at start.
#[derive(Clone)]
struct RelayParts {
    dns: DnsConfig,
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
        let tls_verified = if reload::verify_wanted(relay) {
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
            dns: DnsConfig {
                nameservers: (!relay.nameservers.is_empty()).then(|| relay.nameservers.clone()),
                timeout: DNS_QUERY_TIMEOUT,
                attempts: DNS_QUERY_ATTEMPTS,
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
        pinned: Vec<QueueId>,
        admin: tokio::sync::mpsc::UnboundedReceiver<AdminRequest>,
    ) -> CoreRelay {
        CoreRelay {
            parts: self.clone(),
            recovered,
            pinned,
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

/// What a core builds its connections' context from: the parts that stay
/// for the life of the core, and the live settings it is given.
struct CoreParts {
    core: usize,
    writer: Rc<RefCell<SpoolWriter>>,
    scheduler: Rc<Scheduler>,
    resolver: Rc<MxResolver>,
    users: UsersHandle,
    pop3_stores: Rc<Pop3Stores>,
    imap_stores: Rc<ImapStores>,
    /// Failed AUTH by client network: kept across reloads.
    auth_throttle: Rc<RefCell<AuthThrottle>>,
}

impl CoreParts {
    fn context(&self, live: &LiveSettings, routes: Rc<RouteTable>) -> Rc<CoreContext> {
        Rc::new(CoreContext {
            core: self.core,
            session_config: Arc::clone(&live.session_config),
            submission_config: Arc::clone(&live.submission_config),
            admission: Arc::clone(&live.admission),
            users: self.users.clone(),
            auth_throttle: Rc::clone(&self.auth_throttle),
            tls: live.tls.clone(),
            pop3: Rc::new(Pop3Context {
                config: Arc::clone(&live.pop3_config),
                stores: Rc::clone(&self.pop3_stores),
                tls: live.tls.clone(),
            }),
            imap: Rc::new(ImapContext {
                config: Arc::clone(&live.imap_config),
                stores: Rc::clone(&self.imap_stores),
                tls: live.tls.clone(),
            }),
            spool: Rc::clone(&self.writer),
            scheduler: Rc::clone(&self.scheduler),
            recipient_hook: Rc::new(RecipientCheck::new(
                Rc::clone(&self.resolver),
                routes,
                self.users.clone(),
            )),
            // Built per context: a reload brings new settings, and the
            // lookup cache starts afresh with them.
            mail_auth: live
                .inbound_auth
                .clone()
                .map(|settings| Rc::new(InboundAuth::new(self.resolver.resolver(), settings))),
        })
    }
}

/// The context new connections get: swapped whole by a reload, read
/// once per accepted connection (a `RefCell` on this core, no lock).
type LiveContext = Rc<RefCell<Rc<CoreContext>>>;

/// The body of one core: a spool writer, one accept loop per listener, the
/// delivery worker, the admin and reload servers, and the shutdown wait.
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
        mut shutdown,
        shutdown_timeout,
        ready,
        relay,
        releases,
        live,
        reloads,
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
        pinned,
        admin,
    } = relay;
    let scheduler = Rc::new(Scheduler::new(live.hold));
    let resolver = match MxResolver::new(&parts.dns) {
        Ok(r) => Rc::new(r),
        Err(e) => {
            let _ = ready.send(Err(format!("[relay] nameservers: {e}")));
            return;
        }
    };
    scheduler.pin(pinned);
    for (id, states) in recovered {
        scheduler.resume(id, &states);
    }
    let routes = Rc::new(live.routes.clone());
    let delivery = Rc::new(Relay::new(
        RelaySettings {
            hostname: parts.hostname,
            routes: RefCell::new(Rc::clone(&routes)),
            retry: Cell::new(live.retry),
            connect_timeout: parts.connect_timeout,
            tls_any: parts.tls_any,
            tls_verified: parts.tls_verified,
            users: parts.users.clone(),
            mailboxes: Arc::clone(&parts.mailboxes),
            dkim: RefCell::new(live.dkim.clone()),
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
    let delivery_loop = tokio::task::spawn_local(Rc::clone(&delivery).run(shutdown.clone()));
    if let Some(releases) = releases {
        tokio::task::spawn_local(persist_releases(releases, Rc::clone(&writer)));
        tokio::task::spawn_local(report_queue_age(Arc::clone(&spool)));
    }
    tokio::task::spawn_local(serve_admin(
        admin,
        Rc::clone(&scheduler),
        Rc::clone(&delivery),
    ));
    let core_parts = CoreParts {
        core,
        writer: Rc::clone(&writer),
        scheduler: Rc::clone(&scheduler),
        resolver,
        users: parts.users.clone(),
        auth_throttle: Rc::new(RefCell::new(AuthThrottle::default())),
        pop3_stores: Rc::new(Pop3Stores {
            users: parts.users.clone(),
            mailboxes: Arc::clone(&parts.mailboxes),
            spool: Arc::clone(&spool),
            locks: maildrop_locks,
        }),
        imap_stores: Rc::new(ImapStores {
            users: parts.users.clone(),
            mailboxes: Arc::clone(&parts.mailboxes),
            spool: Arc::clone(&spool),
            writer: Rc::clone(&writer),
        }),
    };
    let ctx: LiveContext = Rc::new(RefCell::new(core_parts.context(&live, routes)));
    tokio::task::spawn_local(apply_reloads(
        reloads,
        core_parts,
        Rc::clone(&ctx),
        Rc::clone(&delivery),
    ));
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
            Rc::clone(&ctx),
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
            core,
            sessions = active.get(),
            deliveries = scheduler.active(),
            "shutdown timeout: closing open sessions and deliveries (they are retried after restart)"
        );
    }
    let _ = delivery_loop.await;
}

/// Take each reload's settings: a new context for new connections, new
/// routes and retry times for new attempts, the new `[relay] hold`.
async fn apply_reloads<C: Connector + 'static>(
    mut reloads: tokio::sync::mpsc::UnboundedReceiver<Reload>,
    parts: CoreParts,
    ctx: LiveContext,
    delivery: Rc<Relay<C>>,
) {
    while let Some(reload) = reloads.recv().await {
        let live = &reload.settings;
        let routes = Rc::new(live.routes.clone());
        *ctx.borrow_mut() = parts.context(live, Rc::clone(&routes));
        delivery.reload(routes, live.retry, live.dkim.clone());
        parts.scheduler.set_hold(live.hold);
        let _ = reload.done.send(());
    }
}

/// Keeps `tern_queue_oldest_message_age_seconds` current: the age of the
/// oldest message with a recipient left to deliver, 0 for an empty queue.
/// Runs on core 0 for the whole spool; the index walk takes each shard's
/// lock briefly, once per `QUEUE_AGE_INTERVAL`.
async fn report_queue_age(spool: Arc<Spool>) {
    let mut tick = tokio::time::interval(QUEUE_AGE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let age_ms = spool
            .oldest_queued_ms()
            .map_or(0, |oldest| crate::clock::now_ms().saturating_sub(oldest));
        metrics::gauge!("tern_queue_oldest_message_age_seconds").set(age_ms as f64 / 1000.0);
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

/// Carry out the operator's orders on this core's schedule and spool.
async fn serve_admin<C: Connector + 'static>(
    mut requests: tokio::sync::mpsc::UnboundedReceiver<AdminRequest>,
    scheduler: Rc<Scheduler>,
    delivery: Rc<Relay<C>>,
) {
    while let Some(request) = requests.recv().await {
        // One log line per message, so that `grep queue_id=` follows it.
        let done = |ids: Vec<QueueId>, what: &str| {
            for id in &ids {
                info!(queue_id = %id, "{what} by the operator");
            }
            delivery::OperatorOutcome {
                done: ids.len(),
                ..Default::default()
            }
        };
        let outcome = match &*request.order {
            CoreOrder::Flush(selection) => done(scheduler.flush(selection), "flushed"),
            CoreOrder::Hold(selection) => done(scheduler.hold(selection), "held"),
            CoreOrder::Release(selection) => done(scheduler.release(selection), "released"),
            CoreOrder::Finish { ids, domain, how } => {
                delivery
                    .finish_by_operator(ids, domain.as_deref(), *how)
                    .await
            }
        };
        let _ = request.reply.send(outcome);
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
        ListenerKind::SubmissionTls | ListenerKind::Pop3Tls | ListenerKind::ImapTls => return,
    };
    let _ = tokio::time::timeout(REFUSAL_WRITE_TIMEOUT, stream.write_all(reply)).await;
}

async fn accept_loop<A: Acceptor + 'static>(
    acceptor: A,
    kind: ListenerKind,
    live_ctx: LiveContext,
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
                let ctx = Rc::clone(&live_ctx.borrow());
                let permit: Permit = match admission.admit(
                    peer.ip(),
                    Instant::now(),
                    &ctx.admission,
                ) {
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
                let active = active.clone();
                let session_shutdown = shutdown.clone();
                tokio::task::spawn_local(async move {
                    match kind {
                        ListenerKind::Smtp
                        | ListenerKind::Submission
                        | ListenerKind::SubmissionTls => {
                            smtp_conn::serve(stream, peer, kind, ctx, session_shutdown).await
                        }
                        ListenerKind::Pop3 | ListenerKind::Pop3Tls => {
                            let implicit_tls = kind.implicit_tls();
                            let pop3 = Rc::clone(&ctx.pop3);
                            pop3_conn::serve(stream, peer, implicit_tls, pop3, session_shutdown)
                                .await
                        }
                        ListenerKind::Imap | ListenerKind::ImapTls => {
                            let implicit_tls = kind.implicit_tls();
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
