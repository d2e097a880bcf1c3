//! mtrec core: what every architecture and every tool of mtrec builds on.
//!
//! - [`component`]: the `Expert`, `Gate`, `Fusion`, `Tower` (and `Layer`) traits;
//! - [`graph`]: the graph description every architecture expands into, and
//!   its validation before any weight exists;
//! - [`protocol`]: what a plugin writes: a [`Template`] or a component [`Kind`],
//!   each with one typed `Params`;
//! - [`registry`]: the inventory registries of architectures and component kinds;
//! - [`model`]: the one runtime that runs any validated graph;
//! - [`components`]: the built-in component kinds (MLP experts, softmax gate,
//!   fusions, towers); [`loss`]: stable per-task losses with sample-space masks;
//! - [`ops`]: fused CPU ops (dense layers and expert banks with hand-written
//!   backward, the gate mix) the built-in components run on.
pub mod atomic;
pub mod component;
pub mod components;
pub mod error;
pub mod features;
pub mod graph;
pub mod graph_arch;
pub mod groups;
pub mod inputs;
pub mod loss;
pub mod model;
pub mod ops;
pub mod params;
pub mod protocol;
pub mod registry;
pub mod task;
pub mod warm;

pub use component::{Component, Expert, Fusion, Gate, Layer, Port, Role, Tower};
pub use error::{Error, Result};
pub use features::{
    DomainEmbedding, FeatureSpec, FeatureViews, FieldRows, Pooling, SequenceFeature, SequenceView, SparseFeature,
    TouchedRows,
};
pub use graph::{GraphEnv, GraphSpec, NodeIo, NodeSpec, INPUT};
pub use groups::{domains_of, DomainGroups};
pub use inputs::{Domains, ForwardCtx, Inputs, Penalties, Penalty, SequenceInput};
pub use model::{GateRecord, Model, ModelOutput};
pub use params::{Init, ParamBuilder, ParamStore};
pub use protocol::{ArchParams, Architecture, ComponentKind, Kind, NodeParams, Template};
pub use registry::{ArchRegistration, ComponentRegistration};
pub use task::{TaskInfo, TaskKind};

// Re-exported so that plugin crates register with the same inventory version.
pub use inventory;
