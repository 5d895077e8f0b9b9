"""The converter's subcommands of ``edgeship``: ``convert``, ``variants`` and ``keys``.

Registered by :func:`edgeship.cli.build_parser`; the toolchains are imported only when a
subcommand runs, so ``edgeship --help`` stays light.
"""

from __future__ import annotations

import argparse


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add ``convert``, ``variants`` and ``keys`` to the ``edgeship`` subcommands."""
    _add_convert(sub)
    _add_variants(sub)
    _add_keys(sub)


def _add_convert(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert", help="convert a PyTorch model into validated, signed variants",
        description="Convert a PyTorch model into ONNX / TFLite / CoreML variants, validate "
        "each on its runtime, gate them and write a signed release directory.",
    )
    p.add_argument("--model", required=True,
                   help="package.module:factory, or a torch.save / torch.export (.pt2) file")
    p.add_argument("--input", action="append", default=[], metavar="NAME:SHAPE:DTYPE",
                   help="model input, repeatable, in positional order (e.g. image:1x3x32x32:float32)")
    p.add_argument("--eval", required=True, metavar="FILE.npz",
                   help="evaluation samples keyed by input name, labels under 'labels'")
    p.add_argument("--calib", metavar="FILE.npz", help="calibration samples (default: eval set)")
    p.add_argument("--train", metavar="FILE.npz",
                   help="training samples (same layout): needed by distill steps, fine-tunes pruned models")
    p.add_argument("--recipe", metavar="FILE.toml", help="variants and gates (default: all kinds)")
    p.add_argument("--out", required=True, metavar="DIR", help="release directory to create")
    p.add_argument("--model-name", default="model", help="registry name, [a-z0-9-]+")
    p.add_argument("--version", default="1", help="release version")
    p.add_argument("--task", choices=["classification", "embedding", "regression", "generic"])
    p.add_argument("--signing-key", metavar="FILE",
                   help="Ed25519 private key (default: $EDGESHIP_SIGNING_KEY)")
    p.add_argument("--force", action="store_true", help="replace an existing --out directory")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.add_argument("--verbose", action="store_true", help="keep the toolchains' own logs and warnings")
    p.set_defaults(run=_run_convert)


def _run_convert(args: argparse.Namespace) -> int:
    if not args.verbose:
        from converter.quiet import quiet_toolchains

        quiet_toolchains()
    from converter.pipeline import NoVariantPassed, run_conversion
    from converter.progress import Progress
    from converter.report import format_table

    try:
        conversion = run_conversion(
            args.model, args.input, args.eval, args.out,
            calib_data=args.calib, train_data=args.train, recipe=args.recipe, model_name=args.model_name,
            version=args.version, signing_key=args.signing_key, task=args.task,
            force=args.force, progress=Progress(quiet=args.quiet),
        )
    except NoVariantPassed as err:
        print(format_table(err.results))
        raise
    print(format_table(conversion.results))
    shipped = sum(r.shipped for r in conversion.results)
    print(f"\n{shipped}/{len(conversion.results)} variants in the release: {conversion.out}"
          f" (report: {conversion.out / 'report.md'})")
    return 0


def _add_variants(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("variants", help="list the variant kinds a recipe can ask for")
    p.set_defaults(run=_run_variants)


def _run_variants(args: argparse.Namespace) -> int:
    from converter.catalogue import VARIANT_KINDS

    for kind in VARIANT_KINDS.values():
        options = ", ".join(f"{k}={v!r}" for k, v in kind.options.items()) or "no options"
        print(f"{kind.kind:<24} {kind.precision:<16} {kind.summary}\n{'':<41} options: {options}")
    return 0


def _add_keys(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("keys", help="publisher signing keys")
    keys_sub = p.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    gen = keys_sub.add_parser("generate", help="create an Ed25519 key pair")
    gen.add_argument("--out", default="keys", metavar="DIR", help="directory (default: keys)")
    gen.add_argument("--name", default="publisher", help="file stem (default: publisher)")
    gen.set_defaults(run=_run_keys_generate)


def _run_keys_generate(args: argparse.Namespace) -> int:
    from edgeship.contract.signing import generate_keypair, key_id, load_private_key

    private, public = generate_keypair(args.out, args.name)
    kid = key_id(load_private_key(private).public_key())
    print(f"private key: {private} (keep it secret; mode 0600)\npublic key:  {public}\n"
          f"key id:      {kid}")
    return 0
