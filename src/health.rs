//! Health probes that run from the console machine (HTTP and TCP), and the bookkeeping that
//! turns a stream of samples into healthy/unhealthy states.
//!
//! Command checks run on the host through its transport like any step; HTTP and TCP checks are
//! made from here, as a load balancer or an operator's browser would.

use std::io::Read;
use std::time::{Duration, Instant};

use crate::event::StepResult;

/// A rendered HTTP or TCP check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    Http { url: String, expect_status: u16, body_contains: Option<String>, max_latency: Option<Duration> },
    Tcp { address: String },
}

/// Makes HTTP and TCP checks. The engine is given one, so tests can answer checks on a paused
/// clock without a network; [`NetProber`] is the real one.
pub trait Prober: Send + Sync {
    fn probe<'a>(&'a self, probe: &'a Probe, timeout: Duration) -> crate::sys::BoxFuture<'a, StepResult>;
}

/// Checks over the network from this machine, as a load balancer would.
pub struct NetProber;

impl Prober for NetProber {
    fn probe<'a>(&'a self, target: &'a Probe, timeout: Duration) -> crate::sys::BoxFuture<'a, StepResult> {
        Box::pin(probe(target, timeout))
    }
}

/// Most of a response body read for `body_contains`.
const MAX_BODY: u64 = 64 * 1024;

/// Runs a probe once; a failure says why in `StepResult::Error`.
pub async fn probe(probe: &Probe, timeout: Duration) -> StepResult {
    match probe {
        Probe::Tcp { address } => {
            match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(address.as_str())).await {
                Ok(Ok(_)) => StepResult::Exited { code: 0 },
                Ok(Err(e)) => StepResult::Error { message: format!("tcp {address}: {e}") },
                Err(_) => StepResult::TimedOut,
            }
        }
        Probe::Http { url, expect_status, body_contains, max_latency } => {
            let (url, expect, needle, max_latency) = (url.clone(), *expect_status, body_contains.clone(), *max_latency);
            let outcome =
                tokio::task::spawn_blocking(move || http_once(&url, expect, needle.as_deref(), max_latency, timeout));
            match outcome.await {
                Ok(Ok(())) => StepResult::Exited { code: 0 },
                Ok(Err(message)) => StepResult::Error { message },
                Err(e) => StepResult::Error { message: format!("probe failed: {e}") },
            }
        }
    }
}

fn http_once(
    url: &str,
    expect: u16,
    needle: Option<&str>,
    max_latency: Option<Duration>,
    timeout: Duration,
) -> Result<(), String> {
    // Redirects are not followed: a 302 to another host (or from https to http) that answers 200
    // says nothing about this host's health, so the 302 itself is the answer.
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .max_redirects(0)
        .build()
        .into();
    let began = Instant::now();
    let mut response = agent.get(url).call().map_err(|e| format!("GET {url}: {e}"))?;
    let latency = began.elapsed();
    let status = response.status().as_u16();
    if status != expect {
        return Err(format!("GET {url}: status {status}, expected {expect}"));
    }
    if let Some(needle) = needle {
        let mut body = String::new();
        let _ = response.body_mut().as_reader().take(MAX_BODY).read_to_string(&mut body);
        if !body.contains(needle) {
            return Err(format!("GET {url}: body does not contain {needle:?}"));
        }
    }
    if let Some(max) = max_latency
        && latency > max
    {
        return Err(format!("GET {url}: took {} ms, more than {} ms", latency.as_millis(), max.as_millis()));
    }
    Ok(())
}

/// Consecutive-sample thresholds: a host turns unhealthy after `unhealthy_after` failures in a
/// row and healthy again after `healthy_after` successes in a row.
#[derive(Debug, Clone)]
pub struct Streak {
    healthy_after: u32,
    unhealthy_after: u32,
    successes: u32,
    failures: u32,
    /// The current verdict; starts healthy (the host just passed its pipeline's checks).
    pub healthy: bool,
}

impl Streak {
    pub fn new(healthy_after: u32, unhealthy_after: u32) -> Streak {
        Streak {
            healthy_after: healthy_after.max(1),
            unhealthy_after: unhealthy_after.max(1),
            successes: 0,
            failures: 0,
            healthy: true,
        }
    }

    /// Records a sample; returns the new verdict when it changed.
    pub fn sample(&mut self, ok: bool) -> Option<bool> {
        if ok {
            self.successes += 1;
            self.failures = 0;
        } else {
            self.failures += 1;
            self.successes = 0;
        }
        let verdict =
            if self.healthy { self.failures < self.unhealthy_after } else { self.successes >= self.healthy_after };
        (verdict != self.healthy).then(|| {
            self.healthy = verdict;
            verdict
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_need_streaks_both_ways() {
        let mut s = Streak::new(2, 3);
        assert_eq!(s.sample(false), None);
        assert_eq!(s.sample(false), None);
        assert_eq!(s.sample(true), None, "a success resets the failure streak");
        assert_eq!(s.sample(false), None);
        assert_eq!(s.sample(false), None);
        assert_eq!(s.sample(false), Some(false));
        assert_eq!(s.sample(true), None);
        assert_eq!(s.sample(true), Some(true));
    }

    #[tokio::test]
    async fn tcp_probe_connects_or_says_why() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        assert!(probe(&Probe::Tcp { address }, Duration::from_secs(5)).await.succeeded());
        drop(listener);
        // Port 1, not a just-freed ephemeral port: connecting to a free ephemeral port on loopback
        // can occasionally connect to itself (TCP simultaneous open) and succeed.
        let closed = "127.0.0.1:1".to_string();
        let result = probe(&Probe::Tcp { address: closed.clone() }, Duration::from_secs(5)).await;
        assert!(matches!(&result, StepResult::Error { message } if message.contains(&closed)), "{result:?}");
    }
}
