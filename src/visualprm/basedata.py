"""Pre-training sequences of the demo's base model (basemodel.py): one image and question/answer turns about it.

Four phases, each a function of a seeded `random.Random` that returns `(image, turns)` or `(image, turns, shown)`:

- `pretrain_example` (phase 1, seeing): counts, bar values, colours, descriptions, true/false claims and
  arithmetic questions about one generated image (`scene_turns`);
- `check_example` (phase 2, checking one claim): true/false claims about the image, half of them bare statements;
- `chain_example` (phase 3, following a chain): a running list of statements, each answered "yes" when it and
  every statement before it are true, "no" otherwise. The statements are claims about the image (70% true) and
  arithmetic on numbers stated earlier in the list (80% right); an answer needs every earlier statement, not only
  the last one. They are not solutions: no question, no plan, no final answer, and an arithmetic statement is true
  whenever its arithmetic is, whichever earlier numbers it uses (which operands a solution's step must use is for
  the PRM to learn from its step labels). Three sequences in ten are `check_example`s, so phase 2 is not
  forgotten;
- `calc_example` (phase 4, checking calculations): bare arithmetic statements in the task's range ("4 + 3 = 8."
  -> "false"), and calculation chains (`calc_turns`) in which a calculation must also use numbers stated earlier
  and a closing "Final answer: N" must repeat the last result. Written because the demo's PRM called a first
  wrong calculation or final answer correct 82-97% of the time (phase 3 accepts any earlier number as an operand
  and has no final answer). Slow to learn: a first wrong calculation answered "no" 11% of the time after 1,000
  steps, 42% after 3,500, 58% after 6,000; on another 400 chains 55% after 6,000 and 63% after 8,500 (the shipped
  model; README has the curve and what it did to the demo).

This module draws data only: no model, no tokenizer, no training (basemodel.py).
"""

from __future__ import annotations

import random
from collections.abc import Callable

from .synthetic import COLORS, GRID, MAX_BAR, SHAPES, render_scene, sample_problem, scene_values, see_text

RENDER_SIZE = 112  # images are drawn at this size; the processor resizes them to the model's input

QUESTION_COUNT = "How many {} shapes are there?"
QUESTION_TOTAL = "How many shapes are there in total?"
QUESTION_BAR = "What is the value of the {} bar?"
QUESTION_CLAIM = "True or false: {}"
QUESTION_DESCRIBE = "Describe the image."
QUESTION_INVENTORY_SHAPES = "How many shapes of each colour are there?"
QUESTION_INVENTORY_BARS = "What are the values of the bars?"
QUESTION_COLOUR = "What colour are the {}?"
QUESTION_ARITH = "What is {} {} {}?"


def _near_miss(v: int, lo: int, hi: int, rng: random.Random) -> int:
    """A wrong value close to v (the misreads the scripted policy makes)."""
    cands = [w for w in (v - 2, v - 1, v + 1, v + 2) if lo <= w <= hi]
    weights = [1 if abs(w - v) == 2 else 3 for w in cands]
    return rng.choices(cands, weights)[0]


def _arith_fact(rng: random.Random) -> tuple[int, str, int, int]:
    """(x, sym, y, x sym y) in the task's range: sums and differences of 0-12 and 0-9 (larger first), products of
    0-9 and 2-4."""
    sym = rng.choice("++-×")
    if sym == "×":
        x, y = rng.randint(0, 9), rng.randint(2, 4)
    else:
        x, y = rng.randint(0, 12), rng.randint(0, 9)
        if sym == "-" and y > x:
            x, y = y, x
    z = x + y if sym == "+" else x - y if sym == "-" else x * y
    return x, sym, y, z


def _arith_turn(rng: random.Random) -> tuple[str, str]:
    x, sym, y, z = _arith_fact(rng)
    if rng.random() < 0.5:
        return QUESTION_ARITH.format(x, sym, y), str(z)
    claim = z if rng.random() < 0.5 else z + rng.choice((-2, -1, 1, 1, 2))
    return QUESTION_CLAIM.format(f"{x} {sym} {y} = {claim}."), "true" if claim == z else "false"


def inventory(scene: dict) -> tuple[str, str]:
    """Every quantity of an image at once, each number right after its name: "red 2, blue 1, green 0, yellow 3,
    total 6" (shapes, colours in a fixed order) or "green 3, red 5, blue 1" (bars, left to right)."""
    values = scene_values(scene)
    if scene["kind"] == "shapes":
        return QUESTION_INVENTORY_SHAPES, ", ".join(f"{k} {values[k]}" for k in (*COLORS, "total"))
    return QUESTION_INVENTORY_BARS, ", ".join(f"{b['color']} {b['value']}" for b in scene["bars"])


def one_colour_scene(rng: random.Random) -> tuple[dict, str]:
    """A scene drawn in a single colour (1-6 shapes, or 3 bars), and that colour's name."""
    color = rng.choice(list(COLORS))
    if rng.random() < 0.5:
        cells = rng.sample(range(GRID * GRID), rng.randint(1, 6))
        objects = [
            {"shape": rng.choice(SHAPES), "color": color, "row": k // GRID, "col": k % GRID, "dx": 0.0, "dy": 0.0}
            for k in cells
        ]
        return {"kind": "shapes", "objects": objects}, color
    return {"kind": "bars", "bars": [{"color": color, "value": rng.randint(1, MAX_BAR)} for _ in range(3)]}, color


def _claim(kind: str, key: str, v: int, p_true: float, rng: random.Random) -> tuple[str, bool]:
    """A claim about one quantity in the task's own words, true with probability p_true (else a near miss)."""
    claim = _claimed_value(kind, v, p_true, rng)
    return see_text(kind, key, claim), claim == v


def _claimed_value(kind: str, v: int, p_true: float, rng: random.Random) -> int:
    """v with probability p_true, else a near miss in the kind's range."""
    lo, hi = (1, MAX_BAR) if kind == "bars" else (0, 9)
    return v if rng.random() < p_true else _near_miss(v, lo, hi, rng)


def scene_turns(scene: dict, rng: random.Random) -> list[tuple[str, str]]:
    """(question, answer) turns about one image of the task, then one or two arithmetic turns: the inventory of
    every quantity (a quarter of the sequences), or 1-4 turns each about quantities not asked before (so no
    answer can be copied from an earlier turn): a count question, a true-or-false claim, or two claims that are
    true together only if both are."""
    kind, values = scene["kind"], scene_values(scene)
    turns: list[tuple[str, str]] = []
    if rng.random() < 0.25:
        turns.append(inventory(scene))
    else:
        keys = list(values)
        rng.shuffle(keys)
        while keys and len(turns) < 4:
            r = rng.random()
            if r < 0.35:
                key = keys.pop()
                if kind == "bars":
                    q = QUESTION_BAR.format(key)
                else:
                    q = QUESTION_TOTAL if key == "total" else QUESTION_COUNT.format(key)
                turns.append((q, str(values[key])))
            elif r < 0.8 or len(keys) < 2:
                text, ok = _claim(kind, (key := keys.pop()), values[key], 0.5, rng)
                turns.append((QUESTION_CLAIM.format(text), "true" if ok else "false"))
            else:
                (t1, ok1), (t2, ok2) = (_claim(kind, (k := keys.pop()), values[k], 0.7, rng) for _ in range(2))
                turns.append((QUESTION_CLAIM.format(f"{t1} {t2}"), "true" if ok1 and ok2 else "false"))
            if rng.random() < 0.3:
                break
    for _ in range(1 + (rng.random() < 0.5)):
        turns.append(_arith_turn(rng))
    return turns


def pretrain_example(rng: random.Random, image_size: int = RENDER_SIZE) -> tuple:
    """(image, turns) of one pre-training sequence. One in five: a one-colour image and "What colour are the
    shapes?" (it ties the colour words to what they look like; without it the model never learns to find a
    colour it is asked about). Otherwise a scene drawn as the synthetic task draws them, with `scene_turns`."""
    if rng.random() < 0.2:
        scene, color = one_colour_scene(rng)
        return render_scene(scene, image_size), [(QUESTION_COLOUR.format(scene["kind"]), color)]
    scene = sample_problem(rng)["scene"]
    return render_scene(scene, image_size), scene_turns(scene, rng)


def check_example(rng: random.Random, image_size: int = RENDER_SIZE) -> tuple:
    """(image, turns) of one sequence of the second phase, which teaches checking what the first taught seeing:
    1-3 turns about one image, each a true-or-false claim in the task's words (seven in ten, half of them false)
    or a count / bar question, then an arithmetic turn one time in two; one sequence in ten is a one-colour image
    and "What colour are the shapes?". A model that can count does not yet compare a count with a claimed number:
    after the first phase, claims were answered at chance (56%) while counts were right 99% of the time. Half of
    the claims come bare ("There are 3 red shapes." -> "false"), without "True or false:", as the steps of a
    PRM conversation come."""
    if rng.random() < 0.1:
        scene, color = one_colour_scene(rng)
        return render_scene(scene, image_size), [(QUESTION_COLOUR.format(scene["kind"]), color)]
    scene = sample_problem(rng)["scene"]
    kind, values = scene["kind"], scene_values(scene)
    keys = list(values)
    rng.shuffle(keys)
    turns: list[tuple[str, str]] = []
    for key in keys[: rng.randint(1, 3)]:
        if rng.random() < 0.3:
            q = QUESTION_BAR.format(key) if kind == "bars" else QUESTION_TOTAL if key == "total" else None
            turns.append((q or QUESTION_COUNT.format(key), str(values[key])))
        else:
            text, ok = _claim(kind, key, values[key], 0.5, rng)
            turns.append((QUESTION_CLAIM.format(text), "true" if ok else "false"))
    if rng.random() < 0.5:
        turns.append(_arith_turn(rng))
    prefix = QUESTION_CLAIM.format("")
    turns = [(q.removeprefix(prefix), a) if q.startswith(prefix) and rng.random() < 0.5 else (q, a) for q, a in turns]
    return render_scene(scene, image_size), turns


QUESTION_CHAIN = "Is everything said so far true?"
CHAIN_CHECK_SHARE = 0.3  # phase 3 sequences that are phase 2's, so that checking one claim is not forgotten
CHAIN_PLACEHOLDER = "yes"  # what every assistant turn of a chain shows in the input (one token, as "no")


def chain_turns(scene: dict, rng: random.Random) -> list[tuple[str, str, bool]]:
    """(statement, answer, this statement's own truth) for 2-6 statements about one image: claims about its
    quantities in the task's words (70% true, else a near miss; each quantity at most once) and arithmetic on
    two numbers stated earlier, or on one and a small constant (80% right); answer "yes" iff every statement
    so far is true."""
    kind, values = scene["kind"], scene_values(scene)
    keys = list(values)
    rng.shuffle(keys)
    stated: list[int] = []
    out: list[tuple[str, str, bool]] = []
    all_true = True
    for _ in range(rng.randint(2, 6)):
        if keys and (len(stated) < 1 or rng.random() < 0.55):
            key = keys.pop()
            n = _claimed_value(kind, values[key], 0.7, rng)
            text, ok = see_text(kind, key, n), n == values[key]
            stated.append(n)
        elif stated:
            sym = rng.choice("++-×")
            x = rng.choice(stated)
            y = rng.randint(2, 4) if sym == "×" or len(stated) < 2 else rng.choice(stated)
            if sym == "-" and y > x:
                x, y = y, x
            z = x + y if sym == "+" else x - y if sym == "-" else x * y
            claim = z if rng.random() < 0.8 else max(0, z + rng.choice((-2, -1, 1, 1, 2)))
            ok = claim == z
            text = f"{x} {sym} {y} = {claim}."
            stated.append(claim)
        else:
            break
        all_true = all_true and ok
        out.append((text, "yes" if all_true else "no", ok))
    return out


def chain_example(rng: random.Random, image_size: int = RENDER_SIZE) -> tuple:
    """(image, turns, shown) of one sequence of phase 3: `QUESTION_CHAIN` with the first statement, then one
    statement per turn (`chain_turns`). `shown`: what the assistant turns hold in the input, `CHAIN_PLACEHOLDER`
    in every turn (the answers are the loss targets only), as a PRM's input holds `+` in every turn when it is
    scored: with the true answers in the input the model learns to copy an earlier "no" instead of checking.
    Three sequences in ten are `check_example`s instead (`shown` None: their answers are the input)."""
    if rng.random() < CHAIN_CHECK_SHARE:
        return (*check_example(rng, image_size), None)
    scene = sample_problem(rng)["scene"]
    return (render_scene(scene, image_size), *chain_sequence(scene, rng))


CALC_SHARES = (0.15, 0.65)  # phase 4: bare arithmetic statements, calculation chains; the rest phase 2's checks


def arith_claim(rng: random.Random) -> tuple[str, str]:
    """A bare arithmetic statement in the task's range and whether it is true: "4 + 3 = 8." -> "false" (half
    true; a wrong result is off by 1 or 2, never below 0)."""
    x, sym, y, z = _arith_fact(rng)
    if rng.random() < 0.5:
        claim = z
    else:
        claim = z + rng.choice((-2, -1, 1, 1, 2))
        claim = claim if claim >= 0 else z + 1
    return f"{x} {sym} {y} = {claim}.", "true" if claim == z else "false"


def calc_turns(scene: dict, rng: random.Random) -> list[tuple[str, str, bool]]:
    """(statement, answer, this statement's own truth) of a calculation chain about one image: claims about its
    quantities (80% true, each quantity at most once), calculations, and seven times in ten after a calculation a
    closing "Final answer: N". A calculation is true iff its arithmetic is right and its operands are numbers
    stated earlier (or, for ×, a constant 2-4); the wrong ones are the scripted policy's: a result off by 1 or 2,
    or an operand misquoted by 1 (a number not stated) and computed correctly from there. "Final answer: N" is
    true iff N is the last calculation's result (half the time; else off by 1). Answer "yes" iff every statement
    so far is true."""
    kind, values = scene["kind"], scene_values(scene)
    keys = list(values)
    rng.shuffle(keys)
    stated: list[int] = []
    out: list[tuple[str, str, bool]] = []
    all_true, last_calc = True, None
    for _ in range(rng.randint(2, 5)):
        if keys and (not stated or rng.random() < 0.5):
            key = keys.pop()
            n = _claimed_value(kind, values[key], 0.8, rng)
            text, ok = see_text(kind, key, n), n == values[key]
            stated.append(n)
            last_calc = None
        else:
            sym = rng.choice("++-×") if len(stated) > 1 else "×"
            if sym == "×":
                x, y = rng.choice(stated), rng.randint(2, 4)
            else:
                x, y = (stated[i] for i in rng.sample(range(len(stated)), 2))
            ok, r = True, rng.random()
            if r < 0.1:  # a misquoted operand, computed correctly from there
                x2 = [w for w in (x - 1, x + 1) if w >= 0 and w not in stated]
                if x2:
                    x, ok = rng.choice(x2), False
            if sym == "-" and y > x:
                x, y = y, x
            z = x + y if sym == "+" else x - y if sym == "-" else x * y
            if r >= 0.9 and z + (d := rng.choice((-2, -1, 1, 2))) >= 0:  # a wrong result
                z, ok = z + d, False
            text = f"{x} {sym} {y} = {z}."
            stated.append(z)
            last_calc = z
        all_true = all_true and ok
        out.append((text, "yes" if all_true else "no", ok))
    if last_calc is not None and rng.random() < 0.7:  # as often right as wrong where the rest is right
        n = last_calc if rng.random() < 0.5 else last_calc + 1 if last_calc == 0 else last_calc + rng.choice((-1, 1))
        ok = n == last_calc
        all_true = all_true and ok
        out.append((f"Final answer: {n}", "yes" if all_true else "no", ok))
    return out


def calc_example(rng: random.Random, image_size: int = RENDER_SIZE) -> tuple:
    """(image, turns, shown) of one sequence of phase 4, three kinds by `CALC_SHARES`: 3-6 bare `arith_claim`s
    answered each on its own (`shown` None); a calculation chain (`calc_turns`, `QUESTION_CHAIN` first, the
    placeholder in every answer turn of the input, as in phase 3); or a `check_example` (phase 2)."""
    r = rng.random()
    if r >= sum(CALC_SHARES):
        return (*check_example(rng, image_size), None)
    scene = sample_problem(rng)["scene"]
    image = render_scene(scene, image_size)
    if r < CALC_SHARES[0]:
        return image, [arith_claim(rng) for _ in range(rng.randint(3, 6))], None
    return (image, *chain_sequence(scene, rng, calc_turns))


def chain_sequence(
    scene: dict, rng: random.Random, statements: Callable[[dict, random.Random], list] = chain_turns
) -> tuple[list[tuple[str, str]], list[str]]:
    """(turns, shown) of a chain about one scene: `statements` (`chain_turns`; `calc_turns` for phase 4) with
    `QUESTION_CHAIN` before the first statement, and `CHAIN_PLACEHOLDER` for every assistant turn of the input."""
    turns = [(text, answer) for text, answer, _ in statements(scene, rng)]
    turns[0] = (f"{QUESTION_CHAIN}\n{turns[0][0]}", turns[0][1])
    return turns, [CHAIN_PLACEHOLDER] * len(turns)
