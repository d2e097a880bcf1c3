//! mtrec data: where the rows a model trains on come from.
//!
//! - [`dataset`]: a columnar, host-side [`Dataset`] (sparse ids, dense
//!   features, per-task labels and masks, optional domain ids), validated once
//!   on construction, and the [`Batch`]es of tensors gathered from it;
//! - [`split`](mod@split): seeded shuffles and train/valid/test splits of row indices;
//! - [`synthetic`]: the MMoE paper's synthetic two-task generator, whose task
//!   correlation is a setting.
pub mod dataset;
pub mod error;
pub mod split;
pub mod synthetic;

pub use dataset::{Batch, Dataset, DenseColumns, DomainColumn, SparseColumns};
pub use error::{DataError, Result};
pub use split::{shuffled, split, Split};
pub use synthetic::{MmoeSynthetic, MmoeSyntheticWeights};
