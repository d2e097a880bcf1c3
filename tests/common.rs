//! Helpers shared by the integration tests.

use mtrec_core::TaskKind;
use mtrec_data::{Dataset, MmoeSynthetic};

/// The workspace root (configs/ lives there).
pub fn root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_default()
}

/// A small synthetic data set of the given kind.
pub fn synthetic(rows: usize, kind: TaskKind, seed: u64) -> Dataset {
    let g = MmoeSynthetic {
        rows,
        dim: 12,
        kind,
        seed,
        ..MmoeSynthetic::default()
    };
    match g.generate() {
        Ok(d) => d,
        Err(e) => panic!("generator failed: {e}"),
    }
}
