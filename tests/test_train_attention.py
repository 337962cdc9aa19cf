"""How training computes (training.training_kernels): hardware.train_attention, the attention kernel (sdpa or
eager) chosen by measurement on a CPU; the batch's shared first tokens run once; PEFT's input casts left to autocast.

The decision is tested on given timings, the cache by counting how often the timing runs, the timing itself on this
CPU, each change on a real trainer of the tiny model (eager and sdpa, a shared prefix or none, casts or none: the same
loss and gradients; the model runs as loaded afterwards, for translation), and a whole run's MLflow record.
"""
from __future__ import annotations

import json

import pytest

from slt_hydra import precision
from slt_hydra.training import (
    choose_train_attention,
    shared_prefix,
    shared_prefix_length,
    training_kernels,
    typical_length,
)
from tests.conftest import run_app, tiny_args
from tests.test_pipeline import all_runs


@pytest.fixture(autouse=True)
def restore_trl_loss_path(monkeypatch):
    """The chat kind's trainer switches TRL's CPU loss path process-wide (training.score_target_positions_only):
    put it back after each test, for the tests of that switch which share this process."""
    import trl.trainer.utils as trl_utils

    monkeypatch.setattr(trl_utils, "_use_triton", trl_utils._use_triton)


class CountingTiming:
    """Stands in for the timing (not for a model): given milliseconds, and how often it was asked."""

    def __init__(self, milliseconds: dict[str, float]):
        self.milliseconds, self.calls = milliseconds, 0

    def __call__(self, *shape, bf16, threads=None):
        self.calls += 1
        return dict(self.milliseconds)


@pytest.mark.parametrize("milliseconds, expected", [
    ({"sdpa": 20.0, "eager": 4.5}, "eager"),  # bf16 on an AMX Xeon at 16 x 45 tokens: sdpa's backward dominates
    ({"sdpa": 4.2, "eager": 5.2}, "sdpa"),  # fp32 there: the fused kernel wins
    ({"sdpa": 10.0, "eager": 9.5}, "sdpa"),  # within the margin: the model's default stays
])
def test_the_measured_times_decide(milliseconds, expected):
    kernel, reason = precision.decide_attention(milliseconds)
    assert kernel == expected
    assert "sdpa" in reason and "eager" in reason and f"{milliseconds['sdpa']:.2f}" in reason


def test_the_attention_choice_is_kept_per_machine_shape_and_dtype(tmp_path):
    timing = CountingTiming({"sdpa": 20.0, "eager": 4.0})
    first = precision.choose_attention((16, 9, 3, 48, 64), True, 2, tmp_path, measure_fn=timing)
    again = precision.choose_attention((16, 9, 3, 48, 64), True, 2, tmp_path, measure_fn=timing)
    assert timing.calls == 1
    assert (first.kernel, first.cached, again.kernel, again.cached) == ("eager", False, "eager", True)
    assert again.milliseconds == first.milliseconds
    precision.choose_attention((16, 9, 3, 96, 64), True, 2, tmp_path, measure_fn=timing)  # longer sentences
    precision.choose_attention((16, 9, 3, 48, 64), False, 2, tmp_path, measure_fn=timing)  # fp32
    assert timing.calls == 3
    cache = json.loads((tmp_path / precision.CACHE_FILE).read_text())
    assert len(cache) == 3 and all(key.startswith("attention in ") for key in cache)


@pytest.mark.parametrize("bf16", [False, True])
def test_the_attention_timing_runs_both_kernels_on_this_cpu(bf16):
    measured = precision.measure_attention(2, 4, 2, 12, 8, bf16=bf16, threads=1, seconds=0.01)
    assert set(measured) == set(precision.ATTENTION_KERNELS)
    assert all(ms > 0 for ms in measured.values())


def test_typical_length_reads_token_ids_or_a_length_column():
    import datasets

    assert typical_length(datasets.Dataset.from_dict({"input_ids": [[1] * 30, [1] * 50]})) == 40
    assert typical_length(datasets.Dataset.from_dict({"length": [41, 43], "pose_id": ["a", "b"]})) == 48
    assert typical_length(datasets.Dataset.from_dict({"text": ["a"]})) is None


def build_trainer(make_cfg, tiny_model, tmp_path, *overrides):
    """The tiny model and its SFTTrainer, built as run.execute builds them (without run.prepare's checks, which
    refuse bf16 weights on a CPU that emulates bf16: the tiny model computes the same there, only slower)."""
    from slt_hydra.data import load_splits
    from slt_hydra.kinds import kind_for
    from slt_hydra.models import locate_model

    cfg = make_cfg(*tiny_args(tiny_model, "dataset.max_train_samples=12", f"cache_dir={tmp_path / 'cache'}",
                              *overrides))
    splits, _ = load_splits(cfg.dataset)
    kind = kind_for(cfg)
    model, tokenizer = kind.load(cfg, locate_model(cfg.model, cfg.cache_dir))
    trainer = kind.trainer(cfg, model, tokenizer, splits, kind.training_arguments(cfg, tmp_path / "out"), False, [])
    return cfg, model, trainer


def loss_and_gradients(trainer, batch):
    """One forward and backward as a training step runs it (autocast where the trainer uses it)."""

    model = trainer.model
    model.train()
    model.zero_grad(set_to_none=True)
    with trainer.accelerator.autocast():  # (train() gets it from accelerate's wrapper around the forward)
        loss = trainer.compute_loss(model, batch)
    loss.backward()
    grads = {name: p.grad.detach().float().clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return loss.detach().float(), grads


def padded_batch(trainer):
    """A batch of examples of unequal length (so the attention masks carry padding)."""
    batch = next(iter(trainer.get_train_dataloader()))
    assert (batch["attention_mask"] == 0).any(), "the batch needs padding to test the masks"
    return batch


def test_eager_and_sdpa_train_the_same_and_translation_attends_as_loaded(make_cfg, tiny_model, tmp_path):
    """The plain model (sdpa, every position of every row) against training_kernels with eager attention."""
    import torch

    cfg, model, trainer = build_trainer(make_cfg, tiny_model, tmp_path, "hardware.train_attention=eager",
                                        "lora.dropout=0")
    loaded = model.config._attn_implementation
    assert loaded == "sdpa"
    batch = padded_batch(trainer)
    sdpa_loss, sdpa_grads = loss_and_gradients(trainer, batch)
    with training_kernels(cfg, model, trainer) as choice:
        assert (choice.kernel, model.config._attn_implementation) == ("eager", "eager")
        eager_loss, eager_grads = loss_and_gradients(trainer, batch)
    assert model.config._attn_implementation == loaded  # translation runs with the kernel the model loaded with
    assert sdpa_grads and set(sdpa_grads) == set(eager_grads)
    assert torch.allclose(eager_loss, sdpa_loss, rtol=1e-4, atol=1e-6)
    for name, grad in sdpa_grads.items():
        assert torch.allclose(eager_grads[name], grad, rtol=1e-4, atol=1e-6), name


def test_under_autocast_the_adapters_skip_peft_input_casts_with_the_same_gradients(make_cfg, tiny_model, tmp_path):
    """bf16 weights under autocast: PEFT would cast each adapter input to fp32 and autocast back to bf16; without
    those casts training computes exactly the same."""
    import torch
    from peft.tuners.tuners_utils import BaseTunerLayer

    cfg, model, trainer = build_trainer(make_cfg, tiny_model, tmp_path, "hardware.precision=bfloat16",
                                        "hardware.dtype=bfloat16", "hardware.train_attention=sdpa",
                                        "lora.dropout=0")
    assert trainer.args.bf16 and next(model.parameters()).dtype == torch.bfloat16
    layers = [m for m in trainer.model.modules() if isinstance(m, BaseTunerLayer)]
    batch = padded_batch(trainer)
    with shared_prefix(model):  # as training_kernels runs it, but with PEFT's casts
        cast_loss, cast_grads = loss_and_gradients(trainer, batch)
    with training_kernels(cfg, model, trainer):
        assert layers and not any(layer.cast_input_dtype_enabled for layer in layers)
        loss, grads = loss_and_gradients(trainer, batch)
    assert all(layer.cast_input_dtype_enabled for layer in layers)  # restored
    assert torch.equal(loss, cast_loss)
    assert cast_grads and all(torch.equal(grads[name], grad) for name, grad in cast_grads.items())


def test_auto_is_measured_at_the_runs_shape_on_a_cpu_and_left_alone_elsewhere(make_cfg, tiny_model, tmp_path):
    cfg, model, trainer = build_trainer(make_cfg, tiny_model, tmp_path, "hardware.train_attention=auto")
    choice = choose_train_attention(cfg, model, trainer)
    assert choice.kernel in precision.ATTENTION_KERNELS and "measured" in choice.reason
    assert set(choice.milliseconds) == set(precision.ATTENTION_KERNELS)
    cache = json.loads((tmp_path / "cache" / precision.CACHE_FILE).read_text())
    (key,) = [key for key in cache if key.startswith("attention in fp32")]
    length = typical_length(trainer.train_dataset)
    assert f"| 4x4x2x{length}x16" in key  # batch 4, 4 heads, 2 key/value heads, the data's length, head dim 16
    assert choose_train_attention(cfg, model, trainer).cached
    cfg.hardware.device = "cuda"  # a GPU keeps the model's own kernel
    assert choose_train_attention(cfg, model, trainer) is None


def test_a_run_records_the_measured_attention_kernel(tiny_model, tmp_path):
    result = run_app(tiny_args(tiny_model, "hardware.train_attention=auto", f"cache_dir={tmp_path / 'cache'}",
                               f"hydra.run.dir={tmp_path / 'run'}"), tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "hardware.train_attention -> " in result.stderr + result.stdout
    (run,) = all_runs(tmp_path)
    assert run.data.tags["train_attention"] in precision.ATTENTION_KERNELS
    assert "measured" in run.data.tags["train_attention_reason"]
    assert run.data.tags["train_attention_cached"] == "false"  # a fresh cache: timed in this run
    assert run.data.metrics["attention_ms_sdpa"] > 0 and run.data.metrics["attention_ms_eager"] > 0
    assert run.data.metrics["train_tokens"] > 0 and "test_bleu4" in run.data.metrics


def test_shared_prefix_length_counts_common_unpadded_first_positions():
    import torch

    ids = torch.tensor([[1, 2, 3, 4, 5, 6, 0], [1, 2, 3, 4, 5, 7, 8], [1, 2, 3, 4, 9, 9, 9]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 0], [1] * 7, [1] * 7])
    assert shared_prefix_length(ids, None, mask) == 4
    assert shared_prefix_length(ids[:1], None, mask[:1]) == 0  # one row: nothing to share
    assert shared_prefix_length(ids[:, :3], None, mask[:, :3]) == 0  # too short to be worth it
    same = torch.tensor([[1, 2, 3, 4, 5, 6]] * 2)
    assert shared_prefix_length(same, None, torch.ones_like(same)) == 5  # each row keeps one position of its own
    embeds = torch.nn.functional.one_hot(ids, 10).float()
    assert shared_prefix_length(None, embeds, mask) == 4


def test_sharing_the_prefix_trains_the_same_with_fewer_positions(make_cfg, tiny_model, tmp_path):
    import torch

    cfg, model, trainer = build_trainer(make_cfg, tiny_model, tmp_path, "hardware.train_attention=sdpa",
                                        "lora.dropout=0")
    batch = padded_batch(trainer)
    common = shared_prefix_length(batch["input_ids"], None, batch["attention_mask"])
    assert common >= 4, "the chat template's system turn starts every row"
    positions = []
    hook = model.get_decoder().layers[0].register_forward_hook(
        lambda module, args, out: positions.append(tuple(args[0].shape[:2])))
    plain_loss, plain_grads = loss_and_gradients(trainer, batch)
    rows, width = batch["input_ids"].shape
    assert positions == [(rows, width)]
    positions.clear()
    with shared_prefix(model):
        shared_loss, shared_grads = loss_and_gradients(trainer, batch)
        assert positions == [(1, common), (rows, width - common)]  # the prefix once, then the rest of every row
        positions.clear()
        with torch.no_grad():  # generation's calls (a cache of their own) run as before
            model(input_ids=batch["input_ids"][:, :3], use_cache=True)
        assert positions == [(rows, 3)]
    hook.remove()
    assert "forward" not in vars(model.get_decoder())  # the class's own forward again
    assert torch.allclose(shared_loss, plain_loss, rtol=1e-5, atol=1e-6)
    assert plain_grads and set(shared_grads) == set(plain_grads)
    for name, grad in plain_grads.items():
        assert torch.allclose(shared_grads[name], grad, rtol=1e-4, atol=1e-6), name


def test_sharing_the_prefix_of_embeddings_gives_the_same_loss(tiny_model):
    """The pose kind hands the decoder embeddings (soft tokens among the prompt's): the prefix is found in them."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 1000, (3, 14), generator=generator)
    ids[:, :6] = ids[0, :6]  # a shared prompt head
    mask = torch.ones_like(ids)
    mask[2, 10:] = 0
    embeds = model.get_input_embeddings()(ids)
    embeds[1, 8] = torch.randn(embeds.shape[-1], generator=generator)  # a soft token: not a vocabulary row
    labels = ids.masked_fill(mask == 0, -100)
    plain = model(inputs_embeds=embeds, attention_mask=mask, labels=labels).loss
    with shared_prefix(model):
        shared = model(inputs_embeds=embeds, attention_mask=mask, labels=labels).loss
    assert torch.allclose(shared, plain, rtol=1e-5, atol=1e-6)


def test_dropout_in_the_decoder_keeps_every_row_to_itself(make_cfg, tiny_model, tmp_path):
    """LoRA dropout would share its masks across the rows for the prefix: then nothing is shared."""
    cfg, model, trainer = build_trainer(make_cfg, tiny_model, tmp_path, "hardware.train_attention=sdpa",
                                        "lora.dropout=0.1")
    batch = padded_batch(trainer)
    positions = []
    hook = model.get_decoder().layers[0].register_forward_hook(
        lambda module, args, out: positions.append(tuple(args[0].shape[:2])))
    with shared_prefix(model):
        loss_and_gradients(trainer, batch)
    hook.remove()
    assert positions == [tuple(batch["input_ids"].shape)]
