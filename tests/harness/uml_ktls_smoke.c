/*
 * uml_ktls_smoke.c: proves that a kernel's TLS offload works before the
 * harness trusts it. Run inside a UML guest by `ktls-uml fetch` (before a
 * downloaded kernel is marked valid) and by selftest.sh.
 *
 * For TLS 1.2 and 1.3 and each cipher the library supports (AES-128-GCM,
 * AES-256-GCM, AES-128-CCM, ChaCha20-Poly1305) it opens a loopback TCP pair,
 * installs the same key as TLS_TX on one end and TLS_RX on the other, sends
 * one record and checks that the plaintext comes back. That needs the tls
 * module and the kernel's AEAD implementations, loaded on demand.
 *
 * Plain C with its own copies of the uapi constants, so it builds with `cc`
 * against any libc headers. Exit status: 0 all passed, 1 a check failed.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

/* include/uapi/linux/tls.h, include/linux/socket.h, include/uapi/linux/tcp.h */
#define KTLS_SOL_TLS 282
#define KTLS_TCP_ULP 31
#define KTLS_TLS_TX 1
#define KTLS_TLS_RX 2

struct cipher {
    const char *name;
    unsigned short type;   /* TLS_CIPHER_* */
    size_t iv_len, key_len, salt_len;
};

static const struct cipher ciphers[] = {
    { "AES-128-GCM", 51, 8, 16, 4 },
    { "AES-256-GCM", 52, 8, 32, 4 },
    { "AES-128-CCM", 53, 8, 16, 4 },
    { "ChaCha20-Poly1305", 54, 12, 32, 0 },
};

static const struct { const char *name; unsigned short version; } versions[] = {
    { "TLS1.2", 0x0303 },
    { "TLS1.3", 0x0304 },
};

/* Fills a tls12_crypto_info_* struct: version, cipher, iv, key, salt,
 * rec_seq, all byte arrays, so the layout has no padding. */
static size_t build_crypto_info(unsigned char *info, unsigned short version,
                                const struct cipher *c)
{
    size_t len = 4 + c->iv_len + c->key_len + c->salt_len + 8;
    memcpy(info, &version, 2);
    memcpy(info + 2, &c->type, 2);
    for (size_t i = 4; i < len; i++)
        info[i] = (unsigned char)(i * 7);
    return len;
}

static int loopback_pair(int *client, int *server)
{
    struct sockaddr_in addr = { .sin_family = AF_INET };
    socklen_t addr_len = sizeof addr;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int listener = socket(AF_INET, SOCK_STREAM, 0);
    if (listener < 0 || bind(listener, (struct sockaddr *)&addr, addr_len) < 0 ||
        listen(listener, 1) < 0 || getsockname(listener, (struct sockaddr *)&addr, &addr_len) < 0)
        return -1;
    *client = socket(AF_INET, SOCK_STREAM, 0);
    if (*client < 0 || connect(*client, (struct sockaddr *)&addr, addr_len) < 0)
        return -1;
    *server = accept(listener, NULL, NULL);
    close(listener);
    struct timeval timeout = { .tv_sec = 10 };
    setsockopt(*server, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
    return *server < 0 ? -1 : 0;
}

/* Returns NULL on success, else the name of the step that failed (errno set). */
static const char *round_trip(unsigned short version, const struct cipher *c)
{
    static const char message[] = "hello kTLS";
    unsigned char info[128];
    char received[sizeof message] = { 0 };
    int client = -1, server = -1;
    const char *failed = NULL;
    size_t info_len = build_crypto_info(info, version, c);

    if (loopback_pair(&client, &server) < 0)
        failed = "loopback TCP pair";
    else if (setsockopt(client, IPPROTO_TCP, KTLS_TCP_ULP, "tls", sizeof "tls") < 0)
        failed = "setsockopt(TCP_ULP, \"tls\")";
    else if (setsockopt(client, KTLS_SOL_TLS, KTLS_TLS_TX, info, info_len) < 0)
        failed = "setsockopt(TLS_TX)";
    else if (setsockopt(server, IPPROTO_TCP, KTLS_TCP_ULP, "tls", sizeof "tls") < 0)
        failed = "setsockopt(TCP_ULP, \"tls\") on the receiver";
    else if (setsockopt(server, KTLS_SOL_TLS, KTLS_TLS_RX, info, info_len) < 0)
        failed = "setsockopt(TLS_RX)";
    else if (send(client, message, sizeof message, 0) != (ssize_t)sizeof message)
        failed = "send";
    else if (recv(server, received, sizeof received, MSG_WAITALL) != (ssize_t)sizeof message ||
             memcmp(received, message, sizeof message) != 0) {
        failed = "recv (plaintext did not come back)";
    }
    int saved_errno = errno;
    if (client >= 0)
        close(client);
    if (server >= 0)
        close(server);
    errno = saved_errno;
    return failed;
}

int main(void)
{
    int num_failed = 0;
    if (access("/proc/net/tls_stat", R_OK) != 0) {
        printf("FAIL: /proc/net/tls_stat missing: kernel has no kTLS\n");
        return 1;
    }
    for (size_t v = 0; v < sizeof versions / sizeof versions[0]; v++) {
        for (size_t i = 0; i < sizeof ciphers / sizeof ciphers[0]; i++) {
            errno = 0;
            const char *failed = round_trip(versions[v].version, &ciphers[i]);
            if (failed) {
                printf("FAIL: %s %s: %s: %s\n", versions[v].name, ciphers[i].name, failed,
                       strerror(errno));
                num_failed++;
            } else {
                printf("ok: %s %s round trip\n", versions[v].name, ciphers[i].name);
            }
        }
    }
    return num_failed ? 1 : 0;
}
