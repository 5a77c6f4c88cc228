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
use reclag::rng::Rng;
use reclag::{
    CalibratedOn, Group, GroupKey, Model, ModelParts, Normalize, Provenance, Rows, ScoreOutput,
    Work,
};

const D: usize = 512;
const K: usize = 10;
const M: usize = 16;

fn rows() -> usize {
    std::env::var("RECLAG_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000)
}

/// Shaped like a trained model: each group's memories point in distinct directions at
/// norm 10 (the trainer's init norm), 90 % of rows lie near one of their group's
/// memories and 10 % are random directions. On real data (image_fmnist) ID rows
/// converge in 2 steps and OOD rows stop after 1; this fixture behaves the same.
fn fixture(n: usize) -> (Model, Vec<f32>, Vec<Option<u32>>) {
    let mut rng = Rng::new(42);
    let unit = |rng: &mut Rng| -> Vec<f64> {
        let v: Vec<f64> = (0..D).map(|_| rng.next_f64() - 0.5).collect();
        let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        v.into_iter().map(|x| x / norm).collect()
    };
    let memories: Vec<Vec<f64>> = (0..K * M)
        .map(|_| unit(&mut rng).into_iter().map(|x| 10.0 * x).collect())
        .collect();
    let groups = (0..K)
        .map(|g| Group {
            key: Some(GroupKey::Int(g as i64)),
            xi: memories[g * M..(g + 1) * M].concat(),
            m: M,
            tau: 2.0,
            n_train: 0,
            n_calibration: 0,
            calibrated_on: CalibratedOn::Holdout,
        })
        .collect();
    let model = Model::new(ModelParts {
        d: D,
        beta: 5.0,
        normalize: Normalize::L2,
        max_iter: 16,
        tol: 1e-6,
        groups,
        tau_star: 2.0,
        provenance: Provenance::default(),
    })
    .unwrap();
    let mut x = vec![0f32; n * D];
    let mut labels = vec![None; n];
    x.par_chunks_mut(D)
        .zip(labels.par_iter_mut())
        .enumerate()
        .for_each(|(i, (row, l))| {
            let mut r = Rng::new(i as u64);
            let g = i % K;
            *l = Some(g as u32);
            let near = &memories[g * M + r.below(M as u64) as usize];
            let ood = i % 10 == 9;
            for (j, v) in row.iter_mut().enumerate() {
                let noise = r.next_f64() - 0.5;
                *v = if ood {
                    noise as f32
                } else {
                    (near[j] / 10.0 + 0.02 * noise) as f32
                };
            }
        });
    (model, x, labels)
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
