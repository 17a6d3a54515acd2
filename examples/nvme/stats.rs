//! Benchmark results, shared by the userspace driver (`nvme bench`) and the
//! kernel baseline (`nvme-uring`): latencies, IOPS and throughput, a
//! progress line, and the result as a table or one JSON line.

use std::io::Write;
use std::time::{Duration, Instant};

/// The access patterns both benchmarks run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Pattern {
    /// Reads at random block-aligned offsets.
    Randread,
    /// Writes at random block-aligned offsets.
    Randwrite,
    /// Reads one after another, wrapping at the end.
    Seqread,
}

impl Pattern {
    /// The pattern's name as the command line spells it.
    pub fn name(self) -> &'static str {
        match self {
            Pattern::Randread => "randread",
            Pattern::Randwrite => "randwrite",
            Pattern::Seqread => "seqread",
        }
    }

    /// Whether the pattern writes.
    pub fn writes(self) -> bool {
        self == Pattern::Randwrite
    }
}

/// What a benchmark ran: the labels of its result.
#[derive(Clone, Debug)]
pub struct Setup {
    /// `barmap` or `kernel`.
    pub driver: &'static str,
    /// Completion mode: `poll`, `msix` or `io_uring`.
    pub mode: &'static str,
    /// The target: a namespace or a block device.
    pub target: String,
    /// The access pattern.
    pub pattern: Pattern,
    /// Commands kept outstanding.
    pub qd: usize,
    /// Bytes per command.
    pub bs: usize,
}

/// Latencies and counts collected during a run.
#[derive(Debug)]
pub struct Stats {
    start: Instant,
    latencies_ns: Vec<u64>,
    last_progress: Instant,
    progress_ops: u64,
    show_progress: bool,
}

impl Stats {
    /// Starts the clock; `show_progress` prints a progress line on stderr
    /// every second.
    pub fn start(show_progress: bool) -> Stats {
        let now = Instant::now();
        Stats {
            start: now,
            latencies_ns: Vec::with_capacity(1 << 16),
            last_progress: now,
            progress_ops: 0,
            show_progress,
        }
    }

    /// Time since the start.
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// Records one completed command and its latency.
    pub fn record(&mut self, latency: Duration) {
        self.latencies_ns
            .push(latency.as_nanos().min(u128::from(u64::MAX)) as u64);
        if self.show_progress && self.latencies_ns.len().is_multiple_of(64) {
            self.progress();
        }
    }

    fn progress(&mut self) {
        let since = self.last_progress.elapsed();
        if since < Duration::from_secs(1) {
            return;
        }
        let ops = self.latencies_ns.len() as u64;
        let rate = (ops - self.progress_ops) as f64 / since.as_secs_f64();
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\r{:6.1} s {:>10} ops {:>10.0} IOPS ",
            self.elapsed().as_secs_f64(),
            ops,
            rate
        );
        let _ = err.flush();
        (self.last_progress, self.progress_ops) = (Instant::now(), ops);
    }

    /// Ends the run and summarises it.
    pub fn finish(mut self, setup: Setup) -> Summary {
        let seconds = self.elapsed().as_secs_f64();
        if self.show_progress && self.progress_ops > 0 {
            eprintln!();
        }
        self.latencies_ns.sort_unstable();
        let lat = &self.latencies_ns;
        let ops = lat.len() as u64;
        let pick = |q: f64| {
            lat.get(((lat.len() as f64 - 1.0) * q).round() as usize)
                .copied()
                .unwrap_or(0)
        };
        let mean = if ops == 0 {
            0.0
        } else {
            lat.iter().map(|&l| l as f64).sum::<f64>() / ops as f64
        };
        Summary {
            iops: ops as f64 / seconds,
            mib_s: (ops * setup.bs as u64) as f64 / seconds / f64::from(1 << 20),
            setup,
            ops,
            seconds,
            lat_us: [pick(0.0), mean as u64, pick(0.5), pick(0.99), pick(1.0)].map(|ns| ns as f64 / 1000.0),
            recoveries: 0,
            interrupts: 0,
        }
    }
}

/// A benchmark's result.
#[derive(Clone, Debug)]
pub struct Summary {
    /// What ran.
    pub setup: Setup,
    /// Commands completed.
    pub ops: u64,
    /// Run time.
    pub seconds: f64,
    /// Commands per second.
    pub iops: f64,
    /// MiB per second.
    pub mib_s: f64,
    /// Latency in microseconds: min, mean, median, p99, max.
    pub lat_us: [f64; 5],
    /// Controller recoveries during the run.
    pub recoveries: u32,
    /// Interrupts the driver waited for (MSI-X mode).
    pub interrupts: u64,
}

impl Summary {
    /// The result as one JSON object.
    pub fn json(&self) -> serde_json::Value {
        let s = &self.setup;
        let [min, mean, p50, p99, max] = self.lat_us;
        serde_json::json!({
            "driver": s.driver, "mode": s.mode, "target": s.target, "pattern": s.pattern.name(),
            "qd": s.qd, "bs": s.bs, "ops": self.ops, "seconds": self.seconds, "iops": self.iops,
            "mib_s": self.mib_s, "recoveries": self.recoveries, "interrupts": self.interrupts,
            "lat_us": { "min": min, "mean": mean, "p50": p50, "p99": p99, "max": max },
        })
    }

    /// The result as a table.
    pub fn table(&self) -> String {
        let s = &self.setup;
        let [min, mean, p50, p99, max] = self.lat_us;
        let rows = [
            ("driver", format!("{} ({})", s.driver, s.mode)),
            ("target", s.target.clone()),
            ("pattern", format!("{} qd {} bs {}", s.pattern.name(), s.qd, s.bs)),
            ("ops", format!("{} in {:.2} s", self.ops, self.seconds)),
            ("IOPS", format!("{:.0}", self.iops)),
            ("MiB/s", format!("{:.1}", self.mib_s)),
            (
                "latency us",
                format!("min {min:.1} mean {mean:.1} p50 {p50:.1} p99 {p99:.1} max {max:.1}"),
            ),
            ("recoveries", self.recoveries.to_string()),
            ("interrupts", self.interrupts.to_string()),
        ];
        rows.iter().map(|(k, v)| format!("{k:<11} {v}\n")).collect()
    }

    /// Prints the result: one JSON line, or the table.
    pub fn print(&self, json: bool) {
        match json {
            true => println!("{}", self.json()),
            false => print!("{}", self.table()),
        }
    }
}
