//! Modal dialogs: release, plan confirmation, typed names, abort reasons, filter and search.
//! While one is open it takes every key.

use crossterm::event::{KeyCode, KeyEvent};
use ratatui_textarea::TextArea;

use crate::audit::CommandSource;
use crate::event::Command;
use crate::plan::Plan;
use crate::secrets::Secrets;

use super::*;
use crate::console::keymap;
use crate::console::prose::{self, Ink, Prose};

/// A modal dialog; it takes every key while open.
pub enum Dialog {
    /// The release to deploy, and why the last one typed cannot be used (shown beside it).
    Release {
        input: TextArea<'static>,
        error: Option<String>,
    },
    ConfirmPlan {
        plan: Box<Plan>,
        release: String,
        scroll: usize,
    },
    TypeName {
        release: String,
        input: TextArea<'static>,
        wrong: bool,
    },
    AbortReason {
        input: TextArea<'static>,
        empty: bool,
    },
    /// The rollback preview; a protected environment needs its name typed.
    ConfirmRollback {
        preview: String,
        protected: bool,
        input: TextArea<'static>,
        wrong: bool,
        scroll: usize,
    },
    ConfirmQuit,
    /// `x` on a host: skip it (failed) or exclude it (waiting); `X`: skip every failed host.
    /// Sent once confirmed with `y`.
    ConfirmTriage(Vec<Command>),
    /// An interrupted deploy's journal, and the operator's choice for hosts caught mid-step; a
    /// protected environment's name typed in `input` first.
    Resume {
        target: usize,
        text: String,
        session: String,
        mid_step: bool,
        protected: bool,
        input: TextArea<'static>,
        wrong: bool,
    },
    /// Taking control from another client: the environment's name typed.
    TakeOver {
        input: TextArea<'static>,
        wrong: bool,
    },
    /// An encrypted identity file no ssh-agent holds: its passphrase, typed unseen, before the
    /// deploy starts. `files` are those still to ask about, the first now.
    Passphrase {
        spec: Box<crate::runner::Spec>,
        files: Vec<std::path::PathBuf>,
        input: TextArea<'static>,
        wrong: bool,
    },
    Filter(TextArea<'static>),
    Search(TextArea<'static>),
    Help {
        scroll: usize,
    },
    /// Text to read, scrolled if long: a step's command, a timeline entry in full.
    Text {
        title: String,
        lines: Vec<Prose>,
        scroll: usize,
    },
}

/// What a dialog that shows text shows, and how: for drawing and for scrolling alike.
pub struct DialogText {
    pub lines: Vec<Prose>,
    pub width: u16,
    /// Rows below the text that never scroll (an input, the keys).
    pub pinned: u16,
}

impl Dialog {
    /// The text input this dialog holds, if any.
    fn input_mut(&mut self) -> Option<&mut TextArea<'static>> {
        match self {
            Dialog::Release { input, .. }
            | Dialog::Filter(input)
            | Dialog::Search(input)
            | Dialog::Passphrase { input, .. } => Some(input),
            Dialog::TypeName { input, .. }
            | Dialog::AbortReason { input, .. }
            | Dialog::ConfirmRollback { input, .. }
            | Dialog::TakeOver { input, .. }
            | Dialog::Resume { input, .. } => Some(input),
            Dialog::ConfirmPlan { .. }
            | Dialog::ConfirmQuit
            | Dialog::ConfirmTriage(_)
            | Dialog::Help { .. }
            | Dialog::Text { .. } => None,
        }
    }

    /// The text of a dialog that may be longer than the screen.
    pub fn text(&self) -> Option<DialogText> {
        let (lines, width, pinned) = match self {
            Dialog::Help { .. } => (keymap::help_prose(), layout::WIDE_DIALOG_WIDTH, 1),
            Dialog::Text { lines, .. } => (lines.clone(), layout::WIDE_DIALOG_WIDTH, 1),
            Dialog::ConfirmPlan { plan, release, .. } => {
                let mut lines =
                    vec![prose::line(Ink::Text, format!("Deploy {} {} to {}:", plan.service, release, plan.env))];
                lines.extend(prose::plan(plan));
                if plan.protected {
                    lines.push(prose::line(Ink::Text, ""));
                    lines.push(prose::line(
                        Ink::Bad,
                        format!("{} is PROTECTED: you will type its name next.", plan.env),
                    ));
                }
                (lines, layout::DIALOG_WIDTH, 1)
            }
            Dialog::ConfirmRollback { preview, .. } => {
                let lines = preview.lines().map(|l| prose::line(Ink::Text, l)).collect();
                (lines, layout::DIALOG_WIDTH, 2)
            }
            _ => return None,
        };
        Some(DialogText { lines, width, pinned })
    }

    fn scroll_mut(&mut self) -> Option<&mut usize> {
        match self {
            Dialog::Help { scroll }
            | Dialog::Text { scroll, .. }
            | Dialog::ConfirmPlan { scroll, .. }
            | Dialog::ConfirmRollback { scroll, .. } => Some(scroll),
            _ => None,
        }
    }
}

impl App {
    pub(super) fn on_dialog_key(&mut self, key: KeyEvent) -> Vec<Effect> {
        // Ctrl-U empties an input, as in a shell.
        if key.code == KeyCode::Char('u') && key.modifiers.contains(crossterm::event::KeyModifiers::CONTROL) {
            if let Some(input) = self.dialog.as_mut().and_then(Dialog::input_mut) {
                input.select_all();
                input.cut();
            }
            return Vec::new();
        }
        if self.scroll_dialog(key.code) {
            return Vec::new();
        }
        let Some(dialog) = self.dialog.take() else {
            return Vec::new();
        };
        let esc = key.code == KeyCode::Esc;
        let enter = key.code == KeyCode::Enter;
        match dialog {
            // Any other key closes help; a text closes on Esc, Enter or q.
            Dialog::Help { .. } => {}
            text @ Dialog::Text { .. } => {
                if !matches!(key.code, KeyCode::Esc | KeyCode::Enter | KeyCode::Char('q')) {
                    self.dialog = Some(text);
                }
            }
            Dialog::ConfirmQuit => match key.code {
                KeyCode::Char('d') | KeyCode::Char('D') => return vec![Effect::Detach],
                KeyCode::Char('a') | KeyCode::Char('A') => {
                    if !self.deploy_running() {
                        return vec![Effect::Quit];
                    }
                    self.quit_when_finished = true;
                    self.pending = Some(Pending::Aborting);
                    let reason = format!("{} quit the console during the deploy", self.operator);
                    return vec![Effect::Send(Command::Abort { reason }, CommandSource::Keyboard)];
                }
                KeyCode::Esc => {}
                _ => self.dialog = Some(Dialog::ConfirmQuit),
            },
            Dialog::Resume { target, text, session, mid_step, protected, mut input, .. } => {
                if esc {
                    return Vec::new();
                }
                let choice = match key.code {
                    KeyCode::Char('r') if mid_step && !protected => Some(Some("rerun")),
                    KeyCode::Char('s') if mid_step && !protected => Some(Some("skip")),
                    KeyCode::Char('f') if mid_step && !protected => Some(Some("fail")),
                    KeyCode::Enter if !mid_step => Some(None),
                    _ => None,
                };
                if let Some(choice) = choice {
                    return vec![Effect::Resume { target, session, choice: choice.map(str::to_string) }];
                }
                if protected {
                    // "<name>" or "<name> rerun|skip|fail", then Enter.
                    if enter {
                        let typed = input_text(&input);
                        let mut words = typed.split_whitespace();
                        let expected =
                            self.targets.get(target).map(|t| self.profiles[t.profile].environments[t.env].name.clone());
                        let (name, choice) = (words.next(), words.next());
                        let good_choice = !mid_step || matches!(choice, Some("rerun" | "skip" | "fail"));
                        if name.map(str::to_string) == expected && good_choice {
                            let choice = choice.map(str::to_string);
                            return vec![Effect::Resume { target, session, choice }];
                        }
                        self.dialog =
                            Some(Dialog::Resume { target, text, session, mid_step, protected, input, wrong: true });
                        return Vec::new();
                    }
                    input.input(key);
                }
                self.dialog = Some(Dialog::Resume { target, text, session, mid_step, protected, input, wrong: false });
            }
            Dialog::ConfirmTriage(commands) => match key.code {
                KeyCode::Char('y') | KeyCode::Char('Y') => {
                    return commands.into_iter().map(|c| Effect::Send(c, CommandSource::Keyboard)).collect();
                }
                KeyCode::Char('n') | KeyCode::Char('N') | KeyCode::Esc => {}
                _ => self.dialog = Some(Dialog::ConfirmTriage(commands)),
            },
            Dialog::TakeOver { mut input, .. } => {
                if esc {
                    return Vec::new();
                }
                if enter {
                    let expected = self.target_env().map(|e| e.name.clone()).unwrap_or_default();
                    if input_text(&input) == expected {
                        return vec![Effect::TakeOver];
                    }
                    self.dialog = Some(Dialog::TakeOver { input, wrong: true });
                    return Vec::new();
                }
                input.input(key);
                self.dialog = Some(Dialog::TakeOver { input, wrong: false });
            }
            Dialog::Release { mut input, error } => {
                if esc {
                    return Vec::new();
                }
                if enter {
                    let release = input_text(&input);
                    return self.release_chosen(release, input);
                }
                // The error stays until the input changes.
                let before = input_text(&input);
                input.input(key);
                let error = error.filter(|_| input_text(&input) == before);
                self.dialog = Some(Dialog::Release { input, error });
            }
            Dialog::ConfirmPlan { plan, release, scroll } => {
                if key.code == KeyCode::Char('D') && plan.has_templates() {
                    let effect = Effect::PlanDiff { target: self.selected_target, release: release.clone() };
                    self.dialog = Some(Dialog::ConfirmPlan { plan, release, scroll });
                    self.busy = Some("reading the template files on the hosts…".into());
                    return vec![effect];
                }
                if enter {
                    if plan.protected {
                        self.dialog = Some(Dialog::TypeName {
                            release,
                            input: text_input(&format!("type {} to confirm", plan.env)),
                            wrong: false,
                        });
                        return Vec::new();
                    }
                    return self.start(release);
                }
                if !esc {
                    self.dialog = Some(Dialog::ConfirmPlan { plan, release, scroll });
                }
            }
            Dialog::Passphrase { mut spec, mut files, mut input, .. } => {
                if esc {
                    let file = files.first().map(|f| f.display().to_string()).unwrap_or_default();
                    self.status =
                        Some(format!("nothing started: {file} stays locked (ssh-add it, or type its passphrase)"));
                    return Vec::new();
                }
                if enter && !files.is_empty() {
                    let typed = input.lines().join("\n");
                    let file = files.remove(0);
                    // Checked here, so a typo is asked again instead of failing every host.
                    if russh::keys::load_secret_key(&file, Some(&typed)).is_err() {
                        files.insert(0, file);
                        self.dialog = Some(Dialog::Passphrase { spec, files, input: passphrase_input(), wrong: true });
                        return Vec::new();
                    }
                    spec.passphrases.0.push((file, typed));
                    if files.is_empty() {
                        return vec![Effect::Launch(spec)];
                    }
                    self.dialog = Some(Dialog::Passphrase { spec, files, input: passphrase_input(), wrong: false });
                    return Vec::new();
                }
                input.input(key);
                self.dialog = Some(Dialog::Passphrase { spec, files, input, wrong: false });
            }
            Dialog::TypeName { release, mut input, .. } => {
                if esc {
                    return Vec::new();
                }
                if enter {
                    let expected = self.target_env().map(|e| e.name.clone()).unwrap_or_default();
                    if input_text(&input) == expected {
                        return self.start(release);
                    }
                    self.dialog = Some(Dialog::TypeName { release, input, wrong: true });
                    return Vec::new();
                }
                input.input(key);
                self.dialog = Some(Dialog::TypeName { release, input, wrong: false });
            }
            Dialog::ConfirmRollback { preview, protected, mut input, scroll, .. } => {
                if esc {
                    return vec![Effect::CancelRollback];
                }
                if enter {
                    let expected = self.target_env().map(|e| e.name.clone()).unwrap_or_default();
                    if protected && input_text(&input) != expected {
                        self.dialog = Some(Dialog::ConfirmRollback { preview, protected, input, wrong: true, scroll });
                        return Vec::new();
                    }
                    return vec![Effect::StartRollback];
                }
                input.input(key);
                self.dialog = Some(Dialog::ConfirmRollback { preview, protected, input, wrong: false, scroll });
            }
            Dialog::AbortReason { mut input, .. } => {
                if esc {
                    return Vec::new();
                }
                if enter {
                    let reason = input_text(&input);
                    if reason.is_empty() {
                        self.dialog = Some(Dialog::AbortReason { input, empty: true });
                        return Vec::new();
                    }
                    if !self.deploy_running() {
                        self.status = Some("the deploy has already finished".into());
                        return Vec::new();
                    }
                    return self.send(Command::Abort { reason }, Pending::Aborting);
                }
                input.input(key);
                self.dialog = Some(Dialog::AbortReason { input, empty: false });
            }
            Dialog::Filter(mut input) => {
                if esc {
                    self.filter.clear();
                    return Vec::new();
                }
                let before = self.selected_name();
                if !enter {
                    input.input(key);
                    self.dialog = Some(Dialog::Filter(input.clone()));
                }
                // Filter as the operator types.
                self.filter = input_text(&input);
                self.selected_host = 0;
                if let Some(name) = before {
                    self.select_name(&name);
                }
            }
            Dialog::Search(mut input) => {
                if esc {
                    return Vec::new();
                }
                if enter {
                    let needle = input_text(&input);
                    self.search = (!needle.is_empty()).then_some(needle);
                    self.jump_to_match(true);
                    if self.search.is_some() && self.status.is_some() {
                        // Nothing above the current position: try from the bottom.
                        self.status = None;
                        self.log_scroll = 0;
                        let len = self.log_len();
                        if let (Some(needle), Some(log)) = (&self.search, self.current_log())
                            && let Some(i) = log.find_back(needle, len.saturating_sub(1))
                        {
                            self.log_scroll = len - 1 - i;
                        } else {
                            self.status = Some("no match".into());
                        }
                    }
                    return Vec::new();
                }
                input.input(key);
                self.dialog = Some(Dialog::Search(input));
            }
        }
        Vec::new()
    }

    fn release_chosen(&mut self, release: String, input: TextArea<'static>) -> Vec<Effect> {
        let (Some(profile), Some(env)) = (self.target_profile(), self.target_env()) else {
            return Vec::new();
        };
        match Plan::build(profile, &env.name, &release, &Secrets::masked(profile)) {
            Ok(plan) => {
                self.dialog = Some(Dialog::ConfirmPlan { plan: Box::new(plan), release, scroll: 0 });
            }
            Err(e) => {
                self.dialog = Some(Dialog::Release { input, error: Some(e.to_string()) });
            }
        }
        Vec::new()
    }

    /// ↑ ↓ PgUp PgDn (and, where nothing is typed, Home End j k g G) scroll a dialog that
    /// shows text, never past its end; true when the key did that.
    fn scroll_dialog(&mut self, code: KeyCode) -> bool {
        let size = self.size;
        let Some(dialog) = self.dialog.as_mut() else { return false };
        let Some(text) = dialog.text() else { return false };
        let typing = dialog.input_mut().is_some();
        let rows = prose::wrap(&text.lines, layout::text_width(size, text.width)).len();
        let (_, shown) = layout::text_dialog(size, text.width, rows, text.pinned);
        let Some(scroll) = dialog.scroll_mut() else { return false };
        let page = shown.saturating_sub(1).max(1);
        let wanted = match code {
            KeyCode::Up => scroll.saturating_sub(1),
            KeyCode::Down => *scroll + 1,
            KeyCode::PageUp => scroll.saturating_sub(page),
            KeyCode::PageDown => *scroll + page,
            KeyCode::Char('k') if !typing => scroll.saturating_sub(1),
            KeyCode::Char('j') if !typing => *scroll + 1,
            KeyCode::Home | KeyCode::Char('g') if !typing => 0,
            KeyCode::End | KeyCode::Char('G') if !typing => rows,
            _ => return false,
        };
        *scroll = prose::clamp_scroll(wanted, rows, shown);
        true
    }

    fn start(&mut self, release: String) -> Vec<Effect> {
        let Some(target) = self.targets.get(self.selected_target) else {
            return Vec::new();
        };
        let env = self.profiles[target.profile].environments[target.env].name.clone();
        vec![Effect::StartDeploy { profile: target.profile, env, release }]
    }
}

pub(super) fn text_input(placeholder: &str) -> TextArea<'static> {
    let mut input = TextArea::default();
    input.set_placeholder_text(placeholder);
    input.set_cursor_line_style(ratatui::style::Style::default());
    input
}

/// An input whose characters show as `•`.
pub(super) fn passphrase_input() -> TextArea<'static> {
    let mut input = text_input("");
    input.set_mask_char('•');
    input
}

pub(super) fn input_text(input: &TextArea) -> String {
    input.lines().join(" ").trim().to_string()
}
