"""miniattn.allocator: keeping freed memory changes speed only, never a result."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from miniattn import allocator

ROOT = Path(__file__).resolve().parents[1]

_STEP = """
import sys, numpy as np
from miniattn.allocator import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory() in (True, False)
from miniattn.models import Seq2SeqAttention
from miniattn.optim import Adam
from miniattn.tasks import CopyTask
task = CopyTask(12, 20, "subset")
rng = np.random.default_rng(np.random.SeedSequence(5))
model = Seq2SeqAttention(task.input_vocab_size, task.output_vocab_size, task.source_length, task.target_length,
                         dim=32, heads=2, rng=rng)
opt = Adam(model.params, lr=1e-3)
for _ in range(3):
    loss, grads = model.loss_and_grads(task.sample(rng, 64))
    opt.step(grads)
import hashlib
digest = hashlib.sha256(b"".join(model.params[k].tobytes() for k in sorted(model.params))).hexdigest()
sys.stdout.write(repr(loss) + " " + digest)
"""


def test_keep_freed_memory_is_idempotent_and_says_whether_it_took_effect():
    first = allocator.keep_freed_memory()
    assert isinstance(first, bool)
    assert allocator.keep_freed_memory() is first
    if sys.platform.startswith("linux") and "glibc" in " ".join(map(str, __import__("platform").libc_ver())):
        assert first is True


def test_results_are_bit_identical_with_and_without_it():
    env = {"PYTHONPATH": str(ROOT), "OPENBLAS_NUM_THREADS": "1"}
    out = [subprocess.run([sys.executable, "-c", _STEP, mode], capture_output=True, text=True, env=env,
                          check=True, timeout=120).stdout for mode in ("plain", "keep")]
    assert out[0] == out[1] and len(out[0].split()[1]) == 64
    assert np.isfinite(float(out[0].split()[0]))
