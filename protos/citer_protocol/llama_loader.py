"""The one place that opens llama.cpp models, with weight buffers chosen to be safe on this CPU.

llama.cpp may keep weights in "extra" CPU buffer types (AMX tiles, repacked
layouts) instead of the plain CPU buffer. On Intel Xeons with AMX (seen on a
Sapphire Rapids KVM guest, llama-cpp-python 0.3.36) the AMX buffer crashes the
process with SIGSEGV on any batched decode, so a prompt prefill kills it. The
edge SLM, the cloud backend, label collection, benchmarks and the tests'
reference decoder all load models here, so one policy protects them all.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

#: Environment override for the buffer policy: ``auto`` (default), ``on`` or ``off``.
EXTRA_BUFFERS_ENV = "CITER_LLAMA_EXTRA_BUFFERS"
EXTRA_BUFFER_SETTINGS = ("auto", "on", "off")

#: CPU flags (as /proc/cpuinfo names them) that decide which llama.cpp kernels run.
_AMX_FLAGS = frozenset({"amx_int8", "amx_tile", "amx_bf16"})


@dataclass(frozen=True)
class CpuInfo:
    """What the CPU reports about itself: its model name and its feature flags."""

    model_name: str
    flags: frozenset[str]

    @property
    def avx2(self) -> bool:
        return "avx2" in self.flags

    @property
    def avx512(self) -> bool:
        return "avx512f" in self.flags

    @property
    def amx(self) -> bool:
        """True when the CPU offers AMX int8 tiles, the ones llama.cpp's AMX buffer uses."""
        return "amx_int8" in self.flags

    @property
    def amx_flags(self) -> list[str]:
        return sorted(self.flags & _AMX_FLAGS)

    @classmethod
    def parse(cls, cpuinfo_text: str) -> CpuInfo:
        """Read the first processor's ``model name`` and ``flags`` lines of a /proc/cpuinfo text."""
        model_name = ""
        flags: frozenset[str] | None = None
        for line in cpuinfo_text.splitlines():
            key, sep, value = line.partition(":")
            if not sep:
                continue
            key = key.strip()
            if key == "model name" and not model_name:
                model_name = value.strip()
            elif key == "flags" and flags is None:
                flags = frozenset(value.split())
        return cls(model_name=model_name or "unknown", flags=flags or frozenset())

    @classmethod
    def read(cls, path: str | os.PathLike[str] = "/proc/cpuinfo") -> CpuInfo:
        """This machine's CPU; where there is no /proc/cpuinfo (macOS, Windows) flags are unknown (empty)."""
        try:
            return cls.parse(Path(path).read_text(errors="replace"))
        except OSError:
            return cls(model_name=platform.processor() or "unknown", flags=frozenset())


@dataclass(frozen=True)
class BufferPolicy:
    """Whether llama.cpp may use its extra CPU buffer types, and why: logged, and shown by ``doctor``."""

    setting: str  # what was asked for: auto, on or off
    use_extra_buffers: bool
    reason: str

    def describe(self) -> str:
        state = "on" if self.use_extra_buffers else "off"
        return f"extra buffers {state} ({self.setting}: {self.reason})"


def llama_build_features(system_info: str | None = None) -> dict[str, str]:
    """The features llama.cpp was compiled with, from ``llama_print_system_info`` (``AVX2 = 1 | AMX_INT8 = 1 …``)."""
    if system_info is None:
        system_info = llama_system_info()
    features: dict[str, str] = {}
    for part in system_info.replace("\n", "|").split("|"):
        name, sep, value = part.partition("=")
        if sep:
            features[name.split(":")[-1].strip()] = value.strip()
    return features


def llama_system_info() -> str:
    """llama.cpp's own description of the backends and CPU features it was built with."""
    import llama_cpp

    return llama_cpp.llama_print_system_info().decode("utf-8", errors="replace").strip()


def resolve_extra_buffers_setting(setting: str | None = None) -> str:
    """The setting in force: the explicit one (a CLI flag), else the environment, else ``auto``."""
    value = setting if setting is not None else os.environ.get(EXTRA_BUFFERS_ENV, "") or "auto"
    value = value.strip().lower()
    if value not in EXTRA_BUFFER_SETTINGS:
        source = "--llama-extra-buffers" if setting is not None else EXTRA_BUFFERS_ENV
        raise ValueError(f"{source} must be one of {', '.join(EXTRA_BUFFER_SETTINGS)}, got {value!r}")
    return value


def choose_buffer_policy(
    setting: str | None = None, cpu: CpuInfo | None = None, build_features: dict[str, str] | None = None
) -> BufferPolicy:
    """Decide whether llama.cpp may use its extra buffer types on this machine.

    ``auto`` turns them off only where the AMX buffer would be used, i.e. the
    CPU reports AMX *and* llama.cpp was compiled with AMX kernels. Elsewhere it
    keeps them on, since they also hold llama.cpp's repacked weight layouts.
    llama.cpp 0.3.36 offers no public way to keep the repack buffer and drop
    only AMX (``use_extra_bufts`` is all or nothing, and tensor overrides to
    the CPU buffer re-admit AMX), so on AMX machines both go.
    """
    value = resolve_extra_buffers_setting(setting)
    if value == "on":
        return BufferPolicy(value, True, "forced on")
    if value == "off":
        return BufferPolicy(value, False, "forced off")
    cpu = cpu if cpu is not None else CpuInfo.read()
    features = build_features if build_features is not None else llama_build_features()
    build_has_amx = features.get("AMX_INT8") == "1"
    if not cpu.flags and build_has_amx:  # no /proc/cpuinfo (e.g. Windows): assume the worst
        return BufferPolicy(value, False, "CPU flags unknown and this llama.cpp build has AMX kernels")
    if not cpu.amx:
        return BufferPolicy(value, True, "CPU reports no AMX")
    if not build_has_amx:
        return BufferPolicy(value, True, "CPU has AMX but this llama.cpp build has no AMX kernels")
    return BufferPolicy(
        value,
        False,
        f"CPU has AMX and llama.cpp's AMX buffer crashes batched decoding on such CPUs; "
        f"set {EXTRA_BUFFERS_ENV}=on if yours is known to be fine",
    )


def load_llama_model(
    path: str | os.PathLike[str],
    *,
    extra_buffers: str | None = None,
    vocab_only: bool = False,
    n_gpu_layers: int = 0,
    verbose: bool = False,
):
    """Open a GGUF with llama-cpp-python's low-level ``LlamaModel``, using the buffer policy for this CPU.

    ``extra_buffers`` is ``auto``, ``on``, ``off`` or None (the environment
    decides, else ``auto``). ``vocab_only`` reads just the tokenizer (fast;
    enough for tokens and the fingerprint). ``n_gpu_layers`` offloads that many
    layers (-1: all) where llama.cpp was built with a GPU backend (CUDA, Metal,
    Vulkan); a CPU build ignores it. Raises ``FileNotFoundError`` for
    a missing file and ``ValueError`` for a bad setting, before anything is loaded.
    """
    from llama_cpp import _internals as llama_internals

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    policy = choose_buffer_policy(extra_buffers)
    log.debug("loading %s with %s", path.name, policy.describe())
    # llama-cpp-python's log-level map is off by one for current ggml (warnings arrive as errors),
    # so its logger is silenced outright unless the user asked for verbose output.
    logging.getLogger("llama-cpp-python").setLevel(logging.DEBUG if verbose else logging.CRITICAL)
    params = llama_internals.LlamaModel.default_params()
    params.use_extra_bufts = policy.use_extra_buffers
    params.vocab_only = vocab_only
    params.n_gpu_layers = n_gpu_layers if n_gpu_layers >= 0 else 2**31 - 1
    return llama_internals.LlamaModel(path_model=str(path), params=params, verbose=verbose)


def add_extra_buffers_argument(parser: argparse.ArgumentParser | argparse._ArgumentGroup, scope: str = "") -> None:
    """``--llama-extra-buffers`` for every CLI that loads llama.cpp models (None: the environment decides)."""
    parser.add_argument(
        "--llama-extra-buffers",
        choices=EXTRA_BUFFER_SETTINGS,
        default=None,
        help=f"llama.cpp extra weight buffers (AMX, repack){scope}; auto turns them off on AMX CPUs, where they "
        f"crash batched decoding [{EXTRA_BUFFERS_ENV}]",
    )


def context_params(n_ctx: int, n_batch: int, n_threads: int | None = None):
    """llama.cpp context parameters every context in the project shares; callers add what is theirs.

    Flash attention stays off everywhere, so the edge SLM, the cloud backend and
    the tests' reference decoder run the same attention kernels (outputs that
    tests compare exactly must come from the same numerics).
    """
    import llama_cpp

    threads = n_threads or os.cpu_count() or 1
    params = llama_cpp.llama_context_default_params()
    params.n_ctx = n_ctx
    params.n_batch = params.n_ubatch = n_batch
    params.n_threads = params.n_threads_batch = threads
    params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
    return params


def decode_in_order(ctx, tokens: list[int]) -> None:
    """One ``llama_decode`` of ``tokens`` appended to sequence 0; raises RuntimeError on a non-zero status."""
    import llama_cpp

    array = (llama_cpp.llama_token * len(tokens))(*tokens)
    status = llama_cpp.llama_decode(ctx.ctx, llama_cpp.llama_batch_get_one(array, len(tokens)))
    if status != 0:
        raise RuntimeError(f"llama_decode returned status {status}")


def vocab_fingerprint(model) -> str:
    """The tokenizer fingerprint of a loaded model (see ``citer_protocol.fingerprint``): what pairs SLM and LLM."""
    import llama_cpp

    from citer_protocol.fingerprint import tokenizer_fingerprint

    vocab = llama_cpp.llama_model_get_vocab(model.model)
    return tokenizer_fingerprint(
        llama_cpp.llama_vocab_get_text(vocab, token_id) or b"" for token_id in range(model.n_vocab())
    )


def cpu_flag_summary(cpu: CpuInfo, names: Iterable[str] = ("avx2", "avx512f", "avx512_vnni", "amx_int8")) -> str:
    """``avx2 yes, avx512f yes, …``: the flags that matter to llama.cpp, for logs and ``doctor``."""
    return ", ".join(f"{name} {'yes' if name in cpu.flags else 'no'}" for name in names)
