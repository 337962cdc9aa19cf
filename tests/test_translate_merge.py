"""`python -m slt_hydra.translate` and `python -m slt_hydra.merge` on runs trained by the app itself.

Two tiny runs are trained once for the module (the tiny random Llama, 2 steps): one in fp32, one on 4-bit
weights (QLoRA). The learning rate is raised and warmup removed so that 2 steps move the LoRA B matrices
far from zero: the adapter then visibly changes logits and greedy outputs.
"""
from __future__ import annotations

import csv
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from conftest import app_env, run_app, tiny_args
from slt_hydra import merge as merge_cli
from slt_hydra import translate as translate_cli
from slt_hydra.generation import translate_chat as translate
from slt_hydra.models import load_causal_lm, locate_model

GLOSSES = ["IX-1 LIKE COFFEE", "TOMORROW IX-1 GO STORE FINISH", "HELLO"]
TRAIN = ("train.learning_rate=5e-2", "train.warmup_steps=0", "eval.zero_shot=false", "eval.splits=[test]",
         "eval.objective=test_bleu4")


def train(folder: Path, model: Path, *extra: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    result = run_app(tiny_args(model, *TRAIN, *extra, f"hydra.run.dir={folder / 'run'}"), folder)
    assert result.returncode == 0, result.stderr[-3000:]
    return folder


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model) -> Path:
    """A folder holding run/ (the run directory) and mlflow.db (its MLflow store)."""
    return train(tmp_path_factory.mktemp("fp32"), tiny_model)


@pytest.fixture(scope="module")
def trained_4bit(tmp_path_factory, tiny_model) -> Path:
    return train(tmp_path_factory.mktemp("qlora"), tiny_model, "quant=4bit")


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # in-process calls set it too; restored after each test


@pytest.fixture(scope="module")
def reference(trained):
    """base + adapter and the run's config, loaded here without the CLI's helpers."""
    from peft import PeftModel

    cfg = OmegaConf.load(trained / "run" / ".hydra" / "config.yaml")
    base, tokenizer = load_causal_lm(cfg, locate_model(cfg.model, cfg.cache_dir))
    model = PeftModel.from_pretrained(base, str(trained / "run" / "adapter")).eval()
    return model, tokenizer, cfg


def cli(module: str, *args: str, cwd: Path, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=app_env(cwd), input=stdin,
                          capture_output=True, text=True, timeout=300)


def lines_of(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    assert text.endswith("\n")
    return text[:-1].split("\n")


def run_id_of(folder: Path) -> str:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("slt_hydra").experiment_id])
    return run.info.run_id


def test_translate_file_matches_in_process_translate(trained, reference, tmp_path):
    source = tmp_path / "glosses.txt"
    source.write_text("\n".join(GLOSSES) + "\n", encoding="utf-8")
    out = tmp_path / "out" / "en.txt"
    result = cli("slt_hydra.translate", "--run-dir", str(trained / "run"), "--input", str(source),
                 "--output", str(out), "--batch-size", "2", cwd=trained)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "translating" in result.stderr  # the progress bar
    written = lines_of(out)
    assert len(written) == 3

    model, tokenizer, cfg = reference
    expected = translate(model, tokenizer, GLOSSES, cfg.dataset, cfg.generate, 2)
    assert written == [translate_cli.one_line(text) for text in expected]
    assert any(written), "the adapter should make the tiny model say something"


def test_run_id_reproduces_the_runs_own_test_predictions(trained, tmp_path, capsys):
    with (trained / "run" / "predictions_test.csv").open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    source = tmp_path / "test.txt"
    source.write_text("".join(row["source"] + "\n" for row in rows), encoding="utf-8")
    out = tmp_path / "test.en"
    uri = f"sqlite:///{trained / 'mlflow.db'}"
    assert translate_cli.main(["--run-id", run_id_of(trained), "--tracking-uri", uri,
                               "--input", str(source), "--output", str(out)]) == 0
    assert lines_of(out) == [translate_cli.one_line(row["hypothesis"]) for row in rows]
    assert "MLflow run" in capsys.readouterr().err


def test_adapter_route_with_and_without_the_run_config(trained, tiny_model, tmp_path, capsys):
    source = tmp_path / "glosses.txt"
    source.write_text("\n".join(GLOSSES) + "\n", encoding="utf-8")
    outputs = {}
    # Inside the run directory (base taken from adapter_config.json), then a bare copy with --base
    # (default experiment's prompt, which is the demo prompt the run used too).
    bare = tmp_path / "bare_adapter"
    shutil.copytree(trained / "run" / "adapter", bare)
    for name, args in {"run_dir": ["--run-dir", str(trained / "run")],
                       "adapter": ["--adapter", str(trained / "run" / "adapter")],
                       "bare": ["--adapter", str(bare), "--base", str(tiny_model), "--max-new-tokens", "6"]}.items():
        out = tmp_path / f"{name}.txt"
        assert translate_cli.main([*args, "--input", str(source), "--output", str(out)]) == 0, capsys.readouterr().err
        outputs[name] = lines_of(out)
    assert outputs["run_dir"] == outputs["adapter"] == outputs["bare"]
    assert "default experiment" in capsys.readouterr().err  # the bare adapter says whose prompt it used


def test_interactive_reads_lines_until_eof(trained, reference):
    result = cli("slt_hydra.translate", "--run-dir", str(trained / "run"), "--interactive", cwd=trained,
                 stdin=f"{GLOSSES[0]}\n{GLOSSES[2]}\n")
    assert result.returncode == 0, result.stderr[-3000:]
    printed = result.stdout.split("\n")
    assert printed[-1] == "" and len(printed) == 3  # two translations, nothing else on stdout
    assert result.stderr.count(translate_cli.PROMPT) == 3  # asked for a third line, got EOF
    model, tokenizer, cfg = reference
    expected = [translate(model, tokenizer, [g], cfg.dataset, cfg.generate, 1)[0] for g in (GLOSSES[0], GLOSSES[2])]
    assert printed[:2] == [translate_cli.one_line(text) for text in expected]


def logits_and_greedy(model, tokenizer, prompts: list[str]):
    found = []
    for prompt in prompts:
        enc = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
        with torch.inference_mode():
            logits = model(**enc).logits
            ids = model.generate(**enc, max_new_tokens=6, do_sample=False, temperature=None, top_p=None,
                                 top_k=None, pad_token_id=tokenizer.pad_token_id)
        found.append((logits, ids))
    return found


def chat_prompts(tokenizer, cfg) -> list[str]:
    from slt_hydra.data import build_messages

    return [tokenizer.apply_chat_template(build_messages(g, cfg.dataset), add_generation_prompt=True, tokenize=False)
            for g in GLOSSES[:2]]


def test_merge_gives_the_same_model_as_base_plus_adapter(trained, reference, tiny_model, tmp_path, capsys):
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "merged"
    assert merge_cli.main(["--run-dir", str(trained / "run"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert str(out) in printed and "AutoModelForCausalLM.from_pretrained" in printed
    assert "dequantized" not in printed  # fp32 run: nothing was quantized
    assert (out / "model.safetensors").is_file() and not (out / "adapter_config.json").exists()
    with safe_open(str(out / "model.safetensors"), "pt") as weights:
        assert not any("lora" in key for key in weights.keys())

    merged = AutoModelForCausalLM.from_pretrained(out).eval()  # plain transformers, no PEFT
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.chat_template  # saved with the model
    assert merged.dtype == torch.float32
    model, _, cfg = reference
    base = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    prompts = chat_prompts(tokenizer, cfg)
    for (m_logits, m_ids), (a_logits, a_ids), (b_logits, _) in zip(
            logits_and_greedy(merged, tokenizer, prompts), logits_and_greedy(model, tokenizer, prompts),
            logits_and_greedy(base, tokenizer, prompts)):
        assert (m_logits - b_logits).abs().max() > 1e-2  # the adapter really changes the model
        assert torch.allclose(m_logits, a_logits, atol=1e-4)
        assert torch.equal(m_ids, a_ids)  # same greedy tokens as base + adapter

    # --dtype: saved as asked; an existing non-empty --out is refused.
    half = tmp_path / "merged_bf16"
    assert merge_cli.main(["--run-dir", str(trained / "run"), "--out", str(half), "--dtype", "bfloat16"]) == 0
    assert AutoModelForCausalLM.from_pretrained(half).dtype == torch.bfloat16
    capsys.readouterr()
    assert merge_cli.main(["--run-dir", str(trained / "run"), "--out", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err


def test_merge_of_a_4bit_run_uses_the_dequantized_base(trained_4bit, tiny_model, tmp_path, capsys):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "merged"
    assert merge_cli.main(["--run-id", run_id_of(trained_4bit), "--tracking-uri",
                           f"sqlite:///{trained_4bit / 'mlflow.db'}", "--out", str(out)]) == 0
    assert "4-bit" in capsys.readouterr().out and (out / "model.safetensors").is_file()

    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    assert getattr(merged.config, "quantization_config", None) is None and merged.dtype == torch.float32
    tokenizer = AutoTokenizer.from_pretrained(out)
    base = AutoModelForCausalLM.from_pretrained(tiny_model).eval()  # the unquantized original weights
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model),
                                        str(trained_4bit / "run" / "adapter")).eval()
    cfg = OmegaConf.load(trained_4bit / "run" / ".hydra" / "config.yaml")
    prompts = chat_prompts(tokenizer, cfg)
    for (m_logits, m_ids), (a_logits, a_ids), (b_logits, _) in zip(
            logits_and_greedy(merged, tokenizer, prompts), logits_and_greedy(adapted, tokenizer, prompts),
            logits_and_greedy(base, tokenizer, prompts)):
        assert (m_logits - b_logits).abs().max() > 1e-2
        assert torch.allclose(m_logits, a_logits, atol=1e-4)
        assert torch.equal(m_ids, a_ids)


def test_4bit_run_translates_on_its_4bit_base(trained_4bit, tmp_path, capsys):
    source = tmp_path / "glosses.txt"
    source.write_text("\n".join(GLOSSES) + "\n", encoding="utf-8")
    assert translate_cli.main(["--run-dir", str(trained_4bit / "run"), "--input", str(source)]) == 0
    captured = capsys.readouterr()
    assert len(captured.out.split("\n")) == 4 and "(4bit, cpu)" in captured.err


@pytest.mark.parametrize("module", ["slt_hydra.translate", "slt_hydra.merge"])
def test_missing_run_dir_is_one_line_and_exit_2(module, tmp_path):
    args = ["--run-dir", str(tmp_path / "nope")] + (["--out", str(tmp_path / "m")] if module.endswith("merge") else [])
    result = cli(module, *args, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "no such directory" in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_other_errors_exit_2_with_a_message(trained, tmp_path, capsys):
    run = trained / "run"
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n", encoding="utf-8")
    no_adapter = tmp_path / "no_adapter"
    (no_adapter / ".hydra").mkdir(parents=True)
    (no_adapter / ".hydra" / "config.yaml").write_text((run / ".hydra" / "config.yaml").read_text())
    store = f"sqlite:///{trained / 'mlflow.db'}"
    cases = {
        "empty input": ["--run-dir", str(run), "--input", str(empty)],
        "no such file": ["--run-dir", str(run), "--input", str(tmp_path / "missing.txt")],
        "adapter folder": ["--run-dir", str(no_adapter), "--input", str(empty)],
        ".hydra/config.yaml not found": ["--run-dir", str(run / "adapter")],
        "no such run": ["--run-id", "0123456789abcdef0123456789abcdef", "--tracking-uri", store],
        "no MLflow store": ["--run-id", "abc", "--tracking-uri", f"sqlite:///{tmp_path / 'none.db'}"],
        "trained on gloss text, not poses": ["--run-dir", str(run), "--poses", str(empty)],
    }
    for expected, args in cases.items():
        assert translate_cli.main(args) == 2, expected
        err = capsys.readouterr().err
        assert expected in err and err.startswith("slt_hydra.translate: "), (expected, err)
        assert "Traceback" not in err
