"""The real services the tests start (tests/services.py): PostgreSQL answers a query, moto's S3 stores and returns
an object through pyarrow, both with explicit settings and through the environment."""

from __future__ import annotations

import os
import uuid
from urllib.parse import urlsplit

import pytest

from services import fresh_database, sqlalchemy_url


def test_postgres_answers_with_a_password(postgres_url: str) -> None:
    psycopg = pytest.importorskip("psycopg")
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    if not os.environ.get("LOOM_TEST_POSTGRES_URL"):  # the private server asks for the password over TCP
        wrong = postgres_url.replace(f":{urlsplit(postgres_url).password}@", ":wrong@", 1)
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(wrong).close()


def test_a_fresh_database_through_sqlalchemy(postgres_url: str) -> None:
    sa = pytest.importorskip("sqlalchemy")
    url = fresh_database(postgres_url, f"loom_fresh_{uuid.uuid4().hex[:8]}")
    engine = sa.create_engine(sqlalchemy_url(url))
    try:
        with engine.begin() as conn:
            assert conn.execute(sa.text("SELECT current_database()")).scalar() == url.rsplit("/", 1)[1]
            assert conn.execute(sa.text("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")).scalar() == 0
    finally:
        engine.dispose()


def test_s3_put_and_get_through_pyarrow(s3_server, monkeypatch: pytest.MonkeyPatch) -> None:
    from pyarrow import fs

    bucket = s3_server.bucket(f"loom-{uuid.uuid4().hex[:8]}")
    explicit = fs.S3FileSystem(endpoint_override=s3_server.endpoint, scheme="http", access_key=s3_server.access_key,
                               secret_key=s3_server.secret_key, region=s3_server.region)
    with explicit.open_output_stream(f"{bucket}/a/one.txt") as out:
        out.write(b"one")
    assert explicit.open_input_stream(f"{bucket}/a/one.txt").read() == b"one"

    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    # a URI naming the endpoint (credentials from the environment) ...
    by_uri, path = fs.FileSystem.from_uri(s3_server.uri(f"{bucket}/a"))
    assert path == f"{bucket}/a" and by_uri.open_input_stream(f"{path}/one.txt").read() == b"one"
    # ... and a bare s3:// URI: pyarrow's from_uri takes the endpoint from AWS_ENDPOINT_URL
    bare, path = fs.FileSystem.from_uri(f"s3://{bucket}/b")
    with bare.open_output_stream(f"{path}/two.txt") as out:
        out.write(b"two")
    assert explicit.open_input_stream(f"{bucket}/b/two.txt").read() == b"two"
    assert s3_server.client().get_object(Bucket=bucket, Key="b/two.txt")["Body"].read() == b"two"
