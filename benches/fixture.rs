//! The benchmark problem shared by the kernel bench and the Parquet throughput
//! harness: K = 10 groups of M = 16 memories in d = 512.
#![allow(dead_code)] // each bench uses a different part

use rayon::prelude::*;
use reclag::rng::Rng;
use reclag::{CalibratedOn, Group, GroupKey, Model, ModelParts, Normalize, Provenance};

pub const D: usize = 512;
pub const K: usize = 10;
pub const M: usize = 16;

fn memories() -> Vec<Vec<f64>> {
    let mut rng = Rng::new(42);
    let unit = |rng: &mut Rng| -> Vec<f64> {
        let v: Vec<f64> = (0..D).map(|_| rng.next_f64() - 0.5).collect();
        let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        v.into_iter().map(|x| x / norm).collect()
    };
    (0..K * M)
        .map(|_| unit(&mut rng).into_iter().map(|x| 10.0 * x).collect())
        .collect()
}

/// Shaped like a trained model: each group's memories point in distinct directions at
/// norm 10 (the trainer's init norm), 90 % of rows lie near one of their group's
/// memories and 10 % are random directions. On real data (image_fmnist) ID rows
/// converge in 2 steps and OOD rows stop after 1; this fixture behaves the same.
pub fn model() -> Model {
    let memories = memories();
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
    Model::new(ModelParts {
        d: D,
        beta: 5.0,
        normalize: Normalize::L2,
        max_iter: 16,
        tol: 1e-6,
        groups,
        tau_star: 2.0,
        provenance: Provenance::default(),
        whitening: None,
        beta_search: None,
    })
    .unwrap()
}

/// Rows `start..start + n` (row-major) and their labels; row `i` depends only on `i`,
/// so any slice of the stream can be generated independently and in parallel.
pub fn rows(start: usize, n: usize) -> (Vec<f32>, Vec<i64>) {
    let memories = memories();
    let mut x = vec![0f32; n * D];
    let mut labels = vec![0i64; n];
    x.par_chunks_mut(D)
        .zip(labels.par_iter_mut())
        .enumerate()
        .for_each(|(k, (row, l))| {
            let i = start + k;
            let mut r = Rng::new(i as u64);
            let g = i % K;
            *l = g as i64;
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
    (x, labels)
}

/// The kernel bench's in-memory fixture: model, rows and group indices.
pub fn fixture(n: usize) -> (Model, Vec<f32>, Vec<Option<u32>>) {
    let (x, labels) = rows(0, n);
    (
        model(),
        x,
        labels.into_iter().map(|l| Some(l as u32)).collect(),
    )
}
