"""Models on an object store: a real S3 server (moto) on loopback, the CLI's variables."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import polars as pl
import pyarrow.parquet as pq
import pytest
from datafusion import SessionContext

import reclag
import reclag.datafusion as rdf
import reclag.polars as rp

from conftest import _missing

BUCKET = "models"


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server on a free loopback port with one bucket; yields a boto3 client."""
    try:
        import boto3
        import moto.server  # noqa: F401
    except ImportError:
        _missing("moto[server] in this environment (udfs/python/ci.sh installs it)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail(f"moto did not start on port {port}")
            time.sleep(0.1)
    endpoint = f"http://127.0.0.1:{port}"
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="test",
        aws_secret_access_key="test",
        region_name="us-east-1",
    )
    client.create_bucket(Bucket=BUCKET)
    client.endpoint = endpoint
    yield client
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def aws(s3, monkeypatch):
    """The variables the CLI reads for that server, set in this process (and so for
    the CLI it starts)."""
    for k, v in {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": s3.endpoint,
        "AWS_ALLOW_HTTP": "true",
    }.items():
        monkeypatch.setenv(k, v)
    return s3


def test_load_from_s3_is_the_local_model(aws, model_path):
    key = "a/m.parquet"
    aws.upload_file(str(model_path), BUCKET, key)
    url = f"s3://{BUCKET}/{key}"
    m = reclag.load(url)
    local = reclag.load(model_path)
    assert m.sha256 == local.sha256
    assert m.path == url
    assert repr(m) == repr(local)


def test_save_to_s3_is_read_by_the_cli(aws, model_path, cli, suite, tmp_path):
    url = f"s3://{BUCKET}/saved/m.parquet"
    local = reclag.load(model_path)
    local.save(url)
    assert local.path == url
    body = aws.get_object(Bucket=BUCKET, Key="saved/m.parquet")["Body"].read()
    assert body == model_path.read_bytes()
    # The CLI reads the same object with the same variables.
    assert cli("inspect", url).strip() == repr(local).strip()
    out = tmp_path / "scored.parquet"
    cli("score", "--model", url, "--input", suite / "id_test.parquet", "--output", out)
    got = local.score(pq.read_table(suite / "id_test.parquet"))
    assert pq.read_table(out).column("reclag_score").equals(got.column("reclag_score"))


def test_polars_and_sql_take_a_url(aws, model_path, suite):
    url = f"s3://{BUCKET}/b/m.parquet"
    aws.upload_file(str(model_path), BUCKET, "b/m.parquet")
    local = reclag.load(model_path)
    t = pl.read_parquet(suite / "id_test.parquet").head(500)
    by_url = t.select(rp.score("embedding", url, group="label"))
    by_model = t.select(rp.score("embedding", local, group="label"))
    assert by_url.equals(by_model)
    assert by_url["reclag_score"].null_count() == 0

    q = "SELECT count(*) AS n FROM t WHERE reclag_is_ood('prod', embedding, label)"
    counts = []
    for model in (url, local):
        ctx = SessionContext()
        ctx.register_parquet("t", str(suite / "id_test.parquet"))
        rdf.register(ctx, models={"prod": model})
        counts.append(ctx.sql(q).to_pydict()["n"][0])
    assert counts[0] == counts[1] > 0


def test_store_errors_name_the_url(aws):
    missing = f"s3://{BUCKET}/nope/m.parquet"
    with pytest.raises(reclag.ReclagError, match=f"model {missing}: not found"):
        reclag.load(missing)
    with pytest.raises(reclag.ReclagError, match="no-such-bucket"):
        reclag.load("s3://no-such-bucket/m.parquet")
    aws.put_object(Bucket=BUCKET, Key="junk.parquet", Body=b"not a model")
    with pytest.raises(reclag.ReclagError, match=f"s3://{BUCKET}/junk.parquet"):
        reclag.load(f"s3://{BUCKET}/junk.parquet")
    with pytest.raises(reclag.ReclagError, match="s3://, gs://, az://"):
        reclag.load("ftp://host/m.parquet")
