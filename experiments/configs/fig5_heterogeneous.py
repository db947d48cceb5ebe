"""Figure 5: heterogeneous fusion. 3 CNNs + 3 row-GRUs on an MNIST subset, one step, 3 seeds.

Command:
    python experiments/run.py --config experiments/configs/fig5_heterogeneous.py \
        --data_dir ../shared/data/mnist --publish

The CNN is LeNet-5-style (conv5x5(6)-pool-conv5x5(16)-pool-dense(120)) written
as im2col (``patch_cnn`` in experiments/tasks/common.py) because a vmapped
``nn.Conv`` becomes a grouped convolution that XLA:CPU runs 5-15x slower per
member; on a GPU use ``name='cnn'`` (fusionjax.models.CNN).

Runtime: 3.1 min (measured: 187.4 s of wall-clock time and 326 s of process CPU time for the
3 seeds, in one `run.py --all --publish` of every config on the 2-core Intel Xeon (AVX-512)
machine, jax 0.10.2, nothing else training, 2026-12-07); smoke mode: a few seconds.

Expected (measured in that run, test split, mean +- std over 3 seeds, accuracy / NLL):
    CNN members 97.99 % on average, GRU members 93.05 %;
    mean of CNNs 98.25 +-0.02 % / 0.057, mean of GRUs 94.76 +-0.22 % / 0.201,
    mean of all 97.99 +-0.10 % / 0.110 (below the mean of CNNs in 3 of 3 seeds),
    learned per-member weights 98.25 +-0.05 % / 0.058, weighted group means 98.24 +-0.03 %,
    linear stacking (fit on validation) 98.24 +-0.02 % / 0.066.
"""
import ml_collections


def get_config(arg=None):
  cfg = ml_collections.ConfigDict(dict(
      task="heterogeneous",
      dataset="mnist",
      train_size=20000,
      seeds=(0, 1, 2),  # run.py runs the task once per seed
      groups=dict(cnn=dict(name="patch_cnn", features=(6, 16), hidden=120, members=3),
                  gru=dict(name="gru", hidden=64, members=3)),
      epochs=3,
      batch_size=128,
      lr=2e-3,
      fusion_steps=500,
      fusion_lr=1e-2,
  ))
  if arg == "smoke":
    cfg.update(dataset="digits", train_size=None, seeds=(0,), epochs=1, max_steps=3,
               batch_size=64, fusion_steps=5,
               groups=dict(cnn=dict(name="patch_cnn", features=(2, 4), hidden=8, members=2),
                           gru=dict(name="gru", hidden=8, members=2)))
  return cfg
