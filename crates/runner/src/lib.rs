//! The mtrec runner: from a declarative config to a trained, evaluated model
//! and a run folder. The `mtrec` binary is a thin command line over it.
pub mod alloc;
pub mod compare;
pub mod config;
pub mod distributed;
pub mod error;
pub mod folder;
pub mod plot;
pub mod progress;
pub mod reproduce;
pub mod run;
pub mod source;
pub mod threads;

pub use error::{Result, RunError};

/// References every built-in plugin so that the linker keeps their
/// `inventory` registrations (an unreferenced crate is dropped whole).
/// Links every built-in plugin (`mtrec_plugins::BUILTIN`) and the
/// third-party crates of enabled features, so that their registrations reach
/// the registry.
pub fn link_builtin_plugins() {
    mtrec_plugins::link();
    // Third-party architecture crates, each behind its own cargo feature.
    #[cfg(feature = "esmm")]
    mtrec_esmm::link();
}
