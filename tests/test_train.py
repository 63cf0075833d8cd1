"""train: the loss sits on the label tokens only, a tiny PRM learns a rule and scores the same from its folder,
LoRA, resume after a kill, DDP on two CPU processes, the official VisualPRM400K layout, bad input."""

import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from PIL import Image  # noqa: E402

from visualprm.builddata import (  # noqa: E402
    collate_items,
    conversation,
    encode_example,
    read_conversations,
    split_problems,
)
from visualprm.cli import main  # noqa: E402
from visualprm.model import label_token_ids, load_model  # noqa: E402
from visualprm.schema import Loc, load_image, write_jsonl  # noqa: E402
from visualprm.scoring import Scorer  # noqa: E402
from visualprm.steps import PRM_SYSTEM_PROMPT  # noqa: E402
from visualprm.tiny import make_tiny_model  # noqa: E402
from visualprm.train import label_logits, load_config, prm_loss, train  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WORDS = "red green blue yellow circle square triangle left right top bottom large small the of and".split()


def rule_data(folder: Path, n: int, seed: int = 0, system_prompt=False) -> Path:
    """Conversations whose step is wrong exactly when it contains the word 'purple' (a rule a tiny model learns)."""
    rng = random.Random(seed)
    (folder / "img").mkdir(parents=True, exist_ok=True)
    recs = []
    for i in range(n):
        Image.new("RGB", (56, 56), tuple(rng.randrange(256) for _ in range(3))).save(folder / "img" / f"{i}.png")
        steps, labels = [], []
        for _ in range(3):
            words = rng.choices(WORDS, k=rng.randint(3, 5))
            bad = rng.random() < 0.4
            if bad:
                words.insert(rng.randrange(len(words) + 1), "purple")
            steps.append(" ".join(words))
            labels.append("-" if bad else "+")
        conv = conversation(f"How many shapes? {i % 7}", steps, labels, 1, system_prompt)
        recs.append({"id": f"r{i}", "image": [f"img/{i}.png"], "conversations": conv})
    write_jsonl(folder / "train.jsonl", recs)
    return folder / "train.jsonl"


def items_of(path: Path, limit: int) -> list[dict]:
    """Scorer items (question, PIL images, steps) back from rule_data conversations."""
    out = []
    for ex in read_conversations(path)[:limit]:
        first = ex["turns"][0]["text"]
        question = first.split("\n\n### Solution Process:\n")[0].split("<image>\n")[1]
        steps = [first.split("### Solution Process:\n")[1]] + [t["text"] for t in ex["turns"][2::2]]
        out.append({"question": question, "images": [load_image(p, Loc()) for p in ex["images"]], "steps": steps})
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "qwen2_vl", arch="qwen2_vl", seed=0)


@pytest.fixture(scope="module")
def rule(tmp_path_factory):
    return rule_data(tmp_path_factory.mktemp("rule"), 120)


def _maxdiff(a, b):
    assert [len(x) for x in a] == [len(x) for x in b]
    return max(abs(x - y) for u, v in zip(a, b) for x, y in zip(u, v))


# ---------------------------------------------------------------------------------------------------------------
# the loss


def test_only_label_tokens_carry_loss(tiny, tmp_path):
    model, processor = load_model(tiny)
    tok = processor.tokenizer
    Image.new("RGB", (56, 56), (200, 0, 0)).save(tmp_path / "a.png")
    conv = conversation("How many?", ["s one", "s two", "s 3"], ["+", "-", "+"], 1)
    recs = [
        {"id": "a", "image": "a.png", "conversations": conv},
        {"id": "b", "image": "a.png", "conversations": conversation("Q", ["x"], ["-"], 1, False), "mc": [0.25]},
    ]
    write_jsonl(tmp_path / "d.jsonl", recs)
    ex = read_conversations(tmp_path / "d.jsonl")
    plus, minus = label_token_ids(processor, ("+", "-"))
    ids = {"+": plus, "-": minus}
    items = [encode_example(processor, e, ids, eot=True) for e in ex[:1]] + [encode_example(processor, ex[1], ids)]
    batch = collate_items(items, tok.pad_token_id)
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    for b, (item, labels) in enumerate(zip(items, (["+", "-", "+"], ["-"]))):
        toks = batch["input_ids"][b].tolist()
        pos = item["enc"].label_positions
        assert [tok.decode([toks[p]]) for p in pos] == labels  # the label characters themselves
        expected = [-100] * len(toks)
        for p, lab in zip(pos, labels):
            expected[p] = ids[lab]
            if b == 0:  # train_eot: the end-of-turn token after each label too
                expected[p + 1] = im_end
        assert batch["prm_labels"][b].tolist() == expected  # position by position, padding included
        soft = [-1.0] * len(toks)
        if b == 1:
            soft[pos[0]] = 0.25
        assert batch["prm_soft"][b].tolist() == soft
    assert (batch["prm_labels"] != -100).sum() == 3 + 3 + 1
    # our loss on the hard item equals the model's own masked causal-LM loss with these labels
    hard = collate_items(items[:1], tok.pad_token_id)
    logits, targets, soft_t, _ = label_logits(model, hard)
    ours = prm_loss(logits, targets, soft_t, [plus, minus])[0]
    inputs = {k: v for k, v in hard.items() if not k.startswith("prm_")}
    assert float(ours) == pytest.approx(float(model(**inputs, labels=hard["prm_labels"]).loss), abs=1e-5)
    # the soft item: cross-entropy against (mc, 1 - mc) over the + and - logits
    one = collate_items(items[1:], tok.pad_token_id)
    logits, targets, soft_t, _ = label_logits(model, one)
    full = model(**{k: v for k, v in one.items() if not k.startswith("prm_")}).logits[
        0, items[1]["enc"].label_positions[0] - 1
    ]
    lp = torch.log_softmax(full[[plus, minus]], dim=-1)
    assert float(prm_loss(logits, targets, soft_t, [plus, minus])[0]) == pytest.approx(
        float(-(0.25 * lp[0] + 0.75 * lp[1])), abs=1e-5
    )  # fmt: skip
    # label_loss="labels": hard labels over the + and - logits only; the end-of-turn rows keep the vocabulary loss
    logits, targets, soft_t, _ = label_logits(model, hard)
    rows = logits[:, [plus, minus]].log_softmax(-1)
    is_plus, is_minus = targets == plus, targets == minus
    vocab = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
    expected = torch.where(is_plus, -rows[:, 0], torch.where(is_minus, -rows[:, 1], vocab)).mean()
    got, correct, n = prm_loss(logits, targets, soft_t, [plus, minus], "labels")
    assert float(got) == pytest.approx(float(expected), abs=1e-6) and int(n) == 3
    assert float(got) < float(ours)  # the same label rows, without the rest of the vocabulary in the softmax


def test_training_encoding_is_the_scorers(tiny, tmp_path):
    """A build-data conversation with `+` in every assistant turn encodes exactly as the scorer encodes it."""
    model, processor = load_model(tiny)
    Image.new("RGB", (70, 56), (0, 90, 0)).save(tmp_path / "a.png")
    steps = ["There are 3 red circles.", "3 + 2 = 5.", "Final answer: 5"]
    conv = conversation("How many red circles?", steps, ["+", "-", "-"], 1, True)
    write_jsonl(tmp_path / "d.jsonl", [{"id": "a", "image": ["a.png"], "conversations": conv}])
    ex = read_conversations(tmp_path / "d.jsonl")[0]
    ours = encode_example(processor, ex, {"+": 1, "-": 2}, placeholder="+")["enc"]
    item = {
        "question": "How many red circles?",
        "images": [load_image(str(tmp_path / "a.png"), Loc())],
        "steps": steps,
    }
    theirs = Scorer(model, processor).encode_item(item)
    assert ours.label_positions == theirs.label_positions
    assert ours.inputs.keys() == theirs.inputs.keys()
    assert all(torch.equal(ours.inputs[k], theirs.inputs[k]) for k in ours.inputs)


@pytest.mark.parametrize("context, shown", [("labels", None), ("placeholder", "+")])
def test_context_labels_choose_what_training_shows(tiny, rule, tmp_path, monkeypatch, context, shown):
    """`context_labels: placeholder` encodes every training conversation as the scorer does (`+` in every
    assistant turn; test_training_encoding_is_the_scorers shows that view equals the scorer's), while the loss
    targets stay the true labels; the default shows the true labels (teacher forcing, as the paper)."""
    import visualprm.train as train_mod

    seen = []

    def spy(processor, ex, label_ids, placeholder=None, *args, **kw):
        item = encode_example(processor, ex, label_ids, placeholder, *args, **kw)
        seen.append((placeholder, item["targets"], [label_ids[lab] for lab in ex["labels"]]))
        return item

    monkeypatch.setattr(train_mod, "encode_example", spy)
    cfg = _cfg(rule, tiny, tmp_path / "prm", eval_split=0.0, max_steps=1, lr=0.0, limit=6, context_labels=context)
    train(cfg)
    assert len(seen) == 6 and {ph for ph, _, _ in seen} == {shown}
    assert all(targets == true for _, targets, true in seen)  # the loss still reads the true labels


# ---------------------------------------------------------------------------------------------------------------
# training runs


def _cfg(data, model, out, **kw):
    base = dict(data=str(data), model=str(model), out=str(out), torch_threads=1, warmup_ratio=0.0, overwrite=True)
    base.update(kw)
    return load_config(None, base)


# The spread of this test's quality assertions (`python benchmarks/train_rule_spread.py`, training seeds 0-4 x torch
# threads 1 and 2, 2-core AMD EPYC VM): held-out macro-F1 1.000 in all 10 runs (asserted >= 0.9); the rule held on
# every checked step, the closest score 0.19 from the 0.5 threshold; the thread count moved scores by < 1e-6.
@pytest.mark.slow
def test_tiny_prm_learns_rule_and_scores_from_its_folder(tiny, rule, tmp_path):
    out = tmp_path / "prm"
    t0 = time.time()
    res = train(_cfg(rule, tiny, out, lr=3e-3, epochs=4, batch_size=8, eval_split=0.2, save_steps=1000))
    seconds = time.time() - t0
    ev = json.loads((out / "eval.json").read_text())
    print(
        f"rule: held-out macro-F1 {ev['metrics']['macro_f1']:.3f}, {ev['train']['global_step']} steps, {seconds:.1f}s"
    )
    assert ev["metrics"]["macro_f1"] >= 0.9 and ev["metrics"]["steps"] == 72
    assert ev["train"]["global_step"] == 4 * ev["train"]["steps_per_epoch_expected"] == 48
    assert json.loads((out / "visualprm.json").read_text())["label_mode"] == "value"
    assert json.loads((out / "visualprm.json").read_text())["system_prompt"] is False
    log = json.loads((out / "train_log.json").read_text())
    assert any("label_acc" in h for h in log)
    # `visualprm score` on the saved folder gives the in-memory model's scores
    items = items_of(rule, 8)
    mem = Scorer(res["model"], res["processor"], system_prompt=False).score_steps(items)
    sols = [{"id": str(i), "images": ex["images"], "question": it["question"], "steps": it["steps"]}
            for i, (ex, it) in enumerate(zip(read_conversations(rule)[:8], items))]  # fmt: skip
    write_jsonl(tmp_path / "sols.jsonl", sols)
    assert (
        main(["score", "--prm", str(out), "--input", str(tmp_path / "sols.jsonl"), "--out", str(tmp_path / "s.jsonl")])
        == 0
    )
    disk = [json.loads(line)["step_scores"] for line in (tmp_path / "s.jsonl").read_text().splitlines()]
    assert _maxdiff(mem, disk) < 1e-5
    # and the scores follow the rule: high for clean steps, low for steps with 'purple'
    for it, row in zip(items, mem):
        assert [s >= 0.5 for s in row] == ["purple" not in step for step in it["steps"]]


@pytest.mark.slow
def test_lora_trains_and_its_merged_folder_scores(tiny, rule, tmp_path):
    out = tmp_path / "lora"
    res = train(_cfg(rule, tiny, out, lora=True, lr=3e-3, max_steps=3, batch_size=4, eval_split=0.1, save_steps=1000))
    assert (out / "adapter" / "adapter_config.json").is_file() and (out / "model.safetensors").is_file()
    assert json.loads((out / "visualprm.json").read_text())["lora"] is True
    params = res["summary"]["parameters"]
    assert 0 < params["trainable"] < params["frozen"] / 4  # adapters only
    items = items_of(rule, 4)
    mem = Scorer(res["model"], res["processor"], system_prompt=False).score_steps(items)
    disk = Scorer.from_pretrained(out).score_steps(items)
    base = Scorer.from_pretrained(tiny, system_prompt=False).score_steps(items)
    assert _maxdiff(mem, disk) < 1e-5
    assert _maxdiff(mem, base) > 1e-4  # the adapters changed the model


@pytest.mark.slow
def test_killed_run_resumes_from_last_checkpoint(tiny, tmp_path):
    data = rule_data(tmp_path / "d", 40, seed=3)
    args = ["--data", str(data), "--model", str(tiny), "--lr", "3e-3", "--batch-size", "4", "--max-steps", "8"]
    args += ["--save-steps", "1", "--torch-threads", "1", "--eval-split", "0.1"]
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "visualprm", "train", *args, "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpts = out / "checkpoints"
    while proc.poll() is None and not any(ckpts.glob("checkpoint-*/trainer_state.json")):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "visualprm.json").exists()  # it did not finish
    assert main(["train", *args, "--out", str(out)]) == 0  # the same command again
    ev = json.loads((out / "eval.json").read_text())["train"]
    print(f"resume: killed, resumed from step {ev['resumed_from_step']} -> {ev['global_step']}")
    assert 1 <= ev["resumed_from_step"] <= 8 and ev["global_step"] == 8
    # the resumed run ends with the weights of an uninterrupted one
    assert main(["train", *args, "--out", str(tmp_path / "whole")]) == 0
    from safetensors.torch import load_file

    a, b = load_file(out / "model.safetensors"), load_file(tmp_path / "whole" / "model.safetensors")
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-6
    assert main(["train", *args, "--out", str(out)]) == 0  # a finished run is left alone


@pytest.mark.slow
def test_ddp_two_cpu_processes(tiny, tmp_path):
    data = rule_data(tmp_path / "d", 62, seed=5)
    train_ex, _ = split_problems(read_conversations(data), 0.2, 0)
    n, batch, accum = len(train_ex), 4, 2
    per_process = math.ceil(math.ceil(n / batch) / 2)  # batches per process
    expected = math.ceil(per_process / accum)
    assert (n, expected) == (50, 4)
    accelerate = Path(sys.executable).parent / "accelerate"
    cmd = [str(accelerate), "launch", "--config_file", str(ROOT / "configs" / "accelerate_cpu_ddp.yaml"), "-m"]
    cmd += ["visualprm", "train", "--data", str(data), "--model", str(tiny), "--out", str(tmp_path / "ddp")]
    cmd += ["--batch-size", str(batch), "--grad-accum", str(accum), "--epochs", "1", "--eval-split", "0.2"]
    cmd += ["--torch-threads", "1", "--save-steps", "1000"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    ev = json.loads((tmp_path / "ddp" / "eval.json").read_text())
    print(f"ddp: {ev['train']}")
    assert ev["train"]["processes"] == 2 and ev["train"]["backend"] == "gloo"
    assert ev["train"]["global_step"] == ev["train"]["steps_per_epoch_expected"] == expected
    assert ev["metrics"]["steps"] == 36  # every held-out step evaluated once across the two processes
    assert Scorer.from_pretrained(tmp_path / "ddp").score_steps(items_of(data, 1))


# ---------------------------------------------------------------------------------------------------------------
# the official layout and bad input


def test_reads_official_visualprm400k_layout(tiny, tmp_path):
    """Records written after the published schema: `image` a path or a list, a system turn, `<image>` in the first
    human turn, one `+`/`-` gpt turn per step."""
    (tmp_path / "images").mkdir()
    for name in ("a.png", "b.png", "c.png"):
        Image.new("RGB", (60, 60), (10, 20, 30)).save(tmp_path / "images" / name)
    sp = {"from": "system", "value": PRM_SYSTEM_PROMPT}

    def turns(first, *rest):
        conv = [sp, {"from": "human", "value": "### Question:\n" + first}]
        for k, value in enumerate(rest):
            conv.append({"from": "gpt" if k % 2 == 0 else "human", "value": value})
        return conv

    recs = [
        {"id": 0, "image": "images/a.png",
         "conversations": turns("<image>\nWhat is the area?\n\n### Solution Process:\nThe side is 3.",
                                "+", "Area = 3 * 3 = 9.", "+")},
        {"id": 1, "image": ["images/b.png", "images/c.png"],
         "conversations": turns("<image>\n<image>\nWhich is larger?\n\n### Solution Process:\nLeft is 5.",
                                "-", "Final answer: left", "-")},
    ]  # fmt: skip
    data = tmp_path / "visualprm400k.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in recs))
    out = tmp_path / "prm"
    args = ["train", "--data", str(data), "--model", str(tiny), "--out", str(out), "--max-steps", "1"]
    assert main([*args, "--eval-split", "0", "--batch-size", "2", "--torch-threads", "1"]) == 0
    saved = json.loads((out / "visualprm.json").read_text())
    assert saved["system_prompt"] is True and saved["label_mode"] == "value"
    assert json.loads((out / "eval.json").read_text())["train"]["labels_train"] == 4


def _bad_case(tmp_path, case):
    Image.new("RGB", (56, 56)).save(tmp_path / "ok.png")
    good = conversation("Q", ["s1", "s2"], ["+", "-"], 1, False)
    rec = {"id": "x", "image": "ok.png", "conversations": conversation("Q", ["s1", "s2"], ["+", "-"], 1, False)}
    if case == "no label turns":
        rec["conversations"] = [{"from": "human", "value": "### Question:\n<image>\nQ"}]
    elif case == "image missing":
        rec["image"] = "nope.png"
    elif case == "mc outside [0, 1]":
        rec["mc"] = [0.5, -0.1]
    elif case == "not a value label":
        rec["conversations"][3]["value"] = "="
    write_jsonl(tmp_path / "bad.jsonl", [{"id": "fine", "image": "ok.png", "conversations": good}, rec])
    return tmp_path / "bad.jsonl"


@pytest.mark.parametrize(
    "case, message",
    [
        ("no label turns", "bad.jsonl:2: field 'conversations': no label turns"),
        ("image missing", "bad.jsonl:2: field 'images': image file not found"),
        ("mc outside [0, 1]", "bad.jsonl:2: field 'mc': mc[1] = -0.1 is outside [0, 1]"),
        ("not a value label", "bad.jsonl:2: field 'conversations': label '=' is not a value label"),
        ("label not in the vocabulary", "field 'label': label '+' is 0 tokens in this vocabulary"),
        ("too long", "bad.jsonl:1: field 'max_length': sequence of"),
    ],
)
def test_bad_input_fails_before_training(tiny, tmp_path, capsys, case, message):
    data = _bad_case(tmp_path, case)
    model = tiny
    extra = ["--label-mode", "value"]
    if case == "label not in the vocabulary":  # a vocabulary without '+'
        model = tmp_path / "novocab"
        shutil.copytree(tiny, model)
        t = json.loads((model / "tokenizer.json").read_text())
        del t["model"]["vocab"]["+"]
        t["model"]["merges"] = [m for m in t["model"]["merges"] if "+" not in "".join(m)]
        (model / "tokenizer.json").write_text(json.dumps(t))
    if case == "too long":
        extra += ["--max-length", "20"]
    out = tmp_path / "out"
    capsys.readouterr()
    code = main(["train", "--data", str(data), "--model", str(model), "--out", str(out), *extra])
    err = capsys.readouterr().err.strip().splitlines()[-1]  # (after the progress bar, if encoding had started)
    assert code == 2 and message in err and err.startswith("visualprm train: error: "), err
    assert not (out / "checkpoints").exists() and not (out / "train_config.json").exists()


def test_config_file_and_errors(tmp_path):
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text("data: d.jsonl\nmodel: m\nout: o\nlr: 1.0e-3\nepochs: 2\nlora: true\n")
    cfg = load_config(str(cfg_path), {"epochs": 3.0, "lr": None})
    assert (cfg.lr, cfg.epochs, cfg.lora, cfg.weight_decay, cfg.warmup_ratio) == (1e-3, 3.0, True, 0.05, 0.05)
    assert cfg.lr_scheduler == "cosine" and cfg.full is False and cfg.eval_split == 0.1
    cfg_path.write_text("data: d.jsonl\nlearning_rate: 1\n")
    with pytest.raises(Exception, match="field 'learning_rate': unknown option"):
        load_config(str(cfg_path), {})
    with pytest.raises(Exception, match="field 'model': missing"):
        load_config(None, {"data": "d", "out": "o"})
    for name in ("train_tiny_cpu.yaml", "train_8b_8gpu.yaml"):
        text = (ROOT / "configs" / name).read_text()
        assert text.startswith("# ") and "visualprm train --config configs/" + name in text.splitlines()[0]
        load_config(str(ROOT / "configs" / name), {})
