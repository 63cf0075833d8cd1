"""Scoring service: request/reply, limits and refusals, API key, image root, remote URLs, dynamic batching,
metrics, health, the client's retries; with a real tiny model: the service gives what `Scorer` and
`visualprm score` give on the same inputs."""

import asyncio
import base64
import io
import json
import re
import socket
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from visualprm import serve_inputs
from visualprm.client import AsyncClient, Client, ServiceError, score_payload
from visualprm.server import FakeScorer, build_app, fake_step_scores
from visualprm.steps import split_steps


def png(size=(8, 8), color=(255, 0, 0)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def expected(question, steps, images=(), how="mean"):
    s = fake_step_scores({"question": question, "images": list(images), "steps": steps})
    agg = {"mean": sum(s) / len(s), "min": min(s), "max": max(s), "last": s[-1]}[how]
    return {"step_scores": [round(x, 6) for x in s], "score": round(agg, 6)}


@contextmanager
def client_for(scorer=None, api_key=None, **options):
    app = build_app(scorer or FakeScorer(), api_key=api_key, **options)
    with TestClient(app) as tc:
        yield Client(http=tc, api_key=api_key, retries=0), tc


def refused(tc, body, status, limit=None, headers=None):
    r = tc.post("/v1/score", json=body, headers=headers or {})
    assert r.status_code == status, r.text
    if limit is not None:
        assert r.json()["limit"] == limit
        assert limit in r.json()["detail"] or status in (401, 403)
    return r.json()["detail"]


BODY = {"question": "What is 2+3?", "solutions": [{"steps": ["2+3=5", "The answer is 5."]}]}


# ---------------------------------------------------------------------------------------------------------------
# Request and reply


def test_score_reply_in_order_with_steps_and_responses():
    img = png((10, 6), (1, 2, 3))
    response = "First.\n\nSecond.\n\n\n\nThird."
    with client_for() as (c, _):
        out = c.score("Q?", [["a", "b"], response, ["c"]], images=[img], aggregate="min")
    im = Image.open(io.BytesIO(img)).convert("RGB")
    assert out == [
        expected("Q?", ["a", "b"], [im], "min"),
        expected("Q?", split_steps(response, 12), [im], "min"),
        expected("Q?", ["c"], [im], "min"),
    ]
    assert len(out[1]["step_scores"]) == 3


class TableScorer:
    """Each step's score is the number written in it."""

    def score_steps(self, items):
        return [[float(s) for s in it["steps"]] for it in items]


def test_aggregates_and_bon_pick():
    with client_for(TableScorer()) as (c, _):
        for how, want in [("mean", 0.3), ("min", 0.1), ("max", 0.5), ("last", 0.1), ("prod", 0.05)]:
            assert c.score("q", [["0.5", "0.1"]], aggregate=how)[0]["score"] == pytest.approx(want, abs=1e-9)
        pick = c.bon("q", [["0.2"], ["0.9", "0.8"], ["0.85"], ["0.9", "0.8"]], aggregate="mean")
    # (0.9 + 0.8) / 2 = 0.8500000000000001 > 0.85: the pick uses unrounded aggregates, the reply rounds them
    assert pick["best"] == 1 and pick["score"] == 0.85
    assert pick["scores"] == [0.2, 0.85, 0.85, 0.85]


def test_bon_tie_goes_to_lower_index():
    with client_for(TableScorer()) as (c, _):
        pick = c.bon("q", [["0.25"], ["0.75"], ["0.75"], ["0.5"]])
    assert (pick["best"], pick["score"], pick["scores"]) == (1, 0.75, [0.25, 0.75, 0.75, 0.5])
    assert [r["step_scores"] for r in pick["results"]] == [[0.25], [0.75], [0.75], [0.5]]


def test_malformed_requests_get_422_with_a_message():
    with client_for() as (_, tc):
        r = tc.post(
            "/v1/score", content=b'{"question": "q", "solutions": [', headers={"content-type": "application/json"}
        )
        assert r.status_code == 422 and "malformed JSON" in r.json()["detail"]
        r = tc.post("/v1/score", content=b"[1, 2]", headers={"content-type": "application/json"})
        assert r.status_code == 422 and "expected a JSON object" in r.json()["detail"]
        assert "imagez" in refused(tc, BODY | {"imagez": []}, 422)
        assert "aggregate" in refused(tc, BODY | {"aggregate": "median"}, 422)
        assert "question" in refused(tc, {"solutions": BODY["solutions"]}, 422)
        assert "exactly one" in refused(tc, BODY | {"solutions": [{"steps": ["a"], "response": "b"}]}, 422)
        assert "steps" in refused(tc, BODY | {"solutions": [{"steps": [1, 2]}]}, 422)
        assert "empty step" in refused(tc, BODY | {"solutions": [{"steps": ["a", " "]}]}, 422, "steps")
        assert "no steps" in refused(tc, BODY | {"solutions": [{"response": "\n\n"}]}, 422, "steps")
        assert "empty" in refused(tc, BODY | {"solutions": []}, 422, "solutions")
        assert "empty" in refused(tc, BODY | {"question": "  "}, 422, "question")
        assert "base64" in refused(tc, BODY | {"images": ["not base64!!"]}, 422, "images")
        assert "decode" in refused(tc, BODY | {"images": [b64(b"GIF89a not really")]}, 422, "images")
        assert tc.post("/v1/score", json=BODY).status_code == 200  # still fine afterwards


# ---------------------------------------------------------------------------------------------------------------
# Limits


def test_limits_answer_413_naming_the_limit():
    opts = dict(max_steps=3, max_solutions=2, max_images=1, max_chars=40, max_image_pixels=100, max_image_bytes=2000)
    with client_for(**opts) as (_, tc):
        assert "4 steps" in refused(tc, BODY | {"solutions": [{"steps": list("abcd")}]}, 413, "max_steps")
        refused(tc, BODY | {"solutions": [{"steps": ["a"]}] * 3}, 413, "max_solutions")
        refused(tc, BODY | {"images": [b64(png())] * 2}, 413, "max_images")
        refused(tc, BODY | {"solutions": [{"steps": ["x" * 40]}]}, 413, "max_chars")
        assert "11x10" in refused(tc, BODY | {"images": [b64(png((11, 10)))]}, 413, "max_image_pixels")
        assert tc.post("/v1/score", json=BODY | {"images": [b64(png((10, 10)))]}).status_code == 200
        refused(tc, BODY | {"images": ["A" * 4000]}, 413, "max_image_bytes")
        # a response that splits into more steps than allowed, after merging to split_steps (12) pieces
        refused(tc, BODY | {"solutions": [{"response": "a\n\nb\n\nc\n\nd"}]}, 413, "max_steps")


def test_body_size_limit_before_reading_and_while_reading():
    with client_for(max_body_bytes=500) as (_, tc):
        body = BODY | {"question": "q" * 600}
        refused(tc, body, 413, "max_body_bytes")

        def chunks():  # no Content-Length: the guard counts while reading
            yield json.dumps(body).encode()

        r = tc.post("/v1/score", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413 and r.json()["limit"] == "max_body_bytes"
        assert tc.post("/v1/score", json=BODY).status_code == 200


def test_too_many_tokens_fails_only_its_own_request_in_a_merged_batch():
    scorer = FakeScorer(delay_s=0.05, max_length=30)  # counts characters as tokens

    async def main(app):
        async with AsyncClient(http=httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t")) as c:
            good = c.score("q", [["short step"]])
            bad = c.score("q", [["a step that is far too long for thirty"]])
            return await asyncio.gather(good, bad, return_exceptions=True)

    app = build_app(scorer, max_tokens=30, max_wait_ms=50)
    good, bad = asyncio.run(main(app))
    assert good == [expected("q", ["short step"])]
    assert isinstance(bad, ServiceError) and bad.status == 413 and bad.limit == "max_tokens"
    assert "longer than max_length 30" in bad.detail
    assert scorer.batch_sizes[0] == 2  # they were merged, then retried one by one
    assert "visualprm_batch_failures_total 1" in app.state.metrics.render()


# ---------------------------------------------------------------------------------------------------------------
# Access: API key, image root, remote URLs


def test_api_key():
    with client_for(api_key="s3cret") as (c, tc):
        assert c.score("q", [["a"]]) == [expected("q", ["a"])]
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            r = tc.post("/v1/score", json=BODY, headers=headers)
            assert r.status_code == 401 and r.json()["limit"] == "api_key"
            assert r.headers["www-authenticate"] == "Bearer"
        assert tc.get("/metrics").status_code == 401
        assert tc.get("/metrics", headers={"Authorization": "bearer s3cret"}).status_code == 200
        assert tc.get("/health").status_code == 200  # for load balancers
        with pytest.raises(ServiceError) as e:
            Client(http=tc, api_key="nope").score("q", [["a"]])
        assert e.value.status == 401


def test_image_root_paths_cannot_escape(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    (root / "img.png").write_bytes(png((5, 5), (0, 0, 255)))
    (outside / "secret.png").write_bytes(png())
    (root / "link.png").symlink_to(outside / "secret.png")
    (root / "sub" / "up").symlink_to(outside, target_is_directory=True)
    (root / "inner.png").symlink_to(root / "img.png")
    with client_for(image_root=str(root)) as (c, tc):
        want = expected("q", ["a"], [Image.new("RGB", (5, 5), (0, 0, 255))])
        for ok in ("img.png", "sub/../img.png", "inner.png", str(root / "img.png")):
            assert c.score("q", [["a"]], image_paths=[ok]) == [want], ok
        for bad in (
            "../outside/secret.png",
            str(outside / "secret.png"),
            "link.png",
            "sub/up/secret.png",
            "/etc/hosts",
        ):
            assert "outside the image root" in refused(tc, BODY | {"image_paths": [bad]}, 403, "image_root"), bad
        assert "no such file" in refused(tc, BODY | {"image_paths": ["nope.png"]}, 422, "image_paths")
    with client_for() as (_, tc):  # no --image-root: paths refused
        assert "--image-root" in refused(tc, BODY | {"image_paths": ["img.png"]}, 403, "image_root")


def test_remote_urls_refused_by_default_and_private_addresses_always():
    with client_for() as (_, tc):
        detail = refused(tc, BODY | {"images": ["https://example.com/a.png"]}, 403, "allow_remote_images")
        assert "--allow-remote-images" in detail
    with client_for(allow_remote_images=True) as (_, tc):
        private = ["http://127.0.0.1:9/a.png", "http://localhost/a.png", "http://10.1.2.3/a.png"]
        private += ["http://169.254.169.254/latest/meta-data", "http://[::1]/a.png", "http://[::ffff:127.0.0.1]/a"]
        for url in private:
            assert "private, loopback or reserved" in refused(tc, BODY | {"images": [url]}, 403), url
    pub = serve_inputs.public_address
    ip = serve_inputs.ipaddress.ip_address
    assert pub(ip("8.8.8.8")) and pub(ip("2606:4700:4700::1111"))
    for a in ("192.168.0.1", "172.16.0.1", "100.64.0.1", "0.0.0.0", "224.0.0.1", "fc00::1", "fe80::1", "::"):
        assert not pub(ip(a)), a


class _ImageHandler(BaseHTTPRequestHandler):
    routes: dict = {}

    def do_GET(self):  # noqa: N802
        kind, payload = self.routes.get(self.path, ("404", b""))
        if kind == "redirect":
            self.send_response(302)
            self.send_header("Location", payload)
            self.end_headers()
            return
        if kind == "slow":
            time.sleep(1.0)
        self.send_response(200 if kind != "404" else 404)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *a):
        pass


def test_remote_images_when_allowed(monkeypatch):
    """Downloads work, with the byte cap, the timeout and redirects; loopback is let through for this test only."""
    monkeypatch.setattr(serve_inputs, "public_address", lambda a: True)
    img = png((6, 6), (9, 9, 9))
    _ImageHandler.routes = {
        "/a.png": ("ok", img),
        "/big.png": ("ok", b"x" * 5000),
        "/slow.png": ("slow", img),
        "/r": ("redirect", "/a.png"),
        "/missing": ("404", b""),
    }
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _ImageHandler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        with client_for(allow_remote_images=True, max_image_bytes=4000, remote_timeout_s=0.5) as (c, tc):
            want = [expected("q", ["a"], [Image.open(io.BytesIO(img)).convert("RGB")])]
            assert c.score("q", [["a"]], images=[f"{base}/a.png"]) == want
            assert c.score("q", [["a"]], images=[f"{base}/r"]) == want
            refused(tc, BODY | {"images": [f"{base}/big.png"]}, 413, "max_image_bytes")
            refused(tc, BODY | {"images": [f"{base}/slow.png"]}, 422, "remote_timeout_s")
            assert "HTTP 404" in refused(tc, BODY | {"images": [f"{base}/missing"]}, 422, "images")
    finally:
        httpd.shutdown()


# ---------------------------------------------------------------------------------------------------------------
# Batching, metrics, health


def _concurrent(app, n, solutions=1):
    async def main():
        transport = httpx.ASGITransport(app)
        async with AsyncClient(http=httpx.AsyncClient(transport=transport, base_url="http://t")) as c:
            calls = [c.score(f"question {i}", [[f"step {i}", f"s{k}"] for k in range(solutions)]) for i in range(n)]
            return await asyncio.gather(*calls)

    return asyncio.run(main())


def test_batching_merges_concurrent_requests():
    scorer = FakeScorer(delay_s=0.05)
    app = build_app(scorer, max_batch_size=8, max_wait_ms=20)
    out = _concurrent(app, 20)
    assert out == [[expected(f"question {i}", [f"step {i}", "s0"])] for i in range(20)]
    assert sum(scorer.batch_sizes) == 20
    assert max(scorer.batch_sizes) == 8 and len(scorer.batch_sizes) <= 5  # merged, and never over the bound
    text = app.state.metrics.render()
    assert f"visualprm_batch_size_count {len(scorer.batch_sizes)}" in text
    assert "visualprm_batch_size_sum 20" in text


def test_batch_size_one_never_merges_and_requests_split_across_batches():
    scorer = FakeScorer()
    _concurrent(build_app(scorer, max_batch_size=1), 6)
    assert scorer.batch_sizes == [1] * 6
    scorer = FakeScorer()
    out = _concurrent(build_app(scorer, max_batch_size=4), 1, solutions=10)
    assert scorer.batch_sizes == [4, 4, 2]
    assert out[0] == [expected("question 0", ["step 0", f"s{k}"]) for k in range(10)]


def test_metrics_text():
    with client_for() as (c, tc):
        c.score("q", [["a"], ["b"]])
        c.bon("q", [["a"]])
        tc.post("/v1/score", json={"bad": 1})
        tc.get("/nowhere")
        r = tc.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = r.text
    for line in [
        'visualprm_requests_total{endpoint="/v1/score",code="200"} 1',
        'visualprm_requests_total{endpoint="/v1/score",code="422"} 1',
        'visualprm_requests_total{endpoint="/v1/bon",code="200"} 1',
        'visualprm_requests_total{endpoint="other",code="404"} 1',
        'visualprm_request_errors_total{endpoint="/v1/score"} 1',
        'visualprm_request_latency_seconds_count{endpoint="/v1/score"} 2',
        "visualprm_batch_size_count 2",
        "visualprm_batch_size_sum 3",
        'visualprm_batch_size_bucket{le="1"} 1',
        'visualprm_batch_size_bucket{le="2"} 2',
        "visualprm_solutions_scored_total 3",
        "visualprm_queue_depth 0",
        "# TYPE visualprm_request_latency_seconds histogram",
    ]:
        assert line in text.splitlines(), line
    sample = re.compile(r'^visualprm_[a-z_]+(\{[a-z_]+="[^"]*"(,[a-z_]+="[^"]*")*\})? -?[0-9.e+]+$')
    for line in text.splitlines():
        assert line.startswith("# HELP visualprm_") or line.startswith("# TYPE visualprm_") or sample.match(line), line


class BrokenScorer:
    def score_steps(self, items):
        raise RuntimeError("device lost")


def test_health_and_internal_errors(capsys):
    with client_for() as (c, tc):
        h = c.health()
        assert h["status"] == "ok" and h["queue"] == 0 and h["max_batch_size"] == 16
    with client_for(BrokenScorer()) as (c, tc):
        for _ in range(3):
            r = tc.post("/v1/score", json=BODY)
            assert r.status_code == 500 and "RuntimeError" in r.json()["detail"]
        r = tc.get("/health")
        assert r.status_code == 503 and r.json()["status"] == "failing"
    assert "device lost" in capsys.readouterr().err  # the traceback goes to the server log


def test_openapi_docs():
    with client_for() as (_, tc):
        assert tc.get("/docs").status_code == 200
        spec = tc.get("/openapi.json").json()
    assert {"/v1/score", "/v1/bon", "/health", "/metrics"} <= set(spec["paths"])
    assert "ScoreRequest" in spec["components"]["schemas"]


def test_unknown_option_lists_valid_ones():
    with pytest.raises(TypeError, match="max_batch_size"):
        build_app(FakeScorer(), max_batchsize=4)


# ---------------------------------------------------------------------------------------------------------------
# A real server on loopback: a slow client does not stall others


@contextmanager
def uvicorn_server(app):
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", port
    finally:
        server.should_exit = True
        thread.join(5)


def test_slow_client_does_not_stall_others_and_is_cut_off():
    app = build_app(FakeScorer(), body_timeout_s=2.0)
    with uvicorn_server(app) as (url, port):
        slow = socket.create_connection(("127.0.0.1", port))
        slow.sendall(
            b"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 1000\r\n\r\n{"question": '
        )
        t0 = time.perf_counter()
        with Client(url) as c:
            assert c.score("q", [["a"]]) == [expected("q", ["a"])]
        assert time.perf_counter() - t0 < 1.5  # answered long before the stalled body times out
        slow.settimeout(5)
        answer = b""
        while b"body_timeout_s" not in answer and (chunk := slow.recv(4096)):  # headers and body may come apart
            answer += chunk
        answer = answer.decode()
        slow.close()
    assert answer.startswith("HTTP/1.1 408") and "body_timeout_s" in answer


# ---------------------------------------------------------------------------------------------------------------
# Client


def test_client_retries_transient_answers_only():
    calls = []

    def handler(request):
        calls.append(request.url.path)
        if request.url.path == "/v1/score" and len(calls) < 3:
            return httpx.Response(
                503, json={"detail": "queue full", "limit": "max_queue"}, headers={"Retry-After": "0"}
            )
        if request.url.path == "/v1/bon":
            return httpx.Response(413, json={"detail": "too many", "limit": "max_steps"})
        return httpx.Response(200, json={"results": [{"step_scores": [0.5], "score": 0.5}]})

    c = Client(http=httpx.Client(transport=httpx.MockTransport(handler), base_url="http://t"), backoff_s=0)
    assert c.score("q", [["a"]]) == [{"step_scores": [0.5], "score": 0.5}]
    assert calls == ["/v1/score"] * 3
    with pytest.raises(ServiceError) as e:
        c.bon("q", [["a"]])
    assert (e.value.status, e.value.limit, calls.count("/v1/bon")) == (413, "max_steps", 1)
    c = Client(
        http=httpx.Client(transport=httpx.MockTransport(lambda r: httpx.Response(503)), base_url="http://t"),
        retries=2,
        backoff_s=0,
    )
    with pytest.raises(ServiceError):
        c.health()


def test_score_payload_shapes(tmp_path):
    (tmp_path / "a.png").write_bytes(png())
    im = Image.new("RGB", (3, 3))
    body = score_payload("q", [["s1"], "r", {"steps": ["x"]}], images=[tmp_path / "a.png", im, b"\x89PNG"])
    assert body["solutions"] == [{"steps": ["s1"]}, {"response": "r"}, {"steps": ["x"]}]
    assert base64.b64decode(body["images"][0]) == png()
    assert Image.open(io.BytesIO(base64.b64decode(body["images"][1]))).size == (3, 3)
    assert body["aggregate"] == "mean" and "image_paths" not in body


# ---------------------------------------------------------------------------------------------------------------
# A real tiny model: the service gives what the Scorer and `visualprm score` give


@pytest.mark.slow
def test_service_equals_scorer_and_score_command(tmp_path):
    torch = pytest.importorskip("torch")
    from visualprm.cli import main
    from visualprm.scoring import Scorer
    from visualprm.tiny import make_tiny_model

    prm = tmp_path / "prm"
    make_tiny_model(prm, seed=0)
    scorer = Scorer.from_pretrained(prm, batch_size=8)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # random tiny weights score about 0.5 everywhere; larger ones spread the scores
        for w in scorer.model.parameters():
            if w.dim() >= 2:
                w.copy_(torch.randn(w.shape, generator=g) * 0.3)
    scorer.model.save_pretrained(prm)

    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.png").write_bytes(png((60, 44), (200, 30, 30)))
    (tmp_path / "img" / "b.png").write_bytes(png((56, 56), (20, 30, 230)))
    question = "How many red circles are there?"
    solutions = [["There are 3.", "3 + 2 = 5.", "Final answer: 5"], "Count: 4\n\nSo the answer is 4.", ["It is 5."]]
    solutions += [["Two and two.", "Answer: 4"], "One.\n\nTwo.\n\nThree.\n\nAnswer: 3", ["5", "6", "7", "8"]]
    records = [{"id": str(i), "images": ["img/a.png"], "question": question} for i in range(len(solutions))]
    for rec, sol in zip(records, solutions):
        rec["steps" if isinstance(sol, list) else "response"] = sol
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / "out.jsonl"
    assert main(["score", "--prm", str(prm), "--input", str(tmp_path / "in.jsonl"), "--out", str(out)]) == 0
    cli_out = [json.loads(line) for line in out.read_text().splitlines()]

    app = build_app(scorer, image_root=str(tmp_path), max_batch_size=8)
    with TestClient(app) as tc:
        c = Client(http=tc)
        # One request holding the same solutions as the file: one scorer call, as `score` makes: equal exactly.
        by_path = c.score(question, solutions, image_paths=["img/a.png"])
        by_b64 = c.score(question, solutions, images=[tmp_path / "img" / "a.png"])
        pick = c.bon(question, solutions, image_paths=["img/a.png"])
    want = [{"step_scores": r["step_scores"], "score": r["score"]} for r in cli_out]
    assert by_path == want and by_b64 == want
    spread = [x for r in want for x in r["step_scores"]]
    assert max(spread) - min(spread) > 0.2  # the comparison is not between near-constant numbers
    img_a = Image.open(tmp_path / "img" / "a.png").convert("RGB")
    steps = [s if isinstance(s, list) else split_steps(s, 12) for s in solutions]
    direct = scorer.score_steps([{"question": question, "images": [img_a], "steps": st} for st in steps])
    assert [r["step_scores"] for r in want] == [[round(x, 6) for x in d] for d in direct]
    assert pick["scores"] == [r["score"] for r in want]
    assert pick["best"] == max(range(6), key=lambda i: want[i]["score"])

    # Concurrent requests on different images, merged into shared batches: equal to scoring each one alone
    # (up to float noise from the batch's shape).
    img_b = Image.open(tmp_path / "img" / "b.png").convert("RGB")
    calls = [(f"Question {i}?", [img_a if i % 2 else img_b], steps[i % 6]) for i in range(12)]

    async def concurrent():
        async with AsyncClient(http=httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t")) as ac:
            return await asyncio.gather(*[ac.score(q, [st], images=ims) for q, ims, st in calls])

    before = app.state.metrics.batch.count
    got = asyncio.run(concurrent())
    assert app.state.metrics.batch.count - before < len(calls)  # some requests shared a forward pass
    alone = [scorer.score_steps([{"question": q, "images": ims, "steps": st}])[0] for q, ims, st in calls]
    diff = max(abs(x - round(y, 6)) for g1, a1 in zip(got, alone) for x, y in zip(g1[0]["step_scores"], a1))
    assert diff <= 2e-6

    # --share-prefix: one request's solutions run as one prefix-shared group: equal up to float noise.
    shared_app = build_app(scorer, image_root=str(tmp_path), max_batch_size=8, share_prefix=True)
    with TestClient(shared_app) as tc:
        shared = Client(http=tc).score(question, solutions, image_paths=["img/a.png"])
    diff = max(abs(x - y) for s1, w1 in zip(shared, want) for x, y in zip(s1["step_scores"], w1["step_scores"]))
    assert diff <= 2e-6 and [len(s1["step_scores"]) for s1 in shared] == [len(w1["step_scores"]) for w1 in want]


def test_serve_command_checks_options_before_loading_the_model(tmp_path, capsys):
    from visualprm.cli import main

    assert main(["serve", "--prm", str(tmp_path / "no-model"), "--image-root", str(tmp_path / "nope")]) == 2
    assert "image_root" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["serve", "--prm", "x", "--max-batch-size", "0"])
    assert e.value.code == 2
