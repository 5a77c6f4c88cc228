//! Scoring kernel at 1M × 512, K = 10 groups, M = 16 memories per group, against a
//! plain f32 GEMM of the same shapes (rows × d · d × M) from the same GEMM library.
//!
//!     cargo bench --bench score
//!
//! Set `RECLAG_BENCH_ROWS` to shrink the problem (e.g. for a quick look).
//!
//! The `whitened_*` group scores rows without a group against a model of the
//! whitened recipe (M = 64, β auto, best routing) with exact (f64) and f32-blocked
//! products, beside the d × d whitening product alone: `cargo bench --bench score --
//! whitened`. It uses at most 200,000 rows.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ndarray::linalg::general_mat_mul;
use ndarray::{Array2, ArrayView2};
use rayon::prelude::*;
use reclag::{GroupKey, NoProgress, Precision, Rows, ScoreOutput, TrainParams, TrainingSet, Work};

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
    // Rows without a group: every row against the union of all K·M memories, then
    // its best group's dynamics.
    g.bench_function("reclag_best_route", |b| {
        b.iter(|| {
            model
                .score_into(&view, None, Work::WithDynamics, &mut out)
                .unwrap()
        })
    });
    g.finish();
}

/// The whitened default on rows without a group: where its time goes (the whitening
/// product alone, then the whole score, with the whitening folded into the memories
/// and applied explicitly) and what f32-blocked products save.
fn whitened(c: &mut Criterion) {
    let n = rows().min(200_000);
    let (_, x, labels) = fixture(n);
    let fit = n.min(20_000);
    let keys: Vec<Option<GroupKey>> = labels[..fit]
        .iter()
        .map(|l| l.map(|g| GroupKey::Int(i64::from(g))))
        .collect();
    let mut set = TrainingSet::new(D, None, 1).unwrap();
    set.push(&Rows::dense_f32(&x[..fit * D], D), Some(&keys))
        .unwrap();
    let model = TrainParams::default()
        .check()
        .unwrap()
        .fit(&set, "bench", &NoProgress)
        .unwrap();
    let mut g = c.benchmark_group(format!("whitened_{n}x{D}_K{K}_M64_best_route"));
    g.sample_size(10)
        .measurement_time(Duration::from_secs(20))
        .throughput(Throughput::Elements(n as u64));
    let view = Rows::dense_f32(&x, D);
    for precision in [Precision::Exact, Precision::F32Blocked] {
        let mut m = model.clone();
        m.set_precision(precision);
        g.bench_function(format!("whitening_only_{}", precision.as_str()), |b| {
            b.iter(|| {
                (0..n).into_par_iter().step_by(1024).for_each(|start| {
                    let (mut pre, mut valid) = (Vec::new(), Vec::new());
                    m.preprocess(&view, start, 1024.min(n - start), &mut pre, &mut valid);
                    black_box(&pre);
                })
            })
        });
        let mut out = ScoreOutput::default();
        if precision == Precision::Exact {
            let explicit = m.unfolded();
            g.bench_function("reclag_exact_unfolded", |b| {
                b.iter(|| {
                    explicit
                        .score_into(&view, None, Work::WithDynamics, &mut out)
                        .unwrap()
                })
            });
        }
        g.bench_function(format!("reclag_{}", precision.as_str()), |b| {
            b.iter(|| {
                m.score_into(&view, None, Work::WithDynamics, &mut out)
                    .unwrap()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench, whitened);
criterion_main!(benches);
