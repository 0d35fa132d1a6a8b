"""The fuzz properties of tests/test_fuzz.py, run long: `--examples N` inputs per property.

The test suite runs them with the "fuzz" profile (100 examples each, a few seconds); this runs
the same properties with the "fuzz-long" profile, N examples each, for a search by hand before
a release or after a change to a parser. A failure prints the shrunk input and a
`@reproduce_failure` line that replays it; add it as an example-based test beside the parser's
own tests once it is fixed. No Docker is used.

    .venv/bin/python bench/fuzz.py --examples 5000             # all properties
    .venv/bin/python bench/fuzz.py --examples 2000 -k webhook  # some of them (pytest's -k)

The exit status is pytest's: 0 when every property held.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=5000, help="inputs per property (default 5000)")
    parser.add_argument("-k", dest="select", default="", help="only the properties whose names match (pytest -k)")
    args = parser.parse_args()
    # The profile is chosen when the module is imported, so it goes through the environment.
    env = {**os.environ, "DISCO_FUZZ_PROFILE": "fuzz-long", "DISCO_FUZZ_EXAMPLES": str(args.examples)}
    command = [sys.executable, "-m", "pytest", str(ROOT / "tests" / "test_fuzz.py"), "-q", "--durations=0",
               "--hypothesis-show-statistics", *(["-k", args.select] if args.select else [])]
    return subprocess.run(command, cwd=ROOT, env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
