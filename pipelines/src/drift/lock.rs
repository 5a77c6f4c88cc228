//! One drift run per output location at a time.
//!
//! A run reads the state, processes the partitions it does not list and writes it
//! back after each one; two runs on one output would each miss the other's
//! partitions (the last writer wins) and alert twice. So a run holds `_lock` in the
//! output location from before it reads the state until it ends:
//! - on disk, an exclusive `flock` on the file, which the kernel releases however the
//!   process ends, so a crash never leaves a stale lock;
//! - on an object store, an object created only if absent (`If-None-Match: *` on S3,
//!   the same precondition on Azure and GCS), deleted when the run ends. A run killed
//!   with `kill -9` leaves it behind; the message that names its holder says to
//!   delete it once that run is known to be gone. A store that cannot create
//!   conditionally is refused: there is no way to exclude a second run there.
//!
//! A second run waits for the lock up to `--lock-wait`, then exits naming the holder.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::time::{Duration, Instant};

use bytes::Bytes;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

use crate::error::{Error, Result};
use crate::store::{Location, block_on};

/// The lock's name in the output location (beside `_state.json`).
pub const LOCK_FILE: &str = "_lock";

/// How often a waiting run tries again.
const POLL: Duration = Duration::from_millis(200);

/// Held while a run lives; dropping it releases the lock.
pub struct RunLock {
    held: Held,
}

enum Held {
    Local(File),
    Store(Location),
}

impl RunLock {
    /// Takes the lock at `loc`, waiting up to `wait` for a holder to finish.
    /// `holder` describes this run (process, host, start) for the message another
    /// run prints.
    pub fn acquire(loc: &Location, wait: Duration, holder: &str) -> Result<RunLock> {
        let start = Instant::now();
        let mut told = false;
        loop {
            let taken = match &loc.local {
                Some(path) => try_local(path, holder)?.map(Held::Local),
                None => try_store(loc, holder)?.then(|| Held::Store(loc.clone())),
            };
            if let Some(held) = taken {
                return Ok(RunLock { held });
            }
            let other = current_holder(loc);
            if start.elapsed() >= wait {
                let hint = if loc.is_local() {
                    "it is released when that run ends"
                } else {
                    "it is deleted when that run ends; if that run was killed, delete the lock object"
                };
                return Err(Error::Usage(format!(
                    "{}: another drift run holds this output ({other}); {hint}. \
                     Wait for it, or pass --lock-wait (e.g. 30m) to queue behind it",
                    loc.display
                )));
            }
            if !told {
                eprintln!(
                    "waiting for {} (held by {other}; --lock-wait {})",
                    loc.display,
                    humantime::format_duration(wait)
                );
                told = true;
            }
            std::thread::sleep(POLL.min(wait.saturating_sub(start.elapsed())));
        }
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        match &self.held {
            Held::Store(loc) => {
                let _ = block_on(loc.store.delete(&loc.key));
            }
            // The file stays (deleting a locked file lets a waiter lock the removed
            // inode while a third run creates a new one); emptied, so a finished
            // output's bytes do not depend on which process ran it. Closing it
            // releases the lock.
            Held::Local(f) => {
                let _ = f.set_len(0);
            }
        }
    }
}

fn io(context: String) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Io { context, source }
}

/// `Some(file)` holding the lock, `None` when another process holds it.
fn try_local(path: &std::path::Path, holder: &str) -> Result<Option<File>> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
    }
    let mut f = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(io(format!("opening {}", path.display())))?;
    match f.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => return Ok(None),
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(Error::Usage(format!(
                "{}: cannot lock the drift output ({e}); concurrent runs could not be excluded on this filesystem",
                path.display()
            )));
        }
    }
    f.set_len(0)
        .and_then(|()| f.rewind())
        .and_then(|()| f.write_all(holder.as_bytes()))
        .map_err(io(format!("writing {}", path.display())))?;
    Ok(Some(f))
}

/// `true` when this run created the lock object, `false` when it exists.
fn try_store(loc: &Location, holder: &str) -> Result<bool> {
    let opts = PutOptions {
        mode: PutMode::Create,
        ..Default::default()
    };
    let payload = PutPayload::from(Bytes::from(holder.to_string()));
    match block_on(loc.store.put_opts(&loc.key, payload, opts)) {
        Ok(_) => Ok(true),
        Err(object_store::Error::AlreadyExists { .. })
        | Err(object_store::Error::Precondition { .. }) => Ok(false),
        Err(object_store::Error::NotImplemented { .. })
        | Err(object_store::Error::NotSupported { .. }) => Err(Error::Usage(format!(
            "{}: this store cannot create an object only if it is absent, so a second drift run on the output could not be excluded; \
             use a store with conditional writes (S3, GCS, Azure Blob) or a local output",
            loc.display
        ))),
        Err(e) => Err(loc.error("locking", e)),
    }
}

/// Who holds the lock, as its holder wrote it.
fn current_holder(loc: &Location) -> String {
    let text = match &loc.local {
        Some(p) => {
            let mut s = String::new();
            File::open(p)
                .and_then(|mut f| f.read_to_string(&mut s))
                .ok();
            s
        }
        None => loc
            .get()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default(),
    };
    let text = text.trim();
    if text.is_empty() {
        "a run that has not said who it is yet".into()
    } else {
        text.to_string()
    }
}

/// This process, for the lock's contents: `pid 123 on host, since 2026-12-04T05:00:00Z`.
pub fn this_run(started_unix: u64) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "this host".into());
    let since = humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + Duration::from_secs(started_unix),
    );
    format!("pid {} on {host}, since {since}", std::process::id())
}
