"""`zoo train`, `zoo eval`, `zoo ship`: training, measuring and shipping weights from the command line."""

from __future__ import annotations

import json
from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent.parent / "recipes" / "configs"


def _load_config(args):
    from .train import TrainConfig

    path = Path(args.config) if args.config else CONFIG_DIR / f"{args.model}.json"
    values = json.loads(path.read_text()) if path.is_file() else {"model": args.model}
    values["model"] = args.model
    if args.backend:
        values["backend"] = args.backend
    for key in ("epochs", "batch_size", "seed", "checkpoint_every", "max_train_examples"):
        if getattr(args, key) is not None:
            values[key] = getattr(args, key)
    opt = values.setdefault("optimizer", {})
    for key, arg in (("name", "optimizer"), ("lr", "lr"), ("weight_decay", "weight_decay"), ("schedule", "schedule"),
                     ("momentum", "momentum"), ("warmup_steps", "warmup_steps")):
        if getattr(args, arg) is not None:
            opt[key] = getattr(args, arg)
    if args.augment is not None:
        values["augment"] = args.augment
    return TrainConfig.from_dict(values)


def _cmd_train(args) -> int:
    from .train import fit

    cfg = _load_config(args)
    out = args.out or f"runs/{cfg.model}-{cfg.backend}"
    fit(cfg, out, data_dir=args.data_dir, resume=args.resume, progress=not args.no_progress)
    return 0


def _cmd_eval(args) -> int:
    from . import api
    from .data.pipeline import load_eval_split
    from .registry import update_entry
    from .train import evaluate

    source = args.weights or args.model
    if args.record:
        # Refuse before measuring (minutes on a CPU): --record describes the registry's default weights only.
        entry = api.registry.weights_entry(args.model)
        digest = api.sha256_file(api.resolve_weights_file(args.model))
        if args.weights and api.sha256_file(args.weights) != digest:
            raise ValueError(f"--record measures the registry's default weights {args.model}.{entry['tag']} (sha256 {digest}); "
                             f"{args.weights} is a different file (sha256 {api.sha256_file(args.weights)}): nothing evaluated or recorded")
    model = api.load(source, backend=args.backend)
    spec = model.zoo_spec
    if args.weights:
        spec = spec.replace(name=args.model, dataset=api.registry.get_spec(args.model).dataset)
    test = load_eval_split(spec, "test", args.data_dir)
    result = evaluate(model, args.backend, test, spec, progress=True)
    print(json.dumps({"model": args.model, "backend": args.backend, "weights": source, "test_accuracy": result["accuracy"],
                      "test_loss": result["loss"], "n": result["n"]}))
    if args.record:
        from ._version import __version__
        from .backends import get_backend

        def record(e):
            e["weights"][entry["tag"]].setdefault("metrics", {})[args.backend] = {
                "test_accuracy": round(result["accuracy"], 6), "test_loss": round(result["loss"], 6), "n": result["n"],
                "framework": get_backend(args.backend).framework_version(), "zoo_version": __version__}

        update_entry(args.model, record)
        print(f"recorded {args.backend} test accuracy of {args.model}.{entry['tag']} in the registry")
    return 0


def _cmd_ship(args) -> int:
    """Copy a trained checkpoint into the package's weights and register it (sha256, recipe, provenance)."""
    import shutil

    from . import api
    from .checkpoint import read_checkpoint, sha256_file
    from .data import DATASETS
    from .registry import WEIGHTS_DIR, get_spec, update_entry

    ckpt = read_checkpoint(args.weights)
    spec = get_spec(args.model)
    if ckpt.arch != spec.arch or ckpt.config != spec.config or ckpt.preprocessing != spec.preprocessing:
        # the check `zoo.load` makes: never ship a file that loading the model would then refuse
        raise ValueError(f"{args.weights}: holds architecture {ckpt.arch} {ckpt.config} with preprocessing {ckpt.preprocessing}, "
                         f"but {args.model} is {spec.arch} {spec.config} with {spec.preprocessing}; nothing shipped")
    run_dir = Path(args.weights).parent
    summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").is_file() else {}
    digest = sha256_file(args.weights)
    filename = f"{args.model}-{args.tag}-{digest[:8]}.safetensors"
    shutil.copyfile(args.weights, WEIGHTS_DIR / filename)

    def register(e):
        e.setdefault("weights", {})[args.tag] = {
            "file": filename, "sha256": digest, "hf_hub_id": None,
            "recipe": args.recipe, "config": summary.get("config"),
            "trained_in": ckpt.metadata.get("written_by", "?").split(";")[0].split(" ")[0],
            "written_by": ckpt.metadata.get("written_by"), "train_wall_time_s": summary.get("train_wall_time_s"),
            "machine": summary.get("machine"), "data_license": DATASETS[spec.dataset]["license"],
            "final_val_accuracy": summary.get("final_val_accuracy"), "metrics": {},
        }
        e["default_tag"] = args.tag

    update_entry(args.model, register)
    api.resolve_weights_file(args.model)  # verifies the copy against the recorded sha256
    print(f"shipped {filename} as {args.model}.{args.tag}; now run `zoo eval {args.model} --backend B --record` for both backends")
    return 0


def add_commands(sub) -> None:
    p = sub.add_parser("train", help="train a model (config: recipes/configs/MODEL.json, overridable)")
    p.add_argument("model")
    p.add_argument("--backend", choices=["torch", "jax"])
    p.add_argument("--config", help="JSON training config (default: recipes/configs/MODEL.json)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--optimizer", choices=["sgd", "adam", "adamw"])
    p.add_argument("--lr", type=float)
    p.add_argument("--momentum", type=float)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--schedule", choices=["constant", "cosine"])
    p.add_argument("--warmup-steps", type=int)
    p.add_argument("--augment", action=__import__("argparse").BooleanOptionalAction, default=None)
    p.add_argument("--seed", type=int)
    p.add_argument("--checkpoint-every", type=int, help="also save the training state every N steps")
    p.add_argument("--max-train-examples", type=int)
    p.add_argument("--out", help="output folder (default runs/MODEL-BACKEND)")
    p.add_argument("--data-dir", help="local folder with <dataset>/<split>.parquet (default $ZOO_DATA_DIR, else the Hub)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/train_state.safetensors")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("eval", help="accuracy on the full test split")
    p.add_argument("model")
    p.add_argument("--backend", required=True, choices=["torch", "jax"])
    p.add_argument("--weights", help="a checkpoint file (default: the registry's default weights)")
    p.add_argument("--data-dir")
    p.add_argument("--record", action="store_true", help="write the measured metrics into the registry entry")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("ship", help="bundle a trained checkpoint as the model's default weights")
    p.add_argument("model")
    p.add_argument("--weights", required=True)
    p.add_argument("--tag", required=True)
    p.add_argument("--recipe", required=True, help="the command that reproduces the checkpoint")
    p.set_defaults(func=_cmd_ship)
