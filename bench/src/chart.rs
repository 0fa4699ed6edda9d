//! `latency.png`: end-to-end latency (p50, p99) against offered rate, one colour per target,
//! from the `step` runs of a report — the figure the README's table summarises.

use std::path::Path;

use plotters::prelude::*;
use serde_json::Value;

/// Where a TrueType font for the labels may be (Debian's fonts-dejavu-core; the first found
/// wins). plotters draws text only with a registered font.
const FONTS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];

/// One line of the chart: a target's percentile at each rate it ran (p50 thin, p99 thick).
struct Series {
    label: String,
    color: RGBColor,
    thin: bool,
    points: Vec<(f64, f64)>,
}

fn series(results: &Value) -> Vec<Series> {
    let colors = [
        ("ceiling", RGBColor(120, 120, 120)),
        ("node", RGBColor(255, 127, 14)),
        ("single-node", RGBColor(31, 119, 180)),
        ("distributed", RGBColor(214, 39, 40)),
    ];
    let mut out = Vec::new();
    for (target, color) in colors {
        let Some(runs) = results[target]["step"]["runs"].as_array() else {
            continue;
        };
        for (pct, thin) in [("p50", true), ("p99", false)] {
            let points: Vec<(f64, f64)> = runs
                .iter()
                .filter_map(|r| {
                    let rate = r["rate"].as_f64()?;
                    // A run where something was lost or refused has no honest latency.
                    let clean = r["lost"].as_u64() == Some(0) && r["refused"].as_u64() == Some(0);
                    let ms = r["end_to_end_ms"][pct].as_f64()?;
                    (clean && ms > 0.0).then_some((rate, ms))
                })
                .collect();
            if !points.is_empty() {
                out.push(Series {
                    label: format!("{target} {pct}"),
                    color,
                    thin,
                    points,
                });
            }
        }
    }
    out
}

/// Draws the chart next to the report. Returns a note when it could not (no font, no step
/// runs), which the caller prints; the numbers are in the table either way.
pub fn draw(report: &Value, out: &Path) -> Result<std::path::PathBuf, String> {
    let font = FONTS
        .iter()
        .find_map(|p| std::fs::read(p).ok())
        .ok_or_else(|| format!("no TrueType font found (looked in {FONTS:?}); chart skipped"))?;
    let font: &'static [u8] = Box::leak(font.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, font)
        .map_err(|_| "the font could not be read; chart skipped".to_owned())?;
    let lines = series(&report["results"]);
    if lines.is_empty() {
        return Err("no step runs in the report; chart skipped".into());
    }
    let max_rate = lines
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .fold(1000.0, f64::max);
    let max_ms = lines
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold(10.0, f64::max);
    let path = out.join("latency.png");
    let root = BitMapBackend::new(&path, (1000, 620)).into_drawing_area();
    let e = |e: DrawingAreaErrorKind<_>| e.to_string();
    root.fill(&WHITE).map_err(e)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Indaba: end-to-end latency vs offered rate (runs without loss)",
            ("sans-serif", 22),
        )
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d(
            (500.0..max_rate * 1.2).log_scale(),
            (0.1..max_ms * 2.0).log_scale(),
        )
        .map_err(e)?;
    chart
        .configure_mesh()
        .x_desc("offered rate, messages/s (log)")
        .y_desc("latency ms (log)")
        .x_labels(6)
        .y_labels(8)
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| {
            if *v >= 1.0 {
                format!("{v:.0}")
            } else {
                format!("{v:.1}")
            }
        })
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(e)?;
    // The 50 ms line the step scenario calls clean.
    chart
        .draw_series(LineSeries::new(
            [(500.0, 50.0), (max_rate * 1.2, 50.0)],
            RGBColor(0, 150, 0).stroke_width(1),
        ))
        .map_err(e)?
        .label("50 ms (step's p99 limit)")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], RGBColor(0, 150, 0)));
    for s in &lines {
        let width = if s.thin { 1 } else { 3 };
        let style = s.color.stroke_width(width);
        let color = s.color;
        chart
            .draw_series(LineSeries::new(s.points.iter().copied(), style))
            .map_err(e)?
            .label(&s.label)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
        chart
            .draw_series(
                s.points
                    .iter()
                    .map(|p| Circle::new(*p, 3, s.color.filled())),
            )
            .map_err(e)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(e)?;
    root.present().map_err(e)?;
    drop(chart);
    drop(root);
    Ok(path)
}
