//! Another process holding a VFIO group's node open, as a second user of
//! the device would.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

/// A shell that holds `/dev/vfio/GROUP` open until it is dropped.
pub struct GroupHolder(Child);

impl GroupHolder {
    /// Starts the holder and returns once it has the node open (panics if
    /// it could not open it).
    pub fn hold(group: u32) -> GroupHolder {
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "exec 3<>/dev/vfio/{group} && echo held && exec sleep 600"
            ))
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let holder = GroupHolder(child);
        assert_eq!(line.trim(), "held", "the holder could not open group {group}");
        holder
    }
}

impl Drop for GroupHolder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
