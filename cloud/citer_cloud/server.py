"""Starting and stopping the service: a backend, a session manager and a grpc.aio server on one port."""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass
from pathlib import Path

import grpc

from citer_cloud.llama_backend import LlamaCppBackend
from citer_cloud.service import LlmServicer
from citer_cloud.sessions import SessionManager
from citer_protocol import pb_grpc

log = logging.getLogger(__name__)

#: Printed once the port is bound, so a parent process knows the server is ready (and on which port).
READY_LINE = "citer-cloud ready on port"


@dataclass(frozen=True)
class ServerConfig:
    model_path: Path
    host: str = "127.0.0.1"
    port: int = 50051  # 0 picks a free port
    max_sessions: int = 16
    kv_tokens: int = 16384
    max_request_tokens: int = 4096
    n_threads: int | None = None
    verbose: bool = False


async def serve(config: ServerConfig) -> None:
    """Run until SIGINT/SIGTERM, then drain in-flight calls for up to 5 s."""
    backend = LlamaCppBackend(
        config.model_path,
        max_sessions=config.max_sessions,
        kv_tokens=config.kv_tokens,
        n_threads=config.n_threads,
        verbose=config.verbose,
    )
    servicer = LlmServicer(SessionManager(backend, max_request_tokens=config.max_request_tokens))
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)])
    pb_grpc.add_LlmServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port(f"{config.host}:{config.port}")
    if port == 0:
        raise OSError(f"could not bind {config.host}:{config.port}")
    await server.start()
    print(f"{READY_LINE} {port}", flush=True)
    log.info("serving %s on %s:%d", backend.info.model_name, config.host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down")
    await server.stop(grace=5)
    servicer.shutdown()
    backend.close()
