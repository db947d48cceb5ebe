"""Layouts: ways of mapping one member's step over the member axis (same maths, same state).

A member step is split in two halves so that a chunk of members can run the
first unbatched and the second batched (see :func:`run_chunk`):

* ``compute(carried_m, rest_m, shared) -> out_m``: one member's forward and
  backward;
* ``update(carried_c, out_c, looping) -> (new_carried_c, aux_c)``: the
  optimizer update and the guard for ``[n, ...]`` arrays of ``n`` members.

``carried`` are the member-stacked arrays the step rewrites (params,
BatchNorm statistics, optimizer state), ``rest`` member-stacked inputs (keys,
the frozen flags, per-member batches) and ``shared`` what every member reads
(the shared batch). The layouts:

* :func:`vmap_members`: one vmapped program over all members;
* :func:`over_chunks`: chunks of members in a ``scan`` whose carry is the
  state, each chunk written back in place (dense members on XLA:CPU, where a
  chunk's arrays stay in cache);
* :class:`HostLoop`: one jitted single-member program per member, called from
  the host (convolutional members on XLA:CPU, whose vmapped convolutions become
  slow grouped ones and whose backward convolutions inside a ``while`` body
  stay in a slow generic form).
"""
import concurrent.futures
import re
from typing import Callable

import jax
import jax.numpy as jnp

# Per-chunk working-set budget of the training step for chunk='auto': params,
# gradients and two optimizer moments of the chunk's members. 20 MiB gives 4
# MNIST-MLP members (4.3 MB each) and 8 digits-MLP members (1.3 MB each), the
# fastest chunks of `python benchmarks/chunk_sweep.py --members 4 16 64 --models
# digits_mlp mnist_mlp` on a 2-core Intel Xeon with AVX-512 once the guard's
# verdict stopped transposing stacked leaves (8 MNIST members, 39 MB of XLA
# temporaries, crossed the ~32 MB at which XLA:CPU maps temporaries afresh on
# every call, and ran 0.9x the loop). It was 4 MiB (chunks of 1 and 2), chosen
# on an AMD EPYC while that transpose still penalised every chunk above one.
_AUTO_BUDGET_BYTES = 20 * 2**20
# Prediction keeps the earlier budget (it has no gradients or moments; not re-measured).
_PREDICT_BUDGET_BYTES = 4 * 2**20


def auto_chunk(size: int, params_members, opt_slots: int = 3, budget=None) -> int:
  """Members per chunk so that a chunk's params, grads and moments fit the cache budget.

  Args:
    size: the member count ``M``.
    params_members: stacked member params (arrays or ``ShapeDtypeStruct``).
    opt_slots: arrays per parameter besides the parameter itself (gradient
      and two Adam moments: 3).
    budget: bytes per chunk (default: the training step's budget above).

  Returns:
    ``chunk`` in ``[1, M]``, a power of two.
  """
  leaves = jax.tree_util.tree_leaves(params_members)
  per_member = sum(l.size // l.shape[0] * jnp.dtype(l.dtype).itemsize for l in leaves)
  per_member *= 1 + opt_slots
  budget = _AUTO_BUDGET_BYTES if budget is None else budget
  chunk = max(1, min(size, budget // max(per_member, 1)))
  return 1 << (int(chunk).bit_length() - 1)  # a power of two: chunks that divide M


def program_ops(hlo: str):
  """The dots and convolutions of an optimised XLA program (``compile().as_text()``).

  Sorted ``(op, result shape, attributes)``, operand names left out; the
  non-finite guard's per-leaf GEMVs (dots at HIGHEST precision with a vector
  result or a unit dimension) are left out too, since a stacked step's verdict
  is ``[rows, 1]`` where a single-member program's is ``[rows]``. Two programs that
  run the same model computation give the same list (``tests/train/
  test_layouts.py``, ``benchmarks/ensemble_step.py`` at M = 1).
  """
  ops = []
  for line in hlo.splitlines():
    m = re.search(r"= (\S+) (dot|convolution)\((.*)", line)
    if not m:
      continue
    attrs = re.sub(r"%\S+", "", re.sub(r", metadata=.*", "", m.group(3)))
    shape = m.group(1).split("{")[0]
    dims = shape[shape.index("[") + 1:-1].split(",")
    if "operand_precision={highest,highest}" in attrs and (len(dims) == 1 or "1" in dims):
      continue
    ops.append((m.group(2), shape, attrs))
  return sorted(ops)


def _primitives(jaxpr, found=None):
  """Names of the primitives in a (closed) jaxpr, sub-jaxprs included."""
  found = set() if found is None else found
  for eqn in jaxpr.eqns:
    found.add(eqn.primitive.name)
    for v in eqn.params.values():
      for sub in (v if isinstance(v, (tuple, list)) else (v,)):
        inner = getattr(sub, "jaxpr", sub)
        if hasattr(inner, "eqns"):
          _primitives(inner, found)
  return found


def uses_convolution(member_apply: Callable, variables, x) -> bool:
  """Whether one member's forward pass on ``x [B, ...]`` contains a convolution.

  ``variables`` are one member's (arrays or ``ShapeDtypeStruct``). Abstract
  tracing only (``jax.make_jaxpr``): nothing runs.
  """
  xs = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), x)
  jaxpr = jax.make_jaxpr(lambda v, xx, k: member_apply(v, xx, k, True))(
      variables, xs, jax.random.key(0))
  return "conv_general_dilated" in _primitives(jaxpr.jaxpr)


def _squeeze(tree):
  return jax.tree.map(lambda a: a[0], tree)


def _expand(tree):
  return jax.tree.map(lambda a: a[None], tree)


def run_chunk(compute, update, carried, rest, shared, start, n: int, looping: bool = True):
  """Members ``[start, start + n)``: compute, update, and write back in place.

  ``compute`` runs unbatched for a chunk of one member, so XLA sees exactly the
  single-member program (a size-1 vmap axis changes its dot layouts), and
  vmapped otherwise, with ``shared`` broadcast to ``[n, ...]``: every member's
  dot is then a batched dot, which XLA runs as it is, instead of one dot
  against the concatenated weights, which needs the weights and the weight
  gradients transposed (a copy of each, every step). ``update``'s reads of the
  old chunk are slices of the same shape as its in-place writes, which XLA
  performs without copying the chunk. ``looping`` tells ``update`` whether the
  chunk is one of several written in place into the same buffers. Returns
  ``(carried, aux_c)``.
  """
  cut = lambda a: jax.lax.dynamic_slice_in_dim(a, start, n)
  c, r = jax.tree.map(cut, carried), jax.tree.map(cut, rest)
  if n == 1:
    out = _expand(compute(_squeeze(c), _squeeze(r), shared))
  else:
    sh = jax.tree.map(lambda a: jnp.broadcast_to(a, (n,) + a.shape), shared)
    out = jax.vmap(compute)(c, r, sh)
  new, new_aux = update(c, out, looping)
  put = lambda o, v: jax.lax.dynamic_update_slice_in_dim(o, v, start, 0)
  return jax.tree.map(put, carried, new), new_aux


# Scans of at most this many chunks are unrolled (static offsets): a loop
# instead ran 1.008x slower for the MNIST MLP at M = 16 (4 chunks of 4) and
# 1.039x for the digits MLP at M = 16 (2 chunks of 8), `python
# benchmarks/step_ab.py --cycles 15`, 2-core Intel Xeon with AVX-512. Longer
# ones stay loops: unrolling 16 chunks (M = 64) took the first step from 1.2 to
# 2.9 s for 1.05x.
_UNROLL_CHUNKS = 4


def over_chunks(compute, update, carried, rest, shared, size: int, chunk: int):
  """The ``'scan'`` layout: every member's step, chunk by chunk in a ``scan``, in place.

  ``carried`` (donated by the caller's jit) is the loop carry and is written
  chunk by chunk (see :func:`run_chunk`). Returns ``(new_carried, aux)``.
  """
  n = min(chunk, size)
  n_full = size // n
  looping = n_full > 1 or size % n != 0
  run = lambda start, k, ca: run_chunk(compute, update, ca, rest, shared, start, k, looping)
  if n_full == 1:
    carried, aux = run(0, n, carried)
  else:
    # A scan stacks each chunk's aux as its output, so the chunk is traced once.
    carried, aux = jax.lax.scan(lambda ca, i: run(i * n, n, ca), carried, jnp.arange(n_full),
                                unroll=n_full <= _UNROLL_CHUNKS)
    aux = jax.tree.map(lambda a: a.reshape((n_full * n,) + a.shape[2:]), aux)
  if size % n:
    carried, tail = run(n_full * n, size % n, carried)
    aux = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), aux, tail)
  return carried, aux


def vmap_members(compute, update, carried, rest, shared):
  """The ``'vmap'`` layout: one vmapped program over every member (the contract)."""
  out = jax.vmap(compute, in_axes=(0, 0, None))(carried, rest, shared)
  return update(carried, out, False)


class HostLoop:
  """The ``'loop'`` layout: one jitted single-member program per member, from the host.

  A start call makes the member-stacked inputs (``prepare``) and splits them
  and the carried arrays into one set of buffers per member; each member's
  call runs the program of a plain single-member step on its own buffers (not
  donated: written in place, the guard's selects are dearer, ``python
  benchmarks/donation.py``); a finish call stacks them back. With ``workers``
  > 1 the member calls are made from that many host threads, so XLA:CPU runs
  several members' programs side by side (a LeNet-size member's operations
  are too small to keep every core busy one at a time); each member reads and
  writes only its own buffers, so the result is the sequential loop's, bit for
  bit. With ``donate``,
  the caller's buffers are deleted once split, as donation would. The start
  and finish calls cost ~2 % of a step at M = 16 and 64 (LeNet-size members,
  2 CPU cores).

  Args:
    compute, update: the member step's halves (module docstring).
    size: the member count.
    prepare: ``(*args) -> (extra, rest)``: the member-stacked inputs from the
      step's own arguments (e.g. the keys split from the state's key); ``extra``
      is returned as it is.
  """

  def __init__(self, compute, update, size: int, prepare: Callable, workers: int = 1):
    self.workers = workers
    split = lambda tree: [jax.tree.map(lambda a, m=m: a[m:m + 1], tree) for m in range(size)]

    def start(carried, args):
      extra, rest = prepare(*args)
      return extra, split(carried), split(rest)

    def part(piece, rest, shared):
      return run_chunk(compute, update, piece, rest, shared, 0, 1, looping=False)

    self.start = jax.jit(start)
    self.part = jax.jit(part)
    self.finish = jax.jit(lambda outs: jax.tree.map(lambda *a: jnp.concatenate(a), *outs))

  def __call__(self, carried, args, shared, donate: bool):
    """``(extra, new_carried, aux)``."""
    extra, pieces, rests = self.start(carried, args)
    if donate:
      _release(carried, pieces)

    def member(m):
      out = self.part(pieces[m], rests[m], shared)
      pieces[m] = None  # the member's old buffers are freed as the loop goes
      return out

    if self.workers > 1 and len(rests) > 1:
      # Each thread waits for its member, so the threads run members side by side.
      outs = list(_pool(self.workers).map(lambda m: jax.block_until_ready(member(m)),
                                          range(len(rests))))
    else:
      outs = [member(m) for m in range(len(rests))]
    new, aux = self.finish(outs)
    return extra, new, aux


_POOLS = {}


def _pool(workers: int) -> concurrent.futures.ThreadPoolExecutor:
  """One shared pool of host threads per size, made on first use and kept."""
  if workers not in _POOLS:
    _POOLS[workers] = concurrent.futures.ThreadPoolExecutor(
        workers, thread_name_prefix="fusionjax-loop")
  return _POOLS[workers]


def _release(tree, keep):
  """Deletes the device buffers of ``tree`` (donated by the caller) that ``keep`` does not hold.

  The start call changes the buffers' shapes (it splits the stacked state), so
  XLA cannot reuse donated inputs for its outputs and jax keeps them alive;
  deleting them frees the memory as donation would.
  """
  kept = {id(a) for a in jax.tree_util.tree_leaves(keep)}
  for a in jax.tree_util.tree_leaves(tree):
    if isinstance(a, jax.Array) and id(a) not in kept and not a.is_deleted():
      a.delete()
