"""A throwaway real PostgreSQL server for tests, from the distribution's server binaries.

:func:`postgresql_server` finds ``initdb``/``pg_ctl`` (Debian: ``/usr/lib/postgresql/<v>/bin``),
creates a cluster in a fresh temporary directory, starts it on a free port on 127.0.0.1 (unix
socket in the same directory, never the system's), and stops it and removes the directory at
the end. PostgreSQL refuses to run as root, so as root the binaries run as the ``postgres``
user (``runuser -u postgres --``) in a directory it owns. Durability is switched off (fsync,
synchronous commit): the data is thrown away anyway.

Binaries or psycopg missing: with ``CI`` set in the environment the fixture fails (``make test``
installs the binaries, the server extra psycopg), otherwise the tests that need it are skipped
with the reason (:func:`tests.skip_policy.missing`, checked before anything else).

Use from a test module::

    from tests.rollout_server.postgres import PostgresServer, postgresql_server

    @pytest.fixture(scope="session")
    def postgresql():
        yield from postgresql_server()

    def test_something(postgresql: PostgresServer):
        url = postgresql.create_database()   # a fresh, empty database per test
"""

from __future__ import annotations

import glob
import importlib.util
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

from tests.skip_policy import missing

#: the cluster's superuser; trust authentication, reachable only on 127.0.0.1 and the private socket.
SUPERUSER = "edgeship"
INSTALL_HINT = "apt-get install -y postgresql (Debian) — .ci/run does this in CI"


def find_bindir() -> Path | None:
    """The newest ``/usr/lib/postgresql/<version>/bin`` with initdb and pg_ctl, else the one on PATH."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                        key=lambda p: [int(n) for n in re.findall(r"\d+", p)], reverse=True)
    for initdb in candidates:
        bindir = Path(initdb).parent
        if (bindir / "pg_ctl").exists():
            return bindir
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(on_path).resolve().parent
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class PostgresServer:
    """A running throwaway cluster; :meth:`create_database` gives fresh databases."""

    bindir: Path
    root: Path
    port: int = 0
    run_as: str | None = None
    startup_seconds: float = 0.0
    databases: list[str] = field(default_factory=list)

    @property
    def datadir(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        return self.root / "server.log"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        command = [str(self.bindir / args[0]), *args[1:]]
        if self.run_as:
            command = ["runuser", "-u", self.run_as, "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=self.root)
        if result.returncode != 0:
            log = self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""
            raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}):\n"
                               f"{result.stdout}\n{result.stderr}\n{log}")
        return result

    def start(self) -> None:
        self._run("initdb", "-D", str(self.datadir), "-U", SUPERUSER, "--auth=trust", "-E", "UTF8",
                  "--no-locale", "--no-sync")
        for attempt in range(5):  # the free port may be taken between probing and binding
            self.port = free_port()
            options = (f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} "
                       "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
                       "-c max_connections=200")
            try:
                self._run("pg_ctl", "-D", str(self.datadir), "-l", str(self.log), "-o", options,
                          "-w", "-t", "60", "start")
                return
            except RuntimeError:
                if attempt == 4:
                    raise

    def stop(self) -> None:
        if (self.datadir / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.datadir), "-m", "immediate", "-w", "stop")

    def create_database(self, name: str | None = None) -> str:
        """Create an empty database; returns its ``postgresql+psycopg://`` URL."""
        import psycopg

        name = name or f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(host="127.0.0.1", port=self.port, user=SUPERUSER, dbname="postgres",
                             autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        self.databases.append(name)
        return self.url(name)


def _missing(reason: str) -> NoReturn:
    missing(f"no PostgreSQL server to test against: {reason} ({INSTALL_HINT})")


def postgresql_server() -> Iterator[PostgresServer]:
    """Generator behind a session fixture: start a cluster, yield it, stop it and clean up."""
    if importlib.util.find_spec("psycopg") is None:
        _missing("psycopg is not installed (the server extra)")
    bindir = find_bindir()
    if bindir is None:
        _missing("initdb/pg_ctl not found under /usr/lib/postgresql/*/bin or on PATH")
    run_as = None
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            _missing("running as root and there is no 'postgres' user to run the server as")
        run_as = "postgres"
        if shutil.which("runuser") is None:
            _missing("running as root and runuser (util-linux) is missing")
    root = Path(tempfile.mkdtemp(prefix="edgeship-pg-"))
    if run_as:
        entry = pwd.getpwnam(run_as)
        os.chown(root, entry.pw_uid, entry.pw_gid)
    server = PostgresServer(bindir=bindir, root=root, run_as=run_as)
    try:
        started = time.monotonic()
        server.start()
        server.startup_seconds = time.monotonic() - started
        yield server
    finally:
        try:
            server.stop()
        finally:
            shutil.rmtree(root, ignore_errors=True)
