"""``citer-edge``: chat, generate and manage models from the terminal.

Every option has a CITER_EDGE_* environment override (shown in ``--help``);
errors print one line and exit non-zero.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from citer_edge import models
from citer_edge.cloud.channel import CloudTls
from citer_edge.cloud.session import DEFAULT_TIMEOUT_S
from citer_edge.errors import CiterEdgeError
from citer_edge.routing.policies import POLICY_NAMES, make_policy
from citer_protocol import SamplingSettings
from citer_protocol.llama_loader import add_extra_buffers_argument

if TYPE_CHECKING:  # imported where used: `citer-edge doctor` must start even when llama.cpp does not load
    from citer_edge.chat.conversation import Conversation
    from citer_edge.cloud.session import CloudSession
    from citer_edge.decode import GeneratedToken, GenerationStream, HybridGenerator
    from citer_edge.chat.journal import Journal
    from citer_edge.slm import LocalModel

log = logging.getLogger("citer_edge")

DEFAULT_CHAT_PROMPT = "Write a Python function that returns the n-th prime number."
DEFAULT_GENERATE_TOKENS = 512
#: Room a chat keeps for the next reply when old turns must go (or a quarter of a small window).
CHAT_REPLY_ROOM = 512


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(f"CITER_EDGE_{name}", default)


def _add_runtime_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("models and cloud")
    group.add_argument("--slm", default=_env("SLM", models.DEFAULT_SLM), help="SLM alias or GGUF path [CITER_EDGE_SLM]")
    group.add_argument(
        "--llm", default=_env("LLM", models.DEFAULT_LLM), help="LLM for --local-cloud, alias or path [CITER_EDGE_LLM]"
    )
    group.add_argument("--cloud", default=_env("CLOUD"), help="cloud service address host:port [CITER_EDGE_CLOUD]")
    group.add_argument(
        "--local-cloud",
        action="store_true",
        default=_env("LOCAL_CLOUD") == "1",
        help="start citer-cloud with --llm on a free loopback port for this run [CITER_EDGE_LOCAL_CLOUD=1]",
    )
    group.add_argument(
        "--cloud-token", default=_env("CLOUD_TOKEN"), help="bearer token for the cloud [CITER_EDGE_CLOUD_TOKEN]"
    )
    _add_tls_options(group)
    group.add_argument(
        "--cloud-timeout",
        type=float,
        default=float(_env("CLOUD_TIMEOUT", str(DEFAULT_TIMEOUT_S))),
        help="seconds a cloud call may take (plus 10 ms per token it sends) before generation goes on locally "
        "[CITER_EDGE_CLOUD_TIMEOUT]",
    )
    routing = parser.add_argument_group("routing and sampling")
    routing.add_argument(
        "--policy",
        choices=("auto", *POLICY_NAMES, "router"),
        default=_env("POLICY", "auto"),
        help="routing policy; auto = the router shipped for this SLM at --cloud-share if there is one, "
        "else confidence at --threshold [CITER_EDGE_POLICY]",
    )
    routing.add_argument(
        "--threshold",
        type=float,
        default=float(_env("THRESHOLD", "0.6")),
        help="confidence: route when top-1 prob is below it; random: cloud share [CITER_EDGE_THRESHOLD]",
    )
    routing.add_argument("--router", default=_env("ROUTER"), help="router.onnx for --policy router [CITER_EDGE_ROUTER]")
    routing.add_argument(
        "--cloud-share",
        type=float,
        default=float(_env("CLOUD_SHARE", "0.2")),
        help="router: target share of tokens from the cloud, via its calibration [CITER_EDGE_CLOUD_SHARE]",
    )
    routing.add_argument(
        "--tokens-per-call",
        type=int,
        default=int(_env("TOKENS_PER_CALL", "1")),
        help="LLM tokens per cloud call [CITER_EDGE_TOKENS_PER_CALL]",
    )
    routing.add_argument(
        "--max-tokens",
        type=int,
        default=int(_env("MAX_TOKENS", "0")) or None,
        help="most tokens per reply (generate: 512; chat: until the model ends it or the window is full) "
        "[CITER_EDGE_MAX_TOKENS]",
    )
    routing.add_argument("--temperature", type=float, default=float(_env("TEMPERATURE", "0")), help="0 is greedy")
    routing.add_argument("--top-p", type=float, default=float(_env("TOP_P", "1")))
    routing.add_argument("--seed", type=int, default=int(_env("SEED", "0")))
    routing.add_argument("--n-ctx", type=int, default=int(_env("N_CTX", "4096")), help="SLM context window")
    routing.add_argument("--threads", type=int, default=int(_env("THREADS", "0")) or None, help="SLM CPU threads")
    add_extra_buffers_argument(routing, " for the SLM and a --local-cloud")
    parser.add_argument("--show-routing", action="store_true", help="highlight tokens that came from the cloud LLM")
    parser.add_argument("-v", "--verbose", action="store_true", default=_env("VERBOSE") == "1", help="debug logging")


def _add_tls_options(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--cloud-tls",
        action="store_true",
        default=_env("CLOUD_TLS") == "1",
        help="reach the cloud over TLS (implied by --cloud-ca) [CITER_EDGE_CLOUD_TLS=1]",
    )
    group.add_argument("--cloud-ca", default=_env("CLOUD_CA"), help="PEM CA bundle to trust [CITER_EDGE_CLOUD_CA]")
    group.add_argument(
        "--cloud-tls-server-name",
        default=_env("CLOUD_TLS_SERVER_NAME"),
        help="name the server certificate must carry, if not the address's host [CITER_EDGE_CLOUD_TLS_SERVER_NAME]",
    )
    group.add_argument(
        "--cloud-cert", default=_env("CLOUD_CERT"), help="mutual TLS: this device's certificate [CITER_EDGE_CLOUD_CERT]"
    )
    group.add_argument("--cloud-key", default=_env("CLOUD_KEY"), help="mutual TLS: its PEM key [CITER_EDGE_CLOUD_KEY]")


def cloud_tls(args: argparse.Namespace) -> CloudTls | None:
    """TLS settings from the options, or None for a plain channel."""
    wanted = args.cloud_tls or any((args.cloud_ca, args.cloud_tls_server_name, args.cloud_cert, args.cloud_key))
    if not wanted:
        return None
    return CloudTls(
        ca_file=Path(args.cloud_ca).expanduser() if args.cloud_ca else None,
        server_name=args.cloud_tls_server_name,
        client_cert=Path(args.cloud_cert).expanduser() if args.cloud_cert else None,
        client_key=Path(args.cloud_key).expanduser() if args.cloud_key else None,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="citer-edge", description="Hybrid edge/cloud decoding: a local SLM, critical tokens from a cloud LLM."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    chat = sub.add_parser("chat", help="chat with the hybrid model (one-shot with a PROMPT, else interactive)")
    chat.add_argument("prompt", nargs="?", help="answer this one message and exit")
    chat.add_argument("--system", default=_env("SYSTEM"), help="system message [CITER_EDGE_SYSTEM]")
    chat.add_argument(
        "--resume", nargs="?", const="latest", metavar="ID", help="continue a saved conversation (default: the latest)"
    )
    chat.add_argument(
        "--no-history",
        action="store_true",
        default=_env("NO_HISTORY") == "1",
        help="keep nothing on disk [CITER_EDGE_NO_HISTORY=1]",
    )
    _add_runtime_options(chat)

    generate = sub.add_parser("generate", help="one completion for scripts")
    generate.add_argument("prompt", help="the prompt text, or - to read standard input")
    generate.add_argument("--raw", action="store_true", help="complete the text as is, without the chat template")
    generate.add_argument("--json", action="store_true", help="print one JSON object with text, tokens and routing")
    _add_runtime_options(generate)

    manage = sub.add_parser("models", help="download and locate the default models")
    manage_sub = manage.add_subparsers(dest="models_command", required=True)
    pull = manage_sub.add_parser("pull", help="download, assemble and verify default models")
    pull.add_argument("names", nargs="*", help=f"aliases (default: {models.DEFAULT_SLM} and {models.DEFAULT_LLM})")
    manage_sub.add_parser("list", help="known aliases and whether they are downloaded")
    path = manage_sub.add_parser("path", help="print the file path of an alias (pulling it if needed)")
    path.add_argument("name")
    manage.add_argument("-v", "--verbose", action="store_true", help="debug logging")

    history = sub.add_parser("history", help="saved chat conversations")
    history_sub = history.add_subparsers(dest="history_command", required=True)
    history_sub.add_parser("list", help="every saved conversation, oldest first")
    show = history_sub.add_parser("show", help="one conversation's turns (`latest` for the most recent)")
    show.add_argument("id")
    show.add_argument("--json", action="store_true", help="the whole transcript as one JSON object")
    history.add_argument("-v", "--verbose", action="store_true", help="debug logging")

    doctor = sub.add_parser(
        "doctor", help="check this machine, the models, the router and a cloud; run before filing a bug"
    )
    doctor.add_argument(
        "--slm", default=_env("SLM", models.DEFAULT_SLM), help="SLM alias or GGUF path [CITER_EDGE_SLM]"
    )
    doctor.add_argument(
        "--cloud", default=_env("CLOUD"), help="also check this cloud service, host:port [CITER_EDGE_CLOUD]"
    )
    doctor.add_argument("--cloud-token", default=_env("CLOUD_TOKEN"), help="bearer token [CITER_EDGE_CLOUD_TOKEN]")
    _add_tls_options(doctor)
    add_extra_buffers_argument(doctor)
    doctor.add_argument("--json", action="store_true", help="print one JSON object for scripts")
    doctor.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


# -- runtime --------------------------------------------------------------


@dataclass
class Runtime:
    slm: LocalModel
    generator: HybridGenerator
    sampling: SamplingSettings
    cloud: CloudSession | None


@contextlib.contextmanager
def open_runtime(args: argparse.Namespace) -> Iterator[Runtime]:
    """Load the SLM and the policy (bad options fail here, before any server starts), then reach the cloud."""
    from citer_edge.cloud.session import CloudSession
    from citer_edge.decode import HybridGenerator
    from citer_edge.cloud.local import LocalCloud
    from citer_edge.routing.router import RouterPolicy, default_policy
    from citer_edge.slm import LocalModel

    with contextlib.ExitStack() as stack:
        slm_path = models.resolve_model(args.slm)
        llm_path = models.resolve_model(args.llm) if args.local_cloud else None
        sampling = SamplingSettings(temperature=args.temperature, top_p=args.top_p, seed=args.seed)
        slm = stack.enter_context(
            LocalModel(
                slm_path,
                n_ctx=args.n_ctx,
                n_threads=args.threads,
                verbose=args.verbose,
                extra_buffers=args.llama_extra_buffers,
            )
        )
        if args.policy == "router":
            if not args.router:
                raise CiterEdgeError("--policy router needs --router PATH (a router.onnx with its router.json)")
            policy = RouterPolicy.load(args.router, slm.hidden_size, cloud_share=args.cloud_share)
        elif args.policy == "auto":
            fallback = make_policy("confidence", args.threshold)
            policy = default_policy(slm_path.name, slm.hidden_size, args.cloud_share, fallback)
            log.info("routing policy: %s", policy.describe())
        else:
            policy = make_policy(args.policy, args.threshold, seed=args.seed)
        address = args.cloud
        if llm_path is not None:
            extra_args = ["--llama-extra-buffers", args.llama_extra_buffers] if args.llama_extra_buffers else []
            address = stack.enter_context(LocalCloud(llm_path, extra_args=extra_args, verbose=args.verbose)).address
        cloud = None
        if address:
            tls = cloud_tls(args) if args.cloud else None  # a --local-cloud listens on loopback, in clear
            cloud = CloudSession(
                address, slm.fingerprint, timeout_s=args.cloud_timeout, auth_token=args.cloud_token, tls=tls
            )
            stack.callback(cloud.close)
        elif args.policy != "local":
            log.info("no cloud configured (--cloud or --local-cloud): every token comes from the SLM")
        generator = HybridGenerator(slm, policy, cloud, tokens_per_call=args.tokens_per_call)
        yield Runtime(slm=slm, generator=generator, sampling=sampling, cloud=cloud)


class TokenPrinter:
    """Streams tokens to stdout; with ``show_routing`` cloud tokens are coloured (terminal) or bracketed ⟦…⟧."""

    def __init__(self, show_routing: bool) -> None:
        self.show_routing = show_routing
        self.colour = sys.stdout.isatty()
        self._in_cloud_run = False

    def write(self, token: GeneratedToken) -> None:
        text = token.text
        if self.show_routing:
            text = self._mark(token.source == "llm") + text
        sys.stdout.write(text)
        sys.stdout.flush()

    def _mark(self, cloud: bool) -> str:
        if cloud == self._in_cloud_run:
            return ""
        self._in_cloud_run = cloud
        if self.colour:
            return "\033[1;35m" if cloud else "\033[0m"
        return "⟦" if cloud else "⟧"

    def finish(self) -> None:
        if self.show_routing:
            sys.stdout.write(self._mark(False))
        sys.stdout.write("\n")
        sys.stdout.flush()


def _print_stream(
    stream: GenerationStream, show_routing: bool, interruptible: bool = False, journal: Journal | None = None
) -> str:
    """Print (and journal) tokens as they come, then the summary; Ctrl-C ends the reply early when ``interruptible``."""
    printer = TokenPrinter(show_routing)
    pieces = []
    try:
        for token in stream:
            printer.write(token)
            pieces.append(token.text)
            if journal is not None:
                journal.token(token.text, token.source)
    except KeyboardInterrupt:
        stream.summary.finish_reason = "interrupted"
        if not interruptible:
            printer.finish()
            print(stream.summary.line(), file=sys.stderr)
            raise
    printer.finish()
    if journal is not None:
        journal.end_reply(stream.summary.finish_reason or "stop")
    print(stream.summary.line(), file=sys.stderr)
    return "".join(pieces)


# -- commands -------------------------------------------------------------


def run_chat(args: argparse.Namespace) -> int:
    from citer_edge.chat.conversation import Conversation
    from citer_edge.chat.journal import Journal, read_transcript

    with open_runtime(args) as runtime:
        conversation = Conversation(runtime.slm, system=args.system)
        journal: Journal | None = None
        if args.resume:
            transcript = read_transcript(args.resume)
            conversation.messages = transcript.messages()
            print(f"resumed conversation {transcript.conversation_id} ({len(transcript.turns)} turns)", file=sys.stderr)
            if not args.no_history:
                journal = Journal.reopen(transcript.conversation_id)
        elif not args.no_history:
            journal = Journal.start(args.system, runtime.slm.name)
        one_shot = args.prompt is not None
        if not one_shot:
            print(
                "citer-edge chat — Ctrl-C stops a reply; /new starts over; /exit, Ctrl-D or Ctrl-C quits",
                file=sys.stderr,
            )
        try:
            while True:
                message = args.prompt if one_shot else _read_message()
                if message is None or message in ("/exit", "/quit"):
                    return 0
                if not message:
                    continue
                if message == "/new":
                    if journal is not None:
                        journal.close()
                        journal = Journal.start(args.system, runtime.slm.name)
                    conversation = Conversation(runtime.slm, system=args.system)
                    if runtime.cloud is not None:
                        runtime.cloud.start_over()
                    print("(new conversation)", file=sys.stderr)
                    continue
                conversation.add_user(message)
                if journal is not None:
                    journal.user(message)
                try:
                    prompt = _fit_to_window(conversation, runtime.slm.n_ctx)
                except CiterEdgeError as error:
                    if one_shot:
                        raise
                    conversation.messages.pop()  # the message that cannot fit; the chat goes on
                    print(f"citer-edge: {error}", file=sys.stderr)
                    continue
                room = runtime.slm.n_ctx - len(prompt)
                max_tokens = min(args.max_tokens or room, room)
                stream = runtime.generator.stream(prompt, max_tokens, runtime.sampling)
                reply = _print_stream(stream, args.show_routing, interruptible=not one_shot, journal=journal)
                conversation.add_assistant(reply)  # an interrupted reply stays in the history as far as it got
                if one_shot:
                    return 0
        finally:
            if journal is not None:
                journal.close()
                if not one_shot:
                    print(f"saved: citer-edge chat --resume {journal.conversation_id}", file=sys.stderr)


def _fit_to_window(conversation: Conversation, n_ctx: int) -> list[int]:
    """The prompt, after dropping the oldest turns (never the system message) so a reply has room."""
    reply_room = min(CHAT_REPLY_ROOM, n_ctx // 4)
    dropped = conversation.fit(n_ctx - reply_room)
    if dropped:
        print(f"(dropped the {dropped} oldest messages to fit the SLM's window of {n_ctx} tokens)", file=sys.stderr)
    return conversation.prompt_tokens()


def _read_message() -> str | None:
    """The next line typed, stripped; None when the user ends the chat (Ctrl-D or Ctrl-C at the prompt)."""
    try:
        return input("> ").strip()
    except (EOFError, KeyboardInterrupt):
        print(file=sys.stderr)
        return None


def run_generate(args: argparse.Namespace) -> int:
    from citer_edge.chat.conversation import Conversation

    prompt_text = sys.stdin.read() if args.prompt == "-" else args.prompt
    with open_runtime(args) as runtime:
        if args.raw:
            prompt = runtime.slm.tokenize(prompt_text)
        else:
            conversation = Conversation(runtime.slm)
            conversation.add_user(prompt_text)
            prompt = conversation.prompt_tokens()
        stream = runtime.generator.stream(prompt, args.max_tokens or DEFAULT_GENERATE_TOKENS, runtime.sampling)
        if not args.json:
            _print_stream(stream, args.show_routing)
            return 0
        text = stream.text()
        summary = stream.summary
        json.dump(
            {
                "text": text,
                "policy": runtime.generator.policy.describe(),
                "token_ids": stream.token_ids,
                "sources": stream.sources,
                "routing": {"slm": summary.tokens - summary.cloud_tokens, "llm": summary.cloud_tokens},
                "summary": summary.to_dict(),
            },
            sys.stdout,
        )
        sys.stdout.write("\n")
    return 0


def run_models(args: argparse.Namespace) -> int:
    if args.models_command == "pull":
        for name in args.names or [models.DEFAULT_SLM, models.DEFAULT_LLM]:
            print(models.pull_model(name, show_progress=sys.stderr.isatty()))
    elif args.models_command == "list":
        for spec, path in models.list_models():
            print(f"{spec.alias:22} {spec.size_mb:>6} MB  {path if path else '(not downloaded)'}")
    elif args.models_command == "path":
        print(models.resolve_model(args.name))
    return 0


def run_doctor(args: argparse.Namespace) -> int:
    from citer_edge.doctor import run_doctor as diagnose

    def progress(step: str) -> None:
        if sys.stderr.isatty() and not args.json:
            print(f"… {step}", file=sys.stderr)

    report = diagnose(args.slm, args.cloud, args.cloud_token, args.llama_extra_buffers, progress, tls=cloud_tls(args))
    if args.json:
        json.dump(report.to_dict(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(report.text())
    return 0 if report.ok else 1


def run_history(args: argparse.Namespace) -> int:
    from citer_edge.chat.journal import list_conversations, read_transcript

    if args.history_command == "list":
        for transcript in list_conversations():
            first = next((turn.text for turn in transcript.turns if turn.role == "user"), "")
            print(f"{transcript.conversation_id}  {len(transcript.turns):3d} turns  {first[:60]!r}")
        return 0
    transcript = read_transcript(args.id)
    if args.json:
        json.dump(transcript.to_dict(), sys.stdout, ensure_ascii=False)
        sys.stdout.write("\n")
        return 0
    for turn in transcript.turns:
        note = ""
        if turn.role == "assistant":
            cloud = turn.tokens_from.get("llm", 0)
            note = f"  [{sum(turn.tokens_from.values())} tokens, {cloud} from the cloud, {turn.finish}]"
        print(f"{turn.role}:{note}\n{turn.text}\n")
    return 0


COMMANDS = {
    "chat": run_chat,
    "generate": run_generate,
    "models": run_models,
    "doctor": run_doctor,
    "history": run_history,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if args.verbose:
        logging.getLogger("citer_edge").setLevel(logging.DEBUG)
    else:
        logging.getLogger("citer_edge").setLevel(logging.INFO)
    try:
        return COMMANDS[args.command](args)
    except (CiterEdgeError, ValueError) as error:
        print(f"citer-edge: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
