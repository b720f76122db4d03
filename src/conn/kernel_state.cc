// conn/kernel_state.cc: Connection::kernel_state(), what the kernel says
// about one connection: its record sequence numbers (getsockopt returns the
// whole crypto_info, keys included, which KernelRecSeq wipes at once) and
// sock_diag's ULP info.
#include <cstring>
#include <string>

#include "conn/connection_impl.h"
#include "kernel/tls_uapi.h"
#include "ktls/connection.h"
#include "ktls/kernel_state.h"
#include "ktls/probe.h"

namespace ktls {
namespace {

std::string NoPadWhyNot(detail::ConnectionImpl::NoPad no_pad, int err) {
  using NoPad = detail::ConnectionImpl::NoPad;
  switch (no_pad) {
    case NoPad::kOn: return {};
    case NoPad::kNotAsked: return "not asked for (OffloadOptions::rx_expect_no_pad is off)";
    case NoPad::kRxInOpenSsl: return "RX is not in the kernel";
    case NoPad::kTls12: return "TLS 1.2 records have no padding (the option is TLS 1.3 only)";
    case NoPad::kUnsafeKernel: return "not safe on this kernel: " + CachedCapabilities().rx_no_pad_reason;
    case NoPad::kRefused: return "setsockopt(TLS_RX_EXPECT_NO_PAD): " + std::string(std::strerror(err));
  }
  return {};
}

}  // namespace

KernelState Connection::kernel_state() const {
  KernelState state;
  if (!impl_) return state;
  detail::ConnectionImpl& impl = *impl_;
  state.cipher_suite = impl.session.cipher_suite;
  state.tx.in_kernel = impl.tx == Offload::kKernel;
  state.rx.in_kernel = impl.rx == Offload::kKernel;
  state.tx.why_not = impl.tx_fallback;
  state.rx.why_not = impl.rx_fallback;
  state.tx.key_updates = tx_key_updates();
  state.rx.key_updates = rx_key_updates();
  state.rx_no_pad = impl.rx_no_pad == detail::ConnectionImpl::NoPad::kOn;
  state.rx_no_pad_why_not = NoPadWhyNot(impl.rx_no_pad, impl.rx_no_pad_errno);
  if (state.tx.in_kernel || state.rx.in_kernel) {
    // Set by offload; meaningful only for what went to the kernel.
    state.version = impl.version;
    state.cipher = impl.cipher;
  }
  if (state.tx.in_kernel) {
    if (auto seq = impl.KernelRecSeq(detail::uapi::kTlsTx); seq.ok()) state.tx.record_seq = *seq;
  }
  if (state.rx.in_kernel) {
    if (auto seq = impl.KernelRecSeq(detail::uapi::kTlsRx); seq.ok()) state.rx.record_seq = *seq;
  }
  if (impl.socket) state.ulp = QuerySocketUlpInfo(impl.socket.get());
  return state;
}

}  // namespace ktls
