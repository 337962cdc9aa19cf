"""Sequence-to-sequence baselines (T5, NLLB): the zoo's arch numbers, the rules, and the whole pipeline on tiny
real encoder-decoders built here (random weights; tokenizers trained in well under a second on the demo corpus,
since nothing can come from the Hub)."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import ROOT, app_env, compose_config, read_rows, run_app, tiny_args
from slt_hydra import memory, validate
from slt_hydra.machine import Machine

DEMO = ROOT / "slt_hydra" / "resources" / "demo"
CPU = Machine(cuda=False, gpu_name=None, gpu_memory_gb=None, gpu_bf16=False, cpu_bf16=False, ram_gb=24.0)
SEQ2SEQ_MODELS = ["t5_base", "t5_large", "nllb_200_distilled_600m", "nllb_200_1.3b"]


def demo_texts() -> list[str]:
    texts = []
    for path in sorted(DEMO.glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            texts += [row["source"], row["target"]]
    return texts


def t5_tokenizer():
    """A real T5Tokenizer (Unigram, <pad>=0 </s>=1 <unk>=2, EOS appended) over a vocabulary trained on the demo."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import T5Tokenizer

    unigram = Tokenizer(models.Unigram())
    unigram.pre_tokenizer = pre_tokenizers.Metaspace()
    unigram.train_from_iterator(demo_texts(), trainers.UnigramTrainer(
        vocab_size=600, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>"))
    vocab = [tuple(piece) for piece in json.loads(unigram.to_str())["model"]["vocab"]]
    return T5Tokenizer(vocab=vocab, extra_ids=0)


def nllb_tokenizer():
    """A real NllbTokenizer (BPE, the 202 FLORES-200 language codes as special tokens) trained on the demo."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import NllbTokenizer

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.Metaspace()
    bpe.train_from_iterator(demo_texts(), trainers.BpeTrainer(vocab_size=600,
                                                              special_tokens=["<s>", "<pad>", "</s>", "<unk>"]))
    model = json.loads(bpe.to_str())["model"]
    return NllbTokenizer(vocab=model["vocab"], merges=[tuple(m) for m in model["merges"]])


@pytest.fixture(scope="session")
def tiny_t5(tmp_path_factory) -> Path:
    """A 2+2-layer T5 (d_model 64: bitsandbytes' CPU 4-bit needs rows of 64+) with its T5Tokenizer: T5's real code
    paths (relative attention, q/k/v/o, wi/wo)."""
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    tokenizer = t5_tokenizer()
    torch.manual_seed(0)
    config = T5Config(vocab_size=len(tokenizer), d_model=64, d_ff=128, d_kv=16, num_heads=4, num_layers=2,
                      num_decoder_layers=2, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                      decoder_start_token_id=tokenizer.pad_token_id)
    folder = tmp_path_factory.mktemp("tiny_t5")
    T5ForConditionalGeneration(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_nllb(tmp_path_factory) -> Path:
    """A 2+2-layer M2M100 (NLLB's architecture, d_model 32) with an NllbTokenizer: language codes, out_proj."""
    import torch
    from transformers import M2M100Config, M2M100ForConditionalGeneration

    tokenizer = nllb_tokenizer()
    torch.manual_seed(0)
    config = M2M100Config(vocab_size=len(tokenizer), d_model=32, encoder_layers=2, decoder_layers=2,
                          encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64,
                          max_position_embeddings=256, pad_token_id=tokenizer.pad_token_id,
                          bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                          decoder_start_token_id=tokenizer.eos_token_id)
    folder = tmp_path_factory.mktemp("tiny_nllb")
    M2M100ForConditionalGeneration(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def seq2seq_args(model_dir: Path, family: str, *extra: str, dev_loss: bool = True) -> list[str]:
    """tiny_args for an encoder-decoder; dev_loss: evaluate it before and after the 2 steps."""
    evaluate = ["train.eval_strategy=steps", "train.eval_steps=2"] if dev_loss else []
    return tiny_args(model_dir, "model.architecture=seq2seq", f"model.family={family}", *evaluate, *extra)


def only_run(tmp_path: Path):
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("slt_hydra").experiment_id])
    return run


# --------------------------------------------------------------------------- the zoo


@pytest.mark.parametrize("model", SEQ2SEQ_MODELS)
def test_zoo_arch_numbers_give_the_real_parameter_and_lora_counts(model):
    """The planner's counts equal numel() of the transformers model built from the same numbers (on the meta
    device: no memory, no download), LoRA included with lora=default renamed to the model's modules."""
    import torch
    from peft import get_peft_model
    from transformers import M2M100Config, M2M100ForConditionalGeneration, T5Config, T5ForConditionalGeneration

    from slt_hydra.models import peft_config

    cfg = compose_config([f"model={model}"])
    a = cfg.model.arch
    assert cfg.model.architecture == "seq2seq" and (cfg.model.source_prefix is not None) == (cfg.model.family == "t5")
    if cfg.model.family == "t5":
        config = T5Config(d_model=a.hidden_size, d_ff=a.intermediate_size, num_layers=a.num_layers,
                          num_decoder_layers=a.decoder_layers, num_heads=a.num_attention_heads, d_kv=a.head_dim,
                          vocab_size=a.vocab_size, relative_attention_num_buckets=a.relative_attention_buckets)
        build = T5ForConditionalGeneration
    else:
        config = M2M100Config(vocab_size=a.vocab_size, d_model=a.hidden_size, encoder_layers=a.num_layers,
                              decoder_layers=a.decoder_layers, encoder_attention_heads=a.num_attention_heads,
                              decoder_attention_heads=a.num_attention_heads, encoder_ffn_dim=a.intermediate_size,
                              decoder_ffn_dim=a.intermediate_size, max_position_embeddings=a.max_position_embeddings)
        build = M2M100ForConditionalGeneration
    with torch.device("meta"):
        real = build(config)
    arch = memory.Arch.from_cfg(cfg.model)
    assert memory.count_params(arch).total == sum(p.numel() for p in real.parameters())
    adapted = get_peft_model(real, peft_config(cfg.lora, task_type="SEQ_2_SEQ_LM", family=cfg.model.family))
    lora = sum(p.numel() for name, p in adapted.named_parameters() if "lora_" in name)
    assert lora == memory.lora_param_count(arch, cfg.lora) > 0
    assert not validate.warnings(cfg), "lora=default matches the model and a seq2seq model needs no chat template"


def test_encoder_decoder_plan_counts_the_materialized_logits():
    # NLLB's 256k vocabulary: the logits of a batch, not the weights, dominate the training peak.
    plan = memory.plan_memory(compose_config(["model=nllb_200_distilled_600m", "hardware=cpu"]), CPU)
    rows = dict((row.what, row.bytes) for row in plan.peaks["training step"][1])
    assert rows["loss (logits)"] >= 16 * 256 * 256206 * 16  # batch 16 x 256 tokens x V x (4 + 12) bytes
    assert plan.peak_phase == "training step" and plan.floor_gb < 4
    t5 = memory.plan_memory(compose_config(["model=t5_base", "hardware=cpu"]), CPU)
    assert t5.fits and t5.params == 222_903_552


# --------------------------------------------------------------------------- rules


def test_rules_for_seq2seq(tmp_path):
    def problems(*overrides):
        return validate.check(compose_config(list(overrides), tmp_path), CPU)

    assert problems("model=t5_base") == []
    found = problems("model=t5_base", "eval.only=true", "eval.shots=2")
    assert len(found) == 1 and "k-shot" in found[0]
    found = problems("model.architecture=seq2seq")  # the embedded SmolLM2 is decoder-only
    assert len(found) == 1 and "decoder-only" in found[0]
    found = problems("model=nllb_200_distilled_600m", "dataset.target_lang=Klingon")
    assert len(found) == 1 and "model.tgt_lang" in found[0]
    assert problems("model=nllb_200_distilled_600m", "dataset.target_lang=Klingon", "model.tgt_lang=eng_Latn") == []
    found = problems("model.architecture=encoder_only")
    assert len(found) == 1 and "causal_lm" in found[0]


def test_language_codes_and_prefix_follow_the_dataset(tmp_path):
    from slt_hydra.models import language_codes, source_prefix

    demo = compose_config(["model=nllb_200_distilled_600m"], tmp_path)
    assert language_codes(demo) == ("eng_Latn", "eng_Latn")
    phoenix = compose_config(["model=nllb_200_distilled_600m", "dataset=phoenix14t"], tmp_path)
    assert language_codes(phoenix) == ("deu_Latn", "deu_Latn")
    assert language_codes(compose_config(["model=t5_base"], tmp_path)) is None
    assert source_prefix(compose_config(["model=t5_base"], tmp_path)) == "translate ASL gloss to English: "
    swapped = compose_config(["model=t5_base", "dataset.direction=text2gloss"], tmp_path)
    assert source_prefix(swapped) == "translate English to ASL gloss: "


def test_tokenize_ends_every_target_with_one_eos():
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from slt_hydra.data import Example
    from slt_hydra.kinds.seq2seq import tokenize

    examples = [Example("IX-1 LIKE COFFEE", "I like coffee.", "a:1"), Example("RAIN TOMORROW", "It rains.", "a:2")]
    t5 = t5_tokenizer()  # appends </s> itself: not twice
    labels = tokenize(examples, t5, "translate: ", 64)["labels"]
    assert all(ids[-1] == t5.eos_token_id and ids[-2] != t5.eos_token_id for ids in labels)
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))  # a tokenizer that appends nothing
    bpe.pre_tokenizer = pre_tokenizers.Metaspace()
    bpe.train_from_iterator(demo_texts(), trainers.BpeTrainer(vocab_size=300,
                                                              special_tokens=["<pad>", "</s>", "<unk>"]))
    plain = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="</s>", pad_token="<pad>", unk_token="<unk>")
    dataset = tokenize(examples, plain, "", 64)
    assert all(ids[-1] == plain.eos_token_id for ids in dataset["labels"])
    assert dataset["input_ids"][0] == plain("IX-1 LIKE COFFEE")["input_ids"]


# --------------------------------------------------------------------------- the pipeline


@pytest.fixture(scope="module")
def t5_run(tiny_t5, tmp_path_factory) -> Path:
    """One whole run on the tiny T5 (lora=default: q/k/v/o_proj read as T5's q/k/v/o), shared by the tests below."""
    folder = tmp_path_factory.mktemp("t5_run")
    result = run_app(seq2seq_args(tiny_t5, "t5", "model.source_prefix='translate {source_lang} to {target_lang}: '",
                                  f"hydra.run.dir={folder / 'run'}"), folder)
    assert result.returncode == 0, result.stderr[-3000:]
    return folder


def test_t5_run_trains_translates_scores_and_logs_like_an_llm_run(t5_run, tiny_t5):
    out = t5_run / "run"
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert config["task_type"] == "SEQ_2_SEQ_LM" and set(config["target_modules"]) == {"q", "k", "v", "o"}
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    rows = read_rows(out / "predictions_test.csv")
    assert len(rows) == 4 and set(rows[0]) == {"source", "reference", "hypothesis", "zero_shot"}
    assert len(read_rows(out / "predictions_dev.csv")) == 4

    run = only_run(t5_run)
    metrics, tags = run.data.metrics, run.data.tags
    assert run.info.status == "FINISHED" and tags["slt.status"] == "finished"
    for name in ("test_bleu4", "test_chrf", "test_rougeL", "dev_bleu4", "zeroshot_test_bleu4", "dev_loss",
                 "zeroshot_dev_loss", "train_tokens_per_second", "wall_seconds", "peak_memory_gb", "loss"):
        assert name in metrics and math.isfinite(metrics[name]), name
    assert metrics["dev_loss"] < metrics["zeroshot_dev_loss"]  # 2 LoRA steps already help
    assert tags["architecture"] == "seq2seq" and tags["source_prefix"] == "translate ASL gloss to English: "
    assert 0 < int(tags["trainable_params"]) < int(tags["param_count"])
    # Source and target tokens are counted: more than the 8 longest of the 16 sources (2 steps x 4 pairs) hold.
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_t5)
    rows = [json.loads(line) for line in (DEMO / "train.jsonl").read_text().splitlines()[:16]]
    sources = sorted(len(tokenizer(tags["source_prefix"] + row["source"])["input_ids"]) for row in rows)
    assert metrics["train_tokens"] > sum(sources[-8:])
    assert run.data.params["model.architecture"] == "seq2seq"


def test_translate_and_merge_clis_reload_a_t5_run(t5_run, tmp_path):
    glosses = tmp_path / "glosses.txt"
    glosses.write_text("IX-1 LIKE COFFEE\n\nTOMORROW RAIN\n", encoding="utf-8")
    env = app_env(tmp_path)
    done = subprocess.run([sys.executable, "-m", "slt_hydra.translate", "--run-dir", str(t5_run / "run"),
                           "--input", str(glosses)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.split("\n")
    assert len(lines) == 4 and lines[1] == "" and lines[3] == ""  # one line per input line, the blank one kept

    merged = tmp_path / "merged"
    done = subprocess.run([sys.executable, "-m", "slt_hydra.merge", "--run-dir", str(t5_run / "run"),
                           "--out", str(merged)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "AutoModelForSeq2SeqLM" in done.stdout
    from transformers import AutoConfig

    assert AutoConfig.from_pretrained(merged).prefix == "translate ASL gloss to English: "


def test_nllb_8bit_run_with_language_codes(tiny_nllb, tmp_path):
    # LLM.int8 base weights on CPU, lora=default's o_proj read as NLLB's out_proj, eng_Latn from the demo dataset.
    result = run_app(seq2seq_args(tiny_nllb, "nllb", "quant=8bit", "eval.zero_shot=false", "eval.splits=[test]",
                                  "eval.objective=test_bleu4", f"hydra.run.dir={tmp_path / 'run'}", dev_loss=False),
                     tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    run = only_run(tmp_path)
    tags, metrics = run.data.tags, run.data.metrics
    assert run.info.status == "FINISHED" and tags["precision"] == "8bit"
    assert (tags["src_lang"], tags["tgt_lang"]) == ("eng_Latn", "eng_Latn")
    assert all(math.isfinite(metrics[name]) for name in ("test_bleu4", "test_chrf", "train_tokens_per_second"))
    hypotheses = [row["hypothesis"] for row in read_rows(tmp_path / "run" / "predictions_test.csv")]
    assert len(hypotheses) == 4 and not any("_Latn" in text for text in hypotheses)  # codes are not text
    config = json.loads((tmp_path / "run" / "adapter" / "adapter_config.json").read_text())
    assert set(config["target_modules"]) == {"q_proj", "k_proj", "v_proj", "out_proj"}
    saved = json.loads((tmp_path / "run" / "adapter" / "tokenizer_config.json").read_text())
    assert saved.get("src_lang") == "eng_Latn" and saved.get("tgt_lang") == "eng_Latn"
