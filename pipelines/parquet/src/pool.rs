//! Row-group buffers, recycled, and the Arrow buffers that lease them.

use std::sync::Arc;

use arrow_buffer::ScalarBuffer;

/// Row-group buffers kept for reuse per row group in flight. Keeping a buffer never
/// raises peak memory (it was live a moment ago), so the bound is only a backstop: it
/// must cover every buffer in flight (being decoded, decoded ahead, queued, being
/// scored), or each row group frees one and faults a fresh one in, which `perf` showed
/// as a quarter of `reclag score` spent zeroing pages (8 kept for 2 in flight).
const KEPT_PER_ROW_GROUP: usize = 4;

/// Recycles row-group buffers. A fresh 128 MiB buffer per row group cost more in page
/// faults (the kernel zeroing new pages) than the copy into it: `perf` put a third of
/// decode time there. Arrow frees a buffer through its owner, which hands it back.
pub(crate) struct Pool {
    pub(crate) free: std::sync::Mutex<Vec<Vec<f32>>>,
    kept: usize,
}

impl Default for Pool {
    fn default() -> Self {
        Pool::for_in_flight(2)
    }
}

impl Pool {
    /// A pool for a reader with `in_flight` row groups decoding at once.
    pub(crate) fn for_in_flight(in_flight: usize) -> Self {
        Pool {
            free: Default::default(),
            kept: KEPT_PER_ROW_GROUP * in_flight.max(1),
        }
    }

    /// A free buffer of at least `cap` values, else a new one. A smaller free buffer
    /// (another list column's, say) is left for a request it fits: growing it would
    /// allocate fresh pages, the cost the pool exists to avoid.
    pub(crate) fn take(&self, cap: usize) -> Vec<f32> {
        let reused = self.free.lock().ok().and_then(|mut f| {
            let at = f.iter().position(|v| v.capacity() >= cap)?;
            Some(f.swap_remove(at))
        });
        match reused {
            Some(mut v) => {
                v.clear();
                v
            }
            None => {
                let mut v = Vec::with_capacity(cap);
                huge_pages(&mut v);
                v
            }
        }
    }
}

/// The owner of a pooled buffer while Arrow arrays use it.
struct Lease {
    vec: Vec<f32>,
    pool: Arc<Pool>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        let v = std::mem::take(&mut self.vec);
        if let Ok(mut f) = self.pool.free.lock()
            && f.len() < self.pool.kept
        {
            f.push(v);
        }
    }
}

pub(crate) fn leased(vec: Vec<f32>, pool: &Arc<Pool>) -> ScalarBuffer<f32> {
    let len = vec.len();
    let ptr = std::ptr::NonNull::new(vec.as_ptr() as *mut u8).expect("a Vec's pointer is non-null");
    let owner = Arc::new(Lease {
        vec,
        pool: pool.clone(),
    });
    // SAFETY: `ptr` points at `len` initialised f32s (4·len bytes, aligned for f32)
    // owned by `owner`'s Vec, whose heap allocation does not move when the Vec does
    // and is not touched again until the owner drops, after the last Buffer does.
    let buffer = unsafe { arrow_buffer::Buffer::from_custom_allocation(ptr, len * 4, owner) };
    ScalarBuffer::new(buffer, 0, len)
}

/// A column chunk's values in buffers of `per` values each (the last may be short).
pub(crate) struct Chunked {
    pub per: usize,
    pub parts: Vec<ScalarBuffer<f32>>,
}

impl Chunked {
    /// Values `from..from + len`: a view where they lie in one buffer (always, for
    /// batches cut at multiples of `per`), else a copy.
    pub(crate) fn range(&self, from: usize, len: usize) -> ScalarBuffer<f32> {
        let (c, off) = (from / self.per, from % self.per);
        if let Some(part) = self.parts.get(c)
            && off + len <= part.len()
        {
            return part.slice(off, len);
        }
        let mut v = Vec::with_capacity(len);
        let (mut at, end) = (from, from + len);
        while at < end {
            let (c, off) = (at / self.per, at % self.per);
            let Some(part) = self.parts.get(c) else { break };
            let take = (part.len() - off).min(end - at);
            v.extend_from_slice(&part[off..off + take]);
            at += take;
        }
        ScalarBuffer::from(v)
    }
}

/// Asks for transparent huge pages on a large, long-lived buffer: its first touch then
/// costs one fault per 2 MiB instead of one per 4 KiB. A hint only; ignored where THP
/// is off.
pub fn huge_pages<T>(buf: &mut Vec<T>) {
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        let bytes = buf.capacity() * std::mem::size_of::<T>();
        let start = buf.as_mut_ptr() as usize;
        let lo = start.next_multiple_of(HUGE);
        let hi = (start + bytes) / HUGE * HUGE;
        if hi > lo {
            // SAFETY: [lo, hi) lies inside the Vec's allocation; MADV_HUGEPAGE changes
            // how pages are backed, never their contents.
            unsafe {
                libc::madvise(lo as *mut libc::c_void, hi - lo, libc::MADV_HUGEPAGE);
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = buf;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pool hands out a free buffer only where it holds the request without
    /// growing (a new allocation in disguise), and the buffer it hands out is the one
    /// that came back, not a copy.
    #[test]
    fn pool_reuses_only_buffers_that_fit() {
        let pool: Arc<Pool> = Arc::default();
        let small = pool.take(10);
        let big = pool.take(1000);
        let (small_at, big_at) = (small.as_ptr(), big.as_ptr());
        drop(leased(small, &pool));
        drop(leased(big, &pool));
        let got = pool.take(500);
        assert_eq!(
            got.as_ptr(),
            big_at,
            "the big buffer serves a smaller request"
        );
        assert!(got.is_empty() && got.capacity() >= 1000);
        let fresh = pool.take(500);
        assert_ne!(
            fresh.as_ptr(),
            small_at,
            "the small one is not grown into it"
        );
        assert!(fresh.capacity() >= 500);
        let reused = pool.take(5);
        assert_eq!(reused.as_ptr(), small_at);
    }

    /// A range of a chunked column is a view inside one buffer and a copy across
    /// buffers, with the same values either way; buffers go back to the pool.
    #[test]
    fn chunked_ranges_are_views_or_copies_of_the_same_values() {
        let pool: Arc<Pool> = Arc::default();
        let values: Vec<f32> = (0..23).map(|i| i as f32).collect();
        let parts = values
            .chunks(5)
            .map(|c| leased(c.to_vec(), &pool))
            .collect();
        let chunked = Chunked { per: 5, parts };
        for from in 0..23 {
            for len in 0..=(23 - from) {
                let got = chunked.range(from, len);
                assert_eq!(&got[..], &values[from..from + len], "{from}+{len}");
                let part = chunked.parts[from / 5][..].as_ptr_range();
                let inside = part.contains(&got.as_ptr());
                if len > 0 {
                    assert_eq!(inside, from % 5 + len <= 5, "{from}+{len}: view or copy");
                }
            }
        }
        drop(chunked);
        assert_eq!(pool.free.lock().unwrap().len(), 5);
    }
}
