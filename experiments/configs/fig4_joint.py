"""Figure 4: joint vs independent training. Sweep lambda of the hybrid loss (MNIST subset), 3 seeds.

Command:
    python experiments/run.py --config experiments/configs/fig4_joint.py \
        --data_dir ../shared/data/mnist --publish

Runtime: RUNTIME

Expected: EXPECTED
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
