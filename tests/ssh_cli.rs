//! The real binary over SSH: `wavedeck check` and a headless deploy against sshd fleets.
#![allow(clippy::unwrap_used)] // Tests panic on unexpected errors by design.

mod common;

use std::process::Command;

use common::sshd::{self, Fleet};
use serde_json::Value;

fn wavedeck(fleet: &Fleet, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_wavedeck"))
        .args(args)
        .env("WAVEDECK_AUDIT_DIR", fleet.path("audit"))
        .env("HOME", fleet.path("home"))
        .env_remove("SSH_AUTH_SOCK")
        .output()
        .unwrap()
}

#[test]
fn check_reports_each_host_and_fails_if_any_is_not_ready() {
    if !sshd::available() {
        return;
    }
    let fleet = Fleet::start(3);
    // Host h1's key is not known; h3 points at a port where nothing listens.
    let known = std::fs::read_to_string(fleet.path("known_hosts")).unwrap();
    let h1 = format!(":{} ", fleet.servers[1].port);
    std::fs::write(
        fleet.path("known_hosts"),
        known.lines().filter(|l| !l.contains(&h1)).map(|l| format!("{l}\n")).collect::<String>(),
    )
    .unwrap();
    let closed = sshd::free_port();
    let profile = fleet
        .profile("[[steps]]\nname = \"noop\"\nrun = \"true\"\n", "")
        .replace("\nhosts = [", &format!("\nhosts = [{{ name = \"h3\", address = \"127.0.0.1\", port = {closed} }}, "));
    std::fs::write(fleet.path("profile.toml"), profile).unwrap();
    let out = wavedeck(&fleet, &["check", fleet.path("profile.toml").to_str().unwrap(), "--env", "test"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    let row = |host: &str| {
        text.lines()
            .find(|l| l.starts_with(&format!("{host} ")))
            .unwrap_or_else(|| panic!("{host}: {text}"))
            .to_string()
    };
    assert!(row("h0").contains(" ok ") && row("h0").contains("GiB"), "{text}");
    assert!(row("h2").contains(" ok "), "{text}");
    assert!(row("h1").contains("host_key_unknown") && row("h1").contains("SHA256:"), "{text}");
    assert!(row("h3").contains("unreachable"), "{text}");
    assert!(text.trim_end().ends_with("test: 2 of 4 hosts ready, 2 NOT ready"), "{text}");
}

#[test]
fn a_helper_command_that_hangs_on_the_host_is_given_up_on_and_reported() {
    if !sshd::available() {
        return;
    }
    // The host's `df` hangs, as on a stale NFS mount.
    let fleet = Fleet::with_tools(&[("df", "#!/bin/sh\nsleep 30\n")]);
    let profile = fleet.profile("[[steps]]\nname = \"noop\"\nrun = \"true\"\n", "helper_timeout = \"1s\"");
    std::fs::write(fleet.path("profile.toml"), profile).unwrap();
    let out = wavedeck(&fleet, &["check", fleet.path("profile.toml").to_str().unwrap(), "--env", "test"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("cannot read free space: `df` on the host did not finish within 1s"), "{text}");
}

#[test]
fn a_host_whose_sha256sum_floods_cannot_fill_memory_or_the_audit_log() {
    if !sshd::available() {
        return;
    }
    // The host's `sha256sum` prints 50 MB without a newline instead of a hash.
    let fleet = Fleet::with_tools(&[("sha256sum", "#!/bin/sh\nhead -c 50000000 /dev/zero | tr '\\0' a\n")]);
    std::fs::write(fleet.path("artifact.bin"), b"release bits").unwrap();
    let steps = "[[steps]]\nname = \"fetch\"\nupload = { from = \"artifact.bin\", to = \"artifact.bin\" }\n";
    std::fs::write(fleet.path("profile.toml"), fleet.profile(steps, "")).unwrap();
    let out =
        wavedeck(&fleet, &["deploy", fleet.path("profile.toml").to_str().unwrap(), "--env", "test", "--release", "1"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("sha256 mismatch on the host"), "{text}");
    // What the host said is kept to a hash's length.
    assert!(text.lines().all(|l| l.len() < 400), "{text}");
    let audit: u64 =
        std::fs::read_dir(fleet.path("audit")).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).sum();
    assert!(audit < 1024 * 1024, "the audit log grew to {audit} bytes");
}

#[test]
fn a_headless_deploy_over_ssh_reports_like_a_local_one() {
    if !sshd::available() {
        return;
    }
    let fleet = Fleet::start(2);
    let steps = "[[steps]]\nname = \"stage\"\nrun = \"mkdir -p releases/{{ release }}-{{ host }} && echo staged {{ host }}\"\n\
                 [[steps]]\nname = \"switch\"\nrun = \"ln -sfn releases/{{ release }}-{{ host }} current-{{ host }} && echo switched\"\n";
    std::fs::write(fleet.path("profile.toml"), fleet.profile(steps, "")).unwrap();
    let out = wavedeck(
        &fleet,
        &["deploy", fleet.path("profile.toml").to_str().unwrap(), "--env", "test", "--release", "7.0"],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("[h0] staged h0") && text.contains("[h1] switched"), "{text}");
    assert_eq!(std::fs::read_link(fleet.path("deploy/current-h1")).unwrap(), std::path::Path::new("releases/7.0-h1"));

    let audit = std::fs::read_dir(fleet.path("audit"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .unwrap();
    let records: Vec<Value> =
        std::fs::read_to_string(audit).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    for host in ["h0", "h1"] {
        for step in ["stage", "switch"] {
            assert!(
                records
                    .iter()
                    .any(|r| r["event"] == "step_finished" && r["host"] == host && r["step"] == step && r["code"] == 0)
            );
        }
    }
    assert_eq!(records.last().unwrap()["outcome"], "succeeded");
    // Step records on the host: a small file per step and attempt, named by host (in hex), step
    // and attempt.
    let deploys: Vec<_> = std::fs::read_dir(fleet.path("deploy/.wavedeck/steps")).unwrap().collect();
    assert_eq!(deploys.len(), 1);
    let mut left: Vec<String> = std::fs::read_dir(deploys[0].as_ref().unwrap().path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["6830-1-1", "6830-2-1", "6831-1-1", "6831-2-1"], "h0 and h1 in hex");
    let record = std::fs::read_to_string(deploys[0].as_ref().unwrap().path().join("6830-2-1")).unwrap();
    assert!(record.starts_with("pgid ") && record.ends_with("status 0\n"), "{record}");
    // A new deploy clears the records of the one before on its first step.
    let again = wavedeck(
        &fleet,
        &["deploy", fleet.path("profile.toml").to_str().unwrap(), "--env", "test", "--release", "7.1"],
    );
    assert_eq!(again.status.code(), Some(0));
    assert_eq!(std::fs::read_dir(fleet.path("deploy/.wavedeck/steps")).unwrap().count(), 1);
}

/// An ssh-agent of the test's own on a socket in the fleet's directory; `None` (the test skips)
/// where ssh-agent is missing, which CI does not allow.
fn start_agent(fleet: &Fleet) -> Option<(std::process::Child, std::path::PathBuf)> {
    let socket = fleet.path("agent.sock");
    let agent = Command::new("ssh-agent").arg("-D").arg("-a").arg(&socket).stdout(std::process::Stdio::null()).spawn();
    let Ok(agent) = agent else {
        assert!(std::env::var_os("CI").is_none(), "ssh-agent is required in CI");
        eprintln!("skipping: ssh-agent not found");
        return None;
    };
    // ssh-agent has no readiness signal: wait for its socket to appear.
    let start = std::time::Instant::now();
    while !socket.exists() {
        assert!(start.elapsed() < std::time::Duration::from_secs(10), "ssh-agent did not start");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Some((agent, socket))
}

#[test]
fn keys_held_by_ssh_agent_authenticate() {
    if !sshd::available() {
        return;
    }
    let fleet = Fleet::start(1);
    let Some((mut agent, socket)) = start_agent(&fleet) else { return };
    let added =
        Command::new("ssh-add").arg(fleet.path("client_ed25519")).env("SSH_AUTH_SOCK", &socket).output().unwrap();
    assert!(added.status.success(), "{}", String::from_utf8_lossy(&added.stderr));
    // No identity files at all: only the agent can authenticate.
    let profile = fleet
        .profile("[[steps]]\nname = \"hi\"\nrun = \"echo via-agent\"\n", "")
        .replace(&format!("identity_files = [\"{}\"]\n", fleet.path("client_ed25519").display()), "");
    std::fs::write(fleet.path("profile.toml"), profile).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_wavedeck"))
        .args(["deploy", fleet.path("profile.toml").to_str().unwrap(), "--env", "test", "--release", "1"])
        .env("WAVEDECK_AUDIT_DIR", fleet.path("audit"))
        .env("HOME", fleet.path("home"))
        .env("SSH_AUTH_SOCK", &socket)
        .output()
        .unwrap();
    let _ = agent.kill();
    let _ = agent.wait();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("[h0] via-agent"), "{text}");
}

/// Starts a headless deploy over SSH, reads its output up to a line containing `until`, waits
/// until the host's `deploy/count` file has begun, then kills the runner with SIGKILL. Returns
/// the deploy's session id.
fn deploy_and_kill_runner(fleet: &Fleet, until: &str) -> String {
    use std::io::{BufRead, BufReader};
    let mut deploy = Command::new(env!("CARGO_BIN_EXE_wavedeck"))
        .args(["deploy", fleet.path("profile.toml").to_str().unwrap(), "--env", "test", "--release", "1"])
        .env("WAVEDECK_AUDIT_DIR", fleet.path("audit"))
        .env("HOME", fleet.path("home"))
        .env_remove("SSH_AUTH_SOCK")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(deploy.stdout.take().unwrap()).lines();
    let mut seen = String::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        seen.push_str(&line);
        seen.push('\n');
        if line.contains(until) {
            break;
        }
    }
    // The step's start is on disk before its command goes out: wait until it runs on the host.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !std::fs::read_to_string(fleet.path("deploy/count")).unwrap_or_default().contains("begin") {
        assert!(std::time::Instant::now() < deadline, "the step never started on the host: {seen}");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let pid = deploy.id();
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap();
    let runner: i32 =
        children.split_whitespace().next().unwrap_or_else(|| panic!("no runner: {seen}")).parse().unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(runner), nix::sys::signal::Signal::SIGKILL).unwrap();
    let _: Vec<_> = lines.collect();
    deploy.wait().unwrap();
    let audit = std::fs::read_dir(fleet.path("audit"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .unwrap();
    let first: Value = serde_json::from_str(std::fs::read_to_string(audit).unwrap().lines().next().unwrap()).unwrap();
    first["session"].as_str().unwrap().to_string()
}

/// Remote processes of a step, found by the unusual `sleep` it runs.
fn remote_sleepers(marker: &str) -> usize {
    let out = Command::new("pgrep").args(["-f", &format!("sleep {marker}")]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).lines().count()
}

#[test]
fn a_resumed_deploy_waits_for_a_step_still_running_on_the_host_instead_of_running_it_twice() {
    if !sshd::available() {
        return;
    }
    let fleet = Fleet::start(1);
    // The step keeps running on the host after its runner dies (no output: nothing breaks it).
    let steps = "[[steps]]\nname = \"slow\"\nrun = \"echo begin >> count; sleep 2.31; echo end >> count\"\n\
                 [[steps]]\nname = \"after\"\nrun = \"echo after >> count\"\n";
    std::fs::write(fleet.path("profile.toml"), fleet.profile(steps, "")).unwrap();
    let session = deploy_and_kill_runner(&fleet, "-> slow");
    assert_eq!(remote_sleepers("2.31"), 1, "the step outlives its runner on the host");

    let out = wavedeck(&fleet, &["resume", &session, "--interrupted", "rerun"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("is still running on the host: waiting for it"), "{text}");
    assert!(text.contains("ended with exit 0: taking that"), "{text}");
    let count = std::fs::read_to_string(fleet.path("deploy/count")).unwrap();
    assert_eq!(count, "begin\nend\nafter\n", "the step ran once");
    assert_eq!(remote_sleepers("2.31"), 0, "nothing is left running on the host");
}

#[test]
fn a_resumed_deploy_takes_the_status_a_step_recorded_after_its_runner_died() {
    if !sshd::available() {
        return;
    }
    let fleet = Fleet::start(1);
    let steps = "[[steps]]\nname = \"slow\"\nrun = \"echo begin >> count; sleep 0.37; echo end >> count; exit 3\"\n\
                 [[steps]]\nname = \"after\"\nrun = \"echo after >> count\"\n";
    std::fs::write(fleet.path("profile.toml"), fleet.profile(steps, "")).unwrap();
    let session = deploy_and_kill_runner(&fleet, "-> slow");
    // The step ends on the host while no runner watches; its record keeps the exit status.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while remote_sleepers("0.37") > 0 {
        assert!(std::time::Instant::now() < deadline, "the step never ended");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = wavedeck(&fleet, &["resume", &session, "--interrupted", "rerun"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "its real exit status fails the host: {text}");
    assert!(text.contains("ended with exit 3: taking that, not running it again"), "{text}");
    let count = std::fs::read_to_string(fleet.path("deploy/count")).unwrap();
    assert_eq!(count, "begin\nend\n", "the step ran once and the host stopped there");
}

#[test]
fn an_audit_log_signed_with_an_agent_key_verifies_with_ssh_keygen_and_a_tampered_one_does_not() {
    if !sshd::available() {
        return;
    }
    let fleet = Fleet::start(1);
    let Some((mut agent, socket)) = start_agent(&fleet) else { return };
    // The operator's own key, not the one that logs in to hosts.
    let signer = fleet.path("signer_ed25519");
    sshd::keygen(&signer, "ed25519");
    let added = Command::new("ssh-add").arg(&signer).env("SSH_AUTH_SOCK", &socket).output().unwrap();
    assert!(added.status.success(), "{}", String::from_utf8_lossy(&added.stderr));
    std::fs::write(fleet.path("profile.toml"), fleet.profile("[[steps]]\nname = \"hi\"\nrun = \"echo signed\"\n", ""))
        .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_wavedeck"))
        .args(["deploy", fleet.path("profile.toml").to_str().unwrap(), "--env", "test", "--release", "1"])
        .env("WAVEDECK_AUDIT_DIR", fleet.path("audit"))
        .env("HOME", fleet.path("home"))
        .env("SSH_AUTH_SOCK", &socket)
        .env("WAVEDECK_AUDIT_SIGNING_KEY", signer.with_extension("pub"))
        .output()
        .unwrap();
    let _ = agent.kill();
    let _ = agent.wait();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let audit = std::fs::read_dir(fleet.path("audit"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .unwrap();
    let sig = std::path::PathBuf::from(format!("{}.sig", audit.display()));
    assert!(sig.exists(), "signed beside the log");
    // OpenSSH's own verdict, with nothing of wavedeck's.
    let public = std::fs::read_to_string(signer.with_extension("pub")).unwrap();
    let allowed = fleet.path("allowed_signers");
    std::fs::write(&allowed, format!("ann {}", public.split_whitespace().take(2).collect::<Vec<_>>().join(" ")))
        .unwrap();
    let keygen_verify = |file: &std::path::Path| {
        Command::new("ssh-keygen")
            .args(["-Y", "verify", "-f", allowed.to_str().unwrap(), "-I", "ann", "-n", "wavedeck-audit", "-s"])
            .arg(&sig)
            .stdin(std::fs::File::open(file).unwrap())
            .output()
            .unwrap()
    };
    let good = keygen_verify(&audit);
    assert!(
        good.status.success(),
        "{}{}",
        String::from_utf8_lossy(&good.stdout),
        String::from_utf8_lossy(&good.stderr)
    );
    let ours = wavedeck(&fleet, &["audit", "verify", audit.to_str().unwrap()]);
    let said = String::from_utf8_lossy(&ours.stdout);
    assert!(ours.status.success() && said.contains("signature good (SHA256:"), "{said}");
    // One byte changed: OpenSSH refuses it, and so does wavedeck.
    let text = std::fs::read_to_string(&audit).unwrap().replacen("signed", "signet", 1);
    std::fs::write(&audit, text).unwrap();
    assert!(!keygen_verify(&audit).status.success(), "a tampered log does not verify");
    let ours = wavedeck(&fleet, &["audit", "verify", audit.to_str().unwrap()]);
    let said = String::from_utf8_lossy(&ours.stdout);
    assert!(!ours.status.success() && said.contains("signature BAD"), "{said}");
}

#[test]
fn the_debug_log_has_our_and_russhs_account_of_the_connection_and_no_secret() {
    if !sshd::available() {
        return;
    }
    let fleet = Fleet::start(1);
    // The secret is in a step and reaches the host; a log line quoting it must be masked.
    let steps = "[secrets]\ntoken = { env = \"WAVEDECK_TEST_TOKEN\" }\n\
                 [[steps]]\nname = \"use\"\nrun = \"echo {{ token }} >/dev/null\"\n";
    std::fs::write(fleet.path("profile.toml"), fleet.profile(steps, "")).unwrap();
    let log = fleet.path("debug.log");
    let out = Command::new(env!("CARGO_BIN_EXE_wavedeck"))
        .args(["deploy", fleet.path("profile.toml").to_str().unwrap(), "--env", "test", "--release", "1.0"])
        .arg("--debug-log")
        .arg(&log)
        .env("WAVEDECK_AUDIT_DIR", fleet.path("audit"))
        .env("HOME", fleet.path("home"))
        .env("WAVEDECK_TEST_TOKEN", "s3cr3t-debug-t0ken")
        .env_remove("SSH_AUTH_SOCK")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("wavedeck::transport::ssh") && text.contains("authenticated"), "{text}");
    // russh's own lines, through the `log` bridge.
    assert!(text.lines().any(|l| l.contains("russh")), "{text}");
    // Both processes wrote to it: the command and its runner.
    assert!(text.matches("debug log opened").count() >= 2, "{text}");
    assert!(!text.contains("s3cr3t-debug-t0ken"), "no secret in the debug log");
}

#[test]
fn a_template_step_renders_per_host_and_plan_diff_shows_what_would_change_with_secrets_masked() {
    if !sshd::available() {
        return;
    }
    let fleet = Fleet::start(2);
    std::fs::write(fleet.path("app.conf.j2"), "listen {{ port }}\ntoken {{ token }}\nname {{ host }}\n").unwrap();
    let profile = |port: u16| {
        let steps = format!(
            "[vars]\nport = \"{port}\"\n[secrets]\ntoken = {{ env = \"WAVEDECK_TEST_TOKEN\" }}\n\
             [[steps]]\nname = \"config\"\n\
             template = {{ from = \"app.conf.j2\", to = \"conf/app-{{{{ host }}}}.conf\", mode = \"0640\" }}\n"
        );
        std::fs::write(fleet.path("profile.toml"), fleet.profile(&steps, "")).unwrap();
    };
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_wavedeck"))
            .args(args)
            .env("WAVEDECK_AUDIT_DIR", fleet.path("audit"))
            .env("HOME", fleet.path("home"))
            .env("WAVEDECK_TEST_TOKEN", "s3cr3t-tmpl-t0ken")
            .env_remove("SSH_AUTH_SOCK")
            .output()
            .unwrap()
    };
    let path = fleet.path("profile.toml");
    let path = path.to_str().unwrap();
    profile(8080);
    let diff = run(&["plan", path, "--env", "test", "--release", "1.0", "--diff"]);
    let shown = String::from_utf8_lossy(&diff.stdout);
    assert_eq!(diff.status.code(), Some(0), "{shown}{}", String::from_utf8_lossy(&diff.stderr));
    assert!(
        shown.contains("== h0: conf/app-h0.conf (config) is new\n+listen 8080\n+token ******\n+name h0\n"),
        "{shown}"
    );
    assert!(!shown.contains("s3cr3t"), "{shown}");

    let out = run(&["deploy", path, "--env", "test", "--release", "1.0"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
    let written = fleet.path("deploy/conf/app-h1.conf");
    assert_eq!(std::fs::read_to_string(&written).unwrap(), "listen 8080\ntoken s3cr3t-tmpl-t0ken\nname h1\n");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&written).unwrap().permissions().mode() & 0o7777, 0o640);

    // Unchanged: plan --diff says so, and the step is skipped.
    let same = String::from_utf8_lossy(&run(&["plan", path, "--env", "test", "--release", "2.0", "--diff"]).stdout)
        .into_owned();
    assert!(same.contains("unchanged (the step will skip them): h0:conf/app-h0.conf, h1:conf/app-h1.conf"), "{same}");
    let again =
        String::from_utf8_lossy(&run(&["deploy", path, "--env", "test", "--release", "2.0"]).stdout).into_owned();
    assert!(again.contains("[h0] -- config skipped: ") && again.contains("already has sha256"), "{again}");

    // A changed variable: a unified diff, the secret masked on both sides.
    profile(9090);
    let changed = String::from_utf8_lossy(&run(&["plan", path, "--env", "test", "--release", "3.0", "--diff"]).stdout)
        .into_owned();
    assert!(
        changed.contains(
            "== h1: conf/app-h1.conf (config) changes\n--- conf/app-h1.conf (on the host)\n+++ conf/app-h1.conf (new)\n"
        ),
        "{changed}"
    );
    assert!(changed.contains("-listen 8080\n+listen 9090\n token ******\n name h1\n"), "{changed}");
    assert!(!changed.contains("s3cr3t"), "{changed}");
}

#[test]
fn a_user_certificate_from_the_ca_sshd_trusts_lets_in_a_key_sshd_does_not_know() {
    if !sshd::available() {
        return;
    }
    let ca_dir = tempfile::tempdir().unwrap();
    let ca = ca_dir.path().join("user_ca");
    sshd::keygen(&ca, "ed25519");
    let fleet = Fleet::start_with(1, "ed25519", &format!("TrustedUserCAKeys {}", ca.with_extension("pub").display()));
    // No authorized key at all: only what the CA signed gets in.
    std::fs::write(fleet.path("authorized_keys"), "").unwrap();
    let key = fleet.path("cert_user");
    sshd::keygen(&key, "ed25519");
    let profile = fleet
        .profile("[[steps]]\nname = \"noop\"\nrun = \"true\"\n", "")
        .replace(&fleet.path("client_ed25519").display().to_string(), &key.display().to_string());
    std::fs::write(fleet.path("profile.toml"), profile).unwrap();
    let check = || {
        let out = wavedeck(&fleet, &["check", fleet.path("profile.toml").to_str().unwrap(), "--env", "test"]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let refused = check();
    assert!(refused.contains("auth_failed"), "without a certificate the key is unknown: {refused}");
    let signed = Command::new("ssh-keygen")
        .args(["-q", "-s"])
        .arg(&ca)
        .args(["-I", "wavedeck-test", "-n", "root", "-V", "-5m:+1h"])
        .arg(key.with_extension("pub"))
        .status()
        .unwrap();
    assert!(signed.success());
    assert!(fleet.path("cert_user-cert.pub").exists());
    let accepted = check();
    assert!(accepted.contains("test: 1 of 1 hosts ready"), "{accepted}");
}

/// Signs `public` with `ca` as a host certificate for 127.0.0.1, valid now.
fn sign_host(ca: &std::path::Path, public: &std::path::Path, principal: &str) {
    let signed = Command::new("ssh-keygen")
        .args(["-q", "-s"])
        .arg(ca)
        .args(["-I", "wavedeck-test-host", "-h", "-n", principal, "-V", "-5m:+1h"])
        .arg(public)
        .status()
        .unwrap();
    assert!(signed.success());
}

#[test]
fn a_host_certificate_from_an_authority_in_known_hosts_is_trusted_and_one_from_another_is_not() {
    if !sshd::available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (ca, other_ca) = (dir.path().join("host_ca"), dir.path().join("other_ca"));
    sshd::keygen(&ca, "ed25519");
    sshd::keygen(&other_ca, "ed25519");
    let cert = dir.path().join("host-cert.pub");
    let fleet = Fleet::start_with(1, "ed25519", &format!("HostCertificate {}", cert.display()));
    let server = &fleet.servers[0];
    // The host's key, signed once sshd made it; sshd reads the certificate again on SIGHUP.
    let reload = |signer: &std::path::Path| {
        std::fs::copy(server.dir.join("host_ed25519.pub"), dir.path().join("host.pub")).unwrap();
        sign_host(signer, &dir.path().join("host.pub"), "127.0.0.1");
        let before = server.log().matches("Server listening on").count();
        Command::new("kill").args(["-HUP", &server.pid().to_string()]).status().unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while server.log().matches("Server listening on").count() <= before {
            assert!(std::time::Instant::now() < deadline, "sshd did not restart:\n{}", server.log());
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    };
    reload(&ca);
    // known_hosts trusts the authority for the host, and holds no key of the host itself.
    let ca_line = std::fs::read_to_string(ca.with_extension("pub")).unwrap();
    std::fs::write(fleet.path("known_hosts"), format!("@cert-authority [127.0.0.1]:{} {ca_line}", server.port))
        .unwrap();
    std::fs::write(fleet.path("profile.toml"), fleet.profile("[[steps]]\nname = \"noop\"\nrun = \"true\"\n", ""))
        .unwrap();
    let check = || {
        let out = wavedeck(&fleet, &["check", fleet.path("profile.toml").to_str().unwrap(), "--env", "test"]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let trusted = check();
    assert!(trusted.contains("test: 1 of 1 hosts ready"), "{trusted}");
    // Signed by an authority known_hosts does not trust: its plain key is unknown, so refused.
    reload(&other_ca);
    let refused = check();
    assert!(refused.contains("host_key_unknown"), "{refused}");
}
