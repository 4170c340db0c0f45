//! Console start with a large audit directory: 10,000 ended sessions (each a short deploy) plus
//! a few without an end, then what the console does before its first frame: read the release
//! history and last deploys (from the index), look for interrupted deploys, build the app and
//! draw the overview.
//!
//! Run: `cargo run --release --example history_bench [sessions]` (default 10,000).
#![allow(clippy::unwrap_used)] // A benchmark: any failure should stop it loudly.

use std::io::Write as _;
use std::path::Path;
use std::time::Instant;

use ratatui::Terminal;
use ratatui::backend::TestBackend;
use wavedeck::audit::{AuditLog, IndexEntry, Record, SessionStart};
use wavedeck::console::app::App;
use wavedeck::console::theme::Theme;
use wavedeck::console::view::{self, Clock};
use wavedeck::event::{Event, HostState, WaveOutline};
use wavedeck::profile::Profile;

fn main() {
    let count: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(10_000);
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path();
    // One real session, then copies of it under other ids (writing 10,000 through the audit log
    // would spend the time on fsyncs): the files and the index look as the runner leaves them.
    let template = one_session(audit);
    let text = std::fs::read_to_string(audit.join(format!("wavedeck-{template}.jsonl"))).unwrap();
    let entry: IndexEntry = wavedeck::audit::read_index(audit).pop().unwrap();
    let mut index = std::fs::OpenOptions::new().append(true).open(audit.join(wavedeck::audit::INDEX_FILE)).unwrap();
    for i in 0..count {
        let id = format!("20260101T{:02}{:02}{:02}.{:03}Z-{i}", i / 3600 % 24, i / 60 % 60, i % 60, i % 1000);
        std::fs::write(audit.join(format!("wavedeck-{id}.jsonl")), text.replace(&template, &id)).unwrap();
        let line = serde_json::to_string(&IndexEntry { session: id, ..entry.clone() }).unwrap();
        writeln!(index, "{line}").unwrap();
    }
    drop(index);
    let demo = concat!(env!("CARGO_MANIFEST_DIR"), "/profiles/demo.toml");
    let profile = Profile::parse(Path::new("profiles/demo.toml"), &std::fs::read_to_string(demo).unwrap()).unwrap();

    let started = Instant::now();
    let history = wavedeck::rollback::history(audit);
    let interrupted = wavedeck::resume::interrupted_here(audit);
    let mut app = App::new(vec![profile], "bench", 10_000);
    for (i, t) in app.targets.clone().iter().enumerate() {
        let p = &app.profiles[t.profile];
        let key = (p.service.clone(), p.environments[t.env].name.clone());
        app.releases.insert(i, history.releases.get(&key).cloned().unwrap_or_default());
        if let Some(run) = history.last.get(&key) {
            app.last_runs.insert(i, run.clone());
        }
    }
    let mut terminal = Terminal::new(TestBackend::new(160, 48)).unwrap();
    let clock = Clock { now: chrono::Utc::now(), offset: chrono::FixedOffset::east_opt(0).unwrap() };
    terminal.draw(|f| view::draw(f, &app, &Theme::dark(), clock)).unwrap();
    let elapsed = started.elapsed();
    println!(
        "history_bench: {count} sessions in the audit directory: {:.1} ms to the first frame \
         (history from the index, {} interrupted looked for)",
        elapsed.as_secs_f64() * 1000.0,
        interrupted.len()
    );
}

fn one_session(dir: &Path) -> String {
    let start = SessionStart {
        operator: "ann".into(),
        machine: "box".into(),
        version: "0".into(),
        argv: vec![],
        mode: "headless".into(),
        profile: "profiles/demo.toml".into(),
        profile_sha256: "00".into(),
        env: "dev".into(),
        release: "1.0".into(),
        resumed_from: None,
    };
    let mut log = AuditLog::open(dir, &start, Default::default()).unwrap();
    let hosts = vec!["dev-web-1".to_string(), "dev-web-2".to_string(), "dev-worker-1".to_string()];
    log.note(Record::Event(Event::DeployStarted {
        outlier_percent: wavedeck::profile::DEFAULT_OUTLIER_PERCENT,
        service: "shopfront".into(),
        env: "dev".into(),
        release: "1.0".into(),
        waves: vec![WaveOutline { wave: 1, hosts: hosts.clone(), max_failures: 0 }],
        steps: vec!["stage".into()],
    }));
    for host in hosts {
        log.note(Record::Event(Event::HostFinished { wave: 1, host, state: HostState::Done }));
    }
    let id = log.session_id().to_string();
    log.close("succeeded", 0).unwrap();
    id
}
