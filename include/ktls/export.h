// ktls/export.h: symbol visibility. The library is built with hidden
// visibility; only declarations marked KTLS_API are exported.
#ifndef KTLS_EXPORT_H_
#define KTLS_EXPORT_H_

#if defined(__GNUC__) || defined(__clang__)
#define KTLS_API __attribute__((visibility("default")))
#else
#define KTLS_API
#endif

#endif  // KTLS_EXPORT_H_
