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
