//! `exp` over a slice, eight (AVX-512) or four (AVX2) f64 lanes at a time.
//!
//! Every softmax of the dynamics and every energy exponentiates a row's `m` memory
//! activations, so `reclag score` calls `exp` about `16 × steps` times per row; glibc's
//! scalar `exp` was a tenth of its time. This is the textbook reduction
//! `e^x = 2^n · e^r` with `n = round(x / ln 2)`, `r = x − n·ln 2` (ln 2 split in two
//! so `r` is exact to about 2⁻⁶⁰), and a degree-13 Taylor polynomial for `e^r` on
//! `|r| ≤ ln 2 / 2`, whose truncation error (< 2⁻⁶⁰) is far below the last bit. The
//! result is within 2 ulp of the correctly rounded value (tested against `f64::exp`).
//!
//! Results below `e^-708` (≈ 3e-308) are returned as 0 rather than as subnormals: they
//! only ever enter sums that contain `e^0 = 1`, where they vanish anyway.

/// Below this, the result is flushed to 0 (its `2^n` would be subnormal).
const LO: f64 = -708.0;
/// Above this, `e^x` overflows to +∞.
const HI: f64 = 709.782_712_893_384;

/// `x[i] ← e^{x[i]}` for every element.
pub fn exp_in_place(x: &mut [f64]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports the feature the function is compiled for.
            unsafe { avx512::exp_in_place(x) };
            return;
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU supports the features the function is compiled for.
            unsafe { avx2::exp_in_place(x) };
            return;
        }
    }
    x.iter_mut().for_each(|v| *v = v.exp());
}

/// The polynomial path for one value: the reference the vector lanes follow.
#[cfg(any(test, target_arch = "x86_64"))]
#[inline(always)]
fn exp_scalar(x: f64) -> f64 {
    if x.is_nan() {
        return x;
    }
    if x < LO {
        return 0.0;
    }
    if x > HI {
        return f64::INFINITY;
    }
    let n = (x * std::f64::consts::LOG2_E).round_ties_even();
    let r = (-n).mul_add(LN2_LO, (-n).mul_add(LN2_HI, x));
    let mut p = C[C.len() - 1];
    for &c in C[..C.len() - 1].iter().rev() {
        p = p.mul_add(r, c);
    }
    if n > 1023.5 {
        // 2^1024 has no finite bit pattern (see the vector lanes).
        p * f64::from_bits(2046 << 52) * 2.0
    } else {
        p * f64::from_bits(((n as i64 + 1023) as u64) << 52)
    }
}

/// ln 2 = LN2_HI + LN2_LO, with LN2_HI's low bits zero so `n · LN2_HI` is exact for
/// every `|n| ≤ 1100` (fdlibm's split).
const LN2_HI: f64 = 6.931_471_803_691_238e-1;
const LN2_LO: f64 = 1.908_214_929_270_587_7e-10;

/// 1/k! for k = 0..=13.
const C: [f64; 14] = [
    1.0,
    1.0,
    1.0 / 2.0,
    1.0 / 6.0,
    1.0 / 24.0,
    1.0 / 120.0,
    1.0 / 720.0,
    1.0 / 5040.0,
    1.0 / 40320.0,
    1.0 / 362_880.0,
    1.0 / 3_628_800.0,
    1.0 / 39_916_800.0,
    1.0 / 479_001_600.0,
    1.0 / 6_227_020_800.0,
];

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{C, HI, LN2_HI, LN2_LO, LO, exp_scalar};

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn exp_in_place(x: &mut [f64]) {
        let mut chunks = x.chunks_exact_mut(4);
        for c in &mut chunks {
            // SAFETY: `c` holds exactly four f64s.
            unsafe {
                let v = _mm256_loadu_pd(c.as_ptr());
                _mm256_storeu_pd(c.as_mut_ptr(), exp4(v));
            }
        }
        for v in chunks.into_remainder() {
            *v = exp_scalar(*v);
        }
    }

    #[inline(always)]
    unsafe fn exp4(x: __m256d) -> __m256d {
        unsafe {
            // MAXPD/MINPD return their second operand when either is NaN, so a NaN
            // lane stays NaN through the polynomial.
            let xc = _mm256_min_pd(_mm256_set1_pd(HI), _mm256_max_pd(_mm256_set1_pd(LO), x));
            let n = _mm256_round_pd(
                _mm256_mul_pd(xc, _mm256_set1_pd(std::f64::consts::LOG2_E)),
                _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC,
            );
            let r = _mm256_fnmadd_pd(n, _mm256_set1_pd(LN2_HI), xc);
            let r = _mm256_fnmadd_pd(n, _mm256_set1_pd(LN2_LO), r);
            let mut p = _mm256_set1_pd(C[C.len() - 1]);
            for k in (0..C.len() - 1).rev() {
                p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(C[k]));
            }
            // 2^n: adding 1.5·2^52 puts n in the low mantissa bits; (bits + 1023) << 52
            // is then 2^n's bit pattern (the magic's own bits shift out).
            let t = _mm256_add_pd(n, _mm256_set1_pd(6_755_399_441_055_744.0));
            let e = _mm256_slli_epi64(
                _mm256_add_epi64(_mm256_castpd_si256(t), _mm256_set1_epi64x(1023)),
                52,
            );
            let y = _mm256_mul_pd(p, _mm256_castsi256_pd(e));
            // n = 1024 only at the top of the range: 2^1024 is not a finite bit
            // pattern, so build it as 2^1023 · 2.
            let big = _mm256_cmp_pd(n, _mm256_set1_pd(1023.5), _CMP_GT_OQ);
            let y = _mm256_blendv_pd(
                y,
                _mm256_mul_pd(
                    _mm256_mul_pd(p, _mm256_set1_pd(f64::from_bits(2046 << 52))),
                    _mm256_set1_pd(2.0),
                ),
                big,
            );
            let under = _mm256_cmp_pd(x, _mm256_set1_pd(LO), _CMP_LT_OQ);
            let over = _mm256_cmp_pd(x, _mm256_set1_pd(HI), _CMP_GT_OQ);
            let y = _mm256_andnot_pd(under, y);
            _mm256_blendv_pd(y, _mm256_set1_pd(f64::INFINITY), over)
        }
    }
}

/// The same lanes eight at a time: each operation is the AVX2 one widened, so the bits
/// are the scalar path's.
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512 {
    use std::arch::x86_64::*;

    use super::{C, HI, LN2_HI, LN2_LO, LO, exp_scalar};

    #[target_feature(enable = "avx512f")]
    pub unsafe fn exp_in_place(x: &mut [f64]) {
        let mut chunks = x.chunks_exact_mut(8);
        for c in &mut chunks {
            // SAFETY: `c` holds exactly eight f64s.
            unsafe {
                let v = _mm512_loadu_pd(c.as_ptr());
                _mm512_storeu_pd(c.as_mut_ptr(), exp8(v));
            }
        }
        for v in chunks.into_remainder() {
            *v = exp_scalar(*v);
        }
    }

    /// Eight lanes of [`super::exp_in_place`]'s AVX-512 path (same bits).
    #[inline(always)]
    pub(crate) unsafe fn exp8(x: __m512d) -> __m512d {
        unsafe {
            let xc = _mm512_min_pd(_mm512_set1_pd(HI), _mm512_max_pd(_mm512_set1_pd(LO), x));
            let n = _mm512_roundscale_pd::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
                _mm512_mul_pd(xc, _mm512_set1_pd(std::f64::consts::LOG2_E)),
            );
            let r = _mm512_fnmadd_pd(n, _mm512_set1_pd(LN2_HI), xc);
            let r = _mm512_fnmadd_pd(n, _mm512_set1_pd(LN2_LO), r);
            let mut p = _mm512_set1_pd(C[C.len() - 1]);
            for k in (0..C.len() - 1).rev() {
                p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(C[k]));
            }
            let t = _mm512_add_pd(n, _mm512_set1_pd(6_755_399_441_055_744.0));
            let e = _mm512_slli_epi64::<52>(_mm512_add_epi64(
                _mm512_castpd_si512(t),
                _mm512_set1_epi64(1023),
            ));
            let y = _mm512_mul_pd(p, _mm512_castsi512_pd(e));
            let big = _mm512_cmp_pd_mask::<_CMP_GT_OQ>(n, _mm512_set1_pd(1023.5));
            let y = _mm512_mask_blend_pd(
                big,
                y,
                _mm512_mul_pd(
                    _mm512_mul_pd(p, _mm512_set1_pd(f64::from_bits(2046 << 52))),
                    _mm512_set1_pd(2.0),
                ),
            );
            let under = _mm512_cmp_pd_mask::<_CMP_LT_OQ>(x, _mm512_set1_pd(LO));
            let over = _mm512_cmp_pd_mask::<_CMP_GT_OQ>(x, _mm512_set1_pd(HI));
            let y = _mm512_mask_blend_pd(under, y, _mm512_setzero_pd());
            _mm512_mask_blend_pd(over, y, _mm512_set1_pd(f64::INFINITY))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ulps(a: f64, b: f64) -> u64 {
        (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs()
    }

    fn check(xs: &[f64]) {
        let mut v = xs.to_vec();
        exp_in_place(&mut v);
        for (&x, &y) in xs.iter().zip(&v) {
            let want = x.exp();
            if x.is_nan() {
                assert!(y.is_nan(), "exp(NaN) = {y}");
            } else if x < LO {
                assert_eq!(y, 0.0, "x = {x}");
            } else if want.is_infinite() {
                assert_eq!(y, want, "x = {x}");
            } else {
                assert!(ulps(y, want) <= 2, "x = {x}: {y} vs {want}");
            }
            assert_eq!(
                y.to_bits(),
                exp_scalar(x).to_bits(),
                "lane and scalar, x = {x}"
            );
        }
        // Each vector path this CPU has, called directly (dispatch picks only one).
        #[cfg(target_arch = "x86_64")]
        {
            let want: Vec<u64> = xs.iter().map(|&x| exp_scalar(x).to_bits()).collect();
            let bits = |v: &[f64]| v.iter().map(|y| y.to_bits()).collect::<Vec<_>>();
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                let mut v = xs.to_vec();
                // SAFETY: checked just above.
                unsafe { avx2::exp_in_place(&mut v) };
                assert_eq!(bits(&v), want, "avx2");
            }
            if std::arch::is_x86_feature_detected!("avx512f") {
                let mut v = xs.to_vec();
                // SAFETY: checked just above.
                unsafe { avx512::exp_in_place(&mut v) };
                assert_eq!(bits(&v), want, "avx512");
            }
        }
    }

    #[test]
    fn edges() {
        check(&[
            0.0,
            -0.0,
            1.0,
            -1.0,
            LO,
            LO - 1e-9,
            -745.2,
            709.7,
            HI,
            710.0,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::NAN,
            std::f64::consts::LN_2 / 2.0,
            -std::f64::consts::LN_2 / 2.0,
            1e-300,
        ]);
    }

    proptest! {
        #[test]
        fn within_two_ulp_of_libm(xs in prop::collection::vec(-720.0f64..720.0, 0..40)) {
            check(&xs);
        }

        #[test]
        fn within_two_ulp_near_zero(xs in prop::collection::vec(-30.0f64..1.0, 0..40)) {
            check(&xs);
        }
    }
}
