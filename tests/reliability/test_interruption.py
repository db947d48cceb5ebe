"""SIGKILL at random points, SIGTERM, and resume: the result equals an uninterrupted run."""
import os
import pathlib
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from fj_testing import ROOT

WORKER = str(ROOT / "tests" / "reliability" / "_train_worker.py")
ENV = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))


def _latest(ckpt: pathlib.Path) -> int:
  steps = [int(p.name) for p in ckpt.glob("*") if p.name.isdigit()]
  return max(steps, default=-1)


def _start(ckpt, out):
  return subprocess.Popen([sys.executable, WORKER, str(ckpt), str(out)], env=ENV,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _run(ckpt, out):
  proc = subprocess.run([sys.executable, WORKER, str(ckpt), str(out)], env=ENV,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  return proc.stdout


def _assert_same(a, b):
  a, b = np.load(a), np.load(b)
  assert sorted(a.files) == sorted(b.files)
  for k in a.files:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  d = tmp_path_factory.mktemp("ref")
  _run(d / "ckpt", d / "ref.npz")
  return d / "ref.npz"


def test_same_seed_same_result_in_two_processes(reference, tmp_path):
  _run(tmp_path / "ckpt", tmp_path / "again.npz")
  _assert_same(reference, tmp_path / "again.npz")


def test_sigkill_at_random_points_then_resume_is_bit_identical(reference, tmp_path):
  ckpt, out = tmp_path / "ckpt", tmp_path / "out.npz"
  rnd = random.Random(int(time.time()))
  total = 2 * (1293 // 128)  # epochs * steps per epoch (digits train split)
  targets = sorted(rnd.sample(range(2, total - 2), 5))
  kills = []
  for target in targets:
    proc = _start(ckpt, out)
    deadline = time.time() + 120
    while _latest(ckpt) < target and proc.poll() is None and time.time() < deadline:
      time.sleep(0.02)
    time.sleep(rnd.uniform(0.0, 0.05))  # anywhere: mid-step or mid-save
    if proc.poll() is None:
      proc.send_signal(signal.SIGKILL)
      proc.wait()
      kills.append(_latest(ckpt))
  assert len(kills) >= 5, f"killed only at {kills}"
  _run(ckpt, out)  # resumes from the last readable checkpoint and finishes
  _assert_same(reference, out)


def test_sigterm_finishes_step_checkpoints_and_exits_cleanly(reference, tmp_path):
  ckpt, out = tmp_path / "ckpt", tmp_path / "out.npz"
  proc = _start(ckpt, out)
  while _latest(ckpt) < 5 and proc.poll() is None:
    time.sleep(0.02)
  proc.send_signal(signal.SIGTERM)
  stdout, _ = proc.communicate(timeout=120)
  assert proc.returncode == 0, stdout
  assert "status interrupted" in stdout
  step = int(stdout.split("status interrupted step")[1].split()[0])
  assert _latest(ckpt) == step
  _run(ckpt, out)
  _assert_same(reference, out)
