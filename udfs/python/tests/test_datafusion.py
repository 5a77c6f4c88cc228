"""The SQL functions on a Python DataFusion SessionContext (the published wheel)."""

from __future__ import annotations

import datafusion
import pyarrow.parquet as pq
import pytest
from datafusion import SessionConfig, SessionContext

import reclag
import reclag.datafusion as rdf


def _ctx(suite, model_path):
    ctx = SessionContext(SessionConfig().with_information_schema(True))
    names = rdf.register(ctx, models={"prod": reclag.load(model_path)})
    ctx.register_parquet("t", str(suite / "id_test.parquet"))
    return ctx, names


def test_sql_equals_the_cli(suite, model_path, cli, tmp_path):
    ctx, names = _ctx(suite, model_path)
    assert "reclag_score" in names and "reclag_explain" in names
    q = (
        "SELECT label, reclag_score('prod', embedding, label) AS s, "
        "reclag_is_ood('prod', embedding) AS o, "
        "reclag_explain('prod', embedding)['group'] AS g, "
        "reclag_p_value('prod', embedding, label) AS p "
        "FROM t ORDER BY s, label"
    )
    got = ctx.sql(q).to_arrow_table()
    out = tmp_path / "cli.parquet"
    cli("sql", "--table", f"t={suite / 'id_test.parquet'}", "--model", f"prod={model_path}",
        q, "--output", out)
    want = pq.read_table(out)
    assert got.num_rows == want.num_rows == 3901
    for c in ["label", "s", "o", "g", "p"]:
        assert got.column(c).to_pylist() == want.column(c).to_pylist(), c
    # A path literal works too, and the union route by suffix.
    n = ctx.sql(
        f"SELECT count(*) AS n FROM t WHERE reclag_is_ood('{model_path}#union', embedding)"
    ).to_pydict()["n"][0]
    assert 0 <= n <= 3901


def test_show_functions_lists_them(suite, model_path):
    ctx, _ = _ctx(suite, model_path)
    listed = ctx.sql("SHOW FUNCTIONS LIKE 'reclag%'").to_pydict()
    assert {"reclag_score", "reclag_is_ood", "reclag_p_value", "reclag_explain"} <= set(
        listed["function_name"]
    )
    # The FFI carries no documentation; the functions describe themselves here.
    from reclag import _reclag

    descs = {f.name: f.description for f in _reclag.sql_functions([])}
    assert all(descs.values()), descs


def test_planning_checks_and_errors(suite, model_path):
    ctx, _ = _ctx(suite, model_path)
    with pytest.raises(Exception, match="384"):
        ctx.sql("SELECT reclag_score('prod', logits) FROM t").collect()
    with pytest.raises(Exception, match="not registered"):
        ctx.sql("SELECT reclag_score('nope', embedding) FROM t").collect()


def test_another_datafusion_major_is_refused(monkeypatch, model_path):
    monkeypatch.setattr(datafusion, "__version__", "54.1.0")
    with pytest.raises(reclag.ReclagError, match="datafusion 54.1.0"):
        rdf.register(SessionContext(), models={"prod": reclag.load(model_path)})
    # The native check behind the capsule, for callers that skip `register`.
    from reclag import _reclag

    with pytest.raises(reclag.ReclagError, match="54.1.0"):
        _reclag.sql_functions([])
