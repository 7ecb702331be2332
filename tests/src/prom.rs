//! A strict parser of the Prometheus text exposition format (version
//! 0.0.4), for checking `/metrics` without promtool.
//!
//! It checks what a scraper relies on: `# TYPE` before a family's samples,
//! valid metric and label names, quoted and escaped label values, numeric
//! values, histogram series (`_bucket` with `le`, `_sum`, `_count`) and no
//! duplicate series.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context, Result, bail, ensure};

/// One sample line.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A parsed exposition: the type of each family and every sample.
#[derive(Debug, Default)]
pub struct Exposition {
    pub types: BTreeMap<String, String>,
    pub samples: Vec<Sample>,
}

impl Exposition {
    /// The value of the series `name` with exactly `labels`, if exported.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let wanted: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.samples
            .iter()
            .find(|s| s.name == name && s.labels == wanted)
            .map(|s| s.value)
    }

    /// Whether a family (or a histogram's series) of this name is exported.
    pub fn has_family(&self, name: &str) -> bool {
        self.types.contains_key(name)
            || ["_bucket", "_sum", "_count"].iter().any(|suffix| {
                name.strip_suffix(suffix)
                    .is_some_and(|base| self.types.get(base).is_some_and(|t| t == "histogram"))
            })
    }
}

fn valid_name(name: &str, colon: bool) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || (colon && c == ':'))
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || (colon && c == ':'))
}

fn parse_value(text: &str) -> Result<f64> {
    match text {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => text.parse().with_context(|| format!("bad value {text:?}")),
    }
}

/// Parses `{a="x",b="y"}` from the start of `text`; returns the labels and
/// the rest of the line.
fn parse_labels(text: &str) -> Result<(BTreeMap<String, String>, &str)> {
    let mut labels = BTreeMap::new();
    let mut rest = text.strip_prefix('{').context("labels start with {")?;
    loop {
        rest = rest.trim_start_matches(',');
        if let Some(after) = rest.strip_prefix('}') {
            return Ok((labels, after));
        }
        let (name, after) = rest.split_once("=\"").context("label needs =\"")?;
        ensure!(valid_name(name, false), "bad label name {name:?}");
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next() {
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c @ ('\\' | '"'))) => value.push(c),
                    other => bail!("bad escape {other:?} in label {name}"),
                },
                Some((_, c)) => value.push(c),
                None => bail!("unterminated value of label {name}"),
            }
        };
        ensure!(
            labels.insert(name.to_string(), value).is_none(),
            "label {name} twice"
        );
        rest = &after[end + 1..];
        ensure!(
            rest.starts_with(',') || rest.starts_with('}'),
            "expected , or }} after label {name}"
        );
    }
}

/// The family a sample belongs to, given the declared types.
fn family_of<'a>(name: &'a str, types: &BTreeMap<String, String>) -> Option<&'a str> {
    if types.contains_key(name) {
        return Some(name);
    }
    ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
        name.strip_suffix(suffix).filter(|base| {
            types
                .get(*base)
                .is_some_and(|t| t == "histogram" || t == "summary")
        })
    })
}

/// Parses and checks a whole exposition.
pub fn parse(text: &str) -> Result<Exposition> {
    let mut exposition = Exposition::default();
    let mut series = BTreeSet::new();
    for (number, line) in text.lines().enumerate() {
        let context = || format!("line {}: {line}", number + 1);
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix("# ") {
            if let Some(rest) = comment.strip_prefix("TYPE ") {
                let (name, kind) = rest.split_once(' ').with_context(context)?;
                ensure!(valid_name(name, true), "bad metric name: {}", context());
                ensure!(
                    ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                    "bad type: {}",
                    context()
                );
                ensure!(
                    exposition
                        .types
                        .insert(name.to_string(), kind.to_string())
                        .is_none(),
                    "TYPE twice: {}",
                    context()
                );
            }
            continue;
        }
        let name_end = line.find(['{', ' ']).with_context(context)?;
        let name = &line[..name_end];
        ensure!(valid_name(name, true), "bad metric name: {}", context());
        let (labels, rest) = if line[name_end..].starts_with('{') {
            parse_labels(&line[name_end..]).with_context(context)?
        } else {
            (BTreeMap::new(), &line[name_end..])
        };
        let mut fields = rest.split_whitespace();
        let value = parse_value(fields.next().with_context(context)?).with_context(context)?;
        if let Some(timestamp) = fields.next() {
            timestamp.parse::<i64>().with_context(context)?;
        }
        ensure!(fields.next().is_none(), "trailing text: {}", context());
        let family = family_of(name, &exposition.types)
            .with_context(|| format!("sample before its # TYPE: {}", context()))?;
        if exposition.types[family] == "histogram" && name.ends_with("_bucket") {
            ensure!(
                labels.contains_key("le"),
                "bucket without le: {}",
                context()
            );
        }
        if exposition.types[family] == "counter" {
            ensure!(value >= 0.0, "negative counter: {}", context());
        }
        ensure!(
            series.insert(format!("{name}{labels:?}")),
            "duplicate series: {}",
            context()
        );
        exposition.samples.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    Ok(exposition)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_families_labels_and_histograms() {
        let text = "# HELP a_total A.\n# TYPE a_total counter\na_total{k=\"x\\\"y\"} 3\n\
                    # TYPE h histogram\nh_bucket{le=\"+Inf\"} 1\nh_sum 0.5\nh_count 1\n";
        let exposition = parse(text).expect("valid");
        assert_eq!(exposition.value("a_total", &[("k", "x\"y")]), Some(3.0));
        assert!(exposition.has_family("h_bucket"));
        assert!(!exposition.has_family("b"));
    }

    #[test]
    fn refuses_what_a_scraper_would_refuse() {
        for bad in [
            "a 1\n",
            "# TYPE a counter\na{k=x} 1\n",
            "# TYPE a counter\na -1\n",
            "# TYPE a gauge\na 1\na 2\n",
            "# TYPE a gauge\na one\n",
            "# TYPE 1a gauge\n",
            "# TYPE h histogram\nh_bucket 1\n",
        ] {
            assert!(parse(bad).is_err(), "accepted {bad:?}");
        }
    }
}
