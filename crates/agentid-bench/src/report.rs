//! The output: one line per figure, `name: value unit  (ratio to its baseline)`, and a closing
//! list of the targets met and missed.

use std::fmt::Write as _;

/// A target on a ratio.
#[derive(Clone, Copy, Debug)]
pub enum Target {
    /// The ratio must be at most this.
    AtMost(f64),
    /// The ratio must be at least this.
    AtLeast(f64),
    /// No target: information only.
    None,
}

/// Collects figure lines and target outcomes.
#[derive(Debug, Default)]
pub struct Report {
    outcomes: Vec<(String, bool, String)>,
}

/// Formats nanoseconds in a readable unit with its name.
pub fn fmt_ns(ns: f64) -> (f64, &'static str) {
    if ns >= 10_000_000.0 {
        (ns / 1_000_000.0, "ms")
    } else if ns >= 10_000.0 {
        (ns / 1_000.0, "us")
    } else {
        (ns, "ns")
    }
}

impl Report {
    /// A section header (a comment line, not a figure).
    pub fn section(&self, title: &str) {
        println!("\n# {title}");
    }

    /// A figure with its ratio to the baseline described by `baseline`.
    pub fn line(
        &mut self,
        name: &str,
        value: f64,
        unit: &str,
        ratio: f64,
        baseline: &str,
        target: Target,
    ) {
        let mut s = format!(
            "{name}: {} {unit}  ({ratio:.2}x {baseline}",
            fmt_value(value)
        );
        match target {
            Target::AtMost(t) => {
                let ok = ratio <= t;
                let _ = write!(
                    s,
                    "; target <= {t:.2}x: {}",
                    if ok { "met" } else { "MISSED" }
                );
                self.outcomes.push((
                    name.to_owned(),
                    ok,
                    format!("{ratio:.2}x, target <= {t:.2}x"),
                ));
            }
            Target::AtLeast(t) => {
                let ok = ratio >= t;
                let _ = write!(
                    s,
                    "; target >= {t:.2}x: {}",
                    if ok { "met" } else { "MISSED" }
                );
                self.outcomes.push((
                    name.to_owned(),
                    ok,
                    format!("{ratio:.2}x, target >= {t:.2}x"),
                ));
            }
            Target::None => {}
        }
        s.push(')');
        println!("{s}");
    }

    /// A time per operation (ns in, readable unit out) with its ratio.
    pub fn time(
        &mut self,
        name: &str,
        ns: f64,
        per: &str,
        ratio: f64,
        baseline: &str,
        target: Target,
    ) {
        let (v, unit) = fmt_ns(ns);
        self.line(name, v, &format!("{unit}/{per}"), ratio, baseline, target);
    }

    /// A baseline line (its own ratio is 1 by definition).
    pub fn baseline(&mut self, name: &str, ns: f64, per: &str) {
        let (v, unit) = fmt_ns(ns);
        println!("{name}: {} {unit}/{per}  (1.00x: baseline)", fmt_value(v));
    }

    /// Prints the targets met and missed.
    pub fn summary(&self) {
        let missed = self.outcomes.iter().filter(|o| !o.1).count();
        println!(
            "\n# targets: {} met, {missed} missed",
            self.outcomes.len() - missed
        );
        for (name, ok, what) in &self.outcomes {
            println!(
                "{} {name}: {what}",
                if *ok { "  met   " } else { "  MISSED" }
            );
        }
    }
}

fn fmt_value(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}
