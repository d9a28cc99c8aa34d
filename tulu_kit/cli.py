"""The ``tulu-kit`` command: run recipes, and (as the stages land) evaluate, score, merge and prepare data.

Each subcommand is one small function that parses its arguments and calls into the library.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import os
import sys
from pathlib import Path

from tulu_kit.config import ConfigError

EPILOG = """examples:
  tulu-kit run recipes/quickstart.yaml                      # the whole pipeline on CPU, into runs/quickstart
  tulu-kit run recipes/quickstart.yaml --set sft.learning_rate=1e-3 --out runs/lr1e-3
  tulu-kit run recipes/one_gpu/olmo2_1b.yaml --dry-run      # validate offline and print the resolved recipe
  tulu-kit run recipes/one_gpu/olmo2_1b.yaml --write-configs cfg/   # one YAML per stage, for tulu-kit <stage>
  tulu-kit eval gsm8k --model runs/quickstart --data-dir demo       # a benchmark on a run's last model
  sbatch --nodes=2 recipes/slurm/run.sbatch recipes/tulu3/sft_8b.yaml   # notebooks on node 0, training on both
"""


@contextlib.contextmanager
def _run_folder(out, rank: int = 0, beside: bool = False):
    """Hold the lock of the folder a command writes (as `tulu-kit run` does): a second command into the same
    folder stops with RunLocked instead of silently replacing the first one's output. A folder replaced whole (a
    merged model) keeps its lock `beside` it (`.<name>.lock`); a node other than rank 0 takes none."""
    if not out or rank:
        yield
        return
    from tulu_kit.run import lock_run_dir

    out = Path(out)
    with lock_run_dir(out, out.parent / f".{out.name}.lock" if beside and out.name else None):
        yield


def benchmark_name(name: str) -> str:
    """argparse type of a benchmark argument: a known benchmark, else "did you mean"."""
    from tulu_kit.config import STAGES

    known = sorted(k.removeprefix("eval_") for k in STAGES if k.startswith("eval_"))
    if name in known:
        return name
    import difflib

    close = difflib.get_close_matches(name, known, n=1)
    hint = f"did you mean '{close[0]}'?" if close else f"known: {', '.join(known)}"
    raise argparse.ArgumentTypeError(f"unknown benchmark '{name}' ({hint})")


def cmd_run(args: argparse.Namespace) -> int:
    import yaml

    from tulu_kit.config import load_recipe

    hosts = [h.strip() for h in (args.hosts or "").split(",") if h.strip()]
    recipe = load_recipe(
        args.recipe, args.set, run_dir=args.out, hosts=hosts, gpus_per_node=args.gpus_per_node
    )
    if len(hosts) > 1:  # the stages' kernels start the other nodes' launchers (tulu_kit.launch.other_nodes)
        os.environ["TULU_KIT_HOSTS"] = ",".join(hosts)
    if args.write_configs:
        from tulu_kit.run import write_stage_configs

        for path in write_stage_configs(recipe, args.write_configs):
            print(path)
        return 0
    if args.dry_run:
        print(f"# {args.recipe}, resolved and checked (nothing ran). One stage's fields as a file for "
              "`tulu-kit <stage> FILE` or recipes/slurm/train.sbatch: --write-configs DIR")  # fmt: skip
        print(yaml.safe_dump(recipe.resolved(), sort_keys=False), end="")
        return 0
    from tulu_kit.run import run_recipe

    return run_recipe(recipe, force=args.force, log_output=args.log_output)


def add_run(sub) -> None:
    p = sub.add_parser(
        "run",
        help="run a recipe's stages (notebooks executed by papermill) into one run folder",
        description="Execute RECIPE's stages in order (with `jobs: N`, N at a time, each once the stages whose "
        "folders it reads have ended). Each stage is a notebook run headless by papermill with the recipe's "
        "parameters; the run folder gets the resolved config, the executed notebooks and each stage's artifacts. "
        "Stages that completed with the same parameters and inputs are skipped on a re-run.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("recipe", help="recipe YAML, e.g. recipes/quickstart.yaml")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a value: 'seed=1' (recipe key) or 'sft.learning_rate=1e-4' (stage key); repeatable",
    )
    p.add_argument(
        "--out",
        metavar="DIR",
        help="run folder (default: this project's runs/<recipe name>, wherever the command runs)",
    )
    p.add_argument("--force", action="store_true", help="re-run stages that already completed")
    p.add_argument(
        "--dry-run", action="store_true", help="validate the recipe, print it resolved, run nothing"
    )
    p.add_argument(
        "--write-configs",
        metavar="DIR",
        help="validate, then write each stage's resolved fields to DIR/<stage>.yaml (for `tulu-kit <stage> FILE`, "
        "recipes/slurm/train.sbatch or `papermill -f FILE`); run nothing",
    )
    p.add_argument("--log-output", action="store_true", help="stream each cell's output to the terminal")
    p.add_argument(
        "--hosts",
        default=os.environ.get("TULU_KIT_HOSTS", ""),
        metavar="H0,H1,...",
        help="run on several nodes (this one, H0, first): the notebooks run here, each training cell's launch "
        "starts one launcher per node (srun in a SLURM job, else ssh; recipes/slurm/run.sbatch); "
        "default $TULU_KIT_HOSTS",
    )
    p.add_argument(
        "--gpus-per-node",
        type=int,
        default=int(os.environ.get("TULU_KIT_GPUS_PER_NODE", "1")),
        metavar="N",
        help="processes per node with --hosts; gradient accumulation shrinks to keep each effective batch",
    )
    p.set_defaults(func=cmd_run)


NEEDS_BASE = ("task_arithmetic", "ties", "dare_linear", "dare_ties")


def cmd_merge(args: argparse.Namespace) -> int:
    with _run_folder(args.out, beside=True):
        return _merge(args)


def _merge(args: argparse.Namespace) -> int:
    from tulu_kit import merge, models, weight_diff

    if args.what == "lora":
        models.merge_lora(args.base, args.adapter, args.out, args.qlora, args.pad_to_multiple_of, args.dtype)
    elif args.what == "diff":
        weight_diff.make_diff(args.raw, args.tuned, args.out, args.diff_dtype, args.max_shard_size)
    elif args.what == "recover":
        weight_diff.recover(args.raw, args.diff, args.out, args.max_shard_size)
    else:
        if args.method in NEEDS_BASE and not args.base_model:
            raise ValueError(
                f"merge models --method {args.method} adds task vectors to a base model: give --base-model BASE "
                "(the checkpoint the models were fine-tuned from)"
            )
        kw = {k: getattr(args, k) for k in ("method", "weights", "base_model", "density", "scale", "seed")}
        merge.merge_models(args.models, args.out, max_shard_size=args.max_shard_size, **kw)
    print(args.out)
    return 0


def add_merge(sub) -> None:
    p = sub.add_parser(
        "merge",
        help="merge a LoRA/QLoRA adapter, make/recover a weight diff, or merge models",
        description="Merging without a notebook: an adapter into its base (lora), a weight diff (diff, "
        "recover), or several fine-tuned models into one (models). `tulu-kit merge WHAT --help` for each.",
        epilog="example: tulu-kit merge models runs/a/sft/model runs/b/sft/model --out soup/",
    )
    kinds = p.add_subparsers(dest="what", metavar="WHAT", required=True)
    lora = kinds.add_parser(
        "lora",
        help="merge a LoRA (--qlora: QLoRA) adapter into its base",
        description="Merge a PEFT adapter into its base model and save a plain checkpoint with the tokenizer.",
        epilog="example: tulu-kit merge lora --base runs/demo/quickstart/model --adapter runs/demo/lora/adapter "
        "--out merged/",
    )
    lora.add_argument("--base", required=True, help="base model folder or Hub id")
    lora.add_argument("--adapter", required=True, help="PEFT adapter folder")
    lora.add_argument(
        "--qlora", action="store_true", help="dequantize the NF4 base first (adapter trained 4-bit)"
    )
    lora.add_argument(
        "--pad-to-multiple-of", type=int, metavar="N", help="pad embedding rows to a multiple of N"
    )
    lora.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "bfloat16", "float16"],
        help="dtype the merge is computed and saved in (default float32)",
    )
    diff = kinds.add_parser(
        "diff",
        help="write tuned - raw (Alpaca / Tulu 1 weight diff), streamed",
        description="Write the weight diff tuned - raw, shard by shard, with a checksum of every tuned tensor.",
        epilog="example: tulu-kit merge diff --raw llama-7b --tuned tulu-7b --out tulu-7b-diff",
    )
    diff.add_argument("--raw", required=True, metavar="DIR", help="the original model folder (safetensors)")
    diff.add_argument(
        "--tuned", required=True, metavar="DIR", help="the fine-tuned model folder, same shapes"
    )
    diff.add_argument(
        "--diff-dtype",
        choices=["float32", "bfloat16", "float16"],
        help="store the diff in this dtype (default: the weights' own)",
    )
    rec = kinds.add_parser(
        "recover",
        help="write raw + diff and verify its checksum, streamed",
        description="Recover the fine-tuned model from the original and a diff made by `merge diff`; every "
        "recovered tensor is checked against the diff's SHA-256.",
        epilog="example: tulu-kit merge recover --raw llama-7b --diff tulu-7b-diff --out tulu-7b",
    )
    rec.add_argument(
        "--raw", required=True, metavar="DIR", help="the original model folder the diff was made from"
    )
    rec.add_argument("--diff", required=True, metavar="DIR", help="the diff folder written by `merge diff`")
    models = kinds.add_parser(
        "models",
        help="merge same-architecture models (mergekit): soups, TIES, SLERP ...",
        description="Merge checkpoints of one architecture with mergekit's methods.",
        epilog="example: tulu-kit merge models a/ b/ --method ties --base-model base/ --density 0.5 --out m/",
    )
    models.add_argument("models", nargs="+", help="checkpoint folders")
    models.add_argument("--method", default="linear", choices=["linear", "task_arithmetic", "ties", "slerp",
                        "dare_linear", "dare_ties"],
                        help="linear: weighted average (a soup); task_arithmetic, ties, dare_*: task vectors "
                        "added to --base-model; slerp: spherical interpolation of two models")  # fmt: skip
    models.add_argument("--weights", type=float, nargs="+", help="one per model (default: equal)")
    models.add_argument(
        "--base-model", default="", help="θ_0 of the task vectors; required by task_arithmetic, ties, dare_*"
    )
    models.add_argument("--density", type=float, default=1.0, help="fraction of each task vector kept")
    models.add_argument("--scale", type=float, default=1.0, help="λ on the merged task vector")
    models.add_argument("--seed", type=int, default=42, help="DARE's random drops")
    for q in (lora, diff, rec, models):
        q.add_argument("--out", required=True, help="output checkpoint folder")
        if q is not lora:
            q.add_argument("--max-shard-size", default="2GB", help="safetensors shard size of the output")
    p.set_defaults(func=cmd_merge)


# the training stages: `tulu-kit KIND CONFIG [--set key=value ...]`, one node's part of a (multi-node) job
TRAINING_KINDS = {
    "sft": "full / LoRA / QLoRA supervised fine-tuning",
    "lora": "LoRA / QLoRA SFT with the lora stage's defaults",
    "dpo": "DPO and its variants on preference pairs",
    "reward": "a Bradley-Terry reward model on preference pairs",
    "ppo": "PPO with verifiable rewards and/or a reward model (the kit's own loop)",
    "grpo": "GRPO (RL with verifiable rewards) on TRL's GRPOTrainer",
}
NODE_EPILOG = """several nodes: run the same command on every node, each with its machine_rank, e.g.
  tulu-kit {kind} cfg.yaml --set num_machines=2 --set num_processes=16 --set main_process_ip=10.0.0.1 \\
      --set machine_rank=$NODE_RANK      # 0 on the main node (the address above), 1 on the other
(recipes/slurm/train.sbatch does this under SLURM)"""


def cmd_train(args: argparse.Namespace) -> int:
    import importlib

    from tulu_kit.config import config_class
    from tulu_kit.training import load_config

    cls = config_class(args.command)
    cfg = load_config(cls, args.config, args.set)
    with _run_folder(cfg.out_dir, getattr(cfg, "machine_rank", 0)):
        result = importlib.import_module(cls.__module__).run(cfg)
    if result:  # rank 0's node prints where the model is; the other nodes have no result of their own
        print(result["model_dir"])
    return 0


def add_train(sub) -> None:
    for kind, what in TRAINING_KINDS.items():
        p = sub.add_parser(
            kind,
            help=f"train: {what}, from a flat config YAML (no notebook)",
            description=f"Train one {kind} stage from a YAML of its config fields (the notebook's parameters), "
            "launched on this node's processes (launcher, num_processes, deepspeed, num_machines, machine_rank, "
            "main_process_ip, main_process_port). A recipe writes one such YAML per stage: "
            "`tulu-kit run RECIPE --write-configs DIR`.",
            epilog=f"example:\n  tulu-kit run recipes/one_gpu/olmo2_1b.yaml --write-configs cfg/\n"
            f"  tulu-kit {kind} cfg/{kind}.yaml --set learning_rate=1e-5\n\n" + NODE_EPILOG.format(kind=kind),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.add_argument(
            "config",
            help="YAML of the stage's config fields (model, train_file, out_dir, ...), e.g. from --write-configs",
        )
        p.add_argument(
            "--set", action="append", default=[], metavar="KEY=VALUE", help="override a field; repeatable"
        )
        p.set_defaults(func=cmd_train)


# `tulu-kit eval` flags named after EvalConfig's sampling and engine fields; unset ones keep the config default
EVAL_ENGINE_FLAGS: dict[str, tuple[type, str]] = {
    "dtype": (str, "auto (float32 on CPU, bfloat16 on GPU), bfloat16, float16 or float32"),
    "seed": (int, "picks the --max-examples subset, seeds sampling and the vLLM engine (default 42)"),
    "temperature": (float, "sampling temperature; 0 = greedy (default: the benchmark's)"),
    "top_p": (float, "nucleus sampling; 1 = off (default: the benchmark's)"),
    "top_k": (int, "keep the k most likely tokens, both backends; 0 = off (default 0)"),
    "max_model_len": (int, "context in tokens; -1 = the model's own, vLLM: the longest that fits (default)"),
    "gpu_memory_utilization": (float, "vLLM: fraction of each GPU for weights + KV cache (default 0.9)"),
    "tensor_parallel_size": (int, "vLLM: GPUs one model is split across (default 1)"),
}


def _settings(pairs: list[str] | None) -> dict:
    """`--set KEY=VALUE` pairs (a benchmark's own field, e.g. ifbench version=v294, mmlu_pro form=mc)."""
    import yaml

    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"tulu-kit: error: --set expects KEY=VALUE, got {pair!r}")
        out[key.replace("-", "_")] = yaml.safe_load(value)
    return out


def cmd_eval(args: argparse.Namespace) -> int:
    import json

    from tulu_kit.evals import evaluate

    kw = {k: getattr(args, k) for k in ("backend", "n_shot", "batch_size")}
    if (
        args.subset is not None
    ):  # default: the benchmark's ("open-instruct": its seeded sample, where it has one)
        kw["subset"] = args.subset
    if args.chat is not None:  # default: the benchmark's (chat for the code benchmarks, IFEval, ToxiGen)
        kw["chat"] = args.chat
    from tulu_kit.config import RUNS_DIR

    out = args.out or str(
        RUNS_DIR / "eval" / args.benchmark
    )  # the project's runs/, wherever the command runs
    kw.update(model=args.model, out_dir=out, data_dir=args.data_dir)
    if args.max_new_tokens:
        kw["max_new_tokens"] = args.max_new_tokens
    if args.max_examples is not None:  # default: the benchmark's (open-instruct's subset size); 0: all
        kw["max_examples"] = args.max_examples or None
    for key in EVAL_ENGINE_FLAGS:  # unset: the benchmark's default (the code benchmarks sample at T 0.1)
        if getattr(args, key) is not None:
            kw[key] = getattr(args, key)
    kw.update(_settings(args.set))  # checked with the other keys by evaluate (tulu_kit.config.from_dict)
    with _run_folder(kw["out_dir"]):
        metrics = evaluate(args.benchmark, **kw)
    print(json.dumps({k: v for k, v in metrics.items() if k not in ("config", "protocol")}, indent=2))
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    import json

    from tulu_kit.evals import score_file

    options = {"skip_unmatched": True} if args.skip_unmatched else {}
    options.update(_settings(args.set))
    print(
        json.dumps(score_file(args.benchmark, args.predictions, args.out, args.data_dir, **options), indent=2)
    )
    return 0


SCORE_EPILOG = """benchmarks and the fields of each prediction row (JSONL):
  gsm8k           "question", "output"            math        "problem" (or "question"), "output"
  bbh             "task", "input", "output"       tydiqa      "id" (TyDi QA question id), "output"
  mmlu            "question" (+ "subject"), "prediction" (a letter) or "logprobs" (letter -> log-prob);
                  --set form=rc: the cloze form's "per_char" (A-D: log-likelihood per character of each answer)
  truthfulqa      "question", "logprobs" (answer text -> log-prob)
  humaneval, humaneval_plus, mbpp_plus            "task_id", "completion" (the official samples format)
  ifeval          "prompt", "response" (the official input_response_data format)
  xstest          "prompt", "completion" (or "output")
  toxigen         "group", "output"               truthfulqa_gen  "question", "output"
  alpaca_eval     "instruction", "output" (alpaca_eval's model_outputs.json rows)
  ifbench         "prompt", "response" (official format; --set version=v294 for the 2025-07 prompts)
  drop, agieval, mmlu_pro, gpqa, popqa            "id" or "question", "output" (see eval/README.md)
Judged benchmarks (alpaca_eval, xstest, toxigen, truthfulqa_gen) need their judge or classifier; see
eval/README.md.

example: tulu-kit score ifeval --predictions input_response_data.jsonl --data-dir DATA --skip-unmatched
"""


def add_eval(sub) -> None:
    p = sub.add_parser(
        "eval",
        help="evaluate a model on one benchmark (predictions.jsonl + metrics.json)",
        description="Generate (or score log-probabilities) with MODEL on BENCHMARK under open-instruct's protocol "
        "and write predictions.jsonl and metrics.json. The benchmark files come from --data-dir (`tulu-kit data "
        "prepare-eval` fetches them; `--data-dir demo`: a few shipped items, scores that mean nothing).",
        epilog="examples:\n"
        "  tulu-kit eval gsm8k --model runs/quickstart --data-dir demo --max-examples 2\n"
        "  tulu-kit eval ifeval --model allenai/OLMo-2-0425-1B-Instruct --backend vllm --out runs/eval/ifeval",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "benchmark",
        type=benchmark_name,
        help="gsm8k, math, mmlu, bbh, tydiqa, truthfulqa, ... (eval/README.md)",
    )
    p.add_argument(
        "--model", required=True, help="model folder, run folder (its last stage's model/) or Hub id"
    )
    p.add_argument(
        "--backend", default="hf", choices=["hf", "vllm"], help="vllm needs a GPU and the vllm extra"
    )
    p.add_argument(
        "--chat",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="wrap prompts in the model's chat template (default: the benchmark's)",
    )
    p.add_argument(
        "--max-examples",
        type=int,
        metavar="N",
        help="cap per task/subject/language (default: open-instruct's; 0: all)",
    )
    p.add_argument(
        "--subset",
        default=None,
        help="comma-separated tasks / subjects / languages to keep, and/or 'open-instruct' to draw open-instruct's "
        "seeded sample (the default for gsm8k, math, bbh, tydiqa); '' for the kit's nested draw",
    )
    p.add_argument("--n-shot", type=int, metavar="K", help="in-context exemplars (default: the protocol's)")
    p.add_argument(
        "--max-new-tokens", type=int, metavar="N", help="generation budget (default: the protocol's)"
    )
    p.add_argument(
        "--batch-size", type=int, default=8, help="prompts per generate call / forward pass (default 8)"
    )
    for key, (typ, text) in EVAL_ENGINE_FLAGS.items():
        p.add_argument("--" + key.replace("_", "-"), type=typ, help=text)
    p.add_argument(
        "--data-dir", help="benchmark data root (default: $TULU_KIT_DATA or ~/.cache/tulu_kit/data)"
    )
    p.add_argument(
        "--out",
        metavar="DIR",
        help="output folder (default: the project's runs/eval/BENCHMARK); resumes if present",
    )
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="a benchmark's own setting, e.g. version=v294 (ifbench), form=mc (mmlu_pro)")  # fmt: skip
    p.set_defaults(func=cmd_eval)
    s = sub.add_parser(
        "score",
        help="score predictions made anywhere; prints the metrics as JSON",
        description="Score a JSONL of outputs made by any model or API against the benchmark's gold answers.",
        epilog=SCORE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    s.add_argument("benchmark", type=benchmark_name, help="one of the benchmarks below")
    s.add_argument("--predictions", required=True, metavar="FILE", help="JSONL, one prediction per line")
    s.add_argument(
        "--skip-unmatched",
        action="store_true",
        help="ifeval: leave out and count rows whose prompt is not an input prompt (instead of stopping)",
    )
    s.add_argument("--out", metavar="DIR", help="also write DIR/metrics.json and DIR/results.jsonl")
    s.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="a scoring option, e.g. version=v294 (ifbench), shuffle_seed=42 (gpqa)")  # fmt: skip
    s.add_argument("--data-dir", help="benchmark data root (gold answers)")
    s.set_defaults(func=cmd_score)


def cmd_prepare_eval(args: argparse.Namespace) -> int:
    import urllib.error

    from tulu_kit.evals.data import prepare_eval

    try:
        print(prepare_eval(args.data_dir, args.only or None, args.force))
    except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
        reason = getattr(e, "reason", e)
        print(
            f"tulu-kit: error: could not download the benchmark files ({reason}); prepare-eval needs a network. "
            "Offline, copy the files into --data-dir (layout: eval/README.md) or use --data-dir demo",
            file=sys.stderr,
        )
        return 2
    return 0


def add_data_prepare_eval(kinds) -> None:
    """`tulu-kit data prepare-eval`."""
    p = kinds.add_parser(
        "prepare-eval",
        help="download the official benchmark files into the data root",
        description="Download each benchmark's official files into the data root that `tulu-kit eval` reads.",
        epilog="example: tulu-kit data prepare-eval --only gsm8k math   # into $TULU_KIT_DATA or ~/.cache/tulu_kit/data",
    )
    p.add_argument("--data-dir", help="data root (default: $TULU_KIT_DATA or ~/.cache/tulu_kit/data)")
    p.add_argument("--only", nargs="+", metavar="BENCHMARK", help="only these benchmarks")
    p.add_argument("--force", action="store_true", help="download again files that exist")
    p.set_defaults(func=cmd_prepare_eval)


def cmd_data_mix(args: argparse.Namespace) -> int:
    import json

    from tulu_kit.config import from_dict
    from tulu_kit.data.stage import DataConfig, run

    params = {
        "out_dir": args.out,
        "seed": args.seed,
        "sft_mixer_list": args.sft,
        "preference_mixer_list": args.preference or [],
        "tokenizer": args.tokenizer or "",
        "on_bad_row": args.on_bad_row,
    }
    result = run(from_dict(DataConfig, params, "tulu-kit data mix"))
    print(json.dumps({"totals": result["totals"], "files": result["files"]}, indent=2))
    return 0


def add_data_mix(kinds) -> None:
    """`tulu-kit data mix`: the data stage from the command line."""
    from tulu_kit.data.formats import FORMATS
    from tulu_kit.data.sources import SYNTHETIC

    by_kind = {k: [f.name for f in FORMATS.values() if f.kind == k] for k in ("sft", "preference")}
    epilog = (
        "a SOURCE is [FORMAT:]PATH_OR_HUB_ID[@SPLIT]; a known Hub id or a format with a published dataset "
        "needs no FORMAT:\n"
        f"  SFT formats:        {', '.join(by_kind['sft'])}\n"
        f"  preference formats: {', '.join(by_kind['preference'])}\n"
        f"  offline samples:    {', '.join(SYNTHETIC)}\n"
        "an AMOUNT is a fraction of the source (float, 1.0 = all, 2.0 = twice) or a row count (int)\n\n"
        "example: tulu-kit data mix --sft alpaca:alpaca.json 0.5 dolly 1000 --out mix/"
    )
    p = kinds.add_parser(
        "mix",
        help="convert and mix SFT / preference sources into chat-format JSONL",
        description="Convert each source to the chat `messages` format and mix them as open-instruct's "
        "dataset_mixer_list does.",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--sft",
        nargs="+",
        required=True,
        metavar="SOURCE AMOUNT",
        help="e.g. alpaca:data.json 0.5 tatsu-lab/alpaca 1000 (float = fraction, int = count)",
    )
    p.add_argument(
        "--preference", nargs="+", metavar="SOURCE AMOUNT", help="e.g. hh_rlhf:Anthropic/hh-rlhf@test 1.0"
    )
    p.add_argument(
        "--out", required=True, metavar="DIR", help="writes sft.jsonl, preference.jsonl, report.json"
    )
    p.add_argument("--tokenizer", help="model dir or Hub id for token statistics")
    p.add_argument(
        "--seed", type=int, default=42, help="sampling of fractional amounts and the held-out split"
    )
    p.add_argument(
        "--on-bad-row",
        choices=["error", "drop"],
        default="error",
        help="error: stop at a malformed row, naming file and line; drop: skip and count it",
    )
    p.set_defaults(func=cmd_data_mix)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tulu-kit",
        description="Instruction-tune open language models the Tulu way: recipes run notebooks, "
        "notebooks call the tulu_kit library, everything lands in one run folder.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from tulu_kit import __version__

    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level, tracebacks in full")
    parser.add_argument("--version", action="version", version=f"tulu-kit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    add_run(sub)
    add_merge(sub)
    add_eval(sub)
    add_train(sub)
    data = sub.add_parser(
        "data",
        help="prepare datasets: mix training data, fetch benchmark files",
        description="Data without a recipe: `data mix` converts and mixes SFT / preference sources, "
        "`data prepare-eval` downloads the benchmark files.",
        epilog="example: tulu-kit data mix --sft alpaca:alpaca.json 0.5 --out mix/",
    )
    kinds = data.add_subparsers(dest="data_command", metavar="WHAT", required=True)
    add_data_prepare_eval(kinds)
    add_data_mix(kinds)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return args.func(args)
    except ConfigError as e:
        print(f"tulu-kit: config error: {e}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as e:  # bad input: the message names the file, row and field
        if args.verbose:
            raise
        print(f"tulu-kit: error: {e} (run with -v for the traceback)", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno != errno.ENOSPC or args.verbose:
            raise
        print(
            f"tulu-kit: error: disk full writing {e.filename or 'a file'}: free space there", file=sys.stderr
        )
        return 1
    except RuntimeError as e:
        from tulu_kit.launch import LaunchError

        if type(e).__name__ == "RunLocked":  # another command writes into the same folder
            print(f"tulu-kit: {e}", file=sys.stderr)
            return 2
        if not isinstance(e, LaunchError) or args.verbose:
            raise
        print(f"tulu-kit: error: {e}", file=sys.stderr)  # the root cause first, then the launch's log tail
        return 1


if __name__ == "__main__":
    sys.exit(main())
