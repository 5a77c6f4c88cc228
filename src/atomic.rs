//! Local outputs published by rename, shared by model files and every pipelines output.
//!
//! An output is written under a hidden temporary sibling and renamed over its target
//! when complete, so a reader never sees a partial file. Three things make that safe
//! for a nightly job:
//! - the target is resolved through symbolic links first, so `--output link` writes
//!   the file the link names and the link survives (a rename onto the link itself
//!   would replace it);
//! - a target that exists and is not a regular file (a FIFO, a device such as
//!   `/dev/stdout`, a directory, a socket) is refused: renaming over it would destroy
//!   it, and writing into it is not atomic;
//! - each writer holds an exclusive lock on its temporary file while it lives, so the
//!   next run for the same target removes the temporaries of runs that died
//!   (`kill -9`, power loss) and leaves those of live writers alone.

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Marker between the target's name and the writer's process id.
const TMP_MARK: &str = ".tmp-";

/// Symbolic links followed before giving up (Linux's own limit).
const MAX_LINKS: usize = 40;

/// An output being written under its temporary sibling name; see the module docs.
/// [`Temp::commit`] renames it into place. Dropped uncommitted (an error, a panic,
/// Ctrl-C unwinding), it removes the temporary file, so a reader never sees a partial
/// output and a rerun starts clean. Every local output goes through it.
pub struct Temp {
    /// Where the rename lands: the target with its symbolic links resolved.
    target: PathBuf,
    /// The temporary file's path.
    tmp: PathBuf,
    committed: bool,
}

/// Resolves `target` through symbolic links (dangling ones included: the file the
/// link names is created) and refuses an existing target that is not a regular file.
pub fn resolve_target(target: &Path) -> Result<PathBuf> {
    // `stat` follows the links the kernel follows, /proc's magic ones included
    // (`/dev/stdout` → `/proc/self/fd/1` → a pipe or terminal), so what the chain ends
    // in is judged before the chain is walked by name.
    if let Ok(meta) = std::fs::metadata(target)
        && !meta.is_file()
    {
        return Err(not_regular(target, target, &meta));
    }
    let mut path = target.to_path_buf();
    for _ in 0..MAX_LINKS {
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(path),
            Err(source) => {
                return Err(Error::Io {
                    context: format!("inspecting output {}", path.display()),
                    source,
                });
            }
        };
        let kind = meta.file_type();
        if kind.is_symlink() {
            let next = std::fs::read_link(&path).map_err(|source| Error::Io {
                context: format!("reading the symbolic link {}", path.display()),
                source,
            })?;
            path = match path.parent() {
                Some(dir) if next.is_relative() => dir.join(next),
                _ => next,
            };
            continue;
        }
        if kind.is_file() {
            return Ok(path);
        }
        return Err(not_regular(target, &path, &meta));
    }
    Err(Error::Output(format!(
        "{}: more than {MAX_LINKS} levels of symbolic links",
        target.display()
    )))
}

fn not_regular(target: &Path, path: &Path, meta: &std::fs::Metadata) -> Error {
    Error::Output(format!(
        "{} is {}, not a regular file: an output is written to a temporary file and \
         renamed into place, which would replace it. Name a regular file, or `-` where \
         the command streams to standard output",
        if path == target {
            target.display().to_string()
        } else {
            format!("{} (via {})", path.display(), target.display())
        },
        special_kind(meta),
    ))
}

fn special_kind(meta: &std::fs::Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_dir() {
        return "a directory";
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_fifo() {
            return "a FIFO";
        }
        if t.is_char_device() || t.is_block_device() {
            return "a device";
        }
        if t.is_socket() {
            return "a socket";
        }
    }
    "a special file"
}

/// The hidden temporary name of `target`'s output in this process: same directory
/// (so the rename is atomic), unique per process.
fn temp_sibling(target: &Path) -> PathBuf {
    let (dir, name) = dir_and_name(target);
    dir.join(format!(".{name}{TMP_MARK}{}", std::process::id()))
}

fn dir_and_name(target: &Path) -> (&Path, String) {
    let dir = target
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    (dir, name)
}

impl Temp {
    /// Resolves `target` ([`resolve_target`]), whose directory must exist, removes
    /// stale temporaries of it left by writers that died, and creates this process's
    /// temporary, returned open for writing and exclusively locked until closed.
    pub fn create(target: &Path) -> Result<(Temp, File)> {
        let (dir, _) = dir_and_name(target);
        if !dir.is_dir() {
            return Err(Error::Output(format!(
                "output directory {} does not exist; create it first",
                dir.display()
            )));
        }
        let target = resolve_target(target)?;
        remove_stale(&target);
        let tmp = temp_sibling(&target);
        let file = File::create(&tmp).map_err(|source| Error::Io {
            context: format!("creating {}", tmp.display()),
            source,
        })?;
        // A filesystem without locks (some network mounts) still gets its output; its
        // temporaries are then only removed by the run that made them.
        let _ = file.try_lock();
        let t = Temp {
            target,
            tmp,
            committed: false,
        };
        Ok((t, file))
    }

    /// The temporary name, for messages about writing it.
    pub fn tmp(&self) -> &Path {
        &self.tmp
    }

    /// Syncs `file` (the one `create` returned, fully written) and renames it into
    /// place: on disk before the rename, so a crash never leaves the target's name on
    /// a partial file.
    pub fn commit(mut self, file: &File) -> Result<()> {
        file.sync_all().map_err(|source| Error::Io {
            context: format!("syncing {}", self.tmp.display()),
            source,
        })?;
        std::fs::rename(&self.tmp, &self.target).map_err(|source| Error::Io {
            context: format!(
                "renaming {} to {}",
                self.tmp.display(),
                self.target.display()
            ),
            source,
        })?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for Temp {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Removes `.NAME.tmp-PID` siblings of `target` that no live writer holds. A writer
/// holds its lock until it exits, however it exits, so an unlocked temporary belongs
/// to a run that is gone.
fn remove_stale(target: &Path) {
    let (dir, name) = dir_and_name(target);
    let prefix = format!(".{name}{TMP_MARK}");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let file_name = e.file_name();
        let Some(pid) = file_name.to_str().and_then(|n| n.strip_prefix(&prefix)) else {
            continue;
        };
        if pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(f) = File::options().write(true).open(e.path()) else {
            continue;
        };
        if f.try_lock().is_ok() {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_temporaries_go_and_live_ones_stay() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out.parquet");
        let stale = dir.path().join(".out.parquet.tmp-1");
        std::fs::write(&stale, b"partial").unwrap();
        let live = dir.path().join(".out.parquet.tmp-2");
        let held = File::create(&live).unwrap();
        held.lock().unwrap();
        let other = dir.path().join(".other.parquet.tmp-3");
        std::fs::write(&other, b"x").unwrap();
        let (t, _file) = Temp::create(&target).unwrap();
        assert!(!stale.exists(), "a temporary nobody holds is removed");
        assert!(live.exists(), "a locked temporary belongs to a live writer");
        assert!(other.exists(), "another output's temporary is not ours");
        assert!(t.tmp().exists());
    }

    #[cfg(unix)]
    #[test]
    fn links_are_followed_and_special_files_refused() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real.parquet");
        std::fs::write(&real, b"old").unwrap();
        let link = dir.path().join("link.parquet");
        std::os::unix::fs::symlink("real.parquet", &link).unwrap();
        assert_eq!(resolve_target(&link).unwrap(), real);
        let dangling = dir.path().join("dangling.parquet");
        std::os::unix::fs::symlink("new.parquet", &dangling).unwrap();
        assert_eq!(
            resolve_target(&dangling).unwrap(),
            dir.path().join("new.parquet")
        );
        let err = resolve_target(dir.path()).unwrap_err().to_string();
        assert!(err.contains("is a directory, not a regular file"), "{err}");
        let err = resolve_target(Path::new("/dev/null"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("a device"), "{err}");
    }
}
