//! The `wavedeck` command line: parses arguments and hands off to the library.

#![forbid(unsafe_code)]

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use wavedeck::exit;
use wavedeck::headless::{self, Orders};
use wavedeck::lock::{self, LockPlace};
use wavedeck::plan::Plan;
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
    /// Directory for audit logs [default: $WAVEDECK_AUDIT_DIR, else the data directory].
    #[arg(long)]
    audit_dir: Option<PathBuf>,
    /// Directory holding local-transport hosts [default: $WAVEDECK_LOCAL_ROOT, else the data
    /// directory].
    #[arg(long)]
    local_root: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Show the waves and the commands a deploy would run, touching nothing.
    Plan {
        /// The service's profile (TOML).
        profile: PathBuf,
        #[arg(long)]
        env: String,
        /// Release to plan for (shown in rendered commands).
        #[arg(long, default_value = "RELEASE")]
        release: String,
    },
    /// Connect to every host of an environment and report whether it can be deployed to.
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
    /// List the deploys running on this machine (yours), from their control sockets.
    Ps,
    /// Watch a running deploy from another terminal: everything it did so far, then live.
    Attach {
        /// The session id, as `wavedeck ps` shows it.
        session: String,
        /// Only watch (for now the only way: a deploy is controlled by the terminal that
        /// started it).
        #[arg(long)]
        observe: bool,
        /// Start from this event number [default: the oldest the deploy still holds].
        #[arg(long, default_value_t = 1)]
        from: u64,
    },
    /// Run a deploy without the console: plain output and an exit code, for CI.
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
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        None => Ok(wavedeck::console::run(wavedeck::console::ConsoleOptions {
            path: cli.path,
            theme: cli.theme,
            audit_dir: cli.audit_dir,
            local_root: cli.local_root,
            scrollback: cli.scrollback,
        })),
        Some(Cmd::Plan { profile, env, release }) => plan(&profile, &env, &release),
        Some(Cmd::Check { profile, env, local_root }) => check(&profile, &env, local_root.as_deref()),
        Some(Cmd::Rollback { profile, env, yes, audit_dir, local_root }) => {
            rollback(&profile, &env, yes, audit_dir.as_deref(), local_root.as_deref())
        }
        Some(Cmd::Unlock { profile, env, yes, audit_dir, local_root }) => {
            unlock(&profile, &env, yes, audit_dir.as_deref(), local_root.as_deref())
        }
        Some(Cmd::Ps) => ps(),
        Some(Cmd::Attach { session, observe, from }) => attach(&session, observe, from),
        Some(Cmd::Deploy { profile, env, release, yes, audit_dir, local_root, exclude, promote }) => {
            let options = SessionOptions {
                profile: &profile,
                env: &env,
                release: &release,
                audit_dir: audit_dir.as_deref(),
                local_root: local_root.as_deref(),
                mode: "headless",
            };
            deploy(&options, yes, &Orders { exclude, promote })
        }
    };
    let code = result.unwrap_or_else(|error| {
        eprintln!("{error}");
        match error {
            SetupError::Invalid(_) => exit::INVALID,
            SetupError::CannotStart(_) => exit::CANNOT_START,
            SetupError::Locked(_) => exit::LOCKED,
        }
    });
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

fn plan(profile: &Path, env: &str, release: &str) -> Result<i32, SetupError> {
    let profile = session::load_profile(profile)?;
    let plan = Plan::build(&profile, env, release, &Secrets::masked(&profile))
        .map_err(|e| SetupError::Invalid(e.to_string()))?;
    print!("{}", plan.describe());
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

/// Plans and runs a rollback of the last deploy, after showing where each host goes back to.
fn rollback(
    path: &Path,
    env: &str,
    yes: bool,
    audit_dir: Option<&Path>,
    local_root: Option<&Path>,
) -> Result<i32, SetupError> {
    let profile = session::load_profile(path)?;
    let runtime = runtime()?;
    let prepared = runtime.block_on(wavedeck::rollback::prepare(&profile, env, audit_dir, local_root))?;
    println!("{}", prepared.describe());
    let session = prepared.session;
    if !yes {
        if session.plan.protected || !std::io::stdin().is_terminal() {
            let why = if session.plan.protected { format!("{env} is protected") } else { "not on a terminal".into() };
            session.refuse(exit::INVALID);
            return Err(SetupError::Invalid(format!("{why}: add --yes to roll back")));
        }
        if !confirm_by_name(env, &format!("Type {env} to start the rollback: ")) {
            println!("not started");
            session.refuse(exit::INVALID);
            return Ok(exit::INVALID);
        }
    }
    Ok(runtime.block_on(headless::drive(session, &Orders::default())).code)
}

/// `wavedeck ps`: one line per deploy with a control socket.
fn ps() -> Result<i32, SetupError> {
    let runtime = runtime()?;
    let listings = runtime.block_on(wavedeck::remote::list()).map_err(SetupError::CannotStart)?;
    if listings.is_empty() {
        println!("no deploys running");
        return Ok(exit::OK);
    }
    println!(
        "{:<28}  {:<12}  {:<12}  {:<12}  {:<10}  {:>6}  CLIENTS",
        "SESSION", "SERVICE", "ENV", "RELEASE", "OPERATOR", "EVENTS"
    );
    for listing in listings {
        match listing {
            wavedeck::remote::Listing::Running(w) => println!(
                "{:<28}  {:<12}  {:<12}  {:<12}  {:<10}  {:>6}  {}",
                w.about.session,
                w.about.service,
                w.about.env,
                w.about.release,
                w.about.operator,
                w.last_seq,
                w.clients.saturating_sub(1)
            ),
            wavedeck::remote::Listing::Gone { session, path, removed } => {
                let what = if removed { "removed" } else { "left in place" };
                println!(
                    "{session:<28}  gone: nothing answers on {} (its process ended; the socket was {what}; \
                     an unfinished deploy may still hold its lock: see wavedeck unlock)",
                    path.display()
                )
            }
        }
    }
    Ok(exit::OK)
}

/// `wavedeck attach SESSION --observe`: the deploy's events as headless mode prints them.
fn attach(session: &str, observe: bool, from: u64) -> Result<i32, SetupError> {
    if !observe {
        return Err(SetupError::Invalid(
            "add --observe: a deploy is controlled by the terminal that started it, others watch".into(),
        ));
    }
    let path = wavedeck::remote::socket_of(session).map_err(SetupError::Invalid)?;
    let runtime = runtime()?;
    let operator = wavedeck::sys::operator_name();
    let watched = runtime.block_on(wavedeck::remote::observe(
        &path,
        from,
        |w| {
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
        },
        |_, event| {
            if let Some(text) = headless::render(&event.event, &operator) {
                out(&wavedeck::text::visible(&text));
            }
        },
    ));
    match watched {
        Ok(why) => {
            out(&format!("== {why}"));
            Ok(exit::OK)
        }
        Err(why) => Err(SetupError::CannotStart(why)),
    }
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

fn deploy(options: &SessionOptions, yes: bool, orders: &Orders) -> Result<i32, SetupError> {
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
    let session = session::prepare(options, profile.clone())?;
    let runtime = runtime()?;
    let ended = runtime.block_on(headless::drive(session, orders));
    if !ended.rollback {
        return Ok(ended.code);
    }
    // on_failure = "rollback": the policy already decided, so no confirmation.
    println!("\n== on_failure = \"rollback\": rolling back the hosts this deploy changed");
    match runtime.block_on(wavedeck::rollback::prepare(&profile, options.env, options.audit_dir, options.local_root)) {
        Ok(prepared) => {
            println!("{}", prepared.describe());
            let _ = runtime.block_on(headless::drive(prepared.session, &Orders::default()));
        }
        Err(e) => eprintln!("error: cannot roll back: {e}"),
    }
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
