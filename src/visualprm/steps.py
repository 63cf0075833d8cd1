"""Split a response into steps, and render a solution as the PRM's chat turns (REFERENCE.md §2 and §5).

`split_steps` is the VisualPRM rule: split on blank lines, and when there are more than `max_steps` pieces,
join consecutive pieces in groups of ceil(n / max_steps). Unlike the released code we drop empty pieces first
(the original kept them, which made empty "steps").

`prm_messages` builds the conversation in the generic multimodal chat layout that every Hugging Face
processor's chat template reads (`{"role", "content": [{"type": "text"|"image", ...}]}`): the system prompt,
user turn 1 = `### Question:\\n` + image(s) + `\\n{question}\\n\\n### Solution Process:\\n{step_1}`, then one
assistant turn per step holding its label, and user turn k = the text of step k as given. The model's own
template renders them (model.py); this module knows no tokens, imports no torch and nothing else from the
package (schema.py builds on it; `schema.load_splitter` turns a `--splitter` spec into one of these rules).

`conversation_to_turns` reads the VisualPRM400K training layout (`conversations: [{from, value}]`, `<image>`
in the first human turn) into the same shape.
"""

from __future__ import annotations

import math
import re

# Byte-exact: the released VisualPRM400K training data carries it.
PRM_SYSTEM_PROMPT = """You are an advanced AI assistant, designed to serve as a process supervision model. In this task, I will provide a problem statement followed by the first step of the solution process. For each subsequent turn, I will give you a new step in the solution. Your role is to assess whether the solution process is correct up to the current step.

- In the **first round**, I will input the problem and the first step of the solution process.
- In **each subsequent round**, I will provide the next step in the solution.

For each step, you should:

- Respond with **"+"** if you believe the solution process is correct up to this step.
- Respond with **"-"** if you detect any issues or errors in the process up to this step.

Please note:
- Only respond with **"+"** or **"-"**. Do not provide any additional explanations, comments, or justifications.

Your task is to verify the accuracy and correctness of each step in the given solution process."""  # noqa: E501

IMAGE_PLACEHOLDER = "<image>"
QUESTION_HEADER = "### Question:\n"
SOLUTION_HEADER = "\n\n### Solution Process:\n"


def split_steps(response: str, max_steps: int = 12) -> list[str]:
    """Split on blank lines; merge to at most `max_steps` steps in groups of ceil(n / max_steps).

    >>> split_steps("a\\n\\nb\\n\\n\\n\\nc")
    ['a', 'b', 'c']
    >>> len(split_steps("\\n\\n".join(str(i) for i in range(13))))  # 13 paragraphs -> groups of 2
    7
    """
    pieces = [p.strip() for p in response.split("\n\n")]
    pieces = [p for p in pieces if p]
    if max_steps and len(pieces) > max_steps:
        k = math.ceil(len(pieces) / max_steps)
        pieces = ["\n\n".join(pieces[i : i + k]) for i in range(0, len(pieces), k)]
    return pieces


def split_step_markers(response: str, max_steps: int = 12) -> list[str]:
    """Split at `Step k:` / `**Step k**` markers at the start of a line (text before the first marker is kept
    as its own step when non-empty); falls back to blank lines when there is no marker."""
    return split_regex(response, r"(?im)^(?=\s*(?:\*\*|##+\s*)?step\s*\d+\s*[:.)*])", max_steps)


def split_regex(response: str, pattern: str, max_steps: int = 12) -> list[str]:
    """Split with a regular expression (its matches are boundaries); merge as `split_steps` does."""
    pieces = [p.strip() for p in re.split(pattern, response)]
    pieces = [p for p in pieces if p]
    if len(pieces) <= 1:
        return split_steps(response, max_steps)
    if max_steps and len(pieces) > max_steps:
        k = math.ceil(len(pieces) / max_steps)
        pieces = ["\n\n".join(pieces[i : i + k]) for i in range(0, len(pieces), k)]
    return pieces


def join_steps(steps: list[str]) -> str:
    """The response text of a step prefix, as the policy continues it (REFERENCE.md §5)."""
    return "\n\n".join(steps)


def first_user_text(question: str, step_1: str) -> tuple[str, str]:
    """The two text pieces of user turn 1, before and after the image(s)."""
    return QUESTION_HEADER, f"\n{question}{SOLUTION_HEADER}{step_1}"


def prm_messages(
    question: str, steps: list[str], labels: list[str], n_images: int, system_prompt: bool | str = True
) -> list[dict]:
    """The PRM conversation in the multimodal chat layout. `labels[k]` is the assistant reply to step k."""
    if len(labels) != len(steps):
        raise ValueError(f"{len(steps)} steps but {len(labels)} labels")
    msgs: list[dict] = []
    if system_prompt:
        text = PRM_SYSTEM_PROMPT if system_prompt is True else system_prompt
        msgs.append({"role": "system", "content": [{"type": "text", "text": text}]})
    head, tail = first_user_text(question, steps[0])
    content = [{"type": "text", "text": head}]
    content += [{"type": "image"} for _ in range(n_images)]
    content.append({"type": "text", "text": tail})
    msgs.append({"role": "user", "content": content})
    for k, (step, label) in enumerate(zip(steps, labels)):
        if k > 0:
            msgs.append({"role": "user", "content": [{"type": "text", "text": step}]})
        msgs.append({"role": "assistant", "content": [{"type": "text", "text": label}]})
    return msgs


def orm_messages(question: str, steps: list[str], label: str, n_images: int, system_prompt: bool | str = True):
    """ORM layout: one user turn with all steps joined by blank lines, one label (REFERENCE.md §3)."""
    return prm_messages(question, [join_steps(steps)], [label], n_images, system_prompt)


def conversation_to_turns(conversations: list[dict]) -> tuple[str | None, list[dict]]:
    """Split VisualPRM400K `conversations` into (system text or None, turns of {role, text}).

    Roles map `human` -> user and `gpt` -> assistant; `system` must come first if present.
    """
    role_map = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}
    system = None
    turns = []
    for i, c in enumerate(conversations):
        if not isinstance(c, dict) or "from" not in c or "value" not in c:
            raise ValueError(f"turn {i} must be an object with 'from' and 'value'")
        role = role_map.get(c["from"])
        if role is None:
            raise ValueError(f"turn {i}: unknown speaker {c['from']!r} (expected system, human or gpt)")
        if not isinstance(c["value"], str):
            raise ValueError(f"turn {i}: 'value' must be a string")
        if role == "system":
            if i != 0:
                raise ValueError(f"turn {i}: a system turn must come first")
            system = c["value"]
            continue
        turns.append({"role": role, "text": c["value"]})
    return system, turns


def turns_to_messages(system: str | None, turns: list[dict], n_images: int) -> list[dict]:
    """Multimodal chat messages from turns; `<image>` placeholders in the first user turn become image items.

    When the first user turn has fewer placeholders than images, the missing ones go in front of its text.
    """
    msgs: list[dict] = []
    if system:
        msgs.append({"role": "system", "content": [{"type": "text", "text": system}]})
    placed = False
    for t in turns:
        if t["role"] == "user" and not placed:
            placed = True
            parts = t["text"].split(IMAGE_PLACEHOLDER)
            n_ph = len(parts) - 1
            content: list[dict] = [{"type": "image"} for _ in range(max(0, n_images - n_ph))]
            for j, part in enumerate(parts):
                if part:
                    content.append({"type": "text", "text": part})
                if j < n_ph:
                    content.append({"type": "image"})
            msgs.append({"role": "user", "content": content})
        else:
            msgs.append({"role": t["role"], "content": [{"type": "text", "text": t["text"]}]})
    return msgs
