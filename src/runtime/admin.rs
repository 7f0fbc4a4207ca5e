//! The admin socket of a running server: a Unix stream socket at
//! `<spool dir>/admin.sock` that takes one command line per connection
//! (`release`, `flush`), hands it to every core and answers one line
//! (`ok <count>` or `error <why>`). `tern queue release|flush` speak it.
//!
//! It must never be reachable from the network (a Unix socket, mode
//! 0600 under the spool directory) and never block a core: cores get
//! commands over a channel and answer when their loop gets to it.

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

/// File name of the socket inside the spool directory.
pub const ADMIN_SOCKET: &str = "admin.sock";
/// A client gets this long to send its command and each core to answer.
const ADMIN_IO_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the accept loop looks at the shutdown flag.
const ACCEPT_POLL: Duration = Duration::from_millis(100);
/// Longest command line read.
const COMMAND_MAX: u64 = 256;

/// What an operator can ask of the running queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminCommand {
    /// Let every held message go (`[relay] hold`).
    Release,
    /// Try every deferred message now.
    Flush,
}

impl AdminCommand {
    pub fn parse(line: &str) -> Option<AdminCommand> {
        match line.trim() {
            "release" => Some(AdminCommand::Release),
            "flush" => Some(AdminCommand::Flush),
            _ => None,
        }
    }

    pub fn word(self) -> &'static str {
        match self {
            AdminCommand::Release => "release",
            AdminCommand::Flush => "flush",
        }
    }
}

/// A command for one core, with where to send the count it affected.
pub struct AdminRequest {
    pub command: AdminCommand,
    pub reply: mpsc::Sender<usize>,
}

/// The running admin socket; `stop` ends its thread and removes the file.
pub struct AdminSocket {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl AdminSocket {
    /// Bind `<spool_dir>/admin.sock` (replacing a stale one: the caller
    /// holds the spool lock, so no other server uses it).
    pub fn start(
        spool_dir: &Path,
        cores: Vec<UnboundedSender<AdminRequest>>,
    ) -> std::io::Result<AdminSocket> {
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
        let thread = std::thread::Builder::new()
            .name("tern-admin".into())
            .spawn(move || accept_loop(listener, cores, thread_stop))?;
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

fn accept_loop(
    listener: UnixListener,
    cores: Vec<UnboundedSender<AdminRequest>>,
    stop: Arc<AtomicBool>,
) {
    while !stop.load(Ordering::Acquire) {
        match listener.accept() {
            Ok((stream, _)) => {
                if let Err(e) = serve(stream, &cores) {
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

fn serve(stream: UnixStream, cores: &[UnboundedSender<AdminRequest>]) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(ADMIN_IO_TIMEOUT))?;
    stream.set_write_timeout(Some(ADMIN_IO_TIMEOUT))?;
    let mut line = String::new();
    BufReader::new(std::io::Read::take(&stream, COMMAND_MAX)).read_line(&mut line)?;
    let answer = match AdminCommand::parse(&line) {
        None => format!(
            "error unknown command {:?} (known: release, flush)\n",
            line.trim()
        ),
        Some(command) => match dispatch(command, cores) {
            Ok(count) => {
                info!(command = command.word(), messages = count, "admin command");
                format!("ok {count}\n")
            }
            Err(why) => format!("error {why}\n"),
        },
    };
    (&stream).write_all(answer.as_bytes())
}

/// Send `command` to every core and add up their counts.
fn dispatch(
    command: AdminCommand,
    cores: &[UnboundedSender<AdminRequest>],
) -> Result<usize, String> {
    let (reply, answers) = mpsc::channel();
    let mut asked = 0;
    for core in cores {
        let request = AdminRequest {
            command,
            reply: reply.clone(),
        };
        if core.send(request).is_ok() {
            asked += 1;
        }
    }
    drop(reply);
    let mut total = 0;
    for _ in 0..asked {
        match answers.recv_timeout(ADMIN_IO_TIMEOUT) {
            Ok(count) => total += count,
            Err(_) => return Err("a core did not answer (shutting down?)".into()),
        }
    }
    Ok(total)
}

/// The client side, for `tern queue release|flush`: the server's answer.
pub fn send_command(spool_dir: &Path, command: AdminCommand) -> Result<String, String> {
    let path = spool_dir.join(ADMIN_SOCKET);
    let stream = UnixStream::connect(&path).map_err(|e| {
        format!(
            "cannot reach the running server at {}: {e} (is tern running with this config?)",
            path.display()
        )
    })?;
    stream
        .set_read_timeout(Some(ADMIN_IO_TIMEOUT * 2))
        .and_then(|()| (&stream).write_all(format!("{}\n", command.word()).as_bytes()))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let mut answer = String::new();
    BufReader::new(&stream)
        .read_line(&mut answer)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let answer = answer.trim();
    match answer.strip_prefix("ok ") {
        Some(count) => Ok(count.to_string()),
        None => Err(answer.strip_prefix("error ").unwrap_or(answer).to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse() {
        assert_eq!(
            AdminCommand::parse("release\n"),
            Some(AdminCommand::Release)
        );
        assert_eq!(AdminCommand::parse(" flush "), Some(AdminCommand::Flush));
        assert_eq!(AdminCommand::parse("RELEASE"), None);
        assert_eq!(AdminCommand::parse(""), None);
    }

    #[test]
    fn socket_round_trip_sums_the_cores() {
        let dir = tempfile::tempdir().unwrap();
        let mut senders = Vec::new();
        let mut workers = Vec::new();
        for count in [3usize, 4] {
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<AdminRequest>();
            senders.push(tx);
            workers.push(std::thread::spawn(move || {
                if let Some(request) = rx.blocking_recv() {
                    assert_eq!(request.command, AdminCommand::Release);
                    let _ = request.reply.send(count);
                }
            }));
        }
        let socket = AdminSocket::start(dir.path(), senders).unwrap();
        assert_eq!(
            send_command(dir.path(), AdminCommand::Release),
            Ok("7".to_string())
        );
        for worker in workers {
            worker.join().unwrap();
        }
        socket.stop();
        assert!(!dir.path().join(ADMIN_SOCKET).exists());
        let err = send_command(dir.path(), AdminCommand::Flush).unwrap_err();
        assert!(err.contains("cannot reach the running server"), "{err}");
    }
}
