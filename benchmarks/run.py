"""The comparison harness, as a script: ``python -m benchmarks.run ...`` is ``papa bench ...``.

    python -m benchmarks.run --env PAPA-MNIST-v0 --agents papa,epapa,ddpo,d3po,reward-model,base --seeds 5 --workers 2
    python -m benchmarks.run --quick

See :mod:`papa_env.harness` (``papa bench --help``) for every option and what it writes.
"""

from __future__ import annotations

from papa_env.harness import main

if __name__ == "__main__":
    main()
