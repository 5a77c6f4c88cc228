//! `reclag eval`: AUROC and FPR95 on OOD sets, beside the baselines.

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, ValueEnum};
use reclag::baselines::Baseline;
use reclag::{LabelKind, Route};

use crate::error::Result;
use crate::ops::eval::{EvalJob, parse_named};
use crate::ops::route::Routing;
use crate::store::Stores;

use super::args::*;
use super::*;

#[derive(Args, Debug)]
#[command(after_long_help = "\
Baselines (spec §9) need: he, she, mahalanobis, knn → --train (the ID training
table, with --label for per-group ones); msp, energy → a logits column.

Example (the protocol of the shared reference numbers):
  reclag eval --model model.parquet --id id_test.parquet \\
      --ood mnist=ood_mnist.parquet --ood letters=ood_font_letters.parquet \\
      --group-from-logits logits --train id_train.parquet --label label \\
      --baselines he,she,mahalanobis,knn,msp,energy --format json")]
pub struct EvalArgs {
    /// The model file: a path or URL.
    #[arg(long, value_name = "MODEL")]
    pub model: String,
    /// The in-distribution test table(s).
    #[arg(long, required = true, num_args = 1.., value_name = "PATH")]
    pub id: Vec<String>,
    /// An OOD table, named for the report. Repeat for several.
    #[arg(long, required = true, value_name = "NAME=PATH", value_parser = parse_named)]
    pub ood: Vec<(String, String)>,
    /// Embedding column: FixedSizeList/List/LargeList of Float32 or Float64.
    #[arg(long, default_value = "embedding", value_name = "COL")]
    pub embedding: String,
    #[command(flatten)]
    pub routing: RoutingArgs,
    #[arg(long, value_enum, default_value = "exact", value_name = "P", help = PRECISION_HELP)]
    pub precision: PrecisionArg,
    /// Comma-separated: he, she, mahalanobis, knn, msp, energy.
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    pub baselines: Vec<String>,
    /// Logits column for msp/energy (default: the --group-from-logits column).
    #[arg(long, value_name = "COL")]
    pub logits: Option<String>,
    /// The ID training table, the reference of he/she/mahalanobis/knn.
    #[arg(long, num_args = 1.., value_name = "PATH")]
    pub train: Vec<String>,
    /// Label column of --train (default: label, when the model has groups).
    #[arg(long, value_name = "COL")]
    pub label: Option<String>,
    /// k of the KNN baseline.
    #[arg(long, default_value_t = 50)]
    pub knn_k: usize,
    /// Cap the baseline reference at N rows per group (seeded sample).
    #[arg(long, value_name = "N")]
    pub reference_rows_per_group: Option<usize>,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
}

pub(super) fn run(a: EvalArgs, stores: Arc<Stores>, out: &mut dyn Write) -> Result<ExitCode> {
    let mut model = crate::store::load_model(&stores, &a.model)?;
    model.set_precision(a.precision.into());
    let format = a.format;
    let job = EvalJob::try_from((a, &model, stores))?;
    let rows = job.run(&model)?;
    match format {
        Format::Json => writeln!(out, "{}", crate::ops::eval::to_json(&rows)).map_err(io_err)?,
        Format::Table => write!(out, "{}", crate::ops::eval::to_table(&rows)).map_err(io_err)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// The model decides the default label column (none for a one-group model).
impl TryFrom<(EvalArgs, &reclag::Model, Arc<Stores>)> for EvalJob {
    type Error = crate::error::Error;

    fn try_from((a, model, stores): (EvalArgs, &reclag::Model, Arc<Stores>)) -> Result<Self> {
        eval_job(a, model, stores)
    }
}

fn eval_job(a: EvalArgs, model: &reclag::Model, stores: Arc<Stores>) -> Result<EvalJob> {
    let baselines = a
        .baselines
        .iter()
        .filter(|s| !s.is_empty())
        .map(|s| Baseline::parse(s.trim()))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let logits = a.logits.or_else(|| a.routing.group_from_logits.clone());
    let label = match (model.label_kind(), a.label) {
        (_, Some(l)) => Some(l),
        (LabelKind::None, None) => None,
        (_, None) => Some("label".to_string()),
    };
    let routing = Routing::with_route(
        a.routing.group,
        a.routing.group_from_logits,
        a.routing.route.map(Route::from),
    )?;
    Ok(EvalJob::new(stores, a.id, a.ood)
        .embedding(a.embedding)
        .routing(routing)
        .baselines(baselines, a.train, label, a.reference_rows_per_group)
        .logits(logits)
        .knn_k(a.knn_k))
}
