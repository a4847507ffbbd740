//! Is the process that owns a lease still running?

/// The start time of `pid` in clock ticks since boot (Linux), used to tell a
/// live owner from a new process that reuses its pid.
pub fn start_time(pid: u32) -> Option<i64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 2 (comm) may hold spaces and parentheses: split after the last ')'.
    let after_comm = &stat[stat.rfind(')')? + 1..];
    // Fields from 3 on; starttime is field 22.
    after_comm.split_whitespace().nth(19)?.parse().ok()
}

/// Whether `pid`, started at `recorded_start` (when known), still runs.
pub fn is_alive(pid: u32, recorded_start: Option<i64>) -> bool {
    if std::path::Path::new("/proc/self/stat").exists() {
        match (start_time(pid), recorded_start) {
            (None, _) => false,
            (Some(now), Some(then)) => now == then,
            (Some(_), None) => true,
        }
    } else {
        // SAFETY: kill with signal 0 only checks that the process exists.
        unsafe { libc::kill(pid as libc::pid_t, 0) == 0 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_a_reused_pid_is_not() {
        let pid = std::process::id();
        let start = start_time(pid);
        assert!(start.is_some());
        assert!(is_alive(pid, start));
        assert!(!is_alive(pid, start.map(|s| s + 1)));
        assert!(!is_alive(u32::MAX - 1, None));
    }
}
