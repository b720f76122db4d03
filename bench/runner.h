// bench/runner.h: running the cases of a comparison, interleaved.
#ifndef KTLS_BENCH_RUNNER_H_
#define KTLS_BENCH_RUNNER_H_

#include <functional>
#include <string>
#include <vector>

#include "report.h"

namespace ktls::bench {

// RunResult: one run of one variant.
struct RunResult {
  // values: one per comparison the variant feeds (see RunInterleaved).
  std::vector<double> values;
  // unavailable: this variant cannot run here (a fact of the environment,
  // such as OpenSSL leaving kTLS off for a cipher), and why. Not an error;
  // the variant is not run again.
  std::string unavailable;
  std::string notes;  // Kept from the last run.
};

// Variant: one way of doing the thing compared. run(warmup) does one run;
// a warm-up run may be smaller and its result is thrown away. Failures
// throw BenchError.
struct Variant {
  std::string id;
  std::string label;
  std::function<RunResult(bool warmup)> run;
};

// RunInterleaved runs each variant `runs` times, round-robin (run 1 of every
// variant, then run 2, ...), so that a machine that gets busier part of the
// way through affects every variant alike rather than the last one. Before
// that, each variant has one warm-up run. Variant i's value j lands in a case
// (same id and label) of comparisons[j]. Progress goes to stderr.
void RunInterleaved(const std::vector<Variant>& variants, int runs, const std::vector<Comparison*>& comparisons);

}  // namespace ktls::bench

#endif  // KTLS_BENCH_RUNNER_H_
