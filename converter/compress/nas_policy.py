"""The decisions of the architecture search, free of I/O: what to try next, the Pareto front,
which candidate wins, and whether another candidate fits in the time left.

Order of proposals: the source model (its latency sets a relative budget), the smallest
architecture (if even that misses the budget, the search stops early with the reason), a
uniform ladder of widths, then local mutations (one stage's width or depth one notch) of a
random front member within the budget, so the search refines where accuracy and latency trade.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from converter.compress.nas_space import Architecture, SearchSpace

#: random mutations tried before the search calls the space exhausted around the front.
MUTATION_TRIES = 64


@dataclass(frozen=True)
class Point:
    """What the policy needs of a measured candidate."""

    arch: Architecture
    latency_ms: float
    quality: float | None  # None: not trained (over the latency budget)


def initial_ladder(space: SearchSpace) -> list[Architecture]:
    """Source, smallest, then each width uniformly (full depth, then least depth)."""
    source = space.source()
    least = tuple(0 for _ in space.stages)
    smallest = Architecture(tuple(min(space.width_choices(i)) for i in range(len(space.stages))), least)
    ladder = [source, smallest]
    for width in space.widths:
        widths = tuple(width if stage.layers else 1.0 for stage in space.stages)
        ladder += [Architecture(widths, source.depths), Architecture(widths, least)]
    ladder.append(Architecture(source.widths, least))
    return list(dict.fromkeys(ladder))


def propose(space: SearchSpace, tried: Sequence[Point], budget_ms: float,
            rng: random.Random) -> Architecture | None:
    """The next architecture to measure, or ``None`` when nothing new is left to try."""
    seen = {p.arch for p in tried}
    for arch in initial_ladder(space):
        if arch not in seen:
            return arch
    parents = [p for p in front(tried) if p.latency_ms <= budget_ms] or sorted(
        tried, key=lambda p: p.latency_ms)[:1]
    for _ in range(MUTATION_TRIES):
        child = mutate(space, rng.choice(parents).arch, rng)
        if child not in seen:
            return child
    return None


def mutate(space: SearchSpace, arch: Architecture, rng: random.Random) -> Architecture:
    """``arch`` with one stage's width or depth moved one notch up or down."""
    stage = rng.randrange(len(space.stages))
    widths, depths = list(arch.widths), list(arch.depths)
    choices = sorted(space.width_choices(stage))
    can_deepen = bool(space.stages[stage].blocks)
    if len(choices) > 1 and (not can_deepen or rng.random() < 0.5):
        here = choices.index(widths[stage]) if widths[stage] in choices else 0
        widths[stage] = choices[max(0, min(len(choices) - 1, here + rng.choice((-1, 1))))]
    elif can_deepen:
        depths[stage] = max(0, min(len(space.stages[stage].blocks), depths[stage] + rng.choice((-1, 1))))
    return Architecture(tuple(widths), tuple(depths))


def front(points: Sequence[Point]) -> list[Point]:
    """The measured points no other beats on both latency (lower) and quality (higher)."""
    scored = [p for p in points if p.quality is not None]
    return [p for p in scored if not any(
        o.latency_ms <= p.latency_ms and o.quality >= p.quality  # type: ignore[operator]
        and (o.latency_ms < p.latency_ms or o.quality > p.quality)  # type: ignore[operator]
        for o in scored)]


def choose(points: Sequence[Point], budget_ms: float, source: Architecture) -> Point | None:
    """The most accurate trained point within the budget (the faster one on a tie); the
    source model only when it is itself within the budget."""
    within = [p for p in points if p.quality is not None and p.latency_ms <= budget_ms]
    if not within:
        return None
    return max(within, key=lambda p: (p.quality, -p.latency_ms, p.arch != source))


def fits_in_time(now: float, deadline: float, durations: Sequence[float]) -> bool:
    """Whether another candidate may start: the longest one so far would end by the deadline."""
    return now + max(durations, default=0.0) <= deadline
