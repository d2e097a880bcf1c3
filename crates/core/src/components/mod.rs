//! The built-in component kinds, registered by the core itself: every
//! architecture template and every config can use them.

pub mod dense;
pub mod experts;
pub mod fusion;
pub mod gate;
pub mod mlp;
pub mod tower;

pub use dense::{Activation, Linear};
