"""Writes digits.bin, the bundled 8x8 digits (spad/data/digits.npz) in the byte format
train_digits.c reads, so the example needs neither Python nor numpy on the device:

    magic   8 bytes "SPADDIGI"
    n       u32 little-endian (1797), features u32 (64)
    pixels  n x features bytes, values 0..16
    labels  n bytes, 0..9

    python examples/embedded/make_digits.py [out_path]
"""
import os
import struct
import sys

import numpy as np

here = os.path.dirname(os.path.abspath(__file__))
src = os.path.join(here, "..", "..", "spad", "data", "digits.npz")
out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "digits.bin")
with np.load(src) as d:
    images, labels = d["images"].astype(np.uint8), d["labels"].astype(np.uint8)
n = images.shape[0]
with open(out, "wb") as f:
    f.write(b"SPADDIGI" + struct.pack("<2I", n, 64) + images.reshape(n, 64).tobytes() + labels.tobytes())
print(f"wrote {out}: {n} digits")
