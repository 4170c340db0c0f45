//! The user's console settings: `~/.config/wavedeck/config.toml` (or `$WAVEDECK_CONFIG`).
//!
//! ```toml
//! theme = "light"        # a built-in theme name or a theme file path
//! scrollback = 10000     # lines kept per host
//! scrollback_mib = 256   # memory all hosts' scrollback may hold together
//! bell = true            # ring the terminal's bell when a deploy stops to wait or finishes
//! metrics_file = "/var/lib/node_exporter/textfile/wavedeck.prom"
//! ```
//! Command-line flags win over this file.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::diag::{Diagnostic, Diagnostics};

pub const CONFIG_ENV: &str = "WAVEDECK_CONFIG";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub theme: Option<String>,
    pub scrollback: Option<usize>,
    pub scrollback_mib: Option<usize>,
    pub bell: Option<bool>,
    /// Where deploys started from the console keep their figures for Prometheus.
    pub metrics_file: Option<PathBuf>,
}

impl Config {
    /// Reads the config file if there is one; a missing file is the empty config.
    pub fn load() -> Result<Config, Diagnostics> {
        match config_path() {
            Some(path) if path.exists() => Self::read(&path),
            _ => Ok(Config::default()),
        }
    }

    pub fn read(path: &Path) -> Result<Config, Diagnostics> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Diagnostics(vec![Diagnostic::whole_file(path, format!("cannot read config: {e}"))]))?;
        crate::diag::parse_toml(path, &text)
    }
}

fn config_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(CONFIG_ENV).filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    directories::ProjectDirs::from("", "", "wavedeck").map(|d| d.config_dir().join("config.toml"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_located() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, "theme = \"light\"\nscrolback = 5\n").unwrap();
        let err = Config::read(&path).unwrap_err();
        assert!(err.to_string().contains("config.toml:2:1"), "{err}");
    }
}
