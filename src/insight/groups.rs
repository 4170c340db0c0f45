//! Output grouped across hosts by shape, per step: which lines every host printed, and which
//! only a few did (the outliers an operator should read first).

use std::collections::{BTreeSet, HashMap};

use crate::event::{OutlierGroup, Stream};

use super::shape::Shaper;

/// Groups kept per step. Past it, lines of new shapes are only counted: output that is unique
/// on every line (a dump, random ids the shaper does not know) cannot grow memory without end.
pub const MAX_GROUPS_PER_STEP: usize = 256;
/// Characters of a group's example line kept.
pub const EXAMPLE_CHARS: usize = 200;
/// Fewer hosts than this ran the step: no group is an outlier (one of two is not a minority).
pub const MIN_HOSTS_FOR_OUTLIERS: usize = 3;

/// One group as shown or reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineGroup {
    pub step: String,
    pub shape: String,
    /// The first line of this shape, as printed (masked, cut to [`EXAMPLE_CHARS`]).
    pub example: String,
    pub example_host: String,
    /// Hosts that printed a line of this shape, in the order the deploy first heard from them.
    pub hosts: Vec<String>,
    /// Hosts that ran the step.
    pub of: usize,
    pub lines: u64,
    /// Every line of this shape went to stderr.
    pub stderr_only: bool,
    pub outlier: bool,
}

/// Output of a set of hosts (a wave) grouped by step and shape; fed line by line.
#[derive(Debug, Clone)]
pub struct OutputGroups {
    shaper: Shaper,
    outlier_percent: u8,
    names: Vec<String>,
    ids: HashMap<String, u32>,
    steps: Vec<StepGroups>,
    /// Bumped on every change, so a reader can keep what it computed until the next.
    generation: u64,
}

#[derive(Debug, Clone)]
struct StepGroups {
    step: String,
    ran: BTreeSet<u32>,
    groups: Vec<Group>,
    by_shape: HashMap<String, usize>,
    /// Lines of shapes past [`MAX_GROUPS_PER_STEP`].
    ungrouped: u64,
}

#[derive(Debug, Clone)]
struct Group {
    shape: String,
    example: String,
    example_host: u32,
    /// Ids are given in the order hosts are first heard from, so this is that order too.
    hosts: BTreeSet<u32>,
    stdout: u64,
    stderr: u64,
}

impl OutputGroups {
    pub fn new(shaper: Shaper, outlier_percent: u8) -> OutputGroups {
        OutputGroups {
            shaper,
            outlier_percent: outlier_percent.min(100),
            names: Vec::new(),
            ids: HashMap::new(),
            steps: Vec::new(),
            generation: 0,
        }
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn shaper(&self) -> &Shaper {
        &self.shaper
    }

    fn id(&mut self, host: &str) -> u32 {
        if let Some(id) = self.ids.get(host) {
            return *id;
        }
        let id = self.names.len() as u32;
        self.names.push(host.to_string());
        self.ids.insert(host.to_string(), id);
        id
    }

    fn step_mut(&mut self, step: &str) -> &mut StepGroups {
        let at = match self.steps.iter().position(|s| s.step == step) {
            Some(at) => at,
            None => {
                self.steps.push(StepGroups {
                    step: step.to_string(),
                    ran: BTreeSet::new(),
                    groups: Vec::new(),
                    by_shape: HashMap::new(),
                    ungrouped: 0,
                });
                self.steps.len() - 1
            }
        };
        &mut self.steps[at]
    }

    /// `host` ran `step`: it counts among the hosts a group's share is taken of.
    pub fn step_started(&mut self, host: &str, step: &str) {
        let id = self.id(host);
        self.step_mut(step).ran.insert(id);
        self.generation += 1;
    }

    /// A line `host` printed in `step`.
    pub fn line(&mut self, host: &str, step: &str, stream: Stream, line: &str) {
        let shape = self.shaper.shape(line);
        self.add_shaped(host, step, stream, line, shape);
    }

    /// [`line`](Self::line) with the shape already made (outside a lock, say).
    pub fn add_shaped(&mut self, host: &str, step: &str, stream: Stream, line: &str, shape: String) {
        if shape.is_empty() {
            return;
        }
        let id = self.id(host);
        self.generation += 1;
        let groups = self.step_mut(step);
        // Output of a host not seen starting the step (a connection error) still counts it.
        groups.ran.insert(id);
        let at = match groups.by_shape.get(&shape) {
            Some(at) => *at,
            None if groups.groups.len() >= MAX_GROUPS_PER_STEP => {
                groups.ungrouped += 1;
                return;
            }
            None => {
                groups.groups.push(Group {
                    shape: shape.clone(),
                    example: line.chars().take(EXAMPLE_CHARS).collect(),
                    example_host: id,
                    hosts: BTreeSet::new(),
                    stdout: 0,
                    stderr: 0,
                });
                groups.by_shape.insert(shape, groups.groups.len() - 1);
                groups.groups.len() - 1
            }
        };
        let group = &mut groups.groups[at];
        group.hosts.insert(id);
        match stream {
            Stream::Stdout => group.stdout += 1,
            Stream::Stderr => group.stderr += 1,
        }
    }

    /// Whether `count` of `of` hosts is a minority worth reading first.
    pub fn is_outlier(&self, count: usize, of: usize) -> bool {
        of >= MIN_HOSTS_FOR_OUTLIERS && count < of && count <= (of * self.outlier_percent as usize / 100).max(1)
    }

    /// Every group: outliers first (fewest hosts first), then the rest by step and in the order
    /// they first appeared.
    pub fn groups(&self) -> Vec<LineGroup> {
        let mut out = Vec::new();
        for (step_at, step) in self.steps.iter().enumerate() {
            let of = step.ran.len();
            for (at, group) in step.groups.iter().enumerate() {
                let outlier = self.is_outlier(group.hosts.len(), of);
                out.push((
                    (!outlier, if outlier { group.hosts.len() } else { 0 }, step_at, at),
                    LineGroup {
                        step: step.step.clone(),
                        shape: group.shape.clone(),
                        example: group.example.clone(),
                        example_host: self.name(group.example_host),
                        hosts: group.hosts.iter().map(|h| self.name(*h)).collect(),
                        of,
                        lines: group.stdout + group.stderr,
                        stderr_only: group.stdout == 0,
                        outlier,
                    },
                ));
            }
        }
        out.sort_by_key(|(key, _)| *key);
        out.into_iter().map(|(_, group)| group).collect()
    }

    /// The outlier groups, for the wave's report.
    pub fn outliers(&self) -> Vec<OutlierGroup> {
        self.groups()
            .into_iter()
            .filter(|g| g.outlier)
            .map(|g| OutlierGroup {
                step: g.step,
                shape: g.shape,
                example: g.example,
                hosts: g.hosts,
                of: g.of,
                stderr_only: g.stderr_only,
            })
            .collect()
    }

    /// Lines not grouped because their step had too many shapes already.
    pub fn ungrouped(&self) -> u64 {
        self.steps.iter().map(|s| s.ungrouped).sum()
    }

    fn name(&self, id: u32) -> String {
        self.names.get(id as usize).cloned().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fleet(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("web-{i:02}")).collect()
    }

    #[test]
    fn two_hosts_of_twenty_printing_an_error_are_the_one_outlier_group_and_it_comes_first() {
        let hosts = fleet(20);
        let mut groups = OutputGroups::new(Shaper::new(hosts.iter().map(String::as_str)), 10);
        for (i, host) in hosts.iter().enumerate() {
            groups.step_started(host, "migrate");
            groups.line(host, "migrate", Stream::Stdout, &format!("migrated {} rows in 0.{i}s", 1000 + i));
            groups.line(host, "migrate", Stream::Stdout, &format!("{host} ready"));
            if i == 4 || i == 11 {
                groups.line(host, "migrate", Stream::Stderr, &format!("WARN disk 9{i}% full on {host}"));
            }
        }
        let all = groups.groups();
        assert_eq!(all.len(), 3, "{all:#?}");
        assert!(all[0].outlier && all[0].stderr_only);
        assert_eq!(all[0].hosts, vec!["web-05".to_string(), "web-12".to_string()]);
        assert_eq!((all[0].of, all[0].example.as_str()), (20, "WARN disk 94% full on web-05"));
        assert!(all[1..].iter().all(|g| !g.outlier && g.hosts.len() == 20), "{all:#?}");
        let outliers = groups.outliers();
        assert_eq!(outliers.len(), 1);
        assert_eq!(outliers[0].hosts, vec!["web-05", "web-12"]);
    }

    #[test]
    fn small_waves_have_no_outliers_and_one_odd_host_of_five_is_one() {
        let groups = OutputGroups::new(Shaper::default(), 10);
        assert!(!groups.is_outlier(1, 1));
        assert!(!groups.is_outlier(1, 2));
        assert!(groups.is_outlier(1, 5));
        assert!(!groups.is_outlier(2, 5));
        assert!(groups.is_outlier(20, 200) && !groups.is_outlier(21, 200));
        // Everyone printed it: not an outlier, whatever the share.
        assert!(!OutputGroups::new(Shaper::default(), 100).is_outlier(5, 5));
    }

    #[test]
    fn a_step_printing_a_new_shape_on_every_line_stops_at_its_group_limit_and_counts_the_rest() {
        let mut groups = OutputGroups::new(Shaper::default(), 10);
        for i in 0..(MAX_GROUPS_PER_STEP + 50) {
            // Letters, so the shaper cannot fold them.
            let word: String =
                format!("{i:x}").chars().filter_map(|c| c.to_digit(16)).map(|d| (b'g' + d as u8) as char).collect();
            groups.line("h", "dump", Stream::Stdout, &format!("entry {word}"));
        }
        assert_eq!(groups.groups().len(), MAX_GROUPS_PER_STEP);
        assert_eq!(groups.ungrouped(), 50);
    }
}
