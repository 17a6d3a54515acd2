//! Tests that run in a child process: one that must die (a refused access,
//! a signal's default action) or must own process-wide state (a logger,
//! signal handlers). The parent re-runs the test binary with only that test
//! selected and checks that the child really ran it.

use std::process::{Command, ExitStatus};

/// Set in the child's environment.
const CHILD_ENV: &str = "BARMAP_TEST_CHILD";

/// Printed on stderr by a child right before the access or signal meant to
/// end it (see [`fault_next`]).
pub const FAULT_NEXT: &str = "test child: the deliberate fault comes next";

/// What a child run of one test gave.
pub struct Child {
    /// How it ended.
    pub status: ExitStatus,
    /// Its standard output (libtest's lines).
    pub stdout: String,
    /// Its standard error (diagnostics, markers).
    pub stderr: String,
}

/// Tells the parent that the child got as far as its deliberate fault, so
/// that a death from anything earlier does not pass for it.
pub fn fault_next() {
    eprintln!("{FAULT_NEXT}");
}

/// Runs this test binary's test `name` alone in a child.
///
/// Panics unless the child started exactly that test: `--exact` selects it by
/// its full name, and libtest's "running 1 test" and "test NAME ..." lines
/// show it was found (for a name that matches nothing, libtest runs 0 tests
/// and exits 0).
pub fn run_child(name: &str) -> Child {
    run_child_with(name, &[])
}

/// [`run_child`] for a device test (`#[ignore]`d on the host), which the
/// child runs with `--include-ignored`.
pub fn run_ignored_child(name: &str) -> Child {
    run_child_with(name, &["--include-ignored"])
}

fn run_child_with(name: &str, extra: &[&str]) -> Child {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .args(extra)
        .env(CHILD_ENV, "1")
        .output()
        .unwrap();
    let child = Child {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert!(
        child.stdout.contains("\nrunning 1 test\n") && child.stdout.contains(&format!("\ntest {name} ... ")),
        "the child did not run exactly {name}: {child}"
    );
    child
}

impl Child {
    /// Asserts that the child's one test passed.
    pub fn assert_passed(&self) {
        assert!(
            self.status.success() && self.stdout.contains("test result: ok. 1 passed; 0 failed;"),
            "child failed: {self}"
        );
    }

    /// Asserts that the child died of `signal` after it got to its
    /// deliberate fault ([`fault_next`]).
    pub fn assert_killed_by(&self, signal: i32) {
        assert_eq!(signal_of(self.status), Some(signal), "{self}");
        assert!(
            self.stderr.contains(FAULT_NEXT),
            "died before its deliberate fault: {self}"
        );
    }
}

impl std::fmt::Display for Child {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:?}\n--- stdout\n{}--- stderr\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// Whether this process is a child run by [`run_child`]; in a child, turns
/// off core files for the deaths it is meant to die.
pub fn in_child() -> bool {
    if std::env::var_os(CHILD_ENV).is_none() {
        return false;
    }
    let none = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: setrlimit with a valid struct.
    unsafe { libc::setrlimit(libc::RLIMIT_CORE, &none) };
    true
}

/// The signal that ended a process, if one did.
pub fn signal_of(status: ExitStatus) -> Option<i32> {
    use std::os::unix::process::ExitStatusExt;
    status.signal()
}
