//! The admin socket of a running server: a Unix stream socket at
//! `<spool dir>/admin.sock` that takes one command line per connection
//! and answers one line, `ok <what happened>` or `error: <why>`.
//! Commands: `flush|hold|release [ID | --domain D]`, `delete|bounce
//! ID | --domain D`. `tern queue` speaks it.
//!
//! The socket thread picks the messages (from the spool's index, never a
//! core's), keeps the hold list, then hands each core its order over a
//! channel and adds up the answers. It must never be reachable from the
//! network (a Unix socket, mode 0600 under the spool directory), never
//! block a core (cores answer when their loop gets to it, and await their
//! own spool commits), and never answer `ok` before the change is durable:
//! the hold list is written before the cores are told, a delete or bounce
//! is answered after its RECIPIENT_UPDATE (and DSN) is synced.

use std::collections::{BTreeSet, HashSet};
use std::fmt;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::mpsc::UnboundedSender;
use tracing::{info, warn};

use crate::queue::hold::HoldList;
use crate::queue::scheduler::Selection;
use crate::queue_report::recipient_in_domain;
use crate::relay::delivery::{Finish, OperatorOutcome};
use crate::spool::{QueueId, RecipientState, Spool, SpoolError};

/// File name of the socket inside the spool directory.
pub const ADMIN_SOCKET: &str = "admin.sock";
/// A client gets this long to send its command and each core to answer.
const ADMIN_IO_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the accept loop looks at the shutdown flag.
const ACCEPT_POLL: Duration = Duration::from_millis(100);
/// Longest command line read.
const COMMAND_MAX: u64 = 512;

/// What an operator does to the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    /// Try now, recipients not yet due included.
    Flush,
    /// Keep from delivery until released, across restarts.
    Hold,
    /// Let held messages go (`[relay] hold` and `hold` alike).
    Release,
    /// Make the recipients final without delivery and without a DSN.
    Delete,
    /// Make the recipients final with a DSN to the sender.
    Bounce,
}

impl Verb {
    const ALL: [Verb; 5] = [
        Verb::Flush,
        Verb::Hold,
        Verb::Release,
        Verb::Delete,
        Verb::Bounce,
    ];

    fn word(self) -> &'static str {
        match self {
            Verb::Flush => "flush",
            Verb::Hold => "hold",
            Verb::Release => "release",
            Verb::Delete => "delete",
            Verb::Bounce => "bounce",
        }
    }

    fn done(self) -> &'static str {
        match self {
            Verb::Flush => "flushed",
            Verb::Hold => "held",
            Verb::Release => "released",
            Verb::Delete => "deleted",
            Verb::Bounce => "bounced",
        }
    }
}

/// Which messages a command is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    All,
    Id(QueueId),
    /// Messages with a recipient waiting in this domain (".d": subdomains).
    Domain(String),
}

/// One command line of the admin protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminCommand {
    pub verb: Verb,
    pub target: Target,
}

/// Why a command line was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("unknown command {0:?} (known: flush, hold, release, delete, bounce)")]
    Unknown(String),
    #[error("{0} needs a queue ID or --domain DOMAIN")]
    TargetMissing(&'static str),
    #[error("{0:?} is not a queue ID (16 hex digits) or --domain DOMAIN")]
    BadTarget(String),
    #[error("{0:?} is not a domain")]
    BadDomain(String),
}

impl AdminCommand {
    pub fn parse(line: &str) -> Result<AdminCommand, CommandError> {
        let mut words = line.split_ascii_whitespace();
        let verb = match words.next() {
            Some("flush") => Verb::Flush,
            Some("hold") => Verb::Hold,
            Some("release") => Verb::Release,
            Some("delete") => Verb::Delete,
            Some("bounce") => Verb::Bounce,
            _ => return Err(CommandError::Unknown(line.trim().to_string())),
        };
        let rest: Vec<&str> = words.collect();
        let target = match rest.as_slice() {
            [] if matches!(verb, Verb::Delete | Verb::Bounce) => {
                return Err(CommandError::TargetMissing(verb.word()))
            }
            [] => Target::All,
            ["--domain", domain] => {
                let valid = !domain.is_empty()
                    && domain.len() <= 255
                    && domain
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
                    && domain.bytes().any(|b| b != b'.');
                if !valid {
                    return Err(CommandError::BadDomain(domain.to_string()));
                }
                Target::Domain(domain.to_ascii_lowercase())
            }
            [id] => Target::Id(
                id.parse()
                    .map_err(|_| CommandError::BadTarget(id.to_string()))?,
            ),
            _ => return Err(CommandError::BadTarget(rest.join(" "))),
        };
        Ok(AdminCommand { verb, target })
    }
}

impl fmt::Display for AdminCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.verb.word())?;
        match &self.target {
            Target::All => Ok(()),
            Target::Id(id) => write!(f, " {id}"),
            Target::Domain(domain) => write!(f, " --domain {domain}"),
        }
    }
}

/// What one core is asked to do.
#[derive(Debug, Clone)]
pub enum CoreOrder {
    Flush(Selection),
    Hold(Selection),
    Release(Selection),
    /// Finish the waiting recipients of `ids` (those in `domain` only,
    /// when given).
    Finish {
        ids: Vec<QueueId>,
        domain: Option<String>,
        how: Finish,
    },
}

/// An order for one core, with where to send its answer.
pub struct AdminRequest {
    pub order: Arc<CoreOrder>,
    pub reply: mpsc::Sender<OperatorOutcome>,
}

/// The running admin socket; `stop` ends its thread and removes the file.
pub struct AdminSocket {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// `tern_admin_commands_total` at zero for every command and result (a
/// line that is no command counts as `bad`).
fn register_metrics() {
    for verb in Verb::ALL {
        for result in ["ok", "error"] {
            metrics::counter!("tern_admin_commands_total", "command" => verb.word(), "result" => result)
                .increment(0);
        }
    }
    metrics::counter!("tern_admin_commands_total", "command" => "bad", "result" => "error")
        .increment(0);
}

impl AdminSocket {
    /// Bind `<spool_dir>/admin.sock` (replacing a stale one: the caller
    /// holds the spool lock, so no other server uses it).
    pub fn start(
        spool: Arc<Spool>,
        hold: HoldList,
        spool_dir: &Path,
        cores: Vec<UnboundedSender<AdminRequest>>,
    ) -> std::io::Result<AdminSocket> {
        register_metrics();
        let path = spool_dir.join(ADMIN_SOCKET);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let listener = UnixListener::bind(&path)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = Arc::clone(&stop);
        let mut operator = Operator { spool, hold, cores };
        let thread = std::thread::Builder::new()
            .name("tern-admin".into())
            .spawn(move || accept_loop(listener, &mut operator, thread_stop))?;
        Ok(AdminSocket {
            path,
            stop,
            thread: Some(thread),
        })
    }

    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn accept_loop(listener: UnixListener, operator: &mut Operator, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Acquire) {
        match listener.accept() {
            Ok((stream, _)) => {
                if let Err(e) = serve(stream, operator) {
                    warn!(error = %e, "admin connection failed");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(ACCEPT_POLL);
            }
            Err(e) => {
                warn!(error = %e, "admin accept failed");
                std::thread::sleep(ACCEPT_POLL);
            }
        }
    }
}

fn serve(stream: UnixStream, operator: &mut Operator) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(ADMIN_IO_TIMEOUT))?;
    stream.set_write_timeout(Some(ADMIN_IO_TIMEOUT))?;
    let mut line = String::new();
    BufReader::new(std::io::Read::take(&stream, COMMAND_MAX)).read_line(&mut line)?;
    let answer = match AdminCommand::parse(&line) {
        Err(e) => {
            metrics::counter!("tern_admin_commands_total", "command" => "bad", "result" => "error")
                .increment(1);
            format!("error: {e}\n")
        }
        Ok(command) => {
            let (result, answer) = match operator.execute(&command) {
                Ok(done) => {
                    info!(command = %command, result = %done, "admin command");
                    ("ok", format!("ok {done}\n"))
                }
                Err(why) => {
                    warn!(command = %command, error = %why, "admin command failed");
                    ("error", format!("error: {why}\n"))
                }
            };
            metrics::counter!(
                "tern_admin_commands_total",
                "command" => command.verb.word(),
                "result" => result
            )
            .increment(1);
            answer
        }
    };
    (&stream).write_all(answer.as_bytes())
}

fn messages(count: usize) -> String {
    if count == 1 {
        "1 message".into()
    } else {
        format!("{count} messages")
    }
}

/// Whether a recipient still waits for a delivery attempt.
fn waiting(state: Option<&RecipientState>) -> bool {
    matches!(
        state,
        None | Some(RecipientState::Pending | RecipientState::Deferred { .. })
    )
}

/// The socket thread's view of the queue: the spool's index to pick
/// messages, the hold list, and a channel to every core.
struct Operator {
    spool: Arc<Spool>,
    hold: HoldList,
    cores: Vec<UnboundedSender<AdminRequest>>,
}

impl Operator {
    fn execute(&mut self, command: &AdminCommand) -> Result<String, String> {
        let verb = command.verb;
        match verb {
            Verb::Flush => {
                let selection = match &command.target {
                    Target::All => Selection::All,
                    target => Selection::Only(self.waiting_ids(target)?.into_iter().collect()),
                };
                let answer = self.ask(CoreOrder::Flush(selection))?;
                Ok(format!("{} {}", verb.done(), messages(answer.done)))
            }
            Verb::Hold => {
                let ids = self.waiting_ids(&command.target)?;
                let mut list = self.hold.ids().clone();
                list.extend(ids.iter().copied());
                self.save_hold(list)?;
                let answer =
                    self.ask(CoreOrder::Hold(Selection::Only(ids.into_iter().collect())))?;
                Ok(format!("{} {}", verb.done(), messages(answer.done)))
            }
            Verb::Release => {
                let selection = match &command.target {
                    Target::All => Selection::All,
                    Target::Id(id) if self.hold.contains(id) => {
                        Selection::Only(HashSet::from([*id]))
                    }
                    target => Selection::Only(self.waiting_ids(target)?.into_iter().collect()),
                };
                let list = match &selection {
                    Selection::All => BTreeSet::new(),
                    Selection::Only(ids) => self
                        .hold
                        .ids()
                        .iter()
                        .filter(|id| !ids.contains(id))
                        .copied()
                        .collect(),
                };
                self.save_hold(list)?;
                let answer = self.ask(CoreOrder::Release(selection))?;
                Ok(format!("{} {}", verb.done(), messages(answer.done)))
            }
            Verb::Delete | Verb::Bounce => {
                let ids = self.waiting_ids(&command.target)?;
                let (domain, one) = match &command.target {
                    Target::Domain(domain) => (Some(domain.clone()), None),
                    Target::Id(id) => (None, Some(*id)),
                    Target::All => (None, None),
                };
                let how = if verb == Verb::Delete {
                    Finish::Delete
                } else {
                    Finish::Bounce
                };
                let answer = self.ask(CoreOrder::Finish { ids, domain, how })?;
                if let Some(id) = one {
                    if answer.busy > 0 {
                        return Err(format!(
                            "message {id} is being delivered right now; \
                             try again when the attempt is over"
                        ));
                    }
                    if answer.done == 0 && answer.failed.is_empty() {
                        return Err(format!("message {id} is not waiting in any queue"));
                    }
                }
                let mut done = format!("{} {}", verb.done(), messages(answer.done));
                if answer.busy > 0 {
                    done.push_str(&format!(
                        "; {} being delivered right now left alone (try again)",
                        messages(answer.busy)
                    ));
                }
                if answer.failed.is_empty() {
                    Ok(done)
                } else {
                    Err(format!("{done}; failed: {}", answer.failed.join("; ")))
                }
            }
        }
    }

    /// The messages `target` names that have a recipient waiting for
    /// delivery; an ID that names none is an error.
    fn waiting_ids(&self, target: &Target) -> Result<Vec<QueueId>, String> {
        match target {
            Target::Id(id) => {
                let view = self.spool.read(id).map_err(|e| match e {
                    SpoolError::NotFound(_) => format!("no message {id} in the queue"),
                    e => format!("message {id}: {e}"),
                })?;
                let any_waiting =
                    (0..view.envelope.recipients.len()).any(|i| waiting(view.states.get(i)));
                if !any_waiting {
                    return Err(format!(
                        "message {id} has no recipient waiting for delivery"
                    ));
                }
                Ok(vec![*id])
            }
            Target::All | Target::Domain(_) => {
                let domain = match target {
                    Target::Domain(d) => Some(d.as_str()),
                    _ => None,
                };
                Ok(self
                    .spool
                    .queued()
                    .into_iter()
                    .filter(|m| {
                        m.envelope.recipients.iter().enumerate().any(|(i, r)| {
                            waiting(m.states.get(i))
                                && domain.is_none_or(|d| recipient_in_domain(&r.address, d))
                        })
                    })
                    .map(|m| m.id)
                    .collect())
            }
        }
    }

    /// Make `ids` (less what is no longer queued) the durable hold list.
    fn save_hold(&mut self, mut ids: BTreeSet<QueueId>) -> Result<(), String> {
        if !ids.is_empty() {
            let live: HashSet<QueueId> = self.spool.queued().into_iter().map(|m| m.id).collect();
            ids.retain(|id| live.contains(id));
        }
        self.hold
            .replace(ids)
            .map_err(|e| format!("hold list not saved, nothing changed: {e}"))
    }

    /// Send `order` to every core and add up their answers.
    fn ask(&self, order: CoreOrder) -> Result<OperatorOutcome, String> {
        let order = Arc::new(order);
        let (reply, answers) = mpsc::channel();
        let mut asked = 0;
        for core in &self.cores {
            let request = AdminRequest {
                order: Arc::clone(&order),
                reply: reply.clone(),
            };
            if core.send(request).is_ok() {
                asked += 1;
            }
        }
        drop(reply);
        let mut total = OperatorOutcome::default();
        for _ in 0..asked {
            match answers.recv_timeout(ADMIN_IO_TIMEOUT) {
                Ok(answer) => total.add(answer),
                Err(_) => return Err("a core did not answer (shutting down?)".into()),
            }
        }
        Ok(total)
    }
}

/// The client side, for `tern queue`: the server's answer after `ok `,
/// or its error.
pub fn send_command(spool_dir: &Path, command: &AdminCommand) -> Result<String, String> {
    let path = spool_dir.join(ADMIN_SOCKET);
    let stream = UnixStream::connect(&path).map_err(|e| {
        format!(
            "cannot reach the running server at {}: {e} (is tern running with this config?)",
            path.display()
        )
    })?;
    stream
        .set_read_timeout(Some(ADMIN_IO_TIMEOUT * 2))
        .and_then(|()| (&stream).write_all(format!("{command}\n").as_bytes()))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let mut answer = String::new();
    BufReader::new(&stream)
        .read_line(&mut answer)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let answer = answer.trim();
    match answer.strip_prefix("ok ") {
        Some(done) => Ok(done.to_string()),
        None => Err(answer.strip_prefix("error: ").unwrap_or(answer).to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u64) -> QueueId {
        QueueId::new(1, 64 * n).unwrap()
    }

    #[test]
    fn commands_parse_and_print_back() {
        for line in [
            "flush",
            "hold",
            "release",
            &format!("flush {}", id(1)),
            &format!("delete {}", id(2)),
            &format!("bounce {}", id(3)),
            "hold --domain example.org",
            "release --domain .example.org",
            "delete --domain example.org",
        ] {
            let command = AdminCommand::parse(&format!("{line}\n")).unwrap();
            assert_eq!(command.to_string(), line);
        }
        assert_eq!(
            AdminCommand::parse(&format!("flush {}", id(1).to_string().to_lowercase())),
            Ok(AdminCommand {
                verb: Verb::Flush,
                target: Target::Id(id(1))
            })
        );
        assert_eq!(
            AdminCommand::parse("hold --domain Example.ORG").map(|c| c.target),
            Ok(Target::Domain("example.org".into()))
        );
    }

    #[test]
    fn bad_command_lines_are_refused_clearly() {
        assert_eq!(
            AdminCommand::parse("RELEASE"),
            Err(CommandError::Unknown("RELEASE".into()))
        );
        assert!(matches!(
            AdminCommand::parse(""),
            Err(CommandError::Unknown(_))
        ));
        assert_eq!(
            AdminCommand::parse("delete"),
            Err(CommandError::TargetMissing("delete"))
        );
        assert_eq!(
            AdminCommand::parse("bounce 12"),
            Err(CommandError::BadTarget("12".into()))
        );
        assert_eq!(
            AdminCommand::parse("hold --domain"),
            Err(CommandError::BadTarget("--domain".into()))
        );
        assert_eq!(
            AdminCommand::parse("hold --domain a/b"),
            Err(CommandError::BadDomain("a/b".into()))
        );
        assert_eq!(
            AdminCommand::parse("hold --domain ..."),
            Err(CommandError::BadDomain("...".into()))
        );
        assert!(AdminCommand::parse("flush a b c").is_err());
    }

    #[test]
    fn socket_round_trip_sums_the_cores() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(crate::spool::SpoolConfig::new(dir.path())).unwrap();
        let hold = HoldList::load(dir.path()).unwrap();
        let mut senders = Vec::new();
        let mut workers = Vec::new();
        for count in [3usize, 4] {
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<AdminRequest>();
            senders.push(tx);
            workers.push(std::thread::spawn(move || {
                if let Some(request) = rx.blocking_recv() {
                    assert!(matches!(*request.order, CoreOrder::Release(Selection::All)));
                    let _ = request.reply.send(OperatorOutcome {
                        done: count,
                        ..OperatorOutcome::default()
                    });
                }
            }));
        }
        let socket = AdminSocket::start(Arc::clone(&spool), hold, dir.path(), senders).unwrap();
        let release = AdminCommand::parse("release").unwrap();
        assert_eq!(
            send_command(dir.path(), &release),
            Ok("released 7 messages".to_string())
        );
        for worker in workers {
            worker.join().unwrap();
        }
        // An ID the spool does not hold is named in the error.
        let missing = AdminCommand::parse(&format!("delete {}", id(5))).unwrap();
        assert_eq!(
            send_command(dir.path(), &missing),
            Err(format!("no message {} in the queue", id(5)))
        );
        socket.stop();
        spool.close();
        assert!(!dir.path().join(ADMIN_SOCKET).exists());
        let err = send_command(dir.path(), &release).unwrap_err();
        assert!(err.contains("cannot reach the running server"), "{err}");
    }
}
