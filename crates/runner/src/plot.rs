//! Plots written as PNG and SVG (`plotters`): line charts (per-task training
//! loss and validation metric per epoch, gradient cosine over training,
//! MSE curves of `reproduce`), heatmaps (expert utilisation) and bar
//! charts with one panel per group (`compare`). Text uses DejaVu Sans embedded at compile time,
//! so no system font or fontconfig is needed.

use std::path::{Path, PathBuf};
use std::sync::Once;

use mtrec_train::{GateUtilisation, Report};
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::error::{Result, RunError};

static FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
const SIZE: (u32, u32) = (800, 500);

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The embedded font is valid; a failure would only leave text unrendered.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

fn err(path: &Path, e: impl std::fmt::Display) -> RunError {
    RunError::Plot {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// Draws `$draw` (an expression over `$root`) into `<stem>.png` and
/// `<stem>.svg`; evaluates to the two paths.
macro_rules! both {
    ($stem:expr, $size:expr, |$root:ident| $draw:expr) => {{
        register_font();
        let png = $stem.with_extension("png");
        let svg = $stem.with_extension("svg");
        {
            let $root = BitMapBackend::new(&png, $size).into_drawing_area();
            $draw.map_err(|e| err(&png, e))?;
            $root.present().map_err(|e| err(&png, e))?;
        }
        {
            let $root = SVGBackend::new(&svg, $size).into_drawing_area();
            $draw.map_err(|e| err(&svg, e))?;
            $root.present().map_err(|e| err(&svg, e))?;
        }
        Ok(vec![png, svg])
    }};
}

/// Writes `labels[i]` vertically (top to bottom) under the x position
/// `x_of(i)` of `chart`'s bottom edge `y_bottom`: long labels side by side
/// then never overlap. (plotters' own rotated tick labels are placed across
/// the axis line.)
fn vertical_labels<DB: DrawingBackend, X, Y>(
    chart: &ChartContext<'_, DB, Cartesian2d<X, Y>>,
    labels: &[String],
    x_of: impl Fn(usize) -> f64,
    y_bottom: f64,
    size: u32,
) -> std::result::Result<(), DrawingAreaErrorKind<DB::ErrorType>>
where
    X: Ranged<ValueType = f64>,
    Y: Ranged<ValueType = f64>,
{
    let style = ("sans-serif", size).into_font().transform(FontTransform::Rotate90);
    let area = chart.plotting_area().strip_coord_spec();
    let (x0, y0) = chart.plotting_area().get_base_pixel();
    for (i, label) in labels.iter().enumerate() {
        let (px, py) = chart.backend_coord(&(x_of(i), y_bottom));
        // Relative to the plotting area; the text column starts 10 px below
        // the axis and is centred on the tick (half the font's height).
        let at = (px - x0 + size as i32 / 2, py - y0 + 10);
        area.draw(&Text::new(label.clone(), at, style.clone()))?;
    }
    Ok(())
}

/// One named series of `(x, y)` points (and an optional `±` band half-width per point).
#[derive(Clone, Debug)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

fn range(series: &[Series]) -> ((f64, f64), (f64, f64)) {
    let pts = series.iter().flat_map(|s| s.points.iter()).filter(|p| p.1.is_finite());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in pts {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        return ((0.0, 1.0), (0.0, 1.0));
    }
    if x1 - x0 < 1e-12 {
        x1 = x0 + 1.0;
    }
    let pad = ((y1 - y0) * 0.05).max(1e-6);
    ((x0, x1), (y0 - pad, y1 + pad))
}

/// The y axis of a line chart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum YScale {
    Linear,
    /// Logarithmic: for quantities over orders of magnitude (losses, MSE);
    /// points <= 0 are left out.
    Log,
}

fn draw_lines<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    scale: YScale,
) -> std::result::Result<(), String> {
    let s = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    root.fill(&WHITE).map_err(s)?;
    // Log scale: log10 of the values on a linear axis whose tick labels
    // show the values themselves (evenly spaced ticks at any range, which
    // plotters' own log axis does not give within one decade).
    let series: Vec<Series> = series
        .iter()
        .map(|se| Series {
            name: se.name.clone(),
            points: se
                .points
                .iter()
                .filter(|p| p.1.is_finite() && (scale == YScale::Linear || p.1 > 0.0))
                .map(|&(x, y)| (x, if scale == YScale::Log { y.log10() } else { y }))
                .collect(),
        })
        .collect();
    let ((x0, x1), (y0, y1)) = range(&series);
    let mut chart = ChartBuilder::on(root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(s)?;
    let log_label = |v: &f64| {
        let value = 10f64.powf(*v);
        // Enough digits to tell neighbouring ticks apart.
        let digits = (2.0 - value.log10().floor()).clamp(0.0, 8.0) as usize;
        format!("{value:.digits$}")
    };
    let mut mesh = chart.configure_mesh();
    mesh.x_desc(x_label)
        .y_desc(y_label)
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 16));
    if scale == YScale::Log {
        mesh.y_label_formatter(&log_label);
    }
    mesh.draw().map_err(s)?;
    for (i, se) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(se.points.clone(), color.stroke_width(2)))
            .map_err(s)?
            .label(se.name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        chart
            .draw_series(se.points.iter().map(|&p| Circle::new(p, 3, color.filled())))
            .map_err(s)?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(s)?;
    Ok(())
}

/// A line chart with axis labels and a legend (one line per series).
pub fn line_chart(stem: &Path, title: &str, x_label: &str, y_label: &str, series: &[Series]) -> Result<Vec<PathBuf>> {
    line_chart_scaled(stem, title, x_label, y_label, series, YScale::Linear)
}

/// [`line_chart`] with the given y scale.
pub fn line_chart_scaled(
    stem: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    scale: YScale,
) -> Result<Vec<PathBuf>> {
    both!(stem, SIZE, |root| draw_lines(
        &root, title, x_label, y_label, series, scale
    ))
}

fn draw_heatmap<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    rows: &[String],
    cols: &[String],
    values: &[Vec<f64>],
) -> std::result::Result<(), String> {
    let s = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    root.fill(&WHITE).map_err(s)?;
    let (nr, nc) = (rows.len().max(1), cols.len().max(1));
    let left = 14 + 8 * rows.iter().map(|r| r.len()).max().unwrap_or(4) as u32;
    // Expert labels are written vertically (ten `experts#k` side by side
    // overlap), in an area as tall as the longest.
    let bottom = 30 + 8 * cols.iter().map(|c| c.len()).max().unwrap_or(4) as u32;
    // Cell (c, r) is centred on integer coordinates, so ticks name cells.
    let mut chart = ChartBuilder::on(root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(bottom)
        .y_label_area_size(left)
        .build_cartesian_2d(-0.5..nc as f64 - 0.5, -0.5..nr as f64 - 0.5)
        .map_err(s)?;
    let name = |labels: &[String], x: f64, flip: bool| -> String {
        let i = x.round();
        if (x - i).abs() > 0.01 || i < 0.0 {
            return String::new();
        }
        let i = i as usize;
        let i = if flip { labels.len().saturating_sub(1 + i) } else { i };
        labels.get(i).cloned().unwrap_or_default()
    };
    chart
        .configure_mesh()
        .disable_mesh()
        .x_labels(nc * 2 + 1)
        .y_labels(nr * 2 + 1)
        .x_label_formatter(&|_| String::new())
        .y_label_formatter(&|y| name(rows, *y, true))
        .label_style(("sans-serif", 12))
        .draw()
        .map_err(s)?;
    vertical_labels(&chart, cols, |c| c as f64, -0.5, 12).map_err(s)?;
    for (r, row) in values.iter().enumerate() {
        for (c, v) in row.iter().enumerate() {
            let (x, y) = (c as f64, (nr - 1 - r) as f64);
            // Absolute scale: 0 white, 1 dark red (a gate's weights sum to 1).
            let t = v.clamp(0.0, 1.0).sqrt();
            let color = RGBColor(255, (255.0 * (1.0 - t)) as u8, (255.0 * (1.0 - t)) as u8);
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(x - 0.5, y - 0.5), (x + 0.5, y + 0.5)],
                    color.filled(),
                )))
                .map_err(s)?;
            chart
                .draw_series(std::iter::once(Text::new(
                    format!("{v:.2}"),
                    (x - 0.2, y + 0.1),
                    ("sans-serif", 12).into_font(),
                )))
                .map_err(s)?;
        }
    }
    Ok(())
}

/// A heatmap with a value in every cell (rows top to bottom).
pub fn heatmap(
    stem: &Path,
    title: &str,
    rows: &[String],
    cols: &[String],
    values: &[Vec<f64>],
) -> Result<Vec<PathBuf>> {
    let longest = cols.iter().map(|c| c.len()).max().unwrap_or(4) as u32;
    let h = (120 + 8 * longest + 28 * rows.len() as u32).max(300);
    let w = (200 + 48 * cols.len() as u32).max(500);
    both!(stem, (w, h), |root| draw_heatmap(&root, title, rows, cols, values))
}

/// One panel per group, each with its own y axis fitted to its bars, so
/// that models differing in the third decimal of one task look different
/// (a shared axis over tasks of different levels flattens them all).
fn draw_bars<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    y_label: &str,
    groups: &[String],
    bars: &[(String, Vec<(f64, f64)>)],
) -> std::result::Result<(), String> {
    let s = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    root.fill(&WHITE).map_err(s)?;
    let root = root.titled(title, ("sans-serif", 20)).map_err(s)?;
    let panels = root.split_evenly((1, groups.len().max(1)));
    for (g, (panel, group)) in panels.iter().zip(groups).enumerate() {
        let cells: Vec<(f64, f64)> = bars
            .iter()
            .map(|b| b.1.get(g).copied().unwrap_or((f64::NAN, f64::NAN)))
            .collect();
        draw_bar_panel(panel, group, if g == 0 { y_label } else { "" }, bars, &cells).map_err(s)?;
    }
    Ok(())
}

/// One group's bars: `cells[b] = (mean, std)` of bar `b` (named `bars[b].0`).
fn draw_bar_panel<DB: DrawingBackend>(
    panel: &DrawingArea<DB, Shift>,
    group: &str,
    y_label: &str,
    bars: &[(String, Vec<(f64, f64)>)],
    cells: &[(f64, f64)],
) -> std::result::Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let finite = || {
        cells
            .iter()
            .filter(|(m, _)| m.is_finite())
            .map(|(m, sd)| (*m, if sd.is_finite() { *sd } else { 0.0 }))
    };
    let lo = finite().map(|(m, sd)| m - sd).fold(f64::MAX, f64::min);
    let hi = finite().map(|(m, sd)| m + sd).fold(f64::MIN, f64::max);
    let (lo, hi) = if lo < hi {
        (lo, hi)
    } else if lo == hi {
        (lo - 0.5, hi + 0.5)
    } else {
        (0.0, 1.0)
    };
    let pad = (hi - lo) * 0.15 + 1e-9;
    // Non-negative quantities (MSE, AUC) get no negative axis.
    let non_negative = finite().all(|(m, _)| m >= 0.0);
    let floor = if non_negative { (lo - pad).max(0.0) } else { lo - pad };
    let n = bars.len().max(1);
    let longest = bars.iter().map(|b| b.0.len()).max().unwrap_or(4) as u32;
    let mut chart = ChartBuilder::on(panel)
        .caption(group, ("sans-serif", 16))
        .margin(10)
        // Model names written vertically under their bars.
        .x_label_area_size(20 + 7 * longest)
        .y_label_area_size(if y_label.is_empty() { 55 } else { 75 })
        .build_cartesian_2d(0.0..n as f64, floor..(hi + pad))?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        // Model names are written under their bars by `vertical_labels`.
        .x_label_formatter(&|_| String::new())
        .y_label_formatter(&|y| format!("{y:.4}"))
        .y_desc(y_label)
        .label_style(("sans-serif", 13))
        .draw()?;
    let names: Vec<String> = bars.iter().map(|b| b.0.clone()).collect();
    vertical_labels(&chart, &names, |b| b as f64 + 0.5, floor, 13)?;
    for (b, (m, sd)) in cells.iter().enumerate() {
        // No value (e.g. no AUC on a domain's rows): no bar.
        if !m.is_finite() {
            continue;
        }
        let color = Palette99::pick(b).to_rgba();
        let sd = if sd.is_finite() { *sd } else { 0.0 };
        let x0 = b as f64 + 0.15;
        chart.draw_series(std::iter::once(Rectangle::new(
            [(x0, floor), (x0 + 0.7, *m)],
            color.filled(),
        )))?;
        let xm = x0 + 0.35;
        chart.draw_series(std::iter::once(PathElement::new(
            vec![(xm, (m - sd).max(floor)), (xm, m + sd)],
            BLACK.stroke_width(2),
        )))?;
    }
    Ok(())
}

/// Bars per group (one panel per `groups` entry, each with its own axis;
/// one bar per named series) with `±` whiskers: `bars[i].1[g] = (mean, std)`.
pub fn bar_chart(
    stem: &Path,
    title: &str,
    y_label: &str,
    groups: &[String],
    bars: &[(String, Vec<(f64, f64)>)],
) -> Result<Vec<PathBuf>> {
    let panel_width = (90 + 55 * bars.len() as u32).max(260);
    let width = (panel_width * groups.len().max(1) as u32).max(SIZE.0);
    both!(stem, (width, SIZE.1), |root| draw_bars(
        &root, title, y_label, groups, bars
    ))
}

fn util_grid(util: &[GateUtilisation]) -> (Vec<String>, Vec<String>, Vec<Vec<f64>>) {
    let cols_n = util.iter().map(|g| g.mean_weight.len()).max().unwrap_or(0);
    let cols = util
        .iter()
        .find(|g| g.mean_weight.len() == cols_n)
        .map(|g| g.experts.clone())
        .unwrap_or_default();
    let rows = util.iter().map(|g| g.gate.clone()).collect();
    let values = util.iter().map(|g| g.mean_weight.clone()).collect();
    (rows, cols, values)
}

/// The plots of one run folder: per-task training loss and validation
/// metric per epoch, gradient cosine per epoch, and expert utilisation
/// heatmaps (gate x expert; per gate, domain x expert for data with domains).
pub fn run_plots(dir: &Path, report: &Report) -> Result<Vec<PathBuf>> {
    let h = &report.outcome.history;
    let mut written = Vec::new();
    let per_task = |f: &dyn Fn(&mtrec_train::EpochLog, usize) -> Option<f64>| -> Vec<Series> {
        report
            .tasks
            .iter()
            .enumerate()
            .map(|(k, t)| Series {
                name: t.name.clone(),
                points: h.iter().filter_map(|e| f(e, k).map(|v| (e.epoch as f64, v))).collect(),
            })
            .collect()
    };
    let loss = per_task(&|e, k| e.train_loss.get(k).copied());
    written.extend(line_chart(
        &dir.join("train-loss"),
        "training loss per task",
        "epoch",
        "mean training loss",
        &loss,
    )?);
    let metric = |e: &mtrec_train::EpochLog, k: usize| e.valid.tasks.get(k).and_then(|t| t.metrics.headline().value);
    let binary = report.tasks.iter().all(|t| t.kind == mtrec_core::TaskKind::Binary);
    let regression = report.tasks.iter().all(|t| t.kind == mtrec_core::TaskKind::Regression);
    let y = if binary {
        "validation AUC"
    } else if regression {
        "validation MSE"
    } else {
        "validation AUC (binary) / MSE (regression)"
    };
    // A weighted figure is never drawn without saying so.
    let title = if report.valid.weighted {
        "validation metric per task (weighted)"
    } else {
        "validation metric per task"
    };
    written.extend(line_chart(
        &dir.join("valid-metric"),
        title,
        "epoch",
        y,
        &per_task(&metric),
    )?);
    let pairs: Vec<(String, String)> = h
        .iter()
        .flat_map(|e| e.conflict.iter().map(|c| (c.a.clone(), c.b.clone())))
        .fold(Vec::new(), |mut v, p| {
            if !v.contains(&p) {
                v.push(p);
            }
            v
        });
    if !pairs.is_empty() {
        let series: Vec<Series> = pairs
            .iter()
            .map(|(a, b)| Series {
                name: format!("cos({a}, {b})"),
                points: h
                    .iter()
                    .filter_map(|e| {
                        e.conflict
                            .iter()
                            .find(|c| &c.a == a && &c.b == b)
                            .map(|c| (e.epoch as f64, c.mean_cosine))
                    })
                    .collect(),
            })
            .collect();
        written.extend(line_chart(
            &dir.join("grad-cosine"),
            "gradient cosine on shared parameters",
            "epoch",
            "mean cosine",
            &series,
        )?);
    }
    if !report.test.utilisation.is_empty() {
        let (rows, cols, values) = util_grid(&report.test.utilisation);
        written.extend(heatmap(
            &dir.join("utilisation"),
            "expert utilisation (mean gate weight, test rows)",
            &rows,
            &cols,
            &values,
        )?);
    }
    let domains = &report.test.domains;
    if !domains.is_empty() {
        for (gi, g) in report.test.utilisation.iter().enumerate() {
            let rows: Vec<String> = domains.iter().map(|d| d.domain.clone()).collect();
            let values: Vec<Vec<f64>> = domains
                .iter()
                .map(|d| {
                    d.utilisation
                        .get(gi)
                        .map_or_else(|| vec![0.0; g.experts.len()], |u| u.mean_weight.clone())
                })
                .collect();
            written.extend(heatmap(
                &dir.join(format!("utilisation-{}", g.gate)),
                &format!("{}: utilisation per domain (test rows)", g.gate),
                &rows,
                &g.experts,
                &values,
            )?);
        }
    }
    Ok(written)
}
