"""A small OpenAI-compatible server that serves tiny PRMs for tests and benchmarks: real next-token logprobs.

It does what vLLM's chat completions do for a PRM request: turns the OpenAI messages into the model's own chat
format (text parts, `image_url` data URLs decoded to RGB images in place), renders them with the processor's chat
template and the generation prompt, runs the model on the prompt and returns the log-softmax of the next token
as `logprobs.content[0].top_logprobs` (the `top_logprobs` best, at most `max_logprobs`, else HTTP 400), plus
the ids in `logprob_token_ids` when asked (vLLM's field), and `usage` with `prompt_tokens` and
`prompt_tokens_details.cached_tokens` from a simulated prefix cache (blocks of 16 tokens, keyed by the images).

Injected behaviour for tests: `api_key` (else 401), `fail` (a list of HTTP statuses answered to the next
requests, with Retry-After: 0), `no_logprobs` (answers without them). `models` maps a model name to
`(model, processor)`; `bodies` records every request body.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BLOCK = 16


def _image(url: str):
    from PIL import Image

    data = base64.b64decode(url.split(",", 1)[1])
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        return im.convert("RGB")


def hf_messages(messages: list[dict]) -> tuple[list[dict], list]:
    """OpenAI chat messages -> the Hugging Face multimodal layout and the images, in order."""
    out, images = [], []
    for m in messages:
        content = m["content"]
        if isinstance(content, str):
            content = [{"type": "text", "text": content}]
        parts = []
        for c in content:
            if c["type"] == "text":
                parts.append({"type": "text", "text": c["text"]})
            elif c["type"] == "image_url":
                images.append(_image(c["image_url"]["url"]))
                parts.append({"type": "image"})
        out.append({"role": m["role"], "content": parts})
    return out, images


class FakeEngine:
    def __init__(self, models: dict, api_key: str | None = None, max_logprobs: int = 20):
        self.models, self.api_key, self.max_logprobs = models, api_key, max_logprobs
        self.fail: list[int] = []
        self.no_logprobs = False
        self.bodies: list[dict] = []
        self.statuses: list[int] = []
        self.cached_total = 0
        self.prompt_total = 0
        self.lock, self.model_lock = threading.Lock(), threading.Lock()
        self._cache: set = set()

    def reset(self) -> None:
        with self.lock:
            self.bodies, self.statuses, self.fail, self.no_logprobs = [], [], [], False
            self.cached_total = self.prompt_total = 0
            self._cache = set()

    def _logprobs(self, body: dict):
        import torch

        from visualprm.model import get_tokenizer, is_multimodal

        model, processor = self.models[body["model"]]
        msgs, images = hf_messages(body["messages"])
        text = processor.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        tok = get_tokenizer(processor)
        if images and is_multimodal(processor):
            inputs = processor(text=[text], images=[images], add_special_tokens=False, return_tensors="pt")
        else:
            inputs = tok([text], add_special_tokens=False, return_tensors="pt")
        inputs = {k: v for k, v in inputs.items() if torch.is_tensor(v)}
        with self.model_lock, torch.inference_mode():
            logits = model(**inputs, use_cache=False).logits[0, -1].float()
        lp = torch.log_softmax(logits, dim=-1)
        ids = inputs["input_ids"][0].tolist()
        key = hashlib.sha256(
            json.dumps([body["model"]] + [hashlib.sha256(im.tobytes()).hexdigest() for im in images]).encode()
        )
        cached = 0
        with self.lock:
            for j in range(BLOCK, len(ids) + 1, BLOCK):
                h = (key.hexdigest(), tuple(ids[:j]))
                if h in self._cache and cached == j - BLOCK:
                    cached = j
                self._cache.add(h)
        return lp, tok, len(ids), cached

    def answer(self, body: dict, auth: str | None) -> tuple[int, dict]:
        with self.lock:
            self.bodies.append(body)
            fail = self.fail.pop(0) if self.fail else None
        if self.api_key is not None and auth != f"Bearer {self.api_key}":
            return 401, {"error": {"message": "Invalid API key", "type": "authentication_error"}}
        if fail is not None:
            return fail, {"error": {"message": f"injected {fail}"}}
        if body.get("model") not in self.models:
            return 404, {"error": {"message": f"The model `{body.get('model')}` does not exist."}}
        k = int(body.get("top_logprobs") or 0)
        if k > self.max_logprobs:
            return 400, {"error": {"message": f"top_logprobs {k} > max_logprobs {self.max_logprobs}"}}
        lp, tok, n_prompt, cached = self._logprobs(body)
        best = int(lp.argmax())
        top = lp.topk(min(k, lp.numel())).indices.tolist() if k else []
        extra = [i for i in body.get("logprob_token_ids") or [] if i not in top]
        entry = {"token": tok.decode([best]), "logprob": float(lp[best])}
        entry["top_logprobs"] = [{"token": tok.decode([i]), "logprob": float(lp[i])} for i in top + extra]
        choice = {"index": 0, "message": {"role": "assistant", "content": entry["token"]}, "finish_reason": "length"}
        choice["logprobs"] = None if self.no_logprobs or not body.get("logprobs") else {"content": [entry]}
        usage = {"prompt_tokens": n_prompt, "completion_tokens": 1, "total_tokens": n_prompt + 1}
        usage["prompt_tokens_details"] = {"cached_tokens": cached}
        with self.lock:
            self.prompt_total += n_prompt
            self.cached_total += cached
        return 200, {
            "id": "x",
            "object": "chat.completion",
            "model": body["model"],
            "choices": [choice],
            "usage": usage,
        }

    def start(self) -> str:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _send(self, status: int, obj: dict) -> None:
                data = json.dumps(obj).encode()
                with fake.lock:
                    fake.statuses.append(status)
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    if status in (429, 503):
                        self.send_header("Retry-After", "0")
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def do_GET(self):
                if self.path.rstrip("/") == "/v1/models":
                    self._send(200, {"object": "list", "data": [{"id": m, "object": "model"} for m in fake.models]})
                else:
                    self._send(404, {"error": "not found"})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path.rstrip("/") != "/v1/chat/completions":
                    self._send(404, {"error": "not found"})
                    return
                try:
                    status, obj = fake.answer(body, self.headers.get("Authorization"))
                except Exception as e:  # noqa: BLE001 - a test server answers 500 with the reason
                    status, obj = 500, {"error": {"message": f"{type(e).__name__}: {e}"}}
                self._send(status, obj)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
