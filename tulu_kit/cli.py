"""The ``tulu-kit`` command: run recipes, and (as the stages land) evaluate, score, merge and prepare data.

Each subcommand is one small function that parses its arguments and calls into the library.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from tulu_kit.config import ConfigError

EPILOG = """examples:
  tulu-kit run recipes/quickstart.yaml                      # the whole pipeline on CPU, into runs/quickstart
  tulu-kit run recipes/quickstart.yaml --set sft.learning_rate=1e-3 --out runs/lr1e-3
  tulu-kit run recipes/tulu3/sft_8b.yaml --dry-run          # validate and print the resolved recipe
"""


def cmd_run(args: argparse.Namespace) -> int:
    import yaml

    from tulu_kit.config import load_recipe

    recipe = load_recipe(args.recipe, args.set, run_dir=args.out)
    if args.dry_run:
        print(yaml.safe_dump(recipe.resolved(), sort_keys=False), end="")
        return 0
    from tulu_kit.run import run_recipe

    return run_recipe(recipe, force=args.force, log_output=args.log_output)


def add_run(sub) -> None:
    p = sub.add_parser(
        "run",
        help="run a recipe's stages (notebooks executed by papermill) into one run folder",
        description="Execute RECIPE's stages in order. Each stage is a notebook run headless by papermill with "
        "the recipe's parameters; the run folder gets the resolved config, the executed notebooks and each "
        "stage's artifacts. Stages that completed with the same parameters are skipped on a re-run.",
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
    p.add_argument("--out", metavar="DIR", help="run folder (default: runs/<recipe name>)")
    p.add_argument("--force", action="store_true", help="re-run stages that already completed")
    p.add_argument(
        "--dry-run", action="store_true", help="validate the recipe, print it resolved, run nothing"
    )
    p.add_argument("--log-output", action="store_true", help="stream each cell's output to the terminal")
    p.set_defaults(func=cmd_run)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tulu-kit",
        description="Instruction-tune open language models the Tulu way: recipes run notebooks, "
        "notebooks call the tulu_kit library, everything lands in one run folder.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    add_run(sub)
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
    except (FileNotFoundError, ValueError) as e:
        print(f"tulu-kit: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
