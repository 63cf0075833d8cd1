"""Rebuild the small example inputs in this folder (the README's commands use them).

    python examples/data/make_examples.py [OUT_DIR]      # default: this folder

From 6 problems of the built-in synthetic task (seed 7; images in `images/`) and the synthetic policy (seed 0):
- `problems.jsonl`: problems as `make-synthetic` writes them (input of `annotate` and `search`);
- `annotated.jsonl`: `annotate` output, 2 solutions per problem with Monte-Carlo labels (input of `build-data`);
- `solutions.jsonl`: solutions to score (`score`): `steps` lists, and one record with a `response` instead;
- `candidates.jsonl`: Best-of-4 candidates with gold answers (`bon`);
- `visualprocessbench.jsonl`: VisualProcessBench records (`bench`), steps labelled by the synthetic ground truth;
- `vpb_scores.jsonl`: a critic's step scores for those records, one line per record (`bench --scores`); made
  here from the ground truth plus seeded noise, as an imperfect critic's would be.
Written by hand below (text-only ProcessBench and answers to grade): `processbench/gsm8k.json`, `answers.jsonl`,
`mathvista_outputs.json` (MathVista's `{pid: record}` layout).
"""

from __future__ import annotations

import json
import random
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

# ProcessBench's layout (a JSON list; the subset is the file name): label = index of the first wrong step, -1 if none.
PROCESSBENCH = [
    {
        "id": "gsm8k-0",
        "generator": "example",
        "problem": "Tom has 3 boxes of 12 pencils and gives away 10 pencils. How many pencils does he have left?",
        "steps": [
            "3 boxes of 12 pencils are 3 * 12 = 36 pencils.",
            "He gives away 10, so 36 - 10 = 26 pencils are left.",
            "The answer is 26.",
        ],
        "final_answer_correct": True,
        "label": -1,
    },
    {
        "id": "gsm8k-1",
        "generator": "example",
        "problem": "A shop sells apples at 4 dollars a kilo. Ann buys 2.5 kilos "
        "and pays with a 20 dollar note. How much change does she get?",
        "steps": ["2.5 kilos cost 2.5 * 4 = 12 dollars.", "Her change is 20 - 12 = 8 dollars.", "The answer is 8."],
        "final_answer_correct": False,
        "label": 0,
    },
    {
        "id": "gsm8k-2",
        "generator": "example",
        "problem": "A train travels 60 km in the first hour and 80 km in the second. What is its average speed?",
        "steps": [
            "It travels 60 + 80 = 140 km.",
            "In 2 hours.",
            "The average speed is 140 / 2 = 70 km/h.",
            "The answer is 70 km/h.",
        ],
        "final_answer_correct": True,
        "label": -1,
    },
    {
        "id": "gsm8k-3",
        "generator": "example",
        "problem": "There are 5 rows of 6 chairs. 7 chairs are taken. How many are free?",
        "steps": ["There are 5 * 6 = 30 chairs.", "30 - 7 = 24 chairs are free.", "The answer is 24."],
        "final_answer_correct": False,
        "label": 1,
    },
]
PB_SCORES = [[0.9, 0.8, 0.85], [0.3, 0.6, 0.4], [0.95, 0.9, 0.8, 0.9], [0.9, 0.7, 0.2]]
# Answers to grade (`grade`): JSONL with response and answer; choices, units and numbers.
ANSWERS = [
    {"id": "a0", "question": "What is 12 + 30?", "response": "12 + 30 = 42.\n\nFinal answer: 42", "answer": "42"},
    {
        "id": "a1",
        "question": "What is the area?",
        "response": "The area is 5 * 2.5 = \\boxed{12.5} cm^2.",
        "answer": 12.5,
    },
    {
        "id": "a2",
        "question": "Which shape has more sides?",
        "options": ["a triangle", "a square"],
        "response": "A square has 4 sides and a triangle 3, so the answer is (B).",
        "answer": "B",
    },
    {"id": "a3", "question": "What colour is the largest bar?", "response": "Final answer: Blue", "answer": "red"},
]
# MathVista's output layout: {pid: record} with its own field names.
MATHVISTA = {
    "1": {
        "pid": "1",
        "question": "What is the value of the largest bar?",
        "question_type": "free_form",
        "answer_type": "integer",
        "precision": None,
        "choices": None,
        "answer": "7",
        "response": "The largest bar reaches 7 on the axis. So the answer is 7.",
    },
    "2": {
        "pid": "2",
        "question": "Is the red circle larger than the blue one?",
        "question_type": "multi_choice",
        "answer_type": "text",
        "precision": None,
        "choices": ["Yes", "No"],
        "answer": "No",
        "response": "The blue circle is larger. Answer: (B) No",
    },
    "3": {
        "pid": "3",
        "question": "What is the ratio of the two lengths?",
        "question_type": "free_form",
        "answer_type": "float",
        "precision": 2,
        "choices": None,
        "answer": "1.33",
        "response": "4 / 3 = 1.3333, so the ratio is 1.33.",
    },
}


def main(out: Path = HERE) -> None:
    from visualprm.demo import bench_records, candidates_from_annotated
    from visualprm.montecarlo import annotate_file
    from visualprm.schema import read_jsonl, write_jsonl
    from visualprm.synthetic import make_problems

    shutil.rmtree(out / "images", ignore_errors=True)
    make_problems(out, n=6, seed=7)
    ann = out / "_annotated4.jsonl"  # beside the images: annotate writes image paths relative to its output
    ann.unlink(missing_ok=True)
    annotate_file(str(out / "problems.jsonl"), "synthetic", str(ann), solutions=4, rollouts=4, seed=0)
    lines = [r for _, r in read_jsonl(ann)]
    ann.unlink()
    write_jsonl(out / "annotated.jsonl", [r for r in lines if r["solution_index"] < 2])
    cands = candidates_from_annotated(lines)
    write_jsonl(out / "candidates.jsonl", cands)
    sols = [
        {"id": f"{r['problem_id']}-{r['solution_index']}", "images": r["images"], "question": r["question_orig"]}
        | {"steps": [s["text"] for s in r["steps"]]}
        for r in lines
        if r["solution_index"] == 0
    ]
    sols[-1] = {k: v for k, v in sols[-1].items() if k != "steps"} | {"response": "\n\n".join(sols[-1]["steps"])}
    write_jsonl(out / "solutions.jsonl", sols)
    recs = bench_records(cands)
    write_jsonl(out / "visualprocessbench.jsonl", recs)
    rng = random.Random(0)
    scores = [
        {"step_scores": [round(min(1, max(0, (0.8 if g > 0 else 0.3) + rng.gauss(0, 0.2))), 3) for g in labels]}
        for labels in (r["response"]["process_correctness"] for r in recs)
    ]
    write_jsonl(out / "vpb_scores.jsonl", scores)
    (out / "processbench").mkdir(exist_ok=True)
    (out / "processbench" / "gsm8k.json").write_text(json.dumps(PROCESSBENCH, indent=1) + "\n")
    write_jsonl(out / "pb_scores.jsonl", [{"step_scores": s} for s in PB_SCORES])
    write_jsonl(out / "answers.jsonl", ANSWERS)
    (out / "mathvista_outputs.json").write_text(json.dumps(MATHVISTA, indent=1) + "\n")
    for p in out.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    print(f"wrote {len(lines)} solutions of {len(cands)} problems, {len(recs)} benchmark records to {out}")
    print(json.dumps({"files": sorted(p.name for p in out.iterdir())}))


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE)
