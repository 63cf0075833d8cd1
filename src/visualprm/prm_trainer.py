"""The PRM loss and the Hugging Face `Trainer` that `visualprm train` runs (REFERENCE.md §2, §6).

`label_logits` runs the model (through its own forward, so DDP, FSDP and DeepSpeed wrappers see the call) with a
boolean `logits_to_keep` mask, so the output layer runs only at the supervised positions. `prm_loss`: hard labels,
next-token cross-entropy over the whole vocabulary (or over the label tokens only); soft labels (`mc`),
cross-entropy against (mc, 1 - mc) over the logits of the `+` and `-` tokens; plus the label-token accuracy.
`_make_trainer_class` builds the `Trainer` subclass with that loss, label accuracy in the logs, a checkpoint load
that works for Qwen-VL-style checkpoints, and the held-out step predictions; `_metrics_fn` turns them into step
metrics (`builddata.step_metrics`). torch and transformers are imported inside the functions.

This module does not read, encode or split data (builddata.py), load or freeze models, or run a training job
(train.py: config, set-up, resume, saving).
"""

from __future__ import annotations

from pathlib import Path

from .builddata import step_metrics


def label_logits(model, batch: dict, dtype=None):
    """Run the model; return (flat logits [N, V] at the positions predicting supervised tokens, targets [N],
    soft targets [N]). Rows are in (item, position) order."""
    import torch

    labels, soft = batch["prm_labels"], batch["prm_soft"]
    inputs = {k: v for k, v in batch.items() if not k.startswith("prm_")}
    if dtype is not None and "pixel_values" in inputs and inputs["pixel_values"].is_floating_point():
        inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != -100  # the logits predicting token t sit at t - 1
    out = model(**inputs, logits_to_keep=keep, use_cache=False)
    logits = out.logits.reshape(-1, out.logits.shape[-1]).float()
    return logits, labels[:, 1:][keep[:, :-1]], soft[:, 1:][keep[:, :-1]], keep


def prm_loss(logits, targets, soft, label_ids: list[int], label_loss: str = "vocab"):
    """Mean loss over supervised tokens, and (n correct, n labels) of the label-token argmax at label positions.

    Hard labels: cross-entropy over the vocabulary, or with `label_loss="labels"` over the label tokens' logits
    only (then a label's loss does not depend on how unlikely the label token was as a word)."""
    import torch
    import torch.nn.functional as F

    hard = F.cross_entropy(logits, targets, reduction="none")
    ids = torch.tensor(label_ids, device=logits.device)
    if label_loss == "labels":
        which = (targets[:, None] == ids[None, :]).float()  # one-hot over the labels; all-zero elsewhere
        among = -(which * torch.log_softmax(logits[:, label_ids], dim=-1)).sum(-1)
        hard = torch.where(which.any(-1), among, hard)
    two = torch.log_softmax(logits[:, [label_ids[0], label_ids[-1]]], dim=-1)  # + and -
    soft_loss = -(soft * two[:, 0] + (1.0 - soft) * two[:, 1])
    loss = torch.where(soft >= 0, soft_loss, hard).mean()
    is_label = torch.isin(targets, ids)
    pred = ids[logits[:, label_ids].argmax(-1)]
    correct = ((pred == targets) & is_label).sum()
    return loss, correct, is_label.sum()


def _make_trainer_class():
    from transformers import Trainer

    class PRMTrainer(Trainer):
        """`Trainer` with the PRM loss, label accuracy in the logs, and step metrics in `evaluate`."""

        loss_is_scaled_for_ga = False  # compute_loss returns a per-batch mean: the Trainer divides by GA steps

        def __init__(self, *a, label_ids: list[int], label_mode: str, input_dtype=None, label_loss="vocab", **kw):
            super().__init__(*a, **kw)
            self.label_ids, self.label_mode, self.input_dtype = label_ids, label_mode, input_dtype
            self.label_loss = label_loss
            self._acc = [0, 0]

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            logits, targets, soft, _ = label_logits(model, inputs, self.input_dtype)
            loss, correct, n = prm_loss(logits, targets, soft, self.label_ids, self.label_loss)
            if model.training:
                self._acc[0] += int(correct)
                self._acc[1] += int(n)
            return (loss, logits) if return_outputs else loss

        def log(self, logs: dict, start_time=None) -> None:
            if "loss" in logs and "eval_macro_f1" not in logs:
                import torch

                t = torch.tensor(self._acc, dtype=torch.float64, device=self.args.device)
                if self.args.world_size > 1:
                    t = self.accelerator.reduce(t, reduction="sum")
                if t[1] > 0:
                    logs["label_acc"] = round(float(t[0] / t[1]), 4)
                self._acc = [0, 0]
            super().log(logs, start_time)

        def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
            # transformers 5.x saves checkpoints in the original key layout (e.g. Qwen-VL's `visual.*`, `model.*`)
            # but its resume path loads them with a plain non-strict load_state_dict: every key misses and the run
            # silently continues from the base weights (huggingface/transformers#43701). Load through
            # from_pretrained, which converts the keys, and copy strictly.
            model = self.model if model is None else model
            plain = not (self.is_fsdp_enabled or self.is_deepspeed_enabled or hasattr(model, "peft_config"))
            if not plain or not (Path(resume_from_checkpoint) / "config.json").is_file():
                return super()._load_from_checkpoint(resume_from_checkpoint, model)
            fresh = type(model).from_pretrained(resume_from_checkpoint, dtype=model.dtype)
            model.load_state_dict(fresh.state_dict(), strict=True)
            del fresh

        def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
            import torch
            from torch.nn.utils.rnn import pad_sequence

            inputs = self._prepare_inputs(inputs)
            with torch.no_grad():
                logits, targets, soft, keep = label_logits(model, inputs, self.input_dtype)
            ids = torch.tensor(self.label_ids, device=targets.device)
            is_label = torch.isin(targets, ids)  # end-of-turn rows (train_eot) are not steps
            probs = torch.softmax(logits[is_label][:, self.label_ids], dim=-1)
            classes = (targets[is_label].unsqueeze(1) == ids).float().argmax(1).float()
            gold = torch.stack([classes, soft[is_label]], dim=-1)
            # one row per item (padded with -100), so that the Trainer can gather and truncate across processes
            counts = torch.bincount(keep.nonzero()[:, 0][is_label], minlength=keep.shape[0]).tolist()
            p_out, y_out = (
                pad_sequence(list(torch.split(t, counts)), batch_first=True, padding_value=-100.0)
                for t in (probs, gold)
            )
            return None, p_out, y_out

    return PRMTrainer


def _metrics_fn(label_mode: str):
    def compute(ev) -> dict:
        probs, y = ev.predictions, ev.label_ids
        probs = probs.reshape(-1, probs.shape[-1])
        y = y.reshape(-1, 2)
        m = y[:, 0] != -100
        return step_metrics(probs[m], y[m, 0].astype(int), y[m, 1], label_mode)

    return compute
