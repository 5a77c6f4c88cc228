//! The fitted detector: per-group interaction matrices and thresholds (spec §1–§4).

use std::collections::HashMap;
use std::fmt;

use crate::error::{Error, Result};

/// Row preprocessing `pre(x)`, stored in the model so scoring always matches training.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Normalize {
    None,
    #[default]
    L2,
}

impl Normalize {
    pub fn as_str(self) -> &'static str {
        match self {
            Normalize::None => "none",
            Normalize::L2 => "l2",
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "none" => Ok(Normalize::None),
            "l2" => Ok(Normalize::L2),
            other => Err(Error::param(
                "normalize",
                format!("expected one of none, l2; found '{other}'"),
            )),
        }
    }

    /// Applies `pre` in place. A zero vector stays zero.
    #[inline]
    pub fn apply(self, x: &mut [f64]) {
        if let Normalize::L2 = self {
            let n = crate::kernel::norm2(x).sqrt();
            if n > 0.0 {
                let inv = 1.0 / n;
                x.iter_mut().for_each(|v| *v *= inv);
            }
        }
    }
}

/// §10's centring and whitening, stored in the model and applied after `l2`:
/// `pre(x) = l2(W (l2(x) − μ))`. `W` is symmetric (`d×d`, row-major).
#[derive(Clone, Debug, PartialEq)]
pub struct Whitening {
    mu: Vec<f64>,
    w: Vec<f64>,
    /// `Wμ`, so a row costs one `d×d` product: `W(z − μ) = Wz − Wμ`.
    w_mu: Vec<f64>,
}

impl Whitening {
    /// Checks shapes and finiteness; `w` must be symmetric (it is `V diag(λ'^{-1/2}) Vᵀ`).
    pub fn new(d: usize, mu: Vec<f64>, w: Vec<f64>) -> Result<Self> {
        if mu.len() != d || w.len() != d * d {
            return Err(Error::Model(format!(
                "whitening needs a mean of {d} values and a {d}x{d} matrix, found {} and {}",
                mu.len(),
                w.len()
            )));
        }
        if mu.iter().chain(&w).any(|v| !v.is_finite()) {
            return Err(Error::Model("whitening has non-finite values".into()));
        }
        let mut w_mu = vec![0.0; d];
        crate::kernel::gemm_abt(&w, d, d, &mu, 1, &mut w_mu);
        Ok(Whitening { mu, w, w_mu })
    }
    pub fn mean(&self) -> &[f64] {
        &self.mu
    }
    /// `W`, row-major `d×d`.
    pub fn matrix(&self) -> &[f64] {
        &self.w
    }

    /// Whitens `n` rows of `z` (already `l2`-normalised, row-major) into `out`, then
    /// normalises each: `out_i = l2(W z_i − Wμ)`. A zero result stays zero.
    pub(crate) fn apply_block(&self, z: &[f64], n: usize, out: &mut [f64]) {
        self.apply_block_with(z, n, out, Precision::Exact);
    }

    pub(crate) fn apply_block_with(
        &self,
        z: &[f64],
        n: usize,
        out: &mut [f64],
        precision: Precision,
    ) {
        let d = self.mu.len();
        // `W` is symmetric, so `z Wᵀ = z W`: the rows come out whitened.
        match precision {
            Precision::Exact => crate::kernel::gemm_abt(z, n, d, &self.w, d, out),
            Precision::F32Blocked => {
                let z32: Vec<f32> = z.iter().map(|&v| v as f32).collect();
                let w32: Vec<f32> = self.w.iter().map(|&v| v as f32).collect();
                crate::kernel::gemm_abt_f32_blocked(&z32, n, d, &w32, d, out);
            }
        }
        for y in out.chunks_exact_mut(d) {
            y.iter_mut().zip(&self.w_mu).for_each(|(v, m)| *v -= m);
            Normalize::L2.apply(y);
        }
    }
}

/// How the recipe chose β (§10, `beta = auto`): each candidate's mean
/// leave-one-group-out AUROC on the calibration rows.
#[derive(Clone, Debug, PartialEq)]
pub struct BetaSearch {
    pub grid: Vec<f64>,
    pub mean_auroc: Vec<f64>,
}

/// Which recipe built a model (§1–§9 or §10).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Recipe {
    /// §10: whitened features, spherical k-means memories, best-group routing.
    #[default]
    Whitened,
    /// §1–§9: the paper's SFNN-trained memories on `l2` (or raw) rows.
    Paper,
}

impl Recipe {
    pub fn as_str(self) -> &'static str {
        match self {
            Recipe::Whitened => "whitened",
            Recipe::Paper => "paper",
        }
    }
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "whitened" => Ok(Recipe::Whitened),
            "paper" => Ok(Recipe::Paper),
            o => Err(Error::param(
                "recipe",
                format!("expected one of whitened, paper; found '{o}'"),
            )),
        }
    }
}

/// How the whitened recipe's products with the memories are summed.
///
/// Spec §1 asks for f64 accumulation ([`Precision::Exact`], the default). The
/// whitened recipe spends most of its time in the products of each row with every
/// group's memories (folded with the whitening, see `folded`), where f32 arithmetic
/// runs at twice the vector width; [`Precision::F32Blocked`] rounds the operands to
/// f32, sums their products in f32 over 32 terms and adds those partial sums in f64
/// (the whitened norm stays f64). Models too wide to fold also whiten each row that
/// way. It is a runtime choice (never stored in a model file) offered so its speed and
/// its deviations can be measured against the rule: BENCHMARKS.md has both.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Precision {
    #[default]
    Exact,
    F32Blocked,
}

impl Precision {
    pub fn as_str(self) -> &'static str {
        match self {
            Precision::Exact => "exact",
            Precision::F32Blocked => "f32-blocked",
        }
    }
}

/// Where a row without a group value is scored (§4, §10).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Route {
    /// The group of largest margin `A_g − τ_g`; its `Ξ_g, τ_g` decide the rest.
    #[default]
    Best,
    /// The union of every group's memories against `τ_*`, decided on the first step.
    Union,
}

impl Route {
    pub fn as_str(self) -> &'static str {
        match self {
            Route::Best => "best",
            Route::Union => "union",
        }
    }
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "best" => Ok(Route::Best),
            "union" => Ok(Route::Union),
            o => Err(Error::param(
                "route",
                format!("expected one of best, union; found '{o}'"),
            )),
        }
    }
}

/// A group's identity: the class label it was trained on.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum GroupKey {
    Int(i64),
    Str(String),
}

impl fmt::Display for GroupKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GroupKey::Int(v) => write!(f, "{v}"),
            GroupKey::Str(s) => write!(f, "'{s}'"),
        }
    }
}

/// Where a group's threshold was calibrated (§7).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CalibratedOn {
    /// A held-out split never used for fitting.
    Holdout,
    /// The group's own training rows, because the held-out split was too small.
    Train,
}

impl CalibratedOn {
    pub fn as_str(self) -> &'static str {
        match self {
            CalibratedOn::Holdout => "holdout",
            CalibratedOn::Train => "train",
        }
    }
}

/// One group's memories `Ξ_g` (row-major `m×d`) and threshold `τ_g`.
#[derive(Clone, Debug, PartialEq)]
pub struct Group {
    /// `None` when the training table had no label column (`K = 1`).
    pub key: Option<GroupKey>,
    pub xi: Vec<f64>,
    pub m: usize,
    pub tau: f64,
    pub n_train: u64,
    pub n_calibration: u64,
    pub calibrated_on: CalibratedOn,
}

/// Provenance recorded in the model file; it does not affect scoring.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Provenance {
    /// JSON object of the training parameters.
    pub training: String,
    /// Human description of the training input (paths, columns, row counts).
    pub source: String,
    /// The label column the groups came from, so re-thresholding can default to it.
    pub label_column: Option<String>,
    /// Checksum of the model this one was re-thresholded from (§11), if it was.
    pub recalibrated_from: Option<String>,
}

/// A fitted RecLag model. Immutable once built, so it is shared across threads freely.
#[derive(Clone, Debug)]
pub struct Model {
    pub(crate) d: usize,
    pub(crate) beta: f64,
    pub(crate) normalize: Normalize,
    pub(crate) max_iter: usize,
    pub(crate) tol: f64,
    pub(crate) groups: Vec<Group>,
    pub(crate) tau_star: f64,
    pub(crate) union_xi: Vec<f64>,
    pub(crate) union_m: usize,
    /// `ΞΞᵀ` per group (and for the union, last), when small enough to pay off; the
    /// dynamics then run in memory space (see `score::dynamics`).
    pub(crate) grams: Vec<Option<Vec<f64>>>,
    /// `Ξᵀ` per group (and for the union, last), memories padded to a multiple of 8:
    /// the layout the scoring GEMM broadcasts rows against (see `tile`).
    pub(crate) panels: Vec<crate::tile::Aligned>,
    pub(crate) provenance: Provenance,
    pub(crate) whitening: Option<Whitening>,
    pub(crate) beta_search: Option<BetaSearch>,
    pub(crate) precision: Precision,
    /// §10's whitening folded into the memories (`folded`), built on first use.
    pub(crate) folded: std::sync::OnceLock<Option<crate::folded::Folded>>,
    /// §11's calibration scores; `None` for models from format versions 1 and 2.
    pub(crate) calibration: Option<crate::conformal::CalibrationSets>,
    by_int: HashMap<i64, usize>,
    /// `by_int` as a table indexed by the label, when every label is in
    /// `0..DENSE_LABELS`: class ids usually are, and the lookup is per row (a hash
    /// lookup measured near 1 % of `reclag score`).
    dense_int: Vec<Option<usize>>,
    by_str: HashMap<String, usize>,
}

/// Largest label table [`Model`] keeps beside its hash map.
const DENSE_LABELS: i64 = 1 << 16;

/// Label type a model's groups were trained on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LabelKind {
    None,
    Int,
    Str,
}

impl LabelKind {
    pub fn as_str(self) -> &'static str {
        match self {
            LabelKind::None => "none",
            LabelKind::Int => "int64",
            LabelKind::Str => "utf8",
        }
    }
}

/// Everything needed to assemble a [`Model`]; validated by [`Model::new`].
#[derive(Clone, Debug)]
pub struct ModelParts {
    pub d: usize,
    pub beta: f64,
    pub normalize: Normalize,
    pub max_iter: usize,
    pub tol: f64,
    pub groups: Vec<Group>,
    pub tau_star: f64,
    pub provenance: Provenance,
    /// §10's whitening; `None` for the paper recipe.
    pub whitening: Option<Whitening>,
    /// β's selection table, when `beta = auto` chose it.
    pub beta_search: Option<BetaSearch>,
}

impl Model {
    /// Assembles and validates a model: shapes, finiteness, unique group keys.
    pub fn new(p: ModelParts) -> Result<Self> {
        if p.d == 0 {
            return Err(Error::Model("dimension must be > 0".into()));
        }
        if !(p.beta.is_finite() && p.beta > 0.0) {
            return Err(Error::Model(format!(
                "beta must be finite and > 0, found {}",
                p.beta
            )));
        }
        if p.groups.is_empty() {
            return Err(Error::Model("a model needs at least one group".into()));
        }
        if p.max_iter == 0 {
            return Err(Error::Model("max_iter must be >= 1".into()));
        }
        if p.whitening.is_some() && p.normalize != Normalize::L2 {
            return Err(Error::Model(
                "whitening applies to l2-normalised rows; normalize must be l2".into(),
            ));
        }
        if let Some(w) = &p.whitening
            && w.mu.len() != p.d
        {
            return Err(Error::Model(format!(
                "whitening has dimension {}, the model {}",
                w.mu.len(),
                p.d
            )));
        }
        if let Some(b) = &p.beta_search
            && b.grid.len() != b.mean_auroc.len()
        {
            return Err(Error::Model(format!(
                "beta search has {} candidates and {} AUROCs",
                b.grid.len(),
                b.mean_auroc.len()
            )));
        }
        let mut by_int = HashMap::new();
        let mut by_str = HashMap::new();
        let kinds: Vec<LabelKind> = p.groups.iter().map(|g| key_kind(&g.key)).collect();
        if kinds.iter().any(|k| *k != kinds[0]) {
            return Err(Error::Model("groups mix label types".into()));
        }
        if kinds[0] == LabelKind::None && p.groups.len() != 1 {
            return Err(Error::Model(
                "an unlabelled model must have exactly one group".into(),
            ));
        }
        for (i, g) in p.groups.iter().enumerate() {
            if g.m == 0 || g.xi.len() != g.m * p.d {
                return Err(Error::Model(format!(
                    "group {} has {} values for {} memories of dimension {}",
                    i,
                    g.xi.len(),
                    g.m,
                    p.d
                )));
            }
            if g.xi.iter().any(|v| !v.is_finite()) || g.tau.is_nan() {
                return Err(Error::Model(format!(
                    "group {i} has non-finite memories or tau"
                )));
            }
            let dup = match &g.key {
                Some(GroupKey::Int(v)) => by_int.insert(*v, i).is_some(),
                Some(GroupKey::Str(s)) => by_str.insert(s.clone(), i).is_some(),
                None => false,
            };
            if dup {
                return Err(Error::Model(format!(
                    "duplicate group {}",
                    g.key.as_ref().map(|k| k.to_string()).unwrap_or_default()
                )));
            }
        }
        let union_xi: Vec<f64> = p.groups.iter().flat_map(|g| g.xi.iter().copied()).collect();
        let union_m = p.groups.iter().map(|g| g.m).sum();
        let mut grams: Vec<Option<Vec<f64>>> =
            p.groups.iter().map(|g| gram(&g.xi, g.m, p.d)).collect();
        grams.push(gram(&union_xi, union_m, p.d));
        let mut panels: Vec<crate::tile::Aligned> = p
            .groups
            .iter()
            .map(|g| crate::tile::panel(&g.xi, g.m, p.d))
            .collect();
        panels.push(crate::tile::panel(&union_xi, union_m, p.d));
        let mut dense_int = Vec::new();
        if by_int.keys().all(|k| (0..DENSE_LABELS).contains(k)) {
            let len = by_int.keys().max().map_or(0, |&k| k as usize + 1);
            dense_int = vec![None; len];
            for (&k, &i) in &by_int {
                dense_int[k as usize] = Some(i);
            }
        }
        Ok(Model {
            d: p.d,
            beta: p.beta,
            normalize: p.normalize,
            max_iter: p.max_iter,
            tol: p.tol,
            groups: p.groups,
            tau_star: p.tau_star,
            union_xi,
            union_m,
            grams,
            panels,
            provenance: p.provenance,
            whitening: p.whitening,
            beta_search: p.beta_search,
            precision: Precision::Exact,
            folded: std::sync::OnceLock::new(),
            calibration: None,
            by_int,
            dense_int,
            by_str,
        })
    }

    pub fn dim(&self) -> usize {
        self.d
    }
    pub fn beta(&self) -> f64 {
        self.beta
    }
    pub fn normalize(&self) -> Normalize {
        self.normalize
    }
    pub fn max_iter(&self) -> usize {
        self.max_iter
    }
    pub fn tol(&self) -> f64 {
        self.tol
    }
    pub fn groups(&self) -> &[Group] {
        &self.groups
    }
    pub fn tau_star(&self) -> f64 {
        self.tau_star
    }
    pub fn provenance(&self) -> &Provenance {
        &self.provenance
    }
    pub fn whitening(&self) -> Option<&Whitening> {
        self.whitening.as_ref()
    }
    pub fn beta_search(&self) -> Option<&BetaSearch> {
        self.beta_search.as_ref()
    }
    pub fn precision(&self) -> Precision {
        self.precision
    }
    /// Records the label column the groups came from (training knows the rows, its
    /// caller the column).
    pub fn with_label_column(mut self, column: Option<String>) -> Self {
        self.provenance.label_column = column;
        self
    }
    /// §11's calibration scores, when the model keeps them.
    pub fn calibration(&self) -> Option<&crate::conformal::CalibrationSets> {
        self.calibration.as_ref()
    }

    /// Attaches calibration scores: one set per group, and the level `τ` was taken at.
    pub fn with_calibration(mut self, sets: crate::conformal::CalibrationSets) -> Result<Self> {
        if sets.own.len() != self.groups.len() {
            return Err(Error::Model(format!(
                "{} groups but calibration scores for {}",
                self.groups.len(),
                sets.own.len()
            )));
        }
        if !(sets.ood_rate > 0.0 && sets.ood_rate < 1.0) {
            return Err(Error::Model(format!(
                "calibration level must be in (0, 1), found {}",
                sets.ood_rate
            )));
        }
        self.calibration = Some(sets);
        Ok(self)
    }

    /// The calibration scores, or the error a p-value asks for without them.
    pub fn require_calibration(&self) -> Result<&crate::conformal::CalibrationSets> {
        self.calibration.as_ref().ok_or(Error::NoCalibration)
    }

    /// The model with thresholds and calibration scores from `energies` (rows of
    /// new ID data, §11's re-thresholding): every `τ_g` and `τ_*` recomputed at
    /// `ood_rate`; memories, β and preprocessing kept. Each group needs at least
    /// `⌈1/ood_rate⌉` rows, or its quantile is the minimum whatever the level.
    pub fn recalibrated(
        &self,
        energies: &crate::conformal::CalibrationEnergies,
        ood_rate: f64,
        provenance: Provenance,
    ) -> Result<Model> {
        if !(ood_rate > 0.0 && ood_rate < 1.0) {
            return Err(Error::param(
                "ood-rate",
                format!("must be in (0, 1), found {ood_rate}"),
            ));
        }
        let need = (1.0 / ood_rate).ceil() as u64;
        let counts = energies.counts();
        let short: Vec<String> = self
            .groups
            .iter()
            .zip(&counts)
            .filter(|(_, c)| **c < need)
            .map(|(g, c)| format!("{} ({c} rows)", group_name(&g.key)))
            .collect();
        if !short.is_empty() {
            return Err(Error::Calibration(format!(
                "at --ood-rate {ood_rate} every group needs at least {need} rows (1/ood-rate); too few in {}",
                short.join(", ")
            )));
        }
        let t = energies.thresholds(ood_rate).map_err(|g| {
            Error::Calibration(format!(
                "group {} has no rows",
                group_name(&self.groups[g].key)
            ))
        })?;
        let groups = self
            .groups
            .iter()
            .zip(&t.tau)
            .zip(&t.rows)
            .map(|((g, &tau), &n)| Group {
                tau,
                n_calibration: n,
                calibrated_on: CalibratedOn::Holdout,
                ..g.clone()
            })
            .collect();
        let mut m = Model::new(ModelParts {
            d: self.d,
            beta: self.beta,
            normalize: self.normalize,
            max_iter: self.max_iter,
            tol: self.tol,
            groups,
            tau_star: t.tau_star,
            provenance,
            whitening: self.whitening.clone(),
            beta_search: self.beta_search.clone(),
        })?
        .with_calibration(t.sets)?;
        m.precision = self.precision;
        Ok(m)
    }

    /// Adds `rows` of groups `groups` (rows without a group, null or non-finite rows
    /// are skipped; returns how many were kept) to `acc`, preprocessed as training
    /// preprocesses its calibration rows, so the energies match training's bit for bit.
    pub fn calibration_energies(
        &self,
        rows: &crate::rows::Rows<'_>,
        groups: &[Option<u32>],
        acc: &mut crate::conformal::CalibrationEnergies,
    ) -> Result<usize> {
        let d = self.d;
        if rows.dim() != d {
            return Err(Error::Dimension {
                column: "embedding".into(),
                expected: d,
                found: rows.dim(),
                row: None,
            });
        }
        let mut x = Vec::with_capacity(rows.len() * d);
        let mut g = Vec::with_capacity(rows.len());
        let mut r = vec![0.0; d];
        for (i, grp) in groups.iter().enumerate().take(rows.len()) {
            let Some(grp) = grp else { continue };
            if rows.gather_norm(i, &mut r).is_none() {
                continue;
            }
            self.normalize.apply(&mut r);
            x.extend_from_slice(&r);
            g.push(*grp);
        }
        if let Some(w) = &self.whitening {
            let mut y = vec![0.0; x.len()];
            w.apply_block(&x, g.len(), &mut y);
            x = y;
        }
        let memories: Vec<(&[f64], usize)> =
            self.groups.iter().map(|g| (g.xi.as_slice(), g.m)).collect();
        acc.push(
            &memories,
            (&self.union_xi, self.union_m),
            self.beta,
            &x,
            d,
            &g,
        );
        Ok(g.len())
    }

    /// §11's p-values of rows just scored into `out` with the same `groups` and
    /// `route`: each against the calibration scores of its kind, NaN where the row
    /// has no score.
    pub fn p_values_into(
        &self,
        out: &crate::score::ScoreOutput,
        groups: Option<&[Option<u32>]>,
        route: Route,
        p: &mut Vec<f64>,
    ) -> Result<()> {
        let sets = self.require_calibration()?;
        p.clear();
        p.extend((0..out.len()).map(|i| {
            if !out.valid[i] {
                return f64::NAN;
            }
            let a = self.against(groups.and_then(|g| g[i]), route);
            sets.against(a).p_value(out.score[i])
        }));
        Ok(())
    }

    /// Which calibration scores a row routed by `group` (or by `route` without one)
    /// is compared with.
    pub fn against(&self, group: Option<u32>, route: Route) -> crate::conformal::Against {
        use crate::conformal::Against;
        match (group, route) {
            (Some(g), _) => Against::Group(g),
            (None, _) if self.groups.len() == 1 => Against::Group(0),
            (None, Route::Best) => Against::Best,
            (None, Route::Union) => Against::Union,
        }
    }
    /// Chooses how the whitened recipe's products are summed when scoring (the paper
    /// recipe's kernel is unaffected); see [`Precision`].
    pub fn set_precision(&mut self, precision: Precision) {
        self.precision = precision;
    }
    /// The recipe is a property of the preprocessing: only §10 whitens.
    pub fn recipe(&self) -> Recipe {
        if self.whitening.is_some() {
            Recipe::Whitened
        } else {
            Recipe::Paper
        }
    }
    /// Index of each group's first memory in the union (group order).
    pub fn union_offsets(&self) -> Vec<usize> {
        self.groups
            .iter()
            .scan(0, |o, g| {
                let start = *o;
                *o += g.m;
                Some(start)
            })
            .collect()
    }

    /// `pre(x)` (§1, §10) of rows `start..start + n` into `out` (`n×d`, row-major).
    /// `valid[i]` is false for a null or non-finite row, whose values are left NaN.
    pub fn preprocess(
        &self,
        rows: &crate::rows::Rows<'_>,
        start: usize,
        n: usize,
        out: &mut Vec<f64>,
        valid: &mut Vec<bool>,
    ) {
        let d = self.d;
        out.clear();
        out.resize(n * d, 0.0);
        valid.clear();
        for (i, r) in out.chunks_exact_mut(d).enumerate() {
            match rows.gather_norm(start + i, r) {
                Some(norm) => {
                    // The norm came with the copy; `Normalize::apply` would recompute it.
                    if self.normalize == Normalize::L2 && norm > 0.0 {
                        let inv = 1.0 / norm;
                        r.iter_mut().for_each(|v| *v *= inv);
                    }
                    valid.push(true);
                }
                None => {
                    r.fill(0.0);
                    valid.push(false);
                }
            }
        }
        if let Some(w) = &self.whitening {
            let mut y = vec![0.0; n * d];
            w.apply_block_with(out, n, &mut y, self.precision);
            *out = y;
        }
        for (r, ok) in out.chunks_exact_mut(d).zip(valid.iter()) {
            if !ok {
                r.fill(f64::NAN);
            }
        }
    }

    /// The folded whitening, when this model whitens and is narrow enough to fold
    /// (see `folded`); built by the first caller, shared by every thread after.
    pub(crate) fn folded(&self) -> Option<&crate::folded::Folded> {
        let w = self.whitening.as_ref()?;
        if self.d > crate::folded::MAX_DIM {
            return None;
        }
        self.folded
            .get_or_init(|| {
                let mut xis: Vec<(&[f64], usize)> =
                    self.groups.iter().map(|g| (g.xi.as_slice(), g.m)).collect();
                xis.push((&self.union_xi, self.union_m));
                crate::folded::Folded::build(&w.w, &w.mu, &xis, self.d)
            })
            .as_ref()
    }

    /// This model with §10's whitening applied to each row explicitly instead of
    /// folded into the memories: the same outputs to rounding, at the cost of a
    /// `d×d` product per row. For benchmarks and tests that compare the two.
    pub fn unfolded(&self) -> Model {
        let mut m = self.clone();
        m.folded = std::sync::OnceLock::from(None);
        m
    }

    pub fn label_kind(&self) -> LabelKind {
        key_kind(&self.groups[0].key)
    }
    /// Memories of the union of all groups, in group order (row-major `union_m × d`).
    pub fn union_memories(&self) -> (&[f64], usize) {
        (&self.union_xi, self.union_m)
    }

    /// Resolves an integer label to a group index. `column` only feeds the error text.
    pub fn resolve_int(&self, value: i64, column: &str) -> Result<usize> {
        let found = match usize::try_from(value) {
            Ok(k) if !self.dense_int.is_empty() => self.dense_int.get(k).copied().flatten(),
            _ => self.by_int.get(&value).copied(),
        };
        found.ok_or_else(|| self.unknown(column, value.to_string()))
    }

    /// Resolves a string label to a group index.
    pub fn resolve_str(&self, value: &str, column: &str) -> Result<usize> {
        self.by_str
            .get(value)
            .copied()
            .ok_or_else(|| self.unknown(column, format!("'{value}'")))
    }

    fn unknown(&self, column: &str, value: String) -> Error {
        let known = match self.label_kind() {
            LabelKind::None => "none (the model was trained without labels; omit the group)".into(),
            _ => {
                let mut keys: Vec<&GroupKey> =
                    self.groups.iter().filter_map(|g| g.key.as_ref()).collect();
                keys.sort();
                keys.iter()
                    .map(|k| k.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        };
        Error::UnknownGroup {
            column: column.to_string(),
            value,
            known,
        }
    }
}

fn group_name(k: &Option<GroupKey>) -> String {
    k.as_ref()
        .map_or_else(|| "(unlabelled)".into(), |k| k.to_string())
}

/// The Gram matrix `ΞΞᵀ` (`m×m`), or `None` when iterating through `d` is cheaper
/// (`m > 2d`) or it would be large.
fn gram(xi: &[f64], m: usize, d: usize) -> Option<Vec<f64>> {
    if m > 2 * d || m > 1024 {
        return None;
    }
    let mut g = vec![0.0; m * m];
    crate::kernel::gemm_abt(xi, m, d, xi, m, &mut g);
    Some(g)
}

fn key_kind(k: &Option<GroupKey>) -> LabelKind {
    match k {
        None => LabelKind::None,
        Some(GroupKey::Int(_)) => LabelKind::Int,
        Some(GroupKey::Str(_)) => LabelKind::Str,
    }
}

/// `E_τ(x) = ½‖x‖² − max(0, A_β(Ξx) − τ)`: the Lyapunov function of the dynamics.
pub fn lyapunov(xi: &[f64], m: usize, beta: f64, tau: f64, x: &[f64]) -> f64 {
    let d = x.len();
    let h: Vec<f64> = (0..m)
        .map(|mu| crate::kernel::dot(&xi[mu * d..(mu + 1) * d], x))
        .collect();
    let a = crate::kernel::log_mean_exp(&h, beta);
    0.5 * crate::kernel::norm2(x) - (a - tau).max(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(keys: &[i64]) -> Model {
        let group = |k: i64| Group {
            key: Some(GroupKey::Int(k)),
            xi: vec![1.0, 0.0],
            m: 1,
            tau: 0.1,
            n_train: 0,
            n_calibration: 0,
            calibrated_on: CalibratedOn::Train,
        };
        Model::new(ModelParts {
            d: 2,
            beta: 5.0,
            normalize: Normalize::L2,
            max_iter: 16,
            tol: 1e-6,
            groups: keys.iter().map(|&k| group(k)).collect(),
            tau_star: 0.1,
            provenance: Provenance::default(),
            whitening: None,
            beta_search: None,
        })
        .unwrap()
    }

    /// Small class ids take the table, other labels the map; both give the group's
    /// index and the same error for a label the model does not know.
    #[test]
    fn integer_labels_resolve_by_table_and_by_map_alike() {
        for keys in [&[3, 0, 7][..], &[3, -2, 7], &[3, 1 << 40, 7]] {
            let m = model(keys);
            assert_eq!(
                m.dense_int.is_empty(),
                keys.iter().any(|&k| !(0..DENSE_LABELS).contains(&k))
            );
            for (i, &k) in keys.iter().enumerate() {
                assert_eq!(m.resolve_int(k, "label").unwrap(), i);
            }
            for bad in [5, -1, 8, i64::MAX, i64::MIN, DENSE_LABELS] {
                let e = m.resolve_int(bad, "label").unwrap_err().to_string();
                assert!(
                    e.contains(&format!("unknown group {bad} (column 'label')")),
                    "{e}"
                );
            }
        }
    }
}
