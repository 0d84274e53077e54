"""api/auth.py: the token comparison and the header / cookie rules of every authenticated route."""

from __future__ import annotations

import pytest
from fastapi import HTTPException
from starlette.requests import Request

from pipewave.api.auth import COOKIE, CSRF_HEADER, bearer, check, token_matches

TOKEN = "s3cret-token"


def request(method: str = "GET", headers: dict[str, str] | None = None,
            cookies: dict[str, str] | None = None) -> Request:
    raw = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    if cookies:
        raw.append((b"cookie", "; ".join(f"{k}={v}" for k, v in cookies.items()).encode()))
    return Request({"type": "http", "method": method, "path": "/api/v1/jobs", "query_string": b"",
                    "headers": raw})


def refused(req: Request) -> str:
    """The 401's detail (and it asks for a bearer token)."""
    with pytest.raises(HTTPException) as err:
        check(req, TOKEN)
    assert err.value.status_code == 401
    assert err.value.headers == {"WWW-Authenticate": "Bearer"}
    return str(err.value.detail)


def test_token_matches_only_the_same_token() -> None:
    assert token_matches(TOKEN, TOKEN)
    assert token_matches("ünï-çødé", "ünï-çødé")  # compared as UTF-8 bytes
    for other in (None, "", "s3cret", TOKEN + " ", TOKEN.upper(), "x" * len(TOKEN)):
        assert not token_matches(other, TOKEN)


@pytest.mark.parametrize(("header", "expected"), [
    ("Bearer abc", "abc"),
    ("bearer abc", "abc"),  # the scheme in any case
    ("BEARER  abc ", "abc"),  # spaces around the token
    ("Bearer a b", "a b"),
    ("Basic abc", None),
    ("Bearer", None),
    ("Bearer    ", None),
    ("abc", None),
    ("", None),
])
def test_bearer_reads_the_authorization_header(header: str, expected: str | None) -> None:
    assert bearer(request(headers={"Authorization": header})) == expected


def test_bearer_without_the_header() -> None:
    assert bearer(request()) is None


@pytest.mark.parametrize("method", ["GET", "POST", "DELETE"])
def test_the_right_bearer_token_passes_any_method(method: str) -> None:
    check(request(method, {"Authorization": f"Bearer {TOKEN}"}), TOKEN)


def test_a_wrong_bearer_token_is_refused_even_with_a_good_cookie() -> None:
    req = request("GET", {"Authorization": "Bearer wrong"}, {COOKIE: TOKEN})
    assert refused(req) == "invalid API token"


@pytest.mark.parametrize("method", ["GET", "HEAD", "OPTIONS"])
def test_the_cookie_alone_may_read(method: str) -> None:
    check(request(method, cookies={COOKIE: TOKEN}), TOKEN)


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
def test_the_cookie_must_bring_the_csrf_header_to_change_anything(method: str) -> None:
    assert refused(request(method, cookies={COOKIE: TOKEN})) == (
        f"a request authenticated by cookie must send the {CSRF_HEADER}: 1 header")
    assert refused(request(method, {CSRF_HEADER: "true"}, {COOKIE: TOKEN})).startswith(
        "a request authenticated by cookie")  # only "1" counts
    check(request(method, {CSRF_HEADER: "1"}, {COOKIE: TOKEN}), TOKEN)


def test_no_token_or_a_wrong_cookie_is_refused_with_how_to_send_one() -> None:
    missing = ("missing API token: send 'Authorization: Bearer <token>' "
               "(the token is in $PIPEWAVE_HOME/api-token or $PIPEWAVE_API_TOKEN)")
    assert refused(request("GET")) == missing
    assert refused(request("GET", cookies={COOKIE: "wrong"})) == missing
    assert refused(request("POST", {CSRF_HEADER: "1"}, {COOKIE: "wrong"})) == missing
    assert refused(request("GET", {"Authorization": "Basic " + TOKEN})) == missing
    assert refused(request("GET", cookies={"other_cookie": TOKEN})) == missing
