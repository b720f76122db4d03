# KtlsKernelTests.cmake: CTest registration for tests that need a kernel
# with kTLS. Include it once, then call ktls_add_kernel_test().
#
#   ktls_add_kernel_test(NAME <name> COMMAND <program> [args...]
#                        [LABELS <label>...] [TIMEOUT <seconds>])
#
# registers a test per kernel, each run through tests/harness/run-kernel-test:
#   kernel.<name>.host  on the host kernel; only registered when the host
#                       has kTLS at configure time (see below)
#   kernel.<name>.6.1   inside the Debian bookworm UML kernel (6.1)
#   kernel.<name>.7.2   inside the Debian sid UML kernel (7.2)
# with label `kernel` (plus LABELS), SKIP_RETURN_CODE 77 and TIMEOUT
# (default 600 s). COMMAND may start with an executable target's name or use
# generator expressions such as $<TARGET_FILE:tgt>. It runs in the build
# directory; inside a guest it sees KTLS_IN_UML=1 and KTLS_UML_KERNEL.
#
# Also registered here, once:
#   uml.fetch              fixture setup: downloads both UML kernels once
#                          before any kernel test (a no-op when cached). When
#                          that fails it warns and passes, and each kernel
#                          test skips, unless KTLS_REQUIRE_KERNEL=1 (CI), where
#                          it fails, as do the kernel tests.
#   harness.selftest.<V>   checks the harness itself on kernel V.
#
# Guests run in parallel without trouble (each is an ordinary process), so no
# RESOURCE_LOCK. The kernels are cached in $KTLS_UML_CACHE, default
# ~/.cache/ktls-uml (see ktls-uml).
include_guard(GLOBAL)

set(KTLS_HARNESS_DIR "${CMAKE_CURRENT_LIST_DIR}" CACHE INTERNAL "tests/harness")
set(KTLS_UML_KERNELS 6.1 7.2 CACHE INTERNAL "UML kernels the kernel tests run on")

# Sanitizer builds (KTLS_SANITIZE, cmake/KtlsSanitizers.cmake). ASan and
# TSan place their shadow memory at fixed addresses that need a 47-bit user
# address space. UML 6.1 gives its processes 39 bits (TASK_SIZE
# 0x7fc0000000), and ASan stops with "Shadow memory range interleaves with
# an existing memory mapping"; no runtime option moves the shadow, and the
# compilers' shadow-offset flags are for the kernel's KASAN. So their kernel
# tests run on 7.2 only (UBSan alone has no shadow and runs on both).
# In 7.2, every page a guest process touches is one mapping of the UML
# process on the host, and ASan's default 256 MiB quarantine alone can pass
# the host's vm.max_map_count (65530): "UML ran out of memory on the host
# side". scripts/setup raises the limit (and scripts/test-sanitizers checks
# it): the kernel gtests' guest process reached 65530 mappings in CI even
# with the quarantine at 8 MiB, where it stays to keep guests small.
# ktls-uml passes *SAN_OPTIONS into the guest; a caller's own options come
# after these and win.
set(KTLS_SANITIZER_ENV_MODIFICATION "")
if(KTLS_SANITIZE MATCHES "address|thread|memory")
  set(KTLS_UML_KERNELS 7.2 CACHE INTERNAL "UML kernels the kernel tests run on")
endif()
if(KTLS_SANITIZE)
  set(KTLS_SANITIZER_ENV_MODIFICATION
      "ASAN_OPTIONS=string_prepend:quarantine_size_mb=8:"
      "UBSAN_OPTIONS=string_prepend:print_stacktrace=1:"
      "TSAN_OPTIONS=string_prepend:halt_on_error=1:second_deadlock_stack=1:")
endif()

add_test(NAME uml.fetch COMMAND "${KTLS_HARNESS_DIR}/run-kernel-test" fetch all)
set_tests_properties(uml.fetch PROPERTIES
  LABELS kernel
  FIXTURES_SETUP ktls_uml_kernels
  TIMEOUT 1800)

foreach(kernel IN LISTS KTLS_UML_KERNELS)
  add_test(NAME harness.selftest.${kernel}
    COMMAND "${KTLS_HARNESS_DIR}/run-kernel-test" --on-host ${kernel}
            -- "${KTLS_HARNESS_DIR}/selftest.sh" ${kernel})
  set_tests_properties(harness.selftest.${kernel} PROPERTIES
    LABELS kernel
    FIXTURES_REQUIRED ktls_uml_kernels
    SKIP_RETURN_CODE 77
    TIMEOUT 600)
endforeach()

# The host variant exists only where the configuring host's kernel has kTLS
# (the tls module loaded: /proc/net/tls_stat). Elsewhere it could only ever
# skip, and a kernel test that skips is no test: the UML kernels cover it.
# Reconfigure after loading the module to pick it up.
# (Cached, like KTLS_UML_KERNELS, so that directories other than tests/ that
# call ktls_add_kernel_test see it: include_guard keeps them from
# including this file again.)
if(EXISTS "/proc/net/tls_stat")
  set(KTLS_KERNEL_TEST_TARGETS host ${KTLS_UML_KERNELS} CACHE INTERNAL "where kernel tests run")
else()
  set(KTLS_KERNEL_TEST_TARGETS ${KTLS_UML_KERNELS} CACHE INTERNAL "where kernel tests run")
endif()

function(ktls_add_kernel_test)
  cmake_parse_arguments(PARSE_ARGV 0 arg "" "NAME;TIMEOUT" "COMMAND;LABELS")
  if(NOT arg_NAME OR NOT arg_COMMAND)
    message(FATAL_ERROR "ktls_add_kernel_test: NAME and COMMAND are required")
  endif()
  if(arg_UNPARSED_ARGUMENTS)
    message(FATAL_ERROR "ktls_add_kernel_test: unexpected arguments: ${arg_UNPARSED_ARGUMENTS}")
  endif()
  if(NOT arg_TIMEOUT)
    set(arg_TIMEOUT 600)
  endif()
  # The harness stops a hung guest itself shortly before CTest would kill
  # the whole test, so its report (console tail, job directory) is printed.
  math(EXPR inner_timeout "${arg_TIMEOUT} - 20")
  if(inner_timeout LESS 10)
    set(inner_timeout ${arg_TIMEOUT})
  endif()

  # add_test() maps a target name to its file only in the first COMMAND
  # word, which here is run-kernel-test: do it for the test program.
  list(POP_FRONT arg_COMMAND program)
  if(TARGET ${program})
    get_target_property(program_type ${program} TYPE)
    if(program_type STREQUAL "EXECUTABLE")
      set(program "$<TARGET_FILE:${program}>")
    endif()
  endif()

  set(labels kernel ${arg_LABELS})
  foreach(kernel ${KTLS_KERNEL_TEST_TARGETS})
    set(test_name kernel.${arg_NAME}.${kernel})
    add_test(NAME ${test_name}
      COMMAND "${KTLS_HARNESS_DIR}/run-kernel-test" --timeout ${inner_timeout} ${kernel}
              -- ${program} ${arg_COMMAND})
    set_tests_properties(${test_name} PROPERTIES
      LABELS "${labels}"
      SKIP_RETURN_CODE 77
      TIMEOUT ${arg_TIMEOUT}
      ENVIRONMENT_MODIFICATION "${KTLS_SANITIZER_ENV_MODIFICATION}")
    if(NOT kernel STREQUAL "host")
      set_tests_properties(${test_name} PROPERTIES FIXTURES_REQUIRED ktls_uml_kernels)
    endif()
  endforeach()
endfunction()
