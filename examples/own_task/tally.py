"""Bring your own task: "tally", a small perception task with its own step format and its own answer checker.

The image is a 3 x 3 quilt of coloured tiles in three of red, blue, green and yellow; one colour is strictly the
most frequent. The question asks to count the tiles of each colour and name the most frequent one, in this
format (one step per line, no blank lines, so visualprm's default blank-line splitter would see ONE step):

    Step 1: red tiles: 4
    Step 2: blue tiles: 3
    Step 3: green tiles: 2
    Step 4: Most frequent: red

What the task plugs into visualprm, each as `module:function` (with `examples/` on PYTHONPATH):

- `own_task.tally:split_steps` (`--splitter`): a step starts at a `Step k:` line; other lines belong to the step
  above; more than `max_steps` steps are merged as VisualPRM merges paragraphs.
- `own_task.tally:check` (`--checker`): the colour after the last `Most frequent:` against the gold colour. The
  built-in checker does not know this format (no `Final answer:` / `\\boxed{}` / `Answer:`): it falls back to
  the last number in the response, a count, so it marks every solution wrong.
- `TallyPolicy`: a scripted policy (the Policy protocol: continues prefixes, honours `stop`, seeded per request)
  that misreads a count (by 1 or 2) with probability `misread` and names a wrong colour with probability `slip`;
  later steps use the counts it claimed, so a misread propagates into the answer as a model's would.
- `gold_step_correct(problem, steps)`: process correctness per step, for evaluation only.

Make problems: `python -m own_task.tally OUT_DIR --n 100 --seed 1` (OUT_DIR/problems.jsonl + images/).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import sys
from pathlib import Path

COLORS = {"red": (220, 30, 30), "blue": (30, 70, 220), "green": (20, 150, 40), "yellow": (235, 190, 0)}
GRID, CELL = 3, 28
PROMPT = (
    "The picture is a quilt of coloured tiles in {colors}. Count the tiles of each colour, then say which colour "
    "is the most frequent. Write one line per step: 'Step 1: red tiles: N', one line for each colour in the order "
    "given, and finally 'Step k: Most frequent: COLOUR'."
)
_STEP = re.compile(r"^\s*step\s*\d+\s*:", re.I)
_COUNT = re.compile(r"(red|blue|green|yellow)\s+tiles?\s*:\s*(\d+)", re.I)
_MOST = re.compile(r"most\s+frequent\s*:\s*\**\s*([a-z]+)", re.I)


# ---------------------------------------------------------------------------------------------------------------
# Problems


def sample_problem(rng: random.Random, i: int, seed: int) -> dict:
    colors = rng.sample(sorted(COLORS), 3)
    while True:
        tiles = [rng.choice(colors) for _ in range(GRID * GRID)]
        counts = {c: tiles.count(c) for c in colors}
        top = sorted(counts.values(), reverse=True)
        if top[0] > top[1] and min(top) > 0:
            break
    answer = max(counts, key=counts.get)
    names = ", ".join(colors[:-1]) + f" and {colors[-1]}"
    question = PROMPT.format(colors=names)
    return {
        "id": f"tally{seed}-{i:04d}",
        "images": [f"images/tally{seed}-{i:04d}.png"],
        "question": question,
        "prompt": question,  # the policy sees exactly this (no "Final answer:" template around it)
        "answer": answer,
        "source": "tally",
        "colors": colors,
        "tiles": tiles,
    }


def render(tiles: list[str]):
    from PIL import Image, ImageDraw

    im = Image.new("RGB", (GRID * CELL, GRID * CELL), (255, 255, 255))
    d = ImageDraw.Draw(im)
    for k, c in enumerate(tiles):
        x, y = (k % GRID) * CELL, (k // GRID) * CELL
        d.rectangle([x + 2, y + 2, x + CELL - 3, y + CELL - 3], fill=COLORS[c])
    return im


def make_problems(out_dir: str | Path, n: int = 100, seed: int = 1) -> list[dict]:
    """Write OUT_DIR/images/*.png and OUT_DIR/problems.jsonl; problem i depends only on (seed, i)."""
    from visualprm.schema import write_jsonl

    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    recs = [sample_problem(random.Random(f"tally:{seed}:{i}"), i, seed) for i in range(n)]
    for r in recs:
        render(r["tiles"]).save(out / r["images"][0])
    write_jsonl(out / "problems.jsonl", recs)
    return recs


# ---------------------------------------------------------------------------------------------------------------
# The task's step splitter and answer checker (what visualprm loads as module:function)


def split_steps(text: str, max_steps: int = 12) -> list[str]:
    """One step per `Step k:` line; other non-empty lines join the step above (or start the first)."""
    steps: list[str] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        if _STEP.match(line) or not steps:
            steps.append(line.strip())
        else:
            steps[-1] += "\n" + line.strip()
    if max_steps and len(steps) > max_steps:
        k = math.ceil(len(steps) / max_steps)
        steps = ["\n".join(steps[i : i + k]) for i in range(0, len(steps), k)]
    return steps


def check(response: str, record: dict) -> dict:
    """Correct when the colour after the last `Most frequent:` is the gold colour (case-insensitive)."""
    found = _MOST.findall(response or "")
    if not found:
        return {"correct": False, "extracted": None, "parsed": False}
    return {"correct": found[-1].lower() == str(record["answer"]).lower(), "extracted": found[-1].lower()}


def claims(steps: list[str]) -> tuple[dict[str, int], str | None]:
    """The counts a solution claims (first claim per colour wins) and the colour it names, if any."""
    counts: dict[str, int] = {}
    named = None
    for s in steps:
        m = _MOST.search(s)
        if m:
            named = m.group(1).lower()
            continue
        for c, v in _COUNT.findall(s):
            counts.setdefault(c.lower(), int(v))
    return counts, named


def gold_step_correct(problem: dict, steps: list[str]) -> list[bool]:
    """True while every step so far is right: a count step states the true count; the final step names the most
    frequent colour among the counts claimed before it (evaluation only: it reads the hidden tiles)."""
    truth = {c: problem["tiles"].count(c) for c in problem["colors"]}
    ok, out, counts = True, [], {}
    for s in steps:
        m = _MOST.search(s)
        found = _COUNT.findall(s)
        if m:
            best = max(counts, key=counts.get) if counts else None
            good = best is not None and m.group(1).lower() == best
        elif found:
            c, v = found[0][0].lower(), int(found[0][1])
            counts.setdefault(c, v)
            good = truth.get(c) == v
        else:
            good = False
        ok = ok and good
        out.append(ok)
    return out


# ---------------------------------------------------------------------------------------------------------------
# A scripted policy for the task


class TallyPolicy:
    """The Policy protocol for tally problems: `generate(requests)` returns, for each request, `n` continuations
    of `request.prefix` (split with `split_steps`, so blank-line prefixes from `annotate` work too), cut at the
    first `stop` string, each sample seeded by (request.seed, sample index). Temperature and max_tokens are
    ignored: `misread` and `slip` are its only knobs."""

    def __init__(self, misread: float = 0.3, slip: float = 0.1):
        self.misread, self.slip = misread, slip
        self.name = f"tally:misread={misread:g},slip={slip:g}"

    def close(self) -> None:
        pass

    def generate(self, requests: list) -> list[list[str]]:
        return [[self._continue(r, j) for j in range(r.n)] for r in requests]

    def _continue(self, req, j: int) -> str:
        p, prefix = req.problem, req.prefix or ""
        done = split_steps(prefix)
        counts, named = claims(done)
        if named is not None:
            return ""
        rng = random.Random(f"tally-policy:{req.seed}:{j}")
        truth = {c: p["tiles"].count(c) for c in p["colors"]}
        new, k = [], len(done)
        for c in p["colors"]:
            if c in counts:
                continue
            v = truth[c]
            if rng.random() < self.misread:
                v = max(1, v + rng.choice((-2, -1, 1, 2)))
            counts[c] = v
            k += 1
            new.append(f"Step {k}: {c} tiles: {v}")
        best = max((c for c in p["colors"] if c in counts), key=lambda c: counts[c])
        if rng.random() < self.slip:
            best = rng.choice([c for c in p["colors"] if c != best])
        new.append(f"Step {k + 1}: Most frequent: {best}")
        sep = "" if not prefix.strip() or prefix.endswith("\n") else "\n"
        text = sep + "\n".join(new)
        cut = [i for i in (text.find(s, len(sep)) for s in req.stop or [] if s) if i >= 0]
        return text[: min(cut)] if cut else text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="write tally problems: OUT_DIR/problems.jsonl and OUT_DIR/images/")
    ap.add_argument("out_dir")
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args(argv)
    recs = make_problems(a.out_dir, a.n, a.seed)
    print(json.dumps({"problems": len(recs), "out": str(Path(a.out_dir) / "problems.jsonl")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
