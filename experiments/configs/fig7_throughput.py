"""Figure 7: throughput. Member-samples/s against M, one stacked step vs a loop of single steps.

Command:
    python benchmarks/ensemble_step.py          # writes benchmarks/results/ensemble_step.json
    python experiments/run.py --config fig7_throughput

Copies the benchmark's rows (CPU here; no GPU rows were measured in this
session) into experiments/results/fig7_throughput.json; if the benchmark's file
is missing it measures the grid below itself (experiments/tasks/throughput.py).

Runtime: about 0 s when it copies the benchmark's file (the benchmark itself,
`python benchmarks/ensemble_step.py`, took about 6 minutes on the idle 2-core CPU
machine); about 1.5 min when it measures (89 s measured under load); smoke mode:
a few seconds.

Expected (benchmarks/results/ensemble_step.json, idle 2-core AMD EPYC, jax 0.10.2,
2026-11-22; member-samples/s, stacked / loop, then the median per-cycle ratio):
    digits_mlp M=1: 111k / 131k (0.88x), M=4: 138k / 130k (0.97x),
               M=16: 145k / 130k (1.15x), M=64: 153k / 126k (1.33x)
    mnist_mlp  M=1:  56k /  79k (0.75x), M=4:  69k /  72k (0.91x),
               M=16: 76k /  81k (0.91x), M=64: 72k /  76k (1.01x)
"""


def get_config(smoke=False):
  cfg = dict(task="throughput", measure=False, models=["digits_mlp", "mnist_mlp"],
             members=[1, 4, 16, 64], batch=128, repeats=5, steps=10)
  if smoke:
    cfg.update(measure=True, models=["digits_mlp"], members=[1, 2], repeats=1, steps=1)
  return cfg
