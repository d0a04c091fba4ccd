"""The callable a submitit job runs: one suite job's command in a subprocess, requeued on timeout or
preemption (the DINO / MoCo v3 pattern), the re-queued job re-running the same command, which resumes
from its checkpoints. Imports submitit: load it through ``simsiam_eval.suite.launchers``."""
from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Sequence

import submitit

POLL_S = 0.2
STOP_GRACE_S = 20.0  # SIGTERM -> SIGKILL; well inside the 90 s between Slurm's USR2 and its kill
MASTER_PORT_BASE = 20000  # multi-node torchrun: a port derived from the Slurm job id


class CommandFailed(RuntimeError):
    """The command exited non-zero; the message is the exit status and its last stderr line."""


class CommandTask(submitit.helpers.Checkpointable):
    """Run ``command`` (in ``cwd``) to completion; on submitit's timeout/preemption signal, stop it
    and hand submitit this same task to requeue."""

    def __init__(self, command: Sequence[str], cwd: str, nodes: int = 1) -> None:
        self.command = list(command)
        self.cwd = cwd
        self.nodes = nodes
        self._process: subprocess.Popen | None = None

    def __call__(self) -> None:
        # A new session, so that a stop reaches torchrun's workers too.
        self._process = subprocess.Popen(self.command, cwd=self.cwd, env=self._environment(), stderr=subprocess.PIPE,
                                         text=True, errors="replace", start_new_session=True)
        tail: collections.deque[str] = collections.deque(maxlen=20)
        reader = threading.Thread(target=_copy_stderr, args=(self._process.stderr, tail), daemon=True)
        reader.start()
        try:
            # Poll rather than wait(): the signal handler (checkpoint) must be able to reap the process.
            while self._process.poll() is None:
                time.sleep(POLL_S)
        finally:
            self._stop()
        reader.join(timeout=5)
        code = self._process.returncode
        if code != 0:
            last = next((line.strip() for line in reversed(tail) if line.strip()), "no error output")
            raise CommandFailed(f"exit status {code}: {last}")

    def checkpoint(self) -> submitit.helpers.DelayedSubmission:
        """Called by submitit on USR2 (time limit near or preemption): stop the command; requeue me."""
        self._stop()
        return submitit.helpers.DelayedSubmission(self)

    def _stop(self) -> None:
        """SIGTERM the command's process group, SIGKILL it after STOP_GRACE_S."""
        process = self._process
        if process is None or process.poll() is not None:
            return
        _signal_group(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        while process.poll() is None and time.monotonic() < deadline:
            time.sleep(POLL_S)
        _signal_group(process.pid, signal.SIGKILL)

    def _environment(self) -> dict[str, str]:
        """The job's environment, plus torchrun's static rendezvous (PET_*) on multi-node jobs."""
        env = dict(os.environ)
        if self.nodes > 1:
            job = submitit.JobEnvironment()
            env.update(PET_NNODES=str(job.num_nodes), PET_NODE_RANK=str(job.node),
                       PET_MASTER_ADDR=job.hostnames[0],
                       PET_MASTER_PORT=str(MASTER_PORT_BASE + int(job.raw_job_id) % 20000))
        return env

    def __getstate__(self) -> dict:
        return {"command": self.command, "cwd": self.cwd, "nodes": self.nodes, "_process": None}


def _copy_stderr(stream, tail: collections.deque) -> None:
    """Forward the command's stderr to the job's log, keeping its last lines for the failure reason."""
    for line in stream:
        sys.stderr.write(line)
        sys.stderr.flush()
        tail.append(line)


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass
