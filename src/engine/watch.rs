//! What the engine notices across a wave's hosts: output only a few of them printed, and a step
//! running far longer on one host than it took on the others.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::event::{Event, OutlierGroup, Stream};
use crate::insight::{OutputGroups, Shaper};
use crate::profile::{Analysis, SlowStep};

use super::*;

/// How often running steps are compared with their wave's finished ones.
pub(super) const SLOW_TICK: Duration = Duration::from_secs(1);

pub(super) struct Watch {
    shaper: Shaper,
    analysis: Analysis,
    /// Per wave, its output grouped by shape; taken (and dropped) when the wave ends.
    groups: Mutex<BTreeMap<usize, OutputGroups>>,
    pace: Mutex<Pace>,
}

#[derive(Default)]
struct Pace {
    /// How long each (wave, step index) took on the hosts that finished it successfully.
    finished: HashMap<(usize, usize), Vec<Duration>>,
    /// Per host, the step it runs now.
    running: HashMap<String, Running>,
}

struct Running {
    wave: usize,
    index: usize,
    step: String,
    since: Instant,
    /// Stops this step alone (`slow_step = "fail"`); a child of the deploy's abort.
    cancel: CancellationToken,
    flagged: bool,
    /// Why it was stopped, when it was stopped for being slow.
    stopped: Option<String>,
}

/// A step found slow: its host's figures against the wave's.
pub(super) struct Slow {
    pub(super) wave: usize,
    pub(super) host: String,
    pub(super) step: String,
    pub(super) running: Duration,
    pub(super) median: Duration,
    pub(super) stop: bool,
}

impl Watch {
    pub(super) fn new(hosts: &[crate::profile::Host], analysis: Analysis) -> Watch {
        let names = hosts.iter().flat_map(|h| [h.name.as_str(), h.address.as_str()]);
        Watch {
            shaper: Shaper::new(names),
            analysis,
            groups: Mutex::new(BTreeMap::new()),
            pace: Mutex::new(Pace::default()),
        }
    }

    pub(super) fn slow_steps_watched(&self) -> bool {
        self.analysis.slow_step != SlowStep::Off
    }

    /// A step starts on `host`: returns the token that stops it (the abort, or its slowness).
    pub(super) fn step_began(
        &self,
        abort: &CancellationToken,
        wave: usize,
        host: &str,
        index: usize,
        step: &str,
    ) -> CancellationToken {
        let cancel = abort.child_token();
        if wave > 0
            && let Ok(mut groups) = self.groups.lock()
        {
            self.wave_groups(&mut groups, wave).step_started(host, step);
        }
        if let Ok(mut pace) = self.pace.lock() {
            let running = Running {
                wave,
                index,
                step: step.to_string(),
                since: Instant::now(),
                cancel: cancel.clone(),
                flagged: false,
                stopped: None,
            };
            pace.running.insert(host.to_string(), running);
        }
        cancel
    }

    /// The step `step_began` announced has ended; returns why it was stopped, if it was stopped
    /// for being slow (so its result is a failure, not a cancellation).
    pub(super) fn step_ended(&self, host: &str, succeeded: bool) -> Option<String> {
        let mut pace = self.pace.lock().ok()?;
        let running = pace.running.remove(host)?;
        if succeeded {
            pace.finished.entry((running.wave, running.index)).or_default().push(running.since.elapsed());
        }
        running.stopped
    }

    /// Steps that just became slow, each reported once; with `slow_step = "fail"` they are also
    /// stopped.
    pub(super) fn newly_slow(&self) -> Vec<Slow> {
        let Ok(mut pace) = self.pace.lock() else { return Vec::new() };
        let Pace { finished, running } = &mut *pace;
        let mut found = Vec::new();
        for (host, step) in running.iter_mut().filter(|(_, r)| !r.flagged && r.wave > 0) {
            let Some(median) = finished.get_mut(&(step.wave, step.index)).and_then(|d| median(d)) else { continue };
            let elapsed = step.since.elapsed();
            let limit = median.mul_f64(self.analysis.slow_factor).max(self.analysis.slow_min);
            if elapsed <= limit {
                continue;
            }
            step.flagged = true;
            let stop = self.analysis.slow_step == SlowStep::Fail;
            if stop {
                step.stopped = Some(format!(
                    "stopped after {}: over {}x the median of its wave's hosts ({}); slow_step = \"fail\"",
                    crate::describe::seconds(elapsed.as_millis() as u64),
                    self.analysis.slow_factor,
                    crate::describe::seconds(median.as_millis() as u64),
                ));
                step.cancel.cancel();
            }
            found.push(Slow {
                wave: step.wave,
                host: host.clone(),
                step: step.step.clone(),
                running: elapsed,
                median,
                stop,
            });
        }
        found.sort_by(|a, b| a.host.cmp(&b.host));
        found
    }

    /// A line a host printed (masked already).
    pub(super) fn line(&self, wave: usize, host: &str, step: &str, stream: Stream, line: &str) {
        if wave == 0 {
            return;
        }
        // Shaped outside the lock: every host's lines pass here.
        let shape = self.shaper.shape(line);
        if let Ok(mut groups) = self.groups.lock() {
            self.wave_groups(&mut groups, wave).add_shaped(host, step, stream, line, shape);
        }
    }

    fn wave_groups<'a>(&self, groups: &'a mut BTreeMap<usize, OutputGroups>, wave: usize) -> &'a mut OutputGroups {
        groups.entry(wave).or_insert_with(|| OutputGroups::new(Shaper::default(), self.analysis.outlier_percent))
    }

    /// The wave's outlier groups; its grouping is dropped.
    pub(super) fn take_outliers(&self, wave: usize) -> Vec<OutlierGroup> {
        let groups = self.groups.lock().ok().and_then(|mut g| g.remove(&wave));
        groups.map(|g| g.outliers()).unwrap_or_default()
    }
}

fn median(durations: &mut [Duration]) -> Option<Duration> {
    if durations.is_empty() {
        return None;
    }
    durations.sort_unstable();
    Some(durations[durations.len() / 2])
}

/// Reports slow steps as they become slow, until the deploy ends.
pub(super) async fn watch_pace(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(SLOW_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shared.monitors.cancelled() => return,
        }
        for slow in shared.watch.newly_slow() {
            shared.control.events.emit(Event::StepSlow {
                wave: slow.wave,
                host: slow.host,
                step: slow.step,
                running_ms: slow.running.as_millis() as u64,
                median_ms: slow.median.as_millis() as u64,
                stopped: slow.stop,
            });
        }
    }
}
