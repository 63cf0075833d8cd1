"""What a base model checks in phase 4's calculation chains: its yes/no answer per kind of statement.

Draws `--n` held-out calculation chains (`basedata.calc_turns`, from a stream no phase trains on), shows each to
each base model as phase 4 does (the placeholder in every answer turn), and prints, per statement kind (a claim
about the image, a calculation, a final answer) how often a statement is answered "yes" when it and everything
before it are true, and "no" when it is the chain's first false statement. Statements after the first false one
are left out (their answer is "no" whatever they say). Greedy, teacher-forced, one torch thread.

    python benchmarks/base_calc_probe.py src/visualprm/assets/base-model runs/base/calc6k --n 400
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections import Counter

KINDS = ("claim", "calc", "final")


def statement_kind(text: str) -> str:
    return "final" if text.startswith("Final answer") else "calc" if "=" in text else "claim"


def probe(path: str, n: int = 400, seed: int = 0) -> Counter:
    """Counts `(kind, "right" | "first wrong", "n" | "yes")` over `n` chains for the base model at `path`."""
    import torch

    from visualprm.basedata import RENDER_SIZE, calc_turns, chain_sequence
    from visualprm.basemodel import encode_turns, load_base
    from visualprm.model import collate, load_processor
    from visualprm.synthetic import render_scene, sample_problem

    torch.set_num_threads(1)
    model, processor = load_base(path), load_processor(path)
    tok = processor.tokenizer
    yes, no = tok.convert_tokens_to_ids("yes"), tok.convert_tokens_to_ids("no")
    rng = random.Random(f"calc-probe:{seed}")
    items, drawn = [], []

    def statements(scene: dict, rng: random.Random) -> list:  # calc_turns, keeping each statement's own truth
        drawn.append(calc_turns(scene, rng))
        return drawn[-1]

    for _ in range(n):
        scene = sample_problem(rng)["scene"]
        turns, shown = chain_sequence(scene, rng, statements)  # the layout phase 4 trains on
        enc = encode_turns(processor, render_scene(scene, RENDER_SIZE), turns, shown)
        if len(enc.label_positions) != 2 * len(turns):
            raise ValueError("an answer is not one token: this probe reads the first token of each")
        items.append((enc, drawn[-1]))
    c: Counter = Counter()
    with torch.inference_mode():
        for i in range(0, len(items), 32):
            chunk = items[i : i + 32]
            batch, _ = collate([e for e, _ in chunk], tok.pad_token_id)
            hidden = model.model(**batch, use_cache=False).last_hidden_state
            for j, (e, statements) in enumerate(chunk):
                first_tokens = torch.tensor(e.label_positions[0::2])  # each answer is one token, then <|im_end|>
                logits = model.lm_head(hidden[j, first_tokens - 1])
                for (text, _, ok), said_yes in zip(statements, (logits[:, yes] > logits[:, no]).tolist()):
                    key = (statement_kind(text), "right" if ok else "first wrong")
                    c[(*key, "n")] += 1
                    c[(*key, "yes")] += said_yes
                    if not ok:
                        break
    return c


def rates(c: Counter) -> dict:
    """{kind: {"right said yes": rate, "first wrong said no": rate, "n": (right, first wrong)}}."""
    out = {}
    for kind in KINDS:
        r, w = c[(kind, "right", "n")], c[(kind, "first wrong", "n")]
        out[kind] = {
            "right said yes": round(c[(kind, "right", "yes")] / r, 4) if r else None,
            "first wrong said no": round(1 - c[(kind, "first wrong", "yes")] / w, 4) if w else None,
            "n": [r, w],
        }
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("models", nargs="+", help="base model folders")
    ap.add_argument("--n", type=int, default=400, help="chains (default 400)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    from visualprm.schema import InputError

    try:
        table = {m: rates(probe(m, args.n, args.seed)) for m in args.models}
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{'model':40} {'kind':6} {'right: yes':>11} {'first wrong: no':>16} {'n':>10}")
    for m, row in table.items():
        for kind, r in row.items():
            said = (r["right said yes"], r["first wrong said no"])
            y, no = (f"{100 * v:.0f}%" if v is not None else "n/a" for v in said)
            print(f"{m[-40:]:40} {kind:6} {y:>11} {no:>16} {'/'.join(map(str, r['n'])):>10}")
    print(json.dumps(table))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
