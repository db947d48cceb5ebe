"""Figure 3: training-set size. One member vs a 5-member ensemble on 1-100 % of MNIST.

Command:
    python experiments/run.py --config fig3_data_size --data-dir ../shared/data/mnist

Runtime: 0.9 min (measured: 53 s of wall-clock time in one fresh-clone `run.py --all` on the
2-core CPU machine, 1617.7 s for all eight configs with nothing else running; smoke mode:
a few seconds).

Expected (measured in that run, test error / NLL, one member (mean of 5) -> ensemble of 5):
    1 %:   11.50 % / 0.585 -> 10.93 % / 0.505
    3 %:    7.95 % / 0.359 ->  7.53 % / 0.314
    10 %:   5.02 % / 0.180 ->  4.78 % / 0.162
    30 %:   3.60 % / 0.116 ->  3.44 % / 0.107
    100 %:  1.82 % / 0.059 ->  1.58 % / 0.051

"""


def get_config(smoke=False):
  cfg = dict(
      task="data_size",
      dataset="mnist",
      model=dict(name="mlp", features=[200, 200, 200]),
      members=5,
      fractions=[0.01, 0.03, 0.1, 0.3, 1.0],
      epochs=5,
      min_steps=500,
      batch_size=128,
      lr=1e-3,
  )
  if smoke:
    cfg.update(dataset="digits", model=dict(name="mlp", features=[16]), members=3,
               fractions=[0.1, 1.0], epochs=1, min_steps=3, max_steps=3, batch_size=64)
  return cfg
