"""Broker security: who may connect to Mosquitto and which topics each identity may touch.

Everything lives under one ``etc`` directory (see :class:`SecurityPaths`)::

    etc/broker/passwd        mosquitto password file (PBKDF2-SHA512 hashes, never plaintext)
    etc/broker/acl           mosquitto ACL file (rendered by render_acl)
    etc/broker/dynamic-security.json  the dynamic-security plugin's file: refuses $share to
                             every listed user (ops, gateways); see deny_shared_subscriptions
    etc/central.toml         central's [broker] section with its credentials
    etc/ops-mqtt.toml        read-only monitoring credentials (status topics only)
    etc/gateways/<gw>.toml   one gateway config per provisioned gateway (ops/provision.py)
    etc/tls/                 CA, server certificate and key when the TLS listener is on

The ACL confines each gateway by *username pattern* (the gateway id IS its username), so
adding a gateway never changes the ACL - only the password file. Central and ops have
explicit ``user`` sections. ``central`` and ``ops`` are reserved: no gateway may use them.

Hashes are made by ``mosquitto_passwd -U`` on a private temporary file (the password never
appears on a command line); the password file is replaced atomically under a lock, so a
broker reloading it on SIGHUP (:func:`reload_broker`) never sees half a file.

Central's uplink subscription uses a secret share group (:func:`new_share_group`), written
only into central.toml, so no other client can join central's group.

``main()`` is ``storegate broker-init``: create the service credentials, the ACL, the broker's
data dir and optionally a test PKI, and write the mosquitto.conf to run with.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import grp
import json
import logging
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ops.broker import BrokerAuth, BrokerConfig, Mosquitto, TlsListener
from protocols import topics

log = logging.getLogger(__name__)

CENTRAL_USER = "central"
OPS_USER = "ops"
RESERVED_USERS = frozenset({CENTRAL_USER, OPS_USER})
BROKER_GROUP = "mosquitto"  # the Debian package's mosquitto drops privileges to this user/group
BROKER_USER = "mosquitto"

ROOT = topics.ROOT

# The three lines that confine every gateway to its own subtree; mosquitto substitutes %u
# with the connecting username (and skips the pattern for usernames holding + # or /).
GATEWAY_PATTERNS = (
    f"pattern write {ROOT}/%u/up",
    f"pattern write {ROOT}/%u/status",
    f"pattern read {ROOT}/%u/down",
)


class BrokerSecurityError(Exception):
    """Base class for broker security and provisioning errors."""


class PasswdToolError(BrokerSecurityError):
    def __init__(self, username: str, reason: str) -> None:
        super().__init__(f"mosquitto_passwd failed for user {username!r}: {reason}")
        self.username = username
        self.reason = reason


class AclError(BrokerSecurityError):
    def __init__(self, path: Path, missing: list[str]) -> None:
        super().__init__(f"ACL file {path} does not confine gateways; missing lines: {missing}")
        self.path = path
        self.missing = missing


class ReservedUserError(BrokerSecurityError):
    def __init__(self, name: str) -> None:
        super().__init__(f"{name!r} is reserved for a service user ({', '.join(sorted(RESERVED_USERS))})")
        self.name = name


# -- paths ------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class SecurityPaths:
    etc_dir: Path

    @property
    def broker_dir(self) -> Path:
        return self.etc_dir / "broker"

    @property
    def password_file(self) -> Path:
        return self.broker_dir / "passwd"

    @property
    def acl_file(self) -> Path:
        return self.broker_dir / "acl"

    @property
    def dynsec_file(self) -> Path:
        return self.broker_dir / "dynamic-security.json"

    @property
    def lock_file(self) -> Path:
        return self.broker_dir / ".lock"

    @property
    def central_config(self) -> Path:
        return self.etc_dir / "central.toml"

    @property
    def ops_config(self) -> Path:
        return self.etc_dir / "ops-mqtt.toml"

    @property
    def gateways_dir(self) -> Path:
        return self.etc_dir / "gateways"

    @property
    def tls_dir(self) -> Path:
        return self.etc_dir / "tls"

    def gateway_config(self, gateway_id: str) -> Path:
        return self.gateways_dir / f"{topics.check_gateway_id(gateway_id)}.toml"

    @property
    def auth(self) -> BrokerAuth:
        plugin = find_dynsec_plugin()
        return BrokerAuth(
            password_file=self.password_file,
            acl_file=self.acl_file,
            dynsec_plugin=plugin,
            dynsec_file=self.dynsec_file if plugin is not None else None,
        )


@contextlib.contextmanager
def locked(paths: SecurityPaths) -> Iterator[None]:
    """Serialise read-modify-write of the password file between provisioning runs."""
    paths.broker_dir.mkdir(parents=True, exist_ok=True)
    with open(paths.lock_file, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _broker_readable(path: Path) -> None:
    """0640, group mosquitto when we can: the broker (after dropping root) must read it."""
    os.chmod(path, 0o640)
    if os.geteuid() == 0:
        with contextlib.suppress(KeyError):
            os.chown(path, 0, grp.getgrnam(BROKER_GROUP).gr_gid)


def write_atomic(path: Path, text: str, *, mode: int = 0o600) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def toml_str(value: str) -> str:
    """A TOML basic string (JSON string escapes are a subset TOML accepts)."""
    return json.dumps(value)


# -- ACL --------------------------------------------------------------------------------
def render_acl(*, central_user: str = CENTRAL_USER, ops_user: str = OPS_USER) -> str:
    return "\n".join(
        [
            "# Storegate broker ACL (generated by ops/broker_security.py; see ops/BROKER.md).",
            "# Anything not granted here is denied.",
            "",
            "# Central: reads every gateway's uplink and status, writes every downlink; reads the",
            "# regional brokers' bridge states.",
            f"user {central_user}",
            f"topic read {ROOT}/+/up",
            f"topic read {ROOT}/+/status",
            f"topic write {ROOT}/+/down",
            f"topic read {topics.BRIDGE_STATE_SUBSCRIPTION}",
            "",
            "# Ops monitoring: gateway and bridge status only.",
            f"user {ops_user}",
            f"topic read {ROOT}/+/status",
            f"topic read {topics.BRIDGE_STATE_SUBSCRIPTION}",
            "",
            "# Every gateway (username = gateway id): its own uplink and status, its own downlink.",
            *GATEWAY_PATTERNS,
            "",
        ]
    )


def missing_acl_lines(text: str) -> list[str]:
    present = {" ".join(line.split()) for line in text.splitlines() if not line.lstrip().startswith("#")}
    return [line for line in GATEWAY_PATTERNS if line not in present]


def ensure_acl(path: Path) -> None:
    """Write the ACL if missing; refuse (AclError) an existing one that would not confine a gateway."""
    if not path.exists():
        write_atomic(path, render_acl(), mode=0o640)
        _broker_readable(path)
        return
    missing = missing_acl_lines(path.read_text())
    if missing:
        raise AclError(path, missing)


# -- dynamic security: refuse shared subscriptions ----------------------------------------
# Mosquitto's ACL file never checks a SUBSCRIBE. The dynamic-security plugin does, for the
# clients it lists; for anything its roles do not match it defers (all default accesses are
# false), so the ACL file and password file keep deciding everything else. Clients are listed
# without a password: authentication stays with the password file. The plugin reads its file
# at broker start only (not on SIGHUP); no client is granted $CONTROL, so the broker never
# rewrites it and these files remain the only source.
DYNSEC_PLUGIN_PATHS = (
    "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so",
    "/usr/lib/aarch64-linux-gnu/mosquitto_dynamic_security.so",
    "/usr/lib/mosquitto_dynamic_security.so",
    "/usr/local/lib/mosquitto_dynamic_security.so",
)
NO_SHARED_ROLE = "storegate-no-shared-subscriptions"


def find_dynsec_plugin() -> Path | None:
    for candidate in DYNSEC_PLUGIN_PATHS:
        if Path(candidate).exists():
            return Path(candidate)
    return None


def _empty_dynsec() -> dict[str, Any]:
    return {
        "defaultACLAccess": {
            "publishClientSend": False,
            "publishClientReceive": False,
            "subscribe": False,
            "unsubscribe": False,
        },
        "clients": [],
        "groups": [],
        "roles": [
            {
                "rolename": NO_SHARED_ROLE,
                "textdescription": "Storegate: no shared subscriptions (only central shares uplinks)",
                "acls": [{"acltype": "subscribePattern", "topic": "$share/#", "priority": 0, "allow": False}],
            }
        ],
    }


def dynsec_clients(path: Path) -> set[str]:
    if not path.exists():
        return set()
    clients = json.loads(path.read_text()).get("clients", [])
    return {c["username"] for c in clients if isinstance(c, dict) and "username" in c}


def deny_shared_subscriptions(paths: SecurityPaths, usernames: Sequence[str]) -> None:
    """List ``usernames`` in the dynamic-security file with the role refusing ``$share/...``.

    Takes effect at the broker's next start (the plugin does not reload on SIGHUP)."""
    with locked(paths):
        f = paths.dynsec_file
        data = json.loads(f.read_text()) if f.exists() else _empty_dynsec()
        roles = {r.get("rolename") for r in data.setdefault("roles", [])}
        if NO_SHARED_ROLE not in roles:
            data["roles"] += _empty_dynsec()["roles"]
        clients = data.setdefault("clients", [])
        known = {c.get("username") for c in clients}
        for user in usernames:
            if user == CENTRAL_USER:
                raise ReservedUserError(user)  # central's own shared subscription must stay allowed
            if user not in known:
                clients.append({"username": user, "roles": [{"rolename": NO_SHARED_ROLE}]})
        write_atomic(f, json.dumps(data, indent=2) + "\n", mode=0o640)
        _broker_readable(f)


# -- passwords --------------------------------------------------------------------------
def find_mosquitto_passwd() -> str:
    path = shutil.which("mosquitto_passwd") or (
        "/usr/bin/mosquitto_passwd" if Path("/usr/bin/mosquitto_passwd").exists() else None
    )
    if path is None:
        raise BrokerSecurityError("mosquitto_passwd not found: install the Debian package 'mosquitto'")
    return path


def new_password() -> str:
    return secrets.token_urlsafe(24)


def hash_line(username: str, password: str) -> str:
    """``username:$7$...`` as mosquitto_passwd makes it, without the password on a command line."""
    if not username or any(c in username for c in ":\n\r") or "\n" in password:
        raise PasswdToolError(username, "username may not be empty or hold ':' or newlines")
    with tempfile.TemporaryDirectory(prefix="sg-passwd-") as d:
        plain = Path(d) / "pw"
        fd = os.open(plain, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"{username}:{password}\n")
        proc = subprocess.run(
            [find_mosquitto_passwd(), "-U", str(plain)], capture_output=True, text=True, check=False
        )
        if proc.returncode != 0:
            raise PasswdToolError(username, (proc.stderr or proc.stdout).strip())
        line = plain.read_text().strip()
    if not line.startswith(f"{username}:$"):
        raise PasswdToolError(username, "no hash in mosquitto_passwd output")
    return line


def read_users(password_file: Path) -> dict[str, str]:
    if not password_file.exists():
        return {}
    users: dict[str, str] = {}
    for line in password_file.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, hashed = line.partition(":")
            users[name] = hashed
    return users


def _write_users(password_file: Path, users: dict[str, str]) -> None:
    text = "".join(f"{name}:{hashed}\n" for name, hashed in users.items())
    write_atomic(password_file, text, mode=0o640)
    _broker_readable(password_file)


def set_password(paths: SecurityPaths, username: str, password: str) -> None:
    """Add or replace one user's hash in the password file (atomic, under the lock)."""
    line = hash_line(username, password)
    with locked(paths):
        users = read_users(paths.password_file)
        users[username] = line.partition(":")[2]
        _write_users(paths.password_file, users)
    log.info("broker password set for user %s in %s", username, paths.password_file)


def remove_user(paths: SecurityPaths, username: str) -> bool:
    with locked(paths):
        users = read_users(paths.password_file)
        if users.pop(username, None) is None:
            return False
        _write_users(paths.password_file, users)
    log.info("broker user %s removed from %s", username, paths.password_file)
    return True


# -- service credentials ----------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Credentials:
    username: str
    password: str


@dataclass(frozen=True, slots=True)
class ServiceCredentials:
    central: Credentials
    ops: Credentials
    share_group: str  # central's secret MQTT 5 share group (see new_share_group)


def new_share_group() -> str:
    """A share group name nobody can guess (128 random bits).

    Mosquitto 2.0's ACL file cannot refuse a SUBSCRIBE (only reads and writes are checked), so
    any authenticated client may subscribe to ``$share/<group>/...``; a member of central's group
    whose read ACL denies the topic takes its turn in the group's round robin and the message is
    dropped for the whole group. Only who knows the group name can join it: central's config is
    the only place it is written."""
    return f"{CENTRAL_USER}-{secrets.token_hex(16)}"


def _existing_share_group(central_config: Path) -> str | None:
    """The share group already in central's config: a re-run keeps central's subscription."""
    try:
        raw = tomllib.loads(central_config.read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return None
    group = raw.get("broker", {}).get("share_group")
    if not isinstance(group, str) or group == topics.CENTRAL_SHARE_GROUP:
        return None
    try:
        return topics.check_share_group(group)
    except topics.TopicError:
        return None


def _broker_section(
    name: str, creds: Credentials, *, host: str, port: int, tls_ca: Path | None, extra: dict[str, str]
) -> str:
    lines = [
        "# Generated by storegate broker-init. Holds a broker password: keep it 0600.",
        f"[{name}]",
        f"host = {toml_str(host)}",
        f"port = {port}",
        f"username = {toml_str(creds.username)}",
        f"password = {toml_str(creds.password)}",
    ]
    if tls_ca is not None:
        lines.append(f"tls_ca = {toml_str(str(tls_ca))}")
    lines += [f"{k} = {toml_str(v)}" for k, v in extra.items()]
    return "\n".join(lines) + "\n"


def init_broker_security(
    etc_dir: Path, *, broker_host: str = "127.0.0.1", broker_port: int = 1883, tls_ca: Path | None = None
) -> ServiceCredentials:
    """Create the ACL, and central's and ops' credentials (new random passwords, hashed into
    the password file, plaintext only in the 0600 files ``central.toml``/``ops-mqtt.toml``),
    and central's secret share group (kept if central.toml already has one).
    Running it again rotates both passwords; gateway entries are kept."""
    paths = SecurityPaths(etc_dir)
    ensure_acl(paths.acl_file)
    central = Credentials(CENTRAL_USER, new_password())
    ops = Credentials(OPS_USER, new_password())
    share_group = _existing_share_group(paths.central_config) or new_share_group()
    for c in (central, ops):
        set_password(paths, c.username, c.password)
    deny_shared_subscriptions(paths, sorted(set(read_users(paths.password_file)) - {CENTRAL_USER}))
    write_atomic(
        paths.central_config,
        _broker_section(
            "broker",
            central,
            host=broker_host,
            port=broker_port,
            tls_ca=tls_ca,
            extra={"client_id": "central-1", "share_group": share_group},
        ),
    )
    write_atomic(
        paths.ops_config,
        _broker_section("mqtt", ops, host=broker_host, port=broker_port, tls_ca=tls_ca, extra={}),
    )
    return ServiceCredentials(central=central, ops=ops, share_group=share_group)


# -- TLS --------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Pki:
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path

    def listener(self, port: int) -> TlsListener:
        return TlsListener(port=port, cafile=self.ca_cert, certfile=self.server_cert, keyfile=self.server_key)


def _openssl(*args: str) -> None:
    exe = shutil.which("openssl")
    if exe is None:
        raise BrokerSecurityError("openssl not found: install the Debian package 'openssl'")
    proc = subprocess.run([exe, *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise BrokerSecurityError(f"openssl {args[0]} failed: {proc.stderr.strip()}")


def create_test_pki(
    tls_dir: Path, *, hosts: Sequence[str] = ("127.0.0.1", "localhost"), days: int = 825
) -> Pki:
    """A private CA and a server certificate for ``hosts`` (IP or DNS names), EC P-256.

    For tests and the demo. In production use certificates from the operator's own CA."""
    tls_dir.mkdir(parents=True, exist_ok=True)
    pki = Pki(
        ca_cert=tls_dir / "ca.crt",
        ca_key=tls_dir / "ca.key",
        server_cert=tls_dir / "server.crt",
        server_key=tls_dir / "server.key",
    )
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl(
        "req", "-x509", *ec, "-keyout", str(pki.ca_key), "-out", str(pki.ca_cert),
        "-days", str(days), "-subj", "/CN=Storegate test CA",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    csr = tls_dir / "server.csr"
    _openssl("req", "-new", *ec, "-keyout", str(pki.server_key), "-out", str(csr), "-subj", f"/CN={hosts[0]}")
    san = ",".join(f"IP:{h}" if _is_ip(h) else f"DNS:{h}" for h in hosts)
    ext = tls_dir / "server.ext"
    ext.write_text(
        f"subjectAltName={san}\nbasicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
    )
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(pki.ca_cert), "-CAkey", str(pki.ca_key),
        "-CAcreateserial", "-out", str(pki.server_cert), "-days", str(days), "-extfile", str(ext),
    )  # fmt: skip
    csr.unlink()
    ext.unlink()
    os.chmod(pki.ca_key, 0o600)
    _broker_readable(pki.server_key)
    return pki


def _is_ip(host: str) -> bool:
    import ipaddress  # noqa: PLC0415 - only needed here

    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


# -- broker config and reload -----------------------------------------------------------
def secure_broker_config(
    etc_dir: Path,
    *,
    port: int,
    data_dir: Path,
    host: str = "127.0.0.1",
    tls: TlsListener | None = None,
    run_as: str | None = None,
) -> BrokerConfig:
    """The shipped broker config: no anonymous access, password file + ACL, optional TLS.

    ``run_as`` renders mosquitto's ``user`` option. Started as root, mosquitto drops to the
    ``mosquitto`` user unless told otherwise, and then cannot read files in a private
    directory (a test's tmp_path): tests running as root pass ``run_as="root"``."""
    paths = SecurityPaths(etc_dir)
    ensure_acl(paths.acl_file)
    extra = [f"user {run_as}"] if run_as else []
    return BrokerConfig(port=port, data_dir=data_dir, host=host, auth=paths.auth, tls=tls, extra=extra)


def reload_broker(target: Mosquitto | int) -> None:
    """Make a running mosquitto re-read its password and ACL files (SIGHUP).

    The reload happens asynchronously in the broker's main loop, shortly after the signal."""
    if isinstance(target, Mosquitto):
        if target.proc is None or target.proc.poll() is not None:
            raise BrokerSecurityError("broker is not running: nothing to reload")
        pid = target.proc.pid
    else:
        pid = target
    os.kill(pid, signal.SIGHUP)
    log.info("sent SIGHUP to mosquitto pid %d (reload password file and ACL)", pid)


def reload_from_pid_file(pid_file: Path) -> None:
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError) as e:
        raise BrokerSecurityError(f"cannot read a broker pid from {pid_file}: {e}") from None
    reload_broker(pid)


# -- CLI --------------------------------------------------------------------------------
DESCRIPTION = (
    "Create the broker ACL and the central/ops broker credentials under --etc "
    "(rotates their passwords if run again), the broker's data directory, optionally a test CA "
    "and server certificate, and write the mosquitto.conf to run with. See ops/BROKER.md."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """broker-init's options; shared by ``storegate broker-init`` and :func:`main`."""
    p.add_argument("--etc", type=Path, required=True, help="configuration directory (created if missing)")
    p.add_argument("--broker-host", default="127.0.0.1", help="host the clients connect to")
    p.add_argument("--broker-port", type=int, default=1883, help="plain MQTT port")
    p.add_argument(
        "--data-dir",
        type=Path,
        default=Path("var/broker"),
        help="broker persistence and log directory (created, owned by the broker user when run as root)",
    )
    p.add_argument(
        "--tls-port", type=int, default=None, help="also listen with TLS on this port (clients then use it)"
    )
    p.add_argument(
        "--test-pki",
        action="store_true",
        help="with --tls-port: generate a private test CA and server certificate for --broker-host",
    )
    p.add_argument(
        "--bridge",
        type=Path,
        default=None,
        help="a regional broker: bridge it to the central broker as this file says"
        " (<central etc>/bridges/REGION.toml, written by storegate bridge-init)",
    )
    p.add_argument(
        "--bridge-ca",
        type=Path,
        default=None,
        help="with --bridge: the region's copy of the central broker's CA (TLS to central)",
    )


def prepare_data_dir(data_dir: Path, *, user: str = BROKER_USER) -> None:
    """Create the broker's persistence/log directory, writable by the user mosquitto runs as.

    Started as root, mosquitto drops to ``user`` before it writes its persistence file and
    log; a directory it cannot write silently leaves the broker without either. Run as root,
    the directory is given to that user (0750); otherwise it belongs to whoever runs this."""
    data_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(data_dir, 0o750)
    if os.geteuid() == 0:
        try:
            pw = pwd.getpwnam(user)
        except KeyError:
            log.warning("no user %r: %s stays owned by root", user, data_dir)
            return
        os.chown(data_dir, pw.pw_uid, pw.pw_gid)
        for f in data_dir.iterdir():  # a re-run keeps the broker's own files writable by it
            if f.name in ("mosquitto.db", "mosquitto.log"):
                os.chown(f, pw.pw_uid, pw.pw_gid)


def run(args: argparse.Namespace) -> int:
    etc = args.etc.absolute()  # mosquitto and central run from anywhere: no relative paths in configs
    paths = SecurityPaths(etc)
    tls: TlsListener | None = None
    if args.tls_port is not None:
        if args.test_pki:
            pki = create_test_pki(paths.tls_dir, hosts=(args.broker_host, "localhost"))
        else:
            pki = Pki(
                ca_cert=paths.tls_dir / "ca.crt",
                ca_key=paths.tls_dir / "ca.key",
                server_cert=paths.tls_dir / "server.crt",
                server_key=paths.tls_dir / "server.key",
            )
            absent = [str(f) for f in (pki.ca_cert, pki.server_cert, pki.server_key) if not f.exists()]
            if absent:
                print(f"error: TLS files missing: {', '.join(absent)} (or pass --test-pki)", file=sys.stderr)
                return 2
        tls = pki.listener(args.tls_port)
    client_port = args.tls_port if tls is not None else args.broker_port
    init_broker_security(
        etc,
        broker_host=args.broker_host,
        broker_port=client_port,
        tls_ca=tls.cafile if tls is not None else None,
    )
    data_dir = args.data_dir.absolute()
    prepare_data_dir(data_dir)
    cfg = secure_broker_config(etc, port=args.broker_port, data_dir=data_dir, tls=tls, run_as=BROKER_USER)
    conf = paths.broker_dir / "mosquitto.conf"
    if args.bridge is not None:
        from ops.bridge import load_bridge, make_regional  # noqa: PLC0415 - regional brokers only

        try:
            bridge = load_bridge(args.bridge)
        except BrokerSecurityError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        make_regional(cfg, bridge, tls_ca=args.bridge_ca.absolute() if args.bridge_ca is not None else None)
        write_atomic(conf, cfg.render(), mode=0o640)  # holds the bridge's password
        _broker_readable(conf)
    else:
        write_atomic(conf, cfg.render(), mode=0o644)
    print(f"password file  {paths.password_file}")
    print(f"ACL            {paths.acl_file}")
    print(f"central config {paths.central_config} (merge its [broker] section into central's config)")
    print(f"ops config     {paths.ops_config}")
    print(f"data dir       {data_dir}  (persistence and mosquitto.log)")
    print(f"broker config  {conf}  (run: mosquitto -c {conf})")
    if args.bridge is not None:
        print(
            f"bridge         {bridge.username} to {bridge.remote_host}:{bridge.remote_port}"
            f" ({len(bridge.gateways)} store(s))"
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="storegate broker-init", description=DESCRIPTION)
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
