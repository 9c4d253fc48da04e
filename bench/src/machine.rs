//! The machine: what it is, and whether it is quiet enough to measure on. Numbers taken next to
//! a compiler or another benchmark say little, so the run waits (bounded) for a quiet machine.

use std::collections::HashMap;
use std::time::Duration;

use crate::procfs;
use crate::results::Machine;

/// Over how long idleness is measured.
const SAMPLE: Duration = Duration::from_secs(2);

/// One look at the machine: percent idle over [`SAMPLE`], and the busiest processes in it.
#[derive(Debug, Clone)]
pub struct Idle {
    /// Percent of all cores idle.
    pub pct: f64,
    /// Up to three `name cores` of the processes that used the most CPU.
    pub busiest: Vec<(String, f64)>,
}

/// Measures idleness over [`SAMPLE`].
pub async fn idle() -> Idle {
    let before = (procfs::machine(), process_ticks());
    tokio::time::sleep(SAMPLE).await;
    let after = (procfs::machine(), process_ticks());
    Idle {
        pct: after.0.idle_pct_since(&before.0),
        busiest: busiest(&before.1, &after.1, SAMPLE.as_secs_f64()),
    }
}

/// Waits up to `wait` for the machine to be at least `threshold` % idle; the last look.
pub async fn wait_quiet(what: &str, threshold: f64, wait: Duration) -> Idle {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let look = idle().await;
        if look.pct >= threshold || tokio::time::Instant::now() >= deadline {
            return look;
        }
        let names: Vec<String> = look
            .busiest
            .iter()
            .map(|(n, c)| format!("{n} {c:.2}"))
            .collect();
        crate::log(&format!(
            "  machine {:.0} % idle before {what} (busiest, in cores: {}); waiting",
            look.pct,
            names.join(", ")
        ));
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
}

/// utime + stime of every process now, by pid, with its name.
fn process_ticks() -> HashMap<u32, (String, u64)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return HashMap::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
            Some((pid, (comm.trim().to_owned(), procfs::pid_stat(pid)?.own())))
        })
        .collect()
}

/// The three processes that used the most CPU between two readings, in cores.
fn busiest(
    before: &HashMap<u32, (String, u64)>,
    after: &HashMap<u32, (String, u64)>,
    seconds: f64,
) -> Vec<(String, f64)> {
    let mut used: Vec<(String, f64)> = after
        .iter()
        .map(|(pid, (name, now))| {
            let was = before.get(pid).map_or(0, |(_, t)| *t);
            (
                name.clone(),
                now.saturating_sub(was) as f64 / 100.0 / seconds,
            )
        })
        .filter(|(_, c)| *c > 0.0)
        .collect();
    used.sort_by(|a, b| b.1.total_cmp(&a.1));
    used.truncate(3);
    used
}

/// What the machine is; PostgreSQL and RabbitMQ versions are filled in by the caller.
pub fn describe() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let rustc = std::process::Command::new("rustc")
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".into());
    Machine {
        cpu_model: field(&cpuinfo, "model name")
            .unwrap_or("unknown")
            .to_owned(),
        cores: procfs::cores(),
        memory_gib: procfs::parse_status_kib(&meminfo, "MemTotal").unwrap_or(0) as f64
            / 1024.0
            / 1024.0,
        kernel: format!("Linux {}", release.trim()),
        rustc,
        ..Machine::default()
    }
}

/// The value of the first `key : value` line of /proc/cpuinfo.
fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == key).then(|| v.trim())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busiest_processes_by_cpu_used_in_between() {
        let before = HashMap::from([
            (1, ("rustc".to_owned(), 1000)),
            (2, ("postgres".to_owned(), 50)),
            (3, ("idle".to_owned(), 7)),
        ]);
        let after = HashMap::from([
            (1, ("rustc".to_owned(), 1300)),
            (2, ("postgres".to_owned(), 70)),
            (3, ("idle".to_owned(), 7)),
            (4, ("cargo".to_owned(), 100)),
        ]);
        let top = busiest(&before, &after, 2.0);
        assert_eq!(
            top,
            vec![
                ("rustc".to_owned(), 1.5),
                ("cargo".to_owned(), 0.5),
                ("postgres".to_owned(), 0.1)
            ]
        );
    }

    #[test]
    fn cpuinfo_fields() {
        let text = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t: fpu\n";
        assert_eq!(field(text, "model name"), Some("AMD EPYC"));
        assert_eq!(field(text, "cache size"), None);
    }
}
