"""Test doubles that ship with conveyor, for its own tests and for programs embedding it.

- ``FakeClock`` (``clock``): time that moves only when told (``advance``), or jumps on
  ``sleep``.
- ``ScriptedTransport`` (``scripted``): answers each url from a script of steps (``Ok``,
  ``Stall``, ``Status``, ``Fail``, ``Crash``), counting requests.
- ``FaultServer`` (``faults``): a real HTTP server on 127.0.0.1 serving in-memory files and
  fault routes (error statuses, Retry-After, stalls, resets, slow drips, redirects,
  endless and gzip bodies), with server-side request counts; ``body_of`` is what its
  routes serve. It builds on ``LocalFileServer`` (``runtime.fileserver``), the plain file
  server the demo uses, re-exported here.
- ``SimulatedTransportFactory``: the seeded offline transport of ``--simulate-downloads``,
  re-exported from ``runtime.core.simulate`` (production code, below the actors).
- ``RedisServer`` (``redisserver``): a real ``redis-server`` on a free port of
  127.0.0.1, persistence off, stopped with its ``with`` block.
- ``capture_logs``: structlog's log capture, re-exported.

Production code never imports this package (an import-linter contract holds this).
"""

from __future__ import annotations

from structlog.testing import capture_logs

from runtime.core.simulate import SimulatedTransportFactory
from runtime.fileserver import LocalFileServer
from runtime.testing.clock import FakeClock
from runtime.testing.faults import FaultServer, body_of
from runtime.testing.redisserver import RedisServer
from runtime.testing.scripted import Crash, Fail, Ok, ScriptedTransport, Stall, Status, Step

__all__ = [
    "Crash",
    "Fail",
    "FakeClock",
    "FaultServer",
    "LocalFileServer",
    "Ok",
    "RedisServer",
    "ScriptedTransport",
    "SimulatedTransportFactory",
    "Stall",
    "Status",
    "Step",
    "body_of",
    "capture_logs",
]
