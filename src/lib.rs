//! wavedeck: drive and watch rolling deployments.
//!
//! The modules form layers; each uses only layers below it (`tests/layers.rs` checks this).
//! From the bottom:
//!
//! 1. Leaves: [`event`] (the vocabulary: commands in, events out, step kinds, failure
//!    actions), [`diag`] (`file:line:col` diagnostics), [`template`], [`text`] (host text made
//!    safe for a terminal), [`shell`] (quoting, the release-layout scripts), [`sys`] (operator,
//!    machine, hex), [`exit`], [`debuglog`] (`--debug-log`).
//! 2. [`profile`]: a service's TOML profile, read strictly and validated. [`describe`]: events
//!    in words, for every front end. [`remote`]: a deploy's control socket and its protocol.
//!    [`insight`]: output grouped across hosts by shape, and its outliers.
//! 3. [`secrets`] (values from the environment, and masking), [`health`] (HTTP/TCP probes and
//!    streaks), [`transport`] (how a host is reached: local or SSH).
//! 4. [`plan`]: profile + environment + release into waves of hosts with rendered scripts.
//! 5. [`engine`] runs a plan through a transport, taking commands and emitting events; it knows
//!    nothing of terminals or files. [`lock`] (one deploy per environment) sits beside it.
//! 6. [`audit`]: the JSON-lines session record, as one typed [`audit::Record`] enum that its
//!    writer and its readers share, hash-chained, with the directory's index of ended sessions.
//!    [`signature`]: a closed file signed by an ssh-agent key in OpenSSH's format. [`notify`]:
//!    webhooks told about the deploy, off its path. [`metrics`]: its figures for Prometheus.
//! 7. [`session`] wires one deploy together and, once it runs, owns it: a task that audits
//!    every command (with the client it came from) before the engine sees it and every event
//!    before a client does, decides which client controls, and releases the lock and closes the
//!    log however the deploy ends. [`verify`] checks a file's chain; [`trail`] tells sessions
//!    for people (`audit ls`, `audit show`).
//! 8. [`rollback`] (what the last deploy changed, and where each host returns), [`check`]
//!    (preflight), [`resume`] (an interrupted deploy's journal, and where a resume picks
//!    each host up), [`retention`] (`audit prune`) and [`diff`] (`plan --diff`).
//! 9. [`runner`]: the detached process that owns one deploy, and the client front ends attach
//!    to it with.
//! 10. Front ends, clients of a runner: [`headless`] (plain lines for CI) and [`console`] (the
//!     full-screen TUI).

#![forbid(unsafe_code)]

pub mod audit;
pub mod check;
pub mod console;
pub mod debuglog;
pub mod describe;
pub mod diag;
pub mod diff;
pub mod engine;
pub mod event;
pub mod headless;
pub mod health;
pub mod insight;
pub mod lock;
pub mod metrics;
pub mod notify;
pub mod plan;
pub mod profile;
pub mod remote;
pub mod resume;
pub mod retention;
pub mod rollback;
pub mod runner;
pub mod secrets;
pub mod session;
pub mod shell;
pub mod signature;
pub mod sys;
pub mod template;
pub mod text;
pub mod trail;
pub mod transport;
pub mod verify;

/// Process exit codes, documented in the README.
pub mod exit {
    pub const OK: i32 = 0;
    /// The deploy ran but hosts failed (or a failure threshold stopped it).
    pub const FAILED: i32 = 1;
    /// Bad command line, profile, environment or release: nothing was started.
    pub const INVALID: i32 = 2;
    /// The operator (or a signal) aborted the deploy.
    pub const ABORTED: i32 = 3;
    /// This machine could not run the deploy (audit log unwritable, …): nothing was started.
    pub const CANNOT_START: i32 = 4;
    /// Another deploy holds the environment's lock: nothing was started.
    pub const LOCKED: i32 = 5;
}
