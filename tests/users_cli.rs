//! `tern user` as an operator meets it: the real binary edits the users file
//! named by a temporary config, a live `UsersHandle` (what the server holds)
//! sees the edits, and bad input gets an error naming the user, address or
//! file without touching the file.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use tern::users::{Users, UsersHandle};

struct Setup {
    _dir: tempfile::TempDir,
    config: PathBuf,
    users_file: PathBuf,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let users_file = dir.path().join("var").join("users.toml");
    let config = dir.path().join("tern.toml");
    std::fs::write(
        &config,
        format!("[users]\nfile = {:?}\n", users_file.display().to_string()),
    )
    .unwrap();
    Setup {
        _dir: dir,
        config,
        users_file,
    }
}

/// Runs `tern -c CONFIG args...` with `stdin` as standard input.
fn tern(config: &Path, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tern"))
        .arg("-c")
        .arg(config)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tern runs");
    let mut input = child.stdin.take().unwrap();
    // A command refused before it reads its input exits early; the pipe
    // is then closed, which is not the test's concern.
    match input.write_all(stdin.as_bytes()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        other => other.unwrap(),
    }
    drop(input);
    child.wait_with_output().unwrap()
}

fn ok(config: &Path, args: &[&str], stdin: &str) -> String {
    let out = tern(config, args, stdin);
    assert!(
        out.status.success(),
        "tern {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn fails(config: &Path, args: &[&str], stdin: &str) -> String {
    let out = tern(config, args, stdin);
    assert!(!out.status.success(), "tern {args:?} succeeded");
    String::from_utf8(out.stderr).unwrap()
}

#[test]
fn add_list_passwd_alias_del_through_a_live_handle() {
    let s = setup();
    let c = s.config.as_path();
    let handle = UsersHandle::open(&s.users_file).unwrap();
    assert!(handle.current().is_empty());

    let out = ok(
        c,
        &[
            "user",
            "add",
            "alice@localhost",
            "--address",
            "a.smith@localhost",
            "--password-stdin",
        ],
        "first secret\n",
    );
    assert!(out.contains("alice@localhost, a.smith@localhost"), "{out}");
    ok(
        c,
        &["user", "add", "bob", "--password-stdin"],
        "bob secret\r\n",
    );

    let list = ok(c, &["user", "list"], "");
    assert!(
        list.contains("alice@localhost\talice@localhost, a.smith@localhost"),
        "{list}"
    );
    assert!(list.contains("-- 2 user(s)"), "{list}");
    assert!(!list.contains("argon2"), "hashes are never listed: {list}");
    let json: serde_json::Value =
        serde_json::from_str(&ok(c, &["user", "list", "--json"], "")).unwrap();
    assert_eq!(json[0]["name"], "alice@localhost");
    assert_eq!(json[0]["addresses"][1], "a.smith@localhost");
    assert_eq!(json[1]["name"], "bob");
    assert!(json[0].get("password").is_none());

    // The server's handle re-reads the file at most once a second.
    std::thread::sleep(Duration::from_millis(1100));
    let alice = handle.verify("A.Smith@localhost", b"first secret").unwrap();
    assert_eq!(alice.name(), "alice@localhost");
    assert!(
        handle.verify("bob", b"bob secret").is_some(),
        "CRLF is stripped"
    );
    assert!(handle.verify("alice@localhost", b"wrong").is_none());

    ok(
        c,
        &["user", "passwd", "alice@localhost", "--password-stdin"],
        "second secret\n",
    );
    ok(c, &["user", "alias", "add", "bob", "Robert@localhost"], "");
    ok(
        c,
        &[
            "user",
            "alias",
            "del",
            "alice@localhost",
            "A.SMITH@localhost",
        ],
        "",
    );
    let users = Users::load(&s.users_file).unwrap();
    assert!(users.verify("alice@localhost", b"second secret").is_some());
    assert!(users.verify("alice@localhost", b"first secret").is_none());
    assert_eq!(
        users.find_by_address("robert@localhost").map(|u| u.name()),
        Some("bob")
    );
    assert!(users.find_by_address("a.smith@localhost").is_none());

    ok(c, &["user", "del", "alice@localhost"], "");
    let list = ok(c, &["user", "list"], "");
    assert!(!list.contains("alice"), "{list}");
    assert!(list.contains("-- 1 user(s)"), "{list}");
}

#[test]
fn bad_input_is_refused_with_a_clear_error_and_the_file_untouched() {
    let s = setup();
    let c = s.config.as_path();
    ok(
        c,
        &[
            "user",
            "add",
            "alice",
            "--address",
            "alice@localhost",
            "--password-stdin",
        ],
        "pw\n",
    );
    let before = std::fs::read(&s.users_file).unwrap();

    let cases: [(&[&str], &str, &str); 9] = [
        (
            &["user", "add", "ALICE", "--password-stdin"],
            "pw\n",
            "alice",
        ),
        (
            &[
                "user",
                "add",
                "carol",
                "--address",
                "Alice@localhost",
                "--password-stdin",
            ],
            "pw\n",
            "already belongs to user alice",
        ),
        (
            &[
                "user",
                "add",
                "carol",
                "--address",
                "carol",
                "--password-stdin",
            ],
            "pw\n",
            "\"carol\": not of the form local-part@domain",
        ),
        (
            &["user", "add", "car ol", "--password-stdin"],
            "pw\n",
            "car ol",
        ),
        (
            &["user", "add", "carol", "--password-stdin"],
            "\n",
            "password is empty",
        ),
        (
            &["user", "add", "carol", "--password-stdin"],
            "",
            "no password on standard input",
        ),
        (&["user", "add", "carol"], "pw\n", "--password-stdin"),
        (&["user", "del", "carol"], "", "no user carol"),
        (
            &["user", "alias", "del", "alice", "bob@localhost"],
            "",
            "user alice has no address bob@localhost",
        ),
    ];
    for (args, stdin, expected) in cases {
        let err = fails(c, args, stdin);
        assert!(err.contains(expected), "tern {args:?}: {err}");
    }
    assert_eq!(std::fs::read(&s.users_file).unwrap(), before);

    std::fs::write(
        &s.users_file,
        "[[user]]\nname = \"dave\"\npassword = \"hunter2\"\n",
    )
    .unwrap();
    let err = fails(c, &["user", "list"], "");
    assert!(
        err.contains("users.toml") && err.contains("entry 1") && err.contains("dave"),
        "{err}"
    );
    let err = fails(c, &["user", "add", "erin", "--password-stdin"], "pw\n");
    assert!(err.contains("users.toml"), "{err}");
}
