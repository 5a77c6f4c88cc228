//! Arrow adapters: zero-copy [`Rows`] over list columns, label and logits columns.
//! Engine crates (DataFusion, Polars via Arrow, Parquet readers) all funnel through
//! here so type rules and error messages are identical everywhere.

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Float32Type, Float64Type, Int8Type, Int16Type, Int32Type, Int64Type, UInt8Type, UInt16Type,
    UInt32Type, UInt64Type,
};
use std::sync::Arc;

use arrow_array::{
    Array, ArrayRef, ArrowPrimitiveType, BooleanArray, Float64Array, Int32Array, OffsetSizeTrait,
    PrimitiveArray,
};
use arrow_buffer::NullBuffer;
use arrow_schema::DataType;

use crate::error::{Error, Result};
use crate::explain::Explanation;
use crate::kernel::argmax;
use crate::model::{GroupKey, LabelKind, Model};
use crate::rows::{Rows, Starts, Values};
use crate::score::ScoreOutput;

/// What an embedding column may be.
pub const EMBEDDING_TYPES: &str = "FixedSizeList, List or LargeList of Float32 or Float64";

/// Checks an embedding column's type without reading any row. Returns the fixed
/// dimension when the type carries one (`FixedSizeList`), so a mismatch is reported
/// before any data is read.
pub fn check_embedding_type(
    dt: &DataType,
    column: &str,
    expected: Option<usize>,
) -> Result<Option<usize>> {
    let (child, fixed) = match dt {
        DataType::FixedSizeList(f, n) => (f.data_type(), Some(*n as usize)),
        DataType::List(f) | DataType::LargeList(f) => (f.data_type(), None),
        other => return Err(type_err(column, EMBEDDING_TYPES, other)),
    };
    if !matches!(child, DataType::Float32 | DataType::Float64) {
        return Err(type_err(column, EMBEDDING_TYPES, dt));
    }
    if let (Some(e), Some(f)) = (expected, fixed)
        && e != f
    {
        return Err(Error::Dimension {
            column: column.into(),
            expected: e,
            found: f,
            row: None,
        });
    }
    Ok(fixed)
}

fn type_err(column: &str, expected: &str, found: &DataType) -> Error {
    Error::ColumnType {
        column: column.into(),
        expected: expected.into(),
        found: found.to_string(),
    }
}

/// A zero-copy view of an embedding column. `expected` is the model's dimension; with
/// `None` the dimension is taken from the type or from the first non-null row.
/// A `List` row of the wrong length is an error naming the row.
pub fn embedding_rows<'a>(
    array: &'a dyn Array,
    column: &str,
    expected: Option<usize>,
) -> Result<Rows<'a>> {
    let fixed = check_embedding_type(array.data_type(), column, expected)?;
    let len = array.len();
    match array.data_type() {
        DataType::FixedSizeList(..) => {
            let a = array.as_fixed_size_list();
            let dim = fixed.expect("fixed size list has a size");
            let child = a.values();
            let validity = merge_child_nulls(a.nulls(), child.as_ref(), |i| i * dim, dim, len);
            Ok(Rows::from_parts(
                values_of(child.as_ref()),
                Starts::Fixed,
                dim,
                len,
                validity,
            ))
        }
        DataType::List(_) => {
            let a = array.as_list::<i32>();
            list_rows(
                a.value_offsets(),
                a.values().as_ref(),
                a.nulls(),
                column,
                expected,
                len,
                Starts::I32,
            )
        }
        DataType::LargeList(_) => {
            let a = array.as_list::<i64>();
            list_rows(
                a.value_offsets(),
                a.values().as_ref(),
                a.nulls(),
                column,
                expected,
                len,
                Starts::I64,
            )
        }
        _ => unreachable!("checked by check_embedding_type"),
    }
}

fn list_rows<'a, O: OffsetSizeTrait>(
    offsets: &'a [O],
    child: &'a dyn Array,
    nulls: Option<&NullBuffer>,
    column: &str,
    expected: Option<usize>,
    len: usize,
    starts: impl FnOnce(&'a [O]) -> Starts<'a>,
) -> Result<Rows<'a>> {
    let mut dim = expected;
    for i in 0..len {
        if nulls.is_some_and(|n| n.is_null(i)) {
            continue;
        }
        let l = (offsets[i + 1] - offsets[i]).as_usize();
        match dim {
            None => dim = Some(l),
            Some(d) if d != l => {
                return Err(Error::Dimension {
                    column: column.into(),
                    expected: d,
                    found: l,
                    row: Some(i),
                });
            }
            _ => {}
        }
    }
    let dim = dim.unwrap_or(0);
    let validity = if dim == 0 {
        // Every row is null (or empty): nothing to read.
        Some(NullBuffer::new_null(len))
    } else {
        merge_child_nulls(nulls, child, |i| offsets[i].as_usize(), dim, len)
    };
    Ok(Rows::from_parts(
        values_of(child),
        starts(offsets),
        dim,
        len,
        validity,
    ))
}

fn values_of(child: &dyn Array) -> Values<'_> {
    match child.data_type() {
        DataType::Float32 => Values::F32(child.as_primitive::<Float32Type>().values()),
        DataType::Float64 => Values::F64(child.as_primitive::<Float64Type>().values()),
        _ => unreachable!("checked by check_embedding_type"),
    }
}

/// A null component makes its whole row null. The fast path (no child nulls) just
/// shares the list's own null buffer.
fn merge_child_nulls(
    list_nulls: Option<&NullBuffer>,
    child: &dyn Array,
    start: impl Fn(usize) -> usize,
    dim: usize,
    len: usize,
) -> Option<NullBuffer> {
    let Some(cn) = child.nulls().filter(|n| n.null_count() > 0) else {
        return list_nulls.cloned();
    };
    let valid: Vec<bool> = (0..len)
        .map(|i| {
            list_nulls.is_none_or(|n| n.is_valid(i)) && {
                let s = start(i);
                (s..s + dim).all(|j| cn.is_valid(j))
            }
        })
        .collect();
    Some(NullBuffer::from(valid))
}

/// Label column → group keys (null stays `None`). Integers and strings (plain, large,
/// view or dictionary-encoded) are accepted.
pub fn group_keys(array: &dyn Array, column: &str) -> Result<Vec<Option<GroupKey>>> {
    const EXPECTED: &str = "an integer or string type";
    if let Some(ints) = int_values(array, column)? {
        return Ok(ints.into_iter().map(|v| v.map(GroupKey::Int)).collect());
    }
    if let Some(strs) = str_values(array)? {
        return Ok(strs
            .into_iter()
            .map(|v| v.map(|s| GroupKey::Str(s.to_string())))
            .collect());
    }
    Err(type_err(column, EXPECTED, array.data_type()))
}

fn prim_i64<T: ArrowPrimitiveType>(a: &PrimitiveArray<T>, column: &str) -> Result<Vec<Option<i64>>>
where
    T::Native: TryInto<i64> + std::fmt::Display + Copy,
{
    a.iter()
        .enumerate()
        .map(|(i, v)| match v {
            None => Ok(None),
            Some(x) => x.try_into().map(Some).map_err(|_| Error::ColumnType {
                column: column.into(),
                expected: "labels that fit in int64".into(),
                found: format!("{x} at row {i}"),
            }),
        })
        .collect()
}

fn int_values(array: &dyn Array, column: &str) -> Result<Option<Vec<Option<i64>>>> {
    Ok(Some(match array.data_type() {
        DataType::Int8 => prim_i64(array.as_primitive::<Int8Type>(), column)?,
        DataType::Int16 => prim_i64(array.as_primitive::<Int16Type>(), column)?,
        DataType::Int32 => prim_i64(array.as_primitive::<Int32Type>(), column)?,
        DataType::Int64 => prim_i64(array.as_primitive::<Int64Type>(), column)?,
        DataType::UInt8 => prim_i64(array.as_primitive::<UInt8Type>(), column)?,
        DataType::UInt16 => prim_i64(array.as_primitive::<UInt16Type>(), column)?,
        DataType::UInt32 => prim_i64(array.as_primitive::<UInt32Type>(), column)?,
        DataType::UInt64 => prim_i64(array.as_primitive::<UInt64Type>(), column)?,
        _ => return Ok(None),
    }))
}

fn str_values(array: &dyn Array) -> Result<Option<Vec<Option<&str>>>> {
    Ok(Some(match array.data_type() {
        DataType::Utf8 => array.as_string::<i32>().iter().collect(),
        DataType::LargeUtf8 => array.as_string::<i64>().iter().collect(),
        DataType::Utf8View => array.as_string_view().iter().collect(),
        DataType::Dictionary(_, v)
            if matches!(
                **v,
                DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
            ) =>
        {
            let dict = array.as_any_dictionary();
            let Some(values) = str_values(dict.values().as_ref())? else {
                return Ok(None);
            };
            let keys = dict.normalized_keys();
            (0..array.len())
                .map(|i| {
                    if array.is_null(i) {
                        None
                    } else {
                        values[keys[i]]
                    }
                })
                .collect()
        }
        _ => return Ok(None),
    }))
}

/// Resolves a group column against a model: null → union mode (`None`), known value →
/// its group index, unknown value → an error naming it and the known groups.
pub fn resolve_groups(model: &Model, array: &dyn Array, column: &str) -> Result<Vec<Option<u32>>> {
    let kind = model.label_kind();
    if let Some(ints) = int_values(array, column)? {
        if kind == LabelKind::Str {
            return Err(type_err(
                column,
                "a string type (the model's groups are strings)",
                array.data_type(),
            ));
        }
        return ints
            .into_iter()
            .map(|v| {
                v.map(|x| model.resolve_int(x, column).map(|g| g as u32))
                    .transpose()
            })
            .collect();
    }
    if let Some(strs) = str_values(array)? {
        if kind == LabelKind::Int {
            return Err(type_err(
                column,
                "an integer type (the model's groups are integers)",
                array.data_type(),
            ));
        }
        return strs
            .into_iter()
            .map(|v| {
                v.map(|s| model.resolve_str(s, column).map(|g| g as u32))
                    .transpose()
            })
            .collect();
    }
    Err(type_err(
        column,
        "an integer or string type",
        array.data_type(),
    ))
}

/// `argmax(logits)` per row; null or non-finite logits give `None`.
pub fn logits_argmax(array: &dyn Array, column: &str) -> Result<Vec<Option<i64>>> {
    let rows = embedding_rows(array, column, None)?;
    let mut buf = vec![0.0; rows.dim()];
    Ok((0..rows.len())
        .map(|i| (rows.dim() > 0 && rows.gather(i, &mut buf)).then(|| argmax(&buf) as i64))
        .collect())
}

/// Routes rows by `argmax(logits)` to the group whose integer label equals it (§4).
pub fn resolve_groups_from_logits(
    model: &Model,
    array: &dyn Array,
    column: &str,
) -> Result<Vec<Option<u32>>> {
    if model.label_kind() == LabelKind::Str {
        return Err(Error::ColumnType {
            column: column.into(),
            expected: "a model with integer groups (logits route to integer labels)".into(),
            found: "a model with string groups".into(),
        });
    }
    logits_argmax(array, column)?
        .into_iter()
        .map(|v| {
            v.map(|i| match model.label_kind() {
                LabelKind::None => Ok(0),
                _ => model.resolve_int(i, column).map(|g| g as u32),
            })
            .transpose()
        })
        .collect()
}

/// The per-row output columns every front end writes, in order: the five of spec §4,
/// then §11's p-value.
pub const OUTPUT_COLUMNS: [&str; 6] = [
    "reclag_score",
    "reclag_energy",
    "reclag_ood_probability",
    "reclag_is_ood",
    "reclag_attractor",
    "reclag_p_value",
];

/// The output columns for `model`: the p-value only when it has calibration scores
/// (a version 2 model has none, and its outputs stay as they were).
pub fn output_fields(model: &Model) -> Vec<arrow_schema::Field> {
    use arrow_schema::Field;
    let mut v = vec![
        Field::new(OUTPUT_COLUMNS[0], DataType::Float64, true),
        Field::new(OUTPUT_COLUMNS[1], DataType::Float64, true),
        Field::new(OUTPUT_COLUMNS[2], DataType::Float64, true),
        Field::new(OUTPUT_COLUMNS[3], DataType::Boolean, true),
        Field::new(OUTPUT_COLUMNS[4], DataType::Int32, true),
    ];
    if model.calibration().is_some() {
        v.push(Field::new(OUTPUT_COLUMNS[5], DataType::Float64, true));
    }
    v
}

/// The five per-row outputs as Arrow arrays, null where the row was null. The values
/// are moved out of `out`, not copied; this is the one place the output null rule is
/// applied for every engine.
pub struct OutputArrays {
    pub score: ArrayRef,
    pub energy: ArrayRef,
    pub ood_probability: ArrayRef,
    pub is_ood: ArrayRef,
    pub attractor: ArrayRef,
}

pub fn output_arrays(out: ScoreOutput) -> OutputArrays {
    let nulls = Some(NullBuffer::from(out.valid));
    OutputArrays {
        score: Arc::new(Float64Array::new(out.score.into(), nulls.clone())),
        energy: Arc::new(Float64Array::new(out.energy.into(), nulls.clone())),
        ood_probability: Arc::new(Float64Array::new(out.ood_probability.into(), nulls.clone())),
        is_ood: Arc::new(BooleanArray::new(
            out.is_ood.into_iter().collect(),
            nulls.clone(),
        )),
        attractor: Arc::new(Int32Array::new(out.attractor.into(), nulls)),
    }
}

/// §11's p-values as an Arrow array: null where a row has no score (NaN).
pub fn p_value_array(p: Vec<f64>) -> ArrayRef {
    let nulls = NullBuffer::from_iter(p.iter().map(|v| !v.is_nan()));
    let nulls = (nulls.null_count() > 0).then_some(nulls);
    Arc::new(Float64Array::new(p.into(), nulls))
}

/// How many of the most similar groups an explanation lists.
pub const EXPLAIN_TOP_GROUPS: usize = 3;

/// The Arrow type of an explanation: one struct per row (see [`explain_array`]).
pub fn explain_type() -> DataType {
    use arrow_schema::{Field, Fields};
    let near = Fields::from(vec![
        Field::new("group", DataType::Utf8, true),
        Field::new("energy", DataType::Float64, false),
        Field::new("margin", DataType::Float64, false),
    ]);
    // Every child is nullable and null where the row is: field access (`e['margin']`)
    // then yields NULL for a NULL explanation, as it does for the other functions.
    DataType::Struct(Fields::from(vec![
        Field::new("group", DataType::Utf8, true),
        Field::new("nearest_memory", DataType::Int32, true),
        Field::new("energy", DataType::Float64, true),
        Field::new("tau", DataType::Float64, true),
        Field::new("margin", DataType::Float64, true),
        Field::new("is_ood", DataType::Boolean, true),
        Field::new("steps", DataType::Int32, true),
        Field::new_list(
            "nearest_groups",
            Field::new_list_field(DataType::Struct(near), false),
            true,
        ),
        Field::new("runner_up", DataType::Utf8, true),
        Field::new("runner_up_margin", DataType::Float64, true),
    ]))
}

/// Explanations as a struct column, null where the row scores null:
/// `group` used (null: the union), `nearest_memory` within it, its `energy` A and
/// threshold `tau`, `margin` = A − τ (the score), `is_ood`, dynamics `steps`, and
/// `nearest_groups`: the groups with the highest energy, each with its own margin.
pub fn explain_array(model: &Model, ex: Explanation) -> ArrayRef {
    use arrow_array::{ListArray, StringArray, StructArray};
    use arrow_buffer::OffsetBuffer;
    let DataType::Struct(fields) = explain_type() else {
        unreachable!("explain_type is a struct")
    };
    let n = ex.scores.valid.len();
    let groups = model.groups();
    let k = groups.len();
    let key = |g: usize| groups[g].key.as_ref().map(|k| k.to_string());
    let top = EXPLAIN_TOP_GROUPS.min(k);
    let mut near_group = Vec::with_capacity(n * top);
    let mut near_energy = Vec::with_capacity(n * top);
    let mut near_margin = Vec::with_capacity(n * top);
    let mut offsets = Vec::with_capacity(n + 1);
    offsets.push(0i32);
    let mut order: Vec<usize> = (0..k).collect();
    let mut taus = Vec::with_capacity(n);
    let mut runner_up = Vec::with_capacity(n);
    let mut runner_margin = Vec::with_capacity(n);
    for i in 0..n {
        let used = ex.scores.group[i];
        taus.push(match used {
            ScoreOutput::UNION => model.tau_star(),
            g => groups[g as usize].tau,
        });
        // The group of largest margin besides the one used: the class a row routed
        // by best margin nearly went to, or the one an OOD row resembles most.
        let e = &ex.group_energy[i * k..(i + 1) * k];
        let margin = |g: usize| e[g] - groups[g].tau;
        let second = (0..k)
            .filter(|&g| g as u32 != used && ex.scores.valid[i])
            .max_by(|&a, &b| margin(a).total_cmp(&margin(b)));
        runner_up.push(second.and_then(key));
        runner_margin.push(second.map_or(0.0, margin));
        if ex.scores.valid[i] {
            order.sort_by(|&a, &b| e[b].total_cmp(&e[a]));
            for &g in &order[..top] {
                near_group.push(key(g));
                near_energy.push(e[g]);
                near_margin.push(e[g] - groups[g].tau);
            }
        }
        offsets.push(near_group.len() as i32);
    }
    let DataType::List(item) = fields[7].data_type().clone() else {
        unreachable!("nearest_groups is a list")
    };
    let DataType::Struct(near_fields) = item.data_type().clone() else {
        unreachable!("nearest_groups items are structs")
    };
    let near = StructArray::new(
        near_fields,
        vec![
            Arc::new(StringArray::from(near_group)),
            Arc::new(Float64Array::from(near_energy)),
            Arc::new(Float64Array::from(near_margin)),
        ],
        None,
    );
    let nulls = Some(NullBuffer::from(ex.scores.valid));
    let nearest_groups = ListArray::new(
        item,
        OffsetBuffer::new(offsets.into()),
        Arc::new(near),
        nulls.clone(),
    );
    let group: StringArray = ex
        .group
        .iter()
        .zip(nulls.iter().flat_map(|n| n.iter()))
        .map(|(g, valid)| g.filter(|_| valid).and_then(|g| key(g as usize)))
        .collect();
    let steps: Vec<i32> = ex.scores.steps.iter().map(|&s| s as i32).collect();
    let f64s = |v: Vec<f64>| Arc::new(Float64Array::new(v.into(), nulls.clone())) as ArrayRef;
    let i32s = |v: Vec<i32>| Arc::new(Int32Array::new(v.into(), nulls.clone())) as ArrayRef;
    Arc::new(StructArray::new(
        fields,
        vec![
            Arc::new(group),
            i32s(ex.nearest_memory),
            f64s(ex.scores.energy),
            f64s(taus),
            f64s(ex.scores.score),
            Arc::new(BooleanArray::new(ex.scores.is_ood.into(), nulls.clone())),
            i32s(steps),
            Arc::new(nearest_groups),
            Arc::new(StringArray::from(runner_up)),
            f64s(runner_margin),
        ],
        nulls,
    ))
}
