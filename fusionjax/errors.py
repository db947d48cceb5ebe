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
  """A cascade threshold outside ``[0, 1]``.

  Fix: confidences are probabilities (or margins of probabilities), so use
  thresholds in ``[0, 1]``.
  """


class StageClassesError(FusionJaxError):
  """Cascade stages (or fused branches) disagree on the number of classes.

  Fix: every stage must output the same ``C``.
  """


class UnknownMemberError(FusionJaxError):
  """``select`` of a group name or member index the ensemble does not have.

  Fix: use one of the names or indices listed in the message.
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
