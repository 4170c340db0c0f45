//! The console's keys in one table: what each key does where, how it is named in the footer and
//! in `?` help. Key handling, the footer and the help screen all read [`BINDINGS`], so a key
//! cannot work without being documented, or be documented without working.

use crossterm::event::KeyCode;

use super::prose::{self, Ink, Prose};

/// Which screen a key applies on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Screen {
    Overview,
    /// A deploy is on screen (running or finished).
    Deploy,
}

/// What a key press means to the console.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Up,
    Down,
    /// Overview: deploy the environment. Deploy view: focus the selected host's log, or back to
    /// the hosts.
    Enter,
    Check,
    Rollback,
    Pause,
    Resume,
    Abort,
    Promote,
    Retry,
    SkipOrExclude,
    /// Skip every failed host (asks once).
    SkipAllFailed,
    NextPane,
    PreviousPane,
    FilterOrSearch,
    OlderMatch,
    NewerMatch,
    PageUp,
    PageDown,
    Top,
    Follow,
    Interleave,
    Sort,
    /// Select the next failed or unhealthy host.
    NextTrouble,
    Overview,
    /// Close what is open: the filter, the search, a pane's focus.
    Back,
    /// Take control of a deploy this console observes (typed confirmation).
    TakeOver,
    /// Carry on the selected environment's interrupted deploy.
    ResumeInterrupted,
    /// Log: wrap long lines, or cut them with a marker and scroll sideways.
    Wrap,
    ScrollLeft,
    ScrollRight,
    /// Log: show when each line came.
    Timestamps,
    /// Write the selected host's whole log (from the audit log) to a file.
    WriteLog,
    /// The log pane shows the wave's output grouped by shape across hosts, outliers first.
    Grouped,
    /// The exact command (secrets masked) of the selected host's current step.
    ShowCommand,
    /// Keep the selection on a host of the running wave as it moves on.
    FollowWave,
    Help,
    Quit,
}

impl Action {
    /// It steers the deploy (sent to the engine): off for an observer and after the end.
    pub fn steers(self) -> bool {
        matches!(
            self,
            Action::Pause
                | Action::Resume
                | Action::Abort
                | Action::Retry
                | Action::Promote
                | Action::SkipOrExclude
                | Action::SkipAllFailed
        )
    }
}

/// Help lists keys in these groups, in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
    Anywhere,
    Overview,
    Steering,
    Moving,
    Log,
}

impl Group {
    const ALL: [Group; 5] = [Group::Anywhere, Group::Overview, Group::Steering, Group::Moving, Group::Log];

    fn title(self) -> &'static str {
        match self {
            Group::Anywhere => "Anywhere",
            Group::Overview => "Overview (environments)",
            Group::Steering => "Steering a deploy",
            Group::Moving => "Moving through hosts and panes",
            Group::Log => "The log pane",
        }
    }
}

/// Which help group a key's line goes in: the overview's own keys there, others by what they do.
fn group_of(binding: &Binding) -> Group {
    if binding.screens == [Overview] {
        return Group::Overview;
    }
    match binding.action {
        Action::Up | Action::Down | Action::Back | Action::Help | Action::Quit | Action::Rollback => Group::Anywhere,
        Action::Check | Action::ResumeInterrupted => Group::Overview,
        Action::Pause
        | Action::Resume
        | Action::Abort
        | Action::Promote
        | Action::Retry
        | Action::SkipOrExclude
        | Action::SkipAllFailed
        | Action::TakeOver
        | Action::Overview => Group::Steering,
        Action::Enter
        | Action::NextPane
        | Action::PreviousPane
        | Action::FilterOrSearch
        | Action::PageUp
        | Action::PageDown
        | Action::Top
        | Action::Follow
        | Action::Sort
        | Action::NextTrouble
        | Action::FollowWave
        | Action::ShowCommand => Group::Moving,
        Action::OlderMatch
        | Action::NewerMatch
        | Action::Interleave
        | Action::Wrap
        | Action::ScrollLeft
        | Action::ScrollRight
        | Action::Timestamps
        | Action::WriteLog
        | Action::Grouped => Group::Log,
    }
}

/// Where a deploy stands, for the footer to offer the keys that apply there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Moment {
    /// The overview, with no deploy on screen.
    Idle,
    Running,
    Paused,
    /// Waiting at a manual gate.
    AtGate,
    Finished,
    /// Watching a deploy another client controls: control keys are off.
    Observing,
}

use Moment::{AtGate, Finished, Idle, Observing, Paused, Running};

/// When a binding shows in the footer: at these moments.
pub type Footer = &'static [Moment];
const NEVER: Footer = &[];
const ALWAYS: Footer = &[Idle, Running, Paused, AtGate, Finished, Observing];
const IN_FLIGHT: Footer = &[Running, Paused, AtGate];
/// A pause offers its own keys (resume, retry, skip) and gives up the room of the others.
const NOT_PAUSED: Footer = &[Idle, Running, AtGate, Finished, Observing];

pub struct Binding {
    pub keys: &'static [KeyCode],
    /// How help names the keys; empty when an earlier entry's line covers this one too.
    pub label: &'static str,
    pub does: &'static str,
    pub screens: &'static [Screen],
    pub action: Action,
    /// The footer's short word for it, and at which moments it shows.
    pub footer: (&'static str, Footer),
}

use Screen::{Deploy, Overview};

const BOTH: &[Screen] = &[Overview, Deploy];

/// Every key, in the order help lists them.
pub const BINDINGS: &[Binding] = &[
    Binding {
        keys: &[KeyCode::Up, KeyCode::Char('k')],
        label: "↑ ↓  j k",
        does: "choose environment or host; scroll the focused pane",
        screens: BOTH,
        action: Action::Up,
        footer: ("↑↓ choose", NEVER),
    },
    Binding {
        keys: &[KeyCode::Down, KeyCode::Char('j')],
        label: "",
        does: "",
        screens: BOTH,
        action: Action::Down,
        footer: ("", NEVER),
    },
    Binding {
        keys: &[KeyCode::Enter, KeyCode::Char('d')],
        label: "Enter",
        does: "deploy the environment",
        screens: &[Overview],
        action: Action::Enter,
        footer: ("Enter deploy", ALWAYS),
    },
    Binding {
        keys: &[KeyCode::Enter],
        label: "Enter",
        does: "the selected host's log, or back to hosts · a timeline entry in full",
        screens: &[Deploy],
        action: Action::Enter,
        footer: ("", NEVER),
    },
    Binding {
        keys: &[KeyCode::Char('c')],
        label: "c",
        does: "check every host (reachable, key, auth, disk)",
        screens: &[Overview],
        action: Action::Check,
        footer: ("c check hosts", ALWAYS),
    },
    Binding {
        keys: &[KeyCode::Char('p')],
        label: "p  r",
        does: "pause (running steps finish) · resume where it stopped",
        screens: &[Deploy],
        action: Action::Pause,
        footer: ("p pause", &[Running]),
    },
    Binding {
        keys: &[KeyCode::Char('r')],
        label: "",
        does: "",
        screens: &[Deploy],
        action: Action::Resume,
        footer: ("r resume", &[Paused]),
    },
    Binding {
        keys: &[KeyCode::Char('a')],
        label: "a",
        does: "abort, with a reason: running steps are killed",
        screens: &[Deploy],
        action: Action::Abort,
        footer: ("a abort", IN_FLIGHT),
    },
    Binding {
        keys: &[KeyCode::Char('P')],
        label: "P",
        does: "promote the next wave past a manual gate",
        screens: &[Deploy],
        action: Action::Promote,
        footer: ("P promote", &[AtGate]),
    },
    Binding {
        keys: &[KeyCode::Char('R')],
        label: "R  x",
        does: "retry a failed host · skip it, or exclude a waiting one",
        screens: &[Deploy],
        action: Action::Retry,
        footer: ("R retry", &[Paused]),
    },
    Binding {
        keys: &[KeyCode::Char('x')],
        label: "",
        does: "",
        screens: &[Deploy],
        action: Action::SkipOrExclude,
        footer: ("x skip", &[Paused]),
    },
    Binding {
        keys: &[KeyCode::Char('u')],
        label: "u",
        does: "resume an interrupted deploy (its runner died)",
        screens: &[Overview],
        action: Action::ResumeInterrupted,
        footer: ("", NEVER),
    },
    Binding {
        keys: &[KeyCode::Char('T')],
        label: "T",
        does: "take control of a deploy you only observe",
        screens: &[Deploy],
        action: Action::TakeOver,
        footer: ("T take over", &[Observing]),
    },
    Binding {
        keys: &[KeyCode::Char('X')],
        label: "X",
        does: "skip every failed host in one go (asks once, listing them)",
        screens: &[Deploy],
        action: Action::SkipAllFailed,
        footer: ("", NEVER),
    },
    Binding {
        keys: &[KeyCode::Char('f')],
        label: "f",
        does: "select the next failed or unhealthy host",
        screens: &[Deploy],
        action: Action::NextTrouble,
        footer: ("", NEVER),
    },
    Binding {
        keys: &[KeyCode::Char('F')],
        label: "F",
        does: "follow the running wave: the selection moves on with it (again: off)",
        screens: &[Deploy],
        action: Action::FollowWave,
        footer: ("", NEVER),
    },
    Binding {
        keys: &[KeyCode::Char('c')],
        label: "c",
        does: "the exact command of the selected host's step (secrets masked)",
        screens: &[Deploy],
        action: Action::ShowCommand,
        footer: ("", NEVER),
    },
    Binding {
        keys: &[KeyCode::Char('o')],
        label: "o",
        does: "back to the overview after a deploy",
        screens: &[Deploy],
        action: Action::Overview,
        footer: ("o overview", &[Finished]),
    },
    Binding {
        keys: &[KeyCode::Char('B')],
        label: "B",
        does: "roll back the last deploy (shows targets first)",
        screens: BOTH,
        action: Action::Rollback,
        footer: ("B roll back", &[Idle, Finished]),
    },
    Binding {
        keys: &[KeyCode::Tab],
        label: "Tab  Shift-Tab",
        does: "next / previous pane: hosts, log, health, timeline",
        screens: &[Deploy],
        action: Action::NextPane,
        footer: ("Tab pane", ALWAYS),
    },
    Binding {
        keys: &[KeyCode::BackTab],
        label: "",
        does: "",
        screens: &[Deploy],
        action: Action::PreviousPane,
        footer: ("", NEVER),
    },
    Binding {
        keys: &[KeyCode::Char('/')],
        label: "/",
        does: "filter hosts · in the log pane: search the log",
        screens: &[Deploy],
        action: Action::FilterOrSearch,
        footer: ("/ filter", NOT_PAUSED),
    },
    Binding {
        keys: &[KeyCode::Char('n')],
        label: "n  N",
        does: "older / newer search match",
        screens: &[Deploy],
        action: Action::OlderMatch,
        footer: ("", NEVER),
    },
    Binding {
        keys: &[KeyCode::Char('N')],
        label: "",
        does: "",
        screens: &[Deploy],
        action: Action::NewerMatch,
        footer: ("", NEVER),
    },
    Binding {
        keys: &[KeyCode::PageUp],
        label: "PgUp  PgDn",
        does: "a page of hosts · in the log: scroll (stops following)",
        screens: &[Deploy],
        action: Action::PageUp,
        footer: ("", NEVER),
    },
    Binding {
        keys: &[KeyCode::PageDown],
        label: "",
        does: "",
        screens: &[Deploy],
        action: Action::PageDown,
        footer: ("", NEVER),
    },
    Binding {
        keys: &[KeyCode::Home, KeyCode::Char('g')],
        label: "Home End g G",
        does: "first / last host · in the log: its top / follow the tail",
        screens: &[Deploy],
        action: Action::Top,
        footer: ("", NEVER),
    },
    Binding {
        keys: &[KeyCode::End, KeyCode::Char('G')],
        label: "",
        does: "",
        screens: &[Deploy],
        action: Action::Follow,
        footer: ("", NEVER),
    },
    Binding {
        keys: &[KeyCode::Char('i')],
        label: "i  s",
        does: "all hosts' output interleaved · sort: plan, problems, name",
        screens: &[Deploy],
        action: Action::Interleave,
        footer: ("i all", NOT_PAUSED),
    },
    Binding {
        keys: &[KeyCode::Char('s')],
        label: "",
        does: "",
        screens: &[Deploy],
        action: Action::Sort,
        footer: ("", NEVER),
    },
    Binding {
        keys: &[KeyCode::Char('w')],
        label: "w  ← →",
        does: "wrap long lines, or cut them (marked …) and scroll sideways",
        screens: &[Deploy],
        action: Action::Wrap,
        footer: ("", NEVER),
    },
    Binding {
        keys: &[KeyCode::Left],
        label: "",
        does: "",
        screens: &[Deploy],
        action: Action::ScrollLeft,
        footer: ("", NEVER),
    },
    Binding {
        keys: &[KeyCode::Right],
        label: "",
        does: "",
        screens: &[Deploy],
        action: Action::ScrollRight,
        footer: ("", NEVER),
    },
    Binding {
        keys: &[KeyCode::Char('t')],
        label: "t",
        does: "show when each line came (again: hide)",
        screens: &[Deploy],
        action: Action::Timestamps,
        footer: ("", NEVER),
    },
    Binding {
        keys: &[KeyCode::Char('W')],
        label: "W",
        does: "write the selected host's whole log to a file (from the audit log)",
        screens: &[Deploy],
        action: Action::WriteLog,
        footer: ("", NEVER),
    },
    Binding {
        keys: &[KeyCode::Char('O')],
        label: "O",
        does: "output grouped across a wave's hosts, odd ones first · Enter: who printed it · ← → waves",
        screens: &[Deploy],
        action: Action::Grouped,
        footer: ("O groups", &[Running, Observing]),
    },
    Binding {
        keys: &[KeyCode::Esc],
        label: "Esc",
        does: "close a dialog · clear filter or search · stop a plan",
        screens: BOTH,
        action: Action::Back,
        footer: ("", NEVER),
    },
    Binding {
        keys: &[KeyCode::Char('?')],
        label: "?",
        does: "this help",
        screens: BOTH,
        action: Action::Help,
        footer: ("? help", ALWAYS),
    },
    Binding {
        keys: &[KeyCode::Char('q')],
        label: "q  Ctrl-C",
        does: "quit; mid-deploy it asks: detach (it goes on) or abort",
        screens: BOTH,
        action: Action::Quit,
        footer: ("q quit", ALWAYS),
    },
];

/// What `code` means on `screen`, if anything.
pub fn action(screen: Screen, code: KeyCode) -> Option<Action> {
    BINDINGS.iter().find(|b| b.screens.contains(&screen) && b.keys.contains(&code)).map(|b| b.action)
}

/// Help's lines: each key (or pair of keys) and what it does.
pub fn help() -> impl Iterator<Item = (&'static str, &'static str)> {
    BINDINGS.iter().filter(|b| !b.label.is_empty()).map(|b| (b.label, b.does))
}

/// Help as shown: keys grouped by where they apply, then what every dialog takes.
pub fn help_prose() -> Vec<Prose> {
    let mut lines = Vec::new();
    for g in Group::ALL {
        lines.push(prose::line(Ink::Heading, format!(" {}", g.title())));
        for b in BINDINGS.iter().filter(|b| !b.label.is_empty() && group_of(b) == g) {
            lines.push(vec![(Ink::Accent, format!("   {:<15}", b.label)), (Ink::Text, b.does.to_string())]);
        }
    }
    lines.push(prose::line(Ink::Heading, " In dialogs"));
    for (keys, does) in [
        ("Enter  Esc", "confirm · cancel (nothing is done)"),
        ("y", "yes, where a dialog asks a yes or no"),
        ("Ctrl-U", "empty the input"),
        ("↑ ↓ PgUp PgDn", "scroll a long dialog (a plan, this help)"),
        ("mouse", "click selects a host · wheel scrolls the log"),
    ] {
        lines.push(vec![(Ink::Accent, format!("   {keys:<15}")), (Ink::Text, does.to_string())]);
    }
    lines.push(prose::line(Ink::Text, ""));
    lines.push(prose::line(Ink::Muted, " Every pause, resume, abort and quit is in the audit log."));
    lines
}

/// The footer's key hints for `screen` at `moment`, e.g. "r resume · a abort · … · q quit".
pub fn footer(screen: Screen, moment: Moment) -> String {
    let mut words: Vec<&str> = Vec::new();
    if screen == Overview {
        words.push("↑↓ environment");
    }
    words.extend(
        BINDINGS
            .iter()
            .filter(|b| b.screens.contains(&screen) && b.footer.1.contains(&moment) && !b.footer.0.is_empty())
            .map(|b| b.footer.0),
    );
    words.join(" · ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_key_means_two_things_on_one_screen() {
        for screen in [Overview, Deploy] {
            let mut seen: Vec<KeyCode> = Vec::new();
            for b in BINDINGS.iter().filter(|b| b.screens.contains(&screen)) {
                for key in b.keys {
                    assert!(!seen.contains(key), "{key:?} is bound twice on {screen:?}");
                    seen.push(*key);
                }
            }
        }
    }

    #[test]
    fn footers_come_from_the_table() {
        assert_eq!(
            footer(Deploy, Running),
            "p pause · a abort · Tab pane · / filter · i all · O groups · ? help · q quit"
        );
        assert_eq!(footer(Deploy, Paused), "r resume · a abort · R retry · x skip · Tab pane · ? help · q quit");
        assert_eq!(footer(Deploy, AtGate), "a abort · P promote · Tab pane · / filter · i all · ? help · q quit");
        assert_eq!(
            footer(Deploy, Finished),
            "o overview · B roll back · Tab pane · / filter · i all · ? help · q quit"
        );
        assert_eq!(
            footer(Overview, Idle),
            "↑↓ environment · Enter deploy · c check hosts · B roll back · ? help · q quit"
        );
        assert_eq!(footer(Deploy, Observing), "T take over · Tab pane · / filter · i all · O groups · ? help · q quit");
        assert_eq!(action(Deploy, KeyCode::BackTab), Some(Action::PreviousPane));
        assert_eq!(action(Overview, KeyCode::Char('p')), None);
    }
}
