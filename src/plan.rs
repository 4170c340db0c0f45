//! The planner: turns a profile, an environment and a release into waves of hosts, each host
//! with the exact commands it will run.
//!
//! Planning is pure and deterministic (hosts keep their profile order), so `wavedeck plan`
//! shows precisely what `deploy` will do. Templates are rendered here, once; the engine only
//! runs what it is given.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::health::Probe;
use crate::profile::{
    Amount, Environment, HealthProbe, Host, Profile, RolloutPolicy, StepAction, TransportKind, is_safe_name,
    profile_relative,
};
use crate::secrets::{Secrets, Sensitive};
use crate::template;

/// A rollback's plan is named after the release it rolls back: `rollback-of-2.4.2`.
pub const ROLLBACK_PREFIX: &str = "rollback-of-";

#[derive(Debug, Clone)]
pub struct Plan {
    pub service: String,
    pub env: String,
    pub release: String,
    pub protected: bool,
    pub transport: TransportKind,
    pub policy: RolloutPolicy,
    /// What is looked for across hosts while it runs (`[analysis]`).
    pub analysis: crate::profile::Analysis,
    pub waves: Vec<Wave>,
    /// Run-once steps and the host they run on, before the first wave.
    pub once: Option<HostPlan>,
    /// How far an interrupted deploy got, when this plan resumes it (empty otherwise).
    pub resume: Resume,
    /// The deploy's id across resumes (its first session), naming the records steps leave on
    /// hosts; empty until a session is opened for the plan.
    pub deploy_id: String,
}

/// Where a resumed deploy picks things up: what its journal says each host had done.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resume {
    /// Per host; a host not named starts from the beginning.
    pub hosts: BTreeMap<String, Carried>,
    /// Run-once steps that finished before (all of them: none run again).
    pub once_steps_done: usize,
}

/// What a host brings into a resumed deploy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Carried {
    /// It finished every step: nothing runs on it again.
    Done,
    /// Skipped or excluded by the operator, or skipped on resume.
    Skipped,
    /// It failed at `step` (or was declared failed on resume): it counts against its wave.
    Failed { step: String },
    /// Its first `steps_done` steps finished; it continues with the next, whose `attempt` (if
    /// not 0) was interrupted and is looked for on the host before it runs again.
    From { steps_done: usize, attempt: u32 },
}

#[derive(Debug, Clone)]
pub struct Wave {
    /// 1-based, as shown to operators.
    pub number: usize,
    pub hosts: Vec<HostPlan>,
    /// Failures this wave tolerates; one more triggers the policy's `on_failure`.
    pub max_failures: usize,
}

#[derive(Debug, Clone)]
pub struct HostPlan {
    pub host: Host,
    pub steps: Vec<PlannedStep>,
}

pub use crate::event::StepKind;

#[derive(Debug, Clone)]
pub struct PlannedStep {
    pub name: String,
    pub kind: StepKind,
    pub action: PlannedAction,
    /// What the step does with secrets masked: the only form shown or logged.
    pub shown: String,
    pub timeout: Duration,
    /// Extra attempts after a failure.
    pub retries: u32,
    pub retry_delay: Duration,
    /// Set for health checks: they are also sampled continuously once the host is done.
    pub monitor: Option<Thresholds>,
    /// A command that, when it succeeds on the host, makes this step `skipped`.
    pub skip_if: Option<Sensitive>,
}

#[derive(Debug, Clone)]
pub enum PlannedAction {
    /// A shell command, secrets included.
    Run(Sensitive),
    /// A local file to copy to `to` on the host.
    Upload { from: PathBuf, to: String },
    /// A rendered template to write to `to`: `content` with its secrets, `shown` with them
    /// masked (what `plan --diff` shows).
    Template { content: Sensitive, shown: String, to: String, mode: Option<u32> },
    /// An HTTP or TCP check made from the console machine.
    Probe(Probe),
}

/// How a health step is monitored after its host is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    pub healthy_after: u32,
    pub unhealthy_after: u32,
}

/// The first character that makes a release name unusable, named for the operator.
fn first_bad(release: &str) -> String {
    if release.is_empty() {
        return " (it is empty)".into();
    }
    match release.chars().enumerate().find(|&(i, c)| {
        !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')) || (i == 0 && matches!(c, '.' | '-'))
    }) {
        Some((_, c)) if c.is_alphabetic() => format!(" (`{c}` is not an ASCII letter)"),
        Some((_, c)) if c.is_whitespace() => " (it holds a space)".into(),
        Some((0, c)) if matches!(c, '.' | '-') => format!(" (it starts with `{c}`)"),
        Some((_, c)) => format!(" (`{}` is not allowed)", c.escape_default()),
        None => String::new(),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("no environment `{name}` in this profile (environments: {known})")]
    UnknownEnvironment { name: String, known: String },
    #[error("release `{0}` is not usable{why}: use ASCII letters, digits, `.`, `_` or `-`, not starting with `.` or `-`", why = first_bad(.0))]
    BadRelease(String),
    #[error("this profile has no [[rollback]] steps")]
    NoRollback,
    #[error("cannot render {what} for host {host}: {message}")]
    Render { what: String, host: String, message: String },
}

impl Plan {
    /// Plans a deploy. `secrets` may be [`Secrets::masked`] for a dry run.
    pub fn build(profile: &Profile, env_name: &str, release: &str, secrets: &Secrets) -> Result<Plan, PlanError> {
        let env = profile.environment(env_name).ok_or_else(|| PlanError::UnknownEnvironment {
            name: env_name.to_string(),
            known: profile.environment_names().join(", "),
        })?;
        if !is_safe_name(release) {
            return Err(PlanError::BadRelease(release.to_string()));
        }
        let masked = Secrets::masked(profile);
        let exports = secret_exports(secrets);
        let groups = wave_sizes(env.hosts.len(), &env.policy);
        let mut waves = Vec::new();
        let mut next = 0;
        for (i, size) in groups.into_iter().enumerate() {
            let number = i + 1;
            let mut hosts = Vec::new();
            for host in &env.hosts[next..next + size] {
                let real = variables(profile, env, host, release, number, secrets);
                let shown = variables(profile, env, host, release, number, &masked);
                hosts.push(HostPlan { host: host.clone(), steps: host_steps(profile, host, &real, &shown, &exports)? });
            }
            next += size;
            waves.push(Wave { number, max_failures: failure_limit(size, env.policy.max_failures), hosts });
        }
        let once_host = match &env.once_host {
            Some(name) => env.hosts.iter().find(|h| &h.name == name),
            None => waves.first().and_then(|w| w.hosts.first()).map(|h| &h.host),
        };
        let once = match once_host {
            Some(host) if profile.steps.iter().any(|s| s.once) => {
                let real = variables(profile, env, host, release, 0, secrets);
                let shown = variables(profile, env, host, release, 0, &masked);
                // Run-once steps are not a host's deploy: no health checks follow them.
                let once_steps = profile.steps.iter().filter(|s| s.once);
                let steps = planned_steps(profile, host, &real, &shown, &exports, once_steps, Checks::None)?;
                Some(HostPlan { host: host.clone(), steps })
            }
            _ => None,
        };
        Ok(Plan {
            service: profile.service.clone(),
            env: env.name.clone(),
            release: release.to_string(),
            protected: env.protected,
            transport: env.transport,
            policy: env.policy.clone(),
            analysis: profile.analysis.clone(),
            waves,
            once,
            resume: Resume::default(),
            deploy_id: String::new(),
        })
    }

    /// Plans a rollback of `from_release`: `waves` are host names in the order to roll them back
    /// (the reverse of how they were deployed); each host runs the profile's rollback steps, then
    /// every health check.
    /// `targets` gives, per host, the release it returns to; templates see it as `{{ release }}`
    /// (so health checks that verify the release keep working), and `from_release` elsewhere.
    pub fn build_rollback(
        profile: &Profile,
        env_name: &str,
        from_release: &str,
        waves: &[Vec<String>],
        targets: &BTreeMap<String, String>,
        secrets: &Secrets,
    ) -> Result<Plan, PlanError> {
        let env = profile.environment(env_name).ok_or_else(|| PlanError::UnknownEnvironment {
            name: env_name.to_string(),
            known: profile.environment_names().join(", "),
        })?;
        if profile.rollback.is_empty() {
            return Err(PlanError::NoRollback);
        }
        let masked = Secrets::masked(profile);
        let exports = secret_exports(secrets);
        let mut planned = Vec::new();
        for names in waves {
            let mut hosts = Vec::new();
            for host in env.hosts.iter().filter(|h| names.contains(&h.name)) {
                let number = planned.len() + 1;
                let release = targets.get(&host.name).map_or(from_release, String::as_str);
                let real = variables(profile, env, host, release, number, secrets);
                let shown = variables(profile, env, host, release, number, &masked);
                // After rolling back, every check applies, whichever deploy step it followed.
                let steps =
                    planned_steps(profile, host, &real, &shown, &exports, profile.rollback.iter(), Checks::AllAtEnd)?;
                hosts.push(HostPlan { host: host.clone(), steps });
            }
            if !hosts.is_empty() {
                let max_failures = failure_limit(hosts.len(), env.policy.max_failures);
                planned.push(Wave { number: planned.len() + 1, hosts, max_failures });
            }
        }
        let mut policy = env.policy.clone();
        // A rollback that goes wrong stops for a person; it never rolls itself back.
        if policy.on_failure == crate::profile::FailureAction::Rollback {
            policy.on_failure = crate::profile::FailureAction::Pause;
        }
        // Nor does it stop itself for slowness or compare releases: it is the way back.
        let mut analysis = profile.analysis.clone();
        analysis.compare = None;
        if analysis.slow_step == crate::profile::SlowStep::Fail {
            analysis.slow_step = crate::profile::SlowStep::Flag;
        }
        Ok(Plan {
            service: profile.service.clone(),
            env: env.name.clone(),
            release: format!("{ROLLBACK_PREFIX}{from_release}"),
            protected: env.protected,
            transport: env.transport,
            policy,
            analysis,
            waves: planned,
            once: None,
            resume: Resume::default(),
            deploy_id: String::new(),
        })
    }

    /// The profile's `rollback_target` command for one host, rendered.
    pub fn rollback_target(
        profile: &Profile,
        env: &Environment,
        host: &Host,
        release: &str,
        secrets: &Secrets,
    ) -> Option<Result<Sensitive, PlanError>> {
        let source = profile.rollback_target.as_ref()?;
        let vars = variables(profile, env, host, release, 0, secrets);
        let exports = secret_exports(secrets);
        Some(template::render(source, &vars).map(|s| Sensitive(exports + &s)).map_err(|message| PlanError::Render {
            what: "rollback_target".into(),
            host: host.name.clone(),
            message,
        }))
    }

    pub fn host_count(&self) -> usize {
        self.waves.iter().map(|w| w.hosts.len()).sum()
    }

    /// A human-readable rendering for `wavedeck plan`.
    /// Some step renders a template (so `plan --diff` has something to show).
    pub fn has_templates(&self) -> bool {
        self.waves
            .iter()
            .flat_map(|w| &w.hosts)
            .flat_map(|h| &h.steps)
            .any(|s| matches!(s.action, PlannedAction::Template { .. }))
    }

    /// What the deploy judges across hosts beyond each host's own checks, when the profile
    /// asks for more than the defaults: "new vs old during each soak: p95 ≤ 2x old, errors ≤
    /// old + 5 points".
    pub fn analysis_text(&self) -> Option<String> {
        let a = &self.analysis;
        let mut parts = Vec::new();
        if let Some(c) = &a.compare {
            let mut limits = Vec::new();
            if let Some(ratio) = c.max_p95_ratio {
                limits.push(format!("p95 ≤ {ratio}x old"));
            }
            if let Some(points) = c.max_error_rate_increase {
                limits.push(format!("errors ≤ old + {points} points"));
            }
            if limits.is_empty() {
                parts.push("new vs old compared (no limits)".to_string());
            } else {
                parts.push(format!("new vs old during each soak: {}", limits.join(", ")));
            }
        }
        if a.slow_step == crate::profile::SlowStep::Fail {
            parts.push(format!(
                "a step over {}x its wave's median (and {}) fails",
                a.slow_factor,
                humantime::format_duration(a.slow_min)
            ));
        }
        (!parts.is_empty()).then(|| parts.join(" · "))
    }

    pub fn describe(&self) -> String {
        let mut out = String::new();
        let p = &self.policy;
        let _ = writeln!(
            out,
            "Plan for {} {} → {} ({} hosts, {} waves){}",
            self.service,
            self.env,
            self.release,
            self.host_count(),
            self.waves.len(),
            if self.protected { "  [PROTECTED]" } else { "" }
        );
        let _ = writeln!(
            out,
            "canary {} · batch {} · parallel {} · max failures per wave {} then {} · pause between waves {}",
            p.canary,
            p.batch,
            p.parallel,
            p.max_failures,
            match p.on_failure {
                crate::profile::FailureAction::Pause => "pause",
                crate::profile::FailureAction::Abort => "abort",
                crate::profile::FailureAction::Rollback => "roll back",
            },
            humantime::format_duration(p.pause_between_waves)
        );
        if let Some(analysis) = self.analysis_text() {
            let _ = writeln!(out, "analysis: {analysis}");
        }
        for wave in &self.waves {
            let names: Vec<&str> = wave.hosts.iter().map(|h| h.host.name.as_str()).collect();
            let _ = writeln!(
                out,
                "\nwave {} ({} host{}, tolerates {} failure{}): {}",
                wave.number,
                wave.hosts.len(),
                if wave.hosts.len() == 1 { "" } else { "s" },
                wave.max_failures,
                if wave.max_failures == 1 { "" } else { "s" },
                names.join(", ")
            );
        }
        // Hosts from an inventory: where each was found, and how it is reached.
        let listed: Vec<&crate::profile::Host> =
            self.waves.iter().flat_map(|w| w.hosts.iter().map(|h| &h.host)).filter(|h| h.from.is_some()).collect();
        if !listed.is_empty() {
            let _ = writeln!(out, "\nhosts from the inventory:");
            let width = listed.iter().map(|h| h.name.len()).max().unwrap_or(0);
            for host in listed {
                let mut how = Vec::new();
                if host.address != host.name {
                    how.push(format!("address {}", host.address));
                }
                if let Some(port) = host.port {
                    how.push(format!("port {port}"));
                }
                if let Some(user) = &host.user {
                    how.push(format!("user {user}"));
                }
                let from = host.from.as_deref().unwrap_or_default();
                let line = format!("  {:<width$}  {from}  {}", host.name, how.join(", "));
                let _ = writeln!(out, "{}", line.trim_end());
            }
        }
        if let Some(once) = &self.once {
            let names: Vec<&str> = once.steps.iter().map(|s| s.name.as_str()).collect();
            let _ = writeln!(
                out,
                "\nbefore wave 1, once, on {}: {} (a failure stops the deploy before any host is touched)",
                once.host.name,
                names.join(", ")
            );
        }
        if let Some(first) = self.waves.first().and_then(|w| w.hosts.first()) {
            let _ = writeln!(out, "\nsteps (as for {}):", first.host.name);
            for (i, step) in first.steps.iter().enumerate() {
                let kind = if step.kind == StepKind::Health { " [health]" } else { "" };
                let _ = writeln!(
                    out,
                    "  {}. {}{kind} (timeout {}, retries {})\n       {}",
                    i + 1,
                    step.name,
                    humantime::format_duration(step.timeout),
                    step.retries,
                    step.shown.replace('\n', "\n       ")
                );
            }
        }
        out
    }
}

/// Sizes of the waves: the canary first, then batches over the rest. A percentage batch is of
/// the whole environment, rounded up, so "10%" of 15 hosts is 2 and never 0.
pub fn wave_sizes(hosts: usize, policy: &RolloutPolicy) -> Vec<usize> {
    let mut sizes = Vec::new();
    let canary = policy.canary.min(hosts);
    if canary > 0 {
        sizes.push(canary);
    }
    let batch = match policy.batch {
        Amount::Count(n) => n.max(1),
        Amount::Percent(p) => (hosts * p as usize).div_ceil(100).max(1),
    };
    let mut left = hosts - canary;
    while left > 0 {
        let size = batch.min(left);
        sizes.push(size);
        left -= size;
    }
    sizes
}

/// Failures tolerated in a wave of `size` hosts. A percentage rounds down, so "10%" of a wave
/// of 5 tolerates none: erring towards stopping.
pub fn failure_limit(size: usize, max: Amount) -> usize {
    match max {
        Amount::Count(n) => n,
        Amount::Percent(p) => size * p as usize / 100,
    }
}

/// The lines that give a step every secret as `WAVEDECK_SECRET_<NAME>`. They lead the script
/// that goes to the host on stdin, so the values travel inside the connection and never sit in
/// a process's arguments.
fn secret_exports(secrets: &Secrets) -> String {
    secrets.env_vars().map(|(var, value)| format!("export {var}={}\n", crate::shell::quote(value))).collect()
}

fn variables(
    profile: &Profile,
    env: &Environment,
    host: &Host,
    release: &str,
    wave: usize,
    secrets: &Secrets,
) -> BTreeMap<String, String> {
    let mut vars = profile.vars.clone();
    vars.extend(env.vars.clone());
    vars.extend(host.vars.clone());
    vars.extend(secrets.values().map(|(k, v)| (k.clone(), v.clone())));
    vars.insert("service".into(), profile.service.clone());
    vars.insert("env".into(), env.name.clone());
    vars.insert("host".into(), host.name.clone());
    vars.insert("address".into(), host.address.clone());
    vars.insert("release".into(), release.to_string());
    vars.insert("wave".into(), wave.to_string());
    vars
}

/// A host's pipeline: every step that is not run-once, with health checks after the steps they
/// follow.
fn host_steps(
    profile: &Profile,
    host: &Host,
    real: &BTreeMap<String, String>,
    shown: &BTreeMap<String, String>,
    exports: &str,
) -> Result<Vec<PlannedStep>, PlanError> {
    let steps = profile.steps.iter().filter(|s| !s.once);
    planned_steps(profile, host, real, shown, exports, steps, Checks::AfterTheirSteps)
}

/// Where health checks go in a pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Checks {
    /// After the step each names (`after`), the rest at the end: a deploy.
    AfterTheirSteps,
    /// All at the end: a rollback, whose steps are not the ones the checks name.
    AllAtEnd,
    /// None: run-once steps.
    None,
}

fn planned_steps<'p>(
    profile: &'p Profile,
    host: &Host,
    real: &BTreeMap<String, String>,
    shown: &BTreeMap<String, String>,
    exports: &str,
    selected: impl Iterator<Item = &'p crate::profile::Step>,
    checks: Checks,
) -> Result<Vec<PlannedStep>, PlanError> {
    let render = |what: &str, source: &str| -> Result<(Sensitive, String), PlanError> {
        let fail = |message| PlanError::Render { what: what.to_string(), host: host.name.clone(), message };
        let script = format!("{exports}{}", template::render(source, real).map_err(fail)?);
        Ok((Sensitive(script), template::render(source, shown).map_err(fail)?))
    };
    let health_after = |after: Option<&str>| -> Result<Vec<PlannedStep>, PlanError> {
        let mut out = Vec::new();
        let placed_here = |c: &&crate::profile::HealthCheck| match checks {
            Checks::AfterTheirSteps => c.after.as_deref() == after,
            Checks::AllAtEnd => after.is_none(),
            Checks::None => false,
        };
        for check in profile.health.iter().filter(placed_here) {
            let what = format!("health check `{}`", check.name);
            let (action, shown) = match &check.probe {
                HealthProbe::Command(run) => {
                    let (command, shown) = render(&what, run)?;
                    (PlannedAction::Run(command), shown)
                }
                HealthProbe::Http { url, expect_status, body_contains, max_latency } => {
                    let (_, url) = render(&what, url)?;
                    let body_contains = body_contains.as_ref().map(|b| render(&what, b).map(|r| r.1)).transpose()?;
                    let shown = format!("GET {url} expecting {expect_status}");
                    let probe =
                        Probe::Http { url, expect_status: *expect_status, body_contains, max_latency: *max_latency };
                    (PlannedAction::Probe(probe), shown)
                }
                HealthProbe::Tcp { address } => {
                    let (_, address) = render(&what, address)?;
                    (PlannedAction::Probe(Probe::Tcp { address: address.clone() }), format!("tcp connect {address}"))
                }
            };
            out.push(PlannedStep {
                name: check.name.clone(),
                kind: StepKind::Health,
                action,
                shown,
                timeout: check.timeout,
                retries: check.retries,
                retry_delay: check.interval,
                monitor: Some(Thresholds {
                    healthy_after: check.healthy_after,
                    unhealthy_after: check.unhealthy_after,
                }),
                skip_if: None,
            });
        }
        Ok(out)
    };
    let mut steps = Vec::new();
    for step in selected {
        let what = format!("step `{}`", step.name);
        let (action, shown) = match &step.action {
            StepAction::Run(run) => {
                let (command, shown) = render(&what, run)?;
                (PlannedAction::Run(command), shown)
            }
            StepAction::Upload { from, to } => {
                // Paths are not secret; render with the masked values so none can leak into them.
                let (_, from) = render(&what, from)?;
                let (_, to) = render(&what, to)?;
                let local = profile_relative(profile.path.parent().unwrap_or(Path::new(".")), &from);
                let shown = format!("upload {} -> {to}", local.display());
                (PlannedAction::Upload { from: local, to }, shown)
            }
            StepAction::Template { from, to, mode, source } => {
                let fail = |message| PlanError::Render { what: what.clone(), host: host.name.clone(), message };
                let content = Sensitive(template::render_file(source, real).map_err(fail)?);
                let masked = template::render_file(source, shown).map_err(fail)?;
                let (_, to) = render(&what, to)?;
                let mode_shown = mode.map(|m| format!(" (mode {m:04o})")).unwrap_or_default();
                let shown = format!("template {from} -> {to}{mode_shown}");
                (PlannedAction::Template { content, shown: masked, to, mode: *mode }, shown)
            }
        };
        steps.push(PlannedStep {
            name: step.name.clone(),
            kind: StepKind::Command,
            action,
            shown,
            timeout: step.timeout,
            retries: step.retries,
            retry_delay: step.retry_delay,
            monitor: None,
            skip_if: step.skip_if.as_ref().map(|s| render(&what, s).map(|r| r.0)).transpose()?,
        });
        steps.extend(health_after(Some(&step.name))?);
    }
    steps.extend(health_after(None)?);
    Ok(steps)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::FailureAction;

    fn policy(canary: usize, batch: Amount) -> RolloutPolicy {
        RolloutPolicy {
            canary,
            batch,
            max_failures: Amount::Count(0),
            on_failure: FailureAction::Pause,
            pause_between_waves: Duration::ZERO,
            parallel: 10,
            soak: Duration::ZERO,
            gate: crate::profile::Promotion::Auto,
            on_detach: crate::profile::DetachAction::Pause,
            detached_timeout: crate::profile::DEFAULT_DETACHED_TIMEOUT,
        }
    }

    #[test]
    fn canary_then_counted_batches() {
        assert_eq!(wave_sizes(10, &policy(1, Amount::Count(4))), [1, 4, 4, 1]);
    }

    #[test]
    fn percentages_are_of_the_whole_fleet_and_round_up() {
        assert_eq!(wave_sizes(15, &policy(1, Amount::Percent(10))), [1, 2, 2, 2, 2, 2, 2, 2]);
        assert_eq!(wave_sizes(6, &policy(0, Amount::Percent(50))), [3, 3]);
        assert_eq!(wave_sizes(3, &policy(0, Amount::Percent(1))), [1, 1, 1]);
    }

    #[test]
    fn tiny_fleets() {
        assert_eq!(wave_sizes(1, &policy(1, Amount::Percent(25))), [1]);
        assert_eq!(wave_sizes(2, &policy(5, Amount::Count(3))), [2]);
        assert!(wave_sizes(0, &policy(1, Amount::Count(3))).is_empty());
        assert_eq!(wave_sizes(3, &policy(0, Amount::Percent(100))), [3]);
    }

    #[test]
    fn failure_limits_round_down() {
        assert_eq!(failure_limit(5, Amount::Percent(10)), 0);
        assert_eq!(failure_limit(10, Amount::Percent(25)), 2);
        assert_eq!(failure_limit(3, Amount::Count(1)), 1);
    }

    const PROFILE: &str = r#"
[service]
name = "web"
[vars]
root = "/srv/web"
[secrets]
token = { env = "T" }
[plan]
canary = 1
batch = 2
[[environments]]
name = "dev"
hosts = [{ name = "a" }, { name = "b" }, { name = "c" }, { name = "d" }]
[[steps]]
name = "fetch"
run = "curl -H 'X: {{ token }}' {{ root }}/{{ release }} # {{ host }} w{{ wave }}"
[[steps]]
name = "restart"
run = "restart"
[[health]]
name = "up"
run = "check {{ host }}"
after = "fetch"
[[health]]
name = "final"
run = "true"
"#;

    #[test]
    fn plan_renders_steps_and_masks_secrets_in_what_is_shown() {
        let profile = Profile::parse(Path::new("p.toml"), PROFILE).unwrap();
        let secrets = Secrets::from_lookup(&profile, |_| Some("s3cret".into())).unwrap();
        let plan = Plan::build(&profile, "dev", "v2", &secrets).unwrap();
        let sizes: Vec<usize> = plan.waves.iter().map(|w| w.hosts.len()).collect();
        assert_eq!(sizes, [1, 2, 1]);
        let b = &plan.waves[1].hosts[0];
        assert_eq!(b.host.name, "b");
        let names: Vec<&str> = b.steps.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["fetch", "up", "restart", "final"]);
        let PlannedAction::Run(command) = &b.steps[0].action else { panic!("a run step") };
        assert_eq!(command.0, "export WAVEDECK_SECRET_TOKEN=s3cret\ncurl -H 'X: s3cret' /srv/web/v2 # b w2");
        assert_eq!(b.steps[0].shown, "curl -H 'X: ******' /srv/web/v2 # b w2");
        assert!(!plan.describe().contains("s3cret"));
        assert!(!format!("{plan:?}").contains("s3cret"));
    }

    #[test]
    fn run_once_steps_get_no_health_checks_and_hosts_no_run_once_steps() {
        let src = PROFILE.replace("name = \"restart\"", "name = \"restart\"\nonce = true");
        let profile = Profile::parse(Path::new("p.toml"), &src).unwrap();
        let plan = Plan::build(&profile, "dev", "v2", &Secrets::masked(&profile)).unwrap();
        let once: Vec<&str> = plan.once.as_ref().unwrap().steps.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(once, ["restart"]);
        let host: Vec<&str> = plan.waves[0].hosts[0].steps.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(host, ["fetch", "up", "final"]);
    }

    #[test]
    fn plan_is_deterministic_and_rejects_bad_input() {
        let profile = Profile::parse(Path::new("p.toml"), PROFILE).unwrap();
        let masked = Secrets::masked(&profile);
        let a = Plan::build(&profile, "dev", "v2", &masked).unwrap().describe();
        let b = Plan::build(&profile, "dev", "v2", &masked).unwrap().describe();
        assert_eq!(a, b);
        assert!(matches!(Plan::build(&profile, "prod", "v2", &masked), Err(PlanError::UnknownEnvironment { .. })));
        assert!(matches!(Plan::build(&profile, "dev", "v2; rm -rf /", &masked), Err(PlanError::BadRelease(_))));
        let said = |release: &str| Plan::build(&profile, "dev", release, &masked).err().map(|e| e.to_string()).unwrap();
        assert!(
            said("2.4.1-café").contains("(`é` is not an ASCII letter): use ASCII letters"),
            "{}",
            said("2.4.1-café")
        );
        assert!(said("v2; rm").contains("(`;` is not allowed)"));
        assert!(said("-rc1").contains("(it starts with `-`)"));
        assert!(said("2 4").contains("(it holds a space)"));
    }
}
