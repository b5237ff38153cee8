"""One way to name image data on the command line: a folder path, or a built-in labelled set.

- ``DIR``: a flat folder of images (unlabelled) or an ImageFolder (labels from class sub-folders).
- ``fmnist-subset:calib`` / ``fmnist-subset:test``: the small Fashion-MNIST subset shipped with vitq
  (1,024 train images for calibration, the first 2,000 test images).
- ``fmnist:train`` / ``fmnist:test``: the full Fashion-MNIST from the Debian package dataset-fashion-mnist.
- ``hf:NAME_OR_DIR[:SPLIT]``: a Hugging Face ``datasets`` data set from the hub or a ``save_to_disk`` folder
  (needs ``vitq[hf-datasets]``; see :mod:`vitq.data.hf_datasets`).
- ``coco:DIR`` / ``coco:IMAGE_DIR:ANNOTATIONS.json`` / ``detr-synth:val|test``: detection images with COCO
  annotations (see :mod:`vitq.data.coco`).
- ``foolbox:imagenet`` / ``foolbox:cifar10`` (also ``cifar100``, ``mnist``, ``fashionMNIST``): the 20 labelled
  samples of the ``foolbox==3.3.4`` wheel, for smoke tests (see :mod:`vitq.data.foolbox_samples`).
"""

from __future__ import annotations

from vitq.data.checks import BUILTIN_PREFIXES, check_source
from vitq.data.imageset import ImageSet, subsample
from vitq.data.transforms import DataConfig, normalize_uint8
from vitq.errors import CalibrationDataError

__all__ = ["BUILTIN_PREFIXES", "ImageSet", "check_source", "load_images"]


def load_images(source: str, cfg: DataConfig, *, num: int | None = None, seed: int = 0, shard: bool = False
                ) -> ImageSet:
    """Load ``num`` images (seeded random sample; all when ``None``) from ``source``, preprocessed by ``cfg``.

    ``shard=True``: in a data-parallel run (``torchrun``), only this rank's contiguous block of the sample
    (:func:`vitq.distributed.shard_range`; a folder decodes only those files), with ``total`` the size of the
    whole sample; the same as ``shard=False`` in one process.

    A detection source (``coco:``, ``detr-synth:``) gives a :class:`vitq.data.coco.DetectionSet` (its
    ``images`` may carry a pixel-mask channel; ``labels`` is None, the ground truth is in ``gt``); it is
    not sharded.
    """
    if source.startswith(("coco:", "detr-synth:")):
        from vitq.data.coco import load_coco

        return load_coco(source, cfg, num=num, seed=seed)
    from vitq import distributed

    if shard and distributed.is_distributed():
        def block(n: int) -> range:
            if n < distributed.world_size():
                raise CalibrationDataError(f"{n} images of {source} cannot be split over {distributed.world_size()} "
                                           "ranks: give at least one per rank")
            return distributed.shard_range(n)

        if not source.startswith(("fmnist:", "fmnist-subset:", "hf:", "foolbox:")):
            from vitq.data.folder import load_folder

            total = []
            images, labels, _ = load_folder(source, cfg, num=num, seed=seed,
                                            block=lambda n: total.append(n) or block(n))
            return ImageSet(images, labels, source, total=total[0])
        full = load_images(source, cfg, num=num, seed=seed)  # in memory already (arrays, a dataset, 20 samples)
        r = block(full.images.shape[0])
        return ImageSet(full.images[r.start: r.stop], None if full.labels is None else full.labels[r.start: r.stop],
                        source, total=full.images.shape[0])
    if source.startswith(("fmnist:", "fmnist-subset:")):
        from vitq.data import fashion_mnist as fm

        check_source(source)
        kind, split = source.split(":", 1)
        imgs, labels = fm.load_fmnist_subset(split) if kind == "fmnist-subset" else fm.load_fashion_mnist(split)
        idx = subsample(len(imgs), num, seed, source)
        if idx is not None:
            imgs, labels = imgs[idx], labels[idx]
        return ImageSet(normalize_uint8(imgs, cfg), labels, source)
    if source.startswith("hf:"):
        from vitq.data.hf_datasets import load_hf_dataset

        name, _, split = source[3:].partition(":")
        return load_hf_dataset(name, split or None, cfg, num=num, seed=seed)
    if source.startswith("foolbox:"):
        from vitq.data.foolbox_samples import load_foolbox_samples

        found = load_foolbox_samples(source.split(":", 1)[1], cfg)
        idx = subsample(len(found.images), num, seed, source)
        if idx is not None:
            found = ImageSet(found.images[idx], found.labels[idx], source)
        return found
    from vitq.data.folder import load_folder

    images, labels, _ = load_folder(source, cfg, num=num, seed=seed)
    return ImageSet(images, labels, source)
