// Unit tests: ktls-serve's request decisions (tools/ktls-serve/file_response):
// paths that must not leave the root, ranges, dates, content types.
#include "ktls-serve/file_response.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

namespace ktls::serve {
namespace {

namespace fs = std::filesystem;

TEST(DecodePathTest, NormalPathsAndDecoding) {
  http::status status{};
  EXPECT_EQ(DecodePath("/", status), "");
  EXPECT_EQ(DecodePath("/a/b.txt", status), "a/b.txt");
  EXPECT_EQ(DecodePath("/a//./b.txt?x=1#frag", status), "a/b.txt");
  EXPECT_EQ(DecodePath("/with%20space.txt", status), "with space.txt");
  EXPECT_EQ(DecodePath("/%41%62", status), "Ab");
  EXPECT_EQ(DecodePath("/...hidden", status), "...hidden");  // Only ".." exactly is special.
}

TEST(DecodePathTest, DotDotInEveryEncodingIsForbidden) {
  for (const char* target : {"/../etc/passwd", "/a/../../etc/passwd", "/%2e%2e/etc/passwd", "/%2E%2E/etc/passwd",
                             "/.%2e/etc/passwd", "/%2e./x", "/..%2fetc%2fpasswd", "/a/%2e%2e%2f%2e%2e%2fetc",
                             "/a/..", "/.."}) {
    http::status status{};
    EXPECT_FALSE(DecodePath(target, status).has_value()) << target;
    EXPECT_EQ(status, http::status::forbidden) << target;
  }
}

TEST(DecodePathTest, MalformedTargetsAreRejected) {
  for (const char* target : {"", "*", "http://example.org/x", "relative", "/bad%zz", "/cut%2", "/cut%"}) {
    http::status status{};
    EXPECT_FALSE(DecodePath(target, status).has_value()) << target;
    EXPECT_EQ(status, http::status::bad_request) << target;
  }
  http::status status{};
  EXPECT_FALSE(DecodePath("/nul%00byte", status).has_value());
  EXPECT_EQ(status, http::status::not_found);
}

TEST(ParseRangeTest, SingleRanges) {
  ByteRange r;
  ASSERT_EQ(ParseRange("bytes=0-9", 100, r), RangeKind::kSatisfiable);
  EXPECT_EQ(r.first, 0u);
  EXPECT_EQ(r.last, 9u);
  ASSERT_EQ(ParseRange("bytes=90-", 100, r), RangeKind::kSatisfiable);
  EXPECT_EQ(r.first, 90u);
  EXPECT_EQ(r.last, 99u);
  ASSERT_EQ(ParseRange("bytes=95-500", 100, r), RangeKind::kSatisfiable);  // Clamped to the end.
  EXPECT_EQ(r.last, 99u);
  ASSERT_EQ(ParseRange("bytes=-10", 100, r), RangeKind::kSatisfiable);
  EXPECT_EQ(r.first, 90u);
  ASSERT_EQ(ParseRange("bytes=-1000", 100, r), RangeKind::kSatisfiable);  // Longer than the file: all of it.
  EXPECT_EQ(r.first, 0u);
  ASSERT_EQ(ParseRange(" Bytes = 5-5 ", 100, r), RangeKind::kSatisfiable);
  EXPECT_EQ(r.first, 5u);
  EXPECT_EQ(r.last, 5u);
}

TEST(ParseRangeTest, UnsatisfiableAndIgnored) {
  ByteRange r;
  EXPECT_EQ(ParseRange("bytes=100-", 100, r), RangeKind::kUnsatisfiable);
  EXPECT_EQ(ParseRange("bytes=-0", 100, r), RangeKind::kUnsatisfiable);
  EXPECT_EQ(ParseRange("bytes=0-0", 0, r), RangeKind::kUnsatisfiable);
  for (const char* header : {"bytes=0-1,5-6", "items=0-1", "bytes=5-1", "bytes=x-1", "bytes=1-y", "bytes=",
                             "bytes=-", "bytes=99999999999999999999-", "0-1"}) {
    EXPECT_EQ(ParseRange(header, 100, r), RangeKind::kIgnore) << header;
  }
}

TEST(HttpDateTest, FormatsAndParsesImfFixdate) {
  EXPECT_EQ(HttpDate(784111777), "Sun, 06 Nov 1994 08:49:37 GMT");  // RFC 9110's example.
  EXPECT_EQ(ParseHttpDate("Sun, 06 Nov 1994 08:49:37 GMT"), 784111777);
  EXPECT_EQ(ParseHttpDate(HttpDate(1'700'000'000)), 1'700'000'000);
  EXPECT_FALSE(ParseHttpDate("Sunday, 06-Nov-94 08:49:37 GMT").has_value());
  EXPECT_FALSE(ParseHttpDate("Sun, 06 Foo 1994 08:49:37 GMT").has_value());
  EXPECT_FALSE(ParseHttpDate("Sun, 06 Nov 1994 25:49:37 GMT").has_value());
  EXPECT_FALSE(ParseHttpDate("").has_value());
}

TEST(ContentTypeTest, ByExtension) {
  EXPECT_EQ(ContentType("index.html"), "text/html; charset=utf-8");
  EXPECT_EQ(ContentType("a/b/app.JS"), "text/javascript; charset=utf-8");
  EXPECT_EQ(ContentType("pic.png"), "image/png");
  EXPECT_EQ(ContentType("archive.tar.gz"), "application/gzip");
  EXPECT_EQ(ContentType("noextension"), "application/octet-stream");
  EXPECT_EQ(ContentType("dir.d/file"), "application/octet-stream");
  EXPECT_EQ(ContentType("trailing."), "application/octet-stream");
}

// A served directory with a secret next to it, and symlinks both ways.
class RespondTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/ktls-serve-test-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    base_ = tmpl;
    fs::create_directories(base_ / "root/sub");
    fs::create_directories(base_ / "root/empty");
    Write(base_ / "secret.txt", "top secret");
    Write(base_ / "root/index.html", "<h1>home</h1>");
    Write(base_ / "root/sub/index.html", "<h1>sub</h1>");
    Write(base_ / "root/data.bin", std::string(100, 'x'));
    fs::create_symlink(base_ / "secret.txt", base_ / "root/absolute-out");
    fs::create_symlink("../secret.txt", base_ / "root/relative-out");
    fs::create_symlink("data.bin", base_ / "root/inside");
    ::mkfifo((base_ / "root/fifo").c_str(), 0600);
    std::string error;
    root_ = Root::Open((base_ / "root").string(), error);
    ASSERT_TRUE(root_.has_value()) << error;
  }
  void TearDown() override { fs::remove_all(base_); }

  static void Write(const fs::path& path, const std::string& text) { std::ofstream(path) << text; }

  FileResponse Get(const std::string& target, http::verb method = http::verb::get,
                   std::initializer_list<std::pair<http::field, std::string>> fields = {}) {
    Request request{method, target, 11};
    request.set(http::field::host, "x");
    for (const auto& [field, value] : fields) request.set(field, value);
    return Respond(*root_, request, RequestLimits{});
  }

  static std::string Body(const FileResponse& response) {
    if (response.file_fd < 0) return response.text_body;
    std::string out(response.length, '\0');
    const ssize_t n = ::pread(response.file_fd, out.data(), out.size(), static_cast<off_t>(response.offset));
    out.resize(n < 0 ? 0 : static_cast<std::size_t>(n));
    return out;
  }

  fs::path base_;
  std::optional<Root> root_;
};

TEST_F(RespondTest, FilesAndIndexes) {
  auto home = Get("/");
  EXPECT_EQ(home.status, http::status::ok);
  EXPECT_EQ(Body(home), "<h1>home</h1>");
  EXPECT_EQ(home.content_type, "text/html; charset=utf-8");
  EXPECT_FALSE(home.last_modified.empty());
  auto sub = Get("/sub/");
  EXPECT_EQ(Body(sub), "<h1>sub</h1>");
  auto redirect = Get("/sub?q=1");
  EXPECT_EQ(redirect.status, http::status::moved_permanently);
  EXPECT_EQ(redirect.location, "/sub/?q=1");
  EXPECT_EQ(Get("/empty/").status, http::status::not_found) << "a directory without index.html is not listed";
  EXPECT_EQ(Get("/missing.txt").status, http::status::not_found);
  EXPECT_EQ(Get("/fifo").status, http::status::not_found);
  EXPECT_EQ(Body(Get("/inside")), std::string(100, 'x')) << "a symlink within the root is followed";
}

TEST_F(RespondTest, NothingOutsideTheRoot) {
  for (const char* target : {"/absolute-out", "/relative-out", "/../secret.txt", "/%2e%2e/secret.txt",
                             "/..%2fsecret.txt", "/sub/%2e%2e/%2e%2e/secret.txt"}) {
    auto response = Get(target);
    EXPECT_TRUE(response.status == http::status::forbidden || response.status == http::status::not_found)
        << target << " gave " << response.status;
    EXPECT_EQ(response.file_fd, -1) << target;
    EXPECT_EQ(Body(response).find("secret"), std::string::npos) << target;
  }
}

TEST_F(RespondTest, MethodsAndLimits) {
  auto post = Get("/data.bin", http::verb::post);
  EXPECT_EQ(post.status, http::status::method_not_allowed);
  EXPECT_EQ(post.allow, "GET, HEAD");
  auto head = Get("/data.bin", http::verb::head);
  EXPECT_EQ(head.status, http::status::ok);
  EXPECT_FALSE(head.send_body);
  EXPECT_EQ(head.length, 100u);
  auto long_target = Get("/" + std::string(3000, 'a'));
  EXPECT_EQ(long_target.status, http::status::uri_too_long);
  EXPECT_TRUE(long_target.close);
}

TEST_F(RespondTest, RangesAndConditionals) {
  auto middle = Get("/data.bin", http::verb::get, {{http::field::range, "bytes=10-19"}});
  EXPECT_EQ(middle.status, http::status::partial_content);
  EXPECT_EQ(middle.offset, 10u);
  EXPECT_EQ(middle.length, 10u);
  EXPECT_EQ(middle.content_range, "bytes 10-19/100");
  auto beyond = Get("/data.bin", http::verb::get, {{http::field::range, "bytes=100-"}});
  EXPECT_EQ(beyond.status, http::status::range_not_satisfiable);
  EXPECT_EQ(beyond.content_range, "bytes */100");
  const std::string modified = Get("/data.bin").last_modified;
  auto not_modified = Get("/data.bin", http::verb::get, {{http::field::if_modified_since, modified}});
  EXPECT_EQ(not_modified.status, http::status::not_modified);
  EXPECT_FALSE(not_modified.send_body);
  auto stale = Get("/data.bin", http::verb::get, {{http::field::if_modified_since, "Sun, 06 Nov 1994 08:49:37 GMT"}});
  EXPECT_EQ(stale.status, http::status::ok);
  auto garbage = Get("/data.bin", http::verb::get, {{http::field::if_modified_since, "yesterday"}});
  EXPECT_EQ(garbage.status, http::status::ok);
}

// If-Range (RFC 9110 13.1.5): the range only while the client's copy is
// this file; otherwise the whole file with 200.
TEST_F(RespondTest, IfRangeSendsTheWholeFileUnlessTheValidatorMatches) {
  const std::string modified = Get("/data.bin").last_modified;
  auto same = Get("/data.bin", http::verb::get, {{http::field::range, "bytes=0-9"}, {http::field::if_range, modified}});
  EXPECT_EQ(same.status, http::status::partial_content);
  EXPECT_EQ(same.length, 10u);
  for (const char* validator : {"Sun, 06 Nov 1994 08:49:37 GMT", "\"abc\"", "W/\"abc\"", "garbage"}) {
    auto other = Get("/data.bin", http::verb::get, {{http::field::range, "bytes=0-9"}, {http::field::if_range, validator}});
    EXPECT_EQ(other.status, http::status::ok) << validator;
    EXPECT_EQ(other.length, 100u) << validator;
    EXPECT_TRUE(other.content_range.empty()) << validator;
  }
}

// RFC 9112 3.2: an HTTP/1.1 request needs exactly one Host; HTTP/1.0 none.
TEST_F(RespondTest, HostIsRequiredOnceInHttp11) {
  Request no_host{http::verb::get, "/data.bin", 11};
  auto refused = Respond(*root_, no_host, RequestLimits{});
  EXPECT_EQ(refused.status, http::status::bad_request);
  EXPECT_TRUE(refused.close);
  Request two_hosts{http::verb::get, "/data.bin", 11};
  two_hosts.insert(http::field::host, "a");
  two_hosts.insert(http::field::host, "b");
  EXPECT_EQ(Respond(*root_, two_hosts, RequestLimits{}).status, http::status::bad_request);
  Request http10{http::verb::get, "/data.bin", 10};
  EXPECT_EQ(Respond(*root_, http10, RequestLimits{}).status, http::status::ok);
}

// Out of descriptors, an existing file is 503 (try again), not 404.
TEST_F(RespondTest, OutOfDescriptorsIs503NotA404) {
  rlimit saved{};
  ASSERT_EQ(::getrlimit(RLIMIT_NOFILE, &saved), 0);
  const int lowest_free = ::dup(0);  // Every descriptor below it is in use.
  ASSERT_GE(lowest_free, 0);
  ::close(lowest_free);
  rlimit low = saved;
  low.rlim_cur = static_cast<rlim_t>(lowest_free);
  ASSERT_EQ(::setrlimit(RLIMIT_NOFILE, &low), 0);
  auto response = Get("/data.bin");
  ASSERT_EQ(::setrlimit(RLIMIT_NOFILE, &saved), 0);
  EXPECT_EQ(response.status, http::status::service_unavailable);
  EXPECT_EQ(response.refusal, "out-of-descriptors");
  EXPECT_EQ(response.file_fd, -1);
  EXPECT_EQ(Get("/data.bin").status, http::status::ok);
}

// A directory asked for as "//sub" must not redirect to "//sub/", which a
// browser reads as the host "sub" (an open redirect).
TEST_F(RespondTest, RedirectLocationIsTheNormalisedPathOnThisHost) {
  const std::pair<const char*, const char*> cases[] = {
      {"//sub", "/sub/"},
      {"//sub?next=//evil.example", "/sub/?next=//evil.example"},
      {"///sub", "/sub/"},
      {"/./sub", "/sub/"},
      {"/.//sub", "/sub/"},
      {"/%2Fsub", "/sub/"},
      {"/%2F%2Fsub", "/sub/"},
      {"/.", "/"},
      {"/sub/.", "/sub/"},
  };
  for (const auto& [target, location] : cases) {
    auto response = Get(target);
    EXPECT_EQ(response.status, http::status::moved_permanently) << target;
    EXPECT_EQ(response.location, location) << target;
  }
  fs::create_directories(base_ / "root/with space/back\\slash");
  Write(base_ / "root/with space/back\\slash/index.html", "x");
  auto encoded = Get("/with%20space/back%5Cslash");
  EXPECT_EQ(encoded.status, http::status::moved_permanently);
  EXPECT_EQ(encoded.location, "/with%20space/back%5Cslash/");
}

TEST(EncodePathTest, KeepsPcharsAndEncodesTheRest) {
  EXPECT_EQ(EncodePath(""), "/");
  EXPECT_EQ(EncodePath("a/b-c_d.e~f/"), "/a/b-c_d.e~f/");
  EXPECT_EQ(EncodePath("x:y@z!$&'()*+,;="), "/x:y@z!$&'()*+,;=");
  EXPECT_EQ(EncodePath("\\host/p q%?#\xc3\xa9"), "/%5Chost/p%20q%25%3F%23%C3%A9");
}

TEST_F(RespondTest, DotfilesAreRefusedUnlessWellKnownOrAllowed) {
  fs::create_directories(base_ / "root/.git");
  fs::create_directories(base_ / "root/.well-known/acme-challenge");
  Write(base_ / "root/.git/config", "[core]");
  Write(base_ / "root/.env", "PASSWORD=x");
  Write(base_ / "root/sub/.htpasswd", "user:hash");
  Write(base_ / "root/.well-known/acme-challenge/token", "proof");
  Write(base_ / "root/.well-known/.hidden", "no");
  for (const char* target : {"/.git/config", "/.env", "/%2eenv", "/sub/.htpasswd", "/./.env", "/sub//.htpasswd",
                             "/.git/", "/.git", "/.well-known/.hidden", "/sub/.well-known/x"}) {
    auto response = Get(target);
    EXPECT_EQ(response.status, http::status::not_found) << target;
    EXPECT_EQ(response.refusal, "dotfile") << target;
    EXPECT_EQ(response.file_fd, -1) << target;
  }
  auto token = Get("/.well-known/acme-challenge/token");
  EXPECT_EQ(token.status, http::status::ok);
  EXPECT_EQ(Body(token), "proof");
  EXPECT_EQ(token.refusal, "");
  EXPECT_EQ(Get("/missing.txt").refusal, "") << "a plain 404 gives no refusal reason";

  Request request{http::verb::get, "/.git/config", 11};
  request.set(http::field::host, "x");
  RequestLimits allow;
  allow.dotfiles = true;
  auto served = Respond(*root_, request, allow);
  EXPECT_EQ(served.status, http::status::ok);
  EXPECT_EQ(Body(served), "[core]");
}

TEST(IsHiddenPathTest, SegmentsStartingWithADot) {
  EXPECT_FALSE(IsHiddenPath(""));
  EXPECT_FALSE(IsHiddenPath("a/b.txt"));
  EXPECT_FALSE(IsHiddenPath("a.b/c."));
  EXPECT_FALSE(IsHiddenPath(".well-known"));
  EXPECT_FALSE(IsHiddenPath(".well-known/acme-challenge/x"));
  EXPECT_TRUE(IsHiddenPath(".env"));
  EXPECT_TRUE(IsHiddenPath("a/.git/config"));
  EXPECT_TRUE(IsHiddenPath("...x"));
  EXPECT_TRUE(IsHiddenPath("a/.well-known/x"));
  EXPECT_TRUE(IsHiddenPath(".well-known/.x"));
  EXPECT_TRUE(IsHiddenPath(".well-knownx"));
}

// --- the open-file cache (ktls-serve --open-file-cache) ------------------------

class OpenFileCacheTest : public RespondTest {
 protected:
  static constexpr std::int64_t kValid = 1'000'000'000;  // 1 s, in ns.

  FileResponse Cached(const std::string& target, std::int64_t now_ns) {
    Request request{http::verb::get, target, 11};
    request.set(http::field::host, "x");
    return Respond(*root_, request, RequestLimits{}, &cache_, now_ns);
  }
  // CachedBody: what ktls-serve sends for a small file: the cached bytes.
  static std::string CachedBody(const FileResponse& response) {
    if (response.file == nullptr || !response.file->has_body) return "(not cached)";
    return std::string(response.file->body.data() + response.offset, response.length);
  }
  // Replace puts a new file at path by rename, as deployments do.
  void Replace(const std::string& name, const std::string& text) {
    Write(base_ / "new.tmp", text);
    fs::rename(base_ / "new.tmp", base_ / "root" / name);
  }

  OpenFileCache cache_{4, std::chrono::nanoseconds(kValid)};
};

TEST_F(OpenFileCacheTest, ASecondRequestOpensNothing) {
  const FileResponse first = Cached("/data.bin", 0);
  ASSERT_EQ(first.status, http::status::ok);
  EXPECT_EQ(CachedBody(first), std::string(100, 'x'));
  const FileResponse second = Cached("/data.bin", kValid - 1);
  EXPECT_EQ(second.file, first.file) << "the same open file, not a new one";
  EXPECT_EQ(CachedBody(second), std::string(100, 'x'));
  EXPECT_EQ(cache_.opened(), 1u);
  EXPECT_EQ(cache_.hits(), 1u);
  // A directory's index is two lookups, both cached.
  ASSERT_EQ(Cached("/sub/", 0).status, http::status::ok);
  ASSERT_EQ(CachedBody(Cached("/sub/", 1)), "<h1>sub</h1>");
  EXPECT_EQ(cache_.hits(), 3u);
}

TEST_F(OpenFileCacheTest, AReplacedFileIsNeverServedAfterTheValidTime) {
  ASSERT_EQ(CachedBody(Cached("/data.bin", 0)), std::string(100, 'x'));
  Replace("data.bin", "new contents");
  // Within the valid time the cached file may still be served...
  EXPECT_EQ(CachedBody(Cached("/data.bin", kValid / 2)), std::string(100, 'x'));
  // ...and never after it.
  const FileResponse after = Cached("/data.bin", kValid);
  EXPECT_EQ(CachedBody(after), "new contents");
  EXPECT_EQ(after.length, 12u);
  EXPECT_EQ(cache_.opened(), 2u);
  // A file changed in place (same inode, new size and mtime) too.
  Write(base_ / "root/data.bin", "changed in place, longer");
  EXPECT_EQ(CachedBody(Cached("/data.bin", 2 * kValid)), "changed in place, longer");
}

TEST_F(OpenFileCacheTest, AnUnchangedFileIsCheckedAndKept) {
  const FileResponse first = Cached("/index.html", 0);
  const FileResponse later = Cached("/index.html", 5 * kValid);
  EXPECT_EQ(later.file, first.file);
  EXPECT_EQ(cache_.revalidated(), 1u);
  EXPECT_EQ(cache_.opened(), 1u);
}

TEST_F(OpenFileCacheTest, ARemovedFileIs404AfterTheValidTime) {
  ASSERT_EQ(Cached("/data.bin", 0).status, http::status::ok);
  fs::remove(base_ / "root/data.bin");
  EXPECT_EQ(Cached("/data.bin", kValid).status, http::status::not_found);
  EXPECT_EQ(cache_.size(), 0u);
}

TEST_F(OpenFileCacheTest, EvictionNeverClosesAFileInUse) {
  for (int i = 0; i < 6; ++i) Write(base_ / "root" / ("f" + std::to_string(i)), std::string(20000, 'a' + i));
  const FileResponse held = Cached("/f0", 0);  // Too big for the body cache: sent from its descriptor.
  ASSERT_EQ(held.status, http::status::ok);
  ASSERT_FALSE(held.file->has_body);
  for (int i = 1; i < 6; ++i) ASSERT_EQ(Cached("/f" + std::to_string(i), 0).status, http::status::ok);
  EXPECT_EQ(cache_.size(), 4u);  // f0 and f1 evicted.
  EXPECT_EQ(Body(held), std::string(20000, 'a')) << "the response's descriptor must stay open";
  EXPECT_GE(::fcntl(held.file_fd, F_GETFD), 0);
}

TEST_F(OpenFileCacheTest, TheRootStillHoldsWithACache) {
  EXPECT_EQ(Cached("/absolute-out", 0).status, http::status::forbidden);
  EXPECT_EQ(Cached("/relative-out", 0).status, http::status::forbidden);
  EXPECT_EQ(Cached("/fifo", 0).status, http::status::not_found);
  EXPECT_EQ(CachedBody(Cached("/inside", 0)), std::string(100, 'x'));
  // A symlink inside the root that is later pointed outside it is refused
  // once the entry is checked again.
  fs::remove(base_ / "root/inside");
  fs::create_symlink(base_ / "secret.txt", base_ / "root/inside");
  EXPECT_EQ(Cached("/inside", kValid).status, http::status::forbidden);
}

}  // namespace
}  // namespace ktls::serve
