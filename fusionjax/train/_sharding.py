"""Sharding the stacked step over a ``('member', 'data')`` device mesh.

Members are split over the ``'member'`` axis (params, BatchNorm statistics and
per-member optimizer state on ``P('member')``), batches over the ``'data'``
axis (``P('data')``, or ``P('member', 'data')`` when each member has its own
batch). ``jax.jit`` with ``NamedSharding`` does the rest (XLA inserts the
gradient all-reduce over ``'data'``). Arrays are built with
``jax.make_array_from_callback`` so the same code runs on one host or many
(``jax.distributed``), every process holding the same host values.
"""
import math
import re
from typing import Optional, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from fusionjax import errors
from fusionjax.ensemble import Ensemble

AXES = ("member", "data")


def make_mesh(member: int = 1, data: Optional[int] = None,
              devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
  """A ``('member', 'data')`` mesh over ``devices`` (default: all devices).

  Args:
    member: devices along the member axis.
    data: devices along the data axis (default: the rest).
    devices: the devices (default ``jax.devices()``, all processes).

  Returns:
    A ``jax.sharding.Mesh`` of shape ``(member, data)``.
  """
  devices = list(devices if devices is not None else jax.devices())
  n = len(devices)
  data = data if data is not None else n // max(member, 1)
  if member < 1 or data < 1 or member * data != n:
    raise errors.MeshError(
        f"A ('member', 'data') mesh of shape ({member}, {data}) needs "
        f"{member * data} devices; there are {n}. Fix: choose member * data == {n}, "
        f"e.g. {[(m, n // m) for m in range(1, n + 1) if n % m == 0]}.")
  return Mesh(np.asarray(devices).reshape(member, data), AXES)


def _is_member_path(path) -> bool:
  keys = [getattr(k, "key", getattr(k, "name", None)) for k in path]
  return "members" in keys or "state" in keys


def _check_divides(ensemble: Ensemble, mesh: Mesh):
  m = mesh.shape["member"]
  bad = {g: hi - lo for g, (lo, hi) in ensemble.groups.items() if (hi - lo) % m}
  if bad:
    sizes = sorted({hi - lo for lo, hi in ensemble.groups.values()})
    ok = [d for d in range(1, math.gcd(*sizes) + 1) if math.gcd(*sizes) % d == 0]
    raise errors.MeshError(
        f"The mesh's 'member' axis has {m} devices, which does not divide the "
        f"member count of group(s) {bad}. Fix: use a 'member' axis size in {ok} "
        "(put the remaining devices on the 'data' axis), or change the group sizes.")


def state_shardings(state, mesh: Mesh, ensemble: Ensemble):
  """NamedShardings for a :class:`~fusionjax.train.TrainState`.

  Leaves of the members' params, their state, their optimizer state and the
  frozen flags go on ``P('member')``; the step, the key and the fusion's params
  and optimizer state are replicated.
  """
  _check_divides(ensemble, mesh)
  member, replicated = NamedSharding(mesh, P("member")), NamedSharding(mesh, P())

  def pick(path, leaf):
    field = getattr(path[0], "name", None)
    if field in ("state", "opt_state", "frozen") or (
        field == "params" and _is_member_path(path[1:])):
      if getattr(leaf, "ndim", 0) >= 1:
        return member
    return replicated

  return jax.tree_util.tree_map_with_path(pick, state)


def batch_shardings(batch, mesh: Mesh, per_member: bool = False):
  """``P('data')`` (or ``P('member', 'data')`` when ``per_member``) for every leaf."""
  spec = P("member", "data") if per_member else P("data")
  d = mesh.shape["data"]
  for leaf in jax.tree_util.tree_leaves(batch):
    b = leaf.shape[1 if per_member else 0]
    if b % d:
      raise errors.MeshError(
          f"The batch size {b} is not divisible by the mesh's 'data' axis ({d} "
          f"devices). Fix: use a batch size that is a multiple of {d}, or pad "
          "the last batch (fusionjax.data.batches pads it, with a mask, by default: "
          "drop_last=False).")
  return jax.tree.map(lambda _: NamedSharding(mesh, spec), batch)


def put(tree, shardings):
  """Places host values on a (possibly multi-process) mesh.

  Every process must hold the same global values; each keeps only the shards
  of its own devices.
  """

  def place(x, sharding):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return jax.device_put(x, sharding)
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      impl = jax.random.key_impl(x)
      return jax.random.wrap_key_data(place(jax.random.key_data(x), sharding), impl=impl)
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])

  return jax.tree.map(place, tree, shardings)


def shard_state(state, mesh: Mesh, ensemble: Ensemble):
  """Places a train state on the mesh (see :func:`state_shardings`)."""
  return put(state, state_shardings(state, mesh, ensemble))


def shard_batch(batch, mesh: Mesh, per_member: bool = False):
  """Places a batch on the mesh (see :func:`batch_shardings`)."""
  return put(batch, batch_shardings(batch, mesh, per_member))


def jit_sharded(step, mesh: Mesh, ensemble: Ensemble, per_member: bool = False,
                donate: bool = True):
  """``jax.jit`` of an unjitted step with explicit in/out shardings on ``mesh``.

  The shardings are computed from the first state and batch the step sees (per
  tree structure); ``.trace(state, batch)`` and ``.lower(state, batch)`` give
  that program, as a ``jax.jit`` object's do.
  """
  cache = {}

  def jitted(state, batch):
    key = jax.tree_util.tree_structure((state, batch))
    if key not in cache:
      ss = state_shardings(state, mesh, ensemble)
      bs = batch_shardings(batch, mesh, per_member)
      cache[key] = jax.jit(step, in_shardings=(ss, bs),
                           out_shardings=(ss, NamedSharding(mesh, P())),
                           donate_argnums=(0,) if donate else ())
    return cache[key]

  def sharded(state, batch):
    return jitted(state, batch)(state, batch)

  # As a jax.jit object: the program for these arguments, to inspect.
  sharded.trace = lambda state, batch: jitted(state, batch).trace(state, batch)
  sharded.lower = lambda state, batch: jitted(state, batch).lower(state, batch)
  return sharded


def jit_predict_sharded(predict, mesh: Mesh, ensemble: Ensemble):
  """``jax.jit`` of an unjitted predict with member-sharded in/out shardings.

  ``predict`` is ``make_predictor(ensemble, fusion, layout='vmap',
  jit=False).predict``. The state is placed as :func:`state_shardings`, the
  input batch on ``P('data')``; the member outputs stay where they were
  computed (``P('member', 'data')``: never gathered onto one device) and the
  fused prediction is ``P('data')``, so a fusion that reduces over the member
  axis (mean, weighted, votes, the hard cascade) runs as a per-device partial
  reduction and one all-reduce of ``[B, C]`` over ``'member'``.

  Args:
    predict: ``(state, x) -> (outputs [M, B, C], fused [B, C] or None)``.
    mesh: a ``('member', 'data')`` mesh.
    ensemble: the ensemble (its groups must divide the ``'member'`` axis).

  Returns:
    ``predict(state, x)``, jitted; ``.lower(state, x)`` gives the program.
  """
  cache = {}

  def jitted(state, x):
    key = jax.tree_util.tree_structure((state, x))
    if key not in cache:
      out = NamedSharding(mesh, P("member", "data"))
      fused = NamedSharding(mesh, P("data"))
      shapes = jax.eval_shape(predict, state, x)
      cache[key] = jax.jit(
          predict, in_shardings=(state_shardings(state, mesh, ensemble),
                                 batch_shardings(x, mesh)),
          out_shardings=(out, None if shapes[1] is None else
                         jax.tree.map(lambda _: fused, shapes[1])))
    return cache[key]

  def sharded(state, x):
    return jitted(state, x)(state, x)

  sharded.lower = lambda state, x: jitted(state, x).lower(state, x)
  return sharded


_COLLECTIVE = re.compile(
    r"^\s*(?:ROOT )?%?\S+ = (\(.*?\)|\S+) (all-reduce|all-gather|all-to-all|"
    r"collective-permute|reduce-scatter|collective-broadcast)(?:-start)?\(", re.M)
_SHAPE = re.compile(r"([a-z]+[0-9]*)\[([0-9,]*)\]")


def collectives(hlo_text: str):
  """The cross-device collectives of a compiled program, from its HLO text.

  Args:
    hlo_text: ``jitted.lower(...).compile().as_text()``.

  Returns:
    A list of ``(op, shapes)``: ``op`` such as ``'all-reduce'``, ``shapes`` a
    list of ``(dtype, dims)`` (a tuple-shaped collective has several), e.g.
    ``('all-reduce', [('f32', (32, 10))])``.
  """
  found = []
  for m in _COLLECTIVE.finditer(hlo_text):
    shapes = [(d, tuple(int(n) for n in dims.split(",") if n))
              for d, dims in _SHAPE.findall(m.group(1))]
    found.append((m.group(2), shapes))
  return found
