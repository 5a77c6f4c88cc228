//! Fitting the interaction matrices (spec §5) and calibrating thresholds (§7).
//!
//! `TrainParams` → [`TrainParams::check`] → [`ValidParams::fit`] returns a distinct
//! [`Model`]. Groups are fitted in parallel; each group draws from its own RNG stream
//! derived from the seed and the group key, so the result does not depend on thread
//! scheduling and the same seed gives a byte-identical model.

use std::collections::BTreeMap;

use rayon::prelude::*;

use crate::conformal::CalibrationEnergies;
use crate::error::{Error, Result};
use crate::kernel::{gemm_abt, gemm_atb, lme_softmax, norm2};
use crate::metrics::quantile_lower;
use crate::model::{
    BetaSearch, CalibratedOn, Group, GroupKey, Model, ModelParts, Normalize, Provenance, Recipe,
};
use crate::rng::Rng;
use crate::rows::Rows;

/// Memory initialisation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Init {
    /// `M_g` training rows drawn without replacement (the reference's choice).
    #[default]
    Random,
    /// k-means++ seeding (D² sampling).
    KMeansPlusPlus,
}

impl Init {
    pub fn as_str(self) -> &'static str {
        match self {
            Init::Random => "random",
            Init::KMeansPlusPlus => "kmeans++",
        }
    }
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "random" => Ok(Init::Random),
            "kmeans++" => Ok(Init::KMeansPlusPlus),
            o => Err(Error::param(
                "init",
                format!("expected one of random, kmeans++; found '{o}'"),
            )),
        }
    }
}

/// Training hyper-parameters. [`TrainParams::default`] is §10's whitened recipe,
/// [`TrainParams::paper`] the paper's (§5).
#[derive(Clone, Debug, PartialEq)]
pub struct TrainParams {
    pub recipe: Recipe,
    pub memories: usize,
    /// Used as given unless `beta_auto`.
    pub beta: f64,
    /// §10's leave-one-group-out choice of β from [`BETA_GRID`] (whitened recipe).
    pub beta_auto: bool,
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub adam_b1: f64,
    pub adam_b2: f64,
    pub adam_eps: f64,
    pub init_norm: f64,
    pub init: Init,
    pub normalize: Normalize,
    pub ood_rate: f64,
    pub calibration_fraction: f64,
    pub seed: u64,
    pub max_iter: usize,
    pub tol: f64,
}

/// §10's candidates for `beta = auto`.
pub const BETA_GRID: [f64; 8] = [1.0, 2.0, 3.0, 5.0, 7.0, 10.0, 15.0, 20.0];
/// β when `beta = auto` cannot choose: one group, or a group with fewer than
/// [`MIN_HOLDOUT`] calibration rows.
pub const BETA_FALLBACK: f64 = 10.0;
/// Fewest held-out rows a group calibrates on (§7); below it, its training rows.
pub const MIN_HOLDOUT: usize = 20;

impl Default for TrainParams {
    fn default() -> Self {
        TrainParams {
            recipe: Recipe::Whitened,
            memories: 64,
            beta: BETA_FALLBACK,
            beta_auto: true,
            ..TrainParams::paper()
        }
    }
}

impl TrainParams {
    /// The paper's recipe with its defaults (§1–§9).
    pub fn paper() -> Self {
        TrainParams {
            recipe: Recipe::Paper,
            beta_auto: false,
            memories: 10,
            beta: 5.0,
            epochs: 50,
            batch_size: 50,
            lr: 1e-3,
            adam_b1: 0.9,
            adam_b2: 0.98,
            adam_eps: 1e-9,
            init_norm: 10.0,
            init: Init::Random,
            normalize: Normalize::L2,
            ood_rate: 0.05,
            calibration_fraction: 0.1,
            seed: 0,
            max_iter: 16,
            tol: 1e-6,
        }
    }
}

/// Parameters that passed [`TrainParams::check`].
#[derive(Clone, Debug)]
pub struct ValidParams(TrainParams);

impl TrainParams {
    pub fn check(self) -> Result<ValidParams> {
        let p = &self;
        let pos = |name, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(Error::param(
                    name,
                    format!("must be finite and > 0, found {v}"),
                ))
            }
        };
        if p.memories == 0 {
            return Err(Error::param("memories", "must be >= 1, found 0"));
        }
        if p.batch_size == 0 {
            return Err(Error::param("batch-size", "must be >= 1, found 0"));
        }
        if p.max_iter == 0 {
            return Err(Error::param("max-iter", "must be >= 1, found 0"));
        }
        pos("beta", p.beta)?;
        pos("lr", p.lr)?;
        pos("init-norm", p.init_norm)?;
        pos("adam-eps", p.adam_eps)?;
        pos("tol", p.tol)?;
        for (name, v) in [("adam-b1", p.adam_b1), ("adam-b2", p.adam_b2)] {
            if !(0.0..1.0).contains(&v) {
                return Err(Error::param(name, format!("must be in [0, 1), found {v}")));
            }
        }
        if !(p.ood_rate > 0.0 && p.ood_rate < 1.0) {
            return Err(Error::param(
                "ood-rate",
                format!("must be in (0, 1), found {}", p.ood_rate),
            ));
        }
        if p.beta_auto && p.recipe == Recipe::Paper {
            return Err(Error::param(
                "beta",
                "auto chooses beta for the whitened recipe only; give --beta a number with --recipe paper",
            ));
        }
        if p.recipe == Recipe::Whitened && p.normalize != Normalize::L2 {
            return Err(Error::param(
                "normalize",
                "the whitened recipe normalises rows with l2 before whitening; --normalize none needs --recipe paper",
            ));
        }
        if !(0.0..1.0).contains(&p.calibration_fraction) {
            return Err(Error::param(
                "calibration-fraction",
                format!("must be in [0, 1), found {}", p.calibration_fraction),
            ));
        }
        Ok(ValidParams(self))
    }
}

/// Progress reporting without tying the core to a terminal library.
pub trait Progress: Sync {
    fn start(&self, _total_epochs: u64) {}
    fn advance(&self, _epochs: u64) {}
}

/// Reports nothing.
pub struct NoProgress;
impl Progress for NoProgress {}

/// A bounded, seeded sample of one group's rows (reservoir sampling, Algorithm R).
#[derive(Clone, Debug)]
struct Reservoir {
    rows: Vec<f32>,
    seen: u64,
    rng: Rng,
}

/// Training rows collected batch by batch. With `max_rows_per_group = Some(n)` memory
/// is bounded by `groups × n × d × 4` bytes however large the input is.
#[derive(Clone, Debug)]
pub struct TrainingSet {
    d: usize,
    cap: Option<usize>,
    seed: u64,
    labelled: Option<bool>,
    groups: BTreeMap<Option<GroupKey>, Reservoir>,
    /// Rows skipped because the embedding was null or non-finite.
    pub skipped_invalid: u64,
    /// Rows skipped because the label was null.
    pub skipped_null_label: u64,
    row_buf: Vec<f64>,
}

impl TrainingSet {
    pub fn new(d: usize, max_rows_per_group: Option<usize>, seed: u64) -> Result<Self> {
        if d == 0 {
            return Err(Error::param("embedding", "dimension must be > 0"));
        }
        if max_rows_per_group == Some(0) {
            return Err(Error::param("max-rows-per-group", "must be >= 1, found 0"));
        }
        Ok(TrainingSet {
            d,
            cap: max_rows_per_group,
            seed,
            labelled: None,
            groups: BTreeMap::new(),
            skipped_invalid: 0,
            skipped_null_label: 0,
            row_buf: vec![0.0; d],
        })
    }

    pub fn dim(&self) -> usize {
        self.d
    }

    /// Rows kept so far, over all groups.
    pub fn rows_kept(&self) -> u64 {
        self.groups
            .values()
            .map(|r| (r.rows.len() / self.d) as u64)
            .sum()
    }

    /// Rows offered so far (kept or not), over all groups.
    pub fn rows_seen(&self) -> u64 {
        self.groups.values().map(|r| r.seen).sum()
    }

    /// The kept rows of each group (row-major f32, `n × d`), in key order.
    pub fn groups(&self) -> impl Iterator<Item = (&Option<GroupKey>, &[f32])> {
        self.groups.iter().map(|(k, r)| (k, r.rows.as_slice()))
    }

    /// Adds a batch. `labels[i]` is row `i`'s group (`None` = null label, skipped);
    /// `labels = None` means the table is unlabelled (one group).
    pub fn push(&mut self, rows: &Rows<'_>, labels: Option<&[Option<GroupKey>]>) -> Result<()> {
        if rows.dim() != self.d {
            return Err(Error::Dimension {
                column: "embedding".into(),
                expected: self.d,
                found: rows.dim(),
                row: None,
            });
        }
        let labelled = labels.is_some();
        if *self.labelled.get_or_insert(labelled) != labelled {
            return Err(Error::param(
                "label",
                "some inputs have a label column and others do not",
            ));
        }
        if let Some(l) = labels
            && l.len() != rows.len()
        {
            return Err(Error::Model(format!(
                "{} labels for {} rows",
                l.len(),
                rows.len()
            )));
        }
        let d = self.d;
        for i in 0..rows.len() {
            if !rows.gather(i, &mut self.row_buf) {
                self.skipped_invalid += 1;
                continue;
            }
            let key = match labels {
                None => None,
                Some(l) => match &l[i] {
                    None => {
                        self.skipped_null_label += 1;
                        continue;
                    }
                    Some(k) => Some(k.clone()),
                },
            };
            let seed = self.seed;
            let res = self.groups.entry(key).or_insert_with_key(|k| Reservoir {
                rows: Vec::new(),
                seen: 0,
                rng: Rng::derive(seed, format!("reservoir:{k:?}").as_bytes()),
            });
            res.seen += 1;
            let n = res.rows.len() / d;
            match self.cap {
                Some(cap) if n >= cap => {
                    let j = res.rng.below(res.seen) as usize;
                    if j < cap {
                        for (o, &v) in res.rows[j * d..(j + 1) * d].iter_mut().zip(&self.row_buf) {
                            *o = v as f32;
                        }
                    }
                }
                _ => res.rows.extend(self.row_buf.iter().map(|&v| v as f32)),
            }
        }
        Ok(())
    }
}

struct Fitted {
    group: Group,
    calib: Vec<f64>,
}

impl ValidParams {
    pub fn params(&self) -> &TrainParams {
        &self.0
    }

    /// Fits one group per label in `data`, then calibrates every `τ_g` and `τ_*`.
    pub fn fit(&self, data: &TrainingSet, source: &str, progress: &dyn Progress) -> Result<Model> {
        let p = &self.0;
        let d = data.d;
        if data.groups.is_empty() {
            return Err(Error::EmptyInput(format!(
                "the input had no usable rows ({} with null or non-finite embeddings, {} with null labels)",
                data.skipped_invalid, data.skipped_null_label
            )));
        }
        if p.recipe == Recipe::Whitened {
            return self.fit_whitened(data, source, progress);
        }
        progress.start((p.epochs * data.groups.len()) as u64);
        let fitted: Vec<Fitted> = data
            .groups
            .par_iter()
            .map(|(key, res)| self.fit_group(key.clone(), &res.rows, d, progress))
            .collect::<Result<_>>()?;

        let (groups, calib): (Vec<Group>, Vec<Vec<f64>>) =
            fitted.into_iter().map(|f| (f.group, f.calib)).unzip();
        let paper = serde_json::json!({
            "epochs": p.epochs, "batch_size": p.batch_size, "lr": p.lr,
            "adam_b1": p.adam_b1, "adam_b2": p.adam_b2, "adam_eps": p.adam_eps,
            "init_norm": p.init_norm, "init": p.init.as_str(),
        });
        self.assemble(data, source, p.beta, groups, &calib, paper, None, None)
    }

    /// The rows §7 holds out of each group (all of a group's rows when it is
    /// calibrated on its training rows), split exactly as `fit` splits them: what
    /// re-thresholding a model on its own calibration rows starts from.
    pub fn calibration_rows(&self, data: &TrainingSet) -> Vec<(Option<GroupKey>, Vec<f32>)> {
        let d = data.d;
        data.groups
            .iter()
            .map(|(key, res)| {
                let split = Split::new(&self.0, &format!("{key:?}"), res.rows.len() / d);
                let mut v = Vec::with_capacity(split.cal().len() * d);
                for &i in split.cal() {
                    v.extend_from_slice(&res.rows[i * d..(i + 1) * d]);
                }
                (key.clone(), v)
            })
            .collect()
    }

    /// Where both recipes end: each `τ_g` from its group's calibration rows and `τ_*`
    /// from all of them against the union (§7), the calibration scores p-values are
    /// taken against (§11), the provenance (the common parameters and the recipe's
    /// own), the model. `calib[g]` holds group g's preprocessed calibration rows.
    #[allow(clippy::too_many_arguments)]
    fn assemble(
        &self,
        data: &TrainingSet,
        source: &str,
        beta: f64,
        mut groups: Vec<Group>,
        calib: &[Vec<f64>],
        recipe_params: serde_json::Value,
        whitening: Option<crate::model::Whitening>,
        beta_search: Option<BetaSearch>,
    ) -> Result<Model> {
        let p = &self.0;
        let d = data.d;
        let union_xi: Vec<f64> = groups.iter().flat_map(|g| g.xi.iter().copied()).collect();
        let union_m = groups.iter().map(|g| g.m).sum();
        let memories: Vec<(&[f64], usize)> =
            groups.iter().map(|g| (g.xi.as_slice(), g.m)).collect();
        let mut acc = CalibrationEnergies::new(groups.len());
        for (g, x) in calib.iter().enumerate() {
            let ids = vec![g as u32; x.len() / d];
            acc.push(&memories, (&union_xi, union_m), beta, x, d, &ids);
        }
        let t = acc.thresholds(p.ood_rate).map_err(|g| {
            Error::EmptyInput(format!("group {:?} has no calibration rows", groups[g].key))
        })?;
        for (g, tau) in groups.iter_mut().zip(&t.tau) {
            g.tau = *tau;
        }
        let tau_star = t.tau_star;
        let mut training = serde_json::json!({
            "recipe": p.recipe.as_str(),
            "memories": p.memories, "beta": beta, "normalize": p.normalize.as_str(),
            "ood_rate": p.ood_rate, "calibration_fraction": p.calibration_fraction,
            "seed": p.seed, "max_rows_per_group": data.cap,
            "rows_seen": data.rows_seen(), "rows_kept": data.rows_kept(),
            "skipped_invalid": data.skipped_invalid, "skipped_null_label": data.skipped_null_label,
        });
        if let (Some(t), serde_json::Value::Object(r)) = (training.as_object_mut(), recipe_params) {
            t.extend(r);
        }
        Model::new(ModelParts {
            d,
            beta,
            normalize: p.normalize,
            max_iter: p.max_iter,
            tol: p.tol,
            groups,
            tau_star,
            provenance: Provenance {
                training: training.to_string(),
                source: source.to_string(),
                ..Provenance::default()
            },
            whitening,
            beta_search,
        })?
        .with_calibration(t.sets)
    }

    fn fit_group(
        &self,
        key: Option<GroupKey>,
        raw: &[f32],
        d: usize,
        progress: &dyn Progress,
    ) -> Result<Fitted> {
        let p = &self.0;
        let n = raw.len() / d;
        let label = format!("{key:?}");
        let mut x: Vec<f64> = raw.iter().map(|&v| f64::from(v)).collect();
        for r in x.chunks_mut(d) {
            p.normalize.apply(r);
        }
        let split = Split::new(p, &label, n);
        let (fit_idx, cal_idx, calibrated_on) = (split.fit(), split.cal(), split.on);
        let gather = |ids: &[usize]| -> Vec<f64> {
            let mut v = Vec::with_capacity(ids.len() * d);
            for &i in ids {
                v.extend_from_slice(&x[i * d..(i + 1) * d]);
            }
            v
        };
        let xfit = gather(fit_idx);
        let calib = gather(cal_idx);
        let nfit = fit_idx.len();
        let m = p.memories.min(nfit);

        let mut rng = Rng::derive(p.seed, format!("fit:{label}").as_bytes());
        let mut xi = init_memories(&xfit, d, m, p.init, p.init_norm, &mut rng);
        let mut adam = Adam::new(m * d, p.lr, p.adam_b1, p.adam_b2, p.adam_eps);
        let mut order: Vec<usize> = (0..nfit).collect();
        let mut batch = Vec::with_capacity(p.batch_size * d);
        let mut grad = vec![0.0; m * d];
        let mut scratch = StepScratch::default();
        for _ in 0..p.epochs {
            rng.shuffle(&mut order);
            for chunk in order.chunks(p.batch_size) {
                batch.clear();
                for &i in chunk {
                    batch.extend_from_slice(&xfit[i * d..(i + 1) * d]);
                }
                loss_and_grad_into(&xi, m, d, &batch, p.beta, &mut grad, &mut scratch);
                adam.step(&mut xi, &grad);
            }
            progress.advance(1);
        }
        // The file stores f32; calibrate against exactly what will be scored.
        for v in xi.iter_mut() {
            *v = f64::from(*v as f32);
        }
        if xi.iter().any(|v| !v.is_finite()) {
            return Err(Error::Model(format!(
                "training diverged for group {label} (non-finite memories); lower --lr or --beta"
            )));
        }
        Ok(Fitted {
            group: Group {
                key,
                xi,
                m,
                // Set with every group's calibration energies in `assemble`.
                tau: f64::NAN,
                n_train: nfit as u64,
                n_calibration: cal_idx.len() as u64,
                calibrated_on,
            },
            calib,
        })
    }
}

/// §7's held-out calibration split of one group's `n` rows: a seeded shuffle, the
/// first `⌊fraction·n⌋` held out, or every row for both when that is under
/// [`MIN_HOLDOUT`].
struct Split {
    idx: Vec<usize>,
    n_cal: usize,
    on: CalibratedOn,
}

impl Split {
    fn new(p: &TrainParams, label: &str, n: usize) -> Self {
        let mut idx: Vec<usize> = (0..n).collect();
        Rng::derive(p.seed, format!("split:{label}").as_bytes()).shuffle(&mut idx);
        let n_cal = (p.calibration_fraction * n as f64).floor() as usize;
        let on = if n_cal < MIN_HOLDOUT {
            CalibratedOn::Train
        } else {
            CalibratedOn::Holdout
        };
        Split { idx, n_cal, on }
    }
    fn fit(&self) -> &[usize] {
        match self.on {
            CalibratedOn::Train => &self.idx,
            CalibratedOn::Holdout => &self.idx[self.n_cal..],
        }
    }
    fn cal(&self) -> &[usize] {
        match self.on {
            CalibratedOn::Train => &self.idx,
            CalibratedOn::Holdout => &self.idx[..self.n_cal],
        }
    }
}

/// One β of §10's leave-one-group-out table.
#[derive(Clone, Debug, PartialEq)]
pub struct BetaTrial {
    pub beta: f64,
    /// `τ_g` at this β (§7 on each group's calibration rows).
    pub tau: Vec<f64>,
    /// Per held-out group `c`: the AUROC of the other groups' calibration rows
    /// against `c`'s, both scored by `max_{g≠c}(A_g − τ_g)`.
    pub auroc: Vec<f64>,
    pub mean: f64,
}

/// §10's leave-one-group-out table: `memories[g]` is `Ξ_g` (`m_g×d`), `cal[g]` group
/// g's preprocessed calibration rows.
pub fn leave_one_group_out(
    memories: &[(&[f64], usize)],
    cal: &[&[f64]],
    d: usize,
    grid: &[f64],
    ood_rate: f64,
) -> Vec<BetaTrial> {
    let k = memories.len();
    let union: Vec<f64> = memories
        .iter()
        .flat_map(|(xi, _)| xi.iter().copied())
        .collect();
    let um: usize = memories.iter().map(|(_, m)| m).sum();
    let offsets: Vec<usize> = memories
        .iter()
        .scan(0, |o, (_, m)| {
            let s = *o;
            *o += m;
            Some(s)
        })
        .collect();
    // energies[g]: for each calibration row of group g, for each β of the grid, A_j of
    // every group j (row-major n_g × grid × k). One product per block serves every β.
    let nb = grid.len();
    let energies: Vec<Vec<f64>> = cal
        .iter()
        .map(|x| {
            x.par_chunks(1024 * d)
                .map(|xb| {
                    let n = xb.len() / d;
                    let mut h = vec![0.0; n * um];
                    gemm_abt(xb, n, d, &union, um, &mut h);
                    let mut e = Vec::with_capacity(n * nb * k);
                    for hr in h.chunks_exact(um) {
                        for &beta in grid {
                            for (j, (_, m)) in memories.iter().enumerate() {
                                let sl = &hr[offsets[j]..offsets[j] + m];
                                e.push(crate::kernel::log_mean_exp(sl, beta));
                            }
                        }
                    }
                    e
                })
                .collect::<Vec<_>>()
                .concat()
        })
        .collect();
    grid.iter()
        .enumerate()
        .map(|(b, &beta)| {
            // Group g's rows at this β, each as A_j for every j.
            let at = |g: usize| {
                energies[g]
                    .chunks_exact(nb * k)
                    .map(move |r| &r[b * k..(b + 1) * k])
            };
            let tau: Vec<f64> = (0..k)
                .map(|g| {
                    let own: Vec<f64> = at(g).map(|r| r[g]).collect();
                    quantile_lower(&own, ood_rate).unwrap_or(f64::NAN)
                })
                .collect();
            let best_without = |r: &[f64], c: usize| {
                (0..k)
                    .filter(|&g| g != c)
                    .map(|g| r[g] - tau[g])
                    .fold(f64::NEG_INFINITY, f64::max)
            };
            let auroc: Vec<f64> = (0..k)
                .map(|c| {
                    let mut id = Vec::new();
                    let mut ood = Vec::new();
                    for g in 0..k {
                        let side = if g == c { &mut ood } else { &mut id };
                        side.extend(at(g).map(|r| best_without(r, c)));
                    }
                    crate::metrics::auroc(&id, &ood)
                })
                .collect();
            let mean = auroc.iter().sum::<f64>() / k as f64;
            BetaTrial {
                beta,
                tau,
                auroc,
                mean,
            }
        })
        .collect()
}

/// The β of largest mean AUROC; on a tie, the smaller β.
pub fn choose_beta(table: &[BetaTrial]) -> f64 {
    let mut best: Option<&BetaTrial> = None;
    for t in table {
        best = match best {
            Some(b) if t.mean > b.mean || (t.mean == b.mean && t.beta < b.beta) => Some(t),
            None => Some(t),
            keep => keep,
        };
    }
    best.map_or(BETA_FALLBACK, |b| b.beta)
}

impl ValidParams {
    /// §10: l2, centre and whiten with the pooled within-group covariance of the fit
    /// rows, spherical k-means memories per group, β by leave-one-group-out, and
    /// thresholds on the held-out rows.
    fn fit_whitened(
        &self,
        data: &TrainingSet,
        source: &str,
        progress: &dyn Progress,
    ) -> Result<Model> {
        let p = &self.0;
        let d = data.d;
        struct Part {
            key: Option<GroupKey>,
            label: String,
            fit: Vec<f64>,
            cal: Vec<f64>,
            on: CalibratedOn,
        }
        let mut parts: Vec<Part> = data
            .groups
            .par_iter()
            .map(|(key, res)| {
                let label = format!("{key:?}");
                let n = res.rows.len() / d;
                let split = Split::new(p, &label, n);
                let gather = |ids: &[usize]| {
                    let mut v = Vec::with_capacity(ids.len() * d);
                    for &i in ids {
                        let at = v.len();
                        v.extend(res.rows[i * d..(i + 1) * d].iter().map(|&x| f64::from(x)));
                        Normalize::L2.apply(&mut v[at..]);
                    }
                    v
                };
                Part {
                    key: key.clone(),
                    fit: gather(split.fit()),
                    cal: gather(split.cal()),
                    on: split.on,
                    label,
                }
            })
            .collect();
        let fit_rows: Vec<&[f64]> = parts.iter().map(|g| g.fit.as_slice()).collect();
        let (whitening, _) = crate::whiten::fit(&fit_rows, d, crate::whiten::SHRINKAGE)?;
        let whiten_rows = |x: &mut Vec<f64>| {
            let mut y = vec![0.0; x.len()];
            y.par_chunks_mut(1024 * d)
                .zip(x.par_chunks(1024 * d))
                .for_each(|(yb, xb)| whitening.apply_block(xb, xb.len() / d, yb));
            *x = y;
        };
        for g in parts.iter_mut() {
            whiten_rows(&mut g.fit);
            whiten_rows(&mut g.cal);
        }
        progress.start(parts.len() as u64);
        let memories: Vec<(Vec<f64>, usize)> = parts
            .par_iter()
            .map(|g| {
                let mut rng = Rng::derive(p.seed, format!("kmeans:{}", g.label).as_bytes());
                let xi = crate::kmeans::memories(&g.fit, d, p.memories, &mut rng);
                progress.advance(1);
                let m = xi.len() / d;
                (xi, m)
            })
            .collect();
        let mem_refs: Vec<(&[f64], usize)> =
            memories.iter().map(|(x, m)| (x.as_slice(), *m)).collect();
        let cal_refs: Vec<&[f64]> = parts.iter().map(|g| g.cal.as_slice()).collect();
        let can_choose = parts.len() > 1 && parts.iter().all(|g| g.on == CalibratedOn::Holdout);
        let (beta, beta_search) = match (p.beta_auto, can_choose) {
            (false, _) => (p.beta, None),
            (true, false) => (BETA_FALLBACK, None),
            (true, true) => {
                let table = leave_one_group_out(&mem_refs, &cal_refs, d, &BETA_GRID, p.ood_rate);
                let beta = choose_beta(&table);
                let search = BetaSearch {
                    grid: table.iter().map(|t| t.beta).collect(),
                    mean_auroc: table.iter().map(|t| t.mean).collect(),
                };
                (beta, Some(search))
            }
        };
        let groups: Vec<Group> = parts
            .iter()
            .zip(&memories)
            .map(|(g, (xi, m))| Group {
                key: g.key.clone(),
                xi: xi.clone(),
                m: *m,
                // Set with every group's calibration energies in `assemble`.
                tau: f64::NAN,
                n_train: (g.fit.len() / d) as u64,
                n_calibration: (g.cal.len() / d) as u64,
                calibrated_on: g.on,
            })
            .collect();
        let calib: Vec<Vec<f64>> = parts.into_iter().map(|g| g.cal).collect();
        let whitened = serde_json::json!({
            "beta_auto": p.beta_auto, "shrinkage": crate::whiten::SHRINKAGE,
            "kmeans_iterations": crate::kmeans::ITERATIONS,
        });
        self.assemble(
            data,
            source,
            beta,
            groups,
            &calib,
            whitened,
            Some(whitening),
            beta_search,
        )
    }
}

fn init_memories(
    x: &[f64],
    d: usize,
    m: usize,
    init: Init,
    init_norm: f64,
    rng: &mut Rng,
) -> Vec<f64> {
    let n = x.len() / d;
    let chosen: Vec<usize> = match init {
        Init::Random => {
            // Partial Fisher–Yates: m distinct rows.
            let mut idx: Vec<usize> = (0..n).collect();
            for i in 0..m {
                let j = i + rng.below((n - i) as u64) as usize;
                idx.swap(i, j);
            }
            idx.truncate(m);
            idx
        }
        Init::KMeansPlusPlus => {
            let mut chosen = vec![rng.below(n as u64) as usize];
            let mut dmin: Vec<f64> = (0..n)
                .map(|i| {
                    sqdist(
                        &x[i * d..(i + 1) * d],
                        &x[chosen[0] * d..(chosen[0] + 1) * d],
                    )
                })
                .collect();
            while chosen.len() < m {
                let total: f64 = dmin.iter().sum();
                let next = if total > 0.0 {
                    let mut t = rng.next_f64() * total;
                    let mut pick = n - 1;
                    for (i, &w) in dmin.iter().enumerate() {
                        if t < w {
                            pick = i;
                            break;
                        }
                        t -= w;
                    }
                    pick
                } else {
                    // All remaining rows coincide with a centre: take any unchosen row.
                    (0..n).find(|i| !chosen.contains(i)).expect("m <= n")
                };
                chosen.push(next);
                let c = &x[next * d..(next + 1) * d];
                for (i, dm) in dmin.iter_mut().enumerate() {
                    *dm = dm.min(sqdist(&x[i * d..(i + 1) * d], c));
                }
            }
            chosen
        }
    };
    let mut xi = Vec::with_capacity(m * d);
    for &i in &chosen {
        let r = &x[i * d..(i + 1) * d];
        let nr = norm2(r).sqrt();
        let s = if nr > 0.0 { init_norm / nr } else { 0.0 };
        xi.extend(r.iter().map(|v| v * s));
    }
    xi
}

fn sqdist(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

/// Reusable buffers for [`loss_and_grad_into`], so a training step allocates nothing.
#[derive(Default)]
pub struct StepScratch {
    h: Vec<f64>,
    c: Vec<f64>,
    wsum: Vec<f64>,
    xi_sq: Vec<f64>,
    logq: Vec<f64>,
    q: Vec<f64>,
    lw: Vec<f64>,
    dist: Vec<f64>,
}

/// Mean loss `ℓ` over a batch and its closed-form gradient w.r.t. `Ξ` (spec §5),
/// written into `grad` (`m×d`). `σ² = 1`.
pub fn loss_and_grad_into(
    xi: &[f64],
    m: usize,
    d: usize,
    batch: &[f64],
    beta: f64,
    grad: &mut [f64],
    s: &mut StepScratch,
) -> f64 {
    let b = batch.len() / d;
    s.h.clear();
    s.h.resize(b * m, 0.0);
    gemm_abt(batch, b, d, xi, m, &mut s.h);
    s.c.clear();
    s.c.resize(b * m, 0.0);
    s.wsum.clear();
    s.wsum.resize(m, 0.0);
    s.xi_sq.clear();
    s.xi_sq.extend(xi.chunks(d).map(norm2));
    s.logq.resize(m, 0.0);
    s.q.resize(m, 0.0);
    s.lw.resize(m, 0.0);
    s.dist.resize(m, 0.0);
    let dd = d as f64;
    let mut loss = 0.0;
    for r in 0..b {
        let xsq = norm2(&batch[r * d..(r + 1) * d]);
        let h = &s.h[r * m..(r + 1) * m];
        // q = softmax(βh) and log q from one set of exponentials.
        let lse = lme_softmax(h, beta, &mut s.q) * beta + (m as f64).ln();
        for (mu, &hm) in h.iter().enumerate() {
            s.logq[mu] = beta * hm - lse;
            s.dist[mu] = (xsq + s.xi_sq[mu] - 2.0 * hm).max(0.0);
            s.lw[mu] = s.logq[mu] - s.dist[mu] / 2.0;
        }
        let lmax = s.lw.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let z: f64 = s.lw.iter().map(|v| (v - lmax).exp()).sum();
        for mu in 0..m {
            let w = (s.lw[mu] - lmax).exp() / z;
            let q = s.q[mu];
            loss += w * (s.dist[mu] / dd - s.logq[mu]);
            s.c[r * m + mu] = -(2.0 / dd) * w + beta * (q - w);
            s.wsum[mu] += w;
        }
    }
    let inv_b = 1.0 / b as f64;
    gemm_atb(&s.c, b, m, batch, d, grad);
    for mu in 0..m {
        let a = (2.0 / dd) * s.wsum[mu] * inv_b;
        for j in 0..d {
            grad[mu * d + j] = grad[mu * d + j] * inv_b + a * xi[mu * d + j];
        }
    }
    loss * inv_b
}

/// Adam with bias correction (PyTorch's form: `eps` added to `sqrt(v̂)`).
#[derive(Clone, Debug)]
pub struct Adam {
    lr: f64,
    b1: f64,
    b2: f64,
    eps: f64,
    t: i32,
    m: Vec<f64>,
    v: Vec<f64>,
}

impl Adam {
    pub fn new(n: usize, lr: f64, b1: f64, b2: f64, eps: f64) -> Self {
        Adam {
            lr,
            b1,
            b2,
            eps,
            t: 0,
            m: vec![0.0; n],
            v: vec![0.0; n],
        }
    }

    pub fn step(&mut self, theta: &mut [f64], grad: &[f64]) {
        self.t += 1;
        let c1 = 1.0 - self.b1.powi(self.t);
        let c2 = 1.0 - self.b2.powi(self.t);
        for ((th, g), (m, v)) in theta
            .iter_mut()
            .zip(grad)
            .zip(self.m.iter_mut().zip(self.v.iter_mut()))
        {
            *m = self.b1 * *m + (1.0 - self.b1) * g;
            *v = self.b2 * *v + (1.0 - self.b2) * g * g;
            let mhat = *m / c1;
            let vhat = *v / c2;
            *th -= self.lr * mhat / (vhat.sqrt() + self.eps);
        }
    }
}
