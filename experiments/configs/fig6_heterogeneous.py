"""Figure 6: heterogeneous fusion. 3 CNNs + 3 row-GRUs on an MNIST subset, trained in one step.

Command:
    python experiments/run.py --config fig6_heterogeneous --data-dir ../shared/data/mnist

The CNN is LeNet-5-style (conv5x5(6)-pool-conv5x5(16)-pool-dense(120)) written
as im2col (``patch_cnn`` in experiments/tasks/common.py) because a vmapped
``nn.Conv`` becomes a grouped convolution that XLA:CPU runs 5-15x slower per
member; on a GPU use ``name='cnn'`` (fusionjax.models.CNN).

Runtime: 1.5 min (measured: 90 s of wall-clock time in one fresh-clone `run.py --all` on the
2-core CPU machine, 1617.7 s for all eight configs with nothing else running; smoke mode:
a few seconds).

Expected (measured in that run, the same numbers as an earlier run, test split, accuracy / NLL):
    CNN members 97.89-98.17 %, GRU members 92.89-93.18 %;
    mean of CNNs 98.28 % / 0.056, mean of GRUs 94.81 % / 0.199, mean of all 98.04 % / 0.108,
    learned per-member weights 98.30 % / 0.055, weighted group means 98.29 % / 0.057,
    linear stacking (fit on validation) 98.26 % / 0.065.

"""


def get_config(smoke=False):
  cfg = dict(
      task="heterogeneous",
      dataset="mnist",
      train_size=20000,
      groups=dict(cnn=dict(name="patch_cnn", features=[6, 16], hidden=120, members=3),
                  gru=dict(name="gru", hidden=64, members=3)),
      epochs=3,
      batch_size=128,
      lr=2e-3,
      fusion_steps=500,
      fusion_lr=1e-2,
  )
  if smoke:
    cfg.update(dataset="digits", train_size=None, epochs=1, max_steps=3, batch_size=64,
               fusion_steps=5,
               groups=dict(cnn=dict(name="patch_cnn", features=[2, 4], hidden=8, members=2),
                           gru=dict(name="gru", hidden=8, members=2)))
  return cfg
