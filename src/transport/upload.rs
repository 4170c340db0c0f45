//! Pieces of the upload step shared by the transports: hashing the local file and pacing
//! progress reports.

use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::OutputSink;

/// Chunk size for reading and sending files.
pub const CHUNK: usize = 64 * 1024;

/// Progress is reported at most this often (and always at the end), so a fast upload does not
/// flood the event stream.
const PROGRESS_EVERY: Duration = Duration::from_millis(200);

/// sha256 of a local file, as lowercase hex. Runs on a blocking thread.
pub async fn sha256_file(path: &Path) -> Result<String, String> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let mut file = std::fs::File::open(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = file.read(&mut buf).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        Ok(hex(&hasher.finalize()))
    })
    .await
    .map_err(|e| format!("hashing failed: {e}"))?
}

/// sha256 of a file an upload sends, hashed once per process while the file stays as it was:
/// every host of a deploy uploads the same artifact, and hashing it again for each (1,000 hosts
/// and a 100 MiB artifact are 100 GB of hashing) was most of this machine's CPU for large
/// fleets. "As it was" is the file's device, inode, size, change and modification times, read
/// before and after hashing; a file replaced or written since is hashed again. Only a rewrite in
/// place to the same size within one tick of the file system's clock (a few ms) keeps them all:
/// the host then checks what it received against the old hash and fails the upload, or a host
/// that has the old file skips it, as a host that hashed before the rewrite would have.
/// Concurrent uploads of one file wait for one hash.
pub async fn sha256_source(path: &Path) -> Result<String, String> {
    let slot = {
        let mut sources = SOURCES.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if sources.len() >= MAX_SOURCES && !sources.contains_key(path) {
            // Template steps upload a rendered file per host: only recent ones are worth keeping.
            sources.clear();
        }
        std::sync::Arc::clone(sources.entry(path.to_path_buf()).or_default())
    };
    let mut known = slot.lock().await;
    let before = identity(path).await?;
    if let Some((identity, hash)) = known.as_ref()
        && *identity == before
    {
        return Ok(hash.clone());
    }
    let hash = sha256_file(path).await?;
    *known = (identity(path).await? == before).then(|| (before, hash.clone()));
    Ok(hash)
}

/// What tells one version of a file from another without reading it.
#[derive(Debug, PartialEq, Eq)]
struct Identity {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

async fn identity(path: &Path) -> Result<Identity, String> {
    use std::os::unix::fs::MetadataExt;
    let m = tokio::fs::metadata(path).await.map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    Ok(Identity {
        dev: m.dev(),
        ino: m.ino(),
        len: m.size(),
        mtime: (m.mtime(), m.mtime_nsec()),
        ctime: (m.ctime(), m.ctime_nsec()),
    })
}

type SourceSlot = std::sync::Arc<tokio::sync::Mutex<Option<(Identity, String)>>>;

/// Files whose hash [`sha256_source`] keeps, at most [`MAX_SOURCES`].
static SOURCES: std::sync::LazyLock<std::sync::Mutex<std::collections::HashMap<std::path::PathBuf, SourceSlot>>> =
    std::sync::LazyLock::new(Default::default);
const MAX_SOURCES: usize = 4096;

pub use crate::sys::hex;

/// Copies the first `size` bytes of the file at `from` to `to`, a chunk at a time, with progress
/// events; each write waits for `to` to take it (a channel's window: the host's pace, not this
/// machine's memory). A file that turns out shorter is an error; what a longer one has past
/// `size` is left behind, and the hash check after the copy says so. The error says which side
/// failed.
pub async fn copy(
    from: &Path,
    size: u64,
    to: &mut (impl tokio::io::AsyncWrite + Unpin),
    output: &dyn OutputSink,
) -> Result<(), CopyError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut local = tokio::fs::File::open(from).await.map_err(|e| CopyError::Read(e.to_string()))?;
    let mut progress = Progress::new(output, size);
    let mut buf = vec![0u8; CHUNK];
    let mut left = size;
    while left > 0 {
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = local.read(&mut buf[..want]).await.map_err(|e| CopyError::Read(e.to_string()))?;
        if n == 0 {
            return Err(CopyError::Read("it shrank while it was being copied".into()));
        }
        to.write_all(&buf[..n]).await.map_err(|e| CopyError::Write(e.to_string()))?;
        progress.add(n as u64);
        left -= n as u64;
    }
    to.flush().await.map_err(|e| CopyError::Write(e.to_string()))?;
    progress.finish();
    Ok(())
}

/// Which side of a [`copy`] failed, and why.
#[derive(Debug)]
pub enum CopyError {
    Read(String),
    Write(String),
}

/// A name next to `to` for writing before the atomic rename.
pub fn temporary_name(to: &str) -> String {
    format!("{to}.wavedeck-tmp-{}-{}", std::process::id(), rand_suffix())
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(Instant::now().elapsed().as_nanos());
    h.finish() & 0xffff_ffff
}

/// Reports upload progress at a bounded rate.
pub struct Progress<'a> {
    sink: &'a dyn OutputSink,
    total: u64,
    sent: u64,
    last: Option<Instant>,
}

impl<'a> Progress<'a> {
    pub fn new(sink: &'a dyn OutputSink, total: u64) -> Self {
        sink.progress(0, total);
        Self { sink, total, sent: 0, last: Some(Instant::now()) }
    }

    pub fn add(&mut self, n: u64) {
        self.sent += n;
        if self.last.is_none_or(|t| t.elapsed() >= PROGRESS_EVERY) {
            self.sink.progress(self.sent, self.total);
            self.last = Some(Instant::now());
        }
    }

    pub fn finish(self) {
        self.sink.progress(self.sent, self.total);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_source_is_hashed_again_once_it_changes_and_concurrent_uploads_agree() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.tar.gz");
        std::fs::write(&path, b"release 1").unwrap();
        let first = sha256_source(&path).await.unwrap();
        assert_eq!(first, sha256_file(&path).await.unwrap());
        let again: Vec<String> = futures_util::future::join_all((0..20).map(|_| sha256_source(&path)))
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert!(again.iter().all(|h| *h == first), "{again:?}");
        // Written in place (same inode). Its times may not move within a clock tick, so the size
        // differs here; a rewrite that matched all of it would fail on the host's check.
        std::fs::write(&path, b"release 2, bigger").unwrap();
        let second = sha256_source(&path).await.unwrap();
        assert_ne!(second, first);
        assert_eq!(second, sha256_file(&path).await.unwrap());
        // Replaced by a rename, as a build puts a new artifact in place.
        let next = dir.path().join("next");
        std::fs::write(&next, b"release 3").unwrap();
        std::fs::rename(&next, &path).unwrap();
        assert_eq!(sha256_source(&path).await.unwrap(), sha256_file(&path).await.unwrap());
        assert!(sha256_source(&dir.path().join("gone")).await.unwrap_err().contains("cannot read"));
    }
}
