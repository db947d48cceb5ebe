"""Cache-blocked layouts of the stacked step and of prediction (same maths, same state).

The plain stacked step vmaps the member over every operation: XLA runs each
layer's GEMM for all M members, then each elementwise pass (ReLU masks, Adam's
moments, the non-finite guard's selects) over all members' arrays. With M = 16
MNIST MLPs (4.3 M parameters) each pass streams ~17 MB per array through
memory, the first layer's weights and weight gradients are transposed into
one GEMM against the concatenated weights, and XLA's ~56 MB of temporaries are
mmap-ed and page-faulted on every call (over glibc's 32 MB mmap threshold).

Here the single-member step (forward, backward, optimizer, guard) runs chunk of
members by chunk of members while the chunk's arrays are in cache, and writes
the chunk back into the donated state in place:

* in one program, a ``scan`` over chunks whose carry is the state
  (:func:`_over_chunks`); a chunk of one member is the plain single-member
  program, a larger chunk is vmapped with the shared batch broadcast (batched
  dots, no transposes);
* for two or more members with convolutions, one jitted call per chunk from a host loop
  (:meth:`ChunkedStep.host`), each on its own buffers (a start call splits the
  stacked state, a finish call stacks it back): inside a ``while`` body
  XLA:CPU keeps backward convolutions in a generic form ~3x slower, and
  vmapped convolutions become grouped ones. (Grouped convolutions also break
  the per-member guard with per-member batches: XLA:CPU's kernel gradient of a
  grouped convolution spreads one member's NaN to every member, so the vmapped
  step then skips all members' updates; the host layout skips only the
  non-finite member.)

The guard is ``skip_nonfinite`` as the vmapped step applies it, its verdict
one GEMV per leaf (:func:`~fusionjax.train._step.leaf_all_finite`), and selects
that keep the params of a non-finite member.

The step reads and writes exactly the :class:`~fusionjax.train.TrainState` of
the vmapped step (the per-member optax state inside ``multi_transform``'s),
draws the same dropout keys, and applies the same guard, so the layouts are
interchangeable (equal at rtol 1e-5). It applies to a homogeneous ensemble
built by :func:`~fusionjax.ensemble.from_fn` (``from_linen``, ``from_nnx``),
regime ``'independent'``, no device mesh; elsewhere the vmapped step runs.
"""
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import optax

from fusionjax.ensemble import Ensemble
from fusionjax.ensemble._base import _check_batch, check_stacked
from fusionjax.train._step import _all_finite, check_guard, members_opt_state

# Per-chunk working-set budget for chunk='auto': params, gradients and two
# optimizer moments of the chunk's members should fit in about this many bytes
# (a share of the L2/L3 caches of a small CPU; measured in benchmarks/).
_AUTO_BUDGET_BYTES = 4 * 2**20


def member_fn(ensemble: Ensemble) -> Optional[Callable]:
  """The single-member ``apply(variables, x, key, train)`` of a ``from_fn`` ensemble, or None."""
  return getattr(ensemble.apply, "_fj_member_apply", None)


def auto_chunk(ensemble: Ensemble, params_members, opt_slots: int = 3) -> int:
  """Members per chunk so that a chunk's params, grads and moments fit the cache budget.

  Args:
    ensemble: the ensemble (``M = ensemble.size``).
    params_members: stacked member params (arrays or ``ShapeDtypeStruct``).
    opt_slots: arrays per parameter besides the parameter itself (gradient
      and two Adam moments: 3).

  Returns:
    ``chunk`` in ``[1, M]``, a power of two.
  """
  leaves = jax.tree_util.tree_leaves(params_members)
  per_member = sum(l.size // l.shape[0] * jnp.dtype(l.dtype).itemsize for l in leaves)
  per_member *= 1 + opt_slots
  chunk = max(1, min(ensemble.size, _AUTO_BUDGET_BYTES // max(per_member, 1)))
  return 1 << (int(chunk).bit_length() - 1)  # a power of two: chunks that divide M


def _squeeze(tree):
  return jax.tree.map(lambda a: a[0], tree)


def _expand(tree):
  return jax.tree.map(lambda a: a[None], tree)


def _run_chunk(compute, update, carried, rest, shared, start, n: int,
               looping: bool = True):
  """Members ``[start, start + n)``: compute, update, and write back in place.

  ``compute`` is per member ``(carried_m, rest_m, shared) -> out_m`` (forward
  and backward); it runs unbatched for a chunk of one member, so XLA sees
  exactly the single-member program (a size-1 vmap axis changes its dot
  layouts), and vmapped otherwise, with ``shared`` broadcast to ``[n, ...]``:
  every member's dot is then a batched dot, which XLA runs as it is, instead
  of one dot against the concatenated weights, which needs the weights and the
  weight gradients transposed (a copy of each, every step). ``update`` is per
  chunk ``(carried_c, out_c) -> (new_carried_c, aux_c)`` on ``[n, ...]``
  arrays (it vmaps itself); its reads of the old chunk are slices of the same
  shape as its in-place writes, which XLA performs without copying the chunk.
  ``looping`` tells ``update`` whether the chunk is one of several written in
  place into the same buffers (a loop), or the only one. Returns
  ``(carried, aux_c)``: the chunk written into ``carried``, and its aux.
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


def _over_chunks(compute, update, carried, rest, shared, size: int, chunk: int):
  """Every member's ``update(compute(...))``, chunk by chunk in a ``scan``, in place.

  ``carried`` (params, BN state, optimizer state; donated by the caller's
  jit) is the loop carry and is written chunk by chunk; ``rest`` are
  member-stacked inputs (keys, per-member batches), ``shared`` inputs every
  member reads. See :func:`_run_chunk`. Returns ``(new_carried, aux)``.
  """
  n = min(chunk, size)
  n_full = size // n
  looping = n_full > 1 or size % n != 0
  run = lambda start, k, ca: _run_chunk(compute, update, ca, rest, shared, start, k,
                                        looping)
  if n_full == 1:
    carried, aux = run(0, n, carried)
  else:
    # A scan stacks each chunk's aux as its output, so the chunk is traced once
    # (a fori_loop would need the aux's zeros first: a second trace).
    carried, aux = jax.lax.scan(lambda ca, i: run(i * n, n, ca), carried,
                                jnp.arange(n_full))
    aux = jax.tree.map(lambda a: a.reshape((n_full * n,) + a.shape[2:]), aux)
  if size % n:
    carried, tail = run(n_full * n, size % n, carried)
    aux = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), aux, tail)
  return carried, aux


def _with_members_opt_state(opt_state, members_state):
  inner = dict(opt_state.inner_states)
  inner["members"] = inner["members"]._replace(inner_state=members_state)
  return opt_state._replace(inner_states=inner)


def _where_members(pred, new, old):
  """Per member: ``new`` where ``pred [n]`` holds, else ``old`` (leaves ``[n, ...]``)."""
  return jax.tree.map(
      lambda a, b: jnp.where(pred.reshape((-1,) + (1,) * (a.ndim - 1)), a, b), new, old)


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


def uses_convolution(ensemble: Ensemble, params_members, state_members, x) -> bool:
  """Whether a member's forward pass contains a convolution (abstract trace only)."""
  apply_one = member_fn(ensemble)
  one = lambda tree: jax.tree.map(
      lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype), tree)
  xs = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), x)
  jaxpr = jax.make_jaxpr(
      lambda p, s, xx, k: apply_one({"params": p, "state": s}, xx, k, True))(
          one(params_members), one(state_members), xs, jax.random.key(0))
  return "conv_general_dilated" in _primitives(jaxpr.jaxpr)


class ChunkedStep:
  """The independent-regime step, chunk of members by chunk of members.

  Two layouts of the same computation (same state, same logs):

  * :meth:`pure`: one program; a ``scan`` over chunks whose carry is the
    member-stacked state, written in place chunk by chunk
    (:func:`_over_chunks`). ``make_step(jit=True)`` jits it with the state
    donated.
  * :meth:`host`: a Python loop over chunks, each chunk one jitted call on
    its own buffers (the program of a loop of single-member steps), between a
    start call that splits the stacked state and a finish call that stacks
    it back. Used for two or more members with convolutions: inside a
    ``while`` body XLA:CPU keeps the backward convolutions in their generic,
    several times slower form. One member is :meth:`pure`, which then has no
    loop (and no start and finish calls).

  Attributes:
    pure: ``step(state, batch) -> (state, logs)``, unjitted.
  """

  def __init__(self, ensemble, member_tx, *, loss, per_member, guard, guard_ok,
               chunk, check):
    self.ensemble, self.size = ensemble, ensemble.size
    self.apply_one = member_fn(ensemble)
    self.member_tx, self.loss = member_tx, loss
    self.per_member, self.guard, self.guard_ok = per_member, guard, guard_ok
    self.chunk, self.check = chunk, check
    self._host_parts = {}
    self._mode = None
    self._conv = None

  # ------------------------------------------------------------------ maths

  def compute(self, carried, rest, shared):
    """One member's loss gradient: ``(grads, new BN state, loss)``."""
    p, s, _ = carried
    k, data = rest
    xm, ym, mm = data if self.per_member else shared

    def objective(q):
      out, new_s = self.apply_one({"params": q, "state": s}, xm, k, True)
      l = self.loss(out, ym, mm)
      return l, (new_s, l)

    grads, (new_s, l) = jax.grad(objective, has_aux=True)(p)
    return grads, new_s, l

  def update(self, carried, out, looping=True):
    """Optimizer and guard for a chunk of ``[n, ...]`` arrays: ``(new_carried, (loss, finite))``.

    ``looping`` says whether the chunk is one of several written in place into
    the same buffers; the data flow then matters (see the comments below).
    """
    vmap = jax.vmap
    p, s, o = carried
    grads, new_s, l = out
    updates, new_o = vmap(self.member_tx.update)(grads, o, p)
    new_p = optax.apply_updates(p, updates)
    if self.guard:
      # member_tx is the guarded transform: its verdict (finite gradient and
      # update) kept its own state; the params and BatchNorm statistics of a
      # member with a non-finite loss or update are kept here. The selects
      # read every new value, so XLA materialises a chunk's new values before
      # writing them in place. Measured interleaved on 2 CPU cores: within a
      # few % of no guard at M >= 4 (10-20 % dearer at M = 1), and ~10 % faster
      # than a lax.cond between a select-free commit and this path.
      finite = jnp.isfinite(l) & vmap(self.guard_ok)(new_o)
      new = (_where_members(finite, new_p, p), _where_members(finite, new_s, s), new_o)
      return new, (l, finite)
    finite = jnp.isfinite(l) & vmap(_all_finite)(grads)
    if not looping:
      return (new_p, new_s, new_o), (l, finite)
    # No guard, but the same data flow: a select whose (always true)
    # predicate reads every update makes XLA materialise the chunk's new
    # values before writing them in place. Without it XLA recomputes the
    # moments inside the params' in-place write, which still needs the old
    # moments, and copies the full-size moments every chunk (~3x slower).
    ok = vmap(_all_finite)(updates)
    always = ok | ~ok
    new = (_where_members(always, new_p, p), new_s, _where_members(always, new_o, o))
    return new, (l, finite)

  # ------------------------------------------------------------------ layouts

  def _begin(self, state, batch):
    x, y, mask = batch["x"], jnp.asarray(batch["y"]), batch.get("mask")
    check_stacked(state.params["members"], self.size, "params")
    check_stacked(state.state, self.size, "state")
    _check_batch(x, self.size, self.per_member)
    if self.check is not None:
      self.check(x, y)
    members_opt = members_opt_state(state.opt_state)
    if members_opt is None:
      raise ValueError("chunked step: the optimizer state is not make_optimizer's.")
    check_guard(self.ensemble, state.opt_state, self.guard)
    carried = (state.params["members"], state.state, members_opt)
    data = (x, y, mask) if self.per_member else ()
    shared = () if self.per_member else (x, y, mask)
    return carried, data, shared

  def _end(self, state, key, carried, aux, step, loss):
    new_p, new_s, new_o = carried
    member_loss, finite = aux
    params = {"members": new_p, "fusion": state.params["fusion"]}
    opt_state = _with_members_opt_state(state.opt_state, new_o)
    logs = {"member_loss": member_loss, "finite": finite, "loss": loss}
    return state._replace(step=step, params=params, state=new_s, opt_state=opt_state,
                          key=key), logs

  def pure(self, state, batch):
    """The whole step as one program (a ``scan`` over chunks)."""
    carried, data, shared = self._begin(state, batch)
    chunk = (auto_chunk(self.ensemble, state.params["members"]) if self.chunk == "auto"
             else int(self.chunk))
    key, sub = jax.random.split(state.key)
    keys = jax.random.split(sub, self.size)  # as Ensemble.apply: member m gets keys[m]
    carried, aux = _over_chunks(self.compute, self.update, carried, (keys, data), shared,
                                self.size, chunk)
    return self._end(state, key, carried, aux, state.step + 1, jnp.sum(aux[0]))

  def host(self, state, batch, donate: bool = True):
    """The step as one jitted call per chunk of members, each on its own buffers.

    A start call splits the member-stacked state (and the member keys and
    per-member batches) into one set of buffers per chunk; each chunk's call
    then runs the program of a loop of single-member steps, and a finish call
    stacks the chunks back. With ``donate``, the caller's state buffers are
    deleted once split, as donation would.

    The previous layout sliced each chunk out of the donated stacked buffers
    and wrote it back in place inside each call: XLA must then materialise the
    new values before the in-place write, and ran ~100 more kernels. Timed in
    one process against a loop of single-member jitted steps on the project's
    2-core CPU (LeNet-size members, batch 128, Adam), the guarded step went
    from 0.93x to 1.01x the loop at M=4 and from 0.91x to 0.99x at M=16 (the
    A/B is in issue 8's closing note); ``python benchmarks/ensemble_step.py
    --models cnn`` has the result. The chunks' calls are not donated: written
    in place, the guard's selects (new or old params) are dearer
    (``python benchmarks/donation.py``: a guarded LeNet-size step 0.91x
    donated against 0.98x undonated). The start and finish calls (two
    copies of the state) cost ~2 % of the step at M=16 and 64 (timed per call;
    issue 8's note).
    """
    carried, data, shared = self._begin(state, batch)
    # 'auto': one member per call (a vmapped convolution is a grouped one, slower)
    start, part, finish = self._host_fns(1 if self.chunk == "auto" else int(self.chunk))
    key, pieces, rests = start(state.key, carried, data)
    if donate:
      _release(carried, pieces)
    outs = []
    for i, rest in enumerate(rests):
      outs.append(part(pieces[i], rest, shared))
      pieces[i] = None  # the chunk's old buffers are freed as the loop goes
    return self._end(state, key, *finish(outs, state.step))

  def _host_fns(self, chunk: int):
    """``(start, part, finish)`` of the host layout, jitted once per chunk size."""
    fns = self._host_parts.get(chunk)
    if fns is not None:
      return fns
    size = self.size
    bounds = [(s, min(s + chunk, size)) for s in range(0, size, chunk)]
    split = lambda tree: [jax.tree.map(lambda a, s=s, e=e: a[s:e], tree) for s, e in bounds]

    def start(key, carried, data):
      key, sub = jax.random.split(key)
      keys = jax.random.split(sub, size)  # as Ensemble.apply: member m gets keys[m]
      return key, split(carried), split((keys, data))

    def part(piece, rest, shared):
      n = jax.tree_util.tree_leaves(rest[0])[0].shape[0]
      return _run_chunk(self.compute, self.update, piece, rest, shared, 0, n,
                        looping=False)

    def finish(outs, step):
      carried, aux = jax.tree.map(lambda *a: jnp.concatenate(a), *outs)
      return carried, aux, step + 1, jnp.sum(aux[0])

    fns = (jax.jit(start), jax.jit(part), jax.jit(finish))
    self._host_parts[chunk] = fns
    return fns

  def jitted(self, donate: bool = True):
    """``step(state, batch)``: the host layout for 2+ members with convolutions, else jit(pure).

    One member with convolutions runs :meth:`pure` without donating the state:
    guarded and written in place, that program is slower, and MLP programs
    faster (``python benchmarks/donation.py`` on the project's 2-core CPU,
    against a plain undonated step: LeNet-size 1.00x undonated, 0.92x
    donated; MNIST MLP 0.87x and 0.89x; digits MLP 0.92x and 0.98x).
    """
    pure = jax.jit(self.pure, donate_argnums=(0,) if donate else ())
    pure_kept = jax.jit(self.pure) if donate else pure

    def step(state, batch):
      if self._mode is None:
        conv = uses_convolution(self.ensemble, state.params["members"], state.state,
                                batch["x"][0] if self.per_member else batch["x"])
        self._mode = "host" if conv and self.size > 1 else "pure"
        self._conv = conv
      if self._mode == "host":
        return self.host(state, batch, donate)
      return (pure_kept if self._conv else pure)(state, batch)

    step.lower = pure.lower  # the single-program layout, for inspection
    return step


def _release(tree, keep):
  """Deletes the device buffers of ``tree`` (donated by the caller) that ``keep`` does not hold.

  The host layout's start call changes the buffers' shapes (it splits the
  stacked state), so XLA cannot reuse donated inputs for its outputs, and
  jax then keeps them alive; deleting them frees the memory as donation would.
  """
  kept = {id(a) for a in jax.tree_util.tree_leaves(keep)}
  for a in jax.tree_util.tree_leaves(tree):
    if isinstance(a, jax.Array) and id(a) not in kept and not a.is_deleted():
      a.delete()


def make_chunked_step(ensemble: Ensemble, member_tx: optax.GradientTransformation, *,
                      loss: Callable, per_member: bool, guard: bool,
                      guard_ok: Optional[Callable] = None,
                      chunk: Any = "auto", check: Optional[Callable] = None
                      ) -> Optional[ChunkedStep]:
  """The independent-regime step, chunk of members by chunk of members.

  Args:
    ensemble: a homogeneous ensemble from :func:`~fusionjax.ensemble.from_fn`.
    member_tx: the single-member transform exactly as ``per_member`` applies
      it (``skip_nonfinite(tx)`` when guarded), so the state is the same.
    loss: ``(outputs [B, C], y [B], mask) -> scalar``.
    per_member: batches are ``[M, B, ...]``.
    guard: keep the params and BatchNorm statistics of a member whose loss or
      update is not finite (as the vmapped step does).
    guard_ok: with ``guard``, the verdict ``state -> ok`` of the guarded
      ``member_tx`` (``skip_nonfinite``, which keeps its own state).
    chunk: members per chunk (``int``), or ``'auto'`` (:func:`auto_chunk`).
    check: ``(x, y) -> None`` shape check run at trace time.

  Returns:
    A :class:`ChunkedStep`, or ``None`` when the ensemble is not a plain
    ``from_fn`` ensemble.
  """
  if guard and guard_ok is None:
    raise ValueError("make_chunked_step(guard=True) needs guard_ok, the verdict of the "
                     "guarded member_tx (e.g. lambda s: s.ok for skip_nonfinite).")
  if member_fn(ensemble) is None:
    return None
  return ChunkedStep(ensemble, member_tx, loss=loss, per_member=per_member, guard=guard,
                     guard_ok=guard_ok, chunk=chunk, check=check)


def make_chunked_predict(ensemble: Ensemble, fusion=None, chunk: Any = "auto"
                         ) -> Optional[Callable]:
  """``predict(state, x) -> (outputs [M, B, C], fused or None)`` over chunks of members.

  Returns ``None`` when the ensemble is not a plain ``from_fn`` ensemble.
  """
  apply_one = member_fn(ensemble)
  if apply_one is None:
    return None
  size = ensemble.size

  def predict(state, x):
    check_stacked(state.params["members"], size, "params")
    _check_batch(x, size, False)
    if chunk != "auto":
      c = int(chunk)
    elif uses_convolution(ensemble, state.params["members"], state.state, x):
      c = 1  # a vmapped convolution is a grouped one, slower than one by one
    else:
      c = auto_chunk(ensemble, state.params["members"], opt_slots=0)
    compute = lambda carried, rest, xx: apply_one(
        {"params": rest[0], "state": rest[1]}, xx, None, False)[0]
    update = lambda carried, out, looping: ((), out)
    _, out = _over_chunks(compute, update, (),
                          (state.params["members"], state.state), x, size, c)
    fused = None if fusion is None else fusion.apply(state.params["fusion"], out, x=x)
    return out, fused

  return predict
