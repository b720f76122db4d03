// bench/report.h: what ktls-bench measured, as a table for people and as
// JSON for scripts/bench.
//
// A Comparison is one question ("how fast does one connection send with
// AES-128-GCM?") answered by several Cases measured in the same process on
// the same kernel; one case is the reference the others are divided by.
// Each case keeps every sample, and the summary is median, min and max.
//
// The JSON (schema "ktls-bench/1") is what bench/render_report.py reads:
//   {"schema", "environment": {...}, "parameters": {...},
//    "comparisons": [{"id", "group", "title", "metric", "unit",
//                     "higher_is_better", "reference",
//                     "cases": [{"id", "label", "status": "ok"|"unavailable",
//                                "reason", "notes", "samples", "median",
//                                "min", "max", "ratio", "breakdown"}]}]}
// Any other producer (the static file benchmark, for one) can add
// comparisons in the same shape.
#ifndef KTLS_BENCH_REPORT_H_
#define KTLS_BENCH_REPORT_H_

#include <iosfwd>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace ktls::bench {

// BenchError: a case could not be measured because something failed that
// must not (a handshake, an offload the kernel supports). Fatal.
class BenchError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Summary of a set of samples.
struct Summary {
  double median = 0;
  double min = 0;
  double max = 0;
};
Summary Summarize(std::vector<double> samples);

struct Case {
  std::string id;     // "ktls_sendfile"
  std::string label;  // "ktls SendFile (sendfile(2), TX in the kernel)"
  std::vector<double> samples;
  // unavailable: why this case was not measured here (e.g. OpenSSL did not
  // turn on its kTLS for this cipher). Empty when it was.
  std::string unavailable;
  std::string notes;  // Where records were protected, counters seen.
  // breakdown: the median's parts by name, where a count has parts (the
  // syscalls of a handshake, by syscall). JSON "breakdown" when not empty.
  std::map<std::string, double> breakdown;
};

struct Comparison {
  std::string id;     // "bulk_send.AES_128_GCM"
  std::string group;  // "bulk_send"
  std::string title;
  std::string metric;  // "throughput"
  std::string unit;    // "MB/s"
  bool higher_is_better = true;
  std::string reference;  // The id of the case the ratios divide by.
  std::vector<Case> cases;

  Case& Add(std::string case_id, std::string label);
  const Case* Find(const std::string& case_id) const;
};

class Report {
 public:
  nlohmann::json environment = nlohmann::json::object();
  nlohmann::json parameters = nlohmann::json::object();
  std::vector<Comparison> comparisons;

  // Print writes one table per comparison: median, min, max, ratio.
  void Print(std::ostream& out) const;
  void PrintComparison(std::ostream& out, const Comparison& comparison) const;
  nlohmann::json ToJson() const;
};

// Ratio of a case's median to the reference's, when both were measured.
std::optional<double> RatioToReference(const Comparison& comparison, const Case& c);

}  // namespace ktls::bench

#endif  // KTLS_BENCH_REPORT_H_
