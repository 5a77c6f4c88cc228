//! Batch scoring (spec §3–§4): energies of a block of rows against a memory matrix as
//! one GEMM, then the CCCP dynamics run on the whole block at once, with rows dropping
//! out of the active set as they converge or fall into the origin's basin.

use rayon::prelude::*;

use crate::dynamics::Lanes;
use crate::error::{Error, Result};
use crate::folded::Folded;
use crate::kernel::{
    argmax, gemm_ab, gemm_abt, lme_softmax, lme_softmax_rows, log_mean_exp, sigmoid, small_gemm,
};
use crate::model::{Model, Normalize, Precision, Route};
use crate::rows::Rows;
use crate::tile;

/// Rows per parallel task: enough work per task to amortise the per-block buckets and
/// scratch buffers, small enough to balance load over threads.
const BLOCK: usize = 1024;

/// Caller-owned output buffers (one entry per input row). `valid[i] == false` means the
/// row's outputs are null; the other entries for that row are unspecified.
#[derive(Clone, Debug, Default)]
pub struct ScoreOutput {
    pub score: Vec<f64>,
    pub energy: Vec<f64>,
    pub ood_probability: Vec<f64>,
    pub is_ood: Vec<bool>,
    pub attractor: Vec<i32>,
    /// Number of updates applied by the dynamics (0 when they were not run).
    pub steps: Vec<u32>,
    /// The group each row was scored against ([`ScoreOutput::UNION`] in union mode):
    /// its own group, or the one best routing chose.
    pub group: Vec<u32>,
    pub valid: Vec<bool>,
}

impl ScoreOutput {
    /// [`ScoreOutput::group`] of a row scored against the union of all groups.
    pub const UNION: u32 = u32::MAX;

    fn resize(&mut self, n: usize) {
        self.group.resize(n, Self::UNION);
        self.score.resize(n, 0.0);
        self.energy.resize(n, 0.0);
        self.ood_probability.resize(n, 0.0);
        self.is_ood.resize(n, false);
        self.attractor.resize(n, 0);
        self.steps.resize(n, 0);
        self.valid.resize(n, false);
    }

    pub fn len(&self) -> usize {
        self.valid.len()
    }
    pub fn is_empty(&self) -> bool {
        self.valid.is_empty()
    }
}

/// Which outputs a caller needs. The dynamics cost two extra GEMMs per iteration, so
/// callers that only want `score`/`energy`/`ood_probability` skip them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Work {
    EnergyOnly,
    WithDynamics,
}

/// How a block's rows become `x_0 = pre(x)` on their way into `Ξx_0`.
#[derive(Clone, Copy)]
enum Pre<'a> {
    /// The rows are `x_0` already (`normalize = none`, or whitened into scratch).
    Done,
    /// `x_0 = l2(x)`, applied to `Ξx` after the product.
    L2,
    /// §10's `pre`, folded into the memories.
    Folded(&'a Folded),
}

/// The memory matrix and threshold a row is scored against.
#[derive(Clone, Copy)]
struct Target<'m> {
    xi: &'m [f64],
    m: usize,
    tau: f64,
    gram: Option<&'m [f64]>,
    panel: &'m [f64],
}

struct OutChunk<'o> {
    start: usize,
    score: &'o mut [f64],
    energy: &'o mut [f64],
    prob: &'o mut [f64],
    is_ood: &'o mut [bool],
    attractor: &'o mut [i32],
    steps: &'o mut [u32],
    group: &'o mut [u32],
    valid: &'o mut [bool],
}

impl Model {
    /// Scores `rows` into `out` (resized to `rows.len()`).
    ///
    /// `groups[i]` is the group index for row `i` (from [`Model::resolve_int`] /
    /// [`Model::resolve_str`]) or `None` for a row without a group, which is routed to
    /// the group of largest margin (`route = best`, §4); `groups = None` routes every
    /// row that way. [`Model::score_routed`] chooses union mode instead.
    pub fn score_into(
        &self,
        rows: &Rows<'_>,
        groups: Option<&[Option<u32>]>,
        work: Work,
        out: &mut ScoreOutput,
    ) -> Result<()> {
        self.score_with(rows, groups, Route::Best, work, out, true)
    }

    /// [`Model::score_into`] with the route for rows without a group.
    pub fn score_routed(
        &self,
        rows: &Rows<'_>,
        groups: Option<&[Option<u32>]>,
        route: Route,
        work: Work,
        out: &mut ScoreOutput,
    ) -> Result<()> {
        self.score_with(rows, groups, route, work, out, true)
    }

    /// [`Model::score_routed`] on the calling thread only: the same outputs, bit for
    /// bit. For callers that already run one scorer per core on rows they just wrote
    /// (a decoded page in this core's cache): handing those rows to a pool thread
    /// would cost a wake-up and, on another core, a second trip through the cache
    /// hierarchy.
    pub fn score_into_here(
        &self,
        rows: &Rows<'_>,
        groups: Option<&[Option<u32>]>,
        route: Route,
        work: Work,
        out: &mut ScoreOutput,
    ) -> Result<()> {
        self.score_with(rows, groups, route, work, out, false)
    }

    fn score_with(
        &self,
        rows: &Rows<'_>,
        groups: Option<&[Option<u32>]>,
        route: Route,
        work: Work,
        out: &mut ScoreOutput,
        parallel: bool,
    ) -> Result<()> {
        if rows.dim() != self.d {
            return Err(Error::Dimension {
                column: "embedding".into(),
                expected: self.d,
                found: rows.dim(),
                row: None,
            });
        }
        if let Some(g) = groups {
            if g.len() != rows.len() {
                return Err(Error::Model(format!(
                    "{} group entries for {} rows",
                    g.len(),
                    rows.len()
                )));
            }
            if let Some(bad) = g
                .iter()
                .flatten()
                .find(|&&v| v as usize >= self.groups.len())
            {
                return Err(Error::Model(format!(
                    "group index {bad} out of range (model has {} groups)",
                    self.groups.len()
                )));
            }
        }
        let n = rows.len();
        out.resize(n);
        let chunks = split_out(out, n);
        // Built before the tasks start, so none of them waits on another to build it.
        let folded = self.folded();
        let block = |mut c: OutChunk<'_>| {
            let len = c.valid.len();
            let g = groups.map(|g| &g[c.start..c.start + len]);
            let start = c.start;
            if let Some(f) = folded {
                self.score_block(rows, start, g, route, work, &mut c, Pre::Folded(f));
            } else if self.whitening.is_some() {
                // §10's `pre` is not a per-row scale of `Ξx`: unfolded, the block's rows
                // are whitened into scratch first (one `d×d` product per row) and
                // scored from there.
                let (mut pre, mut valid) = (Vec::new(), Vec::new());
                self.preprocess(rows, start, len, &mut pre, &mut valid);
                let pre_rows = Rows::dense_f64(&pre, self.d);
                self.score_block(&pre_rows, 0, g, route, work, &mut c, Pre::Done);
            } else {
                let pre = match self.normalize {
                    Normalize::L2 => Pre::L2,
                    Normalize::None => Pre::Done,
                };
                self.score_block(rows, start, g, route, work, &mut c, pre);
            }
        };
        if parallel {
            chunks.into_par_iter().for_each(block);
        } else {
            chunks.into_iter().for_each(block);
        }
        Ok(())
    }

    fn target(&self, g: usize) -> Target<'_> {
        let grp = &self.groups[g];
        Target {
            xi: &grp.xi,
            m: grp.m,
            tau: grp.tau,
            gram: self.grams[g].as_deref(),
            panel: &self.panels[g],
        }
    }

    fn union_target(&self) -> Target<'_> {
        let k = self.groups.len();
        Target {
            xi: &self.union_xi,
            m: self.union_m,
            tau: self.tau_star,
            gram: self.grams[k].as_deref(),
            panel: &self.panels[k],
        }
    }

    /// `Ξx_0` of the rows `rows_in` (block-relative) against `t`'s memories (target
    /// `which`: a group, or the union after them), `x_0 = pre(x)` as `pre` says. Null
    /// and non-finite rows are marked invalid in `c` and left out; returns the kept
    /// rows, their `Ξx_0` (`kept×m`) and `‖x_0‖²`.
    #[allow(clippy::too_many_arguments)]
    fn dots(
        &self,
        rows: &Rows<'_>,
        start: usize,
        rows_in: &[usize],
        t: Target<'_>,
        which: usize,
        pre: Pre<'_>,
        c: &mut OutChunk<'_>,
    ) -> (Vec<usize>, Vec<f64>, Vec<f64>) {
        let l2 = match pre {
            Pre::Folded(f) => return self.dots_folded(f, which, rows, start, rows_in, c),
            Pre::L2 => true,
            Pre::Done if self.precision == Precision::F32Blocked && self.whitening.is_some() => {
                return Self::dots_f32_blocked(rows, start, rows_in, t, c);
            }
            Pre::Done => false,
        };
        let mut idx = Vec::with_capacity(rows_in.len());
        let mut abs = Vec::with_capacity(rows_in.len());
        for &i in rows_in {
            if rows.is_null(start + i) {
                c.valid[i] = false;
                c.steps[i] = 0;
            } else {
                idx.push(i);
                abs.push(start + i);
            }
        }
        let mut hs = vec![0.0; abs.len() * t.m];
        let mut sq = vec![0.0; abs.len()];
        tile::dots_in_place(rows, &abs, t.xi, t.panel, t.m, &mut hs, &mut sq);
        // Drop non-finite rows (NaN/inf make ‖x‖² non-finite; a finite row whose
        // square overflowed gets its norm recomputed with scaling).
        let mut x0sq = Vec::with_capacity(idx.len());
        let mut kept = 0;
        for r in 0..idx.len() {
            let i = idx[r];
            let norm = if sq[r].is_finite() {
                Some(sq[r].sqrt())
            } else {
                rows.norm(start + i)
            };
            c.valid[i] = norm.is_some();
            let Some(norm) = norm else {
                c.steps[i] = 0;
                continue;
            };
            // `pre` is linear per row, so it is applied to `h = Ξx` after the
            // product rather than to the d-vector: `Ξ(x/‖x‖) = (Ξx)/‖x‖`.
            let s = if l2 && norm > 0.0 { 1.0 / norm } else { 1.0 };
            x0sq.push((norm * s) * (norm * s));
            let h = &mut hs[r * t.m..(r + 1) * t.m];
            if s != 1.0 {
                h.iter_mut().for_each(|v| *v *= s);
            }
            hs.copy_within(r * t.m..(r + 1) * t.m, kept * t.m);
            idx[kept] = i;
            kept += 1;
        }
        idx.truncate(kept);
        hs.truncate(kept * t.m);
        (idx, hs, x0sq)
    }

    /// [`Model::dots`] of raw rows against the folded whitening (see `folded`):
    /// `h = (P z − c)/n` with `P z` read in place by the scoring kernel (with
    /// [`Precision::F32Blocked`], f32 products of `z` in blocks) and `n = ‖W(z − μ)‖`
    /// from the triangular factor, in f64 either way; `‖x_0‖²` is 1 (0 where
    /// `W(z − μ)` is zero, whose `pre` is 0).
    fn dots_folded(
        &self,
        f: &Folded,
        which: usize,
        rows: &Rows<'_>,
        start: usize,
        rows_in: &[usize],
        c: &mut OutChunk<'_>,
    ) -> (Vec<usize>, Vec<f64>, Vec<f64>) {
        let d = self.d;
        let ft = &f.targets[which];
        let m = ft.c.len();
        let mut idx = Vec::with_capacity(rows_in.len());
        let mut abs = Vec::with_capacity(rows_in.len());
        let mut inv = Vec::with_capacity(rows_in.len());
        // `z − μ` per kept row, for the norm.
        let mut v = Vec::with_capacity(rows_in.len() * d);
        let f32_blocked = self.precision == Precision::F32Blocked;
        let mut z32 = Vec::with_capacity(if f32_blocked { rows_in.len() * d } else { 0 });
        let mut row = vec![0.0; d];
        for &i in rows_in {
            match rows.gather_norm(start + i, &mut row) {
                Some(norm) => {
                    // `l2` leaves a zero row zero: `z = 0`.
                    let s = if norm > 0.0 { 1.0 / norm } else { 0.0 };
                    v.extend(row.iter().zip(&f.mu).map(|(x, mu)| x * s - mu));
                    if f32_blocked {
                        z32.extend(row.iter().map(|x| (x * s) as f32));
                    }
                    c.valid[i] = true;
                    idx.push(i);
                    abs.push(start + i);
                    inv.push(s);
                }
                None => {
                    c.valid[i] = false;
                    c.steps[i] = 0;
                }
            }
        }
        let n = idx.len();
        let mut hs = vec![0.0; n * m];
        let mut sq = vec![0.0; n];
        if f32_blocked {
            // Products of `z` itself, so no scale is left to apply (and `sq` stays 0).
            crate::kernel::gemm_abt_f32_blocked(&z32, n, d, &ft.p32, m, &mut hs);
            inv.fill(1.0);
        } else {
            tile::dots_in_place(rows, &abs, &ft.p, &ft.panel, m, &mut hs, &mut sq);
        }
        let mut nsq = vec![0.0; n];
        f.norms(&v, n, &mut nsq);
        let mut x0sq = Vec::with_capacity(n);
        for r in 0..n {
            let h = &mut hs[r * m..(r + 1) * m];
            let mut s = inv[r];
            if !sq[r].is_finite() {
                // Finite components whose squares overflow (f64 rows near 1e154):
                // `P x` may have overflowed too, so take `P z` from `z` itself.
                let z: Vec<f64> = v[r * d..(r + 1) * d]
                    .iter()
                    .zip(&f.mu)
                    .map(|(v, mu)| v + mu)
                    .collect();
                for (hv, p) in h.iter_mut().zip(ft.p.chunks_exact(d)) {
                    *hv = crate::kernel::dot(p, &z);
                }
                s = 1.0;
            }
            let norm = nsq[r].sqrt();
            if norm > 0.0 {
                let k = 1.0 / norm;
                h.iter_mut()
                    .zip(&ft.c)
                    .for_each(|(hv, cv)| *hv = (*hv * s - cv) * k);
                x0sq.push(1.0);
            } else {
                h.fill(0.0);
                x0sq.push(0.0);
            }
        }
        (idx, hs, x0sq)
    }

    /// [`Model::dots`] of already preprocessed (whitened) rows with
    /// [`Precision::F32Blocked`] products; `‖x_0‖²` stays f64.
    fn dots_f32_blocked(
        rows: &Rows<'_>,
        start: usize,
        rows_in: &[usize],
        t: Target<'_>,
        c: &mut OutChunk<'_>,
    ) -> (Vec<usize>, Vec<f64>, Vec<f64>) {
        let d = rows.dim();
        let mut idx = Vec::with_capacity(rows_in.len());
        let mut x0sq = Vec::with_capacity(rows_in.len());
        let mut x32 = Vec::with_capacity(rows_in.len() * d);
        let mut row = vec![0.0; d];
        for &i in rows_in {
            match rows.gather_norm(start + i, &mut row) {
                Some(norm) => {
                    c.valid[i] = true;
                    idx.push(i);
                    x0sq.push(norm * norm);
                    x32.extend(row.iter().map(|&v| v as f32));
                }
                None => {
                    c.valid[i] = false;
                    c.steps[i] = 0;
                }
            }
        }
        let xi32: Vec<f32> = t.xi.iter().map(|&v| v as f32).collect();
        let mut hs = vec![0.0; idx.len() * t.m];
        crate::kernel::gemm_abt_f32_blocked(&x32, idx.len(), d, &xi32, t.m, &mut hs);
        (idx, hs, x0sq)
    }

    #[allow(clippy::too_many_arguments)]
    fn score_block(
        &self,
        rows: &Rows<'_>,
        start: usize,
        groups: Option<&[Option<u32>]>,
        route: Route,
        work: Work,
        c: &mut OutChunk<'_>,
        pre: Pre<'_>,
    ) {
        let len = c.valid.len();
        let k = self.groups.len();
        // Bucket rows by their group first (k: no group); each bucket's rows are then
        // read in place by the tile kernel. A one-group model scores every row against
        // its one group.
        let mut buckets: Vec<Vec<usize>> = vec![Vec::new(); k + 1];
        for i in 0..len {
            let sel = match groups.and_then(|g| g[i]) {
                _ if k == 1 => 0,
                Some(g) => g as usize,
                None => k,
            };
            buckets[sel].push(i);
        }
        for (g, rows_in) in buckets[..k].iter().enumerate() {
            if rows_in.is_empty() {
                continue;
            }
            let t = self.target(g);
            let (idx, hs, x0sq) = self.dots(rows, start, rows_in, t, g, pre, c);
            let mut a0 = vec![0.0; idx.len()];
            let mut p0 = vec![0.0; hs.len()];
            lme_softmax_rows(&hs, t.m, self.beta, &mut p0, &mut a0);
            self.finish(t, g as u32, &idx, hs, &x0sq, &a0, &p0, work, c);
        }
        if buckets[k].is_empty() {
            return;
        }
        let u = self.union_target();
        let (idx, hs, x0sq) = self.dots(rows, start, &buckets[k], u, k, pre, c);
        if idx.is_empty() {
            return;
        }
        match route {
            Route::Union => self.finish_union(u, &idx, &hs, c),
            Route::Best => self.route_best(&idx, &hs, &x0sq, work, c),
        }
    }

    /// §4's union mode: `τ_*` against the union's energy, decided on the first step.
    fn finish_union(&self, u: Target<'_>, idx: &[usize], hs: &[f64], c: &mut OutChunk<'_>) {
        let mut a0 = vec![0.0; idx.len()];
        let mut p0 = vec![0.0; hs.len()];
        lme_softmax_rows(hs, u.m, self.beta, &mut p0, &mut a0);
        for (r, &i) in idx.iter().enumerate() {
            let a = a0[r];
            c.energy[i] = a;
            c.score[i] = a - u.tau;
            c.prob[i] = sigmoid(self.beta * (u.tau - a));
            let ood = a <= u.tau;
            c.is_ood[i] = ood;
            c.attractor[i] = if ood {
                -1
            } else {
                argmax(&hs[r * u.m..(r + 1) * u.m]) as i32
            };
            c.steps[i] = 0;
            c.group[i] = ScoreOutput::UNION;
        }
    }

    /// §10's best route: each group's energy from its slice of the union's `Ξx_0`,
    /// the group of largest margin (ties: the first), then that group's dynamics.
    fn route_best(
        &self,
        idx: &[usize],
        hs: &[f64],
        x0sq: &[f64],
        work: Work,
        c: &mut OutChunk<'_>,
    ) {
        let n = idx.len();
        let um = self.union_m;
        let offsets = self.union_offsets();
        let mut best = vec![(f64::NEG_INFINITY, 0usize); n];
        let mut per_group: Vec<(Vec<f64>, Vec<f64>, Vec<f64>)> =
            Vec::with_capacity(self.groups.len());
        for (g, grp) in self.groups.iter().enumerate() {
            let m = grp.m;
            let mut h = Vec::with_capacity(n * m);
            for r in 0..n {
                h.extend_from_slice(&hs[r * um + offsets[g]..r * um + offsets[g] + m]);
            }
            let mut a = vec![0.0; n];
            let mut p = vec![0.0; n * m];
            lme_softmax_rows(&h, m, self.beta, &mut p, &mut a);
            for (b, &e) in best.iter_mut().zip(&a) {
                let margin = e - grp.tau;
                // Strictly greater: on a tie the earlier group keeps the row.
                if g == 0 || margin > b.0 {
                    *b = (margin, g);
                }
            }
            per_group.push((h, a, p));
        }
        for (g, (h, a, p)) in per_group.into_iter().enumerate() {
            let m = self.groups[g].m;
            let mine: Vec<usize> = (0..n).filter(|&r| best[r].1 == g).collect();
            if mine.is_empty() {
                continue;
            }
            let sel_idx: Vec<usize> = mine.iter().map(|&r| idx[r]).collect();
            let mut sel_h = Vec::with_capacity(mine.len() * m);
            let mut sel_p = Vec::with_capacity(mine.len() * m);
            let mut sel_a = Vec::with_capacity(mine.len());
            let mut sel_sq = Vec::with_capacity(mine.len());
            for &r in &mine {
                sel_h.extend_from_slice(&h[r * m..(r + 1) * m]);
                sel_p.extend_from_slice(&p[r * m..(r + 1) * m]);
                sel_a.push(a[r]);
                sel_sq.push(x0sq[r]);
            }
            let t = self.target(g);
            self.finish(
                t, g as u32, &sel_idx, sel_h, &sel_sq, &sel_a, &sel_p, work, c,
            );
        }
    }

    /// Outputs of rows scored against one group `t`: §4's margin and posterior from
    /// the first energies `a0`, then §3's dynamics (which reuse `p0`).
    #[allow(clippy::too_many_arguments)]
    fn finish(
        &self,
        t: Target<'_>,
        g: u32,
        idx: &[usize],
        mut hs: Vec<f64>,
        x0sq: &[f64],
        a0: &[f64],
        p0: &[f64],
        work: Work,
        c: &mut OutChunk<'_>,
    ) {
        if idx.is_empty() {
            return;
        }
        for (r, &i) in idx.iter().enumerate() {
            let a = a0[r];
            c.energy[i] = a;
            c.score[i] = a - t.tau;
            c.prob[i] = sigmoid(self.beta * (t.tau - a));
            c.group[i] = g;
        }
        if work == Work::WithDynamics {
            let first = First { energy: a0, p: p0 };
            let res = dynamics(
                t,
                self.d,
                self.beta,
                self.max_iter,
                self.tol,
                x0sq,
                first,
                &mut hs,
            );
            for (r, &i) in idx.iter().enumerate() {
                let (ood, att, steps) = res[r];
                c.is_ood[i] = ood;
                c.attractor[i] = att;
                c.steps[i] = steps;
            }
        } else {
            // Not computed: `is_ood` is a property of the whole trajectory, so it is
            // left false/-1 rather than guessed from the first step.
            for &i in idx {
                c.is_ood[i] = false;
                c.attractor[i] = -1;
                c.steps[i] = 0;
            }
        }
    }
}

fn split_out(out: &mut ScoreOutput, n: usize) -> Vec<OutChunk<'_>> {
    let mut v = Vec::with_capacity(n.div_ceil(BLOCK));
    let mut score = out.score.chunks_mut(BLOCK);
    let mut energy = out.energy.chunks_mut(BLOCK);
    let mut prob = out.ood_probability.chunks_mut(BLOCK);
    let mut is_ood = out.is_ood.chunks_mut(BLOCK);
    let mut attractor = out.attractor.chunks_mut(BLOCK);
    let mut steps = out.steps.chunks_mut(BLOCK);
    let mut group = out.group.chunks_mut(BLOCK);
    let mut start = 0;
    for valid in out.valid.chunks_mut(BLOCK) {
        let len = valid.len();
        v.push(OutChunk {
            start,
            score: score.next().expect("same length"),
            energy: energy.next().expect("same length"),
            prob: prob.next().expect("same length"),
            is_ood: is_ood.next().expect("same length"),
            attractor: attractor.next().expect("same length"),
            steps: steps.next().expect("same length"),
            group: group.next().expect("same length"),
            valid,
        });
        start += len;
    }
    v
}

/// `A_β(Ξx_0)` and `softmax(βΞx_0)` per row, already computed with the energies.
#[derive(Clone, Copy)]
struct First<'a> {
    energy: &'a [f64],
    p: &'a [f64],
}

/// Runs §3's dynamics for `n` rows at once, in memory space.
///
/// Every state after the first is `x_t = Ξᵀp_{t−1}` with `p = softmax(βh)`, so
/// `h_{t+1} = Ξx_{t+1} = (ΞΞᵀ)p_t`: one `M×M` product per step instead of two `M×d`
/// ones, and no `d`-vector is ever formed. The stop rule needs only dot products in
/// that space: `‖x_{t+1}‖² = p_t·h_{t+1}`, `‖x_t‖² = p_{t−1}·h_t`, and
/// `‖x_{t+1} − x_t‖² = (p_t − p_{t−1})·(h_{t+1} − h_t)`; for the first step
/// `‖x_1 − x_0‖² = ‖x_0‖² − 2p_0·h_0 + p_0·h_1`, whose rounding (≈1e-8·‖x_0‖) is far
/// below the `1e-6·(1+‖x_0‖)` tolerance.
///
/// `hs` (`n×m`) holds `Ξx_0` on entry; `x0sq` is `‖x_0‖²`. Returns `(is_ood,
/// attractor, steps)` per row. With AVX-512 and a Gram matrix the rows run eight at
/// a time ([`Lanes`]); otherwise, and as the reference those lanes are held to,
/// [`dynamics_reference`].
#[allow(clippy::too_many_arguments)]
fn dynamics(
    t: Target<'_>,
    d: usize,
    beta: f64,
    max_iter: usize,
    tol: f64,
    x0sq: &[f64],
    first: First<'_>,
    hs: &mut [f64],
) -> Vec<(bool, i32, u32)> {
    let lanes = t
        .gram
        .filter(|_| Lanes::fits(t.m, max_iter))
        .and_then(|gram| {
            Lanes {
                gram,
                m: t.m,
                tau: t.tau,
                beta,
                max_iter,
                tol,
                x0sq,
                energy: first.energy,
                p: first.p,
            }
            .run(hs)
        });
    lanes.unwrap_or_else(|| dynamics_reference(t, d, beta, max_iter, tol, x0sq, first, hs))
}

/// [`dynamics`] one active list at a time; `hs` holds the final `Ξx` on exit.
#[allow(clippy::too_many_arguments)]
fn dynamics_reference(
    t: Target<'_>,
    d: usize,
    beta: f64,
    max_iter: usize,
    tol: f64,
    x0sq: &[f64],
    first: First<'_>,
    hs: &mut [f64],
) -> Vec<(bool, i32, u32)> {
    let m = t.m;
    let n = hs.len() / m;
    let mut res = vec![(false, -1i32, 0u32); n];
    let mut active: Vec<usize> = (0..n).collect();
    let mut survivors = Vec::with_capacity(n);
    let mut prev_p = vec![0.0; n * m];
    let mut p = Vec::with_capacity(n * m);
    let mut hn = Vec::with_capacity(n * m);
    let mut xbuf = Vec::new();
    let mut hbuf = Vec::with_capacity(n * m);
    let mut energies = Vec::with_capacity(n);
    let mut steps = 0u32;
    while !active.is_empty() && (steps as usize) < max_iter {
        steps += 1;
        survivors.clear();
        p.clear();
        energies.clear();
        if steps == 1 {
            for &r in &active {
                p.extend_from_slice(&first.p[r * m..(r + 1) * m]);
                energies.push(first.energy[r]);
            }
        } else {
            // Every active row's softmax in one call (see `lme_softmax_rows`).
            hbuf.clear();
            for &r in &active {
                hbuf.extend_from_slice(&hs[r * m..(r + 1) * m]);
            }
            p.resize(hbuf.len(), 0.0);
            energies.resize(active.len(), 0.0);
            lme_softmax_rows(&hbuf, m, beta, &mut p, &mut energies);
        }
        for (k, &r) in active.iter().enumerate() {
            if energies[k] <= t.tau {
                // The dead zone: this update sends the row to the origin.
                res[r] = (true, -1, steps);
            } else {
                let kept = survivors.len();
                if kept != k {
                    p.copy_within(k * m..(k + 1) * m, kept * m);
                }
                survivors.push(r);
            }
        }
        let ns = survivors.len();
        p.truncate(ns * m);
        hn.clear();
        hn.resize(ns * m, 0.0);
        match t.gram {
            Some(g) => small_gemm(&p, g, m, &mut hn),
            None => {
                xbuf.clear();
                xbuf.resize(ns * d, 0.0);
                gemm_ab(&p, ns, m, t.xi, d, &mut xbuf);
                gemm_abt(&xbuf, ns, d, t.xi, m, &mut hn);
            }
        }
        active.clear();
        for (k, &r) in survivors.iter().enumerate() {
            let pk = &p[k * m..(k + 1) * m];
            let hk = &hn[k * m..(k + 1) * m];
            let h = &hs[r * m..(r + 1) * m];
            let new_sq = dot4(pk, hk);
            if new_sq <= 0.0 {
                // x_{t+1} = Ξᵀp = 0: the trajectory reached the origin.
                res[r] = (true, -1, steps);
                continue;
            }
            let (diff_sq, old_sq) = if steps == 1 {
                (x0sq[r] - 2.0 * dot4(pk, h) + new_sq, x0sq[r])
            } else {
                let pp = &prev_p[r * m..(r + 1) * m];
                (diff_dot4(pk, pp, hk, h), dot4(pp, h))
            };
            let converged = diff_sq.max(0.0).sqrt() <= tol * (1.0 + old_sq.max(0.0).sqrt());
            hs[r * m..(r + 1) * m].copy_from_slice(hk);
            prev_p[r * m..(r + 1) * m].copy_from_slice(pk);
            if converged {
                res[r] = (false, argmax(hk) as i32, steps);
            } else {
                active.push(r);
            }
        }
    }
    for &r in &active {
        res[r] = (false, argmax(&hs[r * m..(r + 1) * m]) as i32, steps);
    }
    res
}

/// `a·b` in four interleaved partial sums. The stop rule's dot products are short
/// (`m` terms) and many; summed one term after another they are a chain of dependent
/// adds, which measured as most of the dynamics' own time. Only the stop rule uses
/// them, where a different rounding of the last bit decides nothing.
#[inline]
fn dot4(a: &[f64], b: &[f64]) -> f64 {
    let mut s = [0.0f64; 4];
    let (a4, b4) = (a.chunks_exact(4), b.chunks_exact(4));
    let tail: f64 = a4
        .remainder()
        .iter()
        .zip(b4.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in a4.zip(b4) {
        for ((acc, &xv), &yv) in s.iter_mut().zip(x).zip(y) {
            *acc += xv * yv;
        }
    }
    (s[0] + s[1]) + (s[2] + s[3]) + tail
}

/// `(a − b)·(c − e)`, summed as [`dot4`] does.
#[inline]
fn diff_dot4(a: &[f64], b: &[f64], c: &[f64], e: &[f64]) -> f64 {
    let mut s = [0.0f64; 4];
    let chunks = a
        .chunks_exact(4)
        .zip(b.chunks_exact(4))
        .zip(c.chunks_exact(4).zip(e.chunks_exact(4)));
    for ((a4, b4), (c4, e4)) in chunks {
        for (k, acc) in s.iter_mut().enumerate() {
            *acc += (a4[k] - b4[k]) * (c4[k] - e4[k]);
        }
    }
    let j = a.len() / 4 * 4;
    let tail: f64 = (j..a.len()).map(|k| (a[k] - b[k]) * (c[k] - e[k])).sum();
    (s[0] + s[1]) + (s[2] + s[3]) + tail
}

/// Energies `A_β(Ξ x)` of preprocessed f64 rows (`n×d`) against one memory matrix,
/// computed block-wise in parallel. Used by calibration and the HE baseline.
pub fn energies(xi: &[f64], m: usize, beta: f64, x: &[f64], d: usize) -> Vec<f64> {
    let n = x.len() / d;
    let mut out = vec![0.0; n];
    out.par_chunks_mut(BLOCK)
        .zip(x.par_chunks(BLOCK * d))
        .for_each(|(o, xb)| {
            let nb = o.len();
            let mut h = vec![0.0; nb * m];
            gemm_abt(xb, nb, d, xi, m, &mut h);
            for (r, e) in o.iter_mut().enumerate() {
                *e = log_mean_exp(&h[r * m..(r + 1) * m], beta);
            }
        });
    out
}

/// One update of §3 for a single row: `Ξᵀ softmax(βΞx)` outside the dead zone, else 0.
/// The batch path above is the production kernel; this scalar form exists so the
/// spec's properties (energy descent, the vanilla limit) can be checked step by step.
pub fn step(xi: &[f64], m: usize, beta: f64, tau: f64, x: &[f64]) -> Vec<f64> {
    let d = x.len();
    let mut h = vec![0.0; m];
    gemm_abt(x, 1, d, xi, m, &mut h);
    let mut p = vec![0.0; m];
    if lme_softmax(&h, beta, &mut p) <= tau {
        return vec![0.0; d];
    }
    let mut out = vec![0.0; d];
    gemm_ab(&p, 1, m, xi, d, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{CalibratedOn, Group, ModelParts, Normalize, Provenance};
    use crate::rng::Rng;

    #[test]
    fn interleaved_dots_match_sequential_ones() {
        let mut rng = Rng::new(9);
        for n in 0..23 {
            let v: Vec<Vec<f64>> = (0..4)
                .map(|_| (0..n).map(|_| rng.next_f64() - 0.5).collect())
                .collect();
            let want: f64 = (0..n).map(|j| v[0][j] * v[1][j]).sum();
            assert!((dot4(&v[0], &v[1]) - want).abs() <= 1e-14, "n {n}");
            let want: f64 = (0..n)
                .map(|j| (v[0][j] - v[1][j]) * (v[2][j] - v[3][j]))
                .sum();
            assert!(
                (diff_dot4(&v[0], &v[1], &v[2], &v[3]) - want).abs() <= 1e-14,
                "n {n}"
            );
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// The lane-parallel dynamics give every row the
        /// reference's `(is_ood, attractor, steps)` exactly, including rows whose
        /// energy at a later step equals `τ` to the last bit (the fast `ln`'s margin
        /// path) and rows cut off by `max_iter`.
        #[test]
        fn lane_dynamics_equal_the_reference(
            seed in 0u64..1_000_000,
            mi in 0usize..5,
            n in 1usize..60,
            d in 3usize..24,
            beta in proptest::sample::select(vec![0.5, 5.0, 40.0]),
            max_iter in proptest::sample::select(vec![1usize, 2, 3, 16]),
            tol in proptest::sample::select(vec![1e-6, 1e-2, 0.5]),
            tau_pick in 0usize..4,
        ) {
            let m = [4, 8, 12, 16, 32][mi];
            let mut rng = Rng::new(seed);
            let scale = 0.2 + 3.0 * rng.next_f64();
            let xi: Vec<f64> = (0..m * d).map(|_| scale * (rng.next_f64() - 0.5)).collect();
            let mut g = vec![0.0; m * m];
            gemm_abt(&xi, m, d, &xi, m, &mut g);
            let mut x: Vec<f64> = (0..n * d).map(|_| rng.next_f64() - 0.5).collect();
            // Some rows sit on a memory, so they converge rather than fall in.
            for r in 0..n / 2 {
                let mu = (rng.next_f64() * m as f64) as usize % m;
                for j in 0..d {
                    x[r * d + j] = xi[mu * d + j] + 0.01 * (rng.next_f64() - 0.5);
                }
            }
            let mut hs = vec![0.0; n * m];
            gemm_abt(&x, n, d, &xi, m, &mut hs);
            let x0sq: Vec<f64> = x.chunks(d).map(crate::kernel::norm2).collect();
            let (mut p0, mut a0) = (vec![0.0; n * m], vec![0.0; n]);
            lme_softmax_rows(&hs, m, beta, &mut p0, &mut a0);
            // τ: a middling first energy, or exactly a row's second-step energy (and
            // the float just below it), where the comparison is decided by one bit.
            let mut h1 = vec![0.0; n * m];
            small_gemm(&p0, &g, m, &mut h1);
            let (mut p1, mut a1) = (vec![0.0; n * m], vec![0.0; n]);
            lme_softmax_rows(&h1, m, beta, &mut p1, &mut a1);
            let mut sorted = a0.clone();
            sorted.sort_by(f64::total_cmp);
            let tau = match tau_pick {
                0 => sorted[n / 2],
                1 => a1[n / 3],
                2 => f64::from_bits(a1[n / 3].to_bits() - 1),
                _ => -1e9,
            };
            let t = Target { xi: &xi, m, tau, gram: Some(&g), panel: &[] };
            let first = First { energy: &a0, p: &p0 };
            let want =
                dynamics_reference(t, d, beta, max_iter, tol, &x0sq, first, &mut hs.clone());
            let lanes = Lanes {
                gram: &g, m, tau, beta, max_iter, tol, x0sq: &x0sq, energy: &a0, p: &p0,
            };
            match lanes.run(&hs) {
                Some(got) => proptest::prop_assert_eq!(got, want),
                None => eprintln!("skipped: this CPU has no AVX-512, so the lanes never run"),
            }
        }
    }

    /// The calling-thread entry point gives the pool's outputs, bit for bit, over
    /// several blocks, both groups and union rows, and so do unaligned little-endian
    /// rows read in place.
    #[test]
    fn scoring_here_and_in_place_equals_scoring_in_the_pool() {
        let mut rng = Rng::new(11);
        let (d, m, n) = (24, 8, 3000);
        let group = |key: i64, rng: &mut Rng| Group {
            key: Some(crate::model::GroupKey::Int(key)),
            xi: (0..m * d).map(|_| 2.0 * (rng.next_f64() - 0.5)).collect(),
            m,
            tau: 0.3,
            n_train: 0,
            n_calibration: 0,
            calibrated_on: CalibratedOn::Train,
        };
        let groups = vec![group(0, &mut rng), group(1, &mut rng)];
        let model = Model::new(ModelParts {
            d,
            beta: 5.0,
            normalize: Normalize::L2,
            max_iter: 16,
            tol: 1e-6,
            groups,
            tau_star: 0.3,
            provenance: Provenance::default(),
            whitening: None,
            beta_search: None,
        })
        .unwrap();
        let mut x: Vec<f32> = (0..n * d).map(|_| rng.next_f64() as f32 - 0.5).collect();
        x[7 * d + 3] = f32::NAN;
        let g: Vec<Option<u32>> = (0..n).map(|i| [Some(0), Some(1), None][i % 3]).collect();
        let rows = Rows::dense_f32(&x, d);
        // The same rows as little-endian bytes at every alignment, read in place.
        let (mut buf, mut at) = (Vec::new(), Vec::new());
        for (i, row) in x.chunks(d).enumerate() {
            buf.extend(std::iter::repeat_n(0u8, i % 4));
            at.push(buf.len());
            buf.extend(row.iter().flat_map(|v| v.to_le_bytes()));
        }
        let le = Rows::scattered_f32_le(&buf, &at, d);
        let (mut a, mut b, mut c) = Default::default();
        model
            .score_into(&rows, Some(&g), Work::WithDynamics, &mut a)
            .unwrap();
        model
            .score_into_here(&rows, Some(&g), Route::Best, Work::WithDynamics, &mut b)
            .unwrap();
        model
            .score_into_here(&le, Some(&g), Route::Best, Work::WithDynamics, &mut c)
            .unwrap();
        let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        for o in [&b, &c] {
            assert_eq!(bits(&a.energy), bits(&o.energy));
            assert_eq!(bits(&a.ood_probability), bits(&o.ood_probability));
            assert_eq!(
                (&a.is_ood, &a.attractor, &a.steps, &a.valid),
                (&o.is_ood, &o.attractor, &o.steps, &o.valid)
            );
        }
        assert!(!a.valid[7] && a.valid.iter().filter(|v| !**v).count() == 1);
        assert!(a.is_ood.iter().any(|&o| o) && a.is_ood.iter().any(|&o| !o));
    }

    /// The memory-space iteration must agree with iterating the `d`-vectors.
    /// A whitened model fitted on `fit` (one slice of `l2` rows per group), with `m`
    /// random unit memories per group and the thresholds `taus`.
    fn whitened_model(
        rng: &mut Rng,
        fit: &[&[f64]],
        d: usize,
        m: usize,
        beta: f64,
        taus: &[f64],
    ) -> Model {
        let (whitening, _) = crate::whiten::fit(fit, d, 1e-3).unwrap();
        let groups = taus
            .iter()
            .enumerate()
            .map(|(key, &tau)| Group {
                key: Some(crate::model::GroupKey::Int(key as i64)),
                xi: {
                    let mut xi: Vec<f64> = (0..m * d).map(|_| rng.next_f64() - 0.5).collect();
                    xi.chunks_mut(d).for_each(|r| Normalize::L2.apply(r));
                    xi
                },
                m,
                tau,
                n_train: 0,
                n_calibration: 0,
                calibrated_on: CalibratedOn::Holdout,
            })
            .collect();
        Model::new(ModelParts {
            d,
            beta,
            normalize: Normalize::L2,
            max_iter: 16,
            tol: 1e-6,
            groups,
            tau_star: 0.1,
            provenance: Provenance::default(),
            whitening: Some(whitening),
            beta_search: None,
        })
        .unwrap()
    }

    /// The whitening folded into the memories gives the outputs of whitening each row
    /// explicitly, for every route and for the rows `pre` treats specially: a zero row,
    /// a row at the mean (`W(z − μ) = 0`), f64 rows whose squares overflow, and null or
    /// non-finite rows.
    #[test]
    fn folded_whitening_scores_as_explicit_whitening() {
        let mut rng = Rng::new(5);
        let (d, m, n) = (20, 6, 2500);
        let fit: Vec<Vec<f64>> = (0..3)
            .map(|g| {
                (0..200 * d)
                    .map(|j| rng.next_f64() - 0.5 + if j % d == g { 0.8 } else { 0.0 })
                    .collect::<Vec<f64>>()
            })
            .map(|mut v| {
                v.chunks_mut(d).for_each(|r| Normalize::L2.apply(r));
                v
            })
            .collect();
        let refs: Vec<&[f64]> = fit.iter().map(|v| v.as_slice()).collect();
        let model = whitened_model(&mut rng, &refs, d, m, 7.0, &[0.0, 0.05, 0.1]);
        let whitening = model.whitening().expect("whitened").clone();
        assert!(model.folded().is_some(), "a narrow whitened model folds");
        let explicit = model.unfolded();
        let mut x: Vec<f64> = (0..n * d).map(|_| rng.next_f64() - 0.5).collect();
        x[3 * d..4 * d].fill(0.0);
        x[5 * d..6 * d].copy_from_slice(whitening.mean());
        x[8 * d..9 * d].iter_mut().for_each(|v| *v *= 1e300);
        x[11 * d + 2] = f64::INFINITY;
        x[13 * d] = f64::NAN;
        let rows = Rows::dense_f64(&x, d);
        let g: Vec<Option<u32>> = (0..n)
            .map(|i| [None, Some(0), Some(2), None][i % 4])
            .collect();
        for (route, groups) in [
            (Route::Best, None),
            (Route::Best, Some(&g[..])),
            (Route::Union, Some(&g[..])),
        ] {
            let (mut a, mut b) = (ScoreOutput::default(), ScoreOutput::default());
            model
                .score_routed(&rows, groups, route, Work::WithDynamics, &mut a)
                .unwrap();
            explicit
                .score_routed(&rows, groups, route, Work::WithDynamics, &mut b)
                .unwrap();
            assert_eq!(a.valid, b.valid);
            assert!(!a.valid[11] && !a.valid[13] && a.valid[3] && a.valid[5] && a.valid[8]);
            for i in (0..n).filter(|&i| a.valid[i]) {
                let near = |p: f64, q: f64| (p - q).abs() <= 1e-12 * (1.0 + q.abs());
                assert!(
                    near(a.energy[i], b.energy[i]) && near(a.score[i], b.score[i]),
                    "{route:?} row {i}: {} vs {}",
                    a.energy[i],
                    b.energy[i]
                );
                assert_eq!(
                    (a.group[i], a.is_ood[i], a.attractor[i]),
                    (b.group[i], b.is_ood[i], b.attractor[i]),
                    "{route:?} row {i}"
                );
            }
            // The zero row, the row at the mean and the huge row are scored, not nulled.
            assert!(a.energy[5].is_finite() && a.energy[8].is_finite());
        }
    }

    /// `Precision::F32Blocked` on a folded model: f32 products of `z` with `ΞW` in
    /// blocks, the norm in f64. Its energies stay within 1e-6 of exact, as do those of
    /// the explicit f32-blocked path, and almost every row keeps its group and flag.
    #[test]
    fn f32_blocked_products_stay_near_exact() {
        let mut rng = Rng::new(8);
        let (d, m, n) = (48, 8, 3000);
        let fit: Vec<f64> = (0..2000 * d)
            .map(|j| rng.next_f64() - 0.5 + if j % d < 3 { 0.5 } else { 0.0 })
            .collect();
        let mut fit = fit;
        fit.chunks_mut(d).for_each(|r| Normalize::L2.apply(r));
        let exact = whitened_model(
            &mut rng,
            &[&fit[..1000 * d], &fit[1000 * d..]],
            d,
            m,
            10.0,
            &[0.1, 0.1],
        );
        let x: Vec<f32> = (0..n * d).map(|_| rng.next_f64() as f32 - 0.5).collect();
        let rows = Rows::dense_f32(&x, d);
        let mut want = ScoreOutput::default();
        exact
            .score_into(&rows, None, Work::WithDynamics, &mut want)
            .unwrap();
        let mut blocked = exact.clone();
        blocked.set_precision(Precision::F32Blocked);
        for (what, model) in [
            ("folded", blocked.clone()),
            ("explicit", blocked.unfolded()),
        ] {
            let mut got = ScoreOutput::default();
            model
                .score_into(&rows, None, Work::WithDynamics, &mut got)
                .unwrap();
            let worst = (0..n)
                .map(|i| (got.energy[i] - want.energy[i]).abs())
                .fold(0.0, f64::max);
            assert!(worst <= 1e-6, "{what}: max |Δenergy| {worst}");
            assert!(worst > 0.0, "{what}: f32 products should round somewhere");
            let moved = (0..n)
                .filter(|&i| (got.group[i], got.is_ood[i]) != (want.group[i], want.is_ood[i]))
                .count();
            assert!(
                moved <= n / 100,
                "{what}: {moved} rows changed group or flag"
            );
        }
    }

    #[test]
    fn gram_and_direct_dynamics_agree() {
        let mut rng = Rng::new(5);
        let (d, m, n) = (12, 9, 400);
        let xi: Vec<f64> = (0..m * d).map(|_| 3.0 * (rng.next_f64() - 0.5)).collect();
        let x: Vec<f64> = (0..n * d).map(|_| 2.0 * (rng.next_f64() - 0.5)).collect();
        for tau in [-1e9, -0.5, 0.2, 1.0] {
            let mut model = Model::new(ModelParts {
                d,
                beta: 3.0,
                normalize: Normalize::None,
                max_iter: 16,
                tol: 1e-6,
                groups: vec![Group {
                    key: None,
                    xi: xi.clone(),
                    m,
                    tau,
                    n_train: 0,
                    n_calibration: 0,
                    calibrated_on: CalibratedOn::Train,
                }],
                tau_star: tau,
                provenance: Provenance::default(),
                whitening: None,
                beta_search: None,
            })
            .unwrap();
            assert!(model.grams.iter().all(|g| g.is_some()));
            let mut a = ScoreOutput::default();
            model
                .score_into(&Rows::dense_f64(&x, d), None, Work::WithDynamics, &mut a)
                .unwrap();
            model.grams.iter_mut().for_each(|g| *g = None);
            let mut b = ScoreOutput::default();
            model
                .score_into(&Rows::dense_f64(&x, d), None, Work::WithDynamics, &mut b)
                .unwrap();
            assert_eq!(a.is_ood, b.is_ood, "tau {tau}");
            assert_eq!(a.attractor, b.attractor, "tau {tau}");
            assert_eq!(a.steps, b.steps, "tau {tau}");
            assert!(a.is_ood.iter().any(|&o| o) || tau < 0.0);
        }
    }
}
