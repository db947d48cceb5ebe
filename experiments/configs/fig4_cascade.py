"""Figure 4: cascade. Accuracy against average cost (fraction of the ensemble's FLOPs) on MNIST.

Command:
    python experiments/run.py --config fig4_cascade --data-dir ../shared/data/mnist

Runtime: 0.6 min (measured: 34 s of wall-clock time in one fresh-clone `run.py --all` on the
2-core CPU machine, 1617.7 s for all eight configs with nothing else running; smoke mode:
a few seconds).

Expected (measured in that run, test split):
    one member 98.22 %, full ensemble of 8 (mean of probabilities) 98.45 %;
    the prefix-mean cascade (top-probability confidence) matches it with 98.48 % at 15.4 %
    of the ensemble's cost (threshold 0.9); with the threshold chosen on validation: 98.47 %
    at 16.6 %; top-2 margin: 98.46 % at 14.6 %.

"""


def get_config(smoke=False):
  cfg = dict(
      task="cascade",
      dataset="mnist",
      model=dict(name="mlp", features=[200, 200, 200]),
      members=8,
      epochs=5,
      batch_size=256,
      lr=2e-3,
      confidences=["max_prob", "margin"],
      thresholds=[0.0, 0.5, 0.7, 0.8, 0.9, 0.95, 0.97, 0.98, 0.99, 0.995, 0.997, 0.998, 0.999,
                  0.9995, 0.9998, 0.9999, 0.99995, 0.99999, 1.0],
  )
  if smoke:
    cfg.update(dataset="digits", model=dict(name="mlp", features=[16]), members=3, epochs=1,
               max_steps=3, batch_size=64, thresholds=[0.0, 0.5, 1.0])
  return cfg
