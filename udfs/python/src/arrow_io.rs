//! Arrow data across the boundary through the Arrow PyCapsule interface: any object
//! with `__arrow_c_stream__` (pyarrow, Polars, DuckDB results) comes in without a copy,
//! and results go out as a stream pyarrow imports without a copy.

use arrow_array::ffi_stream::{ArrowArrayStreamReader, FFI_ArrowArrayStream};
use arrow_array::{RecordBatch, RecordBatchIterator, RecordBatchReader};
use arrow_schema::SchemaRef;
use pyo3::prelude::*;
use pyo3::types::PyCapsule;

use crate::err;

const STREAM: &std::ffi::CStr = c"arrow_array_stream";

/// Reads `obj`'s Arrow C stream (`obj.__arrow_c_stream__()`).
pub fn import_stream(obj: &Bound<'_, PyAny>) -> PyResult<ArrowArrayStreamReader> {
    if !obj.hasattr("__arrow_c_stream__")? {
        return Err(pyo3::exceptions::PyTypeError::new_err(format!(
            "expected a table with the Arrow PyCapsule interface (a pyarrow Table or RecordBatchReader, a Polars DataFrame, a DuckDB result), got {}",
            obj.get_type().name()?
        )));
    }
    let capsule = obj.call_method1("__arrow_c_stream__", (obj.py().None(),))?;
    let capsule = capsule.cast::<PyCapsule>()?;
    let ptr = capsule.pointer_checked(Some(STREAM))?;
    // SAFETY: the capsule holds a valid `ArrowArrayStream` (checked by name); the
    // reader moves it out and leaves a released stream, which the capsule's own
    // destructor then skips.
    unsafe { ArrowArrayStreamReader::from_raw(ptr.as_ptr().cast::<FFI_ArrowArrayStream>()) }
        .map_err(err)
}

/// Reads every batch of `obj`'s stream.
pub fn read_all(obj: &Bound<'_, PyAny>) -> PyResult<(SchemaRef, Vec<RecordBatch>)> {
    let reader = import_stream(obj)?;
    let schema = reader.schema();
    let batches = reader.collect::<Result<Vec<_>, _>>().map_err(err)?;
    Ok((schema, batches))
}

/// A result stream for Python: `pyarrow.table(stream)` (or any consumer of the Arrow
/// PyCapsule interface) takes it once.
#[pyclass(module = "reclag._reclag")]
pub struct ArrowStream {
    inner: std::sync::Mutex<Option<Box<dyn RecordBatchReader + Send>>>,
}

impl ArrowStream {
    pub fn new(schema: SchemaRef, batches: Vec<RecordBatch>) -> Self {
        let it = RecordBatchIterator::new(batches.into_iter().map(Ok), schema);
        ArrowStream {
            inner: std::sync::Mutex::new(Some(Box::new(it))),
        }
    }
}

#[pymethods]
impl ArrowStream {
    /// The Arrow PyCapsule interface: the stream, once.
    #[pyo3(signature = (requested_schema=None))]
    fn __arrow_c_stream__<'py>(
        &self,
        py: Python<'py>,
        requested_schema: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyCapsule>> {
        let _ = requested_schema;
        let taken = self.inner.lock().map(|mut r| r.take()).ok().flatten();
        let reader = taken.ok_or_else(|| {
            pyo3::exceptions::PyRuntimeError::new_err("this Arrow stream was already consumed")
        })?;
        PyCapsule::new_with_value(py, FFI_ArrowArrayStream::new(reader), STREAM)
    }
}
