"""python -m benchmarks NAME [ARGS...]: run benchmarks/NAME.py's main() (it reads ARGS from sys.argv)."""

import importlib
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def available() -> list[str]:
    return sorted(p.stem for p in HERE.glob("*.py") if not p.stem.startswith("_") and p.stem != "common")


def main() -> int:
    usage = f"usage: python -m benchmarks NAME [ARGS...]; NAME is one of: {', '.join(available())}"
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
        print(usage, file=sys.stderr if len(sys.argv) < 2 else sys.stdout)
        return 2 if len(sys.argv) < 2 else 0
    name = sys.argv[1]
    if name not in available():
        print(f"unknown benchmark {name!r}; {usage}", file=sys.stderr)
        return 2
    sys.argv = [f"python -m benchmarks {name}", *sys.argv[2:]]
    return importlib.import_module(f"benchmarks.{name}").main() or 0


if __name__ == "__main__":
    sys.exit(main())
