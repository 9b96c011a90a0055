//! Hand-written declarations of the part of SPDK's API that writeboost's glue uses, for
//! checking the glue (`cargo check`/`clippy --features spdk`) on a machine without SPDK:
//! set `WRITEBOOST_SPDK_STUB=1` (build.rs then skips bindgen and the shim).
//!
//! Nothing built against these declarations can run or link: struct layouts keep only the
//! fields the glue touches (the real structs are larger), so a stub build is for type checking
//! only, and linking it fails on the undefined SPDK symbols. Signatures and constants follow
//! SPDK v26.05's public headers (`include/spdk/*.h`). The glue compiles against both these and
//! the real bindings; a field or function it starts using must be added here too (the stub
//! check fails until it is).

#![allow(non_camel_case_types, dead_code)]

use std::ffi::{c_char, c_int, c_uint, c_void};

macro_rules! opaque {
    ($($name:ident),* $(,)?) => {$(
        #[repr(C)]
        pub struct $name {
            _private: [u8; 0],
        }
    )*};
}

opaque!(
    spdk_bdev_desc,
    spdk_io_channel,
    spdk_thread,
    spdk_poller,
    spdk_json_write_ctx,
    spdk_json_val,
    spdk_jsonrpc_request,
);

/// All-zero `Default`, as bindgen derives it for C structs.
macro_rules! zeroed_default {
    ($($name:ident),* $(,)?) => {$(
        impl Default for $name {
            fn default() -> Self {
                // SAFETY: plain C data (integers, pointers, optional function pointers) for
                // which all-zero is a valid value.
                unsafe { std::mem::zeroed() }
            }
        }
    )*};
}

pub type spdk_bdev_io_type = c_uint;
pub type spdk_bdev_io_status = c_int;
pub type spdk_bdev_event_type = c_uint;
pub type spdk_bdev_claim_type = c_uint;
pub type spdk_log_level = c_int;
pub type spdk_thread_poller_rc = c_uint;

pub const SPDK_BDEV_IO_TYPE_READ: spdk_bdev_io_type = 1;
pub const SPDK_BDEV_IO_TYPE_WRITE: spdk_bdev_io_type = 2;
pub const SPDK_BDEV_IO_TYPE_UNMAP: spdk_bdev_io_type = 3;
pub const SPDK_BDEV_IO_TYPE_FLUSH: spdk_bdev_io_type = 4;
pub const SPDK_BDEV_IO_TYPE_RESET: spdk_bdev_io_type = 5;
pub const SPDK_BDEV_IO_TYPE_WRITE_ZEROES: spdk_bdev_io_type = 9;
pub const SPDK_BDEV_IO_STATUS_SUCCESS: spdk_bdev_io_status = 1;
pub const SPDK_BDEV_IO_STATUS_FAILED: spdk_bdev_io_status = -1;
pub const SPDK_BDEV_EVENT_REMOVE: spdk_bdev_event_type = 0;
pub const SPDK_BDEV_CLAIM_NONE: spdk_bdev_claim_type = 0;
pub const SPDK_BDEV_CLAIM_EXCL_WRITE: spdk_bdev_claim_type = 1;
pub const SPDK_LOG_ERROR: spdk_log_level = 0;
pub const SPDK_LOG_WARN: spdk_log_level = 1;
pub const SPDK_LOG_NOTICE: spdk_log_level = 2;
pub const SPDK_POLLER_IDLE: spdk_thread_poller_rc = 0;
pub const SPDK_POLLER_BUSY: spdk_thread_poller_rc = 1;
pub const SPDK_RPC_RUNTIME: u32 = 2;
pub const SPDK_JSONRPC_ERROR_INVALID_PARAMS: i32 = -32602;
pub const SPDK_VTOPHYS_ERROR: i32 = -1;

pub type spdk_msg_fn = Option<unsafe extern "C" fn(ctx: *mut c_void)>;
pub type spdk_poller_fn = Option<unsafe extern "C" fn(ctx: *mut c_void) -> c_int>;
pub type spdk_bdev_io_completion_cb =
    Option<unsafe extern "C" fn(bdev_io: *mut spdk_bdev_io, success: bool, cb_arg: *mut c_void)>;
pub type spdk_bdev_io_get_buf_cb = Option<
    unsafe extern "C" fn(ch: *mut spdk_io_channel, bdev_io: *mut spdk_bdev_io, success: bool),
>;
pub type spdk_bdev_io_wait_cb = Option<unsafe extern "C" fn(cb_arg: *mut c_void)>;
pub type spdk_bdev_event_cb_t = Option<
    unsafe extern "C" fn(ty: spdk_bdev_event_type, bdev: *mut spdk_bdev, event_ctx: *mut c_void),
>;
pub type spdk_bdev_unregister_cb = Option<unsafe extern "C" fn(cb_arg: *mut c_void, rc: c_int)>;
pub type spdk_io_channel_create_cb =
    Option<unsafe extern "C" fn(io_device: *mut c_void, ctx_buf: *mut c_void) -> c_int>;
pub type spdk_io_channel_destroy_cb =
    Option<unsafe extern "C" fn(io_device: *mut c_void, ctx_buf: *mut c_void)>;
pub type spdk_io_device_unregister_cb = Option<unsafe extern "C" fn(io_device: *mut c_void)>;
pub type spdk_json_write_cb =
    Option<unsafe extern "C" fn(cb_ctx: *mut c_void, data: *const c_void, size: usize) -> c_int>;
pub type spdk_rpc_method_handler =
    Option<unsafe extern "C" fn(request: *mut spdk_jsonrpc_request, params: *const spdk_json_val)>;

#[repr(C)]
#[derive(Clone, Copy)]
pub struct iovec {
    pub iov_base: *mut c_void,
    pub iov_len: usize,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub union spdk_uuid_u {
    pub raw: [u8; 16],
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct spdk_uuid {
    pub u: spdk_uuid_u,
}

#[repr(C)]
pub struct spdk_cpuset {
    cpus: [u8; 128],
    str_: [c_char; 257],
}

#[repr(C)]
pub struct spdk_bdev_module {
    pub module_init: Option<unsafe extern "C" fn() -> c_int>,
    pub init_complete: Option<unsafe extern "C" fn()>,
    pub fini_start: Option<unsafe extern "C" fn()>,
    pub module_fini: Option<unsafe extern "C" fn()>,
    pub config_json: Option<unsafe extern "C" fn(w: *mut spdk_json_write_ctx) -> c_int>,
    pub name: *const c_char,
    pub get_ctx_size: Option<unsafe extern "C" fn() -> c_int>,
    pub examine_config: Option<unsafe extern "C" fn(bdev: *mut spdk_bdev)>,
    pub examine_disk: Option<unsafe extern "C" fn(bdev: *mut spdk_bdev)>,
}

#[repr(C)]
pub struct spdk_bdev_fn_table {
    pub destruct: Option<unsafe extern "C" fn(ctx: *mut c_void) -> c_int>,
    pub submit_request:
        Option<unsafe extern "C" fn(ch: *mut spdk_io_channel, bdev_io: *mut spdk_bdev_io)>,
    pub io_type_supported:
        Option<unsafe extern "C" fn(ctx: *mut c_void, ty: spdk_bdev_io_type) -> bool>,
    pub get_io_channel: Option<unsafe extern "C" fn(ctx: *mut c_void) -> *mut spdk_io_channel>,
    pub dump_info_json:
        Option<unsafe extern "C" fn(ctx: *mut c_void, w: *mut spdk_json_write_ctx) -> c_int>,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct spdk_bdev_claim_v1 {
    pub module: *mut spdk_bdev_module,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub union spdk_bdev_claim {
    pub v1: spdk_bdev_claim_v1,
}

#[repr(C)]
pub struct spdk_bdev_internal {
    pub claim_type: spdk_bdev_claim_type,
    pub claim: spdk_bdev_claim,
}

#[repr(C)]
pub struct spdk_bdev {
    pub ctxt: *mut c_void,
    pub name: *mut c_char,
    pub product_name: *mut c_char,
    pub write_cache: c_int,
    pub blocklen: u32,
    pub blockcnt: u64,
    pub required_alignment: u8,
    pub uuid: spdk_uuid,
    pub module: *mut spdk_bdev_module,
    pub fn_table: *const spdk_bdev_fn_table,
    pub internal: spdk_bdev_internal,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub union spdk_bdev_nvme_cdw12 {
    pub raw: u32,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct spdk_bdev_io_block_params {
    pub iovs: *mut iovec,
    pub iovcnt: c_int,
    pub num_blocks: u64,
    pub offset_blocks: u64,
    pub nvme_cdw12: spdk_bdev_nvme_cdw12,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub union spdk_bdev_io_u {
    pub bdev: spdk_bdev_io_block_params,
}

#[repr(C)]
pub struct spdk_bdev_io {
    pub bdev: *mut spdk_bdev,
    pub type_: u8,
    pub u: spdk_bdev_io_u,
    /// Cache-line aligned in SPDK (`driver_ctx[0] __attribute__((aligned(SPDK_CACHE_LINE_SIZE)))`).
    pub driver_ctx: [u8; 0],
}

#[repr(C)]
pub struct spdk_bdev_io_wait_entry {
    pub bdev: *mut spdk_bdev,
    pub cb_fn: spdk_bdev_io_wait_cb,
    pub cb_arg: *mut c_void,
    pub dep_unblock: bool,
}

zeroed_default!(
    spdk_uuid,
    spdk_cpuset,
    spdk_bdev_module,
    spdk_bdev_fn_table,
    spdk_bdev,
    spdk_bdev_io_wait_entry,
);

extern "C" {
    // thread.h
    pub fn spdk_get_thread() -> *mut spdk_thread;
    pub fn spdk_thread_get_app_thread() -> *mut spdk_thread;
    pub fn spdk_thread_create(name: *const c_char, cpumask: *const spdk_cpuset)
        -> *mut spdk_thread;
    pub fn spdk_thread_exit(thread: *mut spdk_thread) -> c_int;
    pub fn spdk_thread_send_msg(
        thread: *const spdk_thread,
        f: spdk_msg_fn,
        ctx: *mut c_void,
    ) -> c_int;
    pub fn spdk_poller_register_named(
        f: spdk_poller_fn,
        arg: *mut c_void,
        period_microseconds: u64,
        name: *const c_char,
    ) -> *mut spdk_poller;
    pub fn spdk_poller_unregister(ppoller: *mut *mut spdk_poller);
    pub fn spdk_io_device_register(
        io_device: *mut c_void,
        create_cb: spdk_io_channel_create_cb,
        destroy_cb: spdk_io_channel_destroy_cb,
        ctx_size: u32,
        name: *const c_char,
    );
    pub fn spdk_io_device_unregister(
        io_device: *mut c_void,
        unregister_cb: spdk_io_device_unregister_cb,
    );
    pub fn spdk_get_io_channel(io_device: *mut c_void) -> *mut spdk_io_channel;
    pub fn spdk_put_io_channel(ch: *mut spdk_io_channel);

    // env.h
    pub fn spdk_get_ticks() -> u64;
    pub fn spdk_get_ticks_hz() -> u64;
    pub fn spdk_env_get_current_core() -> u32;
    pub fn spdk_env_get_first_core() -> u32;
    pub fn spdk_env_get_main_core() -> u32;
    pub fn spdk_env_get_next_core(prev_core: u32) -> u32;
    pub fn spdk_dma_malloc(size: usize, align: usize, unused: *mut u64) -> *mut c_void;
    pub fn spdk_dma_free(buf: *mut c_void);
    pub fn spdk_vtophys(buf: *const c_void, size: *mut u64) -> u64;

    // cpuset.h, event.h
    pub fn spdk_cpuset_and(dst: *mut spdk_cpuset, src: *const spdk_cpuset);
    pub fn spdk_cpuset_copy(dst: *mut spdk_cpuset, src: *const spdk_cpuset);
    pub fn spdk_cpuset_count(set: *const spdk_cpuset) -> u32;
    pub fn spdk_cpuset_fmt(set: *mut spdk_cpuset) -> *const c_char;
    pub fn spdk_cpuset_parse(set: *mut spdk_cpuset, mask: *const c_char) -> c_int;
    pub fn spdk_cpuset_set_cpu(set: *mut spdk_cpuset, cpu: u32, state: bool);
    pub fn spdk_app_get_core_mask() -> *const spdk_cpuset;

    // uuid.h
    pub fn spdk_uuid_generate(uuid: *mut spdk_uuid);
    pub fn spdk_uuid_generate_sha1(
        uuid: *mut spdk_uuid,
        ns_uuid: *mut spdk_uuid,
        name: *const c_char,
        len: usize,
    ) -> c_int;
    pub fn spdk_uuid_parse(uuid: *mut spdk_uuid, uuid_str: *const c_char) -> c_int;

    // bdev.h
    pub fn spdk_bdev_open_ext(
        bdev_name: *const c_char,
        write: bool,
        event_cb: spdk_bdev_event_cb_t,
        event_ctx: *mut c_void,
        desc: *mut *mut spdk_bdev_desc,
    ) -> c_int;
    pub fn spdk_bdev_close(desc: *mut spdk_bdev_desc);
    pub fn spdk_bdev_desc_get_bdev(desc: *mut spdk_bdev_desc) -> *mut spdk_bdev;
    pub fn spdk_bdev_get_by_name(bdev_name: *const c_char) -> *mut spdk_bdev;
    pub fn spdk_bdev_first() -> *mut spdk_bdev;
    pub fn spdk_bdev_next(prev: *mut spdk_bdev) -> *mut spdk_bdev;
    pub fn spdk_bdev_get_name(bdev: *const spdk_bdev) -> *const c_char;
    pub fn spdk_bdev_get_module_name(bdev: *const spdk_bdev) -> *const c_char;
    pub fn spdk_bdev_get_block_size(bdev: *const spdk_bdev) -> u32;
    pub fn spdk_bdev_get_num_blocks(bdev: *const spdk_bdev) -> u64;
    pub fn spdk_bdev_get_uuid(bdev: *const spdk_bdev) -> *const spdk_uuid;
    pub fn spdk_bdev_has_write_cache(bdev: *const spdk_bdev) -> bool;
    pub fn spdk_bdev_io_type_supported(bdev: *mut spdk_bdev, io_type: spdk_bdev_io_type) -> bool;
    pub fn spdk_bdev_get_io_channel(desc: *mut spdk_bdev_desc) -> *mut spdk_io_channel;
    pub fn spdk_bdev_read(
        desc: *mut spdk_bdev_desc,
        ch: *mut spdk_io_channel,
        buf: *mut c_void,
        offset: u64,
        nbytes: u64,
        cb: spdk_bdev_io_completion_cb,
        cb_arg: *mut c_void,
    ) -> c_int;
    pub fn spdk_bdev_write(
        desc: *mut spdk_bdev_desc,
        ch: *mut spdk_io_channel,
        buf: *mut c_void,
        offset: u64,
        nbytes: u64,
        cb: spdk_bdev_io_completion_cb,
        cb_arg: *mut c_void,
    ) -> c_int;
    pub fn spdk_bdev_flush(
        desc: *mut spdk_bdev_desc,
        ch: *mut spdk_io_channel,
        offset: u64,
        length: u64,
        cb: spdk_bdev_io_completion_cb,
        cb_arg: *mut c_void,
    ) -> c_int;
    pub fn spdk_bdev_unmap(
        desc: *mut spdk_bdev_desc,
        ch: *mut spdk_io_channel,
        offset: u64,
        nbytes: u64,
        cb: spdk_bdev_io_completion_cb,
        cb_arg: *mut c_void,
    ) -> c_int;
    pub fn spdk_bdev_queue_io_wait(
        bdev: *mut spdk_bdev,
        ch: *mut spdk_io_channel,
        entry: *mut spdk_bdev_io_wait_entry,
    ) -> c_int;
    pub fn spdk_bdev_free_io(bdev_io: *mut spdk_bdev_io);

    // bdev_module.h
    pub fn spdk_bdev_register(bdev: *mut spdk_bdev) -> c_int;
    pub fn spdk_bdev_unregister(
        bdev: *mut spdk_bdev,
        cb_fn: spdk_bdev_unregister_cb,
        cb_arg: *mut c_void,
    );
    pub fn spdk_bdev_destruct_done(bdev: *mut spdk_bdev, bdeverrno: c_int);
    pub fn spdk_bdev_module_list_add(bdev_module: *mut spdk_bdev_module);
    pub fn spdk_bdev_module_examine_done(module: *mut spdk_bdev_module);
    pub fn spdk_bdev_module_claim_bdev(
        bdev: *mut spdk_bdev,
        desc: *mut spdk_bdev_desc,
        module: *mut spdk_bdev_module,
    ) -> c_int;
    pub fn spdk_bdev_module_release_bdev(bdev: *mut spdk_bdev);
    pub fn spdk_bdev_claim_get_name(claim_type: spdk_bdev_claim_type) -> *const c_char;
    pub fn spdk_bdev_io_complete(bdev_io: *mut spdk_bdev_io, status: spdk_bdev_io_status);
    pub fn spdk_bdev_io_get_buf(bdev_io: *mut spdk_bdev_io, cb: spdk_bdev_io_get_buf_cb, len: u64);

    // json.h, jsonrpc.h, rpc.h
    pub fn spdk_json_write_begin(
        write_cb: spdk_json_write_cb,
        cb_ctx: *mut c_void,
        flags: u32,
    ) -> *mut spdk_json_write_ctx;
    pub fn spdk_json_write_end(w: *mut spdk_json_write_ctx) -> c_int;
    pub fn spdk_json_write_val(w: *mut spdk_json_write_ctx, val: *const spdk_json_val) -> c_int;
    pub fn spdk_json_write_val_raw(
        w: *mut spdk_json_write_ctx,
        data: *const c_void,
        len: usize,
    ) -> c_int;
    pub fn spdk_json_write_null(w: *mut spdk_json_write_ctx) -> c_int;
    pub fn spdk_json_write_bool(w: *mut spdk_json_write_ctx, val: bool) -> c_int;
    pub fn spdk_json_write_int64(w: *mut spdk_json_write_ctx, val: i64) -> c_int;
    pub fn spdk_json_write_uint64(w: *mut spdk_json_write_ctx, val: u64) -> c_int;
    pub fn spdk_json_write_string_raw(
        w: *mut spdk_json_write_ctx,
        val: *const c_char,
        len: usize,
    ) -> c_int;
    pub fn spdk_json_write_name(w: *mut spdk_json_write_ctx, name: *const c_char) -> c_int;
    pub fn spdk_json_write_name_raw(
        w: *mut spdk_json_write_ctx,
        name: *const c_char,
        len: usize,
    ) -> c_int;
    pub fn spdk_json_write_array_begin(w: *mut spdk_json_write_ctx) -> c_int;
    pub fn spdk_json_write_array_end(w: *mut spdk_json_write_ctx) -> c_int;
    pub fn spdk_json_write_object_begin(w: *mut spdk_json_write_ctx) -> c_int;
    pub fn spdk_json_write_object_end(w: *mut spdk_json_write_ctx) -> c_int;
    pub fn spdk_jsonrpc_begin_result(
        request: *mut spdk_jsonrpc_request,
    ) -> *mut spdk_json_write_ctx;
    pub fn spdk_jsonrpc_end_result(request: *mut spdk_jsonrpc_request, w: *mut spdk_json_write_ctx);
    pub fn spdk_jsonrpc_send_error_response(
        request: *mut spdk_jsonrpc_request,
        error_code: c_int,
        msg: *const c_char,
    );
    pub fn spdk_rpc_register_method(
        method: *const c_char,
        func: spdk_rpc_method_handler,
        state_mask: u32,
    );

    // The shim (src/shim.h), not compiled in a stub build.
    pub fn wb_shim_app_main(
        argc: c_int,
        argv: *mut *mut c_char,
        app_name: *const c_char,
        start_fn: Option<unsafe extern "C" fn(ctx: *mut c_void)>,
        ctx: *mut c_void,
    ) -> c_int;
    pub fn wb_shim_io_channel_get_ctx(ch: *mut spdk_io_channel) -> *mut c_void;
    pub fn wb_shim_log(
        level: c_int,
        file: *const c_char,
        line: c_int,
        func: *const c_char,
        msg: *const c_char,
    );
}
