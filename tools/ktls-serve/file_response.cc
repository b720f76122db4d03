// tools/ktls-serve/file_response.cc: see file_response.h.
#include "ktls-serve/file_response.h"

#include <fcntl.h>
#include <linux/openat2.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <charconv>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <utility>

namespace ktls::serve {

// --- Root ----------------------------------------------------------------------

std::optional<Root> Root::Open(const std::string& dir, std::string& error) {
  const int fd = ::open(dir.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) {
    error = "cannot open " + dir + ": " + std::strerror(errno);
    return std::nullopt;
  }
  return Root(fd);
}

Root& Root::operator=(Root&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = std::exchange(other.fd_, -1);
  }
  return *this;
}

Root::~Root() {
  if (fd_ >= 0) ::close(fd_);
}

int Root::OpenBeneath(const std::string& path) const {
  open_how how{};
  how.flags = O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK;  // O_NONBLOCK: a FIFO must not hang us.
  // RESOLVE_BENEATH: no "..", absolute path or symlink may lead out of the
  // root (EXDEV); RESOLVE_NO_MAGICLINKS: no /proc/self/fd-style jumps.
  how.resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS;
  const long fd = ::syscall(SYS_openat2, fd_, path.c_str(), &how, sizeof(how));
  // O_NONBLOCK stays, as in nginx: Linux ignores it for reads of regular
  // files (page cache or disk alike; sendfile(2) never looks at it), so
  // clearing it would cost an fcntl per request for nothing. Anything that
  // is not a regular file is refused after fstat.
  if (fd >= 0) return static_cast<int>(fd);
  return -errno;  // ENOSYS (Linux < 5.6) included: refuse rather than guess.
}

// --- FileResponse ----------------------------------------------------------------

FileResponse ErrorResponse(http::status status, bool close) {
  FileResponse response;
  response.status = status;
  response.content_type = "text/plain; charset=utf-8";
  response.text_body = std::to_string(static_cast<unsigned>(status)) + " " + std::string(http::obsolete_reason(status)) + "\n";
  response.length = response.text_body.size();
  response.close = close;
  return response;
}

// --- Paths -------------------------------------------------------------------------

namespace {

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

}  // namespace

std::optional<std::string> DecodePath(std::string_view target, http::status& status) {
  // Origin-form only ("/path?query"); absolute-form and "*" are not for us.
  if (target.empty() || target.front() != '/') {
    status = http::status::bad_request;
    return std::nullopt;
  }
  const std::size_t end = target.find_first_of("?#");
  const std::string_view path = target.substr(0, end);
  std::string decoded;
  decoded.reserve(path.size());
  for (std::size_t i = 0; i < path.size(); ++i) {
    if (path[i] != '%') {
      decoded.push_back(path[i]);
      continue;
    }
    const int hi = i + 2 < path.size() ? HexValue(path[i + 1]) : -1;
    const int lo = i + 2 < path.size() ? HexValue(path[i + 2]) : -1;
    if (hi < 0 || lo < 0) {
      status = http::status::bad_request;
      return std::nullopt;
    }
    decoded.push_back(static_cast<char>(hi * 16 + lo));
    i += 2;
  }
  if (decoded.find('\0') != std::string::npos) {
    status = http::status::not_found;
    return std::nullopt;
  }
  // Segments are checked after decoding, so "%2e%2e" and "..%2f" are ".."
  // too. "." and empty segments are dropped; ".." is refused outright, even
  // where it would stay inside the root.
  std::string relative;
  std::size_t pos = 0;
  while (pos <= decoded.size()) {
    std::size_t slash = decoded.find('/', pos);
    if (slash == std::string::npos) slash = decoded.size();
    const std::string_view segment = std::string_view(decoded).substr(pos, slash - pos);
    pos = slash + 1;
    if (segment.empty() || segment == ".") continue;
    if (segment == "..") {
      status = http::status::forbidden;
      return std::nullopt;
    }
    if (!relative.empty()) relative.push_back('/');
    relative.append(segment);
  }
  return relative;
}

bool IsHiddenPath(std::string_view relative) {
  constexpr std::string_view kWellKnown = ".well-known";
  std::size_t pos = 0;
  while (pos < relative.size()) {
    std::size_t slash = relative.find('/', pos);
    if (slash == std::string_view::npos) slash = relative.size();
    const std::string_view segment = relative.substr(pos, slash - pos);
    if (!segment.empty() && segment.front() == '.' && !(pos == 0 && segment == kWellKnown)) return true;
    pos = slash + 1;
  }
  return false;
}

std::string EncodePath(std::string_view relative) {
  // RFC 3986 pchar without '%' (always encoded here): unreserved,
  // sub-delims, ':' and '@'; plus '/' between segments. A backslash is encoded:
  // browsers read it as '/'.
  constexpr std::string_view kKeep = "-._~!$&'()*+,;=:@/";
  std::string out = "/";
  for (const char c : relative) {
    const auto u = static_cast<unsigned char>(c);
    if ((u >= '0' && u <= '9') || (u >= 'a' && u <= 'z') || (u >= 'A' && u <= 'Z') ||
        kKeep.find(c) != std::string_view::npos) {
      out.push_back(c);
    } else {
      static constexpr char kHex[] = "0123456789ABCDEF";
      out.push_back('%');
      out.push_back(kHex[u >> 4]);
      out.push_back(kHex[u & 0xf]);
    }
  }
  return out;
}

// --- Range -------------------------------------------------------------------------

namespace {

std::string_view Trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

std::optional<std::uint64_t> ParseNumber(std::string_view s) {
  if (s.empty()) return std::nullopt;
  std::uint64_t value = 0;
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), value);
  if (ec != std::errc() || end != s.data() + s.size()) return std::nullopt;
  return value;
}

bool EqualsIgnoreCase(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    const auto lower = [](char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c; };
    if (lower(a[i]) != lower(b[i])) return false;
  }
  return true;
}

}  // namespace

RangeKind ParseRange(std::string_view header, std::uint64_t file_size, ByteRange& range) {
  header = Trim(header);
  const std::size_t eq = header.find('=');
  if (eq == std::string_view::npos || !EqualsIgnoreCase(Trim(header.substr(0, eq)), "bytes")) return RangeKind::kIgnore;
  const std::string_view spec = Trim(header.substr(eq + 1));
  if (spec.find(',') != std::string_view::npos) return RangeKind::kIgnore;  // Several ranges: send it all.
  const std::size_t dash = spec.find('-');
  if (dash == std::string_view::npos) return RangeKind::kIgnore;
  const std::string_view first_text = spec.substr(0, dash);
  const std::string_view last_text = spec.substr(dash + 1);
  if (first_text.empty()) {
    // "-N": the last N bytes.
    const auto suffix = ParseNumber(last_text);
    if (!suffix) return RangeKind::kIgnore;
    if (*suffix == 0 || file_size == 0) return RangeKind::kUnsatisfiable;
    range.first = *suffix >= file_size ? 0 : file_size - *suffix;
    range.last = file_size - 1;
    return RangeKind::kSatisfiable;
  }
  const auto first = ParseNumber(first_text);
  if (!first) return RangeKind::kIgnore;
  std::uint64_t last = UINT64_MAX;
  if (!last_text.empty()) {
    const auto parsed = ParseNumber(last_text);
    if (!parsed || *parsed < *first) return RangeKind::kIgnore;
    last = *parsed;
  }
  if (*first >= file_size) return RangeKind::kUnsatisfiable;
  range.first = *first;
  range.last = std::min(last, file_size - 1);
  return RangeKind::kSatisfiable;
}

// --- Dates ---------------------------------------------------------------------------

std::string HttpDate(std::time_t t) {
  std::tm tm{};
  ::gmtime_r(&t, &tm);
  static constexpr std::array<const char*, 7> kDays{"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
  static constexpr std::array<const char*, 12> kMonths{"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                                       "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%s, %02d %s %04d %02d:%02d:%02d GMT", kDays[static_cast<std::size_t>(tm.tm_wday) % 7],
                tm.tm_mday, kMonths[static_cast<std::size_t>(tm.tm_mon) % 12], tm.tm_year + 1900, tm.tm_hour,
                tm.tm_min, tm.tm_sec);
  return buf;
}

std::optional<std::time_t> ParseHttpDate(std::string_view text) {
  // IMF-fixdate only: "Sun, 06 Nov 1994 08:49:37 GMT" (RFC 9110 5.6.7).
  static constexpr std::array<std::string_view, 12> kMonths{"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                                            "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
  text = Trim(text);
  if (text.size() != 29 || text[3] != ',' || text[4] != ' ' || text[7] != ' ' || text[11] != ' ' ||
      text[16] != ' ' || text[19] != ':' || text[22] != ':' || text[25] != ' ' || text.substr(26) != "GMT") {
    return std::nullopt;
  }
  const auto num = [&](std::size_t at, std::size_t len) { return ParseNumber(text.substr(at, len)); };
  const auto day = num(5, 2), year = num(12, 4), hour = num(17, 2), minute = num(20, 2), second = num(23, 2);
  int month = -1;
  for (std::size_t i = 0; i < kMonths.size(); ++i) {
    if (text.substr(8, 3) == kMonths[i]) month = static_cast<int>(i);
  }
  if (!day || !year || !hour || !minute || !second || month < 0 || *day < 1 || *day > 31 || *hour > 23 ||
      *minute > 59 || *second > 60 || *year < 1900 || *year > 9999) {
    return std::nullopt;
  }
  std::tm tm{};
  tm.tm_year = static_cast<int>(*year) - 1900;
  tm.tm_mon = month;
  tm.tm_mday = static_cast<int>(*day);
  tm.tm_hour = static_cast<int>(*hour);
  tm.tm_min = static_cast<int>(*minute);
  tm.tm_sec = static_cast<int>(*second);
  return ::timegm(&tm);
}

// --- Content types -----------------------------------------------------------------

std::string_view ContentType(std::string_view path) {
  struct Entry {
    std::string_view extension;
    std::string_view type;
  };
  static constexpr std::array<Entry, 30> kTypes{{
      {"html", "text/html; charset=utf-8"},  {"htm", "text/html; charset=utf-8"},
      {"css", "text/css; charset=utf-8"},    {"js", "text/javascript; charset=utf-8"},
      {"mjs", "text/javascript; charset=utf-8"}, {"json", "application/json"},
      {"txt", "text/plain; charset=utf-8"},  {"md", "text/markdown; charset=utf-8"},
      {"xml", "application/xml"},            {"svg", "image/svg+xml"},
      {"png", "image/png"},                  {"jpg", "image/jpeg"},
      {"jpeg", "image/jpeg"},                {"gif", "image/gif"},
      {"webp", "image/webp"},                {"avif", "image/avif"},
      {"ico", "image/vnd.microsoft.icon"},   {"pdf", "application/pdf"},
      {"wasm", "application/wasm"},          {"mp4", "video/mp4"},
      {"webm", "video/webm"},                {"mp3", "audio/mpeg"},
      {"ogg", "audio/ogg"},                  {"woff", "font/woff"},
      {"woff2", "font/woff2"},               {"zip", "application/zip"},
      {"gz", "application/gzip"},            {"tar", "application/x-tar"},
      {"csv", "text/csv; charset=utf-8"},    {"bin", "application/octet-stream"},
  }};
  const std::size_t slash = path.rfind('/');
  const std::string_view name = slash == std::string_view::npos ? path : path.substr(slash + 1);
  const std::size_t dot = name.rfind('.');
  if (dot != std::string_view::npos && dot + 1 < name.size()) {
    const std::string_view extension = name.substr(dot + 1);
    for (const Entry& entry : kTypes) {
      if (EqualsIgnoreCase(entry.extension, extension)) return entry.type;
    }
  }
  return "application/octet-stream";
}

// --- Respond -----------------------------------------------------------------------

namespace {

FileResponse FromOpenError(int err) {
  // EXDEV/ELOOP: the path would leave the root (or loops); EACCES: not ours
  // to show. Out of descriptors or memory: the file may well be there, so
  // not 404 (a client or cache would take that as final) but 503, and the
  // log says why. EIO: 500. The rest: not there.
  if (err == EXDEV || err == ELOOP || err == EACCES || err == EPERM) return ErrorResponse(http::status::forbidden, false);
  if (err == EMFILE || err == ENFILE || err == ENOMEM) {
    FileResponse refused = ErrorResponse(http::status::service_unavailable, false);
    refused.refusal = err == ENOMEM ? "out-of-memory" : "out-of-descriptors";
    return refused;
  }
  if (err == EIO) return ErrorResponse(http::status::internal_server_error, false);
  return ErrorResponse(http::status::not_found, false);
}

// IfRangeHolds: whether a Range applies under the request's If-Range (RFC
// 9110 13.1.5): yes without one; with a date, only if it is the file's
// Last-Modified exactly; with an entity-tag, never (none is sent).
bool IfRangeHolds(const Request& request, std::time_t mtime) {
  const auto field = request.find(http::field::if_range);
  if (field == request.end()) return true;
  const std::string_view value(field->value().data(), field->value().size());
  if (value.starts_with('"') || value.starts_with("W/")) return false;
  const auto date = ParseHttpDate(value);
  return date && *date == mtime;
}

}  // namespace

FileResponse Respond(const Root& root, const Request& request, const RequestLimits& limits, OpenFileCache* cache,
                     std::int64_t now_ns) {
  // RFC 9112 3.2: 400 for an HTTP/1.1 request without Host, and for any
  // request with more than one.
  const std::size_t num_hosts = request.count(http::field::host);
  if (num_hosts > 1 || (num_hosts == 0 && request.version() >= 11)) {
    return ErrorResponse(http::status::bad_request, true);
  }
  const bool head = request.method() == http::verb::head;
  if (request.method() != http::verb::get && !head) {
    FileResponse response = ErrorResponse(http::status::method_not_allowed, false);
    response.allow = "GET, HEAD";
    return response;
  }
  const std::string_view target(request.target().data(), request.target().size());
  if (target.size() > limits.max_target_len) return ErrorResponse(http::status::uri_too_long, true);
  http::status status = http::status::ok;
  const auto relative = DecodePath(target, status);
  if (!relative) return ErrorResponse(status, status == http::status::bad_request);
  if (!limits.dotfiles && IsHiddenPath(*relative)) {
    // .git/config, .env, .htpasswd: never meant for the web, and a root of
    // "." makes them easy to publish by mistake. 404, as if absent.
    FileResponse refused = ErrorResponse(http::status::not_found, false);
    refused.refusal = "dotfile";
    return refused;
  }

  const auto open = [&](const std::string& path, int& err) -> std::shared_ptr<const OpenFile> {
    if (cache != nullptr) return cache->Open(root, path, now_ns, err);
    return OpenFileAt(root, path, false, err);
  };
  int err = 0;
  auto file = open(relative->empty() ? "." : *relative, err);
  if (file == nullptr) return FromOpenError(err);
  std::string served_path = *relative;
  if (S_ISDIR(file->st.st_mode)) {
    const std::size_t path_end = target.find_first_of("?#");
    const std::string_view path = target.substr(0, path_end);
    const std::string index = relative->empty() ? "index.html" : *relative + "/index.html";
    file = open(index, err);
    if (file == nullptr) return FromOpenError(err);
    if (path.back() != '/') {
      // Relative links in the index resolve against the directory only
      // with the slash: send the client there. Built from the normalised
      // path, never the raw target: "//host" would be another host.
      FileResponse response = ErrorResponse(http::status::moved_permanently, false);
      response.location = EncodePath(relative->empty() ? "" : *relative + "/") + std::string(target.substr(path.size()));
      return response;
    }
    served_path = index;
  }
  if (!S_ISREG(file->st.st_mode)) {
    return ErrorResponse(http::status::not_found, false);  // No devices, FIFOs, sockets, listings.
  }
  const struct stat& st = file->st;

  FileResponse response;
  response.file_fd = file->fd;
  response.file = std::move(file);
  response.file_size = static_cast<std::uint64_t>(st.st_size);
  response.length = response.file_size;
  response.content_type = std::string(ContentType(served_path));
  response.last_modified = HttpDate(st.st_mtime);
  response.send_body = !head;

  // If-Modified-Since (RFC 9110 13.1.3) comes before Range.
  if (auto ims = request.find(http::field::if_modified_since); ims != request.end()) {
    const auto since = ParseHttpDate(std::string_view(ims->value().data(), ims->value().size()));
    if (since && st.st_mtime <= *since) {
      response.status = http::status::not_modified;
      response.send_body = false;
      response.length = 0;
      return response;
    }
  }
  // Range, unless If-Range says the client's copy is not this file: then
  // the whole file (200).
  if (auto range_field = request.find(http::field::range);
      range_field != request.end() && IfRangeHolds(request, st.st_mtime)) {
    ByteRange range;
    switch (ParseRange(std::string_view(range_field->value().data(), range_field->value().size()), response.file_size,
                       range)) {
      case RangeKind::kIgnore:
        break;
      case RangeKind::kSatisfiable:
        response.status = http::status::partial_content;
        response.offset = range.first;
        response.length = range.last - range.first + 1;
        response.content_range = "bytes " + std::to_string(range.first) + "-" + std::to_string(range.last) + "/" +
                                 std::to_string(response.file_size);
        break;
      case RangeKind::kUnsatisfiable: {
        FileResponse refused = ErrorResponse(http::status::range_not_satisfiable, false);
        refused.content_range = "bytes */" + std::to_string(response.file_size);
        refused.last_modified = response.last_modified;
        return refused;
      }
    }
  }
  return response;
}

}  // namespace ktls::serve
