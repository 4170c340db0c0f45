//! The runner: the process that owns one deploy, and the client every front end uses to drive it.
//!
//! A deploy (or a rollback) no longer lives inside the process that draws it. The console and
//! `wavedeck deploy` start `wavedeck runner` as a detached process (its own session, so a closed
//! terminal's SIGHUP never reaches it), hand it a [`Spec`] on its stdin and read one [`Ready`]
//! line back from its stdout. The runner prepares the session (profile, secrets, plan, audit
//! log), takes the lock and listens on the deploy's control socket ([`crate::remote`]); the
//! front end then attaches to that socket as a [`Client`], like any other terminal would.
//!
//! The session owner inside the runner audits every command with the client it came from
//! before the engine sees it; no front end writes the audit log.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, oneshot};

use crate::engine::{self, EventStream};
use crate::event::{Command, CommandSource, DetachAction};
use crate::exit;
use crate::remote::{self, Connection, Ended, Hello, Message, Role, Welcome};
use crate::session::{self, RunOptions, SessionOptions, SetupError};

/// What a runner is asked to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "job", rename_all = "snake_case")]
pub enum Job {
    Deploy {
        release: String,
    },
    /// Roll back the last deploy. With `confirm`, the runner first answers with the preview
    /// (where each host goes back to) and starts only when the front end confirms it on the
    /// runner's stdin; without, it starts at once (`on_failure = "rollback"`).
    Rollback {
        confirm: bool,
    },
    /// Carry on the interrupted deploy `session` from its journal; `interrupted` (`rerun`,
    /// `skip`, `fail`, or `HOST=…` for one host) decides the hosts that were mid-step, and is
    /// required if there are any.
    Resume {
        session: String,
        #[serde(default)]
        interrupted: Vec<String>,
    },
}

/// Everything a runner needs to start a deploy; secrets come from its environment, inherited
/// from the front end, never from here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spec {
    #[serde(flatten)]
    pub job: Job,
    pub profile: PathBuf,
    pub env: String,
    pub audit_dir: Option<PathBuf>,
    pub local_root: Option<PathBuf>,
    /// `headless` or `console`, recorded in the audit log.
    pub mode: String,
    /// How the operator confirmed the start, when the front end asked (recorded).
    pub confirmation: Option<String>,
    /// Commands that apply before any host starts (`--exclude`).
    pub first: Vec<(Command, CommandSource)>,
    /// Overrides the environment's `on_detach` (headless mode aborts when it goes away).
    pub on_detach: Option<DetachAction>,
    /// Where to keep the deploy's figures for Prometheus (else `$WAVEDECK_METRICS_FILE`).
    #[serde(default)]
    pub metrics_file: Option<PathBuf>,
    /// Passphrases the operator typed for encrypted identity files no agent holds. They travel
    /// only on the runner's standard input and stay in its memory.
    #[serde(default, skip_serializing_if = "Passphrases::is_empty")]
    pub passphrases: Passphrases,
}

/// Identity files and the passphrases typed for them; never shown.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Passphrases(pub Vec<(PathBuf, String)>);

impl Passphrases {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Passphrases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Passphrases({} given)", self.0.len())
    }
}

/// The runner's line back to the front end that started it (a rollback to confirm first says
/// `Preview`, then, once answered, one of the others).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ready {
    Started {
        session: String,
        socket: PathBuf,
        audit_path: PathBuf,
        /// A rollback's plan, when it started without a question (`on_failure = "rollback"`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        preview: Option<String>,
    },
    Refused {
        code: i32,
        message: String,
        audit_path: Option<PathBuf>,
    },
    /// A rollback's preview, recorded in its audit log; the runner waits for an [`Answer`].
    Preview {
        text: String,
        protected: bool,
    },
}

/// The front end's answer to a rollback preview, on the runner's stdin. A closed stdin (the
/// front end went away) is a `Cancel`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Answer {
    /// Start it; how the operator confirmed, for the audit log.
    Confirm(String),
    Cancel,
}

/// Why a deploy did not start, as the front end reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub code: i32,
    pub message: String,
    pub audit_path: Option<PathBuf>,
}

/// The name of the file runners write their own troubles to, in the runtime directory.
const RUNNER_LOG: &str = "runner.log";

// ---------------------------------------------------------------------------------------------
// Inside the runner process.

/// `wavedeck runner`: reads a [`Spec`] from stdin, runs the deploy, and returns its exit code.
pub fn main() -> i32 {
    // Its own session: no controlling terminal, so closing the one it came from sends nothing.
    let _ = nix::unistd::setsid();
    crate::sys::raise_open_files_limit();
    let mut line = String::new();
    if std::io::stdin().read_line(&mut line).is_err() {
        return exit::INVALID;
    }
    let spec: Spec = match serde_json::from_str(&line) {
        Ok(spec) => spec,
        Err(e) => {
            ready(&Ready::Refused { code: exit::INVALID, message: format!("runner: bad spec: {e}"), audit_path: None });
            return exit::INVALID;
        }
    };
    crate::transport::ssh::remember_passphrases(spec.passphrases.0.clone());
    let _debug_log = std::env::var_os(crate::debuglog::DEBUG_LOG_ENV)
        .filter(|p| !p.is_empty())
        .and_then(|path| crate::debuglog::init(std::path::Path::new(&path)).ok());
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            let message = format!("cannot start the async runtime: {e}");
            ready(&Ready::Refused { code: exit::CANNOT_START, message, audit_path: None });
            return exit::CANNOT_START;
        }
    };
    runtime.block_on(run(spec))
}

/// Tells the front end how the start went. Nothing else is ever written to stdout: the front
/// end stops reading after this line.
fn ready(ready: &Ready) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Ok(line) = serde_json::to_string(ready) {
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
}

fn refused(error: SetupError) -> Ready {
    Ready::Refused { code: error.code(), message: error.to_string(), audit_path: None }
}

async fn run(spec: Spec) -> i32 {
    let prepared = prepare(&spec).await;
    let Prepared { mut session, preview, on_detach, detached_timeout } = match prepared {
        Ok(prepared) => prepared,
        Err(refusal) => {
            let code = if let Ready::Refused { code, .. } = &refusal { *code } else { exit::CANNOT_START };
            ready(&refusal);
            return code;
        }
    };
    let mut confirmation = spec.confirmation.clone();
    let mut unasked = preview;
    let asks = matches!(spec.job, Job::Rollback { confirm: true });
    if let Some(preview) = unasked.take_if(|_| asks) {
        ready(&Ready::Preview { text: preview, protected: session.plan.protected });
        match answer().await {
            Answer::Confirm(how) => confirmation = Some(how),
            Answer::Cancel => {
                let audit_path = session.refuse(exit::INVALID);
                ready(&Ready::Refused {
                    code: exit::INVALID,
                    message: "rollback not started".into(),
                    audit_path: Some(audit_path),
                });
                return exit::INVALID;
            }
        }
    }
    if let Some(how) = &confirmation {
        session.confirmed(how);
    }
    let metrics_file = spec
        .metrics_file
        .clone()
        .or_else(|| std::env::var_os(crate::metrics::METRICS_FILE_ENV).filter(|p| !p.is_empty()).map(PathBuf::from));
    let options = RunOptions { on_detach: spec.on_detach.unwrap_or(on_detach), detached_timeout, metrics_file };
    let running = match session.start(spec.first.clone(), options).await {
        Ok(running) => running,
        Err(refusal) => {
            let code = refusal.code;
            ready(&Ready::Refused { code, message: refusal.message, audit_path: Some(refusal.audit_path) });
            return code;
        }
    };
    ready(&Ready::Started {
        session: running.session.clone(),
        socket: running.socket.clone(),
        audit_path: running.audit_path.clone(),
        preview: unasked,
    });
    // No terminal sends these any more; a person or a system shutting down does.
    use tokio::signal::unix::{SignalKind, signal};
    let commands = running.commands.clone();
    if let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        tokio::spawn(async move {
            loop {
                let name = tokio::select! {
                    _ = term.recv() => "SIGTERM",
                    _ = int.recv() => "SIGINT",
                };
                let reason = format!("{name} received by the deploy's runner");
                commands.send(Command::Abort { reason }, CommandSource::Signal);
            }
        });
    }
    // A hang-up can still arrive between the start and setsid: it must not kill the deploy.
    if let Ok(mut hangup) = signal(SignalKind::hangup()) {
        tokio::spawn(async move { while hangup.recv().await.is_some() {} });
    }
    running.ended().await.code
}

/// The front end's answer to a preview, from stdin; anything but a confirmation cancels.
async fn answer() -> Answer {
    // Blocking, on a thread of its own: a pipe from the front end, read once.
    let read = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).map(|n| (n, line))
    });
    match read.await {
        Ok(Ok((n, line))) if n > 0 => serde_json::from_str(&line).unwrap_or(Answer::Cancel),
        _ => Answer::Cancel,
    }
}

/// The session that carries on deploy `from`: its plan with what the journal says each host
/// had done, its lock adoptable, its audit log linked to the interrupted one.
fn resume_session(
    spec: &Spec,
    profile: &crate::profile::Profile,
    from: &str,
    interrupted: &[String],
) -> Result<session::Session, SetupError> {
    use crate::resume;
    let dir = crate::audit::audit_dir(spec.audit_dir.as_deref())
        .ok_or_else(|| SetupError::CannotStart("no audit directory to find the journal in".into()))?;
    let journal =
        resume::read(&resume::journal_of(&dir, from).map_err(SetupError::Invalid)?).map_err(SetupError::Invalid)?;
    if let Ok(socket) = remote::socket_of(from)
        && std::os::unix::net::UnixStream::connect(&socket).is_ok()
    {
        return Err(SetupError::Invalid(format!("deploy {from} is still running: wavedeck attach {from}")));
    }
    if let Some(later) = resume::resumed_by(&dir, from) {
        return Err(SetupError::Invalid(format!(
            "deploy {from} was already resumed by session {later}: resume that one if it was interrupted too"
        )));
    }
    if profile.sha256 != journal.profile_sha256 {
        return Err(SetupError::Invalid(format!(
            "{} changed since deploy {from} began (sha256 {} then, {} now): a resume runs the same profile; \
             restore it, or start a new deploy",
            profile.path.display(),
            journal.profile_sha256,
            profile.sha256
        )));
    }
    let stuck: Vec<String> = journal.interrupted().map(|(host, _)| host.to_string()).collect();
    let choices = resume::Choices::parse(interrupted).map_err(SetupError::Invalid)?;
    let carried = journal.resume(&choices).map_err(SetupError::Invalid)?;
    let options = SessionOptions {
        profile: &spec.profile,
        env: &journal.env,
        release: &journal.release,
        audit_dir: spec.audit_dir.as_deref(),
        local_root: spec.local_root.as_deref(),
        mode: &journal.mode,
        resumed_from: Some(from),
    };
    let mut session = session::prepare_with(&options, profile.clone(), |p, secrets| {
        let mut plan = crate::plan::Plan::build(p, &journal.env, &journal.release, secrets)?;
        plan.resume = carried;
        plan.deploy_id = resume::deploy_of(&dir, from);
        Ok(plan)
    })?;
    let choice = choices.words();
    session.audit.note(crate::audit::Record::ResumeDecided {
        from_session: from.to_string(),
        interrupted: stuck,
        choice,
    });
    session.adopt_lock_of = Some(from.to_string());
    Ok(session)
}

/// What the runner is about to run.
struct Prepared {
    session: session::Session,
    /// A rollback's preview: where each host goes back to.
    preview: Option<String>,
    on_detach: DetachAction,
    detached_timeout: std::time::Duration,
}

/// The session the spec asks for, with the environment's detach settings.
async fn prepare(spec: &Spec) -> Result<Prepared, Ready> {
    // Warnings were the front end's to show; the profile is read again because the runner
    // runs what is on disk now, and the audit log pins its sha256.
    let profile =
        crate::profile::Profile::load(&spec.profile).map_err(|d| refused(SetupError::Invalid(d.to_string())))?;
    let env = session::environment(&profile, &spec.env).map_err(refused)?;
    let (on_detach, detached_timeout) = (env.policy.on_detach, env.policy.detached_timeout);
    let (session, preview) = match &spec.job {
        Job::Deploy { release } => {
            let options = SessionOptions {
                profile: &spec.profile,
                env: &spec.env,
                release,
                audit_dir: spec.audit_dir.as_deref(),
                local_root: spec.local_root.as_deref(),
                mode: &spec.mode,
                resumed_from: None,
            };
            (session::prepare(&options, profile.clone()).map_err(refused)?, None)
        }
        Job::Resume { session: from, interrupted } => {
            (resume_session(spec, &profile, from, interrupted).map_err(refused)?, None)
        }
        Job::Rollback { .. } => {
            let prepared =
                crate::rollback::prepare(&profile, &spec.env, spec.audit_dir.as_deref(), spec.local_root.as_deref())
                    .await
                    .map_err(refused)?;
            let preview = prepared.describe();
            (prepared.session, Some(preview))
        }
    };
    Ok(Prepared { session, preview, on_detach, detached_timeout })
}

// ---------------------------------------------------------------------------------------------
// In the front end.

/// Starts a runner for `spec` and attaches to it as its controller. Returns once the deploy has
/// started (its lock taken), or why it did not.
pub async fn spawn(spec: &Spec) -> Result<Client, Refused> {
    match launch(spec).await? {
        Launched::Started(client) => Ok(*client),
        Launched::Preview(pending) => pending.confirm("").await,
    }
}

/// What a started runner answered first.
pub enum Launched {
    Started(Box<Client>),
    /// A rollback to confirm: what it will do, and the runner waiting for the answer.
    Preview(Box<Pending>),
}

/// A rollback's runner, waiting for the operator's answer to its preview.
pub struct Pending {
    pub text: String,
    pub protected: bool,
    talk: Talk,
}

impl Pending {
    /// Starts the rollback; `how` the operator confirmed it, for the audit log.
    pub async fn confirm(mut self, how: &str) -> Result<Client, Refused> {
        self.talk.answer(&Answer::Confirm(how.to_string())).await;
        match self.talk.next().await? {
            Ready::Started { socket, .. } => self.talk.attach(&socket, None).await,
            other => Err(self.talk.unexpected(other).await),
        }
    }

    /// Says no: the runner records the refusal and ends. Returns its audit log.
    pub async fn cancel(mut self) -> Option<PathBuf> {
        self.talk.answer(&Answer::Cancel).await;
        match self.talk.next().await {
            Err(refused) => refused.audit_path,
            Ok(other) => {
                let _ = self.talk.unexpected(other).await;
                None
            }
        }
    }
}

/// The front end's line to a runner it started: its stdin and stdout until it has started.
struct Talk {
    child: tokio::process::Child,
    stdin: Option<tokio::process::ChildStdin>,
    stdout: Option<BufReader<tokio::process::ChildStdout>>,
    /// What the front end is, for the runner's records.
    mode: String,
    log: Option<PathBuf>,
}

impl Talk {
    async fn answer(&mut self, answer: &Answer) {
        if let (Some(stdin), Ok(line)) = (self.stdin.as_mut(), serde_json::to_string(answer)) {
            let _ = stdin.write_all(format!("{line}\n").as_bytes()).await;
            let _ = stdin.flush().await;
        }
    }

    /// The runner's next [`Ready`] line; a refusal, or a runner that died, is an error.
    async fn next(&mut self) -> Result<Ready, Refused> {
        let mut line = String::new();
        if let Some(stdout) = self.stdout.as_mut() {
            let _ = stdout.read_line(&mut line).await;
        }
        match serde_json::from_str::<Ready>(&line) {
            Ok(Ready::Refused { code, message, audit_path }) => {
                let _ = self.child.wait().await;
                Err(Refused { code, message, audit_path })
            }
            Ok(ready) => Ok(ready),
            Err(_) => {
                let status = self.child.wait().await.map(|s| s.to_string()).unwrap_or_default();
                Err(self.cannot(format!("the deploy's runner stopped before it started ({status})")))
            }
        }
    }

    fn cannot(&self, message: String) -> Refused {
        let see = self.log.as_ref().map_or(String::new(), |p| format!("; see {}", p.display()));
        Refused { code: exit::CANNOT_START, message: format!("{message}{see}"), audit_path: None }
    }

    async fn unexpected(&mut self, ready: Ready) -> Refused {
        let _ = self.child.kill().await;
        self.cannot(format!("the deploy's runner answered out of turn ({ready:?})"))
    }

    /// Attaches to the started runner as its controller; the runner is reaped once its deploy
    /// has ended.
    async fn attach(self, socket: &Path, preview: Option<String>) -> Result<Client, Refused> {
        match Client::attach(socket, Role::Control, 1, &self.mode).await {
            Ok(mut client) => {
                client.child = Some(self.child);
                client.preview = preview;
                Ok(client)
            }
            Err(e) => Err(self.cannot(format!("the deploy started but cannot be reached: {e}"))),
        }
    }
}

/// Starts a runner for `spec`; returns the started deploy's client, a rollback's preview to
/// answer, or why it did not start.
pub async fn launch(spec: &Spec) -> Result<Launched, Refused> {
    let cannot = |message: String| Refused { code: exit::CANNOT_START, message, audit_path: None };
    // The runner must be this very program (the protocol between them is not versioned). On
    // Linux /proc/self/exe still opens it after an upgrade replaced the file on disk.
    let this = Path::new("/proc/self/exe");
    let exe = if this.exists() {
        this.to_path_buf()
    } else {
        std::env::current_exe().map_err(|e| cannot(format!("cannot find wavedeck's own program: {e}")))?
    };
    let log = remote::runtime_dir().ok().map(|dir| dir.join(RUNNER_LOG));
    let stderr = log
        .as_ref()
        .and_then(|path| std::fs::OpenOptions::new().create(true).append(true).open(path).ok())
        .map_or_else(Stdio::null, Stdio::from);
    // Its argv[0] (in its audit log's session start) names the program, not /proc.
    let name = std::env::current_exe().map_or_else(|_| "wavedeck".into(), |p| p.into_os_string());
    let mut child = tokio::process::Command::new(exe)
        .arg0(name)
        .arg("runner")
        // A runner started with --debug-log writes to the same file.
        .envs(crate::debuglog::path().map(|path| (crate::debuglog::DEBUG_LOG_ENV, path)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .map_err(|e| cannot(format!("cannot start the deploy's runner: {e}")))?;
    let stdin = child.stdin.take();
    let stdout = child.stdout.take().map(BufReader::new);
    let mut talk = Talk { child, stdin, stdout, mode: spec.mode.clone(), log };
    let line = serde_json::to_string(spec).map_err(|e| cannot(e.to_string()))?;
    if let Some(stdin) = talk.stdin.as_mut() {
        let _ = stdin.write_all(format!("{line}\n").as_bytes()).await;
    }
    match talk.next().await? {
        Ready::Started { socket, preview, .. } => Ok(Launched::Started(Box::new(talk.attach(&socket, preview).await?))),
        Ready::Preview { text, protected } => Ok(Launched::Preview(Box::new(Pending { text, protected, talk }))),
        other => Err(talk.unexpected(other).await),
    }
}

/// What a client hears besides events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// This client's role changed (taken over, released, given).
    Role { role: Role, reason: String },
    /// A request was refused, and why.
    Refused { what: &'static str, reason: String },
    /// Events this client did not get (it fell far behind); they are in the audit log.
    Gap { from_seq: u64, to_seq: u64 },
}

impl std::fmt::Display for Notice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Notice::Role { reason, .. } => f.write_str(reason),
            Notice::Refused { what, reason } => write!(f, "{what} refused: {reason}"),
            Notice::Gap { from_seq, to_seq } => write!(
                f,
                "events {from_seq} to {to_seq} were not received here (too far behind); they are in the audit log"
            ),
        }
    }
}

/// Requests a client task carries to the runner.
enum Ask {
    Command(Command, CommandSource),
    TakeOver,
    Release,
    Detach(oneshot::Sender<()>),
}

/// A front end's connection to a running deploy: events in, commands out.
pub struct Client {
    pub welcome: Welcome,
    /// The role this client has now (updated from notices by [`Client::note`]).
    pub role: Role,
    /// A rollback's plan when it started without a question, for the front end to show.
    pub preview: Option<String>,
    pub events: EventStream,
    pub notices: mpsc::UnboundedReceiver<Notice>,
    asks: mpsc::UnboundedSender<Ask>,
    ended: oneshot::Receiver<Result<Ended, String>>,
    /// The runner, when this front end started it: reaped once the deploy has ended.
    child: Option<tokio::process::Child>,
}

impl Client {
    /// Attaches to the runner at `socket`, asking for `role`, with events from `from_seq` on.
    /// `as_what` says in the runner's records what this client is ("console", "started it").
    pub async fn attach(socket: &Path, role: Role, from_seq: u64, as_what: &str) -> Result<Client, String> {
        let hello = Hello { version: remote::PROTOCOL, client: remote::client_name(as_what), from_seq, role };
        let (welcome, connection) = Connection::open(socket, hello).await?;
        let (sink, events) = engine::event_channel();
        let (notice_tx, notices) = mpsc::unbounded_channel();
        let (asks, ask_rx) = mpsc::unbounded_channel();
        let (ended_tx, ended) = oneshot::channel();
        tokio::spawn(async move {
            let result = converse(connection, sink, notice_tx, ask_rx).await;
            let _ = ended_tx.send(result);
        });
        let role = welcome.role;
        Ok(Client { welcome, role, preview: None, events, notices, asks, ended, child: None })
    }

    pub fn session(&self) -> &str {
        &self.welcome.about.session
    }

    /// Sends a command (the runner audits it, then acts, or refuses it with a notice).
    pub fn send(&self, command: Command, source: CommandSource) {
        let _ = self.asks.send(Ask::Command(command, source));
    }

    pub fn take_over(&self) {
        let _ = self.asks.send(Ask::TakeOver);
    }

    pub fn release(&self) {
        let _ = self.asks.send(Ask::Release);
    }

    /// Leaves on purpose: the deploy carries on as it is. Returns once the runner has it.
    pub async fn detach(self) {
        let (done, acknowledged) = oneshot::channel();
        if self.asks.send(Ask::Detach(done)).is_ok() {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), acknowledged).await;
        }
    }

    /// Keeps `role` in step with a notice.
    pub fn note(&mut self, notice: &Notice) {
        if let Notice::Role { role, .. } = notice {
            self.role = *role;
        }
    }

    /// Waits until the deploy has ended and settled (lock released, audit log closed), and
    /// reaps the runner if this front end started it.
    pub async fn ended(self) -> Ended {
        let audit_path = self.welcome.about.audit_path.clone();
        let ended = match self.ended.await {
            Ok(Ok(ended)) => ended,
            Ok(Err(why)) => lost(audit_path, why),
            Err(_) => lost(audit_path, "the connection to the deploy's runner ended".into()),
        };
        if let Some(mut child) = self.child {
            let _ = child.wait().await;
        }
        ended
    }
}

fn lost(audit_path: PathBuf, why: String) -> Ended {
    Ended {
        outcome: None,
        code: exit::CANNOT_START,
        problems: vec![format!("lost the deploy's runner before it ended ({why}); see wavedeck ps and the audit log")],
        audit_path,
        journal_syncs: 0,
    }
}

/// Carries one client's conversation with its runner until the deploy's end arrives.
async fn converse(
    mut connection: Connection,
    sink: engine::EventSink,
    notices: mpsc::UnboundedSender<Notice>,
    mut asks: mpsc::UnboundedReceiver<Ask>,
) -> Result<Ended, String> {
    let mut next_id = 0u64;
    // What each request in flight was, for the notice if it is refused.
    let mut asked: std::collections::HashMap<u64, &'static str> = std::collections::HashMap::new();
    let mut detaching: Option<(u64, oneshot::Sender<()>)> = None;
    let mut asks_open = true;
    loop {
        tokio::select! {
            ask = asks.recv(), if asks_open => {
                let Some(ask) = ask else {
                    asks_open = false;
                    continue;
                };
                next_id += 1;
                let id = next_id;
                let (message, what) = match ask {
                    Ask::Command(command, source) => {
                        let what = command.name();
                        (Message::Command { id, command, source }, what)
                    }
                    Ask::TakeOver => (Message::TakeOver { id }, "take over"),
                    Ask::Release => (Message::Release { id }, "release"),
                    Ask::Detach(done) => {
                        detaching = Some((id, done));
                        (Message::Detach { id }, "detach")
                    }
                };
                asked.insert(id, what);
                connection.send(&message).await.map_err(|e| e.to_string())?;
            }
            message = connection.receive() => match message.map_err(|e| e.to_string())? {
                None => return Err("the runner closed the connection".into()),
                Some(Message::Event { event, .. }) => {
                    // A slow screen slows this reading down; the runner keeps the rest for it.
                    sink.room().await;
                    sink.forward(event);
                }
                Some(Message::Gap { from_seq, to_seq }) => {
                    let _ = notices.send(Notice::Gap { from_seq, to_seq });
                }
                Some(Message::Role { role, reason }) => {
                    let _ = notices.send(Notice::Role { role, reason });
                }
                Some(Message::Ack { id }) => {
                    asked.remove(&id);
                    if let Some((_, done)) = detaching.take_if(|(d, _)| *d == id) {
                        let _ = done.send(());
                        return Err("detached".into());
                    }
                }
                Some(Message::Refused { id, reason }) => {
                    let what = id.and_then(|id| asked.remove(&id));
                    match what {
                        Some(what) => {
                            let _ = notices.send(Notice::Refused { what, reason });
                        }
                        None => return Err(reason),
                    }
                }
                Some(Message::Ended(ended)) => return Ok(ended),
                Some(_) => {}
            }
        }
    }
}
