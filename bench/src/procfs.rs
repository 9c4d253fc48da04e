//! What Linux says about CPU and memory: `/proc/stat`, `/proc/<pid>/stat` and
//! `/proc/<pid>/status`, parsed by pure functions, read by thin wrappers.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::results::CpuSplit;

/// Clock ticks per second in `/proc`: USER_HZ, which the kernel fixes at 100 for this ABI.
const TICKS_PER_SECOND: f64 = 100.0;

/// The fields of `/proc/<pid>/stat` the bench uses (in clock ticks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PidStat {
    /// Parent process id.
    pub ppid: u32,
    /// User time.
    pub utime: u64,
    /// System time.
    pub stime: u64,
    /// User time of reaped children.
    pub cutime: u64,
    /// System time of reaped children.
    pub cstime: u64,
}

impl PidStat {
    /// Parses one `/proc/<pid>/stat` line.
    pub fn parse(line: &str) -> Option<Self> {
        // The command name is in parentheses and may hold spaces or parentheses itself, so the
        // fields are counted from the last `)`: state is field 3, ppid 4, utime 14 … cstime 17.
        let fields: Vec<&str> = line.rsplit_once(')')?.1.split_whitespace().collect();
        let at = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
        Some(Self {
            ppid: u32::try_from(at(4)?).ok()?,
            utime: at(14)?,
            stime: at(15)?,
            cutime: at(16)?,
            cstime: at(17)?,
        })
    }

    /// utime + stime.
    pub fn own(&self) -> u64 {
        self.utime + self.stime
    }

    /// cutime + cstime: children that ended and were waited for.
    pub fn reaped(&self) -> u64 {
        self.cutime + self.cstime
    }
}

/// A field of `/proc/<pid>/status` in kB (`VmRSS`, `VmHWM`).
pub fn parse_status_kib(status: &str, key: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let value = line.strip_prefix(key)?.strip_prefix(':')?;
        value.split_whitespace().next()?.parse().ok()
    })
}

/// The machine-wide CPU counters of `/proc/stat` (all cores, in clock ticks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MachineTicks {
    /// user + nice + system + irq + softirq.
    pub busy: u64,
    /// idle + iowait.
    pub idle: u64,
    /// Every state but guest time (already in user).
    pub total: u64,
}

impl MachineTicks {
    /// Parses the `cpu ` line of `/proc/stat`.
    pub fn parse(stat: &str) -> Option<Self> {
        let line = stat.lines().find(|l| l.starts_with("cpu "))?;
        let v: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .map(|f| f.parse().ok())
            .collect::<Option<_>>()?;
        let f = |i: usize| v.get(i).copied().unwrap_or(0);
        // user nice system idle iowait irq softirq steal
        Some(Self {
            busy: f(0) + f(1) + f(2) + f(5) + f(6),
            idle: f(3) + f(4),
            total: (0..8).map(f).sum(),
        })
    }

    /// The share of time idle between `earlier` and `self`, in percent.
    pub fn idle_pct_since(&self, earlier: &Self) -> f64 {
        let total = self.total.saturating_sub(earlier.total);
        if total == 0 {
            return 100.0;
        }
        100.0 * self.idle.saturating_sub(earlier.idle) as f64 / total as f64
    }
}

/// Online cores: the `cpuN` lines of `/proc/stat`, the cores its `cpu ` line adds up.
pub fn parse_cores(stat: &str) -> usize {
    stat.lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .count()
}

/// `/proc/stat` now.
pub fn machine() -> MachineTicks {
    std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| MachineTicks::parse(&s))
        .unwrap_or_default()
}

/// Cores this machine has.
pub fn cores() -> usize {
    std::fs::read_to_string("/proc/stat").map_or(1, |s| parse_cores(&s).max(1))
}

/// `/proc/<pid>/stat` now, or `None` once the process is gone.
pub fn pid_stat(pid: u32) -> Option<PidStat> {
    PidStat::parse(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// `/proc/self/stat`: the bench itself, and the children it has waited for.
pub fn own_stat() -> PidStat {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| PidStat::parse(&s))
        .unwrap_or_default()
}

/// `VmRSS` or `VmHWM` of a process in kB (0 once it is gone).
pub fn kib(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| parse_status_kib(&s, key))
        .unwrap_or(0)
}

/// Every process whose command name is `comm` (e.g. `postgres`, `beam.smp`).
pub fn pids_named(comm: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == comm)
        })
        .collect()
}

/// CPU ticks of a server made of many processes: the ones running now, plus the children the
/// server's root process has reaped (PostgreSQL backends that ended). Between two readings the
/// difference counts every process exactly once, however it started or ended in between.
pub fn server_ticks(comm: &str) -> u64 {
    let stats: Vec<(u32, PidStat)> = pids_named(comm)
        .into_iter()
        .filter_map(|p| Some((p, pid_stat(p)?)))
        .collect();
    let pids: Vec<u32> = stats.iter().map(|(p, _)| *p).collect();
    let running: u64 = stats.iter().map(|(_, s)| s.own()).sum();
    let reaped: u64 = stats
        .iter()
        .filter(|(_, s)| !pids.contains(&s.ppid))
        .map(|(_, s)| s.reaped())
        .sum();
    running + reaped
}

/// Every counter the CPU split needs, at one moment.
#[derive(Debug, Clone)]
pub struct CpuMark {
    at: Instant,
    machine: MachineTicks,
    postgres: u64,
    rabbitmq: u64,
    services: Vec<(String, u32, u64)>,
    own: PidStat,
}

impl CpuMark {
    /// Reads the counters now; `services` are the processes named in the split.
    pub fn now(services: &[(&str, u32)]) -> Self {
        Self {
            at: Instant::now(),
            machine: machine(),
            postgres: server_ticks("postgres"),
            rabbitmq: server_ticks("beam.smp"),
            services: services
                .iter()
                .map(|(name, pid)| {
                    (
                        (*name).to_owned(),
                        *pid,
                        pid_stat(*pid).map_or(0, |s| s.own()),
                    )
                })
                .collect(),
            own: own_stat(),
        }
    }

    /// The split since this mark. `client` names the child the bench waited for in between
    /// (loadgen, pgbench, amqp-bench): its CPU is the bench's reaped-children time.
    pub fn split(&self, client: Option<&str>) -> CpuSplit {
        let end = Self::now(&[]);
        let seconds = end.at.duration_since(self.at).as_secs_f64().max(1e-3);
        let cores = |ticks: u64| ticks as f64 / TICKS_PER_SECOND / seconds;
        let mut parts = vec![
            (
                "postgres".to_owned(),
                cores(end.postgres.saturating_sub(self.postgres)),
            ),
            (
                "rabbitmq".to_owned(),
                cores(end.rabbitmq.saturating_sub(self.rabbitmq)),
            ),
        ];
        for (name, pid, before) in &self.services {
            let now = pid_stat(*pid).map_or(*before, |s| s.own());
            parts.push((name.clone(), cores(now.saturating_sub(*before))));
        }
        if let Some(client) = client {
            let reaped = end.own.reaped().saturating_sub(self.own.reaped());
            parts.push((client.to_owned(), cores(reaped)));
        }
        parts.push((
            "bench".to_owned(),
            cores(end.own.own().saturating_sub(self.own.own())),
        ));
        CpuSplit {
            seconds,
            all: cores(end.machine.busy.saturating_sub(self.machine.busy)),
            parts,
        }
    }
}

/// Samples a process's `VmRSS` every 200 ms and keeps the highest.
#[derive(Debug)]
pub struct RssSampler {
    max: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl RssSampler {
    /// Starts sampling `pid`.
    pub fn start(pid: u32) -> Self {
        let max = Arc::new(AtomicU64::new(kib(pid, "VmRSS")));
        let task = tokio::spawn({
            let max = max.clone();
            async move {
                let mut tick = tokio::time::interval(Duration::from_millis(200));
                loop {
                    tick.tick().await;
                    max.fetch_max(kib(pid, "VmRSS"), Ordering::Relaxed);
                }
            }
        });
        Self { max, task }
    }

    /// Stops sampling; the highest VmRSS seen, in kB.
    pub fn stop(self) -> u64 {
        self.task.abort();
        self.max.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let line = "4242 (tokio-rt (worker) 1) S 17 4242 17 0 -1 4194560 2000 0 0 0 \
                    150 30 7 3 20 0 9 0 123456 900000000 4000 18446744073709551615";
        let s = PidStat::parse(line).unwrap();
        assert_eq!(
            s,
            PidStat {
                ppid: 17,
                utime: 150,
                stime: 30,
                cutime: 7,
                cstime: 3
            }
        );
        assert_eq!((s.own(), s.reaped()), (180, 10));
        assert_eq!(PidStat::parse("garbage"), None);
    }

    #[test]
    fn status_fields_in_kib() {
        let status = "Name:\tapi\nVmHWM:\t   23512 kB\nVmRSS:\t   19340 kB\nThreads:\t5\n";
        assert_eq!(parse_status_kib(status, "VmRSS"), Some(19340));
        assert_eq!(parse_status_kib(status, "VmHWM"), Some(23512));
        assert_eq!(parse_status_kib(status, "VmSwap"), None);
    }

    #[test]
    fn machine_busy_idle_and_cores() {
        let stat = "cpu  100 5 50 800 20 3 2 7 0 0\ncpu0 50 2 25 400 10 1 1 3 0 0\n\
                    cpu1 50 3 25 400 10 2 1 4 0 0\nintr 1 2 3\nctxt 99\n";
        let t = MachineTicks::parse(stat).unwrap();
        assert_eq!((t.busy, t.idle, t.total), (160, 820, 987));
        assert_eq!(parse_cores(stat), 2);
        let later = MachineTicks {
            busy: t.busy + 50,
            idle: t.idle + 150,
            total: t.total + 200,
        };
        assert!((later.idle_pct_since(&t) - 75.0).abs() < 1e-9);
        assert!((t.idle_pct_since(&t) - 100.0).abs() < 1e-9);
    }
}
