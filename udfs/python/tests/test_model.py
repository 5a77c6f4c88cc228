"""The model API against the CLI: same files, same outputs, clear errors."""

from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import reclag

OUTPUTS = [
    "reclag_score",
    "reclag_energy",
    "reclag_ood_probability",
    "reclag_is_ood",
    "reclag_attractor",
    "reclag_p_value",
]


@pytest.fixture(scope="module")
def cli_scores(suite, cli, model_path, tmp_path_factory):
    """The CLI's `reclag score` output on id_test, per routing."""
    out = {}
    d = tmp_path_factory.mktemp("cli")
    for routing, extra in [("group", ["--group", "label"]), ("best", [])]:
        p = d / f"{routing}.parquet"
        cli("score", "--model", model_path, "--input", suite / "id_test.parquet",
            "--output", p, "--keep-columns", "label", *extra)
        out[routing] = pq.read_table(p)
    return out


def _inputs(suite):
    t = pq.read_table(suite / "id_test.parquet")
    emb = t.column("embedding").combine_chunks()
    numpy = emb.flatten().to_numpy().reshape(len(t), -1)
    return {
        "pyarrow": t,
        "polars": pl.read_parquet(suite / "id_test.parquet"),
        "numpy": numpy,
    }


# A numpy array has no label column: best routing only.
@pytest.mark.parametrize(
    "kind,routing",
    [("pyarrow", "group"), ("pyarrow", "best"), ("polars", "group"), ("polars", "best"),
     ("numpy", "best")],
)
def test_scores_equal_the_cli(suite, model_path, cli_scores, kind, routing):
    m = reclag.load(model_path)
    data = _inputs(suite)[kind]
    got = m.score(data, group="label" if routing == "group" else None)
    want = cli_scores[routing]
    assert got.num_rows == want.num_rows == 3901
    for c in OUTPUTS:
        assert got.column(c).equals(want.column(c)), f"{kind}/{routing}: {c} differs"
    # Best routing flags about the model's OOD rate of ID rows, not all of them.
    share = pa.compute.mean(got.column("reclag_is_ood").cast(pa.float64())).as_py()
    assert 0.0 < share < 0.2, share


def test_repr_is_what_reclag_inspect_prints(model_path, cli):
    m = reclag.load(model_path)
    assert repr(m) == cli("inspect", model_path)
    assert m.dim == 384 and m.recipe == "whitened" and len(m.groups) == 8
    assert len(m.sha256) == 64


def test_eval_matches_the_cli(suite, model_path, cli):
    m = reclag.load(model_path)
    r = m.eval(
        suite / "id_test.parquet",
        {"python_code": suite / "ood_python_code.parquet"},
        group="label",
    )["python_code"]
    out = cli("eval", "--model", model_path, "--id", suite / "id_test.parquet",
              "--ood", f"python_code={suite / 'ood_python_code.parquet'}", "--group", "label",
              "--format", "json")
    import json

    row = next(x for x in json.loads(out)["results"] if x["detector"] == "reclag")
    for k in ["auroc", "fpr95", "aupr_in", "aupr_out"]:
        assert abs(r[k] - row[k]) < 1e-12, (k, r, row)
    assert r["auroc"] > 0.8 and r["n_id"] == 3901 and r["n_ood"] == 4000


def test_train_save_load_round_trip(suite, tmp_path):
    t = pq.read_table(suite / "id_train.parquet").slice(0, 2000)
    a = reclag.train(t, label="label", recipe="paper", memories=4, epochs=2, seed=3)
    b = reclag.train(t, label="label", recipe="paper", memories=4, epochs=2, seed=3)
    assert a.sha256 == b.sha256, "equal seeds give equal models"
    assert a.recipe == "paper"
    p = tmp_path / "paper.parquet"
    a.save(p)
    c = reclag.load(p)
    assert c.sha256 == a.sha256 and c.path == str(p)


def test_bad_input_raises_with_the_message(suite, model_path, tmp_path):
    with pytest.raises(reclag.ReclagError, match="nope.parquet"):
        reclag.load(tmp_path / "nope.parquet")
    bad = tmp_path / "corrupt.parquet"
    bad.write_bytes(b"PAR1 not a model PAR1")
    with pytest.raises(reclag.ReclagError):
        reclag.load(bad)
    m = reclag.load(model_path)
    t = pq.read_table(suite / "id_test.parquet").slice(0, 50)
    with pytest.raises(reclag.ReclagError, match="384"):
        m.score(t, embedding="logits")
    with pytest.raises(reclag.ReclagError, match="not found"):
        m.score(t, embedding="nope")
    floats = t.append_column("g", pa.array(np.linspace(0, 1, 50)))
    with pytest.raises(reclag.ReclagError, match="g"):
        m.score(floats, group="g")
    with pytest.raises(TypeError, match="unexpected parameter"):
        reclag.train(t, bogus=1)
    # Null and NaN rows: null outputs, the rest scored.
    rows = np.random.default_rng(0).normal(size=(4, 384)).astype(np.float32)
    rows[1, 7] = np.nan
    emb = pa.FixedSizeListArray.from_arrays(pa.array(rows.reshape(-1)), 384)
    emb = pa.array(
        [None if i == 2 else r for i, r in enumerate(emb.to_pylist())],
        type=pa.list_(pa.float32(), 384),
    )
    out = m.score(pa.table({"embedding": emb}))
    assert out.column("reclag_score").null_count == 2
    assert out.column("reclag_score")[0].is_valid and out.column("reclag_score")[3].is_valid


def test_numpy_rows_cross_without_a_copy():
    rows = np.random.default_rng(1).normal(size=(10, 384)).astype(np.float32)
    t = reclag._as_stream(rows, "embedding")
    values = t.column("embedding").chunk(0).values
    assert values.buffers()[1].address == rows.ctypes.data
    # Other dtypes are converted (a copy), and the values survive.
    t = reclag._as_stream(rows.astype(np.float16), "embedding")
    assert t.column("embedding").chunk(0).values.type == pa.float64()
