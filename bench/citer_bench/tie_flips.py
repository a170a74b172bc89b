"""Where a lossless run's answer differs from the LLM-only answer: how close the LLM's choice was there.

Lossless decoding gives the LLM's greedy answer *as the server computes it*:
drafts are judged in batches, while the LLM-only baseline decodes one token at
a time, and quantised CPU kernels may order the two top tokens differently
where they nearly tie. This tool checks that claim for a committed run: for
every answer that differs, it re-tokenises both answers, finds the first token
where they part, evaluates the LLM on the common prefix and reports the logit
margin between the two candidates there (the LLM-only token's logit minus the
lossless token's). A flip is a near-tie when that margin is small; a large one
would be a bug in verification, not arithmetic::

    citer-bench tie-flips --run router-0.05-lossless32
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from citer_bench.edge_speed import compare_to_reference
from citer_bench.humaneval import load_problems
from citer_bench.machine import RESULTS_DIR, machine_description
from citer_bench.quality import read_jsonl
from citer_edge.models import DEFAULT_LLM, resolve_model
from citer_edge.slm import LocalModel

log = logging.getLogger(__name__)

#: Margins (logits) below this count as near-ties in the printed verdict.
NEAR_TIE = 0.25
STOPS = "one answer stops where the other goes on"


def flip_margin(llm: LocalModel, prompt: str, lossless: str, reference: str) -> dict[str, object]:
    """The LLM's margin at the first token where the two completions part.

    No margin (``None``, with a note) where one completion is a prefix of the
    other: one answer stopped (an end token, or a stop sequence cut it) where
    the other went on, a choice the text does not show (re-tokenising
    ``"))\n"`` against ``"))\n\n"`` would compare two merges of the same
    characters); nor where the tokenizer merges the completions' first
    characters into the prompt's last token.
    """
    if lossless.startswith(reference) or reference.startswith(lossless):
        return {"margin": None, "note": STOPS}
    ours = llm.tokenize(prompt + lossless)
    theirs = llm.tokenize(prompt + reference)
    start = len(llm.tokenize(prompt))
    where = compare_to_reference(ours, theirs)  # the edge-speed benchmark's tie-flip position
    if where is None or where >= min(len(ours), len(theirs)):
        return {"margin": None, "note": STOPS}
    if where < start or ours[:start] != theirs[:start]:
        return {"margin": None, "note": "the answers part inside a token merged with the prompt's end"}
    llm.sync(ours[:where])
    logits = np.asarray(llm.logits, dtype=np.float64)
    mine, other = ours[where], theirs[where]
    return {
        "position": where - start,
        "lossless_token": llm.token_bytes(mine).decode("utf-8", "replace"),
        "reference_token": llm.token_bytes(other).decode("utf-8", "replace"),
        "margin": float(logits[other] - logits[mine]),
        "leads": "reference" if logits[other] >= logits[mine] else "lossless",  # of the two, not overall
        "rank": {"lossless": int((logits > logits[mine]).sum()), "reference": int((logits > logits[other]).sum())},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="citer-bench tie-flips", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", required=True, help="a lossless run's name in --out, e.g. router-0.05-lossless32")
    parser.add_argument("--reference", default="llm-1.00", help="the LLM-only run it is compared with")
    parser.add_argument("--llm", default=DEFAULT_LLM)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=str(RESULTS_DIR / "humaneval"))
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING)
    out = Path(args.out)
    paths = [out / f"{args.run}.jsonl", out / f"{args.reference}.jsonl"]
    for path in paths:
        if not path.is_file():
            print(f"citer-bench tie-flips: no such run file: {path}", file=sys.stderr)
            return 2
    run, reference = ({r["task_id"]: r for r in read_jsonl(path)} for path in paths)
    prompts = {p.task_id: p.prompt for p in load_problems()}
    differing = [t for t in run if t in reference and run[t]["completion"] != reference[t]["completion"]]
    flips = []
    with LocalModel(resolve_model(args.llm), n_threads=args.threads) as llm:
        for task in tqdm(differing, desc="differing answers", file=sys.stderr):
            found = flip_margin(llm, prompts[task], run[task]["completion"], reference[task]["completion"])
            flips.append({"task_id": task, "passed": run[task]["passed"],
                          "reference_passed": reference[task]["passed"],
                          **found})  # fmt: skip
    margins = [abs(f["margin"]) for f in flips if f["margin"] is not None]
    payload = {
        "benchmark": "lossless-tie-flips",
        "machine": machine_description(),
        "run": args.run,
        "reference": args.reference,
        "answers": sum(1 for t in run if t in reference),
        "differing": len(differing),
        "near_tie_below": NEAR_TIE,
        "near_ties": sum(m < NEAR_TIE for m in margins),
        "largest_margin": max(margins, default=None),
        "pass_changes": {
            "lossless_only": [f["task_id"] for f in flips if f["passed"] and not f["reference_passed"]],
            "reference_only": [f["task_id"] for f in flips if f["reference_passed"] and not f["passed"]],
        },
        "flips": flips,
    }
    path = out / f"tie-flips-{args.run}.json"
    path.write_text(json.dumps(payload, indent=2) + "\n")
    won, lost = (len(payload["pass_changes"][key]) for key in ("lossless_only", "reference_only"))
    print(f"{args.run}: {len(differing)} of {payload['answers']} answers differ from {args.reference}; "
          f"{payload['near_ties']} of {len(margins)} first differences at an LLM margin below {NEAR_TIE} logits "
          f"(largest {payload['largest_margin'] if margins else '–'}); pass changes: {won} won, {lost} lost; "
          f"wrote {path}")  # fmt: skip
    for flip in flips:
        margin = "–" if flip["margin"] is None else f"{flip['margin']:+.3f}"
        where = flip.get("note") or (f"{flip['lossless_token']!r} vs {flip['reference_token']!r} "
                                     f"at token {flip['position']}")  # fmt: skip
        print(f"  {flip['task_id']:14} margin {margin:>7}  {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
