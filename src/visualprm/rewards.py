"""PRM rewards for RL trainers, in the shape TRL's `GRPOTrainer` expects for `reward_funcs`.

    from visualprm.rewards import prm_reward, answer_reward
    prm = prm_reward(Scorer.from_pretrained("out/prm"), aggregate="mean")        # in-process
    prm = prm_reward(url="http://127.0.0.1:8000", aggregate="min")               # `visualprm serve`
    prm = prm_reward("openai:/models/prm@http://gpu1:8000,http://gpu2:8000")     # vLLM / SGLang servers
    trainer = GRPOTrainer(model=..., reward_funcs=[prm, answer_reward()], ...)

A reward function is called as `reward(prompts, completions, **columns)`, where `columns` are the dataset's other
columns, one value per completion (TRL also passes `completion_ids`, `trainer_state`, ...; they are ignored), and
returns one float per completion. Prompts and completions are strings or chat message lists (`content` a string
or a list of `{"type": "text"|"image", ...}` parts).

What the PRM sees: the question is the `question` column when there is one (it should be the text the policy
saw), else the text of the prompt's last user message. Images come from the `images` (a list per row) or `image`
column, else from the image parts of the prompt; each may be a PIL image, a path, or bytes. The completion is split
into steps (blank lines by default; `splitter` takes the same specs as `score --splitter`, `module:function`
included), scored, and reduced with `aggregate` (`mean`, the paper's best for picking answers, `min`, `last`, also
`max`, `prod`). An empty completion gets `empty_reward`. With `per_step=True` the function returns each
completion's list of step scores instead: TRL's trainer cannot use those, but a trainer with process-level
advantages can (`process_advantages` computes GRPO's process-supervision advantages from them, DeepSeekMath
§4.1.3).

Backends give the same numbers: completions are scored one prompt group at a time (one `score_steps` call or one
HTTP request per distinct question + images), and values are rounded to 6 decimals as the service returns them.
`answer_reward` is the outcome reward: 1.0 when the completion's final answer is correct (`answers.check`, or your
own `module:function` checker), else 0.0.

This module does not train anything and does not start a server.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .client import RemoteScorer  # noqa: F401  (re-exported: rewards.RemoteScorer)
from .schema import InputError

# Columns TRL adds to the keyword arguments that are not dataset columns.
TRAINER_KWARGS = ("completion_ids", "trainer_state", "log_extra", "log_metric", "environments")


# ---------------------------------------------------------------------------------------------------------------
# Reading TRL's inputs


def message_text(msg: Any) -> str:
    """The text of a string, a message `{"role", "content"}` or a list of messages (text parts joined)."""
    if msg is None:
        return ""
    if isinstance(msg, str):
        return msg
    if isinstance(msg, list):
        return "".join(message_text(m) for m in msg)
    if isinstance(msg, dict):
        if "content" in msg:
            return message_text(msg["content"])
        if msg.get("type") == "text":
            return str(msg.get("text", ""))
        return ""
    raise InputError(f"cannot read text from a {type(msg).__name__}", field="completions")


def prompt_question(prompt: Any) -> str:
    """The question in a prompt: the string, or the text of the last user message of a conversation."""
    if isinstance(prompt, str):
        return prompt
    users = [m for m in prompt or [] if isinstance(m, dict) and m.get("role") == "user"]
    return message_text(users[-1]).strip() if users else message_text(prompt).strip()


def prompt_images(prompt: Any) -> list:
    """Image objects in the parts of a conversational prompt (`{"type": "image", "image": ...}`)."""
    out = []
    for m in prompt if isinstance(prompt, list) else []:
        content = m.get("content") if isinstance(m, dict) else None
        for part in content if isinstance(content, list) else []:
            if isinstance(part, dict) and part.get("type") == "image" and part.get("image") is not None:
                out.append(part["image"])
    return out


def to_pil(image: Any):
    """An RGB PIL image from a PIL image, a path or bytes."""
    from PIL import Image

    from .schema import Loc, load_image

    if hasattr(image, "convert"):
        return image.convert("RGB")
    if isinstance(image, (str, Path)):
        return load_image(str(image), Loc())
    if isinstance(image, (bytes, bytearray)):
        with Image.open(io.BytesIO(image)) as im:
            return im.convert("RGB")
    if isinstance(image, dict) and (image.get("bytes") or image.get("path")):  # `datasets` Image, not decoded
        return to_pil(image.get("bytes") or image["path"])
    raise InputError(f"cannot read an image from a {type(image).__name__}", field="images")


def row_images(i: int, prompt: Any, columns: dict) -> list:
    if columns.get("images") is not None:
        value = columns["images"][i]
        images = [] if value is None else list(value) if isinstance(value, (list, tuple)) else [value]
    elif columns.get("image") is not None:
        images = [] if columns["image"][i] is None else [columns["image"][i]]
    else:
        images = prompt_images(prompt)
    return [to_pil(im) for im in images]


def _group_key(question: str, images: list) -> str:
    h = hashlib.sha256(question.encode())
    for im in images:
        h.update(f"{im.size}{im.mode}".encode())
        h.update(hashlib.sha256(im.tobytes()).digest())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------------------------
# Backends


# ---------------------------------------------------------------------------------------------------------------
# Reward functions


def prm_reward(
    scorer=None,
    *,
    url: str | None = None,
    api_key: str | None = None,
    client=None,
    aggregate: str = "mean",
    per_step: bool = False,
    splitter: str | Callable | None = None,
    max_steps: int = 12,
    question_key: str = "question",
    empty_reward: float | None = 0.0,
    name: str | None = None,
    prm_options: dict | None = None,
) -> Callable[..., list]:
    """A TRL reward function scoring completions with a PRM: give `scorer` (anything with `score_steps`, e.g. a
    `Scorer` or a `remote_prm.OpenAIScorer`, or a PRM spec for `scoring.load_prm`: a folder or
    `openai:MODEL@URL[,URL2...]`, with `api_key` and `prm_options` such as `concurrency`, `prm_folder`), or
    `url` (+ `api_key`) of `visualprm serve`, or a `client.Client`. See the module docstring."""
    from .schema import load_splitter
    from .scoring import AGGREGATES
    from .scoring import aggregate as reduce

    if sum(x is not None for x in (scorer, url, client)) != 1:
        raise InputError("give exactly one of scorer, url or client", field="scorer")
    if aggregate not in AGGREGATES:
        raise InputError(f"unknown aggregate {aggregate!r}; choose from {', '.join(AGGREGATES)}", field="aggregate")
    if isinstance(scorer, str):
        from .scoring import load_prm

        scorer = load_prm(scorer, api_key=api_key, **(prm_options or {}))
    if scorer is None and client is None:
        from .client import Client

        client = Client(url, api_key=api_key, timeout=120.0)
    split = splitter if callable(splitter) else load_splitter(splitter)

    def score_group(question: str, images: list, step_lists: list[list[str]]) -> list[tuple[list[float], float]]:
        """(step scores, aggregate) per solution, rounded to 6 places; the aggregate is of the unrounded scores."""
        if scorer is not None:
            raw = scorer.score_steps([{"question": question, "images": images, "steps": s} for s in step_lists])
            return [([round(x, 6) for x in s], round(reduce(s, aggregate), 6)) for s in raw]
        res = client.score(question, step_lists, images=images or None, aggregate=aggregate)
        return [(r["step_scores"], r["score"]) for r in res]

    def reward(prompts: list, completions: list, **columns) -> list:
        if len(prompts) != len(completions):
            raise InputError(f"{len(prompts)} prompts but {len(completions)} completions", field="completions")
        qcol = columns.get(question_key)
        groups: dict[str, list[int]] = {}
        rows: list[tuple[str, list, list[str]]] = []
        for i, (prompt, completion) in enumerate(zip(prompts, completions)):
            question = str(qcol[i]) if qcol is not None else prompt_question(prompt)
            images = row_images(i, prompt, columns)
            rows.append((question, images, split(message_text(completion), max_steps)))
            if rows[-1][2]:
                groups.setdefault(_group_key(question, images), []).append(i)
        out: list = [[] if per_step else empty_reward for _ in rows]
        if hasattr(scorer, "engine_counts"):  # a served PRM: every group's requests in flight together
            gs = [{"question": rows[ix[0]][0], "images": rows[ix[0]][1], "solutions": [rows[i][2] for i in ix]}
                  for ix in groups.values()]  # fmt: skip
            for idx, raw in zip(groups.values(), scorer.score_groups(gs)):
                for i, s in zip(idx, raw):
                    out[i] = [round(x, 6) for x in s] if per_step else round(reduce(s, aggregate), 6)
            return out
        for idx in groups.values():  # one scorer call or one HTTP request per prompt group
            question, images, _ = rows[idx[0]]
            for i, (steps, agg) in zip(idx, score_group(question, images, [rows[i][2] for i in idx])):
                out[i] = steps if per_step else agg
        return out

    reward.__name__ = name or f"prm_{aggregate}" + ("_steps" if per_step else "")
    reward.__qualname__ = reward.__name__
    return reward


def answer_reward(checker: str | Callable | None = None, answer_key: str = "answer", name: str = "answer") -> Callable:
    """Outcome reward: 1.0 when the completion's answer is correct, else 0.0. The checker gets the row's columns
    as the record (`answer` from `answer_key`), so a `module:function` checker can read task-specific fields."""
    from .answers import load_checker

    check = checker if callable(checker) else load_checker(checker)

    def reward(prompts: list, completions: list, **columns) -> list[float]:
        if columns.get(answer_key) is None:
            raise InputError(f"the dataset has no {answer_key!r} column", field=answer_key)
        cols = {k: v for k, v in columns.items() if k not in TRAINER_KWARGS and isinstance(v, list)}
        out = []
        for i, completion in enumerate(completions):
            record = {k: v[i] for k, v in cols.items()}
            record["answer"] = columns[answer_key][i]
            v = check(message_text(completion), record)
            out.append(1.0 if (v if isinstance(v, bool) else v["correct"]) else 0.0)
        return out

    reward.__name__ = reward.__qualname__ = name
    return reward


def process_advantages(step_rewards: list[list[float]], eps: float = 1e-6) -> list[list[float]]:
    """GRPO with process supervision (DeepSeekMath §4.1.3) for one group of completions of the same prompt: every
    step reward is normalised by the mean and standard deviation of all step rewards in the group, and a step's
    advantage (for each token of that step) is the sum of the normalised rewards of that step and the later ones.
    An empty completion gets an empty list."""
    flat = [r for rs in step_rewards for r in rs]
    if not flat:
        return [[] for _ in step_rewards]
    mean = sum(flat) / len(flat)
    std = (sum((r - mean) ** 2 for r in flat) / len(flat)) ** 0.5
    out = []
    for rs in step_rewards:
        norm = [(r - mean) / (std + eps) for r in rs]
        acc, adv = 0.0, []
        for r in reversed(norm):
            acc += r
            adv.append(acc)
        out.append(adv[::-1])
    return out
