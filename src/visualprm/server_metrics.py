"""The `visualprm serve` metrics: request, latency, batch-size and scorer counters, and their rendering in the
Prometheus text exposition format (version 0.0.4), written by hand.

`Metrics` holds the counters (updated on the event loop thread only) and `render()` gives the `GET /metrics`
text. It does not serve HTTP, batch or score anything (server.py does), and imports nothing but the stdlib.
"""

from __future__ import annotations

import time
from typing import Any

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
ENDPOINTS = ("/v1/score", "/v1/bon", "/health", "/metrics")


class Histogram:
    def __init__(self, buckets: tuple):
        self.buckets, self.counts, self.sum, self.count = buckets, [0] * len(buckets), 0.0, 0

    def observe(self, v: float) -> None:
        self.sum += v
        self.count += 1
        for i, b in enumerate(self.buckets):
            if v <= b:
                self.counts[i] += 1

    def lines(self, name: str, labels: str = "") -> list[str]:
        sep = "," if labels else ""
        out = [f'{name}_bucket{{{labels}{sep}le="{b}"}} {c}' for b, c in zip(self.buckets, self.counts)]
        out.append(f'{name}_bucket{{{labels}{sep}le="+Inf"}} {self.count}')
        lab = f"{{{labels}}}" if labels else ""
        total = int(self.sum) if float(self.sum).is_integer() else f"{self.sum:.6f}"
        return out + [f"{name}_sum{lab} {total}", f"{name}_count{lab} {self.count}"]


class Metrics:
    """Counters updated on the event loop thread only (no lock needed)."""

    def __init__(self):
        self.requests: dict[tuple[str, int], int] = {}
        self.latency: dict[str, Histogram] = {}
        self.batch = Histogram(BATCH_BUCKETS)
        self.model_seconds = 0.0
        self.solutions = 0
        self.batch_failures = 0
        self.consecutive_failures = 0
        self.started = time.time()
        self.queue_depth = lambda: 0

    def observe_request(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests[(endpoint, status)] = self.requests.get((endpoint, status), 0) + 1
        self.latency.setdefault(endpoint, Histogram(LATENCY_BUCKETS)).observe(seconds)

    def render(self) -> str:
        errors: dict[str, int] = {}
        for (ep, code), n in self.requests.items():
            errors[ep] = errors.get(ep, 0) + n * (code >= 400)
        m = _family("requests_total", "counter", "HTTP requests by endpoint and status code.")
        m += [
            f'visualprm_requests_total{{endpoint="{ep}",code="{c}"}} {n}'
            for (ep, c), n in sorted(self.requests.items())
        ]
        m += _family("request_errors_total", "counter", "HTTP answers with status >= 400 by endpoint.")
        m += [f'visualprm_request_errors_total{{endpoint="{ep}"}} {n}' for ep, n in sorted(errors.items())]
        m += _family("request_latency_seconds", "histogram", "Time from request start to the end of the answer.")
        for ep, h in sorted(self.latency.items()):
            m += h.lines("visualprm_request_latency_seconds", f'endpoint="{ep}"')
        m += _family("batch_size", "histogram", "Solutions per scorer call.") + self.batch.lines(
            "visualprm_batch_size"
        )
        m += _family("model_seconds_total", "counter", "Time spent in the scorer.", f"{self.model_seconds:.6f}")
        m += _family("solutions_scored_total", "counter", "Solutions scored.", self.solutions)
        m += _family(
            "batch_failures_total",
            "counter",
            "Scorer calls that raised (then retried one by one).",
            self.batch_failures,
        )
        m += _family("queue_depth", "gauge", "Solutions waiting to be scored.", self.queue_depth())
        m += _family(
            "uptime_seconds", "gauge", "Seconds since the app was built.", f"{time.time() - self.started:.3f}"
        )
        return "\n".join(m) + "\n"


def _family(name: str, kind: str, help_text: str, value: Any = None) -> list[str]:
    """HELP and TYPE lines of a metric family, and its one sample when `value` is given."""
    lines = [f"# HELP visualprm_{name} {help_text}", f"# TYPE visualprm_{name} {kind}"]
    return lines + ([f"visualprm_{name} {value}"] if value is not None else [])
