//! The inventory registries: architecture templates and component kinds.
//!
//! A crate registers with `inventory::submit!`; lookups build a sorted map
//! once. rustc drops a linked crate that no code references, and its
//! registrations with it: a binary must reference every plugin it wants (each
//! built-in plugin exposes `pub fn link() {}` for that).

use std::collections::BTreeMap;
use std::sync::OnceLock;

use crate::error::{Error, Result};
pub use crate::protocol::{Architecture, ComponentKind};

/// An architecture's registration (made by [`crate::register_template!`]).
pub struct ArchRegistration(pub &'static dyn Architecture);
/// A component kind's registration (made by [`crate::register_kind!`]).
pub struct ComponentRegistration(pub &'static dyn ComponentKind);

inventory::collect!(ArchRegistration);
inventory::collect!(ComponentRegistration);

/// Builds a sorted name index; a name registered twice is an error.
pub fn index<T: Copy>(
    what: &'static str,
    items: impl IntoIterator<Item = (&'static str, T)>,
) -> Result<BTreeMap<&'static str, T>> {
    let mut map = BTreeMap::new();
    for (name, item) in items {
        if map.insert(name, item).is_some() {
            return Err(Error::DuplicateName {
                what,
                name: name.to_string(),
            });
        }
    }
    Ok(map)
}

type ArchIndex = BTreeMap<&'static str, &'static dyn Architecture>;
type KindIndex = BTreeMap<&'static str, &'static dyn ComponentKind>;

fn cached<T: Clone>(
    cell: &'static OnceLock<std::result::Result<T, (String, &'static str)>>,
    make: impl FnOnce() -> Result<T>,
) -> Result<T> {
    let r = cell.get_or_init(|| {
        make().map_err(|e| match e {
            Error::DuplicateName { what, name } => (name, what),
            other => (other.to_string(), "registration"),
        })
    });
    r.clone().map_err(|(name, what)| Error::DuplicateName { what, name })
}

/// Every linked architecture, by name.
pub fn architectures() -> Result<ArchIndex> {
    static CELL: OnceLock<std::result::Result<ArchIndex, (String, &'static str)>> = OnceLock::new();
    cached(&CELL, || {
        index(
            "architecture",
            inventory::iter::<ArchRegistration>
                .into_iter()
                .map(|r| (r.0.name(), r.0)),
        )
    })
}

/// Every linked component kind, by name.
pub fn components() -> Result<KindIndex> {
    static CELL: OnceLock<std::result::Result<KindIndex, (String, &'static str)>> = OnceLock::new();
    cached(&CELL, || {
        index(
            "component kind",
            inventory::iter::<ComponentRegistration>
                .into_iter()
                .map(|r| (r.0.name(), r.0)),
        )
    })
}

pub fn architecture(name: &str) -> Result<&'static dyn Architecture> {
    let all = architectures()?;
    all.get(name).copied().ok_or_else(|| Error::UnknownName {
        what: "architecture",
        name: name.to_string(),
        known: all.keys().map(|k| k.to_string()).collect(),
    })
}

pub fn component(name: &str) -> Result<&'static dyn ComponentKind> {
    let all = components()?;
    all.get(name).copied().ok_or_else(|| Error::UnknownName {
        what: "component kind",
        name: name.to_string(),
        known: all.keys().map(|k| k.to_string()).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_is_sorted_and_rejects_duplicates() {
        let m = index("thing", [("b", 1), ("a", 2)]).unwrap();
        assert_eq!(m.keys().copied().collect::<Vec<_>>(), ["a", "b"]);
        let err = index("thing", [("a", 1), ("a", 2)]).unwrap_err().to_string();
        assert!(err.contains("thing `a` is registered twice"), "{err}");
    }

    #[test]
    fn unknown_component_lists_known_ones() {
        let err = component("no-such-kind")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("unknown component kind `no-such-kind`"), "{err}");
        assert!(err.contains("mlp-experts") && err.contains("softmax-gate"), "{err}");
    }
}
