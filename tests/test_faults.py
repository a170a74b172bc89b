"""Faults between a real client and a real server: every token arrives, stalls stay short, routing comes back.

Setup: a real ``citer-cloud serve`` child process (SmolLM2, ``RestartableCloud``),
a ``FaultProxy`` on loopback in front of it, and a real ``CloudSession`` with
the shipped deadline (1.5 s plus 10 ms per token sent) and connect timeout (5 s)
but a short backoff (50–200 ms), so that a probe comes within a few tokens. The
generation is greedy, on COUNTING_PROMPT, with policy ``cloud``: every token is
asked of the cloud, so each token's origin says whether the cloud served it.
The scenario code is citer_bench.fault_matrix, which ``citer-bench faults``
repeats; each fault is injected before token 8, held until the client has
failed twice under it (the call that met it, then one probe), and lifted.

"Decode never answers" cannot be produced by the real server on demand; the
proxy black-holes the replies while delivering the requests, which is what a
client sees of a server that computes but never answers (and the server then
holds tokens the client never received: the ``known_len``-behind path).

The reference (``replay_origins``): position i holds the greedy token of the
model that produced it ("slm" or "llm"), given the prompt and the transcript's
tokens before i. Both models are SmolLM2 here, so the token values cannot tell
the origins apart; they check that nothing was lost, repeated, reordered or
computed on a wrong context (a counting prompt shows any of these as a wrong
number). Origins are checked against the fault windows instead. The server's
numerics differ from a local context's (batch shapes), so identity is asserted
on a transcript whose every step leads by more than MIN_MARGIN (checked with
greedy_margins, as in test_resilience.py).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from citer_bench.fault_matrix import (
    FAULTS,
    ClientSettings,
    FaultRun,
    FaultTarget,
    RestartableCloud,
    replay_origins,
    run_fault,
)
from citer_bench.fault_proxy import FaultProxy
from citer_edge import CloudSession, LocalModel, SamplingSettings
from tests.conftest import COUNTING_PROMPT, MIN_MARGIN, greedy_margins

SETTINGS = ClientSettings(backoff_s=(0.05, 0.2))  # shipped deadline and connect timeout; a quick probe
#: Tokens per generation: room for the fault window, the rest of the backoff and a run of cloud tokens after it
#: (routing resumes within about 20 tokens here); a fault repeated in one generation gets more per repeat.
TOKENS_FOR_ONE_INJECTION = 40
TOKENS_PER_FURTHER_INJECTION = 12
#: Scheduling on two shared cores, one SLM step and a loopback round trip, on top of one call's deadline.
STALL_MARGIN_S = 1.0


@pytest.fixture(scope="module")
def server(smol_path: Path) -> Iterator[RestartableCloud]:
    with RestartableCloud(smol_path) as cloud:
        yield cloud


@pytest.fixture(scope="module")
def prompt(smol_slm: LocalModel) -> list[int]:
    return smol_slm.tokenize(COUNTING_PROMPT)


@pytest.fixture(scope="module")
def fault_runs(smol_slm: LocalModel, server: RestartableCloud, prompt: list[int]) -> Callable[[str], FaultRun]:
    """One generation per fault, made on first use: every test of a fault reads the same record."""
    runs: dict[str, FaultRun] = {}

    def get(name: str) -> FaultRun:
        if name not in runs:
            fault = FAULTS[name]
            max_tokens = TOKENS_FOR_ONE_INJECTION + TOKENS_PER_FURTHER_INJECTION * (fault.times - 1)
            with FaultProxy(server.port) as proxy:
                beyond = SETTINGS.deadline_s(len(prompt) + max_tokens)
                runs[name] = run_fault(
                    fault, smol_slm, FaultTarget(proxy, server, beyond), SETTINGS, prompt, max_tokens
                )
        return runs[name]

    return get


@pytest.fixture(params=list(FAULTS))
def fault_run(request: pytest.FixtureRequest, fault_runs: Callable[[str], FaultRun]) -> FaultRun:
    return fault_runs(request.param)


def test_generation_through_the_fault_delivers_exactly_max_tokens(fault_run: FaultRun) -> None:
    assert len(fault_run.tokens) == fault_run.max_tokens and fault_run.finish_reason == "length", fault_run.describe()
    assert len(fault_run.sources) == len(fault_run.tokens)


def test_longest_gap_between_tokens_is_within_one_call_deadline_plus_margin(fault_run: FaultRun) -> None:
    """The longest any call may take (a resync sends the whole context) plus STALL_MARGIN_S, never more."""
    bound = SETTINGS.deadline_s(len(fault_run.prompt) + fault_run.max_tokens) + STALL_MARGIN_S
    assert fault_run.longest_gap_s <= bound, f"bound {bound:.2f} s; {fault_run.describe()}"


def test_every_token_produced_while_the_fault_holds_comes_from_the_slm(fault_run: FaultRun) -> None:
    fault = FAULTS[fault_run.fault]
    assert len(fault_run.windows) == fault.times, fault_run.describe()
    for window in fault_run.windows:
        held = fault_run.sources[window.injected_at : window.lifted_at]
        if not fault.instant:
            assert held, "the fault must be held across at least one token"
        assert set(held) <= {"slm"}, fault_run.describe()


def test_routing_returns_to_the_llm_after_each_lift_and_stays_there_until_the_next_fault(fault_run: FaultRun) -> None:
    windows = fault_run.windows
    assert set(fault_run.sources[: windows[0].injected_at]) == {"llm"}, fault_run.describe()
    for index, window in enumerate(windows):
        assert window.resumed_at is not None, f"never resumed after injection {index + 1}; {fault_run.describe()}"
        until = windows[index + 1].injected_at if index + 1 < len(windows) else len(fault_run.sources)
        assert set(fault_run.sources[window.resumed_at : until]) == {"llm"}, fault_run.describe()
        assert set(fault_run.sources[window.lifted_at : window.resumed_at]) <= {"slm"}, fault_run.describe()


def test_every_token_is_the_greedy_choice_of_its_origin_model_given_the_transcript(
    fault_run: FaultRun, smol_slm: LocalModel
) -> None:
    margins = greedy_margins(smol_slm, fault_run.prompt, fault_run.tokens)
    assert min(margins) > MIN_MARGIN, "the prompt must leave greedy no near-ties along this transcript"
    replay = replay_origins({"slm": smol_slm, "llm": smol_slm}, fault_run.prompt, fault_run.tokens, fault_run.sources)
    assert fault_run.tokens == replay.expected


def test_client_resends_the_full_context_only_after_the_server_lost_the_session(fault_run: FaultRun) -> None:
    fault = FAULTS[fault_run.fault]
    assert fault_run.resyncs == (fault.times if fault.loses_sessions else 0), fault_run.describe()


def test_a_reset_connection_is_reopened_without_any_token_falling_back_to_the_slm(
    fault_runs: Callable[[str], FaultRun],
) -> None:
    """A reset breaks the stream, not the route: the client's one reopen succeeds and the circuit never opens."""
    run = fault_runs("reset")
    assert set(run.sources) == {"llm"} and run.failures == 0, run.describe()


def test_probe_through_a_black_hole_stalls_no_longer_than_the_call_deadline(
    smol_slm: LocalModel, server: RestartableCloud, prompt: list[int]
) -> None:
    """Regression: the probe's reconnect waited the 5 s connect timeout, not the 1.5 s deadline, on every probe.

    The circuit's probe runs inside the decode loop; its GetInfo on a fresh
    channel through a silent route blocked for ``connect_timeout_s``, so a user
    saw a 5 s freeze at each probe for as long as the route stayed black-holed.
    (Hidden until the channel stopped giving up on connections after 100 ms;
    see the next test.)
    """
    greedy = SamplingSettings()
    with FaultProxy(server.port) as proxy:
        cloud = SETTINGS.session(proxy.address, smol_slm.fingerprint)
        try:
            reply = cloud.decode(prompt, 1, greedy)
            assert reply is not None, cloud.last_error
            context = prompt + reply.tokens
            proxy.black_hole()
            assert cloud.decode(context, 1, greedy) is None and cloud.circuit == "open"
            _wait_half_open(cloud)
            started = time.monotonic()
            assert cloud.decode(context, 1, greedy) is None, "the probe cannot pass a black hole"
            probe_s = time.monotonic() - started
        finally:
            proxy.restore()
            cloud.close()
    assert cloud.failures == 2
    assert probe_s <= SETTINGS.deadline_s(len(context)) + 0.5, probe_s


def test_client_connects_and_reconnects_after_a_cut_over_a_route_with_400_ms_rtt(
    smol_slm: LocalModel, server: RestartableCloud, prompt: list[int]
) -> None:
    """Regression: ``grpc.min_reconnect_backoff_ms`` (100 ms) is also gRPC's minimum connect timeout.

    Every connection attempt was abandoned after about 0.1-0.3 s, before the server's HTTP/2 SETTINGS could
    cross a slow route, so from about 300 ms RTT on the client never connected, and never reconnected after
    a failure, although each call fits its 1.5 s deadline easily.
    """
    greedy = SamplingSettings()
    with FaultProxy(server.port, delay_s=0.2) as proxy:
        cloud = SETTINGS.session(proxy.address, smol_slm.fingerprint)
        try:
            assert cloud.connect(), cloud.last_error
            reply = cloud.decode(prompt, 1, greedy)
            assert reply is not None, cloud.last_error
            context = prompt + reply.tokens
            proxy.cut()
            assert cloud.decode(context, 1, greedy) is None
            proxy.restore()
            proxy.delay(0.2)  # the route comes back as slow as it was
            _wait_half_open(cloud)
            started = time.monotonic()
            reply = cloud.decode(context, 1, greedy)
            probe_s = time.monotonic() - started
            assert reply is not None, cloud.last_error
        finally:
            cloud.close()
    assert cloud.circuit == "closed"
    assert probe_s >= 0.8, "a reconnect and a call over this route take at least two round trips"


def _wait_half_open(cloud: CloudSession) -> None:
    deadline = time.monotonic() + 5
    while cloud.circuit == "open" and time.monotonic() < deadline:
        time.sleep(0.01)
    assert cloud.circuit == "half-open"


# -- the proxy itself: each fault does to real sockets what it says ---------------------------------------------


@pytest.fixture
def echo_port() -> Iterator[int]:
    """A threaded TCP echo server on loopback."""
    listener = socket.create_server(("127.0.0.1", 0))
    connections: list[socket.socket] = []

    def echo(conn: socket.socket) -> None:
        with conn:
            try:
                while data := conn.recv(65536):
                    conn.sendall(data)
            except OSError:
                pass

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            connections.append(conn)
            threading.Thread(target=echo, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    yield listener.getsockname()[1]
    try:
        listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
    except OSError:
        pass
    listener.close()
    for conn in connections:
        conn.close()


def _connect(proxy: FaultProxy) -> socket.socket:
    conn = socket.create_connection(("127.0.0.1", proxy.port), timeout=2)
    conn.sendall(b"ping")
    assert conn.recv(16) == b"ping"
    return conn


def _silent_for(conn: socket.socket, seconds: float) -> bool:
    conn.settimeout(seconds)
    try:
        conn.recv(16)
    except TimeoutError:
        return True
    finally:
        conn.settimeout(2)
    return False


def test_proxy_black_hole_forwards_nothing_and_delivers_the_held_bytes_in_order_on_restore(echo_port: int) -> None:
    with FaultProxy(echo_port) as proxy, _connect(proxy) as conn:
        proxy.black_hole()
        conn.sendall(b"one")
        conn.sendall(b"two")
        assert _silent_for(conn, 0.3) and proxy.open_connections == 1
        proxy.restore()
        received = b""
        while len(received) < 6:
            received += conn.recv(16)
        assert received == b"onetwo"


def test_proxy_reply_black_hole_delivers_requests_but_holds_replies(echo_port: int) -> None:
    with FaultProxy(echo_port) as proxy, _connect(proxy) as conn:
        proxy.black_hole(requests=False)
        conn.sendall(b"x")
        assert _silent_for(conn, 0.3)
        proxy.restore()
        assert conn.recv(16) == b"x"


def test_proxy_reset_sends_rst_to_open_connections_and_passes_new_ones(echo_port: int) -> None:
    with FaultProxy(echo_port) as proxy, _connect(proxy) as conn:
        proxy.reset()
        with pytest.raises(ConnectionResetError):
            conn.recv(16)
        with _connect(proxy):
            pass


def test_proxy_cut_closes_open_connections_and_resets_new_ones_until_restore(echo_port: int) -> None:
    with FaultProxy(echo_port) as proxy, _connect(proxy) as conn:
        proxy.cut()
        assert conn.recv(16) == b"", "an open connection is closed"
        _assert_reset_on_first_use(proxy)
        proxy.restore()
        with _connect(proxy):
            pass


def test_proxy_delay_holds_each_direction_for_the_delay(echo_port: int) -> None:
    with FaultProxy(echo_port) as proxy, _connect(proxy) as conn:
        proxy.delay(0.15)
        started = time.monotonic()
        conn.sendall(b"x")
        assert conn.recv(16) == b"x"
        assert time.monotonic() - started >= 0.3


def test_proxy_resets_the_client_when_nothing_listens_behind_it(free_port: int) -> None:
    with FaultProxy(free_port) as proxy:
        _assert_reset_on_first_use(proxy)


def _assert_reset_on_first_use(proxy: FaultProxy) -> None:
    """Connect, send, read: the reset surfaces at whichever comes after it arrived (connect included)."""
    with pytest.raises(ConnectionResetError), socket.create_connection(("127.0.0.1", proxy.port), timeout=2) as conn:
        conn.sendall(b"x")
        conn.recv(16)
