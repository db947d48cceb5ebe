"""Figure 3: cascade. Accuracy against average cost (fraction of the ensemble's FLOPs), 3 seeds.

Command:
    python experiments/run.py --config experiments/configs/fig3_cascade.py \
        --data_dir ../shared/data/mnist --publish

Runtime: 1.1 min (measured: 66.2 s of wall-clock time and 113 s of process CPU time for the
3 seeds, in one `run.py --all --publish` of every config on the 2-core Intel Xeon (AVX-512)
machine, jax 0.10.2, nothing else training, 2026-12-07; smoke mode: a few seconds).

Expected (measured in that run, test split, mean +- std over the 3 seeds):
    one member 98.08 %, full ensemble of 8 (mean of probabilities) 98.40 % (+-0.02);
    the prefix-mean cascade (top-probability confidence) with the threshold chosen on the
    validation split (0.9, 0.95 or 0.97 by seed): 98.40 % (+-0.02) at 16.6 % (+-0.9) of the
    ensemble's FLOPs, at least as accurate as the full ensemble on test in 3 of 3 seeds
    (seed 0: 98.43 % at 16.6 %); top-2 margin, threshold chosen on validation: 98.40 % at
    16.6 %. Choosing the threshold on test instead (an oracle) gives 15.5 %.
"""
import ml_collections


def get_config(arg=None):
  cfg = ml_collections.ConfigDict(dict(
      task="cascade",
      dataset="mnist",
      model=dict(name="mlp", features=(200, 200, 200)),
      members=8,
      seeds=(0, 1, 2),  # run.py runs the task once per seed
      epochs=5,
      batch_size=256,
      lr=2e-3,
      confidences=("max_prob", "margin"),
      thresholds=(0.0, 0.5, 0.7, 0.8, 0.9, 0.95, 0.97, 0.98, 0.99, 0.995, 0.997, 0.998, 0.999,
                  0.9995, 0.9998, 0.9999, 0.99995, 0.99999, 1.0),
  ))
  if arg == "smoke":
    cfg.update(dataset="digits", model=dict(name="mlp", features=(16,)), members=3,
               seeds=(0, 1), epochs=1, max_steps=3, batch_size=64, thresholds=(0.0, 0.5, 1.0))
  return cfg
