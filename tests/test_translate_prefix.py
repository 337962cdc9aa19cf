"""translate()'s speed-ups change nothing: the prefill in groups of rows with the shared prefix run once, finished
rows leaving the batch, a LoRA adapter merged while it translates."""
from __future__ import annotations

import contextlib

import pytest
import torch

import slt_hydra.generation as generation
from slt_hydra.data import build_messages
from slt_hydra.generation import prefill
from slt_hydra.generation import translate_chat as translate

GLOSSES = ["IX-1 LIKE BOOK", "NEXT-WEEK fs-JOHN VISIT GRANDMOTHER HOUSE WHY", "TOMORROW RAIN",
           "POSS-2 CAT SLEEP WHERE", "YESTERDAY IX-3 BUY NEW CAR NOT"]


def load(tiny_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    return model, tokenizer


def left_padded_prompts(tokenizer, cfg):
    """The chat prompts of GLOSSES, tokenized as translate() does: left padding, no extra special tokens."""
    prompts = [tokenizer.apply_chat_template(build_messages(g, cfg.dataset), add_generation_prompt=True,
                                             tokenize=False) for g in GLOSSES]
    tokenizer.padding_side = "left"
    return tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)


def one_generate_call(model, enc, kwargs, stop_ids):
    return model.generate(**enc, **kwargs)[:, enc["input_ids"].shape[1]:]


def test_batched_translation_matches_one_plain_generate_call(tiny_model, make_cfg, monkeypatch):
    """translate() (prefill in groups of 2 rows with the shared prefix + rounds that drop finished rows) against
    one plain generate call per batch."""
    cfg = make_cfg("model=local", f"model.path={tiny_model}", "generate.max_new_tokens=8")
    model, tokenizer = load(tiny_model)
    calls = []  # (cache passed?, rows) of every generate call
    generate = model.generate

    def recording_generate(**kwargs):
        calls.append(("past_key_values" in kwargs and kwargs["past_key_values"] is not None,
                      kwargs["input_ids"].shape[0]))
        return generate(**kwargs)

    monkeypatch.setattr(model, "generate", recording_generate)
    monkeypatch.setattr(generation, "PREFILL_CHUNK_ROWS", 2)  # 5 rows: groups of 2, 2 and 1
    ours = translate(model, tokenizer, GLOSSES, cfg.dataset, cfg.generate, batch_size=5)
    assert calls[0] == (True, 5)  # the prompts came in as a cache
    monkeypatch.setattr(generation, "prefill", lambda model, enc, pad_token_id, chunk_rows: dict(enc))
    monkeypatch.setattr(generation, "generate_dropping_finished", one_generate_call)
    calls.clear()
    plain = translate(model, tokenizer, GLOSSES, cfg.dataset, cfg.generate, batch_size=5)
    assert calls == [(False, 5)]
    assert ours == plain


def test_dropping_finished_rows_gives_the_same_tokens(tiny_model, make_cfg):
    cfg = make_cfg("model=local", f"model.path={tiny_model}")
    model, tokenizer = load(tiny_model)
    enc = left_padded_prompts(tokenizer, cfg)
    width = enc["input_ids"].shape[1]
    settings = dict(max_new_tokens=12, do_sample=False, num_beams=1, pad_token_id=tokenizer.pad_token_id,
                    temperature=None, top_p=None, top_k=None)
    torch.manual_seed(3)
    with torch.no_grad():  # larger random weights: the tiny model's own init repeats one token in every row
        for weight in model.parameters():
            if weight.dim() > 1:
                weight.normal_(0, 0.5)
    with torch.inference_mode():
        free = model.generate(**enc, **settings)[:, width:]
    # Stop tokens that end two rows early, at different steps, while the others run on to the limit.
    stop = [int(free[0, 1]), int(free[2, 4])]
    settings["eos_token_id"] = stop
    rows_per_call = []
    generate = model.generate

    def recording_generate(**kwargs):
        rows_per_call.append(kwargs["input_ids"].shape[0])
        return generate(**kwargs)

    with torch.inference_mode():
        plain = model.generate(**enc, **settings)[:, width:]
        model.generate = recording_generate
        dropped = generation.generate_dropping_finished(model, dict(enc), settings, stop, every=2)
    assert rows_per_call[0] == len(GLOSSES) and min(rows_per_call) == len(GLOSSES) - 2  # rows really left
    assert len(rows_per_call) == 6  # 12 tokens in rounds of 2
    assert torch.equal(dropped, plain)


def compare_with_plain_generate(model, enc, laid_out, pad_token_id):
    """generate from ``laid_out`` (prefill's result) gives plain generate's tokens and scores on ``enc``."""
    settings = dict(max_new_tokens=4, do_sample=False, output_scores=True, return_dict_in_generate=True,
                    pad_token_id=pad_token_id)
    width = enc["input_ids"].shape[1]
    with torch.inference_mode():
        plain = model.generate(**enc, **settings)
        ours = model.generate(**laid_out, **settings)
    assert torch.equal(plain.sequences[:, width:], ours.sequences[:, width:])
    for a, b in zip(plain.scores, ours.scores):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("chunk_rows", [None, 2, 32])
def test_prefill_caches_the_system_turn_once_and_keeps_the_scores(tiny_model, make_cfg, chunk_rows):
    """The shared system turn computed once; then generate prefills the rest (None) or groups of rows did (2:
    groups of 2, 2 and 1, padded to different widths; 32: one group)."""
    cfg = make_cfg("model=local", f"model.path={tiny_model}")
    model, tokenizer = load(tiny_model)
    enc = left_padded_prompts(tokenizer, cfg)
    width = enc["input_ids"].shape[1]
    forwards = []  # (rows, columns) of every forward prefill ran itself
    forward = model.forward

    def recording_forward(*args, **kwargs):
        forwards.append(tuple(kwargs["input_ids"].shape))
        return forward(*args, **kwargs)

    model.forward = recording_forward
    with torch.inference_mode():
        laid_out = prefill(model, enc, tokenizer.pad_token_id, chunk_rows=chunk_rows)
    del model.forward
    system_turn = tokenizer.apply_chat_template([{"role": "system", "content": cfg.dataset.system_prompt}],
                                                tokenize=False)
    shared = forwards[0][1]
    assert forwards[0][0] == 1 and shared >= len(tokenizer(system_turn)["input_ids"])  # one row: the shared turn
    assert laid_out["input_ids"].shape == enc["input_ids"].shape
    assert laid_out["attention_mask"].sum() == enc["attention_mask"].sum()
    own = enc["attention_mask"].sum(1) - shared  # each row's tokens after the shared turn
    if chunk_rows is None:
        assert len(forwards) == 1 and laid_out["past_key_values"].get_seq_length() == shared
    else:  # every row but its last token cached, each group padded to its own longest row only
        groups = [own[i:i + chunk_rows] for i in range(0, len(GLOSSES), chunk_rows)]
        assert forwards[1:] == [(len(g), int(g.max()) - 1) for g in groups]
        assert laid_out["past_key_values"].get_seq_length() == width - 1
    compare_with_plain_generate(model, enc, laid_out, tokenizer.pad_token_id)


def test_prefill_in_groups_without_a_shared_prefix(tiny_model, make_cfg):
    cfg = make_cfg("model=local", f"model.path={tiny_model}")
    model, tokenizer = load(tiny_model)
    enc = left_padded_prompts(tokenizer, cfg)
    with torch.inference_mode():
        laid_out = prefill(model, enc, tokenizer.pad_token_id, share_prefix=False, chunk_rows=2)
    assert torch.equal(laid_out["input_ids"], enc["input_ids"])  # plain left padding: nothing to re-lay out
    assert laid_out["past_key_values"].get_seq_length() == enc["input_ids"].shape[1] - 1
    compare_with_plain_generate(model, enc, laid_out, tokenizer.pad_token_id)


def test_no_prefill_for_a_single_prompt(tiny_model, make_cfg):
    model, tokenizer = load(tiny_model)
    enc = tokenizer(["just one prompt here"], return_tensors="pt", add_special_tokens=False)
    assert "past_key_values" not in prefill(model, enc, tokenizer.pad_token_id)


def lora_model(tiny_model, dtype=torch.float32):
    """The tiny model with a LoRA adapter whose B matrices are not zero (a trained one changes the outputs)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=dtype)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if "lora_B" in name:
                weight.normal_(0, 0.5)
    return model.eval()


def test_a_lora_adapter_is_merged_while_it_translates_and_unmerged_after(tiny_model, make_cfg, monkeypatch):
    from transformers import AutoTokenizer

    cfg = make_cfg("model=local", f"model.path={tiny_model}", "generate.max_new_tokens=8")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    model = lora_model(tiny_model)
    layers = [m for m in model.modules() if hasattr(m, "lora_A") and hasattr(m, "get_base_layer")]
    before = {name: w.clone() for name, w in model.named_parameters()}
    merged_during = []
    generate = model.generate

    def recording_generate(**kwargs):
        merged_during.append(all(m.merged for m in layers))
        return generate(**kwargs)

    monkeypatch.setattr(model, "generate", recording_generate)
    ours = translate(model, tokenizer, GLOSSES, cfg.dataset, cfg.generate, batch_size=5)
    assert merged_during and all(merged_during)
    assert not any(m.merged for m in layers)
    for name, weight in model.named_parameters():  # unmerged: fp32 rounding at most
        torch.testing.assert_close(weight, before[name], rtol=0, atol=1e-6)
    monkeypatch.setattr(generation, "merged_lora", contextlib.nullcontext)
    merged_during.clear()
    assert translate(model, tokenizer, GLOSSES, cfg.dataset, cfg.generate, batch_size=5) == ours
    assert merged_during and not any(merged_during)
    with model.disable_adapter():  # the adapter does change the outputs: the comparison above means something
        assert translate(model, tokenizer, GLOSSES, cfg.dataset, cfg.generate, batch_size=5) != ours


def test_lora_on_bf16_weights_is_not_merged(tiny_model):
    """Unmerging from bf16 weights would not give them back: merged_lora leaves them alone."""
    model = lora_model(tiny_model, dtype=torch.bfloat16)
    layers = [m for m in model.modules() if hasattr(m, "lora_A") and hasattr(m, "get_base_layer")]
    with generation.merged_lora(model):
        assert not any(m.merged for m in layers)
    fp32 = lora_model(tiny_model)
    with generation.merged_lora(fp32):
        assert all(m.merged for m in fp32.modules() if hasattr(m, "lora_A") and hasattr(m, "get_base_layer"))


def test_the_merge_is_computed_in_fp32_under_a_bf16_autocast(tiny_model):
    """Translation may run under CPU bf16 autocast (hardware.precision=autocast_bf16): the merged weights are still
    W + B @ A * scale in fp32, not a bf16 product."""
    model = lora_model(tiny_model)
    layer = next(m for m in model.modules() if hasattr(m, "lora_A") and hasattr(m, "get_base_layer"))
    weight = layer.get_base_layer().weight
    with torch.no_grad():
        expected = weight + layer.get_delta_weight("default")
    with torch.autocast("cpu", dtype=torch.bfloat16), generation.merged_lora(model):
        torch.testing.assert_close(weight, expected, rtol=0, atol=1e-6)


def test_stop_token_ids_from_generation_config_or_tokenizer():
    from types import SimpleNamespace

    from slt_hydra.generation import stop_token_ids

    def model(eos):
        return SimpleNamespace(generation_config=SimpleNamespace(eos_token_id=eos))

    assert stop_token_ids(model([2, 7]), SimpleNamespace(eos_token_id=9)) == [2, 7]
    assert stop_token_ids(model(2), SimpleNamespace(eos_token_id=9)) == [2]
    assert stop_token_ids(model(None), SimpleNamespace(eos_token_id=9)) == [9]
    assert stop_token_ids(model(None), SimpleNamespace(eos_token_id=None)) == []  # rows then never leave early
