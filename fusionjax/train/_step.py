"""Thin wrappers over :func:`~fusionjax.train.make_trainer`, and a per-member optax transform.

``init`` and ``make_step`` build the trainer's two halves from the same
arguments (so they cannot disagree); new code calls ``make_trainer`` once.
"""
from typing import Callable, Optional

import optax

from fusionjax.ensemble import Ensemble
from fusionjax.fusion import Fusion
from fusionjax.train._guard import skip_nonfinite
from fusionjax.train._losses import cross_entropy
from fusionjax.train._trainer import TrainState, make_predictor, make_trainer


def _layout_of(member_chunk):
  """``member_chunk`` of the older API as ``(layout, chunk)``."""
  if member_chunk is None:
    return "vmap", "auto"
  if member_chunk == "auto":
    return "auto", "auto"
  return "scan", int(member_chunk)


def init(ensemble: Ensemble, tx: optax.GradientTransformation, key, x_example, *,
         fusion: Optional[Fusion] = None, regime: str = "independent",
         fusion_tx=None, guard: bool = True) -> TrainState:
  """``make_trainer(ensemble, tx, ...).init(key, x_example)``: members, fusion and
  per-member optimizer state, initialised in one jit (``step = 0``)."""
  return make_trainer(ensemble, tx, fusion=fusion, regime=regime, fusion_tx=fusion_tx,
                      guard=guard).init(key, x_example)


def make_step(ensemble: Ensemble, tx: optax.GradientTransformation, *,
              fusion: Optional[Fusion] = None, regime: str = "independent",
              lam: float = 1.0, fusion_tx=None, loss: Callable = cross_entropy,
              per_member: bool = False, guard: bool = True, jit: bool = True,
              donate: bool = True, mesh=None, member_chunk="auto", layout=None,
              platform=None, x_example=None) -> Callable:
  """``make_trainer(ensemble, tx, ...).step``: one step that updates every member at once.

  ``member_chunk`` is the older spelling of the layout: ``None`` is
  ``layout='vmap'``, an int ``k`` is ``layout='scan'`` with chunks of ``k``,
  ``'auto'`` is ``layout='auto'``; ``layout=`` wins when given. See
  :func:`~fusionjax.train.make_trainer` for the rest.
  """
  lay, chunk = _layout_of(member_chunk)
  return make_trainer(ensemble, tx, fusion=fusion, regime=regime, lam=lam,
                      fusion_tx=fusion_tx, loss=loss, per_member=per_member, guard=guard,
                      mesh=mesh, layout=layout or lay, platform=platform,
                      x_example=x_example, chunk=chunk, donate=donate, jit=jit).step


def make_predict(ensemble: Ensemble, fusion: Optional[Fusion] = None,
                 jit: bool = True, member_chunk="auto") -> Callable:
  """``make_predictor(ensemble, fusion, ...).predict``:
  ``predict(state, x) -> (member outputs [M, B, C], fused or None)``.

  ``member_chunk``: ``None`` is ``layout='vmap'``, an int ``k`` chunks of ``k``
  members, ``'auto'`` is ``layout='auto'``.
  """
  lay, chunk = _layout_of(member_chunk)
  return make_predictor(ensemble, fusion, layout=lay, chunk=chunk, jit=jit).predict


def per_member(tx: optax.GradientTransformation, ensemble: Ensemble,
               guard: bool = True) -> optax.GradientTransformation:
  """An optax transform applied independently to every member of stacked params.

  For research code that builds its own update over member-stacked params
  (the trainer maps its member step itself). ``guard`` wraps ``tx`` in
  :func:`~fusionjax.train.skip_nonfinite`.

  Returns:
    A ``GradientTransformation`` whose state is member-stacked (``count`` is ``[M]``).
  """
  inner = skip_nonfinite(tx) if guard else tx

  def init_fn(params):
    return ensemble.member_map(inner.init, params)

  def update_fn(grads, state, params=None):
    if params is None:
      return ensemble.member_map(lambda g, s: inner.update(g, s), grads, state,
                                 num_outputs=2)
    return ensemble.member_map(inner.update, grads, state, params, num_outputs=2)

  return optax.GradientTransformation(init_fn, update_fn)
