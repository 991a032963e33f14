"""The user suite, as a script: ``python -m benchmarks.suite ...`` is ``papa bench --suite held-out ...``.

    python -m benchmarks.suite --agents epapa --seeds 3 --workers 2                  # the held-out half: what counts
    python -m benchmarks.suite --suite tuning --agents epapa --override '{"lr": 2e-4}'  # a variant, on the tuning half
    python -m benchmarks.suite --quick                                               # 3 tastes, 20 replies

The tastes, the halves and why the held-out one is never tuned on: :mod:`papa_env.suite`. The report
(``table.md``) and its columns: :mod:`papa_env.harness`.
"""

from __future__ import annotations

import sys

from papa_env.harness import main

if __name__ == "__main__":
    argv = sys.argv[1:]
    main(argv if "--suite" in argv else ["--suite", "held-out", *argv])
