"""`ap-trial` / `python -m ap_core`: run one trial from the command line, no Ray or MLflow needed."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import NoReturn

from ap_core.config import TrialConfig
from ap_core.dataclass_flags import add_dataclass_arguments, dataclass_overrides
from ap_core.errors import ConfigError, NonFiniteLossError
from ap_core.paths import check_writable_dir, check_writable_file
from ap_core.results import CycleResult


class OneLineParser(argparse.ArgumentParser):
    """argparse prints its whole usage (22 lines) before a mistake: here the mistake is the one line, exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (ap-trial --help lists the flags)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="ap-trial", description=__doc__)
    add_dataclass_arguments(parser, TrialConfig)
    parser.add_argument("--checkpoint-dir", help="write a checkpoint here after every cycle")
    parser.add_argument("--resume", action="store_true", help="continue from --checkpoint-dir")
    parser.add_argument("--json", help="also write every cycle's result to this JSON file")
    parser.add_argument("--list", action="store_true", help="list models, datasets and methods, then exit")
    return parser


def print_cycle(result: CycleResult) -> None:
    print(
        f"cycle {result.cycle:2d}  weights {result.weights_remaining:6.2f}%  "
        f"channels {result.channels_remaining:5.1f}%  params {result.params_remaining:5.1f}%  "
        f"FLOPs {result.flops_remaining:5.1f}%  test {result.test_acc:6.2f}%  "
        f"best {result.best_acc:6.2f}%  loss {result.train_loss:.4f}  DNR {result.dnr:.3f}  "
        f"dead units {result.dead_units}/{result.total_units}  {result.seconds:.1f}s",
        flush=True,
    )


def method_help() -> list[str]:
    """One line per method: its name, kind and options with defaults and help."""
    from ap_core.pruning import METHODS

    lines = []
    for name in METHODS.names():
        method = METHODS.get(name)
        options = [f"{f.name}={f.default} ({f.metadata.get('help', '')})" for f in dataclasses.fields(method.Hparams)]
        kind = "channels" if method.removes_channels else "weights"
        lines.append(f"{name} [{kind}]: {'; '.join(options) or 'no options'}")
    return lines


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ap_core import DATASETS, MODELS, run_trial
    from ap_core.checks import checked_config
    from ap_core.retraining import RETRAINING

    try:
        if args.list:  # inside: a plugin that fails to load is one line too
            for title, registry in (("models", MODELS), ("datasets", DATASETS), ("retraining", RETRAINING)):
                print(f"{title}: {', '.join(registry.names())}")
                for form, description in registry.prefixes().items():
                    print(f"  {form}: {description}")
            print("methods (options for --method-options):")
            for line in method_help():
                print(f"  {line}")
            return 0
        config = checked_config(dataclass_overrides(args, TrialConfig))
        if args.resume and not args.checkpoint_dir:
            raise ConfigError("--resume needs --checkpoint-dir")
        # Checked now, not after hours of training
        if args.checkpoint_dir:
            check_writable_dir(Path(args.checkpoint_dir), "--checkpoint-dir")
        if args.json:
            check_writable_file(Path(args.json), "--json")
        results = run_trial(
            config,
            on_cycle=print_cycle,
            checkpoint_dir=args.checkpoint_dir,
            resume_from=args.checkpoint_dir if args.resume else None,
        )
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except NonFiniteLossError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if args.json:
        with open(args.json, "w") as f:
            json.dump([r.to_dict() for r in results], f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
