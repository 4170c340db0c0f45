//! Checking a profile as a tired human wrote it: every problem found in one pass, each with
//! its `file:line:col`, and warnings for what is allowed but probably not meant.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use crate::diag::Diagnostic;
use crate::template;

use super::raw::*;
use super::*;

pub(super) struct Validator<'a> {
    pub(super) path: &'a Path,
    pub(super) source: &'a str,
    pub(super) problems: Vec<Diagnostic>,
    pub(super) warnings: Vec<Diagnostic>,
    /// Every non-zero soak and where it was written, checked against the health checks at the end.
    pub(super) soaks: Vec<(std::ops::Range<usize>, Duration)>,
}

/// A template and where it stands, kept until every environment's variables are known.
pub(super) struct TemplateUse<'r> {
    pub(super) what: String,
    pub(super) text: &'r Spanned<String>,
    /// Why this template may not read a secret, if it may not: its result is shown and logged
    /// (an upload path, an HTTP or TCP check's target, made from this machine).
    pub(super) no_secrets: Option<&'static str>,
}

/// A lock directory wavedeck may create and later remove: a path of plain names, so that it
/// can never be `/`, a parent directory, or something other than the one directory it names.
pub(super) fn check_lock_path(path: &str) -> Result<(), String> {
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
    pub(super) fn problem<T>(&mut self, at: &Spanned<T>, message: impl Into<String>) {
        self.problems.push(Diagnostic::at(self.path, self.source, at.span(), message));
    }

    /// A soak that ends before a check could turn a host unhealthy watches nothing.
    pub(super) fn check_soaks(&mut self, health: &[HealthCheck]) {
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
    pub(super) fn duration_at_least(
        &mut self,
        raw: &Spanned<String>,
        min: Duration,
        what: &str,
        fallback: Duration,
    ) -> Duration {
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

    pub(super) fn profile(&mut self, raw: RawProfile) -> Profile {
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

        // Every template must only read names that exist for every host it will run on; a
        // template file's names are reported at its `from`.
        let files: Vec<(String, Spanned<String>)> = raw
            .steps
            .iter()
            .chain(raw.rollback.iter())
            .filter_map(|s| {
                let step = s.get_ref();
                let t = step.template.as_ref()?.get_ref();
                let path = profile_relative(self.path.parent().unwrap_or(Path::new(".")), t.from.get_ref());
                let text = std::fs::read_to_string(path).ok()?;
                let what = format!("template {} of step `{}`", t.from.get_ref(), step.name.get_ref());
                Some((what, Spanned::new(t.from.span(), text)))
            })
            .collect();
        let mut uses: Vec<TemplateUse> = Vec::new();
        for (what, text) in &files {
            uses.push(TemplateUse { what: what.clone(), text, no_secrets: None });
        }
        for (kind, list) in [("step", &raw.steps), ("rollback step", &raw.rollback)] {
            for s in list.iter() {
                let step = s.get_ref();
                let what = format!("{kind} `{}`", step.name.get_ref());
                const PATHS: Option<&str> = Some("upload paths are shown and logged as they are");
                let texts = [
                    (step.run.as_ref(), None),
                    (step.upload.as_ref().map(|u| &u.get_ref().from), PATHS),
                    (step.upload.as_ref().map(|u| &u.get_ref().to), PATHS),
                    (step.template.as_ref().map(|t| &t.get_ref().to), PATHS),
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

        let notify = self.notify(&raw.notify, &vars, &secrets);
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
            analysis: raw.analysis.as_ref().map_or_else(Analysis::default, |a| self.analysis(a)),
            notify,
            warnings: Vec::new(),
        }
    }

    pub(super) fn vars(&mut self, raw: &BTreeMap<String, Spanned<String>>, what: &str) -> BTreeMap<String, String> {
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

    pub(super) fn secrets(&mut self, raw: &BTreeMap<String, Spanned<RawSecret>>) -> BTreeMap<String, SecretRef> {
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

    pub(super) fn environment(
        &mut self,
        raw: &Spanned<RawEnvironment>,
        base: &RawPlan,
        base_ssh: &RawSsh,
    ) -> Environment {
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
                from: None,
            });
        }
        if let Some(source) = &env.hosts_from {
            if !env.hosts.is_empty() {
                self.problem(source, "give an environment `hosts` or `hosts_from`, not both");
            }
            for host in self.inventory_hosts(source, &name) {
                if !host_names.insert(host.name.clone()) {
                    self.problem(source, format!("host `{}` appears twice in environment `{name}`", host.name));
                }
                hosts.push(host);
            }
        } else if env.hosts.is_empty() {
            self.problem(&env.name, format!("environment `{name}` has no hosts"));
        }
        if let Some(once) = &env.once_host
            && !hosts.iter().any(|h: &Host| &h.name == once.get_ref())
        {
            self.problem(once, format!("once_host `{}` is not a host of environment `{name}`", once.get_ref()));
        }
        let once_host = env.once_host.as_ref().map(|h| h.get_ref().clone());
        if let Some(path) = &env.lock_path
            && let Err(why) = check_lock_path(path.get_ref())
        {
            self.problem(path, format!("lock_path {why}"));
        }
        let local_http = env.local_http.as_ref().and_then(|addr| {
            let parsed = addr.get_ref().parse::<std::net::SocketAddr>();
            match (parsed, transport) {
                (Ok(parsed), TransportKind::Local) if parsed.ip().is_loopback() => Some(parsed),
                (Ok(_), TransportKind::Local) => {
                    self.problem(addr, "local_http must be a loopback address like \"127.0.0.1:47390\"");
                    None
                }
                (Ok(_), TransportKind::Ssh) => {
                    self.problem(addr, "local_http is for the local transport; SSH hosts serve HTTP themselves");
                    None
                }
                (Err(_), _) => {
                    self.problem(addr, "local_http must be an address like \"127.0.0.1:47390\"");
                    None
                }
            }
        });
        Environment {
            name,
            protected: env.protected,
            local_http,
            transport,
            vars,
            hosts,
            policy,
            ssh,
            once_host,
            lock_path: env.lock_path.as_ref().map(|p| p.get_ref().clone()),
        }
    }

    pub(super) fn policy(&mut self, raw: &RawPlan) -> RolloutPolicy {
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
        let on_detach = match raw.on_detach.as_ref().map(|s| (s, s.get_ref().as_str())) {
            None | Some((_, "pause")) => DetachAction::Pause,
            Some((_, "continue")) => DetachAction::Continue,
            Some((_, "abort")) => DetachAction::Abort,
            Some((s, other)) => {
                self.problem(s, format!("unknown on_detach `{other}`: expected \"pause\", \"continue\" or \"abort\""));
                DetachAction::Pause
            }
        };
        let detached_timeout = raw.detached_timeout.as_ref().map_or(DEFAULT_DETACHED_TIMEOUT, |d| {
            self.duration_at_least(d, MIN_DETACHED_TIMEOUT, "detached_timeout", DEFAULT_DETACHED_TIMEOUT)
        });
        RolloutPolicy {
            canary,
            batch,
            max_failures,
            on_failure,
            pause_between_waves,
            parallel,
            soak,
            gate,
            on_detach,
            detached_timeout,
        }
    }

    pub(super) fn port(&mut self, raw: &Spanned<i64>) -> Option<u16> {
        match u16::try_from(*raw.get_ref()) {
            Ok(p) if p > 0 => Some(p),
            _ => {
                self.problem(raw, "port must be between 1 and 65535");
                None
            }
        }
    }

    pub(super) fn ssh(&mut self, raw: &RawSsh) -> SshSettings {
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
            keep_step_output: raw.keep_step_output.unwrap_or(false),
        }
    }

    pub(super) fn amount(&mut self, raw: &Spanned<toml::Value>, what: &str) -> Option<Amount> {
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

    /// An environment's hosts from an Ansible inventory; its problems point into the inventory.
    fn inventory_hosts(&mut self, source: &Spanned<RawHostsFrom>, env: &str) -> Vec<Host> {
        let from = source.get_ref();
        let shown = from.ansible.get_ref();
        let file = profile_relative(self.path.parent().unwrap_or(Path::new(".")), shown);
        let group = from.group.as_deref().unwrap_or("all");
        let found = match super::inventory::load(&file, shown, group) {
            Ok(found) => found,
            Err(problems) => {
                self.problems.extend(problems);
                return Vec::new();
            }
        };
        if found.is_empty() {
            self.problem(&from.ansible, format!("group `{group}` of {shown} has no hosts (environment `{env}`)"));
        }
        let mut ignored = BTreeSet::new();
        let mut hosts = Vec::new();
        for h in found {
            if !is_safe_name(&h.name) {
                self.problem(
                    &from.ansible,
                    format!("{}: host name `{}` must be letters, digits, `.`, `_` or `-`", h.from, h.name),
                );
                continue;
            }
            ignored.extend(h.ignored);
            hosts.push(Host {
                address: h.address.unwrap_or_else(|| h.name.clone()),
                user: h.user,
                port: h.port,
                name: h.name,
                labels: Vec::new(),
                vars: h.vars,
                from: Some(h.from),
            });
        }
        if !ignored.is_empty() {
            let names: Vec<String> = ignored.into_iter().collect();
            self.warnings.push(Diagnostic::at(
                self.path,
                self.source,
                source.span(),
                format!(
                    "the inventory's list and map variables cannot be template variables and are left out: {}",
                    names.join(", ")
                ),
            ));
        }
        hosts
    }

    pub(super) fn notify(
        &mut self,
        raw: &[Spanned<RawNotify>],
        vars: &BTreeMap<String, String>,
        secrets: &BTreeMap<String, SecretRef>,
    ) -> Vec<Notify> {
        let mut out: Vec<Notify> = Vec::new();
        for (i, entry) in raw.iter().enumerate() {
            let n = entry.get_ref();
            let kind = match n.kind.as_ref().map(|k| (k, k.get_ref().as_str())) {
                None | Some((_, "webhook")) => NotifyKind::Webhook,
                Some((_, "slack")) => NotifyKind::Slack,
                Some((k, other)) => {
                    self.problem(k, format!("notify kind must be \"webhook\" or \"slack\", not \"{other}\""));
                    NotifyKind::Webhook
                }
            };
            let url = n.url.get_ref();
            match template::variables(url) {
                Err(e) => self.problem(&n.url, format!("notify url: template error: {e}")),
                Ok(names) => {
                    for name in names {
                        let known = ["service", "env"].contains(&name.as_str())
                            || vars.contains_key(&name)
                            || secrets.contains_key(&name);
                        if !known {
                            self.problem(
                                &n.url,
                                format!(
                                    "notify url uses `{name}`: only [vars], secrets, service and env are known here"
                                ),
                            );
                        }
                    }
                }
            }
            let scheme_ok = url.starts_with("https://") || url.starts_with("http://") || url.starts_with("{{");
            if !scheme_ok {
                self.problem(&n.url, "notify url must start with https:// or http://");
            }
            let on = match &n.on {
                None => NotifyOn::ALL.to_vec(),
                Some(list) => list
                    .iter()
                    .filter_map(|word| {
                        let found = NotifyOn::ALL.iter().find(|o| o.name() == word.get_ref().as_str()).copied();
                        if found.is_none() {
                            let names: Vec<&str> = NotifyOn::ALL.iter().map(|o| o.name()).collect();
                            self.problem(word, format!("notify on: expected one of {}", names.join(", ")));
                        }
                        found
                    })
                    .collect(),
            };
            let name = match &n.name {
                Some(name) => name.get_ref().clone(),
                None => format!("{}-{}", if kind == NotifyKind::Slack { "slack" } else { "webhook" }, i + 1),
            };
            if let Some(taken) = n.name.as_ref().filter(|_| out.iter().any(|o| o.name == name)) {
                self.problem(taken, format!("notify `{name}` is defined twice"));
            }
            out.push(Notify { name, kind, url: url.clone(), on });
        }
        out
    }

    pub(super) fn analysis(&mut self, raw: &Spanned<RawAnalysis>) -> Analysis {
        let a = raw.get_ref();
        let mut out = Analysis::default();
        if let Some(p) = &a.outlier_percent {
            match u8::try_from(*p.get_ref()) {
                Ok(p) if (1..=100).contains(&p) => out.outlier_percent = p,
                _ => self.problem(p, "outlier_percent must be a whole percentage from 1 to 100"),
            }
        }
        if let Some(s) = &a.slow_step {
            out.slow_step = match s.get_ref().as_str() {
                "off" => SlowStep::Off,
                "flag" => SlowStep::Flag,
                "fail" => SlowStep::Fail,
                other => {
                    self.problem(s, format!("slow_step must be \"flag\", \"fail\" or \"off\", not \"{other}\""));
                    SlowStep::Flag
                }
            };
        }
        if let Some(f) = &a.slow_factor {
            if f.get_ref().is_finite() && *f.get_ref() >= 1.0 {
                out.slow_factor = *f.get_ref();
            } else {
                self.problem(f, "slow_factor must be a number of at least 1 (3.0: three times the median)");
            }
        }
        if let Some(d) = &a.slow_min {
            out.slow_min = self.duration_at_least(d, Duration::from_secs(1), "slow_min", DEFAULT_SLOW_MIN);
        }
        let ratio = a.max_p95_ratio.as_ref().and_then(|r| {
            let ok = r.get_ref().is_finite() && *r.get_ref() >= 1.0;
            if !ok {
                self.problem(r, "max_p95_ratio must be a number of at least 1 (1.5: new p95 up to 1.5 x old)");
            }
            ok.then_some(*r.get_ref())
        });
        let increase = a.max_error_rate_increase.as_ref().and_then(|r| {
            let ok = r.get_ref().is_finite() && (0.0..=100.0).contains(r.get_ref());
            if !ok {
                self.problem(r, "max_error_rate_increase must be percentage points from 0 to 100 (2: two points)");
            }
            ok.then_some(*r.get_ref())
        });
        let compare = a.compare.unwrap_or(ratio.is_some() || increase.is_some());
        if compare {
            let interval = a.interval.as_ref().map_or(DEFAULT_COMPARE_INTERVAL, |d| {
                self.duration_at_least(d, MIN_HEALTH_INTERVAL, "interval", DEFAULT_COMPARE_INTERVAL)
            });
            let window = a.window.as_ref().map_or(DEFAULT_COMPARE_WINDOW, |d| {
                self.duration_at_least(d, interval.max(Duration::from_secs(1)), "window", DEFAULT_COMPARE_WINDOW)
            });
            out.compare = Some(Compare { window, interval, max_p95_ratio: ratio, max_error_rate_increase: increase });
        } else if a.compare == Some(false) && (ratio.is_some() || increase.is_some()) {
            self.problem(raw, "compare = false leaves max_p95_ratio and max_error_rate_increase unused; drop one");
        }
        out
    }

    pub(super) fn duration(&mut self, raw: &Spanned<String>, fallback: Duration) -> Duration {
        match humantime::parse_duration(raw.get_ref()) {
            Ok(d) => d,
            Err(e) => {
                self.problem(raw, format!("expected a duration like \"30s\", \"500ms\" or \"2m\" ({e})"));
                fallback
            }
        }
    }

    pub(super) fn steps(
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
            let given = [step.run.is_some(), step.upload.is_some(), step.template.is_some(), step.builtin.is_some()]
                .iter()
                .filter(|g| **g)
                .count();
            if given > 1 {
                self.problem(
                    &step.name,
                    format!("{what} `{name}` has more than one of `run`, `upload`, `template` and `builtin`: use one"),
                );
            }
            let action = match (&step.run, &step.upload, &step.builtin) {
                _ if step.template.is_some() && step.run.is_none() && step.upload.is_none() => {
                    self.template_step(step.template.as_ref().map(Spanned::get_ref))
                }
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
                        format!(
                            "{what} `{name}` needs `run` (a command), `upload` (a file to copy), `template` \
                             (a file to render and copy) or `builtin`"
                        ),
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

    /// A `template = { from, to, mode }` step: its file read now, so a missing one is an error
    /// before anything runs, and its variables are checked like the profile's own templates.
    fn template_step(&mut self, raw: Option<&RawTemplate>) -> StepAction {
        let Some(raw) = raw else { return StepAction::Run(String::new()) };
        let file = profile_relative(self.path.parent().unwrap_or(Path::new(".")), raw.from.get_ref());
        let source = match std::fs::read_to_string(&file) {
            Ok(source) => source,
            Err(e) => {
                self.problem(&raw.from, format!("cannot read template {}: {e}", file.display()));
                String::new()
            }
        };
        let mode = raw.mode.as_ref().and_then(|m| {
            let parsed = u32::from_str_radix(m.get_ref().trim_start_matches("0o"), 8).ok().filter(|m| *m <= 0o7777);
            if parsed.is_none() {
                self.problem(m, "mode must be octal permission bits, like \"0640\"");
            }
            parsed
        });
        StepAction::Template { from: raw.from.get_ref().clone(), to: raw.to.get_ref().clone(), mode, source }
    }

    pub(super) fn health(&mut self, raw: &[Spanned<RawHealth>], steps: &[Step]) -> Vec<HealthCheck> {
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

    pub(super) fn check_templates(
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
pub(super) fn summarize(items: &[String]) -> String {
    const SHOWN: usize = 4;
    if items.len() <= SHOWN {
        items.join(", ")
    } else {
        format!("{} and {} more", items[..SHOWN].join(", "), items.len() - SHOWN)
    }
}

pub(super) fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}
