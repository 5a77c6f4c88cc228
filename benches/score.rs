//! Scoring kernel at 1M × 512, K = 10 groups, M = 16 memories per group, against a
//! plain f32 GEMM of the same shapes (rows × d · d × M) from the same GEMM library.
//!
//!     cargo bench --bench score
//!
//! Set `RECLAG_BENCH_ROWS` to shrink the problem (e.g. for a quick look).

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ndarray::linalg::general_mat_mul;
use ndarray::{Array2, ArrayView2};
use rayon::prelude::*;
use reclag::{Rows, ScoreOutput, Work};

#[path = "fixture.rs"]
mod fixture;

use fixture::{D, K, M, fixture};

fn rows() -> usize {
    std::env::var("RECLAG_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000)
}

fn bench(c: &mut Criterion) {
    let n = rows();
    let (model, x, labels) = fixture(n);
    let mut g = c.benchmark_group(format!("score_{n}x{D}_K{K}_M{M}"));
    g.sample_size(10)
        .measurement_time(Duration::from_secs(20))
        .throughput(Throughput::Elements(n as u64));

    // The FLOP peer: one f32 GEMM (n × d)·(d × M) per row block, same blocking and
    // threads as the kernel, no transcendental work.
    let xi32: Vec<f32> = model.groups()[0].xi.iter().map(|&v| v as f32).collect();
    let xi_t = ArrayView2::from_shape((M, D), &xi32)
        .unwrap()
        .t()
        .to_owned();
    g.bench_function("sgemm_peer", |b| {
        b.iter(|| {
            x.par_chunks(256 * D).for_each(|blk| {
                let nb = blk.len() / D;
                let a = ArrayView2::from_shape((nb, D), blk).unwrap();
                let mut out = Array2::<f32>::zeros((nb, M));
                general_mat_mul(1.0, &a, &xi_t, 0.0, &mut out);
                black_box(&out);
            })
        })
    });
    // The f64 floor: the same GEMM in f64, which is what accumulating in f64 costs.
    let xi_t64 = xi_t.mapv(f64::from);
    g.bench_function("dgemm_peer", |b| {
        b.iter(|| {
            x.par_chunks(256 * D).for_each(|blk| {
                let nb = blk.len() / D;
                let a = Array2::from_shape_fn((nb, D), |(i, j)| f64::from(blk[i * D + j]));
                let mut out = Array2::<f64>::zeros((nb, M));
                general_mat_mul(1.0, &a, &xi_t64, 0.0, &mut out);
                black_box(&out);
            })
        })
    });
    let view = Rows::dense_f32(&x, D);
    let mut out = ScoreOutput::default();
    g.bench_function("reclag_energy_only", |b| {
        b.iter(|| {
            model
                .score_into(&view, Some(&labels), Work::EnergyOnly, &mut out)
                .unwrap()
        })
    });
    g.bench_function("reclag_with_dynamics", |b| {
        b.iter(|| {
            model
                .score_into(&view, Some(&labels), Work::WithDynamics, &mut out)
                .unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
