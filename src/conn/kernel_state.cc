// conn/kernel_state.cc: Connection::kernel_state(), what the kernel says
// about one connection: its record sequence numbers (getsockopt returns the
// whole crypto_info, keys included, which KernelRecSeq wipes at once) and
// sock_diag's ULP info.
#include "conn/connection_impl.h"
#include "kernel/tls_uapi.h"
#include "ktls/connection.h"
#include "ktls/kernel_state.h"

namespace ktls {

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
