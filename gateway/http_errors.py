"""Domain errors -> HTTP answers, in one place: the middleware every gateway endpoint (order
entry, POS, receipts, stock) runs under.

A full disk answers ``507 Insufficient Storage`` with a JSON reason and ``Retry-After``
(``runtime.http_errors``): nothing of the request was recorded, the device sends it again later.
"""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.typedefs import Handler

from runtime.http_errors import storage_full_response
from runtime.sqlitedb import StorageFull

log = logging.getLogger(__name__)


@web.middleware
async def domain_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except StorageFull as e:
        # the database said it at ERROR when the disk filled up; every refusal is counted
        log.debug("%s %s refused: %s", request.method, request.path, e)
        return storage_full_response(e)
