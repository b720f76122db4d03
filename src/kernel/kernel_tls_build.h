// kernel/kernel_tls_build.h: whether this build has kernel TLS at all.
//
// The CMake option KTLS_KERNEL_TLS (on by default on Linux, off elsewhere)
// defines KTLS_KERNEL_TLS to 1 or 0 for every file of the library. With it
// off, the probe answers kNoKernelTlsReason without asking the kernel, so
// every connection handshakes and runs in OpenSSL through the same fallback
// a kernel without kTLS gets; sendfile(2) and splice(2) are not compiled
// (SendFile reads the file and writes it through OpenSSL; SpliceRead and
// SpliceWrite answer kUnsupported), nor is sock_diag (linux/*.h).
#ifndef KTLS_SRC_KERNEL_KERNEL_TLS_BUILD_H_
#define KTLS_SRC_KERNEL_KERNEL_TLS_BUILD_H_

#if !defined(KTLS_KERNEL_TLS)
#error "KTLS_KERNEL_TLS is not defined: CMake defines it (option KTLS_KERNEL_TLS)"
#endif
#if KTLS_KERNEL_TLS && !defined(__linux__)
#error "KTLS_KERNEL_TLS=1 needs Linux: configure with -DKTLS_KERNEL_TLS=OFF"
#endif

namespace ktls::detail {

// kKernelTls: the kernel TLS paths are compiled in.
inline constexpr bool kKernelTls = KTLS_KERNEL_TLS != 0;

// kNoKernelTlsReason: what the probe and every refused kernel-only call say
// in a build without them.
inline constexpr char kNoKernelTlsReason[] = "built without kernel TLS";

}  // namespace ktls::detail

#endif  // KTLS_SRC_KERNEL_KERNEL_TLS_BUILD_H_
