"""submitit executors from a config's `slurm` section (shared by training and evaluation launches)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import submitit

from ssl_distill.config import as_dict


def make_executor(slurm: Any, folder: str | Path, name: str, local: bool = False) -> submitit.Executor:
    """An AutoExecutor with the `slurm` settings (see config.SlurmConfig), or submitit's LocalExecutor."""
    folder = Path(slurm.folder or folder)
    tasks = slurm.tasks_per_node or max(slurm.gpus_per_node, 1)
    if local:
        executor = submitit.LocalExecutor(folder=folder)
        executor.update_parameters(
            timeout_min=slurm.timeout_min, tasks_per_node=tasks, gpus_per_node=slurm.gpus_per_node if tasks > 1 else 0
        )
        return executor
    executor = submitit.AutoExecutor(folder=folder, slurm_max_num_timeout=slurm.max_requeues)
    optional = {"partition": slurm.partition, "account": slurm.account, "qos": slurm.qos, "constraint": slurm.constraint}
    executor.update_parameters(
        name=name,
        nodes=slurm.nodes,
        gpus_per_node=slurm.gpus_per_node,
        tasks_per_node=tasks,
        cpus_per_task=slurm.cpus_per_task,
        timeout_min=slurm.timeout_min,
        slurm_signal_delay_s=slurm.signal_delay_s,
        slurm_additional_parameters=as_dict(slurm.additional),
        **({"mem_gb": slurm.mem_gb} if slurm.mem_gb is not None else {}),
        **{f"slurm_{key}": value for key, value in optional.items() if value},
    )
    return executor
