// tools/ktls-serve/file_response.h: what ktls-serve answers to one request,
// decided without touching the network: the path under the root, the
// method, Range, If-Modified-Since and the content type. Kept apart from the
// I/O so it can be tested and fuzzed on its own.
#ifndef KTLS_TOOLS_KTLS_SERVE_FILE_RESPONSE_H_
#define KTLS_TOOLS_KTLS_SERVE_FILE_RESPONSE_H_

#include <sys/types.h>

#include <boost/beast/http/empty_body.hpp>
#include <boost/beast/http/message.hpp>
#include <boost/beast/http/status.hpp>
#include <cstdint>
#include <ctime>
#include <optional>
#include <string>
#include <string_view>

#include "ktls-serve/open_file_cache.h"

namespace ktls::serve {

namespace http = boost::beast::http;
using Request = http::request<http::empty_body>;

// Root: the directory served, opened once. Every file is opened relative to
// it with openat2(RESOLVE_BENEATH), so no path, symlink or ".." can leave it.
class Root {
 public:
  // Open opens dir; on failure returns nullopt and sets error.
  static std::optional<Root> Open(const std::string& dir, std::string& error);
  Root(Root&& other) noexcept : fd_(other.fd_) { other.fd_ = -1; }
  Root& operator=(Root&& other) noexcept;
  Root(const Root&) = delete;
  ~Root();

  // OpenBeneath opens path (relative, no leading '/') for reading without
  // leaving the root. Returns the fd, or -errno (EXDEV, ELOOP: it would
  // have left the root; ENOENT ...).
  int OpenBeneath(const std::string& path) const;

 private:
  explicit Root(int fd) : fd_(fd) {}
  int fd_;
};

// FileResponse: the answer to one request.
struct FileResponse {
  http::status status = http::status::ok;
  // The file to send, or null for a response without a file body (errors,
  // 304; HEAD still has the file, so Content-Length is right, but no body
  // is sent). file_fd is its descriptor, or -1. The file may be shared
  // with the open-file cache: never close file_fd.
  std::shared_ptr<const OpenFile> file;
  int file_fd = -1;
  std::uint64_t file_size = 0;
  std::uint64_t offset = 0;  // First byte of the body within the file.
  std::uint64_t length = 0;  // Body length (Content-Length).
  std::string content_type;
  std::string content_range;   // 206 and 416.
  std::string last_modified;   // HTTP-date, for files.
  std::string location;        // 301: where the directory really is.
  std::string allow;           // 405: the methods allowed.
  std::string text_body;       // Short body of an error response.
  // refusal: why a request that named something under the root was
  // refused anyway, for the access log ("dotfile", "out-of-descriptors",
  // "out-of-memory"), or why a request was refused before it was read
  // ("transfer-encoding"); empty otherwise.
  std::string refusal;
  bool send_body = true;       // false for HEAD and 304.
  bool close = false;          // Close the connection after this response.

};

// Limits on requests, and what may be served; see ktls-serve --help.
struct RequestLimits {
  std::size_t max_target_len = 2048;  // Longer request targets get 414.
  // dotfiles: serve path segments that start with '.' (.git, .env, ...).
  // Off: they get 404 (refusal "dotfile"), except a leading
  // "/.well-known/" (RFC 8615: ACME challenges and the like).
  bool dotfiles = false;
};

// Respond decides the answer to request. With a cache, files are looked up
// in it (now_ns: a monotonic time in nanoseconds, see OpenFileCache).
FileResponse Respond(const Root& root, const Request& request, const RequestLimits& limits,
                     OpenFileCache* cache = nullptr, std::int64_t now_ns = 0);

// ErrorResponse: a short text response with status (for requests that did
// not even parse: 400, 413, 431, ...). close: end the connection after it.
FileResponse ErrorResponse(http::status status, bool close);

// --- pieces, exposed for tests ----------------------------------------------

// DecodePath percent-decodes a request target's path (the part before '?'),
// and returns the path relative to the root ("" for the root itself), or
// nullopt with status set: 400 for a malformed target or escape, 403 for a
// ".." segment, 404 for a NUL byte.
std::optional<std::string> DecodePath(std::string_view target, http::status& status);

// IsHiddenPath: whether a path relative to the root (as DecodePath returns
// it) has a segment starting with '.', other than a first segment
// ".well-known" (RFC 8615).
bool IsHiddenPath(std::string_view relative);

// EncodePath percent-encodes a path relative to the root for a Location
// header: the result is "/" + the path, with every byte outside RFC 3986's
// pchar set and '/' encoded, so it names the same path on this host (never
// "//host" or "/\host", which browsers read as another host).
std::string EncodePath(std::string_view relative);

// ByteRange: an inclusive range within a file.
struct ByteRange {
  std::uint64_t first = 0;
  std::uint64_t last = 0;
};

// RangeResult: what a Range header asks for, against a file of some size.
enum class RangeKind { kIgnore, kSatisfiable, kUnsatisfiable };

// ParseRange reads a single "bytes=" range (RFC 9110 14.1.2) for a file of
// file_size bytes. Multiple ranges and malformed headers are ignored (the
// whole file is sent, as RFC 9110 allows).
RangeKind ParseRange(std::string_view header, std::uint64_t file_size, ByteRange& range);

// HttpDate formats t as an IMF-fixdate; ParseHttpDate reads one (nullopt if
// malformed).
std::string HttpDate(std::time_t t);
std::optional<std::time_t> ParseHttpDate(std::string_view text);

// ContentType returns the media type for a file name, by its extension.
std::string_view ContentType(std::string_view path);

}  // namespace ktls::serve

#endif  // KTLS_TOOLS_KTLS_SERVE_FILE_RESPONSE_H_
