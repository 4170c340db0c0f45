//! The console: a full-screen view of environments and of a running deploy.
//!
//! One loop owns everything (like oha's monitor): it takes terminal input, engine events and
//! signals, folds them into [`App`], carries out the resulting effects (start a deploy, audit and
//! send a command, quit) and redraws at most every [`FRAME`] when something changed. The engine
//! runs in its own task and hands over events on an unbounded channel, so drawing never holds
//! it up.

pub mod app;
pub mod config;
pub mod layout;
pub mod logs;
pub mod model;
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
use crate::audit::{AuditLog, CommandSource};
use crate::engine;
use crate::event::{Command, Event, Outcome, Stamped};
use crate::exit;
use crate::lock::DeployLock;
use crate::profile::Profile;
use crate::session::{self, SessionOptions};
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
}

/// Runs the console; returns the process exit code.
pub fn run(options: ConsoleOptions) -> i32 {
    if !std::io::stdout().is_terminal() {
        eprintln!(
            "wavedeck: the console needs a terminal, and standard output is not one.\n\
             For scripts and CI use headless mode: wavedeck deploy PROFILE --env ENV --release RELEASE"
        );
        return exit::INVALID;
    }
    let config = match config::Config::load() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return exit::INVALID;
        }
    };
    let profiles = match load_profiles(options.path.as_deref()) {
        Ok(p) => p,
        Err(message) => {
            eprintln!("{message}");
            return exit::INVALID;
        }
    };
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let theme = match Theme::resolve(options.theme.as_deref().or(config.theme.as_deref()), no_color) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{e}");
            return exit::INVALID;
        }
    };
    let scrollback = options.scrollback.or(config.scrollback).unwrap_or(logs::DEFAULT_SCROLLBACK);
    let app = App::new(profiles, &crate::audit::operator_name(), scrollback);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return exit::CANNOT_START;
        }
    };
    let mut audit_files = Vec::new();
    let code = runtime.block_on(console_loop(app, theme, &options, &mut audit_files));
    for path in audit_files {
        println!("audit log: {}", path.display());
    }
    code
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

/// A deploy in flight: where to send commands, where events come from, its audit log.
struct Running {
    commands: mpsc::UnboundedSender<Command>,
    events: engine::EventStream,
    audit: AuditLog,
    lock: Option<DeployLock>,
}

async fn console_loop(mut app: App, theme: Theme, options: &ConsoleOptions, audit_files: &mut Vec<PathBuf>) -> i32 {
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
    let mut running: Option<Running> = None;
    // A rollback planned and shown to the operator, waiting for confirmation.
    let mut prepared_rollback: Option<rollback::Prepared> = None;
    let mut last_outcome: Option<Outcome> = None;
    let mut dirty = true;
    let mut batch = Vec::with_capacity(1024);
    let audit_dir = crate::audit::audit_dir(options.audit_dir.as_deref());
    refresh_releases(&mut app, audit_dir.as_deref());
    // Preflight checks run in the background and report here, per target.
    let (checks_tx, mut checks) = mpsc::unbounded_channel::<(usize, Vec<check::HostCheck>)>();

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
            received = recv_batch(&mut running, &mut batch) => {
                dirty = true;
                if received == 0 {
                    // The engine stopped without finishing: record it rather than pretend.
                    if let Some(mut r) = running.take() {
                        audit_files.push(r.audit.path().to_path_buf());
                        // The lock stays: nobody knows what the hosts were left in.
                        drop(r.lock.take());
                        let _ = r.audit.close("error", exit::CANNOT_START);
                    }
                    app.status = Some("the deploy engine stopped unexpectedly; see the audit log".into());
                }
                for event in batch.drain(..) {
                    if let Some(r) = running.as_mut() {
                        r.audit.event(&event);
                    }
                    effects.extend(app.on_event(&event));
                    if let Event::DeployFinished { outcome, .. } = event.event {
                        last_outcome = Some(outcome);
                        if let Some(mut r) = running.take() {
                            audit_files.push(r.audit.path().to_path_buf());
                            if let Some(problem) = session::release_lock(&mut r.audit, r.lock.take()).await {
                                app.status = Some(problem);
                            }
                            let (word, code) = outcome_code(outcome);
                            if let Err(e) = r.audit.close(word, code) {
                                app.status = Some(e.to_string());
                            }
                            refresh_releases(&mut app, audit_dir.as_deref());
                        }
                    }
                }
            },
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
                    // Elapsed times tick while a deploy runs.
                    dirty = app.deploy_running();
                }
            }
        }
        for effect in effects {
            match effect {
                Effect::Quit => {
                    drop(terminal);
                    return last_outcome.map_or(exit::OK, |o| outcome_code(o).1);
                }
                Effect::Send(command, source) => {
                    if let Some(r) = running.as_mut() {
                        r.audit.command(&command, source);
                        let _ = r.commands.send(command);
                    }
                }
                Effect::StartDeploy { profile, env, release } => {
                    match start_deploy(&app.profiles[profile], &env, &release, options, audit_files).await {
                        Ok(r) => {
                            app.begin_deploy();
                            running = Some(r);
                        }
                        Err(message) => app.status = Some(message),
                    }
                }
                Effect::PrepareRollback { profile, env, automatic } => {
                    let (audit_dir, local_root) = (options.audit_dir.as_deref(), options.local_root.as_deref());
                    match rollback::prepare(&app.profiles[profile], &env, audit_dir, local_root).await {
                        Ok(prepared) if automatic => {
                            prepared_rollback = None;
                            match launch(prepared.session, audit_files).await {
                                Ok(r) => {
                                    app.begin_deploy();
                                    app.status = Some("on_failure = \"rollback\": rolling back".into());
                                    running = Some(r);
                                }
                                Err(message) => app.status = Some(message),
                            }
                        }
                        Ok(prepared) => {
                            app.confirm_rollback(prepared.describe(), prepared.session.plan.protected);
                            prepared_rollback = Some(prepared);
                        }
                        Err(e) => app.status = Some(e.to_string()),
                    }
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
                Effect::StartRollback => {
                    if let Some(prepared) = prepared_rollback.take() {
                        match launch(prepared.session, audit_files).await {
                            Ok(r) => {
                                app.begin_deploy();
                                running = Some(r);
                            }
                            Err(message) => app.status = Some(message),
                        }
                    }
                }
                Effect::CancelRollback => {
                    if let Some(prepared) = prepared_rollback.take() {
                        audit_files.push(prepared.session.audit.path().to_path_buf());
                        let _ = prepared.session.audit.close("refused", exit::INVALID);
                    }
                }
            }
            dirty = true;
        }
    }
}

/// Reads from the audit log, in one pass, which release each host last finished with. Runs at
/// start and after a deploy, never while drawing.
fn refresh_releases(app: &mut App, audit_dir: Option<&Path>) {
    let Some(dir) = audit_dir else { return };
    let history = rollback::release_history(dir);
    for (i, t) in app.targets.iter().enumerate() {
        let profile = &app.profiles[t.profile];
        let key = (profile.service.clone(), profile.environments[t.env].name.clone());
        app.releases.insert(i, history.get(&key).cloned().unwrap_or_default());
    }
}

/// SIGTERM, SIGHUP or a lost terminal: abort a running deploy (audited) and quit when it has
/// finished; with no deploy running, quit now.
fn hang_up(app: &mut App, why: &str) -> Vec<Effect> {
    if app.deploy_running() {
        app.quit_when_finished = true;
        vec![Effect::Send(Command::Abort { reason: why.to_string() }, CommandSource::Signal)]
    } else {
        vec![Effect::Quit]
    }
}

/// Waits for the next engine events and takes all that are queued; returns 0 when the engine's
/// channel closed. Never completes while no deploy runs.
async fn recv_batch(running: &mut Option<Running>, batch: &mut Vec<Stamped>) -> usize {
    match running {
        Some(r) => r.events.recv_many(batch, 4096).await,
        None => std::future::pending().await,
    }
}

async fn start_deploy(
    profile: &Profile,
    env: &str,
    release: &str,
    options: &ConsoleOptions,
    audit_files: &mut Vec<PathBuf>,
) -> Result<Running, String> {
    let session_options = SessionOptions {
        profile: &profile.path,
        env,
        release,
        audit_dir: options.audit_dir.as_deref(),
        local_root: options.local_root.as_deref(),
        mode: "console",
    };
    let mut session = session::prepare(&session_options, profile.clone()).map_err(|e| e.to_string())?;
    session.audit.note(
        "deploy_confirmed",
        serde_json::json!({
            "operator": crate::audit::operator_name(),
            "protected": session.plan.protected,
            "confirmation": if session.plan.protected { "typed environment name" } else { "confirmed plan" },
        }),
    );
    launch(session, audit_files).await
}

/// Takes the environment's lock and starts the engine on a prepared session.
async fn launch(mut session: session::Session, audit_files: &mut Vec<PathBuf>) -> Result<Running, String> {
    let lock = match session.take_lock().await {
        Ok(lock) => lock,
        Err((code, message)) => {
            audit_files.push(session.audit.path().to_path_buf());
            let _ = session.audit.close("refused", code);
            return Err(message.replace('\n', " "));
        }
    };
    let (commands, command_rx) = mpsc::unbounded_channel();
    let (event_tx, events) = engine::event_channel();
    tokio::spawn(engine::run(session.plan, session.transport, command_rx, event_tx, session.redactor));
    Ok(Running { commands, events, audit: session.audit, lock })
}

fn outcome_code(outcome: Outcome) -> (&'static str, i32) {
    match outcome {
        Outcome::Succeeded => ("succeeded", exit::OK),
        Outcome::Failed => ("failed", exit::FAILED),
        Outcome::Aborted => ("aborted", exit::ABORTED),
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
