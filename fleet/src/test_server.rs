//! For tests: a real S3 server on loopback, `s3s-fs` (an S3 implementation over a local
//! directory, speaking S3 over HTTP with SigV4 authentication, multipart uploads, ranged GETs
//! and listings), started and stopped by the test. `.ci/install-s3-server` installs it; the
//! tests fail, never skip, without it.
//!
//! `CRASHVISOR_S3_SERVER` names the binary; else `s3s-fs` on `PATH` or in `~/.cargo/bin`.

use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use object_store::aws::AmazonS3Builder;

use crate::{FleetBucket, StoreUrl};

/// The bucket every test server has.
pub const BUCKET: &str = "crashes";
const ACCESS_KEY: &str = "crashvisor-test";
const SECRET_KEY: &str = "crashvisor-test-secret";
const REGION: &str = "us-east-1";

/// A running (or stopped) S3 server with one bucket, removed with its data when dropped.
pub struct S3Server {
    child: Option<Child>,
    port: u16,
    root: PathBuf,
}

/// The server binary, or a panic that says how to install it.
pub fn server_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("CRASHVISOR_S3_SERVER") {
        return PathBuf::from(path);
    }
    let on_path = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).map(|p| p.join("s3s-fs")).collect::<Vec<_>>())
        .unwrap_or_default();
    let in_cargo = std::env::var_os("HOME").map(|home| Path::new(&home).join(".cargo/bin/s3s-fs"));
    on_path.into_iter().chain(in_cargo).find(|p| p.is_file()).unwrap_or_else(|| {
        panic!(
            "the fleet store tests need a real S3 server, s3s-fs, and it is not installed: run .ci/install-s3-server \
             (or set CRASHVISOR_S3_SERVER to its path)"
        )
    })
}

impl S3Server {
    /// Starts a server on a free loopback port over a new directory named after `name`.
    pub fn start(name: &str) -> Self {
        let root = std::env::temp_dir().join(format!("crashvisor-s3-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        // The bucket is a directory of the server's root.
        std::fs::create_dir_all(root.join(BUCKET)).expect("create the S3 server's root");
        let port =
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).and_then(|l| l.local_addr()).expect("find a free port").port();
        let mut server = Self { child: None, port, root };
        server.resume();
        server
    }

    /// Starts the stopped server again, on the same port with the same data.
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "the S3 server is running already");
        let mut child = Command::new(server_binary())
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(&self.root)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the S3 server");
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("the S3 server exited at start ({status}); is port {} taken?", self.port);
            }
            assert!(Instant::now() < deadline, "the S3 server did not listen on port {} within 20 s", self.port);
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child = Some(child);
    }

    /// Stops the server (SIGKILL): requests fail until [`S3Server::resume`].
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes (`true`, SIGSTOP) or thaws (`false`, SIGCONT) the server: while frozen, requests
    /// hang unanswered, as with a store that stalls.
    pub fn freeze(&self, frozen: bool) {
        let child = self.child.as_ref().expect("the S3 server is running");
        let pid = libc::pid_t::try_from(child.id()).expect("a pid fits pid_t");
        // SAFETY: kill(2) on our own child, which `self.child` keeps unreaped, so the pid is its.
        let sent = unsafe { libc::kill(pid, if frozen { libc::SIGSTOP } else { libc::SIGCONT }) };
        assert_eq!(sent, 0, "signal the S3 server: {}", std::io::Error::last_os_error());
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The directory the server keeps its objects in.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The environment that points the AWS tools (and `crashvisor`) at this server.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.into()),
            ("AWS_REGION", REGION.into()),
        ]
    }

    /// A client configuration for this server.
    pub fn builder(&self) -> AmazonS3Builder {
        AmazonS3Builder::new()
            .with_endpoint(self.endpoint())
            .with_access_key_id(ACCESS_KEY)
            .with_secret_access_key(SECRET_KEY)
            .with_region(REGION)
    }

    /// `s3://crashes/PREFIX`.
    pub fn url(&self, prefix: &str) -> StoreUrl {
        format!("s3://{BUCKET}/{prefix}").parse().expect("a test store URL")
    }

    /// The bucket under `prefix` as host `host`.
    pub fn bucket(&self, prefix: &str, host: &str) -> FleetBucket {
        FleetBucket::new(&self.url(prefix), host, self.builder()).expect("a client of the test server")
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}
