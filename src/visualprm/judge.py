"""An MLLM as a step critic over an OpenAI-compatible chat API (REFERENCE.md §7: "MLLM judges are prompted to
judge each step and their text is parsed into a ±1 list").

`Judge.score_steps(items)` has the Scorer's shape, so `bench --judge` and Best-of-N can use a judge wherever they
use a PRM: each step scores 1.0 (judged correct), 0.0 (incorrect) or 0.5 (no verdict found); the mean of a
solution's step scores is the fraction of steps judged correct (missing ones count half) and works as a
Best-of-N score.

`parse_verdicts(text, n_steps)` reads replies in the forms judges actually write: a JSON list or object (also
inside a code fence), "Step 3: incorrect" / "**Step 3** - Correct" / "Steps 1-3 are correct" lines (the last
verdict for a step wins, so a closing summary overrides the analysis), numbered or bulleted lists of verdicts,
and bare sequences such as "+ + - +" or "correct, wrong". Steps without a verdict and verdicts for steps that do
not exist are counted (`missing`, `extra`), never guessed.

HTTP goes through `openai_client.chat_completions` (the client the `openai:` policy uses: bounded
concurrency, retries with backoff). This module does not start servers or load models.
"""

from __future__ import annotations

import base64
import io
import json
import re

from .schema import InputError

MISSING_SCORE = 0.5

JUDGE_SYSTEM_PROMPT = (
    "You are a meticulous grader of step-by-step solutions to math and science problems that may refer to an "
    "image. You check every step for errors in reading the image, calculation, logic and knowledge."
)

JUDGE_INSTRUCTIONS = (
    "Judge each step of the solution above on its own merits: a step is correct when everything it states is "
    "right and it follows from the question, the image and the previous steps; otherwise it is incorrect. You "
    "may reason briefly first. Finish your reply with exactly one line per step, in order, in the form\n"
    "Step 1: correct\nStep 2: incorrect\n...\nand nothing after these lines."
)


# ---------------------------------------------------------------------------------------------------------------
# Prompt


def image_data_url(image) -> str:
    """A PIL image (or a path) as a base64 PNG data URL."""
    from PIL import Image

    if not isinstance(image, Image.Image):
        with Image.open(image) as im:
            image = im.convert("RGB")
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def judge_messages(question: str, steps: list[str], images: list | None = None) -> list[dict]:
    """OpenAI chat messages: system prompt; user turn = image(s), question, numbered steps, instructions."""
    numbered = "\n\n".join(f"Step {k}: {s}" for k, s in enumerate(steps, start=1))
    text = f"### Question:\n{question}\n\n### Solution ({len(steps)} steps):\n{numbered}\n\n### Task:\n"
    text += JUDGE_INSTRUCTIONS
    content: list[dict] = [{"type": "image_url", "image_url": {"url": image_data_url(im)}} for im in images or []]
    content.append({"type": "text", "text": text})
    return [{"role": "system", "content": JUDGE_SYSTEM_PROMPT}, {"role": "user", "content": content}]


# ---------------------------------------------------------------------------------------------------------------
# Parsing

_NEG = re.compile(
    r"\b(?:in ?correct|not (?:correct|right|valid|accurate|justified)|wrong|false|invalid|erroneous|errors?|"
    r"flawed|mistaken|mistakes?|inaccurate|unjustified|fails?)\b|\bno\b(?!\s+\w)|[✗✘×❌]|"
    r"(?<![\w+\-−])[-−](?![\w\d+\-−])",
    re.IGNORECASE,
)
_POS = re.compile(
    r"\b(?:correct|true|valid|accurate|ok|okay|yes)\b|"
    r"\b(?:no|without) (?:an? )?(?:errors?|mistakes?|issues?|problems?)\b|[✓✔✅]|(?<![\w+\-])\+(?![\w\d+\-])",
    re.IGNORECASE,
)
_EXPLICIT = re.compile(r"\b(?:verdict|judge?ment|assessment|label|conclusion|evaluation|result)\s*[:=]", re.I)
# "Step 3", "**Step 3**", "Steps 1-3", "Steps 1, 2 and 4", "### Step 3"
_STEP_LABEL = re.compile(
    r"\bsteps?\s*#?\s*(\d+(?:\s*(?:-|–|to|through|,|and|&)\s*\d+)*)",
    re.IGNORECASE,
)
# a bare numbered line: "1. correct", "2) **incorrect**", "| 3 | wrong |"
_NUMBERED = re.compile(r"^\s*(?:[-*•>|]\s*)*(?:\*\*|__)?(\d+)\s*(?:\*\*|__)?\s*[.):|\-–—]\s*(.*)$")
_LIST_ITEM = re.compile(r"^\s*(?:[-*•>]|\d+[.)])\s+(.*)$")
_TOKEN_SEQ = re.compile(r"^[\s,;\[\](){}'\"+\-−✓✔✅✗✘×❌]*$")


def word_verdict(text: str, at_start: bool = False) -> bool | None:
    """The first verdict word or symbol in `text` (True correct, False incorrect), or None.

    `at_start`: only a verdict that opens the text (after punctuation and markup) counts."""
    t = text.strip()
    if t in ("1", "+1", "1.0"):
        return True
    if t in ("0", "-1", "0.0", "-1.0"):
        return False
    m_neg, m_pos = _NEG.search(t), _POS.search(t)
    hits = [(m.start(), v) for m, v in ((m_neg, False), (m_pos, True)) if m]
    if not hits:
        return None
    start, v = min(hits)
    if at_start and t[:start].strip(" *_`:.-–—|()[]\"'") != "":
        return None
    return v


def _step_numbers(spec: str) -> list[int]:
    """'3' -> [3]; '1-3' / '1 to 3' -> [1, 2, 3]; '1, 2 and 4' -> [1, 2, 4]."""
    nums: list[int] = []
    for part in re.split(r"\s*(?:,|and|&)\s*", spec):
        m = re.match(r"(\d+)\s*(?:-|–|to|through)\s*(\d+)", part)
        if m:
            a, b = int(m.group(1)), int(m.group(2))
            if b >= a and b - a < 1000:
                nums += list(range(a, b + 1))
        elif part.strip().isdigit():
            nums.append(int(part))
    return nums


def _json_value_verdict(v) -> bool | None:
    if isinstance(v, bool):
        return v
    if isinstance(v, (int, float)):
        return True if v > 0 else False
    if isinstance(v, str):
        return word_verdict(v)
    if isinstance(v, dict):
        for key in ("verdict", "correct", "is_correct", "label", "judgement", "judgment", "result", "correctness"):
            if key in v:
                return _json_value_verdict(v[key])
    return None


def _from_json(obj) -> list[tuple[int | None, bool | None]] | None:
    """(step number or None for 'next in order', verdict) pairs from a parsed JSON value, or None."""
    if isinstance(obj, list):
        out = []
        for x in obj:
            num = None
            if isinstance(x, dict):
                for key in ("step", "index", "step_number", "id", "number"):
                    if isinstance(x.get(key), int) or (isinstance(x.get(key), str) and x[key].strip().isdigit()):
                        num = int(x[key])
                        break
            out.append((num, _json_value_verdict(x)))
        return out
    if isinstance(obj, dict):
        for key in ("steps", "verdicts", "judgements", "judgments", "results", "labels", "evaluation"):
            if key in obj:
                return _from_json(obj[key])
        out = []
        for k, v in obj.items():
            m = re.search(r"(\d+)", str(k))
            if m:
                out.append((int(m.group(1)), _json_value_verdict(v)))
        return out or None
    return None


def _json_candidates(text: str):
    for m in re.finditer(r"```(?:json)?\s*(.*?)```", text, re.DOTALL | re.IGNORECASE):
        yield m.group(1)
    for open_, close in (("{", "}"), ("[", "]")):
        i, j = text.find(open_), text.rfind(close)
        if 0 <= i < j:
            yield text[i : j + 1]


def _assign(pairs, n_steps: int) -> tuple[list[bool | None], int]:
    verdicts: list[bool | None] = [None] * n_steps
    extra, nxt = 0, 1
    for num, v in pairs:
        k = nxt if num is None else num
        nxt = k + 1
        if v is None:
            continue
        if 1 <= k <= n_steps:
            verdicts[k - 1] = v
        else:
            extra += 1
    return verdicts, extra


def _labelled_pairs(text: str) -> list[tuple[int, bool]]:
    """Verdicts attached to "Step k" labels and to bare numbered lines."""
    pairs: list[tuple[int, bool]] = []
    for line in text.splitlines():
        labels = list(_STEP_LABEL.finditer(line))
        if labels:
            for i, m in enumerate(labels):
                end = labels[i + 1].start() if i + 1 < len(labels) else len(line)
                seg = line[m.end() : end]
                # "Step 1 - correct": the dash is punctuation; "Step 1: -" keeps it as the verdict
                rest = re.sub(r"^[\s:.\-–—*_|)]+", "", seg)
                seg = rest if rest.strip() else seg
                ex = _EXPLICIT.search(seg)
                v = word_verdict(seg[ex.end() :]) if ex else word_verdict(seg)
                if v is not None:
                    pairs += [(k, v) for k in _step_numbers(m.group(1))]
            continue
        m = _NUMBERED.match(line)
        if m:
            v = word_verdict(m.group(2), at_start=True)
            if v is not None:
                pairs.append((int(m.group(1)), v))
    return pairs


def parse_verdicts(text: str, n_steps: int) -> dict:
    """Per-step verdicts from a judge's reply: `{"verdicts": [True|False|None]*n, "missing", "extra", "format"}`."""
    text = text or ""
    for cand in _json_candidates(text):
        try:
            obj = json.loads(cand)
        except (json.JSONDecodeError, ValueError):
            continue
        pairs = _from_json(obj)
        if pairs and any(v is not None for _, v in pairs):
            return _result(*_assign(pairs, n_steps), "json")
    pairs = _labelled_pairs(text)
    if pairs:
        return _result(*_assign(pairs, n_steps), "labelled")
    if text.strip() and _TOKEN_SEQ.match(text):  # "+ + - +", "[+, -]", "++-"
        seq = [(None, c in "+✓✔✅") for c in text if c in "+-−✓✔✅✗✘×❌"]
        return _result(*_assign(seq, n_steps), "sequence")
    tokens = [t for t in re.split(r"[\s,;\[\](){}'\"]+", text) if t]
    if (
        "\n" not in text.strip()
        and len(tokens) > 1
        and all(word_verdict(t, at_start=True) is not None for t in tokens)
    ):
        return _result(*_assign([(None, word_verdict(t)) for t in tokens], n_steps), "sequence")
    seq = []
    for line in text.splitlines():  # "- correct" list items, or short lines that open with a verdict
        m = _LIST_ITEM.match(line)
        if m:
            v = word_verdict(m.group(1))
        else:
            v = word_verdict(line, at_start=True) if len(line.split()) <= 3 else None
        if v is not None:
            seq.append((None, v))
    if seq:
        return _result(*_assign(seq, n_steps), "list")
    return _result([None] * n_steps, 0, "none")


def _result(verdicts: list[bool | None], extra: int, fmt: str) -> dict:
    return {"verdicts": verdicts, "missing": sum(v is None for v in verdicts), "extra": extra, "format": fmt}


def verdict_scores(verdicts: list[bool | None]) -> list[float]:
    return [MISSING_SCORE if v is None else float(v) for v in verdicts]


# ---------------------------------------------------------------------------------------------------------------
# The judge


def parse_spec(spec: str) -> tuple[str, str]:
    """`openai:MODEL@URL` -> (model, URL); other forms raise `InputError`."""
    from .policy import parse_policy_spec

    try:
        kind, model, url = parse_policy_spec(spec)
    except InputError:
        kind = model = url = None
    if kind != "openai" or not model or not url:
        raise InputError(
            f"bad judge spec {spec!r}; expected openai:MODEL@URL (e.g. openai:gpt-4o@http://host:8000)", field="judge"
        )
    return model, url


class Judge:
    """An MLLM critic with the Scorer's `score_steps` / `score_groups` shape. `details` keeps, per solution judged,
    the reply and the parse counts, in order. HTTP goes through openai_client (bounded concurrency, retries)."""

    def __init__(
        self,
        model: str,
        url: str,
        api_key: str | None = None,
        concurrency: int = 8,
        retries: int = 6,
        timeout: float = 600.0,
        temperature: float = 0.0,
        max_tokens: int = 2048,
        seed: int | None = 0,
        backoff: float = 1.0,
    ):
        self.model, self.url, self.api_key = model, url, api_key
        self.concurrency, self.retries, self.timeout, self.backoff = max(1, concurrency), retries, timeout, backoff
        self.temperature, self.max_tokens, self.seed = temperature, max_tokens, seed
        self.details: list[dict] = []
        self._probed = False

    @classmethod
    def from_spec(cls, spec: str, **kw) -> Judge:
        model, url = parse_spec(spec)
        return cls(model, url, **kw)

    def body(self, item: dict) -> dict:
        body = {
            "messages": judge_messages(item["question"], item["steps"], item.get("images")),
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        }
        if self.seed is not None:
            body["seed"] = self.seed
        return body

    def judge(self, items: list[dict]) -> list[dict]:
        """Verdicts for `{question, images, steps}` items, in input order. A request the server refuses for good
        (e.g. an image it cannot take) leaves that solution without verdicts (`format: "error"`); a server that
        stays unavailable raises `openai_client.ServerUnavailable`."""
        from .openai_client import RequestError, chat_completions, choice_texts, probe

        if not self._probed:
            probe(self.url, self.model, self.api_key)
            self._probed = True
        responses = chat_completions(
            self.url,
            self.model,
            [self.body(it) for it in items],
            concurrency=self.concurrency,
            retries=self.retries,
            timeout=self.timeout,
            api_key=self.api_key,
            backoff=self.backoff,
            return_exceptions=True,
        )
        out = []
        for it, r in zip(items, responses):
            n = len(it["steps"])
            if isinstance(r, RequestError):
                out.append({"reply": None, "error": str(r), **_result([None] * n, 0, "error")})
            elif isinstance(r, BaseException):
                raise r
            else:
                texts = choice_texts(r)
                reply = texts[0] if texts else ""
                out.append({"reply": reply, **parse_verdicts(reply, n)})
        self.details += out
        return out

    def score_steps(self, items: list[dict]) -> list[list[float]]:
        return [verdict_scores(d["verdicts"]) for d in self.judge(items)]

    def score_groups(self, groups: list[dict]) -> list[list[list[float]]]:
        flat = [
            {"question": g["question"], "images": g.get("images", []), "steps": s}
            for g in groups
            for s in g["solutions"]
        ]
        scores, out, i = self.score_steps(flat), [], 0
        for g in groups:
            out.append(scores[i : i + len(g["solutions"])])
            i += len(g["solutions"])
        return out

    def summary(self) -> dict:
        """Parse counts over everything judged so far."""
        d = self.details
        return {
            "solutions": len(d),
            "missing_verdicts": sum(x["missing"] for x in d),
            "extra_verdicts": sum(x["extra"] for x in d),
            "unparsed_replies": sum(x["format"] == "none" for x in d),
            "refused_requests": sum(x["format"] == "error" for x in d),
            "formats": {f: sum(x["format"] == f for x in d) for f in sorted({x["format"] for x in d})},
        }
