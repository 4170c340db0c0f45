//! Every console screen drawn on ratatui's TestBackend at 80×24 and 160×48, compared with
//! stored snapshots (`tests/snapshots/`). Time is fixed and events are synthetic, so the
//! screens are stable; review changes with `INSTA_UPDATE=always cargo test` and `git diff`.
#![allow(clippy::unwrap_used)] // Tests panic on unexpected errors by design.

use std::path::Path;

use chrono::{DateTime, FixedOffset, Utc};
use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::Terminal;
use ratatui::backend::TestBackend;
use ratatui::layout::Rect;
use wavedeck::console::app::App;
use wavedeck::console::theme::Theme;
use wavedeck::console::view::{self, Clock};
use wavedeck::event::{
    Command, Event, HostState, HostSummary, Outcome, PauseCause, Stamped, StepResult, Stream, WaveOutline,
};
use wavedeck::plan::StepKind;
use wavedeck::profile::Profile;

const SIZES: [(u16, u16); 2] = [(80, 24), (160, 48)];

fn t(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
}

fn demo() -> Profile {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/profiles/demo.toml");
    Profile::parse(Path::new("profiles/demo.toml"), &std::fs::read_to_string(path).unwrap()).unwrap()
}

fn app() -> App {
    App::new(vec![demo()], "ann", 1000)
}

fn key(app: &mut App, code: KeyCode) {
    app.on_key(KeyEvent::new(code, KeyModifiers::NONE));
}

fn typed(app: &mut App, text: &str) {
    for c in text.chars() {
        key(app, KeyCode::Char(c));
    }
}

fn render(app: &mut App, width: u16, height: u16, now: i64) -> String {
    app.size = Rect::new(0, 0, width, height);
    let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
    let clock = Clock { now: t(now), offset: FixedOffset::east_opt(0).unwrap() };
    terminal.draw(|f| view::draw(f, app, &Theme::dark(), clock)).unwrap();
    terminal.backend().to_string()
}

fn snapshot(name: &str, app: &mut App, now: i64) {
    for (w, h) in SIZES {
        let screen = render(app, w, h, now);
        insta::assert_snapshot!(format!("{name}_{w}x{h}"), screen);
    }
}

/// Replays a staging deploy up to a point: wave 1 done, wave 2 running with stg-web-4 failing.
fn feed(app: &mut App, events: Vec<(i64, Event)>) {
    for (secs, event) in events {
        app.on_event(&Stamped { at: t(secs), event });
    }
}

fn step(wave: usize, host: &str, name: &str, index: usize, attempt: u32) -> Event {
    Event::StepStarted {
        wave,
        host: host.into(),
        step: name.into(),
        kind: if name == "healthz" { StepKind::Health } else { StepKind::Command },
        index,
        total: 5,
        attempt,
        command: format!("run {name}"),
    }
}

fn finished(wave: usize, host: &str, name: &str, index: usize, code: i32, will_retry: bool) -> Event {
    Event::StepFinished {
        wave,
        host: host.into(),
        step: name.into(),
        index,
        attempt: 1,
        result: StepResult::Exited { code },
        duration_ms: 300,
        will_retry,
    }
}

fn out(host: &str, stream: Stream, line: &str) -> Event {
    Event::Output { host: host.into(), step: "s".into(), stream, line: line.into() }
}

fn staging_in_flight() -> App {
    let mut app = app();
    key(&mut app, KeyCode::Down);
    app.begin_deploy();
    let steps = ["stage", "switch", "restart", "healthz", "prune"];
    let mut events = vec![
        (
            0,
            Event::DeployStarted {
                outlier_percent: wavedeck::profile::DEFAULT_OUTLIER_PERCENT,
                service: "shopfront".into(),
                env: "staging".into(),
                release: "2.4.1".into(),
                waves: vec![
                    WaveOutline { wave: 1, hosts: vec!["stg-web-1".into()], max_failures: 0 },
                    WaveOutline {
                        wave: 2,
                        hosts: vec!["stg-web-2".into(), "stg-web-3".into(), "stg-web-4".into()],
                        max_failures: 0,
                    },
                    WaveOutline { wave: 3, hosts: vec!["stg-worker-1".into(), "stg-worker-2".into()], max_failures: 0 },
                ],
                steps: steps.iter().map(|s| s.to_string()).collect(),
            },
        ),
        (0, Event::WaveStarted { wave: 1, hosts: vec!["stg-web-1".into()] }),
        (0, Event::HostStarted { wave: 1, host: "stg-web-1".into() }),
    ];
    for (i, s) in steps.iter().enumerate() {
        events.push((i as i64, step(1, "stg-web-1", s, i + 1, 1)));
        events.push((i as i64, out("stg-web-1", Stream::Stdout, &format!("\u{1b}[32m{s}\u{1b}[0m ok on stg-web-1"))));
        if *s == "healthz" {
            events.push((
                i as i64,
                Event::HealthSample { host: "stg-web-1".into(), check: "healthz".into(), healthy: true, latency_ms: 4 },
            ));
        }
        events.push((i as i64, finished(1, "stg-web-1", s, i + 1, 0, false)));
    }
    events.push((5, Event::HostFinished { wave: 1, host: "stg-web-1".into(), state: HostState::Done }));
    events.push((5, Event::WaveFinished { wave: 1, done: 1, failed: 0, cancelled: 0, not_started: 0 }));
    events.push((
        6,
        Event::WaveStarted { wave: 2, hosts: vec!["stg-web-2".into(), "stg-web-3".into(), "stg-web-4".into()] },
    ));
    for host in ["stg-web-2", "stg-web-3", "stg-web-4"] {
        events.push((6, Event::HostStarted { wave: 2, host: host.into() }));
        events.push((6, step(2, host, "stage", 1, 1)));
        events.push((7, out(host, Stream::Stdout, "  fetched app.bin")));
    }
    events.push((8, step(2, "stg-web-4", "healthz", 4, 1)));
    events.push((8, out("stg-web-4", Stream::Stderr, "GET /healthz -> 503 Service Unavailable")));
    events.push((
        8,
        Event::HealthSample { host: "stg-web-4".into(), check: "healthz".into(), healthy: false, latency_ms: 12 },
    ));
    events.push((8, finished(2, "stg-web-4", "healthz", 4, 1, true)));
    feed(&mut app, events);
    app
}

fn threshold_paused() -> App {
    let mut app = staging_in_flight();
    feed(
        &mut app,
        vec![
            (9, finished(2, "stg-web-4", "healthz", 4, 1, false)),
            (9, Event::HostFinished { wave: 2, host: "stg-web-4".into(), state: HostState::Failed }),
            (
                9,
                Event::ThresholdExceeded {
                    wave: 2,
                    failures: 1,
                    limit: 0,
                    failed_hosts: vec!["stg-web-4".into()],
                    action: wavedeck::profile::FailureAction::Pause,
                },
            ),
            (
                9,
                Event::Paused {
                    cause: PauseCause::FailureThreshold { wave: 2, failures: 1, limit: 0 },
                    running: vec!["stg-web-2: stage".into(), "stg-web-3: stage".into()],
                },
            ),
        ],
    );
    app
}

#[test]
fn overview() {
    let mut app = app();
    snapshot("overview", &mut app, 0);
    key(&mut app, KeyCode::Down);
    key(&mut app, KeyCode::Down);
    snapshot("overview_protected", &mut app, 0);
    // The environment's last deploy: who, when, how it ended and why.
    let run = wavedeck::rollback::LastRun {
        operator: "bob".into(),
        at: "2027-01-15T05:00:00Z".into(),
        release: "2.4.0".into(),
        outcome: Some("aborted".into()),
        reason: Some("stg-web-4 db pool exhausted".into()),
    };
    app.last_runs.insert(app.selected_target, run);
    let screen = render(&mut app, 160, 48, 0);
    assert!(screen.contains("last: 2.4.0 by bob, 3h 0m ago · ABORTED: stg-web-4 db pool exhausted"), "{screen}");
    snapshot("overview_last_deploy", &mut app, 0);
}

#[test]
fn start_dialogs() {
    let mut app = app();
    key(&mut app, KeyCode::Down);
    key(&mut app, KeyCode::Down);
    key(&mut app, KeyCode::Enter);
    typed(&mut app, "2.4.1");
    snapshot("dialog_release", &mut app, 0);
    key(&mut app, KeyCode::Enter);
    snapshot("dialog_confirm_plan", &mut app, 0);
    key(&mut app, KeyCode::Enter);
    typed(&mut app, "prod");
    key(&mut app, KeyCode::Enter);
    snapshot("dialog_type_name_wrong", &mut app, 0);
}

#[test]
fn deploy_running() {
    let mut app = staging_in_flight();
    snapshot("deploy_running", &mut app, 9);
    key(&mut app, KeyCode::Char('p'));
    snapshot("deploy_pausing", &mut app, 9);
}

#[test]
fn deploy_paused_by_threshold() {
    let mut app = threshold_paused();
    snapshot("deploy_paused_threshold", &mut app, 10);
    // The failed host's log, and the panes a small terminal shows in turn.
    key(&mut app, KeyCode::Char('s'));
    snapshot("deploy_paused_problems_first", &mut app, 10);
    key(&mut app, KeyCode::Tab);
    key(&mut app, KeyCode::Tab);
    snapshot("deploy_health_pane", &mut app, 10);
    key(&mut app, KeyCode::Tab);
    snapshot("deploy_timeline_pane", &mut app, 10);
}

#[test]
fn paused_hosts_whose_steps_end_show_as_held_with_nothing_running() {
    let mut app = threshold_paused();
    feed(
        &mut app,
        vec![
            (10, finished(2, "stg-web-2", "stage", 1, 0, false)),
            (10, finished(2, "stg-web-3", "stage", 1, 0, false)),
        ],
    );
    // Rendered 20 s later: the held hosts' clocks stand at 00:04 (6 s start, 10 s held).
    snapshot("deploy_paused_steps_ended", &mut app, 30);
}

#[test]
fn interleaved_log_and_filter() {
    let mut app = staging_in_flight();
    key(&mut app, KeyCode::Char('i'));
    snapshot("deploy_interleaved", &mut app, 9);
    key(&mut app, KeyCode::Char('/'));
    typed(&mut app, "web-4");
    key(&mut app, KeyCode::Enter);
    snapshot("deploy_filtered", &mut app, 9);
}

#[test]
fn abort_and_quit_dialogs() {
    let mut app = staging_in_flight();
    key(&mut app, KeyCode::Char('a'));
    typed(&mut app, "db on fire");
    snapshot("dialog_abort_reason", &mut app, 9);
    key(&mut app, KeyCode::Esc);
    key(&mut app, KeyCode::Char('q'));
    snapshot("dialog_confirm_quit", &mut app, 9);
    key(&mut app, KeyCode::Esc);
    key(&mut app, KeyCode::Char('?'));
    snapshot("help", &mut app, 9);
    key(&mut app, KeyCode::Esc);
    // x on a host asks once more, by name.
    key(&mut app, KeyCode::Char('x'));
    snapshot("dialog_confirm_exclude", &mut app, 9);
}

#[test]
fn aborted_then_finished() {
    let mut app = threshold_paused();
    app.on_key(KeyEvent::new(KeyCode::Char('a'), KeyModifiers::NONE));
    typed(&mut app, "stg-web-4 db pool");
    key(&mut app, KeyCode::Enter);
    feed(
        &mut app,
        vec![(11, Event::Aborted { reason: "stg-web-4 db pool".into(), by: wavedeck::event::AbortedBy::Command })],
    );
    snapshot("deploy_aborting", &mut app, 11);
    let summary = |host: &str, wave, state| HostSummary {
        host: String::from(host),
        wave,
        state,
        steps_done: 0,
        steps_total: 5,
        stopped_at: None,
        last_result: None,
    };
    feed(
        &mut app,
        vec![
            (12, Event::HostFinished { wave: 2, host: "stg-web-2".into(), state: HostState::Cancelled }),
            (12, Event::HostFinished { wave: 2, host: "stg-web-3".into(), state: HostState::Cancelled }),
            (
                12,
                Event::DeployFinished {
                    outcome: Outcome::Aborted,
                    duration_ms: 12_000,
                    hosts: vec![
                        summary("stg-worker-1", 3, HostState::NotStarted),
                        summary("stg-worker-2", 3, HostState::NotStarted),
                    ],
                },
            ),
        ],
    );
    snapshot("deploy_aborted", &mut app, 30);
    let ignored = Event::CommandIgnored { command: Command::Resume, why: "the deploy was aborted".into() };
    feed(&mut app, vec![(13, ignored)]);
}

#[test]
fn too_small() {
    let mut app = app();
    insta::assert_snapshot!("too_small_60x20", render(&mut app, 60, 20, 0));
}

#[test]
fn long_host_names_give_way_in_the_middle_and_stay_distinct() {
    let names = ["prod-eu-west-1-payments-settlement-worker-4", "prod-eu-west-1-payments-settlement-worker-5", "api-1"];
    let hosts: Vec<String> = names.iter().map(|n| format!("{{ name = \"{n}\" }}")).collect();
    let profile = Profile::parse(
        Path::new("long.toml"),
        &format!(
            "[service]\nname = \"pay\"\n[[environments]]\nname = \"prod\"\nhosts = [{}]\n[[steps]]\nname = \"run\"\nrun = \"true\"\n",
            hosts.join(", ")
        ),
    )
    .unwrap();
    let mut app = App::new(vec![profile], "ann", 100);
    app.begin_deploy();
    feed(
        &mut app,
        vec![(
            0,
            Event::DeployStarted {
                outlier_percent: wavedeck::profile::DEFAULT_OUTLIER_PERCENT,
                service: "pay".into(),
                env: "prod".into(),
                release: "1".into(),
                waves: vec![WaveOutline {
                    wave: 1,
                    hosts: names.iter().map(|n| n.to_string()).collect(),
                    max_failures: 0,
                }],
                steps: vec!["run".into()],
            },
        )],
    );
    let narrow = render(&mut app, 80, 24, 1);
    let row = |name_end: &str| {
        narrow.lines().find(|l| l.contains(name_end)).unwrap_or_else(|| panic!("{narrow}")).to_string()
    };
    // Cut in the middle: both workers keep their distinguishing end.
    assert!(row("worker-4").contains('…') && row("worker-5").contains('…'), "{narrow}");
    snapshot("deploy_long_host_names", &mut app, 1);
}

#[test]
fn a_soak_counts_down_instead_of_looking_like_a_hang() {
    let mut app = staging_in_flight();
    feed(&mut app, vec![(6, Event::SoakStarted { wave: 1, duration_ms: 120_000 })]);
    let screen = render(&mut app, 160, 48, 48);
    assert!(screen.contains("soak of wave 1: 00:42 / 02:00"), "{screen}");
    snapshot("deploy_soaking", &mut app, 48);
    feed(&mut app, vec![(126, Event::SoakFinished { wave: 1, unhealthy: vec![] })]);
    assert!(!render(&mut app, 160, 48, 130).contains("soak of wave"));
}

/// A profile of `count` hosts named `prod-web-NNN`, for the big-fleet screens.
fn fleet(count: usize) -> Profile {
    let hosts: Vec<String> = (1..=count).map(|i| format!("{{ name = \"prod-web-{i:03}\" }}")).collect();
    let text = format!(
        "[service]\nname = \"shop\"\n[[environments]]\nname = \"prod\"\nhosts = [{}]\n\
         plan = {{ canary = 1, batch = \"5%\" }}\n[[steps]]\nname = \"run\"\nrun = \"true\"\n",
        hosts.join(", ")
    );
    Profile::parse(Path::new("fleet.toml"), &text).unwrap()
}

fn started(service: &str, env: &str, release: &str, waves: Vec<Vec<String>>) -> Event {
    Event::DeployStarted {
        outlier_percent: wavedeck::profile::DEFAULT_OUTLIER_PERCENT,
        service: service.into(),
        env: env.into(),
        release: release.into(),
        waves: waves
            .into_iter()
            .enumerate()
            .map(|(i, hosts)| WaveOutline { wave: i + 1, hosts, max_failures: 0 })
            .collect(),
        steps: vec!["run".into()],
    }
}

#[test]
fn the_plan_of_300_hosts_scrolls_and_keeps_its_keys_in_sight() {
    let mut app = App::new(vec![fleet(300)], "ann", 100);
    key(&mut app, KeyCode::Enter);
    typed(&mut app, "2.5.0");
    key(&mut app, KeyCode::Enter);
    let screen = render(&mut app, 80, 24, 0);
    assert!(screen.contains("Enter start · Esc cancel") && screen.contains("of "), "{screen}");
    snapshot("dialog_confirm_plan_300_hosts", &mut app, 0);
    render(&mut app, 80, 24, 0);
    key(&mut app, KeyCode::End);
    let end = render(&mut app, 80, 24, 0);
    assert!(end.contains("steps: run") && end.contains("Enter start · Esc cancel"), "the last page: {end}");
    insta::assert_snapshot!("dialog_confirm_plan_300_hosts_end_80x24", end);
}

#[test]
fn a_fleet_of_21_waves_shows_a_window_of_them_and_one_overall_bar() {
    let mut app = App::new(vec![fleet(300)], "ann", 100);
    app.begin_deploy();
    let names: Vec<String> = (1..=300).map(|i| format!("prod-web-{i:03}")).collect();
    let mut waves = vec![names[..1].to_vec()];
    waves.extend(names[1..].chunks(15).map(<[String]>::to_vec));
    assert_eq!(waves.len(), 21);
    let mut events = vec![(0, started("shop", "prod", "2.5.0", waves.clone()))];
    // Waves 1 to 6 done in 10 s each; wave 7 running for 4 s.
    for (i, hosts) in waves.iter().enumerate().take(7) {
        let (wave, at) = (i + 1, i as i64 * 10);
        events.push((at, Event::WaveStarted { wave, hosts: hosts.clone() }));
        for host in hosts {
            events.push((at, Event::HostStarted { wave, host: host.clone() }));
            if wave < 7 {
                events.push((at + 9, Event::HostFinished { wave, host: host.clone(), state: HostState::Done }));
            }
        }
        if wave < 7 {
            let done = hosts.len();
            events.push((at + 9, Event::WaveFinished { wave, done, failed: 0, cancelled: 0, not_started: 0 }));
        }
    }
    feed(&mut app, events);
    let narrow = render(&mut app, 80, 24, 64);
    let strip = narrow.lines().nth(1).unwrap();
    assert!(strip.contains("▶ W7") && strip.contains("more ›") && strip.contains("76/300"), "{strip}");
    let wide = render(&mut app, 160, 48, 64);
    assert!(wide.contains("W7 00:04 · ETA ~"), "time in the wave and a guess at the rest: {wide}");
    snapshot("deploy_21_waves", &mut app, 64);
}

#[test]
fn a_soak_failure_names_the_host_and_what_its_check_said() {
    let mut app = staging_in_flight();
    let unhealthy = Event::HealthChanged {
        host: "stg-web-1".into(),
        check: "healthz".into(),
        healthy: false,
        why: Some("500 memory leak (3.9 GiB RSS)".into()),
    };
    feed(
        &mut app,
        vec![
            (6, Event::SoakStarted { wave: 1, duration_ms: 120_000 }),
            (20, unhealthy),
            (
                20,
                Event::Paused {
                    cause: PauseCause::FailureThreshold { wave: 1, failures: 1, limit: 0 },
                    running: vec![],
                },
            ),
        ],
    );
    let screen = render(&mut app, 160, 48, 42);
    assert!(
        screen.contains(
            "PAUSED 00:22 · wave 1 stopped, 1 > 0 allowed: stg-web-1 went unhealthy during soak (healthz: 500 memory leak (3.9 GiB RSS))"
        ),
        "{screen}"
    );
    snapshot("deploy_paused_soak_failure", &mut app, 42);
}

#[test]
fn a_rollback_looks_like_one() {
    let mut app = app();
    app.begin_deploy();
    let waves = vec![vec!["dev-web-2".to_string()], vec!["dev-web-1".to_string()]];
    feed(
        &mut app,
        vec![
            (0, started("shopfront", "dev", "rollback-of-2.4.2", waves)),
            (0, Event::WaveStarted { wave: 1, hosts: vec!["dev-web-2".into()] }),
        ],
    );
    let screen = render(&mut app, 80, 24, 3);
    assert!(screen.contains("ROLLBACK of 2.4.2 → previous") && screen.contains("rollback wave 1/2"), "{screen}");
    snapshot("deploy_rollback", &mut app, 3);
}

#[test]
fn a_gate_counts_how_long_it_has_waited() {
    let mut app = staging_in_flight();
    feed(&mut app, vec![(10, Event::AwaitingPromote { wave: 2 })]);
    let screen = render(&mut app, 160, 48, 75);
    assert!(screen.contains("WAITING FOR PROMOTE 01:05"), "{screen}");
}

#[test]
fn a_terminal_too_small_still_says_how_the_deploy_stands_and_how_to_stop_it() {
    let mut app = staging_in_flight();
    let screen = render(&mut app, 60, 20, 9);
    assert!(screen.contains("RUNNING") && screen.contains("p pause · a abort · q quit"), "{screen}");
    insta::assert_snapshot!("too_small_deploy_60x20", screen);
}

#[test]
fn long_log_lines_wrap_or_are_cut_visibly_and_times_show_on_a_key() {
    let mut app = staging_in_flight();
    let long = format!("BEGIN {} END", "0123456789".repeat(20));
    feed(&mut app, vec![(9, out("stg-web-1", Stream::Stdout, &long))]);
    let wrapped = render(&mut app, 80, 24, 9);
    assert!(wrapped.contains("BEGIN") && wrapped.contains("END"), "wrapped, nothing is lost: {wrapped}");
    snapshot("deploy_log_wrapped", &mut app, 9);
    key(&mut app, KeyCode::Char('w'));
    key(&mut app, KeyCode::Char('t'));
    let cut = render(&mut app, 80, 24, 9);
    assert!(cut.contains("BEGIN") && !cut.contains("END") && cut.contains("…"), "cut, and marked: {cut}");
    assert!(cut.contains("08:00:09 "), "times shown: {cut}");
    snapshot("deploy_log_cut_with_times", &mut app, 9);
}

#[test]
fn c_shows_the_selected_hosts_command() {
    let mut app = staging_in_flight();
    key(&mut app, KeyCode::Char('c'));
    let screen = render(&mut app, 80, 24, 9);
    assert!(screen.contains("Command — stg-web-1") && screen.contains("run prune"), "{screen}");
    snapshot("dialog_command", &mut app, 9);
}

#[test]
fn a_replay_shows_the_deploy_as_it_stood_with_a_replay_banner_and_no_control_keys() {
    use wavedeck::console::replay::{Playback, Recording};
    // A short staging deploy up to its threshold pause, as recorded.
    let mut events: Vec<Stamped> = Vec::new();
    let mut app = app();
    let recorder = |events: &mut Vec<Stamped>, list: Vec<(i64, Event)>| {
        events.extend(list.into_iter().map(|(s, event)| Stamped { at: t(s), event }));
    };
    recorder(
        &mut events,
        vec![(
            0,
            Event::DeployStarted {
                outlier_percent: wavedeck::profile::DEFAULT_OUTLIER_PERCENT,
                service: "shopfront".into(),
                env: "staging".into(),
                release: "2.4.1".into(),
                waves: vec![
                    WaveOutline { wave: 1, hosts: vec!["stg-web-1".into()], max_failures: 0 },
                    WaveOutline { wave: 2, hosts: vec!["stg-web-4".into()], max_failures: 0 },
                ],
                steps: vec!["stage".into(), "healthz".into()],
            },
        )],
    );
    recorder(
        &mut events,
        vec![
            (1, Event::WaveStarted { wave: 1, hosts: vec!["stg-web-1".into()] }),
            (1, Event::HostStarted { wave: 1, host: "stg-web-1".into() }),
            (2, step(1, "stg-web-1", "stage", 1, 1)),
            (3, out("stg-web-1", Stream::Stdout, "staged")),
            (30, finished(1, "stg-web-1", "stage", 1, 0, false)),
            (31, Event::HostFinished { wave: 1, host: "stg-web-1".into(), state: HostState::Done }),
            (31, Event::WaveFinished { wave: 1, done: 1, failed: 0, cancelled: 0, not_started: 0 }),
            (40, Event::WaveStarted { wave: 2, hosts: vec!["stg-web-4".into()] }),
            (40, Event::HostStarted { wave: 2, host: "stg-web-4".into() }),
            (41, step(2, "stg-web-4", "healthz", 2, 1)),
            (42, out("stg-web-4", Stream::Stderr, "GET /healthz -> 503")),
            (43, finished(2, "stg-web-4", "healthz", 2, 1, false)),
            (43, Event::HostFinished { wave: 2, host: "stg-web-4".into(), state: HostState::Failed }),
            (
                44,
                Event::Paused {
                    cause: PauseCause::FailureThreshold { wave: 2, failures: 1, limit: 0 },
                    running: vec![],
                },
            ),
        ],
    );
    let marks = vec![t(43)];
    let recording = Recording {
        events,
        marks,
        operator: "bob".into(),
        profile: "profiles/demo.toml".into(),
        env: "staging".into(),
    };
    let mut playback = Playback::new(recording, &mut app);
    playback.seek(&mut app, t(20));
    let clock_at = |p: &Playback| (p.at - t(0)).num_seconds();
    let screen = render(&mut app, 80, 24, clock_at(&playback));
    assert!(screen.starts_with("\" REPLAY 1× · 00:20 of 00:44 · shopfront → staging"), "{screen}");
    assert!(screen.contains("space pause/play"), "the replay's keys in the footer: {screen}");
    snapshot("replay_mid_wave_1", &mut app, clock_at(&playback));
    // `>`: to the failure, paused there; steering keys do nothing.
    assert!(playback.next_mark(&mut app));
    key(&mut app, KeyCode::Char('x'));
    assert!(app.dialog.is_none(), "no triage in a replay");
    snapshot("replay_at_the_failure", &mut app, clock_at(&playback));
}

/// A wave of twenty hosts running `migrate` then `restart`: every host says the usual, two
/// warn about their disk, and one is slow to restart.
fn fleet_with_odd_ones() -> App {
    let mut app = app();
    app.begin_deploy();
    let hosts: Vec<String> = (1..=20).map(|i| format!("web-{i:02}")).collect();
    let mut events = vec![
        (
            0,
            Event::DeployStarted {
                outlier_percent: wavedeck::profile::DEFAULT_OUTLIER_PERCENT,
                service: "shopfront".into(),
                env: "production".into(),
                release: "2.5.0".into(),
                waves: vec![WaveOutline { wave: 1, hosts: hosts.clone(), max_failures: 1 }],
                steps: vec!["migrate".into(), "restart".into()],
            },
        ),
        (0, Event::WaveStarted { wave: 1, hosts: hosts.clone() }),
    ];
    let said = |host: &str, step: &str, stream: Stream, line: String| Event::Output {
        host: host.into(),
        step: step.into(),
        stream,
        line,
    };
    for (i, host) in hosts.iter().enumerate() {
        events.push((1, Event::HostStarted { wave: 1, host: host.clone() }));
        events.push((1, step(1, host, "migrate", 1, 1)));
        events.push((2, said(host, "migrate", Stream::Stdout, format!("migrated {} rows in 0.{i}s", 1200 + i * 7))));
        if i == 3 || i == 8 {
            events.push((2, said(host, "migrate", Stream::Stderr, format!("WARN disk 9{i}% full on /var ({host})"))));
        }
        events.push((3, finished(1, host, "migrate", 1, 0, false)));
        events.push((3, step(1, host, "restart", 2, 1)));
        events.push((4, said(host, "restart", Stream::Stdout, format!("app[{}]: listening on :8080", 2000 + i))));
    }
    events.push((
        40,
        Event::StepSlow {
            wave: 1,
            host: "web-07".into(),
            step: "restart".into(),
            running_ms: 36_000,
            median_ms: 900,
            stopped: false,
        },
    ));
    feed(&mut app, events);
    app
}

#[test]
fn output_grouped_across_hosts_puts_the_odd_ones_first_and_enter_lists_their_hosts() {
    let mut app = fleet_with_odd_ones();
    let screen = render(&mut app, 120, 30, 41);
    assert!(screen.contains("SLOW 2/5"), "the slow host is flagged in the table\n{screen}");
    key(&mut app, KeyCode::Char('O'));
    let screen = render(&mut app, 120, 30, 41);
    assert!(screen.contains("ODD err    2/20") && screen.contains("WARN disk 93% full on /var (web-04)"), "{screen}");
    snapshot("output_grouped", &mut app, 41);
    key(&mut app, KeyCode::Enter);
    let screen = render(&mut app, 120, 30, 41);
    assert!(screen.contains("Hosts 2/20") && screen.contains("web-04") && screen.contains("web-09"), "{screen}");
    assert!(!screen.contains("web-05"), "only the hosts that printed it\n{screen}");
    key(&mut app, KeyCode::Esc);
    let screen = render(&mut app, 120, 30, 41);
    assert!(screen.contains("Hosts 20/20"), "{screen}");
}

#[test]
fn the_health_pane_puts_new_hosts_against_old_ones_with_a_sparkline_each() {
    use wavedeck::event::Figures;
    let mut app = staging_in_flight();
    let mut events = Vec::new();
    for i in 0..12u64 {
        let new = if i < 2 {
            Figures::default()
        } else {
            Figures { hosts: 1, samples: 5 * i as usize, p50_ms: 90 + i * 9, p95_ms: 120 + i * 15, errors_per_mille: 0 }
        };
        let old = Figures { hosts: 3, samples: 45, p50_ms: 88, p95_ms: 110 + i % 3, errors_per_mille: 4 };
        events.push((9 + i as i64, Event::HealthCompared { check: "healthz".into(), new, old }));
    }
    events.push((
        21,
        Event::AnalysisFailed {
            wave: 1,
            check: "healthz".into(),
            reason: "new hosts' p95 285ms > 1.5 x old hosts' p95 111ms (1 new, 3 old hosts)".into(),
            action: wavedeck::event::FailureAction::Pause,
        },
    ));
    events.push((
        21,
        Event::Paused {
            cause: PauseCause::Analysis {
                wave: 1,
                reason: "new hosts' p95 285ms > 1.5 x old hosts' p95 111ms (1 new, 3 old hosts)".into(),
            },
            running: vec![],
        },
    ));
    feed(&mut app, events);
    let screen = render(&mut app, 160, 48, 22);
    assert!(screen.contains("healthz    new    1 p50   189ms p95   285ms err  0.0%"), "{screen}");
    assert!(screen.contains("healthz    old    3 p50    88ms p95   112ms err  0.4%"), "{screen}");
    assert!(screen.contains("PAUSED 00:01 · wave 1 worse than old: new hosts' p95 285ms"), "{screen}");
    snapshot("health_new_against_old", &mut app, 22);
}

/// An ed25519 key in `dir` locked with the passphrase "open sesame".
fn locked_key(dir: &std::path::Path) -> std::path::PathBuf {
    let key = dir.join("id_locked");
    let made = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "open sesame", "-f"])
        .arg(&key)
        .status()
        .unwrap();
    assert!(made.success());
    key
}

/// What the console starts for `job` on the demo's staging.
fn staging_spec(job: wavedeck::runner::Job, confirmation: Option<&str>) -> wavedeck::runner::Spec {
    wavedeck::runner::Spec {
        job,
        profile: "profiles/demo.toml".into(),
        env: "staging".into(),
        audit_dir: None,
        local_root: None,
        mode: "console".into(),
        confirmation: confirmation.map(str::to_string),
        first: Vec::new(),
        on_detach: None,
        metrics_file: None,
        passphrases: Default::default(),
    }
}

#[test]
fn a_locked_key_is_asked_for_unseen_a_wrong_passphrase_again_and_the_right_one_starts_the_deploy() {
    use wavedeck::console::app::Effect;
    let dir = tempfile::tempdir().unwrap();
    let key = locked_key(dir.path());
    let mut app = app();
    let spec = staging_spec(wavedeck::runner::Job::Deploy { release: "2.4.1".into() }, Some("confirmed plan"));
    app.ask_passphrases(spec, vec![key.clone()]);
    typed(&mut app, "open sesam");
    let screen = render(&mut app, 80, 24, 0);
    assert!(screen.contains("Unlock a key for this deploy") && screen.contains("••••••••••"), "{screen}");
    assert!(!screen.contains("sesam"), "typed unseen\n{screen}");
    let effects = app.on_key(KeyEvent::new(KeyCode::Enter, KeyModifiers::NONE));
    assert!(effects.is_empty());
    assert!(render(&mut app, 80, 24, 0).contains("that passphrase does not open it"));
    typed(&mut app, "open sesame");
    let effects = app.on_key(KeyEvent::new(KeyCode::Enter, KeyModifiers::NONE));
    let [Effect::Launch(spec)] = effects.as_slice() else { panic!("{effects:?}") };
    assert_eq!(spec.passphrases.0, vec![(key, "open sesame".to_string())]);
    assert!(!format!("{spec:?}").contains("sesame"), "a spec never shows the passphrase");
}

#[test]
fn a_rollback_asks_for_a_locked_key_too_and_goes_on_to_its_preview_with_it() {
    use wavedeck::console::app::Effect;
    let dir = tempfile::tempdir().unwrap();
    let key = locked_key(dir.path());
    let mut app = app();
    let spec = staging_spec(wavedeck::runner::Job::Rollback { confirm: true }, None);
    app.ask_passphrases(spec, vec![key.clone()]);
    assert!(render(&mut app, 80, 24, 0).contains("Unlock a key for this rollback"));
    typed(&mut app, "open sesame");
    let effects = app.on_key(KeyEvent::new(KeyCode::Enter, KeyModifiers::NONE));
    let [Effect::Launch(spec)] = effects.as_slice() else { panic!("{effects:?}") };
    assert!(matches!(spec.job, wavedeck::runner::Job::Rollback { confirm: true }), "{spec:?}");
    assert_eq!(spec.passphrases.0, vec![(key, "open sesame".to_string())]);
}
