"""RL rewards: TRL's call convention (strings or chat messages, dataset columns as keyword arguments, TRL's own
extra arguments), question and image sources, aggregates, per-step rewards and process advantages, the outcome
reward with a custom checker, and the same values in-process and through the HTTP service (a fake scorer, and a
real tiny model behind uvicorn on loopback)."""

import socket
import threading
import time

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from visualprm.client import Client
from visualprm.rewards import answer_reward, prm_reward, process_advantages
from visualprm.schema import InputError
from visualprm.server import FakeScorer, build_app, fake_step_scores
from visualprm.steps import split_steps

RED = Image.new("RGB", (8, 8), (255, 0, 0))
BLUE = Image.new("RGB", (8, 8), (0, 0, 255))
COMPLETIONS = ["There are 3.\n\n3 + 2 = 5.\n\nFinal answer: 5", "Two.\n\nFinal answer: 2", "", "Final answer: 7"]
TRL_EXTRAS = {"completion_ids": [[1]] * 4, "trainer_state": object(), "log_extra": None, "log_metric": None}


def want(question, image, completion, how="mean"):
    steps = split_steps(completion, 12)
    if not steps:
        return 0.0
    s = fake_step_scores({"question": question, "images": [image] if image else [], "steps": steps})
    return round({"mean": sum(s) / len(s), "min": min(s), "last": s[-1]}[how], 6)


def test_strings_question_column_and_images_column():
    f = prm_reward(FakeScorer())
    assert f.__name__ == "prm_mean"
    prompts = ["p0", "p0", "p1", "p1"]
    cols = {"question": ["Q0", "Q0", "Q1", "Q1"], "images": [[RED], [RED], [BLUE], [BLUE]], **TRL_EXTRAS}
    got = f(prompts, COMPLETIONS, **cols)
    assert got == [
        want("Q0", RED, COMPLETIONS[0]),
        want("Q0", RED, COMPLETIONS[1]),
        0.0,
        want("Q1", BLUE, COMPLETIONS[3]),
    ]
    assert got[2] == 0.0  # an empty completion gets empty_reward
    assert prm_reward(FakeScorer(), empty_reward=None)(prompts, COMPLETIONS, **cols)[2] is None


def test_chat_messages_prompt_images_and_image_column(tmp_path):
    f = prm_reward(FakeScorer(), aggregate="min")
    prompt = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "image", "image": RED}, {"type": "text", "text": "How many?"}]},
    ]
    completions = [[{"role": "assistant", "content": c}] for c in COMPLETIONS[:2]]
    completions.append([{"role": "assistant", "content": [{"type": "text", "text": COMPLETIONS[3]}]}])
    got = f([prompt] * 3, completions)  # question and image from the prompt's last user message
    assert got == [want("How many?", RED, c, "min") for c in (COMPLETIONS[0], COMPLETIONS[1], COMPLETIONS[3])]
    BLUE.save(tmp_path / "b.png")  # an `image` column holding a path (or PIL, or bytes)
    got = f(["Q"] * 2, COMPLETIONS[:2], image=[str(tmp_path / "b.png"), (tmp_path / "b.png").read_bytes()])
    assert got == [want("Q", BLUE, c, "min") for c in COMPLETIONS[:2]]
    assert prm_reward(FakeScorer())(["Q"], ["a\n\nb"]) == [want("Q", None, "a\n\nb")]  # no image at all


def test_aggregates_per_step_and_splitter():
    cols = {"question": ["Q"] * 2, "images": [[RED]] * 2}
    for how in ("mean", "min", "last"):
        assert prm_reward(FakeScorer(), aggregate=how)(["p"] * 2, COMPLETIONS[:2], **cols) == [
            want("Q", RED, c, how) for c in COMPLETIONS[:2]
        ]
    steps = prm_reward(FakeScorer(), per_step=True)(["p"] * 3, COMPLETIONS[:3], **{k: v * 2 for k, v in cols.items()})
    assert steps[2] == [] and len(steps[0]) == 3 and len(steps[1]) == 2
    assert steps[0] == [
        round(x, 6) for x in fake_step_scores({"question": "Q", "images": [RED], "steps": split_steps(COMPLETIONS[0])})
    ]
    f = prm_reward(FakeScorer(), splitter="re:\\n", per_step=True, name="prm_lines")  # one step per line
    assert f.__name__ == "prm_lines"
    assert len(f(["p"], ["a\nb\nc"], question=["Q"])[0]) == 3
    with pytest.raises(InputError, match="aggregate"):
        prm_reward(FakeScorer(), aggregate="median")
    with pytest.raises(InputError, match="exactly one"):
        prm_reward(FakeScorer(), url="http://127.0.0.1:1")


def test_process_advantages_exact():
    adv = process_advantages([[1.0, 0.0], [1.0], [0.0, 1.0, 1.0]])
    # 6 step rewards: mean 2/3, std sqrt(2)/3 (+ eps 1e-6); normalised: 1 -> 0.70710, 0 -> -1.41421
    std = 2**0.5 / 3 + 1e-6
    a, b = (1 / 3) / std, (-2 / 3) / std
    assert adv[0] == pytest.approx([a + b, b], abs=1e-12)
    assert adv[1] == pytest.approx([a], abs=1e-12)
    assert adv[2] == pytest.approx([b + 2 * a, 2 * a, a], abs=1e-12)
    assert process_advantages([[], []]) == [[], []]


def test_answer_reward_builtin_and_custom(tmp_path):
    f = answer_reward()
    assert f.__name__ == "answer"
    assert f(["p"] * 4, COMPLETIONS, answer=["5", "3", "5", "7"], **TRL_EXTRAS) == [1.0, 0.0, 0.0, 1.0]
    (tmp_path / "chk.py").write_text("def check(response, record):\n    return record['unit'] in response\n")
    g = answer_reward(f"{tmp_path / 'chk.py'}:check")
    assert g(["p"] * 2, ["5 cm", "5 m"], answer=["5", "5"], unit=["cm", "cm"]) == [1.0, 0.0]
    with pytest.raises(InputError, match="answer"):
        f(["p"], ["x"])


# ---------------------------------------------------------------------------------------------------------------
# The same values in-process and through the service


def test_same_values_in_process_and_http_fake():
    prompts = ["p0"] * 3 + ["p1"] * 3
    completions = COMPLETIONS[:2] + COMPLETIONS[3:] + COMPLETIONS[1:]
    cols = {"question": ["Q0"] * 3 + ["Q1"] * 3, "images": [[RED]] * 3 + [[BLUE]] * 3, **TRL_EXTRAS}
    scorer = FakeScorer()
    with TestClient(build_app(scorer)) as tc:
        for kw in ({"aggregate": "mean"}, {"aggregate": "last"}, {"per_step": True}):
            local = prm_reward(FakeScorer(), **kw)(prompts, completions, **cols)
            remote = prm_reward(client=Client(http=tc, retries=0), **kw)(prompts, completions, **cols)
            assert local == remote
    assert scorer.batch_sizes == [3, 2] * 3  # one request per prompt group (the empty completion is not sent)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_same_values_in_process_and_http_tiny_model(tmp_path):
    torch = pytest.importorskip("torch")
    import uvicorn

    from visualprm.scoring import Scorer
    from visualprm.tiny import make_tiny_model

    make_tiny_model(tmp_path / "prm", seed=0)
    scorer = Scorer.from_pretrained(tmp_path / "prm", batch_size=8)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # spread the scores so the comparison is not between near-constant numbers
        for w in scorer.model.parameters():
            if w.dim() >= 2:
                w.copy_(torch.randn(w.shape, generator=g) * 0.3)
    prompts = [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How many red shapes?"}]}]]
    prompts = prompts * 4 + ["What is the blue bar?"] * 4
    completions = COMPLETIONS + ["The blue bar is 3.\n\nFinal answer: 3", "", "4\n\n5", "Final answer: 3"]
    cols = {"images": [[RED]] * 4 + [[BLUE]] * 4, **TRL_EXTRAS}

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(build_app(scorer), host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        for _ in range(200):
            if server.started:
                break
            time.sleep(0.05)
        for kw in ({"aggregate": "mean"}, {"aggregate": "min"}, {"per_step": True}):
            local = prm_reward(scorer, **kw)(prompts, completions, **cols)
            remote = prm_reward(url=f"http://127.0.0.1:{port}", **kw)(prompts, completions, **cols)
            assert local == remote, kw
        spread = [x for x in prm_reward(scorer, per_step=True)(prompts, completions, **cols) for x in x]
        assert max(spread) - min(spread) > 0.1
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.mark.slow
def test_grpo_example_runs(tmp_path):
    """examples/grpo_with_prm.py: TRL's GRPOTrainer takes both reward functions and logs them (tiny models)."""
    pytest.importorskip("trl")
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, str(root / "examples" / "grpo_with_prm.py"), "--out", str(tmp_path), "--steps", "2"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    log = [row for row in json.loads((tmp_path / "log.json").read_text()) if "rewards/prm_mean/mean" in row]
    assert [row["step"] for row in log] == [1, 2]
    assert all(0.0 < row["rewards/prm_mean/mean"] < 1.0 and row["rewards/answer/mean"] == 0.0 for row in log)
