// tests/fuzz/fuzz_check.h: FUZZ_CHECK, the fuzzers' assertion. A fuzzer
// that only waits for a crash finds crashes; these checks also make it stop
// at wrong answers (bytes delivered that were never sent, data after an
// error). A failed check prints what failed and aborts, which libFuzzer and
// the corpus replay (replay_main.cc) both report as a failure.
#ifndef KTLS_TESTS_FUZZ_FUZZ_CHECK_H_
#define KTLS_TESTS_FUZZ_FUZZ_CHECK_H_

#include <cstdio>
#include <cstdlib>

#define FUZZ_CHECK(condition)                                                                  \
  do {                                                                                         \
    if (!(condition)) {                                                                        \
      std::fprintf(stderr, "%s:%d: FUZZ_CHECK failed: %s\n", __FILE__, __LINE__, #condition); \
      std::abort();                                                                            \
    }                                                                                          \
  } while (false)

#endif  // KTLS_TESTS_FUZZ_FUZZ_CHECK_H_
