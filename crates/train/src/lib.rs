//! mtrec training: the loop with early stopping, a resumable one-pass
//! Adam(W) for dense weights and row-sparse optimizers (lazy Adam, row-wise
//! Adagrad, SGD) for embedding tables, global-norm gradient clipping,
//! evaluation metrics and the run report.
pub mod balance;
pub mod check;
pub mod checkpoint;
pub mod clip;
pub mod error;
mod eval_shard;
pub mod evaluate;
pub mod metrics;
pub mod optim;
pub mod parts;
pub mod report;
pub mod sync;
pub mod trainer;

pub use balance::{Balancer, BalancerConfig, PairConflict};
pub use checkpoint::{Checkpointer, TrainState};
pub use clip::{clip_grad_norm, grad_global_norm};
pub use error::{Result, TrainError};
pub use evaluate::{
    batch_outputs, evaluate, evaluate_batches, evaluate_batches_with, evaluate_own_rows, evaluate_with, predict,
    DomainResult, EvalConfig, Evaluation, Evaluator, GateUtilisation, TaskResult,
};
pub use metrics::{auc, logloss, mse, weighted_auc, weighted_logloss, weighted_mse, Headline, TaskMetrics};
pub use optim::{Adam, AdamConfig, Optimizer, TableOptimizer, TableOptimizerConfig};
pub use parts::{part_seed, TrainParts};
pub use report::{domain_table, metrics_table, Report, SplitRows, TaskOutcome};
pub use trainer::{
    epoch_seed, optimizer, train, train_on, train_step, train_with, BatchProgress, EpochLog, InMemory, Shard, Streamed,
    TrainConfig, TrainOptions, TrainOutcome, TrainSource,
};
