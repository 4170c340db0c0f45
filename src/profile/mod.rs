//! Profiles: one TOML file per service describing its environments, hosts, rollout plan,
//! steps, health checks and rollback.
//!
//! Parsing is two passes. serde reads the file strictly (unknown keys are errors) into `Raw*`
//! types that keep the source span of everything worth pointing at; then `validate` checks the
//! meaning and reports every problem it finds at once, each at `file:line:col`. The rest of the
//! program only ever sees the validated [`Profile`].

pub mod inventory;
mod raw;
mod validate;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::diag::{Diagnostic, Diagnostics};

use self::raw::RawProfile;
use self::validate::Validator;

/// Names every template may use without defining them.
pub const BUILTIN_VARS: &[&str] = &["service", "env", "host", "address", "release", "wave"];

/// Default step timeout: long enough for a package install, short enough that a hung step is
/// noticed within a coffee's time.
pub const DEFAULT_STEP_TIMEOUT: Duration = Duration::from_secs(300);
pub const DEFAULT_RETRY_DELAY: Duration = Duration::from_secs(2);
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_HEALTH_RETRIES: u32 = 10;
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(1);
pub const DEFAULT_PARALLEL: usize = 50;

/// The shortest timeout a step, check or connection may have: anything less cannot even start a
/// process on a host, and zero would fail every attempt at once.
pub const MIN_TIMEOUT: Duration = Duration::from_millis(100);
/// The shortest health-check interval: at 0 two hosts produced thousands of samples a second;
/// at this floor each host gives at most ten per check and second.
pub const MIN_HEALTH_INTERVAL: Duration = Duration::from_millis(100);
/// The shortest SSH keepalive interval.
pub const MIN_KEEPALIVE: Duration = Duration::from_secs(1);

/// A validated profile.
#[derive(Debug, Clone)]
pub struct Profile {
    pub path: PathBuf,
    /// sha256 of the file as read, so the audit log pins exactly which profile ran.
    pub sha256: String,
    pub service: String,
    pub description: Option<String>,
    pub vars: BTreeMap<String, String>,
    pub secrets: BTreeMap<String, SecretRef>,
    pub environments: Vec<Environment>,
    pub steps: Vec<Step>,
    pub health: Vec<HealthCheck>,
    pub rollback: Vec<Step>,
    /// A command printing the release a host would return to on rollback (for the preview).
    pub rollback_target: Option<String>,
    /// The built-in release layout, when the profile opts in with `[releases]`.
    pub releases: Option<ReleaseLayout>,
    /// Cross-host insight: outliers, slow steps, new against old (`[analysis]`).
    pub analysis: Analysis,
    /// Who hears about the deploy (`[[notify]]`).
    pub notify: Vec<Notify>,
    /// Things that are allowed but probably not meant (a soak too short to see a check fail).
    pub warnings: Vec<Diagnostic>,
}

/// Where a secret's value comes from. Its value is never stored in the profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretRef {
    pub env_var: String,
}

#[derive(Debug, Clone)]
pub struct Environment {
    pub name: String,
    /// Production-like: needs explicit confirmation (`--yes` headless, typing the name in the
    /// console) before a deploy starts.
    pub protected: bool,
    pub transport: TransportKind,
    pub vars: BTreeMap<String, String>,
    pub hosts: Vec<Host>,
    pub policy: RolloutPolicy,
    pub ssh: SshSettings,
    /// Where run-once steps run; the first host of the plan when not set.
    pub once_host: Option<String>,
    /// The deploy lock's directory on the first host; `.wavedeck/lock-<env>` when not set.
    pub lock_path: Option<String>,
    /// Local transport only: where the deploy's runner answers HTTP for its simulated hosts (see
    /// [`crate::transport::local`]), so HTTP checks work on this machine.
    pub local_http: Option<std::net::SocketAddr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TransportKind {
    Local,
    Ssh,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Host {
    pub name: String,
    pub address: String,
    /// SSH login and port for this host, over the environment's settings.
    pub user: Option<String>,
    pub port: Option<u16>,
    pub labels: Vec<String>,
    pub vars: BTreeMap<String, String>,
    /// Where it was defined when not in the profile itself: `inventory/prod.ini:12`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
}

/// How hosts are grouped into waves and what happens when a wave goes bad.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutPolicy {
    /// Hosts in the first wave; 0 means no canary wave.
    pub canary: usize,
    pub batch: Amount,
    /// Failures a wave may have; exceeding it triggers `on_failure`.
    pub max_failures: Amount,
    pub on_failure: FailureAction,
    pub pause_between_waves: Duration,
    /// Hosts running at once inside a wave.
    pub parallel: usize,
    /// After a wave, how long its hosts must stay healthy before the next wave may start.
    pub soak: Duration,
    pub gate: Promotion,
    /// What the runner does when the controlling console goes away without detaching.
    pub on_detach: DetachAction,
    /// How long a waiting deploy (paused, at a gate) with nobody attached lives before its
    /// runner aborts it and releases the lock.
    pub detached_timeout: Duration,
}

/// `detached_timeout` when a profile does not say.
pub const DEFAULT_DETACHED_TIMEOUT: Duration = Duration::from_secs(4 * 60 * 60);
/// The shortest `detached_timeout`: shorter would abort a deploy while its operator reattaches.
pub const MIN_DETACHED_TIMEOUT: Duration = Duration::from_secs(1);

/// How a wave hands over to the next once it has soaked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Promotion {
    Auto,
    /// Wait for the operator to promote (console `P`, headless `--promote`).
    Manual,
}

/// A count of hosts, or a percentage of some total.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Amount {
    Count(usize),
    Percent(u8),
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Amount::Count(n) => write!(f, "{n}"),
            Amount::Percent(p) => write!(f, "{p}%"),
        }
    }
}

pub use crate::event::{DetachAction, FailureAction};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub name: String,
    pub action: StepAction,
    pub timeout: Duration,
    pub retries: u32,
    pub retry_delay: Duration,
    /// Runs once per deploy, on the environment's `once_host`, before the first wave.
    pub once: bool,
    /// A command template; when it succeeds on a host, the step is skipped there (idempotency).
    pub skip_if: Option<String>,
}

/// What a step does. Both forms hold templates, rendered per host when the plan is made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepAction {
    /// A shell command.
    Run(String),
    /// Copy a local file (relative paths are relative to the profile's directory) to a path on
    /// the host (relative paths are relative to the host's deploy directory). Verified by
    /// sha256, written under a temporary name and renamed into place, skipped when the host
    /// already has the same file.
    Upload { from: String, to: String },
    /// Render a local template (`from`, read when the profile is loaded; its text is `source`)
    /// per host, with the host's variables and the secrets, and upload the result to `to` like
    /// an upload: verified, renamed into place with `mode`, skipped when unchanged.
    Template { from: String, to: String, mode: Option<u32>, source: String },
}

/// The built-in release layout: `dir/<release>` directories, a `current` symlink switched
/// atomically, and `dir/.history` listing activated releases in order (what rollback reads).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseLayout {
    pub dir: String,
    /// Releases kept on a host by the `prune` built-in, the active one included.
    pub keep: u32,
}

impl ReleaseLayout {
    /// The built-in `activate` step's script.
    pub fn activate(&self) -> String {
        crate::shell::activate(&self.dir)
    }

    /// The built-in `prune` step's script.
    pub fn prune(&self) -> String {
        crate::shell::prune(&self.dir, self.keep)
    }

    /// The built-in `switch-back` rollback step's script.
    pub fn switch_back(&self) -> String {
        crate::shell::switch_back(&self.dir)
    }
}

/// How an unknown host key is treated (OpenSSH's StrictHostKeyChecking).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum HostKeyPolicy {
    /// Refuse unknown and changed keys.
    Strict,
    /// Record an unknown key on first contact; still refuse a changed one.
    AcceptNew,
}

/// How to reach hosts over SSH. Profile-level `[ssh]`, overridden key by key by an
/// environment's `ssh = { … }`, then by a host's own `user` and `port`, then by ~/.ssh/config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshSettings {
    pub user: Option<String>,
    pub port: Option<u16>,
    /// Identity files to offer (besides the agent's keys); empty means ssh_config's
    /// IdentityFile or OpenSSH's defaults.
    pub identity_files: Vec<PathBuf>,
    /// Extra known_hosts files, checked after ~/.ssh/known_hosts. `accept-new` records new
    /// keys in the first of them (or in ~/.ssh/known_hosts when there is none).
    pub known_hosts: Vec<PathBuf>,
    pub host_key_policy: HostKeyPolicy,
    /// The ssh_config file to honour; `None` reads none.
    pub config: Option<PathBuf>,
    pub connect_timeout: Duration,
    /// Connection attempts before a host counts as unreachable.
    pub connect_attempts: u32,
    pub keepalive_interval: Duration,
    /// How long a helper command (hash, rename, free space, kill) may take on a host before it
    /// is given up on: a stale NFS mount can hang `df` for ever.
    pub helper_timeout: Duration,
    /// Where steps run and relative upload targets land.
    pub deploy_path: String,
    /// Keep each step's output in files beside its record on the host (two `tee` processes a
    /// step), so a dropped connection breaks no pipe and what was missed can be shown.
    pub keep_step_output: bool,
}

pub const DEFAULT_HELPER_TIMEOUT: Duration = Duration::from_secs(20);
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_CONNECT_ATTEMPTS: u32 = 3;
pub const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(15);

/// A webhook told about a deploy (`[[notify]]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notify {
    /// How the audit log names it: its `name`, else `<kind>-<n>`.
    pub name: String,
    pub kind: NotifyKind,
    /// A template of `[vars]`, secrets, `service` and `env`.
    pub url: String,
    pub on: Vec<NotifyOn>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotifyKind {
    /// A JSON document with the deploy, the occasion, its text and the event.
    Webhook,
    /// A Slack-compatible incoming webhook: `{"text": …}`.
    Slack,
}

/// What a `[[notify]]` entry is told about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotifyOn {
    Started,
    Paused,
    /// A wave over its failure limit, or worse than the old release.
    Threshold,
    PromoteWait,
    Aborted,
    /// A rollback starts.
    Rollback,
    Finished,
}

impl NotifyOn {
    pub const ALL: [NotifyOn; 7] = [
        NotifyOn::Started,
        NotifyOn::Paused,
        NotifyOn::Threshold,
        NotifyOn::PromoteWait,
        NotifyOn::Aborted,
        NotifyOn::Rollback,
        NotifyOn::Finished,
    ];

    pub fn name(self) -> &'static str {
        match self {
            NotifyOn::Started => "started",
            NotifyOn::Paused => "paused",
            NotifyOn::Threshold => "threshold",
            NotifyOn::PromoteWait => "promote_wait",
            NotifyOn::Aborted => "aborted",
            NotifyOn::Rollback => "rollback",
            NotifyOn::Finished => "finished",
        }
    }
}

/// What wavedeck looks for across hosts (`[analysis]`).
#[derive(Debug, Clone, PartialEq)]
pub struct Analysis {
    /// An output group printed by at most this share of a step's hosts is an outlier.
    pub outlier_percent: u8,
    pub slow_step: SlowStep,
    /// A step is slow on a host once it has run this many times the median of the hosts of
    /// its wave that finished it…
    pub slow_factor: f64,
    /// …and at least this long.
    pub slow_min: Duration,
    /// Hosts on the new release against those still on the old, by their HTTP/TCP checks.
    pub compare: Option<Compare>,
}

impl Default for Analysis {
    fn default() -> Analysis {
        Analysis {
            outlier_percent: DEFAULT_OUTLIER_PERCENT,
            slow_step: SlowStep::Flag,
            slow_factor: DEFAULT_SLOW_FACTOR,
            slow_min: DEFAULT_SLOW_MIN,
            compare: None,
        }
    }
}

pub use crate::event::DEFAULT_OUTLIER_PERCENT;
pub const DEFAULT_SLOW_FACTOR: f64 = 3.0;
pub const DEFAULT_SLOW_MIN: Duration = Duration::from_secs(10);
pub const DEFAULT_COMPARE_WINDOW: Duration = Duration::from_secs(30);
pub const DEFAULT_COMPARE_INTERVAL: Duration = Duration::from_secs(1);

/// What a slow step does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlowStep {
    Off,
    /// Shown in the host table and on the timeline, and audited.
    Flag,
    /// Stopped and failed, like a timeout (its retries still apply).
    Fail,
}

/// New against old: both groups probed every `interval`, judged over the last `window`.
#[derive(Debug, Clone, PartialEq)]
pub struct Compare {
    pub window: Duration,
    pub interval: Duration,
    /// The new hosts' p95 latency may be at most this many times the old ones'.
    pub max_p95_ratio: Option<f64>,
    /// The new hosts' error rate may exceed the old ones' by at most this many percentage points.
    pub max_error_rate_increase: Option<f64>,
}

/// A command whose success means the host serves traffic; polled until it passes or its
/// retries run out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub name: String,
    pub probe: HealthProbe,
    /// The step after which the check runs; `None` means after the last step.
    pub after: Option<String>,
    pub timeout: Duration,
    pub retries: u32,
    pub interval: Duration,
    /// While monitoring: consecutive successes before a host counts as healthy again.
    pub healthy_after: u32,
    /// While monitoring: consecutive failures before a host counts as unhealthy.
    pub unhealthy_after: u32,
}

/// What a health check does; strings are templates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthProbe {
    /// A command run on the host through its transport; exit 0 is healthy.
    Command(String),
    /// An HTTP(S) request from the console machine (certificates verified).
    Http { url: String, expect_status: u16, body_contains: Option<String>, max_latency: Option<Duration> },
    /// A TCP connection from the console machine to `address` (`host:port`).
    Tcp { address: String },
}

impl Profile {
    /// Reads and validates a profile, reporting every problem found.
    pub fn load(path: &Path) -> Result<Profile, Diagnostics> {
        let source = std::fs::read_to_string(path)
            .map_err(|e| Diagnostics(vec![Diagnostic::whole_file(path, format!("cannot read profile: {e}"))]))?;
        Self::parse(path, &source)
    }

    /// Parses profile text; `path` is used for messages and recorded in the profile.
    pub fn parse(path: &Path, source: &str) -> Result<Profile, Diagnostics> {
        let raw: RawProfile = crate::diag::parse_toml(path, source)?;
        let mut v = Validator { path, source, problems: Vec::new(), warnings: Vec::new(), soaks: Vec::new() };
        let mut profile = v.profile(raw);
        if v.problems.is_empty() {
            v.check_soaks(&profile.health);
            // An environment's plan is checked once per environment: say each thing once.
            let mut said = Vec::new();
            v.warnings.retain(|w| {
                let first = !said.contains(w);
                if first {
                    said.push(w.clone());
                }
                first
            });
            profile.warnings = v.warnings;
            return Ok(profile);
        }
        // The profile-level plan is checked once per environment it applies to; say it once.
        let mut seen = Vec::new();
        v.problems.retain(|d| {
            let first = !seen.contains(d);
            if first {
                seen.push(d.clone());
            }
            first
        });
        Err(Diagnostics(v.problems))
    }

    pub fn environment(&self, name: &str) -> Option<&Environment> {
        self.environments.iter().find(|e| e.name == name)
    }

    pub fn environment_names(&self) -> Vec<&str> {
        self.environments.iter().map(|e| e.name.as_str()).collect()
    }
}

/// A path from a profile: `~/…` stays for the transport to expand; a relative path is taken
/// from the profile's own directory, so a profile works from any working directory.
pub fn profile_relative(profile_dir: &Path, path: &str) -> PathBuf {
    if path.starts_with('~') || Path::new(path).is_absolute() { PathBuf::from(path) } else { profile_dir.join(path) }
}

/// Names that end up in paths and shell commands: no separators, no leading dot or dash.
pub fn is_safe_name(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with(['.', '-'])
        && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

pub fn hex_sha256(bytes: &[u8]) -> String {
    crate::sys::hex(&Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[service]
name = "web"

[[environments]]
name = "dev"
hosts = [{ name = "a" }, { name = "b" }]

[[steps]]
name = "hello"
run = "echo {{ host }} {{ release }}"
"#;

    fn parse(src: &str) -> Result<Profile, Diagnostics> {
        Profile::parse(Path::new("t.toml"), src)
    }

    #[test]
    fn minimal_profile_gets_documented_defaults() {
        let p = parse(MINIMAL).unwrap();
        let env = p.environment("dev").unwrap();
        assert_eq!(env.policy.canary, 1);
        assert_eq!(env.policy.batch, Amount::Percent(25));
        assert_eq!(env.policy.max_failures, Amount::Count(0));
        assert_eq!(env.policy.on_failure, FailureAction::Pause);
        assert_eq!(env.policy.parallel, DEFAULT_PARALLEL);
        assert_eq!(env.hosts[0].address, "a");
        assert_eq!(p.steps[0].timeout, DEFAULT_STEP_TIMEOUT);
        assert_eq!(p.sha256.len(), 64);
    }

    #[test]
    fn unknown_key_is_located() {
        let src = MINIMAL.replace("name = \"hello\"", "name = \"hello\"\ntimeuot = \"3s\"");
        let err = parse(&src).unwrap_err();
        assert_eq!(err.0.len(), 1);
        let d = &err.0[0];
        assert_eq!(d.position, Some((11, 1)), "{d}");
        assert!(d.message.contains("timeuot"), "{d}");
    }

    #[test]
    fn environment_plan_overrides_profile_plan_key_by_key() {
        let src = MINIMAL.replace(
            "[[environments]]",
            "[plan]\ncanary = 2\nbatch = 3\n\n[[environments]]\nplan = { batch = \"50%\" }",
        );
        let p = parse(&src).unwrap();
        let policy = &p.environments[0].policy;
        assert_eq!((policy.canary, policy.batch), (2, Amount::Percent(50)));
    }

    #[test]
    fn zero_and_absurdly_small_durations_are_refused_where_written() {
        let src = MINIMAL.replace("run = \"echo {{ host }} {{ release }}\"", "run = \"true\"\ntimeout = \"0s\"")
            + "\n[[health]]\nname = \"up\"\nrun = \"true\"\ninterval = \"0s\"\ntimeout = \"1ms\"\n";
        let err = parse(&src).unwrap_err();
        let text = err.to_string();
        for (place, what) in [
            ("t.toml:12:11", "timeout of 0s is too short: it must be at least 100ms"),
            ("t.toml:17:12", "interval of 0s is too short: it must be at least 100ms"),
            ("t.toml:18:11", "timeout of 1ms is too short"),
        ] {
            assert!(
                err.0.iter().any(|d| d.to_string().starts_with(place) && d.message.contains(what)),
                "missing {place} {what} in:\n{text}"
            );
        }
        assert_eq!(err.0.len(), 3, "{text}");
    }

    #[test]
    fn secrets_in_check_targets_and_upload_paths_are_refused_with_the_reason() {
        let src = MINIMAL.replace("[[environments]]", "[secrets]\ntok = { env = \"TOK\" }\n\n[[environments]]")
            + "\n[[health]]\nname = \"lb\"\nkind = \"http\"\nurl = \"http://{{ host }}/health?token={{ tok }}\"\n\
               \n[[health]]\nname = \"cmd\"\nrun = \"curl -H 'X: {{ tok }}' localhost\"\n";
        let err = parse(&src).unwrap_err();
        assert_eq!(err.0.len(), 1, "{err}");
        let text = err.to_string();
        assert!(text.contains("health check `lb` cannot use the secret `tok`"), "{text}");
        assert!(text.contains("use a command check"), "{text}");
    }

    #[test]
    fn a_lock_path_must_name_one_plain_directory() {
        for bad in ["/", "", "../..", "/var/lock/../../etc", "locks/$(reboot)"] {
            let src = MINIMAL.replace("name = \"dev\"", &format!("name = \"dev\"\nlock_path = \"{bad}\""));
            let err = parse(&src).unwrap_err().to_string();
            assert!(err.starts_with("error: t.toml:7:13: lock_path"), "{bad}: {err}");
        }
        for good in ["/var/lock/shopfront", ".wavedeck/lock-dev", "locks/web.v2"] {
            let src = MINIMAL.replace("name = \"dev\"", &format!("name = \"dev\"\nlock_path = \"{good}\""));
            assert!(parse(&src).is_ok(), "{good}");
        }
    }

    #[test]
    fn a_soak_too_short_for_the_checks_is_a_warning_not_an_error() {
        let src = MINIMAL.replace("[[environments]]", "[plan]\nsoak = \"2s\"\n\n[[environments]]")
            + "\n[[health]]\nname = \"up\"\nrun = \"true\"\ninterval = \"1s\"\nunhealthy_after = 3\n";
        let p = parse(&src).unwrap();
        assert_eq!(p.warnings.len(), 1, "{:?}", p.warnings);
        let w = p.warnings[0].to_string();
        assert!(w.starts_with("t.toml:6:8: soak 2s is shorter than health check `up` needs"), "{w}");
        let long_enough = src.replace("soak = \"2s\"", "soak = \"3s\"");
        assert!(parse(&long_enough).unwrap().warnings.is_empty());
    }

    #[test]
    fn validation_reports_every_problem_at_once() {
        let src = r#"
[service]
name = "web"

[plan]
batch = "140%"
on_failure = "panic"

[[environments]]
name = "dev"
hosts = [{ name = "a" }, { name = "a" }]

[[environments]]
name = "empty"

[[steps]]
name = "hello"
run = "echo {{ colour }}"
timeout = "soon"

[[health]]
name = "up"
run = "true"
after = "helo"
"#;
        let err = parse(src).unwrap_err();
        let text = err.to_string();
        let expect = [
            ("t.toml:6:9", "between 0% and 100%"),
            ("t.toml:7:14", "on_failure"),
            ("t.toml:11:35", "appears twice"),
            ("t.toml:14:8", "has no hosts"),
            ("t.toml:18:7", "colour"),
            ("t.toml:19:11", "duration"),
            ("t.toml:24:9", "unknown step `helo`"),
        ];
        for (place, what) in expect {
            assert!(
                err.0.iter().any(|d| d.to_string().starts_with(place) && d.message.contains(what)),
                "missing {place} {what} in:\n{text}"
            );
        }
        assert_eq!(err.0.len(), expect.len(), "each problem once:\n{text}");
    }

    #[test]
    fn variable_missing_in_some_hosts_names_them() {
        let src = MINIMAL
            .replace("{{ host }}", "{{ port }}")
            .replace("{ name = \"a\" }", "{ name = \"a\", vars = { port = \"80\" } }");
        let err = parse(&src).unwrap_err();
        assert!(err.0[0].message.contains("not defined for dev/b"), "{err}");
    }

    #[test]
    fn zero_batch_and_bad_amount_types_are_rejected() {
        for (batch, expect) in [("0", "at least 1"), ("\"0%\"", "at least 1"), ("true", "number of hosts")] {
            let src = MINIMAL.replace("[[environments]]", &format!("[plan]\nbatch = {batch}\n[[environments]]"));
            let err = parse(&src).unwrap_err();
            assert!(err.to_string().contains(expect), "{batch}: {err}");
        }
    }

    #[test]
    fn unsafe_host_names_are_rejected() {
        let err = parse(&MINIMAL.replace("{ name = \"b\" }", "{ name = \"../etc\" }")).unwrap_err();
        assert!(err.to_string().contains("host name must be"), "{err}");
    }

    #[test]
    fn syntax_error_is_located() {
        let err = parse("[service\nname = 1").unwrap_err();
        assert_eq!(err.0[0].position.map(|p| p.0), Some(1), "{err}");
    }

    #[test]
    fn the_analysis_block_reads_its_limits_and_says_where_a_bad_one_is() {
        let good = format!("{MINIMAL}\n[analysis]\nslow_step = \"fail\"\nmax_p95_ratio = 1.5\nwindow = \"20s\"\n");
        let analysis = parse(&good).unwrap().analysis;
        assert_eq!(analysis.slow_step, SlowStep::Fail);
        let compare = analysis.compare.unwrap();
        assert_eq!((compare.max_p95_ratio, compare.window), (Some(1.5), Duration::from_secs(20)));
        assert_eq!(parse(MINIMAL).unwrap().analysis, Analysis::default());
        assert!(Analysis::default().compare.is_none());

        let bad = format!(
            "{MINIMAL}\n[analysis]\nslow_step = \"panic\"\noutlier_percent = 0\nslow_factor = 0.5\nwindow = \"0s\"\ncompare = true\n"
        );
        let err = parse(&bad).unwrap_err().to_string();
        for expect in [
            "error: t.toml:14:13: slow_step must be \"flag\", \"fail\" or \"off\"",
            "error: t.toml:15:19: outlier_percent must be",
            "error: t.toml:16:15: slow_factor must be",
            "error: t.toml:17:10: window of 0s is too short",
        ] {
            assert!(err.contains(expect), "{expect}\n{err}");
        }
    }

    #[test]
    fn a_template_steps_file_mode_and_names_are_checked_where_they_are_written() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("app.conf.j2"), "port {{ port }}\nhost {{ host }}\n").unwrap();
        let path = dir.path().join("p.toml");
        let with = |step: &str| MINIMAL.replace("run = \"echo {{ host }} {{ release }}\"", step);
        let good =
            with("template = { from = \"app.conf.j2\", to = \"app.conf\", mode = \"0640\" }\n[vars]\nport = \"80\"");
        let profile = Profile::parse(&path, &good).unwrap();
        let StepAction::Template { mode, source, .. } = &profile.steps[0].action else { panic!() };
        assert_eq!((*mode, source.as_str()), (Some(0o640), "port {{ port }}\nhost {{ host }}\n"));

        let err =
            Profile::parse(&path, &with("template = { from = \"app.conf.j2\", to = \"app.conf\", mode = \"rw\" }"))
                .unwrap_err()
                .to_string();
        assert!(err.contains("uses `{{port}}`, which is not defined"), "{err}");
        assert!(err.contains("mode must be octal permission bits"), "{err}");
        let err =
            Profile::parse(&path, &with("template = { from = \"nope.j2\", to = \"x\" }")).unwrap_err().to_string();
        assert!(err.contains("p.toml:11:21: cannot read template"), "{err}");
    }
}
