"""Stacking: a meta-learner over member outputs, and the pure cross-fitting pieces.

Cross-fitting the fusionjax way: K fold-replicas of every member train in the
same stacked step (``K x M`` members, replica ``k`` never sees fold ``k``),

1. ``folds = stratified_folds(labels, K)`` assigns every training sample to
   the fold whose replica does not train on it;
2. the replicas' outputs on the training set, ``[K, M, N, C]``, go through
   ``out_of_fold(outputs, folds) -> [M, N, C]``: every sample's prediction
   comes from a replica that did not see it;
3. ``fit(stacking(...), oof_outputs, labels, ...)`` fits the meta-learner on
   those out-of-fold predictions;
4. at prediction time the meta-learner reads the outputs of members trained
   on all the training data (scikit-learn's ``StackingClassifier`` does the
   same with ``cross_val_predict`` and ``estimators_``).

Fitting the meta-learner on in-sample predictions instead leaks the labels:
members that overfit look perfect in-sample and the meta-learner trusts them.
"""
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from fusionjax import errors
from fusionjax.fusion import _checks
from fusionjax.fusion import _mlp
from fusionjax.fusion._base import Fusion

_FEATURES = ("proba", "log_proba", "logits")


def _member_features(member_outputs, features: str):
  """Per-member features ``[M, B, F]`` (binary ``proba`` keeps column 1 only)."""
  if features == "proba":
    f = jax.nn.softmax(member_outputs, axis=-1)
    return f[..., 1:] if member_outputs.shape[-1] == 2 else f
  if features == "log_proba":
    return jax.nn.log_softmax(member_outputs, axis=-1)
  return member_outputs


def meta_features(
    member_outputs: jax.Array,
    x: Optional[jax.Array] = None,
    passthrough: bool = False,
    features: str = "proba",
) -> jax.Array:
  """The meta-learner's input, laid out as scikit-learn's ``StackingClassifier``.

  Row ``b`` is ``[f_1[b] | f_2[b] | ... | f_M[b] | x[b].ravel()]``: each
  member's features in member order, then (``passthrough=True``) the
  flattened raw input. With ``features='proba'`` ``f_m = softmax(z_m)``
  (``stack_method='predict_proba'``) and, for binary problems (C == 2), the
  first column of every member is dropped (``p_0 = 1 - p_1`` is collinear),
  as scikit-learn's ``_concatenate_predictions`` does. ``'log_proba'``
  (``log_softmax(z_m)``) and ``'logits'`` (``z_m`` as is) keep all ``C``
  columns.

  Args:
    member_outputs: member logits ``[M, B, C]``.
    x: the input batch ``[B, ...]``; read only when ``passthrough``.
    passthrough: append ``x`` flattened to ``[B, D]``.
    features: ``'proba'``, ``'log_proba'`` or ``'logits'``.

  Returns:
    ``[B, M * F + D]`` with ``F = C - 1`` for binary ``'proba'``, else ``C``,
    and ``D`` the flattened input size (0 without passthrough).

  Raises:
    MemberOutputsError: member outputs that are not ``[M, B, C]``.
    FusionInputError: ``passthrough`` without ``x``, or ``x`` of another
      batch size.
    FusionConfigError: an unknown ``features``.

  Example:
    >>> import jax.numpy as jnp, numpy as np
    >>> from fusionjax import fusion
    >>> p = jnp.array([[[0.8, 0.2]], [[0.4, 0.6]]])  # [M=2, B=1, C=2]
    >>> print(np.asarray(fusion.meta_features(jnp.log(p))).round(3))
    [[0.2 0.6]]

  References:
    Ting and Witten, "Issues in Stacked Generalization", JAIR 1999 (class
    probabilities as meta-features).
  """
  fname = "meta_features"
  _checks.option(features, _FEATURES, fusion=fname, name="features")
  m, b, _ = _checks.member_outputs(member_outputs, fusion=fname)
  f = _member_features(member_outputs, features)  # [M, B, F]
  rows = jnp.moveaxis(f, 0, 1).reshape(b, m * f.shape[-1])
  if passthrough:
    xf = _checks.flat_input(x, b, fusion=f"{fname}(passthrough=True)")
    rows = jnp.concatenate([rows, xf.astype(rows.dtype)], axis=1)
  return rows


def stacking(
    num_members: int,
    num_classes: int,
    hidden: Any = None,
    passthrough: bool = False,
    features: str = "proba",
) -> Fusion:
  """A learned meta-learner over the members' outputs (stacked generalisation).

  ``fused = log_softmax(g(meta_features(z, x)))`` where ``g`` is linear
  (``hidden=None``, multinomial logistic regression) or an MLP with ReLU
  hidden layers of the given sizes; see :func:`meta_features` for the
  feature layout (scikit-learn's). Fit ``g`` on *out-of-fold* member
  predictions (:func:`out_of_fold`, :func:`fit`), never on predictions of
  members that saw the same samples.

  Params: ``{'meta': ({'w': [F_in, F_out], 'b': [F_out]}, ...)}``, one dict per
  layer. The linear meta-learner starts at zero (uniform output, a convex
  problem); MLP layers start LeCun-normal. ``init`` (and ``apply``) need
  ``x=`` when ``passthrough``.

  Args:
    num_members: M.
    num_classes: C, the members' (and the output's) number of classes.
    hidden: ``None`` for a linear meta-learner, or an int / sequence of ints,
      the MLP's hidden sizes.
    passthrough: also feed the flattened raw input ``x`` (``[B, ...]``).
    features: ``'proba'`` (scikit-learn's ``predict_proba``), ``'log_proba'``
      or ``'logits'``.

  Returns:
    A ``Fusion``: ``apply(params, member_logits [M, B, C], *, x=None) ->
    [B, C]`` log-probabilities.

  Raises:
    MemberOutputsError: outputs not ``[num_members, B, num_classes]``.
    FusionInputError: ``passthrough`` without a matching ``x``.
    FusionConfigError: bad ``hidden``, ``features`` or sizes.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from fusionjax import fusion
    >>> z = jnp.linspace(-3.0, 3.0, 96).reshape(3, 8, 4)  # [M, B, C] logits
    >>> f = fusion.stacking(3, 4)  # linear; hidden=16 for an MLP
    >>> params = f.init(jax.random.key(1), z)
    >>> jax.jit(f.apply)(params, z).shape  # pure: jit, grad, vmap freely
    (8, 4)

  References:
    Wolpert, "Stacked Generalization", Neural Networks 1992; Ting and
    Witten, "Issues in Stacked Generalization", JAIR 1999.
  """
  name = (f"stacking(num_members={num_members!r}, num_classes={num_classes!r}"
          f", passthrough={passthrough!r})")
  num_members = _checks.positive_int(num_members, fusion=name,
                                     name="num_members")
  num_classes = _checks.positive_int(num_classes, fusion=name,
                                     name="num_classes")
  hs = _checks.sizes(hidden, fusion=name)
  _checks.option(features, _FEATURES, fusion=name, name="features")

  def features_of(member_outputs, x):
    _, _, c = _checks.member_outputs(member_outputs, fusion=name,
                                     num_members=num_members)
    if c != num_classes:
      raise errors.MemberOutputsError(
          f"{name}: member outputs {tuple(member_outputs.shape)} have C={c} "
          f"classes, the meta-learner was built for num_classes="
          f"{num_classes}. Fix: build it with num_classes={c}.")
    return meta_features(member_outputs, x, passthrough, features)

  def init(key, member_outputs, *, x=None):
    h = jax.eval_shape(features_of, member_outputs, x)  # shapes only
    return {"meta": _mlp.init(key, (h.shape[1], *hs, num_classes), h.dtype,
                              zero=not hs)}

  def apply(params, member_outputs, *, x=None, key=None):
    del key
    h = features_of(member_outputs, x)
    want = _mlp.in_features(params["meta"])
    if h.shape[1] != want:
      raise errors.FusionInputError(
          f"{name}: meta-features have {h.shape[1]} columns but the params "
          f"were built for {want} (x of shape "
          f"{getattr(x, 'shape', None)}). Fix: pass x with the trailing dims "
          "used at init, or re-run init.")
    return jax.nn.log_softmax(_mlp.apply(params["meta"], h), axis=-1)

  return Fusion(init, apply)


def stratified_folds(labels: Any, k: int,
                     key: Optional[jax.Array] = None) -> np.ndarray:
  """The test fold of every sample, as ``StratifiedKFold(k, shuffle=False)``.

  Identical to the test-fold assignment of scikit-learn's
  ``StratifiedKFold(n_splits=k, shuffle=False)``: classes are numbered in
  order of first appearance, each fold's per-class counts come from a
  round-robin over the sorted labels, and each class's samples are given to
  folds ``0, 1, ..., k-1`` in contiguous blocks, in data order. With a
  ``key`` the fold labels within each class are permuted (a seeded shuffle,
  not scikit-learn's RNG stream). Runs in numpy, once, on concrete labels.

  Replica ``j`` of every member trains on ``folds != j``; then
  :func:`out_of_fold` takes every sample's prediction from replica
  ``folds[n]``.

  Args:
    labels: integer (or any hashable, sortable) labels ``[N]``.
    k: the number of folds, ``2 <= k <= `` the smallest class count.
    key: optional PRNG key to shuffle within classes.

  Returns:
    ``int32 [N]`` fold index in ``[0, k)``.

  Raises:
    FoldsError: ``k < 2``, or a class with fewer than ``k`` samples (where
      scikit-learn only warns: some fold would hold no sample of that
      class), or labels that are not one-dimensional.

  Example:
    >>> from fusionjax import fusion
    >>> fusion.stratified_folds([0, 0, 1, 1, 0, 1], 3).tolist()
    [0, 1, 0, 1, 2, 2]

  References:
    Kohavi, "A Study of Cross-Validation and Bootstrap for Accuracy
    Estimation and Model Selection", IJCAI 1995 (stratified k-fold).
  """
  y = np.asarray(labels)
  if y.ndim != 1 or y.shape[0] == 0:
    raise errors.FoldsError(
        f"stratified_folds: labels must be a non-empty [N] vector; got shape "
        f"{y.shape}. Fix: pass one label per sample.")
  if not isinstance(k, (int, np.integer)) or k < 2:
    raise errors.FoldsError(
        f"stratified_folds: k={k!r} folds. Fix: use an int k >= 2.")
  uniq, first_idx, inverse = np.unique(y, return_index=True,
                                       return_inverse=True)
  # Number classes by order of first appearance, as scikit-learn does.
  appearance_rank = np.argsort(np.argsort(first_idx))
  y_enc = appearance_rank[inverse.reshape(-1)]
  counts = np.bincount(y_enc)
  if counts.min() < k:
    smallest = uniq[np.flatnonzero(appearance_rank == np.argmin(counts))[0]]
    fix = (f"use 2 <= k <= {counts.min()}, or gather more samples of that "
           "class" if counts.min() >= 2 else
           "every class needs at least 2 samples: gather more samples of that "
           "class, or drop it")
    raise errors.FoldsError(
        f"stratified_folds: k={k} folds, but class {smallest.tolist()!r} has "
        f"only {counts.min()} samples (counts per class in order of "
        f"appearance: {counts.tolist()}). Fix: {fix}.")
  y_sorted = np.sort(y_enc)
  n_classes = counts.shape[0]
  allocation = np.stack([
      np.bincount(y_sorted[i::k], minlength=n_classes) for i in range(k)])
  folds = np.empty(y.shape[0], dtype=np.int32)
  rng = None if key is None else np.random.default_rng(
      np.asarray(jax.random.key_data(key)).ravel().tolist())
  for cls in range(n_classes):
    blocks = np.repeat(np.arange(k, dtype=np.int32), allocation[:, cls])
    if rng is not None:
      rng.shuffle(blocks)
    folds[y_enc == cls] = blocks
  return folds


def out_of_fold(fold_outputs: jax.Array, fold_of_sample: Any) -> jax.Array:
  """Every sample's prediction from the fold-replica that did not train on it.

  ``oof[m, n] = fold_outputs[fold_of_sample[n], m, n]``. Jittable (a gather);
  when ``fold_of_sample`` is concrete its range is checked.

  Args:
    fold_outputs: ``[K, M, N, C]``: replica ``k`` of member ``m`` (trained on
      the samples with ``fold_of_sample != k``) evaluated on all N training
      samples.
    fold_of_sample: integer ``[N]`` in ``[0, K)``, e.g. from
      :func:`stratified_folds`.

  Returns:
    ``[M, N, C]`` out-of-fold member outputs, ready for ``fit``.

  Raises:
    MemberOutputsError: ``fold_outputs`` not ``[K, M, N, C]``, or
      ``fold_of_sample`` not ``[N]``.
    FoldsError: fold indices outside ``[0, K)`` (checked when concrete).

  Example:
    >>> import jax.numpy as jnp
    >>> from fusionjax import fusion
    >>> outs = jnp.arange(2 * 1 * 3 * 1.0).reshape(2, 1, 3, 1)  # K=2, M=1, N=3
    >>> fusion.out_of_fold(outs, jnp.array([1, 0, 1]))[0, :, 0].tolist()
    [3.0, 1.0, 5.0]

  References:
    Wolpert, "Stacked Generalization", Neural Networks 1992.
  """
  shape = getattr(fold_outputs, "shape", None)
  if shape is None or len(shape) != 4:
    raise errors.MemberOutputsError(
        f"out_of_fold: fold_outputs must be [K, M, N, C] (fold replica, "
        f"member, sample, class); got shape {shape}. Fix: stack the K "
        "replicas' [M, N, C] outputs on a new leading axis.")
  k, _, n, _ = (int(d) for d in shape)
  f_shape = getattr(fold_of_sample, "shape", np.shape(fold_of_sample))
  if tuple(f_shape) != (n,):
    raise errors.MemberOutputsError(
        f"out_of_fold: fold_of_sample must be [N] = ({n},) to match "
        f"fold_outputs {tuple(shape)}; got shape {tuple(f_shape)}. Fix: pass "
        "one fold index per training sample.")
  if not isinstance(fold_of_sample, jax.core.Tracer):
    f_np = np.asarray(fold_of_sample)
    if f_np.size and (f_np.min() < 0 or f_np.max() >= k):
      raise errors.FoldsError(
          f"out_of_fold: fold indices must be in [0, {k}) for K={k} "
          f"replicas; got min {f_np.min()}, max {f_np.max()}. Fix: pass the "
          "fold assignment used to train the replicas.")
  idx = jnp.asarray(fold_of_sample, jnp.int32)
  picked = jnp.take_along_axis(fold_outputs, idx[None, None, :, None], axis=0)
  return picked[0]
