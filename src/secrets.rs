//! Secret values: read from the environment at deploy time, kept out of every output.
//!
//! A secret reaches exactly one place, the command sent to the host. Everything shown or
//! written (screen, audit log, plan, output lines) goes through [`Redactor`], which masks any
//! secret value wherever it appears, including in what a command echoes back.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use crate::profile::Profile;

pub const MASK: &str = "******";

/// Resolved secret values by name.
#[derive(Clone, Default)]
pub struct Secrets {
    values: BTreeMap<String, String>,
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.values.keys()).finish()
    }
}

impl Secrets {
    /// Reads every secret the profile declares from the process environment.
    pub fn from_env(profile: &Profile) -> Result<Secrets, String> {
        Self::from_lookup(profile, |var| std::env::var(var).ok())
    }

    /// Resolves secrets through `lookup` (the environment, or a test's map); names every
    /// missing one at once.
    pub fn from_lookup(profile: &Profile, lookup: impl Fn(&str) -> Option<String>) -> Result<Secrets, String> {
        let mut values = BTreeMap::new();
        let mut missing = Vec::new();
        for (name, secret) in &profile.secrets {
            match lookup(&secret.env_var) {
                Some(v) if !v.is_empty() => {
                    values.insert(name.clone(), v);
                }
                _ => missing.push(format!("`{name}` (from ${})", secret.env_var)),
            }
        }
        if missing.is_empty() {
            Ok(Secrets { values })
        } else {
            Err(format!("secrets not set in the environment: {}", missing.join(", ")))
        }
    }

    /// Placeholder values for showing a plan without needing the secrets.
    pub fn masked(profile: &Profile) -> Secrets {
        Secrets { values: profile.secrets.keys().map(|k| (k.clone(), MASK.to_string())).collect() }
    }

    pub fn values(&self) -> impl Iterator<Item = (&String, &String)> {
        self.values.iter()
    }

    pub fn redactor(&self) -> Redactor {
        let mut needles: Vec<String> = self.values.values().filter(|v| v.as_str() != MASK).cloned().collect();
        // Longest first so a secret containing another is masked whole.
        needles.sort_by_key(|v| std::cmp::Reverse(v.len()));
        Redactor { needles }
    }
}

/// Masks secret values in text.
#[derive(Clone, Default)]
pub struct Redactor {
    needles: Vec<String>,
}

impl fmt::Debug for Redactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Redactor({} secrets)", self.needles.len())
    }
}

impl Redactor {
    pub fn redact<'a>(&self, text: &'a str) -> Cow<'a, str> {
        if !self.needles.iter().any(|n| text.contains(n.as_str())) {
            return Cow::Borrowed(text);
        }
        let mut out = text.to_string();
        for n in &self.needles {
            out = out.replace(n.as_str(), MASK);
        }
        Cow::Owned(out)
    }
}

/// A string that must not be printed: `Debug` shows nothing of it, and it has no `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Sensitive(pub String);

impl fmt::Debug for Sensitive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Sensitive(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_every_occurrence_longest_first() {
        let s =
            Secrets { values: BTreeMap::from([("a".into(), "hunter2".into()), ("b".into(), "hunter2-long".into())]) };
        let r = s.redactor();
        assert_eq!(r.redact("x hunter2-long y hunter2"), format!("x {MASK} y {MASK}"));
        assert!(matches!(r.redact("clean"), Cow::Borrowed(_)));
    }
}
