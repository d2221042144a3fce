"""Test vectors for model files, shared by both readers (spad.load_model and the C API's
spad_model_load_buffer): tests/data/model_vectors.txt is generated from this file
(``python tests/model_vectors.py`` rewrites it; tests/test_model_files.py checks that it
is current) and read by tests/test_model_files.py and tests/cpp/test_model_fuzz.cpp.

One vector per line, tab-separated: name, expected outcome ("ok" or "error"), a fragment
the error message must contain (empty for ok), the file's bytes in hex. The rules are
Note [Valid records] in csrc/core/model_format.h.
"""
from __future__ import annotations

import os
import struct
from typing import List, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
PATH = os.path.join(HERE, "data", "model_vectors.txt")

LINEAR, CONV2D, MAXPOOL, AVGPOOL, RELU, TANH, SIGMOID, FLATTEN = range(1, 9)


def u32(*v: int) -> bytes:
    return struct.pack(f"<{len(v)}I", *v)


def tensor(*shape: int, fill: float = 0.25) -> bytes:
    n = 1
    for d in shape:
        n *= d
    return u32(len(shape), *shape) + struct.pack(f"<{n}f", *([fill] * n))


def record(kind: int, args=(), tensors=()) -> bytes:
    return u32(kind, len(args), *args, len(tensors)) + b"".join(tensors)


def model(records, in_shape=(), version: int = 1, n_layers=None) -> bytes:
    n = len(records) if n_layers is None else n_layers
    return b"SPADMODL" + u32(version, n, len(in_shape), *in_shape) + b"".join(records)


MLP = [record(LINEAR, (), [tensor(2, 3), tensor(3)]), record(RELU), record(LINEAR, (), [tensor(3, 1)])]
CONV = [record(CONV2D, (1, 1), [tensor(2, 1, 3, 3), tensor(2)]), record(MAXPOOL, (2,)), record(TANH),
        record(AVGPOOL, (1,)), record(FLATTEN), record(LINEAR, (), [tensor(8, 2)]), record(SIGMOID)]


def vectors() -> List[Tuple[str, str, str, bytes]]:
    ok_mlp = model(MLP, (2,))
    v = [
        ("ok_mlp", "ok", "", ok_mlp),
        ("ok_conv", "ok", "", model(CONV, (1, 4, 4))),
        ("ok_no_input_shape", "ok", "", model(MLP)),
        ("ok_empty_model", "ok", "", model([])),
        ("empty_file", "error", "truncated", b""),
        ("short_magic", "error", "truncated", b"SPAD"),
        ("bad_magic", "error", "not a spad model", b"SPADMODX" + ok_mlp[8:]),
        ("zeros", "error", "not a spad model", bytes(64)),
        ("version_2", "error", "version 2", model(MLP, (2,), version=2)),
        ("layer_count_huge", "error", "layer count", model(MLP, (2,), n_layers=0xFFFFFFFF)),
        ("layer_count_short", "error", "truncated", model(MLP, (2,), n_layers=4)),
        ("input_rank_4", "error", "input rank", model(MLP, (2, 2, 2, 2))),
        ("input_dim_0", "error", "out of range", model(MLP, (0,))),
        ("input_dim_huge", "error", "out of range", model(MLP, (0xFFFFFFFF,))),
        ("unknown_kind", "error", "unknown layer kind", model([record(9)])),
        ("kind_0", "error", "unknown layer kind", model([record(0)])),
        ("linear_with_arg", "error", "takes no arguments", model([record(LINEAR, (1,), [tensor(2, 3)])])),
        ("linear_no_weight", "error", "Linear needs", model([record(LINEAR)])),
        ("linear_1d_weight", "error", "Linear needs", model([record(LINEAR, (), [tensor(3)])])),
        ("linear_zero_in", "error", "out of range", model([record(LINEAR, (), [u32(2, 0, 3) + bytes(12)])])),
        ("linear_zero_out", "error", "out of range", model([record(LINEAR, (), [u32(2, 3, 0) + bytes(12)])])),
        ("linear_bad_bias", "error", "bias must be", model([record(LINEAR, (), [tensor(2, 3), tensor(2)])])),
        ("conv_stride_0", "error", "stride must be >= 1", model([record(CONV2D, (0, 0), [tensor(1, 1, 3, 3)])])),
        ("conv_padding_huge", "error", "padding must be in",
         model([record(CONV2D, (1, 2**31 - 1), [tensor(1, 1, 3, 3)])])),
        ("conv_padding_k", "error", "padding must be in", model([record(CONV2D, (1, 3), [tensor(1, 1, 3, 3)])])),
        ("conv_one_arg", "error", "two arguments", model([record(CONV2D, (1,), [tensor(1, 1, 3, 3)])])),
        ("conv_not_square", "error", "square", model([record(CONV2D, (1, 0), [tensor(1, 1, 3, 2)])])),
        ("conv_3d_weight", "error", "square", model([record(CONV2D, (1, 0), [tensor(1, 3, 3)])])),
        ("conv_bad_bias", "error", "bias must be",
         model([record(CONV2D, (1, 0), [tensor(2, 1, 3, 3), tensor(3)])])),
        ("pool_k_0", "error", "pooling size k", model([record(MAXPOOL, (0,))])),
        ("pool_k_huge", "error", "pooling size k", model([record(AVGPOOL, (0xFFFFFFFF,))])),
        ("pool_no_arg", "error", "pooling needs", model([record(MAXPOOL)])),
        ("pool_with_tensor", "error", "pooling needs", model([record(MAXPOOL, (2,), [tensor(1)])])),
        ("relu_with_arg", "error", "take no arguments", model([record(RELU, (1,))])),
        ("flatten_with_tensor", "error", "take no arguments", model([record(FLATTEN, (), [tensor(1)])])),
        ("tensor_rank_0", "error", "tensor rank 0", model([record(LINEAR, (), [u32(0)])])),
        ("tensor_rank_5", "error", "tensor rank 5", model([record(LINEAR, (), [u32(5, 1, 1, 1, 1, 1)])])),
        ("tensor_dim_huge", "error", "out of range", model([record(LINEAR, (), [u32(2, 0xFFFFFFFF, 2)])])),
        ("tensor_product_huge", "error", "larger than the rest of the file",
         model([record(LINEAR, (), [u32(4, 2**24, 2**24, 2**24, 2**24)])])),
        ("tensor_data_short", "error", "truncated", model([record(LINEAR, (), [tensor(2, 3)[:-4]])])),
        ("arg_count_huge", "error", "argument count", model([u32(LINEAR, 0xFFFFFFFF)])),
        ("arg_count_9", "error", "at most 8", model([u32(LINEAR, 9, *range(9), 0)])),
        ("tensor_count_3", "error", "at most 2",
         model([u32(LINEAR, 0, 3) + tensor(2, 3) + tensor(3) + tensor(3)])),
        ("tensor_count_huge", "error", "tensor count", model([u32(LINEAR, 0, 0xFFFFFFFF)])),
        ("trailing_byte", "error", "unexpected bytes", ok_mlp + b"\0"),
        ("truncated_tail", "error", "truncated", ok_mlp[:-1]),
    ]
    return v


def render() -> str:
    return "".join(f"{name}\t{expect}\t{frag}\t{data.hex()}\n" for name, expect, frag, data in vectors())


def read(path: str = PATH) -> List[Tuple[str, str, str, bytes]]:
    out = []
    with open(path) as f:
        for line in f:
            name, expect, frag, hexdata = line.rstrip("\n").split("\t")
            out.append((name, expect, frag, bytes.fromhex(hexdata)))
    return out


if __name__ == "__main__":
    os.makedirs(os.path.dirname(PATH), exist_ok=True)
    with open(PATH, "w") as f:
        f.write(render())
    print(f"wrote {len(vectors())} vectors to {PATH}")
