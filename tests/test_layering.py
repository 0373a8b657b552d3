"""The layering, read from the source with ``ast``: every ``import``/``from ... import`` (at
module level or inside a function) and every ``importlib.import_module("...")`` with a literal
name counts as an arrow. The layers, bottom up:

- ``protocols/`` (wire formats, sans-IO) is the floor: it imports no other package and no I/O
  (asyncio, sqlite, MQTT, serial, evdev).
- ``runtime/`` (durable SQLite, config, metrics, MQTT client, retry, clock, the bounded JSON
  body reader) stands on ``protocols/`` only (``jsonbody`` reads with ``protocols.bounded``).
- ``gateway/`` and ``central/`` stand on both; they never import each other, ``ops/`` or
  ``firmware_sim/``.
- ``firmware_sim/`` speaks only ``protocols/`` (it must not share code with the adapters it
  tests, nor lean on the processes' infrastructure).
- ``ops/`` (CLI, demo, broker, benchmarks) may import anything; nothing imports it but the
  entry point and tests.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("protocols", "runtime", "gateway", "central", "firmware_sim", "ops")
# What each package may not import: the first-party packages outside its allowed set, and
# for protocols the I/O libraries DESIGN.md names.
FORBIDDEN: dict[str, set[str]] = {
    "protocols": {"runtime", "gateway", "central", "firmware_sim", "ops"}
    | {"asyncio", "sqlite3", "sqlite_utils", "aiomqtt", "paho", "serial", "evdev", "aiohttp"},
    "runtime": {"gateway", "central", "firmware_sim", "ops"},
    "gateway": {"central", "firmware_sim", "ops"},
    "central": {"gateway", "firmware_sim", "ops"},
    "firmware_sim": {"runtime", "gateway", "central", "ops"},
    "ops": set(),
}


def imports_of(source: str, pkg: tuple[str, ...]) -> list[tuple[int, str]]:
    """(line, module) for every import in one file of package ``pkg``, relative ones resolved."""
    tree = ast.parse(source)
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(pkg[: len(pkg) - node.level + 1])
                mod = f"{base}.{node.module}" if node.module else base
            else:
                mod = node.module or ""
            out.append((node.lineno, mod))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            out.append((node.lineno, node.args[0].value))
    return out


def arrows() -> list[tuple[str, str, int, str]]:
    """(package, file, line, imported top-level name) over every package's source."""
    out = []
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            rel = str(path.relative_to(ROOT))
            found = imports_of(path.read_text(encoding="utf-8"), path.relative_to(ROOT).parts[:-1])
            out += [(pkg, rel, line, mod.split(".")[0]) for line, mod in found]
    return out


def test_every_package_is_known() -> None:
    """A new top-level package has to be given its place in the layering here."""
    found = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"tests"}
    assert found == set(PACKAGES)


@pytest.mark.parametrize("pkg", PACKAGES)
def test_no_forbidden_arrow(pkg: str) -> None:
    bad = [f"{f}:{line} imports {mod}" for p, f, line, mod in arrows() if p == pkg and mod in FORBIDDEN[pkg]]
    assert not bad, f"{pkg}/ may not import {sorted(FORBIDDEN[pkg])}:\n" + "\n".join(bad)


def test_firmware_sim_speaks_only_protocols() -> None:
    first_party = set(PACKAGES)
    bad = [
        f"{f}:{line} imports {mod}"
        for p, f, line, mod in arrows()
        if p == "firmware_sim" and mod in first_party and mod not in {"protocols", "firmware_sim"}
    ]
    assert not bad, "\n".join(bad)


STAGES = ("intake", "orders", "allocate", "fulfil")


def test_central_stages_never_reach_up_into_the_web_or_the_process() -> None:
    """central/'s stages hold the order's rules; the REST layer (``central.web``) and the
    process (``central.app``) stand on them, never the other way round."""
    bad = []
    for stage in STAGES:
        for path in sorted((ROOT / "central" / stage).rglob("*.py")):
            found = imports_of(path.read_text(encoding="utf-8"), path.relative_to(ROOT).parts[:-1])
            bad += [
                f"{path.relative_to(ROOT)}:{line} imports {mod}"
                for line, mod in found
                if mod in {"central.app", "central.web"} or mod.startswith("central.web.")
            ]
    assert not bad, "\n".join(bad)


def test_central_keeps_no_process_wide_state_and_looks_nothing_up() -> None:
    """central/ is wired in one place (``central.wiring``, ``central.app``): no module rebinds
    a global at run time and none finds another by name (``importlib``)."""
    bad = []
    for path in sorted((ROOT / "central").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        rel = path.relative_to(ROOT)
        bad += [
            f"{rel}:{n.lineno} global {', '.join(n.names)}"
            for n in ast.walk(tree)
            if isinstance(n, ast.Global)
        ]
        found = imports_of(path.read_text(encoding="utf-8"), rel.parts[:-1])
        bad += [f"{rel}:{line} imports importlib" for line, mod in found if mod.split(".")[0] == "importlib"]
    assert not bad, "\n".join(bad)


def test_the_checker_sees_every_kind_of_import() -> None:
    """The reader itself: module-level, in a function, relative, and importlib with a literal."""
    src = (
        "import ops.cli\n"
        "from gateway import app\n"
        "def f():\n"
        "    from firmware_sim import pos\n"
        "    import importlib\n"
        "    return importlib.import_module('ops.demo')\n"
        "from . import lifecycle\n"
        "from .allocate import waves\n"
    )
    mods = [m for _, m in imports_of(src, ("central", "orders"))]
    expected = {"ops.cli", "gateway", "central.orders", "central.orders.allocate", "firmware_sim"}
    assert set(mods) == expected | {"importlib", "ops.demo"}
