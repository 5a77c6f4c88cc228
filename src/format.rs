//! The model file: one Parquet file any engine can read.
//!
//! Version 3 (written for models with calibration scores): version 2's rows, plus
//! §11's calibration scores as `scores` (`List<Float64>`, ascending) on rows with a
//! null `vector`: `calibration` (one per group, `group` set: the margins of its own
//! calibration rows), `calibration_best` and `calibration_union` (all calibration
//! rows). Metadata adds `reclag.calibration_ood_rate` and, when known,
//! `reclag.label_column` and `reclag.recalibrated_from` (the source model's checksum).
//!
//! Version 2 (written for models without calibration scores, read): one row per stored vector, `part` saying what it is:
//! `memory` rows (`group`, `memory` index, `vector` as `FixedSizeList<Float64, d>`,
//! with each group's `tau`, row counts and calibration source repeated on its rows),
//! and for §10's recipe one `mean` row (`μ`) and `d` `whitening` rows (`W`, row
//! `memory`). Key-value metadata `reclag.*` carries β and how it was chosen, the
//! recipe and preprocessing, `τ*`, the dynamics settings, provenance and a SHA-256
//! content checksum that loading verifies.
//!
//! Version 1 (read): memory rows only, vectors as `Float32`, no `part` column.

use std::path::Path;
use std::sync::Arc;

use arrow_array::builder::{FixedSizeListBuilder, Float64Builder, ListBuilder};
use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, Float64Type, Int32Type, Int64Type};
use arrow_array::{
    Array, ArrayRef, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray,
};
use arrow_schema::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use sha2::{Digest, Sha256};

use crate::conformal::{Against, Calibration, CalibrationSets};
use crate::error::{Error, Result};
use crate::model::{
    BetaSearch, CalibratedOn, Group, GroupKey, LabelKind, Model, ModelParts, Normalize, Provenance,
    Recipe, Whitening,
};

/// The newest version this build writes (models without calibration scores, loaded
/// from older files, are written as version 2, byte for byte as before).
pub const FORMAT_VERSION: &str = "3";
/// Versions this build reads.
const READS: [&str; 3] = ["1", "2", "3"];
const K_LABEL_COLUMN: &str = "reclag.label_column";
const K_RECALIBRATED_FROM: &str = "reclag.recalibrated_from";
const K_CALIBRATION_RATE: &str = "reclag.calibration_ood_rate";

/// The version `model` is written as: 3 when it has calibration scores.
pub fn version_of(model: &Model) -> &'static str {
    if model.calibration().is_some() {
        FORMAT_VERSION
    } else {
        "2"
    }
}
const K_VERSION: &str = "reclag.format_version";
const K_CHECKSUM: &str = "reclag.checksum";

fn meta_pairs(model: &Model, version: &str) -> Vec<(&'static str, String)> {
    let mut v = vec![
        (K_VERSION, version.to_string()),
        ("reclag.beta", model.beta().to_string()),
        ("reclag.normalize", model.normalize().as_str().to_string()),
        ("reclag.dim", model.dim().to_string()),
        ("reclag.tau_star", model.tau_star().to_string()),
        ("reclag.max_iter", model.max_iter().to_string()),
        ("reclag.tol", model.tol().to_string()),
        ("reclag.label_type", model.label_kind().as_str().to_string()),
        ("reclag.groups", model.groups().len().to_string()),
        ("reclag.training", model.provenance().training.clone()),
        ("reclag.source", model.provenance().source.clone()),
    ];
    if version != "1" {
        v.push(("reclag.recipe", model.recipe().as_str().to_string()));
        if let Some(b) = model.beta_search() {
            let json = serde_json::json!({ "grid": b.grid, "mean_auroc": b.mean_auroc });
            v.push((K_BETA_SEARCH, json.to_string()));
        }
    }
    if version == "3" {
        let p = model.provenance();
        if let Some(c) = &p.label_column {
            v.push((K_LABEL_COLUMN, c.clone()));
        }
        if let Some(c) = &p.recalibrated_from {
            v.push((K_RECALIBRATED_FROM, c.clone()));
        }
        if let Some(c) = model.calibration() {
            v.push((K_CALIBRATION_RATE, c.ood_rate.to_string()));
        }
    }
    v
}

const K_BETA_SEARCH: &str = "reclag.beta_search";

/// SHA-256 over the canonical content: every metadata value and every stored number
/// (memories as the f32 the file holds). Hex-encoded.
pub fn checksum(model: &Model) -> String {
    checksum_as(model, version_of(model))
}

/// [`checksum`] as a file of `version` records it: version 1 files hash their
/// memories as f32 and have no whitening.
fn checksum_as(model: &Model, version: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"reclag-model\0");
    for (k, v) in meta_pairs(model, version) {
        h.update(k.as_bytes());
        h.update([0]);
        h.update(v.as_bytes());
        h.update([0]);
    }
    for g in model.groups() {
        h.update(format!("{:?}", g.key).as_bytes());
        h.update([0]);
        h.update((g.m as u64).to_le_bytes());
        for v in &g.xi {
            if version == "1" {
                h.update((*v as f32).to_le_bytes());
            } else {
                h.update(v.to_le_bytes());
            }
        }
        h.update(g.tau.to_bits().to_le_bytes());
        h.update(g.n_train.to_le_bytes());
        h.update(g.n_calibration.to_le_bytes());
        h.update(g.calibrated_on.as_str().as_bytes());
    }
    if let Some(w) = model.whitening() {
        h.update(b"whitening\0");
        for v in w.mean().iter().chain(w.matrix()) {
            h.update(v.to_le_bytes());
        }
    }
    if let (Some(c), "3") = (model.calibration(), version) {
        h.update(b"calibration\0");
        for set in c.own.iter().chain([&c.best, &c.union]) {
            h.update((set.len() as u64).to_le_bytes());
            for v in set.scores() {
                h.update(v.to_le_bytes());
            }
        }
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

fn schema(model: &Model, version: &str) -> Schema {
    let group_type = match model.label_kind() {
        LabelKind::Str => DataType::Utf8,
        _ => DataType::Int64,
    };
    let v3 = version == "3";
    let mut fields = vec![
        Field::new("part", DataType::Utf8, false),
        Field::new("group", group_type, true),
        Field::new("memory", DataType::Int32, false),
        Field::new(
            "vector",
            DataType::FixedSizeList(
                Arc::new(Field::new("item", DataType::Float64, true)),
                model.dim() as i32,
            ),
            v3,
        ),
        Field::new("tau", DataType::Float64, true),
        Field::new("n_train", DataType::Int64, true),
        Field::new("n_calibration", DataType::Int64, true),
        Field::new("calibrated_on", DataType::Utf8, true),
    ];
    if v3 {
        fields.push(Field::new_list(
            "scores",
            Field::new_list_field(DataType::Float64, false),
            true,
        ));
    }
    Schema::new(fields)
}

/// One stored row: a group's memory, part of the preprocessing, or a set of
/// calibration scores.
enum Row<'a> {
    Memory(&'a Group, usize),
    Mean,
    Whitening(usize),
    Calibration(Against),
}

/// Serialises a model to Parquet bytes.
pub fn to_bytes(model: &Model) -> Result<Vec<u8>> {
    let version = version_of(model);
    let schema = Arc::new(schema(model, version));
    let d = model.dim();
    let mut rows: Vec<Row<'_>> = model
        .groups()
        .iter()
        .flat_map(|g| (0..g.m).map(move |i| Row::Memory(g, i)))
        .collect();
    if model.whitening().is_some() {
        rows.push(Row::Mean);
        rows.extend((0..d).map(Row::Whitening));
    }
    if model.calibration().is_some() {
        let k = model.groups().len() as u32;
        rows.extend((0..k).map(|g| Row::Calibration(Against::Group(g))));
        rows.push(Row::Calibration(Against::Best));
        rows.push(Row::Calibration(Against::Union));
    }
    fn key_of<'m>(model: &'m Model, r: &Row<'m>) -> Option<&'m GroupKey> {
        match r {
            Row::Memory(g, _) => g.key.as_ref(),
            Row::Calibration(Against::Group(g)) => model.groups()[*g as usize].key.as_ref(),
            _ => None,
        }
    }
    fn group_of<'a>(r: &Row<'a>) -> Option<&'a Group> {
        match r {
            Row::Memory(g, _) => Some(*g),
            _ => None,
        }
    }
    let group: ArrayRef = match model.label_kind() {
        LabelKind::Str => Arc::new(StringArray::from_iter(rows.iter().map(|r| {
            match key_of(model, r) {
                Some(GroupKey::Str(s)) => Some(s.as_str()),
                _ => None,
            }
        }))),
        _ => Arc::new(Int64Array::from_iter(rows.iter().map(|r| {
            match key_of(model, r) {
                Some(GroupKey::Int(v)) => Some(*v),
                _ => None,
            }
        }))),
    };
    let mut vb = FixedSizeListBuilder::with_capacity(
        Float64Builder::with_capacity(rows.len() * d),
        d as i32,
        rows.len(),
    );
    let mut scores = ListBuilder::new(Float64Builder::new())
        .with_field(Arc::new(Field::new_list_field(DataType::Float64, false)));
    for r in &rows {
        let v = match (r, model.whitening()) {
            (Row::Memory(g, i), _) => &g.xi[i * d..(i + 1) * d],
            (Row::Mean, Some(w)) => w.mean(),
            (Row::Whitening(j), Some(w)) => &w.matrix()[j * d..(j + 1) * d],
            (Row::Calibration(_), _) => &[],
            _ => unreachable!("preprocessing rows exist only with whitening"),
        };
        match (r, model.calibration()) {
            (Row::Calibration(a), Some(c)) => {
                vb.values().append_nulls(d);
                vb.append(false);
                scores.values().append_slice(c.against(*a).scores());
                scores.append(true);
            }
            _ => {
                vb.values().append_slice(v);
                vb.append(true);
                scores.append(false);
            }
        }
    }
    let cols: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(rows.iter().map(
            |r| match r {
                Row::Memory(..) => "memory",
                Row::Mean => "mean",
                Row::Whitening(_) => "whitening",
                Row::Calibration(Against::Group(_)) => "calibration",
                Row::Calibration(Against::Best) => "calibration_best",
                Row::Calibration(Against::Union) => "calibration_union",
            },
        ))),
        group,
        Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| match r {
            Row::Memory(_, i) | Row::Whitening(i) => *i as i32,
            Row::Mean | Row::Calibration(_) => 0,
        }))),
        Arc::new(vb.finish()) as ArrayRef,
        Arc::new(Float64Array::from_iter(
            rows.iter().map(|r| group_of(r).map(|g| g.tau)),
        )),
        Arc::new(Int64Array::from_iter(
            rows.iter().map(|r| group_of(r).map(|g| g.n_train as i64)),
        )),
        Arc::new(Int64Array::from_iter(
            rows.iter()
                .map(|r| group_of(r).map(|g| g.n_calibration as i64)),
        )),
        Arc::new(StringArray::from_iter(
            rows.iter()
                .map(|r| group_of(r).map(|g| g.calibrated_on.as_str())),
        )),
    ];
    let arrow_err = |source| Error::Arrow {
        context: "building the model table".into(),
        source,
    };
    let mut cols = cols;
    if version == "3" {
        cols.push(Arc::new(scores.finish()));
    }
    let batch = RecordBatch::try_new(schema.clone(), cols).map_err(arrow_err)?;
    let mut kv: Vec<KeyValue> = meta_pairs(model, version)
        .into_iter()
        .map(|(k, v)| KeyValue::new(k.to_string(), v))
        .collect();
    kv.push(KeyValue::new(K_CHECKSUM.to_string(), checksum(model)));
    let props = WriterProperties::builder()
        .set_key_value_metadata(Some(kv))
        .build();
    let pq_err = |source| Error::Parquet {
        context: "writing the model file".into(),
        source,
    };
    let mut buf = Vec::new();
    let mut w = ArrowWriter::try_new(&mut buf, schema, Some(props)).map_err(pq_err)?;
    w.write(&batch).map_err(pq_err)?;
    w.close().map_err(pq_err)?;
    Ok(buf)
}

/// Writes a model atomically: a temporary file in the same directory, fsync, rename.
pub fn save(model: &Model, path: &Path) -> Result<()> {
    let bytes = to_bytes(model)?;
    write_atomic(path, &bytes)
}

/// Writes `bytes` to `path` through a temporary sibling and a rename (see
/// [`crate::atomic`]), so readers never see a half-written file and a crash leaves the
/// old file intact.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let (t, mut f) = crate::atomic::Temp::create(path)?;
    f.write_all(bytes).map_err(|source| Error::Io {
        context: format!("writing {}", t.tmp().display()),
        source,
    })?;
    t.commit(&f)
}

/// Loads a model file from disk, verifying version and checksum.
pub fn load(path: &Path) -> Result<Model> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        context: format!("reading model file {}", path.display()),
        source,
    })?;
    from_bytes(bytes.into(), path)
}

/// Runs a Parquet decode of untrusted bytes, turning a panic inside the decoder (some
/// malformed metadata reaches `panic!` in the parquet crate) into `Err(on_panic(msg))`.
pub fn guard_decode<T, E>(
    on_panic: impl FnOnce(String) -> E,
    f: impl FnOnce() -> Result<T, E>,
) -> Result<T, E> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => {
            let msg = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown".into());
            Err(on_panic(msg))
        }
    }
}

/// Parses model bytes; `origin` names the file in errors.
pub fn from_bytes(bytes: bytes::Bytes, origin: &Path) -> Result<Model> {
    guard_decode(
        |msg| Error::ModelFile {
            path: origin.to_path_buf(),
            message: format!("not a readable Parquet file (corrupt metadata: {msg})"),
        },
        || parse(bytes, origin),
    )
}

fn parse(bytes: bytes::Bytes, origin: &Path) -> Result<Model> {
    let err = |message: String| Error::ModelFile {
        path: origin.to_path_buf(),
        message,
    };
    let builder = ParquetRecordBatchReaderBuilder::try_new(bytes).map_err(|e| {
        err(format!(
            "not a readable Parquet file (truncated or corrupt?): {e}"
        ))
    })?;
    let kv: Vec<(String, String)> = builder
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .map(|v| {
            v.iter()
                .filter_map(|k| Some((k.key.clone(), k.value.clone()?)))
                .collect()
        })
        .unwrap_or_default();
    let get = |k: &str| kv.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
    let Some(version) = get(K_VERSION) else {
        return Err(err(format!(
            "a Parquet file but not a reclag model (no '{K_VERSION}' metadata); create one with `reclag train`"
        )));
    };
    if !READS.contains(&version) {
        return Err(err(format!(
            "model format version {version} is not supported by this build (it reads versions {}); upgrade reclag",
            READS.join(", ")
        )));
    }
    let version = version.to_string();
    let req = |k: &str| get(k).ok_or_else(|| err(format!("missing metadata key '{k}'")));
    let num = |k: &str| -> Result<f64> {
        let v = req(k)?;
        v.parse::<f64>()
            .map_err(|_| err(format!("metadata '{k}' = '{v}' is not a number")))
    };
    let int = |k: &str| -> Result<usize> {
        let v = req(k)?;
        v.parse::<usize>().map_err(|_| {
            err(format!(
                "metadata '{k}' = '{v}' is not a non-negative integer"
            ))
        })
    };
    let d = int("reclag.dim")?;
    let beta = num("reclag.beta")?;
    let normalize = Normalize::parse(req("reclag.normalize")?).map_err(|e| err(e.to_string()))?;
    let tau_star = num("reclag.tau_star")?;
    let max_iter = int("reclag.max_iter")?;
    let tol = num("reclag.tol")?;
    let label_type = req("reclag.label_type")?.to_string();
    let n_groups = int("reclag.groups")?;
    let stored_sum = req(K_CHECKSUM)?.to_string();
    let provenance = Provenance {
        training: get("reclag.training").unwrap_or_default().to_string(),
        source: get("reclag.source").unwrap_or_default().to_string(),
        label_column: get(K_LABEL_COLUMN).map(str::to_string),
        recalibrated_from: get(K_RECALIBRATED_FROM).map(str::to_string),
    };
    let recipe = match get("reclag.recipe") {
        Some(r) => Recipe::parse(r).map_err(|e| err(e.to_string()))?,
        None => Recipe::Paper,
    };
    let beta_search = match get(K_BETA_SEARCH) {
        None => None,
        Some(j) => {
            let bad = || {
                err(format!(
                    "metadata '{K_BETA_SEARCH}' = '{j}' is not a beta table"
                ))
            };
            let v: serde_json::Value = serde_json::from_str(j).map_err(|_| bad())?;
            let floats = |k: &str| -> Result<Vec<f64>> {
                v.get(k)
                    .and_then(|a| a.as_array())
                    .ok_or_else(bad)?
                    .iter()
                    .map(|x| x.as_f64().ok_or_else(bad))
                    .collect()
            };
            Some(BetaSearch {
                grid: floats("grid")?,
                mean_auroc: floats("mean_auroc")?,
            })
        }
    };
    let mut mean: Option<Vec<f64>> = None;
    let mut whiten: Vec<f64> = Vec::new();
    // Calibration rows in file order: own sets (with their group keys), best, union.
    let mut own: Vec<(Option<GroupKey>, Vec<f64>)> = Vec::new();
    let (mut best, mut union): (Option<Vec<f64>>, Option<Vec<f64>>) = (None, None);

    let reader = builder
        .build()
        .map_err(|e| err(format!("cannot read rows: {e}")))?;
    let mut groups: Vec<Group> = Vec::new();
    for batch in reader {
        let batch =
            batch.map_err(|e| err(format!("cannot read rows (truncated or corrupt?): {e}")))?;
        let col = |name: &str| {
            batch
                .column_by_name(name)
                .ok_or_else(|| err(format!("missing column '{name}'")))
        };
        let (group, memory, vector) = (col("group")?, col("memory")?, col("vector")?);
        let (tau, n_train, n_cal, cal_on) = (
            col("tau")?,
            col("n_train")?,
            col("n_calibration")?,
            col("calibrated_on")?,
        );
        let bad = |name: &str, a: &ArrayRef| {
            err(format!(
                "column '{name}' has unexpected type {}",
                a.data_type()
            ))
        };
        let part = match batch.column_by_name("part") {
            Some(p) => Some(p.as_string_opt::<i32>().ok_or_else(|| bad("part", p))?),
            None if version == "1" => None,
            None => return Err(err("missing column 'part'".into())),
        };
        let memory = memory
            .as_primitive_opt::<Int32Type>()
            .ok_or_else(|| bad("memory", memory))?;
        let vector_l = vector
            .as_fixed_size_list_opt()
            .ok_or_else(|| bad("vector", vector))?;
        if vector_l.value_length() as usize != d {
            return Err(err(format!(
                "column 'vector' has size {} but metadata says dimension {d}",
                vector_l.value_length()
            )));
        }
        // Version 1 stored f32; version 2 stores f64 (the whitening must be exact).
        let values: Vec<f64> = match (version.as_str(), vector_l.values().data_type()) {
            ("1", DataType::Float32) => vector_l
                .values()
                .as_primitive::<Float32Type>()
                .values()
                .iter()
                .map(|&v| f64::from(v))
                .collect(),
            (v, DataType::Float64) if v != "1" => vector_l
                .values()
                .as_primitive::<Float64Type>()
                .values()
                .to_vec(),
            _ => return Err(bad("vector", vector)),
        };
        let tau = tau
            .as_primitive_opt::<Float64Type>()
            .ok_or_else(|| bad("tau", tau))?;
        let n_train = n_train
            .as_primitive_opt::<Int64Type>()
            .ok_or_else(|| bad("n_train", n_train))?;
        let n_cal = n_cal
            .as_primitive_opt::<Int64Type>()
            .ok_or_else(|| bad("n_calibration", n_cal))?;
        let cal_on = cal_on
            .as_string_opt::<i32>()
            .ok_or_else(|| bad("calibrated_on", cal_on))?;
        let scores = match batch.column_by_name("scores") {
            Some(c) => Some(c.as_list_opt::<i32>().ok_or_else(|| bad("scores", c))?),
            None => None,
        };
        let key_at = |r: usize| -> Result<Option<GroupKey>> {
            Ok(match label_type.as_str() {
                "none" => None,
                "int64" => Some(GroupKey::Int(
                    group
                        .as_primitive_opt::<Int64Type>()
                        .ok_or_else(|| bad("group", group))?
                        .value(r),
                )),
                "utf8" => Some(GroupKey::Str(
                    group
                        .as_string_opt::<i32>()
                        .ok_or_else(|| bad("group", group))?
                        .value(r)
                        .to_string(),
                )),
                other => return Err(err(format!("unknown label type '{other}'"))),
            })
        };
        for r in 0..batch.num_rows() {
            let s = r * d;
            let v = &values[s..s + d];
            let p = part.map_or("memory", |p| p.value(r));
            if p.starts_with("calibration") {
                let list = scores
                    .filter(|l| l.is_valid(r))
                    .ok_or_else(|| err(format!("calibration row {r} has no scores")))?;
                let vals = list.value(r);
                let vals = vals
                    .as_primitive_opt::<Float64Type>()
                    .ok_or_else(|| bad("scores", list.values()))?
                    .values()
                    .to_vec();
                match p {
                    "calibration" => own.push((key_at(r)?, vals)),
                    "calibration_best" => best = Some(vals),
                    "calibration_union" => union = Some(vals),
                    o => return Err(err(format!("unknown part '{o}' at row {r}"))),
                }
                continue;
            }
            if vector_l.is_null(r) {
                return Err(err(format!("{p} row {r} has a null vector")));
            }
            match p {
                "memory" => {}
                "mean" => {
                    mean = Some(v.to_vec());
                    continue;
                }
                "whitening" => {
                    if memory.value(r) as usize != whiten.len() / d {
                        return Err(err(format!(
                            "whitening row {} out of order at row {r}",
                            memory.value(r)
                        )));
                    }
                    whiten.extend_from_slice(v);
                    continue;
                }
                o => return Err(err(format!("unknown part '{o}' at row {r}"))),
            }
            if tau.is_null(r) || n_train.is_null(r) || n_cal.is_null(r) || cal_on.is_null(r) {
                return Err(err(format!("memory row {r} has a null tau or row count")));
            }
            let key = key_at(r)?;
            let new_group = groups.last().is_none_or(|g| g.key != key);
            if new_group {
                groups.push(Group {
                    key,
                    xi: Vec::new(),
                    m: 0,
                    tau: tau.value(r),
                    n_train: n_train.value(r) as u64,
                    n_calibration: n_cal.value(r) as u64,
                    calibrated_on: match cal_on.value(r) {
                        "holdout" => CalibratedOn::Holdout,
                        "train" => CalibratedOn::Train,
                        o => return Err(err(format!("unknown calibrated_on '{o}'"))),
                    },
                });
            }
            let g = groups.last_mut().expect("pushed above");
            if memory.value(r) as usize != g.m {
                return Err(err(format!(
                    "memory index {} out of order at row {r}",
                    memory.value(r)
                )));
            }
            g.xi.extend_from_slice(v);
            g.m += 1;
        }
    }
    let whitening = match (recipe, mean) {
        (Recipe::Paper, None) if whiten.is_empty() => None,
        (Recipe::Whitened, Some(mu)) if whiten.len() == d * d => {
            Some(Whitening::new(d, mu, whiten).map_err(|e| err(e.to_string()))?)
        }
        (r, mu) => {
            return Err(err(format!(
                "recipe '{}' with {} mean row(s) and {} of {d} whitening rows",
                r.as_str(),
                usize::from(mu.is_some()),
                whiten.len() / d
            )));
        }
    };
    if groups.len() != n_groups {
        return Err(err(format!(
            "metadata says {n_groups} groups, file has {}",
            groups.len()
        )));
    }
    let mut model = Model::new(ModelParts {
        d,
        beta,
        normalize,
        max_iter,
        tol,
        groups,
        tau_star,
        provenance,
        whitening,
        beta_search,
    })
    .map_err(|e| err(e.to_string()))?;
    if version == "3" {
        let sorted = |what: &str, v: Vec<f64>| {
            Calibration::from_sorted(v).ok_or_else(|| {
                err(format!(
                    "{what} calibration scores are not finite and ascending"
                ))
            })
        };
        let (Some(best), Some(union)) = (best, union) else {
            return Err(err(
                "a version 3 model needs calibration_best and calibration_union rows".into(),
            ));
        };
        if own.len() != model.groups().len()
            || own
                .iter()
                .zip(model.groups())
                .any(|((k, _), g)| *k != g.key)
        {
            return Err(err(format!(
                "{} groups but {} calibration rows, or in another order",
                model.groups().len(),
                own.len()
            )));
        }
        let rate = num(K_CALIBRATION_RATE)?;
        let sets = CalibrationSets {
            ood_rate: rate,
            own: own
                .into_iter()
                .map(|(k, v)| sorted(&format!("group {k:?}"), v))
                .collect::<Result<_>>()?,
            best: sorted("best-route", best)?,
            union: sorted("union", union)?,
        };
        model = model
            .with_calibration(sets)
            .map_err(|e| err(e.to_string()))?;
    }
    let actual = checksum_as(&model, &version);
    if actual != stored_sum {
        return Err(err(format!(
            "checksum mismatch (file says {stored_sum}, content hashes to {actual}): the file is corrupt or was edited; retrain or restore it"
        )));
    }
    Ok(model)
}
