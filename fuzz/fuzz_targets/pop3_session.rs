//! Fuzz target: arbitrary bytes into the POP3 server session with a fake
//! backend (one user with a small maildrop), split at a fuzzer-chosen
//! point, with every event answered as a runtime would. Must never panic,
//! never emit a bare CR or LF, never commit twice, and never leave the
//! maildrop locked once the session is gone.
#![no_main]

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use tern::limits::SessionLimits;
use tern::pop3::{
    DropMessage, Maildrop, MaildropError, Pop3Backend, Pop3Config, Pop3Event, Pop3Session,
};

const MESSAGES: [&[u8]; 3] = [
    b"Subject: a\r\n\r\n.\r\n..x\r\nbody\r\n",
    b"Subject: b\r\nX: y\r\n\r\nl1\r\nl2",
    b"no header break\n.bare lf\n",
];

struct Backend {
    locked: Rc<Cell<bool>>,
}

fn authenticate(login: &str, password: &str) -> Option<String> {
    (login == "alice" && password == "secret").then(|| "alice".to_owned())
}

impl Pop3Backend for Backend {
    type Commit = Vec<usize>;

    fn open_maildrop(
        &self,
        _user: &str,
    ) -> Result<Box<dyn Maildrop<Commit = Vec<usize>>>, MaildropError> {
        if self.locked.replace(true) {
            return Err(MaildropError::InUse);
        }
        Ok(Box::new(FuzzDrop {
            locked: Rc::clone(&self.locked),
            messages: MESSAGES
                .iter()
                .enumerate()
                .map(|(i, m)| DropMessage {
                    uidl: format!("u{i}"),
                    size: m.len() as u64,
                })
                .chain(std::iter::once(DropMessage {
                    uidl: "unreadable".into(),
                    size: 7,
                }))
                .collect(),
        }))
    }
}

struct FuzzDrop {
    locked: Rc<Cell<bool>>,
    messages: Vec<DropMessage>,
}

impl Maildrop for FuzzDrop {
    type Commit = Vec<usize>;

    fn messages(&self) -> &[DropMessage] {
        &self.messages
    }

    fn content(&self, index: usize) -> Option<Vec<u8>> {
        MESSAGES.get(index).map(|m| m.to_vec())
    }

    fn delete(&mut self, indexes: &[usize]) -> Vec<usize> {
        assert!(!indexes.is_empty(), "empty commit");
        assert!(indexes.windows(2).all(|w| w[0] < w[1]), "unsorted commit");
        assert!(
            indexes.iter().all(|&i| i < self.messages.len()),
            "bad index"
        );
        indexes.to_vec()
    }
}

impl Drop for FuzzDrop {
    fn drop(&mut self) {
        self.locked.set(false);
    }
}

fn canonical(output: &[u8]) -> bool {
    let mut prev = 0u8;
    for &b in output {
        if (b == b'\n') != (prev == b'\r') {
            return false;
        }
        prev = b;
    }
    prev != b'\r'
}

fuzz_target!(|input: &[u8]| {
    let flags = input.first().copied().unwrap_or(0);
    let split = input.get(1).map_or(0, |&b| b as usize).min(input.len());
    let (first, second) = input.split_at(split);
    let config = Arc::new(Pop3Config {
        hostname: "fuzz.example".into(),
        stls_available: flags & 1 != 0,
        allow_plaintext_auth: flags & 2 != 0,
        autologout: Duration::from_secs(600),
        limits: SessionLimits {
            hard_error_limit: input.get(2).map_or(20, |&b| u32::from(b) + 1),
            data_min_rate: 500,
        },
    });
    let locked = Rc::new(Cell::new(false));
    let backend: Rc<dyn Pop3Backend<Commit = Vec<usize>>> = Rc::new(Backend {
        locked: Rc::clone(&locked),
    });
    let mut session = Pop3Session::new(config, backend, flags & 4 != 0);
    let mut commits = 0;
    let mut written = Vec::new();
    for chunk in [first, second] {
        session.receive(chunk);
        loop {
            match session.poll() {
                Pop3Event::NeedInput | Pop3Event::Close => break,
                Pop3Event::StartTls => session.tls_started(),
                Pop3Event::Authenticate { login, password } => {
                    session.auth_done(authenticate(&login, &password));
                }
                Pop3Event::Commit(_) => {
                    commits += 1;
                    assert_eq!(commits, 1, "second commit");
                    let result = if flags & 8 != 0 {
                        Ok(())
                    } else {
                        Err("fuzz".to_owned())
                    };
                    session.commit_done(result);
                }
            }
        }
        written.extend_from_slice(session.output());
        let n = session.output().len();
        session.consume_output(n);
    }
    session.timed_out();
    let _ = session.poll();
    written.extend_from_slice(session.output());
    assert!(canonical(&written), "bare CR or LF in output");
    drop(session);
    assert!(!locked.get(), "maildrop still locked");
});
