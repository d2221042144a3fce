// plan_file.h — saving and loading a recorded step (docs/plan_format.md).
#pragma once
#include <string>
#include <vector>

#include "program.h"

namespace spad {
namespace replay {

// The program with its captured tensors (parameters, optimizer state, constants) and the
// trace its arena plan is solved from. Steps recorded under a sampling policy are refused.
std::vector<unsigned char> serialize(const Program &P);
// Validates everything it reads against the buffer size and the record conventions of exec().
std::shared_ptr<Program> deserialize(const unsigned char *data, size_t n, const char *path);
void save_program(const Program &P, const std::string &path);
std::shared_ptr<Program> load_program(const std::string &path);

}  // namespace replay
}  // namespace spad
