//! SSH rolling-deploy benchmark: wavedeck's engine against the OpenSSH client doing the same
//! work with `xargs -P`.
//!
//! Starts a loopback sshd fleet (4 listeners; 200 simulated hosts spread over them, each with
//! its own directory), then deploys a small artifact to every host in waves (1 canary, then
//! 10%): upload + sha256 verify, unpack, switch the `current` symlink, restart (simulated),
//! health check. Then the same steps with `scp`/`ssh` from the OpenSSH client, one wave at a
//! time with `xargs -P`. Prints wall time, per-host cost and the ratio.
//!
//! Run: `cargo run --release --example ssh_bench [hosts]` (default 200; needs sshd and ssh).
#![allow(clippy::unwrap_used)] // A benchmark: any failure should stop it loudly.

#[path = "../tests/common/sshd.rs"]
#[allow(dead_code)] // Shared with the tests, which use more of it.
mod sshd;

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;
use wavedeck::engine;
use wavedeck::event::Outcome;
use wavedeck::plan::{Plan, wave_sizes};
use wavedeck::profile::Profile;
use wavedeck::secrets::Secrets;
use wavedeck::transport::ssh::SshTransport;

const LISTENERS: usize = 4;
const PARALLEL: usize = 50;
const RELEASE: &str = "2.0.0";

fn main() {
    // The deploy's runner, when the benchmark starts one, is this program again.
    if std::env::args().nth(1).as_deref() == Some("runner") {
        std::process::exit(wavedeck::runner::main());
    }
    if !sshd::available() {
        return;
    }
    let hosts: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(200);
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let key = root.join("client_ed25519");
    sshd::keygen(&key, "ed25519");
    std::fs::copy(key.with_extension("pub"), root.join("authorized_keys")).unwrap();
    let servers: Vec<sshd::Sshd> = (0..LISTENERS).map(|i| sshd::Sshd::start(root, &format!("sshd{i}"))).collect();
    let known: String = servers.iter().map(|s| s.known_hosts_line()).collect();
    std::fs::write(root.join("known_hosts"), known).unwrap();
    let artifact = make_artifact(root);
    let ports: Vec<u16> = (0..hosts).map(|i| servers[i % LISTENERS].port).collect();

    println!(
        "ssh_bench: {hosts} hosts on {LISTENERS} loopback sshd listeners, waves: 1 canary then 10%, parallel {PARALLEL}"
    );
    let ours = run_wavedeck(root, &artifact, &ports);
    let (detached, syncs) = run_through_runner(root, &artifact, &ports);
    let theirs = run_openssh(root, &artifact, &ports);
    let per_host = |s: f64| s * 1000.0 / hosts as f64;
    println!("wavedeck (russh, 1 connection per host):   {ours:6.2} s wall, {:6.1} ms per host", per_host(ours));
    println!(
        "wavedeck through its runner (+ write-ahead audit log, socket): {detached:6.2} s wall ({:+.1}% against \
         the engine alone), {syncs} fsyncs ({:.2} per host)",
        (detached / ours - 1.0) * 100.0,
        syncs as f64 / hosts as f64
    );
    println!("OpenSSH client (scp + ssh per step, xargs): {theirs:6.2} s wall, {:6.1} ms per host", per_host(theirs));
    println!("ratio: wavedeck is {:.1}x faster", theirs / ours);
}

/// A small release tarball (~64 KiB) with a VERSION file.
fn make_artifact(root: &Path) -> std::path::PathBuf {
    let src = root.join("artifact");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("VERSION"), RELEASE).unwrap();
    let blob: Vec<u8> = (0..64 * 1024u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    std::fs::write(src.join("app.bin"), blob).unwrap();
    let tarball = root.join("app.tar.gz");
    let status = Command::new("tar").arg("czf").arg(&tarball).arg("-C").arg(&src).arg(".").status().unwrap();
    assert!(status.success());
    tarball
}

const STEPS: [(&str, &str); 4] = [
    (
        "unpack",
        "cd hosts/{{ host }} && mkdir -p releases/{{ release }} && tar xzf incoming/app.tar.gz -C releases/{{ release }}",
    ),
    ("switch", "cd hosts/{{ host }} && ln -sfn releases/{{ release }} current.new && mv -T current.new current"),
    ("restart", "cd hosts/{{ host }} && cp current/VERSION service.state"),
    ("health", "cd hosts/{{ host }} && test \"$(cat service.state)\" = {{ release }}"),
];

/// The benchmark's profile, deploying into `remote`.
fn profile_text(root: &Path, artifact: &Path, ports: &[u16], remote: &Path) -> String {
    std::fs::create_dir_all(remote).unwrap();
    let mut profile = format!(
        "[service]\nname = \"bench\"\n[plan]\ncanary = 1\nbatch = \"10%\"\nparallel = {PARALLEL}\n[ssh]\nuser = \"root\"\n\
         identity_files = [\"{key}\"]\nknown_hosts = [\"{known}\"]\nconfig = \"none\"\ndeploy_path = \"{remote}\"\n\
         [[environments]]\nname = \"bench\"\ntransport = \"ssh\"\nhosts = [",
        key = root.join("client_ed25519").display(),
        known = root.join("known_hosts").display(),
        remote = remote.display(),
    );
    for (i, port) in ports.iter().enumerate() {
        let _ = write!(profile, "{{ name = \"h{i:03}\", address = \"127.0.0.1\", port = {port} }},");
    }
    let _ = write!(
        profile,
        "]\n[[steps]]\nname = \"upload\"\nupload = {{ from = \"{}\", to = \"hosts/{{{{ host }}}}/incoming/app.tar.gz\" }}\n",
        artifact.display()
    );
    for (name, run) in STEPS {
        let _ = write!(profile, "[[steps]]\nname = \"{name}\"\nrun = '{run}'\n");
    }
    profile
}

/// The same deploy the way `wavedeck deploy` runs it: a runner process that owns it (audit log,
/// lock, control socket), followed by this process as its client.
fn run_through_runner(root: &Path, artifact: &Path, ports: &[u16]) -> (f64, u64) {
    let text = profile_text(root, artifact, ports, &root.join("remote-runner"));
    let path = root.join("bench.toml");
    std::fs::write(&path, text).unwrap();
    let spec = wavedeck::runner::Spec {
        job: wavedeck::runner::Job::Deploy { release: RELEASE.into() },
        profile: path,
        env: "bench".into(),
        audit_dir: Some(root.join("audit")),
        local_root: None,
        mode: "headless".into(),
        confirmation: None,
        first: Vec::new(),
        on_detach: None,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let started = Instant::now();
    let ended = runtime.block_on(async {
        let mut client = wavedeck::runner::spawn(&spec).await.map_err(|r| r.message).unwrap();
        while client.events.recv().await.is_some() {}
        client.ended().await
    });
    let elapsed = started.elapsed().as_secs_f64();
    assert_eq!(ended.outcome, Some(Outcome::Succeeded), "{ended:?}");
    (elapsed, ended.journal_syncs)
}

fn run_wavedeck(root: &Path, artifact: &Path, ports: &[u16]) -> f64 {
    let profile = profile_text(root, artifact, ports, &root.join("remote-wavedeck"));
    let profile = Profile::parse(Path::new("bench.toml"), &profile).unwrap_or_else(|e| panic!("{e}"));
    let plan = Plan::build(&profile, "bench", RELEASE, &Secrets::default()).unwrap();
    let transport = Arc::new(SshTransport::new(&profile.environments[0].ssh).unwrap());
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let started = Instant::now();
    let (outcome, summaries) = runtime.block_on(async {
        let (_commands, command_rx) = mpsc::unbounded_channel();
        let (tx, mut rx) = engine::event_channel();
        let drain = tokio::spawn(async move { while rx.recv().await.is_some() {} });
        let result = engine::run(plan, transport, command_rx, tx, Secrets::default().redactor()).await;
        let _ = drain.await;
        result
    });
    let elapsed = started.elapsed().as_secs_f64();
    let failed: Vec<_> = summaries.iter().filter(|s| s.state != wavedeck::event::HostState::Done).collect();
    assert_eq!(outcome, Outcome::Succeeded, "wavedeck deploy failed: {failed:#?}");
    elapsed
}

fn run_openssh(root: &Path, artifact: &Path, ports: &[u16]) -> f64 {
    let remote = root.join("remote-openssh");
    std::fs::create_dir_all(&remote).unwrap();
    let opts = format!(
        "-i {} -o UserKnownHostsFile={} -o StrictHostKeyChecking=yes -o BatchMode=yes -o LogLevel=ERROR",
        root.join("client_ed25519").display(),
        root.join("known_hosts").display()
    );
    // One host's work: scp, then one ssh per step, as separate commands like the engine's steps.
    let mut per_host = format!(
        "set -e\nh=$1; p=$2; d={remote}/hosts/$h\nssh {opts} -p $p root@127.0.0.1 \"mkdir -p $d/incoming\"\n\
         scp -q {opts} -P $p {artifact} root@127.0.0.1:$d/incoming/app.tar.gz\n\
         ssh {opts} -p $p root@127.0.0.1 \"sha256sum $d/incoming/app.tar.gz\" >/dev/null\n",
        remote = remote.display(),
        artifact = artifact.display(),
    );
    for (_, run) in STEPS {
        let command = run.replace("cd hosts/{{ host }}", "cd $d").replace("{{ release }}", RELEASE);
        let _ = writeln!(per_host, "ssh {opts} -p $p root@127.0.0.1 '{}'", command.replace("$d", "'\"$d\"'"));
    }
    let script = root.join("per_host.sh");
    std::fs::write(&script, per_host).unwrap();
    let sizes = wave_sizes(
        ports.len(),
        &wavedeck::profile::RolloutPolicy {
            canary: 1,
            batch: wavedeck::profile::Amount::Percent(10),
            max_failures: wavedeck::profile::Amount::Count(0),
            on_failure: wavedeck::profile::FailureAction::Pause,
            pause_between_waves: std::time::Duration::ZERO,
            parallel: PARALLEL,
            soak: std::time::Duration::ZERO,
            gate: wavedeck::profile::Promotion::Auto,
            on_detach: wavedeck::profile::DetachAction::Pause,
            detached_timeout: wavedeck::profile::DEFAULT_DETACHED_TIMEOUT,
        },
    );
    let started = Instant::now();
    let mut next = 0;
    for size in sizes {
        let list: String = (next..next + size).map(|i| format!("h{i:03} {}\n", ports[i])).collect();
        next += size;
        let mut child = Command::new("xargs")
            .args(["-P", &PARALLEL.to_string(), "-L", "1", "sh"])
            .arg(&script)
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(child.stdin.as_mut().unwrap(), list.as_bytes()).unwrap();
        drop(child.stdin.take());
        assert!(child.wait().unwrap().success(), "OpenSSH baseline failed in a wave");
    }
    started.elapsed().as_secs_f64()
}
