//! Per-row explanations: why a row scored as it did. Built on the same kernels as
//! scoring, so an explanation never disagrees with the score it explains.

use rayon::prelude::*;

use crate::error::Result;
use crate::kernel::{argmax, gemm_abt, log_mean_exp};
use crate::model::{Model, Route};
use crate::rows::Rows;
use crate::score::{ScoreOutput, Work};

/// Explanations of `n` rows, in caller-owned buffers reused across batches.
#[derive(Clone, Debug, Default)]
pub struct Explanation {
    /// The full scoring output, with dynamics (score, energy, steps, ...).
    pub scores: ScoreOutput,
    /// The group each row was scored against; `None` for the union.
    pub group: Vec<Option<u32>>,
    /// Index of the memory most similar to the row, `argmax_μ ξ_μ·x`, within the
    /// memories of the group used (the union's when `group` is `None`).
    pub nearest_memory: Vec<i32>,
    /// `A_β(Ξ_g x)` of every group `g` (row-major, `n × groups`): shows which class the
    /// row resembles when it is OOD for the class it was routed to.
    pub group_energy: Vec<f64>,
}

const BLOCK: usize = 256;

impl Model {
    /// Explains every row; rows that score null (null or non-finite embeddings) get
    /// `nearest_memory = -1` and NaN group energies. Rows without a group are routed
    /// as [`Model::score_routed`] routes them.
    pub fn explain_into(
        &self,
        rows: &Rows<'_>,
        groups: Option<&[Option<u32>]>,
        out: &mut Explanation,
    ) -> Result<()> {
        self.explain_routed(rows, groups, Route::Best, out)
    }

    /// [`Model::explain_into`] with the route for rows without a group.
    pub fn explain_routed(
        &self,
        rows: &Rows<'_>,
        groups: Option<&[Option<u32>]>,
        route: Route,
        out: &mut Explanation,
    ) -> Result<()> {
        self.score_routed(rows, groups, route, Work::WithDynamics, &mut out.scores)?;
        let n = rows.len();
        let k = self.groups().len();
        // A one-group model's explanations name no group, as its file has one.
        let single = k == 1;
        out.group.clear();
        out.group.extend(
            out.scores
                .group
                .iter()
                .map(|&g| Some(g).filter(|&g| g != ScoreOutput::UNION && !single)),
        );
        out.nearest_memory.resize(n, -1);
        out.group_energy.resize(n * k, f64::NAN);
        let d = self.dim();
        let (union_xi, union_m) = self.union_memories();
        let valid = &out.scores.valid;
        let chosen = &out.group;
        // The union is every group's memories in order, so one product of a block of
        // rows with it gives each group's `Ξ_g x` as a slice of each row.
        let offsets = self.union_offsets();
        out.nearest_memory
            .par_chunks_mut(BLOCK)
            .zip(out.group_energy.par_chunks_mut(BLOCK * k))
            .enumerate()
            .for_each(|(b, (near, energy))| {
                near.fill(-1);
                energy.fill(f64::NAN);
                let (mut pre, mut ok) = (Vec::new(), Vec::new());
                self.preprocess(rows, b * BLOCK, near.len(), &mut pre, &mut ok);
                let mut x = Vec::with_capacity(pre.len());
                let mut kept = Vec::with_capacity(near.len());
                for r in 0..near.len() {
                    if ok[r] && valid[b * BLOCK + r] {
                        x.extend_from_slice(&pre[r * d..(r + 1) * d]);
                        kept.push(r);
                    }
                }
                let mut h = vec![0.0; kept.len() * union_m];
                gemm_abt(&x, kept.len(), d, union_xi, union_m, &mut h);
                for (hr, &r) in h.chunks_exact(union_m).zip(&kept) {
                    let slice = |g: usize| &hr[offsets[g]..offsets[g] + self.groups()[g].m];
                    for (g, e) in energy[r * k..(r + 1) * k].iter_mut().enumerate() {
                        *e = log_mean_exp(slice(g), self.beta());
                    }
                    near[r] = match (chosen[b * BLOCK + r], single) {
                        (Some(g), _) => argmax(slice(g as usize)),
                        (None, true) => argmax(slice(0)),
                        (None, false) => argmax(hr),
                    } as i32;
                }
            });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::model::{CalibratedOn, Group, GroupKey, ModelParts, Provenance};
    use crate::{Explanation, Model, Normalize, Route, Rows};

    fn two_groups() -> Model {
        let g = |key: i64, xi: Vec<f64>| Group {
            key: Some(GroupKey::Int(key)),
            xi,
            m: 2,
            tau: 1.0,
            n_train: 0,
            n_calibration: 0,
            calibrated_on: CalibratedOn::Train,
        };
        Model::new(ModelParts {
            d: 3,
            beta: 5.0,
            normalize: Normalize::None,
            max_iter: 16,
            tol: 1e-6,
            groups: vec![
                g(10, vec![2.0, 0.0, 0.0, 0.0, 2.0, 0.0]),
                g(20, vec![0.0, 0.0, 2.0, 0.0, 0.0, -2.0]),
            ],
            tau_star: 1.0,
            provenance: Provenance::default(),
            whitening: None,
            beta_search: None,
        })
        .unwrap()
    }

    #[test]
    fn an_ood_row_is_explained_by_the_group_it_resembles() {
        let m = two_groups();
        // Routed to group 10 but lying on group 20's first memory.
        let rows = [0.0f32, 0.1, 0.9, 1.0, 0.0, 0.0];
        let mut ex = Explanation::default();
        m.explain_into(
            &Rows::dense_f32(&rows, 3),
            Some(&[Some(0), Some(0)]),
            &mut ex,
        )
        .unwrap();
        assert!(ex.scores.is_ood[0] && !ex.scores.is_ood[1]);
        assert_eq!(ex.group, [Some(0), Some(0)]);
        // Energies per group: row 0 is far more like group 20.
        assert!(ex.group_energy[1] > ex.group_energy[0] + 1.0);
        assert!(ex.group_energy[2] > ex.group_energy[3] + 1.0);
        // Nearest memory within the routed group; the energy used matches scoring.
        assert_eq!(ex.nearest_memory, [1, 0]);
        assert_eq!(ex.scores.energy[0], ex.group_energy[0]);
        assert_eq!(ex.scores.energy[1], ex.group_energy[2]);
        // Union mode: the nearest memory indexes the union (group 20's first is 2).
        m.explain_routed(&Rows::dense_f32(&rows, 3), None, Route::Union, &mut ex)
            .unwrap();
        assert_eq!(ex.group, [None, None]);
        assert_eq!(ex.nearest_memory, [2, 0]);
        // Best routing: each row goes to the group it resembles, and is ID there.
        m.explain_into(&Rows::dense_f32(&rows, 3), None, &mut ex)
            .unwrap();
        assert_eq!(ex.group, [Some(1), Some(0)]);
        assert_eq!(ex.nearest_memory, [0, 0]);
        assert_eq!(ex.scores.is_ood, [false, false]);
        assert_eq!(ex.scores.energy[0], ex.group_energy[1]);
        let arr = crate::arrow::explain_array(&m, ex);
        assert_eq!(arr.len(), 2);
        assert_eq!(arr.data_type(), &crate::arrow::explain_type());
    }
}
