"""What every command line shares: argument types that refuse a bad value in one line, and which errors are the
user's (printed as `error: <one line>` with a non-zero exit code) rather than a bug's (a traceback)."""

import argparse

from llamalogue.run_dir import RunError

USER_ERRORS = (RunError, ValueError, FileNotFoundError, FileExistsError, NotADirectoryError,
               PermissionError)  # e.g. a --data or --out folder that may not be written


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (--max-steps 0 would otherwise mean "no limit" or be ignored)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: must be at least 1")
    return value

