from ingest.bootstrap import database_url_from_secret


def test_a_secret_in_rds_json_form_becomes_a_libpq_string():
    url = database_url_from_secret(
        '{"username": "fn", "password": "p w\\"x", "host": "db.example", "port": 5433, "dbname": "ingest"}'
    )
    assert "host=db.example" in url and "port=5433" in url and "dbname=ingest" in url and "sslmode=require" in url
    assert "password='p w\"x'" in url or "password='p w\\\"x'" in url


def test_a_secret_holding_a_url_is_taken_as_it_is():
    assert database_url_from_secret(" postgresql://a:b@h/d \n") == "postgresql://a:b@h/d"
