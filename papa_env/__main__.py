"""``python -m papa_env`` is the ``papa`` command."""

import sys

from papa_env.cli import main

sys.exit(main())
