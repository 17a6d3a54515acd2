//! A `log` logger that keeps the trace lines, for tests of barmap's trace
//! output (read outside the fault handler only).

use std::sync::Mutex;

/// The trace-level lines logged since the last [`take`].
struct Collect(Mutex<Vec<String>>);

impl log::Log for Collect {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        if record.level() == log::Level::Trace {
            self.0.lock().unwrap().push(record.args().to_string());
        }
    }
    fn flush(&self) {}
}

static COLLECT: Collect = Collect(Mutex::new(Vec::new()));

/// Makes this logger the process's, at trace level. Call it once per process.
pub fn install() {
    log::set_logger(&COLLECT).unwrap();
    log::set_max_level(log::LevelFilter::Trace);
}

/// The trace lines logged since the last call.
pub fn take() -> Vec<String> {
    std::mem::take(&mut *COLLECT.0.lock().unwrap())
}
