//! The machine's f64 FMA rate, one thread per core: the compute floor `BENCHMARKS.md`
//! sets `reclag score`'s kernel against (16 FMAs of `d` per row, plus the norm, all
//! in f64 as spec §1 asks). Twelve independent 512-bit FMA chains per thread, enough
//! to fill two FMA ports at four cycles' latency.
//!
//! `cargo bench --bench fma_peak`

use std::time::Instant;

const ITERS: u64 = 100_000_000;
const CHAINS: usize = 12;

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn chains_avx512(iters: u64) -> f64 {
    use std::arch::x86_64::*;
    let mut a = [_mm512_set1_pd(1.0); CHAINS];
    let (b, c) = (_mm512_set1_pd(0.999_999), _mm512_set1_pd(1e-7));
    for _ in 0..iters {
        for v in &mut a {
            *v = _mm512_fmadd_pd(*v, b, c);
        }
    }
    a.iter().map(|&v| _mm512_reduce_add_pd(v)).sum()
}

/// FMAs per second on one thread.
fn rate() -> Option<f64> {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        let t = Instant::now();
        // SAFETY: the CPU supports the feature the function is compiled for.
        std::hint::black_box(unsafe { chains_avx512(ITERS) });
        return Some((ITERS * CHAINS as u64 * 8) as f64 / t.elapsed().as_secs_f64());
    }
    None
}

fn main() {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    for round in 1..=3 {
        let rates: Vec<Option<f64>> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..threads).map(|_| s.spawn(rate)).collect();
            hs.into_iter()
                .map(|h| h.join().expect("no panic"))
                .collect()
        });
        let Some(rates) = rates.into_iter().collect::<Option<Vec<f64>>>() else {
            println!("no AVX-512 on this CPU: nothing measured");
            return;
        };
        let total: f64 = rates.iter().sum();
        let per: Vec<String> = rates.iter().map(|r| format!("{:.1}", r / 1e9)).collect();
        println!(
            "round {round}: {threads} threads, {:.1} G f64 FMA/s in all ({} per thread)",
            total / 1e9,
            per.join(", ")
        );
        for d in [512, 384] {
            let fmas = 1e6 * (16.0 + 1.0) * d as f64;
            println!(
                "  1M rows × d = {d}: the kernel's {:.2} G FMAs take {:.3} s at this rate",
                fmas / 1e9,
                fmas / total
            );
        }
    }
}
