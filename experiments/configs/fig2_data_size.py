"""Figure 2: training-set size. One member vs a 5-member ensemble on 1-100 % of MNIST, 3 seeds.

Command:
    python experiments/run.py --config experiments/configs/fig2_data_size.py \
        --data_dir ../shared/data/mnist --publish

Runtime: RUNTIME

Expected: EXPECTED
"""
import ml_collections


def get_config(arg=None):
  cfg = ml_collections.ConfigDict(dict(
      task="data_size",
      dataset="mnist",
      model=dict(name="mlp", features=(200, 200, 200)),
      members=5,
      seeds=(0, 1, 2),  # run.py runs the task once per seed
      fractions=(0.01, 0.03, 0.1, 0.3, 1.0),
      epochs=5,
      min_steps=500,
      batch_size=128,
      lr=1e-3,
  ))
  if arg == "smoke":
    cfg.update(dataset="digits", model=dict(name="mlp", features=(16,)), members=3, seeds=(0,),
               fractions=(0.1, 1.0), epochs=1, min_steps=3, max_steps=3, batch_size=64)
  return cfg
