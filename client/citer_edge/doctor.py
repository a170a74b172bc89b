"""``citer-edge doctor``: what this machine is, what citer-edge will do on it, and what is broken.

The command a user runs before filing a bug. Each check is one line with a
status; the last line says OK or names what is broken and the command that
fixes it. Crashes inside llama.cpp (AMX) are caught by decoding in a child
process, so doctor itself survives them and can say so.
"""

from __future__ import annotations

import logging
import os
import platform
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from citer_edge import models
from citer_edge.cloud.channel import CloudTls
from citer_protocol.llama_loader import (
    EXTRA_BUFFERS_ENV,
    CpuInfo,
    choose_buffer_policy,
    cpu_flag_summary,
    llama_build_features,
    llama_system_info,
    load_llama_model,
    vocab_fingerprint,
)

OK, INFO, WARN, FAIL = "ok", "info", "warn", "fail"
START_CLOUD_HINT = "start one: citer-cloud serve --model LLM.gguf --host 0.0.0.0 --port 50051"


@dataclass
class Check:
    """One line of the report: ``fix`` is the command (or step) that repairs a ``fail`` or ``warn``."""

    name: str
    status: str
    detail: str
    fix: str | None = None


@dataclass
class Report:
    checks: list[Check]

    @property
    def ok(self) -> bool:
        return all(check.status != FAIL for check in self.checks)

    def verdict(self) -> str:
        failed = [check for check in self.checks if check.status == FAIL]
        if not failed:
            return "OK"
        first = failed[0]
        more = f" (and {len(failed) - 1} more above)" if len(failed) > 1 else ""
        return f"BROKEN: {first.name}: {first.detail}; fix: {first.fix or 'see above'}{more}"

    def to_dict(self) -> dict[str, object]:
        return {"ok": self.ok, "verdict": self.verdict(), "checks": [asdict(check) for check in self.checks]}

    def text(self) -> str:
        width = max(len(check.name) for check in self.checks)
        lines = []
        for check in self.checks:
            line = f"{check.name:<{width}}  {check.status:<4}  {check.detail}"
            if check.fix and check.status in (WARN, FAIL):
                line += f"\n{'':<{width}}        fix: {check.fix}"
            lines.append(line)
        lines.append(self.verdict())
        return "\n".join(lines)


def run_doctor(
    slm: str,
    cloud: str | None = None,
    cloud_token: str | None = None,
    extra_buffers: str | None = None,
    progress: Callable[[str], None] = lambda _: None,
    tls: CloudTls | None = None,
) -> Report:
    """Every check, in the order a reader wants them: machine, llama.cpp, models, router, cloud."""
    checks = [
        Check("python", INFO, f"{platform.python_version()} ({sys.executable}) on {platform.platform()}"),
    ]
    cpu = CpuInfo.read()
    checks.append(Check("cpu", INFO, f"{cpu.model_name}, {os.cpu_count()} cores: {cpu_flag_summary(cpu)}"))
    llama_ok = _llama_checks(checks, cpu, extra_buffers)
    progress("checking models")
    checks.extend(_model_checks())
    slm_facts = _read_slm(checks, slm, extra_buffers) if llama_ok else None
    if slm_facts is not None:
        progress(f"decoding a batch with {slm_facts.path.name}")
        checks.append(_decode_check(slm_facts.path, extra_buffers))
    checks.extend(_router_checks(slm_facts))
    if cloud:
        progress(f"asking the cloud at {cloud}")
        checks.append(_cloud_check(cloud, cloud_token, slm_facts, tls))
    return Report(checks)


def _llama_checks(checks: list[Check], cpu: CpuInfo, extra_buffers: str | None) -> bool:
    try:
        import llama_cpp

        info = llama_system_info()
    except (ImportError, OSError, RuntimeError) as error:  # a missing module, or its native library failing
        fix = "python -m pip install --force-reinstall --no-cache-dir llama-cpp-python==0.3.36"
        checks.append(Check("llama.cpp", FAIL, f"llama-cpp-python does not load: {error}", fix))
        return False
    checks.append(Check("llama.cpp", INFO, f"llama-cpp-python {llama_cpp.__version__}; {info}"))
    try:
        policy = choose_buffer_policy(extra_buffers, cpu=cpu)
    except ValueError as error:
        checks.append(Check("buffers", FAIL, str(error), f"unset {EXTRA_BUFFERS_ENV} or set it to auto, on or off"))
        return False
    amx_buffer_in_use = policy.use_extra_buffers and cpu.amx and llama_build_features(info).get("AMX_INT8") == "1"
    status = WARN if amx_buffer_in_use else INFO
    fix = f"{EXTRA_BUFFERS_ENV}=off if decoding crashes" if status == WARN else None
    checks.append(Check("buffers", status, policy.describe(), fix))
    return True


def _model_checks() -> list[Check]:
    checks = []
    for spec, path in models.list_models():
        name = f"model {spec.alias}"
        if path is None:
            checks.append(
                Check(name, INFO, f"not downloaded (pulled on first use; `citer-edge models pull {spec.alias}`)")
            )
        elif not models.checksum_ok(spec.alias):
            checks.append(
                Check(name, FAIL, f"checksum mismatch: {path}", f"rm {path} && citer-edge models pull {spec.alias}")
            )
        else:
            checks.append(Check(name, OK, str(path)))
    return checks


@dataclass(frozen=True)
class SlmFacts:
    """What the later checks need from the SLM, read once from its vocabulary and metadata."""

    path: Path
    hidden_size: int
    fingerprint: str


def _read_slm(checks: list[Check], slm: str, extra_buffers: str | None) -> SlmFacts | None:
    try:
        path = models.resolve_model(slm, pull=False)
    except models.ModelNotFoundError as error:
        if slm in models.REGISTRY:  # a default not downloaded yet: pulled on first use, nothing is broken
            checks.append(Check("slm", WARN, f"{error}; llama.cpp and the router were not tried on it"))
        else:
            checks.append(Check("slm", FAIL, str(error), "pass --slm an existing GGUF path or a model alias"))
        return None
    try:
        model = load_llama_model(path, extra_buffers=extra_buffers, vocab_only=True)  # no weights: fast
        try:
            metadata = model.metadata()
            fingerprint = vocab_fingerprint(model)
        finally:
            model.close()
    except (ValueError, RuntimeError, OSError) as error:
        fix = "replace the file (a default model: delete it and run `citer-edge models pull`)"
        checks.append(Check("slm", FAIL, f"llama.cpp cannot read {path}: {error}", fix))
        return None
    hidden_size = int(metadata.get(f"{metadata.get('general.architecture', '')}.embedding_length", 0))
    checks.append(Check("slm", INFO, f"{path} (hidden size {hidden_size})"))
    return SlmFacts(path, hidden_size, fingerprint)


def _decode_check(slm_path: Path, extra_buffers: str | None) -> Check:
    from citer_protocol.llama_check import check_batched_decode

    result = check_batched_decode(slm_path, extra_buffers=extra_buffers)
    if result.ok:
        return Check("batched decode", OK, f"{result.detail} with {slm_path.name}")
    fix = f"export {EXTRA_BUFFERS_ENV}=off" if "SIG" in result.detail else "citer-edge doctor -v"
    return Check("batched decode", FAIL, f"{result.detail} ({slm_path.name}, {result.buffers})", fix)


def _router_checks(slm: SlmFacts | None) -> list[Check]:
    try:
        import onnxruntime as ort
    except (ImportError, OSError) as error:
        return [
            Check("onnxruntime", FAIL, f"does not load: {error}", "python -m pip install --force-reinstall onnxruntime")
        ]
    checks = [Check("onnxruntime", INFO, f"{ort.__version__}, providers {', '.join(ort.get_available_providers())}")]
    if slm is None:
        return checks
    import numpy as np

    from citer_edge.errors import CiterEdgeError
    from citer_edge.routing.features import LOGIT_STAT_NAMES
    from citer_edge.routing.router import RouterPolicy, shipped_router

    router_path = shipped_router(slm.path.name, slm.hidden_size)
    if router_path is None:
        checks.append(
            Check("router", INFO, f"none shipped for {slm.path.name}; --policy auto uses the confidence rule")
        )
        return checks
    try:
        policy = RouterPolicy.load(router_path, slm.hidden_size, cloud_share=0.2)
        row = np.zeros((1, slm.hidden_size + len(LOGIT_STAT_NAMES)), dtype=np.float32)
        p_critical = float(policy.router.predict(row)[0])
        if not 0.0 <= p_critical <= 1.0:
            raise CiterEdgeError(f"scored a zero row as {p_critical}, not a probability")
    except (CiterEdgeError, ValueError, RuntimeError, OSError) as error:
        fix = "python -m pip install -e . --force-reinstall --no-deps"
        return [*checks, Check("router", FAIL, f"{router_path.name}: {error}", fix)]
    checks.append(Check("router", OK, f"{router_path.name} loads and scores; {policy.describe()} at --cloud-share 0.2"))
    return checks


def _cloud_check(address: str, token: str | None, slm: SlmFacts | None, tls: CloudTls | None) -> Check:
    from citer_edge.cloud.session import CloudSession
    from citer_edge.errors import CiterEdgeError

    if slm is None:
        return Check("cloud", WARN, f"{address}: not checked (no SLM to pair it with)")
    try:
        session = CloudSession(address, slm.fingerprint, connect_timeout_s=5.0, auth_token=token, tls=tls)
    except CiterEdgeError as error:
        return Check("cloud", FAIL, str(error), "check the --cloud-ca / --cloud-cert / --cloud-key paths")
    client_log = logging.getLogger("citer_edge.cloud.session")
    level = client_log.level
    client_log.setLevel(logging.ERROR)  # the check line says it; the client's own warning would say it twice
    try:
        if not session.connect():
            return Check("cloud", FAIL, session.last_error or f"{address} does not answer", START_CLOUD_HINT)
        info = session.info
        assert info is not None
        return Check("cloud", OK, f"{address} serves {info.model_name} ({info.backend}); pairs with {slm.path.name}")
    except CiterEdgeError as error:
        return Check("cloud", FAIL, str(error), "pair models that share a tokenizer, or pass the right --cloud-token")
    finally:
        client_log.setLevel(level)
        session.close()
