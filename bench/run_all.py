"""The main job: every benchmark and the timing task, one after the other, tables printed as they come.

Run: ``python bench/run_all.py`` (about 15 minutes on 2 cores; needs ``pip install -e ".[all,test]"`` for the
``dcls`` reference). ``--only delays,timing_task`` runs a subset. The tables recorded in ``docs/benchmarks.md``
and ``docs/timing_task.md`` come from these scripts.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

SCRIPTS = ("kernel_construction", "dcls_layer", "delays", "timing_task")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(SCRIPTS), help=f"comma-separated subset of {SCRIPTS}")
    args = parser.parse_args()
    chosen = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in SCRIPTS]
    if unknown:
        parser.error(f"--only: unknown script(s) {unknown}; expected names from {SCRIPTS}.")
    here = os.path.dirname(os.path.abspath(__file__))
    failed = []
    for name in chosen:
        print(f"\n## bench/{name}.py\n", flush=True)
        rc = subprocess.call([sys.executable, os.path.join(here, f"{name}.py")])
        if rc != 0:
            failed.append(f"{name} (exit {rc})")
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
