"""Permutation alignment of MLP members (Git Re-Basin weight matching).

Hidden units of an MLP can be permuted without changing its function: permute
the columns (and bias) of ``Dense_l`` and the rows of ``Dense_{l+1}`` by the
same permutation. Two independently trained networks usually sit in basins
that are permuted copies of each other, so averaging their weights directly
breaks the function; weight matching finds, layer by layer, the permutation
of network B's hidden units that maximises ``<W_A, P W_B>`` (a linear
assignment problem, solved with ``scipy.optimize.linear_sum_assignment``) by
coordinate descent over layers. The loss barrier along the straight line
between A and the aligned B is usually much lower than before alignment.

Params are single-member flax :class:`~fusionjax.models.MLP` params:
``{'Dense_0': {'kernel' [D, H0], 'bias' [H0]}, ..., 'Dense_L': {...}}``.
"""
import re
from typing import Callable, List, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fusionjax import errors
from fusionjax.integrate import _soups, _train

_DENSE = re.compile(r"^Dense_(\d+)$")


def mlp_layers(params, where: str = "mlp_layers") -> List[str]:
  """The ``Dense_i`` names of MLP params in order, after checking their shapes.

  Args:
    params: single-member :class:`fusionjax.models.MLP` params.
    where: the caller's name, for the error message.

  Returns:
    ``['Dense_0', ..., 'Dense_L']``.

  Raises:
    AlignmentError: keys other than ``Dense_0..Dense_L``, layers without a
      2-D ``kernel`` and 1-D ``bias``, or widths that do not chain.
  """
  if not isinstance(params, dict) or not params:
    raise errors.AlignmentError(
        f"{where}: expected MLP params {{'Dense_0': {{'kernel', 'bias'}}, ...}}; got "
        f"{type(params).__name__}. Fix: pass single-member fusionjax.models.MLP params "
        "(variables['params'], without the member axis).")
  keys = list(params)
  if "params" in params:
    raise errors.AlignmentError(
        f"{where}: got a variables dict with keys {keys}. Fix: pass variables['params'].")
  bad = [k for k in keys if not _DENSE.match(str(k))]
  if bad:
    raise errors.AlignmentError(
        f"{where}: keys {bad} are not Dense layers; weight matching supports MLPs of "
        f"Dense_0..Dense_L only (got keys {keys}). Fix: pass fusionjax.models.MLP params.")
  names = sorted(keys, key=lambda k: int(_DENSE.match(k).group(1)))
  if [int(_DENSE.match(k).group(1)) for k in names] != list(range(len(names))):
    raise errors.AlignmentError(
        f"{where}: Dense layers {names} are not numbered 0..{len(names) - 1}. Fix: pass "
        "the params of one MLP.")
  prev = None
  for k in names:
    layer = params[k]
    if not isinstance(layer, dict) or set(layer) != {"kernel", "bias"}:
      raise errors.AlignmentError(
          f"{where}: {k} has entries {sorted(layer) if isinstance(layer, dict) else layer!r};"
          " expected exactly 'kernel' and 'bias'. Fix: pass MLP Dense params.")
    ks, bs = np.shape(layer["kernel"]), np.shape(layer["bias"])
    if len(ks) != 2 or bs != ks[1:]:
      raise errors.AlignmentError(
          f"{where}: {k} has kernel {ks} and bias {bs}; expected kernel [in, out] and bias "
          "[out] (a stacked [M, ...] tree? pass one member: jax.tree.map(lambda a: a[m], "
          "params)).")
    if prev is not None and ks[0] != prev:
      raise errors.AlignmentError(
          f"{where}: {k} kernel {ks} takes {ks[0]} inputs but the previous layer has "
          f"{prev} outputs. Fix: pass the params of one MLP.")
    prev = ks[1]
  return names


def _check_pair(a, b, where):
  na, nb = mlp_layers(a, where), mlp_layers(b, where)
  sa = [np.shape(a[k]["kernel"]) for k in na]
  sb = [np.shape(b[k]["kernel"]) for k in nb]
  if sa != sb:
    raise errors.AlignmentError(
        f"{where}: the two MLPs differ: kernels {sa} vs {sb}. Fix: align members of one "
        "architecture.")
  return na


def mlp_apply(params, x) -> jax.Array:
  """The function of :class:`fusionjax.models.MLP` (no dropout) from its params.

  ``x`` is flattened to ``[B, D]``; hidden layers apply ``relu``; the last
  layer gives the logits ``[B, C]``.

  Args:
    params: single-member MLP params (see :func:`mlp_layers`).
    x: inputs ``[B, ...]`` with ``D`` features once flattened.

  Returns:
    Logits ``[B, C]``; jittable, and differentiable in ``params``.
  """
  names = mlp_layers(params, "mlp_apply")
  h = jnp.reshape(x, (x.shape[0], -1))
  for i, k in enumerate(names):
    h = h @ params[k]["kernel"] + params[k]["bias"]
    if i < len(names) - 1:
      h = jax.nn.relu(h)
  return h


def permute_mlp(params, perms):
  """Permutes the hidden units of an MLP; the function is unchanged.

  Hidden unit ``i`` of layer ``l`` in the result is unit ``perms[l][i]`` of
  the input: ``Dense_l`` kernel columns and bias, and ``Dense_{l+1}`` kernel
  rows, are re-indexed by ``perms[l]``.

  Args:
    params: single-member MLP params.
    perms: one permutation ``[H_l]`` per hidden layer (``L`` of them for
      ``L + 1`` Dense layers).

  Returns:
    The permuted params (same structure).

  Raises:
    AlignmentError: not MLP params, or permutations of the wrong number or size.

  Example:
    >>> rng = np.random.default_rng(0)
    >>> params = {'Dense_0': {'kernel': rng.normal(size=(4, 8)), 'bias': rng.normal(size=8)},
    ...           'Dense_1': {'kernel': rng.normal(size=(8, 3)), 'bias': rng.normal(size=3)}}
    >>> x = rng.normal(size=(5, 4))
    >>> p2 = permute_mlp(params, [rng.permutation(8)])
    >>> bool(np.allclose(mlp_apply(params, x), mlp_apply(p2, x), atol=1e-5))
    True
  """
  names = mlp_layers(params, "permute_mlp")
  perms = [np.asarray(p) for p in perms]
  widths = [np.shape(params[k]["kernel"])[1] for k in names[:-1]]
  if len(perms) != len(widths) or any(
      p.shape != (w,) or not np.array_equal(np.sort(p), np.arange(w))
      for p, w in zip(perms, widths)):
    raise errors.AlignmentError(
        f"permute_mlp: got permutations of sizes {[p.shape for p in perms]} for hidden "
        f"widths {widths}. Fix: pass one permutation of range(H_l) per hidden layer.")
  out = {k: dict(params[k]) for k in names}
  for l, p in enumerate(perms):
    out[names[l]]["kernel"] = out[names[l]]["kernel"][:, p]
    out[names[l]]["bias"] = out[names[l]]["bias"][p]
    out[names[l + 1]]["kernel"] = out[names[l + 1]]["kernel"][p, :]
  return out


def weight_matching(params_a, params_b, *, max_iter: int = 100,
                    seed: int = 0) -> List[np.ndarray]:
  """Permutations of B's hidden units that best match A's weights.

  Coordinate descent: for each hidden layer ``l`` in a random order, with
  the other permutations fixed, solve the linear assignment
  ``max_P <W_A, P W_B>`` over the weights touching layer ``l`` (incoming
  kernel and bias, outgoing kernel), until no permutation changes.

  Args:
    params_a: the reference MLP params.
    params_b: the MLP params to permute (same architecture).
    max_iter: the most sweeps over the layers.
    seed: seed of the layer order.

  Returns:
    ``perms``: one ``int [H_l]`` permutation per hidden layer;
    ``permute_mlp(params_b, perms)`` is B aligned to A (same function as B).

  Raises:
    AlignmentError: params that are not (equal-architecture) MLP params.

  Example:
    >>> rng = np.random.default_rng(0)
    >>> params = {'Dense_0': {'kernel': rng.normal(size=(4, 8)), 'bias': rng.normal(size=8)},
    ...           'Dense_1': {'kernel': rng.normal(size=(8, 3)), 'bias': rng.normal(size=3)}}
    >>> p = rng.permutation(8)
    >>> perms = weight_matching(params, permute_mlp(params, [p]))
    >>> bool(np.array_equal(perms[0], np.argsort(p)))     # the inverse permutation
    True

  References:
    Ainsworth, Hayase and Srinivasa, "Git Re-Basin: Merging Models modulo
    Permutation Symmetries", ICLR 2023, Algorithm 2 (weight matching).
  """
  names = _check_pair(params_a, params_b, "weight_matching")
  a = {k: {n: np.asarray(v, np.float64) for n, v in params_a[k].items()} for k in names}
  b = {k: {n: np.asarray(v, np.float64) for n, v in params_b[k].items()} for k in names}
  num_hidden = len(names) - 1
  import scipy.optimize  # pylint: disable=g-import-not-at-top  (0.45 s: imported on use)
  perms = [np.arange(a[names[l]]["bias"].shape[0]) for l in range(num_hidden)]
  rng = np.random.default_rng(seed)
  for _ in range(max_iter):
    changed = False
    for l in rng.permutation(num_hidden):
      k_in, k_out = names[l], names[l + 1]
      w_in_b = b[k_in]["kernel"]                      # [H_{l-1}, H_l]
      if l > 0:
        w_in_b = w_in_b[perms[l - 1], :]               # rows follow B's permuted layer l-1
      w_out_b = b[k_out]["kernel"]                    # [H_l, H_{l+1}]
      if l + 1 < num_hidden:
        w_out_b = w_out_b[:, perms[l + 1]]
      sim = (a[k_in]["kernel"].T @ w_in_b + np.outer(a[k_in]["bias"], b[k_in]["bias"])
             + a[k_out]["kernel"] @ w_out_b.T)         # [H_l (A), H_l (B)]
      _, new = scipy.optimize.linear_sum_assignment(sim, maximize=True)
      old_score = np.trace(sim[:, perms[l]])
      new_score = sim[np.arange(len(new)), new].sum()
      if new_score > old_score + 1e-12 * max(1.0, abs(old_score)):
        perms[l] = new
        changed = True
    if not changed:
      break
  return perms


def align(params_a, params_b, **kwargs):
  """B permuted to match A: ``(permute_mlp(params_b, perms), perms)``.

  Args:
    params_a: the reference MLP params.
    params_b: the MLP params to align (same widths).
    **kwargs: passed to :func:`weight_matching` (``max_iter``, ``seed``).

  Returns:
    ``(aligned_b, perms)``: B with its hidden units matched to A's (the same
    function as B) and the permutations used.

  References:
    Ainsworth et al., "Git Re-Basin", ICLR 2023.
  """
  perms = weight_matching(params_a, params_b, **kwargs)
  return permute_mlp(params_b, perms), perms


def align_members(params, reference: int = 0, **kwargs):
  """Aligns every member of a stacked MLP ensemble to member ``reference``.

  Args:
    params: member-stacked MLP params (every leaf ``[M, ...]``).
    reference: the member the others are permuted to match.
    **kwargs: passed to :func:`weight_matching`.

  Returns:
    Stacked params ``[M, ...]`` computing the same M functions, with hidden
    units matched to the reference's; ``uniform_soup`` of them is the
    aligned (re-basined) average.

  Example:
    >>> aligned = align_members(state.params['members'])        # doctest: +SKIP
    >>> soup = fj.integrate.uniform_soup(aligned)              # doctest: +SKIP

  References:
    Ainsworth et al., "Git Re-Basin", ICLR 2023.
  """
  leaves = jax.tree_util.tree_leaves(params)
  m = np.shape(leaves[0])[0] if leaves and np.ndim(leaves[0]) else 0
  if not 0 <= reference < m:
    raise errors.AlignmentError(
        f"align_members: reference={reference!r} but the params have M={m} members. "
        f"Fix: pass 0 <= reference < {m}.")
  members = [jax.tree.map(lambda x, i=i: np.asarray(x[i]), params) for i in range(m)]
  out = [members[i] if i == reference else align(members[reference], members[i], **kwargs)[0]
         for i in range(m)]
  return jax.tree.map(lambda *xs: jnp.asarray(np.stack(xs)), *out)


class Barrier(NamedTuple):
  """The loss along the linear path between two networks.

  Attributes:
    ts: ``[num]`` interpolation weights from 0 (A) to 1 (B).
    losses: ``[num]`` mean cross-entropy of ``(1 - t) A + t B``.
    accuracies: ``[num]`` accuracy along the path.
    barrier: ``max_t [loss(t) - ((1 - t) loss(0) + t loss(1))]``.
  """
  ts: np.ndarray
  losses: np.ndarray
  accuracies: np.ndarray
  barrier: float


def interpolation_barrier(params_a, params_b, x, y, num: int = 11, *,
                          apply_fn: Optional[Callable] = None) -> Barrier:
  """The loss barrier on the straight line between two networks' weights.

  Evaluates ``theta(t) = (1 - t) theta_A + t theta_B`` at ``num`` evenly
  spaced ``t`` in ``[0, 1]``; the barrier is the largest rise of the loss
  above the straight line between the end points' losses.

  Args:
    params_a, params_b: single-member params of one architecture.
    x, y: evaluation inputs ``[B, ...]`` and integer labels ``[B]``.
    num: the number of points (``>= 2``).
    apply_fn: ``(params, x) -> logits [B, C]`` (default :func:`mlp_apply`).

  Returns:
    A :class:`Barrier`.

  Raises:
    SoupError: params of different structures or shapes.
    IntegrationConfigError: ``num < 2``.

  Example:
    >>> before = interpolation_barrier(pa, pb, xv, yv).barrier           # doctest: +SKIP
    >>> after = interpolation_barrier(pa, align(pa, pb)[0], xv, yv).barrier  # doctest: +SKIP

  References:
    Frankle et al., "Linear Mode Connectivity and the Lottery Ticket
    Hypothesis", ICML 2020; Ainsworth et al., "Git Re-Basin", ICLR 2023.
  """
  num = _train.check_int(num, "num", "interpolation_barrier", minimum=2)
  _soups.check_ingredients([params_a, params_b], "interpolation_barrier")
  apply_fn = apply_fn or mlp_apply
  x, y = _train.check_xy(x, y, "interpolation_barrier")
  ts = np.linspace(0.0, 1.0, num)
  yj = jnp.asarray(y, jnp.int32)

  @jax.jit
  def at(t):
    p = jax.tree.map(lambda u, v: (1 - t) * u + t * v, params_a, params_b)
    logits = apply_fn(p, jnp.asarray(x))
    return (jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, yj)),
            jnp.mean(jnp.argmax(logits, -1) == yj))

  res = jax.lax.map(at, jnp.asarray(ts, jnp.float32))
  losses, accs = np.asarray(res[0], np.float64), np.asarray(res[1], np.float64)
  line = (1 - ts) * losses[0] + ts * losses[-1]
  return Barrier(ts, losses, accs, float(np.max(losses - line)))
