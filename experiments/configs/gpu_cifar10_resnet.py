"""GPU: Figure 1 on CIFAR-10 with ResNet-20 members (fusionjax.models.ResNet), M = 1..8.

Needs a GPU and CIFAR-10 prepared for random access by tfds in the data dir
(``tfds build cifar10 --file_format=array_record --data_dir DIR`` where
TensorFlow is installed); it reads it with ``fj.data.load('cifar10', DIR)``.
No augmentation (the driver has none), SGD with Nesterov momentum, cosine decay.
Command (``run.py`` uses whatever platform JAX picks; it forces none):

    python experiments/run.py --config experiments/configs/gpu_cifar10_resnet.py \
        --data_dir DIR --publish

Runtime: not measured (not run in this session: no GPU, no prepared CIFAR-10); no runtime
or numbers are claimed for it. Smoke mode (`:smoke`, digits, runs on CPU): a few seconds.
"""
import ml_collections


def get_config(arg=None):
  cfg = ml_collections.ConfigDict(dict(
      task="ensemble_size",
      gpu=True,
      dataset="cifar10",
      model=dict(name="resnet", stage_sizes=(3, 3, 3), width=16),
      max_members=8,
      seeds=(0,),
      random_subsets=5,
      epochs=60,
      batch_size=128,
      optimizer="sgd",
      lr=0.1,
      weight_decay=5e-4,
  ))
  if arg == "smoke":
    cfg.update(dataset="digits", model=dict(name="resnet", stage_sizes=(1,), width=2),
               max_members=2, seeds=(0,), random_subsets=1, epochs=1, max_steps=2,
               batch_size=32, weight_decay=0.0)
  return cfg
