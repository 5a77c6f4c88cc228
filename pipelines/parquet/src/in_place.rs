//! Reading the rows of a v1 snappy page inside the compressed page buffer, where the
//! floats lie as long literals, instead of writing them out first.

use crate::levels::PageV1;
use crate::pages::{PageSink, plain_values};
use crate::snappy::Decoder;

/// Reads a v1 snappy page's rows inside the compressed page buffer. The values are
/// stored as long literals (incompressible floats); [`Decoder`] leaves
/// those in place, so a row inside one is read there, and a row cut by the edge
/// between two literals is made whole by moving its head over the next literal's tag
/// (a few bytes): the page buffer is ours (the file reader reads each page into a
/// fresh one), so nothing else sees the move. Rows that do not fit (in a short
/// literal or in copies, across more than two literals, or cut by the page's edge) are
/// written out and handed over as values; a page with no row in place, or in a shared
/// buffer (an object's fetched bytes), is read the usual way.
#[derive(Default)]
pub(crate) struct SnappyInPlace {
    dec: Decoder,
    /// Where each row starts in the page buffer.
    at: Vec<usize>,
    /// `(from, len, by)`: move bytes `[from, from + len)` forward by `by`.
    moves: Vec<(usize, usize, usize)>,
}

impl SnappyInPlace {
    /// `Ok(Ok(ok))` when the page was handled (`ok` as for
    /// [`crate::pages::stream_chunk`]): in
    /// place, or written out whole and read the usual way when no row can be placed.
    /// `Ok(Err(buf))` returns a shared buffer, which must not be moved in.
    /// `carried` values of a row cut by the previous page are completed from this
    /// page's first values, and a row this page cuts is left to the next, both through
    /// [`PageSink::values`]; the whole rows between go to [`PageSink::rows_at`].
    pub(crate) fn page(
        &mut self,
        buf: bytes::Bytes,
        v1: &PageV1<'_>,
        carried: usize,
        sink: &mut impl PageSink,
    ) -> crate::Result<Result<bool, bytes::Bytes>> {
        let mut page = match buf.try_into_mut() {
            Ok(m) => m,
            Err(shared) => return Ok(Err(shared)),
        };
        self.dec
            .decode(&page)
            .map_err(|e| parquet::errors::ParquetError::General(format!("a snappy page: {e}")))?;
        let (n, dim, rb) = (v1.n, v1.rules.dim, v1.rules.dim * 4);
        let head = if carried == 0 {
            0
        } else {
            (dim - carried).min(n)
        };
        let rows = (n - head) / dim;
        let placed = self
            .levels(&page, v1)
            .filter(|&v0| v0 + n * 4 <= self.dec.len() && self.plan(v0 + head * 4, rows, rb) > 0);
        let Some(v0) = placed else {
            // Nothing to read in place: the page written out whole, read as usual.
            let all = self.dec.fill(&page, 0, self.dec.len()).expect("decoded");
            return Ok(Ok(v1.values(all, |vals| plain_values(vals, v1.n, sink))));
        };
        let (mid, tail) = (v0 + head * 4, v0 + (head + rows * dim) * 4);
        let SnappyInPlace { dec, at, moves } = self;
        let first = dec.fill(&page, v0, mid).expect("within the page");
        if !first.is_empty() && !sink.values(first) {
            return Ok(Ok(false));
        }
        // A move touches only its cut row and the tag after it, never another row.
        for &(from, len, by) in moves.iter() {
            page.copy_within(from..from + len, from + by);
        }
        // Runs of placed rows go in place; rows between (in a short last literal, or
        // partly in copies) are written out.
        let mut k = 0;
        while k < rows {
            let placed = at[k] != NOT_PLACED;
            let e = k + at[k..]
                .iter()
                .position(|&a| (a != NOT_PLACED) != placed)
                .unwrap_or(rows - k);
            let ok = if placed {
                sink.rows_at(&page, &at[k..e])
            } else {
                let b = dec.fill(&page, mid + k * rb, mid + e * rb);
                sink.values(b.expect("within the page"))
            };
            if !ok {
                return Ok(Ok(false));
            }
            k = e;
        }
        let last = dec.fill(&page, tail, v0 + n * 4).expect("within the page");
        Ok(Ok(last.is_empty() || sink.values(last)))
    }

    /// Checks the page's levels and returns where its values start; `None` when the
    /// levels are not a dense list's (the usual path then decides).
    fn levels(&mut self, page: &[u8], v1: &PageV1<'_>) -> Option<usize> {
        let len_at = |dec: &mut Decoder, a: usize| -> Option<usize> {
            let b = dec.fill(page, a, a.checked_add(4)?)?;
            Some(u32::from_le_bytes(b.try_into().ok()?) as usize)
        };
        let mut end = 4usize.checked_add(len_at(&mut self.dec, 0)?)?;
        if v1.rules.max_def > 0 {
            end = end
                .checked_add(4)?
                .checked_add(len_at(&mut self.dec, end)?)?;
        }
        let (rep, def, _) = v1.sections(self.dec.fill(page, 0, end)?)?;
        v1.levels_ok(rep, def).then_some(end)
    }

    /// Locates `rows` rows of `rb` bytes from output byte `v0` in the page buffer
    /// ([`NOT_PLACED`] for a row not wholly inside holes), and returns how many are there.
    fn plan(&mut self, v0: usize, rows: usize, rb: usize) -> usize {
        self.at.clear();
        self.moves.clear();
        let holes = self.dec.holes();
        let mut k = 0;
        let mut p = v0;
        let mut placed = 0;
        for _ in 0..rows {
            while holes.get(k).is_some_and(|h| h.end() <= p) {
                k += 1;
            }
            let at = match holes.get(k).filter(|h| h.at <= p) {
                Some(h) if p + rb <= h.end() => h.src + (p - h.at),
                Some(h) => match holes.get(k + 1) {
                    Some(next) if next.at == h.end() && p + rb <= next.end() => {
                        let s = h.src + (p - h.at);
                        let by = next.src - (h.src + h.len);
                        self.moves.push((s, h.end() - p, by));
                        s + by
                    }
                    _ => NOT_PLACED,
                },
                None => NOT_PLACED,
            };
            placed += usize::from(at != NOT_PLACED);
            self.at.push(at);
            p += rb;
        }
        placed
    }
}

/// A row [`InPlace::plan`] could not place.
const NOT_PLACED: usize = usize::MAX;
