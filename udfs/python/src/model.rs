//! `reclag.Model`: load, train, save, score and evaluate from Python, with the CLI's
//! core calls and output columns.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use arrow_array::{ArrayRef, RecordBatch, RecordBatchReader};
use arrow_schema::{Field, Schema};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use reclag::{GroupKey, Model as CoreModel, Route, ScoreOutput, TrainParams, TrainingSet, Work};

use crate::arrow_io::{ArrowStream, import_stream, read_all};
use crate::err;

/// Models by checksum, for the Polars plugin: an expression carries a model's checksum
/// (and the file it came from, if any), never the model itself, and finds it here (or
/// loads the file, refusing one whose checksum changed).
fn known() -> &'static Mutex<HashMap<String, Arc<CoreModel>>> {
    static KNOWN: OnceLock<Mutex<HashMap<String, Arc<CoreModel>>>> = OnceLock::new();
    KNOWN.get_or_init(Default::default)
}

/// The model with checksum `sha256`: one this process holds, else loaded from `path`.
pub fn model_by_key(sha256: &str, path: Option<&str>) -> Result<Arc<CoreModel>, String> {
    if let Some(m) = known().lock().expect("model cache").get(sha256) {
        return Ok(m.clone());
    }
    let Some(path) = path else {
        return Err(format!(
            "no model with checksum {sha256} in this process, and the expression names no file to load it from"
        ));
    };
    let m = crate::store::locate(path)?.load()?;
    let found = reclag::format::checksum(&m);
    if found != sha256 {
        return Err(format!(
            "model {path} has checksum {found}, but the expression was built with checksum {sha256}: the file changed; build the expression again"
        ));
    }
    let m = Arc::new(m);
    known()
        .lock()
        .expect("model cache")
        .insert(found, m.clone());
    Ok(m)
}

/// A RecLag model: trained with `reclag.train`, or loaded with `reclag.load`.
#[pyclass(module = "reclag._reclag", frozen)]
pub struct Model {
    pub inner: Arc<CoreModel>,
    pub sha256: String,
    /// The file it was loaded from or saved to, absolute.
    pub path: Mutex<Option<String>>,
}

impl Model {
    fn new(m: CoreModel, path: Option<String>) -> Self {
        let sha256 = reclag::format::checksum(&m);
        let inner = Arc::new(m);
        known()
            .lock()
            .expect("model cache")
            .insert(sha256.clone(), inner.clone());
        Model {
            inner,
            sha256,
            path: Mutex::new(path),
        }
    }
}

/// Loads a model file written by `reclag train` or `Model.save`, from a local path or
/// an object-store URL.
#[pyfunction]
pub fn load(py: Python<'_>, path: &str) -> PyResult<Model> {
    let (m, at) = py
        .detach(|| {
            let at = crate::store::locate(path)?;
            Ok::<_, String>((at.load()?, at.display()))
        })
        .map_err(err)?;
    Ok(Model::new(m, Some(at)))
}

fn params_from(kwargs: Option<&Bound<'_, PyDict>>) -> PyResult<TrainParams> {
    let mut recipe_paper = false;
    if let Some(k) = kwargs
        && let Some(r) = k.get_item("recipe")?
    {
        let r: String = r.extract()?;
        recipe_paper = match r.as_str() {
            "paper" => true,
            "whitened" => false,
            other => {
                return Err(err(format!(
                    "recipe '{other}': expected 'whitened' or 'paper'"
                )));
            }
        };
    }
    let mut p = if recipe_paper {
        TrainParams::paper()
    } else {
        TrainParams::default()
    };
    let Some(k) = kwargs else {
        return Ok(p);
    };
    for (key, value) in k.iter() {
        let key: String = key.extract()?;
        match key.as_str() {
            "recipe" => {}
            "memories" => p.memories = value.extract()?,
            "beta" => {
                if value.extract::<String>().is_ok_and(|s| s == "auto") {
                    p.beta_auto = true;
                } else {
                    p.beta = value.extract()?;
                    p.beta_auto = false;
                }
            }
            "epochs" => p.epochs = value.extract()?,
            "batch_size" => p.batch_size = value.extract()?,
            "lr" => p.lr = value.extract()?,
            "ood_rate" => p.ood_rate = value.extract()?,
            "calibration_fraction" => p.calibration_fraction = value.extract()?,
            "seed" => p.seed = value.extract()?,
            "max_iter" => p.max_iter = value.extract()?,
            "tol" => p.tol = value.extract()?,
            other => {
                return Err(pyo3::exceptions::PyTypeError::new_err(format!(
                    "train() got an unexpected parameter '{other}'; parameters: recipe, memories, beta, epochs, batch_size, lr, ood_rate, calibration_fraction, seed, max_iter, tol"
                )));
            }
        }
    }
    Ok(p)
}

/// Fits a model on the rows of an Arrow stream (`reclag.train` prepares it).
#[pyfunction]
#[pyo3(signature = (data, embedding, label=None, max_rows_per_group=None, source=String::new(), **params))]
pub fn train_stream(
    py: Python<'_>,
    data: &Bound<'_, PyAny>,
    embedding: &str,
    label: Option<String>,
    max_rows_per_group: Option<usize>,
    source: String,
    params: Option<&Bound<'_, PyDict>>,
) -> PyResult<Model> {
    let params = params_from(params)?;
    let checked = params.clone().check().map_err(err)?;
    let reader = import_stream(data)?;
    let schema = reader.schema();
    let emb = reclag_udfs_column(&schema, embedding)?;
    let fixed = reclag::arrow::check_embedding_type(schema.field(emb).data_type(), embedding, None)
        .map_err(err)?;
    let label_index = label
        .as_deref()
        .map(|l| reclag_udfs_column(&schema, l))
        .transpose()?;
    let seed = params.seed;
    let label2 = label.clone();
    let model = py.detach(move || -> Result<CoreModel, String> {
        let mut set: Option<TrainingSet> = fixed
            .map(|d| TrainingSet::new(d, max_rows_per_group, seed))
            .transpose()
            .map_err(|e| e.to_string())?;
        for batch in reader {
            let batch = batch.map_err(|e| e.to_string())?;
            let col = batch.column(emb);
            let expected = set.as_ref().map(|s| s.dim());
            let rows =
                reclag::arrow::embedding_rows(col.as_ref(), embedding_name(&schema, emb), expected)
                    .map_err(|e| e.to_string())?;
            if rows.dim() == 0 {
                continue;
            }
            let set = match &mut set {
                Some(s) => s,
                None => set.insert(
                    TrainingSet::new(rows.dim(), max_rows_per_group, seed)
                        .map_err(|e| e.to_string())?,
                ),
            };
            let labels: Option<Vec<Option<GroupKey>>> = match (label_index, &label2) {
                (Some(li), Some(l)) => Some(
                    reclag::arrow::group_keys(batch.column(li).as_ref(), l)
                        .map_err(|e| e.to_string())?,
                ),
                _ => None,
            };
            set.push(&rows, labels.as_deref())
                .map_err(|e| e.to_string())?;
        }
        let set = set.ok_or_else(|| {
            format!(
                "column '{}' has no non-null rows",
                embedding_name(&schema, emb)
            )
        })?;
        let source = if source.is_empty() {
            format!(
                "python embedding={} label={}",
                embedding_name(&schema, emb),
                label2.as_deref().unwrap_or("-")
            )
        } else {
            source
        };
        checked
            .fit(&set, &source, &reclag::NoProgress)
            .map(|m| m.with_label_column(label2))
            .map_err(|e| e.to_string())
    });
    Ok(Model::new(model.map_err(err)?, None))
}

fn embedding_name(schema: &Schema, i: usize) -> &str {
    schema.field(i).name()
}

fn reclag_udfs_column(schema: &Schema, name: &str) -> PyResult<usize> {
    schema.index_of(name).map_err(|_| {
        let have: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        err(format!(
            "column '{name}' not found; the table has: {}",
            have.join(", ")
        ))
    })
}

fn route_from(route: Option<&str>) -> PyResult<Route> {
    match route {
        None | Some("best") => Ok(Route::Best),
        Some("union") => Ok(Route::Union),
        Some(other) => Err(err(format!("route '{other}': expected 'best' or 'union'"))),
    }
}

/// Each row's group index in the model (`None`: routed by `route`).
type Groups = Vec<Option<u32>>;

/// One batch's embedding rows scored, routed by the group column `group` (else by
/// `route`): the scores and the resolved groups, which the p-values need.
fn score_rows(
    model: &CoreModel,
    batch: &RecordBatch,
    emb: usize,
    group: Option<usize>,
    route: Route,
    work: Work,
) -> Result<(ScoreOutput, Option<Groups>), String> {
    let schema = batch.schema();
    let rows = reclag::arrow::embedding_rows(
        batch.column(emb).as_ref(),
        schema.field(emb).name(),
        Some(model.dim()),
    )
    .map_err(|e| e.to_string())?;
    let groups = group
        .map(|g| {
            reclag::arrow::resolve_groups(model, batch.column(g).as_ref(), schema.field(g).name())
        })
        .transpose()
        .map_err(|e| e.to_string())?;
    let mut out = ScoreOutput::default();
    model
        .score_routed(&rows, groups.as_deref(), route, work, &mut out)
        .map_err(|e| e.to_string())?;
    Ok((out, groups))
}

/// The CLI's output columns for one batch: the kept columns, then the outputs.
fn score_batch(
    model: &CoreModel,
    batch: &RecordBatch,
    emb: usize,
    group: Option<usize>,
    route: Route,
    out_schema: &Arc<Schema>,
    keep: &[usize],
) -> Result<RecordBatch, String> {
    let (out, groups) = score_rows(model, batch, emb, group, route, Work::WithDynamics)?;
    let p = match model.calibration() {
        None => None,
        Some(_) => {
            let mut p = Vec::new();
            model
                .p_values_into(&out, groups.as_deref(), route, &mut p)
                .map_err(|e| e.to_string())?;
            Some(p)
        }
    };
    let a = reclag::arrow::output_arrays(out);
    let mut cols: Vec<ArrayRef> = keep.iter().map(|&i| batch.column(i).clone()).collect();
    cols.extend([a.score, a.energy, a.ood_probability, a.is_ood, a.attractor]);
    cols.extend(p.map(reclag::arrow::p_value_array));
    RecordBatch::try_new(out_schema.clone(), cols).map_err(|e| e.to_string())
}

#[pymethods]
impl Model {
    /// What `reclag inspect` prints.
    fn __repr__(&self) -> String {
        reclag::inspect::render(&self.inner, &self.sha256)
    }

    /// SHA-256 of the model's content: what SQL plans and Polars expressions pin.
    #[getter]
    fn sha256(&self) -> &str {
        &self.sha256
    }

    /// The file the model was loaded from or last saved to (absolute), if any.
    #[getter]
    fn path(&self) -> Option<String> {
        self.path.lock().expect("path").clone()
    }

    #[getter]
    fn dim(&self) -> usize {
        self.inner.dim()
    }

    #[getter]
    fn recipe(&self) -> &'static str {
        self.inner.recipe().as_str()
    }

    /// Group labels, in the model's order.
    #[getter]
    fn groups(&self) -> Vec<String> {
        self.inner
            .groups()
            .iter()
            .map(|g| {
                g.key
                    .as_ref()
                    .map_or_else(|| "-".to_string(), |k| k.to_string())
            })
            .collect()
    }

    /// Writes the model file (whole or not at all), as `reclag train` does, to a local
    /// path or an object-store URL.
    fn save(&self, py: Python<'_>, path: &str) -> PyResult<()> {
        let m = self.inner.clone();
        let at = py
            .detach(move || {
                let at = crate::store::locate(path)?;
                at.save(&m)?;
                Ok::<_, String>(at.display())
            })
            .map_err(err)?;
        *self.path.lock().expect("path") = Some(at);
        Ok(())
    }

    /// Scores an Arrow stream: the kept input columns, then the CLI's output columns.
    #[pyo3(signature = (data, embedding="embedding", group=None, route=None, keep_columns=None))]
    fn score_stream(
        &self,
        py: Python<'_>,
        data: &Bound<'_, PyAny>,
        embedding: &str,
        group: Option<&str>,
        route: Option<&str>,
        keep_columns: Option<Vec<String>>,
    ) -> PyResult<ArrowStream> {
        let route = route_from(route)?;
        if group.is_some() && route == Route::Union {
            return Err(err(
                "route='union' picks the group of rows without one; it cannot be combined with group=",
            ));
        }
        let (schema, batches) = read_all(data)?;
        let emb = reclag_udfs_column(&schema, embedding)?;
        reclag::arrow::check_embedding_type(
            schema.field(emb).data_type(),
            embedding,
            Some(self.inner.dim()),
        )
        .map_err(err)?;
        let g = group.map(|g| reclag_udfs_column(&schema, g)).transpose()?;
        let keep: Vec<usize> = match keep_columns {
            None => (0..schema.fields().len()).collect(),
            Some(cols) => cols
                .iter()
                .map(|c| reclag_udfs_column(&schema, c))
                .collect::<PyResult<_>>()?,
        };
        for &i in &keep {
            let n = schema.field(i).name();
            if reclag::arrow::OUTPUT_COLUMNS.contains(&n.as_str()) {
                return Err(err(format!(
                    "input column '{n}' would be overwritten by the output; leave it out with keep_columns="
                )));
            }
        }
        let mut fields: Vec<Field> = keep.iter().map(|&i| schema.field(i).clone()).collect();
        fields.extend(reclag::arrow::output_fields(&self.inner));
        let out_schema = Arc::new(Schema::new(fields));
        let model = self.inner.clone();
        let out_schema2 = out_schema.clone();
        let scored = py
            .detach(move || {
                batches
                    .iter()
                    .map(|b| score_batch(&model, b, emb, g, route, &out_schema2, &keep))
                    .collect::<Result<Vec<_>, String>>()
            })
            .map_err(err)?;
        Ok(ArrowStream::new(out_schema, scored))
    }

    /// The scores of an Arrow stream (NaN for null rows), for evaluation.
    #[pyo3(signature = (data, embedding="embedding", group=None, route=None))]
    fn scores(
        &self,
        py: Python<'_>,
        data: &Bound<'_, PyAny>,
        embedding: &str,
        group: Option<&str>,
        route: Option<&str>,
    ) -> PyResult<Vec<f64>> {
        let route = route_from(route)?;
        let (schema, batches) = read_all(data)?;
        let emb = reclag_udfs_column(&schema, embedding)?;
        let g = group.map(|g| reclag_udfs_column(&schema, g)).transpose()?;
        let model = self.inner.clone();
        py.detach(move || -> Result<Vec<f64>, String> {
            let mut v = Vec::new();
            for b in &batches {
                // Evaluation needs the scores only, as `reclag eval` computes them.
                let (out, _) = score_rows(&model, b, emb, g, route, Work::EnergyOnly)?;
                v.extend(
                    out.score
                        .iter()
                        .zip(&out.valid)
                        .map(|(s, ok)| if *ok { *s } else { f64::NAN }),
                );
            }
            Ok(v)
        })
        .map_err(err)
    }
}

/// AUROC, FPR at 95 % TPR and the AUPRs of ID scores against OOD scores (NaN dropped),
/// as `reclag eval` reports them.
#[pyfunction]
pub fn metrics(id: Vec<f64>, ood: Vec<f64>) -> HashMap<&'static str, f64> {
    let r = reclag::metrics::report(&id, &ood);
    HashMap::from([
        ("auroc", r.auroc),
        ("fpr95", r.fpr95),
        ("aupr_in", r.aupr_in),
        ("aupr_out", r.aupr_out),
        ("n_id", r.n_id as f64),
        ("n_ood", r.n_ood as f64),
    ])
}
