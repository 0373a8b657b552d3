"""The CLI and the config files: every command documented and with --help; a bad config
key refused at start with its name."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from central.app import CentralConfig, database_target
from gateway.app import GatewayConfig, load_config
from ops.cli import SIMULATORS, build_parser
from runtime import config

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def subcommands() -> list[str]:
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return sorted(action.choices)  # type: ignore[arg-type]


@pytest.mark.parametrize("cmd", subcommands())
def test_every_command_is_in_the_readme_and_has_help(cmd: str) -> None:
    assert f"storegate {cmd}" in README, f"README does not document `storegate {cmd}`"
    out = subprocess.run(
        [sys.executable, "-m", "ops.cli", cmd, "--help"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert "usage: storegate" in out.stdout


def test_every_simulator_is_in_the_readme() -> None:
    for kind in SIMULATORS:
        assert f"`{kind}`" in README, f"simulator {kind} missing from README"


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.toml"
    p.write_text(text)
    return p


@pytest.mark.parametrize(
    ("text", "key", "reason"),
    [
        ('gateway_id = "s1"\n[mqtt]\nport = "1883"\n', "mqtt.port", "expected int, got str"),
        ('gateway_id = "s1"\n[mqtt]\nprot = 1\n', "mqtt.prot", "unknown key"),
        ("customer = 'x'\n", "gateway_id", "missing required key"),
        ('gateway_id = "Store 1"\n', "gateway_id", "not a valid gateway id"),
        (
            'gateway_id = "s1"\n[[serial_scanners]]\nport = "/dev/ttyS0"\n',
            "serial_scanners[0].device_id",
            "missing",
        ),
        ('gateway_id = "s1"\n[sync]\nwindow = true\n', "sync.window", "expected int, got bool"),
    ],
)
def test_bad_gateway_config_names_the_key(tmp_path: Path, text: str, key: str, reason: str) -> None:
    with pytest.raises(config.ConfigError) as ei:
        load_config(write(tmp_path, text))
    assert ei.value.key == key and reason in ei.value.reason


def test_bad_central_config_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(config.ConfigError) as ei:
        config.load(CentralConfig, write(tmp_path, "[allocation.priority]\norder = ['grade', 'luck']\n"))
    assert ei.value.key == "allocation.priority" and "luck" in ei.value.reason


def test_not_toml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(config.ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "gateway_id = \n"))
    with pytest.raises(config.ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml")


def test_readme_example_configs_load(tmp_path: Path) -> None:
    blocks = README.split("```toml\n")[1:]
    gw_text, central_text = (b.split("```")[0] for b in blocks[:2])
    assert load_config(write(tmp_path, gw_text)).gateway_id == "store-001"
    assert config.load(CentralConfig, write(tmp_path, central_text)).broker.port == 1883
    assert isinstance(GatewayConfig, type)
    lite = config.load(CentralConfig, write(tmp_path, central_text))
    assert database_target(lite) == Path("var/central/central.db")
    pg_text = blocks[2].split("```")[0]
    pg = config.load(CentralConfig, write(tmp_path, pg_text))
    assert database_target(pg) == "postgresql://storegate@db.example.net:5432/storegate"


def test_central_database_url_must_be_a_database_url(tmp_path: Path) -> None:
    with pytest.raises(config.ConfigError, match="database: url 'mysql://x': a postgresql://"):
        config.load(CentralConfig, write(tmp_path, '[database]\nurl = "mysql://x"\n'))


def test_cli_reports_config_error_with_exit_2(tmp_path: Path) -> None:
    cfg = write(tmp_path, 'gateway_id = "s1"\n[http]\nport = "x"\n')
    out = subprocess.run(
        [sys.executable, "-m", "ops.cli", "gateway", "--config", str(cfg)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert out.returncode == 2 and "config error: http.port: expected int, got str" in out.stderr
