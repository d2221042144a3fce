// plan_file.h — saving and loading a recorded step (docs/plan_format.md).
#pragma once
#include <functional>
#include <string>
#include <vector>

#include "program.h"

namespace spad {
namespace replay {

// The program with its captured tensors (parameters, optimizer state, constants) and the
// trace its arena plan is solved from, and the sampling policies the step switches to, with
// their state (format version 2).
std::vector<unsigned char> serialize(const Program &P);
// Validates everything it reads against the buffer size and the record conventions of exec().
std::shared_ptr<Program> deserialize(const unsigned char *data, size_t n, const char *path);
void save_program(const Program &P, const std::string &path);
std::shared_ptr<Program> load_program(const std::string &path);
// Moves every captured tensor (`move` may give it a new Storage, as the C API does to put it
// in a context's persistent arena) and the policies' per-site tensors, keeping the policies'
// per-weight state (keyed by the weight's Storage) attached to the moved weights.
void move_program_state(Program &P, const std::function<void(const Tensor &)> &move);

}  // namespace replay
}  // namespace spad
