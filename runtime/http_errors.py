"""The HTTP answer for a full disk, shared by the gateway's and central's error middlewares.

A full disk is the server's trouble, not the client's: ``507 Insufficient Storage`` with a
JSON reason and ``Retry-After``. Nothing of the request was recorded, so the client sends it
again later; the process recovers by itself once space returns (``runtime.sqlitedb``).
"""

from __future__ import annotations

from aiohttp import web

from runtime.sqlitedb import StorageFull

# What a client is told to wait before sending again while the disk is full (the process
# probes for space every runtime.sqlitedb.STORAGE_PROBE_S).
RETRY_AFTER_S = 15


def storage_full_response(e: StorageFull) -> web.Response:
    return web.json_response(
        {
            "error": "storage full: nothing was recorded, send again later",
            "code": "storage_full",
            "reason": e.reason,
            "retry_after_s": RETRY_AFTER_S,
        },
        status=507,
        headers={"Retry-After": str(RETRY_AFTER_S)},
    )
