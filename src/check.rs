//! Preflight: `wavedeck check` connects to every host of an environment, in parallel, and
//! reports whether each can be deployed to — reachable, host key verified, authenticated —
//! and the free space where steps run. It changes nothing on the hosts.

use std::fmt::Write as _;
use std::sync::Arc;

use tokio::sync::Semaphore;

use crate::profile::Environment;
use crate::transport::{NoObserver, Target, Transport};

/// Below this much free space a host is flagged (but still counts as reachable).
pub const LOW_DISK: u64 = 1 << 30;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostCheck {
    pub host: String,
    pub address: String,
    /// `ok`, or the kind of failure (`unreachable`, `auth_failed`, `host_key_unknown`,
    /// `host_key_changed`, `config`).
    pub status: String,
    pub free_bytes: Option<u64>,
    pub detail: String,
}

impl HostCheck {
    pub fn ok(&self) -> bool {
        self.status == "ok"
    }
}

/// Checks every host of `env` through `transport`.
pub async fn check(env: &Environment, transport: Arc<dyn Transport>) -> Vec<HostCheck> {
    let slots = Arc::new(Semaphore::new(env.policy.parallel.max(1)));
    let mut tasks = Vec::new();
    for host in &env.hosts {
        let (transport, slots) = (transport.clone(), slots.clone());
        let target = Target { env: env.name.clone(), host: host.clone() };
        tasks.push(tokio::spawn(async move {
            let _slot = slots.acquire_owned().await;
            let address = target.host.address.clone();
            match transport.open(&target, &NoObserver).await {
                Ok(session) => {
                    let (free_bytes, detail) = match session.free_space().await {
                        Ok(bytes) if bytes < LOW_DISK => (Some(bytes), "LOW DISK SPACE".to_string()),
                        Ok(bytes) => (Some(bytes), String::new()),
                        Err(e) => (None, format!("connected, but cannot read free space: {e}")),
                    };
                    HostCheck { host: target.host.name, address, status: "ok".into(), free_bytes, detail }
                }
                Err(e) => HostCheck {
                    host: target.host.name,
                    address,
                    status: e.kind().to_string(),
                    free_bytes: None,
                    detail: e.to_string(),
                },
            }
        }));
    }
    let mut results = Vec::new();
    for (task, host) in tasks.into_iter().zip(&env.hosts) {
        results.push(task.await.unwrap_or_else(|e| HostCheck {
            host: host.name.clone(),
            address: host.address.clone(),
            status: "error".into(),
            free_bytes: None,
            detail: format!("internal error: {e}"),
        }));
    }
    results
}

/// The report printed by `wavedeck check`.
pub fn report(env: &str, results: &[HostCheck]) -> String {
    let width = results.iter().map(|r| r.host.len()).max().unwrap_or(4).max(4);
    let addr = results.iter().map(|r| r.address.len()).max().unwrap_or(7).max(7);
    let mut out = format!("{:<width$}  {:<addr$}  {:<16}  {:>9}  DETAIL\n", "HOST", "ADDRESS", "STATUS", "FREE");
    for r in results {
        let free = r.free_bytes.map_or_else(|| "-".to_string(), human_bytes);
        // The detail can quote the host (what its `df` printed): shown, never obeyed.
        let detail = crate::text::visible(&r.detail);
        let _ = writeln!(out, "{:<width$}  {:<addr$}  {:<16}  {free:>9}  {detail}", r.host, r.address, r.status);
    }
    let bad = results.iter().filter(|r| !r.ok()).count();
    let _ = write!(
        out,
        "\n{env}: {} of {} hosts ready{}",
        results.len() - bad,
        results.len(),
        if bad > 0 { format!(", {bad} NOT ready") } else { String::new() }
    );
    out
}

fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_lists_each_host_and_the_verdict() {
        let results = vec![
            HostCheck {
                host: "a".into(),
                address: "10.0.0.1".into(),
                status: "ok".into(),
                free_bytes: Some(5 << 30),
                detail: String::new(),
            },
            HostCheck {
                host: "b".into(),
                address: "10.0.0.2".into(),
                status: "auth_failed".into(),
                free_bytes: None,
                detail: "refused \u{1b}]0;pwned\u{7}".into(),
            },
        ];
        let text = report("prod", &results);
        assert!(text.contains("a     10.0.0.1  ok                  5.0 GiB"), "{text}");
        assert!(text.contains("auth_failed") && text.contains(r"refused \x1b]0;pwned\x07"), "{text}");
        assert!(!text.contains('\u{1b}'), "{text}");
        assert!(text.ends_with("prod: 1 of 2 hosts ready, 1 NOT ready"), "{text}");
    }
}
