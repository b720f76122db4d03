// tools/ktls-serve/open_file_cache.cc: see open_file_cache.h.
#include "ktls-serve/open_file_cache.h"

#include <unistd.h>

#include <cerrno>
#include <utility>

#include "ktls-serve/file_response.h"

namespace ktls::serve {

std::shared_ptr<OpenFile> OpenFileAt(const Root& root, const std::string& path, bool read_small_body, int& err) {
  auto file = std::make_shared<OpenFile>();
  file->fd = root.OpenBeneath(path);
  if (file->fd < 0) {
    err = -file->fd;
    file->fd = -1;
    return nullptr;
  }
  if (::fstat(file->fd, &file->st) != 0) {
    err = EIO;
    return nullptr;
  }
  if (S_ISDIR(file->st.st_mode)) {
    ::close(std::exchange(file->fd, -1));  // A directory is cached for its type only.
  } else if (read_small_body && S_ISREG(file->st.st_mode) &&
             static_cast<std::uint64_t>(file->st.st_size) <= OpenFileCache::kBodyLimit) {
    file->body.resize(static_cast<std::size_t>(file->st.st_size));
    std::size_t got = 0;
    while (got < file->body.size()) {
      const ssize_t n = ::pread(file->fd, file->body.data() + got, file->body.size() - got, static_cast<off_t>(got));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;
      got += static_cast<std::size_t>(n);
    }
    file->has_body = got == file->body.size();
    if (!file->has_body) std::vector<char>().swap(file->body);  // Changing under us: serve it from the fd.
  }
  return file;
}

OpenFile::~OpenFile() {
  if (fd >= 0) ::close(fd);
}

bool SameFile(const struct stat& a, const struct stat& b) {
  return a.st_dev == b.st_dev && a.st_ino == b.st_ino && a.st_mode == b.st_mode && a.st_size == b.st_size &&
         a.st_mtim.tv_sec == b.st_mtim.tv_sec && a.st_mtim.tv_nsec == b.st_mtim.tv_nsec &&
         a.st_ctim.tv_sec == b.st_ctim.tv_sec && a.st_ctim.tv_nsec == b.st_ctim.tv_nsec;
}

std::shared_ptr<const OpenFile> OpenFileCache::Open(const Root& root, const std::string& path, std::int64_t now_ns,
                                                    int& err) {
  auto it = entries_.find(path);
  if (it != entries_.end()) {
    Entry& entry = it->second;
    lru_.splice(lru_.begin(), lru_, entry.lru);
    if (now_ns - entry.checked_ns < valid_.count()) {
      ++hits_;
      return entry.file;
    }
    // Too old to trust: look at the path again.
    auto fresh = OpenFileAt(root, path, true, err);
    if (fresh == nullptr) {
      lru_.erase(entry.lru);
      entries_.erase(it);
      return nullptr;
    }
    if (SameFile(fresh->st, entry.file->st) && (entry.file->has_body || !fresh->has_body)) {
      ++revalidated_;
      entry.checked_ns = now_ns;
      return entry.file;  // fresh closes its descriptor as it goes.
    }
    ++opened_;
    entry.file = std::move(fresh);
    entry.checked_ns = now_ns;
    return entry.file;
  }
  auto file = OpenFileAt(root, path, true, err);
  if (file == nullptr) return nullptr;
  ++opened_;
  if (!S_ISREG(file->st.st_mode) && !S_ISDIR(file->st.st_mode)) return file;  // Not cached: refused anyway.
  return Store(path, std::move(file), now_ns);
}

std::shared_ptr<const OpenFile> OpenFileCache::Store(const std::string& path, std::shared_ptr<const OpenFile> file,
                                                     std::int64_t now_ns) {
  if (capacity_ == 0) return file;
  while (entries_.size() >= capacity_ && !lru_.empty()) {
    entries_.erase(lru_.back());  // A response still holding it keeps it open.
    lru_.pop_back();
  }
  lru_.push_front(path);
  entries_.emplace(path, Entry{file, now_ns, lru_.begin()});
  return file;
}

}  // namespace ktls::serve
