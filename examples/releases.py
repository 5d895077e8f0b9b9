"""Signed example releases of the digits CNN, for the demo and the agent's end-to-end tests.

``python -m examples.releases --out DIR`` trains two versions of the digits CNN, converts each
into a signed release with a few variant kinds, and writes a release whose golden set no
longer matches its model (re-signed, so only the device's golden probe can catch it)::

    DIR/keys/publisher.{key,pub}
    DIR/releases/digits-cnn-1, digits-cnn-2, digits-cnn-3-golden-mismatch
    DIR/data/eval.npz            # inputs and labels to replay as traffic

It prints one JSON line with those paths.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

MODEL_NAME = "digits-cnn"
DEFAULT_KINDS = ("onnx-fp32", "tflite-fp32", "onnx-int8-static")


def build_releases(out: Path, kinds: tuple[str, ...] = DEFAULT_KINDS, quiet: bool = True) -> dict[str, Any]:
    """Build the releases described in the module docstring; returns their paths."""
    from converter.pipeline import convert
    from edgeship.contract.signing import generate_keypair
    from examples.digits import INPUT_SPEC, build_example

    out = Path(out)
    keys = out / "keys"
    private = keys / "publisher.key"
    if not private.exists():
        generate_keypair(keys)
    recipe = out / "recipe.toml"
    recipe.write_text("".join(f'[[variants]]\nkind = "{kind}"\n' for kind in kinds))
    releases: dict[str, str] = {}
    for version, (epochs, seed) in {"1": (6, 0), "2": (15, 1)}.items():
        data = out / "data" / f"v{version}"
        if not (data / "digits_cnn.pt").exists():
            build_example(data, epochs=epochs, seed=seed)
        target = out / "releases" / f"{MODEL_NAME}-{version}"
        if not (target / "manifest.json").exists():
            convert(data / "digits_cnn.pt", [INPUT_SPEC], data / "eval.npz", target,
                    calib_data=data / "calib.npz", recipe=recipe, model_name=MODEL_NAME, version=version,
                    signing_key=private, force=True, progress=_silent() if quiet else None)
        releases[version] = str(target)
    shutil.copyfile(out / "data" / "v1" / "eval.npz", out / "data" / "eval.npz")
    broken = out / "releases" / f"{MODEL_NAME}-3-golden-mismatch"
    if not (broken / "manifest.json").exists():
        golden_mismatch(Path(releases["2"]), broken, "3", private)
    releases["3"] = str(broken)
    return {"keys": {"private": str(private), "public": str(keys / "publisher.pub")},
            "releases": releases, "eval": str(out / "data" / "eval.npz")}


def golden_mismatch(source: Path, target: Path, version: str, private_key: Path) -> Path:
    """Copy ``source`` as ``version`` with its golden reference outputs shifted by one class.

    The manifest is re-signed with ``private_key``, so the release publishes and verifies:
    only running the golden probe on a device shows that the model disagrees with it.
    """
    from edgeship.contract.manifest import Manifest
    from edgeship.contract.signing import load_private_key, sign_manifest

    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target)
    golden_path = target / "golden.npz"
    with np.load(golden_path) as npz:
        arrays = {name: npz[name] for name in npz.files}
    for name in [n for n in arrays if n.startswith("output:")]:
        arrays[name] = np.roll(arrays[name], 1, axis=-1)  # every top-1 answer moves to the next class
    with golden_path.open("wb") as handle:
        np.savez(handle, **arrays)
    data = json.loads((target / "manifest.json").read_text())
    data["version"] = version
    data["golden"]["sha256"] = hashlib.sha256(golden_path.read_bytes()).hexdigest()
    signed = sign_manifest(data, load_private_key(private_key))
    Manifest.from_dict(signed).write(target)
    return target


def _silent():
    from converter.progress import Progress

    return Progress(quiet=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("build/example-releases"))
    parser.add_argument("--kinds", default=",".join(DEFAULT_KINDS), help="variant kinds, comma separated")
    args = parser.parse_args()
    from converter.quiet import quiet_toolchains

    quiet_toolchains()
    print(json.dumps(build_releases(args.out, tuple(args.kinds.split(",")))))


if __name__ == "__main__":
    main()
