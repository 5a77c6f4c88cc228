"""Polars expressions from the plugin, on the published polars wheel."""

from __future__ import annotations

import polars as pl
import pyarrow.parquet as pq
import pytest

import reclag
import reclag.polars as rp


@pytest.fixture(scope="module")
def table(suite, tmp_path_factory):
    """id_test and one OOD set in one file of many small row groups."""
    a = pq.read_table(suite / "id_test.parquet")
    b = pq.read_table(suite / "ood_python_code.parquet").slice(0, 1000)
    t = __import__("pyarrow").concat_tables([a, b.select(a.column_names).cast(a.schema)])
    p = tmp_path_factory.mktemp("pl") / "mixed.parquet"
    pq.write_table(t, p, row_group_size=300)
    return p


def test_lazy_streaming_filter_equals_eager_and_the_model_api(table, model_path, tmp_path):
    m = reclag.load(model_path)
    keep = ~rp.is_ood("embedding", m, group="label")
    out = tmp_path / "clean.parquet"
    pl.scan_parquet(table).filter(keep).sink_parquet(out)
    streamed = pl.read_parquet(out)
    eager = pl.read_parquet(table).filter(keep)
    assert streamed.equals(eager)
    # The same rows the model API keeps (non-null, not OOD).
    scored = m.score(pq.read_table(table), group="label")
    flags = scored.column("reclag_is_ood").to_pylist()
    assert streamed.height == sum(1 for f in flags if f is False)
    assert 0 < streamed.height < len(flags)


def test_every_output_equals_the_model_api(table, model_path):
    m = reclag.load(model_path)
    df = pl.read_parquet(table)
    got = df.select(
        rp.score("embedding", m, "label"),
        rp.energy("embedding", m, "label"),
        rp.ood_probability("embedding", m, "label"),
        rp.is_ood("embedding", m, "label"),
        rp.attractor("embedding", m, "label"),
        rp.p_value("embedding", m, "label"),
        rp.explain("embedding", m).struct.field("group").alias("best_group"),
    )
    want = m.score(pq.read_table(table), group="label")
    for c in ["reclag_score", "reclag_energy", "reclag_ood_probability", "reclag_is_ood",
              "reclag_attractor", "reclag_p_value"]:
        assert got[c].to_list() == want.column(c).to_pylist(), c
    # Best routing without a group, by path as well as by model object.
    best = df.select(rp.is_ood("embedding", str(model_path)))["reclag_is_ood"].to_list()
    assert best == m.score(pq.read_table(table)).column("reclag_is_ood").to_pylist()
    assert got["best_group"].null_count() == 0


def test_wrong_width_fails_at_collect_schema_with_the_rust_message(table, model_path):
    m = reclag.load(model_path)
    lf = pl.scan_parquet(table).select(rp.score("logits", m))
    with pytest.raises(Exception, match="384"):
        lf.collect_schema()


def test_a_changed_model_file_is_refused(table, model_path, tmp_path):
    import shutil

    p = tmp_path / "m.parquet"
    shutil.copy(model_path, p)
    expr = rp.score("embedding", str(p))
    other = reclag.train(pq.read_table(table).slice(0, 600), label="label", memories=2,
                         max_rows_per_group=50, seed=1)
    other.save(p)
    # The expression still holds the first model's checksum: this process knows that
    # model, so it scores with it; a fresh process would refuse the changed file.
    assert pl.read_parquet(table).head(5).select(expr).height == 5
    from reclag import _reclag

    with pytest.raises(Exception, match="checksum"):
        pl.read_parquet(table).head(5).select(
            pl.plugins.register_plugin_function(
                plugin_path=_reclag.__file__, function_name="reclag_score",
                args=[pl.col("embedding")],
                kwargs={"sha256": "0" * 64, "path": str(p), "route": "best"},
                is_elementwise=True,
            )
        )
