//! `reclag._reclag`: the Python package's native module. Three thin layers over the
//! same core calls as the CLI: the model API (Arrow C streams in and out), the Polars
//! expression plugin (this library is also the plugin Polars loads), and the DataFusion
//! SQL functions exported through datafusion-ffi.

use pyo3::prelude::*;

mod arrow_io;
mod model;
mod plugin;
mod sql;
mod store;

pyo3::create_exception!(
    _reclag,
    ReclagError,
    pyo3::exceptions::PyValueError,
    "A reclag error: bad input, a model that does not fit the data, or a file that cannot be read."
);

/// Any reclag failure as a Python `ReclagError` with the Rust message.
pub(crate) fn err(e: impl std::fmt::Display) -> PyErr {
    ReclagError::new_err(e.to_string())
}

#[pymodule]
fn _reclag(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("ReclagError", m.py().get_type::<ReclagError>())?;
    m.add_class::<model::Model>()?;
    m.add_class::<arrow_io::ArrowStream>()?;
    m.add_class::<sql::SqlFunction>()?;
    m.add_function(wrap_pyfunction!(model::load, m)?)?;
    m.add_function(wrap_pyfunction!(model::train_stream, m)?)?;
    m.add_function(wrap_pyfunction!(model::metrics, m)?)?;
    m.add_function(wrap_pyfunction!(sql::sql_functions, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("DATAFUSION_MAJOR", datafusion_ffi::version())?;
    Ok(())
}
