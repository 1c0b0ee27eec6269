//! Parsing a Prometheus / OpenMetrics text scrape.

use std::collections::BTreeMap;

/// One scrape: samples by metric name, each with its labels.
#[derive(Debug, Clone, Default)]
pub struct Scrape {
    samples: Vec<Sample>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Scrape {
    /// Parses the text format; lines it does not understand are skipped.
    pub fn parse(text: &str) -> Scrape {
        let samples = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .filter_map(parse_line)
            .collect();
        Scrape { samples }
    }

    pub fn samples(&self) -> &[Sample] {
        &self.samples
    }

    /// Sum of every sample named `name` whose labels include all of `labels`
    /// (0 when there is none: a counter that was never touched is often absent).
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
            .sum()
    }

    /// The value of a sample without labels (or the sum over all label sets).
    pub fn get(&self, name: &str) -> f64 {
        self.sum(name, &[])
    }

    /// Whether any sample has this name.
    pub fn has(&self, name: &str) -> bool {
        self.samples.iter().any(|s| s.name == name)
    }

    /// Samples whose name starts with `prefix`, as `name{labels} value` lines (for messages).
    pub fn describe(&self, prefix: &str) -> String {
        self.samples
            .iter()
            .filter(|s| s.name.starts_with(prefix))
            .map(|s| format!("{}{:?} {}", s.name, s.labels, s.value))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn parse_line(line: &str) -> Option<Sample> {
    let (name, rest) = match line.find(['{', ' ']) {
        Some(i) => line.split_at(i),
        None => return None,
    };
    let mut labels = BTreeMap::new();
    let rest = if let Some(body) = rest.strip_prefix('{') {
        let end = find_label_end(body)?;
        parse_labels(&body[..end], &mut labels)?;
        &body[end + 1..]
    } else {
        rest
    };
    // `value [timestamp]` (OpenMetrics may add an exemplar after '#').
    let value = rest.split('#').next()?.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// Index of the closing '}' outside quoted label values.
fn find_label_end(body: &str) -> Option<usize> {
    let mut in_quotes = false;
    let mut escaped = false;
    for (i, c) in body.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => in_quotes = !in_quotes,
            '}' if !in_quotes => return Some(i),
            _ => {}
        }
    }
    None
}

fn parse_labels(mut s: &str, out: &mut BTreeMap<String, String>) -> Option<()> {
    loop {
        s = s.trim_start_matches([',', ' ']);
        if s.is_empty() {
            return Some(());
        }
        let (key, rest) = s.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                '"' => {
                    end = Some(i);
                    break;
                }
                c => value.push(c),
            }
        }
        out.insert(key.trim().to_owned(), value);
        s = &rest[end? + 1..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_counters_gauges_and_labels() {
        let text = "# HELP linewatch_agent_points_read Readings\n\
            # TYPE linewatch_agent_points_read counter\n\
            linewatch_agent_points_read_total{source=\"plc-a\"} 12\n\
            linewatch_agent_points_read_total{source=\"plc,\\\"b}\"} 3\n\
            linewatch_agent_buffer_records 7\n\
            linewatch_agent_oldest_unshipped_age_seconds 0.25\n\
            # EOF\n";
        let s = Scrape::parse(text);
        assert_eq!(s.get("linewatch_agent_buffer_records"), 7.0);
        assert_eq!(s.get("linewatch_agent_points_read_total"), 15.0);
        assert_eq!(
            s.sum("linewatch_agent_points_read_total", &[("source", "plc-a")]),
            12.0
        );
        assert_eq!(
            s.sum(
                "linewatch_agent_points_read_total",
                &[("source", "plc,\"b}")]
            ),
            3.0
        );
        assert_eq!(s.get("linewatch_agent_oldest_unshipped_age_seconds"), 0.25);
        assert_eq!(s.get("absent_total"), 0.0);
        assert!(!s.has("absent_total"));
    }
}
