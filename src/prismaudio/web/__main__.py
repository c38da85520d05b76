"""`python -m prismaudio.web [--model DIR] [--host H] [--port P] ...`: the same as `prismaudio demo`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ..errors import PrismAudioError
from .command import add_parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m prismaudio.web")
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["demo", *(sys.argv[1:] if argv is None else argv)])
    try:
        return args.func(args)
    except PrismAudioError as e:
        print(f"prismaudio: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("prismaudio: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
