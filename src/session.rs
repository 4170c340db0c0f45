//! Setting up one deploy session: profile → secrets → plan → audit log → transport.
//!
//! Shared by headless mode and the console so that both refuse the same bad input with the
//! same words, and neither can start a deploy without an audit log.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::audit::{self, AuditLog, SessionStart};
use crate::plan::Plan;
use crate::profile::{Profile, TransportKind};
use crate::secrets::{Redactor, Secrets};
use crate::transport::Transport;
use crate::transport::local::LocalTransport;
use crate::transport::ssh::SshTransport;

/// Environment variable choosing where the local transport keeps its host directories.
pub const LOCAL_ROOT_ENV: &str = "WAVEDECK_LOCAL_ROOT";

/// Everything a deploy needs, ready to hand to the engine.
pub struct Session {
    pub profile: Profile,
    pub plan: Plan,
    pub redactor: Redactor,
    pub audit: AuditLog,
    pub transport: Arc<dyn Transport>,
}

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The operator's input is wrong: nothing was started.
    #[error("{0}")]
    Invalid(String),
    /// Input was fine but this machine cannot run it (audit log unwritable, …).
    #[error("{0}")]
    CannotStart(String),
}

pub struct SessionOptions<'a> {
    pub profile: &'a Path,
    pub env: &'a str,
    pub release: &'a str,
    pub audit_dir: Option<&'a Path>,
    pub local_root: Option<&'a Path>,
    /// "headless" or "console", recorded in the audit log.
    pub mode: &'a str,
}

pub fn load_profile(path: &Path) -> Result<Profile, SetupError> {
    Profile::load(path).map_err(|d| SetupError::Invalid(d.to_string()))
}

/// Checks the input, plans, and opens the audit log (which records the session start).
pub fn prepare(options: &SessionOptions, profile: Profile) -> Result<Session, SetupError> {
    let secrets = Secrets::from_env(&profile).map_err(SetupError::Invalid)?;
    let plan = Plan::build(&profile, options.env, options.release, &secrets)
        .map_err(|e| SetupError::Invalid(e.to_string()))?;
    let transport: Arc<dyn Transport> = match plan.transport {
        TransportKind::Local => Arc::new(LocalTransport::new(local_root(options.local_root)?)),
        TransportKind::Ssh => {
            let env =
                profile.environment(&plan.env).ok_or_else(|| SetupError::Invalid("environment vanished".into()))?;
            ensure_fd_limit(plan.policy.parallel)?;
            Arc::new(SshTransport::new(&env.ssh).map_err(|e| SetupError::Invalid(e.to_string()))?)
        }
    };
    let redactor = secrets.redactor();
    let dir = audit::audit_dir(options.audit_dir).ok_or_else(|| {
        SetupError::CannotStart(format!("no home directory to keep the audit log in: set {}", audit::AUDIT_DIR_ENV))
    })?;
    let start = SessionStart {
        operator: audit::operator_name(),
        machine: audit::machine_name(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        argv: std::env::args().collect(),
        mode: options.mode.to_string(),
        profile: profile.path.clone(),
        profile_sha256: profile.sha256.clone(),
        env: plan.env.clone(),
        release: plan.release.clone(),
    };
    let audit = AuditLog::open(&dir, &start, redactor.clone()).map_err(|e| {
        SetupError::CannotStart(format!(
            "cannot write the audit log in {}: {e}; refusing to deploy without one (choose another with --audit-dir)",
            dir.display()
        ))
    })?;
    Ok(Session { profile, plan, redactor, audit, transport })
}

/// File descriptors one SSH host needs at most while connected (its socket, a jump socket,
/// an upload's local file), plus what the process needs anyway.
const FDS_PER_HOST: u64 = 3;
const FDS_RESERVED: u64 = 128;

/// Raises the soft open-files limit to the hard one so that `parallel` connections fit, or
/// says plainly why they cannot.
pub fn ensure_fd_limit(parallel: usize) -> Result<(), SetupError> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let needed = parallel as u64 * FDS_PER_HOST + FDS_RESERVED;
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else { return Ok(()) };
    if soft >= needed {
        return Ok(());
    }
    if hard >= needed {
        return setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
            .map_err(|e| SetupError::CannotStart(format!("cannot raise the open-files limit to {hard}: {e}")));
    }
    Err(SetupError::CannotStart(format!(
        "parallel = {parallel} needs about {needed} open files, but this shell allows at most {hard}: \
         lower `parallel` in the profile or raise the hard limit (ulimit -Hn)"
    )))
}

/// Where local "hosts" live: `--local-root`, else `$WAVEDECK_LOCAL_ROOT`, else the platform
/// data directory.
pub fn local_root(flag: Option<&Path>) -> Result<PathBuf, SetupError> {
    if let Some(dir) = flag {
        return Ok(dir.to_path_buf());
    }
    if let Some(dir) = std::env::var_os(LOCAL_ROOT_ENV).filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    directories::ProjectDirs::from("", "", "wavedeck")
        .map(|d| d.data_dir().join("local-hosts"))
        .ok_or_else(|| SetupError::CannotStart(format!("no home directory for local hosts: set {LOCAL_ROOT_ENV}")))
}
