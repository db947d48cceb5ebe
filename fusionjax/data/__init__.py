"""Data: random-access sources and a batch iterator for ensembles.

Sources (``len``, ``[indices] -> dict(image, label)``, ``arrays()``):
:func:`load` by name (digits, MNIST, Fashion-MNIST, KMNIST, a prepared tfds
data set), :func:`from_tfds`, :func:`from_arrays`. Iteration: one pipeline on
grain, :func:`pipeline` (numpy batches ``{'x', 'y', 'mask'}``: seeded order
per epoch, pad-with-mask or drop, per-member ``[M, B, ...]`` batches,
prefetch, a checkpointable iterator), and :func:`batches` (one epoch of it on
a device or sharded over the mesh's ``'data'`` axis),
:func:`bootstrap` / :func:`out_of_bag` for bagging, :func:`kfold` for
(stratified) cross-validation, :func:`crop_flip` for augmentation.
"""
from fusionjax.data._augment import crop_flip
from fusionjax.data._bootstrap import bootstrap
from fusionjax.data._bootstrap import out_of_bag
from fusionjax.data._folds import Fold
from fusionjax.data._folds import kfold
from fusionjax.data._idx import parse_idx
from fusionjax.data._idx import read_idx
from fusionjax.data._idx import write_idx
from fusionjax.data._iterator import batches
from fusionjax.data._iterator import epochs
from fusionjax.data._iterator import num_batches
from fusionjax.data._load import from_tfds
from fusionjax.data._pipeline import epoch_order
from fusionjax.data._pipeline import Pipeline
from fusionjax.data._pipeline import pipeline
from fusionjax.data._load import load
from fusionjax.data._load import prepare_idx
from fusionjax.data._load import resolve_data_dir
from fusionjax.data._sources import ArraySource
from fusionjax.data._sources import from_arrays
from fusionjax.data._sources import Normalization
from fusionjax.data._sources import NORMALIZATION
from fusionjax.data._sources import Source
from fusionjax.data._sources import split_validation
from fusionjax.data._sources import Splits
from fusionjax.data._sources import stratified_split
from fusionjax.data._sources import subset
from fusionjax.data._shift import (CORRUPTIONS, corrupt, held_out_classes, noise_images, upscaled_digits)


def __getattr__(name):
  # The tfds builder imports tensorflow_datasets (0.2 s): only on first use.
  if name in ("IDX_DATASETS", "IdxImages"):
    from fusionjax.data import _builder  # pylint: disable=g-import-not-at-top
    return getattr(_builder, name)
  raise AttributeError(f"module 'fusionjax.data' has no attribute {name!r}")
