"""`python -m slt_hydra [overrides]`: compose the config with Hydra and run one experiment (or a sweep).

A problem with the input (config combination, data file, model not available) ends with one message on
stderr and exit code 2, before anything heavy is loaded. The return value is the objective for sweepers.
"""
import atexit
import os
import sys
import threading

# No telemetry from the libraries, and no implicit Hub calls for things we do not use.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from slt_hydra import distributed  # noqa: E402
from slt_hydra.config import command_line_problem  # noqa: E402
from slt_hydra.errors import SetupError  # noqa: E402
from slt_hydra.quiet import quiet_libraries  # noqa: E402
from slt_hydra.run import run  # noqa: E402  (no torch at import: --help and config errors stay fast)
from slt_hydra.schema import register_configs  # noqa: E402

register_configs()
quiet_libraries()


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float:
    distributed.adopt_submitit_tasks()  # one submitit task per GPU -> one torch.distributed rank each
    try:
        return run(cfg)
    except SetupError as error:
        print(f"slt_hydra: {error}", file=sys.stderr)
        sys.exit(2)
    except distributed.WorkersFailed as error:  # hardware.num_processes > 1: the ranks printed their own errors
        print(f"slt_hydra: {error}", file=sys.stderr)
        sys.exit(error.returncode)


def leave_now() -> None:
    """End a successful process without the interpreter's teardown, which frees torch, PEFT and bitsandbytes
    object by object and module by module: seconds of nothing (measured in the overhead part of docs/benchmarks.md).
    What a normal exit does that matters still happens first, in the interpreter's order: threading's shutdown
    (the thread pools' exit hooks wake their idle workers, then every non-daemon thread is waited for: joining
    them without those hooks hangs on an idle MLflow artifact-download pool), the exit handlers (log files,
    MLflow, worker pools), flushing stdout and stderr."""
    threading._shutdown()  # what Py_Finalize calls first (private, but it is the interpreter's own exit path)
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    # Refused here, with exit code 2 like every other input problem, before Hydra sets up a run or a sweep.
    if problem := distributed.run_dir_problem(sys.argv[1:]) or command_line_problem(sys.argv[1:]):
        print(f"slt_hydra: {problem}", file=sys.stderr)
        sys.exit(2)
    main()  # errors end in sys.exit inside: only a success gets past this line
    leave_now()
