//! The `tern` command line: run the server, check a config, inspect the
//! queue. Errors end here as readable messages (anyhow lives only at this
//! edge); this file must never hold server logic of its own.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use tern::config::{Config, LogFormat, Source};
use tern::runtime::admin::{send_command, AdminCommand};
use tern::runtime::reload::{record_reload_applied, record_reload_failed};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(name = "tern", version, about = "High-throughput durable SMTP relay")]
struct Cli {
    /// Configuration file (TOML). Without it the embedded default is used:
    /// SMTP on 127.0.0.1:2525, submission on 127.0.0.1:2587, spool in
    /// ./var/spool, metrics on 127.0.0.1:9925.
    #[arg(short, long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (the default when no command is given).
    Run,
    /// Validate the configuration and exit: 0 when it is usable.
    CheckConfig,
    /// Inspect the queue (list, show and summary read the spool folder,
    /// safe while tern runs) or steer the running server over its admin
    /// socket (flush, hold, release, delete, bounce).
    Queue {
        #[command(subcommand)]
        command: QueueCommand,
    },
    /// Manage the users file (`[users] file`): accounts, passwords and the
    /// addresses that deliver to them. A running server sees changes within
    /// a second.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
}

#[derive(Subcommand)]
enum UserCommand {
    /// Add a user. A NAME holding '@' is also the user's first address.
    Add {
        /// Login name, e.g. `alice` or `alice@localhost`.
        name: String,
        /// Another address delivering to this user (repeatable).
        #[arg(long = "address", value_name = "ADDR")]
        addresses: Vec<String>,
        /// Read the password from the first line of standard input (required).
        #[arg(long, required = true)]
        password_stdin: bool,
    },
    /// Delete a user and every address of theirs.
    Del { name: String },
    /// Set a user's password.
    Passwd {
        name: String,
        /// Read the password from the first line of standard input (required).
        #[arg(long, required = true)]
        password_stdin: bool,
    },
    /// One line per user with their addresses, or a JSON array with --json.
    /// Password hashes are never printed.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Add or remove an address of a user.
    Alias {
        #[command(subcommand)]
        command: AliasCommand,
    },
}

#[derive(Subcommand)]
enum AliasCommand {
    /// Give user NAME the address ADDRESS.
    Add { name: String, address: String },
    /// Take ADDRESS away from user NAME.
    Del { name: String, address: String },
}

#[derive(Subcommand)]
enum QueueCommand {
    /// One line per queued message, or a JSON array with --json.
    List {
        #[arg(long)]
        json: bool,
        /// Only messages with a recipient in this state.
        #[arg(long, value_parser = tern::queue_report::STATE_NAMES)]
        state: Option<String>,
        /// Only messages with a recipient in this domain (".example.org":
        /// its subdomains).
        #[arg(long)]
        domain: Option<String>,
    },
    /// Envelope, hold, per-recipient state and last error, then the
    /// message (headers and body); --json: the same with parsed headers
    /// and without the body.
    Show {
        /// Queue ID as printed by `queue list` and in the 250 reply.
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Recipients still to deliver, by domain and age (like qshape).
    Summary {
        #[arg(long)]
        json: bool,
    },
    /// Retry now, recipients not yet due included: every deferred
    /// message, one message, or those with a recipient in a domain.
    Flush(Target),
    /// Keep messages from delivery until `release`, across restarts: every
    /// queued message, one, or those with a recipient waiting in a domain.
    Hold(Target),
    /// Let held messages go (those held by `hold` and by `[relay] hold`);
    /// new mail stays held while `[relay] hold` is on.
    Release(Target),
    /// Make the waiting recipients final without delivery and without a
    /// DSN (with --domain: only the recipients in that domain).
    Delete(RequiredTarget),
    /// Return the waiting recipients to the sender with a DSN, as an
    /// expiry would (with --domain: only the recipients in that domain).
    Bounce(RequiredTarget),
}

#[derive(clap::Args)]
struct Target {
    /// One message, by queue ID; neither ID nor --domain: all.
    #[arg(conflicts_with = "domain")]
    id: Option<String>,
    /// Messages with a recipient in this domain (".example.org": its
    /// subdomains).
    #[arg(long)]
    domain: Option<String>,
}

#[derive(clap::Args)]
#[group(required = true, multiple = false)]
struct RequiredTarget {
    /// One message, by queue ID.
    id: Option<String>,
    /// Messages with a recipient in this domain (".example.org": its
    /// subdomains).
    #[arg(long)]
    domain: Option<String>,
}

/// The admin protocol's command line for `verb` on a target.
fn admin_line(verb: &str, id: Option<&str>, domain: Option<&str>) -> String {
    match (id, domain) {
        (Some(id), _) => format!("{verb} {id}"),
        (None, Some(domain)) => format!("{verb} --domain {domain}"),
        (None, None) => verb.to_string(),
    }
}

fn main() -> ExitCode {
    tern::users::return_check_memory_to_the_system();
    let cli = Cli::parse();
    let result = match cli.command.unwrap_or(Command::Run) {
        Command::Run => run(cli.config.as_deref()),
        Command::CheckConfig => check_config(cli.config.as_deref()),
        Command::Queue { command } => queue(cli.config.as_deref(), command),
        Command::User { command } => user(cli.config.as_deref(), command),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tern: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load(path: Option<&Path>) -> Result<(Config, Source)> {
    Ok(Config::load(path)?)
}

/// Replaces the log filter of the running logger (`[log] level` on reload).
type SetLogLevel = Box<dyn Fn(EnvFilter) -> Result<(), String>>;

/// Whether RUST_LOG sets the filter (then `[log] level` is not used).
fn rust_log() -> Option<String> {
    std::env::var("RUST_LOG").ok().filter(|v| !v.is_empty())
}

fn level_filter(level: &str) -> Result<EnvFilter> {
    EnvFilter::try_new(level).with_context(|| format!("[log] level = {level:?}"))
}

fn init_logging(config: &Config) -> Result<SetLogLevel> {
    let filter = match rust_log() {
        Some(v) => EnvFilter::try_new(&v).context("RUST_LOG")?,
        None => level_filter(&config.log.level)?,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour only on a terminal: logs sent to files and journald stay greppable.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    Ok(match config.log.format {
        LogFormat::Human => {
            let builder = builder.with_filter_reloading();
            let handle = builder.reload_handle();
            builder.init();
            Box::new(move |filter| handle.reload(filter).map_err(|e| e.to_string()))
        }
        LogFormat::Json => {
            let builder = builder.json().with_filter_reloading();
            let handle = builder.reload_handle();
            builder.init();
            Box::new(move |filter| handle.reload(filter).map_err(|e| e.to_string()))
        }
    })
}

fn run(path: Option<&Path>) -> Result<()> {
    let (config, source) = load(path)?;
    let set_log_level = init_logging(&config)?;
    config.check_spool_dir(&source)?;
    if let Some(addr) = config.metrics.listen {
        tern::metrics::install(addr)
            .with_context(|| format!("{source}: [metrics] listen = {addr}"))?;
    }
    tracing::info!(config = %source, version = env!("CARGO_PKG_VERSION"), "tern starting");
    let mut server = tern::runtime::start(&config).with_context(|| source.to_string())?;
    wait_for_termination(|| reload(&mut server, path, &set_log_level))?;
    tracing::info!("shutting down: no new connections, waiting for open sessions");
    server.shutdown();
    tracing::info!("tern stopped");
    Ok(())
}

/// SIGHUP: read the config file again and apply what can change live;
/// a config that fails is logged and the old one stays in force.
fn reload(
    server: &mut tern::runtime::ServerHandle,
    path: Option<&Path>,
    set_log_level: &SetLogLevel,
) {
    let (config, source) = match load(path) {
        Ok(loaded) => loaded,
        Err(e) => {
            record_reload_failed();
            tracing::error!(error = %format!("{e:#}"), "configuration reload failed; the running configuration stays in force");
            return;
        }
    };
    match server.reload(&config, &source) {
        Ok(report) => {
            record_reload_applied(report.restart_needed.len());
            if report.applied.iter().any(|k| k == "[log] level") {
                match rust_log() {
                    Some(_) => tracing::warn!("[log] level changed, but RUST_LOG sets the filter"),
                    None => {
                        let applied = level_filter(&config.log.level)
                            .map_err(|e| format!("{e:#}"))
                            .and_then(set_log_level);
                        if let Err(e) = applied {
                            tracing::error!(error = %e, "[log] level not changed");
                        }
                    }
                }
            }
            for key in &report.restart_needed {
                tracing::warn!(setting = %key, "setting changed: it needs a restart to take effect");
            }
            tracing::info!(
                config = %source,
                applied = ?report.applied,
                restart_needed = ?report.restart_needed,
                "configuration reloaded"
            );
        }
        Err(e) => {
            record_reload_failed();
            tracing::error!(config = %source, error = %e, "configuration reload failed; the running configuration stays in force")
        }
    }
}

/// Block until SIGTERM or SIGINT; run `on_hangup` for every SIGHUP.
fn wait_for_termination(mut on_hangup: impl FnMut()) -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("signal runtime")?;
    rt.block_on(async {
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut hup = signal(SignalKind::hangup())?;
        loop {
            tokio::select! {
                _ = term.recv() => { tracing::info!("SIGTERM received"); break }
                _ = int.recv() => { tracing::info!("SIGINT received"); break }
                _ = hup.recv() => {
                    tracing::info!("SIGHUP received: reloading the configuration");
                    on_hangup();
                }
            }
        }
        Ok::<(), std::io::Error>(())
    })
    .context("signal handling")
}

fn check_config(path: Option<&Path>) -> Result<()> {
    let (config, source) = load(path)?;
    config.check_spool_dir(&source)?;
    if let (Some(cert), Some(key)) = (&config.tls.cert, &config.tls.key) {
        tern::runtime::tls::load_server_config(cert, key).with_context(|| source.to_string())?;
    }
    if let Some(ca) = &config.relay.tls_ca_file {
        tern::runtime::outbound::roots_from_pem(ca)
            .with_context(|| format!("{source}: [relay] tls_ca_file"))?;
    }
    let trusted = tern::smtp::RelayAccess::new(&config.relay.mynetworks, &[], &[]);
    tern::mailauth::DkimSigners::load(&config.mail_auth.signing, trusted)
        .with_context(|| source.to_string())?;
    let users = tern::users::UsersHandle::open(&config.users.file)
        .with_context(|| format!("{source}: [users] file"))?;
    let postmaster = &config.relay.postmaster;
    if users.find(postmaster).is_none() {
        // Not an error: `tern user add` can create the user later.
        eprintln!(
            "{source}: warning: [relay] postmaster = {postmaster:?} is not a user of {}: \
             mail to postmaster will wait in the queue until it is",
            users.path().display()
        );
    }
    println!("{source}: ok");
    Ok(())
}

fn queue(path: Option<&Path>, command: QueueCommand) -> Result<()> {
    let (config, _) = load(path)?;
    let dir = &config.spool.dir;
    let admin = match &command {
        QueueCommand::Flush(t) => Some(admin_line("flush", t.id.as_deref(), t.domain.as_deref())),
        QueueCommand::Hold(t) => Some(admin_line("hold", t.id.as_deref(), t.domain.as_deref())),
        QueueCommand::Release(t) => {
            Some(admin_line("release", t.id.as_deref(), t.domain.as_deref()))
        }
        QueueCommand::Delete(t) => Some(admin_line("delete", t.id.as_deref(), t.domain.as_deref())),
        QueueCommand::Bounce(t) => Some(admin_line("bounce", t.id.as_deref(), t.domain.as_deref())),
        _ => None,
    };
    if let Some(line) = admin {
        let command = AdminCommand::parse(&line)?;
        let done = send_command(dir, &command).map_err(anyhow::Error::msg)?;
        println!("{done}");
        return Ok(());
    }
    let mut messages = tern::spool::Spool::scan_readonly(dir)
        .with_context(|| format!("[spool] dir = {}", dir.display()))?;
    let held = tern::queue::hold::HoldList::load(dir)?;
    let mut out = std::io::stdout().lock();
    match command {
        QueueCommand::List {
            json,
            state,
            domain,
        } => {
            messages
                .retain(|m| tern::queue_report::matches(m, state.as_deref(), domain.as_deref()));
            if json {
                let list: Vec<_> = messages
                    .iter()
                    .map(|m| tern::queue_report::summary(m, held.contains(&m.id)))
                    .collect();
                serde_json::to_writer_pretty(&mut out, &list)?;
                writeln!(out)?;
            } else {
                for m in &messages {
                    writeln!(out, "{}", tern::queue_report::line(m, held.contains(&m.id)))?;
                }
                writeln!(out, "-- {} message(s) queued", messages.len())?;
            }
        }
        QueueCommand::Show { id, json } => {
            let wanted: tern::spool::QueueId = id.parse()?;
            let m = messages
                .iter()
                .find(|m| m.id == wanted)
                .with_context(|| format!("no queued message with id {id}"))?;
            if json {
                let report = tern::queue_report::show_json(m, held.contains(&m.id));
                serde_json::to_writer_pretty(&mut out, &report)?;
                writeln!(out)?;
            } else {
                out.write_all(tern::queue_report::details(m, held.contains(&m.id)).as_bytes())?;
                out.write_all(m.data())?;
            }
        }
        QueueCommand::Summary { json } => {
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
            let shape = tern::queue_report::QueueShape::of(&messages, now_ms);
            if json {
                serde_json::to_writer_pretty(&mut out, &shape)?;
                writeln!(out)?;
            } else {
                out.write_all(shape.table().as_bytes())?;
            }
        }
        QueueCommand::Flush(_)
        | QueueCommand::Hold(_)
        | QueueCommand::Release(_)
        | QueueCommand::Delete(_)
        | QueueCommand::Bounce(_) => {}
    }
    out.flush()?;
    Ok(())
}

fn user(path: Option<&Path>, command: UserCommand) -> Result<()> {
    use tern::users::Users;
    let (config, _) = load(path)?;
    let file = config.users.file.as_path();
    let mut out = std::io::stdout().lock();
    match command {
        UserCommand::Add {
            name, addresses, ..
        } => {
            let password = read_password()?;
            let added = Users::edit(file, |users| {
                users
                    .add(&name, password.as_bytes(), &addresses)
                    .map(|user| user.addresses().join(", "))
            })?;
            let added = if added.is_empty() {
                "no address"
            } else {
                &added
            };
            writeln!(out, "added user {name} ({added}) to {}", file.display())?;
        }
        UserCommand::Del { name } => {
            Users::edit(file, |users| users.remove(&name))?;
            writeln!(out, "deleted user {name} from {}", file.display())?;
        }
        UserCommand::Passwd { name, .. } => {
            let password = read_password()?;
            Users::edit(file, |users| users.set_password(&name, password.as_bytes()))?;
            writeln!(out, "password of {name} changed in {}", file.display())?;
        }
        UserCommand::List { json } => {
            let users = Users::load(file)?;
            if json {
                let list: Vec<_> = users
                    .iter()
                    .map(|u| serde_json::json!({ "name": u.name(), "addresses": u.addresses() }))
                    .collect();
                serde_json::to_writer_pretty(&mut out, &list)?;
                writeln!(out)?;
            } else {
                for u in users.iter() {
                    writeln!(out, "{}\t{}", u.name(), u.addresses().join(", "))?;
                }
                writeln!(out, "-- {} user(s) in {}", users.len(), file.display())?;
            }
        }
        UserCommand::Alias {
            command: AliasCommand::Add { name, address },
        } => {
            Users::edit(file, |users| users.add_address(&name, &address))?;
            writeln!(out, "{address} now delivers to {name}")?;
        }
        UserCommand::Alias {
            command: AliasCommand::Del { name, address },
        } => {
            Users::edit(file, |users| users.remove_address(&name, &address))?;
            writeln!(out, "{address} removed from {name}")?;
        }
    }
    out.flush()?;
    Ok(())
}

/// The first line of standard input, without its line ending.
fn read_password() -> Result<String> {
    let mut line = String::new();
    let read = std::io::stdin()
        .read_line(&mut line)
        .context("reading the password from standard input")?;
    if read == 0 {
        anyhow::bail!("no password on standard input (--password-stdin reads one line)");
    }
    let password = line.strip_suffix('\n').unwrap_or(&line);
    let password = password.strip_suffix('\r').unwrap_or(password);
    Ok(password.to_owned())
}
