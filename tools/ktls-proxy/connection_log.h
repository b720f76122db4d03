// tools/ktls-proxy/connection_log.h: the one line ktls-proxy logs for each
// connection when it closes, and the words for how it ended.
//
//   CLIENT -> BACKEND tx=kernel rx=kernel [backend_tx=.. backend_rx=..]
//     up=BYTES down=BYTES up_spliced=N up_copied=N down_spliced=N
//     down_copied=N duration=MSms end=REASON [detail=WORDS]
#ifndef KTLS_TOOLS_KTLS_PROXY_CONNECTION_LOG_H_
#define KTLS_TOOLS_KTLS_PROXY_CONNECTION_LOG_H_

#include <sys/socket.h>

#include <chrono>
#include <cstdint>
#include <string>

#include "ktls/result.h"

namespace ktls::proxy {

// Party: which side of the proxy a word is about.
enum class Party { kClient, kBackend };

struct ConnectionRecord {
  std::string client;   // "ADDR:PORT"
  std::string backend;  // "HOST:PORT"
  std::string tx = "-", rx = "-";                  // The client's connection; "-" before its handshake.
  std::string backend_tx, backend_rx;              // --backend-tls only.
  std::uint64_t up = 0, up_copied = 0;             // Client to backend.
  std::uint64_t down = 0, down_copied = 0;         // Backend to client.
  std::chrono::milliseconds duration{0};
  std::string end;     // client_close_notify, backend_eof, client_reset, alert:NAME, ...
  std::string detail;  // The error's words, when there was one.
};

// FormatLine renders the record as one line, without the newline.
std::string FormatLine(const ConnectionRecord& record);

// EndReason: the end word for an error on party's side: "client_reset",
// "alert:NAME" (the client's fatal alert; "backend_alert:NAME" for the
// backend's), "client_protocol_error", "backend_error:io", ...
std::string EndReason(Party party, const ktls::Error& error);

// OneWord: text with each run of spaces made one '_', for detail=.
std::string OneWord(const std::string& text);

// AddressText: "1.2.3.4:80" or "[::1]:80".
std::string AddressText(const sockaddr_storage& addr);

}  // namespace ktls::proxy

#endif  // KTLS_TOOLS_KTLS_PROXY_CONNECTION_LOG_H_
