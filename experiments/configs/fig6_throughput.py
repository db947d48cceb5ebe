"""Figure 6: throughput. Member-samples/s against M, one stacked step vs a loop of single steps.

Command:
    python benchmarks/ensemble_step.py          # writes benchmarks/results/ensemble_step.json
    python experiments/run.py --config experiments/configs/fig6_throughput.py --publish

Copies the benchmark's rows (CPU here; no GPU rows were measured in this
session) into experiments/results/fig6_throughput.json; if the benchmark's file
is missing, or with ``--config.measure=True``, it measures the grid below itself
(experiments/tasks/throughput.py).

Runtime: about 0 s when it copies the benchmark's file (the benchmark itself,
`python benchmarks/ensemble_step.py`, took 470 s with its default 5 cycles inside
`bash benchmarks/run_all.sh` on the 2-core CPU machine; the committed file is from a
`--cycles 9` run); about 1.5 min when it measures (89 s measured under load); smoke mode:
a few seconds.

Expected (benchmarks/results/ensemble_step.json, `--cycles 9`, 2-core AMD EPYC, jax 0.10.2,
2026-11-22, re-run after the CNN host-layout change; member-samples/s, stacked / loop,
then the median per-cycle ratio):
    digits_mlp M=1: 138k / 151k (0.96x), M=4: 153k / 124k (1.19x),
               M=16: 181k / 127k (1.33x), M=64: 210k / 150k (1.37x)
    mnist_mlp  M=1:  77k /  81k (0.91x), M=4:  71k /  72k (0.97x),
               M=16: 90k /  78k (1.14x), M=64: 86k /  67k (1.28x)
"""
import ml_collections


def get_config(arg=None):
  cfg = ml_collections.ConfigDict(dict(
      task="throughput", measure=False, models=("digits_mlp", "mnist_mlp"),
      members=(1, 4, 16, 64), batch=128, repeats=5, steps=10))
  if arg == "smoke":
    cfg.update(measure=True, models=("digits_mlp",), members=(1, 2), repeats=1, steps=1)
  return cfg
