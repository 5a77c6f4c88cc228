//! The SQL functions for a Python `datafusion.SessionContext`, exported through
//! datafusion-ffi's PyCapsule protocol (`__datafusion_scalar_udf__`).

use std::sync::Arc;

use datafusion::logical_expr::ScalarUDF;
use datafusion_ffi::udf::FFI_ScalarUDF;
use pyo3::prelude::*;
use pyo3::types::PyCapsule;
use reclag_udfs::ModelRegistry;

use crate::err;
use crate::model::Model;

/// One reclag SQL function, ready for `datafusion.udf(...)` and
/// `SessionContext.register_udf`.
#[pyclass(module = "reclag._reclag", frozen)]
pub struct SqlFunction {
    udf: Arc<ScalarUDF>,
}

#[pymethods]
impl SqlFunction {
    /// The SQL name.
    #[getter]
    fn name(&self) -> String {
        self.udf.name().to_string()
    }

    /// What `reclag sql --help` and Rust's `SHOW FUNCTIONS` say of it.
    #[getter]
    fn description(&self) -> Option<String> {
        self.udf.documentation().map(|d| d.description.clone())
    }

    /// How it is called, e.g. `reclag_score('prod', embedding [, label])`.
    #[getter]
    fn syntax(&self) -> Option<String> {
        self.udf.documentation().map(|d| d.syntax_example.clone())
    }

    /// datafusion-ffi's capsule. Refused when the interpreter's `datafusion` is of
    /// another major version than the one this library was built against: the FFI
    /// structs differ between majors and nothing else would catch it.
    fn __datafusion_scalar_udf__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyCapsule>> {
        check_datafusion(py)?;
        let ffi = FFI_ScalarUDF::from(self.udf.clone());
        PyCapsule::new_with_value(py, ffi, c"datafusion_scalar_udf")
    }
}

/// Errors unless the imported `datafusion` package has this library's major version.
pub fn check_datafusion(py: Python<'_>) -> PyResult<()> {
    let v: String = py.import("datafusion")?.getattr("__version__")?.extract()?;
    let major: Option<u64> = v.split('.').next().and_then(|s| s.parse().ok());
    if major != Some(datafusion_ffi::version()) {
        return Err(err(format!(
            "reclag's SQL functions are built for the datafusion {}.x Python package, but datafusion {v} is installed; install `datafusion>={0},<{1}` (the FFI between them has no version handshake, so other versions are refused)",
            datafusion_ffi::version(),
            datafusion_ffi::version() + 1
        )));
    }
    Ok(())
}

/// The reclag SQL functions over `models` (SQL name → model). Model file paths also
/// work as the first argument, loaded on first use.
#[pyfunction]
pub fn sql_functions(
    py: Python<'_>,
    models: Vec<(String, PyRef<'_, Model>)>,
) -> PyResult<Vec<SqlFunction>> {
    check_datafusion(py)?;
    let registry = ModelRegistry::new();
    for (name, m) in &models {
        match m.path.lock().expect("path").clone() {
            Some(p) => registry.register_from(name.clone(), p, m.inner.clone()),
            None => registry.register(name.clone(), m.inner.clone()),
        }
    }
    Ok(reclag_udfs::functions(registry)
        .into_iter()
        .map(|u| SqlFunction { udf: Arc::new(u) })
        .collect())
}
