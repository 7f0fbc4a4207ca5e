//! Session tests through the public sans-IO API, with a fake backend over
//! a real mailbox store in a temporary directory. A tokio runtime only
//! awaits the Durables and APPEND tickets the session hands out.
//!
//! These tests must never reach into session state: what they check is
//! what a client would see on the wire.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::path::Path;

use super::*;
use crate::limits::HARD_ERROR_LIMIT_DEFAULT;
use crate::mailbox::{MailboxStore, NewMessage};
use crate::spool::QueueId;

const USER: &str = "alice";
const PASSWORD: &str = "secret";

const MESSAGE: &str = "From: Bob <bob@example.org>\r\n\
To: alice@localhost\r\n\
Subject: Lunch\r\n\
Date: Mon, 23 Nov 2026 10:00:00 +0000\r\n\
\r\n\
Shall we meet at noon?\r\n";

const MULTIPART: &str = "From: Carol <carol@example.org>\r\n\
Subject: Report\r\n\
Content-Type: multipart/mixed; boundary=\"b\"\r\n\
\r\n\
--b\r\n\
Content-Type: text/plain\r\n\
\r\n\
See attached.\r\n\
--b\r\n\
Content-Type: application/octet-stream\r\n\
\r\n\
AAAA\r\n\
--b--\r\n";

struct Fake {
    store: Arc<MailboxStore>,
    bodies: RefCell<HashMap<QueueId, Vec<u8>>>,
    next_record: Cell<u64>,
    unreadable: Cell<bool>,
}

impl Fake {
    fn new(dir: &Path) -> Rc<Fake> {
        let store = MailboxStore::open(dir, Box::new(|_, _| {})).unwrap();
        Rc::new(Fake {
            store,
            bodies: RefCell::default(),
            next_record: Cell::new(1),
            unreadable: Cell::new(false),
        })
    }

    /// Files `bytes` in `folder` as a new spool record would be.
    fn file(
        &self,
        folder: &str,
        bytes: Vec<u8>,
        flags: Flags,
        date_ms: Option<u64>,
    ) -> Result<(u32, u32, Durable), MailboxError> {
        let record = self.next_record.get();
        self.next_record.set(record + 1);
        let id = QueueId::new(3, record * 8).unwrap();
        let size = bytes.len() as u64;
        self.bodies.borrow_mut().insert(id, bytes);
        let user = self.store.user(USER)?;
        let message = NewMessage {
            id,
            rcpt: 0,
            size,
            internal_date_ms: date_ms.unwrap_or(1_234_567_890_000),
            prefix: Vec::new(),
        };
        let (uid, durable) = user.deliver(folder, message, flags)?;
        let validity = user.status(folder)?.uidvalidity;
        Ok((validity, uid, durable))
    }

    async fn deliver(&self, bytes: &str, flags: &[&str]) -> u32 {
        let mut set = Flags::default();
        for name in flags {
            set.insert_name(name).unwrap();
        }
        let (_, uid, durable) = self
            .file("INBOX", bytes.as_bytes().to_vec(), set, None)
            .unwrap();
        durable.await.unwrap();
        uid
    }
}

fn authenticate(login: &str, password: &str) -> Option<String> {
    (login == USER && password == PASSWORD).then(|| USER.to_string())
}

impl ImapBackend for Fake {
    fn mailboxes(&self, user: &str) -> Result<Arc<UserMailboxes>, MailboxError> {
        self.store.user(user)
    }

    fn message_bytes(&self, meta: &MessageMeta) -> Option<Vec<u8>> {
        if self.unreadable.get() {
            return None;
        }
        let mut bytes = meta.prefix.to_vec();
        bytes.extend_from_slice(self.bodies.borrow().get(&meta.id)?);
        Some(bytes)
    }

    fn append(
        &self,
        _user: &str,
        folder: &str,
        flags: Flags,
        date_ms: Option<u64>,
        bytes: Vec<u8>,
    ) -> Result<AppendTicket, MailboxError> {
        let (validity, uid, durable) = self.file(folder, bytes, flags, date_ms)?;
        Ok(Box::pin(async move {
            durable.await.map_err(|e| e.to_string())?;
            Ok((validity, uid))
        }))
    }
}

fn config(allow_plaintext_auth: bool) -> Arc<ImapConfig> {
    Arc::new(ImapConfig {
        hostname: "mail.example.org".into(),
        starttls_available: true,
        allow_plaintext_auth,
        literal_max: 1 << 20,
        autologout: AUTOLOGOUT,
        limits: SessionLimits::default(),
    })
}

/// What the client saw, and the event the session stopped at.
struct Seen {
    text: String,
    event: &'static str,
}

async fn drive(session: &mut ImapSession) -> Seen {
    let event = loop {
        match session.poll() {
            ImapEvent::Commit(durable) => {
                session.commit_done(durable.await.map_err(|e| e.to_string()))
            }
            ImapEvent::Append(ticket) => session.append_done(ticket.await),
            ImapEvent::Authenticate { login, password } => {
                session.auth_done(authenticate(&login, &password))
            }
            ImapEvent::Flush => {}
            ImapEvent::NeedInput => break "NeedInput",
            ImapEvent::StartTls => break "StartTls",
            ImapEvent::Idle(_) => break "Idle",
            ImapEvent::Close => break "Close",
        }
    };
    let text = String::from_utf8_lossy(session.output()).into_owned();
    session.consume_output(session.output().len());
    Seen { text, event }
}

async fn send(session: &mut ImapSession, input: &str) -> String {
    session.receive(input.as_bytes());
    drive(session).await.text
}

async fn open(fake: &Rc<Fake>, allow_plaintext_auth: bool, tls: bool) -> (ImapSession, String) {
    let backend: Rc<dyn ImapBackend> = fake.clone();
    let mut session = ImapSession::new(config(allow_plaintext_auth), backend, tls);
    let greeting = drive(&mut session).await.text;
    (session, greeting)
}

async fn logged_in(fake: &Rc<Fake>) -> ImapSession {
    let (mut session, _) = open(fake, true, false).await;
    let reply = send(&mut session, "a LOGIN alice secret\r\n").await;
    assert!(reply.starts_with("a OK [CAPABILITY IMAP4rev1"), "{reply}");
    session
}

async fn selected(fake: &Rc<Fake>) -> ImapSession {
    let mut session = logged_in(fake).await;
    let reply = send(&mut session, "s SELECT INBOX\r\n").await;
    assert!(reply.contains("s OK [READ-WRITE]"), "{reply}");
    session
}

#[tokio::test]
async fn greeting_and_capabilities_follow_the_plaintext_policy() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new(dir.path());
    let (mut session, greeting) = open(&fake, true, false).await;
    assert!(greeting.starts_with("* OK [CAPABILITY IMAP4rev1 STARTTLS AUTH=PLAIN SASL-IR"));
    assert!(greeting.contains("APPENDLIMIT=1048576] mail.example.org IMAP4rev1 tern ready"));
    let caps = send(&mut session, "c CAPABILITY\r\n").await;
    assert!(caps.contains(" IDLE ") && caps.contains(" UIDPLUS ") && caps.contains(" MOVE "));
    assert!(caps.ends_with("c OK CAPABILITY completed\r\n"));

    let (mut strict, greeting) = open(&fake, false, false).await;
    assert!(greeting.contains("LOGINDISABLED") && !greeting.contains("AUTH=PLAIN"));
    let reply = send(&mut strict, "a LOGIN alice secret\r\n").await;
    assert_eq!(
        reply,
        "a NO [PRIVACYREQUIRED] LOGIN is disabled before STARTTLS\r\n"
    );
    let reply = send(&mut strict, "b AUTHENTICATE PLAIN AGFsaWNlAHNlY3JldA==\r\n").await;
    assert!(reply.starts_with("b NO [PRIVACYREQUIRED]"), "{reply}");
    let reply = send(&mut strict, "c SELECT INBOX\r\n").await;
    assert_eq!(reply, "c BAD SELECT needs a login first\r\n");

    // STARTTLS: what was pipelined after it is never executed.
    strict.receive(b"t STARTTLS\r\nx LOGIN alice secret\r\n");
    let seen = drive(&mut strict).await;
    assert_eq!(seen.text, "t OK Begin TLS negotiation now\r\n");
    assert_eq!(seen.event, "StartTls");
    strict.tls_started();
    let caps = send(&mut strict, "c CAPABILITY\r\n").await;
    assert!(caps.contains("AUTH=PLAIN") && !caps.contains("STARTTLS"));
    assert!(!caps.contains("LOGINDISABLED"));
    let reply = send(&mut strict, "a LOGIN alice secret\r\n").await;
    assert!(reply.starts_with("a OK [CAPABILITY"), "{reply}");
    assert!(!reply.contains("AUTH=PLAIN"));
    let reply = send(&mut strict, "t STARTTLS\r\n").await;
    assert_eq!(reply, "t BAD TLS is already active\r\n");
}

#[tokio::test]
async fn failed_logins_are_refused_then_the_session_closes() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new(dir.path());
    let (mut session, _) = open(&fake, true, true).await;
    let reply = send(&mut session, "a LOGIN alice wrong\r\n").await;
    assert_eq!(reply, "a NO [AUTHENTICATIONFAILED] Invalid credentials\r\n");
    send(&mut session, "b LOGIN mallory secret\r\n").await;
    session.receive(b"c LOGIN alice nope\r\n");
    let seen = drive(&mut session).await;
    assert!(seen.text.ends_with("* BYE Too many failed logins\r\n"));
    assert_eq!(seen.event, "Close");
}

#[tokio::test]
async fn authenticate_plain_with_initial_response_and_continuation() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new(dir.path());
    let (mut session, _) = open(&fake, true, true).await;
    // "\0alice\0secret"
    let reply = send(
        &mut session,
        "a AUTHENTICATE PLAIN AGFsaWNlAHNlY3JldA==\r\n",
    )
    .await;
    assert!(reply.starts_with("a OK [CAPABILITY"), "{reply}");
    let reply = send(&mut session, "b LOGIN alice secret\r\n").await;
    assert_eq!(reply, "b BAD Already authenticated\r\n");

    let (mut session, _) = open(&fake, true, true).await;
    assert_eq!(
        send(&mut session, "a AUTHENTICATE PLAIN\r\n").await,
        "+ \r\n"
    );
    let reply = send(&mut session, "AGFsaWNlAHNlY3JldA==\r\n").await;
    assert!(reply.starts_with("a OK [CAPABILITY"), "{reply}");

    let (mut session, _) = open(&fake, true, true).await;
    send(&mut session, "a AUTHENTICATE PLAIN\r\n").await;
    assert_eq!(
        send(&mut session, "*\r\n").await,
        "a BAD AUTHENTICATE cancelled\r\n"
    );
    send(&mut session, "b AUTHENTICATE PLAIN\r\n").await;
    // "\0alice\0wrong"
    let reply = send(&mut session, "AGFsaWNlAHdyb25n\r\n").await;
    assert_eq!(reply, "b NO [AUTHENTICATIONFAILED] Invalid credentials\r\n");
    // Someone else's identity may not be assumed (RFC 4616 2).
    let reply = send(
        &mut session,
        "c AUTHENTICATE PLAIN Ym9iAGFsaWNlAHNlY3JldA==\r\n",
    )
    .await;
    assert!(reply.starts_with("c NO [AUTHORIZATIONFAILED]"), "{reply}");
    let reply = send(&mut session, "d AUTHENTICATE CRAM-MD5\r\n").await;
    assert_eq!(reply, "d NO [CANNOT] Unsupported mechanism\r\n");
}

#[tokio::test]
async fn select_and_examine_report_the_folder() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new(dir.path());
    fake.deliver(MESSAGE, &["\\Seen"]).await;
    fake.deliver(MESSAGE, &["$Work"]).await;
    let mut session = logged_in(&fake).await;
    let validity = fake
        .store
        .user(USER)
        .unwrap()
        .status("INBOX")
        .unwrap()
        .uidvalidity;
    let reply = send(&mut session, "s SELECT inbox\r\n").await;
    let expected = format!(
        "* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Work)\r\n\
         * OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Work \\*)] Limited\r\n\
         * 2 EXISTS\r\n\
         * 0 RECENT\r\n\
         * OK [UNSEEN 2] Message 2 is the first unseen\r\n\
         * OK [UIDVALIDITY {validity}] UIDs valid\r\n\
         * OK [UIDNEXT 3] Predicted next UID\r\n\
         s OK [READ-WRITE] SELECT completed\r\n"
    );
    assert_eq!(reply, expected);
    let reply = send(&mut session, "e EXAMINE INBOX\r\n").await;
    assert!(reply.contains("* OK [PERMANENTFLAGS ()]"), "{reply}");
    assert!(reply.ends_with("e OK [READ-ONLY] EXAMINE completed\r\n"));
    let reply = send(&mut session, "n SELECT Nowhere\r\n").await;
    assert!(reply.starts_with("n NO [NONEXISTENT]"), "{reply}");
    // A failed SELECT leaves nothing selected.
    let reply = send(&mut session, "f FETCH 1 FLAGS\r\n").await;
    assert_eq!(reply, "f BAD FETCH needs a selected mailbox\r\n");
}

#[tokio::test]
async fn fetch_answers_every_attribute() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new(dir.path());
    fake.deliver(MESSAGE, &["\\Seen"]).await;
    fake.deliver(MULTIPART, &[]).await;
    let mut session = selected(&fake).await;
    let size = MESSAGE.len();
    let reply = send(
        &mut session,
        "f FETCH 1 (FLAGS UID INTERNALDATE RFC822.SIZE)\r\n",
    )
    .await;
    assert_eq!(
        reply,
        format!(
            "* 1 FETCH (FLAGS (\\Seen) UID 1 INTERNALDATE \"13-Feb-2009 23:31:30 +0000\" \
             RFC822.SIZE {size})\r\nf OK FETCH completed\r\n"
        )
    );
    let reply = send(&mut session, "f FETCH 1 ENVELOPE\r\n").await;
    assert!(
        reply.starts_with(
            "* 1 FETCH (ENVELOPE (\"Mon, 23 Nov 2026 10:00:00 +0000\" \"Lunch\" \
             ((\"Bob\" NIL \"bob\" \"example.org\"))"
        ),
        "{reply}"
    );
    let reply = send(&mut session, "f FETCH 2 (BODY BODYSTRUCTURE)\r\n").await;
    assert!(
        reply.starts_with("* 2 FETCH (BODY ((\"TEXT\" \"PLAIN\" NIL NIL NIL \"7BIT\" 13 1)("),
        "{reply}"
    );
    assert!(
        reply.contains(" \"MIXED\") BODYSTRUCTURE ((\"TEXT\" \"PLAIN\""),
        "{reply}"
    );
    assert!(reply.contains("\"MIXED\" (\"BOUNDARY\" \"b\")"), "{reply}");
    let reply = send(&mut session, "f FETCH 1 RFC822\r\n").await;
    assert_eq!(
        reply,
        format!("* 1 FETCH (RFC822 {{{size}}}\r\n{MESSAGE})\r\nf OK FETCH completed\r\n")
    );
    let reply = send(&mut session, "f FETCH 1 (RFC822.HEADER RFC822.TEXT)\r\n").await;
    let header_len = MESSAGE.find("\r\n\r\n").unwrap() + 4;
    assert!(reply.contains(&format!("RFC822.HEADER {{{header_len}}}\r\nFrom: Bob")));
    assert!(
        reply.ends_with(
            " RFC822.TEXT {24}\r\nShall we meet at noon?\r\n)\r\nf OK FETCH completed\r\n"
        ),
        "{reply}"
    );
    let reply = send(
        &mut session,
        "f FETCH 1 (BODY.PEEK[HEADER.FIELDS (Subject)] BODY.PEEK[TEXT]<6.2>)\r\n",
    )
    .await;
    assert_eq!(
        reply,
        "* 1 FETCH (BODY[HEADER.FIELDS (Subject)] {18}\r\nSubject: Lunch\r\n\r\n \
         BODY[TEXT]<6> {2}\r\nwe)\r\nf OK FETCH completed\r\n"
    );
    let reply = send(
        &mut session,
        "f FETCH 2 (BODY.PEEK[2] BODY.PEEK[1.MIME] BODY.PEEK[3])\r\n",
    )
    .await;
    assert!(reply.contains("BODY[2] {4}\r\nAAAA"), "{reply}");
    assert!(
        reply.contains("BODY[1.MIME] {28}\r\nContent-Type: text/plain\r\n\r\n"),
        "{reply}"
    );
    assert!(reply.contains("BODY[3] NIL"), "{reply}");
    let reply = send(&mut session, "u UID FETCH 2 FLAGS\r\n").await;
    assert_eq!(
        reply,
        "* 2 FETCH (UID 2 FLAGS ())\r\nu OK FETCH completed\r\n"
    );
    let reply = send(&mut session, "u UID FETCH 7:9 FLAGS\r\n").await;
    assert_eq!(reply, "u OK FETCH completed\r\n");
    let reply = send(&mut session, "b FETCH 3 FLAGS\r\n").await;
    assert_eq!(reply, "b BAD Invalid message sequence number\r\n");
    let reply = send(&mut session, "b FETCH 1 BINARY[1]\r\n").await;
    assert_eq!(
        reply,
        "* 1 FETCH (BINARY[1] {24}\r\nShall we meet at noon?\r\n)\r\nb OK FETCH completed\r\n"
    );
    let reply = send(
        &mut session,
        "b FETCH 2 (BINARY.PEEK[2]<1.2> BINARY.SIZE[1])\r\n",
    )
    .await;
    assert_eq!(
        reply,
        "* 2 FETCH (BINARY[2]<1> {2}\r\nAA BINARY.SIZE[1] 13)\r\nb OK FETCH completed\r\n"
    );
    fake.unreadable.set(true);
    let reply = send(&mut session, "r FETCH 1 (UID RFC822)\r\n").await;
    assert_eq!(
        reply,
        "* 1 FETCH (UID 1)\r\nr NO [UNAVAILABLE] Some messages could not be read\r\n"
    );
}

#[tokio::test]
async fn binary_of_an_unknown_encoding_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new(dir.path());
    fake.deliver(
        "Subject: x\r\nContent-Transfer-Encoding: x-uuencode\r\n\r\nbegin\r\n",
        &[],
    )
    .await;
    fake.deliver(
        "Subject: y\r\nContent-Transfer-Encoding: base64\r\n\r\nAAEC\r\n",
        &[],
    )
    .await;
    let mut session = selected(&fake).await;
    let reply = send(&mut session, "b FETCH 1:2 BINARY.PEEK[1]\r\n").await;
    assert_eq!(
        reply,
        "* 1 FETCH (BINARY[1] NIL)\r\n* 2 FETCH (BINARY[1] ~{3}\r\n\0\x01\x02)\r\n\
         b NO [UNKNOWN-CTE] Some parts have an unknown content transfer encoding\r\n"
    );
}

#[tokio::test]
async fn a_large_fetch_pauses_for_the_output_to_drain() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new(dir.path());
    let body = format!("Subject: big\r\n\r\n{}", "x".repeat(OUTPUT_HIGH_WATER / 2));
    for _ in 0..4 {
        fake.deliver(&body, &[]).await;
    }
    let mut session = selected(&fake).await;
    // Pipelined: the NOOP waits until the FETCH is complete.
    session.receive(b"f FETCH 1:4 BODY[]\r\nn NOOP\r\n");
    let mut flushes = 0;
    let mut text = String::new();
    loop {
        let event = session.poll();
        assert!(session.output().len() < OUTPUT_HIGH_WATER + body.len() + 100);
        text.push_str(&String::from_utf8_lossy(session.output()));
        session.consume_output(session.output().len());
        match event {
            ImapEvent::Flush => flushes += 1,
            ImapEvent::Commit(durable) => {
                session.commit_done(durable.await.map_err(|e| e.to_string()))
            }
            ImapEvent::NeedInput => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(flushes, 1);
    assert_eq!(text.matches(" FETCH (FLAGS (\\Seen) BODY[] {").count(), 4);
    assert!(text.ends_with(")\r\nf OK FETCH completed\r\nn OK NOOP completed\r\n"));
}

#[tokio::test]
async fn fetching_a_body_sets_seen_unless_peeking_or_read_only() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new(dir.path());
    fake.deliver(MESSAGE, &[]).await;
    fake.deliver(MESSAGE, &[]).await;
    let mut session = logged_in(&fake).await;
    send(&mut session, "e EXAMINE INBOX\r\n").await;
    let reply = send(&mut session, "f FETCH 1 BODY[TEXT]\r\n").await;
    assert!(!reply.contains("FLAGS"), "{reply}");
    send(&mut session, "s SELECT INBOX\r\n").await;
    let reply = send(&mut session, "f FETCH 1 BODY.PEEK[TEXT]\r\n").await;
    assert!(!reply.contains("FLAGS"), "{reply}");
    let reply = send(&mut session, "f FETCH 1:2 BODY[TEXT]\r\n").await;
    assert!(
        reply.starts_with("* 1 FETCH (FLAGS (\\Seen) BODY[TEXT]"),
        "{reply}"
    );
    assert!(
        reply.contains("* 2 FETCH (FLAGS (\\Seen) BODY[TEXT]"),
        "{reply}"
    );
    assert!(reply.ends_with("f OK FETCH completed\r\n"));
    // Already seen: no FLAGS the second time.
    let reply = send(&mut session, "f FETCH 1 BODY[TEXT]\r\n").await;
    assert!(!reply.contains("FLAGS"), "{reply}");
    let status = fake.store.user(USER).unwrap().status("INBOX").unwrap();
    assert_eq!(status.unseen, 0);
}

#[tokio::test]
async fn store_and_expunge_report_changes_and_uidplus() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new(dir.path());
    for _ in 0..4 {
        fake.deliver(MESSAGE, &[]).await;
    }
    let mut session = selected(&fake).await;
    let reply = send(&mut session, "a STORE 1:2 +FLAGS (\\Deleted $Done)\r\n").await;
    // The new keyword is announced with FLAGS and PERMANENTFLAGS.
    assert_eq!(
        reply,
        "* 1 FETCH (FLAGS (\\Deleted $Done))\r\n\
         * 2 FETCH (FLAGS (\\Deleted $Done))\r\n\
         * FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Done)\r\n\
         * OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Done \\*)] Limited\r\n\
         a OK STORE completed\r\n"
    );
    let reply = send(&mut session, "b UID STORE 4 +FLAGS.SILENT (\\Deleted)\r\n").await;
    assert_eq!(reply, "b OK STORE completed\r\n");
    let reply = send(&mut session, "c STORE 2 -FLAGS ($Done)\r\n").await;
    assert_eq!(
        reply,
        "* 2 FETCH (FLAGS (\\Deleted))\r\nc OK STORE completed\r\n"
    );
    let reply = send(&mut session, "d STORE 1 FLAGS (\\Recent \\Bogus)\r\n").await;
    assert!(reply.starts_with("d NO [CANNOT]"), "{reply}");
    // UID EXPUNGE removes only the named UIDs (RFC 4315 2.1).
    let reply = send(&mut session, "e UID EXPUNGE 4\r\n").await;
    assert_eq!(reply, "* 4 EXPUNGE\r\ne OK EXPUNGE completed\r\n");
    let reply = send(&mut session, "f EXPUNGE\r\n").await;
    assert_eq!(
        reply,
        "* 2 EXPUNGE\r\n* 1 EXPUNGE\r\nf OK EXPUNGE completed\r\n"
    );
    let reply = send(&mut session, "g FETCH 1 UID\r\n").await;
    assert_eq!(reply, "* 1 FETCH (UID 3)\r\ng OK FETCH completed\r\n");
    assert_eq!(
        fake.store
            .user(USER)
            .unwrap()
            .status("INBOX")
            .unwrap()
            .messages,
        1
    );
    let reply = send(&mut session, "h UNSELECT\r\n").await;
    assert_eq!(reply, "h OK UNSELECT completed\r\n");
    let reply = send(&mut session, "i EXPUNGE\r\n").await;
    assert_eq!(reply, "i BAD EXPUNGE needs a selected mailbox\r\n");
}

#[tokio::test]
async fn close_expunges_silently_and_examine_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new(dir.path());
    fake.deliver(MESSAGE, &["\\Deleted"]).await;
    fake.deliver(MESSAGE, &[]).await;
    let mut session = logged_in(&fake).await;
    send(&mut session, "e EXAMINE INBOX\r\n").await;
    let reply = send(&mut session, "s STORE 1 +FLAGS (\\Seen)\r\n").await;
    assert_eq!(reply, "s NO [CANNOT] Mailbox is read-only\r\n");
    assert_eq!(
        send(&mut session, "c CLOSE\r\n").await,
        "c OK CLOSE completed\r\n"
    );
    assert_eq!(
        fake.store
            .user(USER)
            .unwrap()
            .status("INBOX")
            .unwrap()
            .messages,
        2
    );
    send(&mut session, "s SELECT INBOX\r\n").await;
    assert_eq!(
        send(&mut session, "c CLOSE\r\n").await,
        "c OK CLOSE completed\r\n"
    );
    assert_eq!(
        fake.store
            .user(USER)
            .unwrap()
            .status("INBOX")
            .unwrap()
            .messages,
        1
    );
}

#[tokio::test]
async fn copy_and_move_answer_with_copyuid() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new(dir.path());
    for _ in 0..3 {
        fake.deliver(MESSAGE, &["\\Flagged"]).await;
    }
    let user = fake.store.user(USER).unwrap();
    let trash = user.status("Trash").unwrap().uidvalidity;
    let mut session = selected(&fake).await;
    let reply = send(&mut session, "c COPY 1:2 Trash\r\n").await;
    assert_eq!(
        reply,
        format!("c OK [COPYUID {trash} 1:2 1:2] COPY completed\r\n")
    );
    let reply = send(&mut session, "m UID MOVE 2:3 Trash\r\n").await;
    assert_eq!(
        reply,
        format!(
            "* OK [COPYUID {trash} 2:3 3:4] Moved\r\n* 3 EXPUNGE\r\n* 2 EXPUNGE\r\n\
             m OK MOVE completed\r\n"
        )
    );
    let reply = send(&mut session, "n COPY 1 Nowhere\r\n").await;
    assert_eq!(
        reply,
        "n NO [TRYCREATE] No such mailbox; create it first\r\n"
    );
    let trash_status = user.status("Trash").unwrap();
    assert_eq!(trash_status.messages, 4);
    let snapshot = user.snapshot("Trash").unwrap();
    assert!(snapshot
        .messages
        .iter()
        .all(|m| m.flags.system.contains(SystemFlags::FLAGGED)));
    // Copying into the selected folder shows up as EXISTS.
    let reply = send(&mut session, "c UID COPY 1 INBOX\r\n").await;
    assert!(reply.starts_with("* 2 EXISTS\r\nc OK [COPYUID"), "{reply}");
}

#[tokio::test]
async fn two_sessions_see_each_others_changes() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new(dir.path());
    for _ in 0..3 {
        fake.deliver(MESSAGE, &[]).await;
    }
    let mut first = selected(&fake).await;
    let mut second = selected(&fake).await;
    send(&mut second, "a STORE 2 +FLAGS (\\Flagged)\r\n").await;
    // A wake-up outside IDLE swallows nothing.
    first.mailbox_changed();
    let reply = send(&mut first, "n NOOP\r\n").await;
    assert_eq!(
        reply,
        "* 2 FETCH (UID 2 FLAGS (\\Flagged))\r\nn OK NOOP completed\r\n"
    );
    send(&mut second, "b STORE 1 +FLAGS (\\Deleted)\r\n").await;
    send(&mut second, "c EXPUNGE\r\n").await;
    fake.deliver(MESSAGE, &[]).await;
    // FETCH by sequence number may not report the expunge (RFC 3501
    // 7.4.1); the new message it may.
    let reply = send(&mut first, "f FETCH 1 UID\r\n").await;
    assert_eq!(
        reply,
        "* 1 FETCH (UID 1)\r\n* 4 EXISTS\r\nf OK FETCH completed\r\n"
    );
    let reply = send(&mut first, "n NOOP\r\n").await;
    assert_eq!(reply, "* 1 EXPUNGE\r\nn OK NOOP completed\r\n");
    let reply = send(&mut first, "f FETCH 1:* UID\r\n").await;
    assert_eq!(
        reply,
        "* 1 FETCH (UID 2)\r\n* 2 FETCH (UID 3)\r\n* 3 FETCH (UID 4)\r\nf OK FETCH completed\r\n"
    );
    // The other session deletes the selected folder: BYE.
    send(&mut second, "c CREATE Projects\r\n").await;
    send(&mut first, "s SELECT Projects\r\n").await;
    send(&mut second, "d DELETE Projects\r\n").await;
    first.receive(b"n NOOP\r\n");
    let seen = drive(&mut first).await;
    assert!(seen.text.starts_with("* BYE"), "{}", seen.text);
    assert_eq!(seen.event, "Close");
}

#[tokio::test]
async fn idle_reports_new_mail_until_done() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new(dir.path());
    fake.deliver(MESSAGE, &[]).await;
    let mut session = selected(&fake).await;
    session.receive(b"i IDLE\r\n");
    let seen = drive(&mut session).await;
    assert_eq!(seen.text, "+ idling\r\n");
    assert_eq!(seen.event, "Idle");
    let mut changes = match session.poll() {
        ImapEvent::Idle(changes) => changes,
        other => panic!("expected Idle, got {other:?}"),
    };
    assert!(!changes.has_changed().unwrap());
    fake.deliver(MESSAGE, &[]).await;
    changes.changed().await.unwrap();
    session.mailbox_changed();
    let seen = drive(&mut session).await;
    assert_eq!(seen.text, "* 2 EXISTS\r\n");
    assert_eq!(seen.event, "Idle");
    let reply = send(&mut session, "DONE\r\n").await;
    assert_eq!(reply, "i OK IDLE terminated\r\n");
    session.receive(b"j IDLE\r\n");
    drive(&mut session).await;
    let reply = send(&mut session, "NOOP\r\n").await;
    assert_eq!(reply, "j BAD Expected DONE to end IDLE\r\n");
    assert_eq!(
        send(&mut session, "n NOOP\r\n").await,
        "n OK NOOP completed\r\n"
    );
}

#[tokio::test]
async fn append_files_through_the_backend() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new(dir.path());
    let mut session = selected(&fake).await;
    let validity = fake
        .store
        .user(USER)
        .unwrap()
        .status("INBOX")
        .unwrap()
        .uidvalidity;
    let command = format!(
        "a APPEND INBOX (\\Seen) \"05-Jan-2024 10:00:00 +0100\" {{{}}}\r\n",
        MESSAGE.len()
    );
    let reply = send(&mut session, &command).await;
    assert_eq!(reply, "+ Ready for literal data\r\n");
    let reply = send(&mut session, &format!("{MESSAGE}\r\n")).await;
    assert_eq!(
        reply,
        format!("* 1 EXISTS\r\na OK [APPENDUID {validity} 1] APPEND completed\r\n")
    );
    let reply = send(&mut session, "f FETCH 1 (FLAGS INTERNALDATE)\r\n").await;
    assert!(
        reply.contains("FLAGS (\\Seen) INTERNALDATE \"05-Jan-2024 09:00:00 +0000\""),
        "{reply}"
    );
    // LITERAL+: no continuation request.
    let reply = send(
        &mut session,
        &format!("b APPEND Drafts {{{}+}}\r\n{MESSAGE}\r\n", MESSAGE.len()),
    )
    .await;
    assert!(reply.starts_with("b OK [APPENDUID"), "{reply}");
    let reply = send(&mut session, "c APPEND Nowhere {1+}\r\nx\r\n").await;
    assert_eq!(
        reply,
        "c NO [TRYCREATE] No such mailbox; create it first\r\n"
    );
    let reply = send(&mut session, "d APPEND INBOX {2000000}\r\n").await;
    assert!(reply.starts_with("d NO [TOOBIG]"), "{reply}");
    assert_eq!(
        send(&mut session, "n NOOP\r\n").await,
        "n OK NOOP completed\r\n"
    );
}

#[tokio::test]
async fn folders_are_managed_listed_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new(dir.path());
    fake.deliver(MESSAGE, &[]).await;
    let mut session = logged_in(&fake).await;
    assert_eq!(
        send(&mut session, "c CREATE Work/2026\r\n").await,
        "c OK CREATE completed\r\n"
    );
    let reply = send(&mut session, "c CREATE Work\r\n").await;
    assert!(reply.starts_with("c NO [ALREADYEXISTS]"), "{reply}");
    let reply = send(&mut session, "l LIST \"\" *\r\n").await;
    assert_eq!(
        reply,
        "* LIST (\\HasNoChildren \\Drafts) \"/\" Drafts\r\n\
         * LIST (\\HasNoChildren) \"/\" INBOX\r\n\
         * LIST (\\HasNoChildren \\Junk) \"/\" Junk\r\n\
         * LIST (\\HasNoChildren \\Sent) \"/\" Sent\r\n\
         * LIST (\\HasNoChildren \\Trash) \"/\" Trash\r\n\
         * LIST (\\HasChildren) \"/\" Work\r\n\
         * LIST (\\HasNoChildren) \"/\" Work/2026\r\n\
         l OK LIST completed\r\n"
    );
    let reply = send(&mut session, "l LIST \"\" %\r\n").await;
    assert!(!reply.contains("Work/2026"), "{reply}");
    let reply = send(&mut session, "l LIST Work/ %\r\n").await;
    assert_eq!(
        reply,
        "* LIST (\\HasNoChildren) \"/\" Work/2026\r\nl OK LIST completed\r\n"
    );
    let reply = send(&mut session, "l LIST \"\" \"\"\r\n").await;
    assert_eq!(
        reply,
        "* LIST (\\Noselect) \"/\" \"\"\r\nl OK LIST completed\r\n"
    );
    let reply = send(&mut session, "l LIST (SPECIAL-USE) \"\" *\r\n").await;
    assert_eq!(reply.matches("* LIST").count(), 4, "{reply}");
    let reply = send(&mut session, "l LIST \"\" inbox\r\n").await;
    assert!(
        reply.starts_with("* LIST (\\HasNoChildren) \"/\" INBOX\r\n"),
        "{reply}"
    );
    assert_eq!(
        send(&mut session, "u UNSUBSCRIBE Junk\r\n").await,
        "u OK UNSUBSCRIBE completed\r\n"
    );
    send(&mut session, "u SUBSCRIBE Gone\r\n").await;
    let reply = send(&mut session, "l LSUB \"\" *\r\n").await;
    assert!(reply.contains("* LSUB () \"/\" Drafts\r\n"), "{reply}");
    assert!(
        reply.contains("* LSUB (\\Noselect) \"/\" Gone\r\n"),
        "{reply}"
    );
    assert!(!reply.contains("Junk"), "{reply}");
    let reply = send(
        &mut session,
        "s STATUS INBOX (MESSAGES UNSEEN UIDNEXT RECENT)\r\n",
    )
    .await;
    assert_eq!(
        reply,
        "* STATUS INBOX (MESSAGES 1 UNSEEN 1 UIDNEXT 2 RECENT 0)\r\ns OK STATUS completed\r\n"
    );
    assert_eq!(
        send(&mut session, "r RENAME Work Play\r\n").await,
        "r OK RENAME completed\r\n"
    );
    let reply = send(&mut session, "d DELETE Play\r\n").await;
    assert!(reply.starts_with("d NO [CANNOT]"), "{reply}");
    assert_eq!(
        send(&mut session, "d DELETE Play/2026\r\n").await,
        "d OK DELETE completed\r\n"
    );
    let reply = send(&mut session, "d DELETE INBOX\r\n").await;
    assert!(reply.starts_with("d NO [CANNOT]"), "{reply}");
    let reply = send(&mut session, "s STATUS Nowhere (MESSAGES)\r\n").await;
    assert!(reply.starts_with("s NO [NONEXISTENT]"), "{reply}");
    let reply = send(&mut session, "n NAMESPACE\r\n").await;
    assert_eq!(
        reply,
        "* NAMESPACE ((\"\" \"/\")) NIL NIL\r\nn OK NAMESPACE completed\r\n"
    );
    let reply = send(&mut session, "i ID NIL\r\n").await;
    assert!(reply.starts_with("* ID (\"name\" \"tern\")\r\n"), "{reply}");
    let reply = send(&mut session, "e ENABLE CONDSTORE\r\n").await;
    assert_eq!(reply, "* ENABLED\r\ne OK ENABLE completed\r\n");
}

#[tokio::test]
async fn search_answers_sequence_numbers_or_uids() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new(dir.path());
    fake.deliver(MESSAGE, &["\\Seen"]).await;
    fake.deliver(MULTIPART, &[]).await;
    fake.deliver(MESSAGE, &[]).await;
    let mut session = selected(&fake).await;
    send(&mut session, "x STORE 1 +FLAGS (\\Deleted)\r\n").await;
    send(&mut session, "x EXPUNGE\r\n").await;
    let reply = send(&mut session, "a SEARCH UNSEEN\r\n").await;
    assert_eq!(reply, "* SEARCH 1 2\r\na OK SEARCH completed\r\n");
    let reply = send(&mut session, "b UID SEARCH SUBJECT lunch\r\n").await;
    assert_eq!(reply, "* SEARCH 3\r\nb OK SEARCH completed\r\n");
    let reply = send(&mut session, "c SEARCH CHARSET UTF-8 BODY attached\r\n").await;
    assert_eq!(reply, "* SEARCH 1\r\nc OK SEARCH completed\r\n");
    let reply = send(&mut session, "d SEARCH CHARSET KOI8-R ALL\r\n").await;
    assert_eq!(
        reply,
        "d NO [BADCHARSET (UTF-8 US-ASCII)] Unsupported charset\r\n"
    );
    let reply = send(&mut session, "e SEARCH FLAGGED\r\n").await;
    assert_eq!(reply, "* SEARCH\r\ne OK SEARCH completed\r\n");
}

#[tokio::test]
async fn bad_commands_get_bad_and_too_many_close_the_session() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new(dir.path());
    let (mut session, _) = open(&fake, true, false).await;
    let reply = send(&mut session, "a FROBNICATE\r\n").await;
    assert!(reply.starts_with("a BAD "), "{reply}");
    let reply = send(&mut session, "\r\n").await;
    assert!(reply.starts_with("* BAD "), "{reply}");
    // A good command resets the count.
    send(&mut session, "n NOOP\r\n").await;
    for _ in 0..HARD_ERROR_LIMIT_DEFAULT - 1 {
        let seen = drive_input(&mut session, "x FROB\r\n").await;
        assert_eq!(seen.event, "NeedInput");
    }
    let seen = drive_input(&mut session, "x FROB\r\n").await;
    assert!(seen.text.ends_with("* BYE Too many invalid commands\r\n"));
    assert_eq!(seen.event, "Close");
    session.receive(b"n NOOP\r\n");
    assert_eq!(drive(&mut session).await.text, "");
}

async fn drive_input(session: &mut ImapSession, input: &str) -> Seen {
    session.receive(input.as_bytes());
    drive(session).await
}

#[tokio::test]
async fn logout_timeouts_and_shutdown_say_bye() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new(dir.path());
    let mut session = logged_in(&fake).await;
    let seen = drive_input(&mut session, "z LOGOUT\r\n").await;
    assert_eq!(
        seen.text,
        "* BYE mail.example.org IMAP4rev1 tern signing off\r\nz OK LOGOUT completed\r\n"
    );
    assert_eq!(seen.event, "Close");
    let mut session = logged_in(&fake).await;
    assert_eq!(session.read_timeout(), AUTOLOGOUT);
    session.timed_out();
    let seen = drive(&mut session).await;
    assert_eq!(seen.text, "* BYE Autologout; idle for too long\r\n");
    assert_eq!(seen.event, "Close");
    let mut session = logged_in(&fake).await;
    assert!(session.shutting_down());
    assert_eq!(
        drive(&mut session).await.text,
        "* BYE Server shutting down\r\n"
    );
}

#[tokio::test]
async fn deadline_restarts_per_command_bounds_idle_and_paces_literals() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new(dir.path());
    let mut session = logged_in(&fake).await;
    let start = session.deadline();
    assert_eq!(start.within, AUTOLOGOUT);
    // Part of a command is no progress.
    session.receive(b"n NO");
    drive(&mut session).await;
    assert_eq!(session.deadline().unit, start.unit);
    send(&mut session, "OP\r\n").await;
    let after = session.deadline();
    assert_ne!(after.unit, start.unit);
    // A literal being received buys time at the minimum rate (500 B/s).
    let reply = send(&mut session, "a APPEND INBOX {10000+}\r\n").await;
    assert_eq!(reply, "");
    session.receive(&[b'x'; 1000]);
    drive(&mut session).await;
    let literal = session.deadline();
    assert_eq!(literal.unit, after.unit);
    assert!(
        literal.within >= AUTOLOGOUT + Duration::from_secs(2),
        "{literal:?}"
    );
    // An IDLE is one unit: mailbox changes do not extend it.
    let mut session = logged_in(&fake).await;
    send(&mut session, "s SELECT INBOX\r\n").await;
    send(&mut session, "i IDLE\r\n").await;
    let idle = session.deadline();
    session.mailbox_changed();
    assert_eq!(session.deadline(), idle);
    send(&mut session, "DONE\r\n").await;
    assert_ne!(session.deadline().unit, idle.unit);
}

#[tokio::test]
async fn renaming_the_selected_folder_keeps_it_selected() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new(dir.path());
    let mut session = logged_in(&fake).await;
    send(&mut session, "c CREATE Work/Old\r\n").await;
    send(&mut session, "s SELECT Work/Old\r\n").await;
    let command = format!("a APPEND Work/Old {{{}+}}\r\n{MESSAGE}\r\n", MESSAGE.len());
    let reply = send(&mut session, &command).await;
    assert!(
        reply.starts_with("* 1 EXISTS\r\na OK [APPENDUID"),
        "{reply}"
    );
    assert_eq!(
        send(&mut session, "r RENAME Work Play\r\n").await,
        "r OK RENAME completed\r\n"
    );
    let reply = send(&mut session, "f UID FETCH 1:* UID\r\n").await;
    assert_eq!(reply, "* 1 FETCH (UID 1)\r\nf OK FETCH completed\r\n");
    // Deleting it deselects it.
    assert_eq!(
        send(&mut session, "d DELETE Play/Old\r\n").await,
        "d OK DELETE completed\r\n"
    );
    let reply = send(&mut session, "n NOOP\r\n").await;
    assert_eq!(reply, "n OK NOOP completed\r\n");
    let reply = send(&mut session, "f FETCH 1 UID\r\n").await;
    assert_eq!(reply, "f BAD FETCH needs a selected mailbox\r\n");
}

#[tokio::test]
async fn sets_on_an_empty_folder_and_login_literals() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new(dir.path());
    let (mut session, _) = open(&fake, true, true).await;
    assert_eq!(
        send(&mut session, "a LOGIN {5}\r\n").await,
        "+ Ready for literal data\r\n"
    );
    let reply = send(&mut session, "alice \"secret\"\r\n").await;
    assert!(reply.starts_with("a OK [CAPABILITY"), "{reply}");
    send(&mut session, "s SELECT Junk\r\n").await;
    let reply = send(&mut session, "f UID FETCH 1:* FLAGS\r\n").await;
    assert_eq!(reply, "f OK FETCH completed\r\n");
    let reply = send(&mut session, "f FETCH 1:* FLAGS\r\n").await;
    assert_eq!(reply, "f BAD Invalid message sequence number\r\n");
    let reply = send(&mut session, "s SEARCH ALL\r\n").await;
    assert_eq!(reply, "* SEARCH\r\ns OK SEARCH completed\r\n");
    let reply = send(&mut session, "t STARTTLS\r\n").await;
    assert_eq!(reply, "t BAD TLS is already active\r\n");
    let backend: Rc<dyn ImapBackend> = fake.clone();
    let no_tls = Arc::new(ImapConfig {
        starttls_available: false,
        ..(*config(true)).clone()
    });
    let mut session = ImapSession::new(no_tls, backend, false);
    let greeting = drive(&mut session).await.text;
    assert!(!greeting.contains("STARTTLS"), "{greeting}");
    let reply = send(&mut session, "t STARTTLS\r\n").await;
    assert_eq!(reply, "t BAD STARTTLS is not available\r\n");
}

#[test]
fn list_patterns_match_wildcards() {
    assert!(list_match("*", "a/b/c"));
    assert!(list_match("%", "INBOX"));
    assert!(!list_match("%", "a/b"));
    assert!(list_match("a/%", "a/b"));
    assert!(!list_match("a/%", "a/b/c"));
    assert!(list_match("a*c", "a/b/c"));
    assert!(list_match("a%c", "abc"));
    assert!(!list_match("a%c", "a/c"));
    assert!(!list_match("INBOX", "INBOX/x"));
    assert!(list_match("", ""));
    assert!(!list_match("", "x"));
    assert_eq!(full_pattern("", "inbox/%"), "INBOX/%");
    assert_eq!(full_pattern("Work/", "%"), "Work/%");
    assert_eq!(full_pattern("", "Inboxes"), "Inboxes");
}
