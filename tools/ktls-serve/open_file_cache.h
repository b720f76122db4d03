// tools/ktls-serve/open_file_cache.h: ktls-serve --open-file-cache, what
// nginx calls open_file_cache: the descriptors and metadata of recently
// served files (and the bytes of small ones), so that a request for a
// cached file costs no open, fstat, read or close.
//
// An entry is trusted for `valid` after it was last checked; the first
// request after that checks it again (openat2 and fstat of the path, as an
// uncached request does): the same file (device, inode, size, mtime, ctime)
// stays, anything else is replaced. So a file replaced on disk is never
// served once `valid` has passed since the replacement. Entries are shared
// with the responses that use them (std::shared_ptr), so evicting one
// never closes a descriptor a response is still sending from.
//
// One cache per worker thread: no locks.
#ifndef KTLS_TOOLS_KTLS_SERVE_OPEN_FILE_CACHE_H_
#define KTLS_TOOLS_KTLS_SERVE_OPEN_FILE_CACHE_H_

#include <sys/stat.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <list>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

namespace ktls::serve {

class Root;

// OpenFile: an open regular file (or a directory, with fd -1) and what
// fstat said of it.
struct OpenFile {
  int fd = -1;
  struct stat st {};
  // The whole file when it is at most OpenFileCache::kBodyLimit bytes and
  // the cache read it; empty otherwise.
  std::vector<char> body;
  bool has_body = false;

  OpenFile() = default;
  OpenFile(const OpenFile&) = delete;
  OpenFile& operator=(const OpenFile&) = delete;
  ~OpenFile();
};

class OpenFileCache {
 public:
  // Files up to this size are kept in memory too: a response is then one
  // send, no read.
  static constexpr std::size_t kBodyLimit = 15 * 1024;

  // capacity: entries kept (least recently used go first); valid: how long
  // an entry is trusted after it was checked.
  OpenFileCache(std::size_t capacity, std::chrono::nanoseconds valid) : capacity_(capacity), valid_(valid) {}

  // Open returns the file at path (relative to root, as Root::OpenBeneath
  // takes it): from the cache when its entry was checked less than valid
  // ago, else opened (and cached when it is a regular file or a
  // directory). now is a monotonic time in nanoseconds. On failure returns
  // null and sets err (an errno, as Root::OpenBeneath returns it negated,
  // or EIO when fstat failed).
  std::shared_ptr<const OpenFile> Open(const Root& root, const std::string& path, std::int64_t now_ns, int& err);

  std::size_t size() const { return entries_.size(); }
  // Counters, for tests and the log: lookups answered from the cache
  // without a check, checks that kept the entry, and entries (re)opened.
  std::uint64_t hits() const { return hits_; }
  std::uint64_t revalidated() const { return revalidated_; }
  std::uint64_t opened() const { return opened_; }

 private:
  struct Entry {
    std::shared_ptr<const OpenFile> file;
    std::int64_t checked_ns = 0;
    std::list<std::string>::iterator lru;
  };

  std::shared_ptr<const OpenFile> Store(const std::string& path, std::shared_ptr<const OpenFile> file, std::int64_t now_ns);

  std::size_t capacity_;
  std::chrono::nanoseconds valid_;
  std::unordered_map<std::string, Entry> entries_;
  std::list<std::string> lru_;  // Most recently used first.
  std::uint64_t hits_ = 0;
  std::uint64_t revalidated_ = 0;
  std::uint64_t opened_ = 0;
};

// OpenFileAt opens path beneath root (Root::OpenBeneath) and fstats it; a
// directory keeps no descriptor; with read_small_body, a regular file of at
// most OpenFileCache::kBodyLimit bytes is read whole. Null on failure, with
// err an errno (EIO when fstat failed).
std::shared_ptr<OpenFile> OpenFileAt(const Root& root, const std::string& path, bool read_small_body, int& err);

// SameFile: whether two fstat results describe the same, unchanged file.
bool SameFile(const struct stat& a, const struct stat& b);

}  // namespace ktls::serve

#endif  // KTLS_TOOLS_KTLS_SERVE_OPEN_FILE_CACHE_H_
