//! The plugin protocol: what an architecture plugin ([`Template`]) and a
//! component plugin ([`Kind`]) write, each with one typed `Params` parsed
//! once; the object-safe views ([`Architecture`], [`ComponentKind`]) the
//! registry holds; and the parsing of parameter tables with located errors.

pub mod kind;
pub mod parse;
pub mod template;

pub use kind::{check_units, ComponentKind, Kind, NodeParams};
pub use parse::{inline, parse_params, parse_value, to_table, KeyPath, KeySegment, ParamError};
pub use template::{tower_id, towers, ArchParams, Architecture, Template};

/// A typed plugin as the registry holds it: the one implementation of
/// [`Architecture`] for every [`Template`] and of [`ComponentKind`] for every
/// [`Kind`]. Built by [`crate::register_template!`] / [`crate::register_kind!`].
pub struct Registered<T>(pub T);
