//! Processes, RPC calls and scratch files for the end-to-end tests. Everything a test starts or
//! creates is owned by a guard that kills it (by pid) or removes it on drop, also on panic.

use serde_json::Value;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub struct Env {
    pub spdk: PathBuf,
    pub root: PathBuf,
    pub tgt: PathBuf,
    pub preload: PathBuf,
    pub scratch: Scratch,
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A directory under /tmp removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Scratch {
        let p = PathBuf::from(format!("/tmp/wb-e2e-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create scratch dir");
        Scratch(p)
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::env::var_os("WB_E2E_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// A child process killed (SIGKILL, by pid) and reaped on drop.
pub struct Proc {
    pub child: Option<Child>,
    pub log: PathBuf,
    /// The child is coreutils `timeout -k ...` around the app: it is stopped with SIGTERM (which
    /// `timeout` forwards, then kills the app after its grace period), never SIGKILLed itself
    /// (that would orphan the app).
    pub via_timeout: bool,
    /// An RPC socket removed (with its lock file) on drop.
    pub sock: Option<PathBuf>,
}

impl Proc {
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            if self.via_timeout {
                // Our own child's pid, not reaped yet (still in self.child): it cannot be reused.
                let _ = Command::new("kill")
                    .args(["-TERM", &c.id().to_string()])
                    .status();
                let t0 = Instant::now();
                while t0.elapsed() < Duration::from_secs(15) {
                    if let Ok(Some(_)) = c.try_wait() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits for exit up to `timeout`; kills on timeout. Returns (exited in time, success).
    pub fn wait(&mut self, timeout: Duration) -> (bool, bool) {
        let Some(c) = self.child.as_mut() else {
            return (true, false);
        };
        let t0 = Instant::now();
        loop {
            if let Ok(Some(st)) = c.try_wait() {
                self.child = None;
                return (true, st.success());
            }
            if t0.elapsed() > timeout {
                self.kill9();
                return (false, false);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let t = self.log_text();
        let v: Vec<&str> = t.lines().collect();
        v[v.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
        if let Some(s) = self.sock.take() {
            remove_sock(&s);
        }
    }
}

/// Starts `cmd` with stdout+stderr to `log`.
pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> Proc {
    let f = std::fs::File::create(log).expect("create log");
    let f2 = f.try_clone().expect("dup log");
    cmd.stdout(Stdio::from(f))
        .stderr(Stdio::from(f2))
        .stdin(Stdio::null());
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
    Proc {
        child: Some(child),
        log: log.to_path_buf(),
        via_timeout: false,
        sock: None,
    }
}

/// How a long-running SPDK application is started: its cores (`-m MASK` or `--lcores MAP`),
/// whether the writeboost module is preloaded, and an outer `timeout` in seconds (coreutils,
/// with the preload set on the app itself through `env`, never on the wrapper).
pub struct AppOpts<'a> {
    pub cores: &'a [&'a str],
    pub preload: bool,
    pub timeout_secs: Option<u64>,
}

/// A free TCP port on 127.0.0.1 (bound then released).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind port 0");
    l.local_addr().expect("local addr").port()
}

pub fn unique(tag: &str) -> String {
    format!(
        "{tag}-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// Result of an rpc.py call: parsed JSON on success, the error text otherwise.
pub type RpcResult = Result<Value, String>;

pub struct Target {
    pub proc: Proc,
    pub sock: PathBuf,
}

/// Removes an RPC socket and the lock file SPDK keeps next to it.
pub fn remove_sock(sock: &Path) {
    let _ = std::fs::remove_file(sock);
    let _ = std::fs::remove_file(format!("{}.lock", sock.display()));
}

impl Drop for Target {
    fn drop(&mut self) {
        self.proc.kill9();
        remove_sock(&self.sock);
    }
}

impl Env {
    fn rpc_cmd(&self, sock: &Path, args: &[&str]) -> Command {
        let mut c = Command::new("python3");
        c.arg(self.spdk.join("scripts/rpc.py"))
            .arg("-s")
            .arg(sock)
            .arg("-t")
            .arg("120")
            .arg("--plugin")
            .arg("writeboost_rpc")
            .args(args)
            .env("PYTHONPATH", self.root.join("rpc"));
        c
    }

    /// Runs `rpc.py -s sock --plugin writeboost_rpc args...`.
    pub fn rpc(&self, sock: &Path, args: &[&str]) -> RpcResult {
        let out = self
            .rpc_cmd(sock, args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run rpc.py: {e}"));
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        if out.status.success() {
            if stdout.trim().is_empty() {
                return Ok(Value::Null);
            }
            // Most methods print JSON; some print a bare name.
            return Ok(serde_json::from_str(&stdout)
                .unwrap_or_else(|_| Value::String(stdout.trim().to_string())));
        }
        Err(format!("{stdout}{}", String::from_utf8_lossy(&out.stderr)))
    }

    /// A JSON-RPC call straight over the application's UNIX socket, without Python: for the
    /// many calls that need neither rpc.py nor the plugin (a Python start costs seconds on a
    /// loaded 2-CPU machine). `Err` holds the error's message and code.
    pub fn call(&self, sock: &Path, method: &str, params: Value) -> RpcResult {
        let mut s =
            UnixStream::connect(sock).map_err(|e| format!("connect {}: {e}", sock.display()))?;
        s.set_read_timeout(Some(Duration::from_secs(120)))
            .map_err(|e| e.to_string())?;
        let mut req = serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": method});
        if !params.is_null() {
            req["params"] = params;
        }
        s.write_all(req.to_string().as_bytes())
            .map_err(|e| format!("send {method}: {e}"))?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 65536];
        let resp: Value = loop {
            let n = s.read(&mut chunk).map_err(|e| format!("{method}: {e}"))?;
            if n == 0 {
                return Err(format!("{method}: connection closed without a reply"));
            }
            buf.extend_from_slice(&chunk[..n]);
            match serde_json::Deserializer::from_slice(&buf)
                .into_iter::<Value>()
                .next()
            {
                Some(Ok(v)) => break v,
                Some(Err(e)) if !e.is_eof() => return Err(format!("{method}: bad reply: {e}")),
                _ => {}
            }
        };
        match resp.get("error") {
            Some(e) => Err(format!(
                "{} (code {})",
                e["message"].as_str().unwrap_or_default(),
                e["code"]
            )),
            None => Ok(resp.get("result").cloned().unwrap_or(Value::Null)),
        }
    }

    pub fn call_ok(&self, sock: &Path, method: &str, params: Value) -> Value {
        self.call(sock, method, params.clone())
            .unwrap_or_else(|e| panic!("{method} {params} failed: {e}"))
    }

    /// Expects an error from [`Self::call`] whose text contains every one of `needles`.
    pub fn call_err(&self, sock: &Path, method: &str, params: Value, needles: &[&str]) -> String {
        match self.call(sock, method, params.clone()) {
            Ok(v) => panic!("{method} {params} succeeded ({v}), expected an error"),
            Err(e) => {
                for n in needles {
                    assert!(
                        e.contains(n),
                        "{method} {params}: error does not mention {n:?}: {e}"
                    );
                }
                e
            }
        }
    }

    pub fn rpc_ok(&self, sock: &Path, args: &[&str]) -> Value {
        self.rpc(sock, args)
            .unwrap_or_else(|e| panic!("rpc {args:?} failed: {e}"))
    }

    /// Expects an error whose text contains every one of `needles`.
    pub fn rpc_err(&self, sock: &Path, args: &[&str], needles: &[&str]) -> String {
        match self.rpc(sock, args) {
            Ok(v) => panic!("rpc {args:?} succeeded ({v}), expected an error"),
            Err(e) => {
                for n in needles {
                    assert!(
                        e.contains(n),
                        "rpc {args:?}: error does not mention {n:?}: {e}"
                    );
                }
                e
            }
        }
    }

    /// Starts writeboost_tgt on core 0 with a unique RPC socket and waits for its RPC server.
    pub fn start_target(&self, tag: &str, extra: &[&str]) -> Target {
        self.start_target_on(tag, "0x1", extra)
    }

    /// Starts writeboost_tgt on the cores of `mask`.
    pub fn start_target_on(&self, tag: &str, mask: &str, extra: &[&str]) -> Target {
        let o = AppOpts {
            cores: &["-m", mask],
            preload: false,
            timeout_secs: None,
        };
        self.try_start_app(tag, &self.tgt, &o, extra)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts an SPDK application (`--no-huge -s 2048 --disable-cpumask-locks`, a unique RPC
    /// socket) and waits for its RPC server; `Err` (with the log's tail) if it exits first.
    pub fn try_start_app(
        &self,
        tag: &str,
        program: &Path,
        o: &AppOpts,
        extra: &[&str],
    ) -> Result<Target, String> {
        let sock = PathBuf::from(format!("/tmp/{}.sock", unique(&format!("wb-e2e-{tag}"))));
        remove_sock(&sock);
        let mut cmd = match o.timeout_secs {
            Some(secs) => {
                let mut c = Command::new("timeout");
                c.args(["-k", "5", &secs.to_string(), "env"]);
                if o.preload {
                    c.arg(format!("LD_PRELOAD={}", self.preload.display()));
                }
                c.arg(program);
                c
            }
            None => {
                let mut c = Command::new(program);
                if o.preload {
                    c.env("LD_PRELOAD", &self.preload);
                }
                c
            }
        };
        cmd.args(["--no-huge", "-s", "2048"])
            .args(o.cores)
            .args(["--disable-cpumask-locks", "-r"])
            .arg(&sock)
            .args(extra);
        let name = program
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "app".into());
        let mut proc = spawn(
            &name,
            cmd,
            &self.scratch.path(&format!("{}.log", unique(tag))),
        );
        proc.via_timeout = o.timeout_secs.is_some();
        let mut t = Target { proc, sock };
        self.wait_rpc(&mut t, &name)?;
        Ok(t)
    }

    fn wait_rpc(&self, t: &mut Target, name: &str) -> Result<(), String> {
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(60) {
            if let Some(c) = t.proc.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    t.proc.child = None;
                    return Err(format!(
                        "{name} exited early ({st}):\n{}",
                        t.proc.log_tail(30)
                    ));
                }
            }
            if t.sock.exists()
                && self
                    .call(&t.sock, "framework_wait_init", Value::Null)
                    .is_ok()
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(format!(
            "{name} RPC server did not come up:\n{}",
            t.proc.log_tail(30)
        ))
    }

    /// Stops the target with spdk_kill_instance SIGTERM and waits for a clean exit.
    pub fn stop_target(&self, t: Target) -> String {
        self.stop_app(t).1
    }

    /// Stops an app with spdk_kill_instance SIGTERM; (exit status success, log).
    pub fn stop_app(&self, mut t: Target) -> (bool, String) {
        let _ = self.rpc(&t.sock, &["spdk_kill_instance", "SIGTERM"]);
        let (exited, ok) = t.proc.wait(Duration::from_secs(60));
        assert!(
            exited,
            "the application did not exit after SIGTERM:\n{}",
            t.proc.log_tail(30)
        );
        (ok, t.proc.log_text())
    }

    /// Runs a stock SPDK app (bdevperf, spdk_dd) on core 1 to completion, killing it after
    /// `timeout`. `preload` adds the writeboost module with LD_PRELOAD (on the app itself).
    pub fn run_app(
        &self,
        name: &str,
        app: &Path,
        args: &[&str],
        preload: bool,
        timeout: Duration,
    ) -> (bool, String) {
        self.run_app_on(name, app, "0x2", args, preload, timeout)
    }

    /// [`Self::run_app`] on the cores of `mask`.
    pub fn run_app_on(
        &self,
        name: &str,
        app: &Path,
        mask: &str,
        args: &[&str],
        preload: bool,
        timeout: Duration,
    ) -> (bool, String) {
        let mut p = self.spawn_app(name, app, mask, args, preload);
        let (exited, ok) = p.wait(timeout);
        let text = p.log_text();
        (exited && ok, text)
    }

    /// Starts a stock SPDK app in the background on the cores of `mask`, with a unique RPC
    /// socket (removed when the `Proc` is dropped).
    pub fn spawn_app(
        &self,
        name: &str,
        app: &Path,
        mask: &str,
        args: &[&str],
        preload: bool,
    ) -> Proc {
        let sock = format!("/tmp/{}.sock", unique("wb-e2e-app"));
        remove_sock(Path::new(&sock));
        let mut cmd = Command::new(app);
        cmd.args([
            "--no-huge",
            "-s",
            "2048",
            "-m",
            mask,
            "--disable-cpumask-locks",
            "-r",
            &sock,
        ])
        .args(args);
        if preload {
            cmd.env("LD_PRELOAD", &self.preload);
        }
        let mut p = spawn(
            name,
            cmd,
            &self.scratch.path(&format!("{}.log", unique(name))),
        );
        p.sock = Some(PathBuf::from(sock));
        p
    }
}

/// Polls `f` until it returns Some, for up to `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let t0 = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if t0.elapsed() > timeout {
            panic!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn file_bytes(p: &Path, len: usize) -> Vec<u8> {
    let mut f = std::fs::File::open(p).unwrap_or_else(|e| panic!("open {}: {e}", p.display()));
    let mut b = vec![0u8; len];
    f.read_exact(&mut b)
        .unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
    b
}

/// Deterministic pseudo-random bytes (xorshift), so failures are reproducible.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// The `bdevperf`/`spdk_dd` config attaching an NVMe-oF TCP controller `Nvme0` (bdev `Nvme0n1`)
/// with FLUSH passed through to the target.
pub fn initiator_json(port: u16, nqn: &str) -> String {
    serde_json::json!({"subsystems": [{"subsystem": "bdev", "config": [
        {"method": "bdev_nvme_set_options", "params": {"enable_flush": true}},
        {"method": "bdev_nvme_attach_controller", "params": {
            "name": "Nvme0", "trtype": "tcp", "adrfam": "ipv4", "traddr": "127.0.0.1",
            "trsvcid": port.to_string(), "subnqn": nqn}},
        {"method": "bdev_wait_for_examine"}
    ]}]})
    .to_string()
}
