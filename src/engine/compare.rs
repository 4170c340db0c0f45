//! New against old while a deploy runs: every HTTP/TCP check is also made on a sample of the
//! hosts this deploy has not touched yet, so the hosts it finished can be judged against them
//! (see [`crate::insight::compare`]). A first round is taken before any host is touched: the
//! fleet's baseline. Once no host is left untouched, the last figures of the old ones stand in
//! for them.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::event::{Event, Figures};
use crate::health::Probe;
use crate::insight::compare::{Limits, MIN_SAMPLES, figures, verdict};
use crate::plan::{HostPlan, PlannedAction, StepKind};
use crate::profile::{Compare, FailureAction};

use super::*;

/// Hosts of each group probed per round, taken in turn: enough for a p95 within a window of
/// rounds, few enough that 2,000 hosts do not mean 2,000 requests a second.
pub(super) const PROBED_PER_GROUP: usize = 32;

/// The checks a host is compared by: (check name, probe, timeout).
type Checks = Vec<(String, Probe, Duration)>;

/// One host's answers to one check within the window: when, how long, whether well.
type Answers = VecDeque<(Instant, u64, bool)>;

/// The hosts' HTTP/TCP checks, or `None` when no host has one (nothing to compare by).
pub(super) fn comparable<'p>(hosts: impl Iterator<Item = &'p HostPlan>) -> Option<BTreeMap<String, Checks>> {
    let checks: BTreeMap<String, Checks> = hosts
        .map(|h| {
            let probes = h
                .steps
                .iter()
                .filter(|s| s.kind == StepKind::Health)
                .filter_map(|s| match &s.action {
                    PlannedAction::Probe(probe) => Some((s.name.clone(), probe.clone(), s.timeout)),
                    _ => None,
                })
                .collect::<Checks>();
            (h.host.name.clone(), probes)
        })
        .filter(|(_, probes)| !probes.is_empty())
        .collect();
    (!checks.is_empty()).then_some(checks)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    New,
    Old,
}

/// Compares until the deploy ends, judging each wave during its soak. `baseline_taken` is told once
/// the first round is in: the fleet as it was before the deploy touched it.
pub(super) async fn compare(
    shared: Arc<Shared>,
    settings: Compare,
    hosts: BTreeMap<String, Checks>,
    on_failure: FailureAction,
    baseline_taken: tokio::sync::oneshot::Sender<()>,
) {
    let mut baseline_taken = Some(baseline_taken);
    let limits =
        Limits { max_p95_ratio: settings.max_p95_ratio, max_error_rate_increase: settings.max_error_rate_increase };
    let check_names: Vec<String> = {
        let mut names: Vec<String> = hosts.values().flatten().map(|(name, _, _)| name.clone()).collect();
        names.sort();
        names.dedup();
        names
    };
    let mut samples: HashMap<(String, String), Answers> = HashMap::new();
    let mut sides: HashMap<String, Side> = HashMap::new();
    let mut baseline: HashMap<String, Figures> = HashMap::new();
    let mut judged: Option<usize> = None;
    let mut round = 0usize;
    let mut tick = tokio::time::interval(settings.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shared.monitors.cancelled() => return,
        }
        // Where each host stands: done by this deploy is new; not started is old; running,
        // failed or left out (a skipped host may have failed half-way) is neither.
        let (standing, soaking) = {
            let state = shared.control.lock();
            let standing: HashMap<String, Option<Side>> = hosts
                .keys()
                .map(|h| {
                    let side = match state.hosts.get(h) {
                        Some(Triage::Done) => Some(Side::New),
                        Some(Triage::Pending) => Some(Side::Old),
                        _ => None,
                    };
                    (h.clone(), side)
                })
                .collect();
            (standing, state.soaking)
        };
        for (host, side) in &standing {
            // A host that moved on forgets what it answered before.
            if sides.get(host).copied() != *side {
                samples.retain(|(h, _), _| h != host);
                match side {
                    Some(side) => sides.insert(host.clone(), *side),
                    None => sides.remove(host),
                };
            }
        }
        let probe_now = |side: Side| -> Vec<&String> {
            let members: Vec<&String> = hosts.keys().filter(|h| sides.get(*h) == Some(&side)).collect();
            if members.len() <= PROBED_PER_GROUP {
                return members;
            }
            let from = round * PROBED_PER_GROUP % members.len();
            members.iter().cycle().skip(from).take(PROBED_PER_GROUP).copied().collect()
        };
        let mut probes = JoinSet::new();
        for host in probe_now(Side::New).into_iter().chain(probe_now(Side::Old)) {
            for (check, probe, timeout) in hosts.get(host).into_iter().flatten() {
                let (shared, key, probe, timeout) =
                    (shared.clone(), (host.clone(), check.clone()), probe.clone(), *timeout);
                probes.spawn(async move {
                    let began = Instant::now();
                    let ok = shared.prober.probe(&probe, timeout).await.succeeded();
                    (key, began, began.elapsed().as_millis() as u64, ok)
                });
            }
        }
        round += 1;
        while let Some(done) = tokio::select! {
            done = probes.join_next() => done,
            _ = shared.monitors.cancelled() => return,
        } {
            let Ok((key, at, ms, ok)) = done else { continue };
            samples.entry(key).or_default().push_back((at, ms, ok));
        }
        let now = Instant::now();
        for kept in samples.values_mut() {
            while kept.front().is_some_and(|(at, _, _)| now.duration_since(*at) > settings.window) {
                kept.pop_front();
            }
        }
        for check in &check_names {
            let group = |side: Side| {
                let members: Vec<&String> = sides.iter().filter(|(_, s)| **s == side).map(|(h, _)| h).collect();
                let taken: Vec<(u64, bool)> = members
                    .iter()
                    .filter_map(|h| samples.get(&((*h).clone(), check.clone())))
                    .flatten()
                    .map(|(_, ms, ok)| (*ms, *ok))
                    .collect();
                figures(members.len(), &taken)
            };
            let (new, old) = (group(Side::New), group(Side::Old));
            if old.samples >= MIN_SAMPLES {
                baseline.insert(check.clone(), old.clone());
            }
            shared.control.events.emit(Event::HealthCompared {
                check: check.clone(),
                new: new.clone(),
                old: old.clone(),
            });
            let Some(wave) = soaking.filter(|w| judged != Some(*w)) else { continue };
            let against = if old.samples >= MIN_SAMPLES { Some(&old) } else { baseline.get(check) };
            if let Some(reason) = against.and_then(|old| verdict(&new, old, limits)) {
                judged = Some(wave);
                shared.control.analysis_failed(wave, check, reason, on_failure);
            }
        }
        if let Some(told) = baseline_taken.take() {
            let _ = told.send(());
        }
    }
}

/// The longest the first wave waits for the baseline round (its probes' own timeouts end it
/// sooner).
pub(super) fn baseline_wait(hosts: &BTreeMap<String, Checks>) -> Duration {
    hosts.values().flatten().map(|(_, _, timeout)| *timeout).max().unwrap_or_default() + Duration::from_secs(1)
}
