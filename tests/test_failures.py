"""Bad input ends in one readable message naming the fix, before anything heavy, with no traceback."""
from __future__ import annotations

import pytest

from conftest import run_app


def refused(result, *needles: str) -> None:
    message = result.stderr
    assert result.returncode != 0, result.stdout[-2000:]
    assert "Traceback" not in message, message[-3000:]
    for needle in needles:
        assert needle in message, message[-3000:]


def test_model_missing_from_the_cache_while_offline(tmp_path):
    result = run_app(["model=qwen2.5_7b_instruct", "quant=4bit"], tmp_path, timeout=120)
    refused(result, "Qwen/Qwen2.5-7B-Instruct is not in the local Hugging Face cache", "offline", "hf download")
    assert result.returncode == 2
    assert "Loading weights" not in result.stderr  # refused before any weights were touched


def test_gated_model_without_token(tmp_path):
    result = run_app(["model=llama3.2_3b_instruct", "quant=4bit"], tmp_path, timeout=120)
    refused(result, "meta-llama/Llama-3.2-3B-Instruct is gated", "export HF_TOKEN")


@pytest.mark.parametrize("overrides,needles", [
    (["train.eval_strategy=no"], ["load_best_model_at_end", "train.eval_strategy=epoch"]),
    (["quant=4bit", "lora=none"], ["quantized base weights cannot be trained", "lora=default"]),
    (["quant=fp16"], ["fp16 on CPU"]),
    (["hardware=gpu_24gb"], ["needs a CUDA GPU", "hardware=cpu"]),
])
def test_impossible_combination(overrides, needles, tmp_path):
    result = run_app(overrides, tmp_path, timeout=120)
    refused(result, "cannot run as configured", *needles)
    assert result.returncode == 2


def test_unknown_config_name_lists_the_choices(tmp_path):
    result = run_app(["model=qwen9000"], tmp_path, timeout=120)
    refused(result, "qwen9000", "smollm2_135m_instruct")  # Hydra names the available options


def test_malformed_data_file_names_file_and_line(tmp_path):
    data = tmp_path / "corpus"
    data.mkdir()
    (data / "train.jsonl").write_text('{"source": "IX-1 GO", "target": "I go."}\n{"source": "X", "target": \n')
    (data / "dev.jsonl").write_text('{"source": "IX-2 GO", "target": "You go."}\n')
    (data / "test.jsonl").write_text('{"source": "IX-3 GO", "target": "He goes."}\n')
    result = run_app(["dataset=local", f"dataset.path={data}"], tmp_path, timeout=120)
    refused(result, "train.jsonl", "line 2")
    assert result.returncode == 2


def test_missing_data_directory(tmp_path):
    result = run_app(["dataset=local", f"dataset.path={tmp_path / 'nowhere'}"], tmp_path, timeout=120)
    refused(result, "nowhere", "dataset.path")


def test_local_dataset_without_a_path(tmp_path):
    result = run_app(["dataset=local"], tmp_path, timeout=120)
    refused(result, "dataset.path")
