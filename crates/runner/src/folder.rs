//! A run folder is written by one run at a time, and a run starts clean of
//! what a killed run left half-done.
//!
//! - **Lock.** A run holds an exclusive advisory lock (`flock` on Unix,
//!   `LockFileEx` on Windows, through `fs4`) on `run.lock` in its folder for
//!   its whole life; a second run on the same folder is refused at once with
//!   an error naming the holder (the pid, host and start time written in the
//!   lock file). The operating system drops the lock when its process ends,
//!   however it ends (`kill -9` included), so a lock file left by a dead run
//!   is simply taken over: no pid liveness guess, which pid reuse and other
//!   hosts sharing the folder would make unreliable. The lock file is
//!   removed when the run ends (while still locked, see [`FolderLock::acquire`]).
//! - **Temporary files.** `mtrec_core::atomic` writes `<name>.tmp<pid>`
//!   beside its target and renames it at the end; inside it, the
//!   safetensors crate (0.8, `serialize_to_file`) writes through its own
//!   `tempfile` temporary, `.tmp` and 6 random letters or digits, in the
//!   same folder. A run killed mid-save leaves either behind. Holding the
//!   lock, a starting run removes both kinds from the folder and its
//!   `checkpoint/` ([`remove_stale_temporaries`]).
//! - **Permissions.** Files are created with `0o666` less the umask, except
//!   those of the safetensors crate's temporaries (`0o600`, which its rename
//!   keeps: weights and checkpoints). A run gives every file of its folder
//!   the mode of its `config.toml` at its start and at its end
//!   ([`unify_permissions`]), so a folder reads the same for all its files
//!   (make runs private with `umask 077`).

use std::fs::{self, File, OpenOptions};
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};

use crate::error::{io, Result, RunError};

/// The lock file of a run folder.
pub const LOCK_FILE: &str = "run.lock";

/// The exclusive hold of a run folder by this process; released (and the
/// lock file removed) on drop.
#[derive(Debug)]
pub struct FolderLock {
    dir: PathBuf,
    /// Held open, never read: closing it releases the lock.
    _file: File,
    /// The folder did not exist before: removed on drop if still empty (a run
    /// refused before writing anything leaves no folder behind).
    created: bool,
}

impl FolderLock {
    /// Creates `dir` if needed and locks it for this process, or says which
    /// run holds it.
    pub fn acquire(dir: &Path) -> Result<Self> {
        let created = !dir.exists();
        fs::create_dir_all(dir).map_err(io(dir))?;
        let path = dir.join(LOCK_FILE);
        loop {
            // Not truncated before the lock is ours: the holder's identity
            // is what a refused run reports.
            let mut file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(io(&path))?;
            // Named in full: std's `File::try_lock` (Rust 1.89+) would
            // shadow the trait's method.
            match fs4::FileExt::try_lock(&file) {
                Ok(()) => {}
                Err(fs4::TryLockError::WouldBlock) => {
                    let mut holder = String::new();
                    let _ = file.read_to_string(&mut holder);
                    return Err(RunError::FolderInUse {
                        dir: dir.to_path_buf(),
                        holder: describe_holder(&holder),
                    });
                }
                Err(fs4::TryLockError::Error(e)) => return Err(io(&path)(e)),
            }
            // The previous holder removes the lock file at its end, while it
            // still holds the lock: if that happened between our `open` and
            // our lock, we hold a file no other run will open. Start over
            // with the file now at the path.
            if !same_file(&file, &path) {
                continue;
            }
            file.set_len(0).map_err(io(&path))?;
            let stamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
            let text = format!("pid {}\nhost {}\nstarted {stamp}\n", std::process::id(), host_name());
            file.write_all(text.as_bytes()).map_err(io(&path))?;
            file.flush().map_err(io(&path))?;
            return Ok(Self {
                dir: dir.to_path_buf(),
                _file: file,
                created,
            });
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for FolderLock {
    fn drop(&mut self) {
        // Removed before the lock is released (the file closes after this
        // body), so that a run that opened this file meanwhile sees it gone
        // and opens a fresh one.
        let _ = fs::remove_file(self.dir.join(LOCK_FILE));
        if self.created {
            // Fails, as intended, unless the folder is empty.
            let _ = fs::remove_dir(&self.dir);
        }
    }
}

/// The holder as written in its lock file, on one line.
fn describe_holder(text: &str) -> String {
    let mut fields = Vec::new();
    for line in text.lines() {
        if let Some((key, value)) = line.split_once(' ') {
            match key {
                "pid" => fields.push(format!("pid {value}")),
                "host" => fields.push(format!("on {value}")),
                "started" => fields.push(format!("started {value}")),
                _ => {}
            }
        }
    }
    if fields.is_empty() {
        "a process that has not written its name yet".into()
    } else {
        fields.join(" ")
    }
}

/// This machine's name, for the lock file (informative only).
fn host_name() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .find_map(|p| fs::read_to_string(p).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .or_else(|| std::env::var("COMPUTERNAME").ok())
        .unwrap_or_else(|| "an unknown host".into())
}

/// Whether `file` is still the file at `path`.
#[cfg(unix)]
fn same_file(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    match (file.metadata(), fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// Elsewhere an open file cannot be removed, so the race does not arise.
#[cfg(not(unix))]
fn same_file(_file: &File, _path: &Path) -> bool {
    true
}

/// The writer's pid if `name` is a temporary name of `mtrec_core::atomic`
/// (`<name>.tmp<pid>`). The pattern is the core's; a test writes through
/// the core's writer and checks that this recognises its temporary name.
pub fn atomic_temporary_pid(name: &str) -> Option<u32> {
    let (base, pid) = name.rsplit_once(".tmp")?;
    if base.is_empty() || pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    pid.parse().ok()
}

/// Whether `name` is a temporary file of the `tempfile` crate as the
/// safetensors crate creates it: `.tmp` and 6 ASCII letters or digits.
pub fn is_tempfile_name(name: &str) -> bool {
    name.strip_prefix(".tmp")
        .is_some_and(|r| r.len() == 6 && r.bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// Whether process `pid` is known to be alive. Only Linux's `/proc` tells
/// cheaply; elsewhere every writer counts as gone (the folder lock keeps
/// other runs out in any case).
fn alive(pid: u32) -> bool {
    Path::new("/proc/self").exists() && Path::new("/proc").join(pid.to_string()).exists()
}

/// Removes the temporary files that killed saves left in the run folder
/// `dir` and its `checkpoint/` (call it holding the folder's lock); returns
/// them. A temporary file of a process still alive is left alone (a
/// `predict` writing its output into the folder, say).
pub fn remove_stale_temporaries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    for folder in [dir.to_path_buf(), dir.join(crate::run::CHECKPOINT_DIR)] {
        let entries = match fs::read_dir(&folder) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io(&folder)(e)),
        };
        for entry in entries {
            let entry = entry.map_err(io(&folder))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let stale = match atomic_temporary_pid(name) {
                Some(pid) => pid != std::process::id() && !alive(pid),
                // No pid to ask: under the lock no other run saves here.
                None => is_tempfile_name(name),
            };
            if !stale || !entry.file_type().is_ok_and(|t| t.is_file()) {
                continue;
            }
            let path = entry.path();
            fs::remove_file(&path).map_err(io(&path))?;
            removed.push(path);
        }
    }
    removed.sort();
    Ok(removed)
}

/// Gives every file of run folder `dir` and its `checkpoint/` the mode of
/// its `config.toml` (created as any file of this process is); nothing
/// happens before that file exists. Unix only (elsewhere files carry no
/// mode bits to differ).
#[cfg(unix)]
pub fn unify_permissions(dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let reference = dir.join(crate::run::CONFIG_FILE);
    let Ok(meta) = fs::metadata(&reference) else {
        return Ok(());
    };
    let mode = meta.permissions().mode() & 0o7777;
    for folder in [dir.to_path_buf(), dir.join(crate::run::CHECKPOINT_DIR)] {
        let Ok(entries) = fs::read_dir(&folder) else { continue };
        for entry in entries.flatten() {
            let Ok(m) = entry.metadata() else { continue };
            if m.is_file() && m.permissions().mode() & 0o7777 != mode {
                let path = entry.path();
                fs::set_permissions(&path, fs::Permissions::from_mode(mode)).map_err(io(&path))?;
            }
        }
    }
    Ok(())
}

#[cfg(not(unix))]
pub fn unify_permissions(_dir: &Path) -> Result<()> {
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("mtrec-folder-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn recognises_the_core_writers_temporary_name() {
        let dir = scratch("name");
        fs::create_dir_all(&dir).unwrap();
        let mut seen = None;
        mtrec_core::atomic::write_with(&dir.join("model.safetensors"), |tmp| {
            seen = tmp.file_name().map(|n| n.to_string_lossy().into_owned());
            fs::write(tmp, b"x").map_err(|source| mtrec_core::Error::Io {
                path: tmp.to_path_buf(),
                source,
            })
        })
        .unwrap();
        let seen = seen.unwrap();
        assert_eq!(atomic_temporary_pid(&seen), Some(std::process::id()), "{seen}");
        for not in [
            "model.safetensors",
            ".tmp12",
            "a.tmp",
            "a.tmp12x",
            "a.tmpx12",
            "history.jsonl",
        ] {
            assert_eq!(atomic_temporary_pid(not), None, "{not}");
        }
        assert!(is_tempfile_name(".tmpZ9y8X7") && !is_tempfile_name(".tmp12345") && !is_tempfile_name("a.tmp123456"));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_second_lock_is_refused_naming_the_holder_then_taken_after_release() {
        let dir = scratch("lock");
        let first = FolderLock::acquire(&dir).unwrap();
        let text = fs::read_to_string(dir.join(LOCK_FILE)).unwrap();
        assert!(text.starts_with(&format!("pid {}\n", std::process::id())), "{text}");
        // flock locks belong to the open file: a second open in this process
        // conflicts as another process's would.
        let err = FolderLock::acquire(&dir).unwrap_err().to_string();
        assert!(err.contains("in use by another run"), "{err}");
        assert!(err.contains(&format!("pid {}", std::process::id())), "{err}");
        // The refusal left the holder's lock file as it was.
        assert_eq!(fs::read_to_string(dir.join(LOCK_FILE)).unwrap(), text);
        drop(first);
        // Created by the lock and left empty: removed with it.
        assert!(!dir.exists());
        let again = FolderLock::acquire(&dir).unwrap();
        fs::write(dir.join("config.toml"), "x").unwrap();
        drop(again);
        assert!(dir.join("config.toml").exists() && !dir.join(LOCK_FILE).exists());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_stale_lock_file_without_a_lock_is_taken_over() {
        let dir = scratch("stale");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(LOCK_FILE), "pid 999999999\nhost elsewhere\nstarted then\n").unwrap();
        let lock = FolderLock::acquire(&dir).unwrap();
        let text = fs::read_to_string(dir.join(LOCK_FILE)).unwrap();
        assert!(text.starts_with(&format!("pid {}\n", std::process::id())), "{text}");
        drop(lock);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn removes_dead_writers_temporaries_only() {
        let dir = scratch("temps");
        fs::create_dir_all(dir.join("checkpoint")).unwrap();
        // Above Linux's largest pid: no such process.
        let dead = [
            dir.join("model.safetensors.tmp999999999"),
            dir.join("checkpoint")
                .join("epoch-0003.weights.safetensors.tmp999999998"),
            // The safetensors crate's own temporary (tempfile).
            dir.join("checkpoint").join(".tmpA1b2C3"),
        ];
        let keep = [
            dir.join("model.safetensors"),
            dir.join("notes.tmp"),
            dir.join(".tmp-notes"),
            dir.join(".tmpABCDEFG"),
            dir.join("checkpoint").join("state.json"),
            // A live process's (this one's parent is alive while it runs).
            dir.join(format!("scores.csv.tmp{}", std::os::unix::process::parent_id())),
        ];
        for p in dead.iter().chain(&keep) {
            fs::write(p, b"x").unwrap();
        }
        let removed = remove_stale_temporaries(&dir).unwrap();
        let mut want = dead.to_vec();
        want.sort();
        assert_eq!(removed, want);
        assert!(dead.iter().all(|p| !p.exists()));
        assert!(keep.iter().all(|p| p.exists()));
        fs::remove_dir_all(&dir).unwrap();
    }
}
