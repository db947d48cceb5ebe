"""Figure 6: throughput. Member-samples/s against M, one stacked step vs a loop of single steps.

Command:
    python benchmarks/ensemble_step.py   # writes benchmarks/results/ensemble_step@<kind>.json
    python experiments/run.py --config experiments/configs/fig6_throughput.py --publish

Copies the rows of the configured models from the benchmark's newest result,
``benchmarks/results/ensemble_step@<kind>.json`` by its finish time (CPU here; no GPU
rows were measured in this session), into experiments/results/fig6_throughput.json;
if no such file exists, or with ``--config.measure=True``, it measures the grid below
itself (experiments/tasks/throughput.py).

Runtime: about 0 s when it copies the benchmark's file (0.001 s, published alone on
2026-12-07 after the `run.py --all --publish` run); 33.6 s when it measures (in that
`--all` run it still looked for the old file name and measured the grid itself, on the
2-core Intel Xeon (AVX-512) machine with nothing else training); smoke mode: a few seconds.

Expected (benchmarks/results/ensemble_step@intel-xeon-avx512.json, `--cycles 7`, 2-core
Intel Xeon with AVX-512, jax 0.10.2, finished 2026-12-07; member-samples/s, stacked
(``fj_msps``) / loop (``jax_loop_msps``), then the median per-cycle ratio
(``fj_vs_jax_loop``)):
    digits_mlp M=1: 137k / 155k (0.89x), M=4: 205k / 171k (1.20x),
               M=16: 194k / 144k (1.34x), M=64: 206k / 134k (1.54x)
    mnist_mlp  M=1:  77k /  92k (0.83x), M=4:  91k /  89k (1.02x),
               M=16: 81k /  80k (1.04x), M=64: 87k /  78k (1.10x)
"""
import ml_collections


def get_config(arg=None):
  cfg = ml_collections.ConfigDict(dict(
      task="throughput", measure=False, models=("digits_mlp", "mnist_mlp"),
      members=(1, 4, 16, 64), batch=128, repeats=5, steps=10))
  if arg == "smoke":
    cfg.update(measure=True, models=("digits_mlp",), members=(1, 2), repeats=1, steps=1)
  return cfg
