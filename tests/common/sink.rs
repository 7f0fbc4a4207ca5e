//! A programmable SMTP sink for the relay tests: an in-process server on a
//! loopback address that speaks enough RFC 5321 (greeting, EHLO/HELO, MAIL,
//! RCPT, DATA with dot unstuffing, BDAT, RSET, NOOP, QUIT, STARTTLS) to
//! receive what tern relays, answers chosen commands with chosen 4xx/5xx
//! replies, and records what arrived: every message with its connection,
//! envelope, bytes and TLS state, every command with the code it got, and
//! whether a transaction's commands arrived pipelined.
//!
//! It runs on a thread of its own (tokio current-thread), so it serves both
//! an in-process tern and a child process, and it stops when dropped. It
//! must never bind anything but a 127/8 address, and every wait it offers
//! has a deadline.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tern::runtime::tls::TlsStream;
use tern::runtime::transport::{TokioStream, Transport, READ_CHUNK};

/// A command line longer than this without CRLF ends the connection: ten
/// times the RFC 5321 4.5.3.1.4 limit, enough for any parameters tern adds.
const COMMAND_LINE_MAX: usize = 5120;
/// SIZE advertised in EHLO (RFC 1870).
const SIZE_ADVERTISED: u64 = 50 * 1024 * 1024;
/// The code recorded for a BDAT command: its reply leaves once its chunk
/// has been read (RFC 3030 2).
pub const BDAT_REPLY_LATER: u16 = 0;
/// How often waits poll the recorded state.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// A command the sink can be told to answer differently.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum When {
    Ehlo,
    Mail,
    /// RCPT for this address (compared without case).
    Rcpt(String),
    AnyRcpt,
    /// The DATA command itself (before any content).
    Data,
    /// The end of the content: after the final dot of DATA or BDAT LAST.
    DataEnd,
}

/// One programmed reply: to `when`, answer `code text`, the first `times`
/// matching commands (None: always).
#[derive(Debug, Clone)]
pub struct Rule {
    pub when: When,
    pub code: u16,
    pub text: String,
    pub times: Option<usize>,
}

/// How one sink behaves.
#[derive(Clone)]
pub struct SinkConfig {
    /// The greeting; anything but 220 refuses the session (421 closes at
    /// once, other codes answer 503 until QUIT, RFC 5321 3.1).
    pub greeting: (u16, String),
    pub pipelining: bool,
    pub chunking: bool,
    /// Offer STARTTLS with this server configuration.
    pub starttls: Option<Arc<rustls::ServerConfig>>,
    pub rules: Vec<Rule>,
    /// Close the connection (without a reply) right after this many
    /// messages have been accepted on it.
    pub close_after_messages: Option<usize>,
    /// Wait this long before answering the end of each message's data, like
    /// a slow disk or content filter.
    pub data_end_delay: Duration,
}

impl Default for SinkConfig {
    fn default() -> Self {
        SinkConfig {
            greeting: (220, "sink.test ESMTP test sink".into()),
            pipelining: true,
            chunking: false,
            starttls: None,
            rules: Vec::new(),
            close_after_messages: None,
            data_end_delay: Duration::ZERO,
        }
    }
}

impl SinkConfig {
    pub fn greet(mut self, code: u16, text: &str) -> Self {
        self.greeting = (code, text.into());
        self
    }

    pub fn without_pipelining(mut self) -> Self {
        self.pipelining = false;
        self
    }

    pub fn with_chunking(mut self) -> Self {
        self.chunking = true;
        self
    }

    pub fn with_starttls(mut self, config: Arc<rustls::ServerConfig>) -> Self {
        self.starttls = Some(config);
        self
    }

    /// Always answer `when` with `code text`.
    pub fn reply(self, when: When, code: u16, text: &str) -> Self {
        self.rule(when, code, text, None)
    }

    /// Answer the first `times` matching commands with `code text`, then
    /// behave normally.
    pub fn reply_times(self, when: When, code: u16, text: &str, times: usize) -> Self {
        self.rule(when, code, text, Some(times))
    }

    fn rule(mut self, when: When, code: u16, text: &str, times: Option<usize>) -> Self {
        self.rules.push(Rule {
            when,
            code,
            text: text.into(),
            times,
        });
        self
    }

    pub fn slow_data_end(mut self, delay: Duration) -> Self {
        self.data_end_delay = delay;
        self
    }

    pub fn close_after(mut self, messages: usize) -> Self {
        self.close_after_messages = Some(messages);
        self
    }
}

/// One message the sink accepted (250 at the end of its data).
#[derive(Debug, Clone)]
pub struct Received {
    /// 1 for the sink's first connection, counting up.
    pub connection: usize,
    /// The MAIL command line as sent.
    pub mail_line: String,
    /// The reverse-path without brackets ("" for the null sender).
    pub mail_from: String,
    /// Accepted recipients, without brackets, in order.
    pub rcpt_to: Vec<String>,
    /// The content, dot-unstuffed, without the terminating dot line.
    pub data: Vec<u8>,
    pub tls: bool,
    /// MAIL, every RCPT and DATA (or the first BDAT) arrived in one read,
    /// before the sink replied to any of them.
    pub pipelined: bool,
    /// Sent with BDAT rather than DATA.
    pub chunked: bool,
}

impl Received {
    /// The first header field `name` (no unfolding), value trimmed.
    pub fn header(&self, name: &str) -> Option<String> {
        let text = String::from_utf8_lossy(&self.data);
        for line in text.split("\r\n") {
            if line.is_empty() {
                return None;
            }
            if let Some((field, value)) = line.split_once(':') {
                if field.eq_ignore_ascii_case(name) {
                    return Some(value.trim().to_string());
                }
            }
        }
        None
    }
}

/// One command line and the code the sink answered.
#[derive(Debug, Clone)]
pub struct CommandSeen {
    pub connection: usize,
    pub line: String,
    pub code: u16,
}

#[derive(Default)]
struct State {
    connections: usize,
    messages: Vec<Received>,
    commands: Vec<CommandSeen>,
    /// Per rule: how many commands it has answered.
    rule_hits: Vec<usize>,
}

/// A running sink; stops (and closes every connection) when dropped.
pub struct Sink {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sink {
    /// A sink on 127.0.0.1 with an ephemeral port.
    pub fn start(config: SinkConfig) -> Sink {
        Sink::start_on("127.0.0.1:0".parse().unwrap(), config)
    }

    /// A sink on `addr` (any 127/8 address works on Linux loopback).
    pub fn start_on(addr: SocketAddr, config: SinkConfig) -> Sink {
        assert!(addr.ip().is_loopback(), "sinks stay on loopback");
        let listener = std::net::TcpListener::bind(addr).expect("sink address is free");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State {
            rule_hits: vec![0; config.rules.len()],
            ..State::default()
        }));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread_state = state.clone();
        let thread = std::thread::Builder::new()
            .name(format!("sink-{addr}"))
            .spawn(move || run(listener, Arc::new(config), thread_state, stopped))
            .unwrap();
        Sink {
            addr,
            state,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn messages(&self) -> Vec<Received> {
        self.state.lock().unwrap().messages.clone()
    }

    pub fn message_count(&self) -> usize {
        self.state.lock().unwrap().messages.len()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.state.lock().unwrap().connections
    }

    pub fn commands(&self) -> Vec<CommandSeen> {
        self.state.lock().unwrap().commands.clone()
    }

    /// Commands whose line starts with `verb` (no case) and contains `text`.
    pub fn commands_like(&self, verb: &str, text: &str) -> Vec<CommandSeen> {
        let verb = verb.to_ascii_uppercase();
        self.commands()
            .into_iter()
            .filter(|c| c.line.to_ascii_uppercase().starts_with(&verb) && c.line.contains(text))
            .collect()
    }

    /// Messages accepted per connection, indexed by connection number - 1;
    /// connections that carried none count 0.
    pub fn messages_per_connection(&self) -> Vec<usize> {
        let state = self.state.lock().unwrap();
        let mut counts = vec![0; state.connections];
        for message in &state.messages {
            if let Some(count) = counts.get_mut(message.connection - 1) {
                *count += 1;
            }
        }
        counts
    }

    /// Wait (at most `within`) until `done` holds for the messages; return
    /// whether it did. `done` runs under the sink's lock: it must not call
    /// back into the sink (use `wait_for` for that).
    pub fn wait_until(&self, within: Duration, done: impl Fn(&[Received]) -> bool) -> bool {
        wait_for(within, || done(&self.state.lock().unwrap().messages))
    }

    /// Wait (at most `within`) for `count` messages; panics naming what
    /// arrived when they do not.
    pub fn wait_for_messages(&self, count: usize, within: Duration) -> Vec<Received> {
        if !self.wait_until(within, |m| m.len() >= count) {
            let commands = self.commands();
            panic!(
                "sink {} has {} of {count} messages after {within:?}; commands seen: {:#?}",
                self.addr,
                self.message_count(),
                &commands[commands.len().saturating_sub(30)..]
            );
        }
        self.messages()
    }
}

/// Poll `condition` until it holds or `within` has passed; return whether
/// it held. For conditions on several sinks or on commands.
pub fn wait_for(within: Duration, condition: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run(
    listener: std::net::TcpListener,
    config: Arc<SinkConfig>,
    state: Arc<Mutex<State>>,
    stopped: tokio::sync::oneshot::Receiver<()>,
) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        let accept_loop = async {
            while let Ok((stream, _peer)) = listener.accept().await {
                let _ = stream.set_nodelay(true);
                let connection = {
                    let mut s = state.lock().unwrap();
                    s.connections += 1;
                    s.connections
                };
                let (config, state) = (config.clone(), state.clone());
                tokio::task::spawn_local(async move {
                    serve_connection(TokioStream(stream), connection, config, state).await;
                });
            }
        };
        tokio::select! {
            _ = accept_loop => {}
            _ = stopped => {}
        }
    });
    // Dropping the runtime cancels every connection task and closes its socket.
}

/// One connection: the plaintext session, then, after STARTTLS, a fresh
/// session over TLS.
async fn serve_connection(
    stream: TokioStream,
    connection: usize,
    config: Arc<SinkConfig>,
    state: Arc<Mutex<State>>,
) {
    let mut session = Session::new(connection, config.clone(), state);
    let (code, text) = &config.greeting;
    let greeting = format!("{code} {text}\r\n").into_bytes();
    let Ended::StartTls(stream) = session.serve(stream, greeting).await else {
        return;
    };
    let Some(tls_config) = config.starttls.clone() else {
        return;
    };
    let Ok(stream) = TlsStream::accept(stream, tls_config).await else {
        return;
    };
    session.tls = true;
    session.transaction = None;
    let _closed = session.serve(stream, Vec::new()).await;
}

/// What ended a session on one transport.
enum Ended<T> {
    Closed,
    /// The client asked for STARTTLS and got 220: hand the stream over.
    StartTls(T),
}

#[derive(Clone, Copy)]
enum Phase {
    Commands,
    /// Inside DATA content.
    Data,
    /// Inside a BDAT chunk: bytes still to read, and whether it is the last.
    Chunk {
        remaining: usize,
        last: bool,
    },
}

#[derive(Default)]
struct Transaction {
    mail_line: String,
    mail_from: String,
    rcpt_to: Vec<String>,
    data: Vec<u8>,
    /// The read count when MAIL was processed.
    mail_read: usize,
    /// The read count when DATA or the first BDAT was processed.
    data_read: Option<usize>,
    chunked: bool,
}

/// What the session wants after processing buffered input.
enum Next {
    Read,
    Close,
    StartTls,
}

struct Session {
    connection: usize,
    config: Arc<SinkConfig>,
    state: Arc<Mutex<State>>,
    tls: bool,
    phase: Phase,
    transaction: Option<Transaction>,
    messages_here: usize,
    /// A message's data ended in the last `process`: its reply waits
    /// `data_end_delay`.
    data_ended: bool,
    /// Reads done on this connection: commands processed with no read in
    /// between arrived together, before any reply left.
    reads: usize,
}

impl Session {
    fn new(connection: usize, config: Arc<SinkConfig>, state: Arc<Mutex<State>>) -> Session {
        Session {
            connection,
            config,
            state,
            tls: false,
            phase: Phase::Commands,
            transaction: None,
            messages_here: 0,
            data_ended: false,
            reads: 0,
        }
    }

    /// Serve one transport until the client leaves or asks for STARTTLS;
    /// `first` is written before anything is read.
    async fn serve<T: Transport>(&mut self, mut stream: T, first: Vec<u8>) -> Ended<T> {
        let mut out = first;
        let mut input: Vec<u8> = Vec::new();
        let mut read_buf = Vec::with_capacity(READ_CHUNK);
        loop {
            let next = if self.reads == 0 && self.config.greeting.0 == 421 {
                Next::Close
            } else {
                self.process(&mut input, &mut out)
            };
            if std::mem::take(&mut self.data_ended) && !self.config.data_end_delay.is_zero() {
                tokio::time::sleep(self.config.data_end_delay).await;
            }
            if !out.is_empty() {
                let (result, mut sent) = stream.write_all(std::mem::take(&mut out)).await;
                if result.is_err() {
                    return Ended::Closed;
                }
                sent.clear();
                out = sent;
            }
            match next {
                Next::Close => return Ended::Closed,
                Next::StartTls => return Ended::StartTls(stream),
                Next::Read => {}
            }
            let (result, filled) = stream.read(read_buf).await;
            read_buf = filled;
            match result {
                Ok(n) if n > 0 => {
                    self.reads += 1;
                    input.extend_from_slice(&read_buf[..n]);
                }
                _ => return Ended::Closed,
            }
        }
    }

    /// Consume every complete command or data piece in `input`, appending
    /// replies to `out`.
    fn process(&mut self, input: &mut Vec<u8>, out: &mut Vec<u8>) -> Next {
        loop {
            match self.phase {
                Phase::Data => {
                    let Some((content_len, consumed)) = data_end(input) else {
                        return Next::Read;
                    };
                    let content = unstuff(&input[..content_len]);
                    input.drain(..consumed);
                    if let Some(t) = self.transaction.as_mut() {
                        t.data = content;
                    }
                    self.phase = Phase::Commands;
                    if let Next::Close = self.finish_message(out) {
                        return Next::Close;
                    }
                }
                Phase::Chunk { remaining, last } => {
                    let take = remaining.min(input.len());
                    if let Some(t) = self.transaction.as_mut() {
                        t.data.extend_from_slice(&input[..take]);
                    }
                    input.drain(..take);
                    if take < remaining {
                        self.phase = Phase::Chunk {
                            remaining: remaining - take,
                            last,
                        };
                        return Next::Read;
                    }
                    self.phase = Phase::Commands;
                    if !last {
                        out.extend_from_slice(b"250 2.0.0 chunk received\r\n");
                    } else if let Next::Close = self.finish_message(out) {
                        return Next::Close;
                    }
                }
                Phase::Commands => {
                    let Some(pos) = input.windows(2).position(|w| w == b"\r\n") else {
                        if input.len() > COMMAND_LINE_MAX {
                            out.extend_from_slice(b"500 5.5.6 line too long\r\n");
                            return Next::Close;
                        }
                        return Next::Read;
                    };
                    let line = String::from_utf8_lossy(&input[..pos]).into_owned();
                    input.drain(..pos + 2);
                    let (code, text, next) = self.command(&line);
                    self.state.lock().unwrap().commands.push(CommandSeen {
                        connection: self.connection,
                        line,
                        code,
                    });
                    if code != BDAT_REPLY_LATER {
                        out.extend_from_slice(format_reply(code, &text).as_bytes());
                    }
                    match next {
                        Next::Read => {}
                        Next::StartTls => {
                            // Plaintext that followed STARTTLS must not be
                            // used (RFC 3207 4; CVE-2011-0411).
                            input.clear();
                            return Next::StartTls;
                        }
                        Next::Close => return Next::Close,
                    }
                }
            }
        }
    }

    /// The reply to one command line: code, text (lines joined by "\n")
    /// and what follows.
    fn command(&mut self, line: &str) -> (u16, String, Next) {
        let upper = line.to_ascii_uppercase();
        let verb = upper.split(' ').next().unwrap_or("");
        if verb == "QUIT" {
            return (221, "2.0.0 bye".into(), Next::Close);
        }
        if self.config.greeting.0 != 220 {
            return (503, "5.5.1 no service, only QUIT".into(), Next::Read);
        }
        match verb {
            "EHLO" => {
                if let Some(reply) = self.programmed(&When::Ehlo) {
                    return (reply.0, reply.1, Next::Read);
                }
                self.transaction = None;
                let mut lines = vec!["sink.test greets you".to_string()];
                if self.config.pipelining {
                    lines.push("PIPELINING".into());
                }
                lines.push("8BITMIME".into());
                lines.push(format!("SIZE {SIZE_ADVERTISED}"));
                lines.push("ENHANCEDSTATUSCODES".into());
                if self.config.chunking {
                    lines.push("CHUNKING".into());
                }
                if self.config.starttls.is_some() && !self.tls {
                    lines.push("STARTTLS".into());
                }
                (250, lines.join("\n"), Next::Read)
            }
            "HELO" => {
                self.transaction = None;
                (250, "sink.test".into(), Next::Read)
            }
            "STARTTLS" if self.config.starttls.is_some() && !self.tls => {
                (220, "2.0.0 ready to start TLS".into(), Next::StartTls)
            }
            "MAIL" => {
                if self.transaction.is_some() {
                    return (503, "5.5.1 nested MAIL".into(), Next::Read);
                }
                let Some(from) = path_of(line, "MAIL FROM:") else {
                    return (501, "5.5.4 syntax: MAIL FROM:<address>".into(), Next::Read);
                };
                if let Some((code, text)) = self.programmed(&When::Mail) {
                    return (code, text, Next::Read);
                }
                self.transaction = Some(Transaction {
                    mail_line: line.to_string(),
                    mail_from: from,
                    mail_read: self.reads,
                    ..Transaction::default()
                });
                (250, "2.1.0 sender ok".into(), Next::Read)
            }
            "RCPT" => {
                if self.transaction.is_none() {
                    return (503, "5.5.1 MAIL first".into(), Next::Read);
                }
                let Some(to) = path_of(line, "RCPT TO:") else {
                    return (501, "5.5.4 syntax: RCPT TO:<address>".into(), Next::Read);
                };
                let programmed = self
                    .programmed(&When::Rcpt(to.clone()))
                    .or_else(|| self.programmed(&When::AnyRcpt));
                if let Some((code, text)) = programmed {
                    return (code, text, Next::Read);
                }
                if let Some(t) = self.transaction.as_mut() {
                    t.rcpt_to.push(to);
                }
                (250, "2.1.5 recipient ok".into(), Next::Read)
            }
            "DATA" => {
                let has_recipients = self
                    .transaction
                    .as_ref()
                    .is_some_and(|t| !t.rcpt_to.is_empty());
                if !has_recipients {
                    // RFC 2920 3.1: DATA after no accepted RCPT is refused.
                    return (554, "5.5.1 no valid recipients".into(), Next::Read);
                }
                if let Some((code, text)) = self.programmed(&When::Data) {
                    self.transaction = None;
                    return (code, text, Next::Read);
                }
                if let Some(t) = self.transaction.as_mut() {
                    t.data_read = Some(self.reads);
                }
                self.phase = Phase::Data;
                (354, "end data with <CR><LF>.<CR><LF>".into(), Next::Read)
            }
            "BDAT" => self.bdat(&upper),
            "RSET" => {
                self.transaction = None;
                (250, "2.0.0 reset".into(), Next::Read)
            }
            "NOOP" => (250, "2.0.0 ok".into(), Next::Read),
            _ => (500, "5.5.2 command not recognised".into(), Next::Read),
        }
    }

    fn bdat(&mut self, upper: &str) -> (u16, String, Next) {
        let mut words = upper.split(' ').skip(1);
        let size = words.next().and_then(|w| w.parse::<usize>().ok());
        let last = words.next() == Some("LAST");
        let Some(size) = size else {
            return (501, "5.5.4 syntax: BDAT size [LAST]".into(), Next::Close);
        };
        let has_recipients = self
            .transaction
            .as_ref()
            .is_some_and(|t| !t.rcpt_to.is_empty());
        if !has_recipients {
            // The chunk cannot be told apart from commands any more.
            return (554, "5.5.1 no valid recipients".into(), Next::Close);
        }
        if let Some(t) = self.transaction.as_mut() {
            t.chunked = true;
            t.data_read.get_or_insert(self.reads);
        }
        self.phase = Phase::Chunk {
            remaining: size,
            last,
        };
        (BDAT_REPLY_LATER, String::new(), Next::Read)
    }

    /// The end of a message's content: reply (programmed or 250), record
    /// it when accepted, and close when the per-connection limit is hit.
    fn finish_message(&mut self, out: &mut Vec<u8>) -> Next {
        self.data_ended = true;
        let Some(t) = self.transaction.take() else {
            out.extend_from_slice(b"503 5.5.1 no transaction\r\n");
            return Next::Read;
        };
        let (code, text) = self
            .programmed(&When::DataEnd)
            .unwrap_or((250, "2.0.0 message accepted".into()));
        out.extend_from_slice(format_reply(code, &text).as_bytes());
        if code != 250 {
            return Next::Read;
        }
        self.messages_here += 1;
        self.state.lock().unwrap().messages.push(Received {
            connection: self.connection,
            pipelined: t.data_read == Some(t.mail_read),
            mail_line: t.mail_line,
            mail_from: t.mail_from,
            rcpt_to: t.rcpt_to,
            data: t.data,
            tls: self.tls,
            chunked: t.chunked,
        });
        match self.config.close_after_messages {
            Some(limit) if self.messages_here >= limit => Next::Close,
            _ => Next::Read,
        }
    }

    /// The first programmed reply for `when` that still applies, counted.
    fn programmed(&self, when: &When) -> Option<(u16, String)> {
        let mut state = self.state.lock().unwrap();
        for (index, rule) in self.config.rules.iter().enumerate() {
            let matches = match (&rule.when, when) {
                (When::Rcpt(want), When::Rcpt(got)) => want.eq_ignore_ascii_case(got),
                (want, got) => want == got,
            };
            let hits = state.rule_hits.get(index).copied().unwrap_or(0);
            if matches && rule.times.is_none_or(|times| hits < times) {
                if let Some(h) = state.rule_hits.get_mut(index) {
                    *h += 1;
                }
                return Some((rule.code, rule.text.clone()));
            }
        }
        None
    }
}

/// A reply: every line but the last as `code-text`, the last `code text`.
fn format_reply(code: u16, text: &str) -> String {
    let lines: Vec<&str> = text.split('\n').collect();
    let mut reply = String::new();
    for (index, line) in lines.iter().enumerate() {
        let separator = if index + 1 == lines.len() { ' ' } else { '-' };
        reply.push_str(&format!("{code}{separator}{line}\r\n"));
    }
    reply
}

/// The path in `MAIL FROM:<path> ...` or `RCPT TO:<path> ...`, without
/// brackets; `prefix` is matched without case.
fn path_of(line: &str, prefix: &str) -> Option<String> {
    let head = line.get(..prefix.len())?;
    if !head.eq_ignore_ascii_case(prefix) {
        return None;
    }
    let rest = line.get(prefix.len()..)?.trim_start().strip_prefix('<')?;
    let end = rest.find('>')?;
    Some(rest[..end].to_string())
}

/// Where DATA content ends: (content length including its last CRLF,
/// bytes to consume including the dot line), once the terminator arrived.
fn data_end(input: &[u8]) -> Option<(usize, usize)> {
    if input.starts_with(b".\r\n") {
        return Some((0, 3));
    }
    let pos = input.windows(5).position(|w| w == b"\r\n.\r\n")?;
    Some((pos + 2, pos + 5))
}

/// Remove the dot that RFC 5321 4.5.2 adds to lines starting with one.
fn unstuff(content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len());
    let mut at_line_start = true;
    for &byte in content {
        if !(at_line_start && byte == b'.') {
            out.push(byte);
        }
        at_line_start = byte == b'\n';
    }
    out
}
