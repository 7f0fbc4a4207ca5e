//! Fuzz target: arbitrary bytes into the IMAP server session, fed in
//! fuzzer-chosen pieces, over a real mailbox store in a fresh folder (one
//! user, two messages in INBOX) with every event answered as a runtime
//! would: logins of alice/secret succeed, commits succeed, APPENDs are
//! filed, IDLE waits for the next piece. Must never panic and never run
//! into an unbounded loop of events. (Output is not checked for bare line
//! ends: FETCH hands APPENDed bytes back as literals, as sent.)
#![no_main]

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use libfuzzer_sys::fuzz_target;
use tern::imap::{AppendTicket, ImapBackend, ImapConfig, ImapEvent, ImapSession, AUTOLOGOUT};
use tern::limits::SessionLimits;
use tern::mailbox::{Flags, MailboxError, MailboxStore, MessageMeta, NewMessage, UserMailboxes};
use tern::spool::QueueId;

const USER: &str = "alice";
const MESSAGES: [&[u8]; 2] = [
    b"From: Bob <bob@example.org>\r\nSubject: Lunch\r\nDate: Mon, 23 Nov 2026 10:00:00 +0000\r\n\r\nNoon?\r\n",
    b"Subject: Report\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nSee attached.\r\n--b\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\nAAAA\r\n--b--\r\n",
];
/// Events handled per input before the target calls it a loop.
const EVENTS_MAX: usize = 100_000;

struct Backend {
    store: Arc<MailboxStore>,
    bodies: RefCell<HashMap<QueueId, Vec<u8>>>,
    next_record: Cell<u64>,
}

impl Backend {
    fn file(&self, folder: &str, bytes: Vec<u8>, flags: Flags) -> Result<(u32, u32), MailboxError> {
        let record = self.next_record.get();
        self.next_record.set(record + 1);
        let id = QueueId::new(3, record * 8).expect("a valid queue id");
        let message = NewMessage {
            id,
            rcpt: 0,
            size: bytes.len() as u64,
            internal_date_ms: 1_234_567_890_000,
            prefix: Vec::new(),
        };
        self.bodies.borrow_mut().insert(id, bytes);
        let user = self.store.user(USER)?;
        // Durability is the store's business; the session's view of the
        // change is immediate.
        let (uid, _durable) = user.deliver(folder, message, flags)?;
        Ok((user.status(folder)?.uidvalidity, uid))
    }
}

impl ImapBackend for Backend {
    fn mailboxes(&self, user: &str) -> Result<Arc<UserMailboxes>, MailboxError> {
        self.store.user(user)
    }

    fn message_bytes(&self, meta: &MessageMeta) -> Option<Vec<u8>> {
        let mut bytes = meta.prefix.to_vec();
        bytes.extend_from_slice(self.bodies.borrow().get(&meta.id)?);
        Some(bytes)
    }

    fn append(
        &self,
        _user: &str,
        folder: &str,
        flags: Flags,
        _date_ms: Option<u64>,
        bytes: Vec<u8>,
    ) -> Result<AppendTicket, MailboxError> {
        let filed = self.file(folder, bytes, flags)?;
        Ok(Box::pin(std::future::ready(Ok(filed))))
    }
}

static RUN: AtomicU64 = AtomicU64::new(0);

fuzz_target!(|input: &[u8]| {
    let flags = input.first().copied().unwrap_or(0);
    let piece = usize::from(flags >> 2) + 1;
    let dir = std::env::temp_dir().join(format!(
        "tern-fuzz-imap-{}-{}",
        std::process::id(),
        RUN.fetch_add(1, Ordering::Relaxed)
    ));
    let store = MailboxStore::open(&dir, Box::new(|_, _| {})).expect("store opens");
    let backend = Rc::new(Backend {
        store,
        bodies: RefCell::default(),
        next_record: Cell::new(1),
    });
    for message in MESSAGES {
        backend
            .file("INBOX", message.to_vec(), Flags::default())
            .expect("seed message filed");
    }
    let config = Arc::new(ImapConfig {
        hostname: "fuzz.example".into(),
        starttls_available: flags & 1 != 0,
        allow_plaintext_auth: flags & 2 == 0,
        literal_max: 4096,
        autologout: AUTOLOGOUT,
        limits: SessionLimits {
            hard_error_limit: 50,
            data_min_rate: 500,
        },
    });
    let dyn_backend: Rc<dyn ImapBackend> = backend.clone();
    let mut session = ImapSession::new(config, dyn_backend, false);
    let mut events = 0;
    let mut context = Context::from_waker(Waker::noop());
    'pieces: for chunk in input.get(1..).unwrap_or_default().chunks(piece) {
        session.receive(chunk);
        loop {
            events += 1;
            assert!(events < EVENTS_MAX, "event loop");
            match session.poll() {
                ImapEvent::NeedInput | ImapEvent::Idle(_) => break,
                ImapEvent::Close => break 'pieces,
                ImapEvent::Flush => {}
                ImapEvent::StartTls => session.tls_started(),
                ImapEvent::Authenticate { login, password } => {
                    let user = (login == USER && password == "secret").then(|| USER.to_string());
                    session.auth_done(user);
                }
                ImapEvent::Commit(_durable) => session.commit_done(Ok(())),
                ImapEvent::Append(mut ticket) => {
                    let result = match ticket.as_mut().poll(&mut context) {
                        Poll::Ready(result) => result,
                        Poll::Pending => Err("append pending".to_string()),
                    };
                    session.append_done(result);
                }
            }
            let n = session.output().len();
            session.consume_output(n);
        }
    }
    session.timed_out();
    let _ = session.poll();
    drop(session);
    drop(backend);
    let _ = std::fs::remove_dir_all(&dir);
});
