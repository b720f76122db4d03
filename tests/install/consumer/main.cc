// Links against an installed ktls and calls into it.
#include <ktls/probe.h>

#include <cstdio>

int main() {
  const ktls::Capabilities& caps = ktls::CachedCapabilities();
  std::printf("kernel=%s available=%d rows=%zu\n", caps.kernel.c_str(), caps.available ? 1 : 0, caps.ciphers.size());
  return caps.ciphers.size() == 8 ? 0 : 1;
}
