"""Who is calling: an API key from `Authorization: Bearer <key>` or Basic with the key as user."""

from __future__ import annotations

import base64
import binascii

from starlette.requests import Request

from api.context import Caller
from api.spec import ApiError
from hooks import apikeys
from runtime.store import Store


def authenticate(store: Store, request: Request) -> Caller:
    secret = _secret_from(request.headers.get("authorization", ""))
    found = apikeys.verify(store, secret)
    if found is None:
        raise ApiError(401, "unauthorized", "invalid, revoked or expired API key")
    key, user = found
    return Caller(user, key)


def _secret_from(header: str) -> str:
    scheme, _, value = header.strip().partition(" ")
    if not scheme:
        raise ApiError(401, "unauthorized", "no API key: send 'Authorization: Bearer <key>' (or curl -u KEY:)")
    if scheme.lower() == "bearer":
        return value.strip()
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise ApiError(401, "unauthorized", "malformed Basic credentials") from None
        return decoded.partition(":")[0]
    raise ApiError(401, "unauthorized", f"unsupported authorization scheme {scheme[:20]!r}: use Bearer or Basic")
