//! Startup check that io_uring works here, with a message that names the cause
//! and the fix when it does not.
//!
//! Layer: driver. Called once before any shard starts, so a missing io_uring is
//! a clear error at startup instead of a panic inside a shard thread.

use std::io;

/// io_uring cannot be used on this machine.
#[derive(Debug, thiserror::Error)]
#[error("io_uring is unavailable: {cause}\n  fix: {fix}")]
pub struct UringUnavailable {
    /// What the kernel said, in words.
    pub cause: String,
    /// What the operator can do about it.
    pub fix: String,
    /// The underlying error.
    #[source]
    pub error: io::Error,
}

/// Creates (and drops) one io_uring runtime on the calling thread.
pub fn probe_io_uring() -> Result<(), UringUnavailable> {
    let mut builder = tokio_uring::builder();
    builder.entries(8);
    match tokio_uring::Runtime::new(&builder) {
        Ok(runtime) => {
            drop(runtime);
            Ok(())
        }
        Err(error) => Err(explain(error, read_io_uring_disabled())),
    }
}

/// `kernel.io_uring_disabled` (0 enabled, 1 root or io_uring_group only, 2
/// disabled), when the kernel has the knob.
fn read_io_uring_disabled() -> Option<u8> {
    std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled").ok()?.trim().parse().ok()
}

/// Turns the setup error into a cause and a fix. Pure so it can be tested.
pub fn explain(error: io::Error, io_uring_disabled: Option<u8>) -> UringUnavailable {
    let (cause, fix) = match (error.raw_os_error(), io_uring_disabled) {
        (Some(libc::EPERM), Some(2)) => (
            "the kernel has io_uring disabled (sysctl kernel.io_uring_disabled = 2)".to_string(),
            "run `sysctl -w kernel.io_uring_disabled=0` as root".to_string(),
        ),
        (Some(libc::EPERM), Some(1)) => (
            "io_uring is limited to root and the io_uring_group (sysctl kernel.io_uring_disabled = 1)"
                .to_string(),
            "run ringbit as a member of the group named by kernel.io_uring_group, or set \
             kernel.io_uring_disabled=0"
                .to_string(),
        ),
        (Some(libc::EPERM), _) => (
            "io_uring_setup was denied (EPERM): a seccomp profile (containers, systemd \
             SystemCallFilter) blocks it"
                .to_string(),
            "allow io_uring_setup, io_uring_enter and io_uring_register in the seccomp profile \
             (docker: --security-opt seccomp=...; systemd: SystemCallFilter=@io-uring)"
                .to_string(),
        ),
        (Some(libc::ENOSYS), _) => (
            "the kernel has no io_uring_setup system call (kernel older than 5.1, built without \
             CONFIG_IO_URING, or filtered to ENOSYS by seccomp)"
                .to_string(),
            "run on Linux 5.11 or newer with io_uring enabled, or allow the io_uring system \
             calls in the seccomp profile"
                .to_string(),
        ),
        (Some(libc::ENOMEM), _) => (
            "the kernel could not allocate the ring (locked-memory limit too low)".to_string(),
            "raise RLIMIT_MEMLOCK (ulimit -l, systemd LimitMEMLOCK=) or run on Linux 5.12+ \
             where rings are memory-cgroup accounted"
                .to_string(),
        ),
        _ => (
            format!("io_uring_setup failed: {error}"),
            "check the kernel version (5.11+), seccomp profile and sysctl \
             kernel.io_uring_disabled"
                .to_string(),
        ),
    };
    UringUnavailable { cause, fix, error }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_uring_works_on_this_machine() {
        // The test machines run Linux 6.x with io_uring enabled; if this fails
        // the message says why.
        probe_io_uring().unwrap();
    }

    #[test]
    fn explains_each_cause() {
        let eperm = || io::Error::from_raw_os_error(libc::EPERM);
        assert!(explain(eperm(), Some(2)).to_string().contains("io_uring_disabled=0"));
        assert!(explain(eperm(), Some(1)).to_string().contains("io_uring_group"));
        assert!(explain(eperm(), Some(0)).to_string().contains("seccomp"));
        let enosys = io::Error::from_raw_os_error(libc::ENOSYS);
        assert!(explain(enosys, None).to_string().contains("5.11"));
        let enomem = io::Error::from_raw_os_error(libc::ENOMEM);
        assert!(explain(enomem, None).to_string().contains("MEMLOCK"));
    }
}
