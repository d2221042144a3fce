// model_format.h — the one specification of a spad model file (spad.export, spad_model_save)
// and its one reader. Both loaders use it: the C API (csrc/capi/model_c.cpp) turns the
// records into layers, Python (spad/model_io.py, through spad._core._parse_model) into
// nn modules. So a file is valid for one if and only if it is valid for the other, and
// tests/data/model_vectors.txt holds the test vectors both are run against.
//
// File format, version 1; every integer a u32 and every float an IEEE-754 f32, all
// little-endian:
//
//   magic     8 bytes  "SPADMODL"
//   version   u32      1
//   n_layers  u32
//   in_ndim   u32      rank of one example (0 = not recorded, at most 3), then in_ndim dims
//   n_layers records, each:
//     kind      u32    1 Linear, 2 Conv2d, 3 MaxPool2d, 4 AvgPool2d, 5 ReLU, 6 Tanh,
//                      7 Sigmoid, 8 Flatten
//     n_args    u32    then n_args x u32: Linear none; Conv2d [stride, padding]; pools [k]
//     n_tensors u32    then per tensor: ndim u32 (1 to 4), ndim x u32 dims, prod(dims) x f32
//                      Linear: weight (in, out) [, bias (out,)]
//                      Conv2d: weight (C_out, C_in, k, k) [, bias (C_out,)]
//
// Note [Valid records]
//   Every dimension (tensor or input shape) is in 1..kMaxDim; a Linear has no arguments,
//   a 2-d weight and an optional (out,) bias; a Conv2d has [stride >= 1, 0 <= padding < k],
//   a square (C_out, C_in, k, k) weight and an optional (C_out,) bias; a pool has one
//   argument 1 <= k <= kMaxPool and no tensors; activations and Flatten have neither.
//   Every length is checked against the bytes left before it is used (a product of dims
//   cannot wrap: each partial product is compared with the rest of the file), so a
//   truncated, corrupt or hostile file is a ValueError naming the byte offset, never a
//   wild read or a huge allocation, and the reader never reads past the buffer it got.
#pragma once
#include "tensor.h"

namespace spad {
namespace model_file {

enum Kind : uint32_t { LINEAR = 1, CONV2D, MAXPOOL, AVGPOOL, RELU, TANH, SIGMOID, FLATTEN, KIND_END };

constexpr char kMagic[8] = {'S', 'P', 'A', 'D', 'M', 'O', 'D', 'L'};
constexpr uint32_t kVersion = 1;
constexpr uint32_t kMaxDim = 1u << 24;   // any one dimension
constexpr uint32_t kMaxPool = 16;        // max_pool2d keeps the argmax in one byte
constexpr uint32_t kMaxLayers = 1u << 16;
// What a loader reads from a path before giving up (a device, a pipe, /dev/zero).
constexpr size_t kMaxFileBytes = size_t(1) << 30;

struct TensorRecord {
    Shape shape;
    size_t offset = 0;  // of the first f32 in the buffer
};

struct Record {
    uint32_t kind = 0;
    std::vector<uint32_t> args;
    std::vector<TensorRecord> tensors;
};

struct File {
    Shape in_shape;  // one example; empty = not recorded
    std::vector<Record> records;
};

// Parses and validates a whole file held in memory. `who` starts every error message
// ("spad_model_load", "load_model"). Throws ValueError.
File parse(const unsigned char *data, size_t n, const char *who);

// The checks of Note [Valid records] for one record (parse() calls it).
void check_record(const Record &r, size_t index, const char *who);

// The f32 values of `t` (little-endian in the buffer) into dst (numel floats).
void read_floats(const unsigned char *data, const TensorRecord &t, float *dst);

}  // namespace model_file
}  // namespace spad
