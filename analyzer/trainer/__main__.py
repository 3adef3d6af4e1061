"""`python -m analyzer.trainer --scenario NAME --out DIR [--set k=v ...] [--nproc N]`: train one scenario."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from analyzer.trainer.config import ConfigError, config_from_dict, load_scenario, parse_set_args, scenario_names
from analyzer.trainer.config import with_overrides
from analyzer.trainer.train import train


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analyzer.trainer", description=__doc__)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--scenario", help=f"one of: {', '.join(scenario_names())}")
    source.add_argument("--config", type=Path, help="a config.json written by an earlier run")
    parser.add_argument("--out", type=Path, required=True, help="the run directory to write")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one TrainConfig field (repeatable)")
    parser.add_argument("--nproc", type=int, default=1, help="processes (torch.distributed, gloo, DDP)")
    parser.add_argument("--stop-step", type=int, default=None, help="stop early without changing the schedule")
    parser.add_argument("--quiet", action="store_true", help="write train.log without echoing it")
    args = parser.parse_args(argv)
    try:
        if args.scenario:
            config = load_scenario(args.scenario)
        else:
            config = config_from_dict(json.loads(args.config.read_text()))
        config = with_overrides(config, parse_set_args(args.overrides))
    except (ConfigError, OSError, json.JSONDecodeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    command = " ".join(["python -m analyzer.trainer", *(argv if argv is not None else sys.argv[1:])])
    train(config, args.out, nproc=args.nproc, stop_step=args.stop_step, quiet=args.quiet, command=command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
