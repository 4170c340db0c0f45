//! Where and as whom to connect: the profile's SSH settings merged with ~/.ssh/config, the way
//! OpenSSH merges its command line with its config.
//!
//! Precedence, first wins: the host's own `user`/`port` in the profile, the environment's `[ssh]`
//! settings, then ssh_config (`Host` blocks matching the host's address, first value wins, as in
//! OpenSSH), then OpenSSH's defaults.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ssh2_config::{ParseRule, SshConfig};

use crate::profile::{Host, SshSettings};
use crate::transport::TransportError;

/// Everything needed to reach one host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// What the profile called it (the `address`), for messages.
    pub alias: String,
    /// What to connect to and look up in known_hosts (ssh_config's HostName, else the alias).
    pub hostname: String,
    pub port: u16,
    pub user: String,
    pub identities: Vec<PathBuf>,
    /// Offer only `identities` (and agent keys matching them), as OpenSSH's IdentitiesOnly.
    pub identities_only: bool,
    /// OpenSSH user certificates named by ssh_config's CertificateFile; a key's own
    /// `<key>-cert.pub` is found beside it without being named.
    pub certificates: Vec<PathBuf>,
    /// Hops to go through, outermost first (ProxyJump).
    pub jumps: Vec<Endpoint>,
    pub connect_timeout: Duration,
    pub keepalive: Duration,
}

/// The parsed ssh_config, read once per deploy.
#[derive(Debug, Default)]
pub struct ConfigFile {
    config: Option<SshConfig>,
}

impl ConfigFile {
    /// Reads the file named by the settings; a missing default file is the same as none.
    pub fn load(settings: &SshSettings) -> Result<ConfigFile, TransportError> {
        let Some(path) = settings.config.as_ref() else { return Ok(ConfigFile::default()) };
        let path = expand_home(path);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ConfigFile::default()),
            Err(e) => return Err(TransportError::Config(format!("cannot read {}: {e}", path.display()))),
        };
        let config = SshConfig::default()
            .parse(&mut text.as_bytes(), ParseRule::ALLOW_UNKNOWN_FIELDS | ParseRule::ALLOW_UNSUPPORTED_FIELDS)
            .map_err(|e| TransportError::Config(format!("{}: {e}", path.display())))?;
        Ok(ConfigFile { config: Some(config) })
    }

    /// Resolves the endpoint for a profile host.
    pub fn endpoint(&self, host: &Host, settings: &SshSettings) -> Result<Endpoint, TransportError> {
        let user = host.user.clone().or_else(|| settings.user.clone());
        let port = host.port.or(settings.port);
        let mut endpoint = self.resolve(&host.address, user, port, settings)?;
        endpoint.jumps = self.hops(&host.address, settings, &mut vec![host.address.clone()])?;
        Ok(endpoint)
    }

    /// The hops to `alias`, outermost first: its ProxyJump list, preceded by the hops to the
    /// first of them (a bastion that is itself behind a bastion), as OpenSSH goes. `path` is the
    /// chain so far, to refuse a loop.
    fn hops(
        &self,
        alias: &str,
        settings: &SshSettings,
        path: &mut Vec<String>,
    ) -> Result<Vec<Endpoint>, TransportError> {
        let mut hops = Vec::new();
        for (i, spec) in self.jump_specs(alias).into_iter().enumerate() {
            let (user, hop_alias, port) = parse_jump(&spec).ok_or_else(|| {
                TransportError::Config(format!("ProxyJump `{spec}` for {alias}: expected [user@]host[:port]"))
            })?;
            if path.contains(&hop_alias) || path.len() > MAX_HOPS {
                path.push(hop_alias);
                return Err(TransportError::Config(format!(
                    "ProxyJump goes round in a loop or too deep (at most {MAX_HOPS} hops): {}",
                    path.join(" -> ")
                )));
            }
            // The first hop is reached directly from here, so its own ProxyJump applies; later
            // hops are reached through the earlier ones.
            if i == 0 {
                path.push(hop_alias.clone());
                hops.extend(self.hops(&hop_alias, settings, path)?);
                path.pop();
            }
            let mut hop = self.resolve(&hop_alias, user, port, settings)?;
            hop.jumps.clear();
            hops.push(hop);
        }
        Ok(hops)
    }

    fn resolve(
        &self,
        alias: &str,
        user: Option<String>,
        port: Option<u16>,
        settings: &SshSettings,
    ) -> Result<Endpoint, TransportError> {
        let params = self.config.as_ref().map(|c| c.query(alias));
        let from_config = |f: fn(&ssh2_config::HostParams) -> Option<String>| params.as_ref().and_then(f);
        let hostname = from_config(|p| p.host_name.clone()).unwrap_or_else(|| alias.to_string());
        let user = user.or_else(|| from_config(|p| p.user.clone())).unwrap_or_else(crate::sys::operator_name);
        let port = port.or_else(|| params.as_ref().and_then(|p| p.port)).unwrap_or(22);
        let mut identities: Vec<PathBuf> = settings.identity_files.iter().map(|p| expand_home(p)).collect();
        if let Some(files) = params.as_ref().and_then(|p| p.identity_file.clone()) {
            identities.extend(files.iter().map(|p| expand_home(p)));
        }
        if identities.is_empty() {
            identities = ["id_ed25519", "id_ecdsa", "id_rsa"]
                .iter()
                .map(|name| expand_home(Path::new(&format!("~/.ssh/{name}"))))
                .filter(|p| p.exists())
                .collect();
        }
        let identities_only = params
            .as_ref()
            .and_then(|p| p.unsupported_fields.get("identitiesonly").or_else(|| p.ignored_fields.get("identitiesonly")))
            .and_then(|args| args.first())
            .is_some_and(|v| v.eq_ignore_ascii_case("yes"));
        let connect_timeout = params.as_ref().and_then(|p| p.connect_timeout).unwrap_or(settings.connect_timeout);
        let keepalive = params.as_ref().and_then(|p| p.server_alive_interval).unwrap_or(settings.keepalive_interval);
        let certificates =
            params.as_ref().and_then(|p| p.certificate_file.clone()).map(|p| vec![expand_home(&p)]).unwrap_or_default();
        Ok(Endpoint {
            alias: alias.to_string(),
            hostname,
            port,
            user,
            identities,
            identities_only,
            certificates,
            jumps: Vec::new(),
            connect_timeout,
            keepalive,
        })
    }

    fn jump_specs(&self, alias: &str) -> Vec<String> {
        let Some(config) = &self.config else { return Vec::new() };
        let jumps = config.query(alias).proxy_jump.unwrap_or_default();
        // "none" disables ProxyJump in OpenSSH.
        jumps.into_iter().filter(|j| !j.eq_ignore_ascii_case("none")).collect()
    }
}

/// The longest chain of ProxyJump hops followed.
const MAX_HOPS: usize = 8;

/// `[user@]host[:port]`.
fn parse_jump(spec: &str) -> Option<(Option<String>, String, Option<u16>)> {
    let (user, rest) = match spec.rsplit_once('@') {
        Some((u, r)) => (Some(u.to_string()), r),
        None => (None, spec),
    };
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) => (h, Some(p.parse().ok()?)),
        None => (rest, None),
    };
    (!host.is_empty()).then(|| (user, host.to_string(), port))
}

/// `~/x` → `$HOME/x`.
pub fn expand_home(path: &Path) -> PathBuf {
    match path.strip_prefix("~") {
        Ok(rest) => std::env::home_dir().map_or_else(|| path.to_path_buf(), |home| home.join(rest)),
        Err(_) => path.to_path_buf(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::{HostKeyPolicy, SshSettings};
    use std::collections::BTreeMap;

    fn settings(config: Option<PathBuf>) -> SshSettings {
        SshSettings {
            user: None,
            port: None,
            identity_files: vec![PathBuf::from("/keys/profile_key")],
            known_hosts: vec![],
            host_key_policy: HostKeyPolicy::Strict,
            config,
            connect_timeout: Duration::from_secs(10),
            connect_attempts: 3,
            keepalive_interval: Duration::from_secs(15),
            helper_timeout: Duration::from_secs(20),
            deploy_path: ".".into(),
            keep_step_output: false,
        }
    }

    fn host(address: &str, user: Option<&str>) -> Host {
        Host {
            name: address.into(),
            address: address.into(),
            user: user.map(String::from),
            port: None,
            labels: vec![],
            vars: BTreeMap::new(),
            from: None,
        }
    }

    #[test]
    fn ssh_config_fills_what_the_profile_leaves_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config");
        std::fs::write(
            &path,
            "Host web-*\n  HostName 10.1.2.3\n  User deploy\n  Port 2222\n  IdentityFile /keys/web\n  IdentitiesOnly yes\n  \
             ProxyJump ops@bastion:2200,inner\n  ConnectTimeout 4\n  ServerAliveInterval 7\n\nHost inner\n  HostName 10.9.9.9\n",
        )
        .unwrap();
        let config = ConfigFile::load(&settings(Some(path.clone()))).unwrap();
        let e = config.endpoint(&host("web-1", None), &settings(Some(path.clone()))).unwrap();
        assert_eq!((e.hostname.as_str(), e.port, e.user.as_str()), ("10.1.2.3", 2222, "deploy"));
        assert_eq!(e.identities, [PathBuf::from("/keys/profile_key"), PathBuf::from("/keys/web")]);
        assert!(e.identities_only);
        assert_eq!((e.connect_timeout, e.keepalive), (Duration::from_secs(4), Duration::from_secs(7)));
        let hops: Vec<(&str, u16, &str)> =
            e.jumps.iter().map(|j| (j.hostname.as_str(), j.port, j.user.as_str())).collect();
        assert_eq!(hops[0], ("bastion", 2200, "ops"));
        assert_eq!(hops[1].0, "10.9.9.9");
        // The profile wins over ssh_config.
        let e = config.endpoint(&host("web-1", Some("alice")), &settings(Some(path))).unwrap();
        assert_eq!(e.user, "alice");
    }

    #[test]
    fn without_a_config_the_address_is_the_hostname() {
        let e = ConfigFile::default().endpoint(&host("10.0.0.5", Some("bob")), &settings(None)).unwrap();
        assert_eq!((e.hostname.as_str(), e.port, e.user.as_str()), ("10.0.0.5", 22, "bob"));
        assert!(e.jumps.is_empty());
    }

    #[test]
    fn jump_specs_parse() {
        assert_eq!(parse_jump("a@b:1"), Some((Some("a".into()), "b".into(), Some(1))));
        assert_eq!(parse_jump("b"), Some((None, "b".into(), None)));
        assert_eq!(parse_jump("b:x"), None);
    }

    #[test]
    fn a_bastions_own_proxy_jump_goes_first_and_a_loop_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config");
        std::fs::write(
            &path,
            "Host web\n  ProxyJump inner\n\nHost inner\n  HostName 10.9.9.9\n  ProxyJump outer\n\n\
             Host outer\n  HostName 203.0.113.7\n\nHost a\n  ProxyJump b\n\nHost b\n  ProxyJump a\n",
        )
        .unwrap();
        let config = ConfigFile::load(&settings(Some(path.clone()))).unwrap();
        let e = config.endpoint(&host("web", None), &settings(Some(path.clone()))).unwrap();
        let hops: Vec<&str> = e.jumps.iter().map(|j| j.hostname.as_str()).collect();
        assert_eq!(hops, ["203.0.113.7", "10.9.9.9"]);
        let err = config.endpoint(&host("a", None), &settings(Some(path))).unwrap_err().to_string();
        assert!(err.contains("ProxyJump goes round in a loop or too deep (at most 8 hops): a -> b -> a"), "{err}");
    }
}
