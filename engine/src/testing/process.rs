//! What a test leaves on the machine, cleaned up however the test ends: temp dirs removed on
//! drop, and child processes killed on drop with their log printed when the test failed.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

use super::wait_until;

/// Binary `bin` of workspace package `package`, in the directory of `next_to` (a binary of the
/// test's own run, `env!("CARGO_BIN_EXE_<name>")`): `cargo test --workspace` builds them all
/// there; a narrower run builds this one first, with the cargo that runs the test.
pub fn workspace_binary(next_to: &str, package: &str, bin: &str) -> PathBuf {
    let path = Path::new(next_to).with_file_name(bin);
    if !path.exists() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "-p", package, "--bin", bin])
            .status()
            .expect("run cargo build");
        assert!(status.success(), "could not build {bin}");
    }
    assert!(path.exists(), "{bin} not found at {}", path.display());
    path
}

/// A fresh directory under the system temp dir, removed (with its contents) on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates `rivulet-<tag>-<pid>-<n>-<random>`. Panics when the temp dir is not writable.
    pub fn new(tag: &str) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "rivulet-{tag}-{}-{}-{:08x}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed),
            fastrand::u32(..)
        ));
        std::fs::create_dir_all(&dir).expect("the temp dir is writable");
        TempDir(dir)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// A path inside the directory.
    pub fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process owned by a test: SIGKILLed and reaped on drop, pass or fail, and, when the
/// test is failing (the dropping thread panics), its captured stderr is printed under its name.
///
/// [`spawn`](Self::spawn) sends stderr to a file (no reader thread, no pipe that can fill up
/// or close early); [`adopt`](Self::adopt) guards a child whose output the test handles itself.
#[derive(Debug)]
pub struct ChildGuard {
    name: String,
    child: Child,
    log: Option<PathBuf>,
    group: bool,
    _dir: Option<TempDir>,
}

impl ChildGuard {
    /// Spawns `cmd` with stdin from `/dev/null` and stderr captured in a log file; stdout is
    /// left as `cmd` sets it. Panics when the program cannot be started.
    pub fn spawn(name: &str, cmd: &mut Command) -> Self {
        let dir = TempDir::new("child");
        let log = dir.join("stderr.log");
        let file = File::create(&log).expect("the temp dir is writable");
        let child = cmd
            .stdin(Stdio::null())
            .stderr(Stdio::from(file))
            .spawn()
            .unwrap_or_else(|e| panic!("{name} does not start: {e}"));
        ChildGuard {
            name: name.to_owned(),
            child,
            log: Some(log),
            group: false,
            _dir: Some(dir),
        }
    }

    /// Guards a child the caller spawned; its output is the caller's to read.
    pub fn adopt(name: &str, child: Child) -> Self {
        ChildGuard {
            name: name.to_owned(),
            child,
            log: None,
            group: false,
            _dir: None,
        }
    }

    /// Kill the child's whole process group on drop, not only the child: for a child that
    /// leads its own group (`CommandExt::process_group(0)`) and starts processes in it.
    pub fn kill_group_on_drop(mut self) -> Self {
        self.group = true;
        self
    }

    /// The child's pid.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The child's pid as nix wants it.
    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    /// The child itself (its pipes, `try_wait`).
    pub fn child(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Everything the child wrote to stderr so far (empty for an adopted child).
    pub fn log(&self) -> String {
        self.log
            .as_ref()
            .map(|p| std::fs::read_to_string(p).unwrap_or_default())
            .unwrap_or_default()
    }

    /// Sends `signal` to the child. Panics when it has already been reaped.
    pub fn signal(&self, signal: Signal) {
        kill(self.pid(), signal).unwrap_or_else(|e| panic!("cannot signal {}: {e}", self.name));
    }

    /// Sends `signal` to the child's process group (the child must lead one).
    pub fn signal_group(&self, signal: Signal) {
        killpg(self.pid(), signal).unwrap_or_else(|e| panic!("cannot signal {}'s group: {e}", self.name));
    }

    /// The child's exit status once it has exited, or `None` if it still runs after
    /// `timeout`.
    pub async fn exit_within(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let mut status = None;
        let child = &mut self.child;
        let _ = wait_until(timeout, || {
            status = child.try_wait().expect("try_wait on a child we own");
            let done = status.is_some();
            async move { done }
        })
        .await;
        status
    }

    /// SIGKILLs the child (its group, if so set) and reaps it.
    pub fn kill(&mut self) {
        if self.group {
            let _ = killpg(self.pid(), Signal::SIGKILL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() && self.log.is_some() {
            eprintln!("--- {} stderr (pid {}) ---\n{}", self.name, self.child.id(), self.log());
        }
    }
}
