"""The built-in synthetic visual task: generated problems, their images, a scripted policy and per-step truth.

Problems (`make_problems`, `visualprm make-synthetic`) are drawn from a seed, one independent random stream per
problem index, so the first k problems of `--n 200` equal those of `--n k`. Two kinds of image, both made for
low resolution (a 56x56 model input still shows them): `shapes`, at most 9 big flat-coloured circles, squares and
triangles in a 3x3 grid on white, and `bars`, a chart of 3 coloured bars with values 1-5 over grey grid lines one
unit apart. The question needs the image: sums, differences and multiples of counts or bar values, or "how many
shapes are not red". Every record keeps its hidden `scene` (what the image shows) and `task` (which quantities
the question combines) so that gold answers, the policy and the per-step truth are computed, never guessed.

Solutions are short formulaic steps, one per paragraph, e.g. (sum of two counts)::

    There are 3 red shapes.        <- perception step (a claim about the image)
    There is 1 blue shape.         <- perception step
    3 + 1 = 4.                     <- reasoning step (arithmetic on earlier claims)
    Final answer: 4                <- reasoning step (carries the last result)

`SyntheticPolicy` writes such solutions with configurable rates of perception errors (a misread count or bar) and
reasoning errors (wrong arithmetic, or a wrong value carried over); later steps build on the values claimed
earlier, so errors propagate as a model's do. It continues any prefix: the prefix is parsed back into the values
it claims (mistakes included) and the remaining steps are sampled from there; steps it cannot parse are kept
and the missing steps are written after them. Misreads are correlated the way a model's are: a fraction `hard`
of (problem, quantity) pairs is misread far more often, mostly as one fixed wrong value, so majority voting
fails on hard problems while a critic that looks at the image can still tell. That per-problem structure is a
deterministic function of the problem id; all sampling randomness comes from `request.seed`.

`check_steps` / `gold_step_correct` / `step_error_kind` recompute from the hidden scene whether each step is
correct so far (process correctness: a false claim, and every step after it, is wrong), for evaluation only.

This module does not grade free-form model answers (answers.py does) and ignores a request's temperature,
top-k, top-p and max_tokens: its error rates are its only knobs.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from pathlib import Path

from .schema import InputError, write_jsonl

COLORS = {"red": (220, 30, 30), "blue": (30, 70, 220), "green": (20, 150, 40), "yellow": (235, 190, 0)}
SHAPES = ("circle", "square", "triangle")
KINDS = ("shapes", "bars")
OPS = {"shapes": ("sum2", "diff", "sum3", "times", "rest"), "bars": ("sum2", "diff", "sum3", "times")}
GRID = 3  # shapes sit in a GRID x GRID grid, one per cell
MAX_BAR = 5
BACKGROUND = (255, 255, 255)
GRID_LINE = (200, 200, 200)
AXIS = (60, 60, 60)
HARD_RATIO = 7.0  # a hard item is misread this many times as often as an easy one
SYSTEMATIC = 0.7  # share of misreads that give the item's one typical wrong value
DEFAULT_PERCEPTION, DEFAULT_REASONING, DEFAULT_HARD = 0.3, 0.1, 0.3


# ---------------------------------------------------------------------------------------------------------------
# Scenes, questions, plans


def scene_values(scene: dict) -> dict[str, int]:
    """What the image shows: the count of shapes per colour and `total` (shapes), or each bar's value (bars)."""
    if scene["kind"] == "shapes":
        counts = Counter(o["color"] for o in scene["objects"])
        return {**{c: counts.get(c, 0) for c in COLORS}, "total": len(scene["objects"])}
    return {b["color"]: b["value"] for b in scene["bars"]}


def describe_scene(scene: dict) -> str:
    """A plain description of the image, e.g. "2 red shapes, 1 blue shape. 3 shapes in total." (dense text for
    pre-training a model to see the domain)."""
    v = scene_values(scene)
    if scene["kind"] == "shapes":
        parts = [_count_phrase(v[c], f"{c} shape") for c in COLORS if v[c]]
        return ", ".join(parts) + ". " + _count_phrase(v["total"], "shape") + " in total."
    return ", ".join(f"the {b['color']} bar is {b['value']}" for b in scene["bars"]).capitalize() + "."


def _count_phrase(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def make_plan(problem: dict) -> list[dict]:
    """The steps a solution takes: `see` (read one quantity off the image), `op` (arithmetic on earlier slots
    or the question's constant), `final` (state the answer)."""
    task = problem["task"]
    op, keys = task["op"], task["keys"]
    if op in ("sum2", "diff"):
        sym = "+" if op == "sum2" else "-"
        see = [{"kind": "see", "key": k} for k in keys[:2]]
        return see + [{"kind": "op", "sym": sym, "args": [0, 1], "absdiff": op == "diff"}, {"kind": "final", "arg": 2}]
    if op == "sum3":
        see = [{"kind": "see", "key": k} for k in keys[:3]]
        ops = [{"kind": "op", "sym": "+", "args": [0, 1]}, {"kind": "op", "sym": "+", "args": [3, 2]}]
        return see + ops + [{"kind": "final", "arg": 4}]
    if op == "times":
        mul = {"kind": "op", "sym": "×", "args": [0, None], "const": task["const"]}
        return [{"kind": "see", "key": keys[0]}, mul, {"kind": "final", "arg": 1}]
    if op == "rest":
        see = [{"kind": "see", "key": "total"}, {"kind": "see", "key": keys[0]}]
        return see + [{"kind": "op", "sym": "-", "args": [0, 1]}, {"kind": "final", "arg": 2}]
    raise ValueError(f"unknown synthetic op {op!r} (expected one of sum2, diff, sum3, times, rest)")


def _apply(sym: str, x: int, y: int) -> int:
    return x + y if sym == "+" else x - y if sym == "-" else x * y


def _operands(slot: dict, values: dict[int, int]) -> tuple[int, int] | None:
    """The operands of an op slot as the solution should write them, from the values claimed so far."""
    a, b = slot["args"]
    if a not in values or (b is not None and b not in values):
        return None
    x, y = values[a], (slot["const"] if b is None else values[b])
    if slot.get("absdiff") and y > x:  # "the difference between": larger number first
        x, y = y, x
    return x, y


def gold_answer(problem: dict) -> int:
    """The answer computed from the scene by running the plan with the true values."""
    plan, true = make_plan(problem), scene_values(problem["scene"])
    values: dict[int, int] = {}
    for i, slot in enumerate(plan):
        if slot["kind"] == "see":
            values[i] = true[slot["key"]]
        elif slot["kind"] == "op":
            values[i] = _apply(slot["sym"], *_operands(slot, values))
        else:
            return values[slot["arg"]]
    raise ValueError("plan without a final step")


_QUESTIONS = {
    ("shapes", "sum2"): "How many {0} and {1} shapes are there in total?",
    ("shapes", "diff"): "What is the difference between the number of {0} shapes and the number of {1} shapes?",
    ("shapes", "sum3"): "How many {0}, {1} and {2} shapes are there in total?",
    ("shapes", "times"): "Each {0} shape is worth {c} points. How many points are the {0} shapes worth?",
    ("shapes", "rest"): "How many shapes are not {0}?",
    ("bars", "sum2"): "What is the sum of the {0} bar and the {1} bar?",
    ("bars", "diff"): "What is the difference between the {0} bar and the {1} bar?",
    ("bars", "sum3"): "What is the sum of the {0}, {1} and {2} bars?",
    ("bars", "times"): "What is the value of the {0} bar multiplied by {c}?",
}
BARS_PREAMBLE = "In the bar chart, grid lines are 1 unit apart. "


def sample_problem(rng: random.Random, kinds: tuple[str, ...] = KINDS) -> dict:
    """One problem (without id or image path): `question`, `answer`, `source`, `scene`, `task`."""
    kind = rng.choice(kinds)
    op = rng.choice(OPS[kind])
    n_keys = {"sum2": 2, "diff": 2, "sum3": 3, "times": 1, "rest": 1}[op]
    const = rng.randint(2, 4) if op == "times" else None
    if kind == "shapes":
        keys = rng.sample(list(COLORS), n_keys)
        while True:
            counts = {c: rng.randint(1, 4) if c in keys else rng.randint(0, 2) for c in COLORS}
            total = sum(counts.values())
            if total <= GRID * GRID and (op != "rest" or total > counts[keys[0]]):
                break
        colors = [c for c in COLORS for _ in range(counts[c])]
        rng.shuffle(colors)
        cells = sorted(rng.sample(range(GRID * GRID), total))
        objects = [
            {
                "shape": rng.choice(SHAPES),
                "color": color,
                "row": cell // GRID,
                "col": cell % GRID,
                "dx": round(rng.uniform(-0.08, 0.08), 3),
                "dy": round(rng.uniform(-0.08, 0.08), 3),
            }
            for cell, color in zip(cells, colors)
        ]
        scene = {"kind": "shapes", "objects": objects}
    else:
        bar_colors = rng.sample(list(COLORS), 3)
        keys = rng.sample(bar_colors, n_keys)
        scene = {"kind": "bars", "bars": [{"color": c, "value": rng.randint(1, MAX_BAR)} for c in bar_colors]}
    question = _QUESTIONS[(kind, op)].format(*keys, c=const)
    if kind == "bars":
        question = BARS_PREAMBLE + question
    rec = {"question": question, "answer": "", "source": "synthetic", "scene": scene}
    rec["task"] = {"op": op, "keys": keys, "const": const}
    rec["answer"] = str(gold_answer(rec))
    return rec


def problem_records(n: int, seed: int, kinds: tuple[str, ...] = KINDS) -> list[dict]:
    """`n` problems in memory (ids and image paths set, images not drawn). Problem i depends only on (seed, i)."""
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise InputError(f"unknown kind(s) {bad or kinds!r}: valid kinds are {', '.join(KINDS)}", field="kinds")
    out = []
    for i in range(n):
        rec = sample_problem(random.Random(f"synthetic-problem:{seed}:{i}"), tuple(kinds))
        pid = f"syn{seed}-{i:05d}"
        out.append({"id": pid, "images": [f"images/{pid}.png"], **rec})
    return out


# ---------------------------------------------------------------------------------------------------------------
# Rendering


def render_scene(scene: dict, size: int = 112):
    """Draw a scene as a `size` x `size` RGB image (flat colours, no anti-aliasing, no text)."""
    from PIL import Image, ImageDraw

    im = Image.new("RGB", (size, size), BACKGROUND)
    d = ImageDraw.Draw(im)
    if scene["kind"] == "shapes":
        cell = size / GRID
        r = 0.36 * cell
        for o in scene["objects"]:
            cx, cy = (o["col"] + 0.5 + o["dx"]) * cell, (o["row"] + 0.5 + o["dy"]) * cell
            box = [round(cx - r), round(cy - r), round(cx + r), round(cy + r)]
            fill = COLORS[o["color"]]
            if o["shape"] == "circle":
                d.ellipse(box, fill=fill)
            elif o["shape"] == "square":
                d.rectangle(box, fill=fill)
            else:
                d.polygon([(round(cx), box[1]), (box[0], box[3]), (box[2], box[3])], fill=fill)
        return im
    top, base, left = 0.08 * size, 0.92 * size, 0.08 * size
    unit = (base - top) / (MAX_BAR + 0.5)
    for v in range(1, MAX_BAR + 1):
        y = round(base - v * unit)
        d.line([(round(left), y), (size - 1, y)], fill=GRID_LINE, width=1)
    slot = (size - left) / len(scene["bars"])
    for i, b in enumerate(scene["bars"]):
        x0 = left + i * slot + 0.2 * slot
        box = [round(x0), round(base - b["value"] * unit), round(x0 + 0.6 * slot), round(base)]
        d.rectangle(box, fill=COLORS[b["color"]])
    d.line([(round(left), round(base)), (size - 1, round(base))], fill=AXIS, width=max(1, size // 56))
    d.line([(round(left), round(top)), (round(left), round(base))], fill=AXIS, width=max(1, size // 56))
    return im


def make_problems(
    out_dir: str | Path, n: int = 200, seed: int = 1, image_size: int = 112, kinds: tuple[str, ...] = KINDS
) -> list[dict]:
    """Write `out_dir/images/*.png` and then `out_dir/problems.jsonl` (atomically, last); return the records."""
    from .jobs import bar as progress_bar

    if n < 1:
        raise InputError(f"--n must be >= 1, got {n}", field="n")
    if image_size < 28:
        raise InputError(f"--image-size must be >= 28 pixels, got {image_size}", field="image_size")
    records = problem_records(n, seed, kinds)  # bad kinds fail here, before anything is created
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    for rec in progress_bar(len(records), "images", "img", enabled=n >= 500, iterable=records):
        render_scene(rec["scene"], image_size).save(out / rec["images"][0])
    write_jsonl(out / "problems.jsonl", records)
    return records


# ---------------------------------------------------------------------------------------------------------------
# Step texts and their parsing

_NUM = r"(-?\d+)"
_SEE_COLOR = re.compile(rf"^there (?:is|are) {_NUM} (\w+) shapes?\.?$", re.I)
_SEE_TOTAL = re.compile(rf"^there (?:is|are) {_NUM} shapes? in total\.?$", re.I)
_SEE_BAR = re.compile(rf"^the (\w+) bar is {_NUM}\.?$", re.I)
_OP = re.compile(rf"^{_NUM}\s*([+\-×x*])\s*{_NUM}\s*=\s*{_NUM}\.?$", re.I)
_FINAL = re.compile(rf"^final answer:\s*{_NUM}\.?$", re.I)


def see_text(kind: str, key: str, n: int) -> str:
    if kind == "bars":
        return f"The {key} bar is {n}."
    verb = "is" if n == 1 else "are"
    if key == "total":
        return f"There {verb} {_count_phrase(n, 'shape')} in total."
    return f"There {verb} {_count_phrase(n, f'{key} shape')}."


def _parse_step(text: str) -> tuple:
    """("see", key, n) | ("op", x, sym, y, z) | ("final", n) | ("other",)."""
    t = " ".join(text.split())
    if m := _SEE_TOTAL.match(t):
        return ("see", "total", int(m[1]))
    if m := _SEE_COLOR.match(t):
        return ("see", m[2].lower(), int(m[1]))
    if m := _SEE_BAR.match(t):
        return ("see", m[1].lower(), int(m[2]))
    if m := _OP.match(t):
        sym = "×" if m[2] in "×xX*" else m[2]
        return ("op", int(m[1]), sym, int(m[3]), int(m[4]))
    if m := _FINAL.match(t):
        return ("final", int(m[1]))
    return ("other",)


def check_steps(problem: dict, steps: list[str]) -> tuple[list[dict], dict[int, int]]:
    """Parse steps against the problem's plan and check each one's own claim.

    Returns (one dict per step: `type` perception|reasoning|other, `slot` (plan index it fills, or None),
    `claim_true`), and the values claimed per plan slot (first claim wins). A perception claim is true when it
    matches the image; an arithmetic step when its arithmetic is right and its operands are the values claimed
    earlier (or the question's constant); the final step when it repeats the last result. Unparseable steps
    are false (the task's steps are formulaic, so they claim nothing checkable)."""
    plan, true = make_plan(problem), scene_values(problem["scene"])
    values: dict[int, int] = {}
    out = []
    for text in steps:
        p = _parse_step(text)
        slot, ok, typ = None, False, "reasoning"
        if p[0] == "see":
            typ = "perception"
            ok = true.get(p[1]) == p[2]
            slot = next((i for i, s in enumerate(plan) if s["kind"] == "see" and s["key"] == p[1]), None)
        elif p[0] == "op":
            _, x, sym, y, z = p
            slot = next(
                (i for i, s in enumerate(plan) if s["kind"] == "op" and s["sym"] == sym and i not in values), None
            )
            want = _operands(plan[slot], values) if slot is not None else None
            same = want is not None and ((x, y) == want or (sym != "-" and (y, x) == want))
            ok = same and _apply(sym, x, y) == z
        elif p[0] == "final":
            slot = len(plan) - 1
            ref = plan[slot]["arg"]
            ok = p[1] == (values[ref] if ref in values else gold_answer(problem))
        else:
            typ = "other"
        if slot is not None and slot in values:
            slot = None  # a restatement fills nothing
        if slot is not None:
            values[slot] = p[-1]
        out.append({"type": typ, "slot": slot, "claim_true": ok})
    return out, values


def gold_step_correct(problem: dict, steps: list[str]) -> list[bool]:
    """Process correctness per step: True while every step so far makes a true claim (evaluation only)."""
    ok, out = True, []
    for c in check_steps(problem, steps)[0]:
        ok = ok and c["claim_true"]
        out.append(ok)
    return out


def step_error_kind(problem: dict, steps: list[str]) -> list[str | None]:
    """None for a correct-so-far step; otherwise the kind of the first wrong step ("perception" for a false
    claim about the image, "reasoning" for wrong arithmetic, a wrong carried value or an unparseable step)."""
    kind, out = None, []
    for c in check_steps(problem, steps)[0]:
        if kind is None and not c["claim_true"]:
            kind = "perception" if c["type"] == "perception" else "reasoning"
        out.append(kind)
    return out


# ---------------------------------------------------------------------------------------------------------------
# The scripted policy

_OFFSETS, _OFFSET_WEIGHTS = (-2, -1, 1, 2), (0.15, 0.35, 0.35, 0.15)


def _value_range(problem: dict, key: str) -> tuple[int, int]:
    """Values a claim can take without giving itself away (asked colours are never 0, bars are 1-5)."""
    if problem["scene"]["kind"] == "bars":
        return 1, MAX_BAR
    if key == "total":
        return 2, GRID * GRID
    return 1, 4


def _misread(v: int, lo: int, hi: int, rng: random.Random) -> int:
    d = rng.choices(_OFFSETS, _OFFSET_WEIGHTS)[0]
    for w in (v + d, v - d, v + 1, v - 1):
        if lo <= w <= hi and w != v:
            return w
    return v + 1


class SyntheticPolicy:
    """Scripted policy for the synthetic task (the `synthetic` policy spec). See the module docstring.

    perception: mean probability that a step reading the image misreads it.
    reasoning: probability that an arithmetic or final step is wrong (half wrong arithmetic, half a wrong value
        carried over; on the final step always a wrong carried value).
    hard: fraction of (problem, quantity) pairs misread HARD_RATIO times as often as the rest (mean rate kept).
    """

    def __init__(
        self, perception: float = DEFAULT_PERCEPTION, reasoning: float = DEFAULT_REASONING, hard: float = DEFAULT_HARD
    ):
        for name, v in (("perception", perception), ("reasoning", reasoning), ("hard", hard)):
            if not 0.0 <= v <= 1.0:
                raise InputError(f"synthetic policy option {name}={v} must be between 0 and 1", field="policy")
        self.perception, self.reasoning, self.hard = perception, reasoning, hard
        defaults = (DEFAULT_PERCEPTION, DEFAULT_REASONING, DEFAULT_HARD)
        if (perception, reasoning, hard) == defaults:
            self.name = "synthetic"
        else:
            self.name = f"synthetic:perception={perception:g},reasoning={reasoning:g},hard={hard:g}"

    def close(self) -> None:
        pass

    def generate(self, requests: list) -> list[list[str]]:
        return [[self._continue(r, j) for j in range(r.n)] for r in requests]

    # -- internals
    def _item(self, problem: dict, key: str) -> tuple[float, int]:
        """(misread probability, typical wrong value) of one quantity: fixed per problem, from its id."""
        v = scene_values(problem["scene"])[key]
        lo, hi = _value_range(problem, key)
        r = random.Random(f"synthetic-item:{problem.get('id')}:{key}")
        easy = self.perception / (self.hard * HARD_RATIO + 1 - self.hard)
        p = min(1.0, easy * HARD_RATIO) if r.random() < self.hard else easy
        return p, _misread(v, lo, hi, r)

    def _continue(self, req, j: int) -> str:
        problem = req.problem
        for f in ("scene", "task"):
            if not isinstance(problem.get(f), dict):
                raise InputError(
                    f"problem {problem.get('id')!r} has no synthetic '{f}': the synthetic policy only answers "
                    "problems written by `visualprm make-synthetic`",
                    field=f,
                )
        plan, prefix = make_plan(problem), req.prefix or ""
        done = [s for s in (p.strip() for p in prefix.split("\n\n")) if s]
        values = check_steps(problem, done)[1]
        if len(plan) - 1 in values:  # the prefix already states its final answer
            return ""
        rng = random.Random(f"synthetic-policy:{req.seed}:{j}")
        new = [self._step(problem, plan, i, values, rng) for i in range(len(plan)) if i not in values]
        sep = "" if not prefix.strip() or prefix.endswith("\n\n") else "\n" if prefix.endswith("\n") else "\n\n"
        text = sep + "\n\n".join(new)
        cut = [k for k in (text.find(s, len(sep)) for s in req.stop or [] if s) if k >= 0]
        return text[: min(cut)] if cut else text

    def _step(self, problem: dict, plan: list[dict], i: int, values: dict[int, int], rng: random.Random) -> str:
        slot, kind = plan[i], problem["scene"]["kind"]
        if slot["kind"] == "see":
            key = slot["key"]
            v = scene_values(problem["scene"])[key]
            p, typical = self._item(problem, key)
            if rng.random() < p:
                v = typical if rng.random() < SYSTEMATIC else _misread(v, *_value_range(problem, key), rng)
            values[i] = v
            return see_text(kind, key, v)
        if slot["kind"] == "final":
            z = values[slot["arg"]]
            if rng.random() < self.reasoning:
                z += rng.choice((-1, 1))
            values[i] = z
            return f"Final answer: {z}"
        x, y = _operands(slot, values)
        z = _apply(slot["sym"], x, y)
        if rng.random() < self.reasoning:
            if rng.random() < 0.5:  # wrong arithmetic
                z += rng.choices(_OFFSETS, _OFFSET_WEIGHTS)[0]
            else:  # a wrong value carried over, computed correctly from there
                if rng.random() < 0.5:
                    x = max(0, x + rng.choice((-1, 1))) if x > 0 else x + 1
                else:
                    y = max(0, y + rng.choice((-1, 1))) if y > 0 else y + 1
                if slot.get("absdiff") and y > x:
                    x, y = y, x
                z = _apply(slot["sym"], x, y)
        values[i] = z
        return f"{x} {slot['sym']} {y} = {z}."


def parse_synthetic_spec(spec: str) -> SyntheticPolicy:
    """`synthetic` or `synthetic:perception=0.2,reasoning=0.1,hard=0.3` -> a SyntheticPolicy."""
    name, _, opts = spec.partition(":")
    if name.strip() != "synthetic":
        raise InputError(f"not a synthetic policy spec: {spec!r}", field="policy")
    kw: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in opts.split(","))):
        key, eq, val = part.partition("=")
        key = key.strip()
        if not eq or key not in ("perception", "reasoning", "hard"):
            raise InputError(
                f"bad synthetic policy option {part!r} in {spec!r}: expected perception=X, reasoning=X or hard=X",
                field="policy",
            )
        try:
            kw[key] = float(val)
        except ValueError:
            raise InputError(f"synthetic policy option {key}={val!r} is not a number", field="policy") from None
    return SyntheticPolicy(**kw)


def final_answer(text: str) -> str | None:
    """The number after the last `Final answer:` in a response (the simple exact check used for pass rates)."""
    found = re.findall(r"final answer:\s*(-?\d+)", text, re.I)
    return found[-1] if found else None
