//! Cross-host insight: what a fleet's output and timings say that no single host's log does.
//!
//! [`shape`] folds what varies by nature (numbers, ids, host names) out of a line, and
//! [`groups`] counts which hosts printed each shape, so the few hosts that printed what the
//! others did not stand out. [`compare`] judges the hosts already on the new release against
//! those still on the old one. Pure bookkeeping, fed by whoever sees the lines: the engine (for
//! its end-of-wave report) and the console (live).

pub mod compare;
pub mod groups;
pub mod shape;

pub use self::groups::{LineGroup, OutputGroups};
pub use self::shape::Shaper;
