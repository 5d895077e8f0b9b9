"""Variants of a release this device refused, and which of them to ask the server to skip.

A variant that failed to load or its golden check is backed off (:class:`VariantBackoff`). While
it is, the agent names it in its next assignment poll (``exclude_version``, ``exclude``) and the
server answers with the next-best variant of the same release (docs/protocol.md §3.4), so the
device runs something at once instead of waiting out the backoff. When the backoff lapses, so
does the exclusion: the server offers the preferred variant again and the device retries it.
"""

from __future__ import annotations

from typing import Any

from edge_agent.backoff import VariantBackoff

#: releases remembered (the agent runs one model; older releases' refusals are of no use).
MAX_RELEASES = 8
#: the most variants one poll may exclude (the server's bound too).
MAX_EXCLUDED = 16


class RefusedVariants:
    """Refusals per release version, on top of a shared :class:`VariantBackoff`.

    Args:
        backoff: when each refused release variant may be tried again.
    """

    def __init__(self, backoff: VariantBackoff) -> None:
        self.backoff = backoff
        self._by_version: dict[str, dict[str, str]] = {}  # version -> variant id -> backoff key

    def refuse(self, assignment: dict[str, Any], now: float) -> float:
        """Record that the assignment's variant was refused at ``now``; returns when it may be
        tried again."""
        version, variant_id = str(assignment["version"]), str(assignment["variant"]["id"])
        refused = self._by_version.pop(version, {})
        self._by_version[version] = refused  # most recent last, so the oldest is dropped first
        refused[variant_id] = release_variant_key(assignment)
        while len(self._by_version) > MAX_RELEASES:
            del self._by_version[next(iter(self._by_version))]
        return self.backoff.failed(refused[variant_id], now)

    def blocked(self, assignment: dict[str, Any], now: float) -> bool:
        """Whether the assignment's variant is still backed off."""
        return self.backoff.blocked(release_variant_key(assignment), now)

    def excluded(self, version: str | None, now: float) -> list[str]:
        """Ids of the variants of release ``version`` still backed off, sorted (the poll's ``exclude``)."""
        refused = self._by_version.get(version or "", {})
        return sorted(v for v, key in refused.items() if self.backoff.blocked(key, now))[:MAX_EXCLUDED]


def release_variant_key(block: dict[str, Any]) -> str:
    """Backoff key of an assignment's (or shadow block's) variant: release version and file."""
    return f"{block.get('version')}:{(block.get('variant') or {}).get('sha256', block.get('sha256'))}"
