"""Figure 1 (CNN version, Sec. 4 of the paper): LeNet-size CNN members on MNIST, M = 1..10.

Command:
    python experiments/run.py --config experiments/configs/fig1_cnn_ensemble_size.py \
        --data_dir ../shared/data/mnist --publish

Runtime: 20.2 min for three seeds (measured: 1210.6 s of wall-clock time and 2277 s of process
CPU time in one `--publish` run of this config alone on the 2-core Intel Xeon (AVX-512)
machine, jax 0.10.2, nothing else training, 2026-12-07; one seed took 393.7 s in the
`run.py --all --publish` run of the same day, and 663.8 s before the CNN model and guard
changes of issue 22; smoke mode: a few seconds).

Expected (measured in that run, test split, mean over seeds 0, 1, 2; the ensemble of the
first M members):
    M=1:  accuracy 99.24 +- 0.02 %, NLL 0.022, ECE 0.18 %  (members 99.12-99.38 %)
    M=4:  accuracy 99.46 +- 0.04 %, NLL 0.016, ECE 0.35 %
    M=10: accuracy 99.51 +- 0.03 %, NLL 0.015, ECE 0.41 %, Brier 0.0075

Members: ``fusionjax.models.CNN(10, (8, 16), 64)`` (conv 5x5 8 and 16 channels,
max-pooling, dense 64: LeNet-5's size), each on its own shuffle of the data,
every training image translated at random by up to 2 pixels per step
(``fj.data.crop_flip(..., flip=False)``, padded with the background), Adam
4e-3 with cosine decay, 10 epochs of batch 128. Anchor (uncertainty-baselines,
MNIST LeNet-5): one member 99.1 % / NLL 0.037; an ensemble of 10: 99.4 % /
NLL 0.016 / ECE 0.005. Measured against it: the single member and the ensemble
of 10 meet it on every number, on the means and in each of the three seeds.
The wider CNN of ``gpu_fig1_cnn_ensemble_size`` (32 and 64 channels, 10
epochs, 3 seeds) is the GPU version.
"""
import ml_collections


def get_config(arg=None):
  cfg = ml_collections.ConfigDict(dict(
      task="ensemble_size",
      dataset="mnist",
      model=dict(name="cnn", features=(8, 16), hidden=64),
      max_members=10,
      seeds=(0, 1, 2),
      random_subsets=5,
      member_order="own",
      epochs=10,
      batch_size=128,
      lr=4e-3,
      shift=2,
  ))
  if arg == "smoke":
    cfg.update(dataset="digits", model=dict(name="cnn", features=(2, 4), hidden=8),
               max_members=2, random_subsets=1, epochs=1, max_steps=2, batch_size=32, shift=1)
  return cfg
