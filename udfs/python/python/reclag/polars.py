"""reclag as Polars expressions: elementwise, so they stream.

>>> import polars as pl, reclag, reclag.polars as rp
>>> m = reclag.load("model.parquet")
>>> (pl.scan_parquet("events/*.parquet")
...    .filter(~rp.is_ood("embedding", m, group="label"))
...    .sink_parquet("clean.parquet"))

Each function takes ``(embedding, model, group=None, route=None)``: a column name or
expression, a :class:`reclag.Model` or a model file's path or URL (as for
:func:`reclag.load`), an optional group column (integer or string labels; without it,
or for a null label, rows are routed to the group of largest margin, or with
``route="union"`` against every group's memories at once). The expression carries
the model's checksum and file, never the model itself; a model file that changed
since the expression was built is refused. Types are checked when the plan is built
(``collect_schema()``): a wrong embedding width fails there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import polars as pl
from polars.plugins import register_plugin_function

from reclag import Model, _reclag, load

__all__ = ["score", "energy", "ood_probability", "is_ood", "attractor", "p_value", "explain"]

_LIB = Path(_reclag.__file__)

IntoExpr = Union[str, pl.Expr]
ModelLike = Union[Model, str, Path]


def _model(model: ModelLike) -> Model:
    return model if isinstance(model, Model) else load(model)


def _expr(
    function: str,
    embedding: IntoExpr,
    model: ModelLike,
    group: Optional[IntoExpr],
    route: Optional[str],
) -> pl.Expr:
    m = _model(model)
    if route not in (None, "best", "union"):
        raise _reclag.ReclagError(f"route '{route}': expected 'best' or 'union'")
    args = [pl.col(embedding) if isinstance(embedding, str) else embedding]
    if group is not None:
        args.append(pl.col(group) if isinstance(group, str) else group)
    return register_plugin_function(
        plugin_path=_LIB,
        function_name=function,
        args=args,
        kwargs={"sha256": m.sha256, "path": m.path, "route": route or "best"},
        is_elementwise=True,
    ).alias(function)


def score(embedding: IntoExpr, model: ModelLike, group: Optional[IntoExpr] = None, route: Optional[str] = None) -> pl.Expr:
    """A − τ (Float64): > 0 on the in-distribution side; null for null rows."""
    return _expr("reclag_score", embedding, model, group, route)


def energy(embedding: IntoExpr, model: ModelLike, group: Optional[IntoExpr] = None, route: Optional[str] = None) -> pl.Expr:
    """The log-mean-exp Hopfield energy A_β(Ξx) (Float64)."""
    return _expr("reclag_energy", embedding, model, group, route)


def ood_probability(embedding: IntoExpr, model: ModelLike, group: Optional[IntoExpr] = None, route: Optional[str] = None) -> pl.Expr:
    """Posterior of the OOD component, σ(β(τ − A)) (Float64)."""
    return _expr("reclag_ood_probability", embedding, model, group, route)


def is_ood(embedding: IntoExpr, model: ModelLike, group: Optional[IntoExpr] = None, route: Optional[str] = None) -> pl.Expr:
    """Whether the row's trajectory reached the origin (Boolean)."""
    return _expr("reclag_is_ood", embedding, model, group, route)


def attractor(embedding: IntoExpr, model: ModelLike, group: Optional[IntoExpr] = None, route: Optional[str] = None) -> pl.Expr:
    """The memory the row converged to, −1 when OOD (Int32)."""
    return _expr("reclag_attractor", embedding, model, group, route)


def p_value(embedding: IntoExpr, model: ModelLike, group: Optional[IntoExpr] = None, route: Optional[str] = None) -> pl.Expr:
    """Conformal p-value against the model's calibration scores (Float64); needs a
    model with calibration scores."""
    return _expr("reclag_p_value", embedding, model, group, route)


def explain(embedding: IntoExpr, model: ModelLike, group: Optional[IntoExpr] = None, route: Optional[str] = None) -> pl.Expr:
    """Why a row was flagged (Struct): the chosen group and the runner-up with their
    margins, the nearest memory, steps and the energies, as SQL's ``reclag_explain``."""
    return _expr("reclag_explain", embedding, model, group, route)
