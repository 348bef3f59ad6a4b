//! The SVG plot of one workload: a horizontal bar per contender (median
//! ops/s) with a min–max whisker.

use std::io;
use std::path::Path;

use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;

use crate::report::{min_max, Series};

const BAR_PX: u32 = 30;

fn plot_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("plot: {e}"))
}

/// Draws `rows` (measured series only) into an SVG file at `path`.
///
/// # Errors
/// Writing the file.
pub fn bar_chart(path: &Path, title: &str, rows: &[&Series]) -> io::Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let n = rows.len();
    let xmax = rows.iter().map(|s| min_max(&s.ops_per_s).1).fold(1.0, f64::max) * 1.15;
    // The first row (the baseline) is drawn at the top.
    let names: Vec<String> = rows.iter().rev().map(|s| s.contender.clone()).collect();
    let at = |i: usize| n - 1 - i;
    let root = SVGBackend::new(path, (960, 90 + BAR_PX * n as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(240)
        .build_cartesian_2d(0f64..xmax, (0..n).into_segmented())
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(n)
        .y_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) | SegmentValue::Exact(i) => names.get(*i).cloned().unwrap_or_default(),
            SegmentValue::Last => String::new(),
        })
        .x_desc("operations per second (median; whisker: min–max of the repetitions)")
        .x_label_formatter(&|v| format!("{:.0}k", v / 1e3))
        .draw()
        .map_err(plot_err)?;
    let best = rows.iter().map(|s| s.median_ops()).fold(0.0, f64::max);
    chart
        .draw_series(rows.iter().enumerate().map(|(i, s)| {
            let colour = if s.contender.starts_with("mfio") {
                BLUE
            } else {
                RGBColor(150, 150, 150)
            };
            let mut bar = Rectangle::new(
                [
                    (0.0, SegmentValue::Exact(at(i))),
                    (s.median_ops(), SegmentValue::Exact(at(i) + 1)),
                ],
                colour.mix(if s.median_ops() >= best { 0.9 } else { 0.6 }).filled(),
            );
            bar.set_margin(4, 4, 0, 0);
            bar
        }))
        .map_err(plot_err)?;
    chart
        .draw_series(rows.iter().enumerate().map(|(i, s)| {
            let (lo, hi) = min_max(&s.ops_per_s);
            PathElement::new(
                vec![(lo, SegmentValue::CenterOf(at(i))), (hi, SegmentValue::CenterOf(at(i)))],
                BLACK.stroke_width(2),
            )
        }))
        .map_err(plot_err)?;
    root.present().map_err(plot_err)
}
