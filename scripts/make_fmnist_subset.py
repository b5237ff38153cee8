#!/usr/bin/env python
"""Write the Fashion-MNIST subset shipped in ``src/vitq/assets/fmnist_subset``.

* ``calib-*``: 1,024 train images picked at random (numpy ``default_rng(0)``, indices sorted), and
  ``calib-indices-idx1-ubyte.gz`` with their int32 indices into the train split;
* ``test-*``: the first 2,000 test images.

Deterministic: re-running it on the same source data writes byte-identical files.
Needs the Debian package ``dataset-fashion-mnist`` (or ``--data-root`` pointing at its IDX files).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import numpy as np

from vitq.data.fashion_mnist import SUBSET_DIR, load_fashion_mnist
from vitq.data.idx import write_idx

N_CALIB = 1024
N_TEST = 2000
SEED = 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--data-root", type=Path, default=None, help="Fashion-MNIST IDX directory (default: Debian path)"
    )
    p.add_argument("--out", type=Path, default=SUBSET_DIR)
    args = p.parse_args(argv)

    train_x, train_y = load_fashion_mnist("train", args.data_root)
    test_x, test_y = load_fashion_mnist("test", args.data_root)
    rng = np.random.default_rng(SEED)
    calib_idx = np.sort(rng.choice(train_x.shape[0], size=N_CALIB, replace=False)).astype(np.int32)

    files = {
        "calib-images-idx3-ubyte.gz": train_x.numpy()[calib_idx, 0],
        "calib-labels-idx1-ubyte.gz": train_y.numpy()[calib_idx].astype(np.uint8),
        "calib-indices-idx1-ubyte.gz": calib_idx,
        "test-images-idx3-ubyte.gz": test_x.numpy()[:N_TEST, 0],
        "test-labels-idx1-ubyte.gz": test_y.numpy()[:N_TEST].astype(np.uint8),
    }
    for name, arr in files.items():
        path = args.out / name
        write_idx(path, arr)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
        print(f"{path}  {arr.dtype} {arr.shape}  sha256:{digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
