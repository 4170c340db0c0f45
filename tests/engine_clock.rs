//! The engine's timing on tokio's paused clock, through the scripted transport: soak, retries,
//! timeouts, health intervals and gates take their full (virtual) time and no real time, so
//! these tests cannot flake on a loaded machine. Real processes are tested in `engine.rs`.
#![allow(clippy::unwrap_used)] // Tests panic on unexpected errors by design.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::Deploy;
use common::fake::Scripted;
use tokio::time::Instant;
use wavedeck::event::{Command, Event, HostState, Outcome, StepResult};

fn profile(plan: &str, hosts: &[&str], steps: &str) -> String {
    let hosts: Vec<String> = hosts.iter().map(|h| format!("{{ name = \"{h}\" }}")).collect();
    format!(
        "[service]\nname = \"svc\"\n[plan]\n{plan}\n[[environments]]\nname = \"test\"\nhosts = [{}]\n{steps}",
        hosts.join(", ")
    )
}

fn start(source: &str) -> Deploy {
    // Virtual time: a day of patience passes in an instant, and still ends a wait that would
    // never end.
    Deploy::start_on(source, Arc::new(Scripted::default())).with_patience(Duration::from_secs(86_400))
}

fn count(d: &Deploy, pred: impl Fn(&Event) -> bool) -> usize {
    d.events.iter().filter(|e| pred(e)).count()
}

#[tokio::test(start_paused = true)]
async fn retries_wait_their_delay_and_the_third_attempt_succeeds() {
    let steps = "[[steps]]\nname = \"flaky\"\nrun = \"fail-first 2\"\nretries = 2\nretry_delay = \"10m\"\n";
    let began = Instant::now();
    let mut d = start(&profile("canary = 0", &["a"], steps));
    let (outcome, hosts) = d.finish().await;
    assert_eq!(outcome, Outcome::Succeeded);
    assert_eq!(count(&d, |e| matches!(e, Event::StepStarted { .. })), 3);
    assert_eq!(hosts[0].last_result, Some(StepResult::Exited { code: 0 }));
    let waited = began.elapsed();
    assert!(waited >= Duration::from_secs(20 * 60) && waited < Duration::from_secs(21 * 60), "{waited:?}");
}

#[tokio::test(start_paused = true)]
async fn a_step_past_its_timeout_is_stopped_at_the_timeout() {
    let steps = "[[steps]]\nname = \"hang\"\nrun = \"sleep 3600\"\ntimeout = \"5m\"\n";
    let began = Instant::now();
    let mut d = start(&profile("canary = 0\nmax_failures = 1", &["a"], steps));
    let (_, hosts) = d.finish().await;
    assert_eq!(hosts[0].last_result, Some(StepResult::TimedOut));
    let waited = began.elapsed();
    assert!(waited >= Duration::from_secs(300) && waited < Duration::from_secs(301), "{waited:?}");
}

#[tokio::test(start_paused = true)]
async fn a_host_that_turns_unhealthy_during_a_long_soak_fails_its_wave() {
    // The check passes as a step and twice more, then fails: with samples every 10 s and two
    // failures needed, the host is called unhealthy about 40 s into a 5 min soak.
    let steps = "[[steps]]\nname = \"work\"\nrun = \"echo ok\"\n\
                 [[health]]\nname = \"up\"\nrun = \"healthy-for 3\"\nretries = 0\ninterval = \"10s\"\nunhealthy_after = 2\n";
    let began = Instant::now();
    let policy = "canary = 1\nbatch = 1\nsoak = \"5m\"\non_failure = \"abort\"";
    let mut d = start(&profile(policy, &["a", "b"], steps));
    let (outcome, hosts) = d.finish().await;
    assert_eq!(outcome, Outcome::Failed);
    assert!(d.events.iter().any(|e| matches!(e, Event::SoakFinished { wave: 1, unhealthy } if unhealthy == &["a"])));
    assert!(
        d.events
            .iter()
            .any(|e| matches!(e, Event::ThresholdExceeded { wave: 1, failed_hosts, .. } if failed_hosts == &["a"]))
    );
    assert!(d.events.iter().any(|e| matches!(e, Event::HealthChanged { host, healthy: false, .. } if host == "a")));
    // Why, in the host's log: not only a verdict.
    assert!(
        d.events.iter().any(|e| matches!(e, Event::Output { host, step, line, .. }
            if host == "a" && step == "up" && line == "up failed while watched: exit 1")),
        "{:#?}",
        d.events
    );
    assert_eq!(hosts[1].state, HostState::NotStarted, "the next wave never started");
    // One sample per interval while monitored: the soak's 300 s hold about 30 of them.
    let samples = count(&d, |e| matches!(e, Event::HealthSample { host, .. } if host == "a"));
    assert!((29..=32).contains(&samples), "{samples} samples");
    let waited = began.elapsed();
    assert!(waited >= Duration::from_secs(300) && waited < Duration::from_secs(302), "{waited:?}");
}

#[tokio::test(start_paused = true)]
async fn a_manual_gate_holds_the_next_wave_until_promoted() {
    let steps = "[[steps]]\nname = \"work\"\nrun = \"echo ok\"\n";
    let mut d =
        start(&profile("canary = 1\nbatch = 1\ngate = \"manual\"\npause_between_waves = \"1h\"", &["a", "b"], steps));
    d.until("the gate", |e| matches!(e, Event::AwaitingPromote { wave: 1 })).await;
    assert!(!d.events.iter().any(|e| matches!(e, Event::WaveStarted { wave: 2, .. })));
    let promoted = Instant::now();
    d.send(Command::Promote);
    d.until("wave 2", |e| matches!(e, Event::WaveStarted { wave: 2, .. })).await;
    assert!(promoted.elapsed() >= Duration::from_secs(3600), "the pause between waves still applies");
    let (outcome, _) = d.finish().await;
    assert_eq!(outcome, Outcome::Succeeded);
}

#[tokio::test(start_paused = true)]
async fn abort_during_a_long_step_cancels_it_at_once() {
    let steps = "[[steps]]\nname = \"long\"\nrun = \"echo started\\nsleep 86400\"\ntimeout = \"48h\"\n";
    let mut d = start(&profile("canary = 0\nbatch = 2", &["a", "b"], steps));
    d.until("started", |e| matches!(e, Event::Output { line, .. } if line == "started")).await;
    let aborted = Instant::now();
    d.send(Command::Abort { reason: "enough".into() });
    let (outcome, hosts) = d.finish().await;
    assert_eq!(outcome, Outcome::Aborted);
    assert!(hosts.iter().all(|h| h.state == HostState::Cancelled), "{hosts:?}");
    assert!(aborted.elapsed() < Duration::from_secs(1), "{:?}", aborted.elapsed());
}

#[tokio::test(start_paused = true)]
async fn an_http_check_sampled_while_monitored_turns_the_host_unhealthy_during_soak() {
    use common::fake::ScriptedProber;
    let steps = "[[steps]]\nname = \"work\"\nrun = \"echo ok\"\n\
                 [[health]]\nname = \"lb\"\nkind = \"http\"\nurl = \"http://a/health\"\nretries = 0\n\
                 interval = \"30s\"\nunhealthy_after = 3\n";
    let prober = Arc::new(ScriptedProber { healthy_for: 2, probes: Default::default() });
    let policy = "canary = 1\nbatch = 1\nsoak = \"10m\"\non_failure = \"abort\"";
    let mut d =
        Deploy::start_with_prober(&profile(policy, &["a", "b"], steps), Arc::new(Scripted::default()), prober.clone())
            .with_patience(Duration::from_secs(86_400));
    let (outcome, _) = d.finish().await;
    assert_eq!(outcome, Outcome::Failed);
    assert!(d.events.iter().any(|e| matches!(e, Event::HealthChanged { host, healthy: false, .. } if host == "a")));
    // Passed as a step and once monitored, then three failures in a row: about 20 samples in
    // a 10 min soak at one every 30 s, none of them over a network.
    let samples = count(&d, |e| matches!(e, Event::HealthSample { .. }));
    assert!((19..=22).contains(&samples), "{samples} samples");
    // Every probe became a sample, except one the deploy's end overtook.
    let probes = *prober.probes.lock().unwrap() as usize;
    assert!(probes == samples || probes == samples + 1, "{probes} probes, {samples} samples");
}

/// Twenty hosts in one wave: every one migrates, two also print an error.
fn fleet_profile(analysis: &str) -> String {
    let hosts: Vec<String> = (1..=20)
        .map(|i| {
            let extra =
                if i == 6 || i == 17 { format!("ERROR cache unreachable from web-{i:02}") } else { "ok".into() };
            format!("{{ name = \"web-{i:02}\", vars = {{ extra = \"{extra}\" }} }}")
        })
        .collect();
    format!(
        "[service]\nname = \"svc\"\n[plan]\ncanary = 0\nbatch = \"100%\"\n{analysis}\n[[environments]]\nname = \"test\"\n\
         hosts = [{}]\n[[steps]]\nname = \"migrate\"\nrun = \"echo migrated 12 rows\\necho {{{{ extra }}}}\"\n",
        hosts.join(", ")
    )
}

#[tokio::test(start_paused = true)]
async fn the_outlier_group_at_a_waves_end_names_exactly_the_two_hosts_that_printed_an_error() {
    let mut d = start(&fleet_profile(""));
    let (outcome, _) = d.finish().await;
    assert_eq!(outcome, Outcome::Succeeded);
    let reports: Vec<&Event> = d.events.iter().filter(|e| matches!(e, Event::OutputOutliers { .. })).collect();
    assert_eq!(reports.len(), 1, "{reports:#?}");
    let Event::OutputOutliers { wave: 1, groups } = reports[0] else { panic!("{reports:#?}") };
    assert_eq!(groups.len(), 1, "{groups:#?}");
    assert_eq!(groups[0].hosts, vec!["web-06", "web-17"]);
    assert_eq!((groups[0].of, groups[0].step.as_str()), (20, "migrate"));
    assert_eq!(groups[0].shape, "ERROR cache unreachable from <host>");
    // It comes after the wave's end, so a reader has the wave's whole story before it.
    let finished = d.position(|e| matches!(e, Event::WaveFinished { wave: 1, .. })).unwrap();
    let reported = d.position(|e| matches!(e, Event::OutputOutliers { .. })).unwrap();
    assert!(reported > finished);
}

/// Five hosts; `e` takes 60 s where the others take 2 s.
fn slow_profile(analysis: &str) -> String {
    let hosts: Vec<String> = ["a", "b", "c", "d", "e"]
        .iter()
        .map(|h| format!("{{ name = \"{h}\", vars = {{ delay = \"{}\" }} }}", if *h == "e" { 60 } else { 2 }))
        .collect();
    format!(
        "[service]\nname = \"svc\"\n[plan]\ncanary = 0\nbatch = \"100%\"\nmax_failures = 1\n{analysis}\n\
         [[environments]]\nname = \"test\"\nhosts = [{}]\n[[steps]]\nname = \"restart\"\nrun = \"sleep {{{{ delay }}}}\"\n",
        hosts.join(", ")
    )
}

#[tokio::test(start_paused = true)]
async fn a_step_running_past_three_times_its_waves_median_and_ten_seconds_is_flagged_once() {
    let began = Instant::now();
    let mut d = start(&slow_profile(""));
    let slow = d.until("a slow step", |e| matches!(e, Event::StepSlow { .. })).await;
    let flagged_after = began.elapsed();
    let Event::StepSlow { host, step, running_ms, median_ms, stopped, .. } = slow else { unreachable!() };
    assert_eq!((host.as_str(), step.as_str(), median_ms, stopped), ("e", "restart", 2000, false));
    // 3 x 2 s is under the 10 s floor: flagged at the first look past 10 s.
    assert!((10_000..=11_500).contains(&running_ms), "{running_ms}");
    assert!(flagged_after < Duration::from_secs(12), "{flagged_after:?}");
    let (outcome, hosts) = d.finish().await;
    // Flagging changes nothing about the deploy: `e` finishes its minute.
    assert_eq!(outcome, Outcome::Succeeded);
    assert!(hosts.iter().all(|h| h.state == HostState::Done));
    assert_eq!(count(&d, |e| matches!(e, Event::StepSlow { .. })), 1);
    assert!(began.elapsed() >= Duration::from_secs(60));
}

#[tokio::test(start_paused = true)]
async fn with_slow_step_fail_the_slow_host_is_stopped_and_fails_with_the_figures() {
    let began = Instant::now();
    let mut d = start(&slow_profile("[analysis]\nslow_step = \"fail\"\nslow_factor = 2.0\nslow_min = \"5s\""));
    let (outcome, hosts) = d.finish().await;
    // One failure is within max_failures = 1: the deploy goes on and ends failed for `e` only.
    assert_eq!(outcome, Outcome::Failed);
    let e = hosts.iter().find(|h| h.host == "e").unwrap();
    assert_eq!(e.state, HostState::Failed);
    let Some(StepResult::Error { message }) = &e.last_result else { panic!("{e:#?}") };
    assert_eq!(message, "stopped after 6.0s: over 2x the median of its wave's hosts (2.0s); slow_step = \"fail\"");
    assert!(hosts.iter().filter(|h| h.host != "e").all(|h| h.state == HostState::Done));
    assert!(d.events.iter().any(|e| matches!(e, Event::StepSlow { stopped: true, .. })));
    // Stopped at the first look past 5 s, not after its minute.
    assert!(began.elapsed() < Duration::from_secs(10), "{:?}", began.elapsed());
}
