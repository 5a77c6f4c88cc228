//! Snappy decompression that leaves long literals where they lie.
//!
//! An embedding page is mostly incompressible floats, which snappy stores as literals
//! (up to 64 KiB each, one per compressor block). Decompressing copies them byte for
//! byte into a second buffer: `perf` put that copy at a tenth of `reclag score`'s time.
//! This decoder only records a long literal as a *hole* (its place in the output and
//! in the input) and writes everything else. The caller then reads the rows inside
//! holes from the compressed buffer itself, and asks for any other range through
//! [`Decoder::fill`].
//!
//! A copy whose source overlaps a hole has that hole written out first, so every valid
//! stream decodes, whatever its mix of literals and copies. Malformed streams give the
//! errors `snap` gives, never a panic: every offset and length is checked.

/// Literals at least this long stay in the input. Shorter ones cost less to copy than
/// to track, and a row cut by a hole edge is moved (see `in_place`), so a hole should
/// hold many rows.
pub const MIN_HOLE: usize = 4096;

/// Snappy's densest element is a 3-byte copy of 64 bytes, so no valid stream expands
/// more than this; a header claiming more is corrupt (and would be a huge allocation).
const MAX_EXPANSION: usize = 22;

/// A literal left in the input: output bytes `[at, at + len)` are input bytes
/// `[src, src + len)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hole {
    pub at: usize,
    pub len: usize,
    pub src: usize,
}

impl Hole {
    pub fn end(&self) -> usize {
        self.at + self.len
    }
}

/// Reusable state: the output buffer grows to the largest page and is never zeroed
/// again.
#[derive(Debug)]
pub struct Decoder {
    min_hole: usize,
    out: Vec<u8>,
    len: usize,
    holes: Vec<Hole>,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::new(MIN_HOLE)
    }
}

impl Decoder {
    pub fn new(min_hole: usize) -> Self {
        Decoder {
            min_hole: min_hole.max(1),
            out: Vec::new(),
            len: 0,
            holes: Vec::new(),
        }
    }

    /// Decoded length of the last [`Decoder::decode`].
    pub fn len(&self) -> usize {
        self.len
    }

    /// The holes of the last decode, in output order, none overlapping.
    pub fn holes(&self) -> &[Hole] {
        &self.holes
    }

    /// Decodes one raw snappy block. Output bytes inside [`Decoder::holes`] are left
    /// unwritten.
    pub fn decode(&mut self, input: &[u8]) -> Result<(), String> {
        self.holes.clear();
        self.len = 0;
        let (n, mut i) = varint32(input).ok_or("the length header is malformed")?;
        let n = n as usize;
        if n > input.len().saturating_mul(MAX_EXPANSION) {
            return Err(format!(
                "the header claims {n} bytes from {} compressed bytes",
                input.len()
            ));
        }
        if self.out.len() < n {
            self.out.resize(n, 0);
        }
        let mut pos = 0usize;
        while i < input.len() {
            let tag = input[i];
            i += 1;
            let (len, off) = match tag & 3 {
                0 => {
                    let mut len = usize::from(tag >> 2);
                    if len >= 60 {
                        let k = len - 59;
                        let b = input.get(i..i + k).ok_or("a literal length is cut off")?;
                        len = b.iter().rev().fold(0usize, |a, &x| a << 8 | usize::from(x));
                        i += k;
                    }
                    let len = len + 1;
                    let src = input
                        .get(i..)
                        .filter(|r| r.len() >= len)
                        .ok_or("a literal runs past the input")?;
                    if len > n - pos {
                        return Err("a literal runs past the decoded length".into());
                    }
                    if len >= self.min_hole {
                        self.holes.push(Hole {
                            at: pos,
                            len,
                            src: i,
                        });
                    } else {
                        self.out[pos..pos + len].copy_from_slice(&src[..len]);
                    }
                    pos += len;
                    i += len;
                    continue;
                }
                1 => {
                    let b = *input.get(i).ok_or("a copy is cut off")?;
                    i += 1;
                    (
                        4 + usize::from(tag >> 2 & 7),
                        usize::from(tag >> 5) << 8 | usize::from(b),
                    )
                }
                2 => {
                    let b = input.get(i..i + 2).ok_or("a copy is cut off")?;
                    i += 2;
                    (
                        1 + usize::from(tag >> 2),
                        usize::from(u16::from_le_bytes([b[0], b[1]])),
                    )
                }
                _ => {
                    let b = input.get(i..i + 4).ok_or("a copy is cut off")?;
                    i += 4;
                    (
                        1 + usize::from(tag >> 2),
                        u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize,
                    )
                }
            };
            if off == 0 || off > pos {
                return Err(format!("a copy at {pos} reaches back {off} bytes"));
            }
            if len > n - pos {
                return Err("a copy runs past the decoded length".into());
            }
            let from = pos - off;
            self.unhole(input, from, from + len);
            if off >= len {
                self.out.copy_within(from..from + len, pos);
            } else {
                // Overlapping: the pattern repeats, byte by byte as the format defines.
                for k in 0..len {
                    self.out[pos + k] = self.out[from + k];
                }
            }
            pos += len;
        }
        if pos != n {
            self.holes.clear();
            return Err(format!("decoded {pos} bytes, the header says {n}"));
        }
        self.len = n;
        Ok(())
    }

    /// Writes out and forgets every hole overlapping `[a, b)`.
    fn unhole(&mut self, input: &[u8], a: usize, b: usize) {
        let k = self.holes.partition_point(|h| h.end() <= a);
        while k < self.holes.len() && self.holes[k].at < b {
            let h = self.holes.remove(k);
            self.out[h.at..h.end()].copy_from_slice(&input[h.src..h.src + h.len]);
        }
    }

    /// Output bytes `[a, b)`, contiguous (hole bytes in the range are written out; the
    /// holes stay). `None` past the decoded length.
    pub fn fill(&mut self, input: &[u8], a: usize, b: usize) -> Option<&[u8]> {
        if a > b || b > self.len {
            return None;
        }
        let first = self.holes.partition_point(|h| h.end() <= a);
        for h in &self.holes[first..] {
            if h.at >= b {
                break;
            }
            let (s, e) = (h.at.max(a), h.end().min(b));
            self.out[s..e].copy_from_slice(&input[h.src + (s - h.at)..h.src + (e - h.at)]);
        }
        Some(&self.out[a..b])
    }
}

/// A little-endian base-128 varint of at most 32 bits, and the bytes it took.
fn varint32(b: &[u8]) -> Option<(u32, usize)> {
    let mut v: u64 = 0;
    for (k, &x) in b.iter().take(5).enumerate() {
        v |= u64::from(x & 0x7f) << (7 * k);
        if x < 0x80 {
            return u32::try_from(v).ok().map(|v| (v, k + 1));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Random bytes with runs and repeats mixed in, so the compressor emits literals of
    /// every length and copies of every kind, some reaching back into long literals.
    fn data(seed: u64, len: usize) -> Vec<u8> {
        let mut rng = crate::test_rng::Rng::new(seed);
        let mut v = Vec::with_capacity(len);
        while v.len() < len {
            match rng.next_u64() % 4 {
                0 if v.len() > 8 => {
                    let back = 1 + (rng.next_u64() as usize % v.len().min(70_000));
                    let n = 4 + rng.next_u64() as usize % 60;
                    for _ in 0..n {
                        let b = v[v.len() - back];
                        v.push(b);
                    }
                }
                1 => v.extend(std::iter::repeat_n(
                    rng.next_u64() as u8,
                    rng.next_u64() as usize % 40,
                )),
                _ => v.extend((0..rng.next_u64() as usize % 9000).map(|_| rng.next_u64() as u8)),
            }
        }
        v.truncate(len);
        v
    }

    /// Everything outside holes, and every hole read from the input, is the data.
    fn check(plain: &[u8], min_hole: usize) {
        let packed = snap::raw::Encoder::new().compress_vec(plain).unwrap();
        let mut d = Decoder::new(min_hole);
        d.decode(&packed).unwrap();
        assert_eq!(d.len(), plain.len());
        let mut seen = 0;
        for h in d.holes() {
            assert!(h.at >= seen && h.len >= min_hole);
            assert_eq!(&packed[h.src..h.src + h.len], &plain[h.at..h.end()]);
            assert_eq!(&d.out[seen..h.at], &plain[seen..h.at]);
            seen = h.end();
        }
        assert_eq!(&d.out[seen..plain.len()], &plain[seen..]);
        let n = plain.len();
        for (a, b) in [(0, n), (n / 3, n / 2), (n, n)] {
            assert_eq!(d.fill(&packed, a, b).unwrap(), &plain[a..b]);
        }
        assert!(d.fill(&packed, 0, n + 1).is_none());
    }

    #[test]
    fn long_literals_stay_in_the_input() {
        let plain = data(3, 300_000);
        check(&plain, MIN_HOLE);
        let packed = snap::raw::Encoder::new().compress_vec(&plain).unwrap();
        let mut d = Decoder::default();
        d.decode(&packed).unwrap();
        let in_holes: usize = d.holes().iter().map(|h| h.len).sum();
        assert!(in_holes > plain.len() / 2, "{in_holes} of {}", plain.len());
    }

    #[test]
    fn malformed_streams_are_errors() {
        let plain = data(5, 20_000);
        let packed = snap::raw::Encoder::new().compress_vec(&plain).unwrap();
        let mut d = Decoder::new(64);
        assert!(d.decode(&packed[..packed.len() - 1]).is_err(), "truncated");
        assert!(d.decode(&[]).is_err(), "no header");
        assert!(
            d.decode(&[0xff, 0xff, 0xff, 0xff, 0x7f]).is_err(),
            "huge claim"
        );
        // A copy before any output.
        assert!(d.decode(&[4, 0b0000_0101, 1]).is_err());
        // A header one byte short of the data.
        let mut short = packed.clone();
        short[0] = short[0].wrapping_sub(1);
        assert!(d.decode(&short).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn decodes_as_snap_does(seed in 0u64..10_000, len in 0usize..120_000, min_hole in 1usize..5000) {
            check(&data(seed, len), min_hole);
        }

        /// Any byte changed anywhere: an error or the bytes `snap` decodes, never a
        /// panic.
        #[test]
        fn corrupt_streams_never_panic(seed in 0u64..1000, at in 0.0f64..1.0, byte in any::<u8>()) {
            let mut packed = snap::raw::Encoder::new().compress_vec(&data(seed, 30_000)).unwrap();
            let k = ((packed.len() - 1) as f64 * at) as usize;
            packed[k] = byte;
            let mut d = Decoder::new(100);
            let want = snap::raw::Decoder::new().decompress_vec(&packed);
            match (d.decode(&packed), want) {
                (Ok(()), Ok(w)) => {
                    let n = d.len();
                    prop_assert_eq!(d.fill(&packed, 0, n).unwrap(), &w[..]);
                }
                (Err(_), Err(_)) => {}
                (got, want) => prop_assert!(false, "ours {:?}, snap {:?}", got, want.map(|w| w.len())),
            }
        }
    }
}
