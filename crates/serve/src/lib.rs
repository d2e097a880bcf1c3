//! mtrec serving: a trained run folder behind an HTTP scoring service that
//! applies exactly the preprocessing the model was trained with.
//!
//! - [`scorer`]: a loaded model shared read-only: JSON instances become
//!   encoded rows through the run's fitted `Preprocessor` (the data crate's
//!   own row encoding: vocabularies, hashing, scaling, missing values,
//!   sequences, domains), the model scores them;
//! - [`batcher`]: dynamic batching (bounded queue, maximum batch rows and
//!   wait, scoring threads);
//! - [`http`]: the TF-Serving / KServe v1 JSON service on axum/tokio, with
//!   graceful shutdown on SIGINT/SIGTERM;
//! - [`loadgen`]: the load generator (loopback only, bounded in requests and
//!   time): throughput and latency percentiles at several concurrencies;
//! - [`cli`]: the `mtrec serve` and `mtrec loadgen` subcommands.
pub mod batcher;
pub mod cli;
pub mod error;
pub mod http;
pub mod loadgen;
pub mod scorer;

pub use batcher::{BatchOptions, Batcher};
pub use error::{Result, ServeError};
pub use http::{shutdown_signal, ServeOptions, Service};
pub use scorer::{ModelParts, Scorer};
