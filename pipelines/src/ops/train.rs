//! `reclag train`: stream Parquet rows into a bounded training set, fit, save.

use reclag::{GroupKey, Model, TrainParams, TrainingSet};

use crate::error::{Error, Result};
use std::sync::Arc;

use crate::io::{batch_column, open_all};
use crate::progress::{TrainBar, bar};
use crate::store::Stores;

#[derive(Clone, Debug)]
pub struct TrainJob {
    inputs: Vec<String>,
    embedding: String,
    label: Option<String>,
    /// A path or object-store URL.
    output: String,
    params: TrainParams,
    max_rows_per_group: Option<usize>,
    stores: Arc<Stores>,
}

impl TrainJob {
    /// Fits a model on `inputs` and writes it to `output`, through `stores`: the
    /// column `embedding`, one group, the default (whitened) recipe, every row, until
    /// set otherwise.
    pub fn new(stores: Arc<Stores>, inputs: Vec<String>, output: impl Into<String>) -> Self {
        TrainJob {
            inputs,
            embedding: "embedding".into(),
            label: None,
            output: output.into(),
            params: TrainParams::default(),
            max_rows_per_group: None,
            stores,
        }
    }

    setters! {
        embedding: String,
        /// The label column whose values are the groups (`None`: one group).
        label: Option<String>,
        params: TrainParams,
        /// Keep at most this many rows per group (a seeded reservoir sample).
        max_rows_per_group: Option<usize>,
    }

    /// The parameters the job fits with.
    pub fn training_params(&self) -> &TrainParams {
        &self.params
    }

    /// Reads the training rows (bounded by `max_rows_per_group`) and names their
    /// source, without fitting.
    pub fn collect(&self) -> Result<(TrainingSet, String)> {
        collect(self)
    }

    /// Fits the model and writes it to the output (whole or not at all).
    pub fn run(&self) -> Result<Model> {
        run(self)
    }
}

/// Reads the training rows of `job` (bounded by `max_rows_per_group`).
pub(crate) fn collect(job: &TrainJob) -> Result<(TrainingSet, String)> {
    let files = open_all(&job.stores, &job.inputs)?;
    let first = &files[0];
    let emb = first.column_index(&job.embedding)?;
    let fixed = reclag::arrow::check_embedding_type(
        first.schema.field(emb).data_type(),
        &job.embedding,
        None,
    )
    .map_err(Error::in_file(&first.path))?;
    let mut cols = vec![emb];
    if let Some(l) = &job.label {
        let li = first.column_index(l)?;
        // Reject an unsupported label type before reading rows.
        let dt = first.schema.field(li).data_type();
        let empty = arrow_array::new_empty_array(dt);
        reclag::arrow::group_keys(empty.as_ref(), l).map_err(Error::in_file(&first.path))?;
        cols.push(li);
    }
    cols.sort_unstable();
    let total: u64 = files.iter().map(|f| f.rows).sum();
    let pb = bar(total, "rows", "reading");
    let mut set: Option<TrainingSet> = fixed
        .map(|d| TrainingSet::new(d, job.max_rows_per_group, job.params.seed))
        .transpose()?;
    let mut skipped_all_null = 0u64;
    for f in files {
        let path = f.path.clone();
        let mut seen = 0usize;
        for batch in f.read(Some(&cols))? {
            let batch = batch?;
            let col = batch_column(&batch, &job.embedding, &path)?;
            let expected = set.as_ref().map(|s| s.dim());
            let rows = reclag::arrow::embedding_rows(col.as_ref(), &job.embedding, expected)
                .map_err(Error::in_file(&path))
                .map_err(|e| crate::ops::score::offset_rows(e, seen))?;
            seen += batch.num_rows();
            pb.inc(batch.num_rows() as u64);
            if rows.dim() == 0 {
                skipped_all_null += rows.len() as u64;
                continue;
            }
            let set = match &mut set {
                Some(s) => s,
                None => set.insert(TrainingSet::new(
                    rows.dim(),
                    job.max_rows_per_group,
                    job.params.seed,
                )?),
            };
            let labels: Option<Vec<Option<GroupKey>>> = match &job.label {
                None => None,
                Some(l) => Some(
                    reclag::arrow::group_keys(batch_column(&batch, l, &path)?.as_ref(), l)
                        .map_err(Error::in_file(&path))?,
                ),
            };
            set.push(&rows, labels.as_deref())?;
        }
    }
    pb.finish_and_clear();
    let mut set = set.ok_or_else(|| {
        Error::Core(reclag::Error::EmptyInput(format!(
            "column '{}' has no non-null rows in {}",
            job.embedding,
            job.inputs.join(", ")
        )))
    })?;
    set.skipped_invalid += skipped_all_null;
    let source = format!(
        "inputs={} embedding={} label={}",
        job.inputs.join(","),
        job.embedding,
        job.label.as_deref().unwrap_or("-")
    );
    Ok((set, source))
}

fn run(job: &TrainJob) -> Result<Model> {
    let params = job.params.clone().check()?;
    let (set, source) = collect(job)?;
    let pb = bar(0, "epochs", "training");
    let model = params
        .fit(&set, &source, &TrainBar(pb.clone()))?
        .with_label_column(job.label.clone());
    pb.finish_and_clear();
    let bytes = reclag::format::to_bytes(&model)?;
    job.stores.locate(&job.output)?.put(bytes.into())?;
    Ok(model)
}
