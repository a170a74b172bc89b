"""Shared fixtures: real models from the cache (pulled on first use), real servers on loopback."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from citer_cloud.server import CloudServer, ServerConfig
from citer_edge.models import resolve_model
from citer_edge.slm import LocalModel

#: A ChatML prompt (SmolLM2 and Qwen2.5 share the format) whose greedy continuation is stable.
CHAT_PROMPT = (
    "<|im_start|>user\nWrite a Python function that checks whether a number is prime.<|im_end|>\n"
    "<|im_start|>assistant\n"
)


#: Exact identity across a resync or a shared server needs a prompt whose greedy choice is clear at every step.
#: Where two candidates are within a few hundredths of a logit, numerics decide: a resync's one-batch re-prefill
#: (docs/architecture.md, "Numerics") or a session's KV cells sitting among other sessions' can flip such a tie,
#: and how close the ties are depends on the CPU and the llama.cpp build (CHAT_PROMPT's 24th SmolLM2 token leads
#: by 0.06 logits on an AMD EPYC build). Counting is unambiguous, and any lost context shows as a wrong number.
COUNTING_PROMPT = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,"
MIN_MARGIN = 1.0  # logits between the greedy token and the runner-up, at every step of the expected output


def greedy_margins(slm: LocalModel, prompt: list[int], tokens: list[int]) -> list[float]:
    """Top-1 minus top-2 logit at each step of ``tokens``: how far numerics would have to move to flip it."""
    import numpy as np

    slm.sync(prompt)
    margins = []
    for token in tokens:
        runner_up, best = np.partition(slm.logits, -2)[-2:]
        margins.append(float(best - runner_up))
        slm.eval([token])
    return margins


@pytest.fixture(scope="session", autouse=True)
def private_chat_history(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Chats started by tests journal into a temporary folder, never into the user's own history."""
    from citer_edge.chat.journal import HISTORY_ENV

    folder = tmp_path_factory.mktemp("chat-history")
    previous = os.environ.get(HISTORY_ENV)
    os.environ[HISTORY_ENV] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop(HISTORY_ENV, None)
    else:
        os.environ[HISTORY_ENV] = previous


@pytest.fixture(scope="session", autouse=True)
def private_state(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Learned routing state and budget ledgers of test runs go to a temporary folder, never the user's."""
    from citer_edge.state import STATE_ENV

    folder = tmp_path_factory.mktemp("state")
    previous = os.environ.get(STATE_ENV)
    os.environ[STATE_ENV] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop(STATE_ENV, None)
    else:
        os.environ[STATE_ENV] = previous


@pytest.fixture(scope="session")
def smol_path() -> Path:
    return resolve_model("smollm2-135m")


@pytest.fixture(scope="session")
def qwen_slm_path() -> Path:
    return resolve_model("qwen2.5-coder-0.5b")


@pytest.fixture(scope="session")
def qwen_llm_path() -> Path:
    return resolve_model("qwen2.5-coder-1.5b")


@pytest.fixture(scope="session")
def smol_slm(smol_path: Path) -> Iterator[LocalModel]:
    """One SmolLM2 SLM for the whole run; tests that use it must not rely on its KV contents."""
    with LocalModel(smol_path, n_ctx=2048) as slm:
        yield slm


@pytest.fixture
def free_port() -> int:
    """A loopback port nothing listens on (free when probed)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def start_server() -> Iterator[Callable[..., CloudServer]]:
    """Factory for in-process gRPC servers on loopback; all are stopped after the test."""
    servers: list[CloudServer] = []

    def start(model_path: Path, **options: object) -> CloudServer:
        options.setdefault("port", 0)
        server = CloudServer(ServerConfig(model_path=model_path, **options)).start()  # type: ignore[arg-type]
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def smol_server(start_server: Callable[..., CloudServer], smol_path: Path) -> CloudServer:
    return start_server(smol_path)
