"""Agent settings: defaults, then a TOML file, then ``EDGESHIP_AGENT_*`` environment variables,
then command-line flags (each layer overrides the one before).

Example file (``/etc/edgeship/agent.toml``; see ``edge_agent/deploy/agent.toml``)::

    server = "https://rollout.example.com"
    model = "digits-cnn"
    enroll_token_file = "/etc/edgeship/enroll-token"   # only needed until the device is registered
    state_dir = "/var/lib/edgeship-agent"
    trusted_keys = ["/etc/edgeship/publisher.pub"]
    device_class = "rpi4"
    attributes = { app_version = "4.2.1", region = "eu" }   # optional: for canary targeting
    ca_file = "/etc/edgeship/rollout-ca.pem"   # optional: a private CA instead of the system's
    server_pin_sha256 = ["<base64 sha256>"]    # optional: the server public key(s) accepted
    # allow_insecure_http = true              # only to talk http:// to another machine

Every key can also come from the environment: ``EDGESHIP_AGENT_SERVER``,
``EDGESHIP_AGENT_TRUSTED_KEYS`` (comma separated), ``EDGESHIP_AGENT_CHECK_INTERVAL_SECONDS``...

The enrollment token is one setting given two ways: ``enroll_token`` (the value; on a command
line every user sees it in ``ps``) or ``enroll_token_file`` (a 0600 file holding it). A layer that
sets either replaces both from the layers below; when no layer sets them, ``$EDGESHIP_ENROLL_TOKEN``
is used.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from edge_agent.transport import InsecureUrl, Transport, check_url, parse_pin, tls_context
from edgeship.contract.secret_files import SecretFileError, read_secret_file

ENV_PREFIX = "EDGESHIP_AGENT_"
#: the enrollment token when no layer gives one (the same variable ``edgeship simulate`` reads)
ENV_ENROLL_TOKEN = "EDGESHIP_ENROLL_TOKEN"
#: the two spellings of the one enrollment-token setting
ENROLL_KEYS = ("enroll_token", "enroll_token_file")
log = logging.getLogger("edgeship.agent")


class ConfigError(ValueError):
    """A setting is missing or has a value of the wrong kind."""


@dataclass
class AgentConfig:
    """Everything the agent needs to run; see the module docstring for where values come from.

    Attributes:
        server: rollout server base URL.
        model: registry name of the model this device runs.
        state_dir: the agent's own directory (identity, model store, outbox).
        trusted_keys: publisher public key files (PEM); a manifest must be signed by one.
        enroll_token: enrollment token, used once to register.
        enroll_token_file: a file holding the enrollment token (read by :meth:`check` when
            ``enroll_token`` is not set; a warning if other users may read it).
        device_class: coarse device class sent at registration (default: guessed).
        attributes: what this device tells the server about itself at registration, for rollouts
            that target by attribute (string values; ``EDGESHIP_AGENT_ATTRIBUTES`` is
            ``key=value,key=value``); empty: none sent.
        check_interval_seconds: how often to ask for the assignment (a rollback reaches the
            device within one interval).
        report_interval_seconds: reporting window length until the server says otherwise.
        request_timeout_seconds: per-request socket timeout.
        download_max_bytes: largest artifact the agent accepts.
        download_deadline_seconds: a whole download must finish within this.
        outbox_max_reports: reports kept while offline (oldest dropped beyond it).
        backoff_initial_seconds / backoff_max_seconds: retry delays when the server is away.
        variant_backoff_seconds: a variant that failed to load or its golden check is not
            tried again for this long (doubling on each new failure).
        golden_agreement_slack: the golden check passes when on-device agreement with the
            reference is at least the converter's golden agreement minus this.
        threads: runtime intra-op threads (``None``: the runtime decides).
        metrics_port: serve a local ``/metrics`` on this port (``None``: off).
        metrics_host: address of the local ``/metrics`` server.
        workload: npz to replay as live traffic when run standalone (``None``: serve
            only ``predict`` calls).
        rate_per_second: replay rate of the workload.
        ram_bytes: RAM to report (``None``: this host's).
        thermal_dir: where the CPU's thermal zones are (``None``: ``/sys/class/thermal``).
        vcgencmd: the Raspberry Pi firmware tool asked whether the CPU is throttled (``None``:
            ``vcgencmd`` on the PATH, if any).
        ca_file: PEM bundle of the CA(s) the server's certificate must chain to, instead of the
            system store (``None``: the system store).
        server_pin_sha256: pins of the server's public key, any of which is accepted (several
            allow a key rotation): base64 of the sha256 of the certificate's SubjectPublicKeyInfo
            (DER), as HPKP and ``curl --pinnedpubkey sha256//...`` write it; empty: no pinning.
        allow_insecure_http: allow ``http://`` to a server that is not on this machine (the
            credential and assignments then travel in clear); loopback is always allowed.
    """

    server: str = ""
    model: str = ""
    state_dir: Path = Path("edgeship-agent")
    trusted_keys: list[Path] = field(default_factory=list)
    enroll_token: str | None = None
    enroll_token_file: Path | None = None
    device_class: str | None = None
    attributes: dict[str, str] = field(default_factory=dict)
    check_interval_seconds: float = 10.0
    report_interval_seconds: float = 30.0
    request_timeout_seconds: float = 10.0
    download_max_bytes: int = 512 * 2**20
    download_deadline_seconds: float = 600.0
    outbox_max_reports: int = 10_000
    backoff_initial_seconds: float = 1.0
    backoff_max_seconds: float = 300.0
    variant_backoff_seconds: float = 600.0
    golden_agreement_slack: float = 0.1
    threads: int | None = None
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    workload: Path | None = None
    rate_per_second: float = 10.0
    ram_bytes: int | None = None
    thermal_dir: Path | None = None
    vcgencmd: Path | None = None
    ca_file: Path | None = None
    server_pin_sha256: list[str] = field(default_factory=list)
    allow_insecure_http: bool = False

    def check(self) -> AgentConfig:
        """Raise :class:`ConfigError` for a setting the agent cannot run with; return self."""
        if not self.server.startswith(("http://", "https://")):
            raise ConfigError(f"server must be an http(s) URL, got {self.server!r}")
        if not self.model:
            raise ConfigError("model is required (the registry name this device runs)")
        if not self.trusted_keys:
            raise ConfigError("trusted_keys is required: the public key(s) releases are signed with")
        for key in self.trusted_keys:
            if not Path(key).is_file():
                raise ConfigError(f"trusted key {key} does not exist")
        for name in ("check_interval_seconds", "report_interval_seconds", "request_timeout_seconds",
                     "download_deadline_seconds", "backoff_initial_seconds", "rate_per_second"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive")
        self._check_transport()
        if self.enroll_token is None and self.enroll_token_file is not None:
            try:
                self.enroll_token = read_secret_file(self.enroll_token_file, warn=log.warning)
            except SecretFileError as err:
                raise ConfigError(f"enroll_token_file: {err}") from None
        return self

    def _check_transport(self) -> None:
        try:
            check_url(self.server, self.allow_insecure_http)
        except InsecureUrl as err:
            raise ConfigError(f"server: {err}") from None
        plain = self.server.startswith("http://")
        if plain and (self.ca_file or self.server_pin_sha256):
            raise ConfigError("ca_file and server_pin_sha256 need an https:// server: over http:// "
                              "nothing would be verified")
        for pin in self.server_pin_sha256:
            try:
                parse_pin(pin)
            except ValueError as err:
                raise ConfigError(f"server_pin_sha256: {err}") from None
        if self.ca_file is not None:
            if not Path(self.ca_file).is_file():
                raise ConfigError(f"ca_file {self.ca_file} does not exist")
            try:
                tls_context(Path(self.ca_file))
            except (OSError, ValueError) as err:  # ssl.SSLError is an OSError
                raise ConfigError(f"ca_file {self.ca_file} holds no usable PEM certificate: {err}") from None

    def transport(self) -> Transport:
        """The :class:`edge_agent.transport.Transport` these settings describe."""
        return Transport(self.server.rstrip("/"), self.ca_file, self.server_pin_sha256,
                         self.allow_insecure_http)


def load_config(path: Path | None = None, env: Mapping[str, str] | None = None,
                **overrides: Any) -> AgentConfig:
    """Build the settings from defaults, ``path`` (TOML), ``env`` and ``overrides``.

    ``overrides`` whose value is ``None`` are ignored, so command-line flags left out do not
    hide the file or the environment.

    Raises:
        ConfigError: unreadable file, unknown key or a value of the wrong kind.
    """
    env = os.environ if env is None else env
    values: dict[str, Any] = {"enroll_token": env[ENV_ENROLL_TOKEN]} if env.get(ENV_ENROLL_TOKEN) else {}
    if path is not None:
        try:
            _merge(values, tomllib.loads(Path(path).read_text()))
        except (OSError, tomllib.TOMLDecodeError) as err:
            raise ConfigError(f"cannot read agent config {path}: {err}") from None
    layer = {}
    for item in dataclasses.fields(AgentConfig):
        raw = env.get(ENV_PREFIX + item.name.upper())
        if raw is not None and raw != "":
            layer[item.name] = raw
    _merge(values, layer)
    _merge(values, {k: v for k, v in overrides.items() if v is not None})
    return _build(values)


def _merge(values: dict[str, Any], layer: dict[str, Any]) -> None:
    """``values.update(layer)``, where a layer giving the enrollment token either way replaces both."""
    if all(key in layer for key in ENROLL_KEYS):
        raise ConfigError("give enroll_token or enroll_token_file, not both")
    if any(key in layer for key in ENROLL_KEYS):
        for key in ENROLL_KEYS:
            values.pop(key, None)
    values.update(layer)


def _build(values: dict[str, Any]) -> AgentConfig:
    known = {f.name: f for f in dataclasses.fields(AgentConfig)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"unknown agent setting(s) {unknown}; known: {sorted(known)}")
    defaults = AgentConfig()
    kwargs = {}
    for name, value in values.items():
        kwargs[name] = _coerce(name, value, getattr(defaults, name))
    return AgentConfig(**kwargs)


def _coerce(name: str, value: Any, default: Any) -> Any:
    try:
        if name == "trusted_keys":
            items = value.split(",") if isinstance(value, str) else list(value)
            return [Path(str(v).strip()) for v in items if str(v).strip()]
        if name == "attributes":
            return _attributes(value)
        if name == "server_pin_sha256":
            items = value.split(",") if isinstance(value, str) else list(value)
            return [str(v).strip() for v in items if str(v).strip()]
        if isinstance(default, bool):
            return _boolean(value)
        if name in ("state_dir", "workload", "thermal_dir", "vcgencmd", "ca_file", "enroll_token_file"):
            return Path(value)
        if name in ("threads", "metrics_port", "ram_bytes", "download_max_bytes", "outbox_max_reports"):
            return int(value)
        if isinstance(default, float):
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        hint = " (attributes take quoted strings: app_version = \"4.10\")" if name == "attributes" else ""
        raise ConfigError(f"agent setting {name}: cannot use {value!r}{hint}") from None


def _attributes(value: Any) -> dict[str, str]:
    """A TOML table of strings, or ``key=value,key=value`` from the environment. A number is
    refused, not converted: TOML reads ``4.10`` as 4.1, another version."""
    if isinstance(value, str):
        pairs = [item.split("=", 1) for item in value.split(",") if item.strip()]
        if any(len(pair) != 2 for pair in pairs):
            raise ValueError(value)
        value = {key.strip(): text.strip() for key, text in pairs}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise ValueError(value)
    return dict(value)


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(value)
