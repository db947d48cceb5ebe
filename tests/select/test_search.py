"""Grid and random search over fusion hyper-parameters, and temperature scaling."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

from fusionjax import errors, metrics, select

B, C = 96, 5


def _logits(seed=0, m=3, overconfidence=3.0):
  rng = np.random.default_rng(seed)
  base = rng.normal(size=(m, B, C))
  labels = np.array([rng.choice(C, p=np.exp(r) / np.exp(r).sum()) for r in base[0]], np.int32)
  return (overconfidence * base).astype(np.float32), labels


def test_grid_search_finds_the_minimum_in_product_order():
  grid = {"a": np.array([0.0, 1.0, 2.0]), "b": np.array([0.5, 0.0])}
  best, table = select.grid_search(lambda a, b: (a - 1.0) ** 2 + b, grid)
  assert float(best["a"]) == 1.0 and float(best["b"]) == 0.0
  product = np.array(list(itertools.product([0.0, 1.0, 2.0], [0.5, 0.0])))
  np.testing.assert_array_equal(table["a"], product[:, 0])
  np.testing.assert_array_equal(table["b"], product[:, 1])
  np.testing.assert_allclose(table["objective"], (product[:, 0] - 1) ** 2 + product[:, 1])
  best, _ = select.grid_search(lambda a, b: (a - 1.0) ** 2 + b, grid, maximize=True)
  assert float(best["a"]) in (0.0, 2.0) and float(best["b"]) == 0.5


def test_grid_search_over_fusion_weights_and_temperature():
  """An array-valued parameter (a weight vector per candidate) next to a scalar one."""
  logits, labels = _logits(1)
  weights = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1 / 3, 1 / 3, 1 / 3], [0.5, 0.5, 0.0]])
  temperature = np.array([1.0, 2.0, 3.0, 4.0])

  def objective(weights, temperature):
    probs = jnp.einsum("m,mbc->bc", weights, jax.nn.softmax(logits / temperature))
    return metrics._nll(jnp.log(probs), labels, jnp.ones(B))

  best, table = select.grid_search(objective, {"weights": weights, "temperature": temperature})
  assert table["weights"].shape == (16, 3) and table["objective"].shape == (16,)
  assert list(table) == ["weights", "temperature", "objective"]
  def reference(w, t):                        # float64 NumPy, one candidate at a time
    z = logits.astype(np.float64) / t
    p = np.exp(z - z.max(-1, keepdims=True))
    p = np.einsum("m,mbc->bc", w, p / p.sum(-1, keepdims=True))
    return -np.log(p[np.arange(B), labels]).mean()

  loop = [reference(np.asarray(w, np.float64), float(t))
          for w, t in itertools.product(weights, temperature)]
  np.testing.assert_allclose(table["objective"], loop, rtol=1e-5)
  i = int(np.argmin(loop))
  np.testing.assert_array_equal(best["weights"], table["weights"][i])
  # Chunked evaluation (lax.map) gives the same table.
  _, chunked = select.grid_search(objective, {"weights": weights, "temperature": temperature},
                                  batch_size=3)
  np.testing.assert_allclose(chunked["objective"], table["objective"], rtol=1e-6)


def test_nan_objectives_lose():
  best, _ = select.grid_search(lambda x: jnp.where(x < 1.5, jnp.nan, x),
                               {"x": np.array([0.0, 1.0, 2.0, 3.0])})
  assert float(best["x"]) == 2.0


def test_random_search_is_reproducible_and_respects_the_space():
  space = {"t": select.log_uniform(0.1, 10.0), "a": (-1.0, 1.0),
           "w": np.array([[1.0, 0.0], [0.0, 1.0]])}
  objective = lambda t, a, w: (jnp.log(t) - 1.0) ** 2 + a ** 2 + w[0]
  best, table = select.random_search(objective, space, jax.random.key(0), 256)
  again, _ = select.random_search(objective, space, jax.random.key(0), 256)
  other, _ = select.random_search(objective, space, jax.random.key(1), 256)
  assert all(np.array_equal(best[k], again[k]) for k in best)
  assert float(best["t"]) != float(other["t"])
  assert table["t"].shape == (256,) and table["w"].shape == (256, 2)
  table = {k: np.asarray(v) for k, v in table.items()}
  assert np.all((table["t"] >= 0.1) & (table["t"] < 10.0))
  assert np.all((table["a"] >= -1.0) & (table["a"] < 1.0))
  i = int(np.argmin(table["objective"]))
  assert float(best["t"]) == float(table["t"][i])
  np.testing.assert_array_equal(best["w"], [0.0, 1.0])
  assert abs(np.log(float(best["t"])) - 1.0) < 0.3


def _nll64(logits, labels, log_t):
  z = logits.astype(np.float64) / np.exp(log_t)
  z = z - z.max(-1, keepdims=True)
  return (np.log(np.exp(z).sum(-1)) - z[np.arange(len(labels)), labels]).mean()


def _scipy_temperature(logits, labels):
  return np.exp(scipy.optimize.minimize_scalar(
      lambda log_t: _nll64(logits, labels, log_t), bounds=(np.log(0.05), np.log(20.0)),
      method="bounded", options={"xatol": 1e-10}).x)


def test_temperature_scale_matches_scipy():
  logits, labels = _logits(2)
  t = select.temperature_scale(logits[0], labels)
  t_scipy = _scipy_temperature(logits[0], labels)
  np.testing.assert_allclose(t, t_scipy, rtol=1e-3)
  np.testing.assert_allclose(_nll64(logits[0], labels, np.log(float(t))),
                             _nll64(logits[0], labels, np.log(t_scipy)), rtol=1e-6)
  assert float(t) > 1.5                       # the logits were made overconfident
  nll_t = float(metrics.nll(logits[0] / float(t), labels))
  assert nll_t <= float(metrics.nll(logits[0], labels))
  grid = np.geomspace(0.05, 20.0, 96)
  assert nll_t <= min(_nll64(logits[0], labels, np.log(g)) for g in grid) + 1e-6
  # Log-probabilities give the same temperature as logits.
  # Log-probabilities give the same temperature as logits, to the precision a
  # float32 NLL pins the minimiser of a flat minimum (~sqrt(eps) relative).
  log_probs = logits[0] - np.log(np.exp(logits[0]).sum(-1, keepdims=True))
  np.testing.assert_allclose(select.temperature_scale(log_probs, labels), t, rtol=2e-3)


def test_temperature_scale_with_mask():
  logits, labels = _logits(3)
  mask = np.arange(B) < 64
  x = np.where(mask[:, None], logits[0], np.nan)
  y = np.where(mask, labels, -1)
  np.testing.assert_allclose(select.temperature_scale(x, y, mask),
                             _scipy_temperature(logits[0][mask], labels[mask]), rtol=1e-3)


def test_search_errors():
  f = lambda x: x
  with pytest.raises(errors.SelectionError, match="no parameters"):
    select.grid_search(f, {})
  with pytest.raises(errors.EmptySplitError, match="'x' has no candidate values"):
    select.grid_search(f, {"x": np.zeros((0,))})
  with pytest.raises(errors.SelectionError, match=r"shape \(2,\) per candidate"):
    select.grid_search(lambda x: jnp.stack([x, x]), {"x": np.ones(3, np.float32)})
  with pytest.raises(errors.SelectionError, match="'objective' is reserved"):
    select.grid_search(lambda objective: objective, {"objective": np.ones(3, np.float32)})
  with pytest.raises(errors.SelectionError, match="num=0"):
    select.random_search(f, {"x": (0.0, 1.0)}, jax.random.key(0), 0)
  logits, labels = _logits()
  with pytest.raises(errors.SelectionError, match=r"\[1.0, -1.0\]"):
    select.temperature_scale(logits[0], labels, temperatures=np.array([1.0, -1.0]))
  with pytest.raises(errors.MemberOutputsError, match=r"\(3, 96, 5\)"):
    select.temperature_scale(logits, labels)
