"""Pure decision core of the rollout server: measurements, guards, verdicts, the state machine.

No I/O here: the server loads window aggregates from its database into :class:`Measurements`,
calls :func:`assess` and :func:`decide`, and stores the verdicts and the new state::

    spec = GuardSpec.from_dict(rollout.guards_json)
    state = RolloutState.from_dict(rollout.state_json)
    measurements = Measurements.from_classes(stable_by_class, canary_by_class, look=state.next_look)
    verdicts = assess(spec, measurements)
    decision = decide(state, verdicts, now, canary_samples=measurements.canary.inferences)

Statistical choices are explained in docs/rollout-analysis.md. ``simulate`` (numpy, scipy) is
imported on demand, not here.
"""

from rollout_server.analysis.assess import assess, assess_guard, tests_per_look
from rollout_server.analysis.rollout import (
    ERROR_WINDOWS_TO_PAUSE,
    Action,
    Decision,
    InvalidTransition,
    Phase,
    RolloutState,
    abort,
    approve,
    decide,
    pause,
    promote,
    resume,
    start,
)
from rollout_server.analysis.spec import Guard, GuardSpec, Metric, Mode, default_guards
from rollout_server.analysis.stages import DEFAULT_STAGES, Stage, parse_stages
from rollout_server.analysis.stats import look_alpha
from rollout_server.analysis.verdict import Outcome, Verdict, worst
from rollout_server.analysis.window import (
    ERROR_REASONS,
    INFERENCE_ERROR_REASONS,
    ArmWindow,
    Measurements,
    pool,
)

__all__ = [
    "DEFAULT_STAGES",
    "ERROR_REASONS",
    "ERROR_WINDOWS_TO_PAUSE",
    "INFERENCE_ERROR_REASONS",
    "Action",
    "ArmWindow",
    "Decision",
    "Guard",
    "GuardSpec",
    "InvalidTransition",
    "Measurements",
    "Metric",
    "Mode",
    "Outcome",
    "Phase",
    "RolloutState",
    "Stage",
    "Verdict",
    "abort",
    "approve",
    "assess",
    "assess_guard",
    "decide",
    "default_guards",
    "look_alpha",
    "parse_stages",
    "pause",
    "pool",
    "promote",
    "resume",
    "start",
    "tests_per_look",
    "worst",
]
