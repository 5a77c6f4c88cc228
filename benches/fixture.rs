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

/// [`model`] re-thresholded (spec §11) on 20,000 fresh ID rows, so it keeps
/// calibration scores and gives p-values; τ becomes each group's 5 % quantile of those
/// rows' energies. The tables' random rows (a tenth) then get small p-values.
pub fn calibrated_model() -> Model {
    let m = model();
    // ID rows of every group, drawn as `rows` draws its ID rows (in the stream every
    // row of group 9 is one of the random, OOD ones).
    let memories = memories();
    let n = 20_000;
    let mut x = vec![0f32; n * D];
    for (i, row) in x.chunks_mut(D).enumerate() {
        let mut r = Rng::new(90_000_000 + i as u64);
        let near = &memories[(i % K) * M + r.below(M as u64) as usize];
        for (v, c) in row.iter_mut().zip(near) {
            *v = (c / 10.0 + 0.02 * (r.next_f64() - 0.5)) as f32;
        }
    }
    let groups: Vec<Option<u32>> = (0..n).map(|i| Some((i % K) as u32)).collect();
    let mut acc = reclag::conformal::CalibrationEnergies::new(K);
    m.calibration_energies(&reclag::Rows::dense_f32(&x, D), &groups, &mut acc)
        .unwrap();
    m.recalibrated(&acc, 0.05, Provenance::default()).unwrap()
}

/// `m` without its calibration scores: the same thresholds and work, no p-values.
pub fn without_calibration(m: &Model) -> Model {
    Model::new(ModelParts {
        d: m.dim(),
        beta: m.beta(),
        normalize: m.normalize(),
        max_iter: m.max_iter(),
        tol: m.tol(),
        groups: m.groups().to_vec(),
        tau_star: m.tau_star(),
        provenance: m.provenance().clone(),
        whitening: m.whitening().cloned(),
        beta_search: m.beta_search().cloned(),
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
