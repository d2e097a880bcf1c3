//! The component traits every graph node is made of.
//!
//! All are object-safe and `Send + Sync` and receive a [`ForwardCtx`] with
//! the rows' domain ids, the features and the train/eval flag. Widths are
//! checked by each kind's `check` before any weight exists
//! ([`crate::protocol::Kind`]).

use candle_core::Tensor;

use crate::error::Result;
use crate::inputs::ForwardCtx;

/// A bank of experts reading the same input: `[B, in] -> [count, B, out]`.
///
/// A bank, not a single expert, is the unit: `n` identical experts run as one
/// batched matmul over `[n, in, out]` weights instead of a loop of `n` small
/// ones. A single expert is a bank of one. (Widths and counts are the
/// kind's `check`'s business, before any weight exists.)
pub trait Expert: Send + Sync {
    fn forward(&self, x: &Tensor, ctx: &ForwardCtx) -> Result<Tensor>;
}

/// A selector `[B, d_sel]` -> weights `[B, n]` over the `n` experts it routes:
/// non-negative, each row summing to 1. The graph runtime mixes the experts'
/// outputs with these weights and records them for expert-utilisation reports.
pub trait Gate: Send + Sync {
    fn weights(&self, selector: &Tensor, ctx: &ForwardCtx) -> Result<Tensor>;
}

/// Combines several `[B, d_i]` tensors into one `[B, out]`.
pub trait Fusion: Send + Sync {
    fn forward(&self, xs: &[Tensor], ctx: &ForwardCtx) -> Result<Tensor>;
}

/// One task's head: `[B, in] -> [B, 1]` logit (or regression value).
pub trait Tower: Send + Sync {
    fn forward(&self, x: &Tensor, ctx: &ForwardCtx) -> Result<Tensor>;
}

/// Any other `[B, in] -> [B, out]` node: a shared bottom MLP, a normalisation,
/// a scenario transform.
pub trait Layer: Send + Sync {
    fn forward(&self, x: &Tensor, ctx: &ForwardCtx) -> Result<Tensor>;
}

/// The role of a component kind in a graph, which fixes what it reads and
/// what it produces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Reads one dense input, produces a bank of expert outputs.
    Expert,
    /// Reads one dense selector and one or more banks, produces their mix.
    Gate,
    /// Reads one or more dense inputs, produces one dense output.
    Fusion,
    /// Reads one dense input, produces a task's `[B, 1]` output.
    Tower,
    /// Reads one dense input, produces one dense output.
    Layer,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Expert => "expert",
            Role::Gate => "gate",
            Role::Fusion => "fusion",
            Role::Tower => "tower",
            Role::Layer => "layer",
        }
    }
}

/// What flows along a graph edge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Port {
    /// `[B, width]`
    Dense { width: usize },
    /// `[count, B, width]`: the outputs of a bank of experts.
    Bank { count: usize, width: usize },
}

impl Port {
    pub fn width(self) -> usize {
        match self {
            Port::Dense { width } | Port::Bank { width, .. } => width,
        }
    }
}

impl std::fmt::Display for Port {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Port::Dense { width } => write!(f, "[B, {width}]"),
            Port::Bank { count, width } => write!(f, "a bank of {count} experts x [B, {width}]"),
        }
    }
}

/// A built component, by role.
pub enum Component {
    Expert(Box<dyn Expert>),
    Gate(Box<dyn Gate>),
    Fusion(Box<dyn Fusion>),
    Tower(Box<dyn Tower>),
    Layer(Box<dyn Layer>),
}

impl Component {
    pub fn role(&self) -> Role {
        match self {
            Component::Expert(_) => Role::Expert,
            Component::Gate(_) => Role::Gate,
            Component::Fusion(_) => Role::Fusion,
            Component::Tower(_) => Role::Tower,
            Component::Layer(_) => Role::Layer,
        }
    }
}
