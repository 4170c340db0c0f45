//! `wavedeck replay FILE`: a past session played back in the deploy view.
//!
//! The recorded events drive the same [`App`] and model a live deploy does, so the screens are
//! the ones the operator saw. [`Playback`] holds the replay's clock and is pure (tests drive it
//! without a terminal); [`run`] is the loop that shows it. Nothing here acts on a host: the keys
//! that would are off, and the session's file is only read.

use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::app::App;
use crate::audit::Record;
use crate::event::{Event, HostState, Stamped};

/// A session's events, and the moments worth stepping to.
pub struct Recording {
    pub events: Vec<Stamped>,
    /// Operator commands and failures, in time order: where `>` stops.
    pub marks: Vec<DateTime<Utc>>,
    pub operator: String,
    pub profile: std::path::PathBuf,
    pub env: String,
}

impl Recording {
    /// Reads a session's audit file, line by line.
    pub fn load(path: &Path) -> std::io::Result<Recording> {
        use std::io::BufRead as _;
        let reader = std::io::BufReader::new(std::fs::File::open(path)?);
        let mut recording = Recording {
            events: Vec::new(),
            marks: Vec::new(),
            operator: String::new(),
            profile: Default::default(),
            env: String::new(),
        };
        for text in reader.lines() {
            let text = text?;
            let Some(line) = crate::audit::read_lines(&text).next() else { continue };
            let Ok(at) = DateTime::parse_from_rfc3339(&line.ts).map(|t| t.with_timezone(&Utc)) else { continue };
            match line.record {
                Record::SessionStart(start) => {
                    recording.operator = start.operator;
                    recording.profile = start.profile;
                    recording.env = start.env;
                }
                Record::OperatorCommand { .. } => recording.marks.push(at),
                Record::Event(event) => {
                    let failure = matches!(
                        &event,
                        Event::HostFinished { state: HostState::Failed, .. }
                            | Event::ThresholdExceeded { .. }
                            | Event::Aborted { .. }
                            | Event::HealthChanged { healthy: false, .. }
                    );
                    if failure {
                        recording.marks.push(at);
                    }
                    recording.events.push(Stamped { at, event });
                }
                _ => {}
            }
        }
        recording.marks.sort();
        Ok(recording)
    }

    fn start(&self) -> Option<DateTime<Utc>> {
        self.events.first().map(|e| e.at)
    }

    fn end(&self) -> Option<DateTime<Utc>> {
        self.events.last().map(|e| e.at)
    }
}

/// Speeds the replay cycles through (`+` and `-`).
pub const SPEEDS: [u32; 3] = [1, 10, 100];

/// Where a replay stands: its clock, its speed, and how much of the recording the app has seen.
pub struct Playback {
    pub recording: Recording,
    /// The replay's clock: what the screen shows is the session as it stood at this moment.
    pub at: DateTime<Utc>,
    pub speed: u32,
    pub paused: bool,
    /// Events before this index have been given to the app.
    fed: usize,
}

impl Playback {
    /// A playback at the recording's first event, playing at 1×; the app is set up to show it.
    pub fn new(recording: Recording, app: &mut App) -> Playback {
        let at = recording.start().unwrap_or_else(Utc::now);
        let mut playback = Playback { recording, at, speed: 1, paused: false, fed: 0 };
        playback.restart(app);
        playback.advance(app);
        playback
    }

    /// Gives the app a fresh deploy view and none of the events yet.
    fn restart(&mut self, app: &mut App) {
        app.operator = self.recording.operator.clone();
        app.begin_deploy();
        app.bell = false;
        self.fed = 0;
        self.update_banner(app);
    }

    /// Feeds the app every event up to the clock.
    fn advance(&mut self, app: &mut App) {
        while let Some(event) = self.recording.events.get(self.fed).filter(|e| e.at <= self.at) {
            // What the app asks for (a bell, a rollback) is not done: this is a recording.
            let _ = app.on_event(event);
            self.fed += 1;
        }
        self.update_banner(app);
    }

    /// Wall time passed: the clock moves on at the replay's speed, unless paused.
    pub fn tick(&mut self, app: &mut App, elapsed: Duration) {
        if self.paused || self.finished() {
            return;
        }
        let step = chrono::Duration::from_std(elapsed * self.speed).unwrap_or_else(|_| chrono::Duration::zero());
        self.at += step;
        if let Some(end) = self.recording.end()
            && self.at > end
        {
            self.at = end;
        }
        self.advance(app);
    }

    pub fn finished(&self) -> bool {
        self.fed >= self.recording.events.len()
    }

    /// Moves the clock to `to` (back means replaying from the start, which is quick: the model is
    /// built from events only).
    pub fn seek(&mut self, app: &mut App, to: DateTime<Utc>) {
        let (start, end) = (self.recording.start().unwrap_or(to), self.recording.end().unwrap_or(to));
        let to = to.clamp(start, end);
        if to < self.at {
            self.restart(app);
        }
        self.at = to;
        self.advance(app);
    }

    /// To the next operator command or failure after the clock, paused there.
    pub fn next_mark(&mut self, app: &mut App) -> bool {
        let Some(&mark) = self.recording.marks.iter().find(|m| **m > self.at) else { return false };
        self.seek(app, mark);
        self.paused = true;
        self.update_banner(app);
        true
    }

    /// To `tenths` of the way through the session (0 is its start).
    pub fn jump_to_fraction(&mut self, app: &mut App, tenths: u32) {
        if let (Some(start), Some(end)) = (self.recording.start(), self.recording.end()) {
            self.seek(app, start + (end - start) * tenths as i32 / 10);
        }
    }

    pub fn faster(&mut self, app: &mut App, up: bool) {
        let i = SPEEDS.iter().position(|s| *s == self.speed).unwrap_or(0);
        let i = if up { (i + 1).min(SPEEDS.len() - 1) } else { i.saturating_sub(1) };
        self.speed = SPEEDS[i];
        self.update_banner(app);
    }

    pub fn toggle_pause(&mut self, app: &mut App) {
        self.paused = !self.paused;
        self.update_banner(app);
    }

    /// What the header says: `REPLAY 10× · 00:42 of 05:10` or `REPLAY paused · …`.
    fn update_banner(&self, app: &mut App) {
        let start = self.recording.start().unwrap_or(self.at);
        let end = self.recording.end().unwrap_or(self.at);
        let clock = |d: chrono::Duration| {
            let s = d.num_seconds().max(0);
            format!("{:02}:{:02}", s / 60, s % 60)
        };
        let state = if self.finished() {
            "at its end".to_string()
        } else if self.paused {
            "paused".to_string()
        } else {
            format!("{}×", self.speed)
        };
        app.replay = Some(format!("REPLAY {state} · {} of {}", clock(self.at - start), clock(end - start)));
    }
}

/// The keys a replay takes before the deploy view gets them.
fn replay_key(playback: &mut Playback, app: &mut App, code: crossterm::event::KeyCode) -> bool {
    use crossterm::event::KeyCode;
    match code {
        KeyCode::Char(' ') => playback.toggle_pause(app),
        KeyCode::Char('>') => {
            if !playback.next_mark(app) {
                app.status = Some("no operator command or failure after this point".into());
            }
        }
        KeyCode::Char('+') => playback.faster(app, true),
        KeyCode::Char('-') => playback.faster(app, false),
        KeyCode::Char(']') => playback.seek(app, playback.at + chrono::Duration::minutes(1)),
        KeyCode::Char('[') => playback.seek(app, playback.at - chrono::Duration::minutes(1)),
        KeyCode::Char(c @ '0'..='9') => playback.jump_to_fraction(app, c as u32 - '0' as u32),
        _ => return false,
    }
    true
}

/// Shows `path` until the operator quits; returns the exit code.
pub fn run(path: &Path, theme_choice: Option<String>) -> i32 {
    use crossterm::event::{Event as TermEvent, EventStream};
    use futures_util::StreamExt;

    if let Err(code) = super::need_terminal() {
        return code;
    }
    let recording = match Recording::load(path) {
        Ok(r) if !r.events.is_empty() => r,
        Ok(_) => {
            eprintln!("wavedeck: {} holds no deploy to replay", path.display());
            return crate::exit::INVALID;
        }
        Err(e) => {
            eprintln!("wavedeck: cannot read {}: {e}", path.display());
            return crate::exit::INVALID;
        }
    };
    // The deploy's profile, if it is still where it was, names the environment on screen.
    let profiles: Vec<_> = crate::profile::Profile::load(&recording.profile).into_iter().collect();
    let options = super::ConsoleOptions {
        path: None,
        theme: theme_choice,
        audit_dir: None,
        local_root: None,
        scrollback: None,
        scrollback_mib: None,
    };
    let Ok((mut app, theme)) = super::setup(profiles, &options) else { return crate::exit::INVALID };
    if let Some(i) = app.targets.iter().position(|t| app.profiles[t.profile].environments[t.env].name == recording.env)
    {
        app.selected_target = i;
    }
    let Some(runtime) = super::new_runtime() else { return crate::exit::CANNOT_START };
    runtime.block_on(async move {
        let mut terminal = match super::TerminalGuard::enter() {
            Ok(t) => t,
            Err(e) => {
                eprintln!("cannot set up the terminal: {e}");
                return crate::exit::CANNOT_START;
            }
        };
        if let Ok(size) = terminal.terminal.size() {
            app.size = ratatui::layout::Rect::new(0, 0, size.width, size.height);
        }
        let mut playback = Playback::new(recording, &mut app);
        let mut input = EventStream::new();
        let mut frames = tokio::time::interval(super::FRAME);
        let mut last = tokio::time::Instant::now();
        loop {
            tokio::select! {
                term = input.next() => match term {
                    Some(Ok(TermEvent::Key(key))) if key.kind != crossterm::event::KeyEventKind::Release => {
                        if app.dialog.is_none() && replay_key(&mut playback, &mut app, key.code) {
                            continue;
                        }
                        let effects = app.on_key(key);
                        if effects.contains(&super::app::Effect::Quit) {
                            return crate::exit::OK;
                        }
                    }
                    Some(Ok(TermEvent::Mouse(mouse))) => app.on_mouse(mouse),
                    Some(Ok(TermEvent::Resize(w, h))) => app.size = ratatui::layout::Rect::new(0, 0, w, h),
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => return crate::exit::OK,
                },
                _ = frames.tick() => {
                    let now = tokio::time::Instant::now();
                    playback.tick(&mut app, now - last);
                    last = now;
                    let offset = chrono::Local::now().offset().fix();
                    let clock = super::view::Clock { now: playback.at, offset };
                    if terminal.terminal.draw(|frame| super::view::draw(frame, &app, &theme, clock)).is_err() {
                        return crate::exit::OK;
                    }
                }
            }
        }
    })
}

use chrono::Offset as _;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::console::app::tests::demo_profile;
    use crate::event::PauseCause;

    /// A recorded session: a deploy of a, b; b fails; ann aborts.
    fn recorded(dir: &Path) -> std::path::PathBuf {
        let start = crate::audit::SessionStart::for_tests("console", "dev", "2");
        let mut log = crate::audit::AuditLog::open(dir, &start, Default::default()).unwrap();
        let t0 = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let at = |s: i64| t0 + chrono::Duration::seconds(s);
        let event = |log: &mut crate::audit::AuditLog, s: i64, event: Event| log.event(&Stamped { at: at(s), event });
        event(
            &mut log,
            0,
            Event::DeployStarted {
                outlier_percent: crate::profile::DEFAULT_OUTLIER_PERCENT,
                service: "shop".into(),
                env: "dev".into(),
                release: "2".into(),
                waves: vec![crate::event::WaveOutline {
                    wave: 1,
                    hosts: vec!["a".into(), "b".into()],
                    max_failures: 0,
                }],
                steps: vec!["run".into()],
            },
        );
        event(&mut log, 1, Event::WaveStarted { wave: 1, hosts: vec!["a".into(), "b".into()] });
        event(&mut log, 2, Event::HostStarted { wave: 1, host: "b".into() });
        event(&mut log, 60, Event::HostFinished { wave: 1, host: "b".into(), state: HostState::Failed });
        event(
            &mut log,
            61,
            Event::Paused { cause: PauseCause::FailureThreshold { wave: 1, failures: 1, limit: 0 }, running: vec![] },
        );
        event(
            &mut log,
            120,
            Event::DeployFinished { outcome: crate::event::Outcome::Aborted, duration_ms: 120_000, hosts: vec![] },
        );
        let path = log.path().to_path_buf();
        log.close("aborted", 3).unwrap();
        path
    }

    #[test]
    fn a_replay_plays_at_its_speed_steps_to_failures_and_seeks_back() {
        let dir = tempfile::tempdir().unwrap();
        let recording = Recording::load(&recorded(dir.path())).unwrap();
        assert_eq!(recording.operator, "ann");
        let mut app = App::new(vec![demo_profile()], "someone else", 100);
        let mut playback = Playback::new(recording, &mut app);
        let model = |app: &App| app.deploy.as_ref().unwrap().clone();
        assert_eq!(model(&app).hosts.len(), 2, "the first event is shown at once");
        // 10× for 5 s of wall time: 50 s of the session; b has not failed yet.
        playback.faster(&mut app, true);
        playback.tick(&mut app, Duration::from_secs(5));
        assert_eq!(model(&app).host("b").unwrap().phase, crate::console::model::HostPhase::Running);
        assert!(app.replay.as_deref().unwrap().starts_with("REPLAY 10× · 00:50 of 02:00"), "{:?}", app.replay);
        // `>`: to b's failure, paused there.
        assert!(playback.next_mark(&mut app));
        assert_eq!(model(&app).host("b").unwrap().phase, crate::console::model::HostPhase::Failed);
        assert!(playback.paused && app.replay.as_deref().unwrap().contains("paused"));
        // Back to the start: the model is rebuilt from the first event.
        playback.jump_to_fraction(&mut app, 0);
        assert_eq!(model(&app).host("b").unwrap().phase, crate::console::model::HostPhase::Waiting);
        playback.jump_to_fraction(&mut app, 9);
        playback.paused = false;
        playback.tick(&mut app, Duration::from_secs(100));
        assert!(playback.finished() && model(&app).is_finished());
        assert_eq!(model(&app).operator, "ann", "pauses and triage are told as the recorded operator's");
    }

    #[test]
    fn keys_that_act_on_hosts_are_off_in_a_replay() {
        let dir = tempfile::tempdir().unwrap();
        let recording = Recording::load(&recorded(dir.path())).unwrap();
        let mut app = App::new(vec![demo_profile()], "ann", 100);
        let _playback = Playback::new(recording, &mut app);
        let key = |c| {
            crossterm::event::KeyEvent::new(crossterm::event::KeyCode::Char(c), crossterm::event::KeyModifiers::NONE)
        };
        assert_eq!(app.on_key(key('p')), []);
        assert!(app.status.as_deref().unwrap_or_default().contains("replay"), "{:?}", app.status);
        assert_eq!(app.on_key(key('q')), [crate::console::app::Effect::Quit], "quitting a replay stops nothing");
    }
}
