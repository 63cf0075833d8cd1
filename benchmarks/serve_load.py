"""Load test of `visualprm serve`: a real server on loopback, many concurrent clients, one request in ten malformed.

It builds a tiny random-weight PRM (or uses `--prm DIR`, or a stand-in scorer with `--fake`), starts the server
in a subprocess (`visualprm serve`, with an API key and an image root), and sends `--requests` requests from
`--clients` concurrent clients. Valid requests (1-3 solutions, steps or responses, base64 images or image paths,
/v1/score or /v1/bon) are checked against the scorer called directly in this process; malformed ones (bad JSON,
wrong fields, bad base64, not an image, too many steps / solutions / images, too many pixels, too large a body,
a path escaping the root, a remote URL, a wrong or missing API key, a missing file) must get their own 4xx.
Then it checks that the service is still healthy, and prints requests/s, p50/p99 latency and the mean batch size
(from /metrics). Last, with `--ratio-clients` clients, it measures the throughput of dynamic batching against a
second server started with `--max-batch-size 1`, in the same run.

    python benchmarks/serve_load.py [--requests 2000] [--clients 64] [--fake] [--prm DIR] [--json OUT]

Exit status 0 when every check passes (zero 5xx, every malformed request answered with the expected 4xx, every
valid one correct, healthy at the end, batching ratio >= 2), else 1.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import platform
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx

KEY = "bench-key"
LIMITS = {"max_steps": 16, "max_solutions": 8, "max_images": 4, "max_image_pixels": 1_000_000, "max_body_mb": 1.0}


def png(size, color) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------------------------------
# Requests


def valid_pool(root: Path, n: int, rng: random.Random) -> list[dict]:
    """Distinct valid requests: {endpoint, body, items (what the scorer sees)}."""
    from PIL import Image

    from visualprm.steps import split_steps

    names = sorted(p.name for p in root.glob("*.png"))
    pool = []
    for i in range(n):
        name = names[i % len(names)]
        solutions = []
        for k in range(rng.randint(1, 3)):
            n_steps = rng.randint(1, 4)
            steps = [f"Step {j + 1} of try {k}: {rng.randint(0, 99)} + {rng.randint(0, 99)}." for j in range(n_steps)]
            solutions.append({"steps": steps} if rng.random() < 0.6 else {"response": "\n\n".join(steps)})
        body = {"question": f"Problem {i}: what is shown in the picture?", "solutions": solutions}
        body["aggregate"] = rng.choice(["mean", "min", "max", "last", "prod"])
        if i % 2:
            body["images"] = [base64.b64encode((root / name).read_bytes()).decode()]
        else:
            body["image_paths"] = [name]
        image = Image.open(root / name).convert("RGB")
        items = [
            {"question": body["question"], "images": [image], "steps": s.get("steps") or split_steps(s["response"])}
            for s in solutions
        ]
        pool.append({"endpoint": "/v1/bon" if i % 3 == 0 else "/v1/score", "body": body, "items": items})
    return pool


def expected_replies(pool: list[dict], scorer) -> None:
    """The reply each valid request must get, from the scorer called directly (one solution at a time)."""
    from visualprm.scoring import aggregate

    for req in pool:
        results, raw = [], []
        for item in req["items"]:
            s = scorer.score_steps([item])[0]
            agg = aggregate(s, req["body"]["aggregate"])
            raw.append(agg)
            results.append({"step_scores": [round(x, 6) for x in s], "score": round(agg, 6)})
        req["expect"] = {"results": results}
        if req["endpoint"] == "/v1/bon":
            req["expect_best"] = [i for i, a in enumerate(raw) if abs(a - max(raw)) < 1e-5]  # near-ties: either


def malformed(kind: str, base: dict) -> tuple[str, dict, bytes, int]:
    """(endpoint, headers, body bytes, expected status) for one kind of bad request."""
    h = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    b = json.loads(json.dumps(base))
    big_png = base64.b64encode(png((1200, 1000), (1, 2, 3))).decode()
    cases = {
        "bad_json": (b'{"question": "q", "solutions": [', 422),
        "not_object": (b"[1, 2, 3]", 422),
        "missing_question": ({k: v for k, v in b.items() if k != "question"}, 422),
        "unknown_field": (b | {"imagez": []}, 422),
        "bad_aggregate": (b | {"aggregate": "median"}, 422),
        "bad_base64": (b | {"images": ["@@not base64@@"], "image_paths": []}, 422),
        "not_an_image": (b | {"images": [base64.b64encode(b"hello").decode()], "image_paths": []}, 422),
        "empty_steps": (b | {"solutions": [{"steps": []}]}, 422),
        "too_many_steps": (b | {"solutions": [{"steps": [f"s{i}" for i in range(17)]}]}, 413),
        "too_many_solutions": (b | {"solutions": [{"steps": ["a"]}] * 9}, 413),
        "too_many_images": (b | {"images": [base["images"][0]] * 5, "image_paths": []}, 413),
        "too_many_pixels": (b | {"images": [big_png], "image_paths": []}, 413),
        "body_too_large": (b | {"question": "x" * (1_100_000)}, 413),
        "path_escape": (b | {"image_paths": ["../../etc/hosts"], "images": []}, 403),
        "remote_url": (b | {"images": ["https://example.com/cat.png"], "image_paths": []}, 403),
        "missing_file": (b | {"image_paths": ["no-such.png"], "images": []}, 422),
        "wrong_key": (b, 401),
        "no_key": (b, 401),
    }
    body, status = cases[kind]
    if kind == "wrong_key":
        h["Authorization"] = "Bearer wrong"
    if kind == "no_key":
        del h["Authorization"]
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return "/v1/score", h, data, status


MALFORMED = [
    "bad_json",
    "not_object",
    "missing_question",
    "unknown_field",
    "bad_aggregate",
    "bad_base64",
    "not_an_image",
    "empty_steps",
    "too_many_steps",
    "too_many_solutions",
    "too_many_images",
    "too_many_pixels",
    "body_too_large",
    "path_escape",
    "remote_url",
    "missing_file",
    "wrong_key",
    "no_key",
]


def check_valid(req: dict, got: dict, tol: float) -> bool:
    want = req["expect"]["results"]
    res = got.get("results", [])
    if len(res) != len(want):
        return False
    for a, b in zip(res, want):
        if len(a["step_scores"]) != len(b["step_scores"]) or abs(a["score"] - b["score"]) > tol:
            return False
        if any(abs(x - y) > tol for x, y in zip(a["step_scores"], b["step_scores"])):
            return False
    if req["endpoint"] == "/v1/bon":
        return got["best"] in req["expect_best"] and got["scores"] == [r["score"] for r in res]
    return True


# ---------------------------------------------------------------------------------------------------------------
# Load


class Connection:
    """One keep-alive HTTP/1.1 connection written by hand: the load generator must cost far less CPU than the
    server it measures (httpx spent several ms per request here), since both share this machine's cores."""

    def __init__(self, url: str):
        parts = urlsplit(url)
        self.host, self.port = parts.hostname, parts.port
        self.reader = self.writer = None
        self.reconnects = 0

    async def post(self, path: str, headers: dict, body: bytes) -> tuple[int, bytes]:
        head = f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Length: {len(body)}\r\n"
        data = (head + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n").encode() + body
        for attempt in (0, 1):
            fresh = self.writer is None
            if fresh:
                self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
            try:
                self.writer.write(data)
                await self.writer.drain()
                raw = await self.reader.readuntil(b"\r\n\r\n")
            except (ConnectionError, asyncio.IncompleteReadError):
                self.close()
                if fresh or attempt:  # only a reused connection that the server had closed is tried again
                    raise
                self.reconnects += 1
                continue
            lines = raw.decode("latin-1").split("\r\n")
            status = int(lines[0].split()[1])
            hdrs = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
            payload = await self.reader.readexactly(int(hdrs.get("content-length", "0")))
            if hdrs.get("connection", "").lower() == "close":
                self.close()
            return status, payload
        raise ConnectionError("unreachable")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def run_load(url: str, jobs: list[dict], clients: int, tol: float) -> dict:
    """Send `jobs` from `clients` concurrent workers (one connection each); statuses, latencies, failures."""
    queue = list(reversed(jobs))
    latencies, failures, statuses, conns = [], [], {}, []

    async def worker():
        conn = Connection(url)
        conns.append(conn)
        while queue:
            job = queue.pop()
            t0 = time.perf_counter()
            try:
                status, body = await asyncio.wait_for(conn.post(job["endpoint"], job["headers"], job["data"]), 120)
                text = body.decode()
            except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError) as e:
                status, text = 0, f"{e.__class__.__name__}: {e}"
                conn.close()
            latencies.append(time.perf_counter() - t0)
            statuses[status] = statuses.get(status, 0) + 1
            if status != job["status"]:
                failures.append(f"{job['kind']}: expected {job['status']}, got {status}: {text[:200]}")
            elif status == 200 and not check_valid(job["req"], json.loads(text), tol):
                failures.append(f"valid request answered wrongly: {text[:300]}")
        conn.close()

    t0 = time.perf_counter()
    await asyncio.gather(*[worker() for _ in range(clients)])
    wall = time.perf_counter() - t0
    latencies.sort()
    return {
        "requests": len(jobs),
        "wall_s": wall,
        "rps": len(jobs) / wall,
        "p50_ms": 1000 * latencies[len(latencies) // 2],
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
        "statuses": dict(sorted(statuses.items())),
        "reconnects": sum(c.reconnects for c in conns),
        "failures": failures,
    }


def scorer_alone_ratio(scorer, pool: list[dict], batch_size: int) -> dict:
    """Solutions/s of the scorer alone (no server) in calls of `batch_size` vs calls of 1: about what dynamic
    batching can give on this machine and model."""
    items = [it for req in pool for it in req["items"]]
    rates = {}
    saved = getattr(scorer, "batch_size", None)
    for bs in (batch_size, 1):
        if saved is not None:
            scorer.batch_size = bs  # the Scorer splits every call into batches of its own batch_size
        t0 = time.perf_counter()
        for k in range(0, len(items), bs):
            scorer.score_steps(items[k : k + bs])
        rates[bs] = len(items) / (time.perf_counter() - t0)
    if saved is not None:
        scorer.batch_size = saved
    out = {"solutions": len(items), "batched_sps": rates[batch_size], "single_sps": rates[1]}
    out["ratio"] = rates[batch_size] / rates[1]
    print(
        f"scorer alone, {len(items)} solutions: calls of {batch_size}: {rates[batch_size]:.1f} solutions/s, calls "
        f"of 1: {rates[1]:.1f} solutions/s, ratio {out['ratio']:.2f}x (what batching gives the model alone)"
    )
    return out


def make_jobs(pool: list[dict], n: int, malformed_every: int, rng: random.Random) -> list[dict]:
    h = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    jobs = []
    for i in range(n):
        req = pool[rng.randrange(len(pool))]
        if malformed_every and i % malformed_every == malformed_every - 1:
            kind = MALFORMED[(i // malformed_every) % len(MALFORMED)]
            base = next(p for p in pool if "images" in p["body"])["body"]
            endpoint, headers, data, status = malformed(kind, base)
            jobs.append({"kind": kind, "endpoint": endpoint, "headers": headers, "data": data, "status": status})
        else:
            data = json.dumps(req["body"]).encode()
            jobs.append(
                {"kind": "valid", "endpoint": req["endpoint"], "headers": h, "data": data, "status": 200, "req": req}
            )
    return jobs


def merge(runs: list[dict]) -> dict:
    """Totals of several load runs: requests/s over their summed wall time, the worst p50, all failures."""
    n, wall = sum(r["requests"] for r in runs), sum(r["wall_s"] for r in runs)
    failures = [f for r in runs for f in r["failures"]]
    return {
        "requests": n,
        "wall_s": wall,
        "rps": n / wall,
        "p50_ms": max(r["p50_ms"] for r in runs),
        "failures": failures,
    }


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


# ---------------------------------------------------------------------------------------------------------------
# Servers


def start_server(args, prm: str | None, root: Path, max_batch_size: int, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    opts = ["--port", str(port), "--api-key", KEY, "--image-root", str(root), "--max-batch-size", str(max_batch_size)]
    opts += ["--max-wait-ms", str(args.max_wait_ms), "--log-level", "warning"]
    opts += [x for k, v in LIMITS.items() for x in (f"--{k.replace('_', '-')}", str(v))]
    if args.fake:
        cmd = [sys.executable, __file__, "--child-fake-server", "--fake-delay-ms", str(args.fake_delay_ms), *opts]
    else:
        cmd = [sys.executable, "-m", "visualprm", "serve", "--prm", prm, *opts]
        if args.torch_threads:
            cmd += ["--torch-threads", str(args.torch_threads)]
        if args.share_prefix:
            cmd += ["--share-prefix"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 300
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"server did not start:\n{log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


def child_fake_server(argv: list[str]) -> int:
    """The server process for --fake: the same app around FakeScorer (not a CLI option of `visualprm serve`)."""
    import uvicorn

    from visualprm.server import FakeScorer, build_app

    ap = argparse.ArgumentParser()
    ap.add_argument("--child-fake-server", action="store_true")
    ap.add_argument("--fake-delay-ms", type=float)
    ap.add_argument("--port", type=int)
    ap.add_argument("--api-key")
    ap.add_argument("--image-root")
    ap.add_argument("--log-level")
    for k in ("max_batch_size", "max_steps", "max_solutions", "max_images", "max_image_pixels"):
        ap.add_argument(f"--{k.replace('_', '-')}", type=int)
    ap.add_argument("--max-wait-ms", type=float)
    ap.add_argument("--max-body-mb", type=float)
    a = ap.parse_args(argv)
    scorer = FakeScorer(delay_s=a.fake_delay_ms / 1000)
    app = build_app(
        scorer,
        api_key=a.api_key,
        image_root=a.image_root,
        max_batch_size=a.max_batch_size,
        max_wait_ms=a.max_wait_ms,
        max_steps=a.max_steps,
        max_solutions=a.max_solutions,
        max_images=a.max_images,
        max_image_pixels=a.max_image_pixels,
        max_body_bytes=int(a.max_body_mb * 2**20),
    )
    uvicorn.run(app, host="127.0.0.1", port=a.port, log_level=a.log_level)
    return 0


# ---------------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--child-fake-server" in argv:
        return child_fake_server(argv)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=2000, help="requests in the main load (2000)")
    ap.add_argument("--clients", type=int, default=64, help="concurrent clients in the main load (64)")
    ap.add_argument("--malformed-every", type=int, default=10, help="one request in N is malformed (10)")
    ap.add_argument("--ratio-clients", type=int, default=32, help="concurrent clients for the batching ratio (32)")
    ap.add_argument("--ratio-requests", type=int, default=400, help="valid requests per ratio measurement (400)")
    ap.add_argument("--max-batch-size", type=int, default=16, help="the batched server's --max-batch-size (16)")
    ap.add_argument("--max-wait-ms", type=float, default=5.0, help="--max-wait-ms of both servers (5)")
    ap.add_argument("--fake", action="store_true", help="a stand-in scorer (no torch) instead of a tiny model")
    ap.add_argument("--fake-delay-ms", type=float, default=20.0, help="--fake: ms per call of n solutions * n^0.3")
    ap.add_argument("--prm", default=None, help="PRM folder (default: a tiny random-weight qwen2_vl built here)")
    ap.add_argument("--torch-threads", type=int, default=1, help="servers' --torch-threads (1; 0: default)")
    ap.add_argument("--share-prefix", action="store_true", help="servers' --share-prefix (tiny model only)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    tmp = Path(tempfile.mkdtemp(prefix="serve_load_"))
    root = tmp / "images"
    root.mkdir()
    for i, (size, color) in enumerate([((56, 56), (200, 30, 30)), ((64, 48), (20, 30, 230)), ((40, 72), (9, 200, 9))]):
        (root / f"img{i}.png").write_bytes(png(size, color))
    pool = valid_pool(root, 60, rng)

    t0 = time.time()
    if args.fake:
        from visualprm.server import FakeScorer

        scorer, prm, tol = FakeScorer(delay_s=args.fake_delay_ms / 1000), None, 0.0
    else:
        os.environ["HF_HUB_OFFLINE"] = "1"
        import torch

        from visualprm.scoring import Scorer
        from visualprm.tiny import make_tiny_model

        if args.torch_threads:
            torch.set_num_threads(args.torch_threads)  # as the servers do
        prm = args.prm or str(make_tiny_model(tmp / "tiny-prm", arch="qwen2_vl", seed=0))
        scorer = Scorer.from_pretrained(prm, batch_size=1)
        tol = 2e-6  # scores are rounded to 6 places; the batch's shape moves them by float noise only
    expected_replies(pool, scorer)
    print(f"prepared {len(pool)} distinct valid requests and their expected replies in {time.time() - t0:.1f}s")
    ceiling = scorer_alone_ratio(scorer, pool, args.max_batch_size)
    del scorer

    report: dict = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, " + ("CUDA" if _has_cuda() else "no GPU"),
        "fake": args.fake,
    }
    ok = True
    proc, url = start_server(args, prm, root, args.max_batch_size, tmp / "server.log")
    proc1, url1 = start_server(args, prm, root, 1, tmp / "server1.log")
    try:
        jobs = make_jobs(pool, args.requests, args.malformed_every, rng)
        load = asyncio.run(run_load(url, jobs, args.clients, tol))
        health = httpx.get(url + "/health", timeout=10)
        metrics_text = httpx.get(url + "/metrics", headers={"Authorization": f"Bearer {KEY}"}, timeout=10).text
        n_batches = metric(metrics_text, "visualprm_batch_size_count")
        mean_batch = metric(metrics_text, "visualprm_batch_size_sum") / max(1.0, n_batches)
        n5xx = sum(n for s, n in load["statuses"].items() if s >= 500 or s == 0)
        n_bad = sum(1 for j in jobs if j["kind"] != "valid")
        print(f"\nmain load: {args.requests} requests ({n_bad} malformed), {args.clients} concurrent clients")
        print(
            f"  requests/s {load['rps']:.1f}   p50 {load['p50_ms']:.1f} ms   p99 {load['p99_ms']:.1f} ms   "
            f"mean batch size {mean_batch:.2f} ({int(n_batches)} scorer calls)"
        )
        print(
            f"  statuses {load['statuses']}   5xx or no answer: {n5xx}   wrong answers: {len(load['failures'])}   "
            f"connections the server closed and the client reopened: {load['reconnects']}"
        )
        print(f"  health after the load: {health.status_code} {health.json()}")
        for f in load["failures"][:10]:
            print("  FAIL", f)
        ok &= n5xx == 0 and not load["failures"] and health.status_code == 200 and health.json()["status"] == "ok"
        report["main"] = {k: v for k, v in load.items() if k != "failures"} | {
            "clients": args.clients,
            "malformed": n_bad,
            "mean_batch_size": mean_batch,
            "n_5xx": n5xx,
            "wrong": len(load["failures"]),
            "healthy": health.status_code == 200,
        }

        # Batching ratio: the same valid requests against this server and one with --max-batch-size 1, in
        # alternating rounds, so that a change in the machine's other load falls on both alike.
        ratio_jobs = make_jobs(pool, args.ratio_requests, 0, rng)
        for u in (url, url1):
            asyncio.run(run_load(u, ratio_jobs[:32], args.ratio_clients, tol))  # warm up
        rounds = 4
        parts: dict[str, list] = {url: [], url1: []}
        for r in range(rounds):
            chunk = ratio_jobs[r::rounds]
            for u in (url, url1) if r % 2 == 0 else (url1, url):
                parts[u].append(asyncio.run(run_load(u, chunk, args.ratio_clients, tol)))
        batched, single = (merge(parts[u]) for u in (url, url1))
    finally:
        stop(proc)
        stop(proc1)
    ratio = batched["rps"] / single["rps"]
    print(f"\nbatching ratio, {args.ratio_clients} concurrent clients, {args.ratio_requests} valid requests each:")
    print(
        f"  --max-batch-size {args.max_batch_size}: {batched['rps']:.1f} req/s (p50 <= {batched['p50_ms']:.0f} ms)   "
        f"--max-batch-size 1: {single['rps']:.1f} req/s (p50 <= {single['p50_ms']:.0f} ms)   ratio {ratio:.2f}x"
    )
    print(f"  (for comparison, the scorer alone without the server: {ceiling['ratio']:.2f}x in this run)")
    ok &= ratio >= 2 and not batched["failures"] and not single["failures"]
    report["scorer_alone"] = ceiling
    report["ratio"] = {
        "clients": args.ratio_clients,
        "requests": args.ratio_requests,
        "batched_rps": batched["rps"],
        "single_rps": single["rps"],
        "ratio": ratio,
    }
    model = "stand-in scorer (--fake)" if args.fake else f"tiny random-weight qwen2_vl PRM ({prm})"
    print(f"\nmachine: {report['machine']}; model: {model}; result: {'PASS' if ok else 'FAIL'}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0 if ok else 1


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


if __name__ == "__main__":
    sys.exit(main())
