//! The table: each figure next to its baseline from the same run, their ratio, the target and
//! whether it is met.

use std::fmt::Write;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Met {
    Yes,
    No,
    /// No target, or nothing measured.
    NotApplicable,
}

impl Met {
    pub fn from(ok: bool) -> Self {
        if ok { Met::Yes } else { Met::No }
    }

    fn as_str(self) -> &'static str {
        match self {
            Met::Yes => "yes",
            Met::No => "**NO**",
            Met::NotApplicable => "-",
        }
    }
}

pub struct Row {
    pub figure: String,
    pub value: String,
    pub baseline: String,
    pub ratio: String,
    pub target: String,
    pub met: Met,
}

#[derive(Default)]
pub struct Table {
    pub rows: Vec<Row>,
}

impl Table {
    pub fn add(
        &mut self,
        figure: impl Into<String>,
        value: impl Into<String>,
        baseline: impl Into<String>,
        ratio: impl Into<String>,
        target: impl Into<String>,
        met: Met,
    ) {
        self.rows.push(Row {
            figure: figure.into(),
            value: value.into(),
            baseline: baseline.into(),
            ratio: ratio.into(),
            target: target.into(),
            met,
        });
    }

    /// A Markdown table, columns padded so that it also reads well in a terminal.
    pub fn render(&self) -> String {
        let header = ["figure", "measured", "baseline", "ratio", "target", "met?"];
        let cells: Vec<[&str; 6]> = self
            .rows
            .iter()
            .map(|r| {
                [
                    r.figure.as_str(),
                    r.value.as_str(),
                    r.baseline.as_str(),
                    r.ratio.as_str(),
                    r.target.as_str(),
                    r.met.as_str(),
                ]
            })
            .collect();
        let mut widths = header.map(str::len);
        for row in &cells {
            for (w, c) in widths.iter_mut().zip(row) {
                *w = (*w).max(c.chars().count());
            }
        }
        let mut out = String::new();
        let line = |out: &mut String, row: &[&str; 6]| {
            out.push('|');
            for (c, w) in row.iter().zip(widths) {
                let _ = write!(out, " {c}{} |", " ".repeat(w - c.chars().count()));
            }
            out.push('\n');
        };
        line(&mut out, &header);
        out.push('|');
        for w in widths {
            let _ = write!(out, "{}|", "-".repeat(w + 2));
        }
        out.push('\n');
        for row in &cells {
            line(&mut out, row);
        }
        out
    }
}

/// `12,345/s`.
pub fn rate(per_sec: f64) -> String {
    format!("{}/s", thousands(per_sec.round() as u64))
}

pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A duration given in seconds, in the most readable unit.
pub fn secs(s: f64) -> String {
    if s >= 1.0 {
        format!("{s:.2} s")
    } else if s >= 1e-3 {
        format!("{:.2} ms", s * 1e3)
    } else if s >= 1e-6 {
        format!("{:.1} µs", s * 1e6)
    } else {
        format!("{:.0} ns", s * 1e9)
    }
}

pub fn bytes(b: f64) -> String {
    if b >= 1024.0 * 1024.0 * 1024.0 {
        format!("{:.2} GiB", b / (1024.0 * 1024.0 * 1024.0))
    } else if b >= 1024.0 * 1024.0 {
        format!("{:.1} MiB", b / (1024.0 * 1024.0))
    } else {
        format!("{b:.0} B")
    }
}

pub fn ratio(x: f64) -> String {
    if x < 10.0 {
        format!("{x:.3}×")
    } else {
        format!("{x:.1}×")
    }
}
