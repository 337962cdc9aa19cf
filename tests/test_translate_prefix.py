"""translate()'s shared-prefix KV cache: the batch's common first tokens are run once, and nothing changes."""
from __future__ import annotations

import torch

import slt_hydra.generation as generation
from slt_hydra.data import build_messages
from slt_hydra.generation import shared_prefix
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
    """translate() (shared prefix + rounds that drop finished rows) against one plain generate call per batch."""
    cfg = make_cfg("model=local", f"model.path={tiny_model}", "generate.max_new_tokens=8")
    model, tokenizer = load(tiny_model)
    calls = []  # (cache passed?, rows) of every generate call
    generate = model.generate

    def recording_generate(**kwargs):
        calls.append(("past_key_values" in kwargs and kwargs["past_key_values"] is not None,
                      kwargs["input_ids"].shape[0]))
        return generate(**kwargs)

    monkeypatch.setattr(model, "generate", recording_generate)
    ours = translate(model, tokenizer, GLOSSES, cfg.dataset, cfg.generate, batch_size=5)
    assert calls[0] == (True, 5)  # the shared system turn came in as a cache
    monkeypatch.setattr(generation, "shared_prefix", lambda model, enc, pad_token_id: dict(enc))
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


def test_shared_prefix_caches_the_system_turn_and_keeps_the_scores(tiny_model, make_cfg):
    cfg = make_cfg("model=local", f"model.path={tiny_model}")
    model, tokenizer = load(tiny_model)
    enc = left_padded_prompts(tokenizer, cfg)
    laid_out = shared_prefix(model, enc, tokenizer.pad_token_id)
    system_turn = tokenizer.apply_chat_template([{"role": "system", "content": cfg.dataset.system_prompt}],
                                                tokenize=False)
    assert laid_out["past_key_values"].get_seq_length() >= len(tokenizer(system_turn)["input_ids"])
    assert laid_out["input_ids"].shape == enc["input_ids"].shape
    assert laid_out["attention_mask"].sum() == enc["attention_mask"].sum()
    settings = dict(max_new_tokens=4, do_sample=False, output_scores=True, return_dict_in_generate=True,
                    pad_token_id=tokenizer.pad_token_id)
    with torch.inference_mode():
        plain = model.generate(**enc, **settings)
        shared = model.generate(**laid_out, **settings)
    assert torch.equal(plain.sequences[:, enc["input_ids"].shape[1]:], shared.sequences[:, enc["input_ids"].shape[1]:])
    for a, b in zip(plain.scores, shared.scores):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_no_shared_prefix_for_a_single_prompt(tiny_model, make_cfg):
    model, tokenizer = load(tiny_model)
    enc = tokenizer(["just one prompt here"], return_tensors="pt", add_special_tokens=False)
    assert "past_key_values" not in shared_prefix(model, enc, tokenizer.pad_token_id)


def test_stop_token_ids_from_generation_config_or_tokenizer():
    from types import SimpleNamespace

    from slt_hydra.generation import stop_token_ids

    def model(eos):
        return SimpleNamespace(generation_config=SimpleNamespace(eos_token_id=eos))

    assert stop_token_ids(model([2, 7]), SimpleNamespace(eos_token_id=9)) == [2, 7]
    assert stop_token_ids(model(2), SimpleNamespace(eos_token_id=9)) == [2]
    assert stop_token_ids(model(None), SimpleNamespace(eos_token_id=9)) == [9]
    assert stop_token_ids(model(None), SimpleNamespace(eos_token_id=None)) == []  # rows then never leave early
