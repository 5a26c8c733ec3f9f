"""The ``memguard`` command line: ``doctor``, ``report LOGDIR``, ``estimate MODULE:FUNCTION``.

Example:
    $ memguard doctor
    $ memguard doctor --json
    $ memguard report logs/ --plot memory.png
    $ memguard estimate train:build --batch-size 256 --json
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="memguard", description="Memory visibility and safety for Keras/TensorFlow training."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    doctor = commands.add_parser("doctor", help="report this machine's memory, GPUs and settings")
    doctor.add_argument("--json", action="store_true", help="print machine-readable JSON")
    report = commands.add_parser(
        "report", help="summarize the memory runs MemGuardCallback wrote under LOGDIR"
    )
    report.add_argument("logdir", help="the log_dir given to MemGuardCallback")
    report.add_argument("--plot", metavar="FILE.png", help="also draw memory over epochs")
    report.add_argument("--json", action="store_true", help="print machine-readable JSON")
    estimate = commands.add_parser(
        "estimate", help="predict a fit's peak memory, in parts, without training"
    )
    estimate.add_argument(
        "target", help="MODULE:FUNCTION returning (model, data) or (model, data, batch_size)"
    )
    estimate.add_argument("--batch-size", type=int, help="the batch size to estimate for")
    estimate.add_argument(
        "--calibrate",
        action="store_true",
        help="also run two small real fits, each in a child process",
    )
    estimate.add_argument("--json", action="store_true", help="print machine-readable JSON")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs the command line; returns the exit code."""
    args = _parser().parse_args(argv)
    if args.command == "doctor":
        from keras_memguard.cli.doctor import print_doctor

        print_doctor(as_json=args.json)
        return 0
    if args.command == "report":
        return _report(args)
    if args.command == "estimate":
        return _estimate(args)
    return 2


def _estimate(args: argparse.Namespace) -> int:
    from keras_memguard.cli.estimate import EstimateError, run_estimate

    try:
        print(
            run_estimate(
                args.target,
                batch_size=args.batch_size,
                as_json=args.json,
                calibrate=args.calibrate,
            )
        )
    except (EstimateError, ValueError) as err:
        print(f"memguard estimate: {err}", file=sys.stderr)
        return 1
    return 0


def _report(args: argparse.Namespace) -> int:
    from keras_memguard.cli.report import (
        ReportError,
        format_report,
        load_report,
        plot_report,
        report_json,
    )

    try:
        runs = load_report(args.logdir)
        print(report_json(runs) if args.json else format_report(runs))
        if args.plot:
            plot_report(runs, args.plot)
            if not args.json:
                print(f"plot written to {args.plot}")
    except ReportError as err:
        print(f"memguard report: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
