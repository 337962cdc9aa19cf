"""Several processes for one experiment: profiles, the torchrun launch, rank-0-only logging, per-GPU memory plans.

The proof runs here on CPU: `hardware=cpu_ddp2` starts two gloo/DDP processes through the same launcher a GPU
profile uses, gives one output directory and one MLflow run, and trains step for step like one process with the
same global batch. FSDP and DeepSpeed need GPUs: their profiles, rules, Trainer arguments and memory plans are
checked without running them.
"""
from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import compose_config, run_app, tiny_args
from slt_hydra import distributed, memory, validate
from slt_hydra.config import resolve_hardware
from slt_hydra.machine import Machine
from slt_hydra.plan import format_plan

CPU = Machine(cuda=False, gpu_name=None, gpu_memory_gb=None, gpu_bf16=False, cpu_bf16=False, ram_gb=24.0)
GPU = Machine(cuda=True, gpu_name="H100", gpu_memory_gb=80.0, gpu_bf16=True, cpu_bf16=False, ram_gb=1000.0)
RANK_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
             distributed.RUN_ID_ENV)


@pytest.fixture
def single_process(monkeypatch):
    """A clean environment: not a rank, not a submitit task; whatever a test sets is undone after it."""
    for name in RANK_VARS + ("SUBMITIT_EXECUTOR", "CUDA_VISIBLE_DEVICES"):
        monkeypatch.setenv(name, "")  # recorded, so variables set later behind monkeypatch's back are removed too
        monkeypatch.delenv(name)
    return monkeypatch


def composed(*overrides: str, machine: Machine = CPU):
    cfg = compose_config(list(overrides))
    resolve_hardware(cfg, machine)
    return cfg


@pytest.mark.parametrize("profile,processes,strategy,device", [
    ("cpu_ddp2", 2, "ddp", "cpu"), ("4xa100_80gb", 4, "ddp", "cuda"), ("8xh100_80gb", 8, "fsdp", "cuda")])
def test_multi_process_profiles_keep_the_global_batch_of_16(profile, processes, strategy, device):
    hw = compose_config([f"hardware={profile}"]).hardware
    assert (hw.num_processes, hw.strategy, hw.device, hw.num_nodes) == (processes, strategy, device, 1)
    assert hw.per_device_train_batch_size * hw.gradient_accumulation_steps * processes == 16  # as hardware=cpu
    assert compose_config(["hardware=cpu"]).hardware.num_processes == 1  # single-process profiles are unchanged


def test_workers_share_one_directory_and_no_secret_reaches_the_command_line(single_process, tmp_path):
    token = "hf_" + "a" * 34
    single_process.setenv("HF_TOKEN", token)
    run_dir = tmp_path / "outputs" / "it's a dir=x\\y"
    overrides = ["hardware=cpu_ddp2", "lora.r=8"]
    command = distributed.worker_command(2, overrides, str(run_dir))
    assert command[1:6] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m"]
    assert command[6:9] == ["slt_hydra", *overrides]
    assert "hydra.output_subdir=null" in command
    from hydra.core.override_parser.overrides_parser import OverridesParser

    run_dir_override = next(arg for arg in command if arg.startswith("hydra.run.dir="))
    assert OverridesParser.create().parse_override(run_dir_override).value() == str(run_dir.resolve())
    assert not any(token in arg for arg in command)
    env = distributed.worker_env(compose_config(["hardware=cpu_ddp2"]).hardware, "RUN123")
    assert env["HF_TOKEN"] == token  # inherited through the environment, never an argument
    assert env[distributed.RUN_ID_ENV] == "RUN123"
    assert int(env["OMP_NUM_THREADS"]) == max(1, (os.cpu_count() or 1) // 2)
    assert "ACCELERATE_USE_FSDP" not in env
    fsdp = distributed.worker_env(compose_config(["hardware=8xh100_80gb"]).hardware, "RUN123")
    assert fsdp["ACCELERATE_USE_FSDP"] == fsdp["FSDP_CPU_RAM_EFFICIENT_LOADING"] == "true"


def test_only_a_multi_process_profile_launches(single_process):
    assert distributed.should_launch(compose_config(["hardware=cpu_ddp2"]))
    assert not distributed.should_launch(compose_config(["hardware=cpu"]))
    assert not distributed.should_launch(compose_config(["hardware=cpu_ddp2", "eval.only=true"]))  # one process
    single_process.setenv("WORLD_SIZE", "2")  # already a rank: train, do not launch again
    single_process.setenv("RANK", "1")
    assert not distributed.should_launch(compose_config(["hardware=cpu_ddp2"]))
    assert not distributed.is_main() and distributed.NoTracking().log_metrics({"x": 1}) is None


def test_a_users_own_torchrun_must_name_the_run_dir(single_process):
    assert distributed.run_dir_problem(["hardware=cpu_ddp2"]) is None  # not under torchrun
    single_process.setenv("WORLD_SIZE", "2")
    assert "hydra.run.dir=DIR" in distributed.run_dir_problem(["hardware=cpu_ddp2"])
    assert distributed.run_dir_problem(["hardware=cpu_ddp2", "hydra.run.dir=/tmp/x"]) is None
    assert distributed.run_dir_problem(["--multirun", "lora.r=8,16"]) is None  # the sweep dir is resolved once
    single_process.setenv(distributed.RUN_ID_ENV, "RUN123")  # started by our launcher
    assert distributed.run_dir_problem(["hardware=cpu_ddp2"]) is None


def test_submitit_tasks_become_torch_ranks(single_process):
    for key, value in dict(SUBMITIT_EXECUTOR="local", SUBMITIT_LOCAL_JOB_ID="4242", SUBMITIT_LOCAL_NTASKS="4",
                           SUBMITIT_LOCAL_JOB_NUM_NODES="2", SUBMITIT_LOCAL_NODEID="1",
                           SUBMITIT_LOCAL_GLOBALID="3", SUBMITIT_LOCAL_LOCALID="1").items():
        single_process.setenv(key, value)
    distributed.adopt_submitit_tasks()
    assert (distributed.rank(), distributed.local_rank(), distributed.world_size()) == (3, 1, 4)
    assert os.environ["LOCAL_WORLD_SIZE"] == "2" and os.environ["MASTER_ADDR"] and int(os.environ["MASTER_PORT"])
    assert "CUDA_VISIBLE_DEVICES" not in os.environ or os.environ["CUDA_VISIBLE_DEVICES"] != "1"


def test_trainer_arguments_per_strategy(single_process):
    assert distributed.trainer_kwargs(compose_config(["hardware=cpu_ddp2"])) == {}  # the launcher's own process
    single_process.setenv("WORLD_SIZE", "2")
    ddp = distributed.trainer_kwargs(compose_config(["hardware=cpu_ddp2"]))
    assert ddp == {"ddp_backend": "gloo", "ddp_find_unused_parameters": False}
    assert "ddp_find_unused_parameters" not in distributed.trainer_kwargs(compose_config(["hardware=cpu_ddp2",
                                                                                         "lora=none"]))
    fsdp = distributed.trainer_kwargs(compose_config(["hardware=8xh100_80gb"]))
    assert fsdp["ddp_backend"] == "nccl" and fsdp["fsdp"] is True and fsdp["fsdp_config"]["version"] == 2
    for stage in (2, 3):
        kwargs = distributed.trainer_kwargs(compose_config(["hardware=8xh100_80gb", f"hardware.strategy=zero{stage}"]))
        config = json.loads(Path(kwargs["deepspeed"]).read_text())
        assert config["zero_optimization"]["stage"] == stage and "fsdp" not in kwargs
    custom = distributed.trainer_kwargs(compose_config(["hardware=8xh100_80gb", "hardware.strategy=zero3",
                                                        "hardware.deepspeed_config=/etc/ds.json"]))
    assert custom["deepspeed"] == "/etc/ds.json"
    # Where the weights load: this rank's GPU, or nowhere yet when FSDP/ZeRO-3 place the shards.
    single_process.setenv("LOCAL_RANK", "1")
    assert distributed.device_map(compose_config(["hardware=4xa100_80gb"]).hardware) == {"": 1}
    assert distributed.device_map(compose_config(["hardware=8xh100_80gb"]).hardware) is None


@pytest.mark.parametrize("machine,overrides,needle", [
    (CPU, ["hardware=cpu_ddp2", "hardware.strategy=fsdp"], "needs CUDA GPUs"),
    (CPU, ["hardware=cpu_ddp2", "hardware.strategy=ring"],
     "hardware.strategy='ring' is not allowed: use one of ddp, fsdp, zero2, zero3"),
    (GPU, ["hardware=gpu_80gb", "hardware.strategy=fsdp"], "there is one"),
    (GPU, ["hardware=8xh100_80gb", "quant=8bit"], "LLM.int8 weights cannot be sharded"),
    (GPU, ["hardware=8xh100_80gb", "hardware.strategy=zero3", "quant=8bit"], "LLM.int8 weights cannot be sharded"),
    (GPU, ["hardware=4xa100_80gb", "hardware.num_processes=0"],
     "hardware.num_processes=0 is not allowed: use an integer >= 1"),
    (CPU, ["hardware=cpu_ddp2", "model=t5_base"], "model.architecture=seq2seq trains in one"),
    (CPU, ["hardware=cpu_ddp2", "train.resume=auto"], "resumes one process only"),
])
def test_strategy_rules(machine, overrides, needle):
    problems = validate.check(composed(*overrides, machine=machine), machine)
    assert any(needle in problem for problem in problems), problems


def test_deepspeed_strategies_need_deepspeed_installed():
    problems = validate.check(composed("hardware=4xa100_80gb", "hardware.strategy=zero2", machine=GPU), GPU)
    import importlib.util

    needs = any("needs DeepSpeed" in problem for problem in problems)
    assert needs == (importlib.util.find_spec("deepspeed") is None), problems


@pytest.mark.parametrize("machine,overrides", [
    (CPU, ["hardware=cpu_ddp2"]),
    (GPU, ["hardware=4xa100_80gb", "model=llama3.1_8b_instruct"]),
    (GPU, ["hardware=4xa100_80gb", "quant=8bit"]),  # DDP keeps int8 weights whole on every GPU
    (GPU, ["hardware=8xh100_80gb", "model=llama3.1_70b"]),
    (GPU, ["hardware=8xh100_80gb", "model=qwen2.5_72b", "quant=4bit"]),  # QLoRA + FSDP
])
def test_documented_combinations_pass(machine, overrides):
    assert validate.check(composed(*overrides, machine=machine), machine) == []


def test_planner_shards_what_each_strategy_shards():
    def rows(strategy: str) -> tuple[dict[str, float], memory.Plan]:
        plan = memory.plan_memory(composed("hardware=8xh100_80gb", "model=llama3.1_70b", "lora.r=64",
                                            f"hardware.strategy={strategy}", machine=GPU))
        table = {row.what.split(" (")[0]: row.bytes for row in plan.rows}
        table["gradients"] = next(r.bytes for r in plan.peaks["training step"][1] if r.what == "gradients")
        return table, plan

    (ddp, ddp_plan), (zero2, _), (fsdp, fsdp_plan), (zero3, _) = (rows(s) for s in ("ddp", "zero2", "fsdp", "zero3"))
    # DDP: everything replicated, plus the all-reduce buckets.
    assert ddp["DDP gradient buckets"] == pytest.approx(ddp["gradients"])
    # ZeRO-2: optimizer state and gradients split 8 ways, weights and adapter whole.
    assert zero2["optimizer state"] == pytest.approx(ddp["optimizer state"] / 8)
    assert zero2["gradients"] == pytest.approx(ddp["gradients"] / 8)
    assert zero2["weights"] == ddp["weights"] and zero2["LoRA adapter"] == ddp["LoRA adapter"]
    # FSDP / ZeRO-3: weights, adapter, gradients, optimizer state all split, plus what is gathered for compute.
    for key in ("weights", "LoRA adapter", "optimizer state", "gradients"):
        assert fsdp[key] == pytest.approx(ddp[key] / 8) and zero3[key] == pytest.approx(fsdp[key])
    gathered = fsdp["gathered for compute"]
    assert ddp["weights"] / 80 < gathered < ddp["weights"] / 8  # the root unit + 2 of the 80 layers
    assert not ddp_plan.fits and fsdp_plan.fits  # 70B in bf16 fits 80 GB GPUs only sharded
    ddp_cfg = composed("hardware=8xh100_80gb", "model=llama3.1_70b", "lora.r=64", "hardware.strategy=ddp", machine=GPU)
    fixes = memory.suggestions(ddp_cfg, ddp_plan, GPU)
    assert fixes[0][0].endswith("hardware.strategy=fsdp") and fixes[0][2]


def test_planner_shares_the_ram_between_cpu_processes():
    one = memory.plan_memory(composed("hardware=cpu"), CPU)
    two = memory.plan_memory(composed("hardware=cpu_ddp2"), CPU)
    assert one.have_gb == 24.0 and two.have_gb == 12.0  # each process gets its share of the machine's RAM
    text = format_plan(composed("hardware=cpu_ddp2"), two, CPU)
    assert "2 processes" in text and "shared by 2 processes" in text and "global batch 16" in text


def losses(store: Path, experiment: str) -> tuple[dict, object]:
    client = MlflowClient(f"sqlite:///{store}")
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert len(runs) == 1, [run.info.run_name for run in runs]  # one run per experiment, whatever the processes
    run = runs[0]
    history = {key: [m.value for m in sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)]
               for key in ("loss", "grad_norm")}
    return history, run


@pytest.mark.slow
def test_two_cpu_processes_train_like_one_with_the_same_global_batch(tiny_model, tmp_path):
    """hardware=cpu_ddp2 (2 processes x batch 4) against hardware=cpu (1 x batch 8), 3 steps, same seed.

    Same examples per step: both samplers draw the same seeded permutation; accelerate gives batch 2k of 4 to rank 0
    and batch 2k+1 to rank 1, i.e. the single process's batch k of 8. The Trainer divides the summed loss by the
    token count of the whole global batch (average_tokens_across_devices), so the averaged gradient is the single
    process's. LoRA dropout is off (each rank would draw its own masks). What remains is floating-point summation
    order: measured ~1e-7 relative here; the tolerance is 1e-3 relative per step, on the loss and on the gradient
    norm (which a wrong gradient average would change at once). ~2 min on 2 loaded cores: two app runs.
    """
    base = [arg for arg in tiny_args(tiny_model) if not arg.startswith("hardware")] + [
        "train.max_steps=3", "train.learning_rate=1e-2", "train.warmup_steps=0", "lora.dropout=0",
        "train.train_sampling_strategy=random", "dataset.max_train_samples=32", "eval.zero_shot=false"]
    results = {}
    for name, args in (("one", ["hardware=cpu", "hardware.per_device_train_batch_size=8"]),
                       ("two", ["hardware=cpu_ddp2", "hardware.per_device_train_batch_size=4"])):
        folder = tmp_path / name
        folder.mkdir()
        done = run_app(base + args + [f"mlflow.experiment_name={name}"], folder,
                       MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}")  # one store: created once
        assert done.returncode == 0, done.stderr[-3000:]
        results[name] = (done, *losses(tmp_path / "mlflow.db", name), folder)

    done, history, run, folder = results["two"]
    assert "starting 2 processes (ddp)" in done.stdout + done.stderr
    assert run.info.status == "FINISHED" and run.data.tags["slt.status"] == "finished"
    assert run.data.tags["hardware"] == "cpu_ddp2" and run.data.params["ddp_backend"] == "gloo"
    assert run.data.params["hardware.num_processes"] == "2" and "dev_bleu4" in run.data.metrics
    runs_dirs = [path for path in (folder / "outputs").glob("*/*") if path.is_dir()]
    assert len(runs_dirs) == 1, runs_dirs  # one Hydra directory for the launcher and both ranks
    assert (runs_dirs[0] / "adapter" / "adapter_model.safetensors").is_file()
    assert (runs_dirs[0] / "predictions_test.csv").is_file() and (runs_dirs[0] / ".hydra" / "config.yaml").is_file()

    single = results["one"][1]
    assert len(history["loss"]) == len(single["loss"]) == 3
    for key in ("loss", "grad_norm"):
        for step, (a, b) in enumerate(zip(history[key], single[key])):
            assert math.isclose(a, b, rel_tol=1e-3), (key, step, history[key], single[key])
    assert history["loss"][-1] < history["loss"][0]  # the parameters moved: later steps test the averaged update


@pytest.mark.slow
def test_a_failing_rank_fails_the_job_with_its_reason(tiny_model, tmp_path):
    """Weights that cannot be read pass the launcher's checks (a config.json is there) and fail in the ranks: the
    first rank to fail names the reason, on stderr and in the run (status, slt.error, errors/rankN_error.txt)."""
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((tiny_model / "config.json").read_text())
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (tiny_model / name).is_file():
            (broken / name).write_text((tiny_model / name).read_text())
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    args = [arg.replace(str(tiny_model), str(broken)) for arg in tiny_args(tiny_model)
            if not arg.startswith("hardware")]
    done = run_app(args + ["hardware=cpu_ddp2", "eval.zero_shot=false"], tmp_path)
    assert done.returncode == 1, done.stderr[-3000:]
    assert re.search(r"slt_hydra: 2 processes under torchrun: rank [01] failed: SafetensorError", done.stderr)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("slt_hydra").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FAILED"
    assert runs[0].data.tags["slt.status"] == "failed" and "SafetensorError" in runs[0].data.tags["slt.error"]
    logged = [artifact.path for artifact in client.list_artifacts(runs[0].info.run_id, "errors")]
    assert logged and all(re.fullmatch(r"errors/rank[01]_error\.txt", path) for path in logged), logged
