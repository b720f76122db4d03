// conn/no_write_bio.h: the write side OpenSSL gets once TX is in the
// kernel but RX is still in OpenSSL.
//
// From that point any record OpenSSL wrote would be encrypted twice (once by
// OpenSSL, again by the kernel), so its writes must never reach the socket.
// This BIO refuses every write and raises a flag, so the read path can say
// what OpenSSL wanted (typically answering a KeyUpdate).
#ifndef KTLS_SRC_CONN_NO_WRITE_BIO_H_
#define KTLS_SRC_CONN_NO_WRITE_BIO_H_

#include <openssl/bio.h>

namespace ktls::detail {

// NewNoWriteBio returns a BIO whose writes fail and set *attempted = true.
// attempted must outlive the BIO. Returns nullptr if OpenSSL is out of memory.
BIO* NewNoWriteBio(bool* attempted);

}  // namespace ktls::detail

#endif  // KTLS_SRC_CONN_NO_WRITE_BIO_H_
