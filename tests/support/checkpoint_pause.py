"""Test-only launcher: ``streamgmm`` with a pause on each side of the checkpoint's rename.

``python tests/support/checkpoint_pause.py run -c FILE`` runs exactly
``streamgmm run -c FILE``, except that the rename in
``streamgmm.checkpoint.save_state`` (the instant a new checkpoint replaces
the old one) is wrapped:

1. the temporary file is complete and fsynced, the old checkpoint still in
   place: ``<checkpoint>.phase`` says ``written N``, then the process sleeps
   ``STREAMGMM_TEST_CHECKPOINT_DELAY_S`` seconds;
2. the rename is done, the new checkpoint's offsets are not committed yet:
   the phase file says ``renamed N``, and the process sleeps again.

A test that sees a phase SIGKILLs the process inside that window, so a
crash in the middle of a checkpoint is deterministic instead of lucky. The
loop is blocked during the sleeps, so the /metrics counters read then are
exact. Nothing of this is in the shipped package: the product code is run
unchanged, only ``os.replace`` as seen by ``streamgmm.checkpoint`` differs.
"""

from __future__ import annotations

import os
import sys
import time

from streamgmm import checkpoint
from streamgmm.cli import main

DELAY_S = float(os.environ.get("STREAMGMM_TEST_CHECKPOINT_DELAY_S", "0.5"))


class _OsWithPausedRename:
    """``os`` for streamgmm.checkpoint, with ``replace`` paused on both sides."""

    def __init__(self) -> None:
        self.count = 0

    def __getattr__(self, name: str):
        return getattr(os, name)

    def _phase(self, target: str, phase: str) -> None:
        marker = f"{target}.phase"
        with open(marker + ".new", "w", encoding="ascii") as handle:
            handle.write(f"{phase} {self.count}\n")
        os.replace(marker + ".new", marker)

    def replace(self, src, dst) -> None:
        self.count += 1
        target = os.fspath(dst)
        self._phase(target, "written")
        time.sleep(DELAY_S)
        os.replace(src, dst)
        self._phase(target, "renamed")
        time.sleep(DELAY_S)


if __name__ == "__main__":  # never on import (pytest imports modules for doctests)
    checkpoint.os = _OsWithPausedRename()
    sys.exit(main())
