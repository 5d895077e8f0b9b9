"""GuardSpec and stages from plain dicts: defaults, round trips, errors naming the field."""

from __future__ import annotations

import json

import pytest

from rollout_server.analysis import DEFAULT_STAGES, Guard, GuardSpec, Metric, Mode, parse_stages


def test_defaults_follow_the_issue():
    spec = GuardSpec.default()
    by_name = {g.name: g for g in spec.guards}
    assert set(by_name) == {"error_rate", "latency", "accuracy", "load_failures"}
    assert by_name["latency"].threshold == 1.2 and by_name["latency"].quantile == 0.95
    assert by_name["accuracy"].threshold == 0.005
    assert by_name["error_rate"].cap == 0.05 and by_name["error_rate"].mode is Mode.LIMIT
    assert by_name["load_failures"].min_samples == 20
    assert "agreement" in {g.name for g in GuardSpec.default(shadow=True).guards}
    assert GuardSpec.from_dict(None) == spec == GuardSpec.from_dict({})


def test_round_trip_through_json():
    spec = GuardSpec.default(shadow=True).with_guards(Guard(Metric.LATENCY, Mode.GAIN, threshold=0.3))
    assert GuardSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    assert spec.guards[-1].name == "latency_gain"


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"guards": [{"metric": "latency", "threshold": 0.9}]}, "threshold"),
        ({"guards": [{"metric": "latency", "threshold": "fast"}]}, "threshold"),
        ({"guards": [{"metric": "throughput"}]}, "metric"),
        ({"guards": [{"threshold": 1.2}]}, "metric"),
        ({"guards": [{"metric": "error_rate", "mode": "gain"}]}, "mode"),
        ({"guards": [{"metric": "latency", "cap": 0.1}]}, "cap"),
        ({"guards": [{"metric": "error_rate", "min_samples": 0}]}, "min_samples"),
        ({"guards": [{"metric": "error_rate", "min_samples": "10"}]}, "min_samples"),
        ({"guards": [{"metric": "error_rate", "reasons": ["nope"]}]}, "reasons"),
        ({"guards": [{"metric": "latency", "quantile": 95}]}, "quantile"),
        ({"guards": [{"metric": "latency", "colour": "red"}]}, "colour"),
        ({"guards": [{"metric": "latency"}, {"metric": "latency"}]}, "duplicate"),
        ({"guards": []}, "guards"),
        ({"guards": "all"}, "guards"),
        ({"alpha": 2}, "alpha"),
        ({"alpha": True}, "alpha"),
        ({"beta": 1}, "beta"),
    ],
)
def test_bad_values_raise_value_error_naming_the_field(data: dict, field: str):
    with pytest.raises(ValueError, match=field):
        GuardSpec.from_dict(data)


def test_errors_say_which_guard():
    with pytest.raises(ValueError, match=r"guards\[1\]"):
        GuardSpec.from_dict({"guards": [{"metric": "latency"}, {"metric": "accuracy", "threshold": -1}]})


def test_stages_parse_and_validate():
    assert parse_stages(None) == DEFAULT_STAGES
    assert [s.percent for s in DEFAULT_STAGES] == [10, 50, 100]
    stages = parse_stages([{"percent": 5, "min_duration_seconds": 60, "min_samples": 100}, {"percent": 100}])
    assert stages[0].min_samples == 100 and stages[1].percent == 100
    for bad, field in [
        ([{"percent": 50}, {"percent": 10}], "percent"),
        ([{"percent": 0}], "percent"),
        ([{"percent": 100}], "percent"),
        ([{"percent": 10, "min_samples": -1}], "min_samples"),
        ([{"percent": 10, "min_duration_seconds": "1h"}], "min_duration_seconds"),
        ([{"percent": 10, "speed": 1}], "speed"),
        ([], "stages"),
    ]:
        with pytest.raises(ValueError, match=field):
            parse_stages(bad)


def test_pass_alpha_is_for_limits_and_round_trips():
    spec = GuardSpec.from_dict({"guards": [{"metric": "latency", "pass_alpha": 0.2},
                                           {"metric": "error_rate"}]})
    assert spec.guards[0].pass_alpha == 0.2 and spec.guards[1].pass_alpha is None
    assert spec.to_dict()["guards"][0]["pass_alpha"] == 0.2
    assert "pass_alpha" not in spec.to_dict()["guards"][1]  # unset: the point estimate decides
    assert GuardSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    for bad in (0, 0.5, 0.9, "0.1", True):
        with pytest.raises(ValueError, match="pass_alpha"):
            Guard.from_dict({"metric": "latency", "pass_alpha": bad})
    tuned = GuardSpec.default().with_options(Metric.LATENCY, pass_alpha=0.1)
    assert [g.pass_alpha for g in tuned.guards] == [None, 0.1, None, None]
    with pytest.raises(ValueError, match="pass_alpha: applies to limits only"):
        Guard.from_dict({"metric": "latency", "mode": "gain", "pass_alpha": 0.1})
