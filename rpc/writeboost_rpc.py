#  SPDX-License-Identifier: GPL-2.0-only OR BSD-3-Clause
"""rpc.py plugin for the writeboost bdev module.

Usage (SPDK's scripts/rpc.py, or `spdk-rpc` from the PyPI package `spdk`):

    PYTHONPATH=rpc /opt/spdk/scripts/rpc.py --plugin writeboost_rpc bdev_writeboost_create \\
        -b wb0 -c Cache0 -d Backing0 --writeback-threshold 50
    PYTHONPATH=rpc spdk-rpc --plugin writeboost_rpc bdev_writeboost_get_stats -b wb0

rpc.py's own options (-s socket, -t timeout, ...) go before the subcommand. A long
bdev_writeboost_drop_caches (or delete --writeback) may need a larger `-t`.

Only `args.client.call(method, params)` is used, so the plugin works with any SPDK Python
client version. The server validates every value; TUNABLES mirrors
writeboost::engine::config::TUNABLES (a test keeps them equal) for help texts and flags.
"""

import json

# name, min, max, default, dynamic (settable with bdev_writeboost_set_options)
TUNABLES = [
    ("writeback_threshold", 0, 100, 0, True),
    ("nr_max_batched_writeback", 1, 256, 32, True),
    ("update_sb_record_interval", 0, 3600, 60, True),
    ("sync_data_interval", 0, 3600, 0, True),
    ("read_cache_threshold", 0, 127, 0, True),
    ("sequential_cutoff_kib", 0, 1048576, 4096, True),
    ("sequential_cutoff_min_io_kib", 0, 1024, 64, True),
    ("degraded_error_threshold", 0, 1000000, 16, True),
    ("degraded_error_window_s", 1, 3600, 10, True),
    ("write_around_mode", 0, 1, 0, False),
]

BOOL_TUNABLES = {"write_around_mode"}


def _print(result):
    print(json.dumps(result, indent=2))


def _bool01(text):
    t = str(text).strip().lower()
    if t in ("1", "true", "yes", "on"):
        return 1
    if t in ("0", "false", "no", "off"):
        return 0
    raise ValueError(text)


def _add_tunables(p, dynamic_only):
    for name, lo, hi, default, dynamic in TUNABLES:
        if dynamic_only and not dynamic:
            continue
        flag = "--" + name.replace("_", "-")
        kind = "0|1" if name in BOOL_TUNABLES else "%d..%d" % (lo, hi)
        p.add_argument(flag, dest=name, type=_bool01 if name in BOOL_TUNABLES else int,
                       default=None, help="%s (%s, default %d)" % (name, kind, default))


def _tunable_params(args):
    params = {}
    for name, _lo, _hi, _default, _dynamic in TUNABLES:
        v = getattr(args, name, None)
        if v is not None:
            params[name] = bool(v) if name in BOOL_TUNABLES else v
    return params


def bdev_writeboost_create(args):
    params = {"name": args.name, "cache_bdev": args.cache_bdev, "backing_bdev": args.backing_bdev}
    if args.force_format:
        params["force_format"] = True
    if args.segment_size_kib is not None:
        params["segment_size_kib"] = args.segment_size_kib
    if args.cpumask is not None:
        params["cpumask"] = args.cpumask
    params.update(_tunable_params(args))
    _print(args.client.call("bdev_writeboost_create", params))


def bdev_writeboost_delete(args):
    params = {"name": args.name}
    if args.writeback:
        params["writeback"] = True
    _print(args.client.call("bdev_writeboost_delete", params))


def bdev_writeboost_format(args):
    params = {"cache_bdev": args.cache_bdev}
    if args.segment_size_kib is not None:
        params["segment_size_kib"] = args.segment_size_kib
    if args.force:
        params["force"] = True
    _print(args.client.call("bdev_writeboost_format", params))


def bdev_writeboost_get_stats(args):
    params = {"name": args.name} if args.name else None
    _print(args.client.call("bdev_writeboost_get_stats", params))


def bdev_writeboost_set_options(args):
    params = {"name": args.name}
    params.update(_tunable_params(args))
    _print(args.client.call("bdev_writeboost_set_options", params))


def bdev_writeboost_drop_caches(args):
    _print(args.client.call("bdev_writeboost_drop_caches", {"name": args.name}))


def bdev_writeboost_clear_stats(args):
    _print(args.client.call("bdev_writeboost_clear_stats", {"name": args.name}))


def spdk_rpc_plugin_initialize(subparsers):
    p = subparsers.add_parser(
        "bdev_writeboost_create",
        help="Create a writeboost volume (log-structured write-back cache) over a cache and a backing bdev; "
             "formats an all-zero cache, resumes a writeboost one, refuses anything else. Deferred until "
             "both base bdevs exist.")
    p.add_argument("-b", "--name", required=True, help="name of the new bdev")
    p.add_argument("-c", "--cache-bdev", dest="cache_bdev", required=True, help="fast bdev holding the log")
    p.add_argument("-d", "--backing-bdev", dest="backing_bdev", required=True, help="slow bdev holding the data")
    p.add_argument("--force-format", dest="force_format", action="store_true",
                   help="format the cache even if it holds data (destroys it)")
    p.add_argument("--segment-size-kib", dest="segment_size_kib", type=int,
                   help="segment size when formatting (power of two, 16..4096, default 512)")
    p.add_argument("--cpumask", dest="cpumask", default=None,
                   help="cores the volume thread may run on (SPDK cpumask: hex such as 0x2, or a list "
                        "such as [1]); default: the core of the thread that runs the create "
                        "(the app thread's core for an RPC or a JSON config)")
    _add_tunables(p, dynamic_only=False)
    p.set_defaults(func=bdev_writeboost_create)

    p = subparsers.add_parser("bdev_writeboost_delete",
                              help="Delete a writeboost volume (clean shutdown; dirty data stays on the cache)")
    p.add_argument("name", help="volume name")
    p.add_argument("--writeback", action="store_true", help="write back all dirty data first")
    p.set_defaults(func=bdev_writeboost_delete)

    p = subparsers.add_parser("bdev_writeboost_format",
                              help="Wipe writeboost metadata on a bdev so its next create starts an empty cache")
    p.add_argument("-c", "--cache-bdev", dest="cache_bdev", required=True, help="cache bdev (must not be claimed)")
    p.add_argument("--segment-size-kib", dest="segment_size_kib", type=int,
                   help="check that this segment size fits the bdev (power of two, 16..4096)")
    p.add_argument("--force", action="store_true", help="also discard dirty data that was not written back")
    p.set_defaults(func=bdev_writeboost_format)

    p = subparsers.add_parser("bdev_writeboost_get_stats", help="Statistics of one or all writeboost volumes")
    p.add_argument("-b", "--name", help="volume name (default: all)")
    p.set_defaults(func=bdev_writeboost_get_stats)

    p = subparsers.add_parser("bdev_writeboost_set_options", help="Change dynamic tunables of a volume")
    p.add_argument("-b", "--name", required=True, help="volume name")
    _add_tunables(p, dynamic_only=True)
    p.set_defaults(func=bdev_writeboost_set_options)

    p = subparsers.add_parser("bdev_writeboost_drop_caches",
                              help="Write back all dirty data; answers when none is left")
    p.add_argument("name", help="volume name")
    p.set_defaults(func=bdev_writeboost_drop_caches)

    p = subparsers.add_parser("bdev_writeboost_clear_stats", help="Reset the statistics of a volume")
    p.add_argument("name", help="volume name")
    p.set_defaults(func=bdev_writeboost_clear_stats)
