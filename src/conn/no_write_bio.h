// conn/no_write_bio.h: the write side OpenSSL gets once TX is in the
// kernel but RX is still in OpenSSL.
//
// From that point any record OpenSSL wrote would be encrypted twice (once by
// OpenSSL, again by the kernel), so its writes must never reach the socket.
// This BIO discards them (telling OpenSSL they went out) and raises a flag;
// the read path then sends what OpenSSL meant through the kernel instead: a
// KeyUpdate answering the peer's update_requested, or an alert. Those are
// the only records OpenSSL writes while reading.
#ifndef KTLS_SRC_CONN_NO_WRITE_BIO_H_
#define KTLS_SRC_CONN_NO_WRITE_BIO_H_

#include <openssl/bio.h>

namespace ktls::detail {

// NewNoWriteBio returns a BIO whose writes are discarded and set
// *attempted = true.
// attempted must outlive the BIO. Returns nullptr if OpenSSL is out of memory.
BIO* NewNoWriteBio(bool* attempted);

}  // namespace ktls::detail

#endif  // KTLS_SRC_CONN_NO_WRITE_BIO_H_
