# KtlsSanitizers.cmake: KTLS_SANITIZE builds the library, the tools and the
# tests with the compiler's sanitizers, for example
#
#   cmake -S . -B build-asan -DKTLS_SANITIZE=address,undefined
#   cmake -S . -B build-tsan -DKTLS_SANITIZE=thread
#
# The value is passed to -fsanitize= as it is (GCC and Clang both take these
# names). Every sanitizer halts at its first report (-fno-sanitize-recover),
# so a finding fails the test that hit it instead of scrolling past. Kernel
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
  message(STATUS "ktls: building with -fsanitize=${KTLS_SANITIZE}")
endif()

