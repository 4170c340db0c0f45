//! HTTP for the local transport's simulated hosts (an environment's `local_http`): while a deploy
//! runs, its runner answers `GET /<env>/<host>/…` on a loopback address as that host's service
//! would, so HTTP checks (and new-against-old analysis) work on this machine.
//!
//! A host's answer is what its directory's `service.http` file says, one line: `STATUS
//! LATENCY_MS BODY…` (the demo's restart step writes it). A host with no such file answers
//! [`IDLE`]: a host that has not been deployed to yet still serves.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What a host without a `service.http` file answers.
pub const IDLE: (u16, u64, &str) = (200, 50, "idle");
/// The longest request read (a check's request is one short line and a few headers).
const MAX_REQUEST: usize = 8 * 1024;
/// How long a connection may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest a simulated host makes a check wait.
const MAX_LATENCY: Duration = Duration::from_secs(30);

/// A server running for as long as this is kept.
#[derive(Debug)]
pub struct Serving {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Serving {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts answering on `addr` for the hosts under `root/<env>/<host>`.
pub fn serve(root: PathBuf, addr: SocketAddr) -> Result<Serving, String> {
    let listener = std::net::TcpListener::bind(addr)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .and_then(TcpListener::from_std)
        .map_err(|e| format!("cannot answer HTTP for the local hosts on {addr} (local_http): {e}"))?;
    let task = tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            tokio::spawn(answer(socket, root.clone()));
        }
    });
    Ok(Serving { task })
}

async fn answer(mut socket: TcpStream, root: PathBuf) {
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        // A client that connects and never asks is let go.
        match tokio::time::timeout(REQUEST_TIMEOUT, socket.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return,
            Ok(Ok(n)) if request.len() + n > MAX_REQUEST => return,
            Ok(Ok(n)) => request.extend_from_slice(&buf[..n]),
        }
    }
    let line = String::from_utf8_lossy(&request).lines().next().unwrap_or_default().to_string();
    let (status, latency, body) = match host_dir(&root, &line) {
        Some(dir) => service(&dir).await,
        None => (404, 0, "no such host".to_string()),
    };
    tokio::time::sleep(Duration::from_millis(latency).min(MAX_LATENCY)).await;
    let reason = if status < 400 { "OK" } else { "Error" };
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = socket.write_all(response.as_bytes()).await;
}

/// The host directory a request line names: `GET /<env>/<host>/… HTTP/1.1`, both plain names.
fn host_dir(root: &Path, line: &str) -> Option<PathBuf> {
    let path = line.strip_prefix("GET ")?.split_whitespace().next()?;
    let mut parts = path.trim_start_matches('/').split('/');
    let (env, host) = (parts.next()?, parts.next()?);
    let plain = |s: &str| crate::profile::is_safe_name(s);
    // A host never deployed to has no directory yet, and still serves (idle).
    (plain(env) && plain(host)).then(|| root.join(env).join(host))
}

async fn service(dir: &Path) -> (u16, u64, String) {
    let said = tokio::fs::read_to_string(dir.join("service.http")).await.unwrap_or_default();
    let mut words = said.trim().splitn(3, ' ');
    let status = words.next().and_then(|w| w.parse::<u16>().ok());
    let latency = words.next().and_then(|w| w.parse::<u64>().ok());
    match (status, latency) {
        (Some(status), Some(latency)) => (status, latency, words.next().unwrap_or_default().to_string()),
        _ => (IDLE.0, IDLE.1, IDLE.2.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_env_and_host_names_are_served() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("prod/web-1")).unwrap();
        let dir = |line: &str| host_dir(root.path(), line);
        assert_eq!(dir("GET /prod/web-1/healthz HTTP/1.1"), Some(root.path().join("prod/web-1")));
        assert_eq!(dir("GET /prod/web-2/healthz HTTP/1.1"), Some(root.path().join("prod/web-2")));
        assert_eq!(dir("GET /prod/../../etc HTTP/1.1"), None);
        assert_eq!(dir("POST /prod/web-1/healthz HTTP/1.1"), None);
    }

    #[tokio::test]
    async fn a_host_answers_what_its_service_file_says_and_idle_without_one() {
        let root = tempfile::tempdir().unwrap();
        let host = root.path().join("prod/web-1");
        std::fs::create_dir_all(&host).unwrap();
        assert_eq!(service(&host).await, (200, 50, "idle".to_string()));
        std::fs::write(host.join("service.http"), "503 5 draining for 2.4.1\n").unwrap();
        assert_eq!(service(&host).await, (503, 5, "draining for 2.4.1".to_string()));
    }
}
