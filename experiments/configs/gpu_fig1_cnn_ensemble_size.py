"""GPU: Figure 1 with LeNet-style CNN members (fusionjax.models.CNN) on MNIST, M = 1..10.

Needs a GPU (never run: no GPU has been lent to this project yet). Wider
members (32 and 64 channels) and 3 seeds; the CPU version with LeNet-5-size
members and one seed is ``fig1_cnn_ensemble_size``. Command (``run.py`` uses
whatever platform JAX picks; it forces none):

    python experiments/run.py --config experiments/configs/gpu_fig1_cnn_ensemble_size.py \
        --data_dir ../shared/data/mnist --publish

Anchors it is meant to meet (uncertainty-baselines, MNIST LeNet-5): one
member 99.1 % accuracy / NLL 0.037; ensemble of 10: 99.4 % / NLL 0.016 /
ECE 0.005. Runtime and numbers: not measured (no GPU).
"""
import ml_collections


def get_config(arg=None):
  cfg = ml_collections.ConfigDict(dict(
      task="ensemble_size",
      gpu=True,
      dataset="mnist",
      model=dict(name="cnn", features=(32, 64), hidden=128),
      max_members=10,
      seeds=(0, 1, 2),
      random_subsets=5,
      epochs=10,
      batch_size=128,
      lr=1e-3,
  ))
  if arg == "smoke":
    cfg.update(dataset="digits", model=dict(name="cnn", features=(2, 4), hidden=8),
               max_members=2, seeds=(0,), random_subsets=1, epochs=1, max_steps=2,
               batch_size=32)
  return cfg
