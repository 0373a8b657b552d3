"""USB-HID keyboard-wedge scanner simulator: writes real ``struct input_event`` records.

There is no /dev/uinput on the gateway test machines, so the simulator writes the records a
scanner would produce to a FIFO or file; point the gateway's HID adapter at the same path.

    storegate sim hid --path /tmp/hid0 --mkfifo --order 4006381333931:6 --order 96385074 --end
"""

from __future__ import annotations

import argparse
import os
import stat
import time
from collections.abc import Iterable
from pathlib import Path

from protocols.barcode import order_texts
from protocols.hid import Terminator, encode_text


def encode_scans(
    texts: Iterable[str],
    *,
    layout: str = "us",
    terminator: Terminator | str = Terminator.ENTER,
    gs_substitute: str | None = None,
    start: float | None = None,
) -> bytes:
    t = time.time() if start is None else start
    out = bytearray()
    for text in texts:
        out += encode_text(text, layout=layout, terminator=terminator, gs_substitute=gs_substitute, start=t)
        t += 0.05
    return bytes(out)


def write_scans(path: Path | str, texts: Iterable[str], **kw: object) -> int:
    """Write the key events for ``texts`` to ``path`` (FIFO or file, appended); bytes written."""
    data = encode_scans(texts, **kw)  # type: ignore[arg-type]
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
    finally:
        os.close(fd)
    return len(data)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="storegate sim hid", description=__doc__.split("\n")[0])
    p.add_argument("--path", required=True, help="FIFO or file the gateway HID adapter reads")
    p.add_argument("--mkfifo", action="store_true", help="create the FIFO if it does not exist")
    p.add_argument("--layout", default="us", help="keyboard layout the scanner types in (us, de)")
    p.add_argument("--terminator", default="enter", choices=["enter", "tab"])
    p.add_argument("--gs-substitute", default=None, help="character typed instead of GS (0x1D)")
    p.add_argument(
        "--order",
        action="append",
        default=[],
        metavar="GTIN[:QTY]",
        help="scan a shelf label (with a quantity code first)",
    )
    p.add_argument("--location", default=None, help="store location on the shelf labels (AI 91)")
    p.add_argument("--end", action="store_true", help="scan SG-END after the labels")
    p.add_argument("text", nargs="*", help="raw scans to type (Python escapes allowed, e.g. \\x1d)")
    a = p.parse_args(argv)
    path = Path(a.path)
    if a.mkfifo and not path.exists():
        os.mkfifo(path)
    if path.exists() and stat.S_ISFIFO(path.stat().st_mode):
        print(f"waiting for a reader on {path} ...", flush=True)
    texts = [t.encode().decode("unicode_escape") for t in a.text]
    texts += order_texts(a.order, end=a.end, location=a.location)
    n = write_scans(path, texts, layout=a.layout, terminator=a.terminator, gs_substitute=a.gs_substitute)
    print(f"typed {len(texts)} scans ({n} bytes of input_event records) into {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
