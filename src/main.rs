//! The `wavedeck` command line: parses arguments and hands off to the library.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use wavedeck::exit;
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
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let code = match cli.command {
        None => wavedeck::console::run(wavedeck::console::ConsoleOptions {
            path: cli.path,
            theme: cli.theme,
            audit_dir: cli.audit_dir,
            local_root: cli.local_root,
            scrollback: cli.scrollback,
        }),
        Some(Cmd::Plan { profile, env, release }) => plan(&profile, &env, &release),
        Some(Cmd::Check { profile, env, local_root }) => check(&profile, &env, local_root.as_deref()),
        Some(Cmd::Deploy { profile, env, release, yes, audit_dir, local_root }) => {
            let options = SessionOptions {
                profile: &profile,
                env: &env,
                release: &release,
                audit_dir: audit_dir.as_deref(),
                local_root: local_root.as_deref(),
                mode: "headless",
            };
            deploy(&options, yes)
        }
    };
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

fn plan(profile: &std::path::Path, env: &str, release: &str) -> i32 {
    let profile = match session::load_profile(profile) {
        Ok(p) => p,
        Err(e) => return fail(&e),
    };
    match Plan::build(&profile, env, release, &Secrets::masked(&profile)) {
        Ok(plan) => {
            print!("{}", plan.describe());
            exit::OK
        }
        Err(e) => fail(&SetupError::Invalid(e.to_string())),
    }
}

fn check(profile: &std::path::Path, env: &str, local_root: Option<&std::path::Path>) -> i32 {
    let profile = match session::load_profile(profile) {
        Ok(p) => p,
        Err(e) => return fail(&e),
    };
    let Some(environment) = profile.environment(env) else {
        let known = profile.environment_names().join(", ");
        return fail(&SetupError::Invalid(format!("no environment `{env}` in this profile (environments: {known})")));
    };
    let root = match session::local_root(local_root) {
        Ok(r) => r,
        Err(e) => return fail(&e),
    };
    if let Err(e) = session::ensure_fd_limit(environment.policy.parallel) {
        return fail(&e);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return fail(&SetupError::CannotStart(format!("cannot start the async runtime: {e}"))),
    };
    match runtime.block_on(wavedeck::check::check(environment, &root)) {
        Ok(results) => {
            println!("{}", wavedeck::check::report(env, &results));
            if results.iter().all(|r| r.ok()) { exit::OK } else { exit::FAILED }
        }
        Err(e) => fail(&SetupError::Invalid(e)),
    }
}

fn deploy(options: &SessionOptions, yes: bool) -> i32 {
    let profile = match session::load_profile(options.profile) {
        Ok(p) => p,
        Err(e) => return fail(&e),
    };
    if let Some(env) = profile.environment(options.env)
        && env.protected
        && !yes
    {
        return fail(&SetupError::Invalid(format!(
            "environment `{}` is protected: add --yes to confirm this deploy",
            env.name
        )));
    }
    let session = match session::prepare(options, profile) {
        Ok(s) => s,
        Err(e) => return fail(&e),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            return fail(&SetupError::CannotStart(format!("cannot start the async runtime: {e}")));
        }
    };
    runtime.block_on(wavedeck::headless::drive(session))
}

fn fail(error: &SetupError) -> i32 {
    eprintln!("{error}");
    match error {
        SetupError::Invalid(_) => exit::INVALID,
        SetupError::CannotStart(_) => exit::CANNOT_START,
    }
}
