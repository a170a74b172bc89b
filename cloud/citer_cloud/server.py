"""Starting and stopping the service: a backend, a session manager and a grpc.aio server on one port.

``serve`` runs it in the foreground (the CLI); ``CloudServer`` runs it on a
background thread, for embedding in another program and for tests.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import signal
import socket
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health as grpc_health
from grpc_health.v1 import health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from citer_cloud.auth import TenantAuthInterceptor
from citer_cloud.backend import Backend, GeneratingBackend
from citer_cloud.engine import Engine
from citer_cloud.generation_engine import GenerationEngine
from citer_cloud.health import SERVICE_NAMES as HEALTH_SERVICE_NAMES
from citer_cloud.health import EngineHealth
from citer_cloud.llama_backend import LlamaCppBackend
from citer_cloud.metrics import ServiceMetrics
from citer_cloud.service import LlmServicer
from citer_cloud.sessions import MAX_SESSION_ID_LEN, SessionManager
from citer_cloud.tenants import TenantDirectory
from citer_cloud.tls import exposure_warnings, is_loopback, server_credentials
from citer_protocol import READY_LINE, pb_grpc

log = logging.getLogger(__name__)


BACKENDS = ("llama.cpp", "vllm")


@dataclass(frozen=True)
class ServerConfig:
    model_path: Path  # a GGUF file (llama.cpp) or a Hugging Face model folder (vLLM)
    backend: str = "llama.cpp"
    host: str = "127.0.0.1"
    port: int = 50051  # 0 picks a free port
    max_sessions: int = 16
    kv_tokens: int = 16384
    max_request_tokens: int = 4096
    max_batch_sessions: int | None = None  # sessions per forward pass; None: all running ones, 1: serial
    n_threads: int | None = None
    llama_extra_buffers: str | None = None  # auto/on/off; None: CITER_LLAMA_EXTRA_BUFFERS, else auto
    n_gpu_layers: int = 0  # layers offloaded to a GPU (-1: all) with a GPU build of llama.cpp
    auth_token: str | None = None  # when set, every RPC needs "authorization: Bearer <token>" (one tenant)
    tenants: TenantDirectory | None = None  # per-tenant tokens, namespaces and limits (instead of auth_token)
    max_session_kv_share: float = 1.0  # the largest share of the KV cache one session may hold
    tls_cert: Path | None = None  # PEM certificate chain; with tls_key, the port speaks TLS
    tls_key: Path | None = None
    tls_client_ca: Path | None = None  # mutual TLS: clients must present a certificate this CA signed
    verbose: bool = False
    metrics_port: int | None = None  # Prometheus metrics over HTTP on this port (0: any free one); None: off
    metrics_host: str | None = None  # bind address for metrics; None: the same as ``host``
    health_probe_interval_s: float = 5.0  # how often the health watchdog asks the engine for a sign of life
    health_probe_timeout_s: float = 30.0  # no answer for this long: NOT_SERVING
    stop_on_stdin_eof: bool = False  # a child server's lifeline: the parent's end of the pipe closes when it dies
    # vLLM only (see citer_cloud.vllm_backend.VllmSettings)
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    gpu_memory_utilization: float | None = None
    max_context: int | None = None
    dtype: str = "auto"
    enforce_eager: bool = False
    distributed_executor_backend: str | None = None
    block_size: int | None = None

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown backend {self.backend!r}; choose one of {', '.join(BACKENDS)}")
        if self.auth_token and self.tenants is not None:
            raise ValueError("use either one shared auth token or a tenants file, not both")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("TLS needs both a certificate (--tls-cert) and its key (--tls-key)")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key")


class _Running:
    """The pieces of one started server, so both entry points stop them the same way."""

    def __init__(self, config: ServerConfig) -> None:
        check_port_free(config.host, config.port)
        # Certificates are read before the model loads, so a wrong path fails in a second, not a minute.
        credentials = (
            server_credentials(config.tls_cert, config.tls_key, config.tls_client_ca)
            if config.tls_cert is not None and config.tls_key is not None
            else None
        )
        self.backend = _load_backend(config)
        self.sessions = SessionManager(
            self.backend,
            max_request_tokens=config.max_request_tokens,
            max_session_kv_share=config.max_session_kv_share,
        )
        self.engine: Engine | GenerationEngine
        if isinstance(self.backend, GeneratingBackend):
            self.engine = GenerationEngine(self.sessions, asyncio.get_running_loop())
            self.backend.on_step(self.sessions.count_forward_pass)
        else:
            self.engine = Engine(self.sessions, max_batch_sessions=config.max_batch_sessions)
        self.metrics = ServiceMetrics(self.sessions.stats) if config.metrics_port is not None else None
        if self.metrics is not None:
            self.sessions.on_step = self.metrics.observe_step
        tenants = config.tenants or (TenantDirectory.single(config.auth_token) if config.auth_token else None)
        self.servicer = LlmServicer(self.engine, self.metrics, tenants)
        self.metrics_port: int | None = None
        interceptors = [TenantAuthInterceptor(tenants)] if tenants else []
        options = [
            ("grpc.max_receive_message_length", max_request_bytes(config.max_request_tokens)),
            ("grpc.so_reuseport", 0),  # a second server on a taken port must fail, not silently share it
            # Clients keep idle chat streams alive with a ping every 30 s; accept that instead of GOAWAY.
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 20_000),
        ]
        self.server = grpc.aio.server(interceptors=interceptors, options=options)
        pb_grpc.add_LlmServiceServicer_to_server(self.servicer, self.server)
        self.health = EngineHealth(self.engine, config.health_probe_interval_s, config.health_probe_timeout_s)
        health_pb2_grpc.add_HealthServicer_to_server(self.health.servicer, self.server)
        reflection.enable_server_reflection(
            (*HEALTH_SERVICE_NAMES[1:], grpc_health.SERVICE_NAME, reflection.SERVICE_NAME), self.server
        )
        address = f"{config.host}:{config.port}"
        try:
            if credentials is not None:
                self.port = self.server.add_secure_port(address, credentials)
            else:
                self.port = self.server.add_insecure_port(address)
        except RuntimeError:  # grpc.aio's way of saying the bind failed
            self.port = 0
        if self.port == 0:
            self.engine.shutdown()  # nothing will serve: give back the thread and the model now
            self.backend.close()
            raise OSError(f"could not bind {config.host}:{config.port} (is the port in use?)")
        for warning in exposure_warnings(config.host, tls=config.tls_cert is not None, auth=tenants is not None):
            log.warning(warning)
        metrics_host = config.metrics_host or config.host
        if config.metrics_port is not None and not is_loopback(metrics_host):
            log.warning("metrics on %s are plain HTTP without auth: keep the port private", metrics_host)

    async def start(self, config: ServerConfig) -> None:
        await self.server.start()
        await self.health.start()
        if self.metrics is not None and config.metrics_port is not None:
            self.metrics_port = self.metrics.serve(config.metrics_host or config.host, config.metrics_port)
            log.info("metrics on http://%s:%d/metrics", config.metrics_host or config.host, self.metrics_port)

    async def stop(self, grace_s: float) -> None:
        """Drain: NOT_SERVING first (balancers stop sending), then let in-flight calls finish for ``grace_s``."""
        await self.health.drain()
        await self.server.stop(grace=grace_s)
        if self.metrics is not None:
            self.metrics.close()
        self.servicer.shutdown()
        self.backend.close()


def _load_backend(config: ServerConfig) -> Backend:
    """The model, loaded before anything listens (a wrong path fails before the port opens)."""
    if config.backend == "vllm":
        from citer_cloud.vllm_backend import VllmBackend, VllmSettings  # vLLM is an optional extra

        return VllmBackend(
            VllmSettings(
                model=config.model_path,
                max_sessions=config.max_sessions,
                max_context=config.max_context,
                gpu_memory_utilization=config.gpu_memory_utilization,
                tensor_parallel_size=config.tensor_parallel_size,
                pipeline_parallel_size=config.pipeline_parallel_size,
                dtype=config.dtype,
                enforce_eager=config.enforce_eager,
                distributed_executor_backend=config.distributed_executor_backend,
                block_size=config.block_size,
            )
        )
    return LlamaCppBackend(
        config.model_path,
        max_sessions=config.max_sessions,
        kv_tokens=config.kv_tokens,
        n_threads=config.n_threads,
        verbose=config.verbose,
        extra_buffers=config.llama_extra_buffers,
        n_gpu_layers=config.n_gpu_layers,
    )


def max_request_bytes(max_request_tokens: int) -> int:
    """The largest DecodeRequest worth receiving: ids are varints of at most 5 bytes, plus small fields."""
    return 4096 + MAX_SESSION_ID_LEN + 5 * max_request_tokens


def check_port_free(host: str, port: int) -> None:
    """Fail in a second, with a readable message, when the port is taken (before a model takes a minute to load)."""
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as error:
        raise OSError(f"cannot resolve the bind address {host!r}: {error.strerror}") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC binds: TIME_WAIT is not "in use"
        try:
            probe.bind(address)
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise OSError(f"port {port} on {host} is already in use") from None
            raise OSError(f"cannot bind {host}:{port}: {error.strerror}") from None


async def serve(config: ServerConfig) -> None:
    """Run until SIGINT/SIGTERM (or stdin closing, if asked), then drain in-flight calls for up to 5 s.

    A server spawned by another program (``LocalCloud``) must not outlive it:
    a parent killed by SIGKILL or a SIGTERM that skips its cleanup never stops
    its child, and the orphan keeps the model's memory and cores. The OS does
    close the parent's end of the child's stdin pipe, so EOF there is the one
    signal that always arrives.
    """
    running = _Running(config)
    await running.start(config)
    print(f"{READY_LINE} {running.port}", flush=True)
    log.info("serving %s on %s:%d", running.backend.info.model_name, config.host, running.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if config.stop_on_stdin_eof:
        threading.Thread(target=_stop_at_stdin_eof, args=(loop, stop), daemon=True, name="stdin-watch").start()
    await stop.wait()
    log.info("shutting down")
    await running.stop(grace_s=5)


def _stop_at_stdin_eof(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    sys.stdin.buffer.read()  # returns only at end of file
    log.info("standard input closed: the parent process is gone")
    loop.call_soon_threadsafe(stop.set)


class CloudServer:
    """The service on a background thread with its own event loop: ``with CloudServer(config) as s: s.address``."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="citer-cloud")
        self._running: _Running | None = None

    @property
    def port(self) -> int:
        assert self._running is not None, "server not started"
        return self._running.port

    @property
    def address(self) -> str:
        return f"{self.config.host}:{self.port}"

    @property
    def sessions(self) -> SessionManager:
        """The live session manager (its ``stats()`` prove what the server computed)."""
        assert self._running is not None, "server not started"
        return self._running.sessions

    @property
    def metrics_port(self) -> int | None:
        assert self._running is not None, "server not started"
        return self._running.metrics_port

    @property
    def engine(self) -> Engine | GenerationEngine:
        """The engine (``engine.call(fn)`` runs ``fn`` between its steps)."""
        assert self._running is not None, "server not started"
        return self._running.engine

    def start(self) -> CloudServer:
        self._thread.start()

        async def start() -> _Running:
            running = _Running(self.config)
            await running.start(self.config)
            return running

        self._running = asyncio.run_coroutine_threadsafe(start(), self._loop).result()
        return self

    def stop(self, grace_s: float = 0.0) -> None:
        """Stop serving and free the model; in-flight streams end with UNAVAILABLE/CANCELLED."""
        if self._running is not None:
            asyncio.run_coroutine_threadsafe(self._running.stop(grace_s), self._loop).result()
            self._running = None
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()

    def __enter__(self) -> CloudServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
