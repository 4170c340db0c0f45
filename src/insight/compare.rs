//! New against old: figures for a group of hosts' check samples, and whether the new group
//! crossed a limit against the old one.

use crate::event::Figures;

/// Samples a group needs within the window before it is judged: a verdict on three requests is
/// noise.
pub const MIN_SAMPLES: usize = 10;

/// The limits of `[analysis]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    pub max_p95_ratio: Option<f64>,
    /// Percentage points.
    pub max_error_rate_increase: Option<f64>,
}

/// Figures of `samples` (latency in ms, answered well) from `hosts` hosts. Latency is of the
/// good answers only: a timeout's "latency" is the timeout, which the error rate already counts.
pub fn figures(hosts: usize, samples: &[(u64, bool)]) -> Figures {
    let mut good: Vec<u64> = samples.iter().filter(|(_, ok)| *ok).map(|(ms, _)| *ms).collect();
    good.sort_unstable();
    let failed = samples.iter().filter(|(_, ok)| !ok).count();
    Figures {
        hosts,
        samples: samples.len(),
        p50_ms: percentile(&good, 50),
        p95_ms: percentile(&good, 95),
        errors_per_mille: if samples.is_empty() { 0 } else { (failed * 1000 / samples.len()) as u32 },
    }
}

/// Nearest-rank percentile of sorted values; 0 for none.
fn percentile(sorted: &[u64], p: usize) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (sorted.len() * p).div_ceil(100).max(1);
    sorted[rank - 1]
}

/// Why `new` is worse than `old` beyond `limits`, in figures; `None` when it is not, or when
/// either side has too few samples to say.
pub fn verdict(new: &Figures, old: &Figures, limits: Limits) -> Option<String> {
    if new.samples < MIN_SAMPLES || old.samples < MIN_SAMPLES {
        return None;
    }
    if let Some(ratio) = limits.max_p95_ratio
        && old.p95_ms > 0
        && new.p95_ms as f64 > ratio * old.p95_ms as f64
    {
        return Some(format!(
            "new hosts' p95 {}ms > {ratio} x old hosts' p95 {}ms ({} new, {} old hosts)",
            new.p95_ms, old.p95_ms, new.hosts, old.hosts
        ));
    }
    if let Some(points) = limits.max_error_rate_increase {
        let (new_pct, old_pct) = (new.errors_per_mille as f64 / 10.0, old.errors_per_mille as f64 / 10.0);
        if new_pct > old_pct + points {
            return Some(format!(
                "new hosts' error rate {new_pct:.1}% > old hosts' {old_pct:.1}% + {points} points ({} new, {} old hosts)",
                new.hosts, old.hosts
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn steady(ms: u64, n: usize) -> Vec<(u64, bool)> {
        (0..n).map(|i| (ms + (i as u64 % 5), true)).collect()
    }

    #[test]
    fn percentiles_are_of_the_good_answers_and_errors_are_counted_apart() {
        let mut samples: Vec<(u64, bool)> = (1..=100).map(|ms| (ms, true)).collect();
        samples.extend([(10_000, false), (10_000, false)]);
        let f = figures(4, &samples);
        assert_eq!((f.p50_ms, f.p95_ms, f.samples, f.hosts), (50, 95, 102, 4));
        assert_eq!(f.errors_per_mille, 19);
        assert_eq!(figures(0, &[]), Figures::default());
    }

    #[test]
    fn twice_as_slow_crosses_a_one_and_a_half_ratio_and_ten_percent_slower_does_not() {
        let limits = Limits { max_p95_ratio: Some(1.5), max_error_rate_increase: None };
        let old = figures(10, &steady(100, 50));
        let why = verdict(&figures(2, &steady(200, 50)), &old, limits).unwrap();
        assert_eq!(why, "new hosts' p95 204ms > 1.5 x old hosts' p95 104ms (2 new, 10 old hosts)");
        assert_eq!(verdict(&figures(2, &steady(110, 50)), &old, limits), None);
        // Too few samples to say either way.
        assert_eq!(verdict(&figures(2, &steady(500, 3)), &old, limits), None);
    }

    #[test]
    fn an_error_rate_more_than_the_allowed_points_above_old_crosses() {
        let limits = Limits { max_p95_ratio: None, max_error_rate_increase: Some(2.0) };
        let old = figures(10, &steady(100, 100));
        let mut bad = steady(100, 95);
        bad.extend((0..5).map(|_| (0, false)));
        let why = verdict(&figures(3, &bad), &old, limits).unwrap();
        assert!(why.starts_with("new hosts' error rate 5.0% > old hosts' 0.0% + 2 points"), "{why}");
        let mut fine = steady(100, 99);
        fine.push((0, false));
        assert_eq!(verdict(&figures(3, &fine), &old, limits), None);
    }
}
