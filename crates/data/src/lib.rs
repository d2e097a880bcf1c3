//! mtrec data: where the rows a model trains on come from.
//!
//! - [`dataset`]: a columnar, host-side [`Dataset`] (sparse ids, dense
//!   features, per-task labels and masks, optional domain ids), validated once
//!   on construction, and the [`Batch`]es of tensors gathered from it;
//! - [`split`](mod@split): seeded shuffles and train/valid/test splits of row indices;
//! - [`synthetic`]: the MMoE paper's synthetic two-task generator, whose task
//!   correlation is a setting;
//! - [`multidomain`]: a multi-domain generator (skewed domain sizes, a shared
//!   preference function plus a domain shift of controllable strength);
//! - [`shard`]: which rows each reader of several (a data-parallel run's
//!   ranks) keeps;
//! - [`schema`]: the description of a CSV/Parquet data set (`[data]` with
//!   `source = "csv"` or `"parquet"`, and `[[tasks]]`);
//! - [`read`]: streaming CSV (plain or gzip) and Parquet row readers;
//! - [`preprocess`]: the [`Preprocessor`] fitted on training rows
//!   (vocabularies, hashing, dense statistics, domains, task rules), which
//!   encodes files into datasets and is saved as JSON;
//! - [`encode_row`]: rows given as column values (a served request's
//!   instances) encoded with a fitted preprocessor, exactly as file rows;
//! - [`stream`]: out-of-core passes over files larger than memory: batches
//!   through a seeded shuffle buffer, a hash split of one file, [`StreamedData`];
//! - [`tabular`]: loading a described data set ([`load_tabular`],
//!   [`load_single`], [`load_split`]).
pub mod dataset;
pub mod encode_row;
pub mod error;
pub mod multidomain;
pub mod preprocess;
pub mod read;
pub mod schema;
pub mod shard;
pub mod split;
pub mod stream;
pub mod synthetic;
pub mod tabular;

pub use dataset::{Batch, Dataset, DenseColumns, DomainColumn, LabelCount, SequenceColumn, SparseColumns};
pub use error::{DataError, Place, Result};
pub use multidomain::{Logged, MultiDomainSynthetic, MultiDomainTruth, PreferenceFunction};
pub use preprocess::{FitCounts, Fitting, Labels, MergeCounts, Pass, Preprocessor, Progress, ProgressFn};
pub use schema::{DataFiles, FileFormat, TabularSchema, TaskSpec};
pub use shard::Stripe;
pub use split::{shuffled, split, Split};
pub use stream::{
    Batches, HashSplit, Part, Prefetch, Shuffle, StreamFiles, StreamOptions, StreamedData, PREFETCH_BATCHES,
};
pub use synthetic::{MmoeSynthetic, MmoeSyntheticWeights};
pub use tabular::{
    count_rows, load_single, load_split, load_split_sharded, load_tabular, load_tabular_fitted, Loaded, LoadedSingle,
    ShardRead,
};
