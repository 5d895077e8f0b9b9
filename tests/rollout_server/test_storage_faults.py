"""Storage faults are visible and never destructive, over real HTTP and real files (issue 19).

The rows of the issue, replayed: a SQLite lock held by another connection (``BEGIN EXCLUSIVE``)
made writes a generic 500 while ``/readyz`` said 200; database files deleted under a running
server kept taking writes, and the restart minted new first-start tokens over the old file; an
artifact directory the server cannot write made publish a 500 (PermissionError) with ``/readyz``
200; crashed uploads' staging files stayed for ever; the database files were 0644.

Tests may run as root, where ``chmod`` stops no write: :func:`unwritable` then swaps the
directory for a dangling symlink, which stops every write whoever runs it.
"""

from __future__ import annotations

import datetime as dt
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from rollout_server.app import create_app
from rollout_server.artifact_store import STALE_SECONDS
from rollout_server.auth import FIRST_START_FILE
from rollout_server.controller import step_all
from rollout_server.db_files import MARKER_FILE, StartupRefused
from tests.rollout_server.conftest import (
    BOTH_BACKENDS,
    FIXED_DAYS,
    ROOT,
    auth,
    edgeship,
    running_rollout,
    seed_release,
    serving,
    variant_entry,
)
from tests.rollout_server.postgres import free_port
from tests.rollout_server.test_registry import make_release, upload

DB = "edgeship.db"


def config_for(directory: Path, **extra) -> dict:
    return {"DATA_DIR": str(directory), "CONTROLLER_ENABLED": False, **FIXED_DAYS, **extra}


def tokens_of(directory: Path) -> dict[str, str]:
    pairs = dict(line.split("=", 1) for line in (directory / FIRST_START_FILE).read_text().split())
    return {"admin": pairs["EDGESHIP_ADMIN_TOKEN"], "enroll": pairs["EDGESHIP_ENROLL_TOKEN"]}


def registration(enroll: str) -> dict:
    return {"enrollment_token": enroll, "device_class": "rpi4", "arch": "aarch64", "os": "x",
            "ram_bytes": 1, "runtimes": {"onnxruntime": "1.20.1"}}


def assert_503(response: requests.Response, error: str) -> dict:
    assert response.status_code == 503, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.json()
    assert body["error"] == error and body["detail"], body
    assert int(response.headers["Retry-After"]) > 0
    assert "Traceback" not in response.text
    return body


@pytest.fixture
def server_dir(tmp_path: Path) -> Path:
    return tmp_path / "server"


@pytest.fixture
def live(server_dir: Path) -> Iterator[str]:
    """A server (short busy timeout) on ``server_dir``, served on a loopback port."""
    app = create_app(config_for(server_dir, DATABASE_BUSY_TIMEOUT_SECONDS=0.5))
    with serving(app) as port:
        yield f"http://127.0.0.1:{port}"


# -- a held SQLite lock ------------------------------------------------------------------------

def test_a_held_database_lock_is_a_503_with_retry_after_and_readyz_names_the_database(live, server_dir):
    tokens = tokens_of(server_dir)
    created = requests.post(f"{live}/v1/devices/register", json=registration(tokens["enroll"]), timeout=30)
    assert created.status_code == 201
    credential = created.json()["credential"]
    report = {"reports": [{"id": "r1", "model": "nope", "version": "1", "variant": "v", "cohort": "stable",
                           "window_start": "2026-01-01T00:00:00Z", "window_end": "2026-01-01T00:00:30Z",
                           "inferences": 1, "latency_counts": [1] + [0] * 19}]}
    holder = sqlite3.connect(server_dir / DB, isolation_level=None, timeout=5)
    holder.execute("BEGIN EXCLUSIVE")  # what a backup tool or a stuck process does
    try:
        assert_503(requests.post(f"{live}/v1/devices/register", json=registration(tokens["enroll"]),
                                 timeout=30), "database_busy")
        assert_503(requests.post(f"{live}/v1/tokens", json={"name": "x", "role": "viewer"},
                                 headers=auth(tokens["admin"]), timeout=30), "database_busy")
        # a refused report is counted (a write): busy too, not a 500
        assert_503(requests.post(f"{live}/v1/reports", json=report, headers=auth(credential), timeout=30),
                   "database_busy")
        ready = requests.get(f"{live}/readyz", timeout=30)
        assert ready.status_code == 503 and ready.json()["error"] == "not_ready", ready.text
        checks = ready.json()["checks"]
        assert "locked" in checks["database"] and checks["artifacts"] == "ok", checks
        assert requests.get(f"{live}/healthz", timeout=30).status_code == 200  # alive, just not ready
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert requests.post(f"{live}/v1/devices/register", json=registration(tokens["enroll"]),
                         timeout=30).status_code == 201
    ready = requests.get(f"{live}/readyz", timeout=30)
    assert ready.status_code == 200 and ready.json()["checks"] == {"database": "ok", "artifacts": "ok"}


def test_an_assignment_poll_is_answered_while_the_database_is_locked(live, server_dir):
    """A poll is answered from the cache; its ``last_seen_at`` bookkeeping write gives up after
    a short wait instead of holding the device for the busy timeout or failing the poll."""
    tokens = tokens_of(server_dir)
    app = create_app(config_for(server_dir))  # the same database: seed a stable release into it
    seed_release(app, "1.0.0", [variant_entry("onnx-fp32", "onnxruntime", 1.0, "a" * 64)], stable=True)
    created = requests.post(f"{live}/v1/devices/register",
                            json={**registration(tokens["enroll"]), "ram_bytes": 2**31}, timeout=30)
    device = created.json()
    url = f"{live}/v1/devices/{device['device_id']}/assignment?model=digits-cnn"
    holder = sqlite3.connect(server_dir / DB, isolation_level=None, timeout=5)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        started = time.monotonic()
        polled = requests.get(url, headers=auth(device["credential"]), timeout=30)
        assert polled.status_code == 200, polled.text
        assert polled.json()["version"] == "1.0.0"
        assert time.monotonic() - started < 20  # not the 30 s busy timeout of other writes
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    seen = sqlite3.connect(server_dir / DB).execute(
        "SELECT last_seen_at FROM devices WHERE id = ?", (device["device_id"],)).fetchone()[0]
    assert seen is None  # not written under the lock ...
    assert requests.get(url, headers=auth(device["credential"]), timeout=30).status_code == 200
    seen = sqlite3.connect(server_dir / DB).execute(
        "SELECT last_seen_at FROM devices WHERE id = ?", (device["device_id"],)).fetchone()[0]
    assert seen is not None  # ... and written by the next poll once it is free


# -- database files deleted while running ------------------------------------------------------

def test_deleted_database_files_refuse_writes_and_the_restart_refuses_to_mint_tokens(server_dir):
    app = create_app(config_for(server_dir))
    tokens = tokens_of(server_dir)
    token_file = (server_dir / FIRST_START_FILE).read_bytes()
    with serving(app) as port:
        live = f"http://127.0.0.1:{port}"
        assert requests.post(f"{live}/v1/devices/register", json=registration(tokens["enroll"]),
                             timeout=30).status_code == 201
        for suffix in ("", "-wal", "-shm"):
            (server_dir / f"{DB}{suffix}").unlink(missing_ok=True)
        assert_503(requests.post(f"{live}/v1/devices/register", json=registration(tokens["enroll"]),
                                 timeout=30), "database_unavailable")
        assert_503(requests.post(f"{live}/v1/tokens", json={"name": "x", "role": "viewer"},
                                 headers=auth(tokens["admin"]), timeout=30), "database_unavailable")
        ready = requests.get(f"{live}/readyz", timeout=30)
        assert ready.status_code == 503 and "gone" in ready.json()["checks"]["database"], ready.text
        assert str(server_dir) not in ready.text  # anyone may ask /readyz: no paths in the answer
        # a fresh connection (the pool recycled) must not create an empty database in its place
        app.extensions["edgeship.engine"].dispose()
        assert_503(requests.get(f"{live}/v1/tokens", headers=auth(tokens["admin"]), timeout=30),
                   "database_unavailable")
        assert not (server_dir / DB).exists()

    with pytest.raises(StartupRefused, match="refusing to start"):
        create_app(config_for(server_dir))
    assert (server_dir / FIRST_START_FILE).read_bytes() == token_file  # not overwritten
    assert not (server_dir / DB).exists()  # and no empty database made in its place



def test_the_controller_does_not_write_into_a_deleted_database_file(server_dir, caplog):
    """The controller's decisions would go where nothing reads them again: while the file is
    gone a pass does nothing and says why."""
    app = create_app(config_for(server_dir))
    tokens = tokens_of(server_dir)
    with serving(app) as port:
        running_rollout(app, f"http://127.0.0.1:{port}", tokens, [{"percent": 50}],
                        {}, canary=1, stable=1)
    now = dt.datetime.now(dt.timezone.utc)
    assert step_all(app, now)  # a pass acts on the running rollout ...
    for suffix in ("", "-wal", "-shm"):
        (server_dir / f"{DB}{suffix}").unlink(missing_ok=True)
    assert step_all(app, now + dt.timedelta(hours=1)) == {}  # ... but not into a deleted file
    assert "the database file is gone" in caplog.text

def test_the_real_server_command_refuses_with_a_clear_message(server_dir):
    create_app(config_for(server_dir))
    token_file = (server_dir / FIRST_START_FILE).read_bytes()
    for suffix in ("", "-wal", "-shm"):
        (server_dir / f"{DB}{suffix}").unlink(missing_ok=True)
    result = edgeship("server", "--data-dir", server_dir, "--port", free_port())
    assert result.returncode == 2, result.stdout + result.stderr
    assert "refusing to start" in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert (server_dir / FIRST_START_FILE).read_bytes() == token_file


@pytest.mark.parametrize("kept", [FIRST_START_FILE, MARKER_FILE, "artifacts"])
def test_an_empty_database_in_a_used_data_directory_refuses_to_start(server_dir, kept):
    """Replaced by an empty file, the database is migrated but no tokens are minted, whichever
    sign of use is left: the token file, the marker (the operator deleted the token file after
    reading it), or stored artifacts alone."""
    create_app(config_for(server_dir))
    (server_dir / "artifacts" / "ab").mkdir(parents=True)
    (server_dir / "artifacts" / "ab" / ("ab" + "0" * 62)).write_bytes(b"a model")
    signs = {FIRST_START_FILE: server_dir / FIRST_START_FILE, MARKER_FILE: server_dir / MARKER_FILE,
             "artifacts": server_dir / "artifacts" / "ab" / ("ab" + "0" * 62)}
    for name, path in signs.items():
        if name != kept:
            path.unlink()
    for suffix in ("", "-wal", "-shm"):
        (server_dir / f"{DB}{suffix}").unlink(missing_ok=True)
    sqlite3.connect(server_dir / DB).close()  # an empty database where the old one was
    with pytest.raises(StartupRefused, match="has no tokens"):
        create_app(config_for(server_dir))
    assert not (kept != FIRST_START_FILE and (server_dir / FIRST_START_FILE).exists())


def test_a_restart_on_an_intact_database_keeps_its_tokens(server_dir):
    create_app(config_for(server_dir))
    token_file = (server_dir / FIRST_START_FILE).read_bytes()
    (server_dir / FIRST_START_FILE).unlink()  # read and removed, as an operator should
    app = create_app(config_for(server_dir))
    assert app.extensions["edgeship.first_start_file"] is None
    assert not (server_dir / FIRST_START_FILE).exists()
    assert token_file


def _open_missing(directory: Path) -> None:
    sqlite3.connect(f"file:{directory / 'missing.db'}?mode=rw", uri=True)


def _write_while_locked(directory: Path) -> None:
    holder = sqlite3.connect(directory / "l.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        sqlite3.connect(directory / "l.db", timeout=0.1).execute("CREATE TABLE t (a)")
    finally:
        holder.close()


def _mkdir_under_missing(directory: Path) -> None:
    os.mkdir(directory / "x" / "y")


def _socket_reset(_directory: Path) -> None:
    raise ConnectionResetError("a client's socket, not storage")


def _bug(_directory: Path) -> None:
    int("x")


@pytest.mark.parametrize("fail, expected", [
    (_open_missing, "database_unavailable"), (_write_while_locked, "database_busy"),
    (_mkdir_under_missing, "storage_unavailable"), (_socket_reset, None), (_bug, None),
])
def test_real_storage_errors_are_told_from_bugs(tmp_path, fail, expected):
    """The driver's own errors (as the report writer's raw connection raises them) and
    SQLAlchemy's wrapping of them (as sessions raise them) are 503s; a bug stays a 500."""
    from sqlalchemy.exc import OperationalError

    from rollout_server.errors import storage_fault

    with pytest.raises(Exception) as raised:
        fail(tmp_path)
    errors = [raised.value]
    if isinstance(raised.value, sqlite3.Error):
        errors.append(OperationalError("statement", {}, raised.value))
    for err in errors:
        fault = storage_fault(err)
        assert (fault.error if fault else None) == expected, err
        assert fault is None or fault.retry_after > 0


# -- file modes --------------------------------------------------------------------------------

def test_database_files_are_0600_and_an_older_databases_are_narrowed(server_dir):
    app = create_app(config_for(server_dir))
    client = app.test_client()
    enroll = tokens_of(server_dir)["enroll"]
    assert client.post("/v1/devices/register", json=registration(enroll)).status_code == 201
    names = [f"{DB}{suffix}" for suffix in ("", "-wal", "-shm")] + [FIRST_START_FILE, MARKER_FILE]
    for name in names:
        assert (server_dir / name).stat().st_mode & 0o777 == 0o600, name
    for suffix in ("", "-wal", "-shm"):  # as an earlier version left them
        (server_dir / f"{DB}{suffix}").chmod(0o644)
    create_app(config_for(server_dir))
    for suffix in ("", "-wal", "-shm"):
        path = server_dir / f"{DB}{suffix}"
        assert not path.exists() or path.stat().st_mode & 0o777 == 0o600, path


# -- an artifact store the server cannot write -------------------------------------------------

def unwritable(directory: Path) -> Callable[[], None]:
    """Make ``directory`` unwritable for this process; returns how to undo it. As root ``chmod``
    stops nothing, so the directory is moved aside and a dangling symlink takes its place."""
    directory.chmod(0o555)
    probe = directory / ".probe"
    try:
        probe.touch()
    except PermissionError:
        return lambda: directory.chmod(0o755)
    probe.unlink()
    directory.chmod(0o755)
    aside = directory.with_name(directory.name + ".aside")
    directory.rename(aside)
    directory.symlink_to(directory.with_name("nowhere"))

    def undo() -> None:
        directory.unlink()
        aside.rename(directory)

    return undo


def test_an_unwritable_artifact_store_is_a_503_on_publish_and_readyz_names_it(server_dir, signing_key,
                                                                               tmp_path):
    app = create_app(config_for(server_dir, TRUSTED_KEYS=[str(signing_key.with_suffix(".pub"))]))
    admin = tokens_of(server_dir)["admin"]
    release = make_release(tmp_path / "release", signing_key)
    store = server_dir / "artifacts"
    store.mkdir(exist_ok=True)
    undo = unwritable(store)
    with serving(app) as port:
        base = f"http://127.0.0.1:{port}"
        try:
            published = upload(_Requests(base), admin, release)
            assert_503(published, "storage_unavailable")
            ready = requests.get(f"{base}/readyz", timeout=30)
            assert ready.status_code == 503, ready.text
            checks = ready.json()["checks"]
            assert checks["database"] == "ok" and "artifact store" in checks["artifacts"], checks
            listed = requests.get(f"{base}/v1/models", headers=auth(admin), timeout=30).json()
            assert listed["models"] == []  # nothing half-published
        finally:
            undo()
        assert upload(_Requests(base), admin, release).status_code == 201
        assert requests.get(f"{base}/readyz", timeout=30).status_code == 200


def test_a_missing_artifact_store_is_a_503_on_download_not_a_404(server_dir, signing_key, tmp_path):
    """A 404 tells a device the artifact does not exist, and it gives the release up; a store
    that is gone (an unmounted volume) is the server's fault: 503, retry later."""
    app = create_app(config_for(server_dir, TRUSTED_KEYS=[str(signing_key.with_suffix(".pub"))]))
    admin = tokens_of(server_dir)["admin"]
    release = make_release(tmp_path / "release", signing_key)
    with serving(app) as port:
        base = f"http://127.0.0.1:{port}"
        published = upload(_Requests(base), admin, release)
        assert published.status_code == 201, published.text
        url = f"{base}{published.json()['variants'][0]['url']}"
        assert requests.get(url, headers=auth(admin), timeout=30).status_code == 200
        store = server_dir / "artifacts"
        store.rename(server_dir / "artifacts.unmounted")
        store.symlink_to(server_dir / "nowhere")
        assert_503(requests.get(url, headers=auth(admin), timeout=30), "storage_unavailable")
        assert "artifact store" in requests.get(f"{base}/readyz", timeout=30).json()["checks"]["artifacts"]
        store.unlink()
        (server_dir / "artifacts.unmounted").rename(store)
        assert requests.get(url, headers=auth(admin), timeout=30).status_code == 200


class _Requests:
    """What ``test_registry.upload`` needs of a client (``post``), over real HTTP."""

    def __init__(self, base: str) -> None:
        self.base = base

    def post(self, path: str, data: dict, content_type: str, headers: dict) -> requests.Response:
        files = {name: (filename, stream.read()) for name, (stream, filename) in data.items()}
        return requests.post(f"{self.base}{path}", files=files, headers=headers, timeout=60)


# -- leftovers of crashed uploads --------------------------------------------------------------

STAGING = """
import sys, time
from rollout_server.artifact_store import ArtifactStore
with ArtifactStore(sys.argv[1]).staging() as staging:
    (staging.directory / ".x.part").write_bytes(b"half a model")
    print(staging.directory, flush=True)
    time.sleep(300)
"""


def test_staging_leftovers_of_a_crash_are_cleaned_at_start_and_uploads_in_progress_kept(server_dir):
    create_app(config_for(server_dir))
    store = server_dir / "artifacts"
    uploader = subprocess.Popen([sys.executable, "-c", STAGING, str(store)], stdout=subprocess.PIPE,
                                text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        in_progress = Path(uploader.stdout.readline().strip())
        assert (in_progress / ".x.part").is_file()
        old = time.time() - STALE_SECONDS - 60
        unlocked = store / ".tmp" / "upload-old"  # an older version's leftover: no lock file
        unlocked.mkdir()
        (unlocked / ".y.part").write_bytes(b"x")
        os.utime(unlocked, (old, old))
        recent = store / ".tmp" / "upload-new"  # maybe an upload that has not taken its lock yet
        recent.mkdir()
        (store / "ab").mkdir()
        stale_part, fresh_part = store / "ab" / ".abc.part", store / "ab" / ".def.part"
        stale_part.write_bytes(b"x")
        fresh_part.write_bytes(b"x")
        os.utime(stale_part, (old, old))

        create_app(config_for(server_dir))  # another worker starts while the upload runs
        assert in_progress.is_dir() and recent.is_dir() and fresh_part.exists()
        assert not unlocked.exists() and not stale_part.exists()

        uploader.kill()  # kill -9 mid-upload
        uploader.wait(timeout=30)
        assert in_progress.is_dir()  # the crash left it
        create_app(config_for(server_dir))
        assert not in_progress.exists()
    finally:
        uploader.kill()
        uploader.wait(timeout=30)
        uploader.stdout.close()


# -- readiness on both backends ----------------------------------------------------------------

@BOTH_BACKENDS
def test_readyz_checks_a_database_write_and_the_artifact_store(client):
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.json
    assert ready.json == {"status": "ready", "checks": {"database": "ok", "artifacts": "ok"}}
