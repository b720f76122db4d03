// serve_request_fuzzer: ktls-serve's request handling on any bytes. The
// bytes go, as they would arrive on a connection, to Beast's
// http::request_parser<http::empty_body> with ktls-serve's limits (8 KiB of
// header, no body), one request after another as on a keep-alive
// connection; each request that parses goes to ktls::serve::Respond
// (tools/ktls-serve/file_response.h) over a small fixed tree:
//
//   <tmp>/outside/secret.txt          what must never be served
//   <tmp>/root/index.html, a.txt, empty.txt, big.bin (100 KB)
//   <tmp>/root/sub/index.html, sub/style.css
//   <tmp>/root/noindex/x.txt          a directory without index.html
//   <tmp>/root/fifo                   not a regular file
//   <tmp>/root/link-abs -> <tmp>/outside/secret.txt
//   <tmp>/root/link-rel -> ../outside/secret.txt
//   <tmp>/root/link-dir -> ../outside
//   <tmp>/root/link-root -> /
//   <tmp>/root/sub/link-in -> ../a.txt  (stays inside: served)
//   <tmp>/root/.env, .git/config        dotfiles: never served
//   <tmp>/root/.well-known/token        RFC 8615: served
//
// Besides not crashing, every answer must be consistent:
//   - a file it opened is a regular file whose real path (through
//     /proc/self/fd) lies under the root, never the secret;
//   - the body lies within the file: offset + length <= size;
//   - 200 serves the whole file; 206 has Content-Range "bytes F-L/N" that
//     matches offset, length and size; 416 has "bytes */N" and no file;
//     304 has no body; 405 has Allow and a method other than GET/HEAD;
//     301 has a Location on this host (starts with one '/', never "//"
//     or "/\\", only pchars in its path) that names the same path as the
//     request, ends it with '/', and keeps the query;
//   - no file whose path under the root has a segment starting with '.'
//     (other than a leading ".well-known") is ever opened;
//   - error responses have no file and their text body is the length;
//   - no status outside the ones ktls-serve documents;
//   - no descriptor left open once the response is gone.
// What a parse error becomes (400, 431) is main.cc's choice and not fuzzed.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <boost/beast/core/error.hpp>
#include <boost/beast/http/error.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/asio/buffer.hpp>
#include <algorithm>
#include <cstddef>
#include <cstdio>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>

#include "ktls-serve/file_response.h"
#include "tests/fuzz/fuzz_check.h"

namespace {

namespace fs = std::filesystem;
namespace http = boost::beast::http;
using ktls::serve::FileResponse;

constexpr std::uint32_t kHeaderLimit = 8 * 1024;  // ktls-serve's --header-limit default.
constexpr std::size_t kMaxTargetLen = 2048;       // Its --max-target default.

struct Tree {
  fs::path base;       // The temporary directory.
  std::string root;    // Its root/, as a real path.
  std::string secret;  // outside/secret.txt, as a real path.
  ktls::serve::Root served;
};

void WriteFile(const fs::path& path, std::size_t size, char fill) {
  std::ofstream(path, std::ios::binary) << std::string(size, fill);
}

ktls::serve::Root OpenRoot(const std::string& dir) {
  std::string error;
  auto root = ktls::serve::Root::Open(dir, error);
  if (!root) {
    std::fprintf(stderr, "serve_request_fuzzer: %s\n", error.c_str());
    std::abort();
  }
  return std::move(*root);
}

Tree MakeTree() {
  char name[] = "/tmp/ktls-serve-fuzz-XXXXXX";
  if (::mkdtemp(name) == nullptr) std::abort();
  const fs::path base = fs::canonical(name);
  const fs::path root = base / "root";
  fs::create_directories(base / "outside");
  fs::create_directories(root / "sub");
  fs::create_directories(root / "noindex");
  WriteFile(base / "outside" / "secret.txt", 30, 's');
  WriteFile(root / "index.html", 100, 'i');
  WriteFile(root / "a.txt", 1000, 'a');
  WriteFile(root / "empty.txt", 0, 'e');
  WriteFile(root / "big.bin", 100'000, 'b');
  WriteFile(root / "sub" / "index.html", 50, 'j');
  WriteFile(root / "sub" / "style.css", 20, 'c');
  WriteFile(root / "noindex" / "x.txt", 5, 'x');
  if (::mkfifo((root / "fifo").c_str(), 0600) != 0) std::abort();
  fs::create_symlink(base / "outside" / "secret.txt", root / "link-abs");
  fs::create_symlink("../outside/secret.txt", root / "link-rel");
  fs::create_symlink("../outside", root / "link-dir");
  fs::create_symlink("/", root / "link-root");
  fs::create_symlink("../a.txt", root / "sub" / "link-in");
  fs::create_directories(root / ".git");
  fs::create_directories(root / ".well-known");
  WriteFile(root / ".env", 10, 'd');
  WriteFile(root / ".git" / "config", 10, 'g');
  WriteFile(root / ".well-known" / "token", 10, 'w');
  return Tree{base, root.string(), (base / "outside" / "secret.txt").string(), OpenRoot(root.string())};
}

Tree& TheTree() {
  static Tree tree = MakeTree();
  static const bool cleanup = [] {
    std::atexit([] {
      std::error_code ignored;
      fs::remove_all(TheTree().base, ignored);
    });
    return true;
  }();
  (void)cleanup;
  return tree;
}

// LowestFreeFd: the descriptor open() would return next. A descriptor
// leaked by Respond takes the lowest free one, so this number grows.
int LowestFreeFd() {
  const int fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  FUZZ_CHECK(fd >= 0);
  ::close(fd);
  return fd;
}

bool IsStatusWithoutFile(http::status status) {
  switch (status) {
    case http::status::bad_request:
    case http::status::forbidden:
    case http::status::not_found:
    case http::status::method_not_allowed:
    case http::status::uri_too_long:
    case http::status::range_not_satisfiable:
    case http::status::moved_permanently:
      return true;
    default:
      return false;
  }
}

void CheckFile(const Tree& tree, const FileResponse& response) {
  const std::string link = "/proc/self/fd/" + std::to_string(response.file_fd);
  std::error_code ec;
  const std::string real = fs::read_symlink(link, ec).string();
  FUZZ_CHECK(!ec);
  FUZZ_CHECK(real.size() > tree.root.size() + 1 && real.compare(0, tree.root.size() + 1, tree.root + "/") == 0);
  FUZZ_CHECK(real != tree.secret);
  // No dotfile: below the root, no "/." but for a leading "/.well-known/".
  std::string_view below = std::string_view(real).substr(tree.root.size());
  if (below.substr(0, 13) == "/.well-known/") below.remove_prefix(12);
  FUZZ_CHECK(below.find("/.") == std::string_view::npos);
  struct stat st {};
  FUZZ_CHECK(::fstat(response.file_fd, &st) == 0);
  FUZZ_CHECK(S_ISREG(st.st_mode));
  FUZZ_CHECK(response.file_size == static_cast<std::uint64_t>(st.st_size));
  FUZZ_CHECK(!response.last_modified.empty());
  FUZZ_CHECK(!response.content_type.empty());
}

void CheckResponse(const Tree& tree, const ktls::serve::Request& request, const FileResponse& response) {
  const std::string_view target(request.target().data(), request.target().size());
  const bool get_or_head = request.method() == http::verb::get || request.method() == http::verb::head;
  const auto status = response.status;
  if (status == http::status::ok || status == http::status::partial_content ||
      status == http::status::not_modified) {
    FUZZ_CHECK(get_or_head);
    FUZZ_CHECK(response.file_fd >= 0);
    CheckFile(tree, response);
    FUZZ_CHECK(response.offset <= response.file_size);
    FUZZ_CHECK(response.length <= response.file_size - response.offset);
    FUZZ_CHECK(response.send_body == (request.method() == http::verb::get && status != http::status::not_modified));
    FUZZ_CHECK(response.allow.empty() && response.location.empty() && response.text_body.empty());
    FUZZ_CHECK(!response.close);
    if (status == http::status::ok) {
      FUZZ_CHECK(response.offset == 0 && response.length == response.file_size);
      FUZZ_CHECK(response.content_range.empty());
    } else if (status == http::status::partial_content) {
      FUZZ_CHECK(response.length >= 1);
      FUZZ_CHECK(response.content_range == "bytes " + std::to_string(response.offset) + "-" +
                                               std::to_string(response.offset + response.length - 1) + "/" +
                                               std::to_string(response.file_size));
    } else {
      FUZZ_CHECK(response.length == 0 && response.content_range.empty());
    }
    return;
  }
  FUZZ_CHECK(IsStatusWithoutFile(status));
  FUZZ_CHECK(response.file_fd < 0);
  FUZZ_CHECK(response.length == response.text_body.size());
  FUZZ_CHECK((status == http::status::method_not_allowed) == !response.allow.empty());
  // Host is judged before the method: 400 for an HTTP/1.1 request without
  // one, or any request with two (RFC 9112 3.2), whatever its method.
  const std::size_t num_hosts = request.count(http::field::host);
  const bool bad_host = num_hosts > 1 || (num_hosts == 0 && request.version() >= 11);
  if (bad_host) FUZZ_CHECK(status == http::status::bad_request);
  if (status == http::status::method_not_allowed) {
    FUZZ_CHECK(!get_or_head);
    FUZZ_CHECK(response.allow == "GET, HEAD");
  } else {
    FUZZ_CHECK(get_or_head || bad_host);
  }
  if (status == http::status::range_not_satisfiable) {
    const std::string_view range = response.content_range;
    FUZZ_CHECK(range.substr(0, 8) == "bytes */" && range.size() > 8);
    FUZZ_CHECK(range.substr(8).find_first_not_of("0123456789") == std::string_view::npos);
    FUZZ_CHECK(request.find(http::field::range) != request.end());
  } else {
    FUZZ_CHECK(response.content_range.empty());
  }
  FUZZ_CHECK((status == http::status::moved_permanently) == !response.location.empty());
  if (status == http::status::moved_permanently) {
    const std::string_view path = target.substr(0, target.find_first_of("?#"));
    FUZZ_CHECK(!path.empty() && path.back() != '/');
    const std::string_view location = response.location;
    const std::string_view location_path = location.substr(0, location.find_first_of("?#"));
    FUZZ_CHECK(location.size() >= 1 && location[0] == '/');
    FUZZ_CHECK(location.size() == 1 || (location[1] != '/' && location[1] != '\\'));
    FUZZ_CHECK(location_path.back() == '/');
    FUZZ_CHECK(location_path.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
                                               "-._~!$&'()*+,;=:@/%") == std::string_view::npos);
    FUZZ_CHECK(location.substr(location_path.size()) == target.substr(path.size()));
    http::status location_status{}, target_status{};
    const auto location_names = ktls::serve::DecodePath(location, location_status);
    const auto target_names = ktls::serve::DecodePath(target, target_status);
    FUZZ_CHECK(location_names && target_names && *location_names == *target_names);
  }
  if (status == http::status::uri_too_long) FUZZ_CHECK(target.size() > kMaxTargetLen);
  if (target.size() > kMaxTargetLen && get_or_head && !bad_host) FUZZ_CHECK(status == http::status::uri_too_long);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  Tree& tree = TheTree();
  const int free_fd_before = LowestFreeFd();
  std::string_view input(reinterpret_cast<const char*>(data), size);
  // As on a keep-alive connection: requests one after another until one
  // does not parse (ktls-serve answers 400/431 and closes) or the bytes
  // run out in the middle of one (it would wait for more).
  while (!input.empty()) {
    http::request_parser<http::empty_body> parser;
    parser.header_limit(kHeaderLimit);
    parser.body_limit(0);
    parser.eager(true);
    boost::beast::error_code ec;
    std::size_t used_total = 0;
    while (!parser.is_done()) {
      const std::size_t used =
          parser.put(boost::asio::buffer(input.data() + used_total, input.size() - used_total), ec);
      used_total += used;
      if (ec == http::error::need_more) {
        ec = {};
        if (used == 0 || used_total == input.size()) break;
        continue;
      }
      if (ec) break;
    }
    if (ec || !parser.is_done()) break;
    FUZZ_CHECK(used_total > 0 && used_total <= input.size());
    input.remove_prefix(used_total);
    const ktls::serve::Request& request = parser.get();
    {
      const FileResponse response = ktls::serve::Respond(tree.served, request, {kMaxTargetLen});
      CheckResponse(tree, request, response);
      // KTLS_FUZZ_VERBOSE=1: what each request got, to check what a seed reaches.
      static const bool verbose = std::getenv("KTLS_FUZZ_VERBOSE") != nullptr;
      if (verbose) {
        std::fprintf(stderr, "  %s %.*s -> %u %s\n", std::string(request.method_string()).c_str(),
                     static_cast<int>(std::min<std::size_t>(request.target().size(), 80)), request.target().data(),
                     static_cast<unsigned>(response.status), response.content_range.c_str());
      }
      if (response.close) break;
    }
    if (!request.keep_alive()) break;
  }
  FUZZ_CHECK(LowestFreeFd() == free_fd_before);
  return 0;
}
