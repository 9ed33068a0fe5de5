"""``python -m planner.executor ORDER.json``: one sweep worker (see :func:`worker_main`)."""

import sys

from planner.executor._workers import worker_main

sys.exit(worker_main(sys.argv[1:]))
