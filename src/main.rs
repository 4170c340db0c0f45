//! The `wavedeck` command line: parses arguments and hands off to the library.

#![forbid(unsafe_code)]

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use wavedeck::event::DetachAction;
use wavedeck::exit;
use wavedeck::headless::{self, Orders};
use wavedeck::lock::{self, LockPlace};
use wavedeck::plan::Plan;
use wavedeck::remote::Role;
use wavedeck::runner::{Job, Launched, Spec};
use wavedeck::secrets::Secrets;
use wavedeck::session::{self, SessionOptions, SetupError};

#[derive(Parser)]
#[command(
    name = "wavedeck",
    version,
    about = "Drive and watch rolling deployments",
    long_about = "Drive and watch rolling deployments.\n\nWithout a subcommand, opens the console on a \
                  profile file or directory (default: ./profiles, then ~/.config/wavedeck/profiles).",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    /// A profile file or a directory of profiles for the console.
    path: Option<PathBuf>,
    /// Console theme: dark, light, high-contrast, or a theme file. NO_COLOR turns colour off.
    #[arg(long)]
    theme: Option<String>,
    /// Lines of output kept per host in the console [default: 10000].
    #[arg(long)]
    scrollback: Option<usize>,
    /// Memory, in MiB, all hosts' scrollback may hold together; shared fairly, older lines stay
    /// in the audit log [default: 256].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    scrollback_mib: Option<u32>,
    /// Directory for audit logs [default: $WAVEDECK_AUDIT_DIR, else the data directory].
    #[arg(long)]
    audit_dir: Option<PathBuf>,
    /// Directory holding local-transport hosts [default: $WAVEDECK_LOCAL_ROOT, else the data
    /// directory].
    #[arg(long)]
    local_root: Option<PathBuf>,
    /// Write what wavedeck and its SSH library do to FILE (appended, secrets masked), to
    /// diagnose a connection. Works with every command.
    #[arg(long, global = true, value_name = "FILE")]
    debug_log: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Show the waves and the commands a deploy would run, touching nothing.
    #[command(after_help = "Examples:\n  wavedeck plan profiles/demo.toml --env staging --release 2.4.1")]
    Plan {
        /// The service's profile (TOML).
        profile: PathBuf,
        #[arg(long)]
        env: String,
        /// Release to plan for (shown in rendered commands).
        #[arg(long, default_value = "RELEASE")]
        release: String,
        /// Also read every `template` step's file on each host and show how the deploy would
        /// change it (a unified diff, secrets masked). Connects to the hosts; changes nothing.
        #[arg(long)]
        diff: bool,
        /// Directory holding local-transport hosts [default: $WAVEDECK_LOCAL_ROOT, else the
        /// data directory].
        #[arg(long)]
        local_root: Option<PathBuf>,
    },
    /// Connect to every host of an environment and report whether it can be deployed to.
    #[command(after_help = "Examples:\n  wavedeck check profiles/demo.toml --env production")]
    Check {
        profile: PathBuf,
        #[arg(long)]
        env: String,
        /// Directory holding local-transport hosts [default: $WAVEDECK_LOCAL_ROOT, else the
        /// data directory].
        #[arg(long)]
        local_root: Option<PathBuf>,
    },
    /// Roll back the hosts the last deploy to an environment changed, in reverse wave order,
    /// with the profile's [[rollback]] steps (shows where each host returns to first).
    #[command(
        after_help = "Examples:\n  wavedeck rollback profiles/demo.toml --env dev\n  wavedeck rollback profiles/demo.toml --env production --yes"
    )]
    Rollback {
        profile: PathBuf,
        #[arg(long)]
        env: String,
        /// Start without asking (required for a protected environment when not on a terminal).
        #[arg(long)]
        yes: bool,
        #[arg(long)]
        audit_dir: Option<PathBuf>,
        #[arg(long)]
        local_root: Option<PathBuf>,
    },
    /// Show who holds an environment's deploy lock and break it (asks first; audited).
    #[command(after_help = "Examples:\n  wavedeck unlock profiles/demo.toml --env staging")]
    Unlock {
        profile: PathBuf,
        #[arg(long)]
        env: String,
        /// Break it without asking.
        #[arg(long)]
        yes: bool,
        #[arg(long)]
        audit_dir: Option<PathBuf>,
        #[arg(long)]
        local_root: Option<PathBuf>,
    },
    /// List the deploys running on this machine (yours), and interrupted ones to resume.
    #[command(after_help = "Examples:\n  wavedeck ps")]
    Ps {
        #[arg(long)]
        audit_dir: Option<PathBuf>,
    },
    /// Carry on a deploy whose runner died (killed, crashed, a reboot), from its journal: hosts
    /// that finished are left alone, the others continue where they stopped.
    #[command(
        after_help = "Examples:\n  wavedeck resume 20261127T101500.000Z-4242\n  wavedeck resume 20261127T101500.000Z-4242 --interrupted rerun --interrupted prod-web-03=skip"
    )]
    Resume {
        /// The interrupted deploy's session id (`wavedeck ps` lists them).
        session: String,
        /// Hosts interrupted mid-step: run that step again, skip the host, or fail it; for all of
        /// them, or one host with HOST=rerun|skip|fail (repeatable).
        #[arg(long, value_name = "rerun|skip|fail|HOST=…")]
        interrupted: Vec<String>,
        /// Confirm resuming a deploy to a protected environment.
        #[arg(long)]
        yes: bool,
        #[arg(long)]
        audit_dir: Option<PathBuf>,
        #[arg(long)]
        local_root: Option<PathBuf>,
        /// Promote waves at manual gates.
        #[arg(long)]
        promote: bool,
    },
    /// Open the console on a running deploy: everything it did so far, then live. It takes
    /// control if nobody has it; otherwise it observes and can take over.
    #[command(
        after_help = "Examples:\n  wavedeck attach 20261127T101500.000Z-4242\n  wavedeck attach profiles/demo.toml --env production --observe\n  wavedeck attach 20261127T101500.000Z-4242 --plain"
    )]
    Attach {
        /// The session id, as `wavedeck ps` shows it; or a profile, with --env.
        target: String,
        /// The environment whose running deploy to attach to (with a profile).
        #[arg(long)]
        env: Option<String>,
        /// Only watch: control keys are off.
        #[arg(long)]
        observe: bool,
        /// Print events as plain lines instead of opening the console (implies --observe).
        #[arg(long)]
        plain: bool,
        /// Start from this event number [default: the oldest the deploy still holds].
        #[arg(long, default_value_t = 1)]
        from: u64,
        #[arg(long)]
        theme: Option<String>,
    },
    /// Read audit logs: list, show, verify (are they as wavedeck wrote them?) and prune them.
    #[command(subcommand)]
    #[command(
        after_help = "Examples:\n  wavedeck audit ls\n  wavedeck audit show --env production --since 2h\n  wavedeck audit verify ~/.local/share/wavedeck/audit/*.jsonl"
    )]
    Audit(AuditCmd),
    /// Play a past session back in the console's deploy view, from its audit file: space
    /// pauses, `>` steps to the next operator command or failure, + and - change the speed
    /// (1×, 10×, 100×), [ and ] move a minute, 0-9 jump through it. Nothing acts on hosts.
    #[command(
        after_help = "Examples:\n  wavedeck replay ~/.local/share/wavedeck/audit/wavedeck-20261127T101500.000Z-4242.jsonl"
    )]
    Replay {
        /// The session's audit file.
        file: PathBuf,
        /// Console theme: dark, light, high-contrast, or a theme file.
        #[arg(long)]
        theme: Option<String>,
    },
    /// Print a shell completion script, generated from these very commands.
    #[command(
        after_help = "Examples:\n  wavedeck completions bash > /etc/bash_completion.d/wavedeck\n  wavedeck completions zsh > ~/.zfunc/_wavedeck"
    )]
    Completions {
        /// The shell: bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff), generated from these very commands.
    #[command(
        after_help = "Examples:\n  wavedeck man | man -l -\n  wavedeck man > /usr/local/share/man/man1/wavedeck.1"
    )]
    Man,
    /// The process that owns one deploy (started by the console and `deploy`; not for people).
    #[command(hide = true)]
    Runner,
    /// Run a deploy without the console: plain output and an exit code, for CI.
    #[command(
        after_help = "Examples:\n  wavedeck deploy profiles/demo.toml --env staging --release 2.4.1\n  wavedeck deploy profiles/demo.toml --env production --release 2.4.1 --yes --on-threshold wait=15m\n  wavedeck deploy profiles/demo.toml --env dev --release 2.4.1 --output json > events.jsonl"
    )]
    Deploy {
        profile: PathBuf,
        #[arg(long)]
        env: String,
        /// The release to deploy (letters, digits, `.`, `_`, `-`).
        #[arg(long)]
        release: String,
        /// Confirm a deploy to a protected environment.
        #[arg(long)]
        yes: bool,
        /// Directory for the audit log [default: $WAVEDECK_AUDIT_DIR, else the data directory].
        #[arg(long)]
        audit_dir: Option<PathBuf>,
        /// Directory holding local-transport hosts [default: $WAVEDECK_LOCAL_ROOT, else the
        /// data directory].
        #[arg(long)]
        local_root: Option<PathBuf>,
        /// Leave this host out of the deploy (repeatable; audited).
        #[arg(long, value_name = "HOST")]
        exclude: Vec<String>,
        /// Promote waves at manual gates; without it a manual gate fails the deploy.
        #[arg(long)]
        promote: bool,
        /// At a failure threshold: `abort` (the default), or `wait=DURATION` to hand the deploy
        /// to whoever attaches (`wavedeck attach SESSION`) and wait that long for them to decide.
        #[arg(long, value_name = "abort|wait=DURATION", default_value = "abort", value_parser = on_threshold)]
        on_threshold: OnThreshold,
        /// Keep the deploy's figures in this file for Prometheus (node_exporter's textfile
        /// collector) [default: $WAVEDECK_METRICS_FILE].
        #[arg(long, value_name = "PATH")]
        metrics_file: Option<PathBuf>,
        /// `text`: lines for people; `json`: every event as a JSON line on stdout, in the audit
        /// log's schema (the rest goes to stderr), for CI tools.
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
}

/// What `deploy` prints on stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Output {
    Text,
    Json,
}

#[derive(Subcommand)]
enum AuditCmd {
    /// Check each audit file's hash chain: intact, or where it was edited, reordered, cut or
    /// had lines deleted. Exits 1 if any file is not intact. Example: `wavedeck audit verify
    /// ~/.local/share/wavedeck/audit/*.jsonl`
    #[command(
        after_help = "Examples:\n  wavedeck audit verify ~/.local/share/wavedeck/audit/wavedeck-20261127T101500.000Z-4242.jsonl"
    )]
    Verify {
        /// Audit files (`wavedeck-<session>.jsonl`).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// List the sessions in the audit directory: when, service, environment, release, operator,
    /// mode, outcome and duration. Example: `wavedeck audit ls`
    #[command(after_help = "Examples:\n  wavedeck audit ls\n  wavedeck audit ls --audit-dir /var/log/wavedeck")]
    Ls {
        /// Directory for audit logs [default: $WAVEDECK_AUDIT_DIR, else the data directory].
        #[arg(long)]
        audit_dir: Option<PathBuf>,
    },
    /// Keep the audit directory to a size: delete whole ended sessions beyond the newest N or
    /// older than an age. Each is verified first (one that is not intact is kept and named);
    /// every environment's newest deploy, sessions others carry on, and running or interrupted
    /// ones are never deleted. Example: `wavedeck audit prune --older-than 180d --dry-run`
    #[command(
        after_help = "Examples:\n  wavedeck audit prune --keep 200 --dry-run\n  wavedeck audit prune --older-than 90d"
    )]
    Prune {
        /// Keep the newest N sessions.
        #[arg(long)]
        keep: Option<usize>,
        /// Delete sessions that started longer ago than this (e.g. 90d).
        #[arg(long, value_parser = humantime::parse_duration)]
        older_than: Option<std::time::Duration>,
        /// Say what would go; delete nothing.
        #[arg(long)]
        dry_run: bool,
        /// Directory for audit logs [default: $WAVEDECK_AUDIT_DIR, else the data directory].
        #[arg(long)]
        audit_dir: Option<PathBuf>,
    },
    /// Tell one session as a timeline: who started it and how it was confirmed, waves,
    /// failures with their last output lines, commands with their reasons, the outcome.
    /// Example: `wavedeck audit show --env production --host prod-web-03`
    #[command(
        after_help = "Examples:\n  wavedeck audit show\n  wavedeck audit show --env production --host prod-web-03 --since 30m\n  wavedeck audit show 20261127T101500.000Z-4242 --json"
    )]
    Show {
        /// A session id (as `audit ls` shows it) or an audit file; without it, the newest
        /// session of --env.
        session: Option<String>,
        /// The environment whose newest deploy or rollback to show.
        #[arg(long)]
        env: Option<String>,
        /// Only what concerns this host (and the session's start and end).
        #[arg(long)]
        host: Option<String>,
        /// Only from this time on: RFC 3339 (2026-11-27T08:00:00Z) or a duration ago (30m, 2h).
        #[arg(long, value_parser = since)]
        since: Option<chrono::DateTime<chrono::Utc>>,
        /// Only lines containing this text (any case).
        #[arg(long)]
        grep: Option<String>,
        /// The records themselves, one JSON line each, output included.
        #[arg(long)]
        json: bool,
        /// Directory for audit logs [default: $WAVEDECK_AUDIT_DIR, else the data directory].
        #[arg(long)]
        audit_dir: Option<PathBuf>,
    },
}

fn since(text: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    if let Ok(at) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(at.with_timezone(&chrono::Utc));
    }
    let ago = humantime::parse_duration(text)
        .map_err(|_| format!("`{text}` is neither a time like 2026-11-27T08:00:00Z nor a duration like 30m"))?;
    chrono::Duration::from_std(ago).map(|d| chrono::Utc::now() - d).map_err(|e| e.to_string())
}

/// What headless mode does when a wave goes over its failure limit and pauses.
#[derive(Debug, Clone, Copy)]
enum OnThreshold {
    Abort,
    Wait(std::time::Duration),
}

fn on_threshold(text: &str) -> Result<OnThreshold, String> {
    match text.split_once('=') {
        None if text == "abort" => Ok(OnThreshold::Abort),
        None if text == "wait" => Err("say how long to wait, e.g. wait=30m".into()),
        Some(("wait", d)) => humantime::parse_duration(d)
            .map(OnThreshold::Wait)
            .map_err(|e| format!("`{d}` is not a duration like 30m or 2h: {e}")),
        _ => Err("expected `abort` or `wait=DURATION` (e.g. wait=30m)".into()),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let _debug_log = match cli.debug_log.as_deref().map(wavedeck::debuglog::init) {
        Some(Err(e)) => {
            eprintln!("error: {e}");
            return ExitCode::from(u8::try_from(exit::INVALID).unwrap_or(2));
        }
        Some(Ok(guard)) => Some(guard),
        None => None,
    };
    // `check` and `ps` talk to every host at once; the runner raises its own.
    wavedeck::sys::raise_open_files_limit();
    let result = match cli.command {
        None => Ok(wavedeck::console::run(wavedeck::console::ConsoleOptions {
            path: cli.path,
            theme: cli.theme,
            audit_dir: cli.audit_dir,
            local_root: cli.local_root,
            scrollback: cli.scrollback,
            scrollback_mib: cli.scrollback_mib.map(|m| m as usize),
        })),
        Some(Cmd::Plan { profile, env, release, diff, local_root }) => {
            plan(&profile, &env, &release, diff, local_root.as_deref())
        }
        Some(Cmd::Check { profile, env, local_root }) => check(&profile, &env, local_root.as_deref()),
        Some(Cmd::Rollback { profile, env, yes, audit_dir, local_root }) => {
            rollback(&profile, &env, yes, audit_dir.as_deref(), local_root.as_deref())
        }
        Some(Cmd::Unlock { profile, env, yes, audit_dir, local_root }) => {
            unlock(&profile, &env, yes, audit_dir.as_deref(), local_root.as_deref())
        }
        Some(Cmd::Ps { audit_dir }) => ps(audit_dir.as_deref()),
        Some(Cmd::Resume { session, interrupted, yes, audit_dir, local_root, promote }) => resume(
            &session,
            interrupted,
            yes,
            audit_dir.as_deref(),
            local_root.as_deref(),
            &Orders { promote, ..Orders::default() },
        ),
        Some(Cmd::Attach { target, env, observe, plain, from, theme }) => {
            attach(&target, env.as_deref(), observe, plain, from, theme)
        }
        Some(Cmd::Runner) => Ok(wavedeck::runner::main()),
        Some(Cmd::Completions { shell }) => {
            clap_complete::generate(
                shell,
                &mut <Cli as clap::CommandFactory>::command(),
                "wavedeck",
                &mut std::io::stdout(),
            );
            Ok(wavedeck::exit::OK)
        }
        Some(Cmd::Man) => {
            let man = clap_mangen::Man::new(<Cli as clap::CommandFactory>::command());
            match man.render(&mut std::io::stdout()) {
                Ok(()) => Ok(wavedeck::exit::OK),
                Err(e) => Err(SetupError::CannotStart(format!("cannot write the manual page: {e}"))),
            }
        }
        Some(Cmd::Replay { file, theme }) => Ok(wavedeck::console::replay::run(&file, theme)),
        Some(Cmd::Audit(AuditCmd::Verify { files })) => Ok(audit_verify(&files)),
        Some(Cmd::Audit(AuditCmd::Ls { audit_dir })) => audit_ls(audit_dir.as_deref()),
        Some(Cmd::Audit(AuditCmd::Prune { keep, older_than, dry_run, audit_dir })) => {
            audit_prune(keep, older_than, dry_run, audit_dir.as_deref())
        }
        Some(Cmd::Audit(AuditCmd::Show { session, env, host, since, grep, json, audit_dir })) => {
            let filter = wavedeck::trail::Filter { host, since, grep };
            audit_show(session.as_deref(), env.as_deref(), &filter, json, audit_dir.as_deref())
        }
        Some(Cmd::Deploy {
            profile,
            env,
            release,
            yes,
            audit_dir,
            local_root,
            exclude,
            promote,
            on_threshold,
            metrics_file,
            output,
        }) => {
            let options = SessionOptions {
                profile: &profile,
                env: &env,
                release: &release,
                audit_dir: audit_dir.as_deref(),
                local_root: local_root.as_deref(),
                mode: "headless",
                resumed_from: None,
            };
            let wait_on_threshold = match on_threshold {
                OnThreshold::Abort => None,
                OnThreshold::Wait(d) => Some(d),
            };
            let json = output == Output::Json;
            deploy(&options, yes, &Orders { exclude, promote, wait_on_threshold, json }, metrics_file)
        }
    };
    let code = result.unwrap_or_else(|error| {
        eprintln!("{error}");
        error.code()
    });
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

fn plan(profile: &Path, env: &str, release: &str, diff: bool, local_root: Option<&Path>) -> Result<i32, SetupError> {
    let profile = session::load_profile(profile)?;
    let plan = Plan::build(&profile, env, release, &Secrets::masked(&profile))
        .map_err(|e| SetupError::Invalid(e.to_string()))?;
    print!("{}", plan.describe());
    if diff {
        // The real content needs the real secrets; what is shown is masked.
        let secrets = Secrets::from_env(&profile).map_err(SetupError::Invalid)?;
        let real = Plan::build(&profile, env, release, &secrets).map_err(|e| SetupError::Invalid(e.to_string()))?;
        let transport = session::transport_for(session::environment(&profile, env)?, local_root)?;
        let changes = runtime()?.block_on(wavedeck::diff::template_changes(&real, transport, &secrets.redactor()));
        print!("{}", wavedeck::diff::report(&changes));
    }
    Ok(exit::OK)
}

fn check(profile: &Path, env: &str, local_root: Option<&Path>) -> Result<i32, SetupError> {
    let profile = session::load_profile(profile)?;
    let environment = session::environment(&profile, env)?;
    let transport = session::transport_for(environment, local_root)?;
    let results = runtime()?.block_on(wavedeck::check::check(environment, transport));
    println!("{}", wavedeck::check::report(env, &results));
    Ok(if results.iter().all(|r| r.ok()) { exit::OK } else { exit::FAILED })
}

fn runtime() -> Result<tokio::runtime::Runtime, SetupError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| SetupError::CannotStart(format!("cannot start the async runtime: {e}")))
}

/// Has a runner plan a rollback of the last deploy, shows where each host goes back to, and on
/// the operator's word lets it start.
fn rollback(
    path: &Path,
    env: &str,
    yes: bool,
    audit_dir: Option<&Path>,
    local_root: Option<&Path>,
) -> Result<i32, SetupError> {
    let profile = session::load_profile(path)?;
    session::environment(&profile, env)?;
    let runtime = runtime()?;
    let spec = rollback_spec(path, env, audit_dir, local_root, true);
    let pending = match runtime.block_on(wavedeck::runner::launch(&spec)) {
        Ok(Launched::Preview(pending)) => pending,
        Ok(Launched::Started(client)) => {
            return Ok(runtime.block_on(headless::follow(Ok(*client), &Orders::default())).code);
        }
        Err(refused) => return Err(refusal(refused)),
    };
    println!("{}", pending.text);
    if !yes {
        if pending.protected || !std::io::stdin().is_terminal() {
            let why = if pending.protected { format!("{env} is protected") } else { "not on a terminal".into() };
            runtime.block_on(pending.cancel());
            return Err(SetupError::Invalid(format!("{why}: add --yes to roll back")));
        }
        if !confirm_by_name(env, &format!("Type {env} to start the rollback: ")) {
            println!("not started");
            runtime.block_on(pending.cancel());
            return Ok(exit::INVALID);
        }
    }
    let how = if yes { "--yes" } else { "typed environment name" };
    let started = runtime.block_on(pending.confirm(how));
    Ok(runtime.block_on(headless::follow(started, &Orders::default())).code)
}

/// A runner's refusal as this command's error.
fn refusal(refused: wavedeck::runner::Refused) -> SetupError {
    SetupError::from_code(refused.code, refused.message)
}

/// A runner's spec for a rollback; with `confirm` it shows its preview first and waits.
fn rollback_spec(
    profile: &Path,
    env: &str,
    audit_dir: Option<&Path>,
    local_root: Option<&Path>,
    confirm: bool,
) -> Spec {
    Spec {
        job: Job::Rollback { confirm },
        profile: profile.to_path_buf(),
        env: env.to_string(),
        audit_dir: audit_dir.map(Path::to_path_buf),
        local_root: local_root.map(Path::to_path_buf),
        mode: "headless".into(),
        confirmation: (!confirm).then(|| "on_failure = \"rollback\"".to_string()),
        first: Vec::new(),
        // Today's contract for a command in a terminal: it goes, the rollback stops.
        on_detach: Some(DetachAction::Abort),
        metrics_file: None,
        passphrases: Default::default(),
    }
}

/// `wavedeck resume SESSION`: shows what the journal says of each host, then has a runner carry
/// the deploy on.
fn resume(
    session: &str,
    interrupted: Vec<String>,
    yes: bool,
    audit_dir: Option<&Path>,
    local_root: Option<&Path>,
    orders: &Orders,
) -> Result<i32, SetupError> {
    wavedeck::resume::Choices::parse(&interrupted).map_err(|e| SetupError::Invalid(format!("--interrupted {e}")))?;
    let dir = wavedeck::audit::audit_dir(audit_dir)
        .ok_or_else(|| SetupError::CannotStart("no audit directory: set --audit-dir".into()))?;
    let path = wavedeck::resume::journal_of(&dir, session).map_err(SetupError::Invalid)?;
    let journal = wavedeck::resume::read(&path).map_err(SetupError::Invalid)?;
    println!("{}", journal.describe());
    let profile = session::load_profile(&journal.profile)?;
    let env = session::environment(&profile, &journal.env)?;
    if env.protected && !yes {
        return Err(SetupError::Invalid(format!(
            "environment `{}` is protected: add --yes to resume this deploy",
            env.name
        )));
    }
    let spec = Spec {
        job: Job::Resume { session: session.to_string(), interrupted },
        profile: journal.profile.clone(),
        env: journal.env.clone(),
        audit_dir: audit_dir.map(Path::to_path_buf),
        local_root: local_root.map(Path::to_path_buf),
        mode: "headless".into(),
        confirmation: (env.protected && yes).then(|| "--yes".to_string()),
        first: Vec::new(),
        on_detach: Some(DetachAction::Abort),
        metrics_file: None,
        passphrases: Default::default(),
    };
    let runtime = runtime()?;
    Ok(runtime.block_on(headless::drive(spec, orders)).code)
}

/// `wavedeck ps`: one line per deploy with a control socket, then the interrupted ones.
/// `wavedeck audit verify`: a line per file, and per file it carries on (`resumed_from`) the
/// same for that one, found beside it.
fn audit_verify(files: &[PathBuf]) -> i32 {
    let mut intact = true;
    for file in files {
        let shown = wavedeck::text::visible(&file.display().to_string());
        let verdict = match wavedeck::verify::verify(file) {
            Ok(verdict) => verdict,
            Err(e) => {
                println!("{shown}: cannot read it: {e}");
                intact = false;
                continue;
            }
        };
        let session = verdict.session.as_deref().map(wavedeck::text::visible).unwrap_or_default();
        let signed = match wavedeck::signature::check(file) {
            wavedeck::signature::Signed::No => String::new(),
            wavedeck::signature::Signed::Good { key } => format!("; signature good ({key})"),
            wavedeck::signature::Signed::Bad { key, why } => {
                intact = false;
                format!("; signature BAD ({key}: {})", wavedeck::text::visible(&why))
            }
        };
        if verdict.intact() {
            println!("{shown}: intact, {} records (session {session}){signed}", verdict.records);
        } else {
            intact = false;
            let problems: Vec<String> = verdict.problems.iter().map(ToString::to_string).collect();
            println!("{shown}: NOT INTACT: {}{signed}", problems.join("; "));
        }
        // A resumed deploy is one deploy over several files: the earlier one must hold up too.
        if let Some(earlier) = &verdict.resumed_from {
            let earlier = wavedeck::text::visible(earlier);
            let path = file.with_file_name(format!("wavedeck-{earlier}.jsonl"));
            match wavedeck::verify::verify(&path) {
                Ok(before)
                    if before.intact()
                        || before.problems == [wavedeck::verify::Problem::Truncated { after: before.records }] =>
                {
                    println!("  carries on session {earlier}: that file is as written (it ends where its runner died)");
                }
                Ok(before) => {
                    intact = false;
                    let problems: Vec<String> = before.problems.iter().map(ToString::to_string).collect();
                    println!("  carries on session {earlier}: NOT INTACT: {}", problems.join("; "));
                }
                Err(e) => {
                    intact = false;
                    println!("  carries on session {earlier}, whose file {} cannot be read: {e}", path.display());
                }
            }
        }
    }
    if intact { wavedeck::exit::OK } else { wavedeck::exit::FAILED }
}

fn the_audit_dir(flag: Option<&Path>) -> Result<PathBuf, SetupError> {
    wavedeck::audit::audit_dir(flag)
        .ok_or_else(|| SetupError::Invalid("no audit directory: give --audit-dir or set WAVEDECK_AUDIT_DIR".into()))
}

/// `wavedeck audit prune`: what went, what stayed because it did not verify.
fn audit_prune(
    keep: Option<usize>,
    older_than: Option<std::time::Duration>,
    dry_run: bool,
    audit_dir: Option<&Path>,
) -> Result<i32, SetupError> {
    if keep.is_none() && older_than.is_none() {
        return Err(SetupError::Invalid("say what to keep: --keep N and/or --older-than AGE (e.g. 90d)".into()));
    }
    let dir = the_audit_dir(audit_dir)?;
    let older_than = older_than.map(|d| chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX));
    let policy = wavedeck::retention::Policy { keep, older_than };
    let pruned =
        wavedeck::retention::prune(&dir, policy, chrono::Utc::now(), dry_run).map_err(SetupError::CannotStart)?;
    let verb = if dry_run { "would delete" } else { "deleted" };
    for session in &pruned.deleted {
        println!("{verb} {session}");
    }
    for (session, why) in &pruned.kept_not_intact {
        println!("KEPT {session}: it does not verify ({}): evidence is not deleted", wavedeck::text::visible(why));
    }
    println!("{} session(s) {verb}, {} kept", pruned.deleted.len(), pruned.kept);
    Ok(if pruned.kept_not_intact.is_empty() { wavedeck::exit::OK } else { wavedeck::exit::FAILED })
}

/// `wavedeck audit ls`: a line per session, oldest first.
fn audit_ls(audit_dir: Option<&Path>) -> Result<i32, SetupError> {
    let dir = the_audit_dir(audit_dir)?;
    let sessions = wavedeck::trail::list(&dir).map_err(SetupError::CannotStart)?;
    if sessions.is_empty() {
        println!("no sessions in {}", dir.display());
        return Ok(wavedeck::exit::OK);
    }
    println!(
        "{:<30} {:<16} {:<14} {:<12} {:<14} {:<10} {:<10} {:<12} DURATION",
        "SESSION", "STARTED (UTC)", "SERVICE", "ENV", "RELEASE", "OPERATOR", "MODE", "OUTCOME"
    );
    for s in sessions {
        let started = s.started.map_or_else(|| "?".into(), |t| t.format("%Y-%m-%d %H:%M").to_string());
        let duration = match (s.started, s.ended) {
            (Some(a), Some(b)) => {
                humantime::format_duration(std::time::Duration::from_secs((b - a).num_seconds().max(0) as u64))
                    .to_string()
            }
            _ => "-".into(),
        };
        let outcome = s.outcome.unwrap_or_else(|| "(no end)".into());
        let row = format!(
            "{:<30} {:<16} {:<14} {:<12} {:<14} {:<10} {:<10} {:<12} {duration}",
            s.id,
            started,
            s.service.unwrap_or_else(|| "-".into()),
            s.env,
            s.release,
            s.operator,
            s.mode,
            outcome
        );
        println!("{}", wavedeck::text::visible(&row));
    }
    Ok(wavedeck::exit::OK)
}

/// `wavedeck audit show`: one session's timeline.
fn audit_show(
    session: Option<&str>,
    env: Option<&str>,
    filter: &wavedeck::trail::Filter,
    json: bool,
    audit_dir: Option<&Path>,
) -> Result<i32, SetupError> {
    let path = match (session, env) {
        (Some(given), _) if Path::new(given).is_file() => PathBuf::from(given),
        (Some(id), _) => the_audit_dir(audit_dir)?.join(format!("wavedeck-{id}.jsonl")),
        (None, Some(env)) => {
            let dir = the_audit_dir(audit_dir)?;
            wavedeck::trail::last_of(&dir, env)
                .map_err(SetupError::CannotStart)?
                .ok_or_else(|| SetupError::Invalid(format!("no deploy of {env} in {}", dir.display())))?
        }
        (None, None) => return Err(SetupError::Invalid("say which session (an id or a file), or --env ENV".into())),
    };
    let lines = wavedeck::trail::show(&path, filter, json)
        .map_err(|e| SetupError::CannotStart(format!("cannot read {}: {e}", path.display())))?;
    for line in lines {
        println!("{line}");
    }
    Ok(wavedeck::exit::OK)
}

fn ps(audit_dir: Option<&Path>) -> Result<i32, SetupError> {
    let runtime = runtime()?;
    let listings = runtime.block_on(wavedeck::remote::list()).map_err(SetupError::CannotStart)?;
    let running: Vec<String> = listings
        .iter()
        .filter_map(|l| match l {
            wavedeck::remote::Listing::Running(w) => Some(w.about.session.clone()),
            wavedeck::remote::Listing::Gone { .. } => None,
        })
        .collect();
    let interrupted = wavedeck::audit::audit_dir(audit_dir)
        .map(|dir| wavedeck::resume::interrupted_sessions(&dir, &running))
        .unwrap_or_default();
    if listings.is_empty() && interrupted.is_empty() {
        println!("no deploys running");
        return Ok(exit::OK);
    }
    println!(
        "{:<28}  {:<12}  {:<10}  {:<10}  {:<10}  {:<9}  {:>5}  {:>7}  CLIENTS",
        "SESSION", "SERVICE", "ENV", "RELEASE", "OPERATOR", "STATE", "WAVE", "AGE"
    );
    let now = chrono::Utc::now();
    for listing in listings {
        match listing {
            wavedeck::remote::Listing::Running(w) => {
                let age = w.status.started_at.map_or_else(|| "-".to_string(), |t| age((now - t).num_seconds()));
                let wave =
                    if w.status.waves == 0 { "-".into() } else { format!("{}/{}", w.status.wave, w.status.waves) };
                let clients = match &w.status.controller {
                    Some(who) => format!("{} (controlled by {who})", w.status.clients),
                    None => format!("{} (nobody controls it)", w.status.clients),
                };
                // Names come from other processes: shown, never obeyed.
                let clients = wavedeck::text::visible(&clients);
                println!(
                    "{:<28}  {:<12}  {:<10}  {:<10}  {:<10}  {:<9}  {:>5}  {:>7}  {clients}",
                    w.about.session,
                    w.about.service,
                    w.about.env,
                    w.about.release,
                    w.about.operator,
                    w.status.state,
                    wave,
                    age,
                )
            }
            wavedeck::remote::Listing::Gone { session, path, removed } => {
                let what = if removed { "removed" } else { "left in place" };
                println!(
                    "{session:<28}  gone: nothing answers on {} (its runner ended; the socket was {what})",
                    path.display()
                )
            }
        }
    }
    for journal in interrupted {
        let done = journal.hosts.iter().filter(|(_, _, p)| *p == wavedeck::resume::Progress::Done).count();
        let stuck = journal.interrupted().count();
        println!(
            "{:<28}  {:<10}  {:<10}  INTERRUPTED: {done}/{} hosts done, {stuck} mid-step; carry it on: wavedeck resume {}",
            journal.session,
            wavedeck::text::visible(&journal.env),
            wavedeck::text::visible(&journal.release),
            journal.hosts.len(),
            journal.session
        );
    }
    Ok(exit::OK)
}

/// A deploy's age as people read it: `42s`, `7m05s`, `4h12m`.
fn age(seconds: i64) -> String {
    let s = seconds.max(0);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
    }
}

/// `wavedeck attach`: the console on a running deploy, or its events as plain lines.
fn attach(
    target: &str,
    env: Option<&str>,
    observe: bool,
    plain: bool,
    from: u64,
    theme: Option<String>,
) -> Result<i32, SetupError> {
    let runtime = runtime()?;
    let session = match env {
        None => target.to_string(),
        Some(env) => runtime.block_on(running_session(Path::new(target), env))?,
    };
    let socket = wavedeck::remote::socket_of(&session).map_err(SetupError::Invalid)?;
    if plain {
        return runtime.block_on(attach_plain(&socket, from));
    }
    drop(runtime);
    let role = if observe { Role::Observe } else { Role::Control };
    Ok(wavedeck::console::attach(wavedeck::console::Attach { socket, role, from, theme }))
}

/// The session of the deploy running for `profile` on `env`, from the runners' sockets.
async fn running_session(profile: &Path, env: &str) -> Result<String, SetupError> {
    let profile = session::load_profile(profile)?;
    session::environment(&profile, env)?;
    let listings = wavedeck::remote::list().await.map_err(SetupError::CannotStart)?;
    listings
        .into_iter()
        .find_map(|listing| match listing {
            wavedeck::remote::Listing::Running(w) if w.about.service == profile.service && w.about.env == env => {
                Some(w.about.session)
            }
            _ => None,
        })
        .ok_or_else(|| {
            SetupError::Invalid(format!("no deploy of {} to {env} is running here (see wavedeck ps)", profile.service))
        })
}

/// Follows a deploy as plain lines, the way headless mode prints it.
async fn attach_plain(socket: &Path, from: u64) -> Result<i32, SetupError> {
    let mut client = wavedeck::runner::Client::attach(socket, Role::Observe, from, "attach --plain")
        .await
        .map_err(SetupError::CannotStart)?;
    let w = client.welcome.clone();
    out(&format!(
        "== watching {} {} on {} (session {}, started by {}); audit log: {}",
        w.about.service,
        w.about.release,
        w.about.env,
        w.about.session,
        w.about.operator,
        w.about.audit_path.display()
    ));
    if w.first_seq > from.max(1) {
        out(&format!("== events before {} are only in the audit log", w.first_seq));
    }
    let operator = wavedeck::sys::operator_name();
    loop {
        tokio::select! {
            event = client.events.recv() => {
                let Some(event) = event else { break };
                if let Some(text) = headless::render(&event.event, &operator) {
                    out(&wavedeck::text::visible(&text));
                }
            }
            Some(notice) = client.notices.recv() => out(&wavedeck::text::visible(&format!("== {notice}"))),
        }
    }
    let ended = client.ended().await;
    match ended.outcome {
        Some(_) => out("== the deploy has ended"),
        None => out(&format!("== {}", ended.problems.join("; "))),
    }
    Ok(exit::OK)
}

/// Prints a line; a reader that went away (`| head`) ends nothing but the printing.
fn out(text: &str) {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{text}");
    let _ = stdout.flush();
}

/// Shows who holds an environment's deploy lock and, confirmed, breaks it (audited).
fn unlock(
    profile: &Path,
    env: &str,
    yes: bool,
    audit_dir: Option<&Path>,
    local_root: Option<&Path>,
) -> Result<i32, SetupError> {
    let profile = session::load_profile(profile)?;
    let environment = session::environment(&profile, env)?;
    let place =
        LockPlace::for_environment(environment).ok_or_else(|| SetupError::Invalid(format!("{env} has no hosts")))?;
    let first = place.target.host.clone();
    let transport = session::transport_for(environment, local_root)?;
    let runtime = runtime()?;
    let cannot = |e: lock::LockError| SetupError::CannotStart(e.to_string());
    let Some(holder) = runtime.block_on(lock::inspect(transport.as_ref(), &place)).map_err(cannot)? else {
        println!("{env} is not locked ({} on {})", place.path, first.name);
        return Ok(exit::OK);
    };
    let who = holder.as_ref().map_or_else(|| "an unknown owner".to_string(), |h| h.describe(chrono::Utc::now()));
    println!("{env} is locked by {who}\n  lock: {} on {}", place.path, first.name);
    if !yes {
        if !std::io::stdin().is_terminal() {
            return Err(SetupError::Invalid("add --yes to break the lock".into()));
        }
        let prompt = format!("Break it only if that deploy is really gone. Type {env} to break the lock: ");
        if !confirm_by_name(env, &prompt) {
            println!("not broken");
            return Ok(exit::INVALID);
        }
    }
    runtime.block_on(session::break_lock(&profile, transport.as_ref(), &place, holder, audit_dir))?;
    println!("lock broken (audited)");
    Ok(exit::OK)
}

fn deploy(
    options: &SessionOptions,
    yes: bool,
    orders: &Orders,
    metrics_file: Option<PathBuf>,
) -> Result<i32, SetupError> {
    let profile = session::load_profile(options.profile)?;
    let env = session::environment(&profile, options.env)?;
    if env.protected && !yes {
        return Err(SetupError::Invalid(format!(
            "environment `{}` is protected: add --yes to confirm this deploy",
            env.name
        )));
    }
    if let Some(unknown) = orders.exclude.iter().find(|h| !env.hosts.iter().any(|host| &host.name == *h)) {
        return Err(SetupError::Invalid(format!("--exclude {unknown}: no such host in environment `{}`", env.name)));
    }
    // Refuse bad input here, with the same words, before a runner is started for it.
    Plan::build(&profile, options.env, options.release, &Secrets::masked(&profile))
        .map_err(|e| SetupError::Invalid(e.to_string()))?;
    let spec = Spec {
        job: Job::Deploy { release: options.release.to_string() },
        profile: options.profile.to_path_buf(),
        env: options.env.to_string(),
        audit_dir: options.audit_dir.map(Path::to_path_buf),
        local_root: options.local_root.map(Path::to_path_buf),
        mode: "headless".into(),
        confirmation: (env.protected && yes).then(|| "--yes".to_string()),
        first: Vec::new(),
        // Headless keeps its contract: if it goes, the deploy stops (no paused runner is left
        // on a CI machine).
        on_detach: Some(DetachAction::Abort),
        metrics_file,
        passphrases: Default::default(),
    };
    let runtime = runtime()?;
    let ended = runtime.block_on(headless::drive(spec, orders));
    if !ended.rollback {
        return Ok(ended.code);
    }
    // on_failure = "rollback": the policy already decided, so no confirmation.
    println!("\n== on_failure = \"rollback\": rolling back the hosts this deploy changed");
    let spec = rollback_spec(options.profile, options.env, options.audit_dir, options.local_root, false);
    let _ = runtime.block_on(headless::drive(spec, &Orders::default()));
    // The deploy failed whatever the rollback did; its own result is printed and audited.
    Ok(exit::FAILED)
}

/// Asks on the terminal for the environment's name; true when it was typed exactly.
fn confirm_by_name(env: &str, prompt: &str) -> bool {
    print!("{prompt}");
    let _ = std::io::stdout().flush();
    let mut answer = String::new();
    let _ = std::io::stdin().lock().read_line(&mut answer);
    answer.trim() == env
}
