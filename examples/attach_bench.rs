//! How long a console takes to show a deploy it attaches to late: a real runner (local
//! transport) deploys to 500 hosts that print 2,000 lines each and then waits at a manual gate;
//! a second client attaches from the first event, folds the whole history into the console's
//! state and draws one 160×48 frame.
//!
//! Prints the time from connecting to that first complete frame (goal: at most 1 s), with the
//! number of events and lines replayed. Run with `cargo run --release --example attach_bench`.
#![allow(clippy::unwrap_used)] // A benchmark: any failure is the result.

use std::time::Instant;

use chrono::{FixedOffset, Utc};
use ratatui::Terminal;
use ratatui::backend::TestBackend;
use ratatui::layout::Rect;
use wavedeck::console::app::App;
use wavedeck::console::logs::DEFAULT_SCROLLBACK;
use wavedeck::console::theme::Theme;
use wavedeck::console::view::{self, Clock};
use wavedeck::event::{Command, CommandSource, Event};
use wavedeck::profile::Profile;
use wavedeck::remote::Role;
use wavedeck::runner::{self, Client, Job, Spec};

const HOSTS: usize = 500;
const LINES: usize = 2000;

fn main() {
    // The runner it starts is this program again (`runner::spawn` runs its own executable).
    if std::env::args().nth(1).as_deref() == Some("runner") {
        std::process::exit(runner::main());
    }
    tokio::runtime::Runtime::new().unwrap().block_on(bench());
}

async fn bench() {
    let dir = tempfile::tempdir().unwrap();
    let mut hosts: Vec<String> = (0..HOSTS).map(|i| format!("{{ name = \"web-{i:03}\" }}")).collect();
    // One more host after a manual gate holds the deploy, history and all, for the attach.
    hosts.push("{ name = \"last\" }".into());
    let profile_path = dir.path().join("bench.toml");
    std::fs::write(
        &profile_path,
        format!(
            "[service]\nname = \"bench\"\n[plan]\ncanary = 0\nbatch = {HOSTS}\nparallel = 100\ngate = \"manual\"\n\
             [[environments]]\nname = \"load\"\nhosts = [{}]\n\
             [[steps]]\nname = \"print\"\nrun = \"seq 1 {LINES} | sed 's/^/output line /'\"\n",
            hosts.join(", ")
        ),
    )
    .unwrap();
    let spec = Spec {
        job: Job::Deploy { release: "1".into() },
        profile: profile_path.clone(),
        env: "load".into(),
        audit_dir: Some(dir.path().join("audit")),
        local_root: Some(dir.path().join("hosts")),
        mode: "headless".into(),
        confirmation: None,
        first: Vec::new(),
        on_detach: None,
        metrics_file: None,
        passphrases: Default::default(),
    };
    let started = Instant::now();
    let mut controller = runner::spawn(&spec).await.map_err(|r| r.message).unwrap();
    let socket = wavedeck::remote::socket_of(controller.session()).unwrap();
    while let Some(event) = controller.events.recv().await {
        if matches!(event.event, Event::AwaitingPromote { .. }) {
            break;
        }
    }
    println!("deploy of {HOSTS} hosts × {LINES} lines held at its gate after {:.1?}", started.elapsed());

    let profile = Profile::load(&profile_path).unwrap();
    let theme = Theme::resolve(None, false).unwrap();
    let mut terminal = Terminal::new(TestBackend::new(160, 48)).unwrap();
    let clock = Clock { now: Utc::now(), offset: FixedOffset::east_opt(0).unwrap() };

    let attach = Instant::now();
    let mut watcher = Client::attach(&socket, Role::Observe, 1, "attach_bench").await.unwrap();
    let last = watcher.welcome.last_seq;
    let mut app = App::new(vec![profile], "bench", DEFAULT_SCROLLBACK);
    app.begin_deploy();
    app.size = Rect::new(0, 0, 160, 48);
    let (mut events, mut lines, mut batch) = (0u64, 0u64, Vec::with_capacity(4096));
    // The welcome names the newest event: the history is complete once that many have come.
    while events < last - watcher.welcome.first_seq + 1 {
        if watcher.events.recv_many(&mut batch, 4096).await == 0 {
            break;
        }
        for event in batch.drain(..) {
            events += 1;
            lines += u64::from(matches!(event.event, Event::Output { .. }));
            app.on_event(&event);
        }
    }
    terminal.draw(|f| view::draw(f, &app, &theme, clock)).unwrap();
    let first_frame = attach.elapsed();
    println!(
        "attach → first complete frame: {first_frame:.2?} ({events} events replayed, {lines} output lines; goal ≤ 1 s)"
    );

    controller.send(Command::Abort { reason: "benchmark done".into() }, CommandSource::Policy);
    let _ = controller.ended().await;
    drop(watcher);
}
