"""The Slurm launcher configs (conf/hydra/launcher/slurm_*.yaml) through Hydra's real submitit_slurm launcher.

No cluster here: `sbatch`, `srun` and `sacct` on PATH are small stand-ins (written below) that keep a copy of
each job script and, for the single-node config, run it on this machine the way Slurm would (one process per
array element, SLURM_* variables set, srun's --output/--error honoured), so the sweep completes end to end.
"""
from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

from conftest import run_app, tiny_args

FAKE_SBATCH = r'''
import os, re, subprocess, sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

record = Path(os.environ["FAKE_SLURM_DIR"])
if sys.argv[1] == "--run":  # the background "cluster": array elements, at most %N at a time
    script, job_id, first, last, parallel, nodes, tasks = sys.argv[2:]
    def element(index):
        env = dict(os.environ, SLURM_JOB_ID=str(int(job_id) + 1 + index), SLURM_ARRAY_JOB_ID=job_id,
                   SLURM_ARRAY_TASK_ID=str(index), SLURM_JOB_NUM_NODES=nodes, SLURM_JOB_NODELIST="localhost",
                   SLURM_NTASKS=str(int(nodes) * int(tasks)), SLURM_NTASKS_PER_NODE=tasks)
        (record / f"state_{job_id}_{index}").write_text("RUNNING")
        rc = subprocess.call(["bash", script], env=env)
        (record / f"state_{job_id}_{index}").write_text("COMPLETED" if rc == 0 else "FAILED")
    with ThreadPoolExecutor(int(parallel)) as pool:
        list(pool.map(element, range(int(first), int(last) + 1)))
    sys.exit(0)

text = Path(sys.argv[-1]).read_text()
number = len(list(record.glob("sbatch_*.sh")))
copy = record / f"sbatch_{number}.sh"
copy.write_text(text)
if os.environ.get("FAKE_SLURM_RUN") != "1":
    sys.exit("sbatch: error: this fake cluster only records job scripts")
job_id = str(4200 + 100 * number)
array = re.search(r"^#SBATCH --array=(\d+)-(\d+)%(\d+)$", text, re.M)
first, last, parallel = array.groups() if array else ("0", "0", "1")
nodes = re.search(r"^#SBATCH --nodes=(\d+)$", text, re.M)
tasks = re.search(r"^#SBATCH --ntasks-per-node=(\d+)$", text, re.M)
subprocess.Popen([sys.executable, __file__, "--run", str(copy), job_id, first, last, parallel,
                  nodes.group(1) if nodes else "1", tasks.group(1) if tasks else "1"],
                 start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
print(f"Submitted batch job {job_id}")
'''

FAKE_SRUN = r'''
import os, subprocess, sys

args, out, err = sys.argv[1:], None, None
while args and args[0].startswith("--"):  # srun's own options, as submitit writes them
    option = args.pop(0)
    if option in ("--output", "--error"):
        value = args.pop(0)
        out, err = (value, err) if option == "--output" else (out, value)
tasks, per_node = int(os.environ["SLURM_NTASKS"]), int(os.environ["SLURM_NTASKS_PER_NODE"])
def path(pattern, task):
    return (pattern.replace("%A", os.environ["SLURM_ARRAY_JOB_ID"]).replace("%a", os.environ["SLURM_ARRAY_TASK_ID"])
            .replace("%j", os.environ["SLURM_JOB_ID"]).replace("%t", str(task)))
procs = []
for task in range(tasks):
    env = dict(os.environ, SLURM_PROCID=str(task), SLURM_LOCALID=str(task % per_node),
               SLURM_NODEID=str(task // per_node))
    procs.append(subprocess.Popen(" ".join(args), shell=True, env=env,
                                  stdout=open(path(out, task), "a"), stderr=open(path(err or out, task), "a")))
sys.exit(max(p.wait() for p in procs))
'''

FAKE_SACCT = r'''
import os, sys
from pathlib import Path

record = Path(os.environ["FAKE_SLURM_DIR"])
wanted = {sys.argv[i + 1] for i, arg in enumerate(sys.argv) if arg == "-j"}
print("JobID|State|NodeList")
for state in sorted(record.glob("state_*")):
    job_id, index = state.name.split("_")[1:]
    if job_id in wanted:
        print(f"{job_id}_{index}|{state.read_text()}|fake-node0")
'''


def fake_slurm(tmp_path: Path, run: bool) -> dict[str, str]:
    """Environment with the stand-in Slurm commands first on PATH; job scripts are kept in tmp_path/slurm."""
    bin_dir, record = tmp_path / "bin", tmp_path / "slurm"
    bin_dir.mkdir()
    record.mkdir()
    for name, source in (("sbatch", FAKE_SBATCH), ("srun", FAKE_SRUN), ("sacct", FAKE_SACCT)):
        (bin_dir / name).write_text(f"#!{sys.executable}\n{source}")
        (bin_dir / name).chmod(0o755)
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "FAKE_SLURM_DIR": str(record),
            "FAKE_SLURM_RUN": "1" if run else "0"}


def sbatch_flags(script: str) -> dict[str, str]:
    return dict(re.findall(r"^#SBATCH --([\w-]+)(?:=(.*))?$", script, re.M))


def test_slurm_gpu_sweep_submits_one_array_and_runs_each_cell_as_a_child(tiny_model, tmp_path):
    """hydra/launcher=slurm_gpu: one sbatch array for the sweep, the config's resources in its header, and
    every cell, run by Slurm's stand-in, recorded as a finished MLflow child of the sweep's parent."""
    result = run_app(["--multirun", "hydra/launcher=slurm_gpu", "hydra.launcher.partition=gpu_test",
                      "hydra.launcher.array_parallelism=2",
                      "hydra.sweep.dir=multirun/slurm", "lora.r=4,8",
                      *tiny_args(tiny_model, "hardware.torch_threads=1", "eval.zero_shot=false", "eval.splits=[dev]")],
                     tmp_path, timeout=300, **fake_slurm(tmp_path, run=True))
    assert result.returncode == 0, result.stderr[-3000:]

    scripts = sorted((tmp_path / "slurm").glob("sbatch_*.sh"))
    assert len(scripts) == 1, "the two cells must go in one job array"
    script = scripts[0].read_text()
    flags = sbatch_flags(script)
    assert flags["partition"] == "gpu_test"
    assert flags["gpus-per-node"] == "1"  # hardware.num_processes of the profile (hardware=cpu here)
    assert flags["nodes"] == "1"
    assert flags["ntasks-per-node"] == "1"
    assert flags["cpus-per-task"] == "8"
    assert flags["mem"] == "64GB"
    assert flags["time"] == "240"
    assert flags["job-name"] == "slt_hydra"
    assert flags["array"] == "0-1%2"  # 2 cells, at most 2 at a time
    command = script.strip().splitlines()[-1]
    assert command.startswith("srun ") and f"{sys.executable} -u -m submitit.core._submit" in command
    assert str(tmp_path / "multirun" / "slurm" / ".submitit") in command

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    parent_id = json.loads((tmp_path / "multirun/slurm/mlflow_parent_run.json").read_text())["run_id"]
    parent = client.get_run(parent_id)
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'")
    assert sorted(child.data.params["lora.r"] for child in children) == ["4", "8"]
    assert {child.data.tags["slt.status"] for child in children} == {"finished"}
    assert parent.info.status == "FINISHED" and parent.data.metrics["jobs_succeeded"] == 2
    # each cell ran inside its array element: submitit's log for element 0 and 1, task 0
    logs = sorted(path.name for path in (tmp_path / "multirun/slurm/.submitit").rglob("*_log.out"))
    assert logs == ["4200_0_0_log.out", "4200_1_0_log.out"]


def test_slurm_multinode_job_script_has_a_task_per_gpu_on_every_node(tmp_path):
    """hydra/launcher=slurm_multinode with an 8-GPU profile on 4 nodes: 4 nodes x 8 tasks x 8 GPUs per cell,
    whole nodes. Only the script is checked: the stand-in sbatch records it and refuses to run it."""
    result = run_app(["--multirun", "hydra/launcher=slurm_multinode", "hydra.launcher.partition=gpu_big",
                      "hardware=8xh100_80gb", "hardware.num_nodes=4", "hydra.launcher.array_parallelism=2",
                      "hydra.sweep.dir=multirun/multinode", "lora.r=4,8,16"],
                     tmp_path, timeout=120, **fake_slurm(tmp_path, run=False))
    assert result.returncode != 0 and "only records job scripts" in result.stderr

    script = (tmp_path / "slurm" / "sbatch_0.sh").read_text()
    flags = sbatch_flags(script)
    assert flags["partition"] == "gpu_big"
    assert flags["nodes"] == "4"  # hardware.num_nodes
    assert flags["ntasks-per-node"] == "8"  # one rank per GPU: hardware.num_processes
    assert flags["gpus-per-node"] == "8"
    assert "exclusive" in flags
    assert flags["array"] == "0-2%2"
    assert "\nsrun " in script and "-m submitit.core._submit" in script  # srun starts the 32 ranks of a cell
