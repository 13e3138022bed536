"""Launching test workers under `torchrun` (gloo on CPU), shared by the distributed tests."""

from __future__ import annotations

import os
import subprocess
import sys


def torchrun(nproc: int, *args: str, wait: bool = True):
    """Run `torchrun --standalone --nproc_per_node nproc ARGS` with one thread per rank.

    wait=True: the finished process, asserted to have exited 0 (its stderr tail in the
    message); wait=False: the running Popen, in its own session so a test can signal it.
    """
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), *args]
    if not wait:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                                start_new_session=True)
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    return p
