//! Where io_uring cannot be set up (seccomp, `io_uring_disabled`, an old
//! kernel), the runtime falls back to the poll backend and works.
//!
//! The test re-runs itself in a child process whose `io_uring_setup` is made
//! to fail by a seccomp filter (with `EPERM`, then `ENOSYS`), so the filter
//! never touches this process.

use std::io::Read as _;
use std::process::Command;

use mfio_backends::{BackendKind, OpenOptions, Runtime};
use mfio_core::{IoBackendExt, IoRead, IoWrite};

const CHILD_ENV: &str = "MFIO_TEST_SECCOMP_ERRNO";

// Classic BPF opcodes (linux/filter.h) and seccomp_data offsets.
/// BPF_LD (0x00) | BPF_W (0x00) | BPF_ABS (0x20).
const BPF_LD_W_ABS: u16 = 0x20;
/// BPF_JMP (0x05) | BPF_JEQ (0x10) | BPF_K (0x00).
const BPF_JMP_JEQ_K: u16 = 0x15;
/// BPF_RET (0x06) | BPF_K (0x00).
const BPF_RET_K: u16 = 0x06;
const SECCOMP_DATA_NR: u32 = 0;
const SECCOMP_DATA_ARCH: u32 = 4;
const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;

/// Makes `io_uring_setup` fail with `errno` for this thread and its children.
fn deny_io_uring(errno: u32) -> std::io::Result<()> {
    let f = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
    let filter = [
        // Another architecture: allow (the filter only knows x86_64 numbers).
        f(BPF_LD_W_ABS, 0, 0, SECCOMP_DATA_ARCH),
        f(BPF_JMP_JEQ_K, 1, 0, AUDIT_ARCH_X86_64),
        f(BPF_RET_K, 0, 0, libc::SECCOMP_RET_ALLOW),
        f(BPF_LD_W_ABS, 0, 0, SECCOMP_DATA_NR),
        f(BPF_JMP_JEQ_K, 0, 1, libc::SYS_io_uring_setup as u32),
        f(BPF_RET_K, 0, 0, libc::SECCOMP_RET_ERRNO | (errno & 0xffff)),
        f(BPF_RET_K, 0, 0, libc::SECCOMP_RET_ALLOW),
    ];
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr().cast_mut(),
    };
    // SAFETY: PR_SET_NO_NEW_PRIVS takes plain integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `prog` points at a valid filter that outlives the call (the
    // kernel copies it).
    if unsafe { libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &prog as *const _, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The body run in the child: io_uring is denied, so the runtime must be
/// poll, and a file round trip must work; forcing io_uring must be an error.
fn child(errno: u32) {
    deny_io_uring(errno).expect("install the seccomp filter");
    let err = Runtime::builder()
        .backend(BackendKind::Uring)
        .build()
        .expect_err("io_uring was forced but is denied");
    assert_eq!(err.raw_os_error(), Some(errno as i32));
    let rt = Runtime::new().expect("falls back to poll");
    assert_eq!(rt.kind(), BackendKind::Poll);
    let dir = tempfile::tempdir().expect("temp dir");
    let data = rt
        .block_on(async {
            let f = rt
                .open(
                    dir.path().join("x"),
                    OpenOptions::new().read(true).write(true).create(true),
                )
                .await?;
            f.write_all_at(0, b"still works".to_vec()).await.0?;
            let (res, data) = f.read_to_end_at(0, Vec::new()).await.into_parts();
            res.map(|_| data)
        })
        .expect("file round trip on the fallback");
    assert_eq!(data, b"still works");
    println!("fell back to poll with errno {errno}");
}

#[test]
fn io_uring_denied_falls_back_to_poll() {
    if let Ok(errno) = std::env::var(CHILD_ENV) {
        child(errno.parse().expect("errno"));
        return;
    }
    let exe = std::env::current_exe().expect("test binary");
    for errno in [libc::EPERM, libc::ENOSYS] {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "io_uring_denied_falls_back_to_poll",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, errno.to_string())
            .env_remove("MFIO_BACKEND")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("spawn the child test");
        let mut out = String::new();
        child
            .stdout
            .take()
            .expect("stdout")
            .read_to_string(&mut out)
            .expect("child output");
        let status = child.wait().expect("child exit");
        assert!(status.success(), "child with errno {errno} failed:\n{out}");
        assert!(
            out.contains(&format!("fell back to poll with errno {errno}")),
            "child did not run the check:\n{out}"
        );
    }
}
