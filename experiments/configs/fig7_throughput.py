"""Figure 7: throughput. Member-samples/s against M, one stacked step vs a loop of single steps.

Command:
    python benchmarks/ensemble_step.py          # writes benchmarks/results/ensemble_step.json
    python experiments/run.py --config fig7_throughput

Copies the benchmark's rows (CPU here; no GPU rows were measured in this
session) into experiments/results/fig7_throughput.json; if the benchmark's file
is missing it measures the grid below itself (experiments/tasks/throughput.py).

Runtime: 1.5 min when it measures, about 0 s when it copies (measured: 89 s of wall-clock
time in `run.py --all` on the 2-core CPU machine, load average 3-10 from parallel test runs;
smoke mode: a few seconds).

Expected (measured in that run; benchmarks/results/ensemble_step.json was missing,
so these are this config's own measurement, member-samples/s, stacked / loop):
    digits_mlp M=1: 133k / 164k, M=4: 150k / 174k, M=16: 152k / 103k, M=64: 122k / 109k
    mnist_mlp  M=1:  41k /  57k, M=4:  39k /  53k, M=16:  45k /  46k, M=64:  40k /  41k
On 2 CPU cores neither is consistently faster (stacked / loop between 0.72 and 1.47).

"""


def get_config(smoke=False):
  cfg = dict(task="throughput", measure=False, models=["digits_mlp", "mnist_mlp"],
             members=[1, 4, 16, 64], batch=128, repeats=5, steps=10)
  if smoke:
    cfg.update(measure=True, models=["digits_mlp"], members=[1, 2], repeats=1, steps=1)
  return cfg
