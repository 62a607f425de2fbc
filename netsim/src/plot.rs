//! SVG line charts of a simulation's per-round figures (consensus distance, message counts, …).
//!
//! Charts are drawn with `plotters`' SVG backend only: text is emitted as SVG `<text>` elements and laid
//! out with a crude width estimate, so no font files or fontconfig are needed, and the output is
//! deterministic (the same [`Chart`] always gives byte-identical SVG).
//!
//! Nothing in a chart's data can make rendering panic or hang: points with a non-finite coordinate, a
//! magnitude beyond `f64::MAX / 4`, or (on a log axis) a y below `1e-300` are gaps in their line; an
//! isolated point is drawn as a dot; an empty, single-point or flat chart gets a sensible range.

use std::ops::Range;
use std::path::{Path, PathBuf};

use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::coord::Shift;
use plotters::prelude::*;

/// One line on a chart.
#[derive(Clone, Debug)]
pub struct Series {
    pub label: String,
    /// (x, y) points; non-finite y values are skipped (a gap), never a panic.
    pub points: Vec<(f64, f64)>,
}

/// A vertical marker, e.g. "partition" at round 10 or "heal" at round 20.
#[derive(Clone, Debug)]
pub struct Marker {
    pub x: f64,
    pub label: String,
}

#[derive(Clone, Debug)]
pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    /// Logarithmic y axis (for consensus distance, which spans decades). Non-positive y values are skipped on a log axis.
    pub log_y: bool,
    pub series: Vec<Series>,
    pub markers: Vec<Marker>,
}

#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error("cannot write plot {path}: {reason}")]
    Write { path: PathBuf, reason: String },
}

const WIDTH: u32 = 900;
const SINGLE_HEIGHT: u32 = 500;
const PANEL_HEIGHT: u32 = 380;
/// Font family for SVG `<text>`; sizes below are plotters sizes, which its SVG backend writes as
/// `font-size` divided by 1.24 (so 27 becomes ~21.8px).
const FONT: &str = "sans-serif";

/// Tableau-10 colours: distinct, colour-blind friendly, and fixed so output is deterministic.
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];
const MARKER_COLOUR: RGBColor = RGBColor(120, 120, 120);

/// Renders `chart` to an SVG file at `path` (about 900×500 px).
pub fn write_svg(path: &Path, chart: &Chart) -> Result<(), PlotError> {
    render(path, SINGLE_HEIGHT, |root| draw_chart(root, chart))
}

/// Renders several charts stacked vertically into one SVG (a dashboard-style page, each panel ~900×380).
pub fn write_svg_panels(path: &Path, charts: &[Chart]) -> Result<(), PlotError> {
    let height = PANEL_HEIGHT.saturating_mul(charts.len().max(1).try_into().unwrap_or(u32::MAX));
    render(path, height, |root| {
        for (area, chart) in root.split_evenly((charts.len(), 1)).iter().zip(charts) {
            draw_chart(area, chart)?;
        }
        Ok(())
    })
}

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;
type DrawResult = Result<(), DrawingAreaErrorKind<std::io::Error>>;

/// Draws into an in-memory SVG string, then writes it, so file errors surface as `PlotError`.
fn render(path: &Path, height: u32, draw: impl FnOnce(&Area<'_>) -> DrawResult) -> Result<(), PlotError> {
    let err = |reason: String| PlotError::Write { path: path.to_path_buf(), reason };
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, height)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
        draw(&root).map_err(|e| err(e.to_string()))?;
        root.present().map_err(|e| err(e.to_string()))?;
    }
    std::fs::write(path, svg).map_err(|e| err(e.to_string()))
}

/// Largest magnitude drawn: beyond it an axis span would overflow to infinity, and plotters' tick
/// search never terminates on an infinite span. Such values are treated like non-finite ones (gaps).
const LIMIT: f64 = f64::MAX / 4.0;

/// Finite and within [`LIMIT`].
fn usable(v: f64) -> bool {
    v.abs() <= LIMIT
}

/// Smallest value drawn on a log axis (tinier ones are gaps, like non-positive ones).
const LOG_MIN: f64 = 1e-300;
/// Most decades a log axis spans: plotters' log ticks hang when the axis ratio overflows to infinity.
const LOG_MAX_DECADES: f64 = 300.0;

/// Whether a point can be drawn on this chart's axes.
fn drawable(chart: &Chart, (x, y): (f64, f64)) -> bool {
    usable(x) && usable(y) && (!chart.log_y || y >= LOG_MIN)
}

/// Minimum and maximum of the values, or `None` when there are none.
fn bounds(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    values.fold(None, |acc, v| match acc {
        None => Some((v, v)),
        Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
    })
}

/// Widens `[lo, hi]` by `frac` of its span on each side; a degenerate range gets a sensible width.
fn pad_linear((lo, hi): (f64, f64), frac: f64) -> (f64, f64) {
    let span = hi - lo;
    let pad = if span > 0.0 && span.is_finite() {
        span * frac
    } else if lo != 0.0 {
        lo.abs() * 0.1
    } else {
        1.0
    };
    (lo - pad, hi + pad)
}

/// Pads a positive range multiplicatively (in decades) for a log axis, keeping at most the top
/// [`LOG_MAX_DECADES`].
fn pad_log((lo, hi): (f64, f64)) -> (f64, f64) {
    let (l, h) = (lo.log10(), hi.log10());
    let pad = if h > l { (h - l) * 0.05 } else { 1.0 };
    let h = (h + pad).min(f64::MAX.log10());
    let l = (l - pad).max(h - LOG_MAX_DECADES);
    (10f64.powf(l), 10f64.powf(h).min(f64::MAX))
}

fn x_range(chart: &Chart) -> (f64, f64) {
    let data = chart.series.iter().flat_map(|s| &s.points).filter(|&&p| drawable(chart, p)).map(|p| p.0);
    let marks = chart.markers.iter().map(|m| m.x).filter(|&x| usable(x));
    bounds(data.chain(marks)).map_or((0.0, 1.0), |b| pad_linear(b, 0.02))
}

fn y_range(chart: &Chart) -> (f64, f64) {
    let ys = chart.series.iter().flat_map(|s| &s.points).filter(|&&p| drawable(chart, p)).map(|p| p.1);
    match (bounds(ys), chart.log_y) {
        (Some(b), true) => pad_log(b),
        (None, true) => (1.0, 10.0),
        (Some(b), false) => pad_linear(b, 0.05),
        (None, false) => (0.0, 1.0),
    }
}

/// Splits a series into runs of consecutive drawable points at or above `y_lo` (the bottom of the
/// axis); other points leave gaps.
fn runs(chart: &Chart, points: &[(f64, f64)], y_lo: f64) -> Vec<Vec<(f64, f64)>> {
    let mut out: Vec<Vec<(f64, f64)>> = vec![];
    let mut current = vec![];
    for &p in points {
        if drawable(chart, p) && p.1 >= y_lo {
            current.push(p);
        } else if !current.is_empty() {
            out.push(std::mem::take(&mut current));
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// Tick labels: rounded to 7 significant digits (no `0.30000000000000004`), whole numbers without a
/// `.0` (rounds read as `10`, not `10.0`), and scientific notation for very large or small magnitudes.
fn tick(v: &f64) -> String {
    let r: f64 = format!("{v:.6e}").parse().unwrap_or(*v);
    if r != 0.0 && !(1e-4..1e6).contains(&r.abs()) {
        format!("{r:e}")
    } else {
        format!("{r}")
    }
}

fn draw_chart(area: &Area<'_>, chart: &Chart) -> DrawResult {
    let (x0, x1) = x_range(chart);
    let (y0, y1) = y_range(chart);
    if chart.log_y {
        draw_with_y(area, chart, x0..x1, (y0..y1).log_scale(), (y0, y1))
    } else {
        draw_with_y(area, chart, x0..x1, y0..y1, (y0, y1))
    }
}

/// Draws one chart; generic over the y coordinate so linear and log axes share the code.
fn draw_with_y<Y>(area: &Area<'_>, chart: &Chart, x: Range<f64>, y: Y, (y_lo, y_hi): (f64, f64)) -> DrawResult
where
    Y: AsRangedCoord<Value = f64>,
    Y::CoordDescType: ValueFormatter<f64>,
{
    let mut ctx = ChartBuilder::on(area)
        .caption(&chart.title, (FONT, 27))
        .margin(12)
        .x_label_area_size(42)
        .y_label_area_size(72)
        .build_cartesian_2d(x, y)?;

    ctx.configure_mesh()
        .x_desc(&chart.x_label)
        .y_desc(&chart.y_label)
        .label_style((FONT, 16))
        .axis_desc_style((FONT, 18))
        .bold_line_style(RGBColor(225, 225, 225))
        .light_line_style(RGBColor(244, 244, 244))
        .x_label_formatter(&tick)
        .y_label_formatter(&tick)
        .draw()?;

    for (i, m) in chart.markers.iter().filter(|m| usable(m.x)).enumerate() {
        let line = [(m.x, y_lo), (m.x, y_hi)];
        ctx.draw_series(DashedLineSeries::new(line, 6, 4, MARKER_COLOUR.stroke_width(1)))?;
        // Stagger labels so neighbouring markers don't overprint each other.
        let offset = (4 + 16 * (i % 2)) as i32;
        let text = Text::new(m.label.clone(), (4, offset), (FONT, 16).into_font().color(&MARKER_COLOUR));
        ctx.draw_series(std::iter::once(EmptyElement::at((m.x, y_hi)) + text))?;
    }

    for (i, s) in chart.series.iter().enumerate() {
        let colour = PALETTE[i % PALETTE.len()];
        let style = colour.stroke_width(2);
        let runs = runs(chart, &s.points, y_lo);
        // Isolated points (a run of one) would be invisible as a line: they are also drawn as dots.
        let dots: Vec<_> = runs.iter().filter(|r| r.len() == 1).map(|r| r[0]).collect();
        let mut runs = runs.into_iter();
        // The first draw carries the legend entry, even for a series with nothing to draw.
        ctx.draw_series(LineSeries::new(runs.next().unwrap_or_default(), style))?
            .label(s.label.as_str())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], style));
        for run in runs {
            ctx.draw_series(LineSeries::new(run, style))?;
        }
        ctx.draw_series(dots.into_iter().map(|p| Circle::new(p, 3, colour.filled())))?;
    }

    if chart.series.len() > 1 {
        ctx.configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(200, 200, 200))
            .label_font((FONT, 16))
            .draw()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(label: &str, points: Vec<(f64, f64)>) -> Series {
        Series { label: label.into(), points }
    }

    fn chart(title: &str, log_y: bool, series: Vec<Series>) -> Chart {
        Chart {
            title: title.into(),
            x_label: "round".into(),
            y_label: "value".into(),
            log_y,
            series,
            markers: vec![],
        }
    }

    /// A consensus-distance chart like the simulation produces: decaying, disturbed by a partition.
    fn example() -> Chart {
        let curve = |rate: f64| -> Vec<(f64, f64)> {
            (0..40)
                .map(|r| {
                    let r = r as f64;
                    let bump = if (10.0..20.0).contains(&r) { 50.0 } else { 1.0 };
                    (r, 10.0 * (-rate * r).exp() * bump)
                })
                .collect()
        };
        let mut with_gap = curve(0.25);
        with_gap[30].1 = f64::NAN;
        Chart {
            title: "Consensus distance <max − min> & spread".into(),
            x_label: "round".into(),
            y_label: "distance".into(),
            log_y: true,
            series: vec![series("max distance", curve(0.2)), series("mean distance", with_gap)],
            markers: vec![
                Marker { x: 10.0, label: "partition".into() },
                Marker { x: 20.0, label: "heal".into() },
            ],
        }
    }

    fn render_to_string(c: &Chart) -> String {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chart.svg");
        write_svg(&path, c).unwrap();
        std::fs::read_to_string(path).unwrap()
    }

    #[test]
    fn writes_title_and_labels() {
        let svg = render_to_string(&example());
        assert!(svg.starts_with("<svg"), "{}", &svg[..40]);
        assert!(svg.contains("Consensus distance &lt;max − min&gt; &amp; spread"));
        for text in ["max distance", "mean distance", "partition", "heal", "round", "distance"] {
            assert!(svg.contains(text), "missing {text}");
        }
    }

    #[test]
    fn single_series_has_no_legend() {
        let svg = render_to_string(&chart("t", false, vec![series("only", vec![(0.0, 1.0)])]));
        assert!(!svg.contains(">only<"));
    }

    #[test]
    fn degenerate_charts_render() {
        let cases = vec![
            chart("empty", false, vec![]),
            chart("no points", false, vec![series("a", vec![]), series("b", vec![])]),
            chart("single point", false, vec![series("a", vec![(3.0, 7.0)])]),
            chart("flat", false, vec![series("a", vec![(0.0, 0.0), (1.0, 0.0), (2.0, 0.0)])]),
            chart("non-finite", false, vec![series("a", vec![(f64::NAN, 1.0), (1.0, f64::INFINITY)])]),
            chart("huge", false, vec![series("a", vec![(0.0, -f64::MAX), (1.0, f64::MAX), (2.0, 1.0)])]),
            chart("wide", false, vec![series("a", vec![(-LIMIT, -LIMIT), (LIMIT, LIMIT)])]),
            chart("flat huge", false, vec![series("a", vec![(LIMIT, LIMIT), (LIMIT, LIMIT)])]),
            chart("tiny span", false, vec![series("a", vec![(0.0, 1e10), (1.0, 1e10 + 1e-5)])]),
            chart("log wide", true, vec![series("a", vec![(0.0, 1e-300), (1.0, LIMIT), (2.0, 1.0)])]),
            chart("log subnormal", true, vec![series("a", vec![(0.0, 5e-324), (1.0, 1e-310)])]),
            chart("log tiny", true, vec![series("a", vec![(0.0, 1e-300), (1.0, 2e-300)])]),
            chart("log flat", true, vec![series("a", vec![(0.0, 3.0), (1.0, 3.0)])]),
            chart("log empty", true, vec![series("a", vec![])]),
        ];
        for c in &cases {
            let svg = render_to_string(c);
            assert!(svg.starts_with("<svg") && svg.contains(&c.title), "{}", c.title);
        }
        let mut lone_marker = chart("marker only", false, vec![]);
        lone_marker.markers.push(Marker { x: 5.0, label: "heal".into() });
        assert!(render_to_string(&lone_marker).contains("heal"));
    }

    #[test]
    fn tick_labels_are_tidy() {
        let cases =
            [(10.0, "10"), (0.1 + 0.2, "0.3"), (2.5, "2.5"), (0.0, "0"), (1e-5, "1e-5"), (1.5e10, "1.5e10")];
        for (v, want) in cases {
            assert_eq!(tick(&v), want);
        }
        assert_eq!(tick(&-0.001), "-0.001");
    }

    #[test]
    fn extreme_magnitudes_render() {
        let mags = [0.0, 5e-324, 1e-300, 1e-10, 1.0, 1.0 + 1e-15, 1e10, 1e300, LIMIT, f64::MAX];
        let vals: Vec<f64> = mags.iter().flat_map(|&m| [m, -m]).collect();
        for (i, &a) in vals.iter().enumerate() {
            for &b in &vals[i..] {
                for log_y in [false, true] {
                    let c = chart("extreme", log_y, vec![series("a", vec![(a, a), (b, b)])]);
                    assert!(render_to_string(&c).starts_with("<svg"), "{a} {b} {log_y}");
                }
            }
        }
    }

    #[test]
    fn log_axis_skips_zero_and_negative() {
        let pts = vec![(0.0, 0.0), (1.0, -3.0), (2.0, 1e-6), (3.0, 1e-2), (4.0, 0.0), (5.0, 5.0)];
        let svg = render_to_string(&chart("log", true, vec![series("d", pts)]));
        assert!(svg.starts_with("<svg"));
        let c = chart("log", true, vec![series("d", vec![(0.0, 0.0), (1.0, -1.0), (2.0, 4.0)])]);
        assert!(render_to_string(&c).starts_with("<svg"));
    }

    #[test]
    fn output_is_deterministic() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.svg"), dir.path().join("b.svg"));
        write_svg(&a, &example()).unwrap();
        write_svg(&b, &example()).unwrap();
        assert_eq!(std::fs::read(a).unwrap(), std::fs::read(b).unwrap());
    }

    #[test]
    fn panels_stack_charts() {
        let mut flat = chart("messages per round", false, vec![series("sent", vec![(0.0, 4.0), (1.0, 9.0)])]);
        flat.markers.push(Marker { x: 1.0, label: "heal".into() });
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("panels.svg");
        write_svg_panels(&path, &[example(), flat]).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("height=\"760\""));
        assert!(svg.contains("messages per round") && svg.contains("Consensus distance"));
        write_svg_panels(&path, &[]).unwrap();
        assert!(std::fs::read_to_string(&path).unwrap().starts_with("<svg"));
    }

    #[test]
    fn unwritable_path_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing-dir").join("x.svg");
        let err = write_svg(&path, &example()).unwrap_err();
        assert!(err.to_string().contains("cannot write plot"));
    }

    /// Leaves example.svg and example-panels.svg next to Cargo.toml for a person to look at.
    #[test]
    #[ignore = "writes into the source tree; run with --ignored"]
    fn example_svg() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("example.svg");
        write_svg(&path, &example()).unwrap();
        let panels = Path::new(env!("CARGO_MANIFEST_DIR")).join("example-panels.svg");
        let flat = chart("messages per round", false, vec![series("sent", vec![(0.0, 4.0), (39.0, 9.0)])]);
        write_svg_panels(&panels, &[example(), flat]).unwrap();
    }
}
