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

/// The folder of the real data sets: `MTREC_DATA_DIR`, else `../shared/data`
/// beside the workspace. `None` (the caller skips, saying so) when absent,
/// unless `MTREC_REQUIRE_DATA=1` (CI), which turns absence into a failure.
pub fn data_dir(what: &str) -> Option<std::path::PathBuf> {
    let dir = std::env::var_os("MTREC_DATA_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root().join("../shared/data"));
    if dir.is_dir() {
        return Some(dir);
    }
    if std::env::var("MTREC_REQUIRE_DATA").is_ok_and(|v| v == "1") {
        panic!("{what}: data folder {} missing and MTREC_REQUIRE_DATA=1", dir.display());
    }
    eprintln!(
        "SKIPPED {what}: no data folder at {} (set MTREC_DATA_DIR)",
        dir.display()
    );
    None
}

/// A built-in architecture with its default parameters, built for `data`
/// (sparse fields embedded in 4 dimensions).
pub fn build(arch: &str, data: &Dataset, seed: u64) -> mtrec_core::Model {
    mtrec_runner::link_builtin_plugins();
    let features = data.features(4);
    let env = mtrec_core::GraphEnv {
        input_width: features.width(),
        tasks: data.tasks.clone(),
        domains: data.domains.as_ref().map_or(0, |d| d.names.len()),
        features: features.clone(),
    };
    let graph = match mtrec_core::registry::architecture(arch).and_then(|a| a.expand(&toml::Table::new(), &env)) {
        Ok(g) => g,
        Err(e) => panic!("{arch}: {e}"),
    };
    match mtrec_core::Model::build(
        &graph,
        &features,
        &data.tasks,
        env.domains,
        seed,
        &candle_core::Device::Cpu,
    ) {
        Ok(m) => m,
        Err(e) => panic!("{arch}: {e}"),
    }
}

/// Whether `path` is a non-empty PNG file (its 8-byte signature, then more).
pub fn is_png(path: &std::path::Path) -> bool {
    const SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a];
    std::fs::read(path).is_ok_and(|b| b.len() > SIGNATURE.len() && b.starts_with(&SIGNATURE))
}

/// A small CSV data set with signal in a category and a number: columns
/// `user,city,age,click,spend` (`click` binary, `spend` a regression target);
/// with `unseen`, every tenth row's user is one no training file holds.
pub fn write_csv(path: &std::path::Path, rows: usize, seed: u64, unseen: bool) {
    use std::fmt::Write as _;
    let mut s = String::from("user,city,age,click,spend\n");
    let mut x = seed;
    for r in 0..rows {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let user = (x >> 33) % 20;
        let city = ["paris", "lyon", "nice"][((x >> 40) % 3) as usize];
        let age = 18 + (x >> 45) % 60;
        let noise = ((x >> 20) % 100) as f64 / 100.0;
        let score = (user as f64 / 20.0) + (age as f64 - 48.0) / 60.0 + noise - 0.5;
        let click = u8::from(score > 0.0);
        let user = if unseen && r % 10 == 0 {
            "new-user".to_string()
        } else {
            format!("u{user}")
        };
        let _ = writeln!(s, "{user},{city},{age},{click},{:.3}", 2.0 * score + 1.0);
    }
    if let Err(e) = std::fs::write(path, s) {
        panic!("{}: {e}", path.display());
    }
}
