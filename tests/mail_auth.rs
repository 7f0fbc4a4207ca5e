//! Mail authentication end to end, in process: tern checks SPF, DKIM and
//! DMARC of mail from a client outside `[relay] mynetworks` against an
//! in-process DNS zone (the relay's resolver, `[relay] nameservers`) and
//! relays it to a sink, where the recorded `Received-SPF:` and
//! `Authentication-Results:` fields are read back; mail from a trusted
//! client leaves DKIM-signed with RSA and Ed25519 keys made at test time,
//! and the signatures the sink received are verified with mail-auth
//! against the keys published in the zone. A reload changes both.
//!
//! Nothing here leaves 127.0.0.1, and every wait has a deadline.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use common::dns_zone::{a, soa, txt, ZoneThread};
use common::sink::{Received, Sink, SinkConfig};
use common::{config_file, data_frame, RawClient, Reply};
use hickory_server::proto::rr::Record;
use mail_auth::common::crypto::{RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::generate::DkimKeyPair;
use mail_auth::dkim::DkimSigner;
use mail_auth::{AuthenticatedMessage, DkimResult, MessageAuthenticator};
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs1KeyDer};
use tern::relay::dns::{DnsConfig, MxResolver};
use tern::runtime::ServerHandle;

/// Deadline for mail that should leave at once.
const PROMPT: Duration = Duration::from_secs(10);
/// How long a test watches for something that must not happen.
const QUIET: Duration = Duration::from_millis(1500);
/// The recipient every test mails: statically routed to the sink.
const RECIPIENT: &str = "rcpt@dest.test";
/// `[server] hostname` of the test config, hence the authserv-id.
const AUTHSERV_ID: &str = "tern.test";

/// Keys made for one test and the TXT records that publish them.
struct Keys {
    rsa: DkimKeyPair,
    ed25519: DkimKeyPair,
}

impl Keys {
    fn generate() -> Keys {
        Keys {
            rsa: DkimKeyPair::generate_rsa(2048).unwrap(),
            ed25519: DkimKeyPair::generate_ed25519().unwrap(),
        }
    }

    /// `rsa._domainkey.signed.test` and `ed._domainkey.signed.test`.
    fn records(&self) -> Vec<Record> {
        vec![
            txt(
                "rsa._domainkey.signed.test.",
                &format!("v=DKIM1; k=rsa; p={}", self.rsa.encoded_public_key()),
            ),
            txt(
                "ed._domainkey.signed.test.",
                &format!(
                    "v=DKIM1; k=ed25519; p={}",
                    self.ed25519.encoded_public_key()
                ),
            ),
        ]
    }

    /// The private keys as PEM files in `dir`: (rsa, ed25519).
    fn write_pem(&self, dir: &Path) -> (String, String) {
        let rsa = dir.join("rsa.pem");
        let ed = dir.join("ed25519.pem");
        let rsa_pem = pem::Pem::new("RSA PRIVATE KEY", self.rsa.private_key().to_vec());
        let ed_pem = pem::Pem::new("PRIVATE KEY", self.ed25519.private_key().to_vec());
        std::fs::write(&rsa, pem::encode(&rsa_pem)).unwrap();
        std::fs::write(&ed, pem::encode(&ed_pem)).unwrap();
        (rsa.display().to_string(), ed.display().to_string())
    }
}

/// The zone "test.": SPF policies for pass/fail/softfail (none.test has
/// none), DMARC p=reject for pass.test, forged.test and signed.test, and
/// `extra` records.
fn zone(extra: Vec<Record>) -> ZoneThread {
    let mut records = vec![
        soa("test.", 1),
        txt("pass.test.", "v=spf1 ip4:127.0.0.1 -all"),
        txt("fail.test.", "v=spf1 ip4:192.0.2.1 -all"),
        txt("softfail.test.", "v=spf1 ~all"),
        a("none.test.", Ipv4Addr::new(192, 0, 2, 10)),
        txt("_dmarc.pass.test.", "v=DMARC1; p=reject"),
        txt("forged.test.", "v=spf1 ip4:192.0.2.1 -all"),
        txt("_dmarc.forged.test.", "v=DMARC1; p=reject"),
        txt("_dmarc.signed.test.", "v=DMARC1; p=reject"),
    ];
    records.extend(extra);
    ZoneThread::start("test.", records)
}

/// tern running in this process, shut down when dropped.
struct Tern {
    handle: Option<ServerHandle>,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Tern {
    /// tern relaying dest.test to `sink`, DNS at `dns`; `relay_keys` go in
    /// `[relay]`, `rest` after it (e.g. `[mail_auth]`).
    fn start(dns: SocketAddr, sink: &Sink, relay_keys: &str, rest: &str) -> Tern {
        let dir = tempfile::tempdir().unwrap();
        let (config, _path) = config_file(dir.path(), &config_text(dns, sink, relay_keys, rest));
        let handle = tern::runtime::start(&config).expect("tern starts");
        let addr = handle.smtp_addrs[0];
        Tern {
            handle: Some(handle),
            addr,
            _dir: dir,
        }
    }

    /// Rewrite the config file as `start` would and reload it (SIGHUP);
    /// returns the settings applied.
    fn reload(
        &mut self,
        dns: SocketAddr,
        sink: &Sink,
        relay_keys: &str,
        rest: &str,
    ) -> Vec<String> {
        let text = config_text(dns, sink, relay_keys, rest);
        let (config, path) = config_file(self._dir.path(), &text);
        let handle = self.handle.as_mut().unwrap();
        let report = handle
            .reload(&config, &tern::config::Source::File(path))
            .expect("reload applies");
        assert!(report.restart_needed.is_empty(), "{report:?}");
        report.applied
    }

    /// 127.0.0.1 is outside mynetworks: its mail is checked.
    fn checking(dns: SocketAddr, sink: &Sink, mail_auth: &str) -> Tern {
        Tern::start(
            dns,
            sink,
            "mynetworks = [\"192.0.2.0/24\"]",
            &format!("[mail_auth]\n{mail_auth}"),
        )
    }
}

fn config_text(dns: SocketAddr, sink: &Sink, relay_keys: &str, rest: &str) -> String {
    format!(
        "[relay]\nhold = false\nnameservers = [\"{dns}\"]\nrelay_domains = [\"dest.test\"]\n\
         first_retry = \"1s\"\nmax_retry = \"2s\"\n{relay_keys}\n\
         [relay.routes]\n\"dest.test\" = \"{}\"\n{rest}\n",
        sink.addr
    )
}

impl Drop for Tern {
    fn drop(&mut self) {
        if let Some(handle) = self.handle.take() {
            handle.shutdown();
        }
    }
}

/// A message from `from` (header) with a Subject naming it.
fn message(from: &str, subject: &str) -> Vec<u8> {
    format!(
        "From: <{from}>\r\nTo: <{RECIPIENT}>\r\nSubject: {subject}\r\n\
         Date: Sat, 5 Dec 2026 12:00:00 +0000\r\nMessage-ID: <{}@client.test>\r\n\
         MIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\nBody of {subject}.\r\n",
        subject.replace(' ', ".")
    )
    .into_bytes()
}

/// One transaction with HELO name client.test; the reply to the data.
fn submit(addr: SocketAddr, mail_from: &str, body: &[u8]) -> Reply {
    let (mut c, greeting) = RawClient::connect(addr).unwrap();
    assert_eq!(greeting.code, 220);
    assert_eq!(c.cmd("EHLO client.test").unwrap().code, 250);
    assert_eq!(
        c.cmd(&format!("MAIL FROM:<{mail_from}>")).unwrap().code,
        250
    );
    assert_eq!(c.cmd(&format!("RCPT TO:<{RECIPIENT}>")).unwrap().code, 250);
    assert_eq!(c.cmd("DATA").unwrap().code, 354);
    c.send(&data_frame(body)).unwrap();
    let reply = c.read_reply().unwrap();
    let _ = c.cmd("QUIT");
    reply
}

fn submit_ok(addr: SocketAddr, mail_from: &str, body: &[u8]) {
    let reply = submit(addr, mail_from, body);
    assert_eq!(reply.code, 250, "{}", reply.text());
}

/// The unfolded values of every `name` field of the header section.
fn fields(message: &Received, name: &str) -> Vec<String> {
    let text = String::from_utf8_lossy(&message.data);
    let header = text.split("\r\n\r\n").next().unwrap_or_default();
    let unfolded = header.replace("\r\n\t", " ").replace("\r\n ", " ");
    unfolded
        .split("\r\n")
        .filter_map(|line| line.split_once(':'))
        .filter(|(field, _)| field.trim().eq_ignore_ascii_case(name))
        .map(|(_, value)| value.trim().to_string())
        .collect()
}

/// Our `Authentication-Results:` field of a delivered message (exactly one).
fn our_results(message: &Received) -> String {
    let ours: Vec<String> = fields(message, "Authentication-Results")
        .into_iter()
        .filter(|value| value.starts_with(&format!("{AUTHSERV_ID};")))
        .collect();
    assert_eq!(ours.len(), 1, "our results in {ours:?}");
    ours[0].clone()
}

fn by_sender<'a>(messages: &'a [Received], mail_from: &str) -> &'a Received {
    messages
        .iter()
        .find(|m| m.mail_from == mail_from)
        .unwrap_or_else(|| panic!("no message from {mail_from}"))
}

#[test]
fn spf_results_are_recorded_in_the_relayed_message() {
    let dns = zone(Vec::new());
    let sink = Sink::start(SinkConfig::default());
    let tern = Tern::checking(dns.addr, &sink, "");
    for (sender, subject) in [
        ("a@pass.test", "spf pass"),
        ("a@fail.test", "spf fail"),
        ("a@softfail.test", "spf softfail"),
        ("a@none.test", "spf none"),
    ] {
        submit_ok(tern.addr, sender, &message(sender, subject));
    }
    let messages = sink.wait_for_messages(4, PROMPT);
    for (sender, result) in [
        ("a@pass.test", "pass"),
        ("a@fail.test", "fail"),
        ("a@softfail.test", "softfail"),
        ("a@none.test", "none"),
    ] {
        let delivered = by_sender(&messages, sender);
        let received_spf = fields(delivered, "Received-SPF");
        assert_eq!(received_spf.len(), 1, "{received_spf:?}");
        assert!(
            received_spf[0].starts_with(&format!("{result} ")),
            "{sender}: {}",
            received_spf[0]
        );
        assert!(
            received_spf[0].contains("client-ip=127.0.0.1")
                && received_spf[0].contains(&format!("envelope-from=\"{sender}\""))
                && received_spf[0].contains("helo=client.test"),
            "{}",
            received_spf[0]
        );
        let results = our_results(delivered);
        assert!(
            results.contains(&format!("spf={result} "))
                && results.contains(&format!("smtp.mailfrom={sender}")),
            "{sender}: {results}"
        );
        assert!(results.contains("dkim=none"), "{results}");
    }
    // DMARC: pass.test publishes p=reject and SPF passed aligned; the
    // others publish no DMARC record.
    let pass = our_results(by_sender(&messages, "a@pass.test"));
    assert!(
        pass.contains("dmarc=pass header.from=pass.test policy.dmarc=reject"),
        "{pass}"
    );
    let none = our_results(by_sender(&messages, "a@none.test"));
    assert!(none.contains("dmarc=none"), "{none}");
}

#[test]
fn results_claiming_our_name_are_removed_and_others_kept() {
    let dns = zone(Vec::new());
    let sink = Sink::start(SinkConfig::default());
    let tern = Tern::checking(dns.addr, &sink, "");
    let mut body = format!(
        "Authentication-Results: {AUTHSERV_ID}; spf=pass smtp.mailfrom=a@fail.test\r\n\
         Authentication-Results: elsewhere.example; spf=pass\r\n"
    )
    .into_bytes();
    body.extend_from_slice(&message("a@fail.test", "forged results"));
    submit_ok(tern.addr, "a@fail.test", &body);
    let delivered = &sink.wait_for_messages(1, PROMPT)[0];
    let results = our_results(delivered);
    assert!(results.contains("spf=fail "), "{results}");
    let all = fields(delivered, "Authentication-Results");
    assert_eq!(all.len(), 2, "{all:?}");
    assert!(
        all.iter().any(|v| v == "elsewhere.example; spf=pass"),
        "{all:?}"
    );
}

#[test]
fn spf_fail_is_refused_when_configured_and_softfail_is_not() {
    let dns = zone(Vec::new());
    let sink = Sink::start(SinkConfig::default());
    let tern = Tern::checking(dns.addr, &sink, "spf_reject_fail = true");
    let refused = submit(tern.addr, "a@fail.test", &message("a@fail.test", "refused"));
    assert_eq!(refused.code, 550, "{}", refused.text());
    assert!(
        refused.text().starts_with("550 5.7.23 ") && refused.text().contains("fail.test"),
        "{}",
        refused.text()
    );
    submit_ok(
        tern.addr,
        "a@softfail.test",
        &message("a@softfail.test", "kept"),
    );
    let messages = sink.wait_for_messages(1, PROMPT);
    assert!(!sink.wait_until(QUIET, |m| m.len() > 1));
    assert_eq!(messages[0].mail_from, "a@softfail.test");
}

/// DKIM-sign `body` as signed.test (selector rsa) the way a sending
/// domain's own server would.
fn signed_elsewhere(keys: &Keys, body: &[u8]) -> Vec<u8> {
    let der = PrivateKeyDer::Pkcs1(PrivatePkcs1KeyDer::from(keys.rsa.private_key().to_vec()));
    let signature = DkimSigner::from_key(RsaKey::<Sha256>::from_key_der(der).unwrap())
        .domain("signed.test")
        .selector("rsa")
        .headers(["From", "To", "Subject", "Date", "Message-ID"])
        .sign(body)
        .unwrap();
    [signature.to_header().as_bytes(), body].concat()
}

#[test]
fn dmarc_passes_on_aligned_dkim_and_fails_without_alignment() {
    let keys = Keys::generate();
    let dns = zone(keys.records());
    let sink = Sink::start(SinkConfig::default());
    let tern = Tern::checking(dns.addr, &sink, "");
    // SPF none for the envelope, but a valid signature of the From: domain.
    let aligned = signed_elsewhere(&keys, &message("a@signed.test", "aligned dkim"));
    submit_ok(tern.addr, "a@none.test", &aligned);
    // SPF passes for pass.test, but From: is forged.test: nothing aligns.
    submit_ok(
        tern.addr,
        "a@pass.test",
        &message("ceo@forged.test", "not aligned"),
    );
    let messages = sink.wait_for_messages(2, PROMPT);
    let aligned = our_results(by_sender(&messages, "a@none.test"));
    assert!(
        aligned.contains("spf=none ")
            && aligned.contains("dkim=pass header.d=signed.test header.s=rsa")
            && aligned.contains("dmarc=pass header.from=signed.test policy.dmarc=reject"),
        "{aligned}"
    );
    let forged = our_results(by_sender(&messages, "a@pass.test"));
    assert!(
        forged.contains("spf=pass ")
            && forged.contains("dkim=none")
            && forged.contains("dmarc=fail (policy not aligned) header.from=forged.test")
            && forged.contains("policy.dmarc=reject"),
        "{forged}"
    );
}

#[test]
fn dmarc_reject_refuses_unaligned_mail_of_a_p_reject_domain() {
    let dns = zone(Vec::new());
    let sink = Sink::start(SinkConfig::default());
    let tern = Tern::checking(dns.addr, &sink, "dmarc_reject = true");
    let refused = submit(
        tern.addr,
        "a@pass.test",
        &message("ceo@forged.test", "forged"),
    );
    assert!(
        refused.text().starts_with("550 5.7.1 ") && refused.text().contains("forged.test"),
        "{}",
        refused.text()
    );
    submit_ok(tern.addr, "a@pass.test", &message("a@pass.test", "aligned"));
    let messages = sink.wait_for_messages(1, PROMPT);
    assert!(!sink.wait_until(QUIET, |m| m.len() > 1));
    assert_eq!(messages[0].mail_from, "a@pass.test");
}

/// Verify the DKIM signatures of `data` against the zone at `dns`.
fn verify_dkim(dns: SocketAddr, data: &[u8]) -> Vec<(DkimResult, String)> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let resolver = MxResolver::new(&DnsConfig {
            nameservers: Some(vec![dns]),
            timeout: Duration::from_secs(2),
            attempts: 2,
        })
        .unwrap();
        let authenticator = MessageAuthenticator(resolver.resolver());
        let message = AuthenticatedMessage::parse(data).expect("a parsable message");
        authenticator
            .verify_dkim(&message)
            .await
            .into_iter()
            .map(|output| {
                let selector = output.signature().map(|s| s.s.clone()).unwrap_or_default();
                (output.result().clone(), selector)
            })
            .collect()
    })
}

#[test]
fn trusted_mail_leaves_signed_with_rsa_and_ed25519_and_verifies() {
    let keys = Keys::generate();
    let dns = zone(keys.records());
    let sink = Sink::start(SinkConfig::default());
    let dir = tempfile::tempdir().unwrap();
    let (rsa, ed) = keys.write_pem(dir.path());
    // Default mynetworks: 127.0.0.1 is trusted, so its mail is signed and
    // not checked.
    let signing = format!(
        "[[mail_auth.signing]]\ndomain = \"signed.test\"\nselector = \"rsa\"\n\
         key_file = \"{rsa}\"\n\
         [[mail_auth.signing]]\ndomain = \"Signed.Test\"\nselector = \"ed\"\n\
         key_file = \"{ed}\"\nalgorithm = \"ed25519-sha256\"\n"
    );
    let tern = Tern::start(dns.addr, &sink, "", &signing);
    submit_ok(
        tern.addr,
        "bounces@other.test",
        &message("alice@signed.test", "signed"),
    );
    submit_ok(
        tern.addr,
        "alice@unsigned.test",
        &message("alice@unsigned.test", "unsigned"),
    );
    let messages = sink.wait_for_messages(2, PROMPT);
    let signed = by_sender(&messages, "bounces@other.test");
    assert_eq!(
        fields(signed, "Authentication-Results"),
        Vec::<String>::new()
    );
    let signatures = fields(signed, "DKIM-Signature");
    assert_eq!(signatures.len(), 2, "{signatures:?}");
    assert!(
        signatures.iter().any(|s| s.contains("a=rsa-sha256"))
            && signatures.iter().any(|s| s.contains("a=ed25519-sha256")),
        "{signatures:?}"
    );
    for signature in &signatures {
        assert!(signature.contains("c=relaxed/relaxed"), "{signature}");
        let mut signed_fields: Vec<String> = signature
            .split(';')
            .map(str::trim)
            .find_map(|tag| tag.strip_prefix("h="))
            .unwrap()
            .split(':')
            .map(|name| name.trim().to_ascii_lowercase())
            .collect();
        signed_fields.sort();
        assert_eq!(
            signed_fields,
            [
                "content-type",
                "date",
                "from",
                "message-id",
                "mime-version",
                "subject",
                "to"
            ],
            "only fields present are signed"
        );
    }
    let mut verified = verify_dkim(dns.addr, &signed.data);
    verified.sort_by(|a, b| a.1.cmp(&b.1));
    assert_eq!(
        verified,
        [
            (DkimResult::Pass, "ed".to_string()),
            (DkimResult::Pass, "rsa".to_string())
        ]
    );
    let unsigned = by_sender(&messages, "alice@unsigned.test");
    assert!(fields(unsigned, "DKIM-Signature").is_empty());
}

/// `[mail_auth]` and the `[relay] mynetworks` it trusts change on reload:
/// a refusal turned on applies to the next message, and keys added (or
/// rotated in their files) sign the next one that leaves.
#[test]
fn reloaded_mail_auth_settings_and_keys_apply_to_the_next_message() {
    let keys = Keys::generate();
    let dns = zone(keys.records());
    let sink = Sink::start(SinkConfig::default());
    let dir = tempfile::tempdir().unwrap();
    let (rsa, _) = keys.write_pem(dir.path());
    let outside = "mynetworks = [\"192.0.2.0/24\"]";
    let mut tern = Tern::checking(dns.addr, &sink, "");
    submit_ok(tern.addr, "a@fail.test", &message("a@fail.test", "kept"));
    sink.wait_for_messages(1, PROMPT);

    let applied = tern.reload(
        dns.addr,
        &sink,
        outside,
        "[mail_auth]\nspf_reject_fail = true",
    );
    assert_eq!(applied, ["[mail_auth] spf_reject_fail"]);
    let refused = submit(tern.addr, "a@fail.test", &message("a@fail.test", "refused"));
    assert!(
        refused.text().starts_with("550 5.7.23 "),
        "{}",
        refused.text()
    );

    // 127.0.0.1 trusted again, and a signing key: its mail is signed and
    // no longer checked.
    let signing = format!(
        "[mail_auth]\nspf_reject_fail = true\n[[mail_auth.signing]]\ndomain = \"signed.test\"\n\
         selector = \"rsa\"\nkey_file = \"{rsa}\"\n"
    );
    let applied = tern.reload(dns.addr, &sink, "", &signing);
    assert_eq!(applied, ["[mail_auth] signing", "[relay] mynetworks"]);
    submit_ok(
        tern.addr,
        "a@fail.test",
        &message("alice@signed.test", "signed"),
    );
    let messages = sink.wait_for_messages(2, PROMPT);
    let (kept, signed) = (&messages[0], &messages[1]);
    assert!(fields(kept, "DKIM-Signature").is_empty());
    assert!(!fields(kept, "Authentication-Results").is_empty());
    assert!(fields(signed, "Authentication-Results").is_empty());
    assert_eq!(
        verify_dkim(dns.addr, &signed.data),
        [(DkimResult::Pass, "rsa".to_string())]
    );

    // A key file that does not load refuses the whole reload, naming it;
    // the keys in force go on signing.
    let missing = dir.path().join("missing.pem");
    let broken = signing.replace(&rsa, &missing.display().to_string());
    let (config, path) = config_file(tern._dir.path(), &config_text(dns.addr, &sink, "", &broken));
    let error = tern
        .handle
        .as_mut()
        .unwrap()
        .reload(&config, &tern::config::Source::File(path))
        .unwrap_err()
        .to_string();
    assert!(error.contains("missing.pem"), "{error}");
    submit_ok(
        tern.addr,
        "a@fail.test",
        &message("alice@signed.test", "still"),
    );
    let messages = sink.wait_for_messages(3, PROMPT);
    assert_eq!(
        verify_dkim(dns.addr, &messages[2].data),
        [(DkimResult::Pass, "rsa".to_string())]
    );
}

#[test]
fn a_bad_key_file_stops_start_up_naming_domain_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("broken.pem");
    std::fs::write(
        &key,
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    for (path, algorithm) in [
        (key.display().to_string(), "ed25519-sha256"),
        (
            dir.path().join("missing.pem").display().to_string(),
            "rsa-sha256",
        ),
    ] {
        let text = format!(
            "[[mail_auth.signing]]\ndomain = \"signed.test\"\nselector = \"s\"\n\
             key_file = \"{path}\"\nalgorithm = \"{algorithm}\"\n"
        );
        let (config, _) = config_file(dir.path(), &text);
        let error = match tern::runtime::start(&config) {
            Ok(handle) => {
                handle.shutdown();
                panic!("tern started with key file {path}");
            }
            Err(e) => e.to_string(),
        };
        assert!(
            error.contains("signed.test") && error.contains(&path),
            "{error}"
        );
    }
}

#[test]
fn a_silent_dns_server_gives_temperror_and_never_a_refusal() {
    // Takes queries and never answers.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let sink = Sink::start(SinkConfig::default());
    let tern = Tern::checking(
        silent.local_addr().unwrap(),
        &sink,
        "spf_reject_fail = true\ndmarc_reject = true\ncheck_timeout = \"1s\"",
    );
    submit_ok(
        tern.addr,
        "a@fail.test",
        &message("a@fail.test", "slow dns"),
    );
    let delivered = &sink.wait_for_messages(1, PROMPT)[0];
    let results = our_results(delivered);
    assert!(
        results.contains("spf=temperror ") && results.contains("dmarc=temperror"),
        "{results}"
    );
    let received_spf = fields(delivered, "Received-SPF");
    assert!(
        received_spf[0].starts_with("temperror "),
        "{received_spf:?}"
    );
}
