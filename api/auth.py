"""Bearer-token auth for every route but /healthz (and the login page that sets the cookie).

API clients send ``Authorization: Bearer <token>``; the dashboard in a browser holds the token
in an HttpOnly, SameSite=Strict cookie set by ``/login``. A request authenticated by the cookie
alone must send ``X-Pipewave-Request: 1`` to change anything (a cross-site form cannot).
Tokens are compared in constant time.
"""

from __future__ import annotations

import hmac

from fastapi import HTTPException, Request, status

COOKIE = "pipewave_token"
CSRF_HEADER = "X-Pipewave-Request"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def token_matches(given: str | None, expected: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def check(request: Request, expected: str) -> None:
    """Raise 401 unless the request carries the token (header, or cookie within its limits)."""
    given = bearer(request)
    if given is not None:
        if token_matches(given, expected):
            return
        raise _unauthorized("invalid API token")
    cookie = request.cookies.get(COOKIE)
    if cookie is not None and token_matches(cookie, expected):
        if request.method in SAFE_METHODS or request.headers.get(CSRF_HEADER) == "1":
            return
        raise _unauthorized(f"a request authenticated by cookie must send the {CSRF_HEADER}: 1 header")
    raise _unauthorized("missing API token: send 'Authorization: Bearer <token>' "
                        "(the token is in $PIPEWAVE_HOME/api-token or $PIPEWAVE_API_TOKEN)")


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, detail=detail,
                         headers={"WWW-Authenticate": "Bearer"})
