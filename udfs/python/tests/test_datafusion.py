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
    # A path literal works too, and the union route by suffix: the rows the model API
    # flags with route="union".
    n = ctx.sql(
        f"SELECT count(*) AS n FROM t WHERE reclag_is_ood('{model_path}#union', embedding)"
    ).to_pydict()["n"][0]
    union = reclag.load(model_path).score(pq.read_table(suite / "id_test.parquet"), route="union")
    assert n == sum(1 for f in union.column("reclag_is_ood").to_pylist() if f)
    best = sum(1 for f in got.column("o").to_pylist() if f)
    assert n != best, "the union route decides differently from best routing on some rows"


def test_the_functions_are_listed_and_described(suite, model_path):
    ctx, names = _ctx(suite, model_path)
    want = {"reclag_score", "reclag_energy", "reclag_ood_probability", "reclag_is_ood",
            "reclag_attractor", "reclag_p_value", "reclag_explain"}
    assert set(names) == want
    listed = ctx.sql(
        "SELECT routine_name, routine_type FROM information_schema.routines "
        "WHERE routine_name LIKE 'reclag%'"
    ).to_pydict()
    assert set(listed["routine_name"]) == want
    assert set(listed["routine_type"]) == {"FUNCTION"}
    # SHOW FUNCTIONS reads information_schema.parameters, which has no rows for
    # functions that cross the FFI (user-defined signatures): if a datafusion release
    # starts listing them, the README's note is out of date.
    shown = ctx.sql("SHOW FUNCTIONS LIKE 'reclag%'").to_pydict()["function_name"]
    assert shown == [], "SHOW FUNCTIONS lists FFI functions now: update the README and docs"
    # The documentation, from reclag.datafusion.functions().
    docs = rdf.functions().to_pydict()
    assert set(docs["name"]) == want
    for name, syntax, desc in zip(docs["name"], docs["syntax"], docs["description"]):
        assert syntax and f"{name}(" in syntax, (name, syntax)
        assert desc and len(desc) > 20, (name, desc)


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
