"""Errors people can act on.

Every error fusionjax raises on bad input is a class here. Its docstring explains
when it happens and how to fix it; its message names the offending shapes or
values and the fix. All derive from :class:`FusionJaxError`, which is a
``ValueError`` so that generic handlers keep working.
"""


class FusionJaxError(ValueError):
  """Base class of every documented fusionjax error."""


# --------------------------------------------------------------------------
# ensemble engine
# --------------------------------------------------------------------------
class EnsembleSizeError(FusionJaxError):
  """An ensemble (or a group of one) was asked for with fewer than 1 member.

  Fix: pass ``size >= 1``.
  """


class GroupShapeError(FusionJaxError):
  """Groups of a heterogeneous ensemble produce outputs of different shapes.

  Member outputs are concatenated on the member axis, so every group must
  return ``[M_g, B, C]`` with the same ``B`` and ``C``. Fix: give every group's
  module the same number of outputs (e.g. ``num_classes=10``).
  """


class BatchShapeError(FusionJaxError):
  """Arrays of one batch disagree on their leading (batch or member) dims.

  Fix: make ``x`` and ``y`` (and any per-member batch) share the leading dims
  named in the message; per-member batches are ``[M, B, ...]``.
  """


class InputRankError(FusionJaxError):
  """A model was given an input of the wrong rank.

  ``MLP`` flattens any ``[B, ...]``; ``CNN`` and ``ResNet`` read images
  ``[B, H, W, C]`` (``CNN`` also ``[B, H, W]``); ``CNN1D`` reads signals
  ``[B, L, C]`` or ``[B, L]``; ``RowGRU``/``RowLSTM`` read sequences
  ``[B, T, D]`` or images ``[B, H, W, C]`` (one row a step). The message
  names the shape given and the fix.
  """


class MemberAxisError(FusionJaxError):
  """A params tree without the member axis was passed where a stacked one is expected.

  Every leaf of stacked params is ``[M, ...]``. Fix: build the params with the
  ensemble's ``init`` (or stack single-member params with
  ``fusionjax.ensemble.stack``).
  """


class MeshError(FusionJaxError):
  """A device mesh that cannot hold the ensemble or the batch.

  The ``'member'`` axis of the mesh must divide every group's member count
  and the ``'data'`` axis must divide the batch size. Fix: choose a mesh
  shape whose axes divide those numbers (the message lists valid ones).
  """


class LayoutError(FusionJaxError):
  """A layout that cannot run this ensemble, regime, mesh or platform, or a
  question that a layout cannot answer.

  ``'vmap'`` runs everywhere; ``'scan'`` needs members built from one
  single-member function (``from_fn``, ``from_linen``, ``from_nnx``, or
  groups of them), regime ``'independent'`` and no mesh; ``'loop'`` also needs
  one homogeneous group and the CPU. The ``'loop'`` step is a host loop of
  jitted calls, so it has no single program to ``trace`` or ``lower``. Fix:
  pass ``layout='auto'`` or one the message lists.
  """


class LayoutMismatchError(FusionJaxError):
  """A checkpoint written under one layout is resumed under another.

  The layouts compute the same maths, but their programs round differently, so
  a resumed run would not equal the uninterrupted one. Fix: resume with the
  layout the message names (``make_trainer(..., layout=...)`` or ``fit(...,
  layout=...)``), or start a fresh run in another ``ckpt_dir``.
  """


class SharedWeightsError(FusionJaxError):
  """A per-member operation was asked of an ensemble whose members share weights.

  BatchEnsemble, Packed-Ensembles and MC-dropout
  (``fusionjax.ensemble.batch_ensemble``, ``packed``, ``mc_dropout``) are one
  network whose outputs are ``[M, B, C]``; their params are not stacked per
  member, so nothing can act on one member alone: bagging
  (``per_member=True``, ``fit(bagging=True)``), freezing a member
  (``freeze_nonfinite=True``, ``fit(on_nonfinite='freeze')``), a per-member
  optimizer (``Ensemble.member_map``, ``fusionjax.train.per_member``), a
  ``'member'`` mesh axis, or the member-mapped layouts (``'vmap'``, ``'scan'``,
  ``'loop'``). The message names the ensemble kind and the operation. Fix: train
  them with ``layout='auto'`` (or ``'native'``): one network, one optimizer,
  every member on the same batch, and the guard skipping the whole update on a
  non-finite loss or gradient (``on_nonfinite='stop'``); or use a deep ensemble
  (``from_linen``) where per-member training is the point.
  """


class EfficientEnsembleConfigError(FusionJaxError):
  """An efficient ensemble's options do not fit its module.

  For example Packed-Ensembles of a module other than ``fusionjax.models.MLP``,
  ``CNN`` or ``CNN1D`` (or ``alpha <= 0``, ``gamma < 1``), a negative
  BatchEnsemble ``fast_std``, an MC-dropout ``rate`` for a module without a
  ``dropout`` attribute, a module without a ``train`` flag or with BatchNorm
  statistics under MC-dropout, or ``train_samples`` other than 1 and
  ``members``. The message names the value and the fix.
  """


class NonFiniteError(FusionJaxError):
  """A member's loss or gradients became NaN or Inf.

  The step never applies a non-finite update, so the state (and the last
  checkpoint) is the last good one. Fix: lower the learning rate, add
  gradient clipping, or train with ``on_nonfinite='freeze'`` to freeze that
  member and let the others carry on.
  """


class CheckpointDirError(FusionJaxError):
  """The checkpoint directory cannot be written.

  Reported before training starts. Fix: choose a writable directory with
  free space.
  """


class NoUsableCheckpointError(FusionJaxError):
  """Checkpoints exist in ``ckpt_dir`` but none of them restores.

  Each damaged checkpoint (unreadable, or its data differ from the checksums
  saved with it) was moved to ``ckpt_dir/skipped/<step>-<reason>``; the
  message lists them. Fix: start a fresh run in another ``ckpt_dir``.
  """


class ExistingRunError(FusionJaxError):
  """``fit`` would start a fresh run where another run's checkpoints or log are.

  Starting over there would mix the two runs (an old checkpoint resumed
  later, or a log overwritten). Fix: pass ``resume=True`` to continue the run
  in that folder, or another ``ckpt_dir`` / ``log_path`` for a new run.
  """


class RunConfigMismatchError(FusionJaxError):
  """A checkpoint is resumed with another configuration than the one that wrote it.

  The members, batch size, params shapes, optimizer state, regime, bagging
  or seed differ, so the resumed run would not continue the saved one (e.g.
  another batch size skips part of an epoch). ``epochs`` may grow. Fix: pass
  the saved values the message names, or start a fresh run in another
  ``ckpt_dir``.
  """


# --------------------------------------------------------------------------
# fusion
# --------------------------------------------------------------------------
class MemberOutputsError(FusionJaxError):
  """Member outputs are not ``[M, B, C]`` (or not the shape a fusion expects).

  Fix: pass the stacked outputs of an ensemble, member axis first.
  """


class WeightsError(FusionJaxError):
  """Fusion weights of the wrong length, negative, or all zero.

  Fix: pass one non-negative weight per member with a positive sum.
  """


class ThresholdError(FusionJaxError):
  """A threshold or level outside its range: a cascade threshold outside
  ``[0, 1]``, a ``tpr`` of :func:`~fusionjax.metrics.fpr_at_tpr` or a ``level``
  of :func:`~fusionjax.metrics.interval_coverage` outside ``(0, 1]`` / ``(0, 1)``.

  Fix: confidences, rates and levels are probabilities; use values in that range.
  """


class StageClassesError(FusionJaxError):
  """Cascade stages (or fused branches) disagree on the number of classes.

  Fix: every stage must output the same ``C``.
  """


class UnknownMemberError(FusionJaxError):
  """``select`` of a group name or member index the ensemble does not have.

  Fix: use one of the names or indices listed in the message.
  """


class FusionInputError(FusionJaxError):
  """A fusion that reads the input ``x`` got none, or one of the wrong shape.

  Gating and stacking with ``passthrough=True`` read ``x``; its batch size must
  match the member outputs' and its flattened feature size the one seen at
  ``init``.

  Fix: pass ``x=`` (the input batch ``[B, ...]`` that produced the member
  outputs) to both ``init`` and ``apply``, with the same trailing dims.
  """


class FusionConfigError(FusionJaxError):
  """A fusion factory got a hyper-parameter it cannot use.

  For example an unknown option name, a size or temperature out of range, or
  stage costs of the wrong length.

  Fix: use one of the values the message lists.
  """


# --------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------
class DataNotFoundError(FusionJaxError):
  """A data directory or file is missing.

  Fix: pass ``--data-dir`` (or set ``FUSIONJAX_DATA``) to a folder holding the
  files named in the message.
  """


class CorruptFileError(FusionJaxError):
  """A data file is truncated or corrupt (bad magic, wrong length or dims).

  Fix: fetch the file again; the message says what was expected.
  """


class DataMismatchError(FusionJaxError):
  """Images and labels of one split have different counts.

  Fix: make sure both files belong to the same split.
  """


class LabelError(FusionJaxError):
  """Labels outside ``[0, C)`` or of a non-integer dtype.

  Fix: pass integer class indices in ``[0, num_classes)``.
  """


class EmptySplitError(FusionJaxError):
  """A split, an input or a fold has no examples.

  Fix: check the split name, the fraction or the filter that produced it.
  """


class BatchSizeError(FusionJaxError):
  """A batch size below 1 for the batch iterator.

  Fix: pass ``batch_size >= 1`` (a multiple of the mesh's ``'data'`` axis
  when sharding).
  """


# --------------------------------------------------------------------------
# metrics and model selection
# --------------------------------------------------------------------------
class ProbabilitiesError(FusionJaxError):
  """Probabilities that do not sum to 1 where probabilities are expected.

  Fix: pass ``jax.nn.softmax(logits)`` (or log-probabilities to the log-space
  variant).
  """


class FoldsError(FusionJaxError):
  """k-fold cross-validation with ``k < 2`` or more folds than a class has samples.

  Fix: use ``2 <= k <= min class count``.
  """


class BinsError(FusionJaxError):
  """Calibration error with fewer than one bin.

  Fix: pass ``num_bins >= 1`` (15 is the usual choice).
  """


class UnknownMetricError(FusionJaxError):
  """A metric or combination rule named by a string that fusionjax does not know.

  Raised by ``fusionjax.select.greedy_selection(metric=...)`` and
  ``fusionjax.metrics.nll_decomposition(combine=...)``. Fix: use one of the names
  listed in the message.
  """


class SelectionError(FusionJaxError):
  """Model selection or a hyper-parameter search asked for something impossible.

  For example ``max_size < 1``, an ``init_size`` larger than the number of
  members or than ``max_size``, a grid with no axes, or an objective that does
  not return one scalar per candidate. Fix: the message names the argument and
  the values it accepts.
  """


# --------------------------------------------------------------------------
# integration
# --------------------------------------------------------------------------
class IntegrationConfigError(FusionJaxError):
  """A training-time integration method got a hyper-parameter out of range.

  For example a distillation temperature ``<= 0``, a boosting shrinkage
  outside ``(0, 1]``, ``patience < 1``, a learning rate ``<= 0`` or a number of
  cycles below 1 (``fusionjax.integrate``). Fix: the message names the
  argument, its value and the range it accepts.
  """


class SoupError(FusionJaxError):
  """Params trees that cannot be averaged: different structures or leaf shapes.

  Weight-space fusion (soups, SWA, interpolation) averages leaf by leaf, so
  every ingredient must come from the same architecture. Fix: pass members of
  one model (e.g. the stacked params of one ensemble); the message names the
  first leaf path and the shapes that differ.
  """


class AlignmentError(FusionJaxError):
  """Permutation alignment got params that are not a flax ``MLP``'s.

  Weight matching reads ``{'Dense_0': {'kernel' [D, H0], 'bias' [H0]}, ...,
  'Dense_L': ...}`` whose widths chain (``fusionjax.models.MLP`` params,
  unstacked). Fix: pass single-member MLP params of the same widths; the
  message names the key or shape that does not fit.
  """


class NonFiniteInputError(FusionJaxError):
  """An input array (training or evaluation data, or member outputs) holds NaN or Inf.

  Checked once on the host before training or fitting starts; the message names
  the rows. Fix: drop or impute those rows.
  """


class TrainConfigError(FusionJaxError):
  """A training argument out of its range (e.g. ``epochs < 0``), or an evaluation set
  that does not fit the training data (other example shapes, or empty).

  The message names the value and the fix.
  """


# --------------------------------------------------------------------------
# data (prepared data sets)
# --------------------------------------------------------------------------
class UnsafeFeatureError(FusionJaxError):
  """A prepared data set names a feature class that fusionjax does not read.

  tfds rebuilds a prepared folder's features from ``features.json`` (or the
  ``features`` of ``dataset_info.json``) and imports any module a
  ``pythonClassName`` there names, so a data folder could run code. fusionjax
  reads these files itself and accepts only the tfds classes listed in
  ``fusionjax.data._prepared.FEATURE_CLASSES`` (FeaturesDict, Tensor, Scalar,
  ClassLabel, Image, Text); nothing a data folder names is imported. The
  message names the class, the feature and the file. Fix: prepare the data set
  again with those features, or, if you trust the folder, read it with tfds
  yourself (``tfds.data_source``) and pass the arrays to
  ``fusionjax.data.from_arrays``.
  """


class CorruptPreparedDataError(CorruptFileError):
  """A prepared data set (its array_record files or metadata) is damaged.

  For example a record file truncated by a full disk or a copy that stopped
  half-way. The message names the prepared folder. Fix: delete that folder;
  preparing again rebuilds it (``fusionjax.data.load`` and ``prepare_idx`` do
  so for MNIST, Fashion-MNIST and KMNIST; other data sets with ``tfds build``).
  """


# --------------------------------------------------------------------------
# data (shift and out-of-distribution sets)
# --------------------------------------------------------------------------
class UnknownCorruptionError(FusionJaxError):
  """``fusionjax.data.corrupt`` was given a corruption name it does not know.

  The message names the name given and lists the known ones
  (``fusionjax.data.CORRUPTIONS``). Fix: pass one of those names.
  """


class ShiftConfigError(FusionJaxError):
  """An argument of a shift or out-of-distribution helper is out of range.

  For example a severity outside 1..5, images that are not ``[N, H, W]`` or
  ``[N, H, W, 1]``, pixel values outside ``[0, 1]`` (corrupt raw images, then
  normalise), an unknown noise kind, or classes that leave one side of a
  held-out split empty. The message names the value and the fix.
  """
