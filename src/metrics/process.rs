//! The standard process metrics (`process_cpu_seconds_total`, memory, descriptors,
//! threads, start time), as every Prometheus client library exports them, read from
//! `/proc/self` at each scrape. On a system without `/proc` they are left out.

use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// USER_HZ: the unit of the CPU times in /proc/PID/stat, 100 on every Linux ABI.
const TICKS_PER_SECOND: f64 = 100.0;

pub struct Process {
    registry: Registry,
    cpu_seconds: Counter<f64, AtomicU64>,
    resident: Gauge,
    virtual_memory: Gauge,
    open_fds: Gauge,
    max_fds: Gauge,
    threads: Gauge,
    start_time: Gauge,
}

impl Process {
    pub fn new() -> Process {
        let p = Process {
            registry: Registry::default(),
            cpu_seconds: Counter::default(),
            resident: Gauge::default(),
            virtual_memory: Gauge::default(),
            open_fds: Gauge::default(),
            max_fds: Gauge::default(),
            threads: Gauge::default(),
            start_time: Gauge::default(),
        };
        let mut registry = Registry::with_prefix("process");
        registry.register(
            "cpu_seconds",
            "Total user and system CPU time spent in seconds",
            p.cpu_seconds.clone(),
        );
        registry.register(
            "resident_memory_bytes",
            "Resident memory size in bytes",
            p.resident.clone(),
        );
        registry.register(
            "virtual_memory_bytes",
            "Virtual memory size in bytes",
            p.virtual_memory.clone(),
        );
        registry.register(
            "open_fds",
            "Number of open file descriptors",
            p.open_fds.clone(),
        );
        registry.register(
            "max_fds",
            "Maximum number of open file descriptors",
            p.max_fds.clone(),
        );
        registry.register("threads", "Number of OS threads", p.threads.clone());
        registry.register(
            "start_time_seconds",
            "Start time of the process since unix epoch in seconds",
            p.start_time.clone(),
        );
        Process { registry, ..p }
    }

    /// Reads /proc and renders the series; nothing where /proc cannot be read.
    pub fn render(&self, out: &mut String) {
        let Some(stat) = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|text| Stat::parse(&text))
        else {
            return;
        };
        let cpu = (stat.utime + stat.stime) as f64 / TICKS_PER_SECOND;
        // A counter only goes up: add what was spent since the last scrape.
        let seen = self.cpu_seconds.get();
        if cpu > seen {
            self.cpu_seconds.inc_by(cpu - seen);
        }
        self.virtual_memory.set(stat.vsize as i64);
        self.threads.set(stat.threads as i64);
        if let Some(rss) = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| status_kib(&s, "VmRSS:"))
        {
            self.resident.set((rss * 1024) as i64);
        }
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            self.open_fds.set(dir.count() as i64);
        }
        if let Some(limit) = std::fs::read_to_string("/proc/self/limits")
            .ok()
            .and_then(|s| soft_open_files(&s))
        {
            self.max_fds.set(limit);
        }
        if let Some(boot) = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| boot_time(&s))
        {
            let started = boot as f64 + stat.start_ticks as f64 / TICKS_PER_SECOND;
            self.start_time.set(started as i64);
        }
        let _ = prometheus_client::encoding::prometheus_text::encode(out, &self.registry);
    }
}

impl Default for Process {
    fn default() -> Self {
        Process::new()
    }
}

/// The fields of /proc/self/stat used here.
#[derive(Debug, PartialEq, Eq)]
struct Stat {
    utime: u64,
    stime: u64,
    threads: u64,
    start_ticks: u64,
    vsize: u64,
}

impl Stat {
    /// Field numbers as in proc(5); the command name (field 2) may hold spaces and
    /// parentheses, so counting starts after its last ')'.
    fn parse(text: &str) -> Option<Stat> {
        let rest = &text[text.rfind(')')? + 1..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // fields[0] is field 3 (state).
        let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
        Some(Stat {
            utime: field(14)?,
            stime: field(15)?,
            threads: field(20)?,
            start_ticks: field(22)?,
            vsize: field(23)?,
        })
    }
}

fn status_kib(status: &str, key: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(key))?;
    line[key.len()..].split_whitespace().next()?.parse().ok()
}

/// The soft limit, as Prometheus clients report it ("unlimited" as the largest value).
fn soft_open_files(limits: &str) -> Option<i64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line["Max open files".len()..].split_whitespace().next()?;
    Some(soft.parse().unwrap_or(i64::MAX))
}

fn boot_time(stat: &str) -> Option<u64> {
    let line = stat.lines().find(|l| l.starts_with("btime "))?;
    line["btime ".len()..].trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let text = "4242 (wssd (a) b) S 1 4242 4242 0 -1 4194560 900 0 0 0 \
                    250 75 0 0 20 0 9 0 123456 987654321 2048 18446744073709551615";
        assert_eq!(
            Stat::parse(text),
            Some(Stat {
                utime: 250,
                stime: 75,
                threads: 9,
                start_ticks: 123456,
                vsize: 987654321,
            })
        );
        assert_eq!(Stat::parse("garbage"), None);
        assert_eq!(
            status_kib("Name:\twssd\nVmRSS:\t  5120 kB\n", "VmRSS:"),
            Some(5120)
        );
        assert_eq!(boot_time("cpu 1 2 3\nbtime 1700000000\n"), Some(1700000000));
    }

    #[test]
    fn the_series_are_rendered_with_their_standard_names() {
        let process = Process::new();
        let mut out = String::new();
        process.render(&mut out);
        for name in [
            "process_cpu_seconds_total ",
            "process_resident_memory_bytes ",
            "process_open_fds ",
            "process_max_fds ",
            "process_threads ",
            "process_start_time_seconds ",
        ] {
            assert!(out.contains(name), "{name} missing:\n{out}");
        }
        let rss: f64 = out
            .lines()
            .find_map(|l| l.strip_prefix("process_resident_memory_bytes "))
            .and_then(|v| v.parse().ok())
            .unwrap();
        assert!(rss > 1_000_000.0, "{out}");
    }
}
