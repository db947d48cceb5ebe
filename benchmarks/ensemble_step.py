"""Training throughput of the stacked ensemble step against loops and PyTorch peers.

    python benchmarks/ensemble_step.py [--models digits_mlp mnist_mlp cnn]
        [--members 1 4 16 64] [--cycles 5] [--out ensemble_step]

For each model and ensemble size M, in one process and interleaved (ABAB...):

* ``fj``: fusionjax's stacked step, ``fj.train.make_trainer(ens, adam,
  x_example=x).step`` as shipped (``layout='auto'``; the table's ``layout``
  column says which ran);
* ``fj_noguard``: the same with ``guard=False`` (no non-finite guard), the
  semantics of the plain loop below;
* ``fj_vmap``: the same step in ``layout='vmap'``, one vmapped program (the
  contract, and the default on GPU and TPU);
* ``jax_loop``: a Python loop of M single-member jitted steps (flax + optax);
* ``jax_loop_guarded``: the same loop with fusionjax's non-finite guard
  (``skip_nonfinite`` and the kept params), i.e. the stacked step's semantics;
* ``torch_loop``: M ``nn.Module`` s, each with its own ``torch.optim.Adam``;
* ``torch_func``: ``torch.func.stack_module_state`` + ``vmap`` +
  ``functional_call`` with one Adam over the stacked parameters;
* ``torchensemble``: ``torchensemble.VotingClassifier`` (its own ``fit`` over
  pre-batched tensors, one epoch of K steps per timed call);
* ``gemm``: one 2048^3 float32 matmul through JAX, the machine's GEMM peak under
  the load of the same cycle.

The result is written to ``results/<out>@<CPU kind>.json`` (e.g.
``ensemble_step@intel-xeon-avx512.json``): XLA:CPU's speed differs between CPU
kinds, so ``report.py`` keeps a table per kind. At M = 1 it also checks that
the default step compiles to the guarded single-member program's dots and
convolutions (``m1_same_program``).

Batch 128, Adam(1e-3), synthetic inputs of the model's shape (data loading is
benchmarked in ``data_loader.py``). Throughput is member-samples/s = M * 128 /
step time (median over cycles); ratios are medians of per-cycle ratios.
GFLOP/s counts the MLP's matmul FLOPs exactly (``_common.mlp_flops``) and the
CNN's convolution + dense FLOPs (``_common.cnn_flops``); % of peak is the median
over cycles of (achieved / GEMM peak of that cycle). The PyTorch peers are
skipped, with a note, when torch (or torchensemble) is not installed.
"""
import argparse
import contextlib
import io
import os
import sys
import time
import types

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import _common as C  # noqa: E402
import fusionjax as fj  # noqa: E402

BATCH = 128
MODELS = {
    "digits_mlp": ((8, 8, 1), lambda: fj.models.MLP(10, (256, 256))),
    "mnist_mlp": ((28, 28, 1), lambda: fj.models.MLP(10, (256, 256))),
    "cnn": ((28, 28, 1), lambda: fj.models.CNN(10, (8, 16), 64)),
}


def synthetic(model: str):
  """The benchmarks' batch for ``model``: ``x [BATCH, *shape]`` float32 from N(0, 1)
  and ``y [BATCH]`` int32 labels in [0, 10), seed 0, as numpy arrays."""
  shape, _ = MODELS[model]
  rng = np.random.default_rng(0)
  return (rng.normal(size=(BATCH, *shape)).astype(np.float32),
          rng.integers(0, 10, BATCH).astype(np.int32))


def flops_per_sample(model: str, train: bool = True) -> float:
  if model in C.MLP_DIMS:
    return C.mlp_flops(C.MLP_DIMS[model], train)
  return C.cnn_flops(train=train)


# --------------------------------------------------------------------------- JAX


def _jax_loop(module, tx, m, x, y, guard: bool):
  """A Python loop of M jitted single-member steps (warmed up), as a callable.

  With ``guard``, fusionjax's per-member non-finite guard (the semantics of the
  stacked step): skip_nonfinite around ``tx``, params kept on a non-finite loss
  or update.
  """
  tx = fj.train.skip_nonfinite(tx) if guard else tx
  params = [module.init(jax.random.key(i), x[:1])["params"] for i in range(m)]
  opts = [tx.init(p) for p in params]

  @jax.jit
  def single_step(p, o, x, y):
    loss = lambda q: optax.softmax_cross_entropy_with_integer_labels(
        module.apply({"params": q}, x), y).mean()
    l, g = jax.value_and_grad(loss)(p)
    u, o = tx.update(g, o, p)
    new = optax.apply_updates(p, u)
    if guard:
      ok = o.ok & jnp.isfinite(l)
      new = jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, p)
    return new, o, l

  def loop():
    last = None
    for i in range(m):
      params[i], opts[i], last = single_step(params[i], opts[i], x, y)
    jax.block_until_ready(last)

  loop()
  loop.single_step = single_step
  loop.first_args = (params[0], opts[0], x, y)
  return loop


def jax_variants(model, m, x, y):
  shape, make = MODELS[model]
  del shape
  module = make()
  tx = optax.adam(1e-3)
  ens = fj.ensemble.from_linen(module, m)
  batch = {"x": x, "y": y}
  out, info = {}, {}
  layouts = (("fj", "auto", True), ("fj_noguard", "auto", False), ("fj_vmap", "vmap", True))
  if model == "cnn" and m > 4:
    # One vmap over M CNNs makes every convolution a grouped one, which XLA:CPU
    # runs ~25x slower than M plain ones (22 s a step at M=16): not timed.
    layouts = layouts[:2]
  for name, layout, guard in layouts:
    trainer = fj.train.make_trainer(ens, tx, guard=guard, layout=layout, x_example=x[:1])
    if name == "fj":
      info["layout"] = trainer.layout
    state = {"s": trainer.init(jax.random.key(0), x[:1])}
    step = trainer.step
    t = time.perf_counter()
    state["s"], logs = step(state["s"], batch)
    jax.block_until_ready(logs)
    info[f"{name}_first_step_s"] = time.perf_counter() - t

    def run(step=step, state=state):
      state["s"], logs = step(state["s"], batch)
      jax.block_until_ready(logs["loss"])

    out[name] = run
  if info["layout"] == "scan":
    p = jax.eval_shape(ens.init, jax.random.key(0), x[:1])["params"]
    info["layout"] = f"scan, chunk {fj.train._layouts.auto_chunk(m, p)}"  # pylint: disable=protected-access

  out["jax_loop"] = _jax_loop(module, tx, m, x, y, guard=False)
  out["jax_loop_guarded"] = _jax_loop(module, tx, m, x, y, guard=True)
  if m == 1:
    # At M = 1 the default step should be the guarded single-member program:
    # the same dots and convolutions (fusionjax.train._layouts.program_ops).
    trainer = fj.train.make_trainer(ens, tx, x_example=x[:1])
    state = trainer.init(jax.random.key(0), x[:1])
    ours = trainer.step.lower(state, batch).compile().as_text()
    loop = out["jax_loop_guarded"]
    theirs = loop.single_step.lower(*loop.first_args).compile().as_text()
    ops = fj.train._layouts.program_ops  # pylint: disable=protected-access
    info["m1_same_program"] = ops(ours) == ops(theirs)
    info["m1_ops"] = len(ops(ours))
  return out, info


# --------------------------------------------------------------------------- PyTorch


def torch_module(torch, model):
  nn = torch.nn
  if model in C.MLP_DIMS:
    d = C.MLP_DIMS[model]
    layers = [nn.Flatten()]
    for a, b in zip(d[:-1], d[1:]):
      layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])
  return nn.Sequential(
      nn.Conv2d(1, 8, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
      nn.Conv2d(8, 16, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
      nn.Flatten(), nn.Linear(7 * 7 * 16, 64), nn.ReLU(), nn.Linear(64, 10))


def torch_variants(torch, model, m, x_np, y_np, te_steps):
  F = torch.nn.functional
  x = torch.from_numpy(np.ascontiguousarray(np.moveaxis(x_np, -1, 1)))  # NCHW
  y = torch.from_numpy(y_np.astype(np.int64))
  torch.manual_seed(0)
  out = {}

  models = [torch_module(torch, model) for _ in range(m)]
  opts = [torch.optim.Adam(mod.parameters(), lr=1e-3) for mod in models]

  def loop():
    for mod, opt in zip(models, opts):
      opt.zero_grad(set_to_none=True)
      F.cross_entropy(mod(x), y).backward()
      opt.step()

  out["torch_loop"] = loop

  from torch.func import functional_call, stack_module_state, vmap  # pylint: disable=g-import-not-at-top
  fmodels = [torch_module(torch, model) for _ in range(m)]
  params, buffers = stack_module_state(fmodels)
  base = torch_module(torch, model).to("meta")
  fopt = torch.optim.Adam(list(params.values()), lr=1e-3)
  call = lambda p, b, xx: functional_call(base, (p, b), (xx,))
  ym = y.repeat(m)

  def func():
    fopt.zero_grad(set_to_none=True)
    logits = vmap(call, in_dims=(0, 0, None))(params, buffers, x)  # [M, B, C]
    # Sum over members of each member's mean loss: M independent problems.
    (F.cross_entropy(logits.flatten(0, 1), ym, reduction="sum") / x.shape[0]).backward()
    fopt.step()

  out["torch_func"] = func

  try:
    import torchensemble  # pylint: disable=g-import-not-at-top
  except ImportError:
    print("note: torchensemble is not installed; its VotingClassifier is skipped "
          "(pip install --no-deps torchensemble).")
    return out

  class Batches(list):
    dataset = types.SimpleNamespace(classes=list(range(10)))

  loader = Batches([(x, y)] * te_steps)
  make = lambda: torch_module(torch, model)

  class Estimator(torch.nn.Module):

    def __init__(self):
      super().__init__()
      self.net = make()

    def forward(self, xx):
      return self.net(xx)

  def voting():
    ens = torchensemble.VotingClassifier(estimator=Estimator, n_estimators=m, cuda=False,
                                         n_jobs=1)
    ens.set_optimizer("Adam", lr=1e-3)
    with contextlib.redirect_stdout(io.StringIO()):
      ens.fit(loader, epochs=1, log_interval=10 ** 9, save_model=False)

  out["torchensemble"] = voting
  return out


# --------------------------------------------------------------------------- driver


def bench(model, m, cycles, torch, target_s):
  x_np, y_np = synthetic(model)
  x, y = jnp.asarray(x_np), jnp.asarray(y_np)
  variants, info = jax_variants(model, m, x, y)
  steps_per_call = {k: 1 for k in variants}
  te_steps = 2 if model == "cnn" or m >= 16 else 8  # steps per torchensemble fit() call
  if torch is not None:
    tv = torch_variants(torch, model, m, x_np, y_np, te_steps)
    for k, v in tv.items():
      v()  # warm up
      variants[k] = v
      steps_per_call[k] = te_steps if k == "torchensemble" else 1
  gemm, gemm_flops = C.gemm_runner()
  variants["gemm"] = gemm
  times = C.interleave(variants, cycles, target_s=target_s)
  step_t = {k: [t / steps_per_call.get(k, 1) for t in v] for k, v in times.items() if k != "gemm"}
  peak = [gemm_flops / t / 1e9 for t in times["gemm"]]
  fl = flops_per_sample(model) * m * BATCH
  row = {"model": model, "members": m, "batch": BATCH, "layout": info["layout"],
         "gemm_peak_gflops": C.med(peak), "cycles": cycles,
         "first_step_s": info["fj_first_step_s"],
         "fj_vmap_first_step_s": info.get("fj_vmap_first_step_s"),
         "m1_same_program": info.get("m1_same_program"), "m1_ops": info.get("m1_ops"),
         "flops_per_step": fl}
  for k, v in step_t.items():
    row[f"{k}_ms"] = 1e3 * C.med(v)
    row[f"{k}_msps"] = m * BATCH / C.med(v)
    if k != "fj":
      row[f"fj_vs_{k}"] = C.ratio(v, step_t["fj"])  # their time / ours = our speed-up
  if "fj_noguard" in step_t:  # both sides without the guard
    row["fj_noguard_vs_jax_loop"] = C.ratio(step_t["jax_loop"], step_t["fj_noguard"])
  row["fj_gflops"] = fl / C.med(step_t["fj"]) / 1e9
  row["fj_pct_peak"] = 100 * C.med([fl / t / 1e9 / p for t, p in zip(step_t["fj"], peak)])
  if "fj_vmap" in step_t:
    row["fj_vmap_pct_peak"] = 100 * C.med([fl / t / 1e9 / p
                                           for t, p in zip(step_t["fj_vmap"], peak)])
  row["jax_loop_pct_peak"] = 100 * C.med([fl / t / 1e9 / p
                                          for t, p in zip(step_t["jax_loop"], peak)])
  return row


COLUMNS = [
    ("model", "model", None), ("M", "members", None),
    ("layout", lambda r: r.get("layout", r.get("chunk")), None),
    ("fj ms", "fj_ms", "{:.2f}"), ("fj member-samples/s", "fj_msps", "{:,.0f}"),
    ("vs fj_vmap", lambda r: r.get("fj_vs_fj_vmap", {}).get("median"), "{:.2f}x"),
    ("vs jax_loop", lambda r: r["fj_vs_jax_loop"]["median"], "{:.2f}x"),
    ("(min-max)", lambda r: "{:.2f}-{:.2f}".format(r["fj_vs_jax_loop"]["min"],
                                                   r["fj_vs_jax_loop"]["max"]), None),
    ("vs guarded jax_loop", lambda r: r["fj_vs_jax_loop_guarded"]["median"], "{:.2f}x"),
    ("no guard: fj vs jax_loop", lambda r: r.get("fj_noguard_vs_jax_loop", {}).get("median"),
     "{:.2f}x"),
    ("vs torch_loop", lambda r: r.get("fj_vs_torch_loop", {}).get("median"), "{:.2f}x"),
    ("vs torch_func", lambda r: r.get("fj_vs_torch_func", {}).get("median"), "{:.2f}x"),
    ("vs torchensemble", lambda r: r.get("fj_vs_torchensemble", {}).get("median"), "{:.2f}x"),
    ("fj GFLOP/s", "fj_gflops", "{:.1f}"), ("fj % peak", "fj_pct_peak", "{:.0f}%"),
    ("vmap % peak", "fj_vmap_pct_peak", "{:.0f}%"), ("loop % peak", "jax_loop_pct_peak", "{:.0f}%"),
    ("GEMM peak GFLOP/s", "gemm_peak_gflops", "{:.0f}"),
]

MS_COLUMNS = [
    ("model", "model", None), ("M", "members", None),
    ("fj", "fj_msps", "{:,.0f}"), ("fj_noguard", "fj_noguard_msps", "{:,.0f}"),
    ("fj_vmap", "fj_vmap_msps", "{:,.0f}"),
    ("jax_loop", "jax_loop_msps", "{:,.0f}"),
    ("guarded jax_loop", "jax_loop_guarded_msps", "{:,.0f}"),
    ("torch_loop", "torch_loop_msps", "{:,.0f}"),
    ("torch_func", "torch_func_msps", "{:,.0f}"),
    ("torchensemble", "torchensemble_msps", "{:,.0f}"),
]


def render(result) -> str:
  rows = result["rows"]
  return ("Speed-ups are the peer's step time over fusionjax's (median of per-cycle ratios; "
          ">1 means fusionjax is faster).\n\n" + C.table(rows, COLUMNS) +
          "\n\nThroughput, member-samples/s (M x 128 / median step time):\n\n" +
          C.table(rows, MS_COLUMNS))


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
  p.add_argument("--members", type=int, nargs="+", default=[1, 4, 16, 64])
  p.add_argument("--cycles", type=int, default=5)
  p.add_argument("--target-s", type=float, default=0.2,
                 help="seconds per variant per cycle")
  p.add_argument("--no-torch", action="store_true")
  p.add_argument("--out", default="ensemble_step",
                 help="result name; the file is results/<out>@<CPU kind>.json")
  args = p.parse_args(argv)
  torch = None if args.no_torch else C.torch_or_none()
  mach = C.machine()
  C.print_cpu(mach)
  gemm, gemm_flops = C.gemm_runner()
  stream, stream_bytes = C.stream_runner()
  pt = C.interleave({"gemm": gemm, "stream": stream}, args.cycles, target_s=0.3)
  peaks = {"gemm_gflops": C.med([gemm_flops / t / 1e9 for t in pt["gemm"]]),
           "stream_gbps": C.med([stream_bytes / t / 1e9 for t in pt["stream"]])}
  print(f"GEMM peak {peaks['gemm_gflops']:.0f} GFLOP/s, memory bandwidth "
        f"{peaks['stream_gbps']:.1f} GB/s", flush=True)
  rows = []
  for model in args.models:
    for m in args.members:
      cycles = max(3, args.cycles - 2) if model == "cnn" else args.cycles
      r = bench(model, m, cycles, torch, args.target_s)
      rows.append(r)
      print(C.table([r], COLUMNS).splitlines()[-1] if rows[:-1] else C.table([r], COLUMNS),
            flush=True)
  result = {"rows": rows, "cycles": args.cycles, "peaks": peaks}
  print()
  print(render(result))
  C.write_per_kind(args.out, result, mach)


if __name__ == "__main__":
  main()
