"""Figure 5: joint vs independent training. Sweep lambda of the hybrid loss (MNIST subset).

Command:
    python experiments/run.py --config fig5_joint --data-dir ../shared/data/mnist

Runtime: 1.9 min (measured: 113 s of wall-clock time in one fresh-clone `run.py --all` on the
2-core CPU machine, 1617.7 s for all eight configs with nothing else running; smoke mode:
a few seconds).

Expected (measured in that run, test split, mean of 2 seeds):
    lambda   ensemble acc  mean member acc  disagreement  gain (points)
    0        97.06 %       96.83 %          1.64 %        0.24
    0.25     97.05 %       96.80 %          1.69 %        0.25
    1        97.02 %       96.80 %          1.76 %        0.22
    4        97.00 %       96.77 %          1.91 %        0.23
    16       96.89 %       96.58 %          2.33 %        0.31
    joint    96.50 %       95.87 %          3.41 %        0.63

"""


def get_config(smoke=False):
  cfg = dict(
      task="joint",
      dataset="mnist",
      train_size=20000,
      model=dict(name="mlp", features=[200, 200, 200]),
      members=4,
      lambdas=[0.0, 0.25, 1.0, 4.0, 16.0],
      joint=True,
      seeds=[0, 1],
      epochs=5,
      batch_size=128,
      lr=1e-3,
  )
  if smoke:
    cfg.update(dataset="digits", train_size=None, model=dict(name="mlp", features=[16]),
               members=3, lambdas=[0.0, 1.0], epochs=1, max_steps=3, batch_size=64)
  return cfg
