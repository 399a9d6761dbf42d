"""The API key check every genlab HTTP service makes: ``Authorization: Bearer <GENLAB_API_KEY>``.

One rule for the serving API and the evaluation-jobs service: with ``GENLAB_API_KEY`` set, every
route but the health probes needs the key, compared in constant time; a refusal is a 401 with
``WWW-Authenticate: Bearer`` and the JSON error body ``{"error", "field": "Authorization"}``.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable

API_KEY_ENV = "GENLAB_API_KEY"
HEALTH_PATHS = ("/livez", "/readyz", "/healthz")  # answered without a key (probes)
REFUSAL = "missing or wrong API key: send 'Authorization: Bearer <key>'"


def bearer_matches(authorization: bytes | str | None, api_key: bytes | str) -> bool:
    """Whether an Authorization header value carries ``api_key`` as its bearer token."""
    if isinstance(authorization, str):
        authorization = authorization.encode("latin-1", "replace")
    if isinstance(api_key, str):
        api_key = api_key.encode()
    scheme, _, token = (authorization or b"").partition(b" ")
    return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), api_key)


def headers_authorized(headers: Iterable[tuple[bytes, bytes]], api_key: bytes | str) -> bool:
    """Whether an ASGI request's ``headers`` carry ``api_key`` (no key set: every request is authorized)."""
    if not api_key:
        return True
    found = next((value for name, value in headers if name.lower() == b"authorization"), None)
    return bearer_matches(found, api_key)
