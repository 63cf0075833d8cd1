"""`visualprm convert`: tiny original-format InternVL chat checkpoints (InternLM2 with a sentencepiece tokenizer,
add_dummy_prefix both ways; Qwen2 with tokenizer.json; released geometry: 448 tiles, patch 14, downsample 0.5)
converted and checked against an independent computation of tiles, pixels, ids and label positions, against the
official code (tests/internvl_oracle.py; skipped without ../shared/reference), negative controls, bad inputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("sentencepiece", reason="InternLM2 tokenizers need sentencepiece (requirements-cpu.txt)")

from visualprm.cli import main  # noqa: E402
from visualprm.convert import INTERNVL_DEFAULT_SYSTEM, convert  # noqa: E402
from visualprm.internvl_original import write_original  # noqa: E402

# (width, height) -> tiles expected with max 12 (thumbnail included when more than one tile)
SIZES = [(448, 448), (900, 300), (300, 1200), (700, 460), (1300, 1000)]
ORACLE_SIZES = [(448, 448), (300, 1200), (1300, 1000)]  # 1, 5 and 13 tiles
KINDS = [("qwen2", True), ("internlm2", True), ("internlm2", False)]
ITEM = {"question": "How many red circles?  Answer: ", "steps": ["There are 3.", "So 3 + 4 = 7.", "Answer: 7 ①"]}
EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "data"
MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


def _image(w, h, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """{(llm, add_dummy_prefix): (src, dst)}; the Qwen2 one has its own system message."""
    root = tmp_path_factory.mktemp("convert")
    out = {}
    for llm, adp in KINDS:
        src = root / f"orig-{llm}-{adp}"
        msg = "You are a careful grader." if llm == "qwen2" else None
        write_original(src, llm, seed=1, add_dummy_prefix=adp, system_message=msg)
        dst = root / f"conv-{llm}-{adp}"
        convert(src, dst)
        out[(llm, adp)] = (src, dst)
    return out


@pytest.fixture(scope="module")
def scorers(folders):
    from visualprm.scoring import Scorer

    return {k: Scorer.from_pretrained(str(dst)) for k, (_, dst) in folders.items()}


# -- an independent computation, written from the official code's behaviour ------------------------------------


def expected_grid(w, h, lo=1, hi=12):
    ratios = sorted(
        {(i, j) for i in range(1, hi + 1) for j in range(1, hi + 1) if lo <= i * j <= hi}, key=lambda r: r[0] * r[1]
    )
    best, diff = (1, 1), float("inf")
    for i, j in ratios:
        d = abs(w / h - i / j)
        if d < diff:
            best, diff = (i, j), d
        elif d == diff and w * h > 0.5 * 448 * 448 * i * j:
            best = (i, j)
    return best


def expected_pixels(img, hi=12):
    i, j = expected_grid(*img.size, hi=hi)
    big = img.resize((448 * i, 448 * j), Image.BICUBIC)
    tiles = [big.crop((x * 448, y * 448, (x + 1) * 448, (y + 1) * 448)) for y in range(j) for x in range(i)]
    if len(tiles) > 1:
        tiles.append(img.resize((448, 448), Image.BICUBIC))
    return np.stack([((np.asarray(t, dtype=np.float64) / 255 - MEAN) / STD).transpose(2, 0, 1) for t in tiles])


@pytest.mark.parametrize("llm,adp", KINDS)
def test_tiles_pixels_ids_and_label_positions(folders, scorers, llm, adp):
    from visualprm.convert_tokenizer import official_prompt, reference_encoder

    src, dst = folders[(llm, adp)]
    sc = scorers[(llm, adp)]
    system = json.loads((dst / "visualprm.json").read_text())["system_prompt"]
    assert system == ("You are a careful grader." if llm == "qwen2" else INTERNVL_DEFAULT_SYSTEM)
    tok = sc.processor.tokenizer
    counts = []
    for w, h in SIZES:
        img = _image(w, h)
        enc = sc.encode_item({**ITEM, "images": [img]})
        pv = enc.inputs["pixel_values"].numpy()
        want = expected_pixels(img)
        counts.append(len(want))
        assert pv.shape == want.shape
        assert np.abs(pv - want).max() < 1e-5
        ids = enc.inputs["input_ids"][0].tolist()
        assert ids.count(tok.convert_tokens_to_ids("<IMG_CONTEXT>")) == 256 * len(want)
        prompt = official_prompt(system, ITEM["question"], ITEM["steps"], len(want))
        if llm == "internlm2":
            import sentencepiece as spm

            assert ids[0] == 1  # the BOS the official slow tokenizer adds
            assert ids == reference_encoder(src)(prompt)
            sp = spm.SentencePieceProcessor(model_file=str(src / "tokenizer.model"))
            assert sp.decode([i for i in ids if i < sp.get_piece_size()]).count("+") >= 3
        # every label position holds "+", right after "<|im_start|>assistant\n"
        plus = tok.convert_tokens_to_ids("+")
        assert [ids[p] for p in enc.label_positions] == [plus] * 3
        for p in enc.label_positions:
            assert tok.decode(ids[p - 8 : p]).replace(" ", "").endswith("<|im_start|>assistant\n")
    assert counts == [1, 4, 5, 7, 13]


@pytest.mark.slow
@pytest.mark.parametrize("llm,adp", KINDS)
def test_scores_match_the_official_code(folders, scorers, llm, adp):
    from internvl_oracle import Official

    src, _ = folders[(llm, adp)]
    off = Official(src)
    sc = scorers[(llm, adp)]
    worst = 0.0
    for w, h in ORACLE_SIZES:
        img = _image(w, h, seed=w)
        want, ids, positions, _ = off.score(img, ITEM["question"], ITEM["steps"])
        item = {**ITEM, "images": [img]}
        enc = sc.encode_item(item)
        assert enc.inputs["input_ids"][0].tolist() == ids
        assert [p - 1 for p in enc.label_positions] == positions
        runs = [sc.score_steps([item, {**item, "steps": item["steps"][:2]}])[0]]
        if w == 448:
            runs.append(sc.score_per_prefix(item))  # the plain slow path too
        for got in runs:
            worst = max(worst, max(abs(a - b) for a, b in zip(got, want)))
    assert worst < 1e-4, worst


def test_max_tiles_and_official(folders):
    from visualprm.scoring import Scorer

    src, dst = folders[("qwen2", True)]
    sc = Scorer.from_pretrained(str(dst), max_tiles=6)
    img = _image(1300, 1000)
    enc = sc.encode_item({**ITEM, "images": [img]})
    assert np.abs(enc.inputs["pixel_values"].numpy() - expected_pixels(img, hi=6)).max() < 1e-5
    assert enc.inputs["pixel_values"].shape[0] == 7


# -- negative controls: each must move the scores -------------------------------------------------------------


def test_negative_controls_differ(folders, scorers, tmp_path, monkeypatch):
    from visualprm import convert as cv
    from visualprm.scoring import Scorer

    item = {**ITEM, "images": [_image(700, 460)]}
    for key in (("qwen2", True), ("internlm2", True)):
        src, dst = folders[key]
        right = scorers[key].score_steps([item])[0]
        prm_prompt = Scorer.from_pretrained(str(dst), system_prompt=True).score_steps([item])[0]
        assert max(abs(a - b) for a, b in zip(right, prm_prompt)) > 1e-3
        tied = Scorer.from_pretrained(str(dst))  # what transformers' default tie_word_embeddings=True does
        tied.model.lm_head.weight.data = tied.model.get_input_embeddings().weight.data.clone()
        wrong = tied.score_steps([item])[0]
        assert max(abs(a - b) for a, b in zip(right, wrong)) > 1e-3
    src, dst = folders[("internlm2", True)]
    right = scorers[("internlm2", True)].score_steps([item])[0]
    monkeypatch.setattr(
        cv,
        "split_wqkv",
        lambda w, h, kv: tuple(w.split([w.shape[0] * h // (h + 2 * kv)] + [w.shape[0] * kv // (h + 2 * kv)] * 2)),
    )
    convert(src, tmp_path / "bad-split")
    wrong = Scorer.from_pretrained(str(tmp_path / "bad-split")).score_steps([item])[0]
    assert max(abs(a - b) for a, b in zip(right, wrong)) > 1e-3


# -- bad inputs: one line, exit 2, no DST ------------------------------------------------------------------------


def _edit_config(folder, **changes):
    cfg = json.loads((folder / "config.json").read_text())
    for k, v in changes.items():
        if k == "llm_arch":
            cfg["llm_config"]["architectures"] = [v]
        elif v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    (folder / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize(
    "case,message",
    [
        ("not_chat", "not an InternVL chat checkpoint"),
        ("missing_shard", "missing shard model-00002-of-00002.safetensors"),
        ("ps_v1", "ps_version 'v1' is not supported"),
        ("unknown_llm", "unknown LLM type 'Phi3ForCausalLM'"),
        ("dst_exists", "already exists (pass --overwrite"),
        ("tokenizer", "the converted tokenizer differs from the original (sentencepiece tokenizer.model) at token"),
    ],
)
def test_bad_input_one_line_exit_2_no_dst(folders, tmp_path, capsys, case, message):
    src = tmp_path / "src"
    if case == "tokenizer":  # NFKC normalization and whitespace collapsing: no exact fast tokenizer here
        write_original(src, "internlm2", normalization="nmt_nfkc", strip_spaces=True, n_shards=1)
    else:
        shutil.copytree(folders[("qwen2", True)][0], src)
    dst = tmp_path / "dst"
    if case == "not_chat":
        _edit_config(src, architectures=["Qwen2VLForConditionalGeneration"])
    elif case == "missing_shard":
        (src / "model-00002-of-00002.safetensors").unlink()
    elif case == "ps_v1":
        _edit_config(src, ps_version=None)
    elif case == "unknown_llm":
        _edit_config(src, llm_arch="Phi3ForCausalLM")
    elif case == "dst_exists":
        dst.mkdir()
        (dst / "keep.txt").write_text("mine")
    code = main(["convert", str(src), str(dst)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and message in err, err
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    if case == "dst_exists":
        assert [p.name for p in dst.iterdir()] == ["keep.txt"]
        assert main(["convert", str(src), str(dst), "--overwrite"]) == 0
        assert (dst / "visualprm.json").is_file() and not (dst / "keep.txt").exists()
    else:
        assert not dst.exists()


def test_original_folder_as_prm_names_convert(folders, tmp_path, capsys):
    src, _ = folders[("qwen2", True)]
    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps({"question": "q", "steps": ["a"]}) + "\n")
    code = main(["score", "--prm", str(src), "--input", str(inp), "--out", str(tmp_path / "o.jsonl")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "visualprm convert" in err, err


# -- commands on DST ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_score_cli_and_train_from_dst_keep_the_scores(folders, scorers, tmp_path):
    from visualprm.builddata import conversation
    from visualprm.scoring import Scorer

    _, dst = folders[("internlm2", True)]
    _image(700, 460).save(tmp_path / "a.png")
    rec = {"id": "x", "images": ["a.png"], **ITEM}
    (tmp_path / "in.jsonl").write_text(json.dumps(rec) + "\n")
    out = tmp_path / "out.jsonl"
    args = ["--input", str(tmp_path / "in.jsonl"), "--out", str(out), "--image-root", str(tmp_path)]
    assert main(["score", "--prm", str(dst), *args, "--max-tiles", "2"]) == 0
    want = Scorer.from_pretrained(str(dst), max_tiles=2).score_steps([{**ITEM, "images": [_image(700, 460)]}])[0]
    got = json.loads(out.read_text())
    assert max(abs(a - b) for a, b in zip(got["step_scores"], want)) < 1e-5
    data = tmp_path / "train.jsonl"
    recs = [
        {"id": f"r{i}", "image": ["a.png"], "conversations": conversation("Q?", ["s1", "s2"], ["+", "-"], 1, True)}
        for i in range(4)
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in recs))
    trained = tmp_path / "trained"
    args = ["--data", str(data), "--model", str(dst), "--out", str(trained), "--image-root", str(tmp_path)]
    code = main(["train", *args, "--max-steps", "1", "--lr", "0", "--eval-split", "0", "--batch-size", "2"])
    assert code == 0
    saved = json.loads((trained / "visualprm.json").read_text())
    assert saved["system_prompt"] == INTERNVL_DEFAULT_SYSTEM and saved["labels"] == ["+", "-"]
    item = {**ITEM, "images": [_image(700, 460)]}
    before = scorers[("internlm2", True)].score_steps([item])[0]
    after = Scorer.from_pretrained(str(trained)).score_steps([item])[0]
    assert max(abs(a - b) for a, b in zip(before, after)) < 1e-5


@pytest.mark.slow
def test_bon_bench_search_serve_run_on_a_converted_folder(folders, scorers, tmp_path):
    """Every command that takes --prm loads a converted folder; bon, bench and serve give the in-process scores."""
    from fastapi.testclient import TestClient

    from visualprm.client import Client
    from visualprm.scoring import Scorer
    from visualprm.server import build_app

    _, dst = folders[("qwen2", True)]
    scorer, data = scorers[("qwen2", True)], EXAMPLES
    cands = [json.loads(line) for line in (data / "candidates.jsonl").read_text().splitlines()][:2]
    (tmp_path / "c.jsonl").write_text("".join(json.dumps(c) + "\n" for c in cands))
    prm = ["--prm", str(dst), "--max-tiles", "1", "--quiet"]
    assert (
        main(
            [
                "bon",
                "--input",
                str(tmp_path / "c.jsonl"),
                "--image-root",
                str(data),
                "--out",
                str(tmp_path / "b"),
                *prm,
            ]
        )
        == 0
    )
    by_hand = Scorer.from_pretrained(str(dst), max_tiles=1)  # as the commands load it with --max-tiles 1
    picks = [json.loads(line) for line in (tmp_path / "b" / "picks.jsonl").read_text().splitlines()]
    for c, p in zip(cands, picks):
        want = by_hand.score_steps(
            [
                {"question": c["question"], "images": [Image.open(data / c["images"][0]).convert("RGB")], "steps": r}
                for r in c["responses"]
            ]
        )
        means = [sum(s) / len(s) for s in want]
        assert p["best"] == int(np.argmax(means)) and max(abs(a - b) for a, b in zip(p["scores"], means)) < 1e-5
    bench = tmp_path / "v.jsonl"
    bench.write_text("".join((data / "visualprocessbench.jsonl").read_text().splitlines(keepends=True)[:3]))
    assert main(["bench", "--bench", str(bench), "--image-root", str(data), "--out", str(tmp_path / "v"), *prm]) == 0
    first = json.loads((tmp_path / "v" / "samples.jsonl").read_text().splitlines()[0])
    rec = json.loads(bench.read_text().splitlines()[0])
    img = Image.open(data / rec["image"][0]).convert("RGB")
    want = by_hand.score_steps([{"question": rec["question"], "images": [img], "steps": rec["response"]["steps"]}])[0]
    assert max(abs(a - b) for a, b in zip(first["step_scores"], want)) < 1e-5
    args = ["--policy", "synthetic", "--problems", str(data / "problems.jsonl"), "--limit", "2", "--method", "bon"]
    assert main(["search", *args, "--width", "2", "--expand", "1", "--out", str(tmp_path / "s"), *prm]) == 0
    assert len((tmp_path / "s" / "samples.jsonl").read_text().splitlines()) == 2
    with TestClient(build_app(by_hand)) as tc:
        got = Client(http=tc, retries=0).score(
            rec["question"], [rec["response"]["steps"]], images=[str(data / rec["image"][0])]
        )
    assert max(abs(a - b) for a, b in zip(got[0]["step_scores"], want)) < 1e-5
    assert scorer.system_prompt == by_hand.system_prompt == "You are a careful grader."
