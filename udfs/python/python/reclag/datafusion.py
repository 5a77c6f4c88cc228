"""reclag's SQL functions on a DataFusion ``SessionContext``.

>>> from datafusion import SessionContext
>>> import reclag, reclag.datafusion
>>> ctx = SessionContext()
>>> reclag.datafusion.register(ctx, models={"prod": reclag.load("model.parquet")})
>>> ctx.register_parquet("events", "events/")
>>> ctx.sql("SELECT count(*) FROM events WHERE reclag_is_ood('prod', embedding, label)")

Functions: ``reclag_score``, ``reclag_energy``, ``reclag_ood_probability``,
``reclag_is_ood``, ``reclag_attractor``, ``reclag_p_value`` and ``reclag_explain``,
each ``(model, embedding [, group])``. ``model`` is a string literal: a name given to
:func:`register`, or a model file path; ``'prod#union'`` routes rows without a group
against every group's memories at once (by default they go to the group of largest
margin). The embedding type and width, and the group type, are checked when the query
is planned.

On a Python context ``SHOW FUNCTIONS`` does not list them: datafusion-ffi 55 passes a
function's signature as "user defined" and no documentation, so DataFusion has no
parameter rows to show. ``information_schema.routines`` lists them by name, and
:func:`functions` describes each one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional, Union

from reclag import Model, ReclagError, _reclag, load

__all__ = ["register", "functions", "DATAFUSION_MAJOR"]

#: The major version of the Python ``datafusion`` package the functions work with.
DATAFUSION_MAJOR: int = _reclag.DATAFUSION_MAJOR


def register(
    ctx: Any, models: Optional[Mapping[str, Union[Model, str, Path]]] = None
) -> list[str]:
    """Register the reclag SQL functions on ``ctx``; returns their names.

    ``models`` maps SQL names to models or model files' paths or URLs. Raises
    :class:`reclag.ReclagError` when the installed ``datafusion`` is not
    ``DATAFUSION_MAJOR``.x: the FFI between the two has no version handshake, so a
    mismatch is refused here rather than crashing the interpreter.
    """
    import datafusion

    version = getattr(datafusion, "__version__", "unknown")
    major = version.split(".")[0]
    if major != str(DATAFUSION_MAJOR):
        raise ReclagError(
            f"reclag's SQL functions are built for the datafusion {DATAFUSION_MAJOR}.x Python "
            f"package, but datafusion {version} is installed; install "
            f"'datafusion>={DATAFUSION_MAJOR},<{DATAFUSION_MAJOR + 1}'"
        )
    pairs = [
        (name, (m if isinstance(m, Model) else load(m))._inner)
        for name, m in (models or {}).items()
    ]
    functions = _reclag.sql_functions(pairs)
    for f in functions:
        ctx.register_udf(datafusion.udf(f))
    return [f.name for f in functions]


def functions() -> "pyarrow.Table":
    """What each SQL function does and how it is called: a table of ``name``,
    ``syntax`` and ``description``, the documentation ``reclag sql --help`` and Rust's
    ``SHOW FUNCTIONS`` give (it does not cross the FFI)."""
    import pyarrow as pa

    fs = _reclag.sql_functions([])
    return pa.table(
        {
            "name": [f.name for f in fs],
            "syntax": [f.syntax for f in fs],
            "description": [f.description for f in fs],
        }
    )
