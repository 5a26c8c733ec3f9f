"""The ``memguard`` command line: ``memguard doctor`` and ``memguard report LOGDIR``.

Example:
    $ memguard doctor
    $ memguard doctor --json
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
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs the command line; returns the exit code."""
    args = _parser().parse_args(argv)
    if args.command == "doctor":
        from keras_memguard.doctor import print_doctor

        print_doctor(as_json=args.json)
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
