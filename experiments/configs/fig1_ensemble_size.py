"""Figure 1: ensemble size. Test error, NLL, Brier and ECE against M = 1..16 (MNIST, MLP 3x200).

Command:
    python experiments/run.py --config experiments/configs/fig1_ensemble_size.py \
        --data_dir ../shared/data/mnist --publish

Runtime: 3.2 min (measured: 192.2 s of wall-clock time and 341 s of process CPU time in one
`run.py --all --publish` of every config on the 2-core Intel Xeon (AVX-512) machine, jax
0.10.2, nothing else training, 2026-12-07); smoke mode (`:smoke` or `--smoke`): a few seconds.

Expected (measured in that run, test split, mean over the 3 seeds of the first M members,
+- std of the error over seeds; the figure's band is the min-max over the 3 seeds):
    M=1:  error 1.72 % (+-0.02), NLL 0.060, Brier 0.0270, ECE 0.82 %
    M=4:  error 1.52 % (+-0.02), NLL 0.049, Brier 0.0231, ECE 0.39 %
    M=10: error 1.45 % (+-0.02), NLL 0.046, Brier 0.0219, ECE 0.34 %
    M=16: error 1.45 % (+-0.03), NLL 0.045, Brier 0.0217, ECE 0.33 %
Anchor (Deep Ensembles, Fig. 2a, same MLP): about 1.7 % -> 1.1 %. The single member meets
1.7 %; the ensemble stops at 1.45 % (their members trained longer; their 1.1 % uses
adversarial training, not run here).
"""
import ml_collections


def get_config(arg=None):
  cfg = ml_collections.ConfigDict(dict(
      task="ensemble_size",
      dataset="mnist",
      model=dict(name="mlp", features=(200, 200, 200)),
      max_members=16,
      seeds=(0, 1, 2),
      random_subsets=5,
      member_order="own",  # random init and random shuffling, as in Deep Ensembles
      epochs=8,
      batch_size=256,
      lr=2e-3,
  ))
  if arg == "smoke":
    cfg.update(dataset="digits", model=dict(name="mlp", features=(16,)), max_members=3,
               seeds=(0, 1), random_subsets=2, epochs=1, max_steps=3, batch_size=64)
  return cfg
