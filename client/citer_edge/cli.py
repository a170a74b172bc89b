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
    from citer_edge.chat.journal import Journal
    from citer_edge.cloud.audit import UploadAudit
    from citer_edge.cloud.budget import CloudBudget, Usage
    from citer_edge.cloud.session import CloudSession
    from citer_edge.decode import GeneratedToken, GenerationStream, HybridGenerator
    from citer_edge.routing.controller import ShareController, ShareStore
    from citer_edge.routing.policies import RoutingPolicy
    from citer_edge.slm import LocalModel
    from citer_edge.usage import CostMeter

log = logging.getLogger("citer_edge")

DEFAULT_CHAT_PROMPT = "Write a Python function that returns the n-th prime number."
DEFAULT_GENERATE_TOKENS = 512
#: Room a chat keeps for the next reply when old turns must go (or a quarter of a small window).
CHAT_REPLY_ROOM = 512
SHARE_CONTROLS = ("fixed", "adaptive")
LOCAL_NOTICE = (
    "(local only from here: this message and everything after it stay on the device. A private message is part "
    "of every later prompt, so nothing more of this conversation can go to the cloud; /new starts a fresh "
    "conversation that may use it)"
)


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
        "--lossless",
        action="store_true",
        default=_env("LOSSLESS") == "1",
        help="verify every SLM token with the LLM (greedy only): the answer is the LLM's own greedy answer, "
        "routed positions decide when to verify [CITER_EDGE_LOSSLESS=1]",
    )
    routing.add_argument(
        "--max-draft",
        type=int,
        default=int(_env("MAX_DRAFT", "16")),
        help="lossless: verify at least every this many SLM tokens (with --policy local: draft-k speculative "
        "decoding) [CITER_EDGE_MAX_DRAFT]",
    )
    routing.add_argument(
        "--overlap",
        action="store_true",
        default=_env("OVERLAP") == "1",
        help="keep decoding on the SLM while a cloud call is in flight; kept where the LLM agrees "
        "[CITER_EDGE_OVERLAP=1]",
    )
    routing.add_argument(
        "--span-below",
        type=float,
        default=float(_env("SPAN_BELOW", "0")),
        help="multi-token cloud turns: the LLM keeps writing (up to --tokens-per-call) while its top-1 "
        "probability stays below this; 0 = always --tokens-per-call [CITER_EDGE_SPAN_BELOW]",
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
    _add_cost_options(parser)
    parser.add_argument("--show-routing", action="store_true", help="highlight tokens that came from the cloud LLM")
    parser.add_argument("-v", "--verbose", action="store_true", default=_env("VERBOSE") == "1", help="debug logging")


def _add_cost_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("cost and privacy")
    group.add_argument(
        "--share-control",
        choices=SHARE_CONTROLS,
        default=_env("SHARE_CONTROL", "fixed"),
        help="fixed: --cloud-share through the router card's calibration (made on stdlib prompts); adaptive: "
        "recalibrate on your own traffic as you go, so the share holds on any prompts (router or confidence "
        "policy; learned per model pair and kept for the next run) [CITER_EDGE_SHARE_CONTROL]",
    )
    group.add_argument(
        "--reset-share",
        action="store_true",
        help="adaptive: forget what was learned for this model pair and start again from the router card",
    )
    for flag, env, what in (
        ("--cloud-budget-tokens", "CLOUD_BUDGET_TOKENS", "cloud tokens per conversation"),
        ("--cloud-budget-calls", "CLOUD_BUDGET_CALLS", "cloud calls per conversation"),
        ("--daily-budget-tokens", "DAILY_BUDGET_TOKENS", "cloud tokens per UTC day, over all runs"),
        ("--daily-budget-calls", "DAILY_BUDGET_CALLS", "cloud calls per UTC day, over all runs"),
    ):
        group.add_argument(
            flag,
            metavar="N",
            default=_env(env),
            help=f"at most N {what}; then generation goes on on the SLM [CITER_EDGE_{env}]",
        )
    group.add_argument(
        "--local-only",
        action="store_true",
        default=_env("LOCAL_ONLY") == "1",
        help="send nothing to the cloud, not even a connection (chat: the conversation stays local when "
        "resumed; `/local` does the same from one message on) [CITER_EDGE_LOCAL_ONLY=1]",
    )
    group.add_argument(
        "--audit",
        metavar="FILE",
        default=_env("AUDIT"),
        help="append one JSON line per upload to FILE (chat: by default beside the conversation's journal, "
        "see `history show ID --uploads`) [CITER_EDGE_AUDIT]",
    )


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
    show.add_argument("--uploads", action="store_true", help="what of it was uploaded: spans, bytes, when, where")
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
    # cost and privacy
    budget: CloudBudget | None = None
    audit: UploadAudit | None = None
    controller: ShareController | None = None
    local_only: bool = False


@contextlib.contextmanager
def open_runtime(args: argparse.Namespace) -> Iterator[Runtime]:
    """Load the SLM and the policy (bad options fail here, before any server starts), then reach the cloud."""
    from citer_edge.cloud.audit import UploadAudit
    from citer_edge.cloud.local import LocalCloud
    from citer_edge.cloud.session import CloudSession
    from citer_edge.decode import HybridGenerator
    from citer_edge.routing.controller import ShareController
    from citer_edge.routing.router import RouterPolicy, default_policy
    from citer_edge.slm import LocalModel

    with contextlib.ExitStack() as stack:
        slm_path = models.resolve_model(args.slm)
        budget, local_only = _budget(args), args.local_only  # bad budget options fail here, before any work
        llm_path = models.resolve_model(args.llm) if args.local_cloud and not local_only else None
        sampling = SamplingSettings(temperature=args.temperature, top_p=args.top_p, seed=args.seed)
        if args.lossless and not sampling.greedy:
            raise ValueError("--lossless reproduces the LLM's greedy answer: it needs --temperature 0")
        if args.max_draft < 1 or args.tokens_per_call < 1 or not 0 <= args.span_below <= 1:
            raise ValueError("--max-draft and --tokens-per-call must be at least 1, --span-below in [0, 1]")
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
        policy = _share_controlled(args, policy, slm)
        controller = policy if isinstance(policy, ShareController) else None
        address = None if local_only else args.cloud
        if llm_path is not None:
            extra_args = ["--llama-extra-buffers", args.llama_extra_buffers] if args.llama_extra_buffers else []
            address = stack.enter_context(LocalCloud(llm_path, extra_args=extra_args, verbose=args.verbose)).address
        cloud = None
        if address:
            tls = cloud_tls(args) if args.cloud else None  # a --local-cloud listens on loopback, in clear
            audit = UploadAudit(Path(args.audit).expanduser() if args.audit else None, token_bytes=slm.token_bytes)
            cloud = CloudSession(
                address, slm.fingerprint, timeout_s=args.cloud_timeout, auth_token=args.cloud_token, tls=tls,
                budget=budget, audit=audit,
            )  # fmt: skip
            stack.callback(cloud.close)
        elif local_only:
            log.info("local only: nothing is sent to the cloud, not even a connection")
        elif args.policy != "local":
            log.info("no cloud configured (--cloud or --local-cloud): every token comes from the SLM")
        generator = HybridGenerator(
            slm,
            policy,
            cloud,
            tokens_per_call=args.tokens_per_call,
            lossless=args.lossless,
            max_draft=args.max_draft,
            overlap=args.overlap,
            span_below=args.span_below,
        )
        if controller is not None and not local_only:
            controller.attach_store(_share_store(args, slm, cloud, llm_path, controller), reset=args.reset_share)
            stack.callback(controller.save)
        yield Runtime(
            slm=slm, generator=generator, sampling=sampling, cloud=cloud, budget=cloud.budget if cloud else None,
            audit=cloud.audit if cloud else None, controller=controller, local_only=local_only,
        )  # fmt: skip


# -- cost and privacy -----------------------------------------------------


def _budget(args: argparse.Namespace) -> CloudBudget:
    """The budget the options ask for; today's use is always counted (the ledger shows it even without limits)."""
    from citer_edge.cloud.budget import BudgetLimits, CloudBudget, DailyLedger

    def count(flag: str) -> int | None:
        value = getattr(args, flag.lstrip("-").replace("-", "_"))
        if value is None or value == "":
            return None
        try:
            number = int(value)
        except ValueError:
            number = -1
        if number < 0:
            raise CiterEdgeError(f"{flag} must be a whole number of 0 or more, got {value!r}")
        return number

    limits = BudgetLimits(
        conversation_tokens=count("--cloud-budget-tokens"),
        conversation_calls=count("--cloud-budget-calls"),
        daily_tokens=count("--daily-budget-tokens"),
        daily_calls=count("--daily-budget-calls"),
    )
    return CloudBudget(limits, DailyLedger())


def _share_controlled(args: argparse.Namespace, policy: RoutingPolicy, slm: LocalModel) -> RoutingPolicy:
    """``policy`` under the adaptive share controller when ``--share-control adaptive`` asks for it."""
    from citer_edge.routing.controller import ShareController, card_prior, scorer_cut
    from citer_edge.routing.policies import ConfidencePolicy
    from citer_edge.routing.router import RouterPolicy

    if args.share_control not in SHARE_CONTROLS:
        raise CiterEdgeError(f"--share-control must be one of {', '.join(SHARE_CONTROLS)}, got {args.share_control!r}")
    if args.reset_share and args.share_control != "adaptive":
        raise CiterEdgeError("--reset-share forgets what --share-control adaptive learned; add that option")
    if args.share_control != "adaptive":
        return policy
    if not isinstance(policy, (RouterPolicy, ConfidencePolicy)):
        log.info("--share-control adaptive steers the router or the confidence rule; %s is left as it is", policy.name)
        return policy
    if not 0.0 <= args.cloud_share <= 1.0:
        raise CiterEdgeError(f"--cloud-share must be in [0, 1], got {args.cloud_share}")
    if isinstance(policy, RouterPolicy):
        card = policy.router.card
        start, prior = card.threshold_for_share(args.cloud_share), card_prior(card.calibration)
    else:
        start, prior = scorer_cut(policy), []
    controller = ShareController(
        policy, args.cloud_share, initial_cut=start, prior_scores=prior, tokens_per_route=args.tokens_per_call
    )
    log.info("routing policy: %s", controller.describe())
    return controller


def _share_store(
    args: argparse.Namespace,
    slm: LocalModel,
    cloud: CloudSession | None,
    llm_path: Path | None,
    controller: ShareController,
) -> ShareStore:
    """Where this model pair's learned share lives: keyed by the SLM, the cloud's model and the scorer."""
    from citer_edge.routing.controller import ShareStore
    from citer_edge.routing.router import RouterPolicy, shipped_router

    if cloud is not None and cloud.info is not None:
        llm = cloud.info.model_name
    else:
        llm = llm_path.name if llm_path is not None else (args.cloud or "no-cloud")
    scorer = controller.scorer
    if isinstance(scorer, RouterPolicy):
        router = args.router if args.policy == "router" else shipped_router(slm.path.name, slm.hidden_size)
        scorer_name = f"router:{Path(str(router)).stem}"
    else:
        scorer_name = scorer.name
    return ShareStore.for_pair(slm.fingerprint, llm, scorer_name)


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
    stream: GenerationStream,
    show_routing: bool,
    interruptible: bool = False,
    journal: Journal | None = None,
    meter: CostMeter | None = None,
) -> str:
    """Print (and journal) tokens as they come, then the summary; Ctrl-C ends the reply early when ``interruptible``."""
    printer = TokenPrinter(show_routing)
    pieces = []
    if meter is not None:
        meter.start()
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
            if meter is not None:
                meter.finish(stream.summary)
            print(stream.summary.line(), file=sys.stderr)
            raise
    printer.finish()
    if journal is not None:
        journal.end_reply(stream.summary.finish_reason or "stop")
    if meter is not None:
        meter.finish(stream.summary)
    print(stream.summary.line(), file=sys.stderr)
    return "".join(pieces)


# -- commands -------------------------------------------------------------


def run_chat(args: argparse.Namespace) -> int:
    from citer_edge.chat.conversation import Conversation
    from citer_edge.chat.journal import Journal, read_transcript
    from citer_edge.cloud.budget import Usage
    from citer_edge.usage import CostMeter

    transcript = read_transcript(args.resume) if args.resume else None
    if transcript is not None and transcript.local_only and not args.local_only:
        args.local_only = True  # decided before any connection: a local-only conversation never reaches the cloud
        print("(a local-only conversation: this run stays on the device)", file=sys.stderr)
    with open_runtime(args) as runtime:
        conversation = Conversation(runtime.slm, system=args.system)
        journal: Journal | None = None
        if transcript is not None:
            conversation.messages = transcript.messages()
            print(f"resumed conversation {transcript.conversation_id} ({len(transcript.turns)} turns)", file=sys.stderr)
            if not args.no_history:
                journal = Journal.reopen(transcript.conversation_id)
        elif not args.no_history:
            journal = Journal.start(args.system, runtime.slm.name)
        used = Usage(transcript.cloud_tokens, transcript.cloud_calls) if transcript is not None else None
        _begin_conversation(runtime, journal, args, used)
        meter = CostMeter(runtime.generator, runtime.cloud, local_only=runtime.local_only)
        one_shot = args.prompt is not None
        if not one_shot:
            print(
                "citer-edge chat — Ctrl-C stops a reply; /new starts over; /local keeps the rest on the device; "
                "/exit, Ctrl-D or Ctrl-C quits",
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
                    _begin_conversation(runtime, journal, args)
                    meter.local_only = runtime.local_only
                    print("(new conversation)", file=sys.stderr)
                    continue
                if message == "/local" or message.startswith("/local "):
                    if not meter.local_only:
                        _go_local(runtime, journal)
                        meter.local_only = True
                        print(LOCAL_NOTICE, file=sys.stderr)
                    message = message[len("/local") :].strip()
                    if not message:
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
                try:
                    reply = _print_stream(
                        stream, args.show_routing, interruptible=not one_shot, journal=journal, meter=meter
                    )
                finally:
                    _end_reply(runtime, journal)
                conversation.add_assistant(reply)  # an interrupted reply stays in the history as far as it got
                if one_shot:
                    return 0
        finally:
            if journal is not None:
                journal.close()
                if not one_shot:
                    print(f"saved: citer-edge chat --resume {journal.conversation_id}", file=sys.stderr)


def _begin_conversation(
    runtime: Runtime, journal: Journal | None, args: argparse.Namespace, used: Usage | None = None
) -> None:
    """A new (or resumed) conversation: its budget, its upload audit beside its journal, its privacy mark."""
    if runtime.budget is not None:
        runtime.budget.start_conversation(used)
    if runtime.audit is not None and not args.audit:
        runtime.audit.path = journal.uploads_path if journal is not None else None  # --no-history: memory only
    if runtime.local_only:
        if journal is not None:
            journal.local_only()
    else:
        runtime.generator.cloud = runtime.cloud  # a conversation made local by /local is over


def _go_local(runtime: Runtime, journal: Journal | None) -> None:
    """From this message on the conversation stays on the device: the loop loses its cloud, the session stops."""
    runtime.generator.cloud = None
    if runtime.cloud is not None:
        runtime.cloud.routing_stopped = "the conversation is local-only (/local)"  # a second guard; /new lifts it
    if journal is not None:
        journal.local_only()


def _end_reply(runtime: Runtime, journal: Journal | None) -> None:
    """After each reply: keep what the share controller learned, and the conversation's cloud use."""
    if runtime.controller is not None:
        runtime.controller.save()
    if journal is not None and runtime.budget is not None and runtime.cloud is not None:
        used = runtime.budget.conversation
        journal.cloud_use(used.tokens, used.calls)


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
    from citer_edge.usage import CostMeter

    prompt_text = sys.stdin.read() if args.prompt == "-" else args.prompt
    with open_runtime(args) as runtime:
        meter = CostMeter(runtime.generator, local_only=runtime.local_only)
        if args.raw:
            prompt = runtime.slm.tokenize(prompt_text)
        else:
            conversation = Conversation(runtime.slm)
            conversation.add_user(prompt_text)
            prompt = conversation.prompt_tokens()
        stream = runtime.generator.stream(prompt, args.max_tokens or DEFAULT_GENERATE_TOKENS, runtime.sampling)
        if not args.json:
            _print_stream(stream, args.show_routing, meter=meter)
            return 0
        meter.start()
        text = stream.text()
        summary = meter.finish(stream.summary)
        json.dump(
            {
                "text": text,
                "policy": runtime.generator.policy.describe(),
                "token_ids": stream.token_ids,
                "sources": stream.sources,
                "routing": {"slm": summary.tokens - summary.cloud_tokens, "llm": summary.cloud_tokens},
                "summary": summary.to_dict(),
                "uploads": [vars(upload) for upload in runtime.audit.uploads] if runtime.audit else [],
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
    from citer_edge.chat.journal import journal_path, list_conversations, read_transcript

    if args.history_command == "list":
        for transcript in list_conversations():
            first = next((turn.text for turn in transcript.turns if turn.role == "user"), "")
            print(f"{transcript.conversation_id}  {len(transcript.turns):3d} turns  {first[:60]!r}")
        return 0
    transcript = read_transcript(args.id)
    if args.uploads:
        return _show_uploads(journal_path(transcript.conversation_id), args.json)
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


def _show_uploads(journal: Path, as_json: bool) -> int:
    """What of a conversation left the device: its upload audit, as a table or JSON."""
    from citer_edge.chat.journal import uploads_path_for
    from citer_edge.cloud.audit import format_uploads, read_uploads, totals_of

    uploads = read_uploads(uploads_path_for(journal))
    if as_json:
        payload = {"id": journal.stem, "uploads": [vars(u) for u in uploads], "totals": vars(totals_of(uploads))}
        json.dump(payload, sys.stdout)
        sys.stdout.write("\n")
    else:
        print(format_uploads(uploads))
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
