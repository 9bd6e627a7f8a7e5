//! The matrix as a picture, SVG and PNG, self-contained (no script, no network to view it):
//! each run's p99 on a log scale with the gate drawn, statements per request, and capacity.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use plotters::coord::Shift;
use plotters::coord::ranged1d::AsRangedCoord;
use plotters::prelude::*;

use crate::report::{Capacities, Provenance, Row};

const WIDTH: u32 = 1300;
const PASS: RGBColor = RGBColor(46, 125, 50);
const FAIL: RGBColor = RGBColor(198, 40, 40);
const OPEN: RGBColor = RGBColor(245, 124, 0);
const CAPACITY: RGBColor = RGBColor(21, 101, 192);
const CEILING: RGBColor = RGBColor(150, 150, 150);
const FONT: &str = "sans-serif";

/// Where a TrueType font is looked for (KATA_CHART_FONT first): DejaVu Sans on Debian, Ubuntu,
/// Fedora and Arch.
const FONTS: [&str; 4] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];

fn register_font() -> anyhow::Result<()> {
    static REGISTERED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            let candidates = std::env::var("KATA_CHART_FONT").into_iter().chain(FONTS.map(String::from));
            let (path, bytes) = candidates
                .filter_map(|path| std::fs::read(&path).ok().map(|bytes| (path, bytes)))
                .next()
                .ok_or_else(|| {
                    "no TrueType font for the chart's text: install fonts-dejavu-core, or set KATA_CHART_FONT to a .ttf"
                        .to_string()
                })?;
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            plotters::style::register_font(FONT, FontStyle::Normal, bytes)
                .map_err(|_| format!("{path}: not a usable font"))?;
            let bold = path.replace("DejaVuSans.ttf", "DejaVuSans-Bold.ttf");
            let bold: &'static [u8] = match std::fs::read(&bold) {
                Ok(b) => Box::leak(b.into_boxed_slice()),
                Err(_) => bytes,
            };
            plotters::style::register_font(FONT, FontStyle::Bold, bold)
                .map_err(|_| format!("{path}: not a usable font"))
        })
        .clone()
        .map_err(|e| anyhow!(e))
}

/// Draw the chart into `dir` as matrix.svg and matrix.png; returns their paths.
pub fn draw(
    provenance: &Provenance,
    rows: &[Row],
    capacities: &Capacities,
    gate: Duration,
    dir: &Path,
) -> anyhow::Result<Vec<PathBuf>> {
    register_font()?;
    let height = chart_height(rows.len(), capacities);
    let svg = dir.join("matrix.svg");
    let png = dir.join("matrix.png");
    {
        let root = SVGBackend::new(&svg, (WIDTH, height)).into_drawing_area();
        paint(&root, provenance, rows, capacities, gate)?;
        root.present().map_err(|e| anyhow!("{e}")).with_context(|| format!("writing {}", svg.display()))?;
    }
    {
        let root = BitMapBackend::new(&png, (WIDTH, height)).into_drawing_area();
        paint(&root, provenance, rows, capacities, gate)?;
        root.present().map_err(|e| anyhow!("{e}")).with_context(|| format!("writing {}", png.display()))?;
    }
    Ok(vec![svg, png])
}

/// Three panels stacked, each as tall as its bars need.
fn chart_height(rows: usize, capacities: &Capacities) -> u32 {
    let bars = rows.max(capacities.targets.len() + 1).max(3) as u32;
    90 + 3 * panel_height(bars)
}

fn panel_height(bars: u32) -> u32 {
    90 + 40 * bars
}

type Area<'a, DB> = DrawingArea<DB, Shift>;

fn paint<DB: DrawingBackend>(
    root: &Area<'_, DB>,
    provenance: &Provenance,
    rows: &[Row],
    capacities: &Capacities,
    gate: Duration,
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let e = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("{e:?}");
    root.fill(&WHITE).map_err(e)?;
    let gate_ms = gate.as_secs_f64() * 1000.0;
    let failing = rows.iter().filter(|r| !r.gate_passed).map(|r| r.label()).collect::<Vec<_>>();
    let headline = if failing.is_empty() {
        format!("Every run holds the gate (p99 < {gate_ms:.0} ms, errors < 1 %)")
    } else {
        format!("Fails the gate (p99 < {gate_ms:.0} ms, errors < 1 %): {}", failing.join(", "))
    };
    let (title, body) = root.split_vertically(80);
    title.draw(&Text::new(headline, (20, 12), (FONT, 28).into_font().style(FontStyle::Bold))).map_err(e)?;
    title
        .draw(&Text::new(provenance.line(), (20, 50), (FONT, 18).into_font().color(&RGBColor(90, 90, 90))))
        .map_err(e)?;
    let panels = body.split_evenly((3, 1));
    latency(&panels[0], rows, gate_ms).map_err(e)?;
    statements(&panels[1], rows).map_err(e)?;
    capacity(&panels[2], capacities, gate_ms).map_err(e)?;
    Ok(())
}

/// Row `i` of `n` at the top when `i` is 0.
fn slot(i: usize, n: usize) -> f64 {
    (n - 1 - i) as f64
}

fn label_of(labels: &[String], y: f64) -> String {
    let i = y.round();
    if (y - i).abs() > 0.01 || i < 0.0 || i as usize >= labels.len() {
        return String::new();
    }
    labels[labels.len() - 1 - i as usize].clone()
}

type Bars<'a, DB, X> = ChartContext<'a, DB, Cartesian2d<X, plotters::coord::types::RangedCoordf64>>;

fn bar_area<'a, DB: DrawingBackend, X: AsRangedCoord>(
    area: &'a Area<'a, DB>,
    caption: &str,
    x: X,
    n: usize,
) -> Result<Bars<'a, DB, X::CoordDescType>, DrawingAreaErrorKind<DB::ErrorType>> {
    ChartBuilder::on(area)
        .caption(caption, (FONT, 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(190)
        .build_cartesian_2d(x, -0.6..(n as f64 - 0.2))
}

fn latency<DB: DrawingBackend>(
    area: &Area<'_, DB>,
    rows: &[Row],
    gate_ms: f64,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let n = rows.len().max(1);
    let labels: Vec<String> = rows.iter().map(Row::label).collect();
    let top = rows.iter().map(|r| r.p99_ms).fold(gate_ms * 2.5, f64::max) * 10.0;
    let floor = 0.5;
    let caption = "p99 of the readers' feed requests, log scale (green: within the gate, red: not)";
    let mut chart = bar_area(area, caption, (floor..top).log_scale(), n)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(n + 1)
        .y_label_formatter(&|y| label_of(&labels, *y))
        .y_label_style((FONT, 16))
        .x_label_style((FONT, 14))
        .x_label_formatter(&|x| format!("{x:.0} ms"))
        .draw()?;
    for (i, row) in rows.iter().enumerate() {
        let y = slot(i, n);
        let colour = if row.gate_passed { PASS } else { FAIL };
        let value = row.p99_ms.max(floor * 1.2);
        chart.draw_series([Rectangle::new([(floor, y - 0.32), (value, y + 0.32)], colour.filled())])?;
        let text = if row.error_pct >= 0.005 {
            format!("{:.0} ms, {:.1} % errors", row.p99_ms, row.error_pct)
        } else {
            format!("{:.0} ms", row.p99_ms)
        };
        chart.draw_series([Text::new(text, (value * 1.15, y + 0.12), (FONT, 15).into_font())])?;
    }
    chart.draw_series(DashedLineSeries::new(
        [(gate_ms, -0.6), (gate_ms, n as f64 - 0.2)],
        6,
        4,
        BLACK.stroke_width(2),
    ))?;
    chart.draw_series([Text::new(
        format!("gate {gate_ms:.0} ms"),
        (gate_ms * 1.08, n as f64 - 0.22),
        (FONT, 14).into_font(),
    )])?;
    Ok(())
}

fn statements<DB: DrawingBackend>(
    area: &Area<'_, DB>,
    rows: &[Row],
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let n = rows.len().max(1);
    let labels: Vec<String> = rows.iter().map(Row::label).collect();
    let top = rows.iter().filter_map(|r| r.statements_per_request).fold(1.0, f64::max) * 1.4;
    let x: Range<f64> = 0.0..top;
    let mut chart = bar_area(area, "Postgres statements per feed request (and per second)", x, n)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(n + 1)
        .y_label_formatter(&|y| label_of(&labels, *y))
        .y_label_style((FONT, 16))
        .x_label_style((FONT, 14))
        .draw()?;
    for (i, row) in rows.iter().enumerate() {
        let y = slot(i, n);
        let Some(per_request) = row.statements_per_request else { continue };
        chart.draw_series([Rectangle::new([(0.0, y - 0.32), (per_request, y + 0.32)], CAPACITY.mix(0.8).filled())])?;
        let per_sec = row.statements_per_sec.map_or_else(String::new, |s| format!(" ({s:.0}/s)"));
        chart.draw_series([Text::new(
            format!("{per_request:.2} per request{per_sec}"),
            (per_request + top * 0.02, y + 0.12),
            (FONT, 15).into_font(),
        )])?;
    }
    Ok(())
}

fn capacity<DB: DrawingBackend>(
    area: &Area<'_, DB>,
    capacities: &Capacities,
    gate_ms: f64,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let Some(health) = &capacities.health else {
        area.draw(&Text::new("capacity not measured (--no-capacity)", (20, 40), (FONT, 18)))?;
        return Ok(());
    };
    let mut bars: Vec<(String, Option<f64>, String, RGBColor)> =
        vec![("GET /health".into(), health.rate, health.display(), CEILING)];
    for (target, found) in &capacities.targets {
        let ratio = capacities
            .ratio(*target)
            .map_or_else(String::new, |r| format!(" = {} of /health", crate::report::percent(r)));
        let colour = if found.rate.is_some() { CAPACITY } else { OPEN };
        bars.push((target.name().to_owned(), found.rate, format!("{}{ratio}", found.display()), colour));
    }
    let n = bars.len();
    let labels: Vec<String> = bars.iter().map(|b| b.0.clone()).collect();
    let top = bars.iter().filter_map(|b| b.1).fold(100.0, f64::max) * 8.0;
    let floor = 10.0;
    let caption =
        format!("capacity: the highest rate held with p99 < {gate_ms:.0} ms and errors < 1 %, req/s, log scale");
    let mut chart = bar_area(area, &caption, (floor..top).log_scale(), n)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(n + 1)
        .y_label_formatter(&|y| label_of(&labels, *y))
        .y_label_style((FONT, 16))
        .x_label_style((FONT, 14))
        .x_label_formatter(&|x| format!("{x:.0}"))
        .draw()?;
    for (i, (_, rate, text, colour)) in bars.iter().enumerate() {
        let y = slot(i, n);
        let value = rate.unwrap_or(floor * 1.2).max(floor * 1.2);
        chart.draw_series([Rectangle::new([(floor, y - 0.32), (value, y + 0.32)], colour.filled())])?;
        chart.draw_series([Text::new(text.clone(), (value * 1.15, y + 0.12), (FONT, 15).into_font())])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use kata_services::Implementation;

    use super::*;
    use crate::report::tests::{capacities, row};

    #[test]
    fn the_chart_is_written_as_svg_and_png() {
        if let Err(e) = register_font() {
            eprintln!("not drawn: {e}");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let rows = [
            row(Implementation::Stage0, 200, 1073.0, 0.0, false),
            row(Implementation::Stage0, 500, 5200.0, 12.5, false),
            row(Implementation::Stage2, 500, 0.0, 0.0, true),
        ];
        let provenance = Provenance { commit: "abcdef0".into(), cores: 2, date: "2026-11-29 12:00 UTC".into() };
        let paths = draw(&provenance, &rows, &capacities(), Duration::from_millis(500), dir.path()).unwrap();
        let svg = std::fs::read_to_string(&paths[0]).unwrap();
        assert!(svg.contains("gate 500 ms") && svg.contains("stage-0 @ 200"), "{svg}");
        assert!(std::fs::read(&paths[1]).unwrap().starts_with(b"\x89PNG"));
        if let Ok(keep) = std::env::var("LOADTEST_KEEP_CHART") {
            std::fs::copy(&paths[1], keep).unwrap();
        }
    }
}
