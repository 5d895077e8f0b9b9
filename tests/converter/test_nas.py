"""The ``search`` step: stages derived from any model, a model within a latency budget measured on
onnxruntime, the search log and its Pareto front, the time budget, and the refusals."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from converter.compress.nas_step import SearchStep
from converter.compress.steps import needs_training_data, parse_step, parse_steps
from converter.errors import CompressionError, RecipeError

torch = pytest.importorskip("torch")
pytest.importorskip("torch_pruning")
pytest.importorskip("onnxruntime")

from torch import nn  # noqa: E402

from converter.compress import nas  # noqa: E402
from converter.compress.chain import ModelChain  # noqa: E402
from converter.compress.env import StepEnv  # noqa: E402
from converter.compress.nas_candidate import LatencyProbe, build_candidate, measure_latency  # noqa: E402
from converter.compress.nas_space import Architecture, derive_space  # noqa: E402
from converter.compress.steps import Training  # noqa: E402
from converter.compress.training import TrainingSet  # noqa: E402
from converter.data import SampleSet  # noqa: E402
from converter.progress import Progress  # noqa: E402
from converter.reference import fit_check  # noqa: E402
from converter.specs import parse_input_spec  # noqa: E402

pytestmark = pytest.mark.slow

SPEC32 = parse_input_spec("image:1x1x32x32:float32")
TRAIN_ROWS = 300


class Unit(nn.Module):
    """A residual unit with names unlike the examples': ``y = act(x + mix(x))``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.mix = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.BatchNorm2d(channels),
                                 nn.ReLU(), nn.Conv2d(channels, channels, 3, padding=1))
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.mix(x))


class TwoScale(nn.Module):
    """Stem, two units at 16x16, a strided conv, one unit at 8x8, a hidden linear, a head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.early = nn.Sequential(Unit(8), Unit(8))
        self.down = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.late = Unit(16)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.hidden = nn.Linear(16, 24)
        self.out = nn.Linear(24, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.late(self.down(self.early(torch.relu(self.stem(x)))))
        return self.out(torch.relu(self.hidden(self.pool(x).flatten(1))))


def _digits(size: int) -> tuple[np.ndarray, np.ndarray]:
    from examples.digits import load_split

    x, y, _, _ = load_split()
    x = nn.functional.interpolate(torch.from_numpy(x[:TRAIN_ROWS]), size=size, mode="bilinear").numpy()
    return x.astype(np.float32), y[:TRAIN_ROWS]


def _env(size: int, epochs: int = 1, labels: bool = True) -> StepEnv:
    spec = parse_input_spec(f"image:1x1x{size}x{size}:float32")
    x, y = _digits(size)
    train = SampleSet([spec], {"image": x}, y if labels else None)
    return StepEnv([spec], {"image": x[:1]}, TrainingSet.from_samples(train), None,
                   Training(fine_tune_epochs=epochs, threads=1), Progress(quiet=True))


def _resnet() -> nn.Module:
    from examples.vision import ResNetStyle

    torch.manual_seed(0)
    return ResNetStyle(width=16).eval()


@pytest.fixture(scope="module")
def searched():
    """ResNet-style (compute-bound on onnxruntime) searched under half its measured p50."""
    torch.set_num_threads(1)
    env = _env(32)
    step = SearchStep(budget_ratio=0.5, seconds=240, max_candidates=6, latency_samples=60)
    model = _resnet()
    found, log = nas.search_architecture(model, step, env)
    return model, found, log, env


# --------------------------------------------------------------------------- the space


def test_stages_are_derived_by_output_resolution_and_residual_units_found_by_tracing():
    model = TwoScale().eval()
    space = derive_space(model, (torch.zeros(1, 1, 16, 16),), (0.5, 0.25))
    stages = {s.name: s for s in space.stages}
    assert list(stages) == ["conv 16x16", "conv 8x8", "linear"]
    # the stem and both units' convs are coupled by the residual adds: one group, rooted once
    assert stages["conv 16x16"].blocks == ("early.0", "early.1")
    assert stages["conv 8x8"].blocks == ("late",)
    assert stages["linear"].layers == ("hidden",) and stages["linear"].blocks == ()
    assert space.ignored == ("out",)  # the head keeps its 10 outputs
    assert space.size() == (3 * 3) * (3 * 2) * 3
    example = (torch.zeros(1, 1, 16, 16),)
    narrow = build_candidate(model, space, Architecture((0.5, 0.25, 0.5), (1, 0, 0)), example)
    assert isinstance(narrow.early[1], nn.Identity) and isinstance(narrow.late, nn.Identity)
    assert narrow.stem.out_channels == 4 and narrow.down.out_channels == 4
    assert narrow.hidden.out_features == 12 and narrow.out.out_features == 10
    assert narrow(torch.zeros(1, 1, 16, 16)).shape == (1, 10)
    assert model.stem.out_channels == 8  # the source is never modified


def test_width_only_space_has_no_blocks_and_the_digits_cnn_splits_at_its_pooling():
    from examples.digits import DigitsCNN

    space = derive_space(DigitsCNN().eval(), (torch.zeros(1, 1, 8, 8),), (0.5,))
    assert [(s.name, s.layers) for s in space.stages] == [
        ("conv 8x8", ("features.0", "features.3")), ("conv 4x4", ("features.7",)),
        ("linear", ("head.1",))]
    twoscale = derive_space(TwoScale().eval(), (torch.zeros(1, 1, 16, 16),), (0.5,), depth=False)
    assert all(not s.blocks for s in twoscale.stages)


def test_a_model_with_no_prunable_stage_gets_a_clear_error():
    head_only = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval()
    env = _env(8, epochs=0)
    with pytest.raises(CompressionError, match=r"no prunable stage.*classifier head \(1\)"):
        ModelChain(head_only, env).apply((SearchStep(budget_ratio=0.5),))


def test_the_search_needs_training_data():
    env = _env(16)
    env.train = None
    with pytest.raises(CompressionError, match="training data"):
        nas.search_architecture(TwoScale().eval(), SearchStep(budget_ratio=0.5), env)


# --------------------------------------------------------------------------- the search


def test_the_chosen_model_is_within_the_budget_when_measured_again_on_onnxruntime(searched, tmp_path):
    model, found, log, _ = searched
    source = log["candidates"][0]
    assert log["budget_ms"] == pytest.approx(0.5 * source["latency_ms"], rel=1e-3)
    chosen = [c for c in log["candidates"] if c["chosen"]]
    assert len(chosen) == 1 and chosen[0]["within_budget"] and chosen[0]["latency_ms"] <= log["budget_ms"]
    assert chosen[0]["params"] < source["params"]
    # measured again, apart from the search: within the budget, with room for a busy host
    x, _ = _digits(32)
    samples = SampleSet([SPEC32], {"image": x[:60]})
    np.savez(tmp_path / "x.npz", image=x[:60])
    probe = LatencyProbe([SPEC32], fit_check(model, [SPEC32], samples.sample(0)), samples, tmp_path / "x.npz")
    again = measure_latency(found, probe)
    assert again.latency_ms <= 1.5 * log["budget_ms"], (again, log["budget_ms"])
    assert found(torch.from_numpy(x[:2])).shape == (2, 10)
    assert sum(p.numel() for p in found.parameters()) == chosen[0]["params"]


def test_the_search_log_lists_every_candidate_and_a_consistent_pareto_front(searched):
    _, _, log, _ = searched
    candidates = log["candidates"]
    assert 2 <= len(candidates) <= 6 and log["stopped"] in ("candidate limit", "time budget")
    assert len({c["arch"] for c in candidates}) == len(candidates)
    for c in candidates:
        assert {"widths", "depths", "params", "macs", "latency_ms", "quality", "on_front"} <= set(c)
        assert (c["quality"] is None) == (not c["within_budget"] and c is not candidates[0])
    scored = [c for c in candidates if c["quality"] is not None]
    for c in scored:
        dominated = any(o["latency_ms"] <= c["latency_ms"] and o["quality"] >= c["quality"]
                        and (o["latency_ms"] < c["latency_ms"] or o["quality"] > c["quality"])
                        for o in scored)
        assert c["on_front"] == (not dominated), c
    assert any(c["on_front"] and c["chosen"] for c in candidates)
    assert len(log["final_fine_tune"]) == 1 and 0 <= log["final_quality"] <= 1  # the recipe's epochs
    assert log["elapsed_seconds"] <= log["time_budget_seconds"] + max(c["seconds"] for c in candidates)


def test_the_time_budget_stops_the_search_cleanly(monkeypatch):
    """Each measurement costs 30 s on an injected clock: 100 s fit three candidates, not four."""
    now = [0.0]
    real = nas.measure_latency

    def slow_measure(module, probe):
        now[0] += 30.0
        return real(module, probe)

    monkeypatch.setattr(nas, "measure_latency", slow_measure)
    env = _env(32, epochs=0)
    step = SearchStep(budget_ratio=0.5, seconds=100, max_candidates=20, latency_samples=20,
                      fine_tune_epochs=0)
    found, log = nas.search_architecture(_resnet(), step, env, clock=lambda: now[0])
    assert log["stopped"] == "time budget"
    assert len(log["candidates"]) == 3
    assert log["elapsed_seconds"] <= 100
    assert isinstance(found, nn.Module)


def test_a_budget_no_architecture_meets_is_refused_after_the_smallest():
    env = _env(16, epochs=0)
    with pytest.raises(CompressionError, match=r"no candidate within the latency budget.*smallest"):
        nas.search_architecture(TwoScale().eval(), SearchStep(budget_ms=1e-6, latency_samples=20), env)


def test_without_labels_candidates_are_ranked_against_the_source_outputs():
    env = _env(16, epochs=1, labels=False)
    step = SearchStep(budget_ratio=1.0, seconds=120, max_candidates=3, latency_samples=20)
    _, log = nas.search_architecture(TwoScale().eval(), step, env)
    assert log["metric"] == "1 − relative error"
    assert log["candidates"][0]["quality"] == pytest.approx(1.0)


def test_the_chosen_model_continues_down_the_chain_to_export_and_the_report(signing_key, tmp_path):
    """Through the converter: the searched variant is exported, validated on onnxruntime over
    the eval set (faster than the source there too), and the report holds the log and plot."""
    from converter import run_conversion
    from examples.digits import load_split

    x, y = _digits(32)
    _, _, x_eval, y_eval = load_split()
    x_eval = nn.functional.interpolate(torch.from_numpy(x_eval[:80]), size=32, mode="bilinear").numpy()
    np.savez(tmp_path / "train.npz", image=x, labels=y)
    np.savez(tmp_path / "eval.npz", image=x_eval.astype(np.float32), labels=y_eval[:80])
    recipe = tmp_path / "recipe.toml"
    recipe.write_text("""
[compression]
fine_tune_epochs = 1
[gates]
max_accuracy_drop = 1.0
[[variants]]
kind = "onnx-fp32"
[[variants]]
kind = "onnx-fp32"
id = "onnx-searched"
steps = [{ step = "search:width+depth:0.5x", seconds = 120, max_candidates = 3, latency_samples = 40 }]
""")
    conversion = run_conversion(
        _resnet(), [SPEC32], tmp_path / "eval.npz", tmp_path / "release", train_data=tmp_path / "train.npz",
        recipe=recipe, model_name="resnet16", version="1", signing_key=signing_key)
    results = {r.id: r for r in conversion.results}
    searched, source = results["onnx-searched"], results["onnx-fp32"]
    assert searched.compression[0] == "search:width+depth:0.5x"
    log = searched.steps[0]
    assert searched.model["params"] == next(c["params"] for c in log["candidates"] if c["chosen"])
    assert searched.model["params"] < source.model["params"]
    assert searched.metrics["latency_ms"]["p50"] < source.metrics["latency_ms"]["p50"]
    report = (conversion.out / "report.md").read_text()
    assert "**search:width+depth:0.5x**" in report and "| 0 (source) |" in report
    if "plot" in log:  # with matplotlib: drawn, in the report, listed and signed in the manifest
        assert (conversion.out / log["plot"]).is_file() and f"]({log['plot']})" in report
        manifest = json.loads((conversion.out / "manifest.json").read_text())
        assert log["plot"] in {f["file"] for f in manifest["figures"]}


# --------------------------------------------------------------------------- report


def test_the_report_shows_the_search_log_and_its_plot(searched, tmp_path):
    pytest.importorskip("matplotlib")
    from converter.compress.chain import StepRecord
    from converter.report_nas import write_search_plots
    from converter.report_sections import compression_sections
    from converter.results import VariantResult

    _, _, log, _ = searched
    step = StepRecord(SearchStep(budget_ratio=0.5).label(), json.loads(json.dumps(log)), 12.0).to_dict()
    result = VariantResult("onnx-searched", "onnx-fp32", "onnx", "fp32", steps=[step])
    assert write_search_plots(tmp_path, [result]) == ["search-1.png"]
    assert (tmp_path / "search-1.png").stat().st_size > 0
    text = "\n".join(compression_sections([result]))
    assert "![architecture search](search-1.png)" in text
    assert f"stopped: {log['stopped']}" in text
    rows = [line for line in text.splitlines() if re.match(r"^\| \d+( \(source\))? \|", line)]
    assert len(rows) == len(log["candidates"])


# --------------------------------------------------------------------------- recipe syntax


def test_search_steps_parse_from_strings_and_tables():
    steps = parse_steps(["search:width+depth:0.5x",
                         {"step": "search:width", "budget_ms": 2, "seconds": 60, "widths": [0.25, 0.5]}], "t")
    assert steps[0] == SearchStep(budget_ratio=0.5)
    assert steps[1] == SearchStep(space="width", budget_ms=2.0, seconds=60.0, widths=(0.5, 0.25))
    assert [s.label() for s in steps] == ["search:width+depth:0.5x", "search:width:2ms"]
    assert needs_training_data(steps[:1])


@pytest.mark.parametrize("entry, fragment", [
    ("search:width", "needs one latency budget"),
    ("search:deep:1ms", "expected search:width"),
    ("search:width:fast", "neither <ms>ms"),
    ({"step": "search:width:1ms", "widths": [1.5]}, "widths must be in"),
    ({"step": "search:width:1ms", "seconds": 0}, "seconds must be positive"),
    ({"step": "search:width", "budget_ms": 1, "budget_ratio": 0.5}, "needs one latency budget"),
    ({"step": "search:width:1ms", "depth": 2}, "unknown key"),
])
def test_bad_search_steps_are_refused_naming_the_problem(entry, fragment):
    with pytest.raises(RecipeError, match=fragment):
        parse_step(entry, "test")
