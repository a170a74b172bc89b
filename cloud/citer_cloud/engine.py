"""The batching engine: one thread owns the sessions and runs every request's work in shared forward passes.

Many devices each ask for one LLM token after appending a few SLM tokens. Run
one at a time, N concurrent calls cost N forward passes; gathered into one
batch (each session its own sequence in the shared KV cache) they cost about
one. Each loop iteration admits new requests, runs one step for up to
``max_batch_sessions`` jobs (round-robin, decode steps before prefill
chunks), and answers the jobs that finished. The servicer only submits
requests and awaits their futures; it does not know whether steps are batched.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TypeVar

from citer_cloud.sessions import DecodeCall, DecodeJob, DecodeResult, RequestError, SessionManager

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class DecodeTicket:
    """A submitted Decode request: its future, and the way to withdraw it when the client goes away."""

    call: DecodeCall
    future: Future[DecodeResult] = field(default_factory=Future)
    cancelled: threading.Event = field(default_factory=threading.Event)
    job: DecodeJob | None = None
    _on_cancel: list[Callable[[], object]] = field(default_factory=list)

    def cancel(self) -> None:
        self.cancelled.set()
        for callback in self._on_cancel:
            callback()

    def on_cancel(self, callback: Callable[[], object]) -> None:
        """Also run ``callback`` when the ticket is cancelled (an engine that can stop the work at once)."""
        self._on_cancel.append(callback)
        if self.cancelled.is_set():
            callback()


class Engine:
    """Runs a SessionManager on its own thread, batching the steps of all running requests.

    ``max_batch_sessions=1`` serves one request per forward pass (the serial
    baseline); by default every running request joins each step.
    """

    def __init__(self, sessions: SessionManager, max_batch_sessions: int | None = None) -> None:
        if max_batch_sessions is not None and max_batch_sessions < 1:
            raise ValueError(f"max_batch_sessions must be at least 1, got {max_batch_sessions}")
        self.sessions = sessions
        self.max_batch_sessions = max_batch_sessions or sessions.backend.info.n_slots
        self._wake = threading.Condition()
        self._inbox: deque[DecodeTicket | tuple[Callable[[], object], Future]] = deque()
        self._waiting: list[DecodeTicket] = []  # their session has a request running
        self._running: deque[DecodeTicket] = deque()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="citer-engine", daemon=True)
        self._thread.start()

    # -- called from any thread -------------------------------------------

    def decode(self, call: DecodeCall) -> DecodeTicket:
        ticket = DecodeTicket(call)
        self._submit(ticket)
        return ticket

    def call(self, fn: Callable[[], T]) -> Future[T]:
        """Run ``fn`` on the engine thread between steps (closing a session, reading stats)."""
        future: Future[T] = Future()
        self._submit((fn, future))
        return future

    def probe(self) -> Future[bool]:
        """Answers between two steps: a stuck model thread never answers (the health watchdog's question)."""
        return self.call(lambda: True)

    def shutdown(self) -> None:
        """Stop after the current step; requests still running fail with a RuntimeError."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
        self._thread.join()

    def _submit(self, item: DecodeTicket | tuple[Callable[[], object], Future]) -> None:
        with self._wake:
            if self._stopping:
                raise RuntimeError("the engine is shut down")
            self._inbox.append(item)
            self._wake.notify()

    # -- the engine thread ------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._wake:
                while not (self._inbox or self._running or self._waiting or self._stopping):
                    self._wake.wait()
                if self._stopping:
                    break
                arrived = list(self._inbox)
                self._inbox.clear()
            try:
                self._admit(arrived)
                self._step()
            except Exception:  # a backend failure must not kill the engine silently: fail what is running
                log.exception("engine step failed")
                self._fail_running(RuntimeError("the LLM backend failed; see the server log"))
        self._fail_running(RuntimeError("the server is shutting down"))
        with self._wake:
            leftovers = [*self._waiting, *self._inbox]
            self._inbox.clear()
        for item in leftovers:
            (item[1] if isinstance(item, tuple) else item.future).cancel()

    def _admit(self, arrived: list[DecodeTicket | tuple[Callable[[], object], Future]]) -> None:
        """Start what arrived in arrival order: a call (CloseSession) runs after the requests before it."""
        for item in arrived:
            if isinstance(item, tuple):
                self._start_waiting()
                self._run_call(*item)
            else:
                self._waiting.append(item)
        self._start_waiting()

    def _start_waiting(self) -> None:
        busy = {ticket.call.key for ticket in self._running}
        still_waiting = []
        for ticket in self._waiting:
            if ticket.cancelled.is_set():
                ticket.future.cancel()
            elif ticket.call.key in busy:
                still_waiting.append(ticket)  # one request per session at a time, in arrival order
            elif ticket.future.set_running_or_notify_cancel():  # from here on nobody else can cancel it
                busy.add(ticket.call.key)
                self._start(ticket)
        self._waiting = still_waiting

    def _run_call(self, fn: Callable[[], object], future: Future) -> None:
        if not future.set_running_or_notify_cancel():
            return  # its caller stopped waiting (a deadline): nothing to do, nobody to tell
        try:
            result = fn()
        except Exception as error:  # handed to the caller, who raises it
            future.set_exception(error)
        else:
            future.set_result(result)
        self._answer_finished()  # the call may have ended jobs (closing a session fails its request)

    def _start(self, ticket: DecodeTicket) -> None:
        try:
            ticket.job = self.sessions.begin(ticket.call)
        except RequestError as error:
            ticket.future.set_exception(error)
            return
        except Exception as error:  # a bug or a backend failure: this request fails, the engine goes on
            log.exception("could not start a request")
            ticket.future.set_exception(error)
            return
        if ticket.job.done:
            ticket.future.set_result(ticket.job.result())
        else:
            self._running.append(ticket)

    def _step(self) -> None:
        for ticket in [t for t in self._running if t.cancelled.is_set()]:
            assert ticket.job is not None
            self.sessions.cancel(ticket.job)
        self._answer_finished()
        if not self._running:
            return
        batch = [self._running[i] for i in range(min(self.max_batch_sessions, len(self._running)))]
        self._running.rotate(-len(batch))  # the next step starts with whoever was left out of this one
        self.sessions.step([ticket.job for ticket in batch if ticket.job is not None])
        self._answer_finished()

    def _answer_finished(self) -> None:
        """Answer every running request whose job ended (finished, failed, evicted or cancelled)."""
        for ticket in list(self._running):
            job = ticket.job
            assert job is not None
            if not job.done:
                continue
            self._running.remove(ticket)
            if job.cancelled:
                ticket.future.set_exception(RuntimeError("cancelled: the client went away"))
            elif job.error is not None:
                ticket.future.set_exception(job.error)
            else:
                ticket.future.set_result(job.result())

    def _fail_running(self, error: Exception) -> None:
        while self._running:
            ticket = self._running.popleft()
            if ticket.job is not None:
                self.sessions.cancel(ticket.job)
            if not ticket.future.done():
                ticket.future.set_exception(error)
