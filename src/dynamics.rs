//! §3's dynamics with eight rows side by side, one per vector lane.
//!
//! A row's step is a chain of short dependent operations on `m` (about 16) values: a
//! softmax, an `m×m` product, a few dot products and a square root. Run one row
//! after another (or one active list after another), that chain's latency and the
//! bookkeeping between steps cost as much as the `d`-long energy GEMM. Here lane `l`
//! of every operation belongs to a different row, so the vector unit does eight rows'
//! chains at once; a lane whose row stops is refilled with the next row at once, so
//! rows that take many steps do not hold the others back.
//!
//! Every lane performs the reference's operations (`score::dynamics`) in the same
//! order, with no fused multiply-adds (Rust never contracts `a * b + c` there
//! either), so each row gets the same `is_ood`, attractor and `steps` whichever path
//! scored it. Written for AVX-512 only: on other CPUs the reference runs (a portable
//! lane loop measured slower than it there).

/// Rows in flight: one 512-bit vector of f64.
const L: usize = 8;

/// Largest memory count this path takes (its state lives in fixed arrays).
pub const MAX_M: usize = 32;

/// Everything §3 needs about one target, and the first step's softmax.
pub struct Lanes<'a> {
    /// `ΞΞᵀ` (`m×m`, row-major).
    pub gram: &'a [f64],
    pub m: usize,
    pub tau: f64,
    pub beta: f64,
    pub max_iter: usize,
    pub tol: f64,
    /// `‖x₀‖²` per row.
    pub x0sq: &'a [f64],
    /// `A_β(Ξx₀)` per row.
    pub energy: &'a [f64],
    /// `softmax(βΞx₀)` per row (`n×m`).
    pub p: &'a [f64],
}

impl Lanes<'_> {
    /// Whether this path takes the target: `m` a multiple of 4 (the dot products'
    /// partial sums then have no tail) and small enough for the lane state.
    pub fn fits(m: usize, max_iter: usize) -> bool {
        m > 0 && m.is_multiple_of(4) && m <= MAX_M && max_iter > 0
    }

    /// `(is_ood, attractor, steps)` per row, or `None` on a CPU without AVX-512 (or
    /// for a Gram matrix that is not `m×m`, which the model never builds).
    /// `hs` (`n×m`) holds `Ξx₀`.
    pub fn run(&self, hs: &[f64]) -> Option<Vec<(bool, i32, u32)>> {
        debug_assert!(Self::fits(self.m, self.max_iter));
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU supports the feature the copy is compiled for.
                return unsafe {
                    match self.m {
                        4 => run_avx512::<4>(self, hs),
                        8 => run_avx512::<8>(self, hs),
                        12 => run_avx512::<12>(self, hs),
                        16 => run_avx512::<16>(self, hs),
                        20 => run_avx512::<20>(self, hs),
                        24 => run_avx512::<24>(self, hs),
                        28 => run_avx512::<28>(self, hs),
                        _ => run_avx512::<32>(self, hs),
                    }
                };
            }
        }
        let _ = hs;
        None
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn run_avx512<const M: usize>(t: &Lanes<'_>, hs: &[f64]) -> Option<Vec<(bool, i32, u32)>> {
    avx512::run::<M>(t, hs)
}

/// The lanes' loop. Two differences of method from the reference, neither of result:
/// the attractor is tracked for all lanes at once, and `A_β` is compared with `τ`
/// through a fast vector `ln` first, the reference's scalar `ln` deciding only lanes
/// within a safety margin of `τ` (the dynamics output that comparison, never the
/// energy itself).
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{L, Lanes};
    use crate::vexp::avx512::exp8;

    type Z = __m512d;

    struct State<const M: usize> {
        h: [Z; M],
        p: [Z; M],
        pp: [Z; M],
        x0sq: [f64; L],
        row: [usize; L],
        steps: [u32; L],
        live: u8,
    }

    #[target_feature(enable = "avx512f")]
    #[inline]
    fn lane(v: Z, l: usize) -> f64 {
        let mut a = [0.0f64; L];
        // SAFETY: `a` holds L values.
        unsafe { _mm512_storeu_pd(a.as_mut_ptr(), v) };
        a[l]
    }

    #[target_feature(enable = "avx512f")]
    #[inline]
    fn set_lane(v: &mut Z, l: usize, x: f64) {
        *v = _mm512_mask_broadcastsd_pd(*v, 1 << l, _mm_set_sd(x));
    }

    #[target_feature(enable = "avx512f")]
    #[inline]
    fn load<const M: usize>(s: &mut State<M>, l: usize, r: usize, t: &Lanes<'_>, hs: &[f64]) {
        for mu in 0..M {
            set_lane(&mut s.h[mu], l, hs[r * M + mu]);
            set_lane(&mut s.p[mu], l, t.p[r * M + mu]);
        }
        s.x0sq[l] = t.x0sq[r];
        s.row[l] = r;
        s.steps[l] = 1;
        s.live |= 1 << l;
    }

    /// `(a[0] + a[1]) + (a[2] + a[3]) + tail`, as `dot4` closes its sums.
    #[target_feature(enable = "avx512f")]
    #[inline]
    fn close(a: [Z; 4], tail: Z) -> Z {
        _mm512_add_pd(
            _mm512_add_pd(_mm512_add_pd(a[0], a[1]), _mm512_add_pd(a[2], a[3])),
            tail,
        )
    }

    /// `ln s` to about 1e-14 for `s ≥ 1` (`s = 2^e·f`, `f ∈ [1, 2)`,
    /// `ln f = 2·atanh((f − 1)/(f + 1))`), for the comparison's first pass only.
    #[target_feature(enable = "avx512f")]
    #[inline]
    fn ln_approx(s: Z) -> Z {
        let e = _mm512_getexp_pd(s);
        let f = _mm512_getmant_pd::<_MM_MANT_NORM_1_2, _MM_MANT_SIGN_SRC>(s);
        let one = _mm512_set1_pd(1.0);
        let z = _mm512_div_pd(_mm512_sub_pd(f, one), _mm512_add_pd(f, one));
        let z2 = _mm512_mul_pd(z, z);
        // 1 + z²/3 + z⁴/5 + … + z²⁴/25; z ≤ 1/3, so the next term is below 1e-14.
        let mut q = _mm512_set1_pd(1.0 / 25.0);
        for k in (0..12).rev() {
            q = _mm512_fmadd_pd(q, z2, _mm512_set1_pd(1.0 / (2 * k + 1) as f64));
        }
        let lnf = _mm512_mul_pd(_mm512_add_pd(z, z), q);
        _mm512_fmadd_pd(e, _mm512_set1_pd(std::f64::consts::LN_2), lnf)
    }

    #[target_feature(enable = "avx512f")]
    pub fn run<const M: usize>(t: &Lanes<'_>, hs: &[f64]) -> Option<Vec<(bool, i32, u32)>> {
        debug_assert_eq!(t.m, M);
        let n = hs.len() / M;
        let mut res = vec![(false, -1i32, 0u32); n];
        let mut pending = Vec::with_capacity(n);
        for (r, (out, &a)) in res.iter_mut().zip(t.energy).enumerate() {
            if a <= t.tau {
                *out = (true, -1, 1);
            } else {
                pending.push(r);
            }
        }
        let mut queue = pending.into_iter();
        let zero = _mm512_setzero_pd();
        // Fixed-size rows, so the product below needs no bounds checks (it had one
        // compare and branch per multiply).
        let gram = t.gram.as_chunks::<M>().0.first_chunk::<M>()?;
        let mut s = State::<M> {
            h: [zero; M],
            p: [zero; M],
            pp: [zero; M],
            x0sq: [0.0; L],
            row: [0; L],
            steps: [0; L],
            live: 0,
        };
        for l in 0..L {
            match queue.next() {
                Some(r) => load(&mut s, l, r, t, hs),
                None => break,
            }
        }
        let ln_m = (M as f64).ln();
        let tail = _mm512_set1_pd(std::iter::empty::<f64>().sum());
        let (tol, beta) = (_mm512_set1_pd(t.tol), _mm512_set1_pd(t.beta));
        let one = _mm512_set1_pd(1.0);
        while s.live != 0 {
            // hn = p · ΞΞᵀ, each sum over j in `small_gemm`'s order.
            let mut hn = [zero; M];
            for (&pj, row) in s.p.iter().zip(gram) {
                for (a, &g) in hn.iter_mut().zip(row) {
                    *a = _mm512_add_pd(*a, _mm512_mul_pd(pj, _mm512_set1_pd(g)));
                }
            }
            // The stop rule's dot products, as `dot4` and `diff_dot4`.
            let mut acc = [[zero; 4]; 4];
            for (mu, &hv) in hn.iter().enumerate() {
                let k = mu % 4;
                let (p, pp, h) = (s.p[mu], s.pp[mu], s.h[mu]);
                acc[0][k] = _mm512_add_pd(acc[0][k], _mm512_mul_pd(p, hv));
                acc[1][k] = _mm512_add_pd(acc[1][k], _mm512_mul_pd(p, h));
                acc[2][k] = _mm512_add_pd(
                    acc[2][k],
                    _mm512_mul_pd(_mm512_sub_pd(p, pp), _mm512_sub_pd(hv, h)),
                );
                acc[3][k] = _mm512_add_pd(acc[3][k], _mm512_mul_pd(pp, h));
            }
            let [new_sq, ph, diff, old] = acc.map(|a| close(a, tail));
            // The attractor, should a lane stop now: the first maximum, as `argmax`.
            let mut best = hn[0];
            let mut arg = _mm512_setzero_si512();
            for (mu, &v) in hn.iter().enumerate().skip(1) {
                let gt = _mm512_cmp_pd_mask::<_CMP_GT_OQ>(v, best);
                best = _mm512_mask_blend_pd(gt, best, v);
                arg = _mm512_mask_blend_epi64(gt, arg, _mm512_set1_epi64(mu as i64));
            }
            let mut args = [0i64; L];
            // SAFETY: `args` holds L values.
            unsafe { _mm512_storeu_si512(args.as_mut_ptr().cast(), arg) };
            // Stop rule: the first step measures from x₀.
            let mut first = 0u8;
            let mut last = 0u8;
            for l in 0..L {
                first |= u8::from(s.steps[l] == 1) << l;
                last |= u8::from(s.steps[l] as usize == t.max_iter) << l;
            }
            // SAFETY: `x0sq` holds L values.
            let x0 = unsafe { _mm512_loadu_pd(s.x0sq.as_ptr()) };
            let d1 = _mm512_add_pd(
                _mm512_sub_pd(x0, _mm512_mul_pd(_mm512_set1_pd(2.0), ph)),
                new_sq,
            );
            let diff_sq = _mm512_mask_blend_pd(first, diff, d1);
            let old_sq = _mm512_mask_blend_pd(first, old, x0);
            let lhs = _mm512_sqrt_pd(_mm512_max_pd(diff_sq, zero));
            let rhs = _mm512_mul_pd(
                tol,
                _mm512_add_pd(one, _mm512_sqrt_pd(_mm512_max_pd(old_sq, zero))),
            );
            let converged = _mm512_cmp_pd_mask::<_CMP_LE_OQ>(lhs, rhs);
            let origin = _mm512_cmp_pd_mask::<_CMP_LE_OQ>(new_sq, zero) & s.live;
            let stop = s.live & !origin & (converged | last);
            let advance = s.live & !origin & !stop;
            // Every lane moves on; lanes that stop are refilled below.
            s.h = hn;
            s.pp = s.p;
            let mut ended = origin | stop;
            while ended != 0 {
                let l = ended.trailing_zeros() as usize;
                ended &= ended - 1;
                res[s.row[l]] = if origin >> l & 1 == 1 {
                    (true, -1, s.steps[l])
                } else {
                    (false, args[l] as i32, s.steps[l])
                };
                s.live &= !(1 << l);
                if let Some(r) = queue.next() {
                    load(&mut s, l, r, t, hs);
                }
            }
            if advance == 0 {
                continue;
            }
            for l in 0..L {
                s.steps[l] += u32::from(advance >> l & 1);
            }
            // (A, p) = lme_softmax(h) for the advancing lanes, as `lme_softmax`.
            // The maximum as a tree: exact in any order for the finite values here
            // (a ±0 maximum gives the same `h − mx` and `A` either way), and log₂M
            // dependent steps instead of M.
            let mut t2 = s.h;
            let mut w = M;
            while w > 1 {
                let half = w / 2;
                for i in 0..half {
                    t2[i] = _mm512_max_pd(t2[i], t2[i + half]);
                }
                if w % 2 == 1 {
                    t2[0] = _mm512_max_pd(t2[0], t2[w - 1]);
                }
                w = half;
            }
            let mx = t2[0];
            let mut q = [zero; M];
            let mut sum = tail;
            for (qm, &h) in q.iter_mut().zip(&s.h) {
                // SAFETY: the caller checked the CPU.
                *qm = unsafe { exp8(_mm512_mul_pd(beta, _mm512_sub_pd(h, mx))) };
                sum = _mm512_add_pd(sum, *qm);
            }
            let inv = _mm512_div_pd(one, sum);
            for (pm, &qm) in s.p.iter_mut().zip(&q) {
                *pm = _mm512_mask_blend_pd(advance, *pm, _mm512_mul_pd(qm, inv));
            }
            // A = mx + (ln s − ln M)/β ≤ τ? Decided by the fast ln unless within the
            // margin, where the reference's scalar ln decides.
            let lnm = _mm512_set1_pd(ln_m);
            let a = _mm512_add_pd(mx, _mm512_div_pd(_mm512_sub_pd(ln_approx(sum), lnm), beta));
            let tau = _mm512_set1_pd(t.tau);
            let margin = _mm512_add_pd(
                _mm512_mul_pd(
                    _mm512_set1_pd(1e-9),
                    _mm512_add_pd(one, _mm512_add_pd(_mm512_abs_pd(mx), _mm512_abs_pd(tau))),
                ),
                _mm512_div_pd(_mm512_set1_pd(1e-9), beta),
            );
            let gap = _mm512_sub_pd(a, tau);
            let sure_in = _mm512_cmp_pd_mask::<_CMP_LT_OQ>(gap, _mm512_sub_pd(zero, margin));
            let sure_out = _mm512_cmp_pd_mask::<_CMP_GT_OQ>(gap, margin);
            let mut dead = advance & sure_in;
            let mut unsure = advance & !sure_in & !sure_out;
            while unsure != 0 {
                let l = unsure.trailing_zeros() as usize;
                unsure &= unsure - 1;
                let energy = lane(mx, l) + (lane(sum, l).ln() - ln_m) / t.beta;
                if energy <= t.tau {
                    dead |= 1 << l;
                }
            }
            while dead != 0 {
                let l = dead.trailing_zeros() as usize;
                dead &= dead - 1;
                // The dead zone: this update sends the row to the origin.
                res[s.row[l]] = (true, -1, s.steps[l]);
                s.live &= !(1 << l);
                if let Some(r) = queue.next() {
                    load(&mut s, l, r, t, hs);
                }
            }
        }
        Some(res)
    }
}
