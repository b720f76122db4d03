// bench/report.cc
#include "report.h"

#include <algorithm>
#include <cstdio>
#include <ostream>
#include <utility>

namespace ktls::bench {

Summary Summarize(std::vector<double> samples) {
  if (samples.empty()) return {};
  std::sort(samples.begin(), samples.end());
  const std::size_t n = samples.size();
  const double median = n % 2 == 1 ? samples[n / 2] : (samples[n / 2 - 1] + samples[n / 2]) / 2;
  return Summary{median, samples.front(), samples.back()};
}

Case& Comparison::Add(std::string case_id, std::string label) {
  cases.push_back(Case{std::move(case_id), std::move(label), {}, {}, {}, {}});
  return cases.back();
}

const Case* Comparison::Find(const std::string& case_id) const {
  for (const Case& c : cases) {
    if (c.id == case_id) return &c;
  }
  return nullptr;
}

std::optional<double> RatioToReference(const Comparison& comparison, const Case& c) {
  const Case* ref = comparison.Find(comparison.reference);
  if (ref == nullptr || ref->samples.empty() || c.samples.empty()) return std::nullopt;
  const double ref_median = Summarize(ref->samples).median;
  if (ref_median == 0) return std::nullopt;
  return Summarize(c.samples).median / ref_median;
}

namespace {

std::string Number(double v) {
  char buf[32];
  if (v >= 100 || v == 0) {
    std::snprintf(buf, sizeof(buf), "%.0f", v);
  } else if (v >= 10) {
    std::snprintf(buf, sizeof(buf), "%.1f", v);
  } else {
    std::snprintf(buf, sizeof(buf), "%.2f", v);
  }
  return buf;
}

}  // namespace

void Report::PrintComparison(std::ostream& out, const Comparison& comparison) const {
  out << "\n" << comparison.title << "\n  " << comparison.unit << ", "
      << (comparison.higher_is_better ? "higher" : "lower") << " is better; ratio = median / median of "
      << comparison.reference << "\n";
  char line[256];
  std::snprintf(line, sizeof(line), "  %-24s %9s %9s %9s %7s  %s\n", "case", "median", "min", "max", "ratio",
                "notes");
  out << line;
  for (const Case& c : comparison.cases) {
    if (!c.unavailable.empty()) {
      std::snprintf(line, sizeof(line), "  %-24s %9s %9s %9s %7s  ", c.id.c_str(), "-", "-", "-", "-");
      out << line << "not measured: " << c.unavailable << "\n";
      continue;
    }
    const Summary s = Summarize(c.samples);
    const auto ratio = RatioToReference(comparison, c);
    std::snprintf(line, sizeof(line), "  %-24s %9s %9s %9s %7s  ", c.id.c_str(), Number(s.median).c_str(),
                  Number(s.min).c_str(), Number(s.max).c_str(), ratio ? Number(*ratio).c_str() : "-");
    out << line << c.notes << "\n";
  }
  out.flush();
}

void Report::Print(std::ostream& out) const {
  for (const Comparison& comparison : comparisons) PrintComparison(out, comparison);
}

nlohmann::json Report::ToJson() const {
  nlohmann::json list = nlohmann::json::array();
  for (const Comparison& comparison : comparisons) {
    nlohmann::json cases = nlohmann::json::array();
    for (const Case& c : comparison.cases) {
      nlohmann::json entry = {{"id", c.id}, {"label", c.label}, {"notes", c.notes}};
      if (!c.unavailable.empty()) {
        entry["status"] = "unavailable";
        entry["reason"] = c.unavailable;
      } else {
        const Summary s = Summarize(c.samples);
        entry["status"] = "ok";
        entry["samples"] = c.samples;
        entry["median"] = s.median;
        entry["min"] = s.min;
        entry["max"] = s.max;
        const auto ratio = RatioToReference(comparison, c);
        entry["ratio"] = ratio ? nlohmann::json(*ratio) : nlohmann::json(nullptr);
        if (!c.breakdown.empty()) entry["breakdown"] = c.breakdown;
      }
      cases.push_back(std::move(entry));
    }
    list.push_back({{"id", comparison.id},
                    {"group", comparison.group},
                    {"title", comparison.title},
                    {"metric", comparison.metric},
                    {"unit", comparison.unit},
                    {"higher_is_better", comparison.higher_is_better},
                    {"reference", comparison.reference},
                    {"cases", std::move(cases)}});
  }
  return {{"schema", "ktls-bench/1"},
          {"environment", environment},
          {"parameters", parameters},
          {"comparisons", std::move(list)}};
}

}  // namespace ktls::bench
