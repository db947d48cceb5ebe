"""The main job (``python -m fusionjax``): every flag documented, every claimed combination runs.

Runs ``main([...])`` in-process with 1 epoch and 2 members (seconds each); the default
job itself (30 epochs, 8 MLPs) is what CI's README command runs.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from fusionjax import __main__ as job
from fj_testing import MNIST_DIR, ROOT


def test_help_documents_every_flag_with_its_default():
  parser = job._parser()  # pylint: disable=protected-access
  text = parser.format_help()
  for action in parser._actions:  # pylint: disable=protected-access
    if action.dest == "help":
      continue
    assert action.help, f"{action.option_strings} has no help text"
    assert action.option_strings[0] in text
  assert text.count("(default:") == len(parser._actions) - 1  # pylint: disable=protected-access
  for flag in ("--dataset", "--data_dir", "--model", "--members", "--fusion", "--epochs",
               "--batch_size", "--lr", "--seed", "--out"):
    assert flag in text


def test_python_dash_m_help_runs():
  out = subprocess.run([sys.executable, "-m", "fusionjax", "--help"], capture_output=True,
                       text=True, check=True, cwd=str(ROOT),
                       env=dict(os.environ, JAX_PLATFORMS="cpu")).stdout
  assert "--fusion {mean,mean_logits,soft_vote,hard_vote,weighted}" in out
  assert "(default: digits)" in out and "(default: 8)" in out


def _run(tmp_path, capsys, *flags):
  out = tmp_path / "out"
  report = job.main(["--epochs", "1", "--members", "2", "--no_progress", "--out", str(out),
                     *flags])
  text = capsys.readouterr().out
  return report, text, out


@pytest.mark.parametrize("model,fusion", [
    ("mlp", "mean"), ("mlp", "mean_logits"), ("mlp", "soft_vote"),
    pytest.param("cnn", "weighted", marks=pytest.mark.slow),    # own compiles: ~10-20 s each
    pytest.param("gru", "hard_vote", marks=pytest.mark.slow),
])
def test_models_and_fusions_train_fuse_print_and_plot(tmp_path, capsys, model, fusion):
  report, text, out = _run(tmp_path, capsys, "--model", model, "--fusion", fusion)
  lines = text.splitlines()
  assert any(l.startswith("digits: 1293 train / 144 val / 360 test, 2 ") for l in lines)
  ens = [l for l in lines if l.startswith("ensemble ")]
  assert len(ens) == 1 and ens[0].split()[1] == f"{report['accuracy']:.4f}"
  assert ens[0].split()[2] == f"{report['nll']:.4f}"
  table = lines[lines.index(next(l for l in lines if l.startswith("model "))) + 1:]
  assert table[2].startswith("mean member")                          # one line per member
  prefix = {"mlp": "mlp", "cnn": "cnn", "gru": "rowrnn"}[model]   # ensemble.names
  assert [l.split()[0] for l in table[:2]] == [f"{prefix}0", f"{prefix}1"]
  assert (out / "digits_ensemble.png").stat().st_size > 10_000
  assert (out / "log.jsonl").exists()
  saved = json.loads((out / "test.json").read_text())
  assert saved["model"] == model and saved["fusion"] == fusion
  curve = np.array(saved["size_curve"]["nll"])
  assert curve.shape == (2, 2) and np.all(np.isfinite(curve))
  # the k = 1 column is the members themselves (windows start at each member)
  np.testing.assert_allclose(curve[:, 0], report["member_nll"], rtol=1e-5)
  np.testing.assert_allclose(np.array(saved["size_curve"]["accuracy"])[:, 0],
                             report["member_accuracy"], rtol=1e-6)
  if fusion in ("mean", "soft_vote"):   # the size curve at k = M is the fused ensemble
    np.testing.assert_allclose(curve[:, -1], report["nll"], rtol=1e-5)
  if fusion == "hard_vote":
    assert "hard (majority) vote" in ens[0]
  assert 0.0 <= report["ece"] <= 1.0 and np.isfinite(report["nll"])


def test_default_out_is_outputs_slash_dataset(tmp_path, capsys, monkeypatch):
  monkeypatch.chdir(tmp_path)
  job.main(["--epochs", "1", "--members", "2", "--no-progress", "--batch-size", "64"])
  assert "plot: outputs/digits/digits_ensemble.png" in capsys.readouterr().out
  assert (tmp_path / "outputs" / "digits" / "digits_ensemble.png").exists()


@pytest.mark.parametrize("flags", [["--model", "resnet"], ["--fusion", "median"],
                                   ["--members", "0"], ["--epochs", "0"]])
def test_bad_flags_exit_with_a_message(flags, capsys):
  with pytest.raises(SystemExit) as e:
    job.main(flags)
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert "invalid choice" in err or "must be >= 1" in err


@pytest.mark.slow
@pytest.mark.mnist
@pytest.mark.skipif(not (MNIST_DIR / "train-images-idx3-ubyte.gz").exists(),
                    reason="needs the MNIST IDX files in ../shared/data/mnist")
def test_mnist_dataset_flag(tmp_path, capsys):
  report, text, out = _run(tmp_path, capsys, "--dataset", "mnist", "--data_dir", str(MNIST_DIR),
                           "--batch_size", "256")
  assert "mnist: 54000 train / 6000 val / 10000 test, 2 MLPs (784-256-256-10)" in text
  assert report["accuracy"] > 0.9
  assert (out / "mnist_ensemble.png").exists()


def test_size_curve_is_the_mean_of_each_cyclic_window_of_members():
  from scipy.special import log_softmax, logsumexp  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  z, y = rng.normal(size=(5, 50, 4)) * 3, rng.integers(0, 4, 50)
  curve = job.size_curve(z, y)
  lp = log_softmax(z, -1)
  for s in range(5):
    for k in range(1, 6):
      fused = logsumexp(lp[(s + np.arange(k)) % 5], axis=0) - np.log(k)
      assert curve["nll"][s][k - 1] == pytest.approx(-fused[np.arange(50), y].mean(), rel=1e-5)
      assert curve["accuracy"][s][k - 1] == pytest.approx((fused.argmax(-1) == y).mean(),
                                                          rel=1e-6)
