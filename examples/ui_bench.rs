//! Console rendering benchmark: feeds the UI state 50,000 output lines per second spread over
//! 500 hosts and measures the cost of folding events in (output grouping across hosts
//! included) and of drawing a 160×48 frame, with the log and with the output grouped by shape
//! (`O`) on screen half the time each.
//!
//! Run: `cargo run --release --example ui_bench [seconds]` (default 20 simulated seconds).
//! It prints p50/p99 draw time per frame, event throughput and resident memory.
#![allow(clippy::unwrap_used)] // A benchmark: any failure should stop it loudly.

use std::path::Path;
use std::time::{Duration, Instant};

use chrono::{FixedOffset, Utc};
use ratatui::Terminal;
use ratatui::backend::TestBackend;
use ratatui::layout::Rect;
use wavedeck::console::app::App;
use wavedeck::console::logs::DEFAULT_SCROLLBACK;
use wavedeck::console::theme::Theme;
use wavedeck::console::view::{self, Clock};
use wavedeck::event::{Event, Stamped, Stream, WaveOutline};
use wavedeck::plan::StepKind;
use wavedeck::profile::Profile;

const HOSTS: usize = 500;
const LINES_PER_SECOND: usize = 50_000;
const FPS: usize = 30;

fn main() {
    let seconds: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(20);
    let hosts: Vec<String> = (0..HOSTS).map(|i| format!("web-{i:03}")).collect();
    let host_list: Vec<String> = hosts.iter().map(|h| format!("{{ name = \"{h}\" }}")).collect();
    let profile_text = format!(
        "[service]\nname = \"bench\"\n[[environments]]\nname = \"load\"\nhosts = [{}]\n[[steps]]\nname = \"run\"\nrun = \"true\"\n",
        host_list.join(", ")
    );
    let profile = Profile::parse(Path::new("bench.toml"), &profile_text).unwrap();
    let mut app = App::new(vec![profile], "bench", DEFAULT_SCROLLBACK);
    app.begin_deploy();
    app.size = Rect::new(0, 0, 160, 48);
    let now = Utc::now();
    let stamp = |event| Stamped { at: now, event };
    app.on_event(&stamp(Event::DeployStarted {
        outlier_percent: wavedeck::profile::DEFAULT_OUTLIER_PERCENT,
        service: "bench".into(),
        env: "load".into(),
        release: "1".into(),
        waves: vec![WaveOutline { wave: 1, hosts: hosts.clone(), max_failures: 0 }],
        steps: vec!["run".into()],
    }));
    for h in &hosts {
        app.on_event(&stamp(Event::HostStarted { wave: 1, host: h.clone() }));
        app.on_event(&stamp(Event::StepStarted {
            wave: 1,
            host: h.clone(),
            step: "run".into(),
            kind: StepKind::Command,
            index: 1,
            total: 1,
            attempt: 1,
            command: "true".into(),
        }));
    }

    let mut terminal = Terminal::new(TestBackend::new(160, 48)).unwrap();
    let theme = Theme::dark();
    let clock = Clock { now, offset: FixedOffset::east_opt(0).unwrap() };
    let per_frame = LINES_PER_SECOND / FPS;
    let mut draw_times = Vec::new();
    let mut grouped_times = Vec::new();
    let mut apply_time = Duration::ZERO;
    let mut line_no = 0usize;
    let frames = seconds * FPS;
    let rss_before = rss_kib();
    for frame in 0..frames {
        let events: Vec<Stamped> = (0..per_frame)
            .map(|_| {
                line_no += 1;
                let host = hosts[line_no % HOSTS].clone();
                let stream = if line_no % 10 == 0 { Stream::Stderr } else { Stream::Stdout };
                // Mostly one shape, as a fleet's access logs are; a few hosts also warn.
                let line = if line_no % 997 == 0 {
                    format!("WARN pool {} exhausted after {}ms", line_no % 7, line_no % 300)
                } else {
                    format!(
                        "\u{1b}[32m{line_no:>9}\u{1b}[0m GET /api/orders 200 12ms upstream=10.0.0.{}",
                        line_no % 255
                    )
                };
                stamp(Event::Output { host, step: "run".into(), stream, line })
            })
            .collect();
        let t = Instant::now();
        for e in &events {
            app.on_event(e);
        }
        apply_time += t.elapsed();
        // Move the selection now and then, as an operator would.
        if frame % FPS == 0 {
            app.selected_host = (frame / FPS * 37) % HOSTS;
        }
        // Each simulated second, the log or the output grouped by shape.
        app.grouped = (frame / FPS) % 2 == 1;
        let t = Instant::now();
        terminal.draw(|f| view::draw(f, &app, &theme, clock)).unwrap();
        if app.grouped {
            grouped_times.push(t.elapsed())
        } else {
            draw_times.push(t.elapsed())
        };
    }
    draw_times.sort();
    grouped_times.sort();
    let pct = |p: f64| draw_times[((draw_times.len() as f64 - 1.0) * p) as usize];
    let grouped_pct = |p: f64| grouped_times[((grouped_times.len() as f64 - 1.0) * p) as usize];
    let total_lines = frames * per_frame;
    println!(
        "ui_bench: {HOSTS} hosts, {LINES_PER_SECOND} lines/s for {seconds} simulated s ({total_lines} lines), 160x48, scrollback {DEFAULT_SCROLLBACK}/host"
    );
    println!("draw per frame: p50 {:?}  p99 {:?}  max {:?}", pct(0.50), pct(0.99), draw_times.last().unwrap());
    if !grouped_times.is_empty() {
        println!(
            "draw per frame, output grouped by shape: p50 {:?}  p99 {:?}  max {:?}",
            grouped_pct(0.50),
            grouped_pct(0.99),
            grouped_times.last().unwrap()
        );
    }
    println!(
        "event folding: {:.0} lines/s on one core ({:.1}% of a {FPS} fps frame budget at {LINES_PER_SECOND} lines/s)",
        total_lines as f64 / apply_time.as_secs_f64(),
        100.0 * apply_time.as_secs_f64() / seconds as f64
    );
    let rss_after = rss_kib();
    println!(
        "resident memory: {} MiB after, {} MiB for the lines held ({:.0} bytes/line)",
        rss_after / 1024,
        rss_after.saturating_sub(rss_before) / 1024,
        (rss_after.saturating_sub(rss_before) as f64 * 1024.0) / total_lines as f64
    );
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}
