// tools/common/self_signed.h: a throwaway self-signed certificate for tools
// started without one.
#ifndef KTLS_TOOLS_COMMON_SELF_SIGNED_H_
#define KTLS_TOOLS_COMMON_SELF_SIGNED_H_

#include <string>

namespace ktls::tools {

struct SelfSigned {
  std::string cert_file;    // PEM files written to a private temp directory.
  std::string key_file;
  std::string fingerprint;  // SHA-256 of the DER certificate, "AB:CD:...".
};

// MakeSelfSigned creates an ECDSA P-256 key and a certificate for
// "localhost" (and 127.0.0.1, ::1), valid for a day, and writes both as PEM
// into a fresh directory under $TMPDIR. Returns an error message on failure
// in `error`.
bool MakeSelfSigned(SelfSigned& out, std::string& error);

}  // namespace ktls::tools

#endif  // KTLS_TOOLS_COMMON_SELF_SIGNED_H_
