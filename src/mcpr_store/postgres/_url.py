"""PostgreSQL URLs: telling them from paths, and printing them without their secrets.

Owns the rule for what counts as a PostgreSQL URL and the masking of every URL we print
(logs, errors, ``stats()``). It must never import psycopg: the core decides "path or URL"
with it, and the core runs without the ``postgres`` extra.

Masking works on the text, not on a successful parse: a URL that ``urllib`` cannot parse
(a bad port, an unquoted ``@`` in the password) is exactly the one a user gets wrong, and
its error message must not leak the password either.
"""

from __future__ import annotations

import re
from typing import Final
from urllib.parse import parse_qsl, unquote, urlencode

__all__ = ["SCHEMES", "is_postgres_url", "mask_url", "scrub", "url_scheme"]

#: The schemes libpq accepts for a connection URI.
SCHEMES: Final = ("postgresql", "postgres")

MASK: Final = "***"

_SCHEME: Final = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
#: Query parameters whose value is a secret (libpq: ``password``, ``sslpassword``).
_SECRET_PARAMS: Final = frozenset({"password", "sslpassword"})


def url_scheme(text: str) -> str | None:
    """The scheme of ``text`` when it reads as a URL (``scheme://...``), else None.

    A path never starts with ``scheme://``, so a caller can refuse an unknown scheme
    instead of creating a directory named after it.
    """
    match = _SCHEME.match(text)
    return match.group(1).lower() if match else None


def is_postgres_url(text: str) -> bool:
    """True for a ``postgresql://`` or ``postgres://`` URL (any case of the scheme)."""
    return url_scheme(text) in SCHEMES


def mask_url(url: str) -> str:
    """``url`` with its password (in the user info or a query parameter) replaced by
    ``***``; everything else as given. Never raises, whatever the text."""
    match = _SCHEME.match(url)
    if not match:
        return url
    head, rest = url[:match.end()], url[match.end():]
    # The authority ends at the first '/', '?' or '#'; but an unquoted '@' or '/' in a
    # password is a common mistake, so the user info ends at the *last* '@' before the path.
    path_at = len(rest)
    for sep in "?#":
        if sep in rest:
            path_at = min(path_at, rest.index(sep))
    at = rest.rfind("@", 0, path_at)
    if at >= 0:
        userinfo, rest = rest[:at], rest[at:]
        if ":" in userinfo:
            userinfo = userinfo.split(":", 1)[0] + ":" + MASK
        head += userinfo
    if "?" in rest:
        base, _, query = rest.partition("?")
        query, hash_mark, fragment = query.partition("#")
        rest = base + "?" + _mask_query(query) + hash_mark + fragment
    return head + rest


def _mask_query(query: str) -> str:
    pairs = parse_qsl(query, keep_blank_values=True)
    if not any(key.lower() in _SECRET_PARAMS for key, _ in pairs):
        return query
    return urlencode([(key, MASK if key.lower() in _SECRET_PARAMS else value)
                      for key, value in pairs], safe="*")


def _secrets_of(url: str) -> list[str]:
    """The password texts of ``url`` (as written and percent-decoded), longest first."""
    found: set[str] = set()
    match = _SCHEME.match(url)
    if not match:
        return []
    rest = url[match.end():]
    query_at = rest.find("?")
    authority = rest if query_at < 0 else rest[:query_at]
    at = authority.rfind("@")
    if at >= 0 and ":" in authority[:at]:
        found.add(authority[:at].split(":", 1)[1])
    if query_at >= 0:
        for key, value in parse_qsl(rest[query_at + 1:].partition("#")[0],
                                    keep_blank_values=True):
            if key.lower() in _SECRET_PARAMS:
                found.add(value)
    found |= {unquote(secret) for secret in found}
    return sorted((s for s in found if s), key=len, reverse=True)


def scrub(message: str, url: str) -> str:
    """``message`` with any password of ``url`` in it replaced by ``***``.

    libpq's messages do not quote passwords, but a message we did not write is not
    trusted to keep that promise.
    """
    for secret in _secrets_of(url):
        message = message.replace(secret, MASK)
    return message
