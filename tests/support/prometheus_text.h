// tests/support/prometheus_text.h: reading one sample out of the
// Prometheus text the tools render (ktls-serve's and ktls-proxy's metrics
// tests).
#ifndef KTLS_TESTS_SUPPORT_PROMETHEUS_TEXT_H_
#define KTLS_TESTS_SUPPORT_PROMETHEUS_TEXT_H_

#include <sstream>
#include <string>

namespace ktls::testing {

// SampleValue: the value of the one sample line "name{labels} value"; -1
// if there is none, -2 if there are two.
inline long long SampleValue(const std::string& text, const std::string& name_and_labels) {
  std::istringstream lines(text);
  std::string line;
  long long found = -1;
  while (std::getline(lines, line)) {
    if (line.rfind(name_and_labels + " ", 0) == 0) {
      if (found != -1) return -2;  // Twice.
      found = std::stoll(line.substr(name_and_labels.size() + 1));
    }
  }
  return found;
}

}  // namespace ktls::testing

#endif  // KTLS_TESTS_SUPPORT_PROMETHEUS_TEXT_H_
