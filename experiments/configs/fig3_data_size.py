"""Figure 3: training-set size. One member vs a 5-member ensemble on 1-100 % of MNIST.

Command:
    python experiments/run.py --config fig3_data_size --data-dir ../shared/data/mnist

Runtime: 1.2 min (measured: 70 s of wall-clock time in `run.py --all` on the 2-core CPU
machine, load average 3-10 from parallel test runs; smoke mode: a few seconds).

Expected (measured in that run, test error / NLL, one member (mean of 5) -> ensemble of 5):
    1 %:   11.50 % / 0.585 -> 10.93 % / 0.505
    3 %:    7.94 % / 0.359 ->  7.51 % / 0.314
    10 %:   5.01 % / 0.180 ->  4.80 % / 0.162
    30 %:   3.58 % / 0.116 ->  3.41 % / 0.107
    100 %:  1.82 % / 0.059 ->  1.60 % / 0.051

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
