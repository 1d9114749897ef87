"""What ``import captum_ssa`` costs on top of ``import captum.attr``.

Each import is timed in a fresh interpreter (medians of ``--repeats`` runs):
``import captum.attr`` alone, and ``import captum.attr`` then ``import captum_ssa``
(the extra time is the package's own, with what it imports that Captum does not).
Run from the repository root::

    python benchmarks/bench_import.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys

_TIMED = (
    "import sys, time\n"
    "start = time.perf_counter(); import captum.attr; captum_done = time.perf_counter()\n"
    "before = set(sys.modules)\n"
    "import captum_ssa; done = time.perf_counter()\n"
    "added = sorted({m.split('.')[0] for m in set(sys.modules) - before} - {'captum_ssa'})\n"
    "print(captum_done - start, done - captum_done, ','.join(added))"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    arguments = parser.parse_args()
    captum_times, package_times = [], []
    added = ""
    for _ in range(arguments.repeats):
        output = subprocess.run(
            [sys.executable, "-c", _TIMED], capture_output=True, text=True, check=True
        ).stdout.split()
        captum_times.append(float(output[0]))
        package_times.append(float(output[1]))
        added = output[2] if len(output) > 2 else ""
    captum_median = statistics.median(captum_times)
    package_median = statistics.median(package_times)
    print(f"import captum.attr:              {captum_median:.3f} s")
    print(f"import captum_ssa on top of it:  {package_median:.3f} s")
    print(
        f"ratio (captum.attr + captum_ssa) / captum.attr: {1 + package_median / captum_median:.2f}"
    )
    print(f"top-level modules captum_ssa adds: {added or 'none'}")


if __name__ == "__main__":
    main()
