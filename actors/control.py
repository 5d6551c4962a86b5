"""Sending to actors that may have stopped."""

from __future__ import annotations

from typing import Any

import pykka

__all__ = ["tell"]


def tell(ref: pykka.ActorRef[Any], message: Any) -> bool:
    """Tell ``ref``; return False instead of raising when it already stopped.

    Used for reports whose receiver may have ended the run meanwhile (an aborted
    shutdown): the work is not lost, the store still says pending.
    """
    try:
        ref.tell(message)
    except pykka.ActorDeadError:
        return False
    return True
