//! The SSH transport against real OpenSSH sshd servers started by the tests on loopback.
#![allow(clippy::unwrap_used)] // Tests panic on unexpected errors by design.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Deploy;
use common::sshd::{self, Fleet, Sshd};
use wavedeck::event::{Command, Event, HostState, Outcome, StepResult, Stream};
use wavedeck::profile::Profile;
use wavedeck::transport::Transport;
use wavedeck::transport::ssh::SshTransport;

fn transport(profile: &str) -> Arc<dyn Transport> {
    let profile = Profile::parse(Path::new("test.toml"), profile).unwrap_or_else(|e| panic!("{e}"));
    Arc::new(SshTransport::new(&profile.environment("test").unwrap().ssh).unwrap())
}

fn start(profile: &str) -> Deploy {
    Deploy::start_on(profile, transport(profile))
}

fn step(name: &str, run: &str, extra: &str) -> String {
    format!("[[steps]]\nname = \"{name}\"\nretry_delay = \"10ms\"\n{extra}\nrun = '''\n{run}\n'''\n")
}

/// An upload step named `name` of the local file `from` to `to` (under the deploy directory).
fn upload_step(name: &str, from: &Path, to: &str, extra: &str) -> String {
    format!("[[steps]]\nname = \"{name}\"\n{extra}\nupload = {{ from = \"{}\", to = \"{to}\" }}\n", from.display())
}

/// Whether a process is still running (a zombie counts as gone); polls briefly because a
/// killed process needs a moment to die and there is no event for that.
fn still_running(pid: i32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let alive = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|stat| stat.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')));
        if !alive || Instant::now() > deadline {
            return alive;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn read_pid(path: &Path) -> i32 {
    std::fs::read_to_string(path).unwrap().trim().parse().unwrap()
}

/// After a step that timed out: the process it left in `sleeper.pid` and the agent it ran on
/// (its `agent <pid>` line) are gone.
fn assert_killed_with_its_agent(fleet: &Fleet, agent_line: &str, context: &str) {
    let pid = read_pid(&fleet.path("deploy/sleeper.pid"));
    assert!(!still_running(pid), "{context}: remote sleeper {pid} survived the timeout");
    let agent: i32 = agent_line["agent ".len()..].parse().unwrap();
    assert!(!still_running(agent), "{context}: the timed-out step's agent {agent} is gone");
}

#[tokio::test]
async fn output_streams_before_exit_with_stderr_and_exit_code() {
    if !sshd::available() {
        return;
    }
    let fleet = Fleet::start(1);
    // Steps run in the fleet's `deploy` directory; the test creates `go` there to let it finish.
    let run = "echo one\necho warn >&2\nwhile [ ! -e go ]; do sleep 0.02; done\necho two\nexit 3";
    let mut d = start(&fleet.profile(&step("talk", run, ""), ""));
    d.until("first line", |e| matches!(e, Event::Output { line, .. } if line == "one")).await;
    assert!(!d.events.iter().any(|e| matches!(e, Event::StepFinished { .. })), "output arrived before the exit");
    std::fs::write(fleet.path("deploy/go"), b"").unwrap();
    let (outcome, hosts) = d.finish().await;
    assert_eq!(outcome, Outcome::Failed);
    assert_eq!(hosts[0].last_result, Some(StepResult::Exited { code: 3 }));
    let lines: Vec<(Stream, &str)> = d
        .events
        .iter()
        .filter_map(|e| match e {
            Event::Output { stream, line, .. } => Some((*stream, line.as_str())),
            _ => None,
        })
        .collect();
    assert!(lines.contains(&(Stream::Stderr, "warn")), "{lines:?}");
    assert!(lines.contains(&(Stream::Stdout, "two")), "{lines:?}");
    assert!(!lines.iter().any(|(_, l)| l.starts_with("WAVEDECK-PGID")), "the marker is not output");
}

#[tokio::test]
async fn timeout_and_abort_kill_the_remote_process_group() {
    if !sshd::available() {
        return;
    }
    let fleet = Fleet::start(1);
    let run = "sleep 300 &\necho $! > sleeper.pid\necho ready\nwait";
    let mut d = start(&fleet.profile(&step("slow", run, "timeout = \"1s\""), ""));
    let (_, hosts) = d.finish().await;
    assert_eq!(hosts[0].last_result, Some(StepResult::TimedOut));
    let pid = read_pid(&fleet.path("deploy/sleeper.pid"));
    assert!(!still_running(pid), "remote sleeper {pid} survived the timeout");

    let mut d = start(&fleet.profile(&step("slow", run, ""), ""));
    d.until("ready", |e| matches!(e, Event::Output { line, .. } if line == "ready")).await;
    d.send(Command::Abort { reason: "stop".into() });
    let (outcome, hosts) = d.finish().await;
    assert_eq!((outcome, hosts[0].state), (Outcome::Aborted, HostState::Cancelled));
    let pid = read_pid(&fleet.path("deploy/sleeper.pid"));
    assert!(!still_running(pid), "remote sleeper {pid} survived the abort");
}

#[tokio::test]
async fn secrets_travel_inside_the_channel_never_in_a_remote_process_argument() {
    if !sshd::available() {
        return;
    }
    let fleet = Fleet::start(1);
    let secret = "ssh-argv-secret-8675";
    let run = "[ \"$WAVEDECK_SECRET_TOK\" = '{{ tok }}' ] && echo ready\nx='{{ tok }}'\nsleep 30";
    let profile =
        fleet.profile(&step("hold", run, ""), "").replace("[plan]", "[secrets]\ntok = { env = \"TOK\" }\n\n[plan]");
    let mut d = Deploy::start_on_with_secrets(&profile, transport(&profile), &[("TOK", secret)]);
    d.until("ready", |e| matches!(e, Event::Output { line, .. } if line == "ready")).await;
    // The test's sshd runs on this machine, so its sessions' processes are in this /proc.
    let exposed = common::processes_with_argument(secret);
    d.send(Command::Abort { reason: "done looking".into() });
    d.finish().await;
    assert!(exposed.is_empty(), "the secret is in a process's arguments: {exposed:?}");
}

fn connect_failure(d: &Deploy) -> (String, String) {
    d.events
        .iter()
        .find_map(|e| match e {
            Event::ConnectFailed { kind, message, .. } => Some((kind.clone(), message.clone())),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no ConnectFailed in {:#?}", d.events))
}

#[tokio::test]
async fn unknown_and_changed_host_keys_are_refused() {
    if !sshd::available() {
        return;
    }
    let fleet = Fleet::start(1);
    std::fs::write(fleet.path("known_hosts"), "").unwrap();
    let mut d = start(&fleet.profile(&step("hi", "echo hi", ""), ""));
    let (_, hosts) = d.finish().await;
    let (kind, message) = connect_failure(&d);
    assert_eq!(kind, "host_key_unknown");
    assert!(message.contains("ssh-ed25519 SHA256:") && message.contains("accept-new"), "{message}");
    assert_eq!(hosts[0].state, HostState::Failed);
    assert!(!d.events.iter().any(|e| matches!(e, Event::StepStarted { .. })));

    // Another server's key recorded for this one: a changed key.
    let impostor = Sshd::start(fleet.dir.path(), "impostor");
    let line =
        impostor.known_hosts_line().replace(&format!(":{} ", impostor.port), &format!(":{} ", fleet.servers[0].port));
    std::fs::write(fleet.path("known_hosts"), line).unwrap();
    let profile = fleet.profile(&step("hi", "echo hi", ""), "").replace("connect_attempts = 1", "connect_attempts = 3");
    let mut d = start(&profile);
    d.finish().await;
    let (kind, message) = connect_failure(&d);
    assert_eq!(kind, "host_key_changed");
    assert!(message.contains("HOST KEY CHANGED") && message.contains("known_hosts:1"), "{message}");
    let attempts = d.events.iter().filter(|e| matches!(e, Event::ConnectFailed { .. })).count();
    assert_eq!(attempts, 1, "a changed key is never retried");
}

/// Whether OpenSSH's own client connects to `server` with `known_hosts` under `policy`.
fn openssh_connects(fleet: &Fleet, known_hosts: &Path, policy: &str) -> bool {
    std::process::Command::new("ssh")
        .args(["-F", "/dev/null", "-o", "BatchMode=yes", "-o", "GlobalKnownHostsFile=/dev/null"])
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
        .arg("-o")
        .arg(format!("StrictHostKeyChecking={policy}"))
        .arg("-i")
        .arg(fleet.path("client_ed25519"))
        .args(["-p", &fleet.servers[0].port.to_string(), "root@127.0.0.1", "true"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap()
        .status
        .success()
}

#[tokio::test]
async fn known_hosts_verdicts_agree_with_openssh_in_every_odd_case() {
    if !sshd::available() {
        return;
    }
    let fleet = Fleet::start(1);
    let port = fleet.servers[0].port;
    let real = fleet.servers[0].known_hosts_line();
    // Some other ed25519 key: what the file would hold for a host that was since replaced.
    sshd::keygen(&fleet.path("old_host"), "ed25519");
    let old_key = std::fs::read_to_string(fleet.path("old_host.pub")).unwrap();
    let old: Vec<&str> = old_key.split_whitespace().take(2).collect();
    let old = old.join(" ");
    sshd::keygen(&fleet.path("other_type"), "ecdsa");
    let other_type = std::fs::read_to_string(fleet.path("other_type.pub")).unwrap();
    let other_type: String = other_type.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
    let cases: Vec<(&str, &str, Vec<u8>)> = vec![
        (
            "a non-UTF-8 byte",
            "accept-new",
            [b"# caf\xe9\n".to_vec(), format!("[127.0.0.1]:{port} {old}\n").into_bytes()].concat(),
        ),
        (
            "a malformed line for the host",
            "accept-new",
            format!("[127.0.0.1]:{port} ssh-ed25519 !!!\n[127.0.0.1]:{port} {old}\n").into_bytes(),
        ),
        (
            "tab-separated fields",
            "accept-new",
            format!("[127.0.0.1]:{port}\t{}\n", old.replacen(' ', "\t", 1)).into_bytes(),
        ),
        ("a wildcard pattern", "accept-new", format!("[127.0.0.*]:{port} {old}\n").into_bytes()),
        ("a key of another type", "accept-new", format!("[127.0.0.1]:{port} {other_type}\n").into_bytes()),
        ("@revoked under strict", "yes", format!("{real}@revoked {real}").into_bytes()),
    ];
    for (what, policy, known) in cases {
        let file = fleet.path("known_hosts");
        std::fs::write(&file, &known).unwrap();
        assert!(!openssh_connects(&fleet, &file, policy), "{what}: OpenSSH connected, so this case proves nothing");
        std::fs::write(&file, &known).unwrap();
        let ssh_policy = if policy == "yes" { "strict" } else { "accept-new" };
        let mut d = start(&fleet.profile(&step("hi", "echo hi", ""), &format!("host_key_policy = \"{ssh_policy}\"")));
        let (outcome, _) = d.finish().await;
        assert_eq!(outcome, Outcome::Failed, "{what}: wavedeck connected where OpenSSH refused");
        assert_eq!(connect_failure(&d).0, "host_key_changed", "{what}");
        assert_eq!(std::fs::read(&file).unwrap(), known, "{what}: the file was changed");
    }
    // And where OpenSSH trusts, so does wavedeck.
    let file = fleet.path("known_hosts");
    std::fs::write(&file, &real).unwrap();
    assert!(openssh_connects(&fleet, &file, "yes"));
    let mut d = start(&fleet.profile(&step("hi", "echo hi", ""), ""));
    assert_eq!(d.finish().await.0, Outcome::Succeeded);
}

#[tokio::test]
async fn accept_new_records_an_unknown_key() {
    if !sshd::available() {
        return;
    }
    let fleet = Fleet::start(1);
    std::fs::write(fleet.path("known_hosts"), "").unwrap();
    let mut d = start(&fleet.profile(&step("hi", "echo hi", ""), "host_key_policy = \"accept-new\""));
    assert_eq!(d.finish().await.0, Outcome::Succeeded);
    let known = std::fs::read_to_string(fleet.path("known_hosts")).unwrap();
    assert!(known.trim_start().starts_with(&format!("[127.0.0.1]:{} ssh-ed25519 ", fleet.servers[0].port)), "{known}");
}

#[tokio::test]
async fn an_rsa_host_key_works_through_sha2_but_a_server_offering_only_sha1_ssh_rsa_is_refused() {
    if !sshd::available() {
        return;
    }
    let fleet = Fleet::start_with(1, "rsa", "");
    let mut d = start(&fleet.profile(&step("hi", "echo hi", ""), ""));
    assert_eq!(d.finish().await.0, Outcome::Succeeded, "{:#?}", d.events);

    // As OpenSSH's client since 8.8: no SHA-1 signatures from the host.
    let fleet = Fleet::start_with(1, "rsa", "HostKeyAlgorithms ssh-rsa");
    let mut d = start(&fleet.profile(&step("hi", "echo hi", ""), ""));
    let (outcome, hosts) = d.finish().await;
    assert_eq!(outcome, Outcome::Failed);
    assert_eq!(hosts[0].stopped_at.as_deref(), Some("connect"), "{:#?}", d.events);
}

#[tokio::test]
async fn auth_failure_names_what_was_tried() {
    if !sshd::available() {
        return;
    }
    let fleet = Fleet::start(1);
    sshd::keygen(&fleet.path("stranger"), "ed25519");
    let profile = fleet.profile(&step("hi", "echo hi", ""), "").replace("client_ed25519", "stranger");
    let mut d = start(&profile);
    d.finish().await;
    let (kind, message) = connect_failure(&d);
    assert_eq!(kind, "auth_failed");
    assert!(message.contains("root@127.0.0.1") && message.contains("stranger"), "{message}");
}

#[tokio::test]
async fn rsa_and_ecdsa_keys_authenticate() {
    if !sshd::available() {
        return;
    }
    let fleet = Fleet::start(1);
    for kind in ["rsa", "ecdsa"] {
        let key = fleet.path(&format!("client_{kind}"));
        sshd::keygen(&key, kind);
        let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
        let mut authorized = std::fs::OpenOptions::new().append(true).open(fleet.path("authorized_keys")).unwrap();
        std::io::Write::write_all(&mut authorized, public.as_bytes()).unwrap();
        let profile =
            fleet.profile(&step("hi", "echo hi", ""), "").replace("client_ed25519", &format!("client_{kind}"));
        let mut d = start(&profile);
        assert_eq!(d.finish().await.0, Outcome::Succeeded, "{kind}: {:#?}", d.events);
    }
}

#[tokio::test]
async fn an_encrypted_key_without_an_agent_is_named() {
    if !sshd::available() {
        return;
    }
    let fleet = Fleet::start(1);
    sshd::keygen_encrypted(&fleet.path("locked"), "correct horse");
    let profile = fleet.profile(&step("hi", "echo hi", ""), "").replace("client_ed25519", "locked");
    let transport = transport(&profile);
    // No agent for this test, whatever the machine has.
    let mut d = temp_env_without_agent(|| Deploy::start_on(&profile, transport));
    d.finish().await;
    let (kind, message) = connect_failure(&d);
    assert_eq!(kind, "config");
    assert!(message.contains("locked") && message.contains("encrypted") && message.contains("ssh-add"), "{message}");
}

fn temp_env_without_agent<T>(f: impl FnOnce() -> T) -> T {
    // The agent is looked up when connecting, which happens in the engine task; tests in this
    // file never set SSH_AUTH_SOCK, so only an inherited one could interfere.
    assert!(std::env::var_os("SSH_AUTH_SOCK").is_none(), "unset SSH_AUTH_SOCK to run this test");
    f()
}

#[tokio::test]
async fn a_cut_connection_reattaches_and_a_step_that_hangs_is_still_killed_at_its_timeout() {
    if !sshd::available() {
        return;
    }
    let fleet = Fleet::start(1);
    let mut d = start(
        &fleet.profile(&step("wait", "echo ready\nsleep 300", "timeout = \"2s\""), "keepalive_interval = \"1s\""),
    );
    d.until("ready", |e| matches!(e, Event::Output { line, .. } if line == "ready")).await;
    fleet.servers[0].cut_connections();
    let (outcome, hosts) = d.finish().await;
    assert_eq!(outcome, Outcome::Failed);
    assert_eq!(hosts[0].last_result, Some(StepResult::TimedOut), "{:#?}", d.events);
    assert!(output_of(&d).iter().any(|l| l.contains("reconnecting to find it on the host")), "{:#?}", d.events);
    // Re-attached, the runner still owned the step: its timeout killed the group on the host.
    assert_eq!(remote_count("sleep 301.7"), 0, "nothing is left running on the host");
}

/// The output lines of a deploy's events.
fn output_of(d: &Deploy) -> Vec<String> {
    d.events
        .iter()
        .filter_map(|e| match e {
            Event::Output { line, .. } => Some(line.clone()),
            _ => None,
        })
        .collect()
}

/// Processes on this machine (the hosts' too) whose command line has `pattern`.
fn remote_count(pattern: &str) -> usize {
    let out = std::process::Command::new("pgrep").args(["-f", pattern]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).lines().count()
}

#[tokio::test]
async fn a_dropped_connection_waits_for_the_step_still_running_and_takes_its_real_exit_status() {
    if !sshd::available() {
        return;
    }
    let fleet = Fleet::start(1);
    // After `ready` the step writes nothing to its channel, so losing it does not stop the step.
    let run = "echo ready\nsleep 1.73 >/dev/null\necho ran >> count\nexit 7";
    let mut d = start(&fleet.profile(&step("work", run, ""), ""));
    d.until("ready", |e| matches!(e, Event::Output { line, .. } if line == "ready")).await;
    fleet.servers[0].cut_connections();
    let (_, hosts) = d.finish().await;
    assert_eq!(hosts[0].last_result, Some(StepResult::Exited { code: 7 }), "{:#?}", d.events);
    assert!(output_of(&d).iter().any(|l| l.contains("still running on the host: waiting for it")), "{:#?}", d.events);
    assert_eq!(std::fs::read_to_string(fleet.path("deploy/count")).unwrap(), "ran\n", "it ran once");
    assert_eq!(remote_count("sleep 1.73"), 0);
}

#[tokio::test]
async fn a_step_that_writes_while_the_connection_is_down_goes_on_and_its_output_is_fetched() {
    if !sshd::available() {
        return;
    }
    let fleet = Fleet::start(1);
    let run = "echo ready\nsleep 0.93\necho written-after-the-drop\necho also-on-stderr >&2\necho ran >> count\nexit 5";
    let mut d = start(&fleet.profile(&step("work", run, ""), "keep_step_output = true"));
    d.until("ready", |e| matches!(e, Event::Output { line, .. } if line == "ready")).await;
    fleet.servers[0].cut_connections();
    let (_, hosts) = d.finish().await;
    assert_eq!(hosts[0].last_result, Some(StepResult::Exited { code: 5 }), "{:#?}", d.events);
    let lines = output_of(&d);
    assert!(lines.iter().any(|l| l == "written-after-the-drop"), "{lines:#?}");
    assert!(lines.iter().any(|l| l == "also-on-stderr"), "{lines:#?}");
    assert_eq!(lines.iter().filter(|l| *l == "ready").count(), 1, "what arrived before is not shown twice: {lines:#?}");
    assert_eq!(std::fs::read_to_string(fleet.path("deploy/count")).unwrap(), "ran\n", "it ran once");
}

#[tokio::test]
async fn a_step_that_ends_while_the_connection_is_down_reports_the_status_it_recorded() {
    if !sshd::available() {
        return;
    }
    let fleet = Fleet::start(1);
    let run = "echo ready\nsleep 0.41 >/dev/null\necho ran >> count\nexit 4";
    let mut d = start(&fleet.profile(&step("work", run, ""), ""));
    d.until("ready", |e| matches!(e, Event::Output { line, .. } if line == "ready")).await;
    // The server stops answering new connections while the step ends on its own.
    let listener = nix::unistd::Pid::from_raw(fleet.servers[0].pid() as i32);
    nix::sys::signal::kill(listener, nix::sys::signal::Signal::SIGSTOP).unwrap();
    fleet.servers[0].cut_connections();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(fleet.path("deploy/count")).unwrap_or_default().contains("ran") {
        assert!(Instant::now() < deadline, "the step never ended on the host");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    nix::sys::signal::kill(listener, nix::sys::signal::Signal::SIGCONT).unwrap();
    let (_, hosts) = d.finish().await;
    assert_eq!(hosts[0].last_result, Some(StepResult::Exited { code: 4 }), "{:#?}", d.events);
    assert!(output_of(&d).iter().any(|l| l.contains("ended with exit 4: taking that")), "{:#?}", d.events);
    assert_eq!(std::fs::read_to_string(fleet.path("deploy/count")).unwrap(), "ran\n", "it ran once");
}

#[tokio::test]
async fn uploads_are_verified_renamed_into_place_and_skipped_when_identical() {
    if !sshd::available() {
        return;
    }
    let fleet = Fleet::start(1);
    let artifact = fleet.path("app.tar");
    let content: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&artifact, &content).unwrap();
    let upload = upload_step("upload", &artifact, "releases/app.tar", "");
    let profile = fleet.profile(&upload, "");
    let mut d = start(&profile);
    assert_eq!(d.finish().await.0, Outcome::Succeeded, "{:#?}", d.events);
    assert_eq!(std::fs::read(fleet.path("deploy/releases/app.tar")).unwrap(), content);
    let leftovers: Vec<_> =
        std::fs::read_dir(fleet.path("deploy/releases")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(leftovers.len(), 1, "no temporary files left: {leftovers:?}");
    let progress: Vec<(u64, u64)> = d
        .events
        .iter()
        .filter_map(|e| match e {
            Event::UploadProgress { sent, total, .. } => Some((*sent, *total)),
            _ => None,
        })
        .collect();
    assert_eq!(progress.first(), Some(&(0, 3_000_000)));
    assert_eq!(progress.last(), Some(&(3_000_000, 3_000_000)));

    let mut again = start(&profile);
    let (_, hosts) = again.finish().await;
    assert!(
        matches!(&hosts[0].last_result, Some(StepResult::Skipped { reason }) if reason.contains("sha256")),
        "{hosts:?}"
    );
}

#[tokio::test]
async fn proxy_jump_goes_through_a_verified_bastion() {
    if !sshd::available() {
        return;
    }
    let fleet = Fleet::start(2);
    let (bastion, target) = (&fleet.servers[0], &fleet.servers[1]);
    std::fs::write(
        fleet.path("ssh_config"),
        format!(
            "Host inner-web\n  HostName 127.0.0.1\n  Port {}\n  ProxyJump root@127.0.0.1:{}\n",
            target.port, bastion.port
        ),
    )
    .unwrap();
    let profile = fleet
        .profile(&step("where", "echo via-jump", ""), &format!("config = \"{}\"", fleet.path("ssh_config").display()))
        .replace("config = \"none\"\n", "")
        .replace(&format!("{{ name = \"h0\", address = \"127.0.0.1\", port = {} }}, ", bastion.port), "")
        .replace(&format!("address = \"127.0.0.1\", port = {} }}", target.port), "address = \"inner-web\" }");
    let mut d = start(&profile);
    assert_eq!(d.finish().await.0, Outcome::Succeeded, "{:#?}", d.events);
    assert!(d.events.iter().any(|e| matches!(e, Event::Output { line, .. } if line == "via-jump")));
    assert!(
        bastion.log().contains("direct-tcpip") || bastion.log().contains("Accepted publickey"),
        "{}",
        bastion.log()
    );

    // The bastion's key is verified like any host's.
    let known = std::fs::read_to_string(fleet.path("known_hosts")).unwrap();
    let without_bastion: String =
        known.lines().filter(|l| !l.contains(&format!(":{} ", bastion.port))).map(|l| format!("{l}\n")).collect();
    std::fs::write(fleet.path("known_hosts"), without_bastion).unwrap();
    let mut d = start(&profile);
    d.finish().await;
    let (kind, message) = connect_failure(&d);
    assert_eq!(kind, "host_key_unknown");
    assert!(message.contains(&format!("[127.0.0.1]:{}", bastion.port)), "{message}");
}

#[tokio::test]
async fn an_unreachable_host_is_retried_with_backoff_and_each_attempt_is_an_event() {
    if !sshd::available() {
        return;
    }
    let fleet = Fleet::start(1);
    // Nothing listens on 127.0.0.3 (the test servers bind 127.0.0.1 only), so no other test's
    // server can take the port meanwhile.
    let closed = sshd::free_port();
    let profile =
        fleet.profile(&step("hi", "echo hi", ""), "").replace("connect_attempts = 1", "connect_attempts = 3").replace(
            &format!("address = \"127.0.0.1\", port = {} }}", fleet.servers[0].port),
            &format!("address = \"127.0.0.3\", port = {closed} }}"),
        );
    let mut d = start(&profile);
    let (_, hosts) = d.finish().await;
    let attempts: Vec<(u32, u32, String, Option<u64>)> = d
        .events
        .iter()
        .filter_map(|e| match e {
            Event::ConnectFailed { attempt, of, kind, retry_in_ms, .. } => {
                Some((*attempt, *of, kind.clone(), *retry_in_ms))
            }
            _ => None,
        })
        .collect();
    assert_eq!(attempts.len(), 3, "{attempts:?}");
    assert!(attempts.iter().all(|(_, of, kind, _)| *of == 3 && kind == "unreachable"));
    let waits: Vec<Option<u64>> = attempts.iter().map(|a| a.3).collect();
    // 0.5 s then 1 s, each ±25%; none after the last attempt.
    assert!(matches!(waits[0], Some(ms) if (375..=625).contains(&ms)), "{waits:?}");
    assert!(matches!(waits[1], Some(ms) if (750..=1250).contains(&ms)), "{waits:?}");
    assert_eq!(waits[2], None);
    assert_eq!(hosts[0].state, HostState::Failed);
}

#[tokio::test]
async fn hashed_known_hosts_entries_are_understood() {
    if !sshd::available() {
        return;
    }
    let fleet = Fleet::start(1);
    let hashed =
        std::process::Command::new("ssh-keygen").arg("-H").arg("-f").arg(fleet.path("known_hosts")).output().unwrap();
    assert!(hashed.status.success());
    let text = std::fs::read_to_string(fleet.path("known_hosts")).unwrap();
    assert!(text.starts_with("|1|"), "hashed: {text}");
    let mut d = start(&fleet.profile(&step("hi", "echo hi", ""), ""));
    assert_eq!(d.finish().await.0, Outcome::Succeeded, "{:#?}", d.events);
}

#[tokio::test]
async fn a_50_mib_upload_streams_in_one_channel_and_a_host_that_has_it_gets_nothing() {
    if !sshd::available() {
        return;
    }
    let fleet = Fleet::start(1);
    let artifact = fleet.path("big.bin");
    let mut content: Vec<u8> = (0..50u32 * 1024 * 1024).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    std::fs::write(&artifact, &content).unwrap();
    std::fs::create_dir_all(fleet.path("deploy/releases")).unwrap();
    std::fs::write(fleet.path("deploy/releases/big.bin"), &content).unwrap();
    let upload = upload_step("upload", &artifact, "releases/big.bin", "timeout = \"5m\"");
    let profile = fleet.profile(&upload, "");
    let mut d = start(&profile);
    let (_, hosts) = d.finish().await;
    assert!(
        matches!(&hosts[0].last_result, Some(StepResult::Skipped { reason }) if reason.contains("sha256")),
        "{hosts:?}"
    );
    assert!(!d.events.iter().any(|e| matches!(e, Event::UploadProgress { .. })), "not a byte sent");

    // One byte changed: the whole file goes, and arrives whole.
    content[12_345_678] ^= 0xff;
    std::fs::write(&artifact, &content).unwrap();
    let mut d = start(&profile);
    assert_eq!(d.finish().await.0, Outcome::Succeeded, "{:#?}", d.events);
    assert!(std::fs::read(fleet.path("deploy/releases/big.bin")).unwrap() == content, "the new content, whole");
    let last = d.events.iter().rev().find_map(|e| match e {
        Event::UploadProgress { sent, total, .. } => Some((*sent, *total)),
        _ => None,
    });
    assert_eq!(last, Some((content.len() as u64, content.len() as u64)));
    let names: Vec<_> =
        std::fs::read_dir(fleet.path("deploy/releases")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names.len(), 1, "no temporary file left: {names:?}");
}

#[tokio::test]
async fn an_empty_file_and_a_small_one_go_through_the_agent_and_the_steps_after_them_run_on_it() {
    if !sshd::available() {
        return;
    }
    // No `cat` on this host: only the agent's `dd` can take the files (a channel of its own reads
    // with `cat`).
    let fleet = Fleet::with_tools(&[("cat", "#!/bin/sh\nexit 1\n")]);
    std::fs::write(fleet.path("empty"), b"").unwrap();
    // Bytes that look like the agent's own lines must arrive as the file's, not be read as them.
    std::fs::write(fleet.path("small"), b"WDK.u\nx.s\n").unwrap();
    let agent = "read -r _ _ _ agent _ </proc/self/stat; echo agent $agent";
    let upload = |name: &str| upload_step(name, &fleet.path(name), &format!("releases/{name}"), "");
    let steps = step("before", agent, "") + &upload("empty") + &upload("small") + &step("after", agent, "");
    let mut d = start(&fleet.profile(&steps, ""));
    assert_eq!(d.finish().await.0, Outcome::Succeeded, "{:#?}", d.events);
    for name in ["empty", "small"] {
        let path = fleet.path(&format!("deploy/releases/{name}"));
        assert_eq!(std::fs::read(&path).unwrap(), std::fs::read(fleet.path(name)).unwrap(), "{name}, whole");
    }
    let agents: Vec<String> = output_of(&d).into_iter().filter(|l| l.starts_with("agent ")).collect();
    assert_eq!(agents.len(), 2, "{agents:?}");
    assert_eq!(agents[0], agents[1], "the uploads kept the agent in step: {agents:?}");
    let names: Vec<_> =
        std::fs::read_dir(fleet.path("deploy/releases")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names.len(), 2, "no temporary file left: {names:?}");
}

#[tokio::test]
async fn a_step_runs_in_a_subshell_of_the_hosts_agent_right_below_sshd_and_in_its_process_group() {
    if !sshd::available() {
        return;
    }
    let fleet = Fleet::start(1);
    // Above the step's subshell: the agent (`sh -c`, which the login shell became), then sshd's
    // session process, which made the login shell a process group leader.
    let run = "read -r _ _ _ parent group _ </proc/self/stat; echo agent $parent; \
               for p in $parent $(awk '{print $4}' /proc/$parent/stat); do tr '\\0' ' ' </proc/$p/cmdline | cut -c1-40; echo; done; \
               [ \"$group\" = \"$parent\" ] && echo in the agent group";
    let profile = fleet.profile(&step("one", run, ""), "") + &step("two", run, "");
    let mut d = start(&profile);
    assert_eq!(d.finish().await.0, Outcome::Succeeded, "{:#?}", d.events);
    let lines: Vec<String> = output_of(&d).into_iter().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 8, "{lines:?}");
    for step in lines.chunks(4) {
        assert!(step[1].starts_with("sh -c __wd_dir="), "the agent runs the step: {lines:?}");
        assert!(step[2].starts_with("sshd"), "no login shell, setsid or sh -c layer between: {lines:?}");
        assert_eq!(step[3], "in the agent group", "{lines:?}");
    }
    assert_eq!(lines[0], lines[4], "both steps ran on one agent: {lines:?}");
}

#[tokio::test]
async fn one_agent_carries_an_upload_and_the_steps_around_it_and_a_timeout_takes_the_agent_with_its_step() {
    if !sshd::available() {
        return;
    }
    let fleet = Fleet::start(1);
    let artifact = fleet.path("app.bin");
    let content: Vec<u8> = (0..3_000_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    std::fs::write(&artifact, &content).unwrap();
    let agent = "read -r _ _ _ agent _ </proc/self/stat; echo agent $agent";
    // The first attempt hangs past its timeout; the retry finds `once` and ends at once (it first
    // makes sure the killed group is gone; zombies do not count).
    let slow = format!("if [ -e once ]; then {agent}; exit 0; fi; touch once; sleep 300 & echo $! > sleeper.pid; wait");
    let steps = step("before", agent, "")
        + &upload_step("upload", &artifact, "releases/app.bin", "")
        + &step("after", &format!("{agent}; cmp -s releases/app.bin {} && echo same", artifact.display()), "")
        // A step that reads its stdin gets nothing (not the agent's next request), and one that
        // ends on 200 KiB without a newline, on both streams, still ends where it ends.
        + &step("reads", "cat; echo read nothing", "")
        + &step("long", "head -c 204800 /dev/zero | tr \"\\\\0\" x; head -c 204800 /dev/zero | tr \"\\\\0\" y >&2", "")
        + &step("slow", &slow, "timeout = \"3s\"\nretries = 1");
    let mut d = start(&fleet.profile(&steps, ""));
    assert_eq!(d.finish().await.0, Outcome::Succeeded, "{:#?}", d.events);
    assert!(output_of(&d).iter().any(|l| l == "read nothing"), "{:#?}", d.events);
    let long: usize = d
        .events
        .iter()
        .filter_map(|e| match e {
            Event::Output { step, line, .. } if step == "long" => Some(line.len()),
            _ => None,
        })
        .sum();
    assert!(long >= 2 * 204_800, "both 200 KiB lines arrived whole ({long} bytes)");
    let lines: Vec<String> = output_of(&d).into_iter().filter(|l| l.starts_with("agent ") || l == "same").collect();
    assert_eq!(lines.len(), 4, "{lines:?}");
    assert_eq!(lines[0], lines[1], "the upload kept the agent in step with its input: {lines:?}");
    assert_eq!(lines[2], "same", "the file arrived whole: {lines:?}");
    assert_ne!(lines[3], lines[0], "the timeout killed the agent with its step; the retry got a new one: {lines:?}");
    assert_killed_with_its_agent(&fleet, &lines[0], "");
    assert!(
        d.events
            .iter()
            .any(|e| matches!(e, Event::StepFinished { step, result: StepResult::TimedOut, .. } if step == "slow")),
        "{:#?}",
        d.events
    );
}

#[tokio::test]
async fn where_dash_or_busybox_reads_wavedecks_commands_a_timed_out_step_is_killed_with_its_group() {
    if !sshd::available() {
        return;
    }
    // Every command wavedeck sends (the agent's start, kill, the earlier-attempt check) is read
    // by dash, then by BusyBox ash, as on a host whose login shell is /bin/sh or Alpine's.
    let mut readers = vec!["/bin/sh"];
    if sshd::tool("busybox") {
        readers.push("/usr/bin/busybox sh");
    }
    for reader in readers {
        let fleet = Fleet::start_with(1, "ed25519", &format!("ForceCommand {reader} -c \"$SSH_ORIGINAL_COMMAND\""));
        std::fs::write(fleet.path("app.bin"), b"release bits").unwrap();
        let agent = "read -r _ _ _ agent _ </proc/self/stat; echo agent $agent";
        let slow = format!(
            "if [ -e once ]; then {agent}; exit 0; fi; touch once; {agent}; sleep 300 & echo $! > sleeper.pid; wait"
        );
        let steps = upload_step("upload", &fleet.path("app.bin"), "releases/app.bin", "")
            + &step("slow", &slow, "timeout = \"2s\"\nretries = 1");
        let mut d = start(&fleet.profile(&steps, ""));
        assert_eq!(d.finish().await.0, Outcome::Succeeded, "{reader}: {:#?}", d.events);
        assert_eq!(std::fs::read(fleet.path("deploy/releases/app.bin")).unwrap(), b"release bits", "{reader}");
        let agents: Vec<String> = output_of(&d).into_iter().filter(|l| l.starts_with("agent ")).collect();
        assert_eq!(agents.len(), 2, "{reader}: {agents:?}");
        assert_killed_with_its_agent(&fleet, &agents[0], reader);
        assert!(
            !output_of(&d).iter().any(|l| l.contains("still running on the host")),
            "{reader}: the retry did not wait on a killed group: {:#?}",
            d.events
        );
    }
}

#[tokio::test]
async fn where_zsh_is_the_login_shell_steps_on_channels_of_their_own_helpers_and_uploads_work() {
    if !sshd::available() {
        return;
    }
    if !sshd::tool("zsh") {
        return;
    }
    // zsh reads whatever wavedeck sends first, as on a host whose login shell it is: an unmatched
    // glob is an error there and unquoted expansions are not split, so everything past the
    // first `cd` must run under `sh`. keep_step_output gives each step a channel of its own,
    // whose record sweep is a glob that matches nothing on a first deploy.
    let fleet = Fleet::start_with(1, "ed25519", "ForceCommand /usr/bin/zsh -c \"$SSH_ORIGINAL_COMMAND\"");
    std::fs::write(fleet.path("app.bin"), b"release bits").unwrap();
    let steps = step("one", "echo one", "")
        + &upload_step("upload", &fleet.path("app.bin"), "releases/app.bin", "")
        + &step("two", "for f in nothing-matches-*; do echo \"$f\"; done", "");
    let profile = fleet.profile(&steps, "keep_step_output = true");
    for _ in 0..2 {
        let mut d = start(&profile);
        assert_eq!(d.finish().await.0, Outcome::Succeeded, "{:#?}", d.events);
        // The step itself runs under sh: its unmatched glob is itself, as POSIX says.
        assert_eq!(
            output_of(&d).iter().filter(|l| !l.starts_with("uploaded")).collect::<Vec<_>>(),
            ["one", "nothing-matches-*"]
        );
    }
    assert_eq!(std::fs::read(fleet.path("deploy/releases/app.bin")).unwrap(), b"release bits");
}

#[tokio::test]
async fn where_dd_is_not_gnus_the_upload_takes_a_channel_of_its_own_and_the_agent_stays_in_step() {
    if !sshd::available() {
        return;
    }
    // A `dd` that says it is BusyBox's (which may read past what it is asked for) and logs how
    // it is called, then does the real thing.
    let calls = tempfile::tempdir().unwrap();
    let log = calls.path().join("dd.log");
    let fleet = Fleet::with_tools(&[(
        "dd",
        &format!(
            "#!/bin/sh\necho \"$*\" >> {log}\n[ \"$1\" = --version ] && {{ echo 'BusyBox v1.36.1'; exit 0; }}\nexec /usr/bin/dd \"$@\"\n",
            log = log.display()
        ),
    )]);
    let artifact = fleet.path("app.bin");
    let content: Vec<u8> = (0..3_000_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    std::fs::write(&artifact, &content).unwrap();
    let agent = "read -r _ _ _ agent _ </proc/self/stat; echo agent $agent";
    let steps = step("before", agent, "")
        + &upload_step("upload", &artifact, "releases/app.bin", "")
        + &step("after", agent, "");
    let mut d = start(&fleet.profile(&steps, ""));
    assert_eq!(d.finish().await.0, Outcome::Succeeded, "{:#?}", d.events);
    assert!(std::fs::read(fleet.path("deploy/releases/app.bin")).unwrap() == content, "the file, whole");
    let calls = std::fs::read_to_string(&log).unwrap();
    assert!(calls.lines().any(|l| l == "--version"), "{calls}");
    assert!(!calls.contains("count=3000000"), "the agent's stdin was not handed to this dd: {calls}");
    let agents: Vec<String> = output_of(&d).into_iter().filter(|l| l.starts_with("agent ")).collect();
    assert_eq!(agents.len(), 2, "{agents:?}");
    assert_eq!(agents[0], agents[1], "the steps around the upload ran on the same agent: {agents:?}");
}

#[tokio::test]
async fn a_dd_that_reads_past_the_file_ends_the_agent_instead_of_running_file_data_as_steps() {
    if !sshd::available() {
        return;
    }
    // Says it is GNU's, then takes one byte more than it is asked for.
    let fleet = Fleet::with_tools(&[(
        "dd",
        "#!/bin/sh\ncase $2 in count=*) n=${2#count=}; [ \"$n\" -gt 1000 ] && exec /usr/bin/dd bs=64k count=$((n + 1)) iflag=count_bytes,fullblock status=none;; esac\nexec /usr/bin/dd \"$@\"\n",
    )]);
    let artifact = fleet.path("app.bin");
    std::fs::write(&artifact, vec![b'x'; 100_000]).unwrap();
    let steps = upload_step("upload", &artifact, "releases/app.bin", "") + &step("after", "echo must not run", "");
    let mut d = start(&fleet.profile(&steps, ""));
    let (outcome, hosts) = d.finish().await;
    assert_eq!(outcome, Outcome::Failed, "{:#?}", d.events);
    assert_eq!(hosts[0].stopped_at.as_deref(), Some("upload"), "{hosts:?}");
    assert!(
        matches!(&hosts[0].last_result, Some(StepResult::Error { message }) if message.contains("could not take the file in whole")),
        "{hosts:?}"
    );
    assert!(!output_of(&d).iter().any(|l| l == "must not run"));
    let left: Vec<_> =
        std::fs::read_dir(fleet.path("deploy/releases")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left.is_empty(), "neither the file nor its temporary name: {left:?}");
}

#[tokio::test]
async fn a_deploy_path_through_a_symlink_that_a_step_repoints_is_followed_afresh_by_the_next_step() {
    if !sshd::available() {
        return;
    }
    let fleet = Fleet::start(1);
    for dir in ["blue", "green"] {
        std::fs::create_dir_all(fleet.path(dir)).unwrap();
    }
    std::os::unix::fs::symlink(fleet.path("blue"), fleet.path("live")).unwrap();
    let steps = step("where", "pwd -P", "")
        + &step("repoint", "cd .. && ln -sfn green live.new && mv -T live.new live", "")
        + &step("where-now", "pwd -P", "");
    let profile = fleet.profile(&steps, "").replace(
        &format!("deploy_path = \"{}\"", fleet.path("deploy").display()),
        &format!("deploy_path = \"{}\"", fleet.path("live").display()),
    );
    let mut d = start(&profile);
    assert_eq!(d.finish().await.0, Outcome::Succeeded, "{:#?}", d.events);
    let real = |dir: &str| fleet.path(dir).canonicalize().unwrap().display().to_string();
    assert_eq!(output_of(&d), [real("blue"), real("green")], "as a step on a channel of its own would");
}

/// The agents (`sh -c __wd_dir=… …`) running below an sshd listener.
fn agents_under(listener: u32) -> Vec<u32> {
    let parent_of = |pid: u32| -> Option<u32> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()
    };
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.starts_with(b"sh\0-c\0__wd_dir=")))
        .filter(|&pid| {
            let mut at = pid;
            (0..4).any(|_| match parent_of(at) {
                Some(parent) if parent == listener => true,
                Some(parent) if parent > 1 => {
                    at = parent;
                    false
                }
                _ => false,
            })
        })
        .collect()
}

#[tokio::test]
async fn a_connection_made_ahead_has_its_agent_running_before_its_wave_and_the_wave_uses_it() {
    if !sshd::available() {
        return;
    }
    let fleet = Fleet::start(2);
    // Wave 1 (h0) holds until the test lets it go; h1 (wave 2) is connected meanwhile.
    let run = "[ {{ host }} = h0 ] && while [ ! -e go ]; do sleep 0.02; done; \
               read -r _ _ _ agent _ </proc/self/stat; echo agent $agent";
    let profile =
        fleet.profile(&step("hold", run, ""), "").replace("canary = 0\nbatch = \"100%\"", "canary = 1\nbatch = 1");
    let mut d = start(&profile);
    d.until("wave 1", |e| matches!(e, Event::WaveStarted { wave: 1, .. })).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let ahead = loop {
        if let [agent] = agents_under(fleet.servers[1].pid())[..] {
            break agent;
        }
        assert!(Instant::now() < deadline, "no agent for h1 while wave 1 ran");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(!d.events.iter().any(|e| matches!(e, Event::WaveStarted { wave: 2, .. })), "{:#?}", d.events);
    std::fs::write(fleet.path("deploy/go"), b"").unwrap();
    assert_eq!(d.finish().await.0, Outcome::Succeeded, "{:#?}", d.events);
    let h1: Vec<&String> = d
        .events
        .iter()
        .filter_map(|e| match e {
            Event::Output { host, line, .. } if host == "h1" && line.starts_with("agent ") => Some(line),
            _ => None,
        })
        .collect();
    assert_eq!(h1, [&format!("agent {ahead}")], "wave 2 ran on the agent started ahead");
}

#[tokio::test]
async fn a_changed_host_key_in_wave_3_is_reported_while_wave_2_runs_and_fails_the_host_when_its_wave_comes() {
    if !sshd::available() {
        return;
    }
    let fleet = Fleet::start(3);
    // h2 (wave 3) presents another server's key than the one on record.
    let impostor = Sshd::start(fleet.dir.path(), "impostor");
    let swapped =
        impostor.known_hosts_line().replace(&format!(":{} ", impostor.port), &format!(":{} ", fleet.servers[2].port));
    let known: String = fleet.servers[..2].iter().map(|s| s.known_hosts_line()).collect::<String>() + &swapped;
    std::fs::write(fleet.path("known_hosts"), known).unwrap();
    // One host a wave; h1's step (wave 2) waits for the test, which lets it go once it has seen
    // wave 3's trouble reported.
    let profile = fleet
        .profile(&step("hold", "[ {{ host }} = h1 ] || exit 0; while [ ! -e go ]; do sleep 0.02; done", ""), "")
        .replace("canary = 0\nbatch = \"100%\"", "canary = 1\nbatch = 1");
    let mut d = start(&profile);
    d.until("wave 2", |e| matches!(e, Event::WaveStarted { wave: 2, .. })).await;
    let reported = d
        .until(
            "h2's changed key",
            |e| matches!(e, Event::ConnectFailed { host, kind, .. } if host == "h2" && kind == "host_key_changed"),
        )
        .await;
    assert!(
        !d.events.iter().any(|e| matches!(e, Event::WaveStarted { wave: 3, .. })),
        "reported before wave 3: {reported:?}"
    );
    std::fs::write(fleet.path("deploy/go"), b"").unwrap();
    let (_, hosts) = d.finish().await;
    let h2 = hosts.iter().find(|h| h.host == "h2").unwrap();
    assert_eq!((h2.state, h2.stopped_at.as_deref()), (HostState::Failed, Some("connect")), "{hosts:?}");
    let wave3 = d.position(|e| matches!(e, Event::WaveStarted { wave: 3, .. })).unwrap();
    let failed = d.position(|e| matches!(e, Event::HostFinished { host, .. } if host == "h2")).unwrap();
    assert!(failed > wave3, "it fails when its wave comes, not before");
    let reports = d.events.iter().filter(|e| matches!(e, Event::ConnectFailed { host, .. } if host == "h2")).count();
    assert_eq!(reports, 1, "reported once, not dialled again");
    assert!(hosts.iter().filter(|h| h.host != "h2").all(|h| h.state == HostState::Done), "{hosts:?}");
}

#[tokio::test]
async fn a_connection_made_ahead_that_drops_before_its_wave_is_dialled_again() {
    if !sshd::available() {
        return;
    }
    let fleet = Fleet::start(2);
    let profile = fleet
        .profile(&step("hold", "[ {{ host }} = h0 ] || exit 0; while [ ! -e go ]; do sleep 0.02; done", ""), "")
        .replace("canary = 0\nbatch = \"100%\"", "canary = 1\nbatch = 1");
    let mut d = start(&profile);
    d.until("h0's step", |e| matches!(e, Event::StepStarted { host, .. } if host == "h0")).await;
    // h1's connection is made while h0 holds wave 1 (sshd logs each accepted key).
    let accepted = |server: &Sshd| server.log().matches("Accepted publickey").count();
    let deadline = Instant::now() + Duration::from_secs(20);
    while accepted(&fleet.servers[1]) == 0 {
        assert!(Instant::now() < deadline, "no connection ahead to h1:\n{}", fleet.servers[1].log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    fleet.servers[1].cut_connections();
    std::fs::write(fleet.path("deploy/go"), b"").unwrap();
    let (outcome, hosts) = d.finish().await;
    assert_eq!(outcome, Outcome::Succeeded, "{hosts:?}\n{:#?}", d.events);
    assert_eq!(accepted(&fleet.servers[1]), 2, "dialled again after the drop");
}

#[tokio::test]
async fn a_bastion_behind_a_bastion_is_reached_through_its_own_proxy_jump() {
    if !sshd::available() {
        return;
    }
    let fleet = Fleet::start(3);
    let (outer, middle, target) = (&fleet.servers[0], &fleet.servers[1], &fleet.servers[2]);
    std::fs::write(
        fleet.path("ssh_config"),
        format!(
            "Host inner-web\n  HostName 127.0.0.1\n  Port {}\n  ProxyJump root@middle\n\n\
             Host middle\n  HostName 127.0.0.1\n  Port {}\n  ProxyJump root@127.0.0.1:{}\n",
            target.port, middle.port, outer.port
        ),
    )
    .unwrap();
    let mut profile = fleet
        .profile(&step("where", "echo two-hops", ""), &format!("config = \"{}\"", fleet.path("ssh_config").display()))
        .replace("config = \"none\"\n", "");
    for hop in [outer, middle] {
        profile = profile.replace(
            &format!(
                "{{ name = \"h{}\", address = \"127.0.0.1\", port = {} }}, ",
                if hop.port == outer.port { 0 } else { 1 },
                hop.port
            ),
            "",
        );
    }
    let profile =
        profile.replace(&format!("address = \"127.0.0.1\", port = {} }}", target.port), "address = \"inner-web\" }");
    let mut d = start(&profile);
    assert_eq!(d.finish().await.0, Outcome::Succeeded, "{:#?}", d.events);
    assert!(d.events.iter().any(|e| matches!(e, Event::Output { line, .. } if line == "two-hops")));
    // Each bastion was logged into (and verified, through known_hosts) on the way.
    for hop in [outer, middle] {
        assert!(hop.log().contains("Accepted publickey"), "{}", hop.log());
    }
}

#[tokio::test]
async fn an_encrypted_key_opens_with_the_passphrase_the_operator_typed_and_is_then_not_locked() {
    if !sshd::available() {
        return;
    }
    let fleet = Fleet::start(1);
    let key = fleet.path("typed");
    sshd::keygen_encrypted(&key, "battery staple");
    // The fleet trusts this key too.
    let mut authorized = std::fs::read_to_string(fleet.path("authorized_keys")).unwrap();
    authorized.push_str(&std::fs::read_to_string(key.with_extension("pub")).unwrap());
    std::fs::write(fleet.path("authorized_keys"), authorized).unwrap();
    let profile = fleet.profile(&step("hi", "echo unlocked", ""), "").replace("client_ed25519", "typed");
    let parsed = wavedeck::profile::Profile::parse(std::path::Path::new("p.toml"), &profile).unwrap();
    let env = &parsed.environments[0];
    // What the console asks about before it starts the deploy (no agent here).
    let locked = temp_env_without_agent(|| wavedeck::transport::ssh::locked_identities(&env.ssh, &env.hosts));
    assert_eq!(locked.await, vec![key.clone()]);
    wavedeck::transport::ssh::remember_passphrases(vec![(key.clone(), "battery staple".into())]);
    assert!(wavedeck::transport::ssh::locked_identities(&env.ssh, &env.hosts).await.is_empty());
    let mut d = temp_env_without_agent(|| Deploy::start_on(&profile, transport(&profile)));
    assert_eq!(d.finish().await.0, Outcome::Succeeded, "{:#?}", d.events);
    assert!(d.events.iter().any(|e| matches!(e, Event::Output { line, .. } if line == "unlocked")));
}

/// An SSH server (in this process) that lets any key in and then never answers a channel open:
/// it holds each request without accepting or refusing it.
struct NeverOpens {
    held: Vec<russh::server::ChannelOpenHandle>,
}

impl russh::server::Handler for NeverOpens {
    type Error = russh::Error;

    async fn auth_publickey(
        &mut self,
        _: &str,
        _: russh::server::VerifiedPublicKey<'_>,
    ) -> Result<russh::server::Auth, Self::Error> {
        Ok(russh::server::Auth::Accept)
    }

    async fn channel_open_session(
        &mut self,
        _: russh::Channel<russh::server::Msg>,
        reply: russh::server::ChannelOpenHandle,
        _: &mut russh::server::Session,
    ) -> Result<(), Self::Error> {
        self.held.push(reply);
        Ok(())
    }
}

#[tokio::test]
async fn hosts_that_let_us_in_and_never_open_a_channel_fail_at_their_timeout_in_every_wave() {
    if !sshd::available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (host_key, client_key) = (dir.path().join("host_ed25519"), dir.path().join("client_ed25519"));
    sshd::keygen(&host_key, "ed25519");
    sshd::keygen(&client_key, "ed25519");
    let config = Arc::new(russh::server::Config {
        keys: vec![russh::keys::load_secret_key(&host_key, None).unwrap()],
        auth_rejection_time: Duration::ZERO,
        ..Default::default()
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let config = config.clone();
            tokio::spawn(async move {
                if let Ok(running) = russh::server::run_stream(config, stream, NeverOpens { held: Vec::new() }).await {
                    let _ = running.await;
                }
            });
        }
    });
    let public = std::fs::read_to_string(host_key.with_extension("pub")).unwrap();
    let mut parts = public.split_whitespace();
    let known = dir.path().join("known_hosts");
    std::fs::write(&known, format!("[127.0.0.1]:{port} {} {}\n", parts.next().unwrap(), parts.next().unwrap()))
        .unwrap();
    // Two waves: h1's connection is made ahead, while h0's wave runs.
    let profile = format!(
        "[service]\nname = \"svc\"\n\n[plan]\ncanary = 1\nbatch = 1\nmax_failures = \"100%\"\n\n[ssh]\nuser = \"root\"\n\
         identity_files = [\"{key}\"]\nknown_hosts = [\"{known}\"]\nconfig = \"none\"\ndeploy_path = \"/tmp\"\n\
         connect_attempts = 1\nhelper_timeout = \"1s\"\n\n[[environments]]\nname = \"test\"\ntransport = \"ssh\"\n\
         hosts = [{{ name = \"h0\", address = \"127.0.0.1\", port = {port} }}, \
         {{ name = \"h1\", address = \"127.0.0.1\", port = {port} }}]\n\n{steps}",
        key = client_key.display(),
        known = known.display(),
        steps = step("hello", "echo hello", "timeout = \"2s\""),
    );
    let mut d = start(&profile);
    let (_, hosts) = d.finish().await;
    for host in &hosts {
        assert_eq!(
            (host.state, host.last_result.as_ref()),
            (HostState::Failed, Some(&StepResult::TimedOut)),
            "{hosts:#?}"
        );
    }
}
