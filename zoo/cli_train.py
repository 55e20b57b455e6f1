"""`zoo train`, `zoo finetune`, `zoo eval`, `zoo ship`: training, fine-tuning, measuring and shipping weights."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

RECIPES = Path(__file__).with_name("recipes")  # installed with the package: the configs behind the shipped weights


def recipe_path(config: str | None, model: str) -> Path | None:
    """`--config`: a JSON file, or the name of a bundled recipe (`cnn-mnist-article`); default: the model's own
    (for `NAME.TAG`, the tag's own recipe `NAME.TAG.json` when the default has moved on, else `NAME.json`)."""
    if config:
        path = Path(config)
        if path.is_file():
            return path
        if (RECIPES / f"{config}.json").is_file():
            return RECIPES / f"{config}.json"
        known = ", ".join(sorted(p.stem for p in RECIPES.glob("*.json")))
        raise FileNotFoundError(f"--config {config}: neither a file nor a bundled recipe (bundled: {known})")
    from .registry import split_tag

    for path in (RECIPES / f"{model}.json", RECIPES / f"{split_tag(model)[0]}.json"):
        if path.is_file():
            return path
    return None


def compilation_cache(backend: str) -> None:
    """JAX's persistent compilation cache for the command line's training runs (a recipe's second run skips
    compiling), in $JAX_COMPILATION_CACHE_DIR if set, else ~/.cache/zoo/jax."""
    import os

    from .backends import canonical_backend

    if canonical_backend(backend) == "jax":
        import jax

        path = os.environ.get("JAX_COMPILATION_CACHE_DIR") or str(Path.home() / ".cache" / "zoo" / "jax")
        jax.config.update("jax_compilation_cache_dir", path)


def _load_config(args, model: str | None = None, recipe: bool = True):
    """A TrainConfig: `--config` (or, with `recipe`, the model's bundled recipe), then the command-line options."""
    from .train import TrainConfig

    model = model or args.model
    path = recipe_path(args.config, model) if recipe or args.config else None
    if path is None and recipe:
        print(f"zoo: no recipe for {model}; training with the library's defaults", file=sys.stderr)
    values = json.loads(path.read_text()) if path is not None else {}
    values.pop("description", None)
    values["model"] = model
    if args.backend:
        values["backend"] = args.backend
    for key in ("epochs", "batch_size", "seed", "checkpoint_every", "max_train_examples", "init_from", "backbone_lr_scale",
                "early_stopping_patience", "name", "device", "select_on", "deterministic", "distributed", "grad_accum"):
        if getattr(args, key, None) is not None:
            values[key] = getattr(args, key)
    if getattr(args, "freeze", None) is not None:
        values["freeze"] = args.freeze if args.freeze in ("none", "backbone") else args.freeze.split(",")
    opt = values.setdefault("optimizer", {})
    for key, arg in (("name", "optimizer"), ("lr", "lr"), ("weight_decay", "weight_decay"), ("schedule", "schedule"),
                     ("momentum", "momentum"), ("warmup_steps", "warmup_steps")):
        if getattr(args, arg) is not None:
            opt[key] = getattr(args, arg)
    if args.augment is not None:
        values["augment"] = args.augment
    return TrainConfig.from_dict(values)


def jax_processes(args) -> None:
    """`--coordinator-address`, `--num-processes`, `--process-id`: the JAX_* variables `start_data_parallel` reads
    (each process of a run has its own id, so they describe the launch, not the training config)."""
    import os

    for option, variable in (("coordinator_address", "JAX_COORDINATOR_ADDRESS"), ("num_processes", "JAX_NUM_PROCESSES"),
                             ("process_id", "JAX_PROCESS_ID")):
        if getattr(args, option, None) is not None:
            os.environ[variable] = str(getattr(args, option))


def _cmd_train(args) -> int:
    from .train import fit

    jax_processes(args)
    cfg = _load_config(args)
    out = args.out or f"runs/{cfg.model}-{cfg.backend}"
    compilation_cache(cfg.backend)
    fit(cfg, out, data_dir=args.data_dir, resume=args.resume, progress=not args.no_progress)
    return 0


def _cmd_finetune(args) -> int:
    """Start from a pretrained model (name[.tag], file or hf-hub: id), new head for the data's labels."""
    from . import api
    from .train import fit

    jax_processes(args)
    base, _ = api.load_checkpoint_for(args.base, pretrained=False)  # the architecture behind BASE
    args.init_from = None if args.from_scratch else args.base
    cfg = _load_config(args, model=base.name, recipe=False)  # not the base's pretraining recipe: defaults
    options = {"text_column": args.text_column, "image_column": args.image_column, "label_column": args.label_column,
               "train_split": args.train_split, "validation_split": args.validation_split, "test_split": args.test_split,
               "max_per_class": args.max_per_class, "max_examples": args.max_examples}
    cfg.data = {"source": args.data, **{k: v for k, v in options.items() if v is not None}}
    if args.resize or args.colour:
        cfg.adapt = {"resize": args.resize, "colour": args.colour}
    cfg.name = args.name or f"{base.name}-finetuned"
    out = args.out or f"runs/{cfg.name}-{cfg.backend}"
    compilation_cache(cfg.backend)
    fit(cfg, out, data_dir=None, resume=args.resume, progress=not args.no_progress)
    return 0


def _cmd_eval(args) -> int:
    from . import api
    from .checkpoint import sha256_file
    from .data.pipeline import load_eval_split
    from .registry import update_entry
    from .train import evaluate

    source = args.weights or args.model
    if args.record:
        # Refuse before measuring (minutes on a CPU): --record describes the registry's default weights only.
        entry = api.registry.weights_entry(args.model)
        digest = sha256_file(api.resolve_weights_file(args.model))
        if args.weights and sha256_file(args.weights) != digest:
            raise ValueError(f"--record measures the registry's default weights {args.model}.{entry['tag']} (sha256 {digest}); "
                             f"{args.weights} is a different file (sha256 {sha256_file(args.weights)}): nothing evaluated or recorded")
    model = api.load(source, backend=args.backend, device=args.device)
    spec = model.zoo_spec
    if args.weights:
        spec = spec.replace(name=args.model, dataset=api.registry.get_spec(args.model).dataset)
    test = load_eval_split(spec, "test", args.data_dir)
    result = evaluate(model, args.backend, test, spec, progress=True)
    print(json.dumps({"model": args.model, "backend": args.backend, "weights": source, "test_accuracy": result["accuracy"],
                      "test_loss": result["loss"], "n": result["n"]}))
    if args.record:
        from .train import recorded_metrics

        def record(e):
            e["weights"][entry["tag"]].setdefault("metrics", {})[args.backend] = recorded_metrics(result, args.backend)

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
    if ckpt.arch != spec.arch or len(ckpt.labels) != len(spec.labels):
        raise ValueError(f"{args.weights}: holds architecture {ckpt.arch} with {len(ckpt.labels)} classes, but {args.model} is "
                         f"{spec.arch} with {len(spec.labels)}; nothing shipped")
    if (ckpt.config, ckpt.preprocessing) != (spec.config, spec.preprocessing):
        # The tag records its own; the model is built as its new default from now on (older tags keep theirs).
        print(f"{args.model}.{args.tag} changes the model: config {spec.config} -> {ckpt.config}, "
              f"preprocessing {spec.preprocessing} -> {ckpt.preprocessing}")
    if ckpt.metadata.get("finetuned_from") != spec.finetuned_from:
        raise ValueError(f"{args.weights}: started from {ckpt.metadata.get('finetuned_from')!r}, but the registry says "
                         f"{args.model} is fine-tuned from {spec.finetuned_from!r}; nothing shipped")
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
            "final_val_accuracy": summary.get("final_val_accuracy"), "best_epoch": summary.get("best_epoch"),
            "best_val_accuracy": summary.get("best_val_accuracy"), "metrics": {},
            "model_config": ckpt.config, "preprocessing": ckpt.preprocessing,
        }
        e["default_tag"] = args.tag
        e["config"], e["preprocessing"] = ckpt.config, ckpt.preprocessing  # the default tag's, for new models

    update_entry(args.model, register)
    api.resolve_weights_file(args.model)  # verifies the copy against the recorded sha256
    print(f"shipped {filename} as {args.model}.{args.tag}; now run `zoo eval {args.model} --backend B --record` for both backends")
    return 0


def _add_training_options(p) -> None:
    """Options shared by `zoo train` and `zoo finetune`: they override the recipe or config file."""
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--optimizer", choices=["sgd", "adam", "adamw"])
    p.add_argument("--lr", type=float)
    p.add_argument("--momentum", type=float)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--schedule", choices=["constant", "cosine"])
    p.add_argument("--warmup-steps", type=int)
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--seed", type=int)
    p.add_argument("--checkpoint-every", type=int, help="also save the training state every N steps")
    p.add_argument("--max-train-examples", type=int)
    p.add_argument("--resume", action="store_true", help="continue from OUT/train_state.safetensors")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--freeze", help="none, backbone (all but the classifier head), or comma-separated parameter prefixes")
    p.add_argument("--backbone-lr-scale", type=float, help="learning rate of all but the head, relative to --lr")
    p.add_argument("--early-stopping-patience", type=int, help="stop after N epochs without a better validation accuracy")
    p.add_argument("--device", help="torch: cpu (default), cuda, cuda:1; jax: cpu, gpu, gpu:1 (default: JAX's default device)")
    p.add_argument("--select-on", choices=["val_accuracy", "val_loss"], help="the epoch kept: best validation accuracy (default) or loss")
    p.add_argument("--deterministic", action="store_true", default=None,
                   help="deterministic kernels (torch.use_deterministic_algorithms; XLA's deterministic GPU ops): on a GPU, "
                        "exact resume is promised only with this")
    p.add_argument("--grad-accum", type=int, help="micro-batches per optimizer step: --batch-size stays the step's batch")
    p.add_argument("--distributed", action="store_true", default=None,
                   help="data-parallel: torch under torchrun (DDP, one rank per process); JAX over every device it sees "
                        "(several processes: --coordinator-address etc.); --batch-size is the global batch")
    p.add_argument("--coordinator-address", help="JAX, several processes: HOST:PORT of process 0 (JAX_COORDINATOR_ADDRESS)")
    p.add_argument("--num-processes", type=int, help="JAX, several processes: how many (JAX_NUM_PROCESSES)")
    p.add_argument("--process-id", type=int, help="JAX, several processes: this one's index (JAX_PROCESS_ID)")


def add_commands(sub) -> None:
    p = sub.add_parser("train", help="train a model (config: the bundled recipe MODEL, overridable)")
    p.add_argument("model")
    p.add_argument("--backend", choices=["torch", "jax"])
    p.add_argument("--config", help="a JSON training config, or a bundled recipe name (default: the model's own recipe)")
    p.add_argument("--out", help="output folder (default runs/MODEL-BACKEND)")
    p.add_argument("--data-dir", help="local folder with <dataset>/<split>.parquet (default $ZOO_DATA_DIR, else the Hub)")
    p.add_argument("--init-from", help="start from these weights (registry name[.tag], .safetensors path, hf-hub:ORG/REPO)")
    _add_training_options(p)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("finetune", help="fine-tune a pretrained model on your data (new head for its labels)")
    p.add_argument("base", help="registry name[.tag], .safetensors path or hf-hub:ORG/REPO[@REV]")
    p.add_argument("--data", required=True, help="a Hugging Face dataset id, a folder of <split>.parquet, a .csv or "
                   ".jsonl file, or an image folder with one sub-folder per class")
    p.add_argument("--backend", choices=["torch", "jax"])
    p.add_argument("--config", help="a JSON training config or bundled recipe name (default: 5 epochs, AdamW, constant lr)")
    for column in ("text", "image", "label"):
        p.add_argument(f"--{column}-column")
    for split in ("train", "validation", "test"):
        p.add_argument(f"--{split}-split", help=f"name of the {split} split")
    p.add_argument("--max-per-class", type=int, help="a seeded, stratified few-shot subsample of train")
    p.add_argument("--max-examples", type=int, help="a seeded, stratified subsample of train")
    p.add_argument("--resize", choices=["mnist_frame", "resize"], help="image rule to the model's input size (recorded)")
    p.add_argument("--colour", choices=["luma"], help="colour -> greyscale rule (recorded)")
    p.add_argument("--from-scratch", action="store_true", help="same architecture, random initialisation (a baseline)")
    p.add_argument("--name", help="the fine-tuned model's name (default BASE-finetuned)")
    p.add_argument("--out", help="output folder (default runs/NAME-BACKEND)")
    _add_training_options(p)
    p.set_defaults(func=_cmd_finetune)

    p = sub.add_parser("eval", help="accuracy on the full test split")
    p.add_argument("model")
    p.add_argument("--backend", required=True, choices=["torch", "jax"])
    p.add_argument("--weights", help="a checkpoint file (default: the registry's default weights)")
    p.add_argument("--data-dir")
    p.add_argument("--record", action="store_true", help="write the measured metrics into the registry entry")
    p.add_argument("--device", help="torch: cpu (default), cuda, cuda:1; jax: cpu, gpu, gpu:1 (default: JAX's default device)")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("ship", help="bundle a trained checkpoint as the model's default weights")
    p.add_argument("model")
    p.add_argument("--weights", required=True)
    p.add_argument("--tag", required=True)
    p.add_argument("--recipe", required=True, help="the command that reproduces the checkpoint")
    p.set_defaults(func=_cmd_ship)
