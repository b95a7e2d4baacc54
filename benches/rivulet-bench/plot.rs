//! Plots, each as SVG and PNG: latency CDFs per rate (enqueue-to-start and enqueue-to-done),
//! drain throughput against worker processes, with the bare-loop ceiling, and the rate
//! sweep's Redis commands and Redis CPU per task against the rate, with their targets.
//!
//! Text needs a TrueType font (plotters' pure-Rust `ab_glyph` rasteriser, no system font
//! library): the first of a few common paths, or `--font`. Without one, no plots are drawn and
//! the run says so; the table and the JSON are unaffected.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow};
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::latency::LatencyResult;
use crate::payload::BASE_PAYLOAD;
use crate::report::{DRAIN_TARGET, RunResult, Unit, auto_share, drain_key, fmt_value, latency_key};
use crate::stats::Spread;
use crate::suite::progress;

const FONT: &str = "sans-serif";
const CANDIDATES: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/freefont/FreeSans.ttf",
    "/usr/share/fonts/truetype/noto/NotoSans-Regular.ttf",
];
const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(23, 190, 207),
];

/// Registers a font for the plots' text; returns the file used.
pub fn load_font(path: Option<&Path>) -> Result<PathBuf> {
    let path = match path {
        Some(p) => p.to_path_buf(),
        None => CANDIDATES
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .context("no TrueType font found (install fonts-dejavu-core, or pass --font FILE.ttf)")?,
    };
    let bytes = std::fs::read(&path).with_context(|| format!("reading font {}", path.display()))?;
    // Plotters keeps fonts for the life of the process; this runs once per run.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font(FONT, FontStyle::Normal, bytes)
        .map_err(|_| anyhow!("{} is not a usable TrueType font", path.display()))?;
    Ok(path)
}

/// One latency distribution to draw.
#[derive(Debug, Clone)]
pub struct CdfSeries {
    pub label: String,
    pub start: Vec<(u64, f64)>,
    pub done: Option<Vec<(u64, f64)>>,
}

/// A figure that can be drawn on any backend.
trait Figure {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String>;
}

/// Draws `name.svg` and `name.png` in `dir`.
fn both(dir: &Path, name: &str, size: (u32, u32), figure: &impl Figure) -> Result<Vec<PathBuf>> {
    let svg = dir.join(format!("{name}.svg"));
    let png = dir.join(format!("{name}.png"));
    {
        let root = SVGBackend::new(&svg, size).into_drawing_area();
        figure
            .draw(&root)
            .map_err(|e| anyhow!("drawing {}: {e}", svg.display()))?;
        root.present().map_err(|e| anyhow!("writing {}: {e}", svg.display()))?;
    }
    {
        let root = BitMapBackend::new(&png, size).into_drawing_area();
        figure
            .draw(&root)
            .map_err(|e| anyhow!("drawing {}: {e}", png.display()))?;
        root.present().map_err(|e| anyhow!("writing {}: {e}", png.display()))?;
    }
    Ok(vec![svg, png])
}

/// `-log10(1 - q)`: 1 = p90, 2 = p99, 3 = p99.9. The last point (q = 1) sits at `top`.
fn nines(q: f64, top: f64) -> f64 {
    if q >= 1.0 { top } else { (-(1.0 - q).log10()).min(top) }
}

fn percentile_label(y: f64) -> String {
    let p = 100.0 * (1.0 - 10f64.powf(-y));
    let decimals = if y <= 2.0 { 0 } else { (y - 2.0).ceil() as usize };
    format!("{p:.decimals$}%")
}

fn ms_label(us: f64) -> String {
    let ms = us / 1000.0;
    if ms >= 10.0 {
        format!("{ms:.0}")
    } else if ms >= 1.0 {
        format!("{ms:.1}")
    } else if ms >= 0.1 {
        format!("{ms:.2}")
    } else {
        format!("{ms:.3}")
    }
}

/// Enqueue-to-start and enqueue-to-done CDFs, one line per rate, on a percentile ("nines")
/// scale against log latency.
pub fn latency_cdf(dir: &Path, series: &[CdfSeries]) -> Result<Vec<PathBuf>> {
    both(dir, "latency-cdf", (1200, 520), &LatencyFigure { series })
}

struct LatencyFigure<'a> {
    series: &'a [CdfSeries],
}

impl Figure for LatencyFigure<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String> {
        let series = self.series;
        let points = || {
            series
                .iter()
                .flat_map(|s| s.start.iter().chain(s.done.iter().flatten()))
        };
        let lo = points().map(|p| p.0).min().unwrap_or(1).max(1) as f64;
        let hi = points().map(|p| p.0).max().unwrap_or(10).max(2) as f64;
        let deepest = points()
            .filter(|p| p.1 < 1.0)
            .map(|p| nines(p.1, 9.0))
            .fold(1.0, f64::max);
        let top = (deepest + 0.5).min(6.0);
        let x_range = (lo * 0.8)..(hi * 1.25);
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let panels = root.split_evenly((1, 2));
        for (panel, (title, done)) in panels
            .iter()
            .zip([("enqueue-to-start", false), ("enqueue-to-done", true)])
        {
            let mut chart = ChartBuilder::on(panel)
                .caption(format!("Latency CDF: {title}"), (FONT, 20))
                .margin(12)
                .x_label_area_size(40)
                .y_label_area_size(60)
                .build_cartesian_2d(x_range.clone().log_scale(), 0f64..top)
                .map_err(|e| e.to_string())?;
            chart
                .configure_mesh()
                .x_desc("latency (ms, log scale)")
                .y_desc("percentile")
                .x_label_formatter(&|x| ms_label(*x))
                .y_label_formatter(&|y| percentile_label(*y))
                .y_labels(top.ceil() as usize + 1)
                .label_style((FONT, 13))
                .draw()
                .map_err(|e| e.to_string())?;
            for (i, s) in series.iter().enumerate() {
                let data = if done { s.done.as_ref() } else { Some(&s.start) };
                let Some(data) = data else { continue };
                let color = COLORS[i % COLORS.len()];
                chart
                    .draw_series(LineSeries::new(
                        data.iter().map(|&(v, q)| (v.max(1) as f64, nines(q, top))),
                        color.stroke_width(2),
                    ))
                    .map_err(|e| e.to_string())?
                    .label(s.label.clone())
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperLeft)
                .label_font((FONT, 13))
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

/// Drain throughput (median, min–max bar) against worker processes, with the bare-loop
/// ceiling and the target as horizontal lines.
pub fn throughput(
    dir: &Path,
    points: &[(usize, Spread)],
    ceiling: Option<Spread>,
    target: f64,
) -> Result<Vec<PathBuf>> {
    let figure = ThroughputFigure {
        points,
        ceiling,
        target,
    };
    both(dir, "throughput", (800, 520), &figure)
}

struct ThroughputFigure<'a> {
    points: &'a [(usize, Spread)],
    ceiling: Option<Spread>,
    target: f64,
}

impl Figure for ThroughputFigure<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String> {
        let (points, ceiling, target) = (self.points, self.ceiling, self.target);
        let max_w = points.iter().map(|p| p.0).max().unwrap_or(1);
        let hi = points
            .iter()
            .map(|p| p.1.max)
            .chain(ceiling.map(|c| c.max))
            .chain([target])
            .fold(0.0, f64::max)
            * 1.15;
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let mut chart = ChartBuilder::on(root)
            .caption("Drain throughput (no-op tasks)", (FONT, 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(80)
            .build_cartesian_2d(0.5f64..(max_w as f64 + 0.5), 0f64..hi)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc("worker processes")
            .y_desc("tasks/s")
            .x_labels(max_w + 1)
            .x_label_formatter(&|x| {
                if (x - x.round()).abs() < 1e-9 && *x >= 1.0 {
                    format!("{}", x.round() as u64)
                } else {
                    String::new()
                }
            })
            .y_label_formatter(&|y| format!("{}k", (y / 1000.0).round() as u64))
            .label_style((FONT, 13))
            .draw()
            .map_err(|e| e.to_string())?;
        let x_span = [0.5, max_w as f64 + 0.5];
        if let Some(c) = ceiling {
            let color = COLORS[1];
            chart
                .draw_series(DashedLineSeries::new(
                    x_span.iter().map(|&x| (x, c.median)),
                    8,
                    5,
                    color.stroke_width(2),
                ))
                .map_err(|e| e.to_string())?
                .label("bare XREADGROUP/XACK/XDEL loop (ceiling)")
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        }
        let grey = RGBColor(120, 120, 120);
        chart
            .draw_series(DashedLineSeries::new(
                x_span.iter().map(|&x| (x, target)),
                3,
                4,
                grey.stroke_width(1),
            ))
            .map_err(|e| e.to_string())?
            .label("target (1 worker process)")
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], grey.stroke_width(1)));
        let color = COLORS[0];
        chart
            .draw_series(LineSeries::new(
                points.iter().map(|(w, s)| (*w as f64, s.median)),
                color.stroke_width(2),
            ))
            .map_err(|e| e.to_string())?
            .label("rivulet workers (median, min–max)")
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        chart
            .draw_series(
                points
                    .iter()
                    .map(|(w, s)| Circle::new((*w as f64, s.median), 4, color.filled())),
            )
            .map_err(|e| e.to_string())?;
        chart
            .draw_series(
                points.iter().map(|(w, s)| {
                    PathElement::new(vec![(*w as f64, s.min), (*w as f64, s.max)], color.stroke_width(2))
                }),
            )
            .map_err(|e| e.to_string())?;
        chart
            .draw_series(points.iter().map(|(w, s)| {
                Text::new(
                    format!("{}k", (s.median / 1000.0).round() as u64),
                    (*w as f64 + 0.06, s.median),
                    (FONT, 13),
                )
            }))
            .map_err(|e| e.to_string())?;
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .label_font((FONT, 13))
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| e.to_string())?;
        Ok(())
    }
}

/// One point of the rate sweep: achieved tasks/s, commands per task, Redis µs per task.
#[derive(Debug, Clone, Copy)]
pub struct SweepDot {
    pub rate: f64,
    pub cmds: f64,
    pub cpu_us: f64,
    pub saturation: bool,
}

/// Commands per task and Redis µs per task against the rate (log-log), one panel each,
/// the target of each as a dashed line.
pub fn rate_sweep(dir: &Path, dots: &[SweepDot], cmds_target: f64, cpu_target: f64) -> Result<Vec<PathBuf>> {
    both(
        dir,
        "rate-sweep",
        (1200, 520),
        &SweepFigure {
            dots,
            cmds_target,
            cpu_target,
        },
    )
}

/// A panel of the sweep figure: title, y axis, target, the value drawn.
type Panel = (&'static str, &'static str, f64, fn(&SweepDot) -> f64);

struct SweepFigure<'a> {
    dots: &'a [SweepDot],
    cmds_target: f64,
    cpu_target: f64,
}

impl Figure for SweepFigure<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String> {
        let dots = self.dots;
        let lo = dots.iter().map(|d| d.rate).fold(f64::INFINITY, f64::min).max(1.0);
        let hi = dots.iter().map(|d| d.rate).fold(1.0, f64::max).max(lo * 10.0);
        // Room on the right for the last label.
        let x_range = (lo / 2.0)..(hi * 5.0);
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let panels = root.split_evenly((1, 2));
        let metrics: [Panel; 2] = [
            (
                "Redis commands per task",
                "commands/task (log)",
                self.cmds_target,
                |d| d.cmds,
            ),
            ("Redis CPU per task", "µs/task (log)", self.cpu_target, |d| d.cpu_us),
        ];
        for (panel, (title, y_desc, target, value)) in panels.iter().zip(metrics) {
            let ys = || dots.iter().map(value).chain([target]).filter(|v| *v > 0.0);
            let y_lo = ys().fold(f64::INFINITY, f64::min).max(1e-3) / 2.0;
            let y_hi = ys().fold(0.0, f64::max) * 2.0;
            let mut chart = ChartBuilder::on(panel)
                .caption(format!("{title} against the offered rate"), (FONT, 20))
                .margin(12)
                .x_label_area_size(40)
                .y_label_area_size(60)
                .build_cartesian_2d(x_range.clone().log_scale(), (y_lo..y_hi).log_scale())
                .map_err(|e| e.to_string())?;
            chart
                .configure_mesh()
                .x_desc("tasks/s (log scale)")
                .y_desc(y_desc)
                .x_label_formatter(&|x| fmt_value(*x, Unit::Rate))
                .y_label_formatter(&|y| {
                    if *y >= 10.0 {
                        format!("{y:.0}")
                    } else {
                        format!("{y:.2}")
                    }
                })
                .label_style((FONT, 13))
                .draw()
                .map_err(|e| e.to_string())?;
            let grey = RGBColor(120, 120, 120);
            chart
                .draw_series(DashedLineSeries::new(
                    [x_range.start, x_range.end].into_iter().map(|x| (x, target)),
                    6,
                    4,
                    grey.stroke_width(1),
                ))
                .map_err(|e| e.to_string())?
                .label(format!("target ≤ {target}"))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], grey.stroke_width(1)));
            let color = COLORS[0];
            chart
                .draw_series(LineSeries::new(
                    dots.iter().map(|d| (d.rate, value(d).max(y_lo))),
                    color.stroke_width(2),
                ))
                .map_err(|e| e.to_string())?
                .label("rivulet, 1 worker process (median)")
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
            chart
                .draw_series(dots.iter().map(|d| {
                    let style = if d.saturation {
                        COLORS[1].filled()
                    } else {
                        color.filled()
                    };
                    Circle::new((d.rate, value(d).max(y_lo)), 4, style)
                }))
                .map_err(|e| e.to_string())?;
            chart
                .draw_series(dots.iter().map(|d| {
                    let v = value(d);
                    let text = if d.saturation {
                        format!("{v:.2} (saturation)")
                    } else {
                        format!("{v:.2}")
                    };
                    Text::new(text, (d.rate * 1.08, v.max(y_lo)), (FONT, 12))
                }))
                .map_err(|e| e.to_string())?;
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .label_font((FONT, 13))
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

/// Plots from the medians (throughput) and, per rate, from the run whose p99 is the median.
pub fn figures(
    dir: &Path,
    font: Option<&Path>,
    workers: &[usize],
    concurrency: usize,
    runs: &[RunResult],
    summary: &BTreeMap<String, Spread>,
) -> Result<Vec<PathBuf>> {
    let font = load_font(font)?;
    progress(format_args!("plots use the font {}", font.display()));
    let mut files = Vec::new();

    let mut labels: Vec<(f64, String)> = Vec::new();
    for r in runs {
        for l in r.latency.iter().filter(|l| l.payload_bytes == BASE_PAYLOAD) {
            if !labels.iter().any(|(_, x)| *x == l.label) {
                labels.push((l.rate_target, l.label.clone()));
            }
        }
    }
    labels.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut series = Vec::new();
    for (_, label) in labels {
        let mut of_label: Vec<&LatencyResult> = runs
            .iter()
            .flat_map(|r| &r.latency)
            .filter(|l| l.label == label && l.payload_bytes == BASE_PAYLOAD)
            .collect();
        of_label.sort_by_key(|l| l.start.p99);
        let mid = of_label[of_label.len() / 2];
        let rate = summary
            .get(&format!("{}.rate", latency_key(&label, BASE_PAYLOAD)))
            .map_or(mid.rate_achieved, |s| s.median);
        let name = match auto_share(&label) {
            Some(pct) => format!("{}/s ({pct} % of drain)", fmt_value(rate, Unit::Rate)),
            None => format!("{}/s", fmt_value(mid.rate_target, Unit::Rate)),
        };
        series.push(CdfSeries {
            label: name,
            start: mid.start.cdf.clone(),
            done: mid.done.as_ref().map(|d| d.cdf.clone()),
        });
    }
    if !series.is_empty() {
        files.extend(latency_cdf(dir, &series)?);
    }

    let points: Vec<(usize, Spread)> = workers
        .iter()
        .filter_map(|&w| {
            summary
                .get(&format!("{}.tasks_per_s", drain_key(w, concurrency, BASE_PAYLOAD)))
                .map(|s| (w, *s))
        })
        .collect();
    if !points.is_empty() {
        files.extend(throughput(
            dir,
            &points,
            // The machine's ceiling (several consumers) when it was measured.
            summary
                .get("ceiling_wide.drain_per_s")
                .or(summary.get("ceiling.drain_per_s"))
                .copied(),
            DRAIN_TARGET,
        )?);
    }

    let mut dots: Vec<SweepDot> = summary
        .keys()
        .filter_map(|k| k.strip_prefix("sweep.")?.strip_suffix(".cmds"))
        .filter_map(|label| {
            let m = |x: &str| summary.get(&format!("sweep.{label}.{x}")).map(|s| s.median);
            Some(SweepDot {
                rate: m("rate")?,
                cmds: m("cmds")?,
                cpu_us: m("cpu_us")?,
                saturation: label == "saturation",
            })
        })
        .collect();
    dots.sort_by(|a, b| a.rate.total_cmp(&b.rate));
    if !dots.is_empty() {
        files.extend(rate_sweep(dir, &dots, 2.0, 25.0)?);
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nines_scale_labels_percentiles() {
        assert_eq!(nines(0.0, 5.0), 0.0);
        assert!((nines(0.99, 5.0) - 2.0).abs() < 1e-9);
        assert_eq!(nines(1.0, 5.0), 5.0);
        assert_eq!(percentile_label(0.0), "0%");
        assert_eq!(percentile_label(2.0), "99%");
        assert_eq!(percentile_label(3.0), "99.9%");
        assert_eq!(ms_label(412.0), "0.41");
        assert_eq!(ms_label(2_500.0), "2.5");
    }
}
