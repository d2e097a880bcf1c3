//! Atomic file writes: nothing written is lost or half-written.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(format!(".tmp{}", std::process::id()));
    path.with_file_name(name)
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Lets `write` fill a temporary file beside `path`, syncs it, then renames it
/// over `path`: a reader sees the old file or the new one, never half of one.
pub fn write_with(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let tmp = tmp_path(path);
    let result = write(&tmp).and_then(|()| {
        fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(io(&tmp))?;
        fs::rename(&tmp, path).map_err(io(path))
    });
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Writes `bytes` to `path` atomically.
pub fn write_bytes(path: &Path, bytes: &[u8]) -> Result<()> {
    write_with(path, |tmp| {
        let mut f = fs::File::create(tmp).map_err(io(tmp))?;
        f.write_all(bytes).map_err(io(tmp))
    })
}
