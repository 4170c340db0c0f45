//! The profile file as written: serde's view of the TOML, with spans for every value a
//! message may point at, and how an environment's `plan`/`ssh` tables override the top ones.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProfile {
    pub(super) service: RawService,
    #[serde(default)]
    pub(super) vars: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    pub(super) secrets: BTreeMap<String, Spanned<RawSecret>>,
    #[serde(default)]
    pub(super) plan: RawPlan,
    #[serde(default)]
    pub(super) ssh: RawSsh,
    #[serde(default)]
    pub(super) environments: Vec<Spanned<RawEnvironment>>,
    #[serde(default)]
    pub(super) steps: Vec<Spanned<RawStep>>,
    #[serde(default)]
    pub(super) health: Vec<Spanned<RawHealth>>,
    #[serde(default)]
    pub(super) rollback: Vec<Spanned<RawStep>>,
    pub(super) rollback_target: Option<Spanned<String>>,
    pub(super) releases: Option<RawReleases>,
    pub(super) analysis: Option<Spanned<RawAnalysis>>,
    #[serde(default)]
    pub(super) notify: Vec<Spanned<RawNotify>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNotify {
    pub(super) name: Option<Spanned<String>>,
    pub(super) kind: Option<Spanned<String>>,
    pub(super) url: Spanned<String>,
    pub(super) on: Option<Vec<Spanned<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAnalysis {
    pub(super) outlier_percent: Option<Spanned<i64>>,
    pub(super) slow_step: Option<Spanned<String>>,
    pub(super) slow_factor: Option<Spanned<f64>>,
    pub(super) slow_min: Option<Spanned<String>>,
    pub(super) compare: Option<bool>,
    pub(super) window: Option<Spanned<String>>,
    pub(super) interval: Option<Spanned<String>>,
    pub(super) max_p95_ratio: Option<Spanned<f64>>,
    pub(super) max_error_rate_increase: Option<Spanned<f64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawService {
    pub(super) name: Spanned<String>,
    pub(super) description: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSecret {
    pub(super) env: String,
}

#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPlan {
    pub(super) canary: Option<Spanned<i64>>,
    pub(super) batch: Option<Spanned<toml::Value>>,
    pub(super) max_failures: Option<Spanned<toml::Value>>,
    pub(super) on_failure: Option<Spanned<String>>,
    pub(super) pause_between_waves: Option<Spanned<String>>,
    pub(super) parallel: Option<Spanned<i64>>,
    pub(super) soak: Option<Spanned<String>>,
    pub(super) gate: Option<Spanned<String>>,
    pub(super) on_detach: Option<Spanned<String>>,
    pub(super) detached_timeout: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEnvironment {
    pub(super) name: Spanned<String>,
    #[serde(default)]
    pub(super) protected: bool,
    pub(super) transport: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) vars: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    pub(super) plan: RawPlan,
    #[serde(default)]
    pub(super) ssh: RawSsh,
    pub(super) once_host: Option<Spanned<String>>,
    pub(super) lock_path: Option<Spanned<String>>,
    pub(super) local_http: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) hosts: Vec<Spanned<RawHost>>,
    pub(super) hosts_from: Option<Spanned<RawHostsFrom>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHostsFrom {
    pub(super) ansible: Spanned<String>,
    pub(super) group: Option<String>,
}

#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSsh {
    pub(super) user: Option<String>,
    pub(super) port: Option<Spanned<i64>>,
    pub(super) identity_files: Option<Vec<String>>,
    pub(super) known_hosts: Option<Vec<String>>,
    pub(super) host_key_policy: Option<Spanned<String>>,
    pub(super) config: Option<String>,
    pub(super) connect_timeout: Option<Spanned<String>>,
    pub(super) connect_attempts: Option<Spanned<i64>>,
    pub(super) keepalive_interval: Option<Spanned<String>>,
    pub(super) helper_timeout: Option<Spanned<String>>,
    pub(super) deploy_path: Option<String>,
    pub(super) keep_step_output: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHost {
    pub(super) name: Spanned<String>,
    pub(super) address: Option<String>,
    pub(super) user: Option<String>,
    pub(super) port: Option<Spanned<i64>>,
    #[serde(default)]
    pub(super) labels: Vec<String>,
    #[serde(default)]
    pub(super) vars: BTreeMap<String, Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStep {
    pub(super) name: Spanned<String>,
    pub(super) run: Option<Spanned<String>>,
    pub(super) upload: Option<Spanned<RawUpload>>,
    pub(super) template: Option<Spanned<RawTemplate>>,
    pub(super) builtin: Option<Spanned<String>>,
    pub(super) skip_if: Option<Spanned<String>>,
    pub(super) timeout: Option<Spanned<String>>,
    pub(super) retries: Option<u32>,
    pub(super) retry_delay: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) once: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawReleases {
    pub(super) dir: Option<String>,
    pub(super) keep: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTemplate {
    pub(super) from: Spanned<String>,
    pub(super) to: Spanned<String>,
    pub(super) mode: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpload {
    pub(super) from: Spanned<String>,
    pub(super) to: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHealth {
    pub(super) name: Spanned<String>,
    pub(super) kind: Option<Spanned<String>>,
    pub(super) run: Option<Spanned<String>>,
    pub(super) url: Option<Spanned<String>>,
    pub(super) expect_status: Option<u16>,
    pub(super) body_contains: Option<Spanned<String>>,
    pub(super) max_latency: Option<Spanned<String>>,
    pub(super) address: Option<Spanned<String>>,
    pub(super) healthy_after: Option<u32>,
    pub(super) unhealthy_after: Option<u32>,
    pub(super) after: Option<Spanned<String>>,
    pub(super) timeout: Option<Spanned<String>>,
    pub(super) retries: Option<u32>,
    pub(super) interval: Option<Spanned<String>>,
}

pub(super) fn merge_plan(base: &RawPlan, over: &RawPlan) -> RawPlan {
    RawPlan {
        canary: over.canary.clone().or_else(|| base.canary.clone()),
        batch: over.batch.clone().or_else(|| base.batch.clone()),
        max_failures: over.max_failures.clone().or_else(|| base.max_failures.clone()),
        on_failure: over.on_failure.clone().or_else(|| base.on_failure.clone()),
        pause_between_waves: over.pause_between_waves.clone().or_else(|| base.pause_between_waves.clone()),
        parallel: over.parallel.clone().or_else(|| base.parallel.clone()),
        soak: over.soak.clone().or_else(|| base.soak.clone()),
        gate: over.gate.clone().or_else(|| base.gate.clone()),
        on_detach: over.on_detach.clone().or_else(|| base.on_detach.clone()),
        detached_timeout: over.detached_timeout.clone().or_else(|| base.detached_timeout.clone()),
    }
}

pub(super) fn merge_ssh(base: &RawSsh, over: &RawSsh) -> RawSsh {
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
        keep_step_output: over.keep_step_output.or(base.keep_step_output),
        deploy_path: over.deploy_path.clone().or_else(|| base.deploy_path.clone()),
    }
}
