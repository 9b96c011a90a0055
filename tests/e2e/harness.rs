//! Processes, RPC calls and scratch files for the end-to-end tests. Everything a test starts or
//! creates is owned by a guard that kills it (by pid) or removes it on drop, also on panic.

use serde_json::Value;
use std::io::Read;
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
}

impl Proc {
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
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
    }
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
        let sock = PathBuf::from(format!("/tmp/{}.sock", unique(&format!("wb-e2e-{tag}"))));
        remove_sock(&sock);
        let mut cmd = Command::new(&self.tgt);
        cmd.args([
            "--no-huge",
            "-s",
            "2048",
            "-m",
            "0x1",
            "--disable-cpumask-locks",
            "-r",
        ])
        .arg(&sock)
        .args(extra);
        let proc = spawn(
            "writeboost_tgt",
            cmd,
            &self.scratch.path(&format!("{}.log", unique(tag))),
        );
        let mut t = Target { proc, sock };
        self.wait_rpc(&mut t);
        t
    }

    fn wait_rpc(&self, t: &mut Target) {
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(60) {
            if let Some(c) = t.proc.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    panic!(
                        "writeboost_tgt exited early ({st}):\n{}",
                        t.proc.log_tail(30)
                    );
                }
            }
            if t.sock.exists() {
                let mut c = Command::new("python3");
                c.arg(self.spdk.join("scripts/rpc.py"))
                    .arg("-s")
                    .arg(&t.sock)
                    .arg("-t")
                    .arg("60")
                    .arg("framework_wait_init")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null());
                if c.status().map(|s| s.success()).unwrap_or(false) {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "writeboost_tgt RPC server did not come up:\n{}",
            t.proc.log_tail(30)
        );
    }

    /// Stops the target with spdk_kill_instance SIGTERM and waits for a clean exit.
    pub fn stop_target(&self, mut t: Target) -> String {
        let _ = self.rpc(&t.sock, &["spdk_kill_instance", "SIGTERM"]);
        let (exited, _ok) = t.proc.wait(Duration::from_secs(60));
        assert!(
            exited,
            "writeboost_tgt did not exit after SIGTERM:\n{}",
            t.proc.log_tail(30)
        );
        t.proc.log_text()
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
        let sock = format!("/tmp/{}.sock", unique("wb-e2e-app"));
        let mut cmd = Command::new(app);
        cmd.args([
            "--no-huge",
            "-s",
            "2048",
            "-m",
            "0x2",
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
        let (exited, ok) = p.wait(timeout);
        remove_sock(Path::new(&sock));
        let text = p.log_text();
        (exited && ok, text)
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
