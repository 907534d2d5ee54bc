/*
 * epochgate_shim.h - C ABI of vmm-shim: drive epochgate's output commit from a VMM.
 *
 * Link with libvmm_shim.a (add -lpthread -ldl -lm) or libvmm_shim.so, built by
 * `cargo build -p vmm-shim`. One eg_shim handle is one session with epochgate over its
 * control socket, driving one VM: connect (Hello), then protect / fence / commit / ...,
 * one request at a time, each answered by epochgate before the call returns.
 *
 * Return convention of every `int` function below (except eg_shim_next_event):
 *    0  done;
 *   >0  epochgate refused: the value is an EG_ERR_* code (a future epochgate may send codes
 *       above 15); the message is in eg_shim_last_error();
 *   -1  any other failure: I/O, a malformed reply, no reply within the timeout (30 s unless
 *       eg_shim_set_timeout says otherwise), epochgate closed the session, or a bad argument
 *       such as a NULL handle; the message is in eg_shim_last_error().
 * After EG_ERR_SHUTTING_DOWN, EG_ERR_LIVENESS_TIMEOUT, or a -1 saying epochgate closed the
 * session or stopped answering, the session is over: close the handle and connect again, or
 * renew it in place with eg_shim_reconnect (epochgate restarting for an upgrade).
 *
 * Liveness: a handle from eg_shim_connect pings epochgate by itself, from a background thread,
 * while the session is idle, at the interval epochgate asks for ([control] ping_interval_ms),
 * so an idle VMM is never taken for a dead one. If epochgate stops answering (nothing back for
 * its [control] liveness_timeout_ms after a ping or a call), the next call fails with -1 and
 * "epochgate stopped answering: ..." in eg_shim_last_error(), and so does every later one.
 * eg_shim_connect_with chooses the interval, the timeout, or no pinger at all.
 *
 * Out-pointers may be NULL: that value is then not returned. Strings are NUL-terminated.
 * A handle serves one call at a time; a call made while another runs on the same handle (from
 * another thread, or from inside the event callback) fails with -1 and does nothing.
 * Nothing here raises SIGPIPE, and no Rust panic ever unwinds into C (it becomes -1).
 */
#ifndef EPOCHGATE_SHIM_H
#define EPOCHGATE_SHIM_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Opaque session handle, from eg_shim_connect, freed by eg_shim_close. */
typedef struct eg_shim eg_shim;

/* What eg_shim_fence returns: `epoch` is sealed with `frames` frames of `bytes` bytes;
 * draining in-flight frames into it took `drain_ns` nanoseconds. */
typedef struct {
    uint64_t epoch;
    uint64_t frames;
    uint64_t bytes;
    uint64_t drain_ns;
} eg_fenced;

/* What eg_shim_stats returns: the VM's mode (EG_MODE_*) and counters. Epochs are 0 if none. */
typedef struct {
    uint32_t mode;
    uint64_t open_epoch;
    uint64_t sealed_epoch;
    uint64_t committed_epoch;
    uint64_t held_frames;
    uint64_t held_bytes;
    uint64_t rx_frames;
    uint64_t tx_frames;
    uint64_t dropped;
} eg_stats;

/* A checkpoint request epochgate sent on its own: checkpoint `epoch` now, or within
 * `within_ns` nanoseconds (EG_URGENCY_WITHIN; 0 for EG_URGENCY_NOW), because of `reason`. */
typedef struct {
    uint64_t epoch;
    uint32_t urgency; /* EG_URGENCY_* */
    uint64_t within_ns;
    uint32_t reason; /* EG_REASON_* */
} eg_event;

/* A VM's mode. */
enum {
    EG_MODE_PASSTHROUGH = 0, /* frames go out as they come */
    EG_MODE_PROTECTED = 1,   /* frames are held per epoch until it commits */
    EG_MODE_STANDBY = 2,     /* a backup not yet promoted; its egress is not sent */
    EG_MODE_FAILED = 3       /* protection broke down */
};

/* What eg_shim_unprotect does with held frames. */
enum {
    EG_RELEASE = 0, /* send them */
    EG_DROP = 1     /* throw them away */
};

/* eg_event.urgency */
enum {
    EG_URGENCY_NOW = 0,
    EG_URGENCY_WITHIN = 1
};

/* eg_event.reason */
enum {
    EG_REASON_IMMEDIATE_FRAME = 1,  /* a frame arrived that must not wait */
    EG_REASON_DEFERRAL_EXPIRED = 2, /* held frames waited as long as allowed */
    EG_REASON_HIGH_WATER = 3        /* the hold buffer reached its high-water mark */
};

/* Why epochgate refused: the positive return codes. */
enum {
    EG_ERR_BAD_MESSAGE = 1,       /* malformed message */
    EG_ERR_VERSION = 2,           /* wrong protocol version */
    EG_ERR_UNKNOWN_VM = 3,        /* no VM of that name */
    EG_ERR_VM_BUSY = 4,           /* another session has adopted that VM */
    EG_ERR_NOT_ADOPTED = 5,       /* a command before Hello */
    EG_ERR_ALREADY_ADOPTED = 6,   /* a second Hello on a session */
    EG_ERR_WRONG_EPOCH = 7,       /* the epoch named is not the one the command applies to */
    EG_ERR_NOT_SEALED = 8,        /* commit of an epoch that is not sealed */
    EG_ERR_NOT_PROTECTED = 9,     /* the command needs the VM to be protected */
    EG_ERR_WRONG_MODE = 10,       /* not valid in the VM's current mode */
    EG_ERR_BUSY = 11,             /* epochgate cannot take the command now */
    EG_ERR_PERMISSION_DENIED = 12, /* this uid/gid may not drive VMs */
    EG_ERR_SHUTTING_DOWN = 13,    /* epochgate is stopping; the session is over */
    EG_ERR_INTERNAL = 14,         /* epochgate failed internally */
    EG_ERR_LIVENESS_TIMEOUT = 15  /* the session missed its pings: the VM is failed, the
                                     session is over (every later call says this again) */
};

/* The control protocol version this library speaks. */
uint32_t eg_shim_version(void);

/* Connects to epochgate's control socket at `socket_path` and adopts VM `vm` (Hello).
 * Returns NULL on failure (refused, unreachable, bad argument): see eg_shim_last_error(). */
eg_shim *eg_shim_connect(const char *socket_path, const char *vm);

/* eg_shim_connect with the background pinger chosen. `ping_interval_ms`: -1 no pinger (the
 * caller pings itself with eg_shim_ping at least every [control] ping_interval_ms), 0 the
 * interval epochgate asks for (what eg_shim_connect does), > 0 this interval.
 * `answer_timeout_ms`: 0 epochgate's liveness timeout (4 ping intervals if it has none),
 * > 0 how long with nothing back means epochgate stopped answering. */
eg_shim *eg_shim_connect_with(const char *socket_path, const char *vm, int32_t ping_interval_ms,
                              int32_t answer_timeout_ms);

/* After the session ended (EG_ERR_SHUTTING_DOWN, or -1 saying epochgate closed the session):
 * starts a new session for the same VM on the same socket path, with the same pinger options,
 * retrying every 50 ms for up to `timeout_ms` (0: one attempt) while epochgate is not there or
 * is still shutting down; any other refusal is returned at once. 0 on success: the handle now
 * drives the new session, which is in a NEW EPOCH (eg_shim_welcome_epoch and
 * eg_shim_welcome_mode give it; a VM that was protected comes back protected). The old epochs
 * are gone with what they held: checkpoint again from the new epoch. eg_shim_fd may change:
 * fetch it again. Not from inside the event callback. */
int eg_shim_reconnect(eg_shim *shim, int64_t timeout_ms);

/* The pinger's interval and answer timeout in milliseconds (0 without a pinger, -1 for NULL). */
int64_t eg_shim_ping_interval_ms(const eg_shim *shim);
int64_t eg_shim_answer_timeout_ms(const eg_shim *shim);

/* The VM's open epoch (0 if none) and mode (EG_MODE_*) as Hello reported them.
 * NULL gives 0 and UINT32_MAX. */
uint64_t eg_shim_welcome_epoch(const eg_shim *shim);
uint32_t eg_shim_welcome_mode(const eg_shim *shim);

/* How long each call waits for its reply: `timeout_ms` milliseconds, < 0 forever.
 * The default is 30 s. */
int eg_shim_set_timeout(eg_shim *shim, int32_t timeout_ms);

/* Starts protection; the first protected (open) epoch goes to *epoch_out. */
int eg_shim_protect(eg_shim *shim, uint64_t *epoch_out);

/* Seals the open epoch `epoch` (frames sent after this belong to the next); what the sealed
 * epoch holds goes to *out. */
int eg_shim_fence(eg_shim *shim, uint64_t epoch, eg_fenced *out);

/* The checkpoint of sealed epoch `epoch` is durable: its frames are released; how many goes
 * to *frames_out. */
int eg_shim_commit(eg_shim *shim, uint64_t epoch, uint64_t *frames_out);

/* Stops protection; held frames are released (EG_RELEASE) or dropped (EG_DROP); the counts
 * go to *released_out and *dropped_out. */
int eg_shim_unprotect(eg_shim *shim, uint32_t how, uint64_t *released_out, uint64_t *dropped_out);

/* Drops every held frame (e.g. after a failed checkpoint); how many goes to *frames_out. */
int eg_shim_discard(eg_shim *shim, uint64_t *frames_out);

/* Makes this standby VM live in `mode` (EG_MODE_PASSTHROUGH or EG_MODE_PROTECTED); the
 * number of announcements sent goes to *announced_out. */
int eg_shim_promote(eg_shim *shim, uint32_t mode, uint32_t *announced_out);

/* Returns this VM to standby: its output stops leaving this host, and what it held or had
 * waiting is dropped; how many goes to *dropped_out. */
int eg_shim_demote(eg_shim *shim, uint64_t *dropped_out);

/* Checks that epochgate answers (the Pong must echo a fresh token). */
int eg_shim_ping(eg_shim *shim);

/* The VM's mode and counters, into *out. */
int eg_shim_stats(eg_shim *shim, eg_stats *out);

/* The next checkpoint request: events read during earlier calls first, else waits up to
 * `timeout_ms` (< 0 forever, 0 just checks). Returns 1 = one was stored in *out, 0 = none
 * came in time (or, with a callback set, what came went to the callback), -1 = failure,
 * including epochgate refusing/closing the session (e.g. shutting down): see
 * eg_shim_last_error(). */
int eg_shim_next_event(eg_shim *shim, int32_t timeout_ms, eg_event *out);

/* From now on passes every event to cb(event, user) as soon as it is read, instead of queueing
 * it for eg_shim_next_event; `user` comes back unchanged. The callback runs on the calling
 * thread inside whichever eg_shim_* call reads the event (so also inside eg_shim_next_event),
 * and `event` is valid only during it. It may not call eg_shim_* functions on the same handle
 * (they fail with -1). A NULL `cb` queues events again. */
int eg_shim_set_event_callback(eg_shim *shim, void (*cb)(const eg_event *event, void *user),
                               void *user);

/* What to poll(2) for POLLIN (events, epochgate closing or not answering); -1 for NULL: the
 * session's socket, or with the pinger an epoll descriptor over the socket and what the pinger
 * took from it, readable while a message waits in either.
 * Events may already have been read by a call: check eg_shim_next_event(shim, 0, ...) before
 * polling. Do not read, write or close it. */
int eg_shim_fd(const eg_shim *shim);

/* The message of the last failure on this thread ("" if none). Never NULL; the pointer stays
 * valid as long as the thread lives, but the next failure on this thread replaces the text. */
const char *eg_shim_last_error(void);

/* Ends the session and frees the handle (NULL is fine). Not from inside the event callback:
 * there it does nothing. */
void eg_shim_close(eg_shim *shim);

#ifdef __cplusplus
}
#endif

#endif /* EPOCHGATE_SHIM_H */
