// tests/unit/test_vectors.h: reading the "name hexvalue" vector files in
// tests/data.
#ifndef KTLS_TESTS_UNIT_TEST_VECTORS_H_
#define KTLS_TESTS_UNIT_TEST_VECTORS_H_

#include <cstdint>
#include <fstream>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace ktls::testing {

inline std::vector<unsigned char> FromHex(const std::string& hex) {
  if (hex.size() % 2 != 0) throw std::invalid_argument("odd-length hex: " + hex);
  std::vector<unsigned char> out;
  for (std::size_t i = 0; i < hex.size(); i += 2) {
    out.push_back(static_cast<unsigned char>(std::stoi(hex.substr(i, 2), nullptr, 16)));
  }
  return out;
}

// VectorBlock: the "name value" lines of one block of a vector file.
using VectorBlock = std::map<std::string, std::string>;

// ReadVectorBlocks splits a vector file into blocks at blank lines,
// skipping '#' comments. A missing file throws, so the test fails loudly.
inline std::vector<VectorBlock> ReadVectorBlocks(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot open test vectors " + path);
  std::vector<VectorBlock> blocks(1);
  std::string line;
  while (std::getline(in, line)) {
    if (!line.empty() && line[0] == '#') continue;
    std::istringstream words(line);
    std::string name, value;
    if (!(words >> name >> value)) {
      if (!blocks.back().empty()) blocks.emplace_back();
      continue;
    }
    blocks.back()[name] = value;
  }
  if (blocks.back().empty()) blocks.pop_back();
  return blocks;
}

}  // namespace ktls::testing

#endif  // KTLS_TESTS_UNIT_TEST_VECTORS_H_
