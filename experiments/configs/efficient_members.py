"""Efficient members: deep ensemble vs BatchEnsemble vs MC-dropout vs one network, MNIST, 3 seeds.

Command:
    python experiments/run.py --config experiments/configs/efficient_members.py \
        --data_dir ../shared/data/mnist --publish

Runtime: 8.1 min (measured: 489.0 s of wall-clock time, 892 s of process CPU time, in one
`run.py --all --publish` of every config on the 2-core Intel Xeon (AVX-512) machine with jax
0.10.2 and nothing else training, 2026-12-07; the same run before the CNN model and guard
changes of issue 22 took 784.3 s). Smoke mode: 17 s.

Expected (measured in that run; test split; mean +- 95 % t-interval over seeds 0, 1, 2;
"corrupted" is the mean over the 15 corruptions, 2,000 images each; AUROC of the predictive
entropy, test split vs 2,000 uniform-noise images / vs the 1,797 upscaled digits):
                  accuracy        NLL            ECE            corrupted acc.  AUROC noise / digits
    one network   98.78 +- 0.12 % 0.036 +- 0.003 0.27 +- 0.07 % 84.2 +- 1.1 %   0.997 / 0.969
    deep ensemble 99.03 +- 0.08 % 0.030 +- 0.003 0.61 +- 0.02 % 87.0 +- 1.3 %   1.000 / 0.982
    BatchEnsemble 98.70 +- 0.59 % 0.040 +- 0.023 0.67 +- 0.61 % 82.6 +- 4.0 %   0.992 / 0.974
    MC-dropout    98.17 +- 0.74 % 0.108 +- 0.087 5.26 +- 6.24 % 82.5 +- 1.1 %   0.994 / 0.934
Two epochs fall short of the anchors' full training: the ensemble of 5 reaches 99.03 %
(anchor, 10 members: 99.4 %); one network 98.78 % / NLL 0.036 (anchor 99.1 % / 0.037).
MC-dropout at rate 0.5 is under-confident here (ECE 3-8 % per seed).

LeNet-size CNN members (``fusionjax.models.CNN(10, (8, 16), 64)``, as in Fig. 1), M = 5,
2 epochs of batch 128 on the 54,000 training images, Adam 4e-3 with cosine decay, every
method on the same batches. Deep ensemble: 5 networks (``from_linen``); BatchEnsemble:
one network with rank-one factors per member (``batch_ensemble``, fast weights
N(1, 0.5^2)); MC-dropout: one network with dropout 0.5 before its output layer, 5
samples at prediction (``mc_dropout``); one network: each deep-ensemble member on its
own, averaged over the 5. Scores of the mean of member probabilities: accuracy, NLL, ECE
on the 10,000 test images and on the first 2,000 of them under each of the 15
corruptions of ``fusionjax.data.corrupt`` (severity 3; a reimplementation after MNIST-C,
not the published files), and the AUROC of the predictive entropy, test split vs uniform
noise and vs upscaled scikit-learn digits. Anchors (uncertainty-baselines, MNIST LeNet-5,
full training): one network 99.1 % / NLL 0.037; 10 members 99.4 % / NLL 0.016 / ECE 0.005.
"""
import ml_collections

from fusionjax.data import CORRUPTIONS


def get_config(arg=None):
  cfg = ml_collections.ConfigDict(dict(
      task="efficient",
      dataset="mnist",
      model=dict(name="cnn", features=(8, 16), hidden=64),
      methods=("deep_ensemble", "batch_ensemble", "mc_dropout"),
      members=5,
      seeds=(0, 1, 2),  # run.py runs the task once per seed
      epochs=2,
      batch_size=128,
      lr=4e-3,
      be_fast_std=0.5,
      mc_rate=0.5,
      packed_alpha=2.0,
      corruptions=tuple(CORRUPTIONS),
      severity=3,
      corrupt_size=2000,
      ood=("noise", "upscaled_digits"),
      ood_size=2000,
  ))
  if arg == "smoke":
    cfg.update(dataset="digits", model=dict(name="cnn", features=(2, 4), hidden=8),
               members=2, seeds=(0,), epochs=1, max_steps=2, batch_size=32,
               corruptions=("rotate",), corrupt_size=50, ood_size=50)
  return cfg
