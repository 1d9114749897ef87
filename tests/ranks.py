"""Running one rank of a gloo test and leaving it without a teardown hang."""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable
from typing import NoReturn

import torch.distributed as dist


def run_rank_then_exit(body: Callable[[], None]) -> NoReturn:
    """Run ``body`` in an initialised process group, then end the process at once.

    Neither ``destroy_process_group`` nor interpreter finalisation runs: before torch
    2.8, gloo's destructor joins its worker threads while holding the GIL, and a worker
    freeing the last reference to an all-reduced tensor waits for that GIL (a deadlock
    seen on torch 2.4). ``body`` has saved its results by then; a failure prints its
    traceback and exits non-zero, which fails the spawning test.
    """
    code = 0
    try:
        body()
        dist.barrier()  # no rank leaves while the other still needs it
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
