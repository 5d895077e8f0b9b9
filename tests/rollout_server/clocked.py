"""A test app whose wall clock the test moves (``create_app({"CLOCK": ...})``): token expiry,
rotation grace and credential ages without sleeping.

Use from a test module (it replaces conftest's ``app`` there; ``client`` and ``tokens`` follow)::

    from tests.rollout_server.clocked import FakeClock, clocked_app

    clock = FakeClock.fixture()
    app = clocked_app()
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from rollout_server.app import create_app
from tests.rollout_server.conftest import FIXED_DAYS


class FakeClock:
    """An aware UTC time that moves only when told."""

    def __init__(self) -> None:
        self.now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)

    @staticmethod
    def fixture() -> Any:
        @pytest.fixture
        def clock() -> FakeClock:
            return FakeClock()

        return clock


def clocked_app(**settings: Any) -> Any:
    """An ``app`` fixture like conftest's (SQLite; PostgreSQL when parametrized ``indirect``) with
    the module's ``clock`` and ``settings``."""

    @pytest.fixture
    def app(request, tmp_path, clock):
        config = {"DATA_DIR": str(tmp_path / "server"), "CONTROLLER_ENABLED": False, "CLOCK": clock,
                  **FIXED_DAYS, **settings}
        if getattr(request, "param", "sqlite") == "postgresql":
            config["DATABASE_URL"] = request.getfixturevalue("pg_url")
        return create_app(config)

    return app
