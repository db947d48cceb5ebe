"""Table 1: fusion methods side by side on digits and MNIST (accuracy, NLL, ECE, cost), 3 seeds.

Command:
    python experiments/run.py --config experiments/configs/tab1_fusion_methods.py \
        --data_dir ../shared/data/mnist --publish

Runtime: RUNTIME

Expected: EXPECTED
"""
import ml_collections

_COMMON = dict(
    members=5,
    seeds=(0, 1, 2),  # run.py runs the task once per seed
    fusion_steps=500, fusion_lr=1e-2, gate_hidden=32,
    # stacking as scikit-learn's StackingClassifier defaults: predict_proba features and
    # LogisticRegression(C=1), fitted to convergence
    stack_features="proba", stack_steps=3000, stack_l2_c=1.0,
    cascade_grid=(0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.998, 0.999, 0.9995,
                  0.9999, 0.99999, 1.0),
    soup_ingredients=4, soup_lr=2e-4, soup_epochs=1,
    boost_rounds=5, boost_shrinkage=1.0,
    distill_T=2.0, distill_alpha=0.9,
)


def get_config(arg=None):
  cfg = ml_collections.ConfigDict(dict(
      task="fusion_methods",
      **_COMMON,
      datasets=[
          dict(dataset="digits", model=dict(name="mlp", features=(200, 200, 200)),
               folds=5, epochs=30, batch_size=64, lr=1e-3, soup_epochs=5),
          dict(dataset="mnist", model=dict(name="mlp", features=(200, 200, 200)),
               folds=3, epochs=8, batch_size=256, lr=2e-3),
      ],
  ))
  if arg == "smoke":
    cfg.update(members=3, seeds=(0,), fusion_steps=5, stack_steps=5, soup_ingredients=2,
               boost_rounds=2, cascade_grid=(0.5, 0.9, 1.0))
    cfg.datasets = [dict(dataset="digits", model=dict(name="mlp", features=(16,)), folds=2,
                         epochs=1, batch_size=64, lr=1e-3, max_steps=3)]
  return cfg
