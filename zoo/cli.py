"""The `zoo` command line."""

from __future__ import annotations

import argparse
import json
import sys


def _cmd_list(args) -> int:
    from .registry import list_models, model_info

    for name in list_models(args.pattern, pretrained=args.pretrained):
        info = model_info(name)
        tag = info.get("default_tag") or "-"
        print(f"{name:20s} {info['task']:22s} weights: {tag}")
    return 0


def _cmd_info(args) -> int:
    from .registry import model_info

    print(json.dumps(model_info(args.name), indent=2))
    return 0


def _cmd_convert(args) -> int:
    from .flax_state import msgpack_to_safetensors, safetensors_to_msgpack

    src, dst = args.src, args.dst
    if src.endswith(".safetensors") and dst.endswith(".msgpack"):
        safetensors_to_msgpack(src, dst)
    elif src.endswith(".msgpack") and dst.endswith(".safetensors"):
        msgpack_to_safetensors(src, dst)
    else:
        raise SystemExit("zoo convert: convert .safetensors -> .msgpack or .msgpack -> .safetensors")
    print(f"wrote {dst}")
    return 0


def _cmd_push(args) -> int:
    from .hub import push

    result = push(args.model_or_file, args.repo, dry_run=args.dry_run, folder=args.out, revision=args.revision, private=args.private,
                  evaluate=args.evaluate, data_dir=args.data_dir)
    print(json.dumps(result))
    return 0


def _cmd_import(args) -> int:
    from .torchvision_import import import_weights

    try:
        path = import_weights(args.source, weights=args.weights, out=args.out, progress=not args.quiet)
    except (ImportError, OSError) as e:  # torchvision missing, no network
        print(f"zoo import: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {path}  (load it with zoo.load({str(path)!r}, backend='torch' or 'jax'))")
    return 0


def _cmd_demo(args) -> int:
    from .demo import run_demo

    return run_demo(args.model, data_dir=args.data_dir)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zoo", description="PyTorch / Flax NNX twin models with one checkpoint format.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("list", help="list registered models")
    p.add_argument("pattern", nargs="?", default="*")
    p.add_argument("--pretrained", action="store_true", help="only models with shipped weights")
    p.set_defaults(func=_cmd_list)
    p = sub.add_parser("info", help="show a model's registry entry")
    p.add_argument("name")
    p.set_defaults(func=_cmd_info)
    p = sub.add_parser("convert", help="convert a checkpoint: .safetensors <-> Flax .msgpack state")
    p.add_argument("src")
    p.add_argument("dst")
    p.set_defaults(func=_cmd_convert)
    p = sub.add_parser(
        "push", help="publish a checkpoint to the Hugging Face Hub (model card, config, safetensors)",
        description="Publish a checkpoint to the Hugging Face Hub: model.safetensors, config.json and a model card (README.md). "
                    "The card reports test metrics and a recipe only when they describe this very file: when its sha256 is that "
                    "of a registry weights entry (any model, any tag; the card names it as NAME.TAG and uses its recorded "
                    "metrics and recipe), or with --evaluate, which measures the file on the full test split of its dataset in "
                    "both backends at push time. Otherwise the card says plainly that the file was not evaluated. "
                    "config.json records which case applied (metrics_source) and the metrics.")
    p.add_argument("model_or_file", help="a registry name (its default weights) or a .safetensors file")
    p.add_argument("--repo", required=True, help="ORG/REPO on the Hub")
    p.add_argument("--dry-run", action="store_true", help="write the folder only")
    p.add_argument("--out", help="folder to prepare (default: a temporary folder)")
    p.add_argument("--revision", help="branch to commit to (default main)")
    p.add_argument("--private", action="store_true")
    p.add_argument("--evaluate", action="store_true",
                   help="measure the file's test accuracy in both backends now and put those figures in the card")
    p.add_argument("--data-dir", default=None,
                   help="for --evaluate: folder with <dataset>/test.parquet (default $ZOO_DATA_DIR, else the Hub)")
    p.set_defaults(func=_cmd_push)
    p = sub.add_parser(
        "import", help="import torchvision's pretrained weights as a zoo checkpoint (needs torchvision, the internet once)",
        description="Fetch a torchvision classifier's pretrained weights through torchvision (its download cache and hash check), "
                    "load them strictly into the zoo's PyTorch twin and write one zoo .safetensors that loads in both backends. "
                    "The file records the weights' preprocessing (their transforms()), category names, source URL, recipe, "
                    "licence (as torchvision states it, or 'not stated by torchvision') and the accuracy torchvision reports "
                    "(not measured by the zoo).")
    p.add_argument("source", help="torchvision:NAME, e.g. torchvision:resnet50 (see `zoo list` for the six importable models)")
    p.add_argument("--weights", default="DEFAULT", help="torchvision's weights name, e.g. IMAGENET1K_V2 (default: DEFAULT)")
    p.add_argument("--out", help="file to write (default: NAME.WEIGHTS.safetensors in the working directory)")
    p.add_argument("--quiet", action="store_true", help="no download progress bar")
    p.set_defaults(func=_cmd_import)
    p = sub.add_parser("demo", help="load a model in both backends, predict digits, compare the outputs")
    p.add_argument("--model", default="cnn-mnist")
    p.add_argument("--data-dir", default=None, help="folder with mnist/test.parquet (default: $ZOO_DATA_DIR or bundled samples)")
    p.set_defaults(func=_cmd_demo)
    from . import bench

    p = sub.add_parser("bench", help="training and inference speed of zoo models in both frameworks, beside the article's loops",
                       description=bench.__doc__.split("\n\n")[0])
    bench.add_arguments(p)
    p.set_defaults(func=bench.run)
    from . import cli_train

    cli_train.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .checkpoint import CheckpointError
    from .registry import UnknownModelError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (UnknownModelError, CheckpointError, LookupError, FileNotFoundError, ValueError) as e:
        print(f"zoo {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
