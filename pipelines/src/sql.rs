//! `reclag sql`: run a query over Parquet tables with the reclag functions registered.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::util::pretty::pretty_format_batches;
use datafusion::execution::context::SessionContext;
use datafusion::prelude::{ParquetReadOptions, SessionConfig};
use futures::StreamExt;
use reclag_udfs::ModelRegistry;

use crate::error::{Error, Result};
use crate::io::AtomicParquet;

/// Output format of a query's result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SqlFormat {
    Table,
    Parquet,
    Csv,
    Ndjson,
}

impl SqlFormat {
    /// From `--format`, else from the output file's extension.
    pub fn choose(explicit: Option<&str>, output: Option<&Path>) -> Result<Self> {
        let from = |s: &str| match s {
            "table" => Some(SqlFormat::Table),
            "parquet" => Some(SqlFormat::Parquet),
            "csv" => Some(SqlFormat::Csv),
            "ndjson" | "json" | "jsonl" => Some(SqlFormat::Ndjson),
            _ => None,
        };
        if let Some(f) = explicit {
            return from(f).ok_or_else(|| {
                Error::Usage(format!(
                    "unknown --format '{f}'; expected table, parquet, csv or ndjson"
                ))
            });
        }
        match output {
            None => Ok(SqlFormat::Table),
            Some(p) => {
                let ext = p
                    .extension()
                    .map(|e| e.to_string_lossy().to_lowercase())
                    .unwrap_or_default();
                from(&ext).filter(|f| *f != SqlFormat::Table).ok_or_else(|| {
                    Error::Usage(format!(
                        "cannot tell the format of {} from its extension; use .parquet, .csv or .ndjson, or pass --format",
                        p.display()
                    ))
                })
            }
        }
    }
}

#[derive(Clone, Debug)]
pub struct SqlJob {
    pub query: String,
    pub tables: Vec<(String, String)>,
    pub models: Vec<(String, String)>,
    pub output: Option<PathBuf>,
    pub format: SqlFormat,
}

fn df_err(e: datafusion::error::DataFusionError) -> Error {
    Error::Usage(e.to_string())
}

/// A session with the tables and models of `job` registered.
pub async fn session(job: &SqlJob) -> Result<SessionContext> {
    // information_schema makes `SHOW FUNCTIONS` describe the reclag functions.
    let ctx = SessionContext::new_with_config(SessionConfig::new().with_information_schema(true));
    let registry = ModelRegistry::new();
    for (name, path) in &job.models {
        let model = reclag::format::load(Path::new(path))?;
        registry.register(name.clone(), Arc::new(model));
    }
    reclag_udfs::register_all(&ctx, registry);
    for (name, path) in &job.tables {
        if !Path::new(path).exists() {
            return Err(Error::Usage(format!(
                "table '{name}': {path} does not exist"
            )));
        }
        ctx.register_parquet(name.as_str(), path.as_str(), ParquetReadOptions::default())
            .await
            .map_err(df_err)?;
    }
    Ok(ctx)
}

/// Runs the query; returns the rendered table (for `Table`) or a one-line summary.
pub async fn run(job: &SqlJob) -> Result<String> {
    let ctx = session(job).await?;
    let df = ctx.sql(&job.query).await.map_err(df_err)?;
    let schema = Arc::new(df.schema().as_arrow().clone());
    let mut stream = df.execute_stream().await.map_err(df_err)?;
    match (job.format, &job.output) {
        (SqlFormat::Table, _) => {
            let mut batches = Vec::new();
            while let Some(b) = stream.next().await {
                batches.push(b.map_err(df_err)?);
            }
            let t = pretty_format_batches(&batches).map_err(|e| Error::Usage(e.to_string()))?;
            Ok(format!("{t}\n"))
        }
        (_, None) => Err(Error::Usage(
            "--format parquet/csv/ndjson needs --output FILE".into(),
        )),
        (fmt, Some(out)) => {
            let mut rows = 0usize;
            let mut sink = Sink::create(fmt, out, schema)?;
            while let Some(b) = stream.next().await {
                let b = b.map_err(df_err)?;
                rows += b.num_rows();
                sink.write(&b)?;
            }
            sink.finish()?;
            Ok(format!("wrote {rows} rows to {}\n", out.display()))
        }
    }
}

/// A result file written under a temporary name and renamed when complete.
enum Sink {
    Parquet(AtomicParquet),
    Csv(datafusion::arrow::csv::Writer<File>, Tmp),
    Json(datafusion::arrow::json::LineDelimitedWriter<File>, Tmp),
}

/// A temporary sibling of the target, removed unless renamed into place.
struct Tmp {
    tmp: PathBuf,
    target: PathBuf,
    done: bool,
}

impl Drop for Tmp {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

impl Sink {
    fn create(
        fmt: SqlFormat,
        target: &Path,
        schema: datafusion::arrow::datatypes::SchemaRef,
    ) -> Result<Self> {
        if fmt == SqlFormat::Parquet {
            return Ok(Sink::Parquet(AtomicParquet::create(target, schema)?));
        }
        let tmp = reclag::format::temp_sibling(target);
        let f = File::create(&tmp).map_err(|source| Error::Io {
            context: format!("creating {}", tmp.display()),
            source,
        })?;
        let t = Tmp {
            tmp,
            target: target.to_path_buf(),
            done: false,
        };
        Ok(match fmt {
            SqlFormat::Csv => Sink::Csv(datafusion::arrow::csv::Writer::new(f), t),
            _ => Sink::Json(datafusion::arrow::json::LineDelimitedWriter::new(f), t),
        })
    }

    fn write(&mut self, b: &datafusion::arrow::record_batch::RecordBatch) -> Result<()> {
        let arrow = |e: datafusion::arrow::error::ArrowError| {
            Error::Usage(format!("writing the result: {e}"))
        };
        match self {
            Sink::Parquet(w) => w.write(b),
            Sink::Csv(w, _) => w.write(b).map_err(arrow),
            Sink::Json(w, _) => w.write(b).map_err(arrow),
        }
    }

    fn finish(self) -> Result<()> {
        let rename = |mut t: Tmp| -> Result<()> {
            std::fs::rename(&t.tmp, &t.target).map_err(|source| Error::Io {
                context: format!("renaming {} to {}", t.tmp.display(), t.target.display()),
                source,
            })?;
            t.done = true;
            Ok(())
        };
        match self {
            Sink::Parquet(w) => w.finish(),
            Sink::Csv(w, t) => {
                drop(w.into_inner());
                rename(t)
            }
            Sink::Json(mut w, t) => {
                w.finish()
                    .map_err(|e| Error::Usage(format!("writing the result: {e}")))?;
                drop(w.into_inner());
                rename(t)
            }
        }
    }
}
