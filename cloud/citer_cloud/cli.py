"""``citer-cloud``: run the LLM service.

Settings come from flags, then CITER_CLOUD_* environment variables, then a
TOML file (``--config``), then defaults: flags win. ``--print-config`` shows
the result without starting anything.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path

from citer_cloud.backend import BackendStartError
from citer_cloud.server import BACKENDS, ServerConfig, serve
from citer_cloud.settings_file import configure_logging, load_settings_file
from citer_cloud.tenants import TENANTS_ENV, TenantDirectory
from citer_protocol.llama_loader import EXTRA_BUFFERS_ENV, add_extra_buffers_argument


def _env(name: str, default: str) -> str:
    return os.environ.get(f"CITER_CLOUD_{name}", default)


def build_parser(file_settings: dict[str, object] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="citer-cloud", description="The citer-edge cloud LLM service (gRPC).")
    sub = parser.add_subparsers(dest="command", required=True)
    serve_cmd = sub.add_parser(
        "serve", help="serve one model over gRPC (a GGUF with llama.cpp, a model folder with vLLM)"
    )
    serve_cmd.add_argument(
        "--config",
        default=_env("CONFIG", "") or None,
        help="TOML file of settings (keys as the flags, with _) [CITER_CLOUD_CONFIG]",
    )
    serve_cmd.add_argument("--print-config", action="store_true", help="print the settings in force as TOML and exit")
    serve_cmd.add_argument(
        "--log-format",
        choices=("text", "json"),
        default=_env("LOG_FORMAT", "text"),
        help="json: one JSON object per log line, for log collectors [CITER_CLOUD_LOG_FORMAT]",
    )
    serve_cmd.add_argument(
        "--backend",
        choices=BACKENDS,
        default=_env("BACKEND", "llama.cpp"),
        help="llama.cpp: a GGUF file, CPU or GPU build; vllm: a Hugging Face model folder, GPU servers (needs the "
        "vllm extra) [CITER_CLOUD_BACKEND]",
    )
    serve_cmd.add_argument(
        "--model", default=_env("MODEL", ""), help="GGUF path, or a model folder for vllm [CITER_CLOUD_MODEL]"
    )
    serve_cmd.add_argument("--host", default=_env("HOST", "127.0.0.1"), help="bind address [CITER_CLOUD_HOST]")
    serve_cmd.add_argument(
        "--port", type=int, default=int(_env("PORT", "50051")), help="port, 0 for any free one [CITER_CLOUD_PORT]"
    )
    serve_cmd.add_argument(
        "--max-sessions",
        type=int,
        default=int(_env("MAX_SESSIONS", "16")),
        help="live sessions before LRU eviction [CITER_CLOUD_MAX_SESSIONS]",
    )
    serve_cmd.add_argument(
        "--kv-tokens",
        type=int,
        default=int(_env("KV_TOKENS", "16384")),
        help="KV cache cells shared by all sessions (bounds memory) [CITER_CLOUD_KV_TOKENS]",
    )
    serve_cmd.add_argument(
        "--max-request-tokens",
        type=int,
        default=int(_env("MAX_REQUEST_TOKENS", "4096")),
        help="largest append + max_tokens in one request [CITER_CLOUD_MAX_REQUEST_TOKENS]",
    )
    serve_cmd.add_argument(
        "--max-batch-sessions",
        type=int,
        default=int(_env("MAX_BATCH_SESSIONS", "0")) or None,
        help="sessions whose pending work shares one forward pass (default: all running ones; 1 serves one "
        "request per pass) [CITER_CLOUD_MAX_BATCH_SESSIONS]",
    )
    serve_cmd.add_argument(
        "--threads", type=int, default=int(_env("THREADS", "0")) or None, help="CPU threads [CITER_CLOUD_THREADS]"
    )
    add_extra_buffers_argument(serve_cmd)
    serve_cmd.add_argument(
        "--n-gpu-layers",
        type=int,
        default=int(_env("N_GPU_LAYERS", "0")),
        help="layers to offload to the GPU, -1 for all (needs a GPU build of llama-cpp-python) "
        "[CITER_CLOUD_N_GPU_LAYERS]",
    )
    vllm = serve_cmd.add_argument_group("vLLM backend (--backend vllm)")
    vllm.add_argument(
        "--tensor-parallel-size",
        type=int,
        default=int(_env("TENSOR_PARALLEL_SIZE", "1")),
        help="GPUs each layer is split across (tensor parallelism) [CITER_CLOUD_TENSOR_PARALLEL_SIZE]",
    )
    vllm.add_argument(
        "--pipeline-parallel-size",
        type=int,
        default=int(_env("PIPELINE_PARALLEL_SIZE", "1")),
        help="pipeline stages (GPUs or, with a Ray cluster, nodes) [CITER_CLOUD_PIPELINE_PARALLEL_SIZE]",
    )
    vllm.add_argument(
        "--gpu-memory-utilization",
        type=float,
        default=float(_env("GPU_MEMORY_UTILIZATION", "0")) or None,
        help="share of GPU memory vLLM takes for weights and KV cache (vLLM's default 0.9; on vLLM's CPU build the "
        "share of host RAM: use a small value) [CITER_CLOUD_GPU_MEMORY_UTILIZATION]",
    )
    vllm.add_argument(
        "--max-context",
        type=int,
        default=int(_env("MAX_CONTEXT", "0")) or None,
        help="longest session in tokens (vLLM's max_model_len; default: the model's) [CITER_CLOUD_MAX_CONTEXT]",
    )
    vllm.add_argument(
        "--dtype",
        default=_env("DTYPE", "auto"),
        help="weights and activations: auto, bfloat16, float16, float32 [CITER_CLOUD_DTYPE]",
    )
    vllm.add_argument(
        "--enforce-eager",
        action="store_true",
        default=_env("ENFORCE_EAGER", "") == "1",
        help="skip CUDA graph capture: faster start, slower steps [CITER_CLOUD_ENFORCE_EAGER=1]",
    )
    vllm.add_argument(
        "--block-size",
        type=int,
        default=int(_env("BLOCK_SIZE", "0")) or None,
        help="KV block size in tokens, the prefix cache's granularity: a call recomputes up to one partly filled "
        "block (default: vLLM's, 16 on GPUs, 128 on CPUs, which accept multiples of 32) [CITER_CLOUD_BLOCK_SIZE]",
    )
    vllm.add_argument(
        "--distributed-executor-backend",
        choices=("ray", "mp"),
        default=_env("DISTRIBUTED_EXECUTOR_BACKEND", "") or None,
        help="ray: spread the parallel workers over a running Ray cluster (multi-node); mp: processes on this "
        "node (default: vLLM decides) [CITER_CLOUD_DISTRIBUTED_EXECUTOR_BACKEND]",
    )
    serve_cmd.add_argument(
        "--metrics-port",
        type=int,
        default=int(_env("METRICS_PORT", "-1")),
        help="serve Prometheus metrics at http://HOST:PORT/metrics (default: off) [CITER_CLOUD_METRICS_PORT]",
    )
    serve_cmd.add_argument(
        "--metrics-host",
        default=_env("METRICS_HOST", "") or None,
        help="bind address for metrics (default: --host); plain HTTP, keep it private [CITER_CLOUD_METRICS_HOST]",
    )
    serve_cmd.add_argument(
        "--tenants-file",
        default=_env("TENANTS_FILE", "") or None,
        help="TOML file of tenants: each a token (or its SHA-256) and optional limits; sessions are isolated per "
        f"tenant [CITER_CLOUD_TENANTS_FILE; or {TENANTS_ENV}=name=token,...]",
    )
    serve_cmd.add_argument(
        "--max-session-kv-share",
        type=float,
        default=float(_env("MAX_SESSION_KV_SHARE", "1")),
        help="the largest share of the KV cache one session may hold (1 = no limit) [CITER_CLOUD_MAX_SESSION_KV_SHARE]",
    )
    serve_cmd.add_argument(
        "--auth-token",
        default=_env("AUTH_TOKEN", "") or None,
        help="one shared token every call must carry; prefer the environment variable, since a flag's value "
        "shows in ps [CITER_CLOUD_AUTH_TOKEN]",
    )
    tls = serve_cmd.add_argument_group("TLS (needed wherever traffic leaves a private network)")
    tls.add_argument(
        "--tls-cert", default=_env("TLS_CERT", "") or None, help="PEM certificate chain [CITER_CLOUD_TLS_CERT]"
    )
    tls.add_argument("--tls-key", default=_env("TLS_KEY", "") or None, help="PEM private key [CITER_CLOUD_TLS_KEY]")
    tls.add_argument(
        "--tls-client-ca",
        default=_env("TLS_CLIENT_CA", "") or None,
        help="mutual TLS: accept only clients with a certificate signed by this CA [CITER_CLOUD_TLS_CLIENT_CA]",
    )
    serve_cmd.add_argument(
        "--stop-on-stdin-eof",
        action="store_true",
        help="shut down when standard input closes (for a server spawned by another program: dies with it)",
    )
    serve_cmd.add_argument(
        "-v", "--verbose", action="store_true", default=_env("VERBOSE", "") == "1", help="debug logging"
    )
    if file_settings:
        serve_cmd.set_defaults(**file_settings)
    health = sub.add_parser(
        "health", help="ask a running service whether it is SERVING (exit 0) or not (exit 1): for container checks"
    )
    health.add_argument("address", nargs="?", default="127.0.0.1:50051", help="HOST:PORT (default %(default)s)")
    health.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the answer")
    return parser


#: Settings a config file may hold: every serve flag but secrets and the process plumbing.
_NOT_IN_FILE = {"command", "config", "print_config", "auth_token", "stop_on_stdin_eof"}


def _env_name(key: str) -> str:
    return EXTRA_BUFFERS_ENV if key == "llama_extra_buffers" else f"CITER_CLOUD_{key.upper()}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Flags, then environment, then the --config file, then defaults."""
    args = build_parser().parse_args(argv)
    if args.command != "serve" or not args.config:
        return args
    allowed = set(vars(args)) - _NOT_IN_FILE
    settings = load_settings_file(args.config, allowed)
    from_file = {key: value for key, value in settings.items() if _env_name(key) not in os.environ}
    return build_parser(from_file).parse_args(argv)


def settings_toml(args: argparse.Namespace) -> str:
    keys = sorted(set(vars(args)) - _NOT_IN_FILE)
    lines = [f"{key} = {json.dumps(vars(args)[key])}" for key in keys if vars(args)[key] is not None]
    lines.append(f"# auth_token: {'set' if args.auth_token else 'not set'} (never printed)")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
    except ValueError as error:
        print(f"citer-cloud: error: {error}", file=sys.stderr)
        return 2
    if args.command == "health":
        return check_health(args.address, args.timeout)
    if args.print_config:
        sys.stdout.write(settings_toml(args))
        return 0
    configure_logging(args.verbose, args.log_format)
    model = Path(args.model).expanduser() if args.model else None
    problem = _model_problem(args.backend, model)
    if problem:
        print(f"citer-cloud: error: {problem}", file=sys.stderr)
        return 2
    try:
        config = _config(args, model)
    except ValueError as error:
        print(f"citer-cloud: error: {error}", file=sys.stderr)
        return 2
    try:
        asyncio.run(serve(config))
    except BackendStartError as error:
        print(f"citer-cloud: error: {error}", file=sys.stderr, flush=True)
        # A failed engine (vLLM) can leave non-daemon threads behind that would keep the process alive forever.
        os._exit(1)
    except (OSError, ValueError, ImportError) as error:  # ImportError: --backend vllm without vLLM installed
        print(f"citer-cloud: error: {error}", file=sys.stderr)
        return 1
    return 0


def check_health(address: str, timeout_s: float) -> int:
    """One gRPC health check of the whole server (plaintext: meant for the container's own loopback)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    try:
        with grpc.insecure_channel(address) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout_s)
    except grpc.RpcError as error:
        print(f"citer-cloud: {address}: {error.code().name}: {error.details()}", file=sys.stderr)
        return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(f"{address}: {status}")
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


def _model_problem(backend: str, model: Path | None) -> str | None:
    """What is wrong with ``--model`` for this backend, in one line; None when it looks right."""
    if model is None:
        return "no model given; use --model PATH"
    if backend == "vllm":
        if not (model / "config.json").is_file():
            return f"--backend vllm needs a Hugging Face model folder with a config.json: {model}"
        return None
    if model.is_dir():
        return f"--backend llama.cpp needs a GGUF file, got a folder (for a model folder use --backend vllm): {model}"
    if not model.is_file():
        return f"model file not found: {model}"
    return None


def _config(args: argparse.Namespace, model: Path) -> ServerConfig:
    return ServerConfig(
        model_path=model,
        backend=args.backend,
        tensor_parallel_size=args.tensor_parallel_size,
        pipeline_parallel_size=args.pipeline_parallel_size,
        gpu_memory_utilization=args.gpu_memory_utilization,
        max_context=args.max_context,
        dtype=args.dtype,
        enforce_eager=args.enforce_eager,
        distributed_executor_backend=args.distributed_executor_backend,
        block_size=args.block_size,
        host=args.host,
        port=args.port,
        max_sessions=args.max_sessions,
        kv_tokens=args.kv_tokens,
        max_request_tokens=args.max_request_tokens,
        max_batch_sessions=args.max_batch_sessions,
        n_threads=args.threads,
        llama_extra_buffers=args.llama_extra_buffers,
        n_gpu_layers=args.n_gpu_layers,
        metrics_port=args.metrics_port if args.metrics_port >= 0 else None,
        metrics_host=args.metrics_host,
        auth_token=args.auth_token,
        tenants=_tenants(args.tenants_file),
        max_session_kv_share=args.max_session_kv_share,
        verbose=args.verbose,
        stop_on_stdin_eof=args.stop_on_stdin_eof,
        tls_cert=_path(args.tls_cert),
        tls_key=_path(args.tls_key),
        tls_client_ca=_path(args.tls_client_ca),
    )


def _tenants(tenants_file: str | None) -> TenantDirectory | None:
    """From the file if given, else from the environment; None when neither is set."""
    if tenants_file:
        return TenantDirectory.from_file(Path(tenants_file).expanduser())
    from_env = os.environ.get(TENANTS_ENV, "")
    return TenantDirectory.from_env(from_env) if from_env.strip() else None


def _path(value: str | None) -> Path | None:
    return Path(value).expanduser() if value else None


if __name__ == "__main__":
    sys.exit(main())
