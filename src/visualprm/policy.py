"""The `Policy` protocol (what the Monte-Carlo labeller, search and the demo need from a policy MLLM) and its
backends: `openai:MODEL@URL`, `hf:PATH`, `vllm:PATH_OR_ID`, `synthetic` (`load_policy(spec)`).

One method does both jobs of a policy: `generate(requests)` samples `n` texts for each request, continuing
`request.prefix` (a partial assistant response; "" for a fresh solution). It returns only the generated text;
the full response is `prefix + text`. Every request carries its own seed, so results do not depend on how
requests are batched. Backends import their engines inside the functions that use them.

The policy's prompt (`policy_prompt`): the question with short-answer instructions cut, in one of the released
VisualPRM answer-format templates (`final-answer`: "Final answer: ..", `boxed`: "Answer: \\boxed{..}"). Images go
as image items (base64 data URLs over HTTP) in front of the text, or at `<image>` placeholders when several.

Errors: a malformed spec or an unreachable server is an `InputError` (before any work); a request the server
refuses for good is a `PolicyError` (the caller skips that problem); retries exhausted is `ServerUnavailable`.
This module does not check answers or split steps.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Protocol

from .openai_client import RequestError as PolicyError  # noqa: F401  (re-exported: a refused request)
from .openai_client import ServerUnavailable  # noqa: F401
from .schema import InputError
from .steps import IMAGE_PLACEHOLDER


@dataclass
class GenRequest:
    """One generation request: `n` samples continuing `prefix` for `problem`."""

    problem: dict  # normalised problem record; `images` are absolute paths
    prefix: str = ""  # partial assistant response to continue; "" = a fresh solution
    n: int = 1
    seed: int = 0  # per-request seed, so results do not depend on batching or concurrency
    temperature: float = 1.0
    top_k: int | None = 50
    top_p: float | None = None
    stop: list[str] | None = None  # e.g. ["\n\n"] to generate one step at a time
    max_tokens: int = 4096
    meta: dict = field(default_factory=dict)


class Policy(Protocol):
    name: str

    def generate(self, requests: list[GenRequest]) -> list[list[str]]:
        """For each request, `request.n` generated texts (continuations of `request.prefix`, prefix excluded)."""
        ...

    def close(self) -> None: ...


# ---------------------------------------------------------------------------------------------------------------
# The policy's prompt (REFERENCE.md §5)

# The two instruction templates of the released VisualPRM data pipeline (v1.0 "Final answer", v1.1 boxed), kept
# word for word: the PRM is trained on `question` fields that carry them.
ANSWER_FORMATS = {
    "final-answer": (
        "Your task is to answer the question below. Give step by step reasoning before you answer, and when you're "
        'ready to answer, please use the format "Final answer: .."\n\nQuestion:\n\n{question}'
    ),
    "boxed": (
        "{question}\nAnswer the preceding question. The last line of your response should follow this format: "
        "'Answer: \\boxed{$FINAL_ANSWER}' (without quotes), where 'FINAL_ANSWER' is your conclusion based on the "
        "reasoning provided. If you are uncertain or the problem is too complex, make a reasoned guess based on the "
        "information provided. Avoid repeating steps indefinitely\u2014provide your best guess even if unsure. Think "
        "step by step logically, considering all relevant information before answering."
    ),
}

# A trailing instruction that asks for a bare answer ("Answer with the option's letter from the given choices
# directly.", "Answer the question using a single word or phrase.", "Please answer Yes or No.") would fight the
# step-by-step instruction, so it is cut (the released pipeline cuts exactly those three; this also catches their
# close variants).
_SHORT_ANSWER = re.compile(
    r"(?:\n|^|(?<=[.?!:)\]]))\s*(?:please\s+)?(?:answer|respond|reply)\b[^\n?]{0,80}?"
    r"(?:directly|single\s+(?:word|phrase|letter|number)|short\s+phrase|yes\s+or\s+no|option'?s?\s+letter|"
    r"letter\s+only|only\s+the\s+(?:letter|option|number))[^\n?]{0,40}?[.!]?\s*$",
    re.IGNORECASE,
)


def strip_short_answer_instructions(question: str) -> str:
    """The question without trailing instructions that ask for a bare answer (REFERENCE.md §5)."""
    q = question.rstrip()
    while True:
        m = _SHORT_ANSWER.search(q)
        if not m or m.start() == 0:
            return q
        q = q[: m.start()].rstrip()


def policy_prompt(problem: dict, answer_format: str = "final-answer") -> str:
    """The text the policy sees: the question (short-answer instruction cut, options listed when they are not
    in it yet) in the answer-format template. A problem's own `prompt` field wins."""
    if problem.get("prompt"):
        return problem["prompt"]
    if answer_format not in ANSWER_FORMATS:
        raise InputError(f"unknown prompt {answer_format!r}; choose from {', '.join(ANSWER_FORMATS)}", field="prompt")
    q = strip_short_answer_instructions(problem["question"])
    if q.count(IMAGE_PLACEHOLDER) == 1:  # one image: it goes in front of the text, as in the released pipeline
        q = q.replace(IMAGE_PLACEHOLDER + "\n", "").replace(IMAGE_PLACEHOLDER, "").strip()
    options = problem.get("options") or []
    if options and not all(o in q for o in options):
        q += "\nOptions:\n" + "\n".join(f"{chr(65 + i)}. {o}" for i, o in enumerate(options))
    return ANSWER_FORMATS[answer_format].replace("{question}", q)


def _user_content(text: str, images: list, image_item) -> list[dict]:
    """Text and image items; images go at their `<image>` placeholders when the counts match, else in front."""
    parts = text.split(IMAGE_PLACEHOLDER)
    if images and len(parts) - 1 == len(images):
        content: list[dict] = []
        for j, part in enumerate(parts):
            if part.strip():
                content.append({"type": "text", "text": part})
            if j < len(images):
                content.append(image_item(images[j]))
        return content
    return [image_item(im) for im in images] + [{"type": "text", "text": text}]


def openai_messages(req: GenRequest, answer_format: str = "final-answer") -> list[dict]:
    """OpenAI chat messages for a request: images as base64 data URLs; a prefix as a final assistant message."""
    from .openai_client import image_data_url

    content = _user_content(
        policy_prompt(req.problem, answer_format),
        req.problem.get("images") or [],
        lambda p: {"type": "image_url", "image_url": {"url": image_data_url(p)}},
    )
    msgs = [{"role": "user", "content": content}]
    if req.prefix:
        msgs.append({"role": "assistant", "content": req.prefix})
    return msgs


# ---------------------------------------------------------------------------------------------------------------
# openai:MODEL@URL


class OpenAIPolicy:
    """Any OpenAI-compatible server. A prefix is continued the way vLLM's server supports it (a final assistant
    message with `continue_final_message: true, add_generation_prompt: false`); the `n` samples of a request are
    one request with `n=K`, so the server computes the shared prefix once. `top_k` is a vLLM/SGLang extension:
    requests with `top_k=None` leave it out (hosted APIs reject it)."""

    def __init__(
        self,
        model: str,
        url: str,
        answer_format: str = "final-answer",
        concurrency: int = 8,
        retries: int = 6,
        timeout: float = 600.0,
        api_key: str | None = None,
        check_server: bool = True,
        backoff: float = 1.0,
    ):
        from .openai_client import api_base, probe

        self.model, self.url, self.answer_format = model, api_base(url), answer_format
        self.concurrency, self.retries, self.timeout, self.api_key, self.backoff = (
            concurrency,
            retries,
            timeout,
            api_key,
            backoff,
        )
        self.name = f"openai:{model}@{url}"
        if check_server:
            probe(self.url, model, api_key)

    def body(self, req: GenRequest, n: int | None = None, seed: int | None = None) -> dict:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": openai_messages(req, self.answer_format),
            "n": req.n if n is None else n,
            "temperature": req.temperature,
            "max_tokens": req.max_tokens,
            "seed": req.seed if seed is None else seed,
        }
        if req.top_p is not None:
            body["top_p"] = req.top_p
        if req.top_k is not None:
            body["top_k"] = req.top_k
        if req.stop:
            body["stop"] = list(req.stop)
        if req.prefix:
            body["continue_final_message"] = True
            body["add_generation_prompt"] = False
        return body

    def generate(self, requests: list[GenRequest]) -> list[list[str]]:
        from .openai_client import RequestError, chat_completions, choice_texts

        out: list[list[str]] = [[] for _ in requests]
        todo = list(range(len(requests)))
        for attempt in range(4):  # servers that ignore `n` (or return fewer choices) get asked for the rest
            bodies = []
            for i in todo:
                r = requests[i]
                seed = r.seed if attempt == 0 else (r.seed * 1_000_003 + attempt) % 2**31
                bodies.append(self.body(r, n=r.n - len(out[i]), seed=seed))
            try:
                responses = chat_completions(
                    self.url, self.model, bodies, self.concurrency, self.retries, self.timeout, self.api_key,
                    self.backoff,
                )  # fmt: skip
            except RequestError as e:
                if e.index is not None:
                    e.index = todo[e.index]
                raise
            for i, resp in zip(todo, responses):
                out[i].extend(choice_texts(resp)[: requests[i].n - len(out[i])])
            todo = [i for i in todo if len(out[i]) < requests[i].n]
            if not todo:
                return out
        raise RequestError(f"the server returned fewer than n={requests[todo[0]].n} choices four times", None, todo[0])

    def close(self) -> None:
        pass


# ---------------------------------------------------------------------------------------------------------------
# hf:PATH


class HFPolicy:
    """Local transformers `generate`. Each request is seeded on its own (`torch.manual_seed(request.seed)`) and
    its `n` samples are generated together (`num_return_sequences`, in chunks of `batch_size`), so results do not
    depend on how requests are grouped. A prefix is continued by rendering the chat with the prefix as a final
    assistant message (`continue_final_message=True`)."""

    def __init__(
        self,
        path: str,
        answer_format: str = "final-answer",
        device: str | None = None,
        dtype: str | None = None,
        batch_size: int = 8,
    ):
        from .model import get_tokenizer, is_multimodal, load_model

        self.model, self.processor = load_model(path, device=device, dtype=dtype)
        self.tokenizer = get_tokenizer(self.processor)
        self.multimodal = is_multimodal(self.processor)
        self.answer_format, self.batch_size = answer_format, max(1, batch_size)
        self.name = f"hf:{path}"

    def _inputs(self, req: GenRequest):
        from .schema import Loc, load_image

        text = policy_prompt(req.problem, self.answer_format)
        paths = req.problem.get("images") or []
        if self.multimodal:
            images = [load_image(p, Loc()) for p in paths]
            msgs: list[dict] = [{"role": "user", "content": _user_content(text, paths, lambda p: {"type": "image"})}]
            if req.prefix:
                msgs.append({"role": "assistant", "content": [{"type": "text", "text": req.prefix}]})
        else:
            images = []
            msgs = [{"role": "user", "content": text.replace(IMAGE_PLACEHOLDER, "")}]
            if req.prefix:
                msgs.append({"role": "assistant", "content": req.prefix})
        rendered = self.processor.apply_chat_template(
            msgs, tokenize=False, add_generation_prompt=not req.prefix, continue_final_message=bool(req.prefix)
        )
        if self.multimodal:
            enc = self.processor(text=[rendered], images=images or None, return_tensors="pt")
        else:
            enc = self.tokenizer([rendered], return_tensors="pt", add_special_tokens=False)
        return enc.to(self.model.device)

    def generate(self, requests: list[GenRequest]) -> list[list[str]]:
        import torch

        out = []
        for req in requests:
            enc = self._inputs(req)
            n_in = enc["input_ids"].shape[1]
            sample = req.temperature > 0
            kw: dict[str, Any] = {"do_sample": sample, "max_new_tokens": req.max_tokens}
            if sample:
                kw.update(temperature=req.temperature, top_k=req.top_k or 0, top_p=req.top_p or 1.0)
            if req.stop:
                kw.update(stop_strings=list(req.stop), tokenizer=self.tokenizer)
            pad = self.tokenizer.pad_token_id
            kw["pad_token_id"] = pad if pad is not None else self.tokenizer.eos_token_id
            torch.manual_seed(req.seed)
            texts: list[str] = []
            while len(texts) < req.n:
                k = min(self.batch_size, req.n - len(texts))
                with torch.no_grad():
                    ids = self.model.generate(**enc, num_return_sequences=k, **kw)
                texts += self.tokenizer.batch_decode(ids[:, n_in:], skip_special_tokens=True)
            out.append([_cut_at_stop(t, req.stop) for t in texts])
        return out

    def close(self) -> None:
        self.model = None


def _cut_at_stop(text: str, stop: list[str] | None) -> str:
    """OpenAI semantics: the text up to (not including) the first stop string."""
    for s in stop or []:
        j = text.find(s)
        if j >= 0:
            text = text[:j]
    return text


# ---------------------------------------------------------------------------------------------------------------
# vllm:PATH_OR_ID


class VLLMPolicy:
    """Offline vLLM (`vllm.LLM.chat`), imported only here. Fresh solutions and continuations go in two `chat`
    calls (`add_generation_prompt` vs `continue_final_message`); each request has its own `SamplingParams`
    (`n`, `seed`), so vLLM shares the prefix among the `n` samples."""

    def __init__(self, model: str, answer_format: str = "final-answer", engine_kwargs: dict | None = None):
        try:
            import vllm
        except ImportError:
            raise InputError("vllm:... needs vLLM (pip install 'visualprm[vllm]', GPU machines only)") from None
        self._vllm = vllm
        self.answer_format = answer_format
        self.llm = vllm.LLM(model=model, **(engine_kwargs or {}))
        self.name = f"vllm:{model}"

    def _params(self, req: GenRequest):
        kw: dict[str, Any] = {"n": req.n, "temperature": req.temperature, "max_tokens": req.max_tokens}
        kw["seed"] = req.seed
        if req.top_k is not None:
            kw["top_k"] = req.top_k
        if req.top_p is not None:
            kw["top_p"] = req.top_p
        if req.stop:
            kw["stop"] = list(req.stop)
        return self._vllm.SamplingParams(**kw)

    def generate(self, requests: list[GenRequest]) -> list[list[str]]:
        out: list[list[str]] = [[] for _ in requests]
        for cont in (False, True):
            idx = [i for i, r in enumerate(requests) if bool(r.prefix) == cont]
            if not idx:
                continue
            results = self.llm.chat(
                [openai_messages(requests[i], self.answer_format) for i in idx],
                sampling_params=[self._params(requests[i]) for i in idx],
                use_tqdm=False,
                add_generation_prompt=not cont,
                continue_final_message=cont,
            )
            for i, res in zip(idx, results):
                out[i] = [o.text for o in res.outputs]
        return out

    def close(self) -> None:
        self.llm = None


# ---------------------------------------------------------------------------------------------------------------
# Spec

SPEC_FORMS = (
    "synthetic[:perception=X,reasoning=X,hard=X], hf:PATH, openai:MODEL@URL (e.g. "
    "openai:Qwen/Qwen2.5-VL-7B-Instruct@http://localhost:8000), vllm:PATH_OR_ID, "
    "py:MODULE:FACTORY or py:FILE.py:FACTORY (your own policy object)"
)


def parse_policy_spec(spec: str) -> tuple[str, str, str | None]:
    """`(kind, model, url)`; a malformed spec raises `InputError` listing the valid forms."""
    s = (spec or "").strip()
    if s == "synthetic" or s.startswith("synthetic:"):
        return "synthetic", s.partition(":")[2], None
    kind, _, rest = s.partition(":")
    if kind in ("hf", "vllm") and rest.strip():
        return kind, rest.strip(), None
    if kind == "py" and ":" in rest.strip():
        return kind, rest.strip(), None
    if kind == "openai":
        m = re.fullmatch(r"(.+?)@((?:https?://)?[^\s@/]+(?::\d+)?(?:/\S*)?)", rest.strip())
        if m:
            return kind, m.group(1), m.group(2)
    raise InputError(f"bad policy spec {spec!r}; expected one of: {SPEC_FORMS}", field="policy")


def load_policy(
    spec: str,
    answer_format: str = "final-answer",
    concurrency: int = 8,
    retries: int = 6,
    timeout: float = 600.0,
    api_key: str | None = None,
    device: str | None = None,
    dtype: str | None = None,
    batch_size: int = 8,
    engine_kwargs: dict | None = None,
    backoff: float = 1.0,
) -> Policy:
    """A policy from its spec; options that do not apply to its backend are ignored. openai: probes the server
    first (unreachable -> `InputError`, before any work); `backoff` is the first retry wait in seconds. hf:
    `device`, `dtype`, `batch_size`. vllm: `engine_kwargs` for `vllm.LLM` (e.g. tensor_parallel_size)."""
    kind, model, url = parse_policy_spec(spec)
    if answer_format not in ANSWER_FORMATS:
        raise InputError(f"unknown prompt {answer_format!r}; choose from {', '.join(ANSWER_FORMATS)}", field="prompt")
    if kind == "openai":
        return OpenAIPolicy(model, url, answer_format, concurrency, retries, timeout, api_key, backoff=backoff)
    if kind == "hf":
        return HFPolicy(model, answer_format, device, dtype, batch_size)
    if kind == "vllm":
        return VLLMPolicy(model, answer_format, engine_kwargs)
    if kind == "py":  # your own Policy: FACTORY() returns an object with generate(requests) and close()
        from .schema import load_callable

        policy = load_callable(model, "policy")()
        if not callable(getattr(policy, "generate", None)):
            raise InputError(f"{model!r} returned {type(policy).__name__}, which has no generate()", field="policy")
        return policy
    from .synthetic import parse_synthetic_spec

    return parse_synthetic_spec(spec)
