"""PostgreSQL URLs: what counts as one, and that no password is ever printed."""

from __future__ import annotations

import pytest

from mcpr_store.postgres import is_postgres_url, mask_url, url_scheme
from mcpr_store.postgres._url import scrub


@pytest.mark.parametrize("text", [
    "postgresql://u:p@h/db", "postgres://h/db", "POSTGRESQL://h", "postgresql://",
    "postgresql:///db?host=/run/postgresql",
])
def test_is_postgres_url__accepts_both_schemes(text: str) -> None:
    assert is_postgres_url(text)


@pytest.mark.parametrize("text", [
    "store.db", "/var/lib/mcpr/store.db", "postgresql:", "postgresql:/x", "./postgresql://x",
    "sqlite:///x.db", "mysql://u:p@h/db", "", "~/.mcpr/store.db",
])
def test_is_postgres_url__refuses_paths_and_other_schemes(text: str) -> None:
    assert not is_postgres_url(text)


def test_url_scheme__names_other_schemes_and_none_for_paths() -> None:
    assert url_scheme("mysql://u:p@h/db") == "mysql"
    assert url_scheme("Postgres://h") == "postgres"
    assert url_scheme("/tmp/x.db") is None
    assert url_scheme("postgresql:") is None


@pytest.mark.parametrize(("url", "masked"), [
    ("postgresql://alice:s3cret@db.example:5432/mcpr",
     "postgresql://alice:***@db.example:5432/mcpr"),
    ("postgresql://alice:p%40ss%2Fw@h/db", "postgresql://alice:***@h/db"),
    # An unquoted '@' or '/' in the password: the user info ends at the last '@'.
    ("postgresql://alice:p@ss/w@h/db", "postgresql://alice:***@h/db"),
    ("postgres://alice:s3cret@h/db?sslmode=require&password=s3cret",
     "postgres://alice:***@h/db?sslmode=require&password=***"),
    ("postgresql://h/db?user=alice&password=s3cret&sslpassword=s3cret2",
     "postgresql://h/db?user=alice&password=***&sslpassword=***"),
    ("postgresql://alice@h/db", "postgresql://alice@h/db"),
    ("postgresql://h:notaport/db", "postgresql://h:notaport/db"),
    ("postgresql://alice:s3cret@h:notaport/db", "postgresql://alice:***@h:notaport/db"),
    ("postgresql://alice:@h/db", "postgresql://alice:***@h/db"),
    ("/var/lib/store.db", "/var/lib/store.db"),
])
def test_mask_url__hides_passwords_and_keeps_the_rest(url: str, masked: str) -> None:
    assert mask_url(url) == masked
    assert "s3cret" not in mask_url(url)


def test_scrub__removes_a_password_quoted_or_not_from_any_message() -> None:
    url = "postgresql://alice:p%40ss%2Fw0rd@h/db"
    message = "failed for p%40ss%2Fw0rd and for p@ss/w0rd"
    assert scrub(message, url) == "failed for *** and for ***"
    assert scrub("nothing secret", "postgresql://h/db") == "nothing secret"


def test_config_reprs__mask_the_password() -> None:
    """A config is what gets logged (and what a traceback's locals show): its repr masks
    the password like every message does."""
    from mcpr_store import StoreConfig
    from mcpr_store._config import FileConfig
    from mcpr_store._launch import WriterSpec

    url = "postgresql://user:SECRET@db.example/mcpr?sslpassword=KEY2"
    shown = [repr(StoreConfig(db_path=url, batch_size=7)), str(FileConfig(path=url)),
             repr(WriterSpec(None, None, url, "v", 1, 0.2, 500, "token"))]
    for text in shown:
        assert "SECRET" not in text and "KEY2" not in text, text
        assert "user:***@db.example/mcpr?sslpassword=***" in text, text
    assert "batch_size=7" in shown[0] and "mcpr_version='unknown'" in shown[0]
    assert repr(StoreConfig(db_path="/var/x.db")).startswith("StoreConfig(db_path='/var/x.db'")
