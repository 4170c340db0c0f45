//! What a key means: the keymap's action applied to the console's state, per screen.

use crate::console::keymap::{self, Action, Screen};
use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use crate::audit::CommandSource;
use crate::console::model::HostPhase;
use crate::event::Command;

use super::dialog::text_input;
use super::*;
use crate::console::prose::{self, Ink};

/// Characters ← and → scroll the unwrapped log, and the most it scrolls.
const SIDEWAYS: usize = 20;
const MAX_SHIFT: usize = 1 << 20;

impl App {
    pub fn on_key(&mut self, key: KeyEvent) -> Vec<Effect> {
        if key.kind == KeyEventKind::Release {
            return Vec::new();
        }
        self.status = None;
        if self.busy.is_some() && self.dialog.is_none() && key.code == KeyCode::Esc {
            return vec![Effect::CancelBusy];
        }
        if self.dialog.is_some() {
            return self.on_dialog_key(key);
        }
        if key.code == KeyCode::Char('c') && key.modifiers.contains(KeyModifiers::CONTROL) {
            return self.request_quit();
        }
        let screen = if self.deploy.is_some() { Screen::Deploy } else { Screen::Overview };
        match keymap::action(screen, key.code) {
            Some(Action::Quit) => self.request_quit(),
            Some(Action::Help) => {
                self.dialog = Some(Dialog::Help { scroll: 0 });
                Vec::new()
            }
            Some(action) if screen == Screen::Deploy => self.on_deploy_action(action),
            Some(action) => self.on_overview_action(action),
            None => Vec::new(),
        }
    }

    /// The resume dialog for the selected environment's interrupted deploy.
    fn open_resume(&mut self) {
        let Some(journal) = self.interrupted.get(&self.selected_target) else {
            self.status = Some("no interrupted deploy of this environment (wavedeck ps lists them)".into());
            return;
        };
        let protected = self.target_env().is_some_and(|e| e.protected);
        let mid_step = journal.interrupted().next().is_some();
        let hint = if protected { "type the environment's name (and rerun, skip or fail)" } else { "" };
        self.dialog = Some(Dialog::Resume {
            target: self.selected_target,
            text: journal.describe(),
            session: journal.session.clone(),
            mid_step,
            protected,
            input: text_input(hint),
            wrong: false,
        });
    }

    fn request_quit(&mut self) -> Vec<Effect> {
        if self.replay.is_some() {
            return vec![Effect::Quit];
        }
        if self.deploy_running() && self.observing {
            // An observer's going changes nothing for the deploy.
            return vec![Effect::Detach];
        }
        if self.deploy_running() {
            self.dialog = Some(Dialog::ConfirmQuit);
            Vec::new()
        } else {
            vec![Effect::Quit]
        }
    }

    fn on_overview_action(&mut self, action: Action) -> Vec<Effect> {
        match action {
            Action::Up => {
                self.selected_target = self.selected_target.saturating_sub(1);
                self.refresh_preview();
            }
            Action::Down if self.selected_target + 1 < self.targets.len() => {
                self.selected_target += 1;
                self.refresh_preview();
            }
            Action::Rollback => return self.rollback_selected(false),
            Action::ResumeInterrupted => self.open_resume(),
            Action::Check => {
                let Some(target) = self.targets.get(self.selected_target) else { return Vec::new() };
                let env = &self.profiles[target.profile].environments[target.env];
                let checking = env.hosts.iter().map(|h| (h.name.clone(), "checking…".to_string())).collect();
                self.reachability.insert(self.selected_target, checking);
                return vec![Effect::Check { target: self.selected_target }];
            }
            Action::Enter => {
                if self.targets.is_empty() {
                    return Vec::new();
                }
                if let Err(e) = &self.preview {
                    self.status = Some(format!("cannot plan this environment: {e}"));
                    return Vec::new();
                }
                self.dialog = Some(Dialog::Release { input: text_input("release to deploy, e.g. 2.4.1"), error: None });
            }
            _ => {}
        }
        Vec::new()
    }

    fn on_deploy_action(&mut self, action: Action) -> Vec<Effect> {
        let running = self.deploy_running();
        if action.steers() && self.replay.is_some() {
            self.status = Some("a replay: nothing here acts on hosts".into());
            return Vec::new();
        }
        if action.steers() && !running {
            self.status = Some("the deploy has finished".into());
            return Vec::new();
        }
        if action.steers() && self.observing {
            self.status = Some("observing: another client controls this deploy; T takes over".into());
            return Vec::new();
        }
        match action {
            Action::TakeOver if running && self.observing => {
                self.dialog = Some(Dialog::TakeOver { input: text_input("type the environment's name"), wrong: false });
            }
            Action::TakeOver if running => self.status = Some("this console controls the deploy".into()),
            Action::TakeOver => self.status = Some("the deploy has finished".into()),
            Action::Pause => return self.send(Command::Pause, Pending::Pausing),
            Action::Resume => return self.send(Command::Resume, Pending::Resuming),
            Action::Abort => {
                self.dialog = Some(Dialog::AbortReason { input: text_input("why are you aborting?"), empty: false });
            }
            Action::Retry => return self.triage_selected(true),
            Action::Promote => return vec![Effect::Send(Command::Promote, CommandSource::Keyboard)],
            Action::SkipOrExclude => return self.triage_selected(false),
            Action::SkipAllFailed => self.skip_all_failed(),
            Action::NextPane => self.focus = self.focus.next(),
            Action::PreviousPane => self.focus = self.focus.previous(),
            Action::Enter if self.focus == Pane::Timeline => self.show_timeline_entry(),
            Action::Enter if self.grouped && self.focus == Pane::Logs => self.list_group_hosts(),
            Action::Up if self.grouped && self.focus == Pane::Logs => self.group_at = self.group_at.saturating_sub(1),
            Action::Down if self.grouped && self.focus == Pane::Logs => {
                self.group_at = (self.group_at + 1).min(self.shown_groups().len().saturating_sub(1));
            }
            Action::Grouped => {
                self.grouped = !self.grouped;
                if self.grouped {
                    self.focus = Pane::Logs;
                    self.group_at = 0;
                    self.status =
                        Some("output grouped across hosts: ↑↓ choose, Enter lists its hosts, O the log".into());
                }
            }
            Action::Enter => {
                if self.focus == Pane::Hosts {
                    self.focus = Pane::Logs;
                    self.interleaved = false;
                    self.log_scroll = 0;
                } else {
                    self.focus = Pane::Hosts;
                }
            }
            Action::Back => {
                if self.only.is_some() {
                    self.only = None;
                    self.selected_host = 0;
                } else if !self.filter.is_empty() {
                    self.filter.clear();
                } else if self.search.is_some() {
                    self.search = None;
                } else {
                    self.focus = Pane::Hosts;
                }
            }
            Action::FilterOrSearch => {
                self.dialog = Some(if self.focus == Pane::Logs {
                    Dialog::Search(text_input("search the log"))
                } else {
                    Dialog::Filter(text_input("filter hosts by name, state or step"))
                });
            }
            Action::OlderMatch => self.jump_to_match(true),
            Action::NewerMatch => self.jump_to_match(false),
            Action::Interleave => {
                self.interleaved = !self.interleaved;
                self.log_scroll = 0;
            }
            Action::Sort => {
                self.sort = match self.sort {
                    SortOrder::Plan => SortOrder::Trouble,
                    SortOrder::Trouble => SortOrder::Name,
                    SortOrder::Name => SortOrder::Plan,
                };
            }
            Action::Rollback => return self.rollback_selected(false),
            Action::NextTrouble => self.select_next_trouble(),
            Action::Overview if !running => {
                // Back to the overview to start another deploy.
                self.deploy = None;
                self.refresh_preview();
            }
            Action::Up if self.focus == Pane::Logs => {
                let at_top = self.log_scroll >= self.log_len();
                self.move_in_focus(-1);
                if at_top {
                    return self.want_earlier();
                }
            }
            Action::Up => self.move_in_focus(-1),
            Action::Down => self.move_in_focus(1),
            // In the host table they move the selection a page, or to the first or last host;
            // with the log focused they scroll it.
            Action::PageUp if self.focus == Pane::Hosts => self.move_in_focus(-(self.host_page() as isize)),
            Action::PageDown if self.focus == Pane::Hosts => self.move_in_focus(self.host_page() as isize),
            Action::Top if self.focus == Pane::Hosts => self.move_in_focus(isize::MIN / 2),
            Action::Follow if self.focus == Pane::Hosts => self.move_in_focus(isize::MAX / 2),
            Action::PageUp => {
                let at_top = self.log_scroll >= self.log_len();
                self.scroll_log(self.log_page() as isize);
                if at_top {
                    return self.want_earlier();
                }
            }
            Action::PageDown => self.scroll_log(-(self.log_page() as isize)),
            Action::Top => {
                let at_top = self.log_scroll >= self.log_len();
                self.log_scroll = self.log_len();
                if at_top {
                    return self.want_earlier();
                }
            }
            Action::Follow => self.log_scroll = 0,
            Action::Wrap => {
                self.wrap = !self.wrap;
                self.log_shift = 0;
                self.status = Some(if self.wrap {
                    "long log lines wrap".into()
                } else {
                    "long log lines are cut (marked …): ← → scroll sideways".into()
                });
            }
            Action::ScrollLeft | Action::ScrollRight if self.wrap => {
                self.status = Some("the log wraps long lines: w cuts them, then ← → scroll".into());
            }
            Action::ScrollLeft => self.log_shift = self.log_shift.saturating_sub(SIDEWAYS),
            Action::ScrollRight => self.log_shift = (self.log_shift + SIDEWAYS).min(MAX_SHIFT),
            Action::Timestamps => self.timestamps = !self.timestamps,
            Action::WriteLog => match self.selected_name() {
                Some(host) => return vec![Effect::WriteLog { host }],
                None => self.status = Some("no host selected".into()),
            },
            Action::ShowCommand => self.show_command(),
            Action::FollowWave => {
                self.follow_wave = !self.follow_wave;
                if self.follow_wave {
                    self.select_running();
                    self.status = Some("following the running wave (F again: stop)".into());
                } else {
                    self.status = Some("no longer following the running wave".into());
                }
            }
            Action::Overview | Action::Check | Action::Help | Action::Quit | Action::ResumeInterrupted => {}
        }
        Vec::new()
    }

    /// Enter on a group: the host table lists only the hosts that printed it, with the first
    /// one's log on show.
    fn list_group_hosts(&mut self) {
        let groups = self.shown_groups();
        let Some(group) = groups.get(self.group_at.min(groups.len().saturating_sub(1))) else {
            self.status = Some("no output yet".into());
            return;
        };
        let example = crate::text::shorten_middle(&crate::text::clean(&group.example), 24);
        self.only = Some(HostSet { label: format!("printed \"{example}\""), hosts: group.hosts.clone() });
        self.grouped = false;
        self.focus = Pane::Hosts;
        self.selected_host = 0;
        self.log_scroll = 0;
        self.status = Some("Esc shows every host again".into());
    }

    /// `R` retries the selected host; `x` skips it if it failed or excludes it if it has not
    /// started. The engine decides; a refusal comes back as an event and shows on the timeline.
    fn triage_selected(&mut self, retry: bool) -> Vec<Effect> {
        let Some(name) = self.selected_name() else { return Vec::new() };
        let phase = self.deploy.as_ref().and_then(|d| d.host(&name)).map(|h| h.phase);
        let command = match (retry, phase) {
            (true, _) => Command::Retry { host: name },
            (false, Some(HostPhase::Failed)) => Command::Skip { host: name },
            (false, _) => Command::Exclude { host: name },
        };
        if retry {
            return vec![Effect::Send(command, CommandSource::Keyboard)];
        }
        // Leaving a host out is not undone by another key: it is asked once more, by name.
        self.dialog = Some(Dialog::ConfirmTriage(vec![command]));
        Vec::new()
    }

    /// `X`: every failed host still counted as failed, skipped in one confirmed action.
    fn skip_all_failed(&mut self) {
        let failed: Vec<Command> = self
            .deploy
            .iter()
            .flat_map(|d| d.hosts.iter())
            .filter(|h| h.phase == HostPhase::Failed)
            .map(|h| Command::Skip { host: h.name.clone() })
            .collect();
        if failed.is_empty() {
            self.status = Some("no failed host to skip".into());
        } else {
            self.dialog = Some(Dialog::ConfirmTriage(failed));
        }
    }

    /// Moves the selection to the next failed or unhealthy host after it, wrapping around; says
    /// so when there is none.
    fn select_next_trouble(&mut self) {
        let Some(model) = self.deploy.as_ref() else { return };
        let visible = self.visible_hosts();
        let troubled = |i: usize| {
            let h = &model.hosts[i];
            h.phase == HostPhase::Failed || h.healthy == Some(false) || h.went_unhealthy || h.slow
        };
        let count = visible.len();
        let next = (1..=count).map(|k| (self.selected_host + k) % count).find(|&pos| troubled(visible[pos]));
        match next {
            Some(pos) => {
                self.selected_host = pos;
                self.log_scroll = 0;
            }
            None => self.status = Some("no failed, unhealthy or slow host".into()),
        }
    }

    /// `c`: what the selected host runs now (or ran last), exactly, secrets masked.
    fn show_command(&mut self) {
        let Some(name) = self.selected_name() else { return };
        let Some(host) = self.deploy.as_ref().and_then(|d| d.host(&name)) else { return };
        let (Some(step), Some(command)) = (&host.step, &host.command) else {
            self.status = Some(format!("{name} has not started a step yet"));
            return;
        };
        let now = if host.step_running { "runs now" } else { "ran last" };
        let again = if host.attempt > 1 { format!(", attempt {}", host.attempt) } else { String::new() };
        let mut lines = vec![prose::line(
            Ink::Muted,
            format!("step {}/{} {step}{again} {now}:", host.step_index, host.total_steps),
        )];
        // Line by line: cleaning drops control characters, newlines among them.
        lines.extend(command.lines().map(|l| prose::line(Ink::Text, crate::text::clean(l))));
        self.dialog = Some(Dialog::Text { title: format!(" Command — {name} "), lines, scroll: 0 });
    }

    /// Enter in the timeline: its newest shown entry, in full.
    fn show_timeline_entry(&mut self) {
        let Some(model) = &self.deploy else { return };
        let len = model.timeline.len();
        let Some(entry) = len.checked_sub(1 + self.timeline_scroll).and_then(|i| model.timeline.get(i)) else {
            return;
        };
        let when = entry.at.format("%Y-%m-%d %H:%M:%S UTC").to_string();
        let lines = vec![prose::line(Ink::Muted, when), prose::line(Ink::Text, entry.text.clone())];
        self.dialog = Some(Dialog::Text { title: " Timeline ".into(), lines, scroll: 0 });
    }

    pub(super) fn send(&mut self, command: Command, pending: Pending) -> Vec<Effect> {
        self.pending = Some(pending);
        vec![Effect::Send(command, CommandSource::Keyboard)]
    }
}
