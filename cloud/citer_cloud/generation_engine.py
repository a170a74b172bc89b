"""The engine for a backend that generates by itself (vLLM): requests run as tasks on the server's event loop.

vLLM batches, schedules and caches on its own, so there is no step loop to
write here; what stays ours is the protocol: each request is validated and
synced by the ``SessionManager`` (the same rules, limits and tenant
namespaces as with llama.cpp), then the session's whole sequence goes to the
backend, whose prefix cache finds what earlier calls already computed.
Requests of one session run one at a time in arrival order, as with
``Engine``; a stream that goes away cancels its backend request.

The public surface equals ``Engine``'s (``decode``, ``call``, ``shutdown``,
``sessions``), so the servicer does not know which engine it talks to.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from typing import TypeVar

from citer_cloud.backend import GeneratingBackend, Generation
from citer_cloud.engine import DecodeTicket
from citer_cloud.sessions import DecodeCall, DecodeJob, DecodeResult, RequestError, SessionKey, SessionManager

log = logging.getLogger(__name__)
T = TypeVar("T")


class _Turn:
    """A session's queue: its lock (FIFO) and how many requests hold or await it."""

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0


class GenerationEngine:
    """Runs Decode requests against a ``GeneratingBackend``; must be created on the loop it will run on."""

    def __init__(self, sessions: SessionManager, loop: asyncio.AbstractEventLoop) -> None:
        if not isinstance(sessions.backend, GeneratingBackend):
            raise TypeError("GenerationEngine needs a GeneratingBackend; a BatchingBackend runs in Engine")
        self.sessions = sessions
        self._backend: GeneratingBackend = sessions.backend
        self._loop = loop
        self._turns: dict[SessionKey, _Turn] = {}  # one request per session at a time, FIFO
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False

    # -- called from any thread -------------------------------------------

    def decode(self, call: DecodeCall) -> DecodeTicket:
        if self._stopping:
            raise RuntimeError("the engine is shut down")
        ticket = DecodeTicket(call)
        self._loop.call_soon_threadsafe(self._start, ticket)
        return ticket

    def call(self, fn: Callable[[], T]) -> Future[T]:
        """Run ``fn`` on the event loop (closing a session, reading stats), after what was submitted before it."""
        future: Future[T] = Future()
        if self._stopping:
            raise RuntimeError("the engine is shut down")

        async def run() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                future.set_result(fn())
            except Exception as error:  # handed to the caller, who raises it
                future.set_exception(error)

        # A task, like each Decode: tasks take their first step in creation order, so a CloseSession sent
        # after a Decode runs after that Decode has begun (and fails it), never before it.
        self._loop.call_soon_threadsafe(self._spawn, run)
        return future

    def probe(self) -> Future[bool]:
        """Answers when the backend's own engine does (vLLM's engine core runs in another process)."""
        return asyncio.run_coroutine_threadsafe(self._backend.check_health(), self._loop)

    def shutdown(self) -> None:
        """Cancel what is running; its callers get a RuntimeError."""
        self._stopping = True
        for task in list(self._tasks):
            self._loop.call_soon_threadsafe(task.cancel)

    # -- on the event loop ------------------------------------------------

    def _spawn(self, work: Callable[[], Coroutine[object, object, None]]) -> asyncio.Task[None]:
        task = self._loop.create_task(work())
        self._tasks.add(task)  # the loop keeps only weak references to tasks
        task.add_done_callback(self._tasks.discard)
        return task

    def _start(self, ticket: DecodeTicket) -> None:
        task = self._spawn(lambda: self._serve(ticket))
        ticket.on_cancel(lambda: self._loop.call_soon_threadsafe(task.cancel))

    async def _serve(self, ticket: DecodeTicket) -> None:
        key = ticket.call.key
        turn = self._turns.setdefault(key, _Turn())
        turn.users += 1
        try:
            async with turn.lock:
                if ticket.cancelled.is_set() or not ticket.future.set_running_or_notify_cancel():
                    ticket.future.cancel()  # its caller stopped waiting before its turn came: nothing began
                    return
                ticket.future.set_result(await self._run(ticket))
        except asyncio.CancelledError:  # the client went away, or shutdown; whoever still waits must hear
            if not ticket.future.done() and not ticket.future.cancel():  # cancel() fails once running
                reason = "the server is shutting down" if self._stopping else "cancelled: the client went away"
                ticket.future.set_exception(RuntimeError(reason))
        except Exception as error:  # RequestError for the client, anything else a backend failure
            if not isinstance(error, RequestError):
                log.exception("a vLLM request failed")
            ticket.future.set_exception(error)
        finally:
            turn.users -= 1
            if turn.users == 0:  # nobody holds or awaits it: forget the session's turn
                del self._turns[key]

    async def _run(self, ticket: DecodeTicket) -> DecodeResult:
        job: DecodeJob = self.sessions.begin(ticket.call)
        if job.done:
            return job.result()
        session = job.session
        try:
            if job.max_tokens == 0:  # a sync: remembered now, computed (and cached) by the next request
                generation = Generation(tokens=[], logprobs=[], finished=False, computed_tokens=0)
            else:
                generation = await self._backend.generate(list(session.tokens), job.max_tokens, job.sampling)
        except BaseException:
            self.sessions.cancel(job)  # the session keeps what it held; the request is over
            raise
        self.sessions.record_generation(job, generation)
        return job.result()
