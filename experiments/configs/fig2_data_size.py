"""Figure 2: training-set size. One member vs a 5-member ensemble on 1-100 % of MNIST, 3 seeds.

Command:
    python experiments/run.py --config experiments/configs/fig2_data_size.py \
        --data_dir ../shared/data/mnist --publish

Runtime: 1.9 min (measured: 114.4 s of wall-clock time and 183 s of process CPU time for the
3 seeds, in one `run.py --all --publish` of every config on the 2-core Intel Xeon (AVX-512)
machine, jax 0.10.2, nothing else training, 2026-12-07); smoke mode: a few seconds.

Expected (measured in that run, test error / NLL, one member (mean of 5 members and 3 seeds)
-> ensemble of 5 (mean of 3 seeds, +- std of its error)):
    1 %:   11.57 % / 0.590 -> 11.05 % (+-0.07) / 0.510
    100 %:  1.85 % / 0.061 ->  1.65 % (+-0.07) / 0.052
The ensemble has both the lower error and the lower NLL in all 15 pairs of seed and size.
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
