"""The standard gRPC health service, telling load balancers the truth: SERVING only while the engine answers.

A server whose model thread is stuck still accepts connections and answers
``GetInfo``, so "the port is open" proves nothing. A watchdog sends the engine
a no-op between its steps every few seconds; no answer within the timeout
means NOT_SERVING until it answers again. Draining (SIGTERM) switches to
NOT_SERVING for good, so Envoy or Kubernetes stop sending new sessions while
in-flight calls finish.
"""

from __future__ import annotations

import asyncio
import logging

from grpc_health.v1 import health, health_pb2

from citer_cloud.engine import Engine
from citer_cloud.generation_engine import GenerationEngine
from citer_protocol import pb

log = logging.getLogger(__name__)

#: The names a health check may ask about: the whole server ("") and the citer service.
SERVICE_NAMES = ("", pb.DESCRIPTOR.services_by_name["LlmService"].full_name)
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class EngineHealth:
    """Owns the health servicer and the watchdog that keeps its status honest."""

    def __init__(
        self, engine: Engine | GenerationEngine, probe_interval_s: float = 5.0, probe_timeout_s: float = 30.0
    ) -> None:
        self.servicer = health.aio.HealthServicer()
        self._engine = engine
        self._interval_s = probe_interval_s
        self._timeout_s = probe_timeout_s
        self._task: asyncio.Task[None] | None = None
        self._serving: bool | None = None

    async def start(self) -> None:
        """NOT_SERVING until the engine has answered once, then watched."""
        await self._publish(False)
        await self._publish(await self._engine_answers())
        self._task = asyncio.get_running_loop().create_task(self._watch(), name="citer-health")

    async def drain(self) -> None:
        """NOT_SERVING from now on: the server is shutting down."""
        if self._task is not None:
            self._task.cancel()
        await self.servicer.enter_graceful_shutdown()
        log.info("health: NOT_SERVING (draining)")

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            await self._publish(await self._engine_answers())

    async def _engine_answers(self) -> bool:
        try:
            return bool(await asyncio.wait_for(asyncio.wrap_future(self._engine.probe()), self._timeout_s))
        except asyncio.TimeoutError:  # asyncio.TimeoutError is not TimeoutError before 3.11
            return False
        except Exception:  # a dead engine raises its own kind (vLLM's EngineDeadError is no RuntimeError)
            log.debug("health probe failed", exc_info=True)
            return False

    async def _publish(self, serving: bool) -> None:
        if serving == self._serving:
            return
        if self._serving is not None:
            level = logging.INFO if serving else logging.WARNING
            log.log(level, "health: %s", "SERVING" if serving else "NOT_SERVING (the engine did not answer)")
        self._serving = serving
        for name in SERVICE_NAMES:
            await self.servicer.set(name, SERVING if serving else NOT_SERVING)
