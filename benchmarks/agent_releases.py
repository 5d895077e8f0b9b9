"""Signed releases for the agent benchmark, built once and cached (torch side, run in a subprocess).

    python -m benchmarks.agent_releases --out build/agent-bench

* ``digits-cnn`` v1 and v2 (``examples.releases``, trained), each with the variants
  ``onnx-fp32`` and ``tflite-fp32`` only, so a device with one runtime gets exactly the fp32
  variant of that runtime (the server picks the fastest variant a device can run; with
  ``onnx-int8-static`` in the release it could pick either ONNX file);
* ``resnet-style`` v1 (``examples.vision.ResNetStyle``, 1.6M parameters, 1x1x32x32 inputs) with
  the same two variants. Its weights are seeded, not trained: latency does not depend on the
  weight values, and the golden probe compares the converted files with the same network.

All are signed with one key (``keys/publisher.key``). Prints one JSON line with the paths.
Runs in its own process so the benchmark itself never imports torch.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

KINDS = ("onnx-fp32", "tflite-fp32")
LARGE_MODEL = "resnet-style"
LARGE_INPUT_SPEC = "image:1x1x32x32:float32"


def build_large(out: Path, private_key: Path) -> dict[str, str]:
    """Convert the seeded ResNet-style network into a signed two-variant release (cached)."""
    import torch

    from converter.pipeline import convert
    from converter.progress import Progress
    from examples.vision import ResNetStyle, digits32

    data = out / "data" / LARGE_MODEL
    target = out / "releases" / f"{LARGE_MODEL}-1"
    if not (target / "manifest.json").exists():
        data.mkdir(parents=True, exist_ok=True)
        x_tr, y_tr, x_te, y_te = digits32()
        np.savez(data / "calib.npz", image=x_tr[:100], labels=y_tr[:100])
        np.savez(data / "eval.npz", image=x_te[:200], labels=y_te[:200])
        torch.manual_seed(0)
        recipe = data / "recipe.toml"
        recipe.write_text("".join(f'[[variants]]\nkind = "{kind}"\n' for kind in KINDS))
        convert(ResNetStyle().eval(), [LARGE_INPUT_SPEC], data / "eval.npz", target,
                calib_data=data / "calib.npz", recipe=recipe, model_name=LARGE_MODEL, version="1",
                signing_key=private_key, force=True, progress=Progress(quiet=True))
    return {"release": str(target), "eval": str(data / "eval.npz")}


def build_all(out: Path) -> dict[str, Any]:
    """The digits releases and the large model's release, with their keys and eval data."""
    from examples.releases import build_releases

    digits = build_releases(out / "digits", kinds=KINDS)
    large = build_large(out / "large", Path(digits["keys"]["private"]))
    return {"keys": digits["keys"], "digits": digits, LARGE_MODEL: large}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("build/agent-bench"))
    args = parser.parse_args()
    from converter.quiet import quiet_toolchains

    quiet_toolchains()
    print(json.dumps(build_all(args.out)))


if __name__ == "__main__":
    main()
