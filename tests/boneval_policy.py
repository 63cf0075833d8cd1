"""A scripted policy for the bon-eval tests (`py:boneval_policy:make`): deterministic answers in the "Final
answer: .." format, right or wrong by a fixed rule, so pass@1 and the oracle are known in advance.

Candidate 0 (the greedy request, temperature 0) answers right on items whose id hashes even; sampled candidate j
answers right when (hash + j) % 3 == 0. Every call is counted in CALLS (items asked for), so tests can see that a
resumed run does not sample finished items again. A right answer is the item's `scripted_gold` (set by the test).
"""

from __future__ import annotations

import hashlib
import json
import os

CALLS: list[str] = []
GOLD: dict[str, tuple[str, str]] = {}  # question -> (right answer, wrong answer); or from $BONEVAL_GOLD (JSON)


def h(question: str) -> int:
    return int(hashlib.sha256(question.encode()).hexdigest()[:8], 16)


def right(question: str, j: int) -> bool:
    return h(question) % 2 == 0 if j == 0 else (h(question) + j) % 3 == 0


class Scripted:
    name = "py:boneval_policy:make"

    def generate(self, requests):
        out = []
        for r in requests:
            q = r.problem["question"]
            CALLS.append(r.problem["id"])
            if os.environ.get("BONEVAL_CALLS"):
                with open(os.environ["BONEVAL_CALLS"], "a") as f:
                    f.write(r.problem["id"] + "\n")
            if os.environ.get("BONEVAL_DIE_AFTER") and len(CALLS) > int(os.environ["BONEVAL_DIE_AFTER"]):
                os.kill(os.getpid(), 9)
            good, bad = GOLD[q]
            first = 0 if r.temperature == 0 else 1
            texts = []
            for j in range(first, first + r.n):
                ans = good if right(q, j) else bad
                texts.append(f"Let me look at the figure.\n\nI work it out step by step.\n\nFinal answer: {ans}")
            out.append(texts)
        return out

    def close(self):
        pass


def make():
    if os.environ.get("BONEVAL_GOLD"):
        with open(os.environ["BONEVAL_GOLD"]) as f:
            GOLD.update({k: tuple(v) for k, v in json.load(f).items()})
    return Scripted()
