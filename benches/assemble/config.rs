//! Configuration: what to run and how often, from the environment.

#[allow(unused_imports)]
use super::*;

// ---------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------

/// What to run and how often; `quick` cuts every count for a smoke run.
pub(crate) struct Config {
    pub(crate) quick: bool,
    pub(crate) sections: Filter,
    pub(crate) filesystems: Filter,
    pub(crate) layers: Filter,
    pub(crate) variants: Filter,
    pub(crate) iterations: Option<usize>,
}

/// A comma-separated allow-list from the environment; unset allows all.
pub(crate) struct Filter(pub(crate) Option<Vec<String>>);

impl Filter {
    pub(crate) fn from_env(var: &str) -> Filter {
        Filter(std::env::var(var).ok().map(|v| {
            v.split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect()
        }))
    }

    pub(crate) fn allows(&self, name: &str) -> bool {
        self.0
            .as_ref()
            .is_none_or(|names| names.iter().any(|n| n == name))
    }
}

impl Config {
    pub(crate) fn from_env_and_args() -> Config {
        let quick = std::env::var("IDOVERLAY_BENCH_QUICK").is_ok_and(|v| v != "0")
            || std::env::args().any(|a| a == "--quick");
        Config {
            quick,
            sections: Filter::from_env("IDOVERLAY_BENCH_SECTIONS"),
            filesystems: Filter::from_env("IDOVERLAY_BENCH_FS"),
            layers: Filter::from_env("IDOVERLAY_BENCH_LAYERS"),
            variants: Filter::from_env("IDOVERLAY_BENCH_VARIANTS"),
            iterations: std::env::var("IDOVERLAY_BENCH_ITERATIONS")
                .ok()
                .and_then(|v| v.parse().ok()),
        }
    }

    pub(crate) fn sizes(&self) -> Vec<usize> {
        [1, 8, 32, 128, MAX_LAYERS]
            .into_iter()
            .filter(|n| self.layers.allows(&n.to_string()))
            .collect()
    }

    /// Timed iterations per (variant, size): enough for a stable median
    /// and a meaningful p99. At 500 layers the medians of auto and the floor
    /// differ by ~0.1 ms and each moves by as much from run to run on this
    /// shared machine: 200 samples there too (the per-layer variants make
    /// that ~40 s).
    pub(crate) fn iterations(&self, layers: usize) -> usize {
        if let Some(n) = self.iterations {
            return n;
        }
        match (self.quick, layers) {
            (true, n) if n <= 32 => 20,
            (true, _) => 5,
            (false, n) if n <= 32 => 200,
            (false, n) if n <= 128 => 100,
            (false, _) => 200,
        }
    }

    /// Untimed runs first: the probe cache, page cache and dentries warm up.
    pub(crate) fn warmup(&self) -> usize {
        if self.quick {
            1
        } else {
            3
        }
    }

    /// Concurrency: the layer counts tried and how long each point runs.
    pub(crate) fn concurrent_sizes(&self) -> Vec<usize> {
        let sizes: &[usize] = if self.quick {
            &[MAX_LAYERS]
        } else {
            &[8, MAX_LAYERS]
        };
        sizes
            .iter()
            .copied()
            .filter(|n| self.layers.allows(&n.to_string()))
            .collect()
    }

    /// Rounds per (size, threads), and the length of each variant's run in
    /// a round: 4 x 0.5 s = 2 s per point in a full run.
    pub(crate) fn concurrent_rounds(&self) -> (usize, Duration) {
        if self.quick {
            (1, Duration::from_millis(250))
        } else {
            (4, Duration::from_millis(500))
        }
    }

    pub(crate) fn single_iterations(&self, full: usize) -> usize {
        if self.quick {
            10
        } else {
            full
        }
    }
}
