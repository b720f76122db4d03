// ktls/client.h: connecting to a TLS server, offloaded after the handshake.
//
//   ktls::ClientConfig config;           // verifies against the system CAs
//   auto conn = ktls::Connect("example.org", 443, config);
#ifndef KTLS_CLIENT_H_
#define KTLS_CLIENT_H_

#include <openssl/ssl.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "ktls/connection.h"
#include "ktls/export.h"
#include "ktls/offload.h"
#include "ktls/result.h"
#include "ktls/session_cache.h"
#include "ktls/types.h"

namespace ktls {

struct KTLS_API ClientConfig {
  // verify: check the server's certificate chain and name. Defaults on.
  bool verify = true;
  // ca_file: trust these CAs (PEM) instead of the system store.
  std::string ca_file;
  // sni: the server name to send and verify; defaults to the host passed
  // to Connect unless that is an IP address.
  std::string sni;
  // alpn: protocols to offer, in preference order.
  std::vector<std::string> alpn;
  // max_version: the highest protocol version to offer (the lowest is
  // TLS 1.2).
  TlsVersion max_version = TlsVersion::kTls13;
  // cipher_list: TLS 1.2 cipher suites, in OpenSSL's cipher-list syntax.
  std::string cipher_list;
  // ciphersuites: TLS 1.3 suites to offer, in OpenSSL's syntax. Empty:
  // OpenSSL's default (no AES-128-CCM).
  std::string ciphersuites;
  // Client certificate and key (PEM files) for servers that ask for one.
  std::string cert_file;
  std::string key_file;
  // ssl_ctx: your own context instead (ktls takes a reference). Its own
  // session callbacks then see every session, and session_cache is not
  // used: set SSL_SESS_CACHE_CLIENT and SSL_CTX_sess_set_new_cb on it (and
  // SSL_set_session before the handshake, with StartClientHandshake and
  // OffloadSsl) to resume.
  SSL_CTX* ssl_ctx = nullptr;
  // session_cache: sessions to resume, per server. Connect resumes from it
  // and stores in it every session the server gives, including TLS 1.3
  // tickets that arrive after RX went to the kernel
  // (OffloadOptions::session_tickets). Configs copied from this one share
  // it. Null: every connection is a full handshake. Connection::session()
  // says whether a connection resumed.
  std::shared_ptr<SessionCache> session_cache = std::make_shared<SessionCache>();
  // handshake_timeout: the whole handshake must be done by then, or Connect
  // fails with ETIMEDOUT (counted from the first time Connect waits for the
  // server, after sending its ClientHello; StartClientHandshake's from its
  // call). Zero: no limit.
  std::chrono::milliseconds handshake_timeout{10'000};
  OffloadOptions offload;
};

// Connect resolves host, connects over TCP, runs the handshake and
// offloads.
KTLS_API Result<Connection> Connect(const std::string& host, std::uint16_t port, const ClientConfig& config);

}  // namespace ktls

#endif  // KTLS_CLIENT_H_
