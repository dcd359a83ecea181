"""Which I/O gRPC runs on in a Prognos process: imported first, before ``grpc`` itself.

gRPC reads ``GRPC_EXPERIMENTS`` once, when ``grpc`` is imported. Since grpcio 1.80 its
default I/O is the EventEngine, which reads and writes each call on a thread pool of its
own and hands the result to the thread waiting for it (the asyncio loop of a service, the
caller of a blocking stub). The poller it replaced does that I/O on the waiting thread.
On a small host the hand-offs cost more than the I/O. On 2 cores, with the client and
server of ``bench_inference.py``, a bare health check took p50 0.62 ms on the EventEngine
and 0.47 ms on the poller; ``Predict`` p99 was 2.65-2.87 ms against 1.94-2.04 ms with
client and services on the poller (either side alone gave about half of it).

So every Prognos entry point (each service's ``__main__``, the ``prognos`` command, the
test suite and the benchmarks) imports this module before anything that imports grpc,
and the processes they start inherit the setting. A ``GRPC_EXPERIMENTS`` already in the
environment is left as it is; set it empty for gRPC's own defaults.

The poller remains in grpcio behind these experiments, and gRPC plans to remove it. A
grpcio without them logs "Unknown experiment" once and runs on the EventEngine.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import MutableMapping

VARIABLE = "GRPC_EXPERIMENTS"
# The EventEngine's client, listener and other endpoints off: the poller does their I/O.
POLLER = "-event_engine_listener,-event_engine_client,-event_engine_for_all_other_endpoints"


def apply(environ: MutableMapping[str, str] = os.environ) -> str:
    """Set ``GRPC_EXPERIMENTS`` unless it is set; return the value in effect."""
    if environ is os.environ and "grpc" in sys.modules and VARIABLE not in environ:
        warnings.warn(
            "grpc was imported before prognos.core.grpc_io: this process keeps gRPC's "
            "default I/O (the processes it starts get the poller)",
            RuntimeWarning,
            stacklevel=2,
        )
    return environ.setdefault(VARIABLE, POLLER)


apply()
