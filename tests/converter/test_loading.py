from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from converter.errors import InputSpecError, ModelLoadError  # noqa: E402
from converter.loading import load_model  # noqa: E402
from converter.reference import fit_check  # noqa: E402
from converter.specs import parse_input_spec  # noqa: E402


def test_factory_path_loads_an_eval_module():
    model = load_model("tests.fixtures.op_models:cumprod")
    assert isinstance(model, torch.nn.Module) and not model.training


@pytest.mark.parametrize(
    "source, fragment",
    [("no_such_pkg.models:build", "cannot import 'no_such_pkg.models'"),
     ("tests.fixtures.op_models:nope", "has no 'nope'"),
     ("tests.fixtures.op_models:failing_factory", "failed: RuntimeError: weights file missing"),
     ("just_a_word", "not a file and not a 'package.module:factory'"),
     ("missing/model.pt", "does not exist")],
)
def test_bad_model_sources_name_the_problem(source, fragment):
    with pytest.raises(ModelLoadError, match=fragment):
        load_model(source)


def test_saved_module_export_and_state_dict_files(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(4, 2)).eval()
    torch.save(model, tmp_path / "m.pt")
    assert isinstance(load_model(str(tmp_path / "m.pt")), torch.nn.Sequential)
    exported = torch.export.export(model, (torch.zeros(1, 4),))
    torch.export.save(exported, tmp_path / "m.pt2")
    loaded = load_model(str(tmp_path / "m.pt2"))
    x = torch.randn(1, 4)
    assert torch.allclose(loaded(x), model(x))
    assert loaded.eval() is loaded  # exporters call eval(); torch.export modules refuse it
    torch.save(model.state_dict(), tmp_path / "sd.pt")
    with pytest.raises(ModelLoadError, match="state_dict"):
        load_model(str(tmp_path / "sd.pt"))


def test_fit_check_names_inputs_that_do_not_fit():
    model = torch.nn.Sequential(torch.nn.Linear(4, 2)).eval()
    spec = parse_input_spec("x:1x5:float32")
    with pytest.raises(InputSpecError, match=r"inputs \[x:1x5:float32\] do not fit the model"):
        fit_check(model, [spec], {"x": torch.zeros(1, 5).numpy()})
    (out,) = fit_check(model, [parse_input_spec("x:1x4:float32")], {"x": torch.zeros(1, 4).numpy()})
    assert (out.name, out.shape) == ("output", (1, 2))


def test_digits_example_factory_loads_trained_weights(digits_dir, monkeypatch):
    import numpy as np

    from examples.digits import evaluate

    monkeypatch.setenv("EDGESHIP_DIGITS_DIR", str(digits_dir))
    model = load_model("examples.digits:trained_model")
    with np.load(digits_dir / "eval.npz") as data:
        assert evaluate(model, data["image"], data["labels"]) > 0.9
