"""Reading a JSON request body in one bounded way, for every aiohttp app (a gateway's order
entry, central's REST API).

:func:`json_object` reads at most ``max_bytes`` and parses with
:func:`protocols.bounded.json_loads` (nesting, integers to 64 bits, no non-finite numbers).
A body it refuses is answered by the exception it raises, a JSON error like every other one
of these APIs: ``{"error": "<reason>"}`` with 400 (not JSON, too deep, a number out of range,
not an object) or 413 (too large). No body can make a view answer a bare 500.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from protocols.bounded import JsonError, json_loads

MAX_BODY = 256 * 1024


def _refused(reason: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(text=json.dumps({"error": reason}), content_type="application/json")


def _too_large(max_bytes: int, size: float) -> web.HTTPRequestEntityTooLarge:
    reason = f"body: larger than {max_bytes} bytes"
    return web.HTTPRequestEntityTooLarge(
        max_bytes, size, text=json.dumps({"error": reason}), content_type="application/json"
    )


async def json_object(request: web.Request, *, max_bytes: int = MAX_BODY) -> dict[str, Any]:
    """The request body as one JSON object; raises ``HTTPBadRequest`` / ``HTTPRequestEntityTooLarge``
    (a JSON ``{"error": reason}`` answer) for anything else."""
    if request.content_length is not None and request.content_length > max_bytes:
        raise _too_large(max_bytes, request.content_length)
    try:
        data = await request.read()  # at most the app's client_max_size
    except web.HTTPRequestEntityTooLarge:
        raise _too_large(max_bytes, request.content_length or 0) from None
    if len(data) > max_bytes:
        raise _too_large(max_bytes, len(data))
    try:
        doc = json_loads(data, max_bytes=max_bytes)
    except JsonError as e:
        raise _refused(f"body: {e.reason}") from None
    if not isinstance(doc, dict):
        raise _refused(f"body: expected a JSON object, got {_json_type(doc)}")
    return doc


def _json_type(v: object) -> str:
    if isinstance(v, bool):
        return "true/false"
    if isinstance(v, int | float):
        return "a number"
    return {str: "a string", list: "an array", type(None): "null"}.get(type(v), type(v).__name__)
