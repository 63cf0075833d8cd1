"""Step scores from a PRM behind an OpenAI-compatible server (vLLM, SGLang, LMDeploy): `--prm openai:MODEL@URL`.

`OpenAIScorer` has the in-process `Scorer`'s methods (`score_steps`, `score_groups`), so `score`, `bon`, `bench`,
`search`, `serve` and the reward functions take it where they take a folder (`scoring.load_prm` resolves specs).

How a step is scored (REFERENCE.md §12): fixed-token prompt scoring is not available for multimodal input on the
engines, so step k of a solution is one chat request: the PRM conversation up to step k (system message, user
turn 1 with the image(s) as base64 data URLs of lossless PNGs where the in-process path places them, `+` in
every earlier assistant turn, one user turn per later step), the generation prompt, `max_tokens=1`,
`temperature=0`, `logprobs=true`, `top_logprobs` = the server's maximum (20 on vLLM by default). The server
renders the conversation with the model's own chat template. P(`+`) = softmax over the returned logprobs of the
label tokens (advantage PRM: P(`+`) - P(`-`) over `+`, `=`, `-`), which equals the in-process softmax over the
label logits. When the label token ids are known (a local copy of the PRM folder is at hand) the body also asks
for them with vLLM's `logprob_token_ids`, which returns their exact logprobs; servers that do not know the field
ignore it. A step whose label token is missing from the returned list is asked again with ten times as many
logprobs, up to `max_top_logprobs` (5000) or until the server refuses (it is not asked again). A label token still
missing is below the last returned logprob: that bound is used, the step is counted as bounded, and every output
reports the count (the figure is then approximate).

The n requests of a solution are sent together (the server's prefix cache then makes them cost about one pass),
and all solutions of a call pipeline with at most `concurrency` requests in flight per server. With several
servers (`openai:MODEL@URL1,URL2`), a problem always goes to the same server, chosen by a hash of its question
text, so its candidates and its growing prefixes meet that server's prefix cache. Requests, prompt tokens
(`usage.prompt_tokens`) and cached prompt tokens (`usage.prompt_tokens_details.cached_tokens`, where the server
reports them) are counted (`engine_counts()`).

Defaults taken from a local folder of the PRM (`prm_folder`, or MODEL itself when it names a local folder, as
when vLLM serves a path): the system message that `train` or `convert` recorded in `visualprm.json`
(`system_prompt`), the label mode, and the label tokens as this model's tokenizer writes them (`" +"` where the
template merges a space into the label, with their ids). Without a folder: the VisualPRM system prompt, value
labels `+`/`-`, unless the options say otherwise. `max_tiles` goes to the server as
`mm_processor_kwargs={"max_dynamic_patch": N}` (vLLM's InternVL processors take it; other servers and models
ignore or refuse it).

Errors: a request the server refuses (4xx: a bad key, an unknown model, too long a prompt) raises `InputError`
naming the server and its reason (exit 2); a server still down after the retries raises
`openai_client.ServerUnavailable` (exit 1); a reply without logprobs raises `InputError` saying so (exit 2).

This module does not start servers, load models or split responses; HTTP goes through openai_client.py.
"""

from __future__ import annotations

import asyncio
import base64
import io
import math
import re
import sys
import zlib
from pathlib import Path
from typing import Any

from .schema import InputError

DEFAULT_TOP_LOGPROBS = 20  # vLLM's default --max-logprobs; the OpenAI API's maximum too
MAX_TOP_LOGPROBS = 5000  # a bounded step is asked again with 10x more, up to this or the server's refusal
# The keyword options of `OpenAIScorer.from_spec` that `scoring.load_prm` routes here (the rest are in-process).
ENGINE_OPTIONS = (
    "prm_folder",
    "label_tokens",
    "top_logprobs",
    "concurrency",
    "timeout",
    "retries",
    "backoff",
    "max_tiles",
    "system_prompt",
    "label_mode",
    "extra_body",
    "send_token_ids",
    "max_top_logprobs",
)
_URL = re.compile(r"(?:https?://)?[^\s@/,]+(?::\d+)?(?:/\S*)?")


def is_engine_spec(spec: Any) -> bool:
    return isinstance(spec, str) and spec.startswith("openai:")


def parse_engine_spec(spec: str) -> tuple[str, list[str]]:
    """`openai:MODEL@URL[,URL2...]` -> (MODEL, [URL, ...]); other forms raise `InputError`."""
    m = re.fullmatch(r"(.+?)@(\S+)", spec[len("openai:") :].strip()) if is_engine_spec(spec) else None
    urls = m.group(2).split(",") if m else []
    if not m or not all(_URL.fullmatch(u) for u in urls):
        raise InputError(
            f"bad PRM spec {spec!r}; expected a folder, openai:MODEL@URL[,URL2...] (e.g. "
            "openai:/models/prm@http://host:8000) or http(s)://HOST:PORT of `visualprm serve`",
            field="prm",
        )
    return m.group(1), urls


def image_url(image: Any) -> str:
    """A base64 `data:` URL: a PIL image as lossless PNG (the pixels the in-process path sees), a path as the
    file's own bytes."""
    if isinstance(image, (str, Path)):
        from .openai_client import image_data_url

        return image_data_url(str(image))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def step_messages(question: str, steps: list[str], k: int, images: list[str], placeholder: str, system_prompt):
    """OpenAI chat messages for step k: the PRM conversation up to step k with `placeholder` in every earlier
    assistant turn, ending with the user turn of step k (the server adds the generation prompt)."""
    from .steps import PRM_SYSTEM_PROMPT, first_user_text

    msgs: list[dict] = []
    if system_prompt:
        msgs.append({"role": "system", "content": PRM_SYSTEM_PROMPT if system_prompt is True else system_prompt})
    head, tail = first_user_text(question, steps[0])
    content: list[dict] = [{"type": "text", "text": head}]
    content += [{"type": "image_url", "image_url": {"url": u}} for u in images]
    content.append({"type": "text", "text": tail})
    msgs.append({"role": "user", "content": content})
    for j in range(1, k + 1):
        msgs.append({"role": "assistant", "content": placeholder})
        msgs.append({"role": "user", "content": steps[j]})
    return msgs


def folder_tokenizer(folder: str):
    """The processor of a PRM folder, else its bare tokenizer (a folder transformers cannot load natively, such
    as an original `InternVLChatModel` release), else None with a warning: the label tokens then stay `+`/`-`."""
    from .model import load_processor

    try:
        return load_processor(folder)
    except Exception:  # noqa: BLE001 - fall back to the tokenizer alone
        pass
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(folder)
    except Exception as e:  # noqa: BLE001
        print(
            f"warning: cannot load a tokenizer from {folder} ({type(e).__name__}); label tokens as given",
            file=sys.stderr,
        )
        return None


def label_logprobs(response: dict, labels: list[str]) -> tuple[list[float], bool, int]:
    """The logprob of each label token in a reply's first generated position, whether any is a bound (the label
    was not among the returned tokens: its logprob is below the lowest one returned), and how many top logprobs
    the reply holds."""
    choices = response.get("choices") or []
    lp = (choices[0].get("logprobs") or {}) if choices else {}
    content = lp.get("content") if isinstance(lp, dict) else None
    if not content:
        raise ValueError("no logprobs")
    first = content[0]
    seen: dict[str, float] = {}
    for t in [first, *(first.get("top_logprobs") or [])]:
        if t.get("token") is None or t.get("logprob") is None:
            continue
        v = max(float(t["logprob"]), -1e4)  # -inf as some servers send it (-9999.0 or -inf)
        seen[t["token"]] = max(v, seen.get(t["token"], -math.inf))
    if not seen:
        raise ValueError("no logprobs")
    floor = min(seen.values())
    out = [seen.get(lab, floor) for lab in labels]
    return out, any(lab not in seen for lab in labels), len(first.get("top_logprobs") or [])


def score_from_logprobs(lps: list[float], label_mode: str) -> float:
    m = max(lps)
    e = [math.exp(x - m) for x in lps]
    p = [x / sum(e) for x in e]
    return p[0] if label_mode == "value" else p[0] - p[-1]


class OpenAIScorer:
    """A PRM behind OpenAI-compatible servers, with the `Scorer`'s `score_steps` / `score_groups`."""

    def __init__(
        self,
        model: str,
        urls: str | list[str],
        *,
        api_key: str | None = None,
        label_mode: str = "value",
        system_prompt: bool | str = True,
        label_tokens: list[str] | None = None,
        label_token_ids: list[int] | None = None,
        top_logprobs: int = DEFAULT_TOP_LOGPROBS,
        concurrency: int = 64,
        timeout: float = 600.0,
        retries: int = 6,
        backoff: float = 1.0,
        max_tiles: int | None = None,
        extra_body: dict | None = None,
        processor=None,
        send_token_ids: bool = True,
        max_top_logprobs: int = MAX_TOP_LOGPROBS,
    ):
        """`processor`: the PRM's processor or tokenizer, when at hand: the label tokens as it writes them and
        their ids (sent as `logprob_token_ids` unless `send_token_ids=False`, for servers that refuse unknown fields)
        unless `label_tokens` / `label_token_ids` are given."""
        from .model import ADVANTAGE_LABELS, VALUE_LABELS
        from .openai_client import api_base

        if label_mode not in ("value", "advantage"):
            raise InputError(f"unknown label mode {label_mode!r} (expected value or advantage)", field="label_mode")
        self.model = model
        self.urls = [api_base(u) for u in ([urls] if isinstance(urls, str) else urls)]
        self.api_key, self.label_mode, self.system_prompt = api_key, label_mode, system_prompt
        self.labels = VALUE_LABELS if label_mode == "value" else ADVANTAGE_LABELS
        self.placeholder = self.labels[0]
        if processor is not None and not label_tokens:  # this model's own label tokens and their ids
            from .model import get_tokenizer, label_prefix
            from .model import label_token_ids as token_ids

            try:
                prefix = label_prefix(processor, system_prompt)
            except Exception:  # noqa: BLE001 - no usable chat template here (the server has its own)
                prefix = ""
            label_token_ids = token_ids(processor, self.labels, prefix)
            label_tokens = [get_tokenizer(processor).decode([i]) for i in label_token_ids]
        self.label_tokens = list(label_tokens) if label_tokens else list(self.labels)
        if len(self.label_tokens) != len(self.labels):
            raise InputError(
                f"{len(self.label_tokens)} label tokens for the {len(self.labels)} labels {self.labels} of a "
                f"{label_mode} PRM",
                field="label_tokens",
            )
        self.label_token_ids = list(label_token_ids) if label_token_ids else None
        self.send_token_ids = send_token_ids
        if top_logprobs < 1:
            raise InputError(f"top_logprobs must be >= 1, got {top_logprobs}", field="top_logprobs")
        self.top_logprobs, self.concurrency = top_logprobs, concurrency
        self.max_top_logprobs = max(top_logprobs, max_top_logprobs)
        self.capped = [False] * len(self.urls)  # a server that refused more top logprobs is not asked again
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self.max_tiles, self.extra_body = max_tiles, dict(extra_body or {})
        self.processor = processor  # only for label tokens and `search --tokens prm`; never runs a model
        self.multimodal = True
        self.batch_size = 16  # solutions per call when `score` feeds it a file
        self.counts = {"solutions": 0, "steps": 0, "bounded_steps": 0, "requests": 0, "prompt_tokens": 0}
        self.counts["cached_tokens"] = None  # stays None unless a server reports it
        self._warned = False

    @classmethod
    def from_spec(
        cls,
        spec: str,
        *,
        api_key: str | None = None,
        prm_folder: str | None = None,
        system_prompt: bool | str | None = None,
        label_mode: str = "auto",
        label_tokens: list[str] | str | None = None,
        **kwargs,
    ) -> OpenAIScorer:
        """From `openai:MODEL@URL[,URL2...]`. `system_prompt=None` and `label_mode="auto"` take what the PRM
        folder records (`prm_folder`, else MODEL when it is a local folder), else the VisualPRM system prompt and
        value labels; the label tokens come from the folder's tokenizer unless `label_tokens` gives them."""
        model, urls = parse_engine_spec(spec)
        folder = prm_folder if prm_folder is not None else (model if Path(model).is_dir() else None)
        if folder is not None and not Path(folder).is_dir():
            raise InputError("not a folder", folder, field="prm_folder")
        saved: dict = {}
        processor = None
        if folder is not None:
            from .model import read_prm_config

            saved = read_prm_config(folder)
            processor = folder_tokenizer(folder)
        if label_mode == "auto":
            label_mode = saved.get("label_mode", "value")
        if system_prompt is None:
            system_prompt = saved.get("system_prompt", True)
        if isinstance(label_tokens, str):
            label_tokens = [t for t in label_tokens.split(",") if t]
        return cls(
            model, urls, api_key=api_key, label_mode=label_mode, system_prompt=system_prompt,
            label_tokens=label_tokens, processor=processor, **kwargs,
        )  # fmt: skip

    @property
    def name(self) -> str:
        return f"openai:{self.model}@{','.join(self.urls)}"

    # -- requests ------------------------------------------------------------------------------------------

    def body(self, messages: list[dict]) -> dict:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "max_tokens": 1,
            "temperature": 0,
            "logprobs": True,
            "top_logprobs": self.top_logprobs,
        }
        if self.label_token_ids and self.send_token_ids:
            body["logprob_token_ids"] = self.label_token_ids  # vLLM: exact logprobs of these ids
        if self.max_tiles is not None:
            body["mm_processor_kwargs"] = {"max_dynamic_patch": self.max_tiles}
        body.update(self.extra_body)
        return body

    def server_of(self, item: dict) -> int:
        if len(self.urls) == 1:
            return 0
        return zlib.crc32(item["question"].encode()) % len(self.urls)

    def _bodies(self, items: list[dict]) -> list[tuple[int, int, dict]]:
        """(item index, server, body) for every step of every item, a solution's steps together."""
        cache: dict[int, str] = {}
        out = []
        for i, it in enumerate(items):
            if not it["steps"]:
                continue
            urls = []
            for im in it.get("images") or []:
                if id(im) not in cache:
                    cache[id(im)] = image_url(im)
                urls.append(cache[id(im)])
            s = self.server_of(it)
            for k in range(len(it["steps"])):
                msgs = step_messages(it["question"], it["steps"], k, urls, self.placeholder, self.system_prompt)
                out.append((i, s, self.body(msgs)))
        return out

    async def _send(self, per_server: list[list[dict]], refusals_ok: bool = False) -> list[list[Any]]:
        """The replies per server, in order; `refusals_ok`: a refused request's `RequestError` in its place."""
        from .openai_client import RequestError, ServerUnavailable, achat_completions

        async def one(s: int, bodies: list[dict]) -> list[Any]:
            if not bodies:
                return []
            try:
                out = await achat_completions(
                    self.urls[s], self.model, bodies, concurrency=self.concurrency, retries=self.retries,
                    timeout=self.timeout, api_key=self.api_key, backoff=self.backoff, return_exceptions=refusals_ok,
                )  # fmt: skip
                for r in out:
                    if isinstance(r, BaseException) and not isinstance(r, RequestError):
                        raise r
                return out
            except RequestError as e:
                hint = " (check --api-key or $OPENAI_API_KEY)" if e.status in (401, 403) else ""
                raise InputError(f"the PRM server at {self.urls[s]} refused a request{hint}: {e}") from None
            except ServerUnavailable as e:
                msg = " ".join(f"the PRM server at {self.urls[s]} is unavailable: {e}".split())
                raise ServerUnavailable(msg) from None

        return list(await asyncio.gather(*(one(s, b) for s, b in enumerate(per_server))))

    def score_steps(self, items: list[dict]) -> list[list[float]]:
        """Step scores of solutions `{question, images: [PIL.Image or path], steps: [str]}`, one list per item."""
        from .openai_client import run_sync

        jobs = self._bodies(items)
        per_server: list[list[dict]] = [[] for _ in self.urls]
        where = []
        for i, s, body in jobs:
            where.append((i, s, len(per_server[s])))
            per_server[s].append(body)
        replies = run_sync(self._send(per_server))
        parsed = {(s, j): self._parse(replies[s][j], s) for _, s, j in where}
        n_requests = len(where) + self._ask_again(per_server, parsed)
        out: list[list[float]] = [[] for _ in items]
        bounded = 0
        for i, s, j in where:
            lps, approx, _ = parsed[(s, j)]
            bounded += approx
            out[i].append(score_from_logprobs(lps, self.label_mode))
        self.counts["solutions"] += sum(1 for it in items if it["steps"])
        self.counts["steps"] += len(where)
        self.counts["bounded_steps"] += bounded
        self.counts["requests"] += n_requests
        if where and bounded == len(where) and not self._warned:
            self._warned = True
            print(
                f"warning: no label token {self.label_tokens} was among the logprobs the server returned for any "
                "step: every score is a bound; give the PRM folder (--prm-folder) or --label-tokens",
                file=sys.stderr,
            )
        return out

    def _parse(self, reply: dict, s: int) -> tuple[list[float], bool, int]:
        self._count_usage(reply.get("usage") or {})
        try:
            return label_logprobs(reply, self.label_tokens)
        except ValueError:
            raise InputError(
                f"the PRM server at {self.urls[s]} answered without logprobs (model {self.model!r}); it does not "
                "support them or has them switched off"
            ) from None

    def _ask_again(self, per_server: list[list[dict]], parsed: dict) -> int:
        """Ask bounded steps again with 10x more top logprobs, while the server returned all it was asked for,
        up to `max_top_logprobs`, until the server refuses (remembered). Updates `parsed`; returns the requests."""
        from .openai_client import RequestError, run_sync

        k, sent = self.top_logprobs, 0
        while k < self.max_top_logprobs:
            nk = min(self.max_top_logprobs, k * 10)
            todo = [(s, j) for (s, j), (_, approx, n) in parsed.items() if approx and n >= k and not self.capped[s]]
            if not todo:
                break
            again: list[list[dict]] = [[] for _ in self.urls]
            back: list[list[int]] = [[] for _ in self.urls]
            for s, j in todo:
                again[s].append({**per_server[s][j], "top_logprobs": nk})
                back[s].append(j)
            replies = run_sync(self._send(again, refusals_ok=True))
            for s, (js, rs) in enumerate(zip(back, replies)):
                for j, r in zip(js, rs):
                    sent += 1
                    if isinstance(r, RequestError):  # more than its maximum: keep the bound
                        self.capped[s] = True
                    else:
                        parsed[(s, j)] = self._parse(r, s)
            k = nk
        return sent

    def _count_usage(self, usage: dict) -> None:
        self.counts["prompt_tokens"] += int(usage.get("prompt_tokens") or 0)
        cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
        if cached is not None:
            self.counts["cached_tokens"] = (self.counts["cached_tokens"] or 0) + int(cached)

    def score_groups(self, groups: list[dict]) -> list[list[list[float]]]:
        """Step scores for groups `{question, images, solutions: [[steps], ..]}` (Best-of-N): all requests of
        all groups in one pipelined call; each group goes to one server (its prefix cache)."""
        items = [
            {"question": g["question"], "images": g["images"], "steps": s} for g in groups for s in g["solutions"]
        ]
        flat = self.score_steps(items)
        out, k = [], 0
        for g in groups:
            out.append(flat[k : k + len(g["solutions"])])
            k += len(g["solutions"])
        return out

    def engine_counts(self) -> dict:
        """What the servers did so far: solutions, steps, bounded steps, requests, prompt and cached tokens."""
        return {"engine": self.name, "top_logprobs": self.top_logprobs, **self.counts}


def counts_line(counts: dict) -> str:
    """One line for a summary: requests, prompt tokens (cached), bounded steps."""
    cached = counts.get("cached_tokens")
    cache = f" ({cached} cached, {cached / max(1, counts['prompt_tokens']):.0%})" if cached is not None else ""
    per = counts["requests"] / max(1, counts["solutions"])
    return (
        f"{counts['requests']} requests ({per:.1f} per solution), {counts['prompt_tokens']} prompt tokens{cache}, "
        f"{counts['bounded_steps']} of {counts['steps']} steps bounded (a label token not among the logprobs "
        "returned)"
    )


# ---------------------------------------------------------------------------------------------------------------
# Command-line options (score, bon, bench, search)


def add_engine_options(p, api_key: bool = True) -> None:
    """Options for `--prm openai:MODEL@URL` (and `--system-prompt`, which applies to folders too)."""
    g = p.add_argument_group("PRM behind an OpenAI-compatible server (--prm openai:MODEL@URL[,URL2...])")
    if api_key:
        g.add_argument("--api-key", default=None, help="openai: the servers' API key (default: $OPENAI_API_KEY)")
    g.add_argument(
        "--system-prompt",
        default=None,
        help="system message TEXT (or @FILE) instead of the PRM's own (default: the one recorded in the PRM "
        "folder's visualprm.json, else the VisualPRM prompt)",
    )
    g.add_argument(
        "--prm-folder",
        default=None,
        help="openai: a local copy of the PRM folder (tokenizer + visualprm.json): its system message, label mode "
        "and label token ids (default: MODEL when it is a local folder)",
    )
    g.add_argument("--label-tokens", default=None, help="openai: label tokens as the server returns them ('+,-')")
    g.add_argument(
        "--top-logprobs",
        type=int,
        default=DEFAULT_TOP_LOGPROBS,
        help=f"openai: logprobs per step the server returns (its maximum; vLLM's default {DEFAULT_TOP_LOGPROBS})",
    )
    g.add_argument(
        "--max-top-logprobs",
        type=int,
        default=MAX_TOP_LOGPROBS,
        help="openai: ask a step whose label token was not returned again with 10x more logprobs, up to this or "
        f"the server's refusal ({MAX_TOP_LOGPROBS}; = --top-logprobs: never)",
    )
    g.add_argument(
        "--no-logprob-token-ids",
        action="store_true",
        help="openai: do not ask for the label ids' exact logprobs (vLLM's logprob_token_ids field)",
    )
    g.add_argument("--prm-concurrency", type=int, default=64, help="openai: requests in flight per server (64)")
    g.add_argument("--prm-timeout", type=float, default=600.0, help="openai: seconds per request (600)")
    g.add_argument("--prm-retries", type=int, default=6, help="openai: retries per request, with backoff (6)")


def system_prompt_arg(a) -> bool | str:
    """True (the PRM's default), False (`--no-system-prompt`) or the `--system-prompt` text (`@FILE` read)."""
    text = getattr(a, "system_prompt", None)
    if getattr(a, "no_system_prompt", False):
        if text is not None:
            raise InputError("give --system-prompt or --no-system-prompt, not both", field="system_prompt")
        return False
    if text is None:
        return True
    if text.startswith("@"):
        try:
            return Path(text[1:]).read_text(encoding="utf-8").rstrip("\n")
        except OSError as e:
            raise InputError(f"cannot read the system prompt file: {e.strerror}", text[1:]) from None
    return text


def engine_options(a) -> dict:
    """The openai: engine's options from parsed arguments (`max_tiles` where the parser has `--max-tiles`)."""
    return {
        "prm_folder": a.prm_folder,
        "label_tokens": a.label_tokens,
        "top_logprobs": a.top_logprobs,
        "concurrency": a.prm_concurrency,
        "timeout": a.prm_timeout,
        "retries": a.prm_retries,
        "max_tiles": getattr(a, "max_tiles", None),
        "send_token_ids": not a.no_logprob_token_ids,
        "max_top_logprobs": a.max_top_logprobs,
    }
