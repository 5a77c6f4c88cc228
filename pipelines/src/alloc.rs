//! Allocator settings for the `reclag` binary (never applied by the library: a host
//! process that embeds the crates keeps its own).
//!
//! Every batch allocates and frees the same large buffers: decompressed pages (about
//! 1 MiB each), per-batch output columns, encoder buffers. glibc serves blocks above its
//! mmap threshold with a fresh `mmap` and hands them back on `free`, and trims the
//! heap top above its trim threshold, so each batch faulted its buffers in again: the
//! kernel zeroing pages was a fifth of `reclag score --decode-only`'s time (226k page
//! faults on the 1M × 512 fixture, 102k with these settings, the rest being the first
//! touch of the row-group pool). Freed blocks now stay in the heap for the next batch,
//! so peak RSS is the working set's peak, which the pipeline already bounds.

/// Blocks below this are served from the heap and reused; larger ones (a whole
/// general-reader row group, say) still come from `mmap` and go back on free.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 64 << 20;

/// Freed heap top kept before returning memory to the kernel.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TRIM_THRESHOLD: libc::c_int = 512 << 20;

/// Applies the settings; call first thing in `main`, before any thread starts.
pub fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; it is called before any other
    // thread exists, and a rejected setting (return 0) leaves glibc's default.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
    }
}
