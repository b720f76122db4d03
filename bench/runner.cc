// bench/runner.cc
#include "runner.h"

#include <cstdio>

namespace ktls::bench {

void RunInterleaved(const std::vector<Variant>& variants, int runs, const std::vector<Comparison*>& comparisons) {
  // Add every case first: adding moves a comparison's cases around.
  std::vector<std::vector<std::size_t>> indices(variants.size());
  for (std::size_t v = 0; v < variants.size(); ++v) {
    for (Comparison* comparison : comparisons) {
      comparison->Add(variants[v].id, variants[v].label);
      indices[v].push_back(comparison->cases.size() - 1);
    }
  }
  std::vector<std::vector<Case*>> cases(variants.size());
  for (std::size_t v = 0; v < variants.size(); ++v) {
    for (std::size_t j = 0; j < comparisons.size(); ++j) cases[v].push_back(&comparisons[j]->cases[indices[v][j]]);
  }
  const auto record = [&](std::size_t v, const RunResult& result, bool warmup) {
    if (!result.unavailable.empty()) {
      for (Case* c : cases[v]) {
        c->unavailable = result.unavailable;
        c->samples.clear();
      }
      return;
    }
    if (result.values.size() != comparisons.size()) {
      throw BenchError(variants[v].id + ": wrong number of values from one run");
    }
    for (std::size_t j = 0; j < comparisons.size(); ++j) {
      cases[v][j]->notes = result.notes;
      if (!warmup) cases[v][j]->samples.push_back(result.values[j]);
    }
  };
  const std::string& what = comparisons.empty() ? std::string() : comparisons.front()->id;
  for (int run = 0; run <= runs; ++run) {
    const bool warmup = run == 0;
    for (std::size_t v = 0; v < variants.size(); ++v) {
      if (!cases[v].empty() && !cases[v].front()->unavailable.empty()) continue;
      const RunResult result = variants[v].run(warmup);
      record(v, result, warmup);
      if (!result.unavailable.empty()) {
        std::fprintf(stderr, "  %s %s: not measured: %s\n", what.c_str(), variants[v].id.c_str(),
                     result.unavailable.c_str());
      } else if (!warmup) {
        std::fprintf(stderr, "  %s run %d/%d %-24s %10.2f %s\n", what.c_str(), run, runs, variants[v].id.c_str(),
                     result.values.empty() ? 0.0 : result.values.front(),
                     comparisons.empty() ? "" : comparisons.front()->unit.c_str());
      }
    }
  }
}

}  // namespace ktls::bench
