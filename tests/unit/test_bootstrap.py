from ingest.bootstrap import database_url_from_secret


def test_a_secret_in_rds_json_form_becomes_a_libpq_string():
    url = database_url_from_secret(
        '{"username": "fn", "password": "p w\\"x", "host": "db.example", "port": 5433, "dbname": "ingest"}'
    )
    assert "host=db.example" in url and "port=5433" in url and "dbname=ingest" in url and "sslmode=require" in url
    assert "password='p w\"x'" in url or "password='p w\\\"x'" in url


def test_a_secret_holding_a_url_is_taken_as_it_is():
    assert database_url_from_secret(" postgresql://a:b@h/d \n") == "postgresql://a:b@h/d"


def test_the_function_takes_pyarrows_jemalloc_pool_unless_the_environment_names_one(monkeypatch):
    import pyarrow as pa

    from ingest import bootstrap

    before = pa.default_memory_pool()
    try:
        monkeypatch.setenv("ARROW_DEFAULT_MEMORY_POOL", before.backend_name)
        bootstrap.compact_arrow_memory()
        assert pa.default_memory_pool().backend_name == before.backend_name
        monkeypatch.delenv("ARROW_DEFAULT_MEMORY_POOL")
        bootstrap.compact_arrow_memory()
        assert pa.default_memory_pool().backend_name == "jemalloc"
    finally:
        pa.set_memory_pool(before)
