"""Spawns a ``citer-cloud serve`` child on a free loopback port for demos and tests, and stops it on exit."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from citer_edge.errors import CiterEdgeError
from citer_protocol import READY_LINE

log = logging.getLogger(__name__)


class LocalCloud:
    """A cloud service in a child process: ``with LocalCloud(path) as cloud: cloud.address``.

    ``command_prefix`` runs the server under a wrapper, e.g. ``["taskset",
    "--cpu-list", "1"]`` so a benchmark can pin the cloud to its own core
    before it loads anything.
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        port: int = 0,
        extra_args: list[str] | None = None,
        startup_timeout_s: float = 120.0,
        verbose: bool = False,
        command_prefix: Sequence[str] = (),
    ) -> None:
        self.model_path = Path(model_path)
        self.command_prefix = list(command_prefix)
        self.requested_port = port
        self.extra_args = extra_args or []
        self.startup_timeout_s = startup_timeout_s
        self.verbose = verbose
        self.port: int | None = None
        self._process: subprocess.Popen[str] | None = None

    @property
    def address(self) -> str:
        if self.port is None:
            raise RuntimeError("local cloud is not running")
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        """The server process's id (benchmarks read its CPU time)."""
        if self._process is None:
            raise RuntimeError("local cloud is not running")
        return self._process.pid

    @property
    def command(self) -> list[str]:
        """The child's command line (benchmarks record it next to their results)."""
        command = [
            *self.command_prefix, sys.executable, "-m", "citer_cloud.cli", "serve",
            "--model", str(self.model_path), "--host", "127.0.0.1", "--port", str(self.requested_port),
            "--stop-on-stdin-eof", *self.extra_args,
        ]  # fmt: skip
        return [*command, "--verbose"] if self.verbose else command

    def start(self) -> LocalCloud:
        command = self.command
        # stdin is the child's lifeline: if this process dies without stop() (SIGKILL, an unhandled SIGTERM),
        # the OS closes the pipe and the server shuts itself down instead of living on as an orphan.
        self._process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=None if self.verbose else subprocess.DEVNULL,
            text=True,
        )
        ready = threading.Event()
        threading.Thread(target=self._watch_stdout, args=(ready,), daemon=True).start()
        deadline = time.monotonic() + self.startup_timeout_s
        while not ready.wait(0.1):
            if self._process.poll() is not None:
                raise CiterEdgeError(f"local cloud exited with status {self._process.returncode} during start-up")
            if time.monotonic() > deadline:
                self.stop()
                raise CiterEdgeError(f"local cloud did not start within {self.startup_timeout_s:.0f} s")
        log.info("local cloud serving %s on %s", self.model_path.name, self.address)
        return self

    def _watch_stdout(self, ready: threading.Event) -> None:
        assert self._process is not None and self._process.stdout is not None
        for line in self._process.stdout:
            if line.startswith(READY_LINE):
                self.port = int(line.split()[-1])
                ready.set()
            elif self.verbose:
                print(line, end="", file=sys.stderr)

    def stop(self) -> None:
        """Terminate gracefully (SIGTERM), kill after 10 s."""
        if self._process is None:
            return
        if self._process.stdin is not None:
            self._process.stdin.close()
        terminate(self._process)
        self._process = None

    def kill(self) -> None:
        """Stop abruptly (SIGKILL), like a crashed server."""
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None

    def __enter__(self) -> LocalCloud:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def terminate(process: subprocess.Popen, grace_s: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if the process has not ended within ``grace_s``: a child must never outlive us."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
