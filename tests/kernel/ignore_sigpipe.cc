// The kernel tests ignore SIGPIPE, as every program using
// Connection::SendFile must (sendfile(2) has no MSG_NOSIGNAL): several tests
// make peers vanish in the middle of a sendfile, and a kTLS socket closed
// after such a peer can raise it too, after the test that caused it.
#include <signal.h>

namespace {

const bool kSigpipeIgnored = ::signal(SIGPIPE, SIG_IGN) != SIG_ERR;

}  // namespace
