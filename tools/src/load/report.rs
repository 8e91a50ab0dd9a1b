//! The `--report PATH` page: one self-contained HTML file with hand-written SVG charts.
//!
//! The page has no scripts and loads nothing, so it can be mailed, attached to a CI run
//! or opened years later and still look the same. The SVG is written by hand rather
//! than with a charting crate: three line charts need about as much code as a crate's
//! setup, and the build stays light.
//!
//! Every text that comes from the caller is escaped. Every number written into the SVG
//! is finite: non-finite sample values leave a gap in their line, values are clamped to
//! `VALUE_ABS_MAX`, and each axis has a non-empty domain, so that an empty, flat or
//! absurd series never divides by zero.

/// One point of the time series, taken once per sampling interval (e.g. 1 s).
///
/// Samples are expected in time order. A non-finite field leaves a gap in its line.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Sample {
    /// Time since the start of the run at the end of this interval, in seconds.
    pub elapsed_s: f64,
    /// Transactions committed during the interval, per second.
    pub committed_per_s: f64,
    /// Transactions aborted during the interval, per second.
    pub aborted_per_s: f64,
    /// Latency percentiles of the transactions completed during the interval. Zero
    /// means that nothing completed, and is drawn as a gap (a log scale has no zero).
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    /// Average number of transactions per batch during the interval.
    pub batch_txns_avg: f64,
}

/// Everything the page shows.
pub struct Report<'a> {
    /// The page heading, e.g. "tricommit-load: steady, 3pc, fdatasync".
    pub title: &'a str,
    /// When the run happened, as text the caller formats (e.g. RFC 3339).
    pub generated: &'a str,
    /// The time series, in time order.
    pub samples: &'a [Sample],
    /// The summary table, one `(figure, value)` row each, in display order.
    pub summary: &'a [(String, String)],
}

/// The size of each chart's SVG canvas; the page scales it to the window width.
const CHART_WIDTH_PX: f64 = 960.0;
const CHART_HEIGHT_PX: f64 = 320.0;
/// A chart with nothing to draw is only a strip with a note, not a blank plot.
const NO_DATA_HEIGHT_PX: f64 = 64.0;
/// Room around the plot area for tick labels, axis titles and the legend.
const MARGIN_LEFT_PX: f64 = 84.0;
const MARGIN_RIGHT_PX: f64 = 24.0;
const MARGIN_TOP_PX: f64 = 40.0;
const MARGIN_BOTTOM_PX: f64 = 52.0;
/// How many ticks a linear axis aims for (the time axis is wider, so it gets more),
/// and the most any axis may ever get.
const Y_TICKS_TARGET: usize = 6;
const X_TICKS_TARGET: usize = 10;
const TICKS_MAX: usize = 24;
/// Above this many decades, a log axis labels only every other decade, or fewer.
const LOG_DECADE_LABELS_MAX: usize = 8;
/// Up to this many decades, a log axis adds 2× and 5× ticks between decades.
const LOG_MINOR_TICK_DECADES_MAX: usize = 2;
/// Longer runs have adjacent samples merged: the chart is narrower than this in
/// pixels, so more points would only make the file bigger.
const SAMPLES_PLOTTED_MAX: usize = 1_500;
/// Runs at least this long get a time axis in minutes, or in hours, so that its ticks
/// read "30" min rather than "1.8k" s.
const MINUTES_AXIS_FROM_S: f64 = 600.0;
const HOURS_AXIS_FROM_S: f64 = 3.0 * 3_600.0;
/// Plotted values are clamped to this magnitude so that axis arithmetic stays finite.
const VALUE_ABS_MAX: f64 = 1e30;
/// Legend geometry: the sample line, the gap after it, and an estimate of the width
/// of one character of label text at the chart's font size.
const LEGEND_LINE_PX: f64 = 24.0;
const LEGEND_GAP_PX: f64 = 28.0;
const LEGEND_CHAR_PX: f64 = 7.0;

const _: () = assert!(Y_TICKS_TARGET >= 2 && Y_TICKS_TARGET <= TICKS_MAX);
const _: () = assert!(X_TICKS_TARGET >= 2 && X_TICKS_TARGET <= TICKS_MAX);
const _: () = assert!(MARGIN_LEFT_PX + MARGIN_RIGHT_PX < CHART_WIDTH_PX);
const _: () = assert!(MARGIN_TOP_PX + MARGIN_BOTTOM_PX < CHART_HEIGHT_PX);
const _: () = assert!(SAMPLES_PLOTTED_MAX >= 1);

/// The page's style sheet. It lives inline so that the file stands alone.
const STYLE_CSS: &str = "
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; color: #222;
       max-width: 1000px; margin: 24px auto; padding: 0 16px; }
h1 { font-size: 22px; margin-bottom: 4px; }
h2 { font-size: 17px; margin: 28px 0 6px; }
p.meta { color: #555; margin-top: 0; }
p.empty { color: #777; font-style: italic; }
svg { width: 100%; height: auto; display: block; }
svg text { font-size: 12px; fill: #333; }
svg .grid { stroke: #e4e4e4; stroke-width: 1; }
svg .axis { stroke: #555; stroke-width: 1; }
svg .series { fill: none; stroke-width: 2; stroke-linejoin: round; stroke-linecap: round; }
svg .nodata { font-size: 16px; fill: #888; }
table { border-collapse: collapse; min-width: 420px; }
th, td { padding: 4px 14px; border-bottom: 1px solid #ddd; text-align: left; }
td:last-child { text-align: right; font-variant-numeric: tabular-nums; }
th { background: #f3f3f3; }
";

/// Renders the whole page.
pub fn render_html(report: &Report<'_>) -> String {
    let (samples, merged) = merge_samples(report.samples);
    let mut html = String::new();
    html.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    html.push_str(&format!("<title>{}</title>\n", escape_html(report.title)));
    html.push_str(&format!("<style>{STYLE_CSS}</style>\n</head>\n<body>\n"));
    html.push_str(&format!("<h1>{}</h1>\n", escape_html(report.title)));
    html.push_str(&format!(
        "<p class=\"meta\">{}</p>\n",
        escape_html(&meta_line(report.generated, report.samples.len(), merged))
    ));
    for chart in charts(&samples) {
        html.push_str(&format!("<h2>{}</h2>\n", escape_html(chart.title)));
        html.push_str(&chart_svg(&chart));
    }
    html.push_str("<h2>Summary</h2>\n");
    html.push_str(&summary_table(report.summary));
    html.push_str("</body>\n</html>\n");
    html
}

/// Says when the run happened, how many samples the charts show, and how they were
/// merged if they were.
fn meta_line(generated: &str, count: usize, merged: usize) -> String {
    let generated = if generated.is_empty() {
        String::new()
    } else {
        format!("Generated {generated}. ")
    };
    let plural = if count == 1 { "" } else { "s" };
    if merged > 1 {
        format!(
            "{generated}{count} sample{plural}, every {merged} adjacent ones merged for the \
             charts (rates averaged, latency percentiles take the worst)."
        )
    } else {
        format!("{generated}{count} sample{plural}.")
    }
}

/// Escapes text for HTML element content and quoted attribute values alike.
fn escape_html(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            _ => escaped.push(c),
        }
    }
    escaped
}

/// The summary as a two-column table, or a note when there is nothing to show.
fn summary_table(rows: &[(String, String)]) -> String {
    if rows.is_empty() {
        return "<p class=\"empty\">No summary figures.</p>\n".to_string();
    }
    let mut table =
        String::from("<table>\n<thead><tr><th>Figure</th><th>Value</th></tr></thead>\n<tbody>\n");
    for (figure, value) in rows {
        table.push_str(&format!(
            "<tr><td>{}</td><td>{}</td></tr>\n",
            escape_html(figure),
            escape_html(value)
        ));
    }
    table.push_str("</tbody>\n</table>\n");
    table
}

/// Merges adjacent samples so that at most `SAMPLES_PLOTTED_MAX` remain, and returns
/// them with the number of samples merged into each.
fn merge_samples(samples: &[Sample]) -> (Vec<Sample>, usize) {
    let group_len = samples.len().div_ceil(SAMPLES_PLOTTED_MAX).max(1);
    let merged = samples.chunks(group_len).map(merge_group).collect();
    (merged, group_len)
}

/// One sample standing for a group: rates are averaged, because the group's rate is
/// their mean; latency percentiles take the worst, an upper bound that keeps spikes.
fn merge_group(group: &[Sample]) -> Sample {
    let mean = |value: fn(&Sample) -> f64| {
        let finite: Vec<f64> = group.iter().map(value).filter(|v| v.is_finite()).collect();
        if finite.is_empty() {
            f64::NAN
        } else {
            finite.iter().sum::<f64>() / finite.len() as f64
        }
    };
    let worst = |value: fn(&Sample) -> u64| group.iter().map(value).max().unwrap_or(0);
    Sample {
        elapsed_s: group.last().map_or(f64::NAN, |last| last.elapsed_s),
        committed_per_s: mean(|s| s.committed_per_s),
        aborted_per_s: mean(|s| s.aborted_per_s),
        p50_us: worst(|s| s.p50_us),
        p99_us: worst(|s| s.p99_us),
        p999_us: worst(|s| s.p999_us),
        batch_txns_avg: mean(|s| s.batch_txns_avg),
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Scale {
    Linear,
    Log10,
}

/// One line of a chart: unbroken runs of points, split where a value is missing.
struct Series {
    label: &'static str,
    color: &'static str,
    /// An SVG `stroke-dasharray`, empty for a solid line, so lines differ without colour.
    dash: &'static str,
    runs: Vec<Vec<(f64, f64)>>,
}

struct Chart {
    title: &'static str,
    /// What the chart says instead of a plot when no series has a point to draw.
    no_data_note: &'static str,
    /// The unit of the time axis, e.g. "s".
    time_unit: &'static str,
    y_title: &'static str,
    scale: Scale,
    /// Formats a y tick value with its unit.
    y_label: fn(f64) -> String,
    series: Vec<Series>,
}

/// The three charts of the page, built from the (merged) samples.
fn charts(samples: &[Sample]) -> Vec<Chart> {
    let (unit_s, time_unit) = time_unit(samples);
    let series = |label, color, dash, scale, value: fn(&Sample) -> f64| Series {
        label,
        color,
        dash,
        runs: point_runs(samples, unit_s, value, scale),
    };
    let no_data_note = if samples.is_empty() {
        "no data"
    } else {
        "nothing to plot: every value is zero or missing"
    };
    let lin = Scale::Linear;
    let log = Scale::Log10;
    vec![
        Chart {
            title: "Throughput",
            no_data_note,
            time_unit,
            y_title: "transactions per second",
            scale: lin,
            y_label: format_si,
            series: vec![
                series("committed/s", "#0072B2", "", lin, |s| s.committed_per_s),
                series("aborted/s", "#D55E00", "6 4", lin, |s| s.aborted_per_s),
            ],
        },
        Chart {
            title: "Latency percentiles",
            no_data_note,
            time_unit,
            y_title: "latency (log scale)",
            scale: log,
            y_label: format_latency_us,
            series: vec![
                series("p50", "#009E73", "", log, |s| s.p50_us as f64),
                series("p99", "#E69F00", "7 4", log, |s| s.p99_us as f64),
                series("p99.9", "#CC3311", "2 3", log, |s| s.p999_us as f64),
            ],
        },
        Chart {
            title: "Batch size",
            no_data_note,
            time_unit,
            y_title: "transactions per batch (avg)",
            scale: lin,
            y_label: format_si,
            series: vec![series("avg batch", "#0072B2", "", lin, |s| {
                s.batch_txns_avg
            })],
        },
    ]
}

/// The time axis unit for a run, as (seconds per unit, unit name), chosen by its length.
fn time_unit(samples: &[Sample]) -> (f64, &'static str) {
    let elapsed_s_max = samples
        .iter()
        .map(|s| s.elapsed_s)
        .filter(|t| t.is_finite())
        .fold(0.0, f64::max);
    if elapsed_s_max >= HOURS_AXIS_FROM_S {
        (3_600.0, "h")
    } else if elapsed_s_max >= MINUTES_AXIS_FROM_S {
        (60.0, "min")
    } else {
        (1.0, "s")
    }
}

/// Splits a series into runs of plottable points, with time in units of `unit_s`
/// seconds; a missing value ends a run.
fn point_runs(
    samples: &[Sample],
    unit_s: f64,
    value: fn(&Sample) -> f64,
    scale: Scale,
) -> Vec<Vec<(f64, f64)>> {
    let mut runs = Vec::new();
    let mut run = Vec::new();
    for sample in samples {
        match plottable(sample.elapsed_s / unit_s, value(sample), scale) {
            Some(point) => run.push(point),
            None if !run.is_empty() => runs.push(std::mem::take(&mut run)),
            None => {}
        }
    }
    if !run.is_empty() {
        runs.push(run);
    }
    runs
}

/// A point in data units, or `None` when it cannot be drawn (non-finite, or not
/// positive on a log scale).
fn plottable(x: f64, y: f64, scale: Scale) -> Option<(f64, f64)> {
    if !x.is_finite() || !y.is_finite() || (scale == Scale::Log10 && y <= 0.0) {
        return None;
    }
    let clamp = |v: f64| v.clamp(-VALUE_ABS_MAX, VALUE_ABS_MAX);
    Some((clamp(x), clamp(y)))
}

/// A tick: its value, and whether it carries a label (minor ticks only draw a line).
#[derive(Clone, Copy, Debug, PartialEq)]
struct Tick {
    value: f64,
    labeled: bool,
}

/// An axis domain `lo < hi`, both finite, with its ticks.
#[derive(Debug)]
struct Axis {
    lo: f64,
    hi: f64,
    scale: Scale,
    ticks: Vec<Tick>,
}

impl Axis {
    /// Where `value` sits along the axis, from 0.0 at `lo` to 1.0 at `hi`.
    fn fraction(&self, value: f64) -> f64 {
        let (value, lo, hi) = match self.scale {
            Scale::Linear => (value, self.lo, self.hi),
            Scale::Log10 => (value.max(self.lo).log10(), self.lo.log10(), self.hi.log10()),
        };
        debug_assert!(hi > lo, "an axis domain is never empty");
        ((value - lo) / (hi - lo)).clamp(0.0, 1.0)
    }
}

/// A linear axis over `[min, max]` widened to include zero, with ticks on round
/// numbers (1, 2, 2.5 or 5 times a power of ten) and the domain ending on ticks.
fn linear_axis(min: f64, max: f64, ticks_target: usize) -> Axis {
    let min = min.min(0.0);
    let max = if max > min { max.max(0.0) } else { min + 1.0 };
    let step = nice_step((max - min) / ticks_target.saturating_sub(1).max(1) as f64);
    let lo = (min / step).floor() * step;
    let hi = (max / step).ceil() * step;
    let intervals = ((hi - lo) / step).round();
    let fits = lo.is_finite() && hi.is_finite() && hi > lo && intervals <= TICKS_MAX as f64;
    if !fits {
        let ticks = [min, max]
            .map(|value| Tick {
                value,
                labeled: true,
            })
            .to_vec();
        return Axis {
            lo: min,
            hi: max,
            scale: Scale::Linear,
            ticks,
        };
    }
    let ticks = (0..=intervals as usize)
        .map(|i| {
            let value = lo + i as f64 * step;
            // Snap float noise such as 1e-17 to an exact zero, so it prints as "0".
            let value = if value.abs() < step * 1e-9 {
                0.0
            } else {
                value
            };
            Tick {
                value,
                labeled: true,
            }
        })
        .collect();
    Axis {
        lo,
        hi,
        scale: Scale::Linear,
        ticks,
    }
}

/// The round step (1, 2, 2.5 or 5 times a power of ten) at or above `raw`.
fn nice_step(raw: f64) -> f64 {
    let base = 10f64.powf(raw.log10().floor());
    let multiple = [1.0, 2.0, 2.5, 5.0, 10.0]
        .into_iter()
        .find(|m| raw <= m * base * (1.0 + 1e-9))
        .unwrap_or(10.0);
    multiple * base
}

/// A log axis over `[min, max]` (both positive), from the decade at or below `min` to
/// the decade at or above `max`, with a labelled tick on every decade (or every few,
/// when there are many) and 2× and 5× ticks when the range is short.
fn log_axis(min: f64, max: f64) -> Axis {
    let lo_exponent = min.log10().floor() as i32;
    let hi_exponent = (max.log10().ceil() as i32).max(lo_exponent + 1);
    let decades = (hi_exponent - lo_exponent) as usize;
    let label_stride = decades.div_ceil(LOG_DECADE_LABELS_MAX).max(1);
    let mut ticks = Vec::new();
    for (index, exponent) in (lo_exponent..=hi_exponent).enumerate() {
        let decade = 10f64.powi(exponent);
        ticks.push(Tick {
            value: decade,
            labeled: index % label_stride == 0,
        });
        if decades <= LOG_MINOR_TICK_DECADES_MAX && exponent < hi_exponent {
            ticks.push(Tick {
                value: 2.0 * decade,
                labeled: true,
            });
            ticks.push(Tick {
                value: 5.0 * decade,
                labeled: true,
            });
        }
    }
    Axis {
        lo: 10f64.powi(lo_exponent),
        hi: 10f64.powi(hi_exponent),
        scale: Scale::Log10,
        ticks,
    }
}

/// Formats a value with at most three significant digits and an SI suffix: `0`,
/// `0.25`, `950`, `1.2k`, `1.25M`, `3G`; beyond the exa range, scientific notation.
fn format_si(value: f64) -> String {
    const PREFIXES: [(f64, &str); 7] = [
        (1.0, ""),
        (1e3, "k"),
        (1e6, "M"),
        (1e9, "G"),
        (1e12, "T"),
        (1e15, "P"),
        (1e18, "E"),
    ];
    if !value.is_finite() {
        return "?".to_string();
    }
    let sign = if value < 0.0 { "-" } else { "" };
    let magnitude = value.abs();
    if magnitude == 0.0 {
        return "0".to_string();
    }
    if magnitude < 1e-3 {
        return format!("{value:.1e}");
    }
    for (factor, suffix) in PREFIXES {
        let decimals = significant_decimals(magnitude / factor);
        let power = 10f64.powi(decimals as i32);
        let rounded = (magnitude / factor * power).round() / power;
        if rounded < 1000.0 {
            return format!(
                "{sign}{}{suffix}",
                trim_decimals(&format!("{rounded:.decimals$}"))
            );
        }
    }
    format!("{value:.1e}")
}

/// How many decimals keep three significant digits (at least three below 1).
fn significant_decimals(scaled: f64) -> usize {
    if scaled >= 100.0 {
        0
    } else if scaled >= 10.0 {
        1
    } else if scaled >= 1.0 {
        2
    } else {
        3
    }
}

/// Drops trailing zeros after a decimal point, and the point itself if nothing is left.
fn trim_decimals(number: &str) -> &str {
    if number.contains('.') {
        number.trim_end_matches('0').trim_end_matches('.')
    } else {
        number
    }
}

/// Formats a latency given in microseconds with the unit that reads best.
fn format_latency_us(latency_us: f64) -> String {
    if latency_us < 1e3 {
        format!("{} µs", format_si(latency_us))
    } else if latency_us < 1e6 {
        format!("{} ms", format_si(latency_us / 1e3))
    } else {
        format!("{} s", format_si(latency_us / 1e6))
    }
}

/// The plot area inside the chart canvas, in SVG pixels.
struct Frame {
    x: Axis,
    y: Axis,
}

impl Frame {
    const LEFT: f64 = MARGIN_LEFT_PX;
    const RIGHT: f64 = CHART_WIDTH_PX - MARGIN_RIGHT_PX;
    const TOP: f64 = MARGIN_TOP_PX;
    const BOTTOM: f64 = CHART_HEIGHT_PX - MARGIN_BOTTOM_PX;

    fn px(&self, x: f64) -> f64 {
        Self::LEFT + self.x.fraction(x) * (Self::RIGHT - Self::LEFT)
    }

    fn py(&self, y: f64) -> f64 {
        Self::BOTTOM - self.y.fraction(y) * (Self::BOTTOM - Self::TOP)
    }
}

/// One chart as an `<svg>` element, or an `<svg>` saying "no data" when no series has
/// a point to draw.
fn chart_svg(chart: &Chart) -> String {
    let points: Vec<(f64, f64)> = chart
        .series
        .iter()
        .flat_map(|s| s.runs.iter().flatten().copied())
        .collect();
    let Some(frame) = frame_for(&points, chart.scale) else {
        let mut svg = svg_open(chart.title, NO_DATA_HEIGHT_PX);
        svg.push_str(&format!(
            "<text class=\"nodata\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>\n",
            CHART_WIDTH_PX / 2.0,
            NO_DATA_HEIGHT_PX / 2.0 + 5.0,
            escape_html(chart.no_data_note)
        ));
        svg.push_str("</svg>\n");
        return svg;
    };
    let mut svg = svg_open(chart.title, CHART_HEIGHT_PX);
    svg.push_str(&x_ticks(&frame));
    svg.push_str(&y_ticks(&frame, chart.y_label));
    svg.push_str(&axis_titles(chart.time_unit, chart.y_title));
    for series in &chart.series {
        svg.push_str(&series_svg(&frame, series));
    }
    svg.push_str(&legend(&chart.series, chart.y_label));
    svg.push_str("</svg>\n");
    svg
}

fn svg_open(title: &str, height_px: f64) -> String {
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {CHART_WIDTH_PX} {height_px}\" \
         role=\"img\" aria-label=\"{}\">\n",
        escape_html(title)
    )
}

/// The axes for a set of points, or `None` when there is nothing to plot.
fn frame_for(points: &[(f64, f64)], scale: Scale) -> Option<Frame> {
    let (first, rest) = points.split_first()?;
    let (mut x_min, mut x_max, mut y_min, mut y_max) = (first.0, first.0, first.1, first.1);
    for &(x, y) in rest {
        (x_min, x_max) = (x_min.min(x), x_max.max(x));
        (y_min, y_max) = (y_min.min(y), y_max.max(y));
    }
    let y = match scale {
        Scale::Linear => linear_axis(y_min, y_max, Y_TICKS_TARGET),
        Scale::Log10 => log_axis(y_min, y_max),
    };
    Some(Frame {
        x: linear_axis(x_min, x_max, X_TICKS_TARGET),
        y,
    })
}

/// Vertical grid lines and labels along the time axis, and the axis line itself.
fn x_ticks(frame: &Frame) -> String {
    let mut svg = String::new();
    for tick in &frame.x.ticks {
        let x = frame.px(tick.value);
        svg.push_str(&format!(
            "<line class=\"grid\" x1=\"{x:.1}\" y1=\"{:.1}\" x2=\"{x:.1}\" y2=\"{:.1}\"/>\n",
            Frame::TOP,
            Frame::BOTTOM
        ));
        svg.push_str(&format!(
            "<text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>\n",
            Frame::BOTTOM + 17.0,
            escape_html(&format_si(tick.value))
        ));
    }
    svg.push_str(&format!(
        "<line class=\"axis\" x1=\"{:.1}\" y1=\"{b:.1}\" x2=\"{:.1}\" y2=\"{b:.1}\"/>\n",
        Frame::LEFT,
        Frame::RIGHT,
        b = Frame::BOTTOM
    ));
    svg
}

/// Horizontal grid lines and labels along the value axis, and the axis line itself.
fn y_ticks(frame: &Frame, label: fn(f64) -> String) -> String {
    let mut svg = String::new();
    for tick in &frame.y.ticks {
        let y = frame.py(tick.value);
        svg.push_str(&format!(
            "<line class=\"grid\" x1=\"{:.1}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\"/>\n",
            Frame::LEFT,
            Frame::RIGHT
        ));
        if tick.labeled {
            svg.push_str(&format!(
                "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>\n",
                Frame::LEFT - 8.0,
                y + 4.0,
                escape_html(&label(tick.value))
            ));
        }
    }
    svg.push_str(&format!(
        "<line class=\"axis\" x1=\"{l:.1}\" y1=\"{:.1}\" x2=\"{l:.1}\" y2=\"{:.1}\"/>\n",
        Frame::TOP,
        Frame::BOTTOM,
        l = Frame::LEFT
    ));
    svg
}

/// The time axis title under the plot, and the value axis title turned along the left.
fn axis_titles(time_unit: &str, y_title: &str) -> String {
    let y_middle = (Frame::TOP + Frame::BOTTOM) / 2.0;
    format!(
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">elapsed time ({})</text>\n\
         <text x=\"16\" y=\"{y_middle:.1}\" text-anchor=\"middle\" \
         transform=\"rotate(-90 16 {y_middle:.1})\">{}</text>\n",
        (Frame::LEFT + Frame::RIGHT) / 2.0,
        CHART_HEIGHT_PX - 10.0,
        escape_html(time_unit),
        escape_html(y_title)
    )
}

/// A series as one polyline per run; a run of one point is drawn as a dot, because
/// a polyline through a single point is invisible.
fn series_svg(frame: &Frame, series: &Series) -> String {
    let mut svg = String::new();
    for run in &series.runs {
        if let [(x, y)] = run.as_slice() {
            svg.push_str(&format!(
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3.5\" fill=\"{}\"/>\n",
                frame.px(*x),
                frame.py(*y),
                series.color
            ));
            continue;
        }
        let points: Vec<String> = run
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", frame.px(x), frame.py(y)))
            .collect();
        svg.push_str(&format!(
            "<polyline class=\"series\" stroke=\"{}\" stroke-dasharray=\"{}\" points=\"{}\"/>\n",
            series.color,
            series.dash,
            points.join(" ")
        ));
    }
    svg
}

/// The legend, in a row above the plot area so that it never hides a line. Each entry
/// names its series' peak, so that a small series next to a large one (aborts next to
/// commits) can still be read.
fn legend(series: &[Series], label: fn(f64) -> String) -> String {
    let mut svg = String::new();
    let mut x = Frame::LEFT;
    let y = MARGIN_TOP_PX / 2.0;
    for entry in series {
        let peak = entry
            .runs
            .iter()
            .flatten()
            .map(|&(_, y)| y)
            .reduce(f64::max);
        let text = match peak {
            Some(peak) => format!("{} (peak {})", entry.label, label(peak)),
            None => format!("{} (no data)", entry.label),
        };
        svg.push_str(&format!(
            "<line class=\"series\" x1=\"{x:.1}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" \
             stroke=\"{}\" stroke-dasharray=\"{}\"/>\n",
            x + LEGEND_LINE_PX,
            entry.color,
            entry.dash
        ));
        svg.push_str(&format!(
            "<text x=\"{:.1}\" y=\"{:.1}\">{}</text>\n",
            x + LEGEND_LINE_PX + 6.0,
            y + 4.0,
            escape_html(&text)
        ));
        x += LEGEND_LINE_PX + 6.0 + text.chars().count() as f64 * LEGEND_CHAR_PX + LEGEND_GAP_PX;
    }
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The number of charts the page draws; each must have exactly one `<svg>`.
    const CHARTS_COUNT: usize = 3;

    /// A realistic minute of load: a warm-up ramp, a steady plateau with noise, and a
    /// latency spike at 40 s.
    fn realistic_samples(count: usize) -> Vec<Sample> {
        (0..count)
            .map(|i| {
                let t = (i + 1) as f64;
                let warm = (t / 5.0).min(1.0);
                let wobble = ((i * 7919) % 13) as f64 / 13.0;
                let spike = if i == 40 { 20 } else { 1 };
                Sample {
                    elapsed_s: t,
                    committed_per_s: warm * (1_150_000.0 + 60_000.0 * wobble),
                    aborted_per_s: warm * (1_200.0 + 400.0 * wobble),
                    p50_us: 850 + (wobble * 120.0) as u64,
                    p99_us: (3_200 + (wobble * 900.0) as u64) * spike,
                    p999_us: (9_000 + (wobble * 4_000.0) as u64) * spike,
                    batch_txns_avg: warm * (3_900.0 + 400.0 * wobble),
                }
            })
            .collect()
    }

    fn summary_rows() -> Vec<(String, String)> {
        [
            ("committed", "68,123,456"),
            ("committed/s", "1.14M"),
            ("invariant", "ok"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    fn render(samples: &[Sample], summary: &[(String, String)]) -> String {
        render_html(&Report {
            title: "tricommit-load",
            generated: "2026-11-26 12:00 UTC",
            samples,
            summary,
        })
    }

    /// Checks that every element opened is closed in order, so that the document is
    /// well-formed as far as nesting goes. Returns the first problem found.
    fn check_balanced(html: &str) -> Result<(), String> {
        const VOID_ELEMENTS: [&str; 2] = ["meta", "!DOCTYPE"];
        let mut open: Vec<String> = Vec::new();
        let mut rest = html;
        while let Some(start) = rest.find('<') {
            let end = rest[start..].find('>').ok_or("a tag never ends")? + start;
            let tag = &rest[start + 1..end];
            rest = &rest[end + 1..];
            let name: String = tag
                .trim_start_matches('/')
                .chars()
                .take_while(|c| !c.is_whitespace() && *c != '/')
                .collect();
            if tag.starts_with('/') {
                match open.pop() {
                    Some(top) if top == name => {}
                    other => return Err(format!("</{name}> closes {other:?}")),
                }
            } else if !tag.ends_with('/') && !VOID_ELEMENTS.contains(&name.as_str()) {
                open.push(name);
            }
        }
        if open.is_empty() {
            Ok(())
        } else {
            Err(format!("never closed: {open:?}"))
        }
    }

    /// Checks that every `&` in the document starts an entity, so no raw text slipped in.
    fn check_entities(html: &str) -> Result<(), String> {
        for (at, _) in html.match_indices('&') {
            let entity: String = html[at..]
                .chars()
                .take_while(|c| *c != ';' && *c != ' ')
                .collect();
            if !["&amp", "&lt", "&gt", "&quot", "&#39"].contains(&entity.as_str()) {
                return Err(format!("a bare & at byte {at}: {entity}"));
            }
        }
        Ok(())
    }

    /// Fails when a number written into the page is not finite.
    fn assert_all_finite(html: &str) {
        assert!(!html.contains("NaN"), "NaN in the page");
        assert!(!html.contains("inf"), "an infinity in the page");
    }

    /// A realistic report nests its tags properly, draws exactly one `<svg>` per chart,
    /// and has one table row per summary entry plus the header row.
    #[test]
    fn realistic_report_is_well_formed() {
        let html = render(&realistic_samples(60), &summary_rows());
        check_balanced(&html).unwrap();
        check_entities(&html).unwrap();
        assert_eq!(html.matches("<svg").count(), CHARTS_COUNT);
        assert_eq!(html.matches("</svg>").count(), CHARTS_COUNT);
        assert_eq!(html.matches("<tr>").count(), summary_rows().len() + 1);
        assert_eq!(
            html.matches("<polyline").count(),
            2 + 3 + 1,
            "one line per series"
        );
        assert!(!html.contains("<script"), "the page has no scripts");
        assert_eq!(
            html.matches("http").count(),
            CHARTS_COUNT,
            "no external resources: the only URLs are the SVG namespaces"
        );
        assert_all_finite(&html);
    }

    /// Text from the caller is escaped everywhere it appears, so it cannot inject markup.
    #[test]
    fn caller_text_is_escaped() {
        let hostile = "<script>alert('x' & \"y\")</script>";
        let summary = vec![(hostile.to_string(), "<b>1</b>".to_string())];
        let html = render_html(&Report {
            title: hostile,
            generated: hostile,
            samples: &[],
            summary: &summary,
        });
        assert!(!html.contains("<script"));
        assert!(!html.contains("<b>"));
        assert_eq!(
            html.matches("&lt;script&gt;alert(&#39;x&#39; &amp; &quot;y&quot;)&lt;/script&gt;")
                .count(),
            4
        );
        check_balanced(&html).unwrap();
        check_entities(&html).unwrap();
    }

    /// With no samples every chart says "no data" rather than dividing by zero, and an
    /// empty summary says so instead of drawing an empty table.
    #[test]
    fn zero_samples_say_no_data() {
        let html = render(&[], &[]);
        assert_eq!(html.matches(">no data</text>").count(), CHARTS_COUNT);
        assert_eq!(html.matches("<svg").count(), CHARTS_COUNT);
        assert!(!html.contains("<table"));
        assert!(html.contains("No summary figures."));
        check_balanced(&html).unwrap();
        assert_all_finite(&html);
    }

    /// One sample is drawn as a dot per series, since a one-point line is invisible.
    #[test]
    fn one_sample_draws_dots() {
        let html = render(&realistic_samples(1), &summary_rows());
        assert_eq!(html.matches("<circle").count(), 2 + 3 + 1);
        assert_eq!(html.matches("<polyline").count(), 0);
        check_balanced(&html).unwrap();
        assert_all_finite(&html);
    }

    /// All-zero values give flat lines on a non-empty linear axis, and a log-scale
    /// latency chart with nothing to draw says so instead of plotting log(0).
    #[test]
    fn all_zero_values_stay_finite() {
        let samples: Vec<Sample> = (0..10).map(|_| Sample::default()).collect();
        let html = render(&samples, &summary_rows());
        assert_eq!(
            html.matches(">nothing to plot: every value is zero or missing</text>")
                .count(),
            1
        );
        assert_eq!(html.matches("<polyline").count(), 2 + 1);
        check_balanced(&html).unwrap();
        assert_all_finite(&html);
    }

    /// Huge and non-finite inputs are clamped or left out, never printed as NaN or inf.
    #[test]
    fn huge_and_non_finite_values_stay_finite() {
        let mut samples = realistic_samples(5);
        samples[1] = Sample {
            elapsed_s: 2.0,
            committed_per_s: f64::MAX,
            aborted_per_s: f64::INFINITY,
            p50_us: u64::MAX,
            p99_us: u64::MAX,
            p999_us: u64::MAX,
            batch_txns_avg: f64::NAN,
        };
        samples[2].aborted_per_s = -f64::MAX;
        samples[3].elapsed_s = f64::NAN;
        let html = render(&samples, &summary_rows());
        check_balanced(&html).unwrap();
        assert_all_finite(&html);
        assert_eq!(html.matches("<svg").count(), CHARTS_COUNT);
    }

    /// Long runs are merged down to the plotting bound, keeping the worst latency.
    #[test]
    fn long_runs_are_merged_and_keep_spikes() {
        let mut samples = realistic_samples(SAMPLES_PLOTTED_MAX * 3 + 7);
        samples[1_000].p999_us = 5_000_000;
        let (merged, group_len) = merge_samples(&samples);
        assert!(merged.len() <= SAMPLES_PLOTTED_MAX);
        assert_eq!(group_len, 4);
        assert_eq!(merged.iter().map(|s| s.p999_us).max(), Some(5_000_000));
        let html = render(&samples, &[]);
        assert!(html.contains("every 4 adjacent ones merged"));
        assert!(
            html.contains("elapsed time (min)"),
            "a 76-minute run is charted in minutes"
        );
    }

    /// SI formatting keeps three significant digits and rounds across prefixes.
    #[test]
    fn si_labels_are_short_and_round() {
        let cases = [
            (0.0, "0"),
            (0.25, "0.25"),
            (950.0, "950"),
            (1_200.0, "1.2k"),
            (250_000.0, "250k"),
            (1_250_000.0, "1.25M"),
            (999_960.0, "1M"),
            (-2_000.0, "-2k"),
            (3e9, "3G"),
            (1e30, "1.0e30"),
        ];
        for (value, expected) in cases {
            assert_eq!(format_si(value), expected, "format_si({value})");
        }
        assert_eq!(format_latency_us(100.0), "100 µs");
        assert_eq!(format_latency_us(2_500.0), "2.5 ms");
        assert_eq!(format_latency_us(10_000_000.0), "10 s");
    }

    /// Linear ticks fall on round steps, cover the data, and stay within the bound.
    #[test]
    fn linear_ticks_are_round_and_cover_the_data() {
        for (min, max) in [
            (0.0, 1_234_567.0),
            (3.0, 3.0),
            (-7.5, 42.0),
            (0.0, 1e30),
            (0.0, 1e-9),
        ] {
            let axis = linear_axis(min, max, Y_TICKS_TARGET);
            assert!(
                axis.lo <= min.min(0.0) && axis.hi >= max && axis.hi > axis.lo,
                "{min}..{max}: {axis:?}"
            );
            assert!((2..=TICKS_MAX + 1).contains(&axis.ticks.len()), "{axis:?}");
            let step = axis.ticks[1].value - axis.ticks[0].value;
            let mantissa = step / 10f64.powf(step.log10().floor());
            assert!(
                [1.0, 2.0, 2.5, 5.0]
                    .iter()
                    .any(|m| (mantissa - m).abs() < 1e-6),
                "step {step}"
            );
        }
    }

    /// Log ticks sit on decades around the data, with minor ticks only for short ranges.
    #[test]
    fn log_ticks_cover_the_data() {
        let axis = log_axis(850.0, 48_000.0);
        assert_eq!((axis.lo, axis.hi), (100.0, 100_000.0));
        assert!(axis.ticks.iter().all(|t| t.labeled));
        let short = log_axis(850.0, 4_000.0);
        assert!(short.ticks.iter().any(|t| t.value == 2_000.0));
        let wide = log_axis(1.0, 1.8e19);
        assert!(wide.ticks.iter().filter(|t| t.labeled).count() <= LOG_DECADE_LABELS_MAX + 1);
    }
}
