//! Resident memory of a process (for recycling above a limit), and sizes for people.

/// Resident memory of a process, from `/proc/<pid>/status` (`VmRSS`, in KiB there).
pub fn resident_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_vm_rss(&status)
}

/// Resident memory of a process and all its descendants (a handler command under `sh` and a
/// guard is a tree of processes), summed; `None` when the process itself is gone. Children are
/// found through `/proc/<pid>/task/<tid>/children`, so the cost is one read per process of the
/// tree, not a scan of `/proc`.
pub fn tree_resident_bytes(pid: u32) -> Option<u64> {
    let mut total = resident_bytes(pid)?;
    let mut todo = children_of(pid);
    // A tree, but guard against a pid reused into a loop while we walk.
    let mut seen = 0usize;
    while let Some(child) = todo.pop() {
        seen += 1;
        if seen > 100_000 {
            break;
        }
        total += resident_bytes(child).unwrap_or(0);
        todo.extend(children_of(child));
    }
    Some(total)
}

fn children_of(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for task in tasks.flatten() {
        if let Ok(list) = std::fs::read_to_string(task.path().join("children")) {
            out.extend(list.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
        }
    }
    out
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// A byte count for people: `1.5 GiB`, `300 MiB`, `12 KiB`, `100 B`.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resident_memory_comes_from_vm_rss() {
        let status = "Name:\tworker-cli\nVmPeak:\t  9000 kB\nVmRSS:\t    2048 kB\nThreads:\t3\n";
        assert_eq!(parse_vm_rss(status), Some(2048 * 1024));
        assert_eq!(parse_vm_rss("Name:\tx\n"), None);
        let own = resident_bytes(std::process::id()).expect("this process has a VmRSS");
        assert!(own > 100 * 1024, "{own}");
        assert!(tree_resident_bytes(std::process::id()).unwrap() >= own);
    }
}
