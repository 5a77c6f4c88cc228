//! Polars and arrow-rs hand arrays to each other through the Arrow C Data Interface:
//! buffers are shared, not copied, and each side keeps the other's buffers alive
//! through the interface's release callback. This lets the Polars expressions reuse
//! the exact readers, checks and messages of the SQL functions.

use polars::prelude::{ArrowField, CompatLevel, DataType, PolarsResult, polars_err};
use polars_arrow::array::Array as PolarsArray;
use polars_arrow::ffi as pffi;

fn arrow_err(e: impl std::fmt::Display) -> polars::prelude::PolarsError {
    polars_err!(ComputeError: "passing an array between Polars and Arrow: {e}")
}

/// The arrow-rs type of a Polars field (`Array(f32, d)` is a `FixedSizeList`, `List` a
/// `LargeList`, `String` a `Utf8View`, a categorical a dictionary).
pub fn arrow_rs_type(field: &polars::prelude::Field) -> PolarsResult<arrow_schema::DataType> {
    Ok(arrow_rs_field(&field.to_arrow(CompatLevel::newest()))?
        .data_type()
        .clone())
}

fn arrow_rs_field(field: &ArrowField) -> PolarsResult<arrow_schema::Field> {
    let schema = pffi::export_field_to_c(field);
    // SAFETY: both types are the C Data Interface's `ArrowSchema` (repr(C), identical
    // fields); the move hands ownership, and with it the release callback, across.
    let schema: arrow_schema::ffi::FFI_ArrowSchema = unsafe { std::mem::transmute(schema) };
    arrow_schema::Field::try_from(&schema).map_err(arrow_err)
}

/// The Polars type of an arrow-rs type (the declared output types).
pub fn polars_type(dt: &arrow_schema::DataType) -> PolarsResult<DataType> {
    let field = arrow_schema::Field::new("", dt.clone(), true);
    let schema = arrow_schema::ffi::FFI_ArrowSchema::try_from(&field).map_err(arrow_err)?;
    // SAFETY: as in `arrow_rs_field`, in the other direction.
    let schema: pffi::ArrowSchema = unsafe { std::mem::transmute(schema) };
    // SAFETY: arrow-rs just produced a valid schema.
    let field = unsafe { pffi::import_field_from_c(&schema) }?;
    Ok(DataType::from_arrow_field(&field))
}

/// A zero-copy arrow-rs view of one Polars chunk.
pub fn to_arrow_rs(array: Box<dyn PolarsArray>) -> PolarsResult<arrow_array::ArrayRef> {
    let field = ArrowField::new("".into(), array.dtype().clone(), true);
    let schema = arrow_rs_schema(&field);
    let array = pffi::export_array_to_c(array);
    // SAFETY: both are the C Data Interface's `ArrowArray`; see `arrow_rs_field`.
    let array: arrow_array::ffi::FFI_ArrowArray = unsafe { std::mem::transmute(array) };
    // SAFETY: Polars exported a valid array of exactly this schema.
    let data = unsafe { arrow_array::ffi::from_ffi(array, &schema) }.map_err(arrow_err)?;
    Ok(arrow_array::make_array(data))
}

fn arrow_rs_schema(field: &ArrowField) -> arrow_schema::ffi::FFI_ArrowSchema {
    let schema = pffi::export_field_to_c(field);
    // SAFETY: see `arrow_rs_field`.
    unsafe { std::mem::transmute(schema) }
}

/// A zero-copy Polars view of an arrow-rs array (the core's outputs).
pub fn to_polars(array: &arrow_array::ArrayRef) -> PolarsResult<Box<dyn PolarsArray>> {
    let (array, schema) = arrow_array::ffi::to_ffi(&array.to_data()).map_err(arrow_err)?;
    // SAFETY: see `arrow_rs_field`.
    let array: pffi::ArrowArray = unsafe { std::mem::transmute(array) };
    let schema: pffi::ArrowSchema = unsafe { std::mem::transmute(schema) };
    // SAFETY: arrow-rs exported a valid array and schema.
    unsafe {
        let field = pffi::import_field_from_c(&schema)?;
        pffi::import_array_from_c(array, field.dtype)
    }
}
