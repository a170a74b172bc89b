"""Decode and prefill speed of the SLM under each llama.cpp weight-buffer setting (and llama.cpp build).

Why: on CPUs with AMX, llama.cpp's extra weight buffers crash batched decoding,
so citer-edge turns them off there (``CITER_LLAMA_EXTRA_BUFFERS``). This
measures what that costs. Each setting runs in its own child process, decode
first and prefill second, each phase reported as soon as it ends, so a setting
that crashes still reports what it managed and the crash is recorded.

``--build NAME=DIR`` adds another llama-cpp-python install (a ``pip install
--target DIR`` of a different build) to compare, e.g. one compiled without AMX
kernels, which keeps the repack buffer on an AMX CPU:

    CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON \
      -DGGML_AVX_VNNI=ON -DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON" \
      pip install --no-deps --no-cache-dir --target /tmp/llama-no-amx llama-cpp-python==0.3.36
    citer-bench buffers --slm qwen2.5-coder-0.5b --settings on off --build no-amx=/tmp/llama-no-amx
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from citer_bench.machine import machine_description, write_result
from citer_edge.models import DEFAULT_SLM, resolve_model
from citer_protocol.llama_check import FILLER_TEXT, describe_exit


def child(model: str, setting: str, prompt_tokens: int, decode_tokens: int, repeats: int, threads: int) -> None:
    """Runs in the child: one JSON line per finished phase on stdout."""
    import llama_cpp

    from citer_edge.slm import LocalModel
    from citer_protocol.llama_loader import llama_system_info

    with LocalModel(model, n_ctx=prompt_tokens + decode_tokens + 8, n_threads=threads, extra_buffers=setting) as slm:
        prompt = slm.tokenize(FILLER_TEXT * (prompt_tokens // 8 + 1))[:prompt_tokens]
        _emit(
            phase="loaded",
            llama_cpp_python=llama_cpp.__version__,
            llama_cpp_dir=os.path.dirname(llama_cpp.__file__),
            llama_system_info=llama_system_info(),
        )
        decode_rates = []
        for _ in range(repeats):
            slm.reset()
            slm.eval(prompt[:1])
            start = time.perf_counter()
            for _ in range(decode_tokens):
                slm.eval([int(slm.logits.argmax())])
            decode_rates.append(decode_tokens / (time.perf_counter() - start))
        _emit(phase="decode", tokens_per_s=decode_rates)
        prefill_rates = []
        for _ in range(repeats):
            slm.reset()
            start = time.perf_counter()
            slm.eval(prompt)
            prefill_rates.append(prompt_tokens / (time.perf_counter() - start))
        _emit(phase="prefill", tokens_per_s=prefill_rates)


def _emit(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


def run_setting(args: argparse.Namespace, model: str, setting: str, build: str, build_dir: str | None) -> dict:
    env = dict(os.environ)
    if build_dir:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [build_dir, env.get("PYTHONPATH")]))
    command = [
        sys.executable, "-m", "citer_bench.buffers", "--child", model, "--setting", setting,
        "--prompt-tokens", str(args.prompt_tokens), "--decode-tokens", str(args.decode_tokens),
        "--repeats", str(args.repeats), "--threads", str(args.threads),
    ]  # fmt: skip
    try:
        result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=args.timeout_s)
    except subprocess.TimeoutExpired as expired:  # a hung setting is a result too, with what it printed
        output = [
            (text or b"").decode() if isinstance(text, bytes) else text or ""
            for text in (expired.stdout, expired.stderr)
        ]
        result = subprocess.CompletedProcess(command, -1, *output)
        hung = True
    else:
        hung = False
    exit_text = f"no exit within {args.timeout_s:.0f} s" if hung else describe_exit(result.returncode)
    row: dict[str, object] = {"build": build, "setting": setting, "exit": exit_text}
    for line in result.stdout.splitlines():
        fields = json.loads(line)
        phase = fields.pop("phase")
        if "tokens_per_s" in fields:
            rates = fields["tokens_per_s"]
            row[phase] = {"median_tokens_per_s": statistics.median(rates), "runs": rates}
        else:
            row.update(fields)
    if result.returncode != 0:
        row["stderr_tail"] = result.stderr.strip().splitlines()[-3:]
    return row


def _rate(row: dict, phase: str) -> str:
    if phase in row:
        return f"{row[phase]['median_tokens_per_s']:8.1f}"
    return f"{'crashed' if row['exit'] != 'ok' else '-':>8}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="citer-bench buffers", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--slm", default=DEFAULT_SLM, help="alias or GGUF path")
    parser.add_argument("--settings", nargs="+", default=["on", "off"], choices=("auto", "on", "off"))
    parser.add_argument("--build", action="append", default=[], metavar="NAME=DIR",
                        help="another llama-cpp-python install to compare (repeatable)")  # fmt: skip
    parser.add_argument("--prompt-tokens", type=int, default=512, help="tokens in the prefilled prompt")
    parser.add_argument("--decode-tokens", type=int, default=128, help="one-token decode steps")
    parser.add_argument("--repeats", type=int, default=3, help="runs per phase (the median is reported)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--timeout-s", type=float, default=1800, help="seconds one setting may run")
    parser.add_argument("--name", default="llama-buffers", help="result file name under bench/results/")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--setting", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.setting, args.prompt_tokens, args.decode_tokens, args.repeats, args.threads)
        return 0
    machine = machine_description()  # first: a bad CITER_LLAMA_EXTRA_BUFFERS fails before any run, not after
    model = str(resolve_model(args.slm))
    builds: list[tuple[str, str | None]] = [("installed", None)]
    for spec in args.build:
        name, sep, directory = spec.partition("=")
        if not sep:
            parser.error(f"--build takes NAME=DIR, got {spec!r}")
        builds.append((name, directory))
    rows = []
    print(f"{'build':12} {'setting':8} {'decode':>8} {'prefill':>8}  tok/s (median of {args.repeats})  exit")
    for build, directory in builds:
        for setting in args.settings:
            row = run_setting(args, model, setting, build, directory)
            rows.append(row)
            print(f"{build:12} {setting:8} {_rate(row, 'decode')} {_rate(row, 'prefill')}  {'':22}{row['exit']}")
    path = write_result(
        args.name,
        {
            "benchmark": "llama-buffers",
            "machine": machine,
            "settings": {
                "slm": os.path.basename(model),
                "prompt_tokens": args.prompt_tokens,
                "decode_tokens": args.decode_tokens,
                "repeats": args.repeats,
                "threads": args.threads,
                "builds": {name: directory for name, directory in builds},
            },
            "results": rows,
        },
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
