//! Profiles: one TOML file per service describing its environments, hosts, rollout plan,
//! steps, health checks and rollback.
//!
//! Parsing is two passes. serde reads the file strictly (unknown keys are errors) into `Raw*`
//! types that keep the source span of everything worth pointing at; then `validate` checks the
//! meaning and reports every problem it finds at once, each at `file:line:col`. The rest of the
//! program only ever sees the validated [`Profile`].

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use sha2::{Digest, Sha256};
use toml::Spanned;

use crate::diag::{Diagnostic, Diagnostics};
use crate::template;

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
}

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

pub use crate::event::FailureAction;

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
}

pub const DEFAULT_HELPER_TIMEOUT: Duration = Duration::from_secs(20);
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_CONNECT_ATTEMPTS: u32 = 3;
pub const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(15);

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
            v.warnings.dedup();
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

// ---------------------------------------------------------------------------------------------
// The file as written.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProfile {
    service: RawService,
    #[serde(default)]
    vars: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    secrets: BTreeMap<String, Spanned<RawSecret>>,
    #[serde(default)]
    plan: RawPlan,
    #[serde(default)]
    ssh: RawSsh,
    #[serde(default)]
    environments: Vec<Spanned<RawEnvironment>>,
    #[serde(default)]
    steps: Vec<Spanned<RawStep>>,
    #[serde(default)]
    health: Vec<Spanned<RawHealth>>,
    #[serde(default)]
    rollback: Vec<Spanned<RawStep>>,
    rollback_target: Option<Spanned<String>>,
    releases: Option<RawReleases>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    name: Spanned<String>,
    description: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSecret {
    env: String,
}

#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
struct RawPlan {
    canary: Option<Spanned<i64>>,
    batch: Option<Spanned<toml::Value>>,
    max_failures: Option<Spanned<toml::Value>>,
    on_failure: Option<Spanned<String>>,
    pause_between_waves: Option<Spanned<String>>,
    parallel: Option<Spanned<i64>>,
    soak: Option<Spanned<String>>,
    gate: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEnvironment {
    name: Spanned<String>,
    #[serde(default)]
    protected: bool,
    transport: Option<Spanned<String>>,
    #[serde(default)]
    vars: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    plan: RawPlan,
    #[serde(default)]
    ssh: RawSsh,
    once_host: Option<Spanned<String>>,
    lock_path: Option<Spanned<String>>,
    #[serde(default)]
    hosts: Vec<Spanned<RawHost>>,
}

#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
struct RawSsh {
    user: Option<String>,
    port: Option<Spanned<i64>>,
    identity_files: Option<Vec<String>>,
    known_hosts: Option<Vec<String>>,
    host_key_policy: Option<Spanned<String>>,
    config: Option<String>,
    connect_timeout: Option<Spanned<String>>,
    connect_attempts: Option<Spanned<i64>>,
    keepalive_interval: Option<Spanned<String>>,
    helper_timeout: Option<Spanned<String>>,
    deploy_path: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHost {
    name: Spanned<String>,
    address: Option<String>,
    user: Option<String>,
    port: Option<Spanned<i64>>,
    #[serde(default)]
    labels: Vec<String>,
    #[serde(default)]
    vars: BTreeMap<String, Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    name: Spanned<String>,
    run: Option<Spanned<String>>,
    upload: Option<Spanned<RawUpload>>,
    builtin: Option<Spanned<String>>,
    skip_if: Option<Spanned<String>>,
    timeout: Option<Spanned<String>>,
    retries: Option<u32>,
    retry_delay: Option<Spanned<String>>,
    #[serde(default)]
    once: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReleases {
    dir: Option<String>,
    keep: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpload {
    from: Spanned<String>,
    to: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    name: Spanned<String>,
    kind: Option<Spanned<String>>,
    run: Option<Spanned<String>>,
    url: Option<Spanned<String>>,
    expect_status: Option<u16>,
    body_contains: Option<Spanned<String>>,
    max_latency: Option<Spanned<String>>,
    address: Option<Spanned<String>>,
    healthy_after: Option<u32>,
    unhealthy_after: Option<u32>,
    after: Option<Spanned<String>>,
    timeout: Option<Spanned<String>>,
    retries: Option<u32>,
    interval: Option<Spanned<String>>,
}

// ---------------------------------------------------------------------------------------------
// Validation.

struct Validator<'a> {
    path: &'a Path,
    source: &'a str,
    problems: Vec<Diagnostic>,
    warnings: Vec<Diagnostic>,
    /// Every non-zero soak and where it was written, checked against the health checks at the end.
    soaks: Vec<(std::ops::Range<usize>, Duration)>,
}

/// A template and where it stands, kept until every environment's variables are known.
struct TemplateUse<'r> {
    what: String,
    text: &'r Spanned<String>,
    /// Why this template may not read a secret, if it may not: its result is shown and logged
    /// (an upload path, an HTTP or TCP check's target, made from this machine).
    no_secrets: Option<&'static str>,
}

/// A lock directory wavedeck may create and later remove: a path of plain names, so that it
/// can never be `/`, a parent directory, or something other than the one directory it names.
fn check_lock_path(path: &str) -> Result<(), String> {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').filter(|p| !p.is_empty()).collect();
    if parts.is_empty() {
        return Err("must name a directory below `/`, such as \"/var/lock/shopfront\"".into());
    }
    let plain = |p: &str| {
        !matches!(p, "." | "..")
            && !p.starts_with('-')
            && p.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    };
    if let Some(bad) = parts.iter().find(|p| !plain(p)) {
        return Err(format!(
            "part `{bad}` is not allowed: use letters, digits, `.`, `_` and `-`, not `.`, `..` or a leading `-`"
        ));
    }
    Ok(())
}

impl Validator<'_> {
    fn problem<T>(&mut self, at: &Spanned<T>, message: impl Into<String>) {
        self.problems.push(Diagnostic::at(self.path, self.source, at.span(), message));
    }

    /// A soak that ends before a check could turn a host unhealthy watches nothing.
    fn check_soaks(&mut self, health: &[HealthCheck]) {
        let soaks = std::mem::take(&mut self.soaks);
        for (span, soak) in soaks {
            let Some(check) = health.iter().max_by_key(|c| c.interval * c.unhealthy_after) else { continue };
            let needed = check.interval * check.unhealthy_after;
            if soak < needed {
                self.warnings.push(Diagnostic::at(
                    self.path,
                    self.source,
                    span,
                    format!(
                        "soak {} is shorter than health check `{}` needs to call a host unhealthy \
                         ({} x interval {} = {}): a host going bad during it may not be noticed",
                        humantime::format_duration(soak),
                        check.name,
                        check.unhealthy_after,
                        humantime::format_duration(check.interval),
                        humantime::format_duration(needed)
                    ),
                ));
            }
        }
    }

    /// A duration that must be at least `min` (`what` names it in the error).
    fn duration_at_least(&mut self, raw: &Spanned<String>, min: Duration, what: &str, fallback: Duration) -> Duration {
        let d = self.duration(raw, fallback);
        if d < min {
            self.problem(
                raw,
                format!(
                    "{what} of {} is too short: it must be at least {}",
                    humantime::format_duration(d),
                    humantime::format_duration(min)
                ),
            );
            return fallback;
        }
        d
    }

    fn profile(&mut self, raw: RawProfile) -> Profile {
        let service = raw.service.name.get_ref().trim().to_string();
        if service.is_empty() {
            self.problem(&raw.service.name, "service name must not be empty");
        }
        let vars = self.vars(&raw.vars, "variable");
        let secrets = self.secrets(&raw.secrets);
        for (name, value) in &raw.vars {
            if raw.secrets.contains_key(name) {
                self.problem(value, format!("`{name}` is both a variable and a secret; rename one"));
            }
        }

        // Checked on their own too, so their problems show even before any environment exists.
        self.policy(&raw.plan);
        self.ssh(&raw.ssh);
        let mut environments = Vec::new();
        let mut env_names = BTreeSet::new();
        for env in &raw.environments {
            if !env_names.insert(env.get_ref().name.get_ref().clone()) {
                self.problem(
                    &env.get_ref().name,
                    format!("environment `{}` is defined twice", env.get_ref().name.get_ref()),
                );
            }
            environments.push(self.environment(env, &raw.plan, &raw.ssh));
        }
        if raw.environments.is_empty() {
            self.problems.push(Diagnostic::whole_file(
                self.path,
                "no environments: add at least one [[environments]] table with hosts",
            ));
        }

        let mut step_names = BTreeSet::new();
        let layout = raw.releases.as_ref().map(|r| ReleaseLayout {
            dir: r.dir.clone().unwrap_or_else(|| "releases".into()),
            keep: r.keep.unwrap_or(5),
        });
        let steps = self.steps(&raw.steps, "step", &mut step_names, layout.as_ref());
        if raw.steps.is_empty() {
            self.problems.push(Diagnostic::whole_file(self.path, "no steps: add at least one [[steps]] table"));
        }
        let mut rollback_names = BTreeSet::new();
        let mut rollback = self.steps(&raw.rollback, "rollback step", &mut rollback_names, layout.as_ref());
        if let (Some(layout), true) = (&layout, rollback.is_empty()) {
            rollback.push(Step {
                name: "switch-back".into(),
                action: StepAction::Run(layout.switch_back()),
                timeout: DEFAULT_STEP_TIMEOUT,
                retries: 0,
                retry_delay: DEFAULT_RETRY_DELAY,
                once: false,
                skip_if: None,
            });
        }
        let health = self.health(&raw.health, &steps);

        // Every template must only read names that exist for every host it will run on.
        let mut uses: Vec<TemplateUse> = Vec::new();
        for (kind, list) in [("step", &raw.steps), ("rollback step", &raw.rollback)] {
            for s in list.iter() {
                let step = s.get_ref();
                let what = format!("{kind} `{}`", step.name.get_ref());
                const PATHS: Option<&str> = Some("upload paths are shown and logged as they are");
                let texts = [
                    (step.run.as_ref(), None),
                    (step.upload.as_ref().map(|u| &u.get_ref().from), PATHS),
                    (step.upload.as_ref().map(|u| &u.get_ref().to), PATHS),
                    (step.skip_if.as_ref(), None),
                ];
                for (text, no_secrets) in texts {
                    if let Some(text) = text {
                        uses.push(TemplateUse { what: what.clone(), text, no_secrets });
                    }
                }
            }
        }
        if let Some(target) = &raw.rollback_target {
            uses.push(TemplateUse { what: "rollback_target".into(), text: target, no_secrets: None });
        }
        for h in raw.health.iter() {
            let check = h.get_ref();
            let what = format!("health check `{}`", check.name.get_ref());
            const PROBE: Option<&str> = Some(
                "HTTP and TCP checks run from this machine and their targets are shown and logged; \
                 use a command check (kind = \"command\") to send a secret",
            );
            let texts =
                [(&check.run, None), (&check.url, PROBE), (&check.body_contains, PROBE), (&check.address, PROBE)];
            for (text, no_secrets) in texts {
                if let Some(text) = text {
                    uses.push(TemplateUse { what: what.clone(), text, no_secrets });
                }
            }
        }
        self.check_templates(&uses, &vars, &secrets, &environments);

        Profile {
            path: self.path.to_path_buf(),
            sha256: hex_sha256(self.source.as_bytes()),
            service,
            description: raw.service.description,
            vars,
            secrets,
            environments,
            steps,
            health,
            rollback,
            rollback_target: raw.rollback_target.as_ref().map(|t| t.get_ref().clone()),
            releases: layout,
            warnings: Vec::new(),
        }
    }

    fn vars(&mut self, raw: &BTreeMap<String, Spanned<String>>, what: &str) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for (name, value) in raw {
            if BUILTIN_VARS.contains(&name.as_str()) {
                self.problem(value, format!("{what} `{name}` would hide the built-in `{{{{{name}}}}}`; rename it"));
            } else if !is_identifier(name) {
                self.problem(
                    value,
                    format!("{what} name `{name}` is not usable in templates: use letters, digits and _"),
                );
            }
            out.insert(name.clone(), value.get_ref().clone());
        }
        out
    }

    fn secrets(&mut self, raw: &BTreeMap<String, Spanned<RawSecret>>) -> BTreeMap<String, SecretRef> {
        let mut out = BTreeMap::new();
        for (name, secret) in raw {
            if BUILTIN_VARS.contains(&name.as_str()) || !is_identifier(name) {
                self.problem(secret, format!("secret name `{name}` must be an identifier other than a built-in"));
            }
            let env_var = secret.get_ref().env.clone();
            if env_var.is_empty() {
                self.problem(secret, format!("secret `{name}` needs `env`, the environment variable holding it"));
            }
            out.insert(name.clone(), SecretRef { env_var });
        }
        out
    }

    fn environment(&mut self, raw: &Spanned<RawEnvironment>, base: &RawPlan, base_ssh: &RawSsh) -> Environment {
        let env = raw.get_ref();
        let name = env.name.get_ref().clone();
        if !is_safe_name(&name) {
            self.problem(&env.name, "environment name must be letters, digits, `.`, `_` or `-`");
        }
        let transport = match env.transport.as_ref().map(|t| (t, t.get_ref().as_str())) {
            None | Some((_, "local")) => TransportKind::Local,
            Some((_, "ssh")) => TransportKind::Ssh,
            Some((t, other)) => {
                self.problem(t, format!("unknown transport `{other}`: expected \"local\" or \"ssh\""));
                TransportKind::Local
            }
        };
        let vars = self.vars(&env.vars, "variable");
        let policy = self.policy(&merge_plan(base, &env.plan));
        let ssh = self.ssh(&merge_ssh(base_ssh, &env.ssh));
        if env.protected && ssh.host_key_policy == HostKeyPolicy::AcceptNew {
            let at = env.ssh.host_key_policy.as_ref().or(base_ssh.host_key_policy.as_ref());
            let message = format!(
                "environment `{name}` is protected: host_key_policy \"accept-new\" is not allowed for it; \
                 add its host keys to known_hosts instead"
            );
            match at {
                Some(at) => self.problem(at, message),
                None => self.problem(&env.name, message),
            }
        }

        let mut hosts = Vec::new();
        let mut host_names = BTreeSet::new();
        for h in &env.hosts {
            let raw_host = h.get_ref();
            let host_name = raw_host.name.get_ref().clone();
            if !is_safe_name(&host_name) {
                self.problem(&raw_host.name, "host name must be letters, digits, `.`, `_` or `-`");
            }
            if !host_names.insert(host_name.clone()) {
                self.problem(&raw_host.name, format!("host `{host_name}` appears twice in environment `{name}`"));
            }
            let port = raw_host.port.as_ref().and_then(|p| self.port(p));
            hosts.push(Host {
                address: raw_host.address.clone().unwrap_or_else(|| host_name.clone()),
                user: raw_host.user.clone(),
                port,
                name: host_name,
                labels: raw_host.labels.clone(),
                vars: self.vars(&raw_host.vars, "variable"),
            });
        }
        if env.hosts.is_empty() {
            self.problem(&env.name, format!("environment `{name}` has no hosts"));
        }
        if let Some(once) = &env.once_host
            && !env.hosts.iter().any(|h| h.get_ref().name.get_ref() == once.get_ref())
        {
            self.problem(once, format!("once_host `{}` is not a host of environment `{name}`", once.get_ref()));
        }
        let once_host = env.once_host.as_ref().map(|h| h.get_ref().clone());
        if let Some(path) = &env.lock_path
            && let Err(why) = check_lock_path(path.get_ref())
        {
            self.problem(path, format!("lock_path {why}"));
        }
        Environment {
            name,
            protected: env.protected,
            transport,
            vars,
            hosts,
            policy,
            ssh,
            once_host,
            lock_path: env.lock_path.as_ref().map(|p| p.get_ref().clone()),
        }
    }

    fn policy(&mut self, raw: &RawPlan) -> RolloutPolicy {
        let canary = match &raw.canary {
            None => 1,
            Some(c) if *c.get_ref() < 0 => {
                self.problem(c, "canary must be 0 (no canary wave) or a number of hosts");
                1
            }
            Some(c) => *c.get_ref() as usize,
        };
        let batch = match &raw.batch {
            None => Amount::Percent(25),
            Some(b) => match self.amount(b, "batch") {
                Some(Amount::Count(0)) | Some(Amount::Percent(0)) => {
                    self.problem(b, "batch must be at least 1 host or 1%");
                    Amount::Count(1)
                }
                Some(a) => a,
                None => Amount::Count(1),
            },
        };
        let max_failures = match &raw.max_failures {
            None => Amount::Count(0),
            Some(m) => self.amount(m, "max_failures").unwrap_or(Amount::Count(0)),
        };
        let on_failure = match raw.on_failure.as_ref().map(|s| (s, s.get_ref().as_str())) {
            None | Some((_, "pause")) => FailureAction::Pause,
            Some((_, "abort")) => FailureAction::Abort,
            Some((_, "rollback")) => FailureAction::Rollback,
            Some((s, other)) => {
                self.problem(s, format!("unknown on_failure `{other}`: expected \"pause\", \"abort\" or \"rollback\""));
                FailureAction::Pause
            }
        };
        let pause_between_waves =
            raw.pause_between_waves.as_ref().map_or(Duration::ZERO, |d| self.duration(d, Duration::ZERO));
        let parallel = match &raw.parallel {
            None => DEFAULT_PARALLEL,
            Some(p) if *p.get_ref() < 1 => {
                self.problem(p, "parallel must be at least 1");
                1
            }
            Some(p) => *p.get_ref() as usize,
        };
        let soak = raw.soak.as_ref().map_or(Duration::ZERO, |d| self.duration(d, Duration::ZERO));
        if let Some(raw_soak) = raw.soak.as_ref()
            && !soak.is_zero()
        {
            self.soaks.push((raw_soak.span(), soak));
        }
        let gate = match raw.gate.as_ref().map(|g| (g, g.get_ref().as_str())) {
            None | Some((_, "auto")) => Promotion::Auto,
            Some((_, "manual")) => Promotion::Manual,
            Some((g, other)) => {
                self.problem(g, format!("unknown gate `{other}`: expected \"auto\" or \"manual\""));
                Promotion::Auto
            }
        };
        RolloutPolicy { canary, batch, max_failures, on_failure, pause_between_waves, parallel, soak, gate }
    }

    fn port(&mut self, raw: &Spanned<i64>) -> Option<u16> {
        match u16::try_from(*raw.get_ref()) {
            Ok(p) if p > 0 => Some(p),
            _ => {
                self.problem(raw, "port must be between 1 and 65535");
                None
            }
        }
    }

    fn ssh(&mut self, raw: &RawSsh) -> SshSettings {
        let base = self.path.parent().unwrap_or(Path::new("."));
        let host_key_policy = match raw.host_key_policy.as_ref().map(|p| (p, p.get_ref().as_str())) {
            None | Some((_, "strict")) => HostKeyPolicy::Strict,
            Some((_, "accept-new")) => HostKeyPolicy::AcceptNew,
            Some((p, other)) => {
                self.problem(p, format!("unknown host_key_policy `{other}`: expected \"strict\" or \"accept-new\""));
                HostKeyPolicy::Strict
            }
        };
        let connect_attempts = match &raw.connect_attempts {
            None => DEFAULT_CONNECT_ATTEMPTS,
            Some(n) if (1..=20).contains(n.get_ref()) => *n.get_ref() as u32,
            Some(n) => {
                self.problem(n, "connect_attempts must be between 1 and 20");
                DEFAULT_CONNECT_ATTEMPTS
            }
        };
        let config = match raw.config.as_deref() {
            Some("none") => None,
            Some(path) => Some(profile_relative(base, path)),
            None => Some(PathBuf::from("~/.ssh/config")),
        };
        SshSettings {
            user: raw.user.clone(),
            port: raw.port.as_ref().and_then(|p| self.port(p)),
            identity_files: raw.identity_files.iter().flatten().map(|p| profile_relative(base, p)).collect(),
            known_hosts: raw.known_hosts.iter().flatten().map(|p| profile_relative(base, p)).collect(),
            host_key_policy,
            config,
            connect_timeout: raw.connect_timeout.as_ref().map_or(DEFAULT_CONNECT_TIMEOUT, |d| {
                self.duration_at_least(d, MIN_TIMEOUT, "connect_timeout", DEFAULT_CONNECT_TIMEOUT)
            }),
            connect_attempts,
            keepalive_interval: raw.keepalive_interval.as_ref().map_or(DEFAULT_KEEPALIVE, |d| {
                self.duration_at_least(d, MIN_KEEPALIVE, "keepalive_interval", DEFAULT_KEEPALIVE)
            }),
            helper_timeout: raw.helper_timeout.as_ref().map_or(DEFAULT_HELPER_TIMEOUT, |d| {
                self.duration_at_least(d, MIN_TIMEOUT, "helper_timeout", DEFAULT_HELPER_TIMEOUT)
            }),
            deploy_path: raw.deploy_path.clone().unwrap_or_else(|| ".".into()),
        }
    }

    fn amount(&mut self, raw: &Spanned<toml::Value>, what: &str) -> Option<Amount> {
        let expected = format!("{what} must be a number of hosts like 2 or a percentage like \"25%\"");
        match raw.get_ref() {
            toml::Value::Integer(n) if *n >= 0 => Some(Amount::Count(*n as usize)),
            toml::Value::String(s) => {
                let parsed = s.trim().strip_suffix('%').and_then(|p| p.trim().parse::<u32>().ok());
                match parsed {
                    Some(p) if p <= 100 => Some(Amount::Percent(p as u8)),
                    Some(_) => {
                        self.problem(raw, format!("{what} must be between 0% and 100%"));
                        None
                    }
                    None => {
                        self.problem(raw, expected);
                        None
                    }
                }
            }
            _ => {
                self.problem(raw, expected);
                None
            }
        }
    }

    fn duration(&mut self, raw: &Spanned<String>, fallback: Duration) -> Duration {
        match humantime::parse_duration(raw.get_ref()) {
            Ok(d) => d,
            Err(e) => {
                self.problem(raw, format!("expected a duration like \"30s\", \"500ms\" or \"2m\" ({e})"));
                fallback
            }
        }
    }

    fn steps(
        &mut self,
        raw: &[Spanned<RawStep>],
        what: &str,
        names: &mut BTreeSet<String>,
        layout: Option<&ReleaseLayout>,
    ) -> Vec<Step> {
        let mut out = Vec::new();
        for s in raw {
            let step = s.get_ref();
            let name = step.name.get_ref().clone();
            if name.trim().is_empty() {
                self.problem(&step.name, format!("{what} name must not be empty"));
            }
            if !names.insert(name.clone()) {
                self.problem(&step.name, format!("{what} `{name}` is defined twice"));
            }
            let given =
                [step.run.is_some(), step.upload.is_some(), step.builtin.is_some()].iter().filter(|g| **g).count();
            if given > 1 {
                self.problem(
                    &step.name,
                    format!("{what} `{name}` has more than one of `run`, `upload` and `builtin`: use one"),
                );
            }
            let action = match (&step.run, &step.upload, &step.builtin) {
                (Some(run), _, _) => StepAction::Run(run.get_ref().clone()),
                (None, Some(upload), _) => StepAction::Upload {
                    from: upload.get_ref().from.get_ref().clone(),
                    to: upload.get_ref().to.get_ref().clone(),
                },
                (None, None, Some(builtin)) => match (builtin.get_ref().as_str(), layout) {
                    ("activate", Some(layout)) => StepAction::Run(layout.activate()),
                    ("prune", Some(layout)) => StepAction::Run(layout.prune()),
                    ("switch-back", Some(layout)) => StepAction::Run(layout.switch_back()),
                    ("activate" | "prune" | "switch-back", None) => {
                        self.problem(builtin, "built-in release steps need a [releases] table");
                        StepAction::Run(String::new())
                    }
                    (other, _) => {
                        self.problem(
                            builtin,
                            format!("unknown builtin `{other}`: expected \"activate\", \"prune\" or \"switch-back\""),
                        );
                        StepAction::Run(String::new())
                    }
                },
                (None, None, None) => {
                    self.problem(
                        &step.name,
                        format!("{what} `{name}` needs `run` (a command), `upload` (a file to copy) or `builtin`"),
                    );
                    StepAction::Run(String::new())
                }
            };
            out.push(Step {
                name,
                action,
                timeout: step.timeout.as_ref().map_or(DEFAULT_STEP_TIMEOUT, |d| {
                    self.duration_at_least(d, MIN_TIMEOUT, "timeout", DEFAULT_STEP_TIMEOUT)
                }),
                retries: step.retries.unwrap_or(0),
                retry_delay: step
                    .retry_delay
                    .as_ref()
                    .map_or(DEFAULT_RETRY_DELAY, |d| self.duration(d, DEFAULT_RETRY_DELAY)),
                once: step.once,
                skip_if: step.skip_if.as_ref().map(|s| s.get_ref().clone()),
            });
        }
        out
    }

    fn health(&mut self, raw: &[Spanned<RawHealth>], steps: &[Step]) -> Vec<HealthCheck> {
        let mut out = Vec::new();
        let mut names = BTreeSet::new();
        for h in raw {
            let check = h.get_ref();
            let name = check.name.get_ref().clone();
            if !names.insert(name.clone()) {
                self.problem(&check.name, format!("health check `{name}` is defined twice"));
            }
            let needs = |field: &str| format!("health check `{name}` needs `{field}`");
            let probe = match check.kind.as_ref().map(|k| (k, k.get_ref().as_str())) {
                None | Some((_, "command")) => match &check.run {
                    Some(run) => HealthProbe::Command(run.get_ref().clone()),
                    None => {
                        self.problem(&check.name, needs("run"));
                        HealthProbe::Command(String::new())
                    }
                },
                Some((kind, "http")) => match &check.url {
                    Some(url) if url.get_ref().starts_with("http://") || url.get_ref().starts_with("https://") => {
                        HealthProbe::Http {
                            url: url.get_ref().clone(),
                            expect_status: check.expect_status.unwrap_or(200),
                            body_contains: check.body_contains.as_ref().map(|b| b.get_ref().clone()),
                            max_latency: check
                                .max_latency
                                .as_ref()
                                .map(|d| self.duration_at_least(d, MIN_TIMEOUT, "max_latency", DEFAULT_HEALTH_TIMEOUT)),
                        }
                    }
                    Some(url) => {
                        self.problem(url, "url must start with http:// or https://");
                        HealthProbe::Tcp { address: String::new() }
                    }
                    None => {
                        self.problem(kind, needs("url"));
                        HealthProbe::Tcp { address: String::new() }
                    }
                },
                Some((kind, "tcp")) => match &check.address {
                    Some(address) => HealthProbe::Tcp { address: address.get_ref().clone() },
                    None => {
                        self.problem(kind, needs("address (host:port)"));
                        HealthProbe::Tcp { address: String::new() }
                    }
                },
                Some((kind, other)) => {
                    self.problem(
                        kind,
                        format!("unknown health check kind `{other}`: expected \"command\", \"http\" or \"tcp\""),
                    );
                    HealthProbe::Command(String::new())
                }
            };
            if let Some(after) = &check.after
                && !steps.iter().any(|s| &s.name == after.get_ref())
            {
                let known: Vec<&str> = steps.iter().map(|s| s.name.as_str()).collect();
                self.problem(after, format!("unknown step `{}` (steps are: {})", after.get_ref(), known.join(", ")));
            } else if let Some(after) = &check.after
                && steps.iter().any(|s| &s.name == after.get_ref() && s.once)
            {
                self.problem(
                    after,
                    format!("`{}` is a run-once step: health checks follow per-host steps", after.get_ref()),
                );
            }
            out.push(HealthCheck {
                name,
                probe,
                after: check.after.as_ref().map(|a| a.get_ref().clone()),
                timeout: check.timeout.as_ref().map_or(DEFAULT_HEALTH_TIMEOUT, |d| {
                    self.duration_at_least(d, MIN_TIMEOUT, "timeout", DEFAULT_HEALTH_TIMEOUT)
                }),
                retries: check.retries.unwrap_or(DEFAULT_HEALTH_RETRIES),
                interval: check.interval.as_ref().map_or(DEFAULT_HEALTH_INTERVAL, |d| {
                    self.duration_at_least(d, MIN_HEALTH_INTERVAL, "interval", DEFAULT_HEALTH_INTERVAL)
                }),
                healthy_after: check.healthy_after.unwrap_or(1).max(1),
                unhealthy_after: check.unhealthy_after.unwrap_or(3).max(1),
            });
        }
        out
    }

    fn check_templates(
        &mut self,
        uses: &[TemplateUse],
        vars: &BTreeMap<String, String>,
        secrets: &BTreeMap<String, SecretRef>,
        environments: &[Environment],
    ) {
        for u in uses {
            let names = match template::variables(u.text.get_ref()) {
                Ok(names) => names,
                Err(e) => {
                    self.problem(u.text, format!("{}: template error: {e}", u.what));
                    continue;
                }
            };
            for name in names {
                if let Some(why) = u.no_secrets
                    && secrets.contains_key(&name)
                {
                    self.problem(u.text, format!("{} cannot use the secret `{name}`: {why}", u.what));
                    continue;
                }
                let global =
                    BUILTIN_VARS.contains(&name.as_str()) || vars.contains_key(&name) || secrets.contains_key(&name);
                if global {
                    continue;
                }
                let missing: Vec<String> = environments
                    .iter()
                    .flat_map(|env| {
                        env.hosts
                            .iter()
                            .filter(|h| !env.vars.contains_key(&name) && !h.vars.contains_key(&name))
                            .map(move |h| format!("{}/{}", env.name, h.name))
                    })
                    .collect();
                let host_count: usize = environments.iter().map(|e| e.hosts.len()).sum();
                if missing.is_empty() {
                    continue;
                }
                let message = if missing.len() == host_count {
                    format!(
                        "{} uses `{{{{{name}}}}}`, which is not defined: add it under [vars] or [secrets] \
                         (built-ins are: {})",
                        u.what,
                        BUILTIN_VARS.join(", ")
                    )
                } else {
                    format!(
                        "{} uses `{{{{{name}}}}}`, which is not defined for {}: define it in [vars] or for those \
                         environments or hosts",
                        u.what,
                        summarize(&missing)
                    )
                };
                self.problem(u.text, message);
            }
        }
    }
}

/// Environment-level plan keys override the profile-level ones key by key.
fn merge_plan(base: &RawPlan, over: &RawPlan) -> RawPlan {
    RawPlan {
        canary: over.canary.clone().or_else(|| base.canary.clone()),
        batch: over.batch.clone().or_else(|| base.batch.clone()),
        max_failures: over.max_failures.clone().or_else(|| base.max_failures.clone()),
        on_failure: over.on_failure.clone().or_else(|| base.on_failure.clone()),
        pause_between_waves: over.pause_between_waves.clone().or_else(|| base.pause_between_waves.clone()),
        parallel: over.parallel.clone().or_else(|| base.parallel.clone()),
        soak: over.soak.clone().or_else(|| base.soak.clone()),
        gate: over.gate.clone().or_else(|| base.gate.clone()),
    }
}

fn merge_ssh(base: &RawSsh, over: &RawSsh) -> RawSsh {
    RawSsh {
        user: over.user.clone().or_else(|| base.user.clone()),
        port: over.port.clone().or_else(|| base.port.clone()),
        identity_files: over.identity_files.clone().or_else(|| base.identity_files.clone()),
        known_hosts: over.known_hosts.clone().or_else(|| base.known_hosts.clone()),
        host_key_policy: over.host_key_policy.clone().or_else(|| base.host_key_policy.clone()),
        config: over.config.clone().or_else(|| base.config.clone()),
        connect_timeout: over.connect_timeout.clone().or_else(|| base.connect_timeout.clone()),
        connect_attempts: over.connect_attempts.clone().or_else(|| base.connect_attempts.clone()),
        keepalive_interval: over.keepalive_interval.clone().or_else(|| base.keepalive_interval.clone()),
        helper_timeout: over.helper_timeout.clone().or_else(|| base.helper_timeout.clone()),
        deploy_path: over.deploy_path.clone().or_else(|| base.deploy_path.clone()),
    }
}

/// A path from a profile: `~/…` stays for the transport to expand; a relative path is taken
/// from the profile's own directory, so a profile works from any working directory.
pub fn profile_relative(profile_dir: &Path, path: &str) -> PathBuf {
    if path.starts_with('~') || Path::new(path).is_absolute() { PathBuf::from(path) } else { profile_dir.join(path) }
}

fn summarize(items: &[String]) -> String {
    const SHOWN: usize = 4;
    if items.len() <= SHOWN {
        items.join(", ")
    } else {
        format!("{} and {} more", items[..SHOWN].join(", "), items.len() - SHOWN)
    }
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
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
}
