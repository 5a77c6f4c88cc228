"""reclag: find the out-of-distribution rows of a table of embeddings.

RecLag (Moriai et al., AAAI 2025) is a modern Hopfield network whose memory Lagrangian
is rectified, so the origin is an attractor that captures out-of-distribution (OOD)
rows. This package puts the same kernels as the ``reclag`` command line in Python:

- :func:`train` and :func:`load` give a :class:`Model`, which scores any Arrow table
  (pyarrow, Polars, DuckDB results) or a 2-D numpy array with the CLI's output columns;
- :mod:`reclag.polars` has Polars expressions that stream in lazy pipelines;
- :mod:`reclag.datafusion` registers the SQL functions on a DataFusion
  ``SessionContext``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import pyarrow as pa

from reclag import _reclag
from reclag._reclag import ReclagError, __version__

__all__ = ["Model", "ReclagError", "load", "train", "__version__"]

PathLike = Union[str, Path]


def _as_stream(data: Any, embedding: str) -> Any:
    """An object with ``__arrow_c_stream__`` for ``data``.

    Tables with the Arrow PyCapsule interface pass through untouched (no copy). A path
    names a Parquet file or directory, read as a stream. A 2-D numpy array becomes a
    table with one ``FixedSizeList`` column named ``embedding``, without a copy when it
    is C-contiguous float32 or float64.
    """
    if isinstance(data, (str, Path)):
        import pyarrow.dataset as ds

        return ds.dataset(str(data), format="parquet").scanner().to_reader()
    if hasattr(data, "__arrow_c_stream__"):
        return data
    if hasattr(data, "ndim") and hasattr(data, "shape"):
        import numpy as np

        if data.ndim != 2:
            raise ReclagError(
                f"a numpy array of embeddings must be 2-D (rows × dimension), got shape {data.shape}"
            )
        arr = data if data.dtype in (np.float32, np.float64) else data.astype(np.float64)
        arr = np.ascontiguousarray(arr)
        values = pa.array(arr.reshape(-1))
        column = pa.FixedSizeListArray.from_arrays(values, arr.shape[1])
        return pa.table({embedding: column})
    if hasattr(data, "to_arrow"):
        return data.to_arrow()
    raise TypeError(
        "expected a Parquet path, a table with the Arrow PyCapsule interface "
        f"(pyarrow, Polars, DuckDB) or a 2-D numpy array, got {type(data).__name__}"
    )


class Model:
    """A RecLag model: memories per group, thresholds, calibration scores.

    Get one from :func:`train` or :func:`load`; ``repr(model)`` shows what
    ``reclag inspect`` prints.
    """

    __slots__ = ("_inner",)

    def __init__(self, inner: _reclag.Model) -> None:
        self._inner = inner

    def __repr__(self) -> str:
        return repr(self._inner)

    @property
    def sha256(self) -> str:
        """SHA-256 of the model's content, which SQL plans and Polars expressions pin."""
        return self._inner.sha256

    @property
    def path(self) -> Optional[str]:
        """The file the model was loaded from or last saved to, if any."""
        return self._inner.path

    @property
    def dim(self) -> int:
        """The embedding dimension."""
        return self._inner.dim

    @property
    def recipe(self) -> str:
        """``"whitened"`` or ``"paper"``."""
        return self._inner.recipe

    @property
    def groups(self) -> list[str]:
        """The group labels, in the model's order."""
        return self._inner.groups

    def save(self, path: PathLike) -> None:
        """Write the model file (whole or not at all), readable by the CLI.

        ``path`` is a local path or an object-store URL (``s3://``, ``gs://``,
        ``az://``), configured from the same ``AWS_*``, ``GOOGLE_*`` and ``AZURE_*``
        variables as the CLI.
        """
        self._inner.save(str(path))

    def score(
        self,
        data: Any,
        embedding: str = "embedding",
        group: Optional[str] = None,
        route: Optional[str] = None,
        keep_columns: Optional[Sequence[str]] = None,
    ) -> pa.Table:
        """Score every row: the input columns, then the CLI's output columns.

        ``reclag_score`` (A − τ, > 0 on the ID side), ``reclag_energy``,
        ``reclag_ood_probability``, ``reclag_is_ood``, ``reclag_attractor`` and, for
        models with calibration scores, ``reclag_p_value``. Null or non-finite
        embeddings get null outputs.

        ``group`` names a label column (integer or string) routing each row to its
        group; without it, or for a null label, rows go to the group of largest margin
        (``route="best"``, the default) or against every group's memories at once
        (``route="union"``).
        """
        stream = self._inner.score_stream(
            _as_stream(data, embedding),
            embedding,
            group,
            route,
            list(keep_columns) if keep_columns is not None else None,
        )
        return pa.RecordBatchReader.from_stream(stream).read_all()

    def eval(
        self,
        id_data: Any,
        ood: Mapping[str, Any],
        embedding: str = "embedding",
        group: Optional[str] = None,
        route: Optional[str] = None,
    ) -> dict[str, dict[str, float]]:
        """Separation of in-distribution rows from each OOD set, as ``reclag eval``.

        Returns, per OOD set, ``auroc``, ``fpr95`` (false-positive rate at 95 % true
        positives), ``aupr_in``, ``aupr_out`` and the row counts ``n_id``, ``n_ood``
        (null rows dropped).
        """
        ids = self._inner.scores(_as_stream(id_data, embedding), embedding, group, route)
        return {
            name: _reclag.metrics(
                ids, self._inner.scores(_as_stream(d, embedding), embedding, group, route)
            )
            for name, d in ood.items()
        }


def load(path: PathLike) -> Model:
    """Load a model file written by ``reclag train`` or :meth:`Model.save`.

    ``path`` is a local path or an object-store URL: ``s3://bucket/key``,
    ``gs://bucket/key`` or ``az://container/key``, configured from the same
    ``AWS_*``, ``GOOGLE_*`` and ``AZURE_*`` variables as the CLI (for a local S3
    server, ``AWS_ENDPOINT_URL`` and ``AWS_ALLOW_HTTP=true``). The checksum is
    verified; a missing object or refused credentials raise :class:`ReclagError`
    naming the URL.
    """
    return Model(_reclag.load(str(path)))


def train(
    data: Any,
    embedding: str = "embedding",
    label: Optional[str] = None,
    max_rows_per_group: Optional[int] = None,
    **params: Any,
) -> Model:
    """Fit a model on in-distribution rows, as ``reclag train``.

    ``data`` is a Parquet path, a table with the Arrow PyCapsule interface, or a 2-D
    numpy array. ``label`` names the column whose values are the groups (one group
    without it). ``params``: ``recipe`` (``"whitened"``, the default, or ``"paper"``),
    ``memories``, ``beta`` (a number, or ``"auto"``), ``epochs``, ``batch_size``,
    ``lr``, ``ood_rate``, ``calibration_fraction``, ``seed``, ``max_iter``, ``tol``.
    """
    source = f"python:{data}" if isinstance(data, (str, Path)) else ""
    return Model(
        _reclag.train_stream(
            _as_stream(data, embedding),
            embedding,
            label,
            max_rows_per_group,
            source,
            **params,
        )
    )
