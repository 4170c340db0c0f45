//! Setting up one deploy session: profile → secrets → plan → audit log → transport.
//!
//! Shared by headless mode and the console so that both refuse the same bad input with the
//! same words, and neither can start a deploy without an audit log.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::audit::{self, AuditLog, CommandSource, Record, SessionStart};
use crate::engine::{self, EventStream};
use crate::event::{Command, DetachAction, Event, Outcome};
use crate::lock::{self, DeployLock, LockError, LockInfo, LockPlace};
use crate::plan::Plan;
use crate::profile::{Environment, Profile, TransportKind};
use crate::remote::{About, ClientId, Message, Request, Role, Server};
use crate::secrets::{Redactor, Secrets};
use crate::transport::Transport;
use crate::transport::local::LocalTransport;
use crate::transport::ssh::SshTransport;

/// Environment variable choosing where the local transport keeps its host directories.
pub const LOCAL_ROOT_ENV: &str = "WAVEDECK_LOCAL_ROOT";

impl Session {
    /// Where this deploy's lock lives (the same place for a deploy, a rollback and `unlock`).
    pub fn lock_place(&self) -> Option<LockPlace> {
        LockPlace::for_environment(self.profile.environment(&self.plan.env)?)
    }

    /// Takes the environment's deploy lock, recording the attempt in the audit log. Returns the
    /// lock, or the exit code and message to stop with.
    pub async fn take_lock(&mut self) -> Result<Option<DeployLock>, (i32, String)> {
        let Some(place) = self.lock_place() else { return Ok(None) };
        let info = LockInfo {
            session: self.audit.session_id().to_string(),
            operator: audit::operator_name(),
            machine: audit::machine_name(),
            pid: std::process::id(),
            env: self.plan.env.clone(),
            release: self.plan.release.clone(),
            started_at: chrono::Utc::now(),
            heartbeat_at: None,
            last_step: None,
        };
        let host = place.target.host.name.clone();
        let mut attempt = lock::acquire(self.transport.as_ref(), &place, info.clone()).await;
        // A resume adopts the lock its interrupted session left (and only that one): recorded as
        // a break of that holder, then taken as its own.
        if let (Err(LockError::Held { holder: Some(holder), .. }), Some(adopt)) = (&attempt, &self.adopt_lock_of)
            && &holder.session == adopt
        {
            let holder = Some(holder.clone());
            self.audit.note(Record::LockBreakRequested { host: host.clone(), path: place.path.clone(), holder });
            match lock::break_lock(self.transport.as_ref(), &place).await {
                Ok(previous) => {
                    self.audit.note(Record::LockBroken {
                        host: host.clone(),
                        path: place.path.clone(),
                        holder: previous,
                    });
                    attempt = lock::acquire(self.transport.as_ref(), &place, info).await;
                }
                Err(e) => attempt = Err(e),
            }
        }
        match attempt {
            Ok(held) => {
                self.audit.note(Record::LockAcquired { host, path: place.path.clone() });
                Ok(Some(held))
            }
            Err(e) => {
                let (code, holder) = match &e {
                    LockError::Held { holder, .. } => (crate::exit::LOCKED, holder.clone()),
                    LockError::Failed { .. } => (crate::exit::CANNOT_START, None),
                };
                let message = e.to_string();
                self.audit.note(Record::LockRefused { host, path: place.path.clone(), holder, message });
                let hint = if code == crate::exit::LOCKED {
                    format!(
                        "\nIf that deploy is gone (a crashed console), break the lock with: wavedeck unlock {} --env {}",
                        self.profile.path.display(),
                        self.plan.env
                    )
                } else {
                    String::new()
                };
                Err((code, format!("{e}{hint}")))
            }
        }
    }
}

/// Releases a deploy lock at the end of a deploy, recording the outcome in the audit log.
pub async fn release_lock(audit: &mut AuditLog, lock: Option<DeployLock>) -> Option<String> {
    let lock = lock?;
    let place = lock.place().clone();
    match lock.release().await {
        Ok(()) => {
            audit.note(Record::LockReleased { host: place.target.host.name, path: place.path });
            None
        }
        Err(e) => {
            let message = format!("could not release the deploy lock on {}: {e}", place.target.host.name);
            audit.note(Record::LockReleaseFailed { message: message.clone() });
            Some(message)
        }
    }
}

/// Everything a deploy needs, ready to hand to the engine.
pub struct Session {
    pub profile: Profile,
    pub plan: Plan,
    pub redactor: Redactor,
    pub audit: AuditLog,
    pub transport: Arc<dyn Transport>,
    /// The interrupted session whose lock this one may take over (a resume).
    pub adopt_lock_of: Option<String>,
    /// The profile's `[[notify]]` webhooks, their URLs rendered.
    pub notify: Vec<crate::notify::Target>,
}

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The operator's input is wrong: nothing was started.
    #[error("{0}")]
    Invalid(String),
    /// Input was fine but this machine cannot run it (audit log unwritable, …).
    #[error("{0}")]
    CannotStart(String),
    /// Another deploy holds the environment's lock.
    #[error("{0}")]
    Locked(String),
}

impl SetupError {
    /// The process exit code this refusal means.
    pub fn code(&self) -> i32 {
        match self {
            SetupError::Invalid(_) => crate::exit::INVALID,
            SetupError::CannotStart(_) => crate::exit::CANNOT_START,
            SetupError::Locked(_) => crate::exit::LOCKED,
        }
    }

    /// The refusal an exit code stands for, with its message (a runner's answer, say).
    pub fn from_code(code: i32, message: String) -> SetupError {
        match code {
            crate::exit::INVALID => SetupError::Invalid(message),
            crate::exit::LOCKED => SetupError::Locked(message),
            _ => SetupError::CannotStart(message),
        }
    }
}

pub struct SessionOptions<'a> {
    pub profile: &'a Path,
    pub env: &'a str,
    pub release: &'a str,
    pub audit_dir: Option<&'a Path>,
    pub local_root: Option<&'a Path>,
    /// "headless" or "console", recorded in the audit log.
    pub mode: &'a str,
    /// The interrupted session this one resumes, recorded in its start.
    pub resumed_from: Option<&'a str>,
}

/// Loads a profile for a command-line mode; its warnings go to stderr, where the operator who
/// just typed the command sees them before anything runs.
pub fn load_profile(path: &Path) -> Result<Profile, SetupError> {
    let profile = Profile::load(path).map_err(|d| SetupError::Invalid(d.to_string()))?;
    for warning in &profile.warnings {
        eprintln!("warning: {warning}");
    }
    Ok(profile)
}

/// The profile's environment `name`, or an error listing the ones it has.
pub fn environment<'p>(profile: &'p Profile, name: &str) -> Result<&'p Environment, SetupError> {
    profile.environment(name).ok_or_else(|| {
        let known = profile.environment_names().join(", ");
        SetupError::Invalid(format!("no environment `{name}` in this profile (environments: {known})"))
    })
}

/// Checks the input, plans, and opens the audit log (which records the session start).
pub fn prepare(options: &SessionOptions, profile: Profile) -> Result<Session, SetupError> {
    prepare_with(options, profile, |profile, secrets| Plan::build(profile, options.env, options.release, secrets))
}

/// `prepare` with another planner (rollback plans its own waves).
pub fn prepare_with(
    options: &SessionOptions,
    profile: Profile,
    planner: impl FnOnce(&Profile, &Secrets) -> Result<Plan, crate::plan::PlanError>,
) -> Result<Session, SetupError> {
    let secrets = Secrets::from_env(&profile).map_err(SetupError::Invalid)?;
    let plan = planner(&profile, &secrets).map_err(|e| SetupError::Invalid(e.to_string()))?;
    let notify = crate::notify::targets(&profile, &plan.env, &secrets).map_err(SetupError::Invalid)?;
    let env = profile.environment(&plan.env).ok_or_else(|| SetupError::Invalid("environment vanished".into()))?;
    let transport = transport_for(env, options.local_root)?;
    let redactor = secrets.redactor();
    let masking = redactor.clone();
    crate::debuglog::mask_with(move |text| masking.redact(text).into_owned());
    let start =
        Opening { env: &plan.env, release: &plan.release, mode: options.mode, resumed_from: options.resumed_from };
    let audit = open_audit(&profile, &start, options.audit_dir, redactor.clone())?;
    let mut plan = plan;
    if plan.deploy_id.is_empty() {
        plan.deploy_id = audit.session_id().to_string();
    }
    Ok(Session { profile, plan, redactor, audit, transport, adopt_lock_of: None, notify })
}

/// The transport an environment's hosts are reached through.
pub fn transport_for(env: &Environment, local_root_flag: Option<&Path>) -> Result<Arc<dyn Transport>, SetupError> {
    Ok(match env.transport {
        TransportKind::Local => {
            Arc::new(LocalTransport::new(local_root(local_root_flag)?).answering_http(env.local_http))
        }
        TransportKind::Ssh => {
            ensure_fd_limit(env.policy.parallel)?;
            Arc::new(SshTransport::new(&env.ssh).map_err(|e| SetupError::Invalid(e.to_string()))?)
        }
    })
}

/// Breaks an environment's lock on the operator's say-so, in an audit session of its own
/// (mode `unlock`): who held it before, and that it was broken.
pub async fn break_lock(
    profile: &Profile,
    transport: &dyn Transport,
    place: &LockPlace,
    holder: Option<LockInfo>,
    audit_dir: Option<&Path>,
) -> Result<Option<LockInfo>, SetupError> {
    let env = &place.target.env;
    let start = Opening { env, release: "", mode: "unlock", resumed_from: None };
    let mut audit = open_audit(profile, &start, audit_dir, Redactor::default())?;
    let host = &place.target.host.name;
    audit.note(Record::LockBreakRequested { host: host.clone(), path: place.path.clone(), holder });
    match lock::break_lock(transport, place).await {
        Ok(previous) => {
            audit.note(Record::LockBroken { host: host.clone(), path: place.path.clone(), holder: previous.clone() });
            let _ = audit.close("unlocked", crate::exit::OK);
            Ok(previous)
        }
        Err(e) => {
            let _ = audit.close("error", crate::exit::CANNOT_START);
            Err(SetupError::CannotStart(e.to_string()))
        }
    }
}

/// Starts an audit session (its `session_start` record says who, where, what and with which
/// profile). Nothing runs without one.
/// What a new audit session says about itself, besides the operator and the profile.
struct Opening<'a> {
    env: &'a str,
    release: &'a str,
    mode: &'a str,
    resumed_from: Option<&'a str>,
}

fn open_audit(
    profile: &Profile,
    opening: &Opening,
    audit_dir: Option<&Path>,
    redactor: Redactor,
) -> Result<AuditLog, SetupError> {
    let dir = audit::audit_dir(audit_dir).ok_or_else(|| {
        SetupError::CannotStart(format!("no home directory to keep the audit log in: set {}", audit::AUDIT_DIR_ENV))
    })?;
    let start = SessionStart {
        operator: audit::operator_name(),
        machine: audit::machine_name(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        argv: std::env::args().collect(),
        mode: opening.mode.to_string(),
        profile: profile.path.clone(),
        profile_sha256: profile.sha256.clone(),
        env: opening.env.to_string(),
        release: opening.release.to_string(),
        resumed_from: opening.resumed_from.map(str::to_string),
    };
    AuditLog::open(&dir, &start, redactor).map_err(|e| {
        SetupError::CannotStart(format!(
            "cannot write the audit log in {}: {e}; refusing to go on without one (choose another with --audit-dir)",
            dir.display()
        ))
    })
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

/// Commands from the runner's own process (a signal to it), each with where it came from. The
/// session's owner task audits a command before the engine sees it, so none can be acted on
/// without a record.
#[derive(Clone)]
pub struct Commands(mpsc::UnboundedSender<(Command, CommandSource)>);

impl Commands {
    /// Sends `command`; a deploy that has ended ignores it.
    pub fn send(&self, command: Command, source: CommandSource) {
        let _ = self.0.send((command, source));
    }
}

pub use crate::remote::Ended;

/// How a running deploy treats the clients that come and go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunOptions {
    /// What happens when the controlling client goes away without detaching.
    pub on_detach: DetachAction,
    /// How long a waiting deploy with no client at all lives before it aborts itself.
    pub detached_timeout: Duration,
    /// Where the deploy's figures for Prometheus go (`--metrics-file`).
    pub metrics_file: Option<PathBuf>,
}

/// A deploy in flight, owned by its session's task: clients reach it through `socket`.
pub struct Running {
    pub session: String,
    pub socket: PathBuf,
    pub audit_path: PathBuf,
    /// For the runner's own signals.
    pub commands: Commands,
    ended: tokio::sync::oneshot::Receiver<Ended>,
}

impl Running {
    /// Waits until the deploy has ended, its lock and audit log are settled and its clients
    /// have been told.
    pub async fn ended(self) -> Ended {
        let audit_path = self.audit_path.clone();
        self.ended.await.unwrap_or(Ended {
            outcome: None,
            code: crate::exit::CANNOT_START,
            problems: vec!["the deploy session stopped unexpectedly; see the audit log".into()],
            audit_path,
            journal_syncs: 0,
        })
    }
}

/// Why a session did not start, after its refusal was audited and the log closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub code: i32,
    pub message: String,
    pub audit_path: PathBuf,
}

impl Session {
    /// Ends a session that will not run (the operator said no), recording why.
    pub fn refuse(self, code: i32) -> PathBuf {
        let path = self.audit.path().to_path_buf();
        let _ = self.audit.close("refused", code);
        path
    }

    /// Records that the operator confirmed the start, and how.
    pub fn confirmed(&mut self, how: &str) {
        self.audit.note(Record::DeployConfirmed {
            operator: crate::sys::operator_name(),
            protected: self.plan.protected,
            confirmation: how.to_string(),
        });
    }

    /// Takes the environment's lock, opens the control socket and starts the deploy: the engine
    /// and the task that owns this session from now on. `first` are commands that apply before
    /// any host starts (headless `--exclude`). A refusal (the lock is held, no socket) is
    /// audited and the log closed.
    pub async fn start(
        mut self,
        first: Vec<(Command, CommandSource)>,
        options: RunOptions,
    ) -> Result<Running, Refused> {
        let lock = match self.take_lock().await {
            Ok(lock) => lock,
            Err((code, message)) => {
                let audit_path = self.audit.path().to_path_buf();
                let _ = self.audit.close("refused", code);
                return Err(Refused { code, message, audit_path });
            }
        };
        let audit_path = self.audit.path().to_path_buf();
        let session = self.audit.session_id().to_string();
        let about = About {
            session: session.clone(),
            service: self.plan.service.clone(),
            env: self.plan.env.clone(),
            release: self.plan.release.clone(),
            operator: crate::sys::operator_name(),
            profile: self.profile.path.clone(),
            audit_path: audit_path.clone(),
        };
        let (server, requests) = match Server::listen(about) {
            Ok(listening) => listening,
            Err(why) => {
                let code = crate::exit::CANNOT_START;
                let message = format!("no control socket, so nobody could steer this deploy: {why}");
                let _ = release_lock(&mut self.audit, lock).await;
                let _ = self.audit.close("refused", code);
                return Err(Refused { code, message, audit_path });
            }
        };
        let Session { plan, redactor, audit, transport, notify, .. } = self;
        let (notifier, notices) = crate::notify::Notifier::start(
            notify,
            crate::notify::About {
                service: plan.service.clone(),
                env: plan.env.clone(),
                release: plan.release.clone(),
                session: session.clone(),
                operator: crate::sys::operator_name(),
            },
            redactor.clone(),
        );
        let socket = server.path.clone();
        let (engine_commands, engine_command_rx) = mpsc::unbounded_channel();
        let mut owner = Owner {
            audit,
            lease: Lease::keep(lock),
            engine_commands,
            policy_abort: false,
            server,
            options,
            controller: None,
            names: HashMap::new(),
            deliberate: HashSet::new(),
            phase: Phase::Starting,
            alone_since: Some(Instant::now()),
            timed_out: false,
            notifier,
            metrics: None,
        };
        owner.metrics =
            owner.options.metrics_file.clone().map(|path| crate::metrics::MetricsFile::start(path, &session));
        // Queued before the engine runs, so they apply before any host starts.
        for (command, source) in first {
            owner.pass(command, source, None).await;
        }
        let (engine_events, engine_stream) = engine::event_channel();
        let engine = tokio::spawn(engine::run(plan, transport, engine_command_rx, engine_events, redactor));
        let (commands, command_rx) = mpsc::unbounded_channel();
        let (ended_tx, ended) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let result = owner.run(command_rx, requests, engine_stream, notices).await;
            engine.abort();
            let _ = ended_tx.send(result);
        });
        Ok(Running { session, socket, audit_path, commands: Commands(commands), ended })
    }
}

fn notice_record(sent: crate::notify::Sent) -> Record {
    let crate::notify::Sent { target, url, on, attempts, error } = sent;
    match error {
        None => Record::NotifySent { target, url, on, attempts },
        Some(error) => Record::NotifyFailed { target, url, on, attempts, error },
    }
}

/// The deploy lock while the deploy runs: a task renews its lease every [`lock::HEARTBEAT`] (with
/// the step last started), so a lock whose runner died is seen to be stale.
struct Lease {
    lock: Arc<tokio::sync::Mutex<Option<DeployLock>>>,
    last_step: Arc<std::sync::Mutex<Option<String>>>,
    /// A step started: renew soon, so a stale lock can say where its deploy got to.
    stepped: Arc<tokio::sync::Notify>,
    renewing: Option<tokio::task::JoinHandle<()>>,
}

/// Renewals at most this often, however many steps start.
const RENEW_AT_MOST_EVERY: Duration = Duration::from_secs(5);

impl Lease {
    fn keep(lock: Option<DeployLock>) -> Lease {
        let has_lock = lock.is_some();
        let lock = Arc::new(tokio::sync::Mutex::new(lock));
        let last_step = Arc::new(std::sync::Mutex::new(None));
        let stepped = Arc::new(tokio::sync::Notify::new());
        let renewing = has_lock.then(|| {
            let (lock, last_step, stepped) = (lock.clone(), last_step.clone(), stepped.clone());
            tokio::spawn(async move {
                let mut beat = tokio::time::interval(lock::HEARTBEAT);
                beat.tick().await;
                loop {
                    tokio::select! {
                        _ = beat.tick() => {}
                        _ = stepped.notified() => {}
                    }
                    let step = last_step.lock().unwrap_or_else(|e| e.into_inner()).clone();
                    if let Some(held) = lock.lock().await.as_mut() {
                        // A renewal that fails (the lock was broken) leaves the deploy running;
                        // releasing it at the end then says the lock is no longer ours.
                        let _ = held.heartbeat(step).await;
                    }
                    tokio::time::sleep(RENEW_AT_MOST_EVERY).await;
                }
            })
        });
        Lease { lock, last_step, stepped, renewing }
    }

    fn note_step(&self, step: String) {
        *self.last_step.lock().unwrap_or_else(|e| e.into_inner()) = Some(step);
        self.stepped.notify_one();
    }

    /// Stops renewing and hands the lock back, for release (or to leave in place). A renewal
    /// under way is let finish first (it holds the lock while it rewrites the owner file):
    /// cutting it off could leave the lock's directory without its owner file, and a release
    /// right after would find it not empty and leave a lock nobody owns.
    async fn end(&mut self) -> Option<DeployLock> {
        let lock = self.lock.lock().await.take();
        if let Some(renewing) = self.renewing.take() {
            renewing.abort();
        }
        lock
    }
}

/// Where the deploy is, as far as its clients and `detached_timeout` care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Starting,
    Running,
    Paused,
    AtGate,
    Aborting,
    Finishing,
}

impl Phase {
    fn word(self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::Running => "running",
            Phase::Paused => "paused",
            Phase::AtGate => "at gate",
            Phase::Aborting => "aborting",
            Phase::Finishing => "finishing",
        }
    }

    /// Nothing moves until a person decides.
    fn waiting(self) -> bool {
        matches!(self, Phase::Paused | Phase::AtGate)
    }
}

/// How long the runner waits, once the deploy has settled, for its clients to take the news.
const END_PATIENCE: Duration = Duration::from_secs(5);

/// The one writer of a deploy's audit log once it runs: every command passes through it on its
/// way to the engine, every event on its way to the clients, and it decides what clients may
/// do (one controls, others observe; takeover; what a vanished controller means).
struct Owner {
    audit: AuditLog,
    lease: Lease,
    engine_commands: mpsc::UnboundedSender<Command>,
    /// An abort was ordered by policy (headless mode's standing orders): the deploy failed, it
    /// was not aborted by a person.
    policy_abort: bool,
    /// The control socket clients attach to; closed (and removed) when the owner ends.
    server: Server,
    options: RunOptions,
    controller: Option<ClientId>,
    /// Every attached client's name, as it said hello.
    names: HashMap<ClientId, String>,
    /// Clients that said they are leaving: their going is no accident.
    deliberate: HashSet<ClientId>,
    phase: Phase,
    /// Since when nobody has been attached (for `detached_timeout`).
    alone_since: Option<Instant>,
    /// `detached_timeout` has fired once; the abort it sent is under way.
    timed_out: bool,
    /// Tells the profile's webhooks, off the deploy's path.
    notifier: crate::notify::Notifier,
    /// Keeps the deploy's figures for Prometheus, when asked to.
    metrics: Option<crate::metrics::MetricsFile>,
}

impl Owner {
    /// Audits a command and, once the record is on disk, hands it to the engine: the one path
    /// every command takes.
    async fn pass(&mut self, command: Command, source: CommandSource, client: Option<&str>) {
        let (durable, on_disk) = crate::engine::Durable::pair();
        self.audit.command_durable(&command, source, client, Some(durable));
        let _ = on_disk.await;
        self.policy_abort |= source == CommandSource::Policy && matches!(command, Command::Abort { .. });
        let _ = self.engine_commands.send(command);
    }

    fn name(&self, client: ClientId) -> String {
        self.names.get(&client).cloned().unwrap_or_else(|| format!("client {client}"))
    }

    /// Tells `ps` and new clients who controls and how many watch.
    fn publish(&self) {
        let controller = self.controller.map(|c| self.name(c));
        let clients = self.names.len();
        let state = self.phase.word();
        self.server.set_status(|s| {
            s.controller = controller;
            s.clients = clients;
            s.state = state.to_string();
        });
    }

    /// When the deploy aborts itself for want of anyone to decide.
    fn deadline(&self) -> Option<Instant> {
        let since = self.alone_since.filter(|_| self.phase.waiting() && !self.timed_out)?;
        Some(since + self.options.detached_timeout)
    }

    async fn answer(&mut self, request: Request) {
        match request {
            Request::Join { client, name, role, reply } => {
                let role = if role == Role::Control && self.controller.is_none() && self.phase != Phase::Finishing {
                    self.controller = Some(client);
                    Role::Control
                } else {
                    Role::Observe
                };
                self.audit.note(Record::ClientAttached { client: name.clone(), role });
                self.names.insert(client, name);
                self.alone_since = None;
                let _ = reply.send(role);
            }
            Request::Command { client, command, source, reply } => {
                let answer = if self.controller != Some(client) {
                    Err(match self.controller {
                        Some(other) => format!("{} controls this deploy; take over to steer it", self.name(other)),
                        None => "nobody controls this deploy; take over to steer it".to_string(),
                    })
                } else if self.phase == Phase::Finishing {
                    Err("the deploy has finished".to_string())
                } else {
                    let name = self.name(client);
                    self.pass(command, source, Some(&name)).await;
                    Ok(())
                };
                let _ = reply.send(answer);
            }
            Request::TakeOver { client, reply } => {
                if self.controller != Some(client) {
                    let to = self.name(client);
                    let from = self.controller.map(|c| self.name(c));
                    self.audit.note(Record::ControlTaken { from, to: to.clone() });
                    if let Some(previous) = self.controller.replace(client) {
                        let reason = format!("{to} took over control; you are observing");
                        self.server.tell(previous, Message::Role { role: Role::Observe, reason });
                    }
                    let reason = "you control the deploy now".to_string();
                    self.server.tell(client, Message::Role { role: Role::Control, reason });
                }
                let _ = reply.send(Ok(()));
            }
            Request::Release { client, reply } => {
                let answer = if self.controller == Some(client) {
                    self.controller = None;
                    self.audit.note(Record::ControlReleased { client: self.name(client) });
                    let reason = "you released control; you are observing".to_string();
                    self.server.tell(client, Message::Role { role: Role::Observe, reason });
                    Ok(())
                } else {
                    Err("you do not control this deploy".to_string())
                };
                let _ = reply.send(answer);
            }
            Request::Detach { client, reply } => {
                self.audit.note(Record::ClientDetached {
                    client: self.name(client),
                    deliberate: true,
                    on_detach: None,
                });
                self.deliberate.insert(client);
                if self.controller == Some(client) {
                    self.controller = None;
                }
                let _ = reply.send(Ok(()));
            }
            Request::Left { client } => {
                let name = self.names.remove(&client).unwrap_or_else(|| format!("client {client}"));
                if self.names.is_empty() {
                    self.alone_since = Some(Instant::now());
                }
                if self.deliberate.remove(&client) {
                    return;
                }
                let was_controller = self.controller == Some(client);
                if was_controller {
                    self.controller = None;
                }
                let live = !matches!(self.phase, Phase::Aborting | Phase::Finishing);
                let on_detach = (was_controller && live).then_some(self.options.on_detach);
                self.audit.note(Record::ClientDetached { client: name.clone(), deliberate: false, on_detach });
                match on_detach {
                    Some(DetachAction::Pause) if !self.phase.waiting() => {
                        self.pass(Command::Pause, CommandSource::Detach, Some(&name)).await
                    }
                    Some(DetachAction::Abort) => {
                        let reason = format!("{name} went away without detaching (on_detach = \"abort\")");
                        self.pass(Command::Abort { reason }, CommandSource::Detach, Some(&name)).await;
                    }
                    _ => {}
                }
            }
        }
        self.publish();
    }

    /// Follows the deploy's phase for `ps`, new clients and `detached_timeout`.
    fn track(&mut self, event: &Event) {
        if let Event::StepStarted { host, step, .. } = event {
            self.lease.note_step(format!("{step} on {host}"));
        }
        let phase = match event {
            Event::DeployStarted { waves, .. } => {
                let count = waves.len();
                self.server.set_status(|s| {
                    s.waves = count;
                    s.started_at = Some(chrono::Utc::now());
                });
                Phase::Running
            }
            Event::WaveStarted { wave, .. } => {
                let wave = *wave;
                self.server.set_status(|s| s.wave = wave);
                Phase::Running
            }
            Event::Paused { .. } => Phase::Paused,
            Event::AwaitingPromote { .. } => Phase::AtGate,
            Event::Resumed | Event::Promoted { .. } => Phase::Running,
            Event::Aborted { .. } => Phase::Aborting,
            Event::DeployFinished { .. } => Phase::Finishing,
            _ => return,
        };
        // Once aborting, only the end changes what the deploy is doing.
        let moves = match self.phase {
            Phase::Aborting => phase == Phase::Finishing,
            current => phase != current,
        };
        if moves {
            self.phase = phase;
            self.publish();
        }
    }

    async fn run(
        mut self,
        mut commands: mpsc::UnboundedReceiver<(Command, CommandSource)>,
        mut requests: mpsc::UnboundedReceiver<Request>,
        mut events: EventStream,
        mut notices: mpsc::UnboundedReceiver<crate::notify::Sent>,
    ) -> Ended {
        let mut outcome = None;
        let mut commands_open = true;
        loop {
            let deadline = self.deadline();
            tokio::select! {
                // Commands first: an abort must not wait behind a burst of output.
                biased;
                received = commands.recv(), if commands_open => match received {
                    Some((command, source)) => self.pass(command, source, None).await,
                    None => commands_open = false,
                },
                Some(request) = requests.recv() => self.answer(request).await,
                Some(sent) = notices.recv() => self.audit.note(notice_record(sent)),
                _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                    self.timed_out = true;
                    let reason = format!(
                        "nobody attached for {} while the deploy waited (detached_timeout)",
                        humantime::format_duration(self.options.detached_timeout)
                    );
                    self.pass(Command::Abort { reason }, CommandSource::Detach, None).await;
                }
                event = events.recv_durable() => {
                    let Some((event, durable)) = event else { break };
                    self.audit.event_durable(&event, durable);
                    self.track(&event.event);
                    self.notifier.offer(&event);
                    if let Some(metrics) = &mut self.metrics {
                        metrics.observe(&event);
                    }
                    self.server.record(&event);
                    if let Event::DeployFinished { outcome: o, .. } = &event.event {
                        outcome = Some(*o);
                        break;
                    }
                }
            }
        }
        // From here on nobody is answered: a client joining now observes the end, and its
        // requests are refused as the deploy ends (rather than wait for an answer that would
        // come too late).
        drop(requests);
        // The outcome's message goes out before the log closes, so its fate is in it.
        self.notifier.finish(crate::notify::DRAIN).await;
        while let Ok(sent) = notices.try_recv() {
            self.audit.note(notice_record(sent));
        }
        let mut problems = Vec::new();
        let (word, code) = match outcome {
            Some(Outcome::Succeeded) => ("succeeded", crate::exit::OK),
            Some(Outcome::Failed) => ("failed", crate::exit::FAILED),
            Some(Outcome::Aborted) if self.policy_abort => ("failed", crate::exit::FAILED),
            Some(Outcome::Aborted) => ("aborted", crate::exit::ABORTED),
            None => {
                // Nobody knows what the hosts were left in: the lock stays for a person to judge.
                drop(self.lease.end().await);
                problems.push("the deploy engine stopped unexpectedly; see the audit log".into());
                ("error", crate::exit::CANNOT_START)
            }
        };
        if let Some(problem) = release_lock(&mut self.audit, self.lease.end().await).await {
            problems.push(problem);
        }
        // As the exit code says it: headless mode's own abort at a threshold is a failure.
        if let Some(metrics) = &mut self.metrics
            && let Some(problem) = metrics.finish(word).await
        {
            problems.push(problem);
        }
        let audit_path = self.audit.path().to_path_buf();
        if let Err(e) = self.audit.close(word, code) {
            problems.push(e.to_string());
        }
        // Signed once closed, when the operator's agent holds the key they named.
        if let Err(e) = crate::signature::sign_if_asked(&audit_path).await {
            problems.push(format!("the audit log was not signed: {e}"));
        }
        let journal_syncs = crate::audit::SYNCS.load(std::sync::atomic::Ordering::Relaxed);
        let ended = Ended { outcome, code, problems, audit_path, journal_syncs };
        self.server.set_status(|s| s.state = "ended".into());
        self.server.end(ended.clone(), END_PATIENCE).await;
        ended
    }
}
