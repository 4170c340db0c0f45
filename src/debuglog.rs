//! `--debug-log FILE`: what wavedeck and the SSH library (russh logs through the `log` crate,
//! bridged here) did, for diagnosing a connection, written by a background thread so logging
//! never holds up a deploy.
//!
//! Nothing secret may reach it: every line passes the mask the session installs once it knows
//! the profile's secrets ([`mask_with`]). The deploy's runner, a process of its own, writes to
//! the same file: it is told the path through [`DEBUG_LOG_ENV`].

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock, RwLock};

/// Names the debug log for a runner started by a process that has one.
pub const DEBUG_LOG_ENV: &str = "WAVEDECK_DEBUG_LOG";

type Mask = Arc<dyn Fn(&str) -> String + Send + Sync>;

static PATH: OnceLock<PathBuf> = OnceLock::new();
static MASK: RwLock<Option<Mask>> = RwLock::new(None);

/// Keeps the writer thread alive; dropping it flushes what is queued.
pub struct Guard(#[allow(dead_code)] tracing_appender::non_blocking::WorkerGuard);

/// Starts writing debug output to `path` (appended to). Safe to call once per process.
pub fn init(path: &Path) -> Result<Guard, String> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| format!("cannot open the debug log {}: {e}", path.display()))?;
    let (writer, guard) = tracing_appender::non_blocking(file);
    let masked = move || Masked { inner: writer.clone() };
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_thread_names(false)
        .with_writer(masked)
        .try_init()
        .map_err(|e| format!("cannot start the debug log: {e}"))?;
    let _ = PATH.set(path.to_path_buf());
    tracing::debug!(version = env!("CARGO_PKG_VERSION"), pid = std::process::id(), "debug log opened");
    Ok(Guard(guard))
}

/// The debug log of this process, if it has one (for the runner it starts).
pub fn path() -> Option<&'static Path> {
    PATH.get().map(PathBuf::as_path)
}

/// From now on, every line is passed through `mask` (the session's secret redaction).
pub fn mask_with(mask: impl Fn(&str) -> String + Send + Sync + 'static) {
    if let Ok(mut slot) = MASK.write() {
        *slot = Some(Arc::new(mask));
    }
}

/// Masks what is written before handing it to the writer thread.
struct Masked<W: Write> {
    inner: W,
}

impl<W: Write> Write for Masked<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mask = MASK.read().ok().and_then(|m| m.clone());
        match mask {
            Some(mask) => {
                let text = mask(&String::from_utf8_lossy(buf));
                self.inner.write_all(text.as_bytes())?;
            }
            None => self.inner.write_all(buf)?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_written_passes_the_mask_once_it_is_installed() {
        let mut out = Masked { inner: Vec::new() };
        out.write_all(b"before: hunter2\n").unwrap();
        mask_with(|text| text.replace("hunter2", "******"));
        out.write_all(b"channel data: hunter2 sent\n").unwrap();
        let written = String::from_utf8(out.inner).unwrap();
        assert_eq!(written, "before: hunter2\nchannel data: ****** sent\n");
    }
}
