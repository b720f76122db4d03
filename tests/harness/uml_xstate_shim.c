/*
 * uml_xstate_shim.c: LD_PRELOAD shim that lets Debian's UML 6.1 kernel boot
 * on hosts with a large XSAVE area (AMX).
 *
 * Why it exists
 * -------------
 * A UML kernel runs guest processes as host processes under ptrace and moves
 * their FPU/vector state with PTRACE_GETREGSET / PTRACE_SETREGSET on
 * NT_X86_XSTATE. The host kernel's xstateregs_set() (arch/x86/kernel/fpu/
 * regset.c) refuses a SETREGSET whose length is not exactly the host's full
 * user XSAVE size, failing with EFAULT. UML 6.1 uses a buffer of a size fixed
 * at build time: 2696 bytes in Debian's build (x87/SSE, XSAVE header, AVX,
 * MPX, AVX-512, PKRU). AMX tile state makes the host's area bigger (11008
 * bytes on the machine this was written on), so 6.1 panics at boot with
 *     userspace - ptrace set fp regs failed, errno = 14
 * UML >= 6.13 sizes its buffer from the host at run time, so only 6.1 needs
 * this shim. Where the host's size is not larger than UML's (no AMX), every
 * call is passed through unchanged.
 *
 * What it does
 * ------------
 * It wraps ptrace(). For NT_X86_XSTATE requests with a buffer shorter than
 * the host's full state it keeps a full-size shadow copy per UML buffer:
 *   GETREGSET: read the full state into the shadow, hand UML its prefix.
 *   SETREGSET: overlay UML's prefix on the shadow, write the full state.
 * The key is UML's buffer address, which belongs to one guest task (several
 * guest threads share one host process, so the pid would be the wrong key):
 * the state beyond UML's prefix of one guest thread therefore never leaks
 * into another through a shared shadow. A SETREGSET for a buffer that has no
 * shadow yet (e.g. a freshly forked task whose buffer UML filled by copying),
 * or before the full size is known, first reads the full state from that pid
 * so the components UML does not know about keep their current values.
 * (Guest programs cannot enable AMX anyway: the permission request,
 * arch_prctl(ARCH_REQ_XCOMP_PERM), goes to the UML kernel, which does not
 * forward it. So that state stays in its initial form in practice.)
 *
 * Constraints
 * -----------
 * No malloc: UML links its own malloc wrapper that may not be usable from
 * this context, so all memory comes from mmap. UML issues these ptrace calls
 * from a single host thread, so no locking is needed.
 *
 * Built by tests/harness/ktls-uml with `cc -shared -fPIC -O2`, used only for
 * the 6.1 kernel.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <elf.h>
#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/ptrace.h>
#include <sys/types.h>
#include <sys/uio.h>

#ifndef NT_X86_XSTATE
#define NT_X86_XSTATE 0x202 /* <elf.h>, x86 extended state (XSAVE layout) */
#endif

/* Larger than any XSAVE area so far (AMX makes it about 11 KiB). Pages of a
 * shadow that are never written are never backed by memory. */
#define MAX_XSTATE_LEN (64 * 1024)
#define NUM_SHADOWS 4096

typedef long (*ptrace_fn)(int, pid_t, void *, void *);

struct shadow {
    const void *uml_buf;   /* UML's per-task buffer; NULL = free slot */
    unsigned char *state;  /* MAX_XSTATE_LEN bytes, mmap'ed */
    int valid;             /* state holds a full image read from the host */
};

static ptrace_fn real_ptrace;
static struct shadow *shadows;   /* open-addressed hash table, mmap'ed */
static unsigned char *scratch;   /* used when the table is full */
static size_t host_xstate_len;   /* full user XSAVE size; 0 = not known yet */

static void *map_anonymous(size_t len)
{
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

__attribute__((constructor)) static void resolve_real_ptrace(void)
{
    real_ptrace = (ptrace_fn)dlsym(RTLD_NEXT, "ptrace");
}

/* Returns the shadow for uml_buf, creating it if needed; NULL if out of
 * memory or slots (the caller then falls back to the scratch buffer). */
static struct shadow *shadow_for(const void *uml_buf)
{
    if (!shadows) {
        shadows = map_anonymous(sizeof(struct shadow) * NUM_SHADOWS);
        if (!shadows)
            return NULL;
    }
    size_t start = ((uintptr_t)uml_buf >> 4) % NUM_SHADOWS;
    for (size_t i = 0; i < NUM_SHADOWS; i++) {
        struct shadow *s = &shadows[(start + i) % NUM_SHADOWS];
        if (s->uml_buf == uml_buf)
            return s;
        if (s->uml_buf == NULL) {
            s->state = map_anonymous(MAX_XSTATE_LEN);
            if (!s->state)
                return NULL;
            s->uml_buf = uml_buf;
            s->valid = 0;
            return s;
        }
    }
    return NULL;
}

/* Reads the full state of pid into state and learns the host's size. */
static long get_full_state(pid_t pid, unsigned char *state)
{
    struct iovec iov = { state, MAX_XSTATE_LEN };
    long r = real_ptrace(PTRACE_GETREGSET, pid, (void *)(uintptr_t)NT_X86_XSTATE, &iov);
    if (r >= 0)
        host_xstate_len = iov.iov_len;
    return r;
}

static long get_xstate(pid_t pid, struct iovec *uml_iov, struct shadow *s, unsigned char *state)
{
    long r = get_full_state(pid, state);
    if (r < 0)
        return r;
    if (s)
        s->valid = 1;
    size_t n = uml_iov->iov_len < host_xstate_len ? uml_iov->iov_len : host_xstate_len;
    memcpy(uml_iov->iov_base, state, n);
    uml_iov->iov_len = n;
    return r;
}

static long set_xstate(pid_t pid, void *addr, struct iovec *uml_iov, struct shadow *s,
                       unsigned char *state)
{
    /* No full image for this buffer yet: start from the task's current
     * state so the parts UML does not send keep their values. */
    if (!s || !s->valid || host_xstate_len == 0) {
        long r = get_full_state(pid, state);
        if (r < 0)
            return r;
        if (s)
            s->valid = 1;
    }
    if (uml_iov->iov_len >= host_xstate_len)   /* UML's buffer is big enough */
        return real_ptrace(PTRACE_SETREGSET, pid, addr, uml_iov);
    memcpy(state, uml_iov->iov_base, uml_iov->iov_len);
    struct iovec iov = { state, host_xstate_len };
    return real_ptrace(PTRACE_SETREGSET, pid, addr, &iov);
}

long ptrace(enum __ptrace_request request, ...)
{
    va_list ap;
    va_start(ap, request);
    pid_t pid = va_arg(ap, pid_t);
    void *addr = va_arg(ap, void *);
    void *data = va_arg(ap, void *);
    va_end(ap);

    if (!real_ptrace)
        resolve_real_ptrace();
    if (!real_ptrace) {
        errno = ENOSYS;
        return -1;
    }

    struct iovec *uml_iov = data;
    int is_xstate = (request == PTRACE_GETREGSET || request == PTRACE_SETREGSET) &&
                    (uintptr_t)addr == NT_X86_XSTATE && uml_iov != NULL;
    if (!is_xstate || uml_iov->iov_len >= MAX_XSTATE_LEN ||
        (host_xstate_len != 0 && uml_iov->iov_len >= host_xstate_len))
        return real_ptrace(request, pid, addr, data);

    struct shadow *s = shadow_for(uml_iov->iov_base);
    unsigned char *state = s ? s->state : NULL;
    if (!state) {
        if (!scratch)
            scratch = map_anonymous(MAX_XSTATE_LEN);
        if (!scratch)
            return real_ptrace(request, pid, addr, data);
        state = scratch;
        s = NULL;   /* scratch content never counts as a valid shadow */
    }
    if (request == PTRACE_GETREGSET)
        return get_xstate(pid, uml_iov, s, state);
    return set_xstate(pid, addr, uml_iov, s, state);
}
