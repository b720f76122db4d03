// core/openssl_ptr.h: unique_ptr with the right free function for each
// OpenSSL type ktls owns.
#ifndef KTLS_SRC_CORE_OPENSSL_PTR_H_
#define KTLS_SRC_CORE_OPENSSL_PTR_H_

#include <openssl/bio.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include <memory>

namespace ktls::detail {

struct OpenSslFree {
  void operator()(SSL* p) const { SSL_free(p); }
  void operator()(SSL_CTX* p) const { SSL_CTX_free(p); }
  void operator()(BIO* p) const { BIO_free_all(p); }
  void operator()(X509* p) const { X509_free(p); }
  void operator()(EVP_PKEY* p) const { EVP_PKEY_free(p); }
  void operator()(SSL_SESSION* p) const { SSL_SESSION_free(p); }
};

using UniqueSsl = std::unique_ptr<SSL, OpenSslFree>;
using UniqueSslCtx = std::unique_ptr<SSL_CTX, OpenSslFree>;
using UniqueBio = std::unique_ptr<BIO, OpenSslFree>;
using UniqueX509 = std::unique_ptr<X509, OpenSslFree>;
using UniquePkey = std::unique_ptr<EVP_PKEY, OpenSslFree>;
using UniqueSession = std::unique_ptr<SSL_SESSION, OpenSslFree>;

}  // namespace ktls::detail

#endif  // KTLS_SRC_CORE_OPENSSL_PTR_H_
