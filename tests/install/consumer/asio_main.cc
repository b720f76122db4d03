// Builds against an installed ktls::asio (header-only, with Boost) and
// makes a stream: the header and its dependencies resolve from the install.
#include <ktls/asio.h>

#include <boost/asio/io_context.hpp>

int main() {
  boost::asio::io_context io;
  ktls::asio::stream s{boost::asio::ip::tcp::socket(io)};
  return s.is_open() ? 1 : 0;  // A stream over a closed socket owns nothing.
}
