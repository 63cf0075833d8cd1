"""A tiny OpenAI-compatible chat server for tests: answers with the synthetic policy, can inject failures.

It maps each request back to its problem by the question text and the image data URL, continues a final
assistant message when the body says `continue_final_message`, honours `n` and `seed`, and records every body.
`fail_every=k` answers every k-th chat request with HTTP 500; `hang_every=k` sleeps `hang_s` seconds before
answering every k-th (so a client with a shorter timeout sees a timeout and retries).
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from visualprm.openai_client import image_data_url
from visualprm.policy import GenRequest
from visualprm.synthetic import SyntheticPolicy


class FakeOpenAI:
    def __init__(self, problems: list[dict], model: str = "syn", fail_every: int = 0, hang_every: int = 0,
                 hang_s: float = 1.0, refuse: str | None = None):  # fmt: skip
        self.problems, self.model = problems, model
        self.fail_every, self.hang_every, self.hang_s, self.refuse = fail_every, hang_every, hang_s, refuse
        self.policy = SyntheticPolicy()
        self.bodies: list[dict] = []
        self.count = 0
        self.injected = {"500": 0, "hang": 0}
        self.lock = threading.Lock()
        self.in_flight = self.max_in_flight = 0
        self._index = {}
        for p in problems:
            key = (p["question"], tuple(image_data_url(i) for i in p["images"]))
            self._index[key] = p

    def find(self, messages: list[dict]) -> dict:
        content = messages[0]["content"]
        text = "".join(c["text"] for c in content if c["type"] == "text")
        urls = tuple(c["image_url"]["url"] for c in content if c["type"] == "image_url")
        for (q, imgs), p in self._index.items():
            if imgs == urls and q in text:
                return p
        raise KeyError("no such problem")

    def answer(self, body: dict) -> tuple[int, dict, float]:
        with self.lock:
            self.count += 1
            k = self.count
            self.bodies.append(body)
        if self.fail_every and k % self.fail_every == 0:
            self.injected["500"] += 1
            return 500, {"error": "injected"}, 0.0
        delay = 0.0
        if self.hang_every and k % self.hang_every == 0:
            self.injected["hang"] += 1
            delay = self.hang_s
        msgs = body["messages"]
        problem = self.find(msgs)
        if self.refuse and self.refuse == problem["id"]:
            return 400, {"error": {"message": "prompt too long"}}, 0.0
        prefix = ""
        if body.get("continue_final_message"):
            assert msgs[-1]["role"] == "assistant" and body.get("add_generation_prompt") is False
            prefix = msgs[-1]["content"]
        req = GenRequest(problem, prefix, n=body.get("n", 1), seed=body["seed"])
        texts = self.policy.generate([req])[0]
        choices = [{"index": i, "message": {"role": "assistant", "content": t}} for i, t in enumerate(texts)]
        return 200, {"id": f"c{k}", "object": "chat.completion", "choices": choices}, delay

    def start(self) -> str:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _send(self, status: int, obj: dict) -> None:
                data = json.dumps(obj).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def do_GET(self):
                if self.path.rstrip("/") == "/v1/models":
                    self._send(200, {"object": "list", "data": [{"id": fake.model, "object": "model"}]})
                else:
                    self._send(404, {"error": "not found"})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with fake.lock:
                    fake.in_flight += 1
                    fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
                try:
                    status, obj, delay = fake.answer(body)
                    time.sleep(delay)
                finally:
                    with fake.lock:
                        fake.in_flight -= 1
                self._send(status, obj)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
