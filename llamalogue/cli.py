"""What every command line shares: argument types that refuse a bad value in one line, which errors are the user's
rather than a bug's (a traceback), and how a command ends on one: `error: <one line>` on stderr and exit code 2, as
argparse ends on a bad option (`fail`). A command stopped by Ctrl-C saves and exits with 130, as a shell reports a
SIGINT (INTERRUPTED)."""

import argparse
import sys
from typing import NoReturn

from llamalogue.run_dir import RunError

USER_ERRORS = (RunError, ValueError, FileNotFoundError, FileExistsError, NotADirectoryError,
               PermissionError)  # e.g. a --data or --out folder that may not be written


INTERRUPTED = 130  # the exit code of a command stopped by Ctrl-C, after it saved


class UserError(SystemExit):
    """The exit of a command ended by a user's error: code 2; its str() is the line printed."""

    def __init__(self, error):
        super().__init__(2)
        self.line = f"error: {error}"

    def __str__(self) -> str:
        return self.line


def fail(error) -> NoReturn:
    """End the command on a user's error: one line `error: ...` on stderr, exit code 2."""
    exit_ = UserError(error)
    print(exit_.line, file=sys.stderr)
    raise exit_


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (--max-steps 0 would otherwise mean "no limit" or be ignored)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: must be at least 1")
    return value



def add_machine_options(parser: argparse.ArgumentParser) -> None:
    """--device and --threads, the machine options of every training command (set_threads applies --threads)."""
    parser.add_argument("--device", default=None, help="default: cuda when present, else cpu")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")


def set_threads(args) -> None:
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
