//! wavedeck: drive and watch rolling deployments.
//!
//! How the pieces fit (data flows down, commands flow up):
//!
//! - [`profile`] reads a service's TOML profile strictly and validates it, with
//!   `file:line:col` diagnostics from [`diag`].
//! - [`plan`] turns profile + environment + release into waves of hosts with rendered
//!   commands ([`template`] renders, [`secrets`] supplies and masks secret values).
//! - [`engine`] runs a plan through a [`transport`], taking [`event::Command`]s and emitting
//!   [`event::Event`]s. It knows nothing about terminals or files.
//! - Consumers of events: [`headless`] (plain lines for CI), [`audit`] (the JSON-lines session
//!   record) and [`console`] (the full-screen TUI, which also sends commands back).
//! - [`session`] wires one deploy together for either front end.
//! - [`text`] makes host-supplied text safe to show on a terminal.

#![forbid(unsafe_code)]

pub mod audit;
pub mod check;
pub mod console;
pub mod diag;
pub mod engine;
pub mod event;
pub mod headless;
pub mod health;
pub mod lock;
pub mod plan;
pub mod profile;
pub mod rollback;
pub mod secrets;
pub mod session;
pub mod template;
pub mod text;
pub mod transport;

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
