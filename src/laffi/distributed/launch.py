"""Hand the training stage of `laffi run` to a distributed launcher.

    laffi run CONFIG.yaml --launcher accelerate --num-processes 8 systems.names=base,sft,laffi
    laffi run CONFIG.yaml --launcher accelerate --accelerate-config configs/accelerate/fsdp.yaml systems.names=base,sft,laffi
    laffi run CONFIG.yaml --launcher torchrun --num-processes 8 systems.names=base,sft,laffi
    laffi run --launcher process      # each training in a process of its own (what `make demo` does)

(Systems with auxiliary examples, preference pairs or rounds, such as the default laffi-aux-half, train in one
process: a run on several processes names the others.)

The other stages run in this process. Each training runs as a child command on the run's
config.yaml, `accelerate launch ... -m laffi.cli train RUN --system NAME` (or torchrun), which starts
one process per GPU; this process waits for it. Several machines need a launch on each of them
(docs/scaling.md), which `laffi run` does not do. The `process` launcher starts one plain
process per training: on a CPU the memory a training's activations took goes back with its process,
where within `laffi run`'s own process it stays in the allocator and adds to the later stages' peak.
"""

from __future__ import annotations

import gc
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from laffi.config import read_yaml, require
from laffi.layout import RunLayout, adapter_finished

LAUNCHERS = ("accelerate", "torchrun", "process")
# The commands that share their work among the processes a launcher starts; any other, launched N times,
# would do all of it N times over, each process appending the same records or writing the same files.
SHARDED_COMMANDS = ("generate", "train", "evaluate")


def launched_processes() -> int:
    """How many processes a launcher (accelerate launch, torchrun) started for this command; 1 without one."""
    return int(os.environ.get("WORLD_SIZE", "1"))


class LaunchFailed(RuntimeError):
    """The launched training exited with an error; its own output says why."""


def leave_process_group() -> None:
    """Destroy the process group a launched command joined, while the interpreter is still whole:
    gloo's worker threads can otherwise free tensors during finalization and abort a process that
    has finished its work (pytorch/pytorch#179291); no-op outside a launch."""
    distributed = sys.modules.get("torch.distributed")  # never import torch just to find out
    if distributed is not None and distributed.is_available() and distributed.is_initialized():
        distributed.destroy_process_group()


def free_port() -> int:
    """A free local port for the processes to meet on, so two runs on one machine do not collide."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass(frozen=True)
class Launcher:
    name: str = "accelerate"
    num_processes: int | None = None  # None: the accelerate config's num_processes, else 1
    config_file: str | None = None  # an accelerate config, e.g. configs/accelerate/fsdp.yaml

    def __post_init__(self) -> None:
        require(self.name in LAUNCHERS, "--launcher", f"must be one of {', '.join(LAUNCHERS)}, got {self.name!r}")
        require(self.num_processes is None or self.num_processes >= 1, "--num-processes",
                f"must be >= 1, got {self.num_processes}")
        require(self.name != "process" or (self.num_processes or 1) == 1, "--num-processes",
                "the process launcher runs one process; use accelerate or torchrun for more")
        if self.config_file is not None:
            require(self.name == "accelerate", "--accelerate-config", "only with --launcher accelerate")
            require(Path(self.config_file).is_file(), "--accelerate-config", f"{self.config_file} does not exist")

    @property
    def processes(self) -> int:
        """The processes each training runs in: --num-processes, else the accelerate config's, else 1
        (accelerate's own default)."""
        if self.num_processes is not None or not self.config_file:
            return self.num_processes or 1
        return int(read_yaml(self.config_file).get("num_processes", 1))

    def command(self, run_dir: str | Path, system: str) -> list[str]:
        """The command that runs `laffi train RUN --system NAME` under this launcher."""
        return self.wrap(["-m", "laffi.cli", "train", str(run_dir), "--system", system])

    def wrap(self, program: list[str]) -> list[str]:
        """`program` (a script and its arguments, or -m MODULE ...) started once per process."""
        n = str(self.num_processes or 1)
        if self.name == "process":
            return [sys.executable, *program]
        if self.name == "torchrun":  # --standalone: one machine, a free rendezvous port
            return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", n, *program]
        launch = [sys.executable, "-m", "accelerate.commands.launch"]
        if self.config_file:
            count = ["--num_processes", n] if self.num_processes else []
            return [*launch, "--config_file", self.config_file, *count, *program]
        # no config: say everything, so accelerate neither warns about defaults nor reads a
        # personal ~/.cache/huggingface/accelerate config; --multi_gpu means torchrun underneath,
        # which on a machine without GPUs runs CPU processes on gloo
        launch += ["--num_processes", n, "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                   "--main_process_port", str(free_port())]
        return [*launch, *(["--multi_gpu"] if int(n) > 1 else []), *program]

    def train(self, layout: RunLayout, system: str) -> Path:
        """Run `laffi train` under the launcher on the run's config.yaml; returns the adapter directory."""
        out = layout.adapter(system)
        if adapter_finished(out):
            return out  # finished earlier; `laffi run` has checked its config and sets (`claim_adapter`)
        import torch  # here, not at the top: the CLI imports this module, and `laffi --help` needs no torch

        if torch.cuda.is_available():  # the GPU memory this process cached for generation, to the children
            gc.collect()
            torch.cuda.empty_cache()
        command = self.command(layout.root, system)
        print(" ".join(command), flush=True)
        code = subprocess.run(command).returncode
        if code != 0 or not adapter_finished(out):
            raise LaunchFailed(f"training {system!r} under {self.name} exited with {code} and "
                               f"{'no' if code == 0 else 'so no'} adapter in {out}: {' '.join(command)}")
        return out
