"""Type stubs of the native module; the public API is in ``reclag``."""

from typing import Any, Optional, Sequence

__version__: str
DATAFUSION_MAJOR: int

class ReclagError(ValueError): ...

class ArrowStream:
    def __arrow_c_stream__(self, requested_schema: Optional[object] = None) -> object: ...

class Model:
    @property
    def sha256(self) -> str: ...
    @property
    def path(self) -> Optional[str]: ...
    @property
    def dim(self) -> int: ...
    @property
    def recipe(self) -> str: ...
    @property
    def groups(self) -> list[str]: ...
    def save(self, path: str) -> None: ...
    def score_stream(
        self,
        data: Any,
        embedding: str = "embedding",
        group: Optional[str] = None,
        route: Optional[str] = None,
        keep_columns: Optional[Sequence[str]] = None,
    ) -> ArrowStream: ...
    def scores(
        self,
        data: Any,
        embedding: str = "embedding",
        group: Optional[str] = None,
        route: Optional[str] = None,
    ) -> list[float]: ...

class SqlFunction:
    @property
    def name(self) -> str: ...
    @property
    def description(self) -> Optional[str]: ...
    @property
    def syntax(self) -> Optional[str]: ...
    def __datafusion_scalar_udf__(self) -> object: ...

def load(path: str) -> Model: ...
def train_stream(
    data: Any,
    embedding: str,
    label: Optional[str] = None,
    max_rows_per_group: Optional[int] = None,
    source: str = "",
    **params: Any,
) -> Model: ...
def metrics(id: Sequence[float], ood: Sequence[float]) -> dict[str, float]: ...
def sql_functions(models: Sequence[tuple[str, Model]]) -> list[SqlFunction]: ...
