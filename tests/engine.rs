//! Engine control semantics against real subprocesses on the local transport.
#![allow(clippy::unwrap_used)] // Tests panic on unexpected errors by design.

mod common;

use common::{Deploy, is_start, processes_with_argument, wait_for_file};
use wavedeck::event::{Command, Event, HostState, Outcome, PauseCause, StepResult, Stream};

fn profile(plan: &str, hosts: &[&str], steps: &[(&str, &str)]) -> String {
    let hosts: Vec<String> = hosts.iter().map(|h| format!("{{ name = \"{h}\" }}")).collect();
    let mut out = format!(
        "[service]\nname = \"svc\"\n[plan]\n{plan}\n[[environments]]\nname = \"test\"\nhosts = [{}]\n",
        hosts.join(", ")
    );
    for (name, run) in steps {
        out.push_str(&format!("[[steps]]\nname = \"{name}\"\nretry_delay = \"10ms\"\nrun = '''\n{run}\n'''\n"));
    }
    out
}

fn root() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("test")).unwrap();
    dir
}

fn touch(root: &tempfile::TempDir, name: &str) {
    std::fs::write(root.path().join("test").join(name), b"").unwrap();
}

#[tokio::test]
async fn pause_stops_new_work_until_resume_and_resume_continues_where_it_stopped() {
    let root = root();
    let src = profile(
        "canary = 1\nbatch = 2",
        &["a", "b", "c"],
        &[("hold", &wait_for_file("go")), ("after", "echo after-$WAVEDECK_HOST")],
    );
    let mut d = Deploy::start(&src, root.path());
    d.until("a holding", |e| matches!(e, Event::StepStarted { host, step, .. } if host == "a" && step == "hold")).await;
    d.send(Command::Pause);
    let paused = d.until("Paused", |e| matches!(e, Event::Paused { .. })).await;
    assert_eq!(paused, Event::Paused { cause: PauseCause::Operator, running: vec!["a: hold".into()] });

    // The running step is allowed to finish while paused...
    touch(&root, "go");
    d.until("hold finished", |e| matches!(e, Event::StepFinished { host, step, .. } if host == "a" && step == "hold"))
        .await;
    // ...but a second pause is only acknowledged as ignored, proving the engine is responsive.
    d.send(Command::Pause);
    d.until("ignored pause", |e| matches!(e, Event::CommandIgnored { .. })).await;
    d.send(Command::Resume);
    let (outcome, hosts) = d.finish().await;

    let paused_at = d.position(|e| matches!(e, Event::Paused { .. })).unwrap();
    let resumed_at = d.position(|e| matches!(e, Event::Resumed)).unwrap();
    let started_while_paused: Vec<_> = d.events[paused_at..resumed_at].iter().filter(|e| is_start(e)).collect();
    assert!(started_while_paused.is_empty(), "started while paused: {started_while_paused:?}");
    // Resume picked up a's next step, then the next wave, each exactly once.
    let after_resume = &d.events[resumed_at..];
    assert!(
        matches!(&after_resume[1], Event::StepStarted { host, step, attempt: 1, .. } if host == "a" && step == "after")
    );
    let a_after = d
        .events
        .iter()
        .filter(|e| matches!(e, Event::StepStarted { host, step, .. } if host == "a" && step == "after"))
        .count();
    assert_eq!(a_after, 1);
    assert_eq!(outcome, Outcome::Succeeded);
    assert!(hosts.iter().all(|h| h.state == HostState::Done), "{hosts:?}");
}

#[tokio::test]
async fn abort_kills_running_commands_and_records_every_host() {
    let root = root();
    // `sleep` runs as a grandchild so the test can check the whole process group died.
    let src = profile(
        "canary = 0\nbatch = 2",
        &["a", "b", "c"],
        &[("long", "sleep 300 &\necho $! > sleeper.pid\necho ready\nwait")],
    );
    let mut d = Deploy::start(&src, root.path());
    for _ in ["a", "b"] {
        d.until("a host ready", |e| matches!(e, Event::Output { line, .. } if line == "ready")).await;
    }
    d.send(Command::Abort { reason: "db on fire".into() });
    let (outcome, hosts) = d.finish().await;

    assert_eq!(outcome, Outcome::Aborted);
    assert!(
        d.events.contains(&Event::Aborted { reason: "db on fire".into(), by: wavedeck::event::AbortedBy::Command })
    );
    let states: Vec<(String, HostState)> = hosts.iter().map(|h| (h.host.clone(), h.state)).collect();
    assert_eq!(
        states,
        [("a".into(), HostState::Cancelled), ("b".into(), HostState::Cancelled), ("c".into(), HostState::NotStarted)]
    );
    assert_eq!(hosts[0].last_result, Some(StepResult::Cancelled));
    let aborted_at = d.position(|e| matches!(e, Event::Aborted { .. })).unwrap();
    assert!(!d.events[aborted_at..].iter().any(is_start), "{:?}", &d.events[aborted_at..]);
    for host in ["a", "b"] {
        let pid: i32 = std::fs::read_to_string(root.path().join("test").join(host).join("sleeper.pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(!still_running_after_kill(pid), "sleeper {pid} on {host} survived the abort");
    }
}

#[tokio::test]
async fn a_command_ignoring_sigterm_is_killed_after_the_grace_period() {
    let root = root();
    let src = profile("canary = 0", &["a"], &[("stubborn", "trap '' TERM\necho ready\nwhile :; do sleep 0.05; done")]);
    let mut d = Deploy::start(&src, root.path());
    d.until("ready", |e| matches!(e, Event::Output { line, .. } if line == "ready")).await;
    d.send(Command::Abort { reason: "stop".into() });
    let (outcome, hosts) = d.finish().await;
    assert_eq!(outcome, Outcome::Aborted);
    assert_eq!(hosts[0].state, HostState::Cancelled);
}

#[tokio::test]
async fn failures_over_the_threshold_pause_the_deploy() {
    let root = root();
    let src = profile(
        "canary = 0\nbatch = 2\nmax_failures = 0",
        &["a", "b", "c"],
        &[("maybe", "if [ \"$WAVEDECK_HOST\" = b ]; then echo broken >&2; exit 3; fi; echo fine")],
    );
    let mut d = Deploy::start(&src, root.path());
    let paused = d.until("Paused", |e| matches!(e, Event::Paused { .. })).await;
    assert!(matches!(
        paused,
        Event::Paused { cause: PauseCause::FailureThreshold { wave: 1, failures: 1, limit: 0 }, .. }
    ));
    assert!(d.events.contains(&Event::ThresholdExceeded {
        wave: 1,
        failures: 1,
        limit: 0,
        failed_hosts: vec!["b".into()],
        action: wavedeck::profile::FailureAction::Pause
    }));
    d.until("wave 1 finished", |e| matches!(e, Event::WaveFinished { wave: 1, .. })).await;
    // stderr is reported as such.
    assert!(d.events.iter().any(
        |e| matches!(e, Event::Output { host, stream: Stream::Stderr, line, .. } if host == "b" && line == "broken")
    ));
    d.send(Command::Abort { reason: "investigating".into() });
    let (outcome, hosts) = d.finish().await;
    assert_eq!(outcome, Outcome::Aborted);
    assert_eq!(hosts[1].last_result, Some(StepResult::Exited { code: 3 }));
    assert_eq!(hosts[2].state, HostState::NotStarted);
    assert!(!d.events.iter().any(|e| matches!(e, Event::WaveStarted { wave: 2, .. })));
}

#[tokio::test]
async fn threshold_with_abort_policy_aborts_without_an_operator() {
    let root = root();
    let src = profile("canary = 1\nbatch = 1\non_failure = \"abort\"", &["a", "b"], &[("fail", "exit 1")]);
    let mut d = Deploy::start(&src, root.path());
    let (outcome, hosts) = d.finish().await;
    // The profile's limit stopped it, not a person: a failed deploy.
    assert_eq!(outcome, Outcome::Failed);
    assert!(d.events.iter().any(
        |e| matches!(e, Event::Aborted { reason, by: wavedeck::event::AbortedBy::Policy } if reason.contains("wave 1"))
    ));
    assert_eq!(hosts[1].state, HostState::NotStarted);
}

#[tokio::test]
async fn failures_within_the_limit_let_the_deploy_finish_as_failed() {
    let root = root();
    let src =
        profile("canary = 0\nbatch = 2\nmax_failures = 1", &["a", "b", "c"], &[("fail-a", "test $WAVEDECK_HOST != a")]);
    let mut d = Deploy::start(&src, root.path());
    let (outcome, hosts) = d.finish().await;
    assert_eq!(outcome, Outcome::Failed);
    assert_eq!(hosts.iter().filter(|h| h.state == HostState::Done).count(), 2);
    assert!(!d.events.iter().any(|e| matches!(e, Event::Paused { .. })));
}

#[tokio::test]
async fn a_timed_out_step_is_killed_and_fails_the_host() {
    let root = root();
    let src = profile("canary = 0", &["a"], &[("slow", "sleep 300")])
        .replace("retry_delay", "timeout = \"200ms\"\nretry_delay");
    let mut d = Deploy::start(&src, root.path());
    // The only wave exceeded its limit: the engine waits for the operator even at the end.
    d.until("Paused", |e| matches!(e, Event::Paused { .. })).await;
    d.send(Command::Resume);
    let (outcome, hosts) = d.finish().await;
    assert_eq!(outcome, Outcome::Failed);
    assert_eq!(hosts[0].last_result, Some(StepResult::TimedOut));
}

#[tokio::test]
async fn failed_attempts_are_retried() {
    let root = root();
    let src = profile("canary = 0", &["a"], &[("flaky", "test -e marker || { touch marker; exit 1; }")])
        .replace("retry_delay", "retries = 2\nretry_delay");
    let mut d = Deploy::start(&src, root.path());
    let (outcome, _) = d.finish().await;
    assert_eq!(outcome, Outcome::Succeeded);
    let attempts: Vec<(u32, bool)> = d
        .events
        .iter()
        .filter_map(|e| match e {
            Event::StepFinished { attempt, result, will_retry, .. } => {
                Some((*attempt, result.succeeded() || *will_retry))
            }
            _ => None,
        })
        .collect();
    assert_eq!(attempts, [(1, true), (2, true)]);
}

#[tokio::test]
async fn output_arrives_while_the_command_still_runs() {
    let root = root();
    let src = profile("canary = 0", &["a"], &[("talk", &format!("echo first\n{}\necho second", wait_for_file("go")))]);
    let mut d = Deploy::start(&src, root.path());
    d.until("first line", |e| matches!(e, Event::Output { line, .. } if line == "first")).await;
    assert!(!d.events.iter().any(|e| matches!(e, Event::StepFinished { .. })));
    touch(&root, "go");
    let (outcome, _) = d.finish().await;
    assert_eq!(outcome, Outcome::Succeeded);
}

#[tokio::test]
async fn secrets_are_masked_in_output_and_commands() {
    let root = root();
    let src = profile("canary = 0", &["a"], &[("leak", "echo token={{ token }}")])
        .replace("[plan]", "[secrets]\ntoken = { env = \"TOKEN\" }\n[plan]");
    let mut d = Deploy::start_with_secrets(&src, root.path(), &[("TOKEN", "hunter2")]);
    d.finish().await;
    let all = format!("{:?}", d.events);
    assert!(!all.contains("hunter2"), "{all}");
    assert!(d.events.iter().any(|e| matches!(e, Event::Output { line, .. } if line == "token=******")));
}

/// The masked text of every output line of one stream, in order.
fn output_of(d: &Deploy, which: Stream) -> Vec<String> {
    d.events
        .iter()
        .filter_map(|e| match e {
            Event::Output { stream, line, .. } if *stream == which => Some(line.clone()),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn a_secret_in_a_line_too_long_to_keep_whole_is_never_let_out_in_pieces() {
    let root = root();
    // 8192 copies of "x" + secret on one line (about 200 KiB), on both streams, the last one
    // without a newline; whichever way the line is cut, no secret may come out in two halves.
    let run = "s='x{{ tok }}'; i=0; while [ $i -lt 13 ]; do s=\"$s$s\"; i=$((i+1)); done\n\
               printf '%s\\n' \"$s\"; printf '%s\\n' \"$s\" >&2; printf 'tail %s' \"$s\"";
    let src =
        profile("canary = 0", &["a"], &[("blob", run)]).replace("[plan]", "[secrets]\ntok = { env = \"TOK\" }\n[plan]");
    let secret = "tok-4711-abcdefghijklmnop";
    let mut d = Deploy::start_with_secrets(&src, root.path(), &[("TOK", secret)]);
    let (outcome, _) = d.finish().await;
    assert_eq!(outcome, Outcome::Succeeded);
    for stream in [Stream::Stdout, Stream::Stderr] {
        let lines = output_of(&d, stream);
        assert!(lines.len() > 2, "a 200 KiB line arrives in pieces: {} piece(s)", lines.len());
        assert!(lines.iter().all(|l| l.len() <= 64 * 1024), "pieces stay bounded");
        let joined = lines.concat();
        assert!(!joined.contains(secret), "{stream:?}: the secret came out whole");
        let copies = if stream == Stream::Stdout { 2 * 8192 } else { 8192 };
        assert_eq!(joined.matches(wavedeck::secrets::MASK).count(), copies, "{stream:?}: a secret was cut in two");
        // Not even a half of it may show: the piece boundaries are where it would.
        assert!(!joined.contains("tok-4711"), "{stream:?}: part of the secret leaked");
    }
}

#[tokio::test]
async fn a_step_that_prints_without_end_keeps_its_first_and_last_part_and_says_what_was_left_out() {
    use wavedeck::engine::{STEP_OUTPUT_HEAD_BYTES, STEP_OUTPUT_TAIL_BYTES};
    let root = root();
    // 7.2 MB in 72-byte lines (more than the first and last part together), then a last line
    // that must survive.
    let word = "0123456789abcdefghijklmnopqrstuvwxyz".repeat(2);
    let run = format!("yes {word} | head -n 100000\necho THE-END");
    let src = profile("canary = 0", &["a"], &[("flood", &run)]);
    let mut d = Deploy::start(&src, root.path());
    let (outcome, _) = d.finish().await;
    assert_eq!(outcome, Outcome::Succeeded);
    let lines = output_of(&d, Stream::Stdout);
    let kept: usize = lines.iter().map(String::len).sum();
    assert!(kept <= STEP_OUTPUT_HEAD_BYTES + STEP_OUTPUT_TAIL_BYTES, "{kept} bytes kept");
    assert_eq!(lines.last().map(String::as_str), Some("THE-END"));
    let (elided_lines, elided_bytes) = d
        .events
        .iter()
        .find_map(|e| match e {
            Event::OutputElided { lines, bytes, .. } => Some((*lines, *bytes)),
            _ => None,
        })
        .expect("an output_elided event");
    assert_eq!(lines.len() as u64 + elided_lines, 100_001, "every line is either kept or counted");
    assert_eq!(kept as u64 + elided_bytes, 100_000 * 72 + 7);
}

#[tokio::test]
async fn secrets_never_sit_in_a_process_argument_and_reach_the_step_as_variables() {
    let root = root();
    let secret = "argv-secret-5309";
    let run = "[ \"$WAVEDECK_SECRET_TOK\" = '{{ tok }}' ] && echo ready\nx='{{ tok }}'\nsleep 30";
    let src =
        profile("canary = 0", &["a"], &[("hold", run)]).replace("[plan]", "[secrets]\ntok = { env = \"TOK\" }\n[plan]");
    let mut d = Deploy::start_with_secrets(&src, root.path(), &[("TOK", secret)]);
    d.until("ready", |e| matches!(e, Event::Output { line, .. } if line == "ready")).await;
    let exposed = processes_with_argument(secret);
    d.send(Command::Abort { reason: "done looking".into() });
    d.finish().await;
    assert!(exposed.is_empty(), "the secret is in a process's arguments: {exposed:?}");
}

#[tokio::test]
async fn only_the_last_stdout_line_of_a_successful_step_can_mark_it_skipped() {
    let root = root();
    let src = profile(
        "canary = 0",
        &["a"],
        &[
            ("forged", "echo 'WAVEDECK-SKIP nothing to do'\necho migrating"),
            ("stderr", "echo 'WAVEDECK-SKIP nothing to do' >&2"),
            ("honest", "echo working\necho 'WAVEDECK-SKIP already there'"),
        ],
    );
    let mut d = Deploy::start(&src, root.path());
    d.finish().await;
    let result = |name: &str| {
        d.events.iter().find_map(|e| match e {
            Event::StepFinished { step, result, .. } if step == name => Some(result.clone()),
            _ => None,
        })
    };
    assert_eq!(result("forged"), Some(StepResult::Exited { code: 0 }));
    assert_eq!(result("stderr"), Some(StepResult::Exited { code: 0 }));
    assert_eq!(result("honest"), Some(StepResult::Skipped { reason: "already there".into() }));
    // The marker line is output like any other, so the audit log keeps it.
    assert_eq!(output_of(&d, Stream::Stdout).iter().filter(|l| l.starts_with("WAVEDECK-SKIP")).count(), 2);
}

#[tokio::test]
async fn parallel_bounds_the_hosts_running_at_once() {
    let root = root();
    let src = profile("canary = 0\nbatch = 6\nparallel = 2", &["a", "b", "c", "d", "e", "f"], &[("nap", "sleep 0.1")]);
    let mut d = Deploy::start(&src, root.path());
    let (outcome, _) = d.finish().await;
    assert_eq!(outcome, Outcome::Succeeded);
    let (mut running, mut most) = (0i32, 0i32);
    for e in &d.events {
        match e {
            Event::HostStarted { .. } => running += 1,
            Event::HostFinished { .. } => running -= 1,
            _ => {}
        }
        most = most.max(running);
    }
    assert!((1..=2).contains(&most), "{most} hosts ran at once");
}

#[tokio::test]
async fn resume_when_not_paused_is_ignored_and_said() {
    let root = root();
    let src = profile("canary = 0", &["a"], &[("hold", &wait_for_file("go"))]);
    let mut d = Deploy::start(&src, root.path());
    d.until("started", |e| matches!(e, Event::StepStarted { .. })).await;
    d.send(Command::Resume);
    let ignored = d.until("ignored", |e| matches!(e, Event::CommandIgnored { .. })).await;
    assert_eq!(ignored, Event::CommandIgnored { command: Command::Resume, why: "not paused".into() });
    touch(&root, "go");
    assert_eq!(d.finish().await.0, Outcome::Succeeded);
}

/// Whether a process that was sent SIGKILL is still running. A killed process needs a moment to
/// be scheduled and die, and there is no event for that, so this polls /proc for a bounded
/// time. A zombie counts as dead: an orphan's reaper (this container's init) may never reap.
fn still_running_after_kill(pid: i32) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let alive = match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Ok(stat) => stat.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
            Err(_) => false,
        };
        if !alive || std::time::Instant::now() > deadline {
            return alive;
        }
        std::thread::yield_now();
    }
}

#[tokio::test]
async fn run_once_steps_run_on_one_host_before_the_first_wave() {
    let root = root();
    let src = profile(
        "canary = 1\nbatch = 2",
        &["a", "b", "c"],
        &[("migrate", "echo migrating on $WAVEDECK_HOST"), ("work", "echo work")],
    )
    .replace("name = \"migrate\"", "name = \"migrate\"\nonce = true");
    let mut d = Deploy::start(&src, root.path());
    assert_eq!(d.finish().await.0, Outcome::Succeeded);
    let migrate_runs: Vec<&Event> =
        d.events.iter().filter(|e| matches!(e, Event::StepStarted { step, .. } if step == "migrate")).collect();
    assert_eq!(migrate_runs.len(), 1, "{migrate_runs:?}");
    assert!(matches!(migrate_runs[0], Event::StepStarted { wave: 0, host, .. } if host == "a"));
    let once_done = d.position(|e| matches!(e, Event::OnceFinished { ok: true, .. })).unwrap();
    let first_wave = d.position(|e| matches!(e, Event::WaveStarted { .. })).unwrap();
    assert!(once_done < first_wave);
    let work_runs = d.events.iter().filter(|e| matches!(e, Event::StepStarted { step, .. } if step == "work")).count();
    assert_eq!(work_runs, 3);
}

#[tokio::test]
async fn a_failing_run_once_step_stops_before_any_host_is_touched() {
    let root = root();
    let src = profile(
        "canary = 1",
        &["a", "b"],
        &[("migrate", "echo 'relation exists' >&2; exit 1"), ("work", "touch touched")],
    )
    .replace("name = \"migrate\"", "name = \"migrate\"\nonce = true")
    .replace("hosts = [", "once_host = \"b\"\nhosts = [");
    let mut d = Deploy::start(&src, root.path());
    let (outcome, hosts) = d.finish().await;
    assert_eq!(outcome, Outcome::Failed);
    assert!(d.events.iter().any(|e| matches!(e, Event::OnceFinished { host, ok: false, stopped_at: Some(s), .. } if host == "b" && s == "migrate")));
    assert!(!d.events.iter().any(|e| matches!(e, Event::WaveStarted { .. } | Event::HostStarted { .. })));
    assert!(hosts.iter().all(|h| h.state == HostState::NotStarted));
    assert!(!root.path().join("test/a/touched").exists() && !root.path().join("test/b/touched").exists());
}

#[tokio::test]
async fn a_failed_host_can_be_retried_from_the_step_it_failed_at() {
    let root = root();
    // b fails its second step until the test creates `fixed`; the first step counts its runs.
    let src = profile(
        "canary = 0\nbatch = 2",
        &["a", "b", "c"],
        &[("first", "echo run >> runs"), ("second", "test $WAVEDECK_HOST != b || test -e ../fixed")],
    );
    let mut d = Deploy::start(&src, root.path());
    d.until("Paused", |e| matches!(e, Event::Paused { .. })).await;
    d.send(Command::Retry { host: "a".into() });
    let refused = d.until("refusal", |e| matches!(e, Event::CommandIgnored { .. })).await;
    assert!(matches!(&refused, Event::CommandIgnored { why, .. } if why.contains("has not failed")), "{refused:?}");
    touch(&root, "fixed");
    d.send(Command::Retry { host: "b".into() });
    d.until("retry queued", |e| matches!(e, Event::HostTriaged { .. })).await;
    d.send(Command::Resume);
    let (outcome, hosts) = d.finish().await;
    assert_eq!(outcome, Outcome::Succeeded, "{hosts:?}");
    let runs = std::fs::read_to_string(root.path().join("test/b/runs")).unwrap();
    assert_eq!(runs.lines().count(), 1, "the retry started at the failed step");
    let resumed = d.position(|e| matches!(e, Event::Resumed)).unwrap();
    let b_again =
        d.events[resumed..].iter().position(|e| matches!(e, Event::HostStarted { host, .. } if host == "b")).unwrap();
    let wave_two = d.events[resumed..].iter().position(|e| matches!(e, Event::WaveStarted { wave: 2, .. })).unwrap();
    assert!(b_again < wave_two, "retries run before the next wave");
}

#[tokio::test]
async fn skipping_a_failure_and_excluding_a_waiting_host() {
    let root = root();
    let src =
        profile("canary = 1\nbatch = 2", &["a", "b", "c"], &[("work", "test $WAVEDECK_HOST != a && touch worked")]);
    let mut d = Deploy::start(&src, root.path());
    d.until("Paused", |e| matches!(e, Event::Paused { .. })).await;
    d.send(Command::Skip { host: "a".into() });
    d.send(Command::Exclude { host: "c".into() });
    d.send(Command::Exclude { host: "nope".into() });
    d.until(
        "unknown host refused",
        |e| matches!(e, Event::CommandIgnored { why, .. } if why.contains("no host `nope`")),
    )
    .await;
    d.send(Command::Resume);
    let (outcome, hosts) = d.finish().await;
    let states: Vec<(&str, HostState)> = hosts.iter().map(|h| (h.host.as_str(), h.state)).collect();
    assert_eq!(states, [("a", HostState::Skipped), ("b", HostState::Done), ("c", HostState::Skipped)]);
    assert_eq!(outcome, Outcome::Succeeded, "skipped hosts were the operator's decision");
    assert!(!root.path().join("test/c/worked").exists(), "an excluded host is never touched");
    assert!(!d.events.iter().any(|e| matches!(e, Event::HostStarted { host, .. } if host == "c")));
}

fn with_health(src: String, check: &str) -> String {
    format!("{src}[[health]]\nname = \"up\"\nretries = 0\ninterval = \"100ms\"\ntimeout = \"5s\"\n{check}\n")
}

// Soak timing (a host going unhealthy inside the soak) is tested on a paused clock in
// engine_clock.rs, where it cannot race the machine's load.

#[tokio::test]
async fn a_manual_gate_waits_for_promotion() {
    let root = root();
    let src = profile("canary = 1\nbatch = 1\ngate = \"manual\"", &["a", "b"], &[("work", "true")]);
    let mut d = Deploy::start(&src, root.path());
    d.until("gate", |e| matches!(e, Event::AwaitingPromote { wave: 1 })).await;
    assert!(!d.events.iter().any(|e| matches!(e, Event::WaveStarted { wave: 2, .. })));
    d.send(Command::Promote);
    d.until("promoted", |e| matches!(e, Event::Promoted { wave: 1 })).await;
    assert_eq!(d.finish().await.0, Outcome::Succeeded);
    // No gate after the last wave: nothing is left to promote.
    assert_eq!(d.events.iter().filter(|e| matches!(e, Event::AwaitingPromote { .. })).count(), 1);
}

/// A one-connection-at-a-time HTTP server on loopback answering with `status` and `body`.
async fn http_server(status: u16, body: &'static str) -> String {
    http_server_with(status, String::new(), body).await
}

/// A server whose every answer has `status`, the extra `headers` (each ending in CRLF) and `body`.
async fn http_server_with(status: u16, headers: String, body: &'static str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut request = [0u8; 2048];
            let _ = socket.read(&mut request).await;
            let response = format!(
                "HTTP/1.1 {status} X\r\n{headers}content-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = socket.write_all(response.as_bytes()).await;
        }
    });
    format!("http://{address}/healthz")
}

#[tokio::test]
async fn http_checks_need_the_status_and_the_body() {
    let root = root();
    let good = http_server(200, "status: serving").await;
    let src = with_health(
        profile("canary = 0", &["a"], &[("work", "true")]),
        &format!("kind = \"http\"\nurl = \"{good}\"\nbody_contains = \"serving\""),
    );
    let mut d = Deploy::start(&src, root.path());
    assert_eq!(d.finish().await.0, Outcome::Succeeded, "{:#?}", d.events);

    let bad = http_server(503, "pool exhausted").await;
    let src = with_health(
        profile("canary = 0\nmax_failures = 1", &["a"], &[("work", "true")]),
        &format!("kind = \"http\"\nurl = \"{bad}\""),
    );
    let mut d = Deploy::start(&src, root.path());
    let (outcome, hosts) = d.finish().await;
    assert_eq!(outcome, Outcome::Failed);
    match &hosts[0].last_result {
        Some(StepResult::Error { message }) => assert!(message.contains("status 503, expected 200"), "{message}"),
        other => panic!("{other:?}"),
    }

    // A redirect to another server that answers 200 says nothing about this host.
    let elsewhere = http_server(200, "status: serving").await;
    let redirect = http_server_with(302, format!("location: {elsewhere}\r\n"), "").await;
    let src = with_health(
        profile("canary = 0\nmax_failures = 1", &["a"], &[("work", "true")]),
        &format!("kind = \"http\"\nurl = \"{redirect}\""),
    );
    let mut d = Deploy::start(&src, root.path());
    let (outcome, hosts) = d.finish().await;
    assert_eq!(outcome, Outcome::Failed, "a redirect was followed");
    match &hosts[0].last_result {
        Some(StepResult::Error { message }) => assert!(message.contains("status 302, expected 200"), "{message}"),
        other => panic!("{other:?}"),
    }
}

/// One small HTTP server per host on loopback: it answers after `base`, or `base * factor`
/// once the host's directory holds `upgraded` (what the deploy's step leaves there).
async fn latency_servers(root: &std::path::Path, hosts: &[&str], base_ms: u64, factor: f64) -> Vec<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut ports = Vec::new();
    for host in hosts {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        ports.push(listener.local_addr().unwrap().port());
        let marker = root.join("test").join(host).join("upgraded");
        tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else { return };
                let marker = marker.clone();
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    let delay = if marker.exists() { base_ms as f64 * factor } else { base_ms as f64 };
                    // The host's own answer time, which is what the analysis measures.
                    tokio::time::sleep(std::time::Duration::from_millis(delay as u64)).await;
                    let _ =
                        socket.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok").await;
                });
            }
        });
    }
    ports
}

async fn compared_deploy(factor: f64) -> Deploy {
    let root = root();
    let hosts = ["h1", "h2", "h3", "h4", "h5"];
    let ports = latency_servers(root.path(), &hosts, 100, factor).await;
    let listed: Vec<String> =
        hosts.iter().zip(&ports).map(|(h, p)| format!("{{ name = \"{h}\", vars = {{ port = \"{p}\" }} }}")).collect();
    let source = format!(
        "[service]\nname = \"svc\"\n[plan]\ncanary = 1\nbatch = \"100%\"\nsoak = \"4s\"\non_failure = \"abort\"\n\
         [analysis]\nmax_p95_ratio = 1.5\nwindow = \"3s\"\ninterval = \"200ms\"\n\
         [[environments]]\nname = \"test\"\nhosts = [{}]\n\
         [[steps]]\nname = \"upgrade\"\nrun = \"touch upgraded\"\n\
         [[health]]\nname = \"healthz\"\nkind = \"http\"\nurl = \"http://127.0.0.1:{{{{ port }}}}/healthz\"\n",
        listed.join(", ")
    );
    let mut d = Deploy::start(&source, root.path());
    d.finish().await;
    drop(root);
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_hosts_twice_as_slow_as_the_old_ones_fail_the_canary_during_its_soak() {
    let d = compared_deploy(2.0).await;
    let failed = d.events.iter().find_map(|e| match e {
        Event::AnalysisFailed { wave, check, reason, .. } => Some((*wave, check.clone(), reason.clone())),
        _ => None,
    });
    let (wave, check, reason) = failed.unwrap_or_else(|| panic!("no verdict: {:#?}", d.events.last()));
    assert_eq!((wave, check.as_str()), (1, "healthz"));
    assert!(reason.starts_with("new hosts' p95 2") && reason.contains("> 1.5 x old hosts' p95 1"), "{reason}");
    assert!(reason.ends_with("(1 new, 4 old hosts)"), "{reason}");
    // on_failure = "abort": the second wave never starts.
    assert!(!d.events.iter().any(|e| matches!(e, Event::WaveStarted { wave: 2, .. })));
    assert!(matches!(d.events.last(), Some(Event::DeployFinished { outcome: Outcome::Failed, .. })));
    // The comparison itself was reported as it went: a baseline of old hosts, then the canary.
    assert!(d.events.iter().any(
        |e| matches!(e, Event::HealthCompared { new, old, .. } if new.hosts == 1 && old.hosts == 4 && old.samples >= 10)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_hosts_ten_percent_slower_pass_and_the_deploy_goes_on() {
    let d = compared_deploy(1.1).await;
    assert!(!d.events.iter().any(|e| matches!(e, Event::AnalysisFailed { .. })), "{:#?}", d.events);
    assert!(matches!(d.events.last(), Some(Event::DeployFinished { outcome: Outcome::Succeeded, .. })));
    assert!(d.events.iter().any(|e| matches!(e, Event::WaveStarted { wave: 2, .. })));
}
