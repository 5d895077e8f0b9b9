"""Shared fixtures: signing keys, the trained digits example, small npz files.

Also loads :mod:`tests.skip_policy`: under ``CI=true`` a skip whose reason is not on its short
allow-list fails the run.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest_plugins = ("tests.skip_policy", "tests.browser")


@pytest.fixture(scope="session")
def signing_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from edgeship.contract.signing import generate_keypair

    private, _ = generate_keypair(tmp_path_factory.mktemp("keys"))
    return private


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The digits example trained once per session (a few seconds), files on disk."""
    from tests.skip_policy import require_module

    torch = require_module("torch")
    from examples.digits import build_example

    out = tmp_path_factory.mktemp("digits")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # seeded and on one thread: the same sums, in one order, on any core count
    try:
        build_example(out, epochs=15)
    finally:
        torch.set_num_threads(threads)
    return out


def write_npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


@pytest.fixture(autouse=True)
def _dispose_database_engines(monkeypatch: pytest.MonkeyPatch):
    """Close the pooled connections of every server app a test built, when it ends.

    An app's engine keeps its SQLite connections (three descriptors each in WAL mode) until the
    process exits, so over a thousand tests the runner crossed 1,024 open files, where
    ``select()`` and some libraries fail. Not in the agent-only venv (no server there).
    """
    try:
        from rollout_server import db
    except ImportError:
        yield
        return
    engines = []
    make_engine = db.make_engine

    def recording(*args, **kwargs):
        engine = make_engine(*args, **kwargs)
        engines.append(engine)
        return engine

    monkeypatch.setattr(db, "make_engine", recording)
    yield
    for engine in engines:
        if engine.url.get_backend_name() == "sqlite" and engine.url.database in (None, "", ":memory:"):
            continue  # its one connection is the database: a module-scoped app may still need it
        engine.dispose()
