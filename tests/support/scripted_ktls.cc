// tests/support/scripted_ktls.cc
#include "tests/support/scripted_ktls.h"

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "kernel/tls_uapi.h"

namespace ktls::testing {
namespace {

// CopyOut copies bytes into the iovecs of msg from position *pos on;
// returns how many fit.
std::size_t CopyOut(msghdr* msg, std::size_t* pos, std::span<const std::uint8_t> bytes) {
  std::size_t copied = 0;
  std::size_t skip = *pos;
  for (std::size_t i = 0; i < msg->msg_iovlen && copied < bytes.size(); ++i) {
    iovec& iov = msg->msg_iov[i];
    if (skip >= iov.iov_len) {
      skip -= iov.iov_len;
      continue;
    }
    const std::size_t n = std::min(iov.iov_len - skip, bytes.size() - copied);
    std::memcpy(static_cast<std::uint8_t*>(iov.iov_base) + skip, bytes.data() + copied, n);
    copied += n;
    skip = 0;
  }
  *pos += copied;
  return copied;
}

std::size_t Capacity(const msghdr* msg) {
  std::size_t total = 0;
  for (std::size_t i = 0; i < msg->msg_iovlen; ++i) total += msg->msg_iov[i].iov_len;
  return total;
}

}  // namespace

void ScriptedKtlsRx::QueueRecord(std::uint8_t type, std::span<const std::uint8_t> payload) {
  Event event;
  event.type = type;
  event.bytes.assign(payload.begin(), payload.end());
  events_.push_back(std::move(event));
}

void ScriptedKtlsRx::QueueError(int err) {
  Event event;
  event.is_error = true;
  event.err = err;
  events_.push_back(std::move(event));
}

ssize_t ScriptedKtlsRx::RecvMsg(msghdr* msg) {
  // An empty application-data record is consumed silently, as the kernel
  // does, unless a control record follows it: then the kernel returns 0
  // bytes of type application data.
  bool empty_data_before_control = false;
  while (!events_.empty() && !events_.front().is_error && events_.front().offset == events_.front().bytes.size() &&
         events_.front().type == detail::uapi::kRecordApplicationData) {
    events_.pop_front();
    empty_data_before_control = !events_.empty() && !events_.front().is_error &&
                                events_.front().type != detail::uapi::kRecordApplicationData;
    if (empty_data_before_control) break;
  }
  if (events_.empty()) return -EAGAIN;
  if (events_.front().is_error) {
    const int err = events_.front().err;
    if (err != 0) events_.pop_front();
    return -err;
  }
  const std::uint8_t type =
      empty_data_before_control ? detail::uapi::kRecordApplicationData : events_.front().type;
  const bool has_room = msg->msg_control != nullptr && msg->msg_controllen >= CMSG_SPACE(sizeof(type));
  if (!has_room && type != detail::uapi::kRecordApplicationData) return -EIO;
  if (has_room) {
    cmsghdr* cmsg = CMSG_FIRSTHDR(msg);
    cmsg->cmsg_level = detail::uapi::kSolTls;
    cmsg->cmsg_type = detail::uapi::kTlsGetRecordType;
    cmsg->cmsg_len = CMSG_LEN(sizeof(type));
    std::memcpy(CMSG_DATA(cmsg), &type, sizeof(type));
    msg->msg_controllen = CMSG_SPACE(sizeof(type));
  } else {
    msg->msg_controllen = 0;
  }
  msg->msg_flags = 0;
  const std::size_t capacity = Capacity(msg);
  std::size_t pos = 0;
  while (!empty_data_before_control && !events_.empty() && pos < capacity) {
    Event& event = events_.front();
    if (event.is_error || event.type != type) break;
    event.offset += CopyOut(msg, &pos, std::span(event.bytes).subspan(event.offset));
    if (event.offset < event.bytes.size()) break;  // The buffer is full.
    events_.pop_front();
    if (type != detail::uapi::kRecordApplicationData) {
      msg->msg_flags |= MSG_EOR;  // The control record's last byte.
      break;                      // One control record per call.
    }
  }
  return static_cast<ssize_t>(pos);
}

SentRecord ParseSentRecord(const msghdr* msg) {
  SentRecord record;
  record.type = detail::uapi::kRecordApplicationData;
  if (msg->msg_control != nullptr) {
    for (cmsghdr* cmsg = CMSG_FIRSTHDR(msg); cmsg != nullptr; cmsg = CMSG_NXTHDR(const_cast<msghdr*>(msg), cmsg)) {
      if (cmsg->cmsg_level == detail::uapi::kSolTls && cmsg->cmsg_type == detail::uapi::kTlsSetRecordType) {
        record.type = *CMSG_DATA(cmsg);
      }
    }
  }
  for (std::size_t i = 0; i < msg->msg_iovlen; ++i) {
    const auto* base = static_cast<const std::uint8_t*>(msg->msg_iov[i].iov_base);
    record.bytes.insert(record.bytes.end(), base, base + msg->msg_iov[i].iov_len);
  }
  return record;
}

}  // namespace ktls::testing
