"""PRM-guided search at test time (`visualprm search`): Best-of-N, step-level beam search and lookahead search,
compared at a measured generation cost.

Methods (REFERENCE.md §1; the shapes follow "Let's Verify Step by Step" and HF's search-and-learn):

- `bon`: sample N = width x expand full solutions, score them with the PRM, pick the highest aggregate (`mean`
  by default, the paper's best). With `--budget`, solutions are drawn `width` at a time until the budget is spent.
- `beam`: the policy writes one step at a time (a request with `stop=[step_sep]`, continuing the prefix
  `steps joined by step_sep + step_sep`). The root is expanded into width x expand first steps, every later beam
  into `expand` next steps; the PRM scores every candidate prefix and the best `width` are kept by the score of
  their newest step (`--select last`: a value PRM's estimate that the prefix can still end correctly). A kept
  candidate that states a final answer (or to which the policy adds nothing, or that has `max_steps` steps) is
  finished and leaves the beam. Identical candidate prefixes are kept once (else the beam collapses onto copies).
- `lookahead`: beam search whose candidates are ranked after rolling each one `--lookahead` steps further (at
  `--lookahead-temperature`, greedy by default); the rollout is scored and thrown away, its tokens are counted.

The answer is the finished solution with the highest aggregate of its step scores (ties: the earlier one). If the
budget runs out before any beam has finished, the best beam is completed in one request (counted) so every
problem gets an answer.

Cost, per problem and per method (the table and results.json report the means, so methods are compared at equal
cost): `tokens` generated, counted as whitespace-separated words by default (`--tokens words`: the Policy
protocol returns text, not token ids, and words are backend-independent) or with the PRM's tokenizer
(`--tokens prm`, closer to a real LM's count; prefixes are not counted, only new text); `requests` (GenRequests),
`samples` (their `n` summed), `rounds` (sequential generate calls: the latency a search adds), and PRM work
(`prm_solutions` scored, `prm_steps`). `--budget B` caps tokens per problem: no new round starts once `B` is
reached, so a method overshoots by at most one round; the actual count is what is reported.

Problems run `--concurrency` at a time in lock-step rounds: each round sends the pending requests of all running
problems to the policy in one `generate` call and the pending partial solutions to the PRM in one `score_steps`
call. Every request's seed derives from the run seed, the problem id and the request's place in the search
(beam and lookahead draw the same first steps: common random numbers), so results do not depend on batching.
The PRM sees the question as the policy saw it (`policy_prompt`), as in the training data `annotate` writes.

What a search reports (samples.jsonl lines, the summary per method, the table) is in search_results.py. This
module does not train or serve a PRM; the step delimiter for generation is a plain string (`--step-sep`),
while `--splitter` splits Best-of-N's full responses.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Generator
from dataclasses import asdict, dataclass
from typing import Any

from .policy import GenRequest
from .schema import InputError, Loc
from .scoring import AGGREGATES, aggregate
from .search_results import COST_KEYS, format_table, summarize, unescape  # noqa: F401 (unescape: cli_model's)
from .search_results import sample_record as _sample

METHODS = ("bon", "beam", "lookahead")
FINAL_FORMS = ("boxed", "final", "answer", "answer-is")  # answers.candidates forms that state a final answer

Job = Generator[tuple[str, list], list, dict]


@dataclass
class SearchConfig:
    """Options of `visualprm search` (see the module docstring)."""

    width: int = 4  # beams kept per step; bon: solutions per round when a budget is set
    expand: int = 4  # next steps sampled per beam (the root gets width x expand); bon: N = width x expand
    budget: int | None = None  # generated tokens per problem (None: no cap)
    lookahead: int = 2  # lookahead: steps rolled out ahead of each candidate before ranking it
    max_steps: int = 12  # a beam with this many steps is finished; bon: responses split into at most this many
    select: str = "last"  # step scores -> the value that ranks partial solutions
    aggregate: str = "mean"  # step scores -> the value that picks the answer among finished solutions
    step_sep: str = "\n\n"  # the step delimiter: generation stops at it and steps are joined with it
    temperature: float = 0.7  # sampling (REFERENCE.md §9: BoN's best temperature)
    top_p: float | None = 0.95
    top_k: int | None = None
    lookahead_temperature: float = 0.0  # rollouts of lookahead search (0 = greedy)
    max_tokens: int = 4096  # new tokens per full solution
    max_step_tokens: int = 1024  # new tokens per step
    dedupe: bool = True  # keep identical candidate prefixes once
    seed: int = 0
    prompt: str = "final-answer"  # the policy's answer format (policy.ANSWER_FORMATS)


def check_config(method: str, cfg: SearchConfig) -> None:
    """Every option a user can get wrong fails here, before any work."""
    if method not in METHODS:
        raise InputError(f"unknown method {method!r}; choose from {', '.join(METHODS)}", field="method")
    for name in ("width", "expand", "max_steps", "max_tokens", "max_step_tokens"):
        if getattr(cfg, name) < 1:
            raise InputError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(cfg, name)}", field=name)
    if cfg.budget is not None and cfg.budget < 1:
        raise InputError(f"--budget must be >= 1 token, got {cfg.budget}", field="budget")
    if method == "lookahead" and cfg.lookahead < 1:
        raise InputError(f"--lookahead must be >= 1 for the lookahead method, got {cfg.lookahead}", field="lookahead")
    for name in ("select", "aggregate"):
        if getattr(cfg, name) not in AGGREGATES:
            raise InputError(f"unknown {name} {getattr(cfg, name)!r}; choose from {', '.join(AGGREGATES)}", field=name)
    if not cfg.step_sep:
        raise InputError("--step-sep must not be empty", field="step_sep")


def word_count(text: str) -> int:
    """The default token count: whitespace-separated words."""
    return len(text.split())


def states_answer(step: str) -> bool:
    """True when a step states a final answer (`\\boxed{}`, `Final answer:`, an `Answer:` line, "the answer is")."""
    from .answers import candidates

    return any(form in FINAL_FORMS for form, _ in candidates(step))


def first_step(text: str, sep: str) -> str:
    """The new step in a generated text: its first non-empty piece (a policy that ignores `stop` still gives one
    step; the rest is thrown away but was counted)."""
    for piece in text.split(sep):
        if piece.strip():
            return piece.strip()
    return ""


# ---------------------------------------------------------------------------------------------------------------
# One problem: generators that yield ("generate", [GenRequest]) or ("score", [item]) and receive the results


def new_meter() -> dict[str, int]:
    return dict.fromkeys(COST_KEYS, 0)


def _generate(reqs: list[GenRequest], meter: dict, count: Callable[[str], int]) -> Job:
    texts = yield ("generate", reqs)
    meter["requests"] += len(reqs)
    meter["samples"] += sum(r.n for r in reqs)
    meter["rounds"] += 1
    meter["tokens"] += sum(count(t) for ts in texts for t in ts)
    return texts


def _score(question: str, images: list, step_lists: list[list[str]], meter: dict) -> Job:
    if not step_lists:
        return []
    scores = yield ("score", [{"question": question, "images": images, "steps": s} for s in step_lists])
    meter["prm_solutions"] += len(step_lists)
    meter["prm_steps"] += sum(len(s) for s in step_lists)
    return scores


def _pick(finished: list[dict], how: str) -> int:
    values = [aggregate(f["scores"], how) for f in finished]
    return max(range(len(values)), key=lambda i: (values[i], -i))


def bon_job(
    problem: dict,
    question: str,
    images: list,
    *,
    n: int,
    width: int,
    budget: int | None,
    sampling: dict,
    max_steps: int,
    how: str,
    split: Callable,
    count: Callable[[str], int],
    seed: int,
) -> Job:
    """Best-of-N: returns `{"finished": [{response, steps, scores}], "best": i, "meter": {...}}`."""
    from .montecarlo import derive_seed

    meter, sols, k = new_meter(), [], 0
    while True:
        m = width if budget else n
        req = GenRequest(problem, "", n=m, seed=derive_seed(seed, problem["id"], "bon", k), **sampling)
        before = meter["tokens"]
        (texts,) = yield from _generate([req], meter, count)
        for t in texts:
            steps = split(t, max_steps)
            if steps:
                sols.append({"response": t, "steps": steps})
        k += 1
        if not budget or meter["tokens"] >= budget or meter["tokens"] == before:
            break
    scores = yield from _score(question, images, [s["steps"] for s in sols], meter)
    for s, sc in zip(sols, scores):
        s["scores"] = sc
    return {"finished": sols, "best": _pick(sols, how) if sols else None, "meter": meter}


def beam_job(
    problem: dict,
    question: str,
    images: list,
    *,
    width: int,
    expand: int,
    lookahead: int,
    budget: int | None,
    sampling: dict,
    look_sampling: dict,
    full_sampling: dict,
    max_steps: int,
    step_sep: str,
    select: str,
    how: str,
    dedupe: bool,
    count: Callable[[str], int],
    seed: int,
) -> Job:
    """Beam search (lookahead = 0) or lookahead search; returns what `bon_job` returns plus `budget_hit`."""
    from .montecarlo import derive_seed

    pid = problem["id"]

    def prefix(steps: list[str]) -> str:
        return step_sep.join(steps) + step_sep if steps else ""

    meter = new_meter()
    active: list[dict] = [{"steps": [], "scores": []}]
    finished: list[dict] = []
    depth, budget_hit = 0, False
    while active and depth < max_steps:
        if budget and meter["tokens"] >= budget:
            budget_hit = True
            break
        reqs = [
            GenRequest(
                problem,
                prefix(b["steps"]),
                n=expand * width if depth == 0 else expand,
                seed=derive_seed(seed, pid, "step", depth, i),
                stop=[step_sep],
                **sampling,
            )
            for i, b in enumerate(active)
        ]
        texts = yield from _generate(reqs, meter, count)
        cands, seen = [], set()
        for b, ts in zip(active, texts):
            for t in ts:
                step = first_step(t, step_sep)
                steps = b["steps"] + [step] if step else b["steps"]
                if not steps or (dedupe and tuple(steps) in seen):
                    continue
                seen.add(tuple(steps))
                done = not step or states_answer(step) or len(steps) >= max_steps
                cands.append({"steps": steps, "done": done, "scores": None if step else b["scores"]})
        if not cands:
            break
        # Rank: the candidate's own step scores (beam) or those of its rollout (lookahead). A causal PRM's score
        # of a step does not depend on later steps, so one pass over the rollout gives the candidate's scores too.
        seqs = [list(c["steps"]) for c in cands]
        if lookahead:
            live = [i for i, c in enumerate(cands) if not c["done"]]
            for d in range(lookahead):
                if not live:
                    break
                reqs = [
                    GenRequest(
                        problem,
                        prefix(seqs[i]),
                        n=1,
                        seed=derive_seed(seed, pid, "look", depth, i, d),
                        stop=[step_sep],
                        **look_sampling,
                    )
                    for i in live
                ]
                texts = yield from _generate(reqs, meter, count)
                still = []
                for i, (t,) in zip(live, texts):
                    step = first_step(t, step_sep)
                    if step:
                        seqs[i].append(step)
                    if step and not states_answer(step) and len(seqs[i]) < max_steps:
                        still.append(i)
                live = still
        todo = [i for i, c in enumerate(cands) if c["scores"] is None or len(seqs[i]) > len(c["steps"])]
        scored = yield from _score(question, images, [seqs[i] for i in todo], meter)
        full = {i: s for i, s in zip(todo, scored)}
        values = []
        for i, c in enumerate(cands):
            if i in full:
                c["scores"] = full[i][: len(c["steps"])]
            values.append(aggregate(full.get(i, c["scores"]), select))
        # Keep the best `width - finished` candidates: finished + active beams stay `width` in all.
        active = []
        for i in sorted(range(len(cands)), key=lambda i: (-values[i], i))[: width - len(finished)]:
            (finished if cands[i]["done"] else active).append(cands[i])
        depth += 1
    if not finished and active:
        # The budget (or max_steps) stopped the search before any beam finished: complete the best beam.
        best = active[0]
        req = GenRequest(
            problem, prefix(best["steps"]), n=1, seed=derive_seed(seed, pid, "end", depth), **full_sampling
        )
        ((t,),) = yield from _generate([req], meter, count)
        steps = best["steps"] + [p.strip() for p in t.split(step_sep) if p.strip()]
        (sc,) = yield from _score(question, images, [steps], meter)
        finished.append({"steps": steps, "scores": sc})
    elif active:
        finished.extend(active)  # max_steps reached: unfinished beams compete as they are
    for f in finished:
        f["response"] = step_sep.join(f["steps"])
    best = _pick(finished, how) if finished else None
    return {"finished": finished, "best": best, "meter": meter, "budget_hit": budget_hit}


# ---------------------------------------------------------------------------------------------------------------
# Many problems in lock-step rounds


def run_jobs(
    jobs: list[tuple[Any, Callable[[], Job]]],
    policy,
    scorer,
    concurrency: int,
    on_done: Callable[[Any, dict], None],
    on_fail: Callable[[Any, Exception], None],
) -> None:
    """Run job generators `concurrency` at a time. Each round sends every pending generation request in one
    `policy.generate` call and every pending partial solution in one `scorer.score_steps` call. A request the
    policy refuses (`PolicyError`) or bad input (`InputError`) fails only its job: the round is then retried job
    by job to find it."""
    from .policy import PolicyError

    queue = iter(jobs)
    active: dict[Any, list] = {}  # key -> [generator, pending (kind, payload)]

    def advance(key, result) -> None:
        gen = active[key][0]
        try:
            active[key][1] = next(gen) if result is None else gen.send(result)
        except StopIteration as e:
            del active[key]
            on_done(key, e.value)
        except (PolicyError, InputError) as e:
            del active[key]
            on_fail(key, e)

    def serve(keys: list, call: Callable[[list], list], results: dict) -> None:
        try:
            flat = call([x for k in keys for x in active[k][1][1]])
            i = 0
            for k in keys:
                n = len(active[k][1][1])
                results[k], i = flat[i : i + n], i + n
        except (PolicyError, InputError):
            for k in keys:
                try:
                    results[k] = call(active[k][1][1])
                except (PolicyError, InputError) as e:
                    del active[k]
                    on_fail(k, e)

    while True:
        while len(active) < concurrency:
            nxt = next(queue, None)
            if nxt is None:
                break
            key, factory = nxt
            try:
                active[key] = [factory(), None]
            except InputError as e:
                on_fail(key, e)
                continue
            advance(key, None)
        if not active:
            return
        results: dict[Any, list] = {}
        serve([k for k in active if active[k][1][0] == "generate"], policy.generate, results)
        serve([k for k in active if active[k][1][0] == "score"], scorer.score_steps, results)
        for k, r in results.items():
            advance(k, r)


# ---------------------------------------------------------------------------------------------------------------
# The job


def load_prm(prm: str, api_key: str | None = None, **scorer_options):
    """A scorer from a PRM spec: `scoring.load_prm` (kept here for callers of `search.load_prm`)."""
    from .scoring import load_prm as resolve

    return resolve(prm, api_key=api_key, **scorer_options)


def token_counter(how: str, scorer) -> Callable[[str], int]:
    """`words` (whitespace-separated words) or `prm` (the PRM's tokenizer, no special tokens)."""
    if how == "words":
        return word_count
    if how == "prm":
        from .model import get_tokenizer

        if getattr(scorer, "processor", None) is None:
            raise InputError("--tokens prm needs an in-process PRM (a folder, not a URL)", field="tokens")
        tok = get_tokenizer(scorer.processor)
        return lambda text: len(tok(text, add_special_tokens=False)["input_ids"]) if text else 0
    raise InputError(f"unknown token count {how!r} (expected words or prm)", field="tokens")


def parse_methods(methods: str | list[str]) -> list[str]:
    out = [m.strip() for m in (methods.split(",") if isinstance(methods, str) else methods) if m.strip()]
    for m in out:
        if m not in METHODS:
            raise InputError(f"unknown method {m!r}; choose from {', '.join(METHODS)}", field="method")
    if not out or len(set(out)) != len(out):
        raise InputError(f"expected one or more distinct methods from {', '.join(METHODS)}", field="method")
    return out


def search_file(
    policy,
    prm,
    problems: str,
    out_dir: str,
    methods: str | list[str] = "beam",
    config: SearchConfig | None = None,
    limit: int | None = None,
    concurrency: int = 16,
    checker: str | None = None,
    splitter: str | None = None,
    tokens: str = "words",
    image_root: str | None = None,
    scorer_options: dict | None = None,
    policy_options: dict | None = None,
    api_key: str | None = None,
    budgets: dict[str, int] | None = None,
    progress: bool = True,
) -> dict:
    """`visualprm search`: run each method on every problem; write OUT/results.json and OUT/samples.jsonl.

    `policy`: a spec (`synthetic`, `hf:PATH`, `openai:MODEL@URL`, `vllm:...`) or a Policy object. `prm`: a PRM
    folder, `openai:MODEL@URL` (a PRM behind OpenAI-compatible servers), an `http(s)://` URL of `visualprm serve`
    (see `scoring.load_prm`), or any object with `score_steps(items)`. `budgets`: a token
    budget per problem id that replaces `config.budget` for that problem (e.g. what Best-of-N spent on it).
    """
    from . import __version__
    from .answers import load_checker
    from .jobs import bar as progress_bar
    from .montecarlo import load_problems
    from .policy import ANSWER_FORMATS, load_policy, parse_policy_spec, policy_prompt
    from .schema import load_image, load_splitter, write_json, write_jsonl

    t_start = time.time()
    cfg = config or SearchConfig()
    names = parse_methods(methods)
    for m in names:
        check_config(m, cfg)
    if cfg.prompt not in ANSWER_FORMATS:
        raise InputError(f"unknown prompt {cfg.prompt!r}; choose from {', '.join(ANSWER_FORMATS)}", field="prompt")
    if tokens not in ("words", "prm"):
        raise InputError(f"unknown token count {tokens!r} (expected words or prm)", field="tokens")
    if limit is not None and limit < 1:
        raise InputError(f"--limit must be >= 1, got {limit}", field="limit")
    check, split = load_checker(checker), load_splitter(splitter)
    if isinstance(policy, str):
        parse_policy_spec(policy)
    todo, bad = load_problems(problems, image_root=image_root)
    if bad and not todo:
        raise bad[0]
    for e in bad[:10]:
        print(f"warning: skipping a bad problem: {e}", file=sys.stderr)
    todo = todo[:limit] if limit else todo
    by_id = {p["id"]: p for p in todo}

    scorer = load_prm(prm, api_key=api_key, **(scorer_options or {})) if isinstance(prm, str) else prm
    count = token_counter(tokens, scorer)
    owned = isinstance(policy, str)
    pol = load_policy(policy, cfg.prompt, concurrency, **(policy_options or {})) if owned else policy
    common = {"temperature": cfg.temperature, "top_p": cfg.top_p, "top_k": cfg.top_k}
    step_sampling = {**common, "max_tokens": cfg.max_step_tokens}
    look_sampling = {**step_sampling, "temperature": cfg.lookahead_temperature}
    full_sampling = {**common, "max_tokens": cfg.max_tokens}

    def make(p: dict, method: str) -> Callable[[], Job]:
        budget = (budgets or {}).get(p["id"], cfg.budget)

        def factory() -> Job:
            loc = Loc(problems)
            images = [load_image(x, loc) for x in p["images"]]
            question = policy_prompt(p, cfg.prompt)
            if method == "bon":
                return bon_job(
                    p, question, images, n=cfg.width * cfg.expand, width=cfg.width, budget=budget,
                    sampling=full_sampling, max_steps=cfg.max_steps, how=cfg.aggregate, split=split, count=count,
                    seed=cfg.seed,
                )  # fmt: skip
            return beam_job(
                p, question, images, width=cfg.width, expand=cfg.expand,
                lookahead=cfg.lookahead if method == "lookahead" else 0, budget=budget,
                sampling=step_sampling, look_sampling=look_sampling, full_sampling=full_sampling,
                max_steps=cfg.max_steps, step_sep=cfg.step_sep, select=cfg.select, how=cfg.aggregate,
                dedupe=cfg.dedupe, count=count, seed=cfg.seed,
            )  # fmt: skip

        return factory

    by_method: dict[str, dict] = {}
    samples: list[dict] = []
    try:
        for method in names:
            done: dict[str, dict] = {}
            failed = 0
            t0 = time.time()
            bar = progress_bar(len(todo), f"search {method}", "problem", enabled=progress)

            def on_done(pid: str, result: dict, method=method, done=done, bar=bar) -> None:
                done[pid] = _sample(by_id[pid], method, result, check, cfg.aggregate)
                bar.update(1)

            def on_fail(pid: str, e: Exception, bar=bar) -> None:
                nonlocal failed
                failed += 1
                bar.write(f"warning: skipping problem {pid!r}: {e}", file=sys.stderr)
                bar.update(1)

            run_jobs([(p["id"], make(p, method)) for p in todo], pol, scorer, concurrency, on_done, on_fail)
            bar.close()
            rows = [done[p["id"]] for p in todo if p["id"] in done]
            by_method[method] = summarize(rows, failed, time.time() - t0)
            samples += rows
    finally:
        if owned:
            pol.close()

    config = {"methods": names, **asdict(cfg), "policy": policy if isinstance(policy, str) else pol.name}
    config.update(prm=prm if isinstance(prm, str) else type(prm).__name__, problems=problems, limit=limit)
    config.update(checker=checker, splitter=splitter, tokens=tokens, concurrency=concurrency)
    config["budgets"] = "per problem" if budgets else None
    results = {
        "command": "search",
        "version": __version__,
        "config": config,
        "counts": {"problems": len(todo), "bad_problems": len(bad)},
        "methods": by_method,
        "seconds": round(time.time() - t_start, 2),
    }
    if hasattr(scorer, "engine_counts"):  # a PRM behind a server: requests, tokens, bounded steps
        results["prm_engine"] = scorer.engine_counts()
    write_jsonl(f"{out_dir}/samples.jsonl", samples)
    write_json(f"{out_dir}/results.json", results)
    print(format_table(by_method, None if budgets else cfg.budget))
    print(f"-> {out_dir}/results.json, {out_dir}/samples.jsonl")
    return results
