/*
 * C shim for writeboost-spdk-sys; see shim.h.
 */
#include <spdk/stdinc.h>
#include <spdk/bdev_module.h>
#include <spdk/event.h>
#include <spdk/log.h>
#include <spdk/thread.h>

#include "shim.h"

void *
wb_shim_io_channel_get_ctx(struct spdk_io_channel *ch)
{
	return spdk_io_channel_get_ctx(ch);
}

void
wb_shim_log(int level, const char *file, int line, const char *func, const char *msg)
{
	spdk_log((enum spdk_log_level)level, file, line, func, "%s\n", msg);
}

size_t
wb_shim_sizeof_bdev_io(void)
{
	return sizeof(struct spdk_bdev_io);
}

static const char *g_wb_pid_path;
static void (*g_wb_start_fn)(void *ctx);
static void *g_wb_start_ctx;

static void
wb_app_usage(void)
{
	printf(" -f <file>                 pidfile: save the pid to this file\n");
}

static int
wb_app_parse_arg(int ch, char *arg)
{
	if (ch == 'f') {
		g_wb_pid_path = arg;
		return 0;
	}
	return -EINVAL;
}

static void
wb_app_started(void *arg)
{
	(void)arg;
	if (g_wb_pid_path != NULL) {
		FILE *f = fopen(g_wb_pid_path, "w");

		if (f == NULL) {
			fprintf(stderr, "cannot create pid file '%s': %s\n", g_wb_pid_path, strerror(errno));
			exit(EXIT_FAILURE);
		}
		fprintf(f, "%d\n", getpid());
		fclose(f);
	}
	if (g_wb_start_fn != NULL) {
		g_wb_start_fn(g_wb_start_ctx);
	}
}

int
wb_shim_app_main(int argc, char **argv, const char *app_name, void (*start_fn)(void *ctx), void *ctx)
{
	struct spdk_app_opts opts = {};
	int rc;

	spdk_app_opts_init(&opts, sizeof(opts));
	opts.name = app_name;
	rc = spdk_app_parse_args(argc, argv, &opts, "f:", NULL, wb_app_parse_arg, wb_app_usage);
	if (rc != SPDK_APP_PARSE_ARGS_SUCCESS) {
		return rc == SPDK_APP_PARSE_ARGS_HELP ? 0 : rc;
	}
	g_wb_start_fn = start_fn;
	g_wb_start_ctx = ctx;
	rc = spdk_app_start(&opts, wb_app_started, NULL);
	spdk_app_fini();
	return rc;
}
