//! `reclag sql`: run a query over Parquet tables with the reclag functions registered.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::util::pretty::pretty_format_batches;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::execution::context::SessionContext;
use datafusion::prelude::SessionConfig;
use futures::StreamExt;
use reclag_udfs::ModelRegistry;

pub mod table;

use crate::error::{Error, Result};
use crate::io::{Sink, TableFormat};
use crate::store::{Location, Stores};

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
            Some(p) if p.as_os_str() == crate::io::STDIO => Err(Error::Usage(
                "--output - streams to standard output: name the format with --format csv or --format ndjson".into(),
            )),
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
    query: String,
    tables: Vec<(String, String)>,
    models: Vec<(String, String)>,
    output: Option<PathBuf>,
    format: SqlFormat,
    stores: Arc<Stores>,
    cluster: Option<String>,
}

impl SqlJob {
    /// Runs `query` with the reclag functions, reading through `stores`: no tables or
    /// models until given, the result printed as tables.
    pub fn new(stores: Arc<Stores>, query: impl Into<String>) -> Self {
        SqlJob {
            query: query.into(),
            tables: vec![],
            models: vec![],
            output: None,
            format: SqlFormat::Table,
            stores,
            cluster: None,
        }
    }

    /// Tables by `(name, URL)`: a file, a prefix, a glob or a hive-partitioned lake.
    pub fn tables(mut self, tables: Vec<(String, String)>) -> Self {
        self.tables = tables;
        self
    }

    /// Models by `(name, URL)`, for the functions' first argument.
    pub fn models(mut self, models: Vec<(String, String)>) -> Self {
        self.models = models;
        self
    }

    /// Where the result goes (`None`: printed), and in which format.
    pub fn output(mut self, output: Option<PathBuf>, format: SqlFormat) -> Self {
        self.output = output;
        self.format = format;
        self
    }

    /// Runs the query on the Ballista cluster whose scheduler is at `url`
    /// (`df://HOST:PORT`) instead of in this process.
    pub fn cluster(mut self, url: Option<String>) -> Self {
        self.cluster = url;
        self
    }

    /// Runs the query; the text to print (the tables, or a line saying where the
    /// result went).
    pub async fn run(&self) -> Result<String> {
        run(self).await
    }

    /// [`SqlJob::run`], streaming printed results to `out` as they arrive.
    pub async fn run_to(&self, out: &mut dyn std::io::Write) -> Result<String> {
        run_to(self, out).await
    }
}

fn df_err(e: datafusion::error::DataFusionError) -> Error {
    Error::Usage(e.to_string())
}

/// A model registry that loads path and URL models through `stores`. A process that
/// executes serialized plans gives this to [`reclag_udfs::ReclagCodec`], so the models
/// a plan pins are fetched from wherever they live.
pub fn model_registry(stores: Arc<Stores>) -> Arc<ModelRegistry> {
    ModelRegistry::with_loader(Box::new(move |spec: &str| {
        crate::store::load_model_from(&stores, spec).map_err(|e| e.to_string())
    }))
}

/// A session with the tables and models of `job` registered.
pub async fn session(job: &SqlJob) -> Result<SessionContext> {
    // information_schema makes `SHOW FUNCTIONS` describe the reclag functions.
    let ctx = SessionContext::new_with_config(SessionConfig::new().with_information_schema(true));
    let registry = model_registry(job.stores.clone());
    for (name, spec) in &job.models {
        let (model, url) = crate::store::load_model_from(&job.stores, spec)?;
        registry.register_from(name.clone(), url, Arc::new(model));
    }
    reclag_udfs::register_all(&ctx, registry);
    for (name, spec) in &job.tables {
        let loc = job
            .stores
            .locate(spec)
            .map_err(|e| Error::Usage(format!("table '{name}': {e}")))?;
        register_table(&ctx, name, &loc).await?;
    }
    Ok(ctx)
}

/// A session on the cluster at `url` with the tables and models of `job` registered:
/// each table as its exact file list, each model pinned by URL and checksum.
#[cfg(feature = "cluster")]
async fn cluster_session(job: &SqlJob, url: &str) -> Result<SessionContext> {
    let registry = model_registry(job.stores.clone());
    for (name, spec) in &job.models {
        let (model, url) = crate::store::load_model_from(&job.stores, spec)?;
        registry.register_from(name.clone(), url, Arc::new(model));
    }
    let ctx = crate::cluster::client_session(url, job.stores.clone(), registry).await?;
    for (name, spec) in &job.tables {
        let loc = job
            .stores
            .locate(spec)
            .map_err(|e| Error::Usage(format!("table '{name}': {e}")))?;
        crate::cluster::register_shipped(&ctx, name, spec, &loc, &job.stores).await?;
    }
    Ok(ctx)
}

#[cfg(not(feature = "cluster"))]
async fn cluster_session(_job: &SqlJob, url: &str) -> Result<SessionContext> {
    Err(crate::error::Error::without_cluster(url))
}

/// Registers a Parquet file, prefix, glob or hive-partitioned lake (`key=value`
/// directories become columns) as a table.
pub async fn register_table(ctx: &SessionContext, name: &str, loc: &Location) -> Result<()> {
    ctx.register_object_store(&loc.base, loc.store.clone());
    let key = loc.key.as_ref();
    let dir_url = |prefix: &str| -> Result<url::Url> {
        let s = if prefix.is_empty() {
            loc.base.to_string()
        } else {
            format!("{}{}/", loc.base, prefix.trim_end_matches('/'))
        };
        url::Url::parse(&s).map_err(|e| Error::Usage(format!("table '{name}': {e}")))
    };
    let table_url = if let Some(at) = key.find(['*', '?', '[']) {
        let cut = key[..at].rfind('/').map_or(0, |i| i + 1);
        // DataFusion matches the glob against the path with its `key=value`
        // segments removed (they become partition columns), so those segments must
        // leave the pattern too. Only `key=*` can be dropped without changing which
        // files match; a narrower one is a filter on the partition column.
        let mut kept = Vec::new();
        for seg in key[cut..].split('/') {
            match seg.split_once('=') {
                Some((_, "*")) => {}
                Some((col, _)) => {
                    return Err(Error::Usage(format!(
                        "table '{name}': {}: a glob may not narrow the partition segment '{seg}'; use '{col}=*' and filter with WHERE {col} ... (partitions are pruned)",
                        loc.display
                    )));
                }
                None => kept.push(seg),
            }
        }
        let glob = glob::Pattern::new(&kept.join("/")).map_err(|e| {
            Error::Usage(format!(
                "table '{name}': {} is not a valid glob: {e}",
                loc.display
            ))
        })?;
        ListingTableUrl::try_new(dir_url(&key[..cut])?, Some(glob)).map_err(df_err)?
    } else if loc.head()?.is_some() {
        ListingTableUrl::parse(loc.url()).map_err(df_err)?
    } else {
        if loc.list()?.is_empty() {
            return Err(Error::Usage(format!(
                "table '{name}': {} does not exist (expected a Parquet file, a directory or prefix of them, a glob, or a hive-partitioned lake)",
                loc.display
            )));
        }
        ListingTableUrl::try_new(dir_url(key)?, None).map_err(df_err)?
    };
    let options =
        ListingOptions::new(Arc::new(ParquetFormat::default())).with_file_extension(".parquet");
    let state = ctx.state();
    let config = ListingTableConfig::new(table_url)
        .with_listing_options(options)
        .infer_partitions_from_path(&state)
        .await
        .map_err(|e| Error::Usage(format!("table '{name}' ({}): {e}", loc.display)))?
        .infer_schema(&state)
        .await
        .map_err(|e| Error::Usage(format!("table '{name}' ({}): {e}", loc.display)))?;
    let table = ListingTable::try_new(config).map_err(df_err)?;
    ctx.register_table(name, Arc::new(table)).map_err(df_err)?;
    Ok(())
}

/// Swaps table `name` (a [`ListingTable`]) for a [`FastListTable`] over it, so its
/// embedding scans take the fast list reader. A table whose files cannot all be opened
/// here keeps the listing table, which reports any error when it is queried.
async fn fast_scans(
    ctx: &SessionContext,
    name: &str,
    stores: &Arc<Stores>,
    spec: &str,
) -> Result<()> {
    let table = ctx.table_provider(name).await.map_err(df_err)?;
    let Ok(listing) = (table as Arc<dyn std::any::Any + Send + Sync>).downcast::<ListingTable>()
    else {
        return Ok(());
    };
    if !crate::io::read_settings().fast_decode {
        return Ok(());
    }
    let Ok(footers) = table::footers(stores, &[spec.to_string()]).await else {
        return Ok(());
    };
    let files = footers.into_iter().map(|f| (f.loc, f.schema)).collect();
    let fast = crate::ops::sql::table::FastListTable::new(listing, files);
    if fast.fast() {
        ctx.deregister_table(name).map_err(df_err)?;
        ctx.register_table(name, Arc::new(fast)).map_err(df_err)?;
    }
    Ok(())
}

/// The session `reclag sql` runs `job` in: on the cluster `job` names, else local
/// with the fast list reader behind its tables' embedding scans.
pub async fn session_for(job: &SqlJob) -> Result<SessionContext> {
    match &job.cluster {
        Some(url) => cluster_session(job, url).await,
        None => {
            let ctx = session(job).await?;
            // Only here: a plan over a `FastListTable` does not serialize with
            // datafusion-proto, and `session`'s callers may ship theirs to another
            // process.
            for (name, spec) in &job.tables {
                fast_scans(&ctx, name, &job.stores, spec).await?;
            }
            Ok(ctx)
        }
    }
}

/// Rows per rendered table in the `table` format: each chunk is aligned on its own,
/// so the first lines print while the query runs and memory holds one chunk, not the
/// whole result.
pub const TABLE_ROWS: usize = 1024;

/// Runs the query; returns what [`run_to`] writes followed by its summary.
async fn run(job: &SqlJob) -> Result<String> {
    let mut buf = Vec::new();
    let summary = run_to(job, &mut buf).await?;
    let mut text = String::from_utf8_lossy(&buf).into_owned();
    text.push_str(&summary);
    Ok(text)
}

/// Runs the query, streaming a `table` result, or CSV or NDJSON with `--output -`,
/// into `out` as batches arrive; a file or object-store output is written and
/// summarised in the returned line (empty otherwise).
async fn run_to(job: &SqlJob, out: &mut dyn std::io::Write) -> Result<String> {
    let ctx = session_for(job).await?;
    let df = ctx.sql(&job.query).await.map_err(df_err)?;
    let schema = Arc::new(df.schema().as_arrow().clone());
    let mut stream = df.execute_stream().await.map_err(df_err)?;
    let io = |source| Error::Io {
        context: "writing the result to standard output".into(),
        source,
    };
    let to_stdout = job
        .output
        .as_deref()
        .is_some_and(|p| p.as_os_str() == crate::io::STDIO);
    match (job.format, &job.output) {
        (SqlFormat::Table, _) => {
            let render = |batches: &[datafusion::arrow::record_batch::RecordBatch]| {
                pretty_format_batches(batches)
                    .map(|t| format!("{t}\n"))
                    .map_err(|e| Error::Usage(e.to_string()))
            };
            let (mut chunk, mut rows, mut any) = (Vec::new(), 0usize, false);
            while let Some(b) = stream.next().await {
                let b = b.map_err(df_err)?;
                let mut at = 0;
                while at < b.num_rows() {
                    let take = (TABLE_ROWS - rows).min(b.num_rows() - at);
                    chunk.push(b.slice(at, take));
                    (at, rows) = (at + take, rows + take);
                    if rows == TABLE_ROWS {
                        out.write_all(render(&chunk)?.as_bytes()).map_err(io)?;
                        (chunk, rows, any) = (Vec::new(), 0, true);
                    }
                }
            }
            if rows > 0 || !any {
                if chunk.is_empty() {
                    chunk.push(datafusion::arrow::record_batch::RecordBatch::new_empty(
                        schema,
                    ));
                }
                out.write_all(render(&chunk)?.as_bytes()).map_err(io)?;
            }
            Ok(String::new())
        }
        (SqlFormat::Parquet, Some(_)) if to_stdout => Err(Error::Usage(
            "--output -: Parquet cannot stream to standard output; name a file, or use --format csv or ndjson".into(),
        )),
        (fmt, Some(_)) if to_stdout => {
            let arrow = |e: datafusion::arrow::error::ArrowError| match e {
                datafusion::arrow::error::ArrowError::IoError(_, source) => io(source),
                e => Error::Usage(format!("writing the result: {e}")),
            };
            if fmt == SqlFormat::Csv {
                let mut w = datafusion::arrow::csv::Writer::new(&mut *out);
                while let Some(b) = stream.next().await {
                    w.write(&b.map_err(df_err)?).map_err(arrow)?;
                }
            } else {
                let mut w = datafusion::arrow::json::LineDelimitedWriter::new(&mut *out);
                while let Some(b) = stream.next().await {
                    w.write(&b.map_err(df_err)?).map_err(arrow)?;
                }
                w.finish().map_err(arrow)?;
            }
            out.flush().map_err(io)?;
            Ok(String::new())
        }
        (_, None) => Err(Error::Usage(
            "--format parquet/csv/ndjson needs --output FILE (or --output - for csv and ndjson on standard output)".into(),
        )),
        (fmt, Some(out)) => {
            let mut rows = 0usize;
            let format = match fmt {
                SqlFormat::Csv => TableFormat::Csv,
                SqlFormat::Ndjson => TableFormat::Ndjson,
                _ => TableFormat::Parquet,
            };
            let mut sink = Sink::create_as(&job.stores, &out.to_string_lossy(), schema, format)?;
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
