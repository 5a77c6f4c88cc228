//! One drift run per output location at a time.
//!
//! A run reads the state, processes the partitions it does not list and writes it
//! back after each one; two runs on one output would each miss the other's
//! partitions (the last writer wins) and alert twice. So a run holds `_lock` in the
//! output location from before it reads the state until it ends:
//! - on disk, an exclusive `flock` on the file, which the kernel releases however the
//!   process ends, so a crash never leaves a stale lock;
//! - on an object store, an object created only if absent (`If-None-Match: *` on S3,
//!   the same precondition on Azure and GCS), deleted when the run ends. While the
//!   run lives, a heartbeat rewrites it every quarter of `--lock-stale-after`, each
//!   write conditional on the last (`If-Match` its ETag). A run killed with `kill -9`
//!   stops beating: a waiting run that sees the same ETag for `--lock-stale-after`
//!   (measured on its own clock, so the store's and the machines' clocks never meet)
//!   takes the lock over with a write conditional on that ETag, so of several
//!   waiters exactly one wins. A holder whose heartbeat finds the lock taken over
//!   (it stalled longer than that) stops before its next partition. A store that
//!   cannot create conditionally is refused: there is no way to exclude a second run
//!   there.
//!
//! A second run waits for the lock up to `--lock-wait`, then exits naming the holder.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};

use crate::error::{Error, Result};
use crate::store::{Location, block_on};

/// The lock's name in the output location (beside `_state.json`).
pub const LOCK_FILE: &str = "_lock";

/// How often a waiting run tries again.
const POLL: Duration = Duration::from_millis(200);

/// [`RunLock::acquire`]'s default for how long an object-store lock may go without a
/// heartbeat before a waiting run takes it over.
pub const DEFAULT_STALE_AFTER: Duration = Duration::from_secs(120);

/// Held while a run lives; dropping it releases the lock.
pub struct RunLock {
    held: Held,
}

enum Held {
    Local(File),
    Store(Box<Heartbeat>),
}

/// An object-store lock this run holds, and the thread that keeps it fresh.
struct Heartbeat {
    loc: Location,
    stop: Arc<(Mutex<bool>, Condvar)>,
    lost: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// What a waiting run last saw of someone else's lock object, and since when.
struct Seen {
    version: UpdateVersion,
    since: Instant,
}

impl RunLock {
    /// Takes the lock at `loc`, waiting up to `wait` for a holder to finish.
    /// `holder` describes this run (process, host, start) for the message another
    /// run prints.
    pub fn acquire(loc: &Location, wait: Duration, holder: &str) -> Result<RunLock> {
        Self::acquire_with(loc, wait, DEFAULT_STALE_AFTER, holder)
    }

    /// [`RunLock::acquire`], taking over an object-store lock whose heartbeat has
    /// not changed it for `stale_after`.
    pub fn acquire_with(
        loc: &Location,
        wait: Duration,
        stale_after: Duration,
        holder: &str,
    ) -> Result<RunLock> {
        let start = Instant::now();
        let mut told = false;
        let mut seen: Option<Seen> = None;
        loop {
            let taken = match &loc.local {
                Some(path) => try_local(path, holder)?.map(Held::Local),
                None => match try_store(loc, holder)? {
                    Some(v) => Some(Held::Store(Box::new(Heartbeat::start(
                        loc,
                        holder,
                        v,
                        stale_after,
                    )))),
                    None => take_over_stale(loc, holder, stale_after, &mut seen)?.map(|v| {
                        Held::Store(Box::new(Heartbeat::start(loc, holder, v, stale_after)))
                    }),
                },
            };
            if let Some(held) = taken {
                if seen.is_some() {
                    eprintln!(
                        "took over {}: its holder wrote no heartbeat for {}",
                        loc.display,
                        humantime::format_duration(stale_after)
                    );
                }
                return Ok(RunLock { held });
            }
            let other = current_holder(loc);
            if start.elapsed() >= wait {
                let hint = if loc.is_local() {
                    "it is released when that run ends".to_string()
                } else {
                    format!(
                        "it is deleted when that run ends, and taken over once it has had no heartbeat for {} (--lock-stale-after)",
                        humantime::format_duration(stale_after)
                    )
                };
                return Err(Error::Locked {
                    output: loc.display.clone(),
                    holder: other,
                    hint,
                });
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

impl RunLock {
    /// `Err` once another run has taken this lock over (this run's heartbeat stalled
    /// longer than the stale limit): the run must stop before committing more.
    pub fn check(&self) -> Result<()> {
        match &self.held {
            Held::Store(h) if h.lost.load(Ordering::SeqCst) => Err(Error::LockLost {
                output: h.loc.display.clone(),
            }),
            _ => Ok(()),
        }
    }
}

impl Heartbeat {
    fn start(loc: &Location, holder: &str, version: UpdateVersion, stale_after: Duration) -> Self {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let lost = Arc::new(AtomicBool::new(false));
        let every = (stale_after / 4).max(Duration::from_millis(50));
        let (l, s, gone, who) = (loc.clone(), stop.clone(), lost.clone(), holder.to_string());
        let thread = std::thread::Builder::new()
            .name("reclag-lock-heartbeat".into())
            .spawn(move || {
                let mut version = version;
                for beat in 1u64.. {
                    let (m, cv) = &*s;
                    let stopped = cv
                        .wait_timeout_while(m.lock().expect("heartbeat lock"), every, |st| !*st)
                        .expect("heartbeat lock")
                        .0;
                    if *stopped {
                        return;
                    }
                    drop(stopped);
                    let text = format!("{who}\nheartbeat {beat}");
                    match update(&l, &text, version.clone()) {
                        Ok(v) => version = v,
                        Err(object_store::Error::Precondition { .. })
                        | Err(object_store::Error::NotFound { .. }) => {
                            gone.store(true, Ordering::SeqCst);
                            return;
                        }
                        // A transient failure: the next beat tries again; a waiter
                        // takes over only after several are missed.
                        Err(_) => {}
                    }
                }
            })
            .ok();
        Heartbeat {
            loc: loc.clone(),
            stop,
            lost,
            thread,
        }
    }
}

/// Rewrites the lock object if it is still at `version`; its new version.
fn update(
    loc: &Location,
    text: &str,
    version: UpdateVersion,
) -> std::result::Result<UpdateVersion, object_store::Error> {
    let opts = PutOptions {
        mode: PutMode::Update(version),
        ..Default::default()
    };
    let payload = PutPayload::from(Bytes::from(text.to_string()));
    block_on(loc.store.put_opts(&loc.key, payload, opts)).map(|r| UpdateVersion {
        e_tag: r.e_tag,
        version: r.version,
    })
}

/// Takes over the lock object if it has not changed for `stale_after` since this
/// run first saw it (`seen` carries that across polls): `Some` version when taken.
fn take_over_stale(
    loc: &Location,
    holder: &str,
    stale_after: Duration,
    seen: &mut Option<Seen>,
) -> Result<Option<UpdateVersion>> {
    let meta = match block_on(loc.store.head(&loc.key)) {
        Ok(m) => m,
        // Released between our create and this look: the next poll creates it.
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(loc.error("reading the lock", e)),
    };
    let now = UpdateVersion {
        e_tag: meta.e_tag,
        version: meta.version,
    };
    if now.e_tag.is_none() && now.version.is_none() {
        // Nothing to condition a takeover on: never take over.
        return Ok(None);
    }
    match seen {
        Some(s) if s.version == now => {
            if s.since.elapsed() < stale_after {
                return Ok(None);
            }
        }
        _ => {
            *seen = Some(Seen {
                version: now,
                since: Instant::now(),
            });
            return Ok(None);
        }
    }
    let v = seen.as_ref().expect("set above").version.clone();
    match update(loc, holder, v) {
        Ok(v) => Ok(Some(v)),
        // Someone else changed it first: a live holder's heartbeat, or another waiter.
        Err(object_store::Error::Precondition { .. })
        | Err(object_store::Error::NotFound { .. }) => {
            *seen = None;
            Ok(None)
        }
        Err(e) => Err(loc.error("taking over the lock", e)),
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        match &mut self.held {
            Held::Store(h) => {
                {
                    let (m, cv) = &*h.stop;
                    *m.lock().expect("heartbeat lock") = true;
                    cv.notify_all();
                }
                if let Some(t) = h.thread.take() {
                    let _ = t.join();
                }
                // A lock taken over is the other run's now.
                if !h.lost.load(Ordering::SeqCst) {
                    let _ = block_on(h.loc.store.delete(&h.loc.key));
                }
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
            return Err(Error::Unlockable {
                output: path.display().to_string(),
                reason: format!(
                    "cannot lock the drift output ({e}); concurrent runs could not be excluded on this filesystem"
                ),
            });
        }
    }
    f.set_len(0)
        .and_then(|()| f.rewind())
        .and_then(|()| f.write_all(holder.as_bytes()))
        .map_err(io(format!("writing {}", path.display())))?;
    Ok(Some(f))
}

/// The version of the lock object this run created, `None` when it exists.
fn try_store(loc: &Location, holder: &str) -> Result<Option<UpdateVersion>> {
    let opts = PutOptions {
        mode: PutMode::Create,
        ..Default::default()
    };
    let payload = PutPayload::from(Bytes::from(holder.to_string()));
    match block_on(loc.store.put_opts(&loc.key, payload, opts)) {
        Ok(r) => Ok(Some(UpdateVersion {
            e_tag: r.e_tag,
            version: r.version,
        })),
        Err(object_store::Error::AlreadyExists { .. })
        | Err(object_store::Error::Precondition { .. }) => Ok(None),
        Err(object_store::Error::NotImplemented { .. })
        | Err(object_store::Error::NotSupported { .. }) => Err(Error::Unlockable {
            output: loc.display.clone(),
            reason: "this store cannot create an object only if it is absent, so a second drift run on the output could not be excluded; \
                     use a store with conditional writes (S3, GCS, Azure Blob) or a local output"
                .into(),
        }),
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
    // The first line names the holder; a heartbeat count may follow.
    let text = text.lines().next().unwrap_or("").trim();
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
