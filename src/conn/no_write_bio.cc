// conn/no_write_bio.cc
#include "conn/no_write_bio.h"

namespace ktls::detail {
namespace {

int NoWrite(BIO* bio, const char* /*data*/, int len) {
  if (auto* attempted = static_cast<bool*>(BIO_get_data(bio))) *attempted = true;
  BIO_clear_retry_flags(bio);
  return len;  // Discarded: see the header.
}

long Ctrl(BIO* /*bio*/, int cmd, long /*num*/, void* /*ptr*/) {
  // OpenSSL flushes after writing. Everything else is unsupported.
  return cmd == BIO_CTRL_FLUSH ? 1 : 0;
}

int Create(BIO* bio) {
  BIO_set_init(bio, 1);
  return 1;
}

const BIO_METHOD* Method() {
  static BIO_METHOD* method = [] {
    BIO_METHOD* m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "ktls no-write");
    if (m != nullptr) {
      BIO_meth_set_write(m, NoWrite);
      BIO_meth_set_ctrl(m, Ctrl);
      BIO_meth_set_create(m, Create);
    }
    return m;
  }();
  return method;
}

}  // namespace

BIO* NewNoWriteBio(bool* attempted) {
  const BIO_METHOD* method = Method();
  if (method == nullptr) return nullptr;
  BIO* bio = BIO_new(method);
  if (bio != nullptr) BIO_set_data(bio, attempted);
  return bio;
}

}  // namespace ktls::detail
