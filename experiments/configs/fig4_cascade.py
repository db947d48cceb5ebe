"""Figure 4: cascade. Accuracy against average cost (fraction of the ensemble's FLOPs) on MNIST.

Command:
    python experiments/run.py --config fig4_cascade --data-dir ../shared/data/mnist

Runtime: 1.0 min (measured: 60 s of wall-clock time in `run.py --all` on the 2-core CPU
machine, load average 3-10 from parallel test runs; smoke mode: a few seconds).

Expected (measured in that run, test split):
    one member 98.17 %, full ensemble of 8 (mean of probabilities) 98.42 %;
    the prefix-mean cascade (top-probability confidence) matches 98.42 % at 14.2 % of the
    ensemble's cost (threshold 0.8); with the threshold chosen on validation: 98.43 % at
    16.7 %; top-2 margin: 14.5 %.

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
