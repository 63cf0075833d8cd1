"""What every `visualprm` command parser shares: argument types, the help layout that shows every default, and the
options generated from a config dataclass (`train`'s, from `train.TrainConfig`).

Also the options and helpers of the commands that run a model (`add_model_options`, `is_local`, `set_threads`,
`AGGREGATES`), shared by cli.py and cli_model.py. cli.py, cli_data.py and cli_model.py all build parsers with
these; this module imports only options.py (and jobs.py inside `set_threads`) from the package, so none of them
imports another. It parses nothing and runs no job.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from .options import POSITIVE_INT

# Every form of a policy spec (policy.parse_policy_spec reads them), for `annotate --policy` and `search --policy`.
POLICY_HELP = (
    "the policy model: synthetic (the built-in scripted policy) | synthetic:perception=X,reasoning=X,hard=X "
    "(its error rates) | hf:PATH (a local or hub model, transformers) | vllm:PATH_OR_ID (vLLM, GPU) | "
    "openai:MODEL@URL (an OpenAI-compatible server, e.g. openai:Qwen/Qwen2.5-VL-7B-Instruct@http://localhost:8000; "
    "key: $OPENAI_API_KEY) | py:MODULE:FACTORY or py:FILE.py:FACTORY (your own: FACTORY() returns an object "
    "with generate(requests) and close())"
)


def positive_int(s: str) -> int:
    """argparse type: an integer >= 1."""
    v = int(s)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Appends ' (default: X)' to the help of every option that takes a value and has a default other than None
    (a help text holding '%(default)' already says it). Flags (store_true and the like) are off unless given,
    so they show nothing; an option whose default is None says in its own help what happens without it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if shows_default(action) and "%(default)" not in text:
            text += " (default: %(default)s)"
        return text


def shows_default(action: argparse.Action) -> bool:
    """Whether `DefaultsHelpFormatter` adds the default of this action to its help."""
    return (
        bool(action.option_strings)
        and action.nargs != 0
        and action.default is not None
        and action.default is not argparse.SUPPRESS
        and action.help is not argparse.SUPPRESS
    )


def subcommand_parsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The subcommand parsers of `parser`, by command name."""
    out: dict[str, argparse.ArgumentParser] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            out.update(action.choices)
    return out


def use_defaults_help(parser: argparse.ArgumentParser) -> None:
    """Give `parser` and every subcommand parser (those added later by any module too) `DefaultsHelpFormatter`."""
    parser.formatter_class = DefaultsHelpFormatter
    for p in subcommand_parsers(parser).values():
        use_defaults_help(p)


# ---------------------------------------------------------------------------------------------------------------
# Options generated from a dataclass of settings


def config_option(f: dataclasses.Field) -> str:
    """The command-line option of a config field: `--` and the name with dashes for underscores."""
    return "--" + f.name.replace("_", "-")


def add_config_options(p: argparse.ArgumentParser, config_cls: Any) -> None:
    """One option per field of the dataclass `config_cls`: name `--field-name`, type from the field's default
    (bool fields: `--x` / `--no-x`), help, `choices` and `min` (or a whole argparse `type`, e.g. from options.py)
    from the field's metadata; floats are finite. Every option defaults
    to None, so only what was given overrides a config file; the help shows the field's default."""
    for f in dataclasses.fields(config_cls):
        meta, default = f.metadata, f.default
        text = meta.get("help", "")
        if default not in ("", None):
            text += f" (default: {default})"
        text = text.replace("%", "%%")
        kwargs: dict[str, Any] = {"dest": f.name, "default": None, "help": text}
        if isinstance(default, bool):
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = meta.get("type") or _typed(type(default), meta.get("min"))
            if "choices" in meta:
                kwargs["choices"] = tuple(meta["choices"])
        p.add_argument(config_option(f), **kwargs)


def _typed(kind: type, lo: float | None):
    if lo is None:
        if kind is float:
            from .options import number_in

            return number_in()  # any finite number
        return kind

    def check(s: str):
        v = kind(s)
        if v < lo:
            raise argparse.ArgumentTypeError(f"must be >= {lo}, got {v}")
        return v

    check.__name__ = kind.__name__  # argparse names the type in its "invalid int value" message
    return check


# ---------------------------------------------------------------------------------------------------------------
# Options of the commands that run a model (score, bon, bench, search)

AGGREGATES = ("mean", "min", "max", "last", "prod")
TORCH_THREADS_HELP = (
    "CPU threads for torch (default on CPU: one per core, at most 4; torch's own on CUDA or if $OMP_NUM_THREADS)"
)


def add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--dtype", default=None, help="float32, bfloat16 or float16 (default: bf16 on CUDA, else fp32)")
    p.add_argument(
        "--no-system-prompt", action="store_true", help="leave out the VisualPRM system prompt (on by default)"
    )
    p.add_argument("--batch-size", type=positive_int, default=8, help="solutions per forward pass")
    p.add_argument(
        "--max-length",
        type=POSITIVE_INT,
        default=None,
        help="fail on sequences longer than this many tokens (default: no limit)",
    )
    p.add_argument(
        "--max-tiles",
        type=positive_int,
        default=None,
        help="InternVL: at most N image tiles (default: the folder's max_dynamic_patch)",
    )
    p.add_argument(
        "--label-mode",
        choices=("auto", "value", "advantage"),
        default="auto",
        help="value: P(+); advantage: P(+) - P(-); auto: what the checkpoint records (else value)",
    )
    p.add_argument("--torch-threads", type=positive_int, default=None, help=TORCH_THREADS_HELP)


def is_local(prm: str | None) -> bool:
    """Whether a --prm spec is a model this process loads (not a server)."""
    return bool(prm) and not prm.startswith(("http://", "https://", "openai:"))


def set_threads(a: argparse.Namespace, local_model: bool = True) -> None:
    """Apply --torch-threads before a model loads (only where this command runs a model on this machine)."""
    if local_model:
        from .jobs import set_torch_threads

        set_torch_threads(getattr(a, "torch_threads", None), getattr(a, "device", None))
