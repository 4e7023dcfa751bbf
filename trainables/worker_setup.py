"""What every Ray worker process of a sweep runs first (Ray's `worker_process_setup_hook`), before any import of ours.

When Ray shuts down it SIGTERMs its workers, and its handler raises SystemExit. If the signal lands while the garbage
collector runs a weakref callback (a worker still importing torch, say), Python prints that SystemExit as an ignored
exception with a traceback, which reaches the user's console through Ray's log forwarding.

Ray Train's placement-group cleaner (one per data-parallel trial) asks Ray's State API every few seconds whether
its controller lives. It finds its Ray by RAY_ADDRESS, else by looking for one on this host, which fails (with a
traceback) where a host runs several; and a Ray started without its dashboard has no State API, so the cleaner
would warn each time.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

SETUP_HOOK = "trainables.worker_setup.quiet_shutdown"


def ignore_exit_requests_in_callbacks(unraisable: Any) -> None:
    """`sys.unraisablehook` that drops SystemExit (only Ray's SIGTERM handler raises it there), reports the rest."""
    if not issubclass(unraisable.exc_type, SystemExit):
        sys.__unraisablehook__(unraisable)


def quiet_shutdown() -> None:
    sys.unraisablehook = ignore_exit_requests_in_callbacks
    import ray  # loaded already: this runs in a connected Ray worker

    os.environ.setdefault("RAY_ADDRESS", ray.get_runtime_context().gcs_address)
    logging.getLogger("ray.train.v2._internal.execution.controller.placement_group_cleaner").setLevel(logging.ERROR)
