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


def _env(cache_dir=None):
  """The workers' environment; with ``cache_dir``, a persistent XLA compilation cache."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
  for k in ("JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
            "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"):
    env.pop(k, None)  # not the test session's cache (tests/conftest.py)
  if cache_dir is not None:
    env.update(JAX_COMPILATION_CACHE_DIR=str(cache_dir),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  return env


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  """One compilation cache shared by every worker of this module.

  Every restart after the first loads its executables instead of compiling
  them (a worker run: 7.5 s cold, 4.6 s warm on the 2-core CPU); a cached
  executable is the same code, so results stay bit-identical.
  """
  return _env(tmp_path_factory.mktemp("xla_cache"))


def _latest(ckpt: pathlib.Path) -> int:
  steps = [int(p.name) for p in ckpt.glob("*") if p.name.isdigit()]
  return max(steps, default=-1)


def _start(ckpt, out, env):
  return subprocess.Popen([sys.executable, WORKER, str(ckpt), str(out)], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _run(ckpt, out, env):
  proc = subprocess.run([sys.executable, WORKER, str(ckpt), str(out)], env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  return proc.stdout


def _assert_same(a, b):
  a, b = np.load(a), np.load(b)
  assert sorted(a.files) == sorted(b.files)
  for k in a.files:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, env):
  d = tmp_path_factory.mktemp("ref")
  _run(d / "ckpt", d / "ref.npz", env)
  return d / "ref.npz"


@pytest.mark.slow
def test_same_seed_same_result_in_two_processes(reference, tmp_path):
  # Without the shared cache: this process compiles its own executables.
  _run(tmp_path / "ckpt", tmp_path / "again.npz", _env())
  _assert_same(reference, tmp_path / "again.npz")


@pytest.mark.slow
def test_sigkill_at_random_points_then_resume_is_bit_identical(reference, tmp_path, env):
  ckpt, out = tmp_path / "ckpt", tmp_path / "out.npz"
  rnd = random.Random(int(time.time()))
  total = 2 * (1293 // 128)  # epochs * steps per epoch (digits train split)
  targets = sorted(rnd.sample(range(2, total - 2), 5))
  kills = []
  for target in targets:
    proc = _start(ckpt, out, env)
    deadline = time.time() + 120
    while _latest(ckpt) < target and proc.poll() is None and time.time() < deadline:
      time.sleep(0.02)
    time.sleep(rnd.uniform(0.0, 0.05))  # anywhere: mid-step or mid-save
    if proc.poll() is None:
      proc.send_signal(signal.SIGKILL)
      proc.wait()
      kills.append(_latest(ckpt))
  assert len(kills) >= 5, f"killed only at {kills}"
  _run(ckpt, out, env)  # resumes from the last readable checkpoint and finishes
  _assert_same(reference, out)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_finishes_step_checkpoints_and_exits_cleanly(reference, tmp_path, env, signum):
  ckpt, out = tmp_path / "ckpt", tmp_path / "out.npz"
  proc = _start(ckpt, out, env)
  while _latest(ckpt) < 5 and proc.poll() is None:
    time.sleep(0.02)
  proc.send_signal(signum)
  stdout, _ = proc.communicate(timeout=120)
  assert proc.returncode == 0, stdout
  assert "status interrupted" in stdout
  step = int(stdout.split("status interrupted step")[1].split()[0])
  assert _latest(ckpt) == step
  _run(ckpt, out, env)
  _assert_same(reference, out)
