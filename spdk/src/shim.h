/*
 * A small C shim for what Rust cannot reach through bindgen: static inline helpers, the packed
 * struct spdk_app_opts and a non-variadic logging entry point. Part of writeboost-spdk-sys.
 */
#ifndef WRITEBOOST_SPDK_SHIM_H
#define WRITEBOOST_SPDK_SHIM_H

#include <stdint.h>
#include <stddef.h>

struct spdk_io_channel;
struct spdk_bdev_io;

/* spdk_io_channel_get_ctx() is static inline. */
void *wb_shim_io_channel_get_ctx(struct spdk_io_channel *ch);

/* spdk_log() is variadic; this logs one preformatted line. `level` is enum spdk_log_level. */
void wb_shim_log(int level, const char *file, int line, const char *func, const char *msg);

/*
 * Runs an SPDK application the way spdk_tgt does: parses the standard options (plus spdk_tgt's
 * "-f <pidfile>"), calls start_fn on the app thread once the framework is up, blocks until
 * spdk_app_stop() and returns the exit code. struct spdk_app_opts is packed, so it stays in C.
 */
int wb_shim_app_main(int argc, char **argv, const char *app_name, void (*start_fn)(void *ctx),
		     void *ctx);

/* sizeof(struct spdk_bdev_io): checked against the Rust bindings at build time. */
size_t wb_shim_sizeof_bdev_io(void);

#endif
