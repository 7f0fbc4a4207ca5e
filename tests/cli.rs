//! The command line as an operator meets it: `check-config` names the bad
//! key and the file, an unwritable spool stops start-up, and `queue list`
//! works on an empty spool.

mod common;

use std::process::Command;

use common::{data_frame, test_config, RawClient};

fn tern(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tern"))
        .args(args)
        .output()
        .expect("tern runs")
}

#[test]
fn check_config_accepts_the_example() {
    let dir = tempfile::tempdir().unwrap();
    // check-config loads the DKIM keys: make the two the example names.
    let rsa = mail_auth::dkim::generate::DkimKeyPair::generate_rsa(2048).unwrap();
    let ed25519 = mail_auth::dkim::generate::DkimKeyPair::generate_ed25519().unwrap();
    for (file, label, der) in [
        ("example.net.rsa.pem", "RSA PRIVATE KEY", rsa.private_key()),
        (
            "example.net.ed25519.pem",
            "PRIVATE KEY",
            ed25519.private_key(),
        ),
    ] {
        let pem = pem::encode(&pem::Pem::new(label, der.to_vec()));
        std::fs::write(dir.path().join(file), pem).unwrap();
    }
    // The example names production paths; point the spool and the keys at
    // a temp dir.
    let text = include_str!("../config/tern.toml")
        .replace(
            "/var/spool/tern",
            &dir.path().join("spool").display().to_string(),
        )
        .replace("/etc/tern/dkim", &dir.path().display().to_string())
        .replace(
            "/var/lib/tern/users.toml",
            &dir.path().join("users.toml").display().to_string(),
        )
        .replace("cert = ", "# cert = ")
        .replace("key = ", "# key = ")
        .replace("tls_ca_file = ", "# tls_ca_file = ")
        .replace("tls_listen = ", "# tls_listen = ")
        .replace("submissions = ", "# submissions = ");
    let path = dir.path().join("tern.toml");
    std::fs::write(&path, text).unwrap();
    let out = tern(&["check-config", "-c", path.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok"));
    // The example's postmaster is not a user yet: said, but not an error.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("warning: [relay] postmaster = \"admin\" is not a user"),
        "{stderr}"
    );
}

#[test]
fn unknown_key_names_key_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[smtp]\nlisten = [\"127.0.0.1:0\"]\nmax_mesage_size = 5\n",
    )
    .unwrap();
    let out = tern(&["check-config", "-c", path.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.toml") && err.contains("max_mesage_size"),
        "{err}"
    );
}

#[test]
fn bad_value_names_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[smtp]\nmax_recipients = 5\n").unwrap();
    let out = tern(&["-c", path.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("[smtp] max_recipients") && err.contains("bad.toml"),
        "{err}"
    );
}

#[test]
fn unwritable_spool_stops_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.toml");
    std::fs::write(
        &path,
        "[smtp]\nlisten = [\"127.0.0.1:0\"]\nsubmission = []\n[spool]\ndir = \"/proc/no-such/spool\"\n[metrics]\nlisten = \"\"\n",
    )
    .unwrap();
    let out = tern(&["-c", path.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("[spool] dir") && err.contains("/proc/no-such/spool"),
        "{err}"
    );
}

#[test]
fn missing_config_file_is_named() {
    let out = tern(&["check-config", "-c", "/nonexistent/tern.toml"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/tern.toml"));
}

#[test]
fn queue_list_on_an_empty_spool() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.toml");
    std::fs::write(
        &path,
        format!(
            "[spool]\ndir = \"{}\"\n",
            dir.path().join("spool").display()
        ),
    )
    .unwrap();
    std::fs::create_dir_all(dir.path().join("spool")).unwrap();
    let out = tern(&["queue", "list", "--json", "-c", path.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v.as_array().map(Vec::len), Some(0));
}

#[test]
fn queue_list_filters_by_state_and_domain() {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(dir.path());
    let server = tern::runtime::start(&config).unwrap();
    for rcpt in ["u@a.example", "v@sub.b.example"] {
        let (mut c, _) = RawClient::connect(server.smtp_addrs[0]).unwrap();
        c.cmd("EHLO cli.test").unwrap();
        c.cmd("MAIL FROM:<s@example.org>").unwrap();
        assert_eq!(c.cmd(&format!("RCPT TO:<{rcpt}>")).unwrap().code, 250);
        c.cmd("DATA").unwrap();
        c.send(&data_frame(b"Subject: filter\r\n\r\nx\r\n"))
            .unwrap();
        assert_eq!(c.read_reply().unwrap().code, 250);
    }
    server.shutdown();
    let path = dir.path().join("t.toml");
    std::fs::write(&path, toml::to_string(&config).unwrap()).unwrap();
    let listed = |extra: &[&str]| -> usize {
        let mut args = vec!["queue", "list", "--json", "-c", path.to_str().unwrap()];
        args.extend_from_slice(extra);
        let out = tern(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        json.as_array().unwrap().len()
    };
    assert_eq!(listed(&[]), 2);
    assert_eq!(listed(&["--domain", "A.example"]), 1);
    assert_eq!(listed(&["--domain", ".b.example"]), 1);
    assert_eq!(listed(&["--domain", "b.example"]), 0);
    assert_eq!(listed(&["--state", "pending"]), 2);
    assert_eq!(listed(&["--state", "deferred"]), 0);
    let out = tern(&[
        "queue",
        "list",
        "--state",
        "lost",
        "-c",
        path.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("pending"));
}

#[test]
fn check_config_names_a_bad_dkim_key_and_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("not-a-key.pem");
    std::fs::write(&key, "not a key\n").unwrap();
    let path = dir.path().join("tern.toml");
    std::fs::write(
        &path,
        format!(
            "[spool]\ndir = \"{}\"\n[[mail_auth.signing]]\ndomain = \"example.net\"\n\
             selector = \"s1\"\nkey_file = \"{}\"\n",
            dir.path().join("spool").display(),
            key.display()
        ),
    )
    .unwrap();
    let out = tern(&["check-config", "-c", path.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("example.net") && err.contains("not-a-key.pem"),
        "{err}"
    );
}
