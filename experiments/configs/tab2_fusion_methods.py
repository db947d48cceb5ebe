"""Table 2: fusion methods side by side on digits and MNIST (accuracy, NLL, ECE, cost).

Command:
    python experiments/run.py --config tab2_fusion_methods --data-dir ../shared/data/mnist

Runtime: 3.6 min (measured: 214 s of wall-clock time in one fresh-clone `run.py --all` on the
2-core CPU machine, 1617.7 s for all eight configs with nothing else running; smoke mode:
a few seconds).

Expected (measured in that run, test split, accuracy / NLL / ECE / cost in member evaluations):
    MNIST (M=5 MLPs 3x200):
      single member 98.15 / 0.060 / 0.61 % / 1;  mean of probabilities 98.36 / 0.049 / 0.27 % / 5
      mean of logits 98.37 / 0.050; hard vote 98.38 / -- ; learned weights 98.39 / 0.049
      stacking out-of-fold 98.34 / 0.072;  in-sample 98.34 / 0.078;  gating 98.12 / 0.061
      cascade 98.34 / 0.055 at 1.13 members; greedy soup 98.09 / 0.062 (2 ingredients)
      uniform soup of independent inits 22.28 %; gradient boosting 97.62 / 0.100 (5 rounds)
      distilled student 98.05 / 0.062
    digits (360 test images): mean 96.94 / 0.103; stacking out-of-fold 97.22 / 0.132,
      in-sample 96.94 / 0.137; gradient boosting 97.78 / 0.072; uniform soup 14.72 %.

"""

_COMMON = dict(
    members=5, seed=0,
    fusion_steps=500, fusion_lr=1e-2, gate_hidden=32,
    # stacking as scikit-learn's StackingClassifier defaults: predict_proba features and
    # LogisticRegression(C=1), fitted to convergence
    stack_features="proba", stack_steps=3000, stack_l2_c=1.0,
    cascade_grid=[0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.998, 0.999, 0.9995,
                  0.9999, 0.99999, 1.0],
    soup_ingredients=4, soup_lr=2e-4, soup_epochs=1,
    boost_rounds=5, boost_shrinkage=1.0,
    distill_T=2.0, distill_alpha=0.9,
)


def get_config(smoke=False):
  cfg = dict(
      task="fusion_methods",
      **_COMMON,
      datasets=[
          dict(dataset="digits", model=dict(name="mlp", features=[200, 200, 200]),
               folds=5, epochs=30, batch_size=64, lr=1e-3, soup_epochs=5),
          dict(dataset="mnist", model=dict(name="mlp", features=[200, 200, 200]),
               folds=3, epochs=8, batch_size=256, lr=2e-3),
      ],
  )
  if smoke:
    cfg.update(members=3, fusion_steps=5, stack_steps=5, soup_ingredients=2, boost_rounds=2,
               cascade_grid=[0.5, 0.9, 1.0])
    cfg["datasets"] = [dict(dataset="digits", model=dict(name="mlp", features=[16]), folds=2,
                            epochs=1, batch_size=64, lr=1e-3, max_steps=3)]
  return cfg
