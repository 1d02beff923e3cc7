//! A small, honest timing harness: warm-up, then interleaved rounds of fixed time windows,
//! median of the rounds. Interleaving the rounds of an operation and of its baseline keeps a
//! load change on this shared machine from landing on one side only.

use std::time::{Duration, Instant};

/// How long and how often to measure.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    /// Rounds per operation (the median is reported).
    pub rounds: usize,
    /// Length of one round.
    pub window: Duration,
}

impl Budget {
    /// The budget of `--quick` or of the full run.
    pub fn new(quick: bool) -> Self {
        if quick {
            Self {
                rounds: 5,
                window: Duration::from_millis(60),
            }
        } else {
            Self {
                rounds: 9,
                window: Duration::from_millis(250),
            }
        }
    }

    /// The same number of rounds with a window scaled by `factor`.
    pub fn scaled(self, factor: f64) -> Self {
        Self {
            rounds: self.rounds,
            window: self.window.mul_f64(factor),
        }
    }
}

/// Runs `f` for about `window` and returns nanoseconds per call (at least one call).
fn window_ns(window: Duration, f: &mut dyn FnMut()) -> f64 {
    let start = Instant::now();
    let mut n: u64 = 0;
    loop {
        f();
        n += 1;
        let elapsed = start.elapsed();
        if elapsed >= window {
            return elapsed.as_nanos() as f64 / n as f64;
        }
    }
}

/// The median of `v` (sorted in place); 0 for an empty slice.
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v.get(n / 2).copied().unwrap_or(0.0),
        n => {
            (v.get(n / 2 - 1).copied().unwrap_or(0.0) + v.get(n / 2).copied().unwrap_or(0.0)) / 2.0
        }
    }
}

/// Measures every function in `fs` with interleaved rounds and returns the median ns per call
/// of each, in order. One warm-up window (a quarter of a round) per function first.
pub fn compare(budget: Budget, fs: &mut [&mut dyn FnMut()]) -> Vec<f64> {
    for f in fs.iter_mut() {
        window_ns(budget.window / 4, *f);
    }
    let mut samples: Vec<Vec<f64>> = vec![Vec::with_capacity(budget.rounds); fs.len()];
    for _ in 0..budget.rounds {
        for (f, s) in fs.iter_mut().zip(samples.iter_mut()) {
            s.push(window_ns(budget.window, *f));
        }
    }
    samples.iter_mut().map(|s| median(s)).collect()
}

/// Percentile `p` (0..=100) of `v` (sorted in place), nearest rank.
pub fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v.get(rank.saturating_sub(1).min(v.len() - 1))
        .copied()
        .unwrap_or(0.0)
}

/// A success flag the measured closures share (each closure only needs `&Check`).
#[derive(Debug)]
pub struct Check(std::cell::Cell<bool>);

impl Check {
    /// A flag that starts true.
    pub fn new() -> Self {
        Self(std::cell::Cell::new(true))
    }

    /// Records one outcome.
    pub fn and(&self, ok: bool) {
        self.0.set(self.0.get() && ok);
    }

    /// Whether every outcome was a success.
    pub fn get(&self) -> bool {
        self.0.get()
    }
}
