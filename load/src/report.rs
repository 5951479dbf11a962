//! `--report FILE.html`: one self-contained page (no scripts, no external files) with the summary,
//! throughput over time and the ack latency percentile curve as inline SVG.
//!
//! Two line charts do not justify plotters and its font stack in the build; the SVG is written by
//! hand.

use std::fmt::Write;

use super::stats::{Stats, Summary, TIMELINE_BUCKET_MS};

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 300.0;
const MARGIN_LEFT: f64 = 70.0;
const MARGIN_RIGHT: f64 = 20.0;
const MARGIN_TOP: f64 = 30.0;
const MARGIN_BOTTOM: f64 = 45.0;

/// The largest "nines" shown on the latency curve: 99.99%.
const NINES_MAX: f64 = 4.0;

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A round step that cuts `0..max` into about five intervals.
fn tick_step(max: f64) -> f64 {
    if max <= 0.0 {
        return 1.0;
    }
    let raw = max / 5.0;
    let magnitude = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|step| *step >= raw)
        .unwrap_or(10.0 * magnitude)
}

/// A line chart of `points`; `x_ticks` label the x axis (value, label), y ticks are computed.
fn line_chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    points: &[(f64, f64)],
    x_ticks: &[(f64, String)],
) -> String {
    let x_max = points.iter().map(|p| p.0).fold(0.0, f64::max).max(1e-9);
    let y_step = tick_step(points.iter().map(|p| p.1).fold(0.0, f64::max));
    let y_max = (points.iter().map(|p| p.1).fold(0.0, f64::max) / y_step)
        .ceil()
        .max(1.0)
        * y_step;
    let plot_w = WIDTH - MARGIN_LEFT - MARGIN_RIGHT;
    let plot_h = HEIGHT - MARGIN_TOP - MARGIN_BOTTOM;
    let sx = |x: f64| MARGIN_LEFT + x / x_max * plot_w;
    let sy = |y: f64| MARGIN_TOP + plot_h - y / y_max * plot_h;

    let mut svg = String::new();
    // Writing to a String cannot fail.
    let _ = write!(
        svg,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">
<text x="{}" y="18" text-anchor="middle" font-weight="bold">{}</text>
<rect x="{MARGIN_LEFT}" y="{MARGIN_TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#888"/>
"##,
        WIDTH / 2.0,
        escape(title)
    );
    let mut y = 0.0;
    while y <= y_max + y_step / 2.0 {
        let _ = writeln!(
            svg,
            r##"<line x1="{MARGIN_LEFT}" x2="{}" y1="{py:.1}" y2="{py:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            WIDTH - MARGIN_RIGHT,
            MARGIN_LEFT - 6.0,
            sy(y) + 4.0,
            format_number(y),
            py = sy(y),
        );
        y += y_step;
    }
    for (x, label) in x_ticks {
        let _ = writeln!(
            svg,
            r##"<line x1="{px:.1}" x2="{px:.1}" y1="{MARGIN_TOP}" y2="{}" stroke="#eee"/><text x="{px:.1}" y="{}" text-anchor="middle">{}</text>"##,
            MARGIN_TOP + plot_h,
            MARGIN_TOP + plot_h + 16.0,
            escape(label),
            px = sx(*x),
        );
    }
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text><text transform="translate(16 {}) rotate(-90)" text-anchor="middle">{}</text>"#,
        MARGIN_LEFT + plot_w / 2.0,
        HEIGHT - 8.0,
        escape(x_label),
        MARGIN_TOP + plot_h / 2.0,
        escape(y_label)
    );
    let path: Vec<String> = points
        .iter()
        .map(|(x, y)| format!("{:.1},{:.1}", sx(*x), sy(*y)))
        .collect();
    let _ = writeln!(
        svg,
        r##"<polyline fill="none" stroke="#1f6feb" stroke-width="1.5" points="{}"/>"##,
        path.join(" ")
    );
    svg.push_str("</svg>");
    svg
}

fn format_number(value: f64) -> String {
    if value >= 1_000_000.0 {
        format!("{}M", value / 1_000_000.0)
    } else if value >= 1_000.0 {
        format!("{}k", value / 1_000.0)
    } else {
        format!("{value}")
    }
}

/// Receipts acked per second, one point per timeline bucket.
fn throughput_points(stats: &Stats) -> Vec<(f64, f64)> {
    let per_s = 1000.0 / TIMELINE_BUCKET_MS as f64;
    stats
        .timeline
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            (
                (i as f64 + 1.0) * TIMELINE_BUCKET_MS as f64 / 1000.0,
                n as f64 * per_s,
            )
        })
        .collect()
}

/// Latency (ms) against "nines": x = 1 is the 90th percentile, 2 the 99th, 3 the 99.9th.
fn latency_points(stats: &Stats) -> Vec<(f64, f64)> {
    if stats.latency_us.is_empty() {
        return Vec::new();
    }
    (0..=(NINES_MAX * 50.0) as u32)
        .map(|i| {
            let nines = f64::from(i) / 50.0;
            let quantile = 1.0 - 10f64.powf(-nines);
            (
                nines,
                stats.latency_us.value_at_quantile(quantile) as f64 / 1000.0,
            )
        })
        .collect()
}

/// The whole page.
pub fn render(title: &str, summary: &Summary, stats: &Stats) -> String {
    let throughput = throughput_points(stats);
    let seconds = throughput.last().map_or(1.0, |p| p.0);
    let step = tick_step(seconds);
    let time_ticks: Vec<(f64, String)> = (0..)
        .map(|i| f64::from(i) * step)
        .take_while(|x| *x <= seconds)
        .map(|x| (x, format_number(x)))
        .collect();
    let nines_ticks: Vec<(f64, String)> = [
        (0.0, "0%"),
        (1.0, "90%"),
        (2.0, "99%"),
        (3.0, "99.9%"),
        (4.0, "99.99%"),
    ]
    .into_iter()
    .map(|(x, label)| (x, label.to_owned()))
    .collect();
    let summary_json = serde_json::to_string_pretty(summary).unwrap_or_default();
    format!(
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;max-width:760px;margin:2em auto;color:#222}}pre{{background:#f6f8fa;padding:1em}}</style>
</head><body>
<h1>{title}</h1>
<p>{acked} receipts acked in {elapsed:.2} s: <b>{rate:.0} receipts/s</b>; ack latency p50 {p50:.2} ms, p99 {p99:.2} ms, p99.9 {p999:.2} ms; {mismatches} verdict mismatches, {failed} failed.</p>
{throughput_svg}
{latency_svg}
<h2>Summary</h2>
<pre>{summary_json}</pre>
</body></html>
"#,
        title = escape(title),
        acked = summary.acked,
        elapsed = summary.elapsed_s,
        rate = summary.receipts_per_s,
        p50 = summary.ack_latency_ms.p50,
        p99 = summary.ack_latency_ms.p99,
        p999 = summary.ack_latency_ms.p999,
        mismatches = summary.verdict_mismatches,
        failed = summary.failed,
        throughput_svg = line_chart(
            "Throughput",
            "seconds since start",
            "receipts acked per second",
            &throughput,
            &time_ticks
        ),
        latency_svg = line_chart(
            "Ack latency by percentile",
            "percentile",
            "ms",
            &latency_points(stats),
            &nines_ticks
        ),
        summary_json = escape(&summary_json),
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::stats::Sent;
    use crate::workload::Kind;

    #[test]
    fn page_is_self_contained_and_plots_what_was_recorded() {
        let mut stats = Stats::default();
        let batch: Vec<Sent> = (0..10)
            .map(|nonce| Sent {
                payer_index: 0,
                payee: tollgate_engine::Address([9; 20]),
                nonce,
                amount: 1,
                kind: Kind::Valid,
            })
            .collect();
        stats.record_sent(&batch);
        for second in 0..3u64 {
            stats.record_acked(
                &batch,
                &[Ok(()); 10],
                Duration::from_millis(2 + second),
                Duration::from_secs(second),
            );
        }
        let summary = stats.summary(Duration::from_secs(3));
        let page = render("tollgate-load <run>", &summary, &stats);
        assert!(page.contains("tollgate-load &lt;run&gt;"));
        assert_eq!(page.matches("<svg").count(), 2);
        assert_eq!(page.matches("<polyline").count(), 2);
        assert!(!page.contains("<script") && !page.contains("src="));
        // 10 receipts in a 100 ms bucket is 100 receipts/s: the peak point sits on the top gridline.
        assert!(page.contains(">100</text>"));
    }

    #[test]
    fn ticks_are_round() {
        assert_eq!(tick_step(9.0), 2.0);
        assert_eq!(tick_step(230_000.0), 50_000.0);
        assert_eq!(tick_step(0.0), 1.0);
    }
}
