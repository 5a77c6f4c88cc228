//! `reclag train`: fit a model on an in-distribution table.

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, ValueEnum};
use reclag::{Init, Normalize, Recipe, TrainParams};

use crate::error::{Error, Result};
use crate::ops::train::TrainJob;
use crate::store::Stores;

use super::*;

#[derive(Args, Debug)]
#[command(after_long_help = "\
Memory: rows are read in batches. Without --max-rows-per-group every valid row is
kept (4·d bytes each). With --max-rows-per-group N each group keeps a seeded
uniform sample (reservoir) of at most N rows, so memory is bounded by
groups × N × d × 4 bytes however large the input is.

Determinism: the same input, parameters and --seed give a byte-identical model.

Example:
  reclag train --input data/train/ --embedding embedding --label label \\
      --output model.parquet --max-rows-per-group 100000")]
pub struct TrainArgs {
    /// Parquet file(s), directories or prefixes of them, or globs like dir/*.parquet;
    /// paths or s3://, gs://, az:// URLs.
    #[arg(long, required = true, num_args = 1.., value_name = "URL")]
    pub input: Vec<String>,
    /// Embedding column: FixedSizeList/List/LargeList of Float32 or Float64.
    #[arg(long, default_value = "embedding", value_name = "COL")]
    pub embedding: String,
    /// Class label column (integer or string); one group is fitted per label.
    /// Without it the whole table is one group.
    #[arg(long, value_name = "COL")]
    pub label: Option<String>,
    /// Where to write the model (one Parquet file, written atomically): a path or URL.
    #[arg(long, value_name = "MODEL")]
    pub output: String,
    /// The training recipe: `whitened` (default, spec §10) or `paper` (§1–§9, the
    /// method as published; reproduces the reference numbers).
    #[arg(long, value_enum, default_value_t = RecipeArg::Whitened)]
    pub recipe: RecipeArg,
    /// Memory patterns per group (M); a group with fewer rows uses one per row.
    /// Default: 64 with the whitened recipe, 10 with paper.
    #[arg(long)]
    pub memories: Option<usize>,
    /// Inverse temperature β, or `auto`: chosen from 1, 2, 3, 5, 7, 10, 15, 20 by
    /// leave-one-group-out on the calibration rows (each group in turn plays OOD
    /// against the others; no OOD data needed). Default: auto with the whitened
    /// recipe (10 when there is one group, or a group has under 20 held-out rows),
    /// 5 with paper.
    #[arg(long, value_name = "BETA|auto")]
    pub beta: Option<String>,
    /// Passes over the training rows (default 50).
    #[arg(long, help_heading = "Paper recipe (SFNN training)")]
    pub epochs: Option<usize>,
    /// Rows per Adam step (default 50).
    #[arg(long, help_heading = "Paper recipe (SFNN training)")]
    pub batch_size: Option<usize>,
    /// Adam learning rate (default 1e-3).
    #[arg(long, help_heading = "Paper recipe (SFNN training)")]
    pub lr: Option<f64>,
    /// Norm the initial memories are rescaled to (default 10).
    #[arg(long, help_heading = "Paper recipe (SFNN training)")]
    pub init_norm: Option<f64>,
    /// Initial memories (default random).
    #[arg(long, value_enum, help_heading = "Paper recipe (SFNN training)")]
    pub init: Option<InitArg>,
    /// Row preprocessing; l2 divides each row by its norm.
    #[arg(long, value_enum, default_value_t = NormalizeArg::L2)]
    pub normalize: NormalizeArg,
    /// Fraction of held-out ID rows to flag: each τ is this quantile of ID energies.
    #[arg(long, default_value_t = 0.05)]
    pub ood_rate: f64,
    /// Seeded share of each group held out for calibrating τ (never fitted on).
    /// A group whose share would be under 20 rows is calibrated on its training rows.
    #[arg(long, default_value_t = 0.1)]
    pub calibration_fraction: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Keep at most N rows per group (seeded reservoir sample); bounds memory.
    #[arg(long, value_name = "N")]
    pub max_rows_per_group: Option<usize>,
    /// Maximum dynamics steps when scoring with this model.
    #[arg(long, default_value_t = 16)]
    pub max_iter: usize,
    /// Convergence tolerance of the dynamics.
    #[arg(long, default_value_t = 1e-6)]
    pub tol: f64,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum InitArg {
    Random,
    #[value(name = "kmeans++")]
    KMeansPlusPlus,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum NormalizeArg {
    None,
    L2,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum RecipeArg {
    /// §10: l2, centre, whiten, l2; spherical k-means memories; β chosen by
    /// leave-one-group-out; rows without a group routed by best margin.
    Whitened,
    /// §1–§9: the paper's SFNN-trained memories on l2 rows.
    Paper,
}

pub(super) fn run(a: TrainArgs, stores: Arc<Stores>, out: &mut dyn Write) -> Result<ExitCode> {
    let output = a.output.clone();
    let job = TrainJob::try_from((a, stores))?;
    let model = job.run()?;
    writeln!(
        out,
        "trained {} group(s), d={}, tau*={:.6}; wrote {}",
        model.groups().len(),
        model.dim(),
        model.tau_star(),
        output
    )
    .map_err(io_err)?;
    for g in model.groups() {
        if g.m < job.training_params().memories {
            writeln!(
                out,
                "note: group {} had {} training rows, fewer than --memories {}; it uses {} memories",
                g.key.as_ref().map_or("(all)".into(), |k| k.to_string()),
                g.n_train,
                job.training_params().memories,
                g.m
            )
            .map_err(io_err)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

impl TryFrom<(TrainArgs, Arc<Stores>)> for TrainJob {
    type Error = crate::error::Error;

    fn try_from((a, stores): (TrainArgs, Arc<Stores>)) -> Result<Self> {
        train_job(a, stores)
    }
}

fn train_job(a: TrainArgs, stores: Arc<Stores>) -> Result<TrainJob> {
    let (recipe, defaults) = match a.recipe {
        RecipeArg::Whitened => (Recipe::Whitened, TrainParams::default()),
        RecipeArg::Paper => (Recipe::Paper, TrainParams::paper()),
    };
    // The SFNN settings mean nothing to k-means: say so rather than ignore them.
    let sfnn: Vec<&str> = [
        ("--epochs", a.epochs.is_some()),
        ("--batch-size", a.batch_size.is_some()),
        ("--lr", a.lr.is_some()),
        ("--init-norm", a.init_norm.is_some()),
        ("--init", a.init.is_some()),
    ]
    .into_iter()
    .filter_map(|(f, given)| given.then_some(f))
    .collect();
    if recipe == Recipe::Whitened && !sfnn.is_empty() {
        return Err(Error::Usage(format!(
            "{} set(s) the paper recipe's SFNN training; the whitened recipe (the default) fits its memories by spherical k-means. Add --recipe paper, or drop {}",
            sfnn.join(", "),
            if sfnn.len() == 1 { "it" } else { "them" }
        )));
    }
    // `auto` with the paper recipe reaches `TrainParams::check`, which refuses it.
    let (beta, beta_auto) = match a.beta.as_deref() {
        None => (defaults.beta, defaults.beta_auto),
        Some("auto") => (defaults.beta, true),
        Some(b) => (
            b.parse::<f64>().map_err(|_| {
                Error::Usage(format!("--beta takes a number or `auto`; found '{b}'"))
            })?,
            false,
        ),
    };
    let params = TrainParams {
        recipe,
        memories: a.memories.unwrap_or(defaults.memories),
        beta,
        beta_auto,
        epochs: a.epochs.unwrap_or(defaults.epochs),
        batch_size: a.batch_size.unwrap_or(defaults.batch_size),
        lr: a.lr.unwrap_or(defaults.lr),
        init_norm: a.init_norm.unwrap_or(defaults.init_norm),
        init: match a.init {
            None => defaults.init,
            Some(InitArg::Random) => Init::Random,
            Some(InitArg::KMeansPlusPlus) => Init::KMeansPlusPlus,
        },
        normalize: match a.normalize {
            NormalizeArg::None => Normalize::None,
            NormalizeArg::L2 => Normalize::L2,
        },
        ood_rate: a.ood_rate,
        calibration_fraction: a.calibration_fraction,
        seed: a.seed,
        max_iter: a.max_iter,
        tol: a.tol,
        ..defaults
    };
    Ok(TrainJob::new(stores, a.input, a.output)
        .embedding(a.embedding)
        .label(a.label)
        .max_rows_per_group(a.max_rows_per_group)
        .params(params))
}
