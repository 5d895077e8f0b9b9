"""The kit's fixtures: one real server per run, a fresh proxy and fresh devices per scenario, and
every scenario run once per implementation (``--implementations``, ``--driver NAME=COMMAND``).

Scenarios take one :class:`Kit`; they run one after the other (they share the server and move
its stable release; each scenario's changes are undone after it).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from conformance.driver import Device, Implementation
from conformance.implementations import BUILT_IN, Unavailable, parse_external, prepare
from conformance.kit import Kit
from conformance.proxy import FaultProxy
from conformance.releases import Releases, build
from conformance.server import KitServer

pytest_plugins = ("tests.skip_policy",)

DEVICES = pytest.StashKey[list[Device]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("conformance", "edgeship device conformance kit")
    group.addoption("--implementations", default=",".join(BUILT_IN),
                    help=f"comma-separated implementations to judge (built in: {', '.join(BUILT_IN)})")
    group.addoption("--driver", action="append", default=[], metavar="NAME=COMMAND",
                    help="another implementation's driver command (docs/conformance.md); judged too")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "implementation_name" in metafunc.fixturenames:
        options = metafunc.config.option
        names = [n.strip() for n in options.implementations.split(",") if n.strip()]
        names += [n for n in parse_external(options.driver) if n not in names]
        metafunc.parametrize("implementation_name", names, scope="session")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """A failed scenario shows what its devices logged."""
    report = yield
    if report.failed:
        for device in item.stash.get(DEVICES, []):
            report.sections.append((f"device log ({device.log_path.name})", device.log_tail(6000)))
    return report


@pytest.fixture(scope="session")
def implementation(implementation_name: str, pytestconfig: pytest.Config) -> Implementation:
    from tests.skip_policy import missing  # the plugin (pytest_plugins) is loaded by then

    try:
        return prepare(implementation_name, parse_external(pytestconfig.option.driver))
    except Unavailable as err:
        missing(f"conformance kit, implementation {implementation_name}: {err}")


@pytest.fixture(scope="session")
def releases() -> Releases:
    return build()


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory, releases: Releases) -> Iterator[KitServer]:
    process = KitServer(tmp_path_factory.mktemp("server"), str(releases.public_key)).start()
    try:
        for version in ("1", "2", "3", "4"):
            process.publish(str(releases.release_dirs[version]))
        process.set_stable("1")
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="session")
def untrusted_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A publisher key the server never saw: a device pinning only it must refuse every release."""
    from edgeship.contract.signing import generate_keypair

    _, public = generate_keypair(tmp_path_factory.mktemp("untrusted-key"))
    return public


@pytest.fixture
def kit(request: pytest.FixtureRequest, implementation: Implementation, server: KitServer, releases: Releases,
        tmp_path: Path) -> Iterator[Kit]:
    proxy = FaultProxy(server.url).start()
    devices: list[Device] = []
    request.node.stash[DEVICES] = devices
    try:
        yield Kit(implementation, server, proxy, releases, tmp_path, devices)
    finally:
        for device in devices:
            device.kill()
        proxy.stop()
        if server.process is None or server.process.poll() is not None:
            server.start()  # a scenario that stopped it failed before starting it again
        server.reset()
