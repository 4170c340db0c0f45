//! The console: a full-screen view of environments and of a running deploy.
//!
//! One loop (like oha's monitor) takes terminal input, deploy events, task results and
//! signals, folds them into [`App`], carries out the resulting effects and redraws at most every
//! [`FRAME`] when something changed. It never waits on slow work: starting a deploy (taking its
//! lock), planning a rollback (asking hosts), a preflight check and settling a finished deploy
//! all run as tasks that report back, while the screen keeps drawing; Esc stops a preview. A
//! running deploy is owned by its runner, a process of its own ([`crate::runner`]): the console
//! is one of its clients, so closing the terminal never takes the deploy with it (the
//! environment's `on_detach` decides), and `wavedeck attach` opens the console on it again.

pub mod app;
pub mod config;
pub mod keymap;
pub mod layout;
pub mod logs;
pub mod model;
pub mod prose;
pub mod replay;
pub mod theme;
pub mod view;

use std::io::{IsTerminal, Stdout};
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{Local, Offset, Utc};
use crossterm::event::{DisableMouseCapture, EnableMouseCapture, Event as TermEvent, EventStream};
use crossterm::execute;
use crossterm::terminal::{EnterAlternateScreen, LeaveAlternateScreen, disable_raw_mode, enable_raw_mode};
use futures_util::StreamExt;
use ratatui::Terminal;
use ratatui::backend::CrosstermBackend;
use ratatui::layout::Rect;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use self::app::{App, Effect};
use self::theme::Theme;
use crate::event::{Event, Stamped};
use crate::exit;
use crate::profile::Profile;
use crate::remote::Role;
use crate::runner::{self, Client, Job, Notice, Spec};
use crate::session;
use crate::{check, rollback};

/// Shortest time between two frames: about 30 frames per second at most.
pub const FRAME: Duration = Duration::from_millis(33);

pub struct ConsoleOptions {
    /// A profile file or a directory of profiles; `None` looks in the usual places.
    pub path: Option<PathBuf>,
    pub theme: Option<String>,
    pub audit_dir: Option<PathBuf>,
    pub local_root: Option<PathBuf>,
    pub scrollback: Option<usize>,
    /// Memory all scrollback may hold, in MiB.
    pub scrollback_mib: Option<usize>,
}

/// Runs the console; returns the process exit code.
pub fn run(options: ConsoleOptions) -> i32 {
    if let Err(code) = need_terminal() {
        return code;
    }
    let profiles = match load_profiles(options.path.as_deref()) {
        Ok(p) => p,
        Err(message) => {
            eprintln!("{message}");
            return exit::INVALID;
        }
    };
    // Warnings (a soak too short for its checks) would scroll away behind the alternate screen:
    // the footer shows them until the first key.
    let warnings: Vec<String> = profiles.iter().flat_map(|p| p.warnings.iter().map(|w| w.to_string())).collect();
    let Ok((mut app, theme)) = setup(profiles, &options) else { return exit::INVALID };
    let Some(runtime) = new_runtime() else { return exit::CANNOT_START };
    if let Some(first) = warnings.first() {
        let first = first.lines().next().unwrap_or_default();
        let more = if warnings.len() > 1 { format!(" (and {} more)", warnings.len() - 1) } else { String::new() };
        app.status = Some(format!("warning: {first}{more}"));
    }
    let mut audit_files = Vec::new();
    let code = runtime.block_on(console_loop(app, theme, &options, &mut audit_files, None));
    for path in audit_files {
        println!("audit log: {}", path.display());
    }
    code
}

/// What `wavedeck attach` opens the console on.
pub struct Attach {
    pub socket: PathBuf,
    /// Control if nobody has it (else the console observes), or observe.
    pub role: Role,
    pub from: u64,
    pub theme: Option<String>,
}

/// Opens the console on a running deploy: its history so far, then live.
pub fn attach(attach: Attach) -> i32 {
    if let Err(code) = need_terminal() {
        return code;
    }
    let Some(runtime) = new_runtime() else { return exit::CANNOT_START };
    let client = match runtime.block_on(Client::attach(&attach.socket, attach.role, attach.from, "console")) {
        Ok(client) => client,
        Err(why) => {
            eprintln!("wavedeck: cannot attach: {why}");
            return exit::CANNOT_START;
        }
    };
    let about = client.welcome.about.clone();
    let profile = match Profile::load(&about.profile) {
        Ok(p) => p,
        Err(d) => {
            eprintln!("wavedeck: cannot read the deploy's profile: {d}");
            return exit::INVALID;
        }
    };
    let options = ConsoleOptions {
        path: None,
        theme: attach.theme,
        audit_dir: None,
        local_root: None,
        scrollback: None,
        scrollback_mib: None,
    };
    let Ok((mut app, theme)) = setup(vec![profile], &options) else { return exit::INVALID };
    if let Some(i) = app.targets.iter().position(|t| app.profiles[t.profile].environments[t.env].name == about.env) {
        app.selected_target = i;
    }
    app.begin_deploy();
    // The runner replays only its newest output: line numbers may not match the audit log's.
    app.log_complete = false;
    app.observing = client.role != Role::Control;
    app.status = Some(attached_text(&client));
    let mut audit_files = Vec::new();
    let code = runtime.block_on(console_loop(app, theme, &options, &mut audit_files, Some(client)));
    println!("audit log: {}", about.audit_path.display());
    code
}

fn attached_text(client: &Client) -> String {
    let w = &client.welcome;
    match (client.role, &w.status.controller) {
        (Role::Control, _) => {
            format!("attached to {} (started by {}); you control it", w.about.session, w.about.operator)
        }
        (Role::Observe, Some(who)) => format!("observing: {who} controls this deploy; T takes over"),
        (Role::Observe, None) => "observing; T takes control".to_string(),
    }
}

fn need_terminal() -> Result<(), i32> {
    if std::io::stdout().is_terminal() {
        return Ok(());
    }
    eprintln!(
        "wavedeck: the console needs a terminal, and standard output is not one.\n\
         For scripts and CI use headless mode: wavedeck deploy PROFILE --env ENV --release RELEASE"
    );
    Err(exit::INVALID)
}

fn new_runtime() -> Option<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .inspect_err(|e| eprintln!("cannot start the async runtime: {e}"))
        .ok()
}

/// The console's state and theme for `profiles`; errors are printed.
fn setup(profiles: Vec<Profile>, options: &ConsoleOptions) -> Result<(App, Theme), ()> {
    let config = config::Config::load().map_err(|e| eprintln!("{e}"))?;
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let theme =
        Theme::resolve(options.theme.as_deref().or(config.theme.as_deref()), no_color).map_err(|e| eprintln!("{e}"))?;
    let scrollback = options.scrollback.or(config.scrollback).unwrap_or(logs::DEFAULT_SCROLLBACK);
    let mut app = App::new(profiles, &crate::audit::operator_name(), scrollback);
    let mib = options.scrollback_mib.or(config.scrollback_mib).unwrap_or(logs::DEFAULT_SCROLLBACK_MEMORY >> 20);
    app.scrollback_memory = mib.max(1) << 20;
    app.bell = config.bell.unwrap_or(true);
    app.metrics_file = config.metrics_file;
    Ok((app, theme))
}

/// What `plan --diff` prints, for the confirmation dialog's `D`; a problem is the text.
async fn plan_diff(
    profile: &Profile,
    env: &crate::profile::Environment,
    release: &str,
    local_root: Option<&std::path::Path>,
) -> String {
    let secrets = match crate::secrets::Secrets::from_env(profile) {
        Ok(secrets) => secrets,
        Err(e) => return format!("cannot render the templates: {e}"),
    };
    let plan = match crate::plan::Plan::build(profile, &env.name, release, &secrets) {
        Ok(plan) => plan,
        Err(e) => return e.to_string(),
    };
    let transport = match session::transport_for(env, local_root) {
        Ok(transport) => transport,
        Err(e) => return e.to_string(),
    };
    let changes = crate::diff::template_changes(&plan, transport, &secrets.redactor()).await;
    crate::diff::report(&changes).trim_start().to_string()
}

/// The profiles to show: the given file or directory, else `./profiles`, else the user's
/// config directory.
fn load_profiles(path: Option<&Path>) -> Result<Vec<Profile>, String> {
    let user_dir = directories::ProjectDirs::from("", "", "wavedeck").map(|d| d.config_dir().join("profiles"));
    let candidates: Vec<PathBuf> = match path {
        Some(p) => vec![p.to_path_buf()],
        None => [Some(PathBuf::from("profiles")), user_dir.clone()].into_iter().flatten().collect(),
    };
    for candidate in &candidates {
        let files = if candidate.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(candidate)
                .map_err(|e| format!("cannot read {}: {e}", candidate.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                .collect();
            files.sort();
            files
        } else if candidate.is_file() || path.is_some() {
            vec![candidate.clone()]
        } else {
            continue;
        };
        if files.is_empty() {
            continue;
        }
        let mut profiles = Vec::new();
        let mut problems = Vec::new();
        for file in files {
            match Profile::load(&file) {
                Ok(p) => profiles.push(p),
                Err(d) => problems.push(d.to_string()),
            }
        }
        if !problems.is_empty() {
            return Err(problems.join("\n\n"));
        }
        return Ok(profiles);
    }
    let user = user_dir.map(|d| d.display().to_string()).unwrap_or_else(|| "~/.config/wavedeck/profiles".into());
    Err(format!(
        "wavedeck: no profiles found in ./profiles or {user}.\n\
         To try the demo, run this from a wavedeck checkout:  cargo run --release -- profiles/demo.toml"
    ))
}

/// What a background task of the console reports when it is done. Anything that touches a
/// host or the network runs as such a task, so the loop never waits on it.
enum Done {
    /// The identity files a deploy needs that are encrypted and in no agent (none: start it).
    Locked { spec: Box<Spec>, files: Vec<PathBuf> },
    /// A deploy or rollback started (its lock taken), or was refused.
    Started(Result<Box<Client>, String>),
    /// A rollback was planned and its targets previewed, for the operator to confirm (or, for
    /// `on_failure = "rollback"`, to start at once).
    Prepared(Result<runner::Launched, String>),
    /// A rollback preview the operator said no to has been recorded (its audit log).
    Cancelled(Option<PathBuf>),
    /// A deploy's session has settled: lock released, audit log closed.
    Ended(session::Ended),
    /// A host's log was written to a file (`W`): where, or why not.
    Written(String),
    /// Older output of a host, read back from the audit log, or why not.
    Earlier {
        host: String,
        from: u64,
        read: Result<Vec<(chrono::DateTime<Utc>, crate::event::Stream, String)>, String>,
    },
}

/// Writes `host`'s whole log, from `audit`, to a file in the working directory named after the
/// session and the host; says where, or why it could not.
fn write_host_log(audit: &Path, host: &str) -> String {
    // The audit file is `wavedeck-<session>.jsonl`: the host's log is `wavedeck-<session>-<host>.log`.
    let stem = audit.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let safe: String =
        host.chars().map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '_' }).collect();
    let name = format!("{stem}-{safe}.log");
    let path = std::env::current_dir().map(|d| d.join(&name)).unwrap_or_else(|_| PathBuf::from(&name));
    // Masked, but still a deploy's output: readable by the operator only, like the audit log.
    let created = {
        use std::os::unix::fs::OpenOptionsExt as _;
        // Not through a link someone left in the working directory.
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&path)
    };
    let written = created.and_then(|file| {
        let mut out = std::io::BufWriter::new(file);
        crate::audit::write_host_log(audit, host, &mut out)
    });
    match written {
        Ok(lines) => format!("{host}'s log ({lines} lines) written to {}", path.display()),
        Err(e) => format!("cannot write {host}'s log to {}: {e}", path.display()),
    }
}

/// The slow task now running on the operator's behalf, shown in the footer.
struct Busy {
    task: tokio::task::AbortHandle,
    /// Whether Esc may stop it: a preview only reads; taking a lock must not be cut half-way.
    cancellable: bool,
}

async fn console_loop(
    mut app: App,
    theme: Theme,
    options: &ConsoleOptions,
    audit_files: &mut Vec<PathBuf>,
    attached: Option<Client>,
) -> i32 {
    let mut terminal = match TerminalGuard::enter() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("cannot set up the terminal: {e}");
            return exit::CANNOT_START;
        }
    };
    if let Ok(size) = terminal.terminal.size() {
        app.size = Rect::new(0, 0, size.width, size.height);
    }
    let (Ok(mut sigterm), Ok(mut sighup)) = (signal(SignalKind::terminate()), signal(SignalKind::hangup())) else {
        drop(terminal);
        eprintln!("cannot listen for signals");
        return exit::CANNOT_START;
    };
    let mut input = EventStream::new();
    let mut frames = tokio::time::interval(FRAME);
    frames.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    // The audit log of the deploy on screen, for `W` to read a host's whole log back from.
    let mut shown_audit: Option<PathBuf> = attached.as_ref().map(|c| c.welcome.about.audit_path.clone());
    let mut running: Option<Client> = attached;
    // A deploy that has finished but whose session is still settling (lock, audit log).
    let mut ending: Option<tokio::task::JoinHandle<()>> = None;
    // A rollback planned and shown to the operator, waiting for confirmation.
    // A rollback's runner showing its preview, waiting for the operator's answer.
    let mut prepared_rollback: Option<Box<runner::Pending>> = None;
    let mut busy: Option<Busy> = None;
    let mut last_code: Option<i32> = None;
    let mut dirty = true;
    let mut batch = Vec::with_capacity(1024);
    let audit_dir = crate::audit::audit_dir(options.audit_dir.as_deref());
    refresh_releases(&mut app, audit_dir.as_deref());
    if !app.interrupted.is_empty() && app.status.is_none() {
        let count = app.interrupted.len();
        app.status = Some(format!(
            "{count} interrupted deploy{} (its runner died): u on an INTERRUPTED environment resumes it",
            if count == 1 { "" } else { "s" }
        ));
    }
    // Preflight checks run in the background and report here, per target.
    let (checks_tx, mut checks) = mpsc::unbounded_channel::<(usize, Vec<check::HostCheck>)>();
    // Texts a background task found, to show in a dialog: (title, text).
    let (texts_tx, mut texts) = mpsc::unbounded_channel::<(String, String)>();
    let (done_tx, mut done) = mpsc::unbounded_channel::<Done>();

    loop {
        let mut effects = Vec::new();
        tokio::select! {
            term = input.next() => match term {
                Some(Ok(TermEvent::Key(key))) => { effects = app.on_key(key); dirty = true; }
                Some(Ok(TermEvent::Mouse(mouse))) => { app.on_mouse(mouse); dirty = true; }
                Some(Ok(TermEvent::Resize(w, h))) => { app.size = Rect::new(0, 0, w, h); dirty = true; }
                Some(Ok(_)) => {}
                // The terminal went away: behave as for SIGHUP.
                Some(Err(_)) | None => effects = hang_up(&mut app, "terminal input closed"),
            },
            from = from_runner(&mut running, &mut batch) => match from {
                FromRunner::Events(received) => {
                    dirty = true;
                    let mut finished = received == 0;
                    for event in batch.drain(..) {
                        effects.extend(app.on_event(&event));
                        finished |= matches!(event.event, Event::DeployFinished { .. });
                    }
                    // Settling (releasing the lock on a host) runs as a task too.
                    if finished && let Some(live) = running.take() {
                        let tx = done_tx.clone();
                        ending = Some(tokio::spawn(async move {
                            let _ = tx.send(Done::Ended(live.ended().await));
                        }));
                    }
                }
                FromRunner::Notice(notice) => {
                    dirty = true;
                    if let Some(client) = running.as_mut() {
                        client.note(&notice);
                        app.observing = client.role != Role::Control;
                    }
                    app.status = Some(crate::text::clean(&notice.to_string()));
                }
            },
            Some(finished) = done.recv() => {
                dirty = true;
                match finished {
                    Done::Locked { spec, files } if files.is_empty() => {
                        busy = Some(launch(*spec, &done_tx, &mut app));
                    }
                    Done::Locked { spec, files } => {
                        busy = None;
                        app.ask_passphrases(*spec, files);
                    }
                    Done::Started(Ok(live)) => {
                        busy = None;
                        app.busy = None;
                        app.begin_deploy();
                        app.status = Some(format!("others can watch: wavedeck attach {} --observe", live.session()));
                        shown_audit = Some(live.welcome.about.audit_path.clone());
                        running = Some(*live);
                    }
                    Done::Started(Err(message)) => {
                        busy = None;
                        app.busy = None;
                        app.status = Some(message);
                    }
                    Done::Prepared(result) => {
                        busy = None;
                        app.busy = None;
                        match result {
                            // on_failure = "rollback": started without a question.
                            Ok(runner::Launched::Started(client)) => {
                                app.begin_deploy();
                                app.status = Some("on_failure = \"rollback\": rolling back".into());
                                shown_audit = Some(client.welcome.about.audit_path.clone());
                                running = Some(*client);
                            }
                            Ok(runner::Launched::Preview(pending)) => {
                                app.confirm_rollback(pending.text.clone(), pending.protected);
                                prepared_rollback = Some(pending);
                            }
                            Err(message) => app.status = Some(message),
                        }
                    }
                    Done::Cancelled(audit_path) => audit_files.extend(audit_path),
                    Done::Written(said) => app.status = Some(said),
                    Done::Earlier { host, from, read } => match read {
                        Ok(read) => {
                            let lines = read
                                .into_iter()
                                .map(|(at, stream, text)| logs::LogLine {
                                    host: None,
                                    stream,
                                    text: crate::text::clean(&text).into(),
                                    at,
                                    note: false,
                                })
                                .collect();
                            app.earlier_loaded(host, from, lines);
                        }
                        Err(e) => {
                            app.loading_earlier = false;
                            app.status = Some(format!("cannot read older lines from the audit log: {e}"));
                        }
                    },
                    Done::Ended(ended) => {
                        ending = None;
                        audit_files.push(ended.audit_path.clone());
                        last_code = Some(ended.code);
                        if !ended.problems.is_empty() {
                            app.status = Some(ended.problems.join("; "));
                        }
                        refresh_releases(&mut app, audit_dir.as_deref());
                        // Its runner died: the deploy is interrupted, to resume from the overview.
                        if ended.outcome.is_none() && app.deploy_running() {
                            app.deploy = None;
                            app.status = Some(
                                "the deploy's runner is gone: the deploy is interrupted; u on its environment resumes it"
                                    .into(),
                            );
                        }
                    }
                }
            }
            Some((title, text)) = texts.recv() => {
                app.busy = None;
                app.show_text(&title, &text);
                dirty = true;
            }
            Some((target, results)) = checks.recv() => {
                let statuses = results.into_iter().map(|r| (r.host, r.status)).collect();
                app.reachability.insert(target, statuses);
                dirty = true;
            }
            _ = sigterm.recv() => effects = hang_up(&mut app, "SIGTERM received"),
            _ = sighup.recv() => effects = hang_up(&mut app, "SIGHUP received"),
            _ = frames.tick() => {
                if dirty {
                    let clock = view::Clock { now: Utc::now(), offset: Local::now().offset().fix() };
                    if terminal.terminal.draw(|frame| view::draw(frame, &app, &theme, clock)).is_err() {
                        effects = hang_up(&mut app, "cannot draw on the terminal");
                    }
                    // Elapsed times tick while a deploy runs, and the busy spinner while a task does.
                    dirty = app.deploy_running() || app.busy.is_some();
                }
            }
        }
        for effect in effects {
            match effect {
                Effect::Quit => {
                    drop(terminal);
                    // A finished deploy's lock and audit log are settled before the process goes.
                    if let Some(settling) = ending.take() {
                        let _ = settling.await;
                        while let Ok(Done::Ended(ended)) = done.try_recv() {
                            audit_files.push(ended.audit_path);
                            last_code = Some(ended.code);
                        }
                    }
                    return last_code.unwrap_or(exit::OK);
                }
                Effect::Send(command, source) => {
                    if let Some(client) = running.as_ref() {
                        client.send(command, source);
                    }
                }
                Effect::Resume { target, session, choice } => {
                    let Some(t) = app.targets.get(target) else { continue };
                    let profile = &app.profiles[t.profile];
                    let env = profile.environments[t.env].clone();
                    let spec = Spec {
                        job: Job::Resume { session, interrupted: choice.into_iter().collect() },
                        profile: profile.path.clone(),
                        env: env.name.clone(),
                        audit_dir: options.audit_dir.clone(),
                        local_root: options.local_root.clone(),
                        mode: "console".into(),
                        confirmation: Some(
                            if env.protected { "typed environment name" } else { "confirmed resume" }.into(),
                        ),
                        first: Vec::new(),
                        on_detach: None,
                        metrics_file: app.metrics_file.clone(),
                        passphrases: Default::default(),
                    };
                    app.interrupted.remove(&target);
                    busy = Some(start_unlocking(spec, Some(env), &done_tx, &mut app));
                }
                Effect::LoadEarlier { host, from, to } => match &shown_audit {
                    Some(audit) => {
                        let (audit, done_tx) = (audit.clone(), done_tx.clone());
                        tokio::task::spawn_blocking(move || {
                            let read = crate::audit::host_output(&audit, &host, from..to).map_err(|e| e.to_string());
                            let _ = done_tx.send(Done::Earlier { host, from, read });
                        });
                    }
                    None => {
                        app.loading_earlier = false;
                        app.status = Some("no audit log for this deploy to read older lines from".into());
                    }
                },
                Effect::WriteLog { host } => match &shown_audit {
                    Some(audit) => {
                        app.status = Some(format!("writing {host}'s log…"));
                        let (audit, done_tx) = (audit.clone(), done_tx.clone());
                        tokio::task::spawn_blocking(move || {
                            let _ = done_tx.send(Done::Written(write_host_log(&audit, &host)));
                        });
                    }
                    None => app.status = Some("no audit log for this deploy yet".into()),
                },
                Effect::Bell => {
                    use std::io::Write as _;
                    let mut out = std::io::stdout();
                    let _ = out.write_all(b"\x07").and_then(|()| out.flush());
                }
                Effect::TakeOver => {
                    if let Some(client) = running.as_ref() {
                        client.take_over();
                        app.status = Some("asking for control…".into());
                    }
                }
                Effect::Detach => {
                    drop(terminal);
                    if let Some(client) = running.take() {
                        let session = client.session().to_string();
                        client.detach().await;
                        println!("detached; the deploy goes on. Back to it: wavedeck attach {session}");
                    }
                    return last_code.unwrap_or(exit::OK);
                }
                Effect::StartDeploy { profile, env, release } => {
                    let protected = app.profiles[profile].environment(&env).is_some_and(|e| e.protected);
                    let spec = Spec {
                        job: Job::Deploy { release },
                        profile: app.profiles[profile].path.clone(),
                        env,
                        audit_dir: options.audit_dir.clone(),
                        local_root: options.local_root.clone(),
                        mode: "console".into(),
                        confirmation: Some(if protected { "typed environment name" } else { "confirmed plan" }.into()),
                        first: Vec::new(),
                        on_detach: None,
                        metrics_file: app.metrics_file.clone(),
                        passphrases: Default::default(),
                    };
                    let environment = app.profiles[profile].environment(&spec.env).cloned();
                    busy = Some(start_unlocking(spec, environment, &done_tx, &mut app));
                }
                Effect::Launch(spec) => busy = Some(launch(*spec, &done_tx, &mut app)),
                Effect::PrepareRollback { profile, env, automatic } => {
                    let spec = Spec {
                        job: Job::Rollback { confirm: !automatic },
                        profile: app.profiles[profile].path.clone(),
                        env,
                        audit_dir: options.audit_dir.clone(),
                        local_root: options.local_root.clone(),
                        mode: "console".into(),
                        confirmation: None,
                        first: Vec::new(),
                        on_detach: None,
                        metrics_file: app.metrics_file.clone(),
                        passphrases: Default::default(),
                    };
                    // The preview already asks the hosts, so a locked key is asked for first.
                    let environment = app.profiles[profile].environment(&spec.env).cloned();
                    busy = Some(start_unlocking(spec, environment, &done_tx, &mut app));
                }
                Effect::Check { target } => {
                    let Some(t) = app.targets.get(target) else { continue };
                    let env = app.profiles[t.profile].environments[t.env].clone();
                    match session::transport_for(&env, options.local_root.as_deref()) {
                        Ok(transport) => {
                            let tx = checks_tx.clone();
                            tokio::spawn(async move {
                                let results = check::check(&env, transport).await;
                                let _ = tx.send((target, results));
                            });
                        }
                        Err(e) => app.status = Some(e.to_string()),
                    }
                }
                Effect::PlanDiff { target, release } => {
                    let Some(t) = app.targets.get(target) else { continue };
                    let profile = app.profiles[t.profile].clone();
                    let env = profile.environments[t.env].clone();
                    let title = format!("Template changes — {} {release} to {}", profile.service, env.name);
                    let local_root = options.local_root.clone();
                    let tx = texts_tx.clone();
                    tokio::spawn(async move {
                        let text = plan_diff(&profile, &env, &release, local_root.as_deref()).await;
                        let _ = tx.send((title, text));
                    });
                }
                Effect::StartRollback => {
                    if let Some(pending) = prepared_rollback.take() {
                        let how = if pending.protected { "typed environment name" } else { "confirmed plan" };
                        let tx = done_tx.clone();
                        let task = tokio::spawn(async move {
                            let result =
                                pending.confirm(how).await.map(Box::new).map_err(|r| r.message.replace('\n', " "));
                            let _ = tx.send(Done::Started(result));
                        });
                        app.busy = Some("starting the rollback: taking the deploy lock…".into());
                        busy = Some(Busy { task: task.abort_handle(), cancellable: false });
                    }
                }
                Effect::CancelRollback => {
                    if let Some(pending) = prepared_rollback.take() {
                        let tx = done_tx.clone();
                        tokio::spawn(async move {
                            let _ = tx.send(Done::Cancelled(pending.cancel().await));
                        });
                    }
                }
                Effect::CancelBusy => match busy.take() {
                    Some(task) if task.cancellable => {
                        task.task.abort();
                        app.busy = None;
                        app.status = Some("cancelled".into());
                    }
                    Some(task) => {
                        busy = Some(task);
                        app.status = Some(
                            "the deploy lock is being taken and cannot be cut off half-way; \
                                           it gives up by itself within 30 s"
                                .into(),
                        );
                    }
                    None => app.busy = None,
                },
            }
            dirty = true;
        }
    }
}

/// Starts `spec`'s runner (see [`launch`]), first asking (through [`Done::Locked`]) for the
/// passphrase of any encrypted identity file its SSH hosts need that no agent holds, as ssh
/// would.
fn start_unlocking(
    spec: Spec,
    environment: Option<crate::profile::Environment>,
    done: &mpsc::UnboundedSender<Done>,
    app: &mut App,
) -> Busy {
    match environment.filter(|e| e.transport == crate::profile::TransportKind::Ssh) {
        Some(environment) => {
            let tx = done.clone();
            app.busy = Some("looking for keys to unlock…".into());
            let task = tokio::spawn(async move {
                let files = crate::transport::ssh::locked_identities(&environment.ssh, &environment.hosts).await;
                let _ = tx.send(Done::Locked { spec: Box::new(spec), files });
            });
            Busy { task: task.abort_handle(), cancellable: false }
        }
        None => launch(spec, done, app),
    }
}

/// Starts `spec`'s runner: a rollback to be confirmed first shows its preview
/// ([`Done::Prepared`]); anything else takes its lock and starts ([`Done::Started`]).
fn launch(spec: Spec, done: &mpsc::UnboundedSender<Done>, app: &mut App) -> Busy {
    match spec.job {
        Job::Rollback { confirm } => prepare_rollback(spec, confirm, done, app),
        _ => start_in_background(spec, done, app),
    }
}

/// Launches a rollback's runner, which plans it and previews where each host goes back to.
/// Stopping this task (Esc, when `cancellable`) closes the runner's stdin: it records the
/// refusal and ends once its preview is ready.
fn prepare_rollback(spec: Spec, cancellable: bool, done: &mpsc::UnboundedSender<Done>, app: &mut App) -> Busy {
    let tx = done.clone();
    let task = tokio::spawn(async move {
        let result = runner::launch(&spec).await.map_err(|r| r.message.replace('\n', " "));
        let _ = tx.send(Done::Prepared(result));
    });
    app.busy = Some("planning the rollback: reading the audit log, asking the hosts…".into());
    Busy { task: task.abort_handle(), cancellable }
}

/// Starts a runner for `spec` (it takes the lock and starts the engine) in a task that reports
/// back with the client attached to it.
fn start_in_background(spec: Spec, done: &mpsc::UnboundedSender<Done>, app: &mut App) -> Busy {
    let tx = done.clone();
    let place = app
        .profiles
        .iter()
        .find(|p| p.path == spec.profile)
        .and_then(|p| p.environment(&spec.env))
        .and_then(crate::lock::LockPlace::for_environment)
        .map(|p| p.target.host.name)
        .unwrap_or_default();
    app.busy = Some(format!("taking the deploy lock on {place}…"));
    let task = tokio::spawn(async move {
        let result = runner::spawn(&spec).await.map(Box::new).map_err(|refused| refused.message.replace('\n', " "));
        let _ = tx.send(Done::Started(result));
    });
    Busy { task: task.abort_handle(), cancellable: false }
}

/// Reads from the audit log, in one pass, which release each host last finished with, and which
/// deploys were interrupted. Runs at start and after a deploy, never while drawing.
fn refresh_releases(app: &mut App, audit_dir: Option<&Path>) {
    let Some(dir) = audit_dir else { return };
    app.interrupted.clear();
    for journal in crate::resume::interrupted_here(dir) {
        let target = app.targets.iter().position(|t| {
            let profile = &app.profiles[t.profile];
            profile.path == journal.profile && profile.environments[t.env].name == journal.env
        });
        if let Some(target) = target {
            // Sessions come oldest first: the newest interrupted deploy of a target stays.
            app.interrupted.insert(target, journal);
        }
    }
    let history = rollback::history(dir);
    for (i, t) in app.targets.iter().enumerate() {
        let profile = &app.profiles[t.profile];
        let key = (profile.service.clone(), profile.environments[t.env].name.clone());
        app.releases.insert(i, history.releases.get(&key).cloned().unwrap_or_default());
        match history.last.get(&key) {
            Some(run) => app.last_runs.insert(i, run.clone()),
            None => app.last_runs.remove(&i),
        };
    }
}

/// SIGTERM, SIGHUP or a lost terminal: quit. A running deploy's runner sees its controller go
/// without detaching and applies the environment's `on_detach` (by default it pauses and waits
/// for someone to attach).
fn hang_up(_app: &mut App, _why: &str) -> Vec<Effect> {
    vec![Effect::Quit]
}

/// What the runner of the deploy on screen sent.
enum FromRunner {
    /// This many events arrived (in the batch); 0 when the connection ended.
    Events(usize),
    Notice(Notice),
}

/// Waits for the next engine events (taking all that are queued) or a notice from the runner.
/// Never completes while no deploy is on screen.
async fn from_runner(running: &mut Option<Client>, batch: &mut Vec<Stamped>) -> FromRunner {
    let Some(client) = running else { return std::future::pending().await };
    tokio::select! {
        received = client.events.recv_many(batch, 4096) => FromRunner::Events(received),
        Some(notice) = client.notices.recv() => FromRunner::Notice(notice),
    }
}

/// Raw mode, alternate screen and mouse capture, undone on drop and on panic.
struct TerminalGuard {
    terminal: Terminal<CrosstermBackend<Stdout>>,
}

impl TerminalGuard {
    fn enter() -> std::io::Result<TerminalGuard> {
        install_panic_hook();
        enable_raw_mode()?;
        let mut stdout = std::io::stdout();
        if let Err(e) = execute!(stdout, EnterAlternateScreen, EnableMouseCapture) {
            restore_terminal();
            return Err(e);
        }
        let terminal = Terminal::new(CrosstermBackend::new(stdout)).inspect_err(|_| restore_terminal())?;
        Ok(TerminalGuard { terminal })
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        restore_terminal();
    }
}

fn restore_terminal() {
    let _ = disable_raw_mode();
    let _ = execute!(std::io::stdout(), DisableMouseCapture, LeaveAlternateScreen, crossterm::cursor::Show);
}

/// Restores the terminal before the panic message is printed, then lets the previous hook
/// report. It does not exit: unwinding must still run the audit log's drop, which writes the
/// session end.
fn install_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore_terminal();
            previous(info);
        }));
    });
}
