"""The `Policy` protocol (what the Monte-Carlo labeller, search and the demo need from a policy MLLM) and its
backends: `openai:MODEL@URL`, `hf:PATH`, `vllm:PATH_OR_ID`, `synthetic`.

One method does both jobs of a policy: `generate(requests)` samples `n` texts for each request, continuing
`request.prefix` (a partial assistant response; "" for a fresh solution). It returns only the generated text;
the full response is `prefix + text`. Backends import their engines inside the functions that use them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


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
