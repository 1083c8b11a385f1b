//! Statistics and the results as JSON.

#[allow(unused_imports)]
use super::*;

// ---------------------------------------------------------------------------
// Statistics and results
// ---------------------------------------------------------------------------

/// Median, p99 and mean of one column, in milliseconds.
#[derive(Serialize, Clone, Copy, Default)]
pub(crate) struct Stats {
    pub(crate) median_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) mean_ms: f64,
}

impl Stats {
    pub(crate) fn of(samples: &[Duration]) -> Stats {
        if samples.is_empty() {
            return Stats::default();
        }
        let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        ms.sort_by(f64::total_cmp);
        let len = ms.len();
        let median = if len % 2 == 1 {
            ms[len / 2]
        } else {
            (ms[len / 2 - 1] + ms[len / 2]) / 2.0
        };
        // Nearest-rank p99: with fewer than 100 samples it is the maximum.
        let rank = ((len as f64) * 0.99).ceil() as usize;
        Stats {
            median_ms: median,
            p99_ms: ms[rank.clamp(1, len) - 1],
            mean_ms: ms.iter().sum::<f64>() / len as f64,
        }
    }
}

/// One variant at one size on one filesystem, one thread.
#[derive(Serialize)]
pub(crate) struct SerialResult {
    pub(crate) fs: &'static str,
    pub(crate) layers: usize,
    pub(crate) variant: &'static str,
    /// The strategy idoverlay used (differs from the variant only for auto).
    pub(crate) strategy_used: Option<String>,
    pub(crate) iterations: usize,
    /// Assemble + attach (for the reference: including its temp mounts'
    /// creation and cleanup, which containerd does before returning).
    pub(crate) mount: Stats,
    /// Unmounting the overlay.
    pub(crate) unmount: Stats,
    /// mount + unmount of each iteration.
    pub(crate) total: Stats,
    /// Medians over the floor's in the same run.
    pub(crate) mount_ratio: Option<f64>,
    pub(crate) total_ratio: Option<f64>,
    pub(crate) error: Option<String>,
}

/// Many threads assembling and tearing down at once, each on its own target.
#[derive(Serialize)]
pub(crate) struct ConcurrentResult {
    pub(crate) fs: &'static str,
    pub(crate) layers: usize,
    pub(crate) variant: &'static str,
    pub(crate) threads: usize,
    /// mount + unmount cycles completed by all threads together.
    pub(crate) cycles: u64,
    pub(crate) seconds: f64,
    pub(crate) per_second: f64,
    /// Over the floor's aggregate rate at the same thread count.
    pub(crate) ratio: Option<f64>,
    pub(crate) error: Option<String>,
}

/// A single operation measured on its own (userns creation, the probe).
#[derive(Serialize)]
pub(crate) struct SingleResult {
    pub(crate) name: &'static str,
    pub(crate) iterations: usize,
    pub(crate) stats: Stats,
    pub(crate) error: Option<String>,
}

/// A command-line tool end to end: spawn + mount, spawn + umount.
#[derive(Serialize)]
pub(crate) struct CliResult {
    pub(crate) fs: &'static str,
    pub(crate) layers: usize,
    pub(crate) tool: &'static str,
    pub(crate) iterations: usize,
    pub(crate) mount: Stats,
    pub(crate) unmount: Stats,
    pub(crate) total: Stats,
    /// Total median over util-linux's.
    pub(crate) ratio: Option<f64>,
    pub(crate) error: Option<String>,
}

#[derive(Serialize)]
pub(crate) struct TargetResult {
    pub(crate) name: String,
    pub(crate) measured: String,
    pub(crate) ok: Option<bool>,
}

#[derive(Serialize)]
pub(crate) struct Machine {
    pub(crate) cpu: String,
    pub(crate) cpus: usize,
    pub(crate) kernel: String,
    pub(crate) util_linux: String,
}

#[derive(Serialize)]
pub(crate) struct Report {
    pub(crate) machine: Machine,
    /// `git describe --always --dirty` of the measured tree.
    pub(crate) source: String,
    pub(crate) quick: bool,
    pub(crate) seconds: f64,
    pub(crate) serial: Vec<SerialResult>,
    pub(crate) concurrent: Vec<ConcurrentResult>,
    pub(crate) single: Vec<SingleResult>,
    pub(crate) cli: Vec<CliResult>,
    pub(crate) host_mounts: Vec<HostMountsResult>,
    pub(crate) targets: Vec<TargetResult>,
}
