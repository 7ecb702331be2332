//! Draws the comparison charts of docs/benchmarks.md from the JSON that
//! `benches-compare/run` writes: `throughput.svg` (operations per second)
//! and `latency.svg` (p50 bars, p99 whiskers), one group of bars per case
//! (operation, connections × in flight), one bar per system, log scales.
//! Prints the same results as a Markdown table, with each peer's ratio to
//! mpreg.
//!
//! `mpreg-benches-compare RESULTS.json OUT_DIR`

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use plotters::prelude::*;
use serde::Deserialize;

#[derive(Deserialize)]
struct Results {
    date: String,
    machine: String,
    versions: BTreeMap<String, String>,
    results: Vec<Report>,
}

/// One line of `mpreg bench --json`.
#[derive(Deserialize)]
struct Report {
    system: String,
    op: String,
    conns: u64,
    inflight: u64,
    errors: u64,
    ops_per_second: f64,
    latency_us: Latency,
}

#[derive(Deserialize)]
struct Latency {
    p50: u64,
    p99: u64,
}

/// Systems in the order of their bars, with their colours.
const SYSTEMS: [(&str, RGBColor); 4] = [
    ("mpreg", RGBColor(0x1f, 0x77, 0xb4)),
    ("nats", RGBColor(0x2c, 0xa0, 0x2c)),
    ("redis", RGBColor(0xd6, 0x27, 0x28)),
    ("etcd", RGBColor(0xff, 0x7f, 0x0e)),
];

/// One group of bars: a case and each system's report of it.
struct Case<'a> {
    name: String,
    reports: Vec<&'a Report>,
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, input, out_dir] = args.as_slice() else {
        bail!("usage: mpreg-benches-compare RESULTS.json OUT_DIR");
    };
    let text = std::fs::read_to_string(input).with_context(|| format!("read {input}"))?;
    let results: Results = serde_json::from_str(&text).with_context(|| format!("parse {input}"))?;
    let cases = cases(&results.results);
    if cases.is_empty() {
        bail!("{input} holds no results");
    }
    std::fs::create_dir_all(out_dir).with_context(|| format!("create {out_dir}"))?;
    let subtitle = format!("{}, {}", results.date, results.machine);
    let throughput = Path::new(out_dir).join("throughput.svg");
    draw(&throughput, &cases, &subtitle, Metric::Throughput)?;
    let latency = Path::new(out_dir).join("latency.svg");
    draw(&latency, &cases, &subtitle, Metric::Latency)?;
    print!("{}", table(&results, &cases));
    eprintln!("wrote {} and {}", throughput.display(), latency.display());
    Ok(())
}

/// Groups reports by case, in the order the run measured them.
fn cases(reports: &[Report]) -> Vec<Case<'_>> {
    let mut cases: Vec<Case> = Vec::new();
    for report in reports {
        let name = format!("{} {}×{}", report.op, report.conns, report.inflight);
        match cases.iter_mut().find(|c| c.name == name) {
            Some(case) => case.reports.push(report),
            None => cases.push(Case {
                name,
                reports: vec![report],
            }),
        }
    }
    for case in &mut cases {
        case.reports.sort_by_key(|r| system_rank(&r.system));
    }
    cases
}

fn system_rank(system: &str) -> usize {
    SYSTEMS
        .iter()
        .position(|(name, _)| *name == system)
        .unwrap_or(SYSTEMS.len())
}

fn colour(system: &str) -> RGBColor {
    SYSTEMS
        .get(system_rank(system))
        .map_or(BLACK, |(_, colour)| *colour)
}

#[derive(Clone, Copy, PartialEq)]
enum Metric {
    Throughput,
    Latency,
}

/// One row of a chart, top to bottom: a bar and its label, or a gap
/// between cases.
type Row<'a> = Option<(String, &'a Report)>;

/// The rows of the charts: each case's bars, the first labelled with the
/// case, then a gap.
fn rows<'a>(cases: &'a [Case]) -> Vec<Row<'a>> {
    let mut rows = Vec::new();
    for case in cases {
        for (i, report) in case.reports.iter().enumerate() {
            let label = if i == 0 {
                format!("{}  {}", case.name, report.system)
            } else {
                report.system.clone()
            };
            rows.push(Some((label, *report)));
        }
        rows.push(None);
    }
    rows.pop();
    rows
}

/// Horizontal bars: one row of bars per case, log-scaled values.
fn draw(path: &PathBuf, cases: &[Case], subtitle: &str, metric: Metric) -> Result<()> {
    let rows = rows(cases);
    let height = 80 + 18 * u32::try_from(rows.len()).unwrap_or(u32::MAX / 32);
    let root = SVGBackend::new(path, (900, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let (title, axis, range) = match metric {
        Metric::Throughput => (
            "operations per second (higher is better)",
            "ops/s",
            100f64..3e6,
        ),
        Metric::Latency => (
            "latency: bar p50, whisker p99 (lower is better)",
            "µs",
            10f64..3e5,
        ),
    };
    // Segment y counts from the bottom; rows are listed from the top.
    let at = |index: usize| rows.len() - 1 - index;
    let label = |y: &SegmentValue<usize>| match y {
        SegmentValue::CenterOf(y) if *y < rows.len() => rows[at(*y)]
            .as_ref()
            .map(|(label, _)| label.clone())
            .unwrap_or_default(),
        _ => String::new(),
    };
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("{title}; {subtitle}"), ("sans-serif", 15))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(170)
        .build_cartesian_2d(range.clone().log_scale(), (0..rows.len()).into_segmented())?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .x_desc(axis)
        .x_label_formatter(&|x| si(*x))
        .y_labels(rows.len())
        .y_label_formatter(&label)
        .draw()?;
    for (index, row) in rows.iter().enumerate() {
        let Some((_, report)) = row else {
            continue;
        };
        let y = at(index);
        let value = match metric {
            Metric::Throughput => report.ops_per_second,
            Metric::Latency => report.latency_us.p50 as f64,
        };
        let value = value.clamp(range.start, range.end);
        let mut bar = Rectangle::new(
            [
                (range.start, SegmentValue::Exact(y)),
                (value, SegmentValue::Exact(y + 1)),
            ],
            colour(&report.system).filled(),
        );
        bar.set_margin(2, 2, 0, 0);
        chart.draw_series(std::iter::once(bar))?;
        if metric == Metric::Latency {
            let p99 = (report.latency_us.p99 as f64).clamp(range.start, range.end);
            chart.draw_series(std::iter::once(PathElement::new(
                vec![
                    (value, SegmentValue::CenterOf(y)),
                    (p99, SegmentValue::CenterOf(y)),
                ],
                BLACK.stroke_width(1),
            )))?;
        }
    }
    for (system, colour) in SYSTEMS {
        chart
            .draw_series(std::iter::empty::<Rectangle<(f64, SegmentValue<usize>)>>())?
            .label(system)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], colour.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()
        .with_context(|| format!("write {}", path.display()))?;
    Ok(())
}

/// 100, 1k, 10k, 1M: an axis value in SI units.
fn si(value: f64) -> String {
    match value {
        v if v >= 1e6 => format!("{}M", v / 1e6),
        v if v >= 1e3 => format!("{}k", v / 1e3),
        v => format!("{v}"),
    }
}

/// The results as a Markdown table; ratio is the peer's ops/s over mpreg's.
fn table(results: &Results, cases: &[Case]) -> String {
    let mut text = format!("{}; {}\n\n", results.date, results.machine);
    for (name, version) in &results.versions {
        text.push_str(&format!("- {name}: {version}\n"));
    }
    text.push_str(
        "\n| case | system | ops/s | p50 | p99 | mpreg ÷ peer |\n|---|---|---:|---:|---:|---:|\n",
    );
    for case in cases {
        let mpreg = case
            .reports
            .iter()
            .find(|r| r.system == "mpreg")
            .map(|r| r.ops_per_second);
        for report in &case.reports {
            let ratio = match mpreg {
                Some(m) if report.system != "mpreg" && report.ops_per_second > 0.0 => {
                    format!("{:.2}×", m / report.ops_per_second)
                }
                _ => String::new(),
            };
            let errors = if report.errors > 0 {
                format!(" ({} errors)", report.errors)
            } else {
                String::new()
            };
            text.push_str(&format!(
                "| {} | {}{errors} | {:.0} | {} | {} | {ratio} |\n",
                case.name,
                report.system,
                report.ops_per_second,
                micros(report.latency_us.p50),
                micros(report.latency_us.p99),
            ));
        }
    }
    text
}

fn micros(us: u64) -> String {
    match us {
        10_000.. => format!("{:.1} ms", us as f64 / 1000.0),
        1_000.. => format!("{:.2} ms", us as f64 / 1000.0),
        _ => format!("{us} µs"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(system: &str, op: &str, ops_per_second: f64) -> Report {
        Report {
            system: system.into(),
            op: op.into(),
            conns: 1,
            inflight: 1,
            errors: 0,
            ops_per_second,
            latency_us: Latency { p50: 100, p99: 200 },
        }
    }

    #[test]
    fn cases_group_by_operation_and_put_mpreg_first() {
        let reports = vec![
            report("redis", "cache-put", 6000.0),
            report("mpreg", "cache-put", 3000.0),
            report("nats", "rpc", 9000.0),
        ];
        let cases = cases(&reports);
        let shape: Vec<(String, Vec<&str>)> = cases
            .iter()
            .map(|c| {
                (
                    c.name.clone(),
                    c.reports.iter().map(|r| r.system.as_str()).collect(),
                )
            })
            .collect();
        assert_eq!(
            shape,
            vec![
                ("cache-put 1×1".to_string(), vec!["mpreg", "redis"]),
                ("rpc 1×1".to_string(), vec!["nats"]),
            ]
        );
        let results = Results {
            date: "d".into(),
            machine: "m".into(),
            versions: BTreeMap::new(),
            results: Vec::new(),
        };
        let table = table(&results, &cases);
        assert!(
            table.contains("| cache-put 1×1 | redis | 6000 | 100 µs | 200 µs | 0.50× |"),
            "{table}"
        );
    }
}
