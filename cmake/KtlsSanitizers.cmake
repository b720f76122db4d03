# KtlsSanitizers.cmake: sanitizer and fuzzer builds.
#
# KTLS_SANITIZE builds the library, the tools and the
# tests with the compiler's sanitizers, for example
#
#   cmake -S . -B build-asan -DKTLS_SANITIZE=address,undefined
#   cmake -S . -B build-tsan -DKTLS_SANITIZE=thread
#
# The value is passed to -fsanitize= as it is (GCC and Clang both take these
# names). ASan and UBSan halt at their first report (-fno-sanitize-recover),
# TSan fails the program at exit, so a finding fails the test that hit it
# instead of scrolling past. Kernel
# tests get runtime options that suit the UML guests, and run on 7.2 only
# (tests/harness/KtlsKernelTests.cmake says why).
include_guard(GLOBAL)

set(KTLS_SANITIZE "" CACHE STRING
    "Sanitizers to build with, as for -fsanitize= (address,undefined or thread); empty: none")

if(KTLS_SANITIZE)
  if(KTLS_SANITIZE MATCHES "thread" AND KTLS_SANITIZE MATCHES "address")
    message(FATAL_ERROR "KTLS_SANITIZE: thread and address cannot be combined")
  endif()
  add_compile_options(-fsanitize=${KTLS_SANITIZE} -fno-sanitize-recover=all -fno-omit-frame-pointer)
  add_link_options(-fsanitize=${KTLS_SANITIZE})
  # Clang 14's -fsanitize=function (part of undefined) cannot be assembled
  # in C++20 coroutines ("Cannot represent a difference across sections"),
  # which ktls-serve and the Asio tests use; Clang 15 fixed it. The rest of
  # UBSan stays on.
  if(KTLS_SANITIZE MATCHES "undefined" AND CMAKE_CXX_COMPILER_ID STREQUAL "Clang"
     AND CMAKE_CXX_COMPILER_VERSION VERSION_LESS 15)
    add_compile_options(-fno-sanitize=function)
  endif()
  # UBSan's vptr check makes sure a vtable is readable by writing it to a
  # pipe it opens. With no descriptor free, which ktls-serve's answer when
  # descriptors run out and its tests provoke on purpose, that fails, and
  # it reports every object it then checks as having an invalid vptr. The
  # check is in inline code every target shares (shared_ptr's), so it
  # cannot be turned off for those tests alone; ASan still catches a call
  # on a freed object.
  if(KTLS_SANITIZE MATCHES "undefined")
    add_compile_options(-fno-sanitize=vptr)
  endif()
  message(STATUS "ktls: building with -fsanitize=${KTLS_SANITIZE}")
endif()


# KTLS_BUILD_FUZZERS builds tests/fuzz as libFuzzer binaries. libFuzzer
# comes with Clang (Debian: clang, libclang-rt-14-dev), so configure with
# CC=clang CXX=clang++. Everything is compiled with libFuzzer's coverage
# instrumentation (-fsanitize=fuzzer-no-link) so that the fuzzers see which
# paths of the library an input reached; combine with
# KTLS_SANITIZE=address,undefined to catch memory errors too. Off, the
# fuzzers are still built, as corpus replayers (tests/fuzz/replay_main.cc).
option(KTLS_BUILD_FUZZERS "Build the libFuzzer fuzzers in tests/fuzz (needs Clang)" OFF)
if(KTLS_BUILD_FUZZERS)
  if(NOT CMAKE_CXX_COMPILER_ID MATCHES "Clang")
    message(FATAL_ERROR "KTLS_BUILD_FUZZERS needs Clang (libFuzzer): configure with CC=clang CXX=clang++")
  endif()
  add_compile_options(-fsanitize=fuzzer-no-link)
endif()
