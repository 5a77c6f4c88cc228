//! `reclag sql`: SQL over Parquet tables with the reclag functions.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Args;

use crate::error::Result;
use crate::ops::eval::parse_named;
use crate::ops::sql::{SqlFormat, SqlJob};
use crate::store::Stores;

use super::*;

#[derive(Args, Debug)]
#[command(after_long_help = "\
Functions (each takes model, embedding [, group]; model is a name given with
--model, or a model file path or URL, as a string literal):
  reclag_score, reclag_energy, reclag_ood_probability, reclag_is_ood, reclag_attractor,
  reclag_p_value (spec §11; needs a model with calibration scores), reclag_explain
A NULL or omitted group routes the row to the group of largest margin.

Example:
  reclag sql --table events=events/ --model prod=model.parquet \\
    \"SELECT id, reclag_score('prod', embedding, label) AS s FROM events
     WHERE reclag_is_ood('prod', embedding, label)\" --output flagged.parquet

SHOW FUNCTIONS and information_schema describe the functions.")]
pub struct SqlArgs {
    /// The query.
    pub query: String,
    /// A table: NAME=URL of a Parquet file, a directory or prefix of them, a glob
    /// (lake/*/part-*.parquet), or a hive-partitioned lake (key=value directories
    /// become columns). URL: a path, file://, s3://, gs:// or az://. Repeatable.
    #[arg(long, value_name = "NAME=URL", value_parser = parse_named)]
    pub table: Vec<(String, String)>,
    /// A model: NAME=URL of a model file (path or object-store URL). Repeatable.
    #[arg(long, value_name = "NAME=URL", value_parser = parse_named)]
    pub model: Vec<(String, String)>,
    /// Write the result here: a local file (written to a temporary name, then
    /// renamed), for Parquet an object-store URL (published when complete), or `-`
    /// for CSV or NDJSON streamed to standard output. Without it the result prints as
    /// tables of up to 1,024 rows each, as the rows arrive.
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// table, parquet, csv or ndjson (default: from the --output extension, else table).
    #[arg(long)]
    pub format: Option<String>,
    /// Run the query on a Ballista cluster: df://HOST:PORT of a `reclag cluster
    /// scheduler`. Tables ship as their exact file lists (a glob reads the files it
    /// matched now), models as URL and checksum (the executors load them with their
    /// own object-store credentials and refuse a changed file). Same flags and
    /// results as without it.
    #[arg(long, value_name = "df://HOST:PORT")]
    pub cluster: Option<String>,
}

impl TryFrom<(SqlArgs, Arc<Stores>)> for SqlJob {
    type Error = crate::error::Error;

    fn try_from((a, stores): (SqlArgs, Arc<Stores>)) -> Result<Self> {
        let format = SqlFormat::choose(a.format.as_deref(), a.output.as_deref())?;
        Ok(SqlJob::new(stores, a.query)
            .tables(a.table)
            .models(a.model)
            .output(a.output, format)
            .cluster(a.cluster))
    }
}

pub(super) fn run(a: SqlArgs, stores: Arc<Stores>, out: &mut dyn Write) -> Result<ExitCode> {
    let job = SqlJob::try_from((a, stores))?;
    let rt = runtime("starting the query runtime")?;
    let summary = rt.block_on(job.run_to(out))?;
    write!(out, "{summary}").map_err(io_err)?;
    Ok(ExitCode::SUCCESS)
}
