"""Weight-space fusion: uniform and greedy soups, stochastic weight averaging.

Output-space ensembles run M networks; weight-space fusion averages M sets of
weights into one network. That works when the members lie in one linearly
connected basin: fine-tuned from one pre-trained model (soups), points along
one SGD trajectory (SWA), or independently trained members after permutation
alignment (:mod:`fusionjax.integrate._align`).

Ingredients are given either as one member-stacked tree (every leaf
``[M, ...]``, the engine's layout) or as a list of single-member trees.
"""
from typing import Any, Callable, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from fusionjax import errors
from fusionjax.integrate import _train
from fusionjax.train import make_step


def check_ingredients(params, where: str) -> list:
  """A list of single-member trees, checked to share one structure and leaf shapes."""
  if isinstance(params, (list, tuple)):
    trees = list(params)
    if not trees:
      raise errors.SoupError(f"{where}: no ingredients. Fix: pass at least one params tree.")
  else:
    leaves = jax.tree_util.tree_leaves(params)
    sizes = {np.shape(l)[0] if np.ndim(l) else None for l in leaves}
    if not leaves or len(sizes) != 1 or None in sizes:
      raise errors.SoupError(
          f"{where}: a stacked params tree needs every leaf [M, ...] with one M; got leaf "
          f"shapes {[tuple(np.shape(l)) for l in leaves][:6]}. Fix: pass the ensemble's "
          "stacked params, or a list of single-member params trees.")
    m = sizes.pop()
    trees = [jax.tree.map(lambda a, i=i: a[i], params) for i in range(m)]
  ref = jax.tree_util.tree_structure(trees[0])
  ref_leaves = jax.tree_util.tree_leaves_with_path(trees[0])
  for i, t in enumerate(trees[1:], start=1):
    if jax.tree_util.tree_structure(t) != ref:
      raise errors.SoupError(
          f"{where}: ingredient {i} has tree structure {jax.tree_util.tree_structure(t)}, "
          f"but ingredient 0 has {ref}. Fix: soup members of one architecture only.")
    for (path, a), b in zip(ref_leaves, jax.tree_util.tree_leaves(t)):
      if np.shape(a) != np.shape(b):
        raise errors.SoupError(
            f"{where}: leaf {jax.tree_util.keystr(path)} has shape {tuple(np.shape(b))} in "
            f"ingredient {i} but {tuple(np.shape(a))} in ingredient 0. Fix: soup members "
            "of one architecture (same widths) only.")
  return trees


def _mean(trees: Sequence[Any]):
  return jax.tree.map(lambda *a: jnp.mean(jnp.stack([jnp.asarray(x) for x in a]), axis=0),
                      *trees)


def uniform_soup(params) -> Any:
  """The uniform soup: the element-wise average of the members' params.

  Args:
    params: one member-stacked tree (every leaf ``[M, ...]``) or a list of
      single-member trees of one architecture.

  Returns:
    A single-member params tree (no member axis); ``fj.ensemble.stack([soup])``
    gives the 1-member stacked form.

  Raises:
    SoupError: trees of different structures or leaf shapes.

  Example:
    >>> soup = uniform_soup([{'w': jnp.array([1.0, 2.0])}, {'w': jnp.array([3.0, 0.0])}])
    >>> soup['w'].tolist()
    [2.0, 1.0]
    >>> soup = uniform_soup(state.params['members'])     # doctest: +SKIP

  References:
    Wortsman et al., "Model soups: averaging weights of multiple fine-tuned
    models improves accuracy without increasing inference time", ICML 2022.
  """
  return _mean(check_ingredients(params, "uniform_soup"))


class GreedySoup(NamedTuple):
  """What :func:`greedy_soup` returns.

  Attributes:
    params: the soup (a single-member tree).
    members: the indices of the ingredients in the soup, in the order added.
    scores: ``[M]`` each ingredient's own held-out score.
    score: the soup's held-out score.
    history: the soup's score after each candidate was tried (``[M]``).
  """
  params: Any
  members: tuple
  scores: np.ndarray
  score: float
  history: np.ndarray


def greedy_soup(params, evaluate: Callable[[Any], float]) -> GreedySoup:
  """The greedy soup: add ingredients best first, keep one if the score does not drop.

  Ingredients are sorted by their own held-out score (``evaluate``, higher is
  better, e.g. validation accuracy); the soup starts as the best one, and each
  next ingredient stays in the soup when the average with it scores at least
  as well as without it. So the soup's held-out score is never below the best
  single ingredient's.

  Args:
    params: one member-stacked tree or a list of single-member trees.
    evaluate: ``single-member params -> float`` held-out score, higher is
      better (use ``-nll`` for likelihood).

  Returns:
    A :class:`GreedySoup`.

  Raises:
    SoupError: trees of different structures or leaf shapes.

  Example:
    >>> score = lambda p: -abs(float(p['w']) - 1.0)        # toy held-out score
    >>> soup = greedy_soup([{'w': 0.8}, {'w': 3.0}, {'w': 1.1}], score)
    >>> soup.members                                       # 3.0 would lower the score
    (2, 0)
    >>> module = fj.models.MLP(10, (64,))
    >>> acc = lambda p: float(fj.metrics.accuracy(module.apply({'params': p}, xv), yv))
    >>> soup = greedy_soup(state.params['members'], acc)  # doctest: +SKIP

  References:
    Wortsman et al., "Model soups", ICML 2022, Recipe 1 (GreedySoup).
  """
  trees = check_ingredients(params, "greedy_soup")
  scores = np.array([float(evaluate(t)) for t in trees])
  order = np.argsort(-scores, kind="stable")
  kept = [int(order[0])]
  best = float(scores[order[0]])
  history = [best]
  for i in order[1:]:
    cand = _mean([trees[j] for j in kept + [int(i)]])
    s = float(evaluate(cand))
    if s >= best:
      kept.append(int(i))
      best = s
    history.append(best)
  return GreedySoup(_mean([trees[j] for j in kept]), tuple(kept), scores, best,
                    np.asarray(history))


# --------------------------------------------------------------------------
# stochastic weight averaging
# --------------------------------------------------------------------------
class SWAState(NamedTuple):
  """A running average of params: ``mean`` of the ``count`` params added so far."""
  mean: Any
  count: jax.Array


class ParamAverage(NamedTuple):
  """Pure functions of a running parameter average, in the style of optax.

  Attributes:
    init: ``params -> SWAState`` (empty average, ``count = 0``).
    update: ``(swa_state, params, step) -> SWAState``: adds ``params`` when
      ``step`` is an averaging step (jittable; ``step`` may be traced).
  """
  init: Callable[..., SWAState]
  update: Callable[..., SWAState]


def running_mean(mean, params, count):
  """``mean + (params - mean) / (count + 1)``: the average after adding ``params``.

  Args:
    mean: the average of ``count`` params trees so far.
    params: the tree to add.
    count: how many trees ``mean`` averages.

  Returns:
    The average of the ``count + 1`` trees (equal weights).

  Example:
    >>> running_mean({'w': jnp.array(1.0)}, {'w': jnp.array(4.0)}, 2)['w'].tolist()
    2.0
  """
  count = jnp.asarray(count, jnp.float32)
  return jax.tree.map(lambda m, p: m + (p - m) / (count + 1.0), mean, params)


def swa(start: int, every: int = 1) -> ParamAverage:
  """Stochastic weight averaging as a pair of pure functions.

  Averages the params after steps ``start, start + every, start + 2 every,
  ...`` (``step`` counts steps taken, as ``TrainState.step`` does after an
  update) with an equal-weight running mean.

  BatchNorm note: the average of weights is a new network whose BatchNorm
  running statistics are not the average of the members' statistics; before
  evaluating an SWA model with BatchNorm, recompute them with a pass over the
  training data in train mode (Izmailov et al., Sec. 3.2). The MLPs used
  here have no BatchNorm; :func:`fit_swa` averages the ``'state'`` collection
  too, which is exact only without BatchNorm.

  Args:
    start: the first step averaged (``>= 0``).
    every: steps between averaged points (``>= 1``; once per epoch in the paper).

  Returns:
    A :class:`ParamAverage` ``(init, update)``.

  Example:
    >>> avg = swa(start=100, every=10)
    >>> params = {'w': jnp.ones(3)}
    >>> s = avg.init(params)
    >>> s = avg.update(s, params, step=100)           # inside or outside jit
    >>> s = avg.update(s, {'w': jnp.zeros(3)}, step=105)   # not an averaging step
    >>> int(s.count), s.mean['w'].tolist()
    (1, [1.0, 1.0, 1.0])

  References:
    Izmailov et al., "Averaging Weights Leads to Wider Optima and Better
    Generalization", UAI 2018.
  """
  start = _train.check_int(start, "start", "swa", minimum=0)
  every = _train.check_int(every, "every", "swa")

  def init(params):
    return SWAState(jax.tree.map(jnp.zeros_like, params), jnp.zeros((), jnp.int32))

  def update(state: SWAState, params, step):
    step = jnp.asarray(step)
    take = (step >= start) & (jnp.mod(step - start, every) == 0)
    new = running_mean(state.mean, params, state.count)
    mean = jax.tree.map(lambda n, o: jnp.where(take, n, o), new, state.mean)
    return SWAState(mean, state.count + take.astype(jnp.int32))

  return ParamAverage(init, update)


class SWAResult(NamedTuple):
  """What :func:`fit_swa` returns.

  Attributes:
    variables: the SWA average ``{'params', 'state'}``, leaves ``[1, ...]``.
    last: the final iterate's variables, leaves ``[1, ...]``.
    count: how many points were averaged.
    losses: ``[num_steps]`` training losses.
  """
  variables: Any
  last: Any
  count: int
  losses: np.ndarray


def fit_swa(module: nn.Module, tx: optax.GradientTransformation, x, y, *,
            key: jax.Array, num_steps: int, start: int, every: int = 1,
            batch_size: int = 64, seed: int = 0) -> SWAResult:
  """Trains one network and returns the average of its weights along the trajectory.

  A 1-member ensemble trained with the engine's step; after each step, the
  :func:`swa` average is updated (one jitted update). Use a constant or
  cyclic learning rate in ``tx`` so that the averaged points differ.

  Args:
    module: a Linen module mapping ``[B, ...]`` to ``[B, C]``.
    tx: single-member optax transform.
    x, y: training inputs ``[N, ...]`` and integer labels ``[N]``.
    key: PRNG key.
    num_steps: training steps.
    start: the first step averaged (``<= num_steps``).
    every: steps between averaged points.
    batch_size: examples per step.
    seed: seed of the data order.

  Returns:
    A :class:`SWAResult`; ``_train.linen_ensemble(module, 1).apply(res.variables, x)``
    runs the averaged model.

  Raises:
    IntegrationConfigError: ``start > num_steps`` or bad ``every``.

  Example:
    >>> res = fj.integrate.fit_swa(fj.models.MLP(10, (64,)), optax.sgd(1.0), x, y,
    ...     key=jax.random.key(0), num_steps=600, start=300, every=10)  # doctest: +SKIP

  References:
    Izmailov et al., "Averaging Weights Leads to Wider Optima and Better
    Generalization", UAI 2018.
  """
  where = "fit_swa"
  num_steps = _train.check_int(num_steps, "num_steps", where)
  if not isinstance(start, (int, np.integer)) or not 1 <= start <= num_steps:
    raise errors.IntegrationConfigError(
        f"{where}: start={start!r} must be a step count in [1, num_steps={num_steps}]. "
        f"Fix: e.g. start={num_steps // 2 or 1} to average the second half.")
  x, y = _train.check_xy(x, y, where)
  ens1 = _train.linen_ensemble(module, 1)
  avg = swa(start, every)
  state = _train.start_state(ens1, tx, key, jnp.asarray(x[:1]))
  variables = lambda st: {"params": st.params["members"], "state": st.state}
  holder = {"swa": avg.init(variables(state))}
  update = jax.jit(avg.update)

  def callback(t, st):
    holder["swa"] = update(holder["swa"], variables(st), t + 1)

  step = make_step(ens1, tx, x_example=x[:1])
  state, losses = _train.run_steps(step, state, x, y, num_steps=num_steps,
                                   batch_size=batch_size, seed=seed, callback=callback)
  s = holder["swa"]
  return SWAResult(_train.host_copy(s.mean), _train.host_copy(variables(state)),
                   int(s.count), losses)
