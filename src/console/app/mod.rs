//! The console's state and what keys and mouse clicks do to it.
//!
//! `App` holds the deploy model (changed only by engine events) and UI-only state (selection,
//! scroll, dialogs). A key becomes changes to UI state plus [`Effect`]s for the runtime to carry
//! out: start a deploy, send a command to the engine (audited first), quit. Nothing here does
//! I/O, so every key path is unit-tested without a terminal.

use std::collections::BTreeMap;

use crossterm::event::{MouseButton, MouseEvent, MouseEventKind};
use ratatui::layout::{Position, Rect};

use super::layout::{self, DeployLayout};
use super::model::{ControlView, DeployModel, HostPhase, HostView};
use crate::audit::CommandSource;
use crate::event::{Command, Stamped};
use crate::plan::Plan;
use crate::profile::Profile;
use crate::secrets::Secrets;

mod dialog;
mod keys;

pub use self::dialog::Dialog;
use self::dialog::text_input;

/// What the runtime must do after a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    StartDeploy {
        profile: usize,
        env: String,
        release: String,
    },
    /// Plan a rollback of the environment's last deploy; `automatic` (the profile's
    /// `on_failure = "rollback"`) starts it without asking.
    PrepareRollback {
        profile: usize,
        env: String,
        automatic: bool,
    },
    StartRollback,
    CancelRollback,
    /// Stop the slow task now running (Esc while the footer says what it is doing).
    CancelBusy,
    /// Preflight-check the hosts of `targets[target]` in the background.
    Check {
        target: usize,
    },
    /// Start the runner for `spec` (the operator unlocked the keys it needs).
    Launch(Box<crate::runner::Spec>),
    /// Read the hosts' files of the plan's template steps and show how `release` would change
    /// them (in the background).
    PlanDiff {
        target: usize,
        release: String,
    },
    Send(Command, CommandSource),
    /// Ask the runner for control of the deploy this console observes.
    TakeOver,
    /// Carry on the interrupted deploy `session` of `targets[target]`; `choice` decides the hosts
    /// that were mid-step.
    Resume {
        target: usize,
        session: String,
        choice: Option<String>,
    },
    /// Leave the deploy running (its runner carries on) and quit.
    Detach,
    /// Ring the terminal's bell: the deploy stopped to wait for someone, or finished.
    Bell,
    /// Write `host`'s whole log, read back from the deploy's audit log, to a file.
    WriteLog {
        host: String,
    },
    /// Read `host`'s output lines numbered `from..to` back from the audit log: the operator
    /// scrolled past what the console keeps in memory.
    LoadEarlier {
        host: String,
        from: u64,
        to: u64,
    },
    Quit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pane {
    Hosts,
    Logs,
    Health,
    Timeline,
}

impl Pane {
    /// Every pane, in Tab order.
    const ALL: [Pane; 4] = [Pane::Hosts, Pane::Logs, Pane::Health, Pane::Timeline];

    fn step(self, by: isize) -> Pane {
        let at = Self::ALL.iter().position(|p| *p == self).unwrap_or(0) as isize;
        Self::ALL[(at + by).rem_euclid(Self::ALL.len() as isize) as usize]
    }

    fn next(self) -> Pane {
        self.step(1)
    }

    fn previous(self) -> Pane {
        self.step(-1)
    }
}

/// A host's output read back from the audit log, just older than its scrollback.
#[derive(Debug, Clone)]
pub struct Earlier {
    pub host: String,
    /// The number (among the host's output lines) of `lines[0]`.
    pub first: u64,
    pub lines: Vec<super::logs::LogLine>,
}

/// One host's log (or the interleaved one) as shown: read-back lines, then the scrollback.
pub struct ShownLog<'a> {
    pub earlier: &'a [super::logs::LogLine],
    pub recent: &'a super::logs::LogBuffer,
    /// Output lines older than both, only in the audit log.
    pub unloaded: u64,
}

impl ShownLog<'_> {
    pub fn len(&self) -> usize {
        self.earlier.len() + self.recent.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Line `i` (0 is the oldest).
    pub fn get(&self, i: usize) -> Option<&super::logs::LogLine> {
        match self.earlier.get(i) {
            Some(line) => Some(line),
            None => self.recent.get(i - self.earlier.len()),
        }
    }
}

/// Most lines read back and held at once; past them `W` writes the whole log to a file.
pub const EARLIER_MAX: usize = 50_000;
/// Lines read back per request.
pub const EARLIER_PAGE: u64 = 5_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortOrder {
    /// Plan order: wave, then profile order.
    Plan,
    /// Failed first, then running, then the rest.
    Trouble,
    Name,
}

/// A command sent to the engine and not yet acknowledged by an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pending {
    Pausing,
    Resuming,
    Aborting,
}

/// One environment of one profile, as listed in the overview.
#[derive(Debug, Clone)]
pub struct Target {
    pub profile: usize,
    pub env: usize,
}

pub struct App {
    pub profiles: Vec<Profile>,
    pub targets: Vec<Target>,
    pub selected_target: usize,
    /// The plan for the selected environment, for the overview (secrets masked).
    pub preview: Result<Plan, String>,
    pub deploy: Option<DeployModel>,
    pub dialog: Option<Dialog>,
    pub pending: Option<Pending>,
    pub focus: Pane,
    /// Index into `visible_hosts()`.
    pub selected_host: usize,
    /// Lines scrolled up from the bottom of the log; 0 follows the tail.
    pub log_scroll: usize,
    pub timeline_scroll: usize,
    pub interleaved: bool,
    /// Long log lines wrap; off, they are cut with a marker and `log_shift` scrolls sideways.
    pub wrap: bool,
    /// Characters the unwrapped log is scrolled to the right.
    pub log_shift: usize,
    /// Each log line shows when it came.
    pub timestamps: bool,
    /// The selection moves on with the running wave.
    pub follow_wave: bool,
    /// Output of one host older than its scrollback, read back from the audit log.
    pub earlier: Option<Earlier>,
    /// Earlier lines are being read back (one request at a time).
    pub loading_earlier: bool,
    /// This console saw the deploy's output from its first line (it started it), so a line's
    /// number among a host's output is its number in the audit log too. An attached console
    /// may have missed some: it offers `W` instead of reading back.
    pub log_complete: bool,
    pub filter: String,
    /// The log pane shows the wave's output grouped by shape across hosts (`O`), with this
    /// group selected.
    pub grouped: bool,
    pub group_at: usize,
    /// The wave the grouped view shows, picked with ← →; `None` follows the latest.
    pub group_pick: Option<usize>,
    /// The host table shows only these hosts: those that printed a group (Enter on it).
    pub only: Option<HostSet>,
    pub search: Option<String>,
    pub sort: SortOrder,
    /// A one-line message for the operator (errors, hints); cleared by the next key.
    pub status: Option<String>,
    /// What a slow task is doing on the operator's behalf (taking a lock, previewing a
    /// rollback), shown in the footer until it reports back.
    pub busy: Option<String>,
    /// The running deploy hit a wave limit under `on_failure = "rollback"`.
    rollback_when_finished: bool,
    /// Quit once the deploy has finished (the operator asked to quit mid-deploy).
    pub quit_when_finished: bool,
    /// Another client controls the deploy on screen: control keys are off.
    pub observing: bool,
    /// A recorded session is being played back (`wavedeck replay`), as the header says it:
    /// keys that act on hosts are off.
    pub replay: Option<String>,
    /// Ring the terminal's bell when the deploy stops to wait or finishes (config `bell`).
    pub bell: bool,
    pub operator: String,
    pub scrollback: usize,
    /// Bytes all scrollback may hold (see [`DeployModel::with_memory`]).
    pub scrollback_memory: usize,
    /// The terminal's size, for mapping mouse positions onto panes.
    pub size: Rect,
    /// Per target (index into `targets`): host → the release it last finished, from the audit log.
    pub releases: BTreeMap<usize, BTreeMap<String, String>>,
    /// Per target: its newest deploy or rollback, from the audit log (who, when, how it ended).
    pub last_runs: BTreeMap<usize, crate::rollback::LastRun>,
    /// Per target: the newest deploy to it whose runner died, to resume (`u`).
    pub interrupted: BTreeMap<usize, crate::resume::Interrupted>,
    /// Per target: host → preflight status (`ok`, `unreachable`, …, or `checking…`).
    pub reachability: BTreeMap<usize, BTreeMap<String, String>>,
    /// Where deploys started here keep their figures for Prometheus (config `metrics_file`).
    pub metrics_file: Option<std::path::PathBuf>,
}

impl App {
    pub fn new(profiles: Vec<Profile>, operator: &str, scrollback: usize) -> App {
        let targets = profiles
            .iter()
            .enumerate()
            .flat_map(|(p, profile)| (0..profile.environments.len()).map(move |e| Target { profile: p, env: e }))
            .collect();
        let mut app = App {
            profiles,
            targets,
            selected_target: 0,
            preview: Err(String::new()),
            deploy: None,
            dialog: None,
            pending: None,
            focus: Pane::Hosts,
            selected_host: 0,
            log_scroll: 0,
            timeline_scroll: 0,
            interleaved: false,
            wrap: true,
            log_shift: 0,
            timestamps: false,
            follow_wave: false,
            earlier: None,
            loading_earlier: false,
            log_complete: true,
            filter: String::new(),
            grouped: false,
            group_at: 0,
            group_pick: None,
            only: None,
            search: None,
            sort: SortOrder::Plan,
            status: None,
            rollback_when_finished: false,
            quit_when_finished: false,
            observing: false,
            replay: None,
            bell: true,
            busy: None,
            operator: operator.to_string(),
            scrollback,
            scrollback_memory: super::logs::DEFAULT_SCROLLBACK_MEMORY,
            size: Rect::new(0, 0, 80, 24),
            releases: BTreeMap::new(),
            last_runs: BTreeMap::new(),
            interrupted: BTreeMap::new(),
            reachability: BTreeMap::new(),
            metrics_file: None,
        };
        app.refresh_preview();
        app
    }

    pub fn target_profile(&self) -> Option<&Profile> {
        self.targets.get(self.selected_target).map(|t| &self.profiles[t.profile])
    }

    pub fn target_env(&self) -> Option<&crate::profile::Environment> {
        self.targets.get(self.selected_target).map(|t| &self.profiles[t.profile].environments[t.env])
    }

    fn refresh_preview(&mut self) {
        self.preview = match (self.target_profile(), self.target_env()) {
            (Some(p), Some(e)) => Plan::build(p, &e.name, "RELEASE", &Secrets::masked(p)).map_err(|e| e.to_string()),
            _ => Err("no environment selected".into()),
        };
    }

    /// Asks for the passphrases of `files` before `spec` starts.
    pub fn ask_passphrases(&mut self, spec: crate::runner::Spec, files: Vec<std::path::PathBuf>) {
        self.busy = None;
        self.dialog =
            Some(Dialog::Passphrase { spec: Box::new(spec), files, input: dialog::passphrase_input(), wrong: false });
    }

    /// Show this text in a dialog (what a background task found).
    pub fn show_text(&mut self, title: &str, text: &str) {
        let lines = text.lines().map(|l| super::prose::line(super::prose::Ink::Text, crate::text::clean(l))).collect();
        self.dialog = Some(Dialog::Text { title: format!(" {title} "), lines, scroll: 0 });
    }

    pub fn deploy_running(&self) -> bool {
        self.deploy.as_ref().is_some_and(|d| !d.is_finished())
    }

    /// Starts showing a deploy the runtime has just launched.
    pub fn begin_deploy(&mut self) {
        self.deploy = Some(DeployModel::with_memory(&self.operator, self.scrollback, self.scrollback_memory));
        self.dialog = None;
        self.pending = None;
        self.focus = Pane::Hosts;
        self.selected_host = 0;
        self.log_scroll = 0;
        self.timeline_scroll = 0;
        self.filter.clear();
        self.search = None;
        self.earlier = None;
        self.loading_earlier = false;
        self.log_complete = true;
        self.quit_when_finished = false;
        self.rollback_when_finished = false;
        self.observing = false;
    }

    /// Shows a prepared rollback for confirmation.
    pub fn confirm_rollback(&mut self, preview: String, protected: bool) {
        let input = text_input(if protected { "type the environment's name" } else { "press Enter to start" });
        self.dialog = Some(Dialog::ConfirmRollback { preview, protected, input, wrong: false, scroll: 0 });
    }

    /// The overview's selected environment as a rollback request.
    fn rollback_selected(&mut self, automatic: bool) -> Vec<Effect> {
        if self.deploy_running() {
            self.status = Some("a deploy is running: abort it or let it finish before rolling back".into());
            return Vec::new();
        }
        let Some(target) = self.targets.get(self.selected_target) else { return Vec::new() };
        let env = self.profiles[target.profile].environments[target.env].name.clone();
        vec![Effect::PrepareRollback { profile: target.profile, env, automatic }]
    }

    /// Applies an engine event; returns effects (quitting once an aborted deploy finished).
    pub fn on_event(&mut self, event: &Stamped) -> Vec<Effect> {
        use crate::event::Event;
        // Keep the selection on the same host while the list changes under it. Output, samples
        // and progress (nearly all events) never reorder or refilter it: skip the lookup.
        // A triaged host may move (problems first) or leave the filter: the selection stays
        // where the operator was, on the next host, rather than following the one moved.
        let reorders = !matches!(
            event.event,
            Event::Output { .. }
                | Event::HealthSample { .. }
                | Event::UploadProgress { .. }
                | Event::HostTriaged { .. }
        );
        let selected = if reorders { self.selected_name() } else { None };
        let Some(model) = self.deploy.as_mut() else {
            return Vec::new();
        };
        model.apply(event);
        match &event.event {
            Event::Paused { .. } if self.pending == Some(Pending::Pausing) => self.pending = None,
            Event::Resumed if self.pending == Some(Pending::Resuming) => self.pending = None,
            Event::Aborted { .. } => self.pending = None,
            // Refused by the engine: the reason goes where the operator is looking.
            Event::CommandIgnored { command, why } => {
                self.pending = None;
                self.status = Some(crate::text::clean(&format!("{} not done: {why}", command.name())));
            }
            _ => {}
        }
        if let Some(name) = selected {
            self.select_name(&name);
        }
        self.selected_host = self.selected_host.min(self.visible_hosts().len().saturating_sub(1));
        if self.follow_wave
            && matches!(event.event, Event::HostStarted { .. } | Event::HostFinished { .. } | Event::WaveStarted { .. })
        {
            self.select_running();
        }
        // When a wave goes bad, show the first failed host: its log says why.
        if let Event::ThresholdExceeded { failed_hosts, .. } = &event.event
            && let Some(first) = failed_hosts.first()
        {
            self.select_name(first);
            self.log_scroll = 0;
            self.interleaved = false;
        }
        if let Event::ThresholdExceeded { action: crate::profile::FailureAction::Rollback, .. }
        | Event::AnalysisFailed { action: crate::profile::FailureAction::Rollback, .. } = &event.event
        {
            self.rollback_when_finished = true;
        }
        // Someone is needed (a pause, a limit, a gate), or it is over: heard from another window.
        let mut effects = Vec::new();
        if self.bell
            && matches!(
                event.event,
                Event::Paused { .. }
                    | Event::ThresholdExceeded { .. }
                    | Event::AwaitingPromote { .. }
                    | Event::DeployFinished { .. }
            )
        {
            effects.push(Effect::Bell);
        }
        if matches!(event.event, Event::DeployFinished { .. }) {
            self.pending = None;
            if self.quit_when_finished {
                return vec![Effect::Quit];
            }
            if std::mem::take(&mut self.rollback_when_finished) {
                effects.extend(self.rollback_selected(true));
            }
        }
        effects
    }

    /// Hosts after filter and sort, as indices into the model's host list.
    pub fn visible_hosts(&self) -> Vec<usize> {
        let Some(model) = &self.deploy else {
            return Vec::new();
        };
        let needle = self.filter.to_lowercase();
        let listed = |i: usize| self.only.as_ref().is_none_or(|set| set.hosts.contains(&model.hosts[i].name));
        let mut hosts: Vec<usize> = (0..model.hosts.len())
            .filter(|&i| listed(i) && (needle.is_empty() || host_matches(&model.hosts[i], &needle)))
            .collect();
        match self.sort {
            SortOrder::Plan => {}
            SortOrder::Name => hosts.sort_by(|&a, &b| model.hosts[a].name.cmp(&model.hosts[b].name)),
            SortOrder::Trouble => hosts.sort_by_key(|&i| trouble_rank(&model.hosts[i])),
        }
        hosts
    }

    /// The wave whose output the grouped view shows: the one picked, else the latest that ran.
    pub fn group_wave(&self) -> Option<usize> {
        let model = self.deploy.as_ref()?;
        self.group_pick.filter(|w| model.groups.contains_key(w)).or_else(|| model.groups.keys().next_back().copied())
    }

    /// ← → in the grouped view: the wave before or after the one shown, among those with output.
    pub fn pick_group_wave(&mut self, later: bool) {
        let Some(model) = self.deploy.as_ref() else { return };
        let Some(shown) = self.group_wave() else { return };
        let next = if later {
            model.groups.range(shown + 1..).next().map(|(w, _)| *w)
        } else {
            model.groups.range(..shown).next_back().map(|(w, _)| *w)
        };
        if let Some(wave) = next {
            self.group_pick = Some(wave);
            self.group_at = 0;
        }
    }

    /// The grouped view's groups: outliers first.
    pub fn shown_groups(&self) -> Vec<crate::insight::LineGroup> {
        let groups = self.group_wave().and_then(|wave| self.deploy.as_ref()?.groups.get(&wave));
        groups.map(|g| g.groups()).unwrap_or_default()
    }

    pub fn selected_name(&self) -> Option<String> {
        let model = self.deploy.as_ref()?;
        let visible = self.visible_hosts();
        visible.get(self.selected_host).map(|&i| model.hosts[i].name.clone())
    }

    fn select_name(&mut self, name: &str) {
        if let (Some(model), visible) = (&self.deploy, self.visible_hosts())
            && let Some(pos) = visible.iter().position(|&i| model.hosts[i].name == name)
        {
            self.selected_host = pos;
        }
    }

    /// Keeps the selection on a running host: stays if the selected one runs, else the first
    /// running host shown.
    fn select_running(&mut self) {
        let Some(model) = &self.deploy else { return };
        let visible = self.visible_hosts();
        let running = |pos: &usize| visible.get(*pos).is_some_and(|&i| model.hosts[i].phase == HostPhase::Running);
        if running(&self.selected_host) {
            return;
        }
        if let Some(pos) = (0..visible.len()).find(running) {
            self.selected_host = pos;
            self.log_scroll = 0;
        }
    }

    fn move_in_focus(&mut self, delta: isize) {
        match self.focus {
            Pane::Hosts | Pane::Health => {
                let count = self.visible_hosts().len();
                if count > 0 {
                    self.selected_host = (self.selected_host as isize + delta).clamp(0, count as isize - 1) as usize;
                    self.log_scroll = 0;
                }
            }
            Pane::Logs => self.scroll_log(-delta),
            Pane::Timeline => {
                let len = self.deploy.as_ref().map_or(0, |d| d.timeline.len());
                self.timeline_scroll = (self.timeline_scroll as isize - delta).clamp(0, len as isize) as usize;
            }
        }
    }

    /// Positive scrolls up (back in time); reaching 0 resumes following.
    pub fn scroll_log(&mut self, delta: isize) {
        let max = self.log_len();
        self.log_scroll = (self.log_scroll as isize + delta).clamp(0, max as isize) as usize;
    }

    /// Host rows the table shows at once.
    fn host_page(&self) -> usize {
        layout::table_rows(layout::deploy(self.size).hosts).max(1)
    }

    fn log_page(&self) -> usize {
        let area = layout::deploy(self.size).logs;
        area.height.saturating_sub(3).max(1) as usize
    }

    /// The log now shown, resolved once (the selected host is looked up through the filter and
    /// sort): lines read back first, then the scrollback.
    pub fn shown_log(&self) -> Option<ShownLog<'_>> {
        let model = self.deploy.as_ref()?;
        if self.interleaved {
            return Some(ShownLog { earlier: &[], recent: &model.combined, unloaded: 0 });
        }
        let name = self.selected_name()?;
        let recent = &model.host(&name)?.logs;
        Some(match self.earlier.as_ref().filter(|e| e.host == name) {
            Some(e) => ShownLog { earlier: &e.lines, recent, unloaded: e.first },
            None => ShownLog { earlier: &[], recent, unloaded: recent.dropped_output() },
        })
    }

    /// Lines in the log now shown.
    pub fn log_len(&self) -> usize {
        self.shown_log().map_or(0, |l| l.len())
    }

    /// The lines read back, if they are the shown host's.
    fn earlier_shown(&self) -> Option<&Earlier> {
        let host = self.selected_name().filter(|_| !self.interleaved)?;
        self.earlier.as_ref().filter(|e| e.host == host)
    }

    /// Output lines of the shown host that are neither in memory nor read back yet.
    pub fn unloaded(&self) -> u64 {
        self.shown_log().map_or(0, |l| l.unloaded)
    }

    /// At the top of what is shown with older lines left: asks for the page before them.
    fn want_earlier(&mut self) -> Vec<Effect> {
        let unloaded = self.unloaded();
        if self.log_scroll < self.log_len() || unloaded == 0 || self.loading_earlier {
            return Vec::new();
        }
        let Some(host) = self.selected_name() else { return Vec::new() };
        if !self.log_complete {
            self.status = Some(format!("{unloaded} older lines are in the audit log: W writes them all to a file"));
            return Vec::new();
        }
        if self.earlier_shown().is_some_and(|e| e.lines.len() >= EARLIER_MAX) {
            self.status = Some(format!("{unloaded} older lines still: W writes the whole log to a file"));
            return Vec::new();
        }
        self.loading_earlier = true;
        self.status = Some("reading older lines from the audit log…".into());
        vec![Effect::LoadEarlier { host, from: unloaded.saturating_sub(EARLIER_PAGE), to: unloaded }]
    }

    /// Older lines read back arrived: they go above what is shown, and the view stays where it was.
    pub fn earlier_loaded(&mut self, host: String, from: u64, lines: Vec<super::logs::LogLine>) {
        self.loading_earlier = false;
        self.status = None;
        let added = lines.len();
        match &mut self.earlier {
            Some(e) if e.host == host && e.first == from + added as u64 => {
                let mut joined = lines;
                joined.append(&mut e.lines);
                e.lines = joined;
                e.first = from;
            }
            _ => self.earlier = Some(Earlier { host, first: from, lines }),
        }
        self.log_scroll += added;
    }

    pub fn current_log(&self) -> Option<&super::logs::LogBuffer> {
        let model = self.deploy.as_ref()?;
        if self.interleaved {
            return Some(&model.combined);
        }
        let name = self.selected_name()?;
        model.host(&name).map(|h| &h.logs)
    }

    fn jump_to_match(&mut self, older: bool) {
        let (Some(needle), Some(log)) = (self.search.clone(), self.current_log()) else {
            return;
        };
        let len = log.len();
        if len == 0 {
            return;
        }
        let bottom = len - 1 - self.log_scroll.min(len - 1);
        let found = if older {
            if bottom == 0 { None } else { log.find_back(&needle, bottom - 1) }
        } else {
            log.find_forward(&needle, bottom + 1)
        };
        match found {
            Some(i) => self.log_scroll = len - 1 - i,
            None => self.status = Some(format!("no more matches for \"{needle}\"")),
        }
    }

    pub fn on_mouse(&mut self, mouse: MouseEvent) {
        if self.deploy.is_none() || self.dialog.is_some() {
            return;
        }
        let areas: DeployLayout = layout::deploy(self.size);
        let at = Position::new(mouse.column, mouse.row);
        match mouse.kind {
            MouseEventKind::Down(MouseButton::Left) if areas.hosts.contains(at) => {
                // Row 0 is the border, row 1 the header.
                let row = mouse.row.saturating_sub(areas.hosts.y + 2) as usize;
                let first = layout::first_visible_row(self.selected_host, layout::table_rows(areas.hosts));
                let count = self.visible_hosts().len();
                if mouse.row >= areas.hosts.y + 2 && first + row < count {
                    self.selected_host = first + row;
                    self.focus = Pane::Hosts;
                    self.log_scroll = 0;
                }
            }
            MouseEventKind::Down(MouseButton::Left) if areas.logs.contains(at) => self.focus = Pane::Logs,
            MouseEventKind::ScrollUp if areas.logs.contains(at) => self.scroll_log(3),
            MouseEventKind::ScrollDown if areas.logs.contains(at) => self.scroll_log(-3),
            MouseEventKind::ScrollUp if areas.hosts.contains(at) => self.move_in_focus_of(Pane::Hosts, -1),
            MouseEventKind::ScrollDown if areas.hosts.contains(at) => self.move_in_focus_of(Pane::Hosts, 1),
            _ => {}
        }
    }

    fn move_in_focus_of(&mut self, pane: Pane, delta: isize) {
        let focus = self.focus;
        self.focus = pane;
        self.move_in_focus(delta);
        self.focus = focus;
    }

    /// What the header says about the engine, including commands not yet acknowledged.
    pub fn control_label(&self) -> Option<String> {
        let model = self.deploy.as_ref()?;
        let label = match (&model.control, self.pending) {
            (ControlView::Finished(outcome), _) => format!("{outcome:?}").to_uppercase(),
            (ControlView::Aborted { .. }, _) => "ABORTING… stopping running steps".into(),
            (_, Some(Pending::Aborting)) => "aborting…".into(),
            (_, Some(Pending::Pausing)) => "pausing…".into(),
            (_, Some(Pending::Resuming)) => "resuming…".into(),
            (ControlView::Paused { .. }, None) => "PAUSED".into(),
            (ControlView::AwaitingPromote { .. }, None) => "WAITING FOR PROMOTE".into(),
            (ControlView::Running, None) => "RUNNING".into(),
        };
        Some(label)
    }
}

/// Hosts the table is limited to, and what they have in common.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSet {
    /// `printed "WARN disk 94% full"`
    pub label: String,
    pub hosts: Vec<String>,
}

fn host_matches(host: &HostView, needle: &str) -> bool {
    host.name.to_lowercase().contains(needle)
        || phase_word(host.phase).contains(needle)
        || host.step.as_deref().is_some_and(|s| s.to_lowercase().contains(needle))
}

pub fn phase_word(phase: HostPhase) -> &'static str {
    match phase {
        HostPhase::Waiting => "waiting",
        HostPhase::Running => "running",
        HostPhase::Done => "done",
        HostPhase::Failed => "failed",
        HostPhase::Cancelled => "cancelled",
        HostPhase::Skipped => "skipped",
        HostPhase::NotStarted => "not started",
    }
}

fn trouble_rank(host: &HostView) -> u8 {
    match host.phase {
        HostPhase::Failed => 0,
        HostPhase::Cancelled => 1,
        HostPhase::Running if host.slow => 2,
        HostPhase::Running => 3,
        HostPhase::Waiting => 4,
        HostPhase::Skipped | HostPhase::NotStarted => 5,
        HostPhase::Done => 6,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::console::logs::LogLine;
    use crate::console::model::tests::{stamp, started};
    use crate::console::prose;
    use crate::event::{Event, HostState, PauseCause, TriageAction};
    use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
    use std::path::Path;

    pub(crate) fn demo_profile() -> Profile {
        let src = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/profiles/demo.toml")).unwrap();
        Profile::parse(Path::new("profiles/demo.toml"), &src).unwrap()
    }

    fn key(code: KeyCode) -> KeyEvent {
        KeyEvent::new(code, KeyModifiers::NONE)
    }

    fn typed(app: &mut App, text: &str) {
        for c in text.chars() {
            app.on_key(key(KeyCode::Char(c)));
        }
    }

    fn deploying() -> App {
        let mut app = App::new(vec![demo_profile()], "ann", 100);
        app.begin_deploy();
        app.on_event(&started());
        app
    }

    #[test]
    fn starting_a_deploy_asks_release_then_shows_the_plan() {
        let mut app = App::new(vec![demo_profile()], "ann", 100);
        assert_eq!(app.on_key(key(KeyCode::Enter)), []);
        assert!(matches!(app.dialog, Some(Dialog::Release { .. })));
        typed(&mut app, "2.4.1");
        app.on_key(key(KeyCode::Enter));
        assert!(matches!(&app.dialog, Some(Dialog::ConfirmPlan { release, .. }) if release == "2.4.1"));
        let effects = app.on_key(key(KeyCode::Enter));
        assert_eq!(effects, [Effect::StartDeploy { profile: 0, env: "dev".into(), release: "2.4.1".into() }]);
    }

    #[test]
    fn an_unusable_release_is_refused_in_place() {
        let mut app = App::new(vec![demo_profile()], "ann", 100);
        app.on_key(key(KeyCode::Enter));
        typed(&mut app, "2.4.1; rm");
        app.on_key(key(KeyCode::Enter));
        let Some(Dialog::Release { error: Some(error), .. }) = &app.dialog else { panic!("the dialog stays open") };
        assert!(error.contains("not usable"), "the error stands beside the input: {error}");
    }

    #[test]
    fn a_protected_environment_needs_its_name_typed() {
        let mut app = App::new(vec![demo_profile()], "ann", 100);
        app.on_key(key(KeyCode::Down));
        app.on_key(key(KeyCode::Down));
        assert_eq!(app.target_env().unwrap().name, "production");
        app.on_key(key(KeyCode::Enter));
        typed(&mut app, "9");
        app.on_key(key(KeyCode::Enter));
        assert_eq!(app.on_key(key(KeyCode::Enter)), [], "plan confirmed, name not typed yet");
        typed(&mut app, "prod");
        assert_eq!(app.on_key(key(KeyCode::Enter)), []);
        assert!(matches!(app.dialog, Some(Dialog::TypeName { wrong: true, .. })));
        typed(&mut app, "uction");
        let effects = app.on_key(key(KeyCode::Enter));
        assert_eq!(effects, [Effect::StartDeploy { profile: 0, env: "production".into(), release: "9".into() }]);
    }

    #[test]
    fn pause_shows_pausing_until_the_engine_acknowledges() {
        let mut app = deploying();
        let effects = app.on_key(key(KeyCode::Char('p')));
        assert_eq!(effects, [Effect::Send(Command::Pause, CommandSource::Keyboard)]);
        assert_eq!(app.control_label().unwrap(), "pausing…");
        app.on_event(&stamp(1, Event::Paused { cause: PauseCause::Operator, running: vec![] }));
        assert_eq!(app.control_label().unwrap(), "PAUSED");
        assert_eq!(app.on_key(key(KeyCode::Char('r'))), [Effect::Send(Command::Resume, CommandSource::Keyboard)]);
        app.on_event(&stamp(2, Event::Resumed));
        assert_eq!(app.control_label().unwrap(), "RUNNING");
    }

    #[test]
    fn abort_requires_a_reason() {
        let mut app = deploying();
        app.on_key(key(KeyCode::Char('a')));
        assert_eq!(app.on_key(key(KeyCode::Enter)), []);
        assert!(matches!(app.dialog, Some(Dialog::AbortReason { empty: true, .. })));
        typed(&mut app, "db on fire");
        let effects = app.on_key(key(KeyCode::Enter));
        assert_eq!(effects, [Effect::Send(Command::Abort { reason: "db on fire".into() }, CommandSource::Keyboard)]);
    }

    #[test]
    fn quitting_mid_deploy_asks_to_detach_or_abort() {
        let mut app = deploying();
        assert_eq!(app.on_key(key(KeyCode::Char('q'))), []);
        assert!(matches!(app.dialog, Some(Dialog::ConfirmQuit)));
        assert_eq!(app.on_key(key(KeyCode::Char('d'))), [Effect::Detach]);
        app.on_key(key(KeyCode::Char('q')));
        let effects = app.on_key(key(KeyCode::Char('a')));
        assert!(matches!(&effects[..], [Effect::Send(Command::Abort { reason }, _)] if reason.contains("quit")));
        let done = Event::DeployFinished { outcome: crate::event::Outcome::Aborted, duration_ms: 1, hosts: vec![] };
        assert_eq!(app.on_event(&stamp(3, done)), [Effect::Quit]);
    }

    #[test]
    fn triage_keys_retry_skip_or_exclude_the_selected_host() {
        let mut app = deploying();
        // "a" is waiting: x excludes it, once confirmed by name; Esc changes nothing.
        assert_eq!(app.on_key(key(KeyCode::Char('x'))), []);
        assert!(matches!(&app.dialog, Some(Dialog::ConfirmTriage(c)) if c == &[Command::Exclude { host: "a".into() }]));
        assert_eq!(app.on_key(key(KeyCode::Esc)), []);
        assert!(app.dialog.is_none());
        app.on_key(key(KeyCode::Char('x')));
        assert_eq!(
            app.on_key(key(KeyCode::Char('y'))),
            [Effect::Send(Command::Exclude { host: "a".into() }, CommandSource::Keyboard)]
        );
        app.on_event(&stamp(1, Event::HostStarted { wave: 1, host: "a".into() }));
        let failed = Event::HostFinished { wave: 1, host: "a".into(), state: crate::event::HostState::Failed };
        app.on_event(&stamp(2, failed));
        app.on_key(key(KeyCode::Char('x')));
        assert!(matches!(&app.dialog, Some(Dialog::ConfirmTriage(c)) if matches!(c[..], [Command::Skip { .. }])));
        assert_eq!(
            app.on_key(key(KeyCode::Char('y'))),
            [Effect::Send(Command::Skip { host: "a".into() }, CommandSource::Keyboard)]
        );
        // What the engine refuses is said where the operator looks.
        let refused = Event::CommandIgnored { command: Command::Skip { host: "a".into() }, why: "a is done".into() };
        app.on_event(&stamp(3, refused));
        assert_eq!(app.status.as_deref(), Some("skip not done: a is done"));
        assert_eq!(
            app.on_key(key(KeyCode::Char('R'))),
            [Effect::Send(Command::Retry { host: "a".into() }, CommandSource::Keyboard)]
        );
    }

    #[test]
    fn f_walks_the_failed_and_unhealthy_hosts_and_wraps() {
        let mut app = deploying();
        app.on_key(key(KeyCode::Char('f')));
        assert_eq!(app.status.as_deref(), Some("no failed, unhealthy or slow host"));
        let failed = Event::HostFinished { wave: 2, host: "c".into(), state: crate::event::HostState::Failed };
        app.on_event(&stamp(1, failed));
        app.on_event(&stamp(
            2,
            Event::HealthChanged { host: "a".into(), check: "up".into(), healthy: false, why: None },
        ));
        app.on_key(key(KeyCode::Char('f')));
        assert_eq!(app.selected_name().as_deref(), Some("c"));
        app.on_key(key(KeyCode::Char('f')));
        assert_eq!(app.selected_name().as_deref(), Some("a"), "wraps around to the top");
    }

    #[test]
    fn a_rollback_policy_starts_the_rollback_when_the_deploy_ends() {
        let mut app = deploying();
        let threshold = Event::ThresholdExceeded {
            wave: 1,
            failures: 1,
            limit: 0,
            failed_hosts: vec!["a".into()],
            action: crate::profile::FailureAction::Rollback,
        };
        assert_eq!(app.on_event(&stamp(1, threshold)), [Effect::Bell]);
        let done = Event::DeployFinished { outcome: crate::event::Outcome::Aborted, duration_ms: 1, hosts: vec![] };
        assert_eq!(
            app.on_event(&stamp(2, done)),
            [Effect::Bell, Effect::PrepareRollback { profile: 0, env: "dev".into(), automatic: true }]
        );
    }

    #[test]
    fn paging_keys_move_the_host_selection_and_scroll_the_log_when_it_has_focus() {
        let mut app = deploying();
        app.on_key(key(KeyCode::Char('G')));
        assert_eq!(app.selected_name().as_deref(), Some("c"), "G: the last host");
        app.on_key(key(KeyCode::Home));
        assert_eq!(app.selected_name().as_deref(), Some("a"), "Home: the first");
        app.on_key(key(KeyCode::PageDown));
        assert_eq!(app.selected_name().as_deref(), Some("c"), "a page down, kept to the last");
        app.focus = Pane::Logs;
        app.on_key(key(KeyCode::Char('g')));
        assert_eq!(app.selected_name().as_deref(), Some("c"), "with the log focused the selection stays");
    }

    #[test]
    fn skipping_all_failed_hosts_is_one_confirmed_action() {
        let mut app = deploying();
        app.on_key(key(KeyCode::Char('X')));
        assert_eq!(app.status.as_deref(), Some("no failed host to skip"));
        for host in ["a", "c"] {
            app.on_event(&stamp(1, Event::HostStarted { wave: 1, host: host.into() }));
            let failed = Event::HostFinished { wave: 1, host: host.into(), state: crate::event::HostState::Failed };
            app.on_event(&stamp(2, failed));
        }
        assert_eq!(app.on_key(key(KeyCode::Char('X'))), []);
        assert_eq!(
            app.on_key(key(KeyCode::Char('y'))),
            [
                Effect::Send(Command::Skip { host: "a".into() }, CommandSource::Keyboard),
                Effect::Send(Command::Skip { host: "c".into() }, CommandSource::Keyboard)
            ]
        );
    }

    #[test]
    fn the_bell_rings_when_someone_is_needed_or_it_is_over_unless_turned_off() {
        let mut app = deploying();
        let paused = Event::Paused { cause: crate::event::PauseCause::Operator, running: vec![] };
        assert_eq!(app.on_event(&stamp(1, paused.clone())), [Effect::Bell]);
        assert_eq!(app.on_event(&stamp(2, Event::AwaitingPromote { wave: 1 })), [Effect::Bell]);
        assert_eq!(app.on_event(&stamp(3, Event::Resumed)), []);
        app.bell = false;
        assert_eq!(app.on_event(&stamp(4, paused)), []);
    }

    #[test]
    fn rollback_of_a_protected_environment_needs_its_name() {
        let mut app = App::new(vec![demo_profile()], "ann", 100);
        app.on_key(key(KeyCode::Down));
        app.on_key(key(KeyCode::Down));
        assert_eq!(
            app.on_key(key(KeyCode::Char('B'))),
            [Effect::PrepareRollback { profile: 0, env: "production".into(), automatic: false }]
        );
        app.confirm_rollback("preview".into(), true);
        assert_eq!(app.on_key(key(KeyCode::Enter)), []);
        assert!(matches!(app.dialog, Some(Dialog::ConfirmRollback { wrong: true, .. })));
        typed(&mut app, "production");
        assert_eq!(app.on_key(key(KeyCode::Enter)), [Effect::StartRollback]);
        app.confirm_rollback("preview".into(), false);
        assert_eq!(app.on_key(key(KeyCode::Esc)), [Effect::CancelRollback]);
    }

    #[test]
    fn clicking_a_host_row_selects_it_and_the_wheel_scrolls_the_log() {
        use crossterm::event::{MouseButton, MouseEvent, MouseEventKind};
        let mut app = deploying();
        app.size = Rect::new(0, 0, 160, 48);
        let hosts = layout::deploy(app.size).hosts;
        // Border, header, then rows: the third row is host "c".
        let click = MouseEvent {
            kind: MouseEventKind::Down(MouseButton::Left),
            column: hosts.x + 3,
            row: hosts.y + 2 + 2,
            modifiers: KeyModifiers::NONE,
        };
        app.on_mouse(click);
        assert_eq!(app.selected_name().as_deref(), Some("c"));
        for i in 0..20 {
            let line = Event::Output {
                host: "c".into(),
                step: "s".into(),
                stream: crate::event::Stream::Stdout,
                line: format!("{i}"),
            };
            app.on_event(&stamp(1, line));
        }
        let logs = layout::deploy(app.size).logs;
        let wheel = MouseEvent {
            kind: MouseEventKind::ScrollUp,
            column: logs.x + 2,
            row: logs.y + 2,
            modifiers: KeyModifiers::NONE,
        };
        app.on_mouse(wheel);
        assert_eq!(app.log_scroll, 3);
    }

    #[test]
    fn an_observer_cannot_steer_and_takes_over_by_typing_the_name() {
        let mut app = deploying();
        app.observing = true;
        assert_eq!(app.on_key(key(KeyCode::Char('p'))), []);
        assert!(app.status.as_deref().is_some_and(|s| s.contains("T takes over")), "{:?}", app.status);
        assert_eq!(app.on_key(key(KeyCode::Char('T'))), []);
        assert!(matches!(app.dialog, Some(Dialog::TakeOver { .. })));
        let env = app.target_env().unwrap().name.clone();
        app.on_key(key(KeyCode::Char('x')));
        assert_eq!(app.on_key(key(KeyCode::Enter)), []);
        assert!(matches!(app.dialog, Some(Dialog::TakeOver { wrong: true, .. })));
        app.on_key(key(KeyCode::Backspace));
        for c in env.chars() {
            app.on_key(key(KeyCode::Char(c)));
        }
        assert_eq!(app.on_key(key(KeyCode::Enter)), [Effect::TakeOver]);
        // An observer's quitting is a detach: the deploy is not theirs to stop.
        assert_eq!(app.on_key(key(KeyCode::Char('q'))), [Effect::Detach]);
    }

    #[test]
    fn ctrl_u_empties_an_input() {
        let mut app = deploying();
        app.on_key(key(KeyCode::Char('a')));
        for c in "wrong reason".chars() {
            app.on_key(key(KeyCode::Char(c)));
        }
        app.on_key(KeyEvent::new(KeyCode::Char('u'), crossterm::event::KeyModifiers::CONTROL));
        let Some(Dialog::AbortReason { input, .. }) = &app.dialog else { panic!("the abort dialog stays open") };
        assert_eq!(input.lines().join(""), "");
    }

    fn step(secs: i64, host: &str, wave: usize) -> Stamped {
        stamp(
            secs,
            Event::StepStarted {
                wave,
                host: host.into(),
                step: "stage".into(),
                kind: crate::plan::StepKind::Command,
                index: 1,
                total: 2,
                attempt: 1,
                command: "curl -H 'token: ****' x".into(),
            },
        )
    }

    #[test]
    fn after_a_triage_the_selection_stays_where_it_was() {
        let mut app = deploying();
        app.sort = SortOrder::Trouble;
        for host in ["b", "c"] {
            app.on_event(&stamp(1, Event::HostStarted { wave: 2, host: host.into() }));
            let failed = Event::HostFinished { wave: 2, host: host.into(), state: crate::event::HostState::Failed };
            app.on_event(&stamp(2, failed));
        }
        app.on_key(key(KeyCode::Home));
        assert_eq!(app.selected_name().as_deref(), Some("b"), "problems first: b, c, a");
        app.on_event(&stamp(3, Event::HostTriaged { host: "b".into(), action: TriageAction::Skip }));
        assert_eq!(app.selected_name().as_deref(), Some("c"), "b moved down; the row selected is now c");
    }

    #[test]
    fn following_the_running_wave_moves_the_selection_on_with_it() {
        let mut app = deploying();
        app.on_key(key(KeyCode::Char('F')));
        app.on_event(&stamp(1, Event::HostStarted { wave: 1, host: "a".into() }));
        assert_eq!(app.selected_name().as_deref(), Some("a"));
        app.on_event(&stamp(2, Event::HostFinished { wave: 1, host: "a".into(), state: HostState::Done }));
        app.on_event(&stamp(3, Event::HostStarted { wave: 2, host: "c".into() }));
        assert_eq!(app.selected_name().as_deref(), Some("c"), "a finished: on to the running c");
        app.on_key(key(KeyCode::Char('F')));
        app.on_key(key(KeyCode::Home));
        app.on_event(&stamp(4, Event::HostStarted { wave: 2, host: "b".into() }));
        assert_eq!(app.selected_name().as_deref(), Some("a"), "F again stops following");
    }

    #[test]
    fn c_shows_the_selected_hosts_command_and_enter_a_timeline_entry_in_full() {
        let mut app = deploying();
        app.on_key(key(KeyCode::Char('c')));
        assert_eq!(app.status.as_deref(), Some("a has not started a step yet"));
        app.on_event(&step(1, "a", 1));
        app.on_key(key(KeyCode::Char('c')));
        let Some(Dialog::Text { lines, .. }) = &app.dialog else { panic!("a text dialog") };
        assert_eq!(lines[1], prose::line(prose::Ink::Text, "curl -H 'token: ****' x"));
        app.on_key(key(KeyCode::Esc));
        assert!(app.dialog.is_none());
        let long = "x".repeat(500);
        app.on_event(&stamp(2, Event::CommandIgnored { command: Command::Resume, why: long.clone() }));
        app.focus = Pane::Timeline;
        app.on_key(key(KeyCode::Enter));
        let Some(Dialog::Text { lines, .. }) = &app.dialog else { panic!("the entry in full") };
        assert!(lines[1][0].1.ends_with(&long), "{:?}", lines[1]);
    }

    #[test]
    fn help_scrolls_to_its_end_and_no_further() {
        let mut app = deploying();
        app.size = Rect::new(0, 0, 80, 24);
        app.on_key(key(KeyCode::Char('?')));
        app.on_key(key(KeyCode::End));
        let Some(Dialog::Help { scroll }) = app.dialog else { panic!("help stays open while scrolling") };
        let rows = prose::wrap(&keymap_help(), layout::text_width(app.size, layout::WIDE_DIALOG_WIDTH)).len();
        let (_, shown) = layout::text_dialog(app.size, layout::WIDE_DIALOG_WIDTH, rows, 1);
        assert_eq!(scroll, rows - shown, "the last page");
        app.on_key(key(KeyCode::Up));
        assert!(matches!(app.dialog, Some(Dialog::Help { scroll: s }) if s == rows - shown - 1));
        app.on_key(key(KeyCode::Char('x')));
        assert!(app.dialog.is_none(), "any other key closes it");
    }

    fn keymap_help() -> Vec<prose::Prose> {
        crate::console::keymap::help_prose()
    }

    #[test]
    fn log_keys_wrap_cut_and_write_the_selected_hosts_log() {
        let mut app = deploying();
        assert!(app.wrap, "nothing is cut unless asked");
        app.on_key(key(KeyCode::Right));
        assert_eq!(app.log_shift, 0, "sideways only when cut");
        app.on_key(key(KeyCode::Char('w')));
        app.on_key(key(KeyCode::Right));
        assert_eq!((app.wrap, app.log_shift), (false, 20));
        app.on_key(key(KeyCode::Char('t')));
        assert!(app.timestamps);
        assert_eq!(app.on_key(key(KeyCode::Char('W'))), [Effect::WriteLog { host: "a".into() }]);
    }

    #[test]
    fn scrolling_past_the_scrollback_reads_older_lines_back_from_the_audit_log_to_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let start = crate::audit::SessionStart::for_tests("test", "dev", "1");
        let mut audit = crate::audit::AuditLog::open(dir.path(), &start, Default::default()).unwrap();
        let path = audit.path().to_path_buf();
        // 30 lines of scrollback a host: 12,000 of c's lines leave most of them on disk only.
        let mut app = App::new(vec![demo_profile()], "ann", 30);
        app.begin_deploy();
        let mut feed = |app: &mut App, event: Event| {
            let stamped = stamp(1, event);
            audit.event(&stamped);
            app.on_event(&stamped);
        };
        feed(&mut app, started().event);
        for i in 0..12_000 {
            let line = format!("line {i}");
            feed(
                &mut app,
                Event::Output { host: "c".into(), step: "s".into(), stream: crate::event::Stream::Stdout, line },
            );
            let other = format!("b {i}");
            feed(
                &mut app,
                Event::Output { host: "b".into(), step: "s".into(), stream: crate::event::Stream::Stdout, line: other },
            );
        }
        audit.close("ok", 0).unwrap();
        app.on_key(key(KeyCode::Char('G')));
        assert_eq!(app.selected_name().as_deref(), Some("c"));
        app.focus = Pane::Logs;
        app.on_key(key(KeyCode::Home));
        let mut reads = 0;
        while app.unloaded() > 0 {
            // PgUp until the top of what is held asks for the page before it.
            let mut effects = app.on_key(key(KeyCode::PageUp));
            for _ in 0..10_000 {
                if !effects.is_empty() {
                    break;
                }
                effects = app.on_key(key(KeyCode::PageUp));
            }
            let [Effect::LoadEarlier { host, from, to }] = &effects[..] else { panic!("{effects:?}") };
            let read = crate::audit::host_output(&path, host, *from..*to).unwrap();
            assert_eq!(read.len() as u64, to - from);
            let lines = read
                .into_iter()
                .map(|(at, stream, text)| LogLine { host: None, stream, text: text.into(), at, note: false })
                .collect();
            app.earlier_loaded(host.clone(), *from, lines);
            reads += 1;
            assert!(reads < 10, "pages of 5,000 reach the start");
        }
        assert_eq!(app.unloaded(), 0);
        assert_eq!(&*app.shown_log().unwrap().get(0).unwrap().text, "line 0", "the host's first line");
        assert_eq!(&*app.shown_log().unwrap().get(app.log_len() - 1).unwrap().text, "line 11999");
        assert_eq!(app.log_len(), 12_000, "read back and in memory join without a gap or a repeat");
    }

    #[test]
    fn quit_without_a_deploy_is_immediate() {
        let mut app = App::new(vec![demo_profile()], "ann", 100);
        assert_eq!(app.on_key(key(KeyCode::Char('q'))), [Effect::Quit]);
    }

    #[test]
    fn filter_narrows_hosts_and_keeps_the_selection() {
        let mut app = deploying();
        app.on_key(key(KeyCode::Down));
        assert_eq!(app.selected_name().as_deref(), Some("b"));
        app.on_key(key(KeyCode::Char('/')));
        typed(&mut app, "c");
        assert_eq!(app.visible_hosts(), [2]);
        app.on_key(key(KeyCode::Enter));
        assert_eq!(app.filter, "c");
        app.on_key(key(KeyCode::Esc));
        assert_eq!(app.visible_hosts().len(), 3);
    }

    #[test]
    fn scrolling_up_stops_following_and_end_resumes() {
        let mut app = deploying();
        for i in 0..50 {
            app.on_event(&stamp(
                1,
                Event::Output {
                    host: "a".into(),
                    step: "s".into(),
                    stream: crate::event::Stream::Stdout,
                    line: format!("l{i}"),
                },
            ));
        }
        // The log's keys are the log's when it has focus (in the host table they move the selection).
        app.focus = Pane::Logs;
        app.on_key(key(KeyCode::PageUp));
        assert!(app.log_scroll > 0);
        app.on_key(key(KeyCode::End));
        assert_eq!(app.log_scroll, 0);
        app.on_key(key(KeyCode::Home));
        assert_eq!(app.log_scroll, 50);
    }

    #[test]
    fn search_jumps_to_the_latest_match() {
        let mut app = deploying();
        for line in ["boot", "error: disk", "ok", "fine"] {
            app.on_event(&stamp(
                1,
                Event::Output {
                    host: "a".into(),
                    step: "s".into(),
                    stream: crate::event::Stream::Stdout,
                    line: line.into(),
                },
            ));
        }
        app.focus = Pane::Logs;
        app.on_key(key(KeyCode::Char('/')));
        typed(&mut app, "ERROR");
        app.on_key(key(KeyCode::Enter));
        assert_eq!(app.log_scroll, 2, "match is two lines above the tail");
    }
}
