//! Plots of a sweep (SVG and PNG), like the paper's figures 4 and 5:
//! time to ready vs RTT per image and method, and the normalized time
//! (geometric mean over images, shaded 95% interval) per scenario.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::OnceLock;

use anyhow::{anyhow, Result};
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::sweep::methods::{Method, RunResult, Scenario};
use crate::sweep::stats::{image_means, mean, rtt_key, stddev, SummaryRow};

const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
];

/// Registers a TTF font (text is measured with it for the layout, and drawn
/// with it in PNGs); returns whether one was found.
fn register_font() -> bool {
    static DONE: OnceLock<bool> = OnceLock::new();
    *DONE.get_or_init(|| {
        for path in FONT_PATHS {
            if let Ok(bytes) = std::fs::read(path) {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return true;
                }
            }
        }
        tracing::warn!("no TTF font found (apt install fonts-dejavu-core): plots skipped");
        false
    })
}

fn color(method: Method) -> RGBColor {
    match method {
        Method::Containerd => RGBColor(214, 39, 40),
        Method::Starlight | Method::StarlightNever => RGBColor(31, 119, 180),
        Method::StarlightProd => RGBColor(23, 190, 207),
        Method::StarlightTrace => RGBColor(148, 103, 189),
        Method::StarlightRpull => RGBColor(188, 189, 34),
        Method::Wget => RGBColor(44, 160, 44),
        Method::Estargz => RGBColor(255, 127, 14),
        Method::EstargzOpt => RGBColor(140, 86, 75),
    }
}

fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("plotting: {e:?}")
}

/// Draws `$body` (using the drawing area `$area`) into `NAME.svg` and,
/// when a font is available, `NAME.png` in `$dir`.
macro_rules! render {
    ($dir:expr, $name:expr, $size:expr, |$area:ident| $body:expr) => {{
        let svg = $dir.join(format!("{}.svg", $name));
        if register_font() {
            let $area = SVGBackend::new(&svg, $size).into_drawing_area();
            $area.fill(&WHITE).map_err(err)?;
            $body?;
            $area.present().map_err(err)?;
        }
        if register_font() {
            let png = $dir.join(format!("{}.png", $name));
            let $area = BitMapBackend::new(&png, $size).into_drawing_area();
            $area.fill(&WHITE).map_err(err)?;
            $body?;
            $area.present().map_err(err)?;
        }
    }};
}

/// Mean and standard deviation of one image/method/scenario per RTT.
type Series = BTreeMap<i64, (f64, f64)>;

fn series(runs: &[RunResult], image: &str, method: Method, scenario: Scenario) -> Series {
    let mut by_rtt: BTreeMap<i64, Vec<f64>> = BTreeMap::new();
    for r in runs
        .iter()
        .filter(|r| r.ok && r.image == image && r.method == method && r.scenario == scenario)
    {
        by_rtt.entry(rtt_key(r.rtt_ms)).or_default().push(r.time_s);
    }
    by_rtt
        .into_iter()
        .map(|(k, v)| (k, (mean(&v), stddev(&v))))
        .collect()
}

fn draw_images<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    runs: &[RunResult],
    scenario: Scenario,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let images: BTreeSet<&str> = runs.iter().map(|r| r.image.as_str()).collect();
    let methods: BTreeSet<Method> = runs.iter().map(|r| r.method).collect();
    let rtts: BTreeSet<i64> = runs.iter().map(|r| rtt_key(r.rtt_ms)).collect();
    let x_max = rtts.iter().copied().max().unwrap_or(0).max(1) as f64;
    let cols = images.len().clamp(1, 3);
    let rows = images.len().div_ceil(cols).max(1);
    let (title_area, body) = root.split_vertically(40);
    title_area
        .titled(
            &format!("Time to ready vs RTT ({scenario}); mean ± sd"),
            ("sans-serif", 22),
        )
        .map_err(err)?;
    let panels = body.split_evenly((rows, cols));
    for (panel, image) in panels.iter().zip(images.iter()) {
        let all: Vec<Series> = methods
            .iter()
            .map(|m| series(runs, image, *m, scenario))
            .collect();
        let y_max = all
            .iter()
            .flat_map(|s| s.values().map(|(m, sd)| m + sd))
            .fold(0.0f64, f64::max)
            .max(0.1)
            * 1.1;
        let mut chart = ChartBuilder::on(panel)
            .caption(*image, ("sans-serif", 18))
            .margin(8)
            .x_label_area_size(32)
            .y_label_area_size(44)
            .build_cartesian_2d(0f64..x_max * 1.05, 0f64..y_max)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("RTT (ms)")
            .y_desc("seconds")
            .label_style(("sans-serif", 12))
            .draw()
            .map_err(err)?;
        for (method, s) in methods.iter().zip(all.iter()) {
            let c = color(*method);
            let points: Vec<(f64, f64)> = s.iter().map(|(x, (m, _))| (*x as f64, *m)).collect();
            chart
                .draw_series(LineSeries::new(points.clone(), c.stroke_width(2)))
                .map_err(err)?
                .label(method.name())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 16, y)], c.stroke_width(2))
                });
            chart
                .draw_series(points.iter().map(|p| Circle::new(*p, 3, c.filled())))
                .map_err(err)?;
            chart
                .draw_series(s.iter().map(|(x, (m, sd))| {
                    PathElement::new(vec![(*x as f64, m - sd), (*x as f64, m + sd)], c)
                }))
                .map_err(err)?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font(("sans-serif", 12))
            .draw()
            .map_err(err)?;
    }
    Ok(())
}

fn draw_summary<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    rows: &[SummaryRow],
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let scenarios: BTreeSet<Scenario> = rows.iter().map(|r| r.scenario).collect();
    let methods: BTreeSet<Method> = rows.iter().map(|r| r.method).collect();
    let x_max = rows.iter().map(|r| r.rtt_ms).max().unwrap_or(0).max(1) as f64;
    // Wide intervals (few images) are clipped at twice the largest mean.
    let y_max = rows
        .iter()
        .map(|r| r.norm_time.0)
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max)
        .max(0.6)
        * 2.0;
    let (title_area, body) = root.split_vertically(40);
    title_area
        .titled(
            "Normalized provisioning time (geometric mean over images, 95% CI; 1 = containerd fresh at the lowest RTT)",
            ("sans-serif", 18),
        )
        .map_err(err)?;
    let panels = body.split_evenly((1, scenarios.len().max(1)));
    for (panel, scenario) in panels.iter().zip(scenarios.iter()) {
        let mut chart = ChartBuilder::on(panel)
            .caption(scenario.name(), ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(34)
            .y_label_area_size(44)
            .build_cartesian_2d(0f64..x_max * 1.05, 0f64..y_max)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("RTT (ms)")
            .y_desc("normalized time")
            .label_style(("sans-serif", 12))
            .draw()
            .map_err(err)?;
        for method in &methods {
            let c = color(*method);
            let pts: Vec<&SummaryRow> = rows
                .iter()
                .filter(|r| {
                    r.scenario == *scenario && r.method == *method && r.norm_time.0.is_finite()
                })
                .collect();
            let mut band: Vec<(f64, f64)> = pts
                .iter()
                .map(|r| (r.rtt_ms as f64, r.norm_time.2.min(y_max)))
                .collect();
            band.extend(
                pts.iter()
                    .rev()
                    .map(|r| (r.rtt_ms as f64, r.norm_time.1.max(0.0))),
            );
            if band.len() >= 2 {
                chart
                    .draw_series(std::iter::once(Polygon::new(band, c.mix(0.2).filled())))
                    .map_err(err)?;
            }
            let line: Vec<(f64, f64)> = pts
                .iter()
                .map(|r| (r.rtt_ms as f64, r.norm_time.0))
                .collect();
            chart
                .draw_series(LineSeries::new(line.clone(), c.stroke_width(2)))
                .map_err(err)?
                .label(method.name())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 16, y)], c.stroke_width(2))
                });
            chart
                .draw_series(line.iter().map(|p| Circle::new(*p, 3, c.filled())))
                .map_err(err)?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font(("sans-serif", 12))
            .draw()
            .map_err(err)?;
    }
    Ok(())
}

/// Writes every plot of a sweep into `dir`.
pub fn write_all(dir: &Path, runs: &[RunResult], rows: &[SummaryRow]) -> Result<()> {
    let n_images = image_means(runs)
        .values()
        .flat_map(|m| m.keys().cloned())
        .collect::<BTreeSet<_>>()
        .len()
        .max(1);
    let cols = n_images.clamp(1, 3) as u32;
    let rows_n = n_images.div_ceil(3).max(1) as u32;
    let scenarios: BTreeSet<Scenario> = runs.iter().map(|r| r.scenario).collect();
    for scenario in scenarios {
        let size = (420 * cols, 40 + 330 * rows_n);
        render!(dir, format!("time-vs-rtt-{scenario}"), size, |area| {
            draw_images(&area, runs, scenario)
        });
    }
    render!(dir, "normalized-time", (1000, 440), |area| draw_summary(
        &area, rows
    ));
    Ok(())
}
