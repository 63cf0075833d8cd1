"""The official InternVL code (../shared/reference/internvl-2410d1d/) as an oracle for `visualprm convert`.

Loaded from that folder at test time (never copied): the InternVLChatModel and its InternLM2 / slow tokenizer,
the `internvl2_5` conversation template, and `dynamic_preprocess` read out of `train/dataset.py` (whose module
imports cv2/decord/torchvision, absent here). `timm` (only DropPath) and the Phi-3 files are stubbed
(PATCHES-transformers-5.24.md §1, §3). The model is built from its config and the shards loaded into it, so its
rotary buffers are computed at init (the silent bug of PATCHES §2 does not arise). Scoring follows the official
single-pass PRM scoring (REFERENCE.md §11): pixel values once, P(+) over +/- at the last token before each `+`.
"""

from __future__ import annotations

import ast
import sys
import types
from pathlib import Path

import pytest

REF = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "internvl-2410d1d"
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def require_oracle():
    """Skip with a reason unless the reference folder and its extra packages are here."""
    if not (REF / "internvl" / "model" / "internvl_chat" / "modeling_internvl_chat.py").is_file():
        pytest.skip(f"{REF} is absent (the official InternVL code is not beside this checkout)")
    for mod in ("einops", "sentencepiece", "peft"):
        pytest.importorskip(mod, reason=f"the official InternVL code needs {mod}")
    _stub()


def _stub():
    if str(REF) not in sys.path:
        sys.path.insert(0, str(REF))
    if "timm.models.layers" not in sys.modules:
        import torch

        timm = types.ModuleType("timm")
        models = types.ModuleType("timm.models")
        layers = types.ModuleType("timm.models.layers")

        class DropPath(torch.nn.Identity):
            def __init__(self, *a, **k):
                super().__init__()

        layers.DropPath = DropPath
        timm.models, models.layers = models, layers
        sys.modules |= {"timm": timm, "timm.models": models, "timm.models.layers": layers}
    for name, attr in (("configuration_phi3", "Phi3Config"), ("modeling_phi3", "Phi3ForCausalLM")):
        full = f"internvl.model.phi3.{name}"
        if full not in sys.modules:
            m = types.ModuleType(full)
            setattr(m, attr, None)
            sys.modules[full] = m
    sys.modules.setdefault("internvl.model.phi3", types.ModuleType("internvl.model.phi3"))


def dynamic_preprocess():
    """`dynamic_preprocess` (and `find_closest_aspect_ratio`) from the official train/dataset.py."""
    tree = ast.parse((REF / "internvl" / "train" / "dataset.py").read_text())
    wanted = {"find_closest_aspect_ratio", "dynamic_preprocess"}
    body = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in wanted]
    ns: dict = {}
    exec(compile(ast.Module(body=body, type_ignores=[]), "dataset.py", "exec"), ns)  # noqa: S102
    return ns["dynamic_preprocess"]


def pixel_values(image, max_num: int):
    """The model card's `load_image`: tiles + thumbnail, RGB, ToTensor, ImageNet mean/std (BICUBIC resize is
    a no-op on 448-pixel tiles)."""
    import numpy as np
    import torch

    tiles = dynamic_preprocess()(image.convert("RGB"), image_size=448, use_thumbnail=True, max_num=max_num)
    arr = [(np.asarray(t.convert("RGB"), dtype=np.float32) / 255.0 - MEAN) / STD for t in tiles]
    return torch.tensor(np.stack(arr)).permute(0, 3, 1, 2).float().contiguous()


class Official:
    """The official model and tokenizer for an original-format folder."""

    def __init__(self, src: Path):
        import torch
        from safetensors.torch import load_file

        require_oracle()
        from internvl.model.internvl_chat import InternVLChatConfig, InternVLChatModel

        config = InternVLChatConfig.from_pretrained(str(src))
        config.llm_config._attn_implementation = "eager"
        torch.manual_seed(0)
        model = InternVLChatModel(config, use_flash_attn=False)
        sd = {}
        for f in sorted(src.glob("*.safetensors")):
            sd |= load_file(str(f))
        missing, unexpected = model.load_state_dict(sd, strict=False)
        assert not unexpected and all("rotary" in k or "inv_freq" in k for k in missing), (missing, unexpected)
        self.model = model.float().eval()
        if config.llm_config.architectures[0] == "InternLM2ForCausalLM":
            from internvl.model.internlm2.tokenization_internlm2 import InternLM2Tokenizer

            self.tok = InternLM2Tokenizer.from_pretrained(str(src))
        else:
            import transformers as tf

            self.tok = tf.Qwen2Tokenizer.from_pretrained(str(src))
        self.model.img_context_token_id = self.tok.convert_tokens_to_ids("<IMG_CONTEXT>")
        self.max_num = config.max_dynamic_patch

    def prompt(self, question: str, steps: list[str], tiles: int, system_message: str | None = None) -> str:
        from internvl.conversation import get_conv_template

        t = get_conv_template(self.model.template)
        t.system_message = self.model.system_message if system_message is None else system_message
        for k, s in enumerate(steps):
            first = f"### Question:\n<image>\n{question}\n\n### Solution Process:\n{s}"
            t.append_message(t.roles[0], first if k == 0 else s)
            t.append_message(t.roles[1], "+")
        q = t.get_prompt()
        return q.replace("<image>", "<img>" + "<IMG_CONTEXT>" * self.model.num_image_token * tiles + "</img>", 1)

    def score(self, image, question: str, steps: list[str], max_num: int | None = None, system_message=None):
        """Step scores P(+) in one pass; also returns (input_ids, logit positions, pixel values)."""
        import torch

        pv = pixel_values(image, max_num or self.max_num)
        query = self.prompt(question, steps, pv.shape[0], system_message)
        ids = self.tok(query, return_tensors="pt").input_ids
        marker = "<|im_start|>assistant\n"
        positions, start = [], 0
        for _ in steps:
            start = query.index(marker, start) + len(marker)
            positions.append(len(self.tok(query[:start]).input_ids) - 1)
        plus, minus = (self.tok.convert_tokens_to_ids(x) for x in ("+", "-"))
        with torch.no_grad():
            out = self.model(pixel_values=pv, input_ids=ids, image_flags=torch.ones(pv.shape[0], 1, dtype=torch.long))
        lg = out.logits[0, positions][:, [plus, minus]].float()
        return torch.softmax(lg, -1)[:, 0].tolist(), ids[0].tolist(), positions, pv
