//! Hand-written SVG charts: box plots of timing samples and grouped bar charts.
//!
//! When the values span more than [`LOG_SCALE_RATIO`] the value axis is logarithmic (a
//! 60 s VM boot and a 0.2 s runc start on one linear axis would hide the runc box). A series
//! without data is drawn as a note ("FAILED: ..."), never as a zero.

use std::fmt::Write;

use crate::stats::Summary;

/// Above this max/min ratio the value axis is logarithmic.
pub const LOG_SCALE_RATIO: f64 = 30.0;

const WIDTH: f64 = 760.0;
const LEFT: f64 = 90.0;
const RIGHT: f64 = 60.0;
const TOP: f64 = 60.0;
const PLOT_H: f64 = 300.0;
const PALETTE: &[&str] = &[
    "#4e79a7", "#e15759", "#59a14f", "#f28e2b", "#76b7b2", "#b07aa1",
];

/// Escapes text for XML content and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Control characters are not allowed in XML 1.0.
            c if (c as u32) < 0x20 && c != '\n' && c != '\t' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// Color of a series by name (stable across charts).
pub fn color(series: &str) -> &'static str {
    match series {
        s if s.starts_with("runc") => PALETTE[0],
        s if s.starts_with("vessel") => PALETTE[1],
        s if s.starts_with("qemu") => PALETTE[2],
        s => PALETTE[3 + s.len() % (PALETTE.len() - 3)],
    }
}

/// Maps values to the plot's y pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scale {
    pub lo: f64,
    pub hi: f64,
    pub log: bool,
}

impl Scale {
    /// A scale covering `values` (finite ones); `zero_based` for bars.
    pub fn covering(values: &[f64], zero_based: bool) -> Scale {
        let finite: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
        let max = finite.iter().copied().fold(f64::MIN, f64::max);
        let min_pos = finite
            .iter()
            .copied()
            .filter(|v| *v > 0.0)
            .fold(f64::MAX, f64::min);
        if finite.is_empty() || max <= 0.0 {
            return Scale {
                lo: 0.0,
                hi: 1.0,
                log: false,
            };
        }
        if max / min_pos > LOG_SCALE_RATIO {
            return Scale {
                lo: 10f64.powf(min_pos.log10().floor()),
                hi: 10f64.powf(max.log10().ceil()),
                log: true,
            };
        }
        let min = finite.iter().copied().fold(f64::MAX, f64::min);
        let lo = if zero_based || min <= 0.0 {
            0.0
        } else {
            // Leave room below the smallest value.
            let step = nice_step((max - min).max(max * 0.05) / 5.0);
            ((min - step) / step).floor().max(0.0) * step
        };
        let step = nice_step((max - lo) / 5.0);
        Scale {
            lo,
            hi: (max / step).ceil() * step + if max % step == 0.0 { step } else { 0.0 },
            log: false,
        }
    }

    /// Pixel y of `v` (TOP at `hi`, TOP + PLOT_H at `lo`).
    pub fn y(&self, v: f64) -> f64 {
        let frac = if self.log {
            let v = v.max(self.lo);
            (v.log10() - self.lo.log10()) / (self.hi.log10() - self.lo.log10())
        } else {
            (v - self.lo) / (self.hi - self.lo)
        };
        TOP + PLOT_H * (1.0 - frac.clamp(0.0, 1.0))
    }

    /// Tick values for the axis.
    pub fn ticks(&self) -> Vec<f64> {
        if self.log {
            let mut out = Vec::new();
            let mut v = self.lo;
            while v <= self.hi * 1.0001 {
                out.push(v);
                v *= 10.0;
            }
            return out;
        }
        let step = nice_step((self.hi - self.lo) / 5.0);
        let mut out = Vec::new();
        let mut i = 0.0;
        while self.lo + i * step <= self.hi + step * 1e-9 {
            out.push(self.lo + i * step);
            i += 1.0;
        }
        out
    }
}

/// 1, 2 or 5 times a power of ten, >= `raw`.
pub fn nice_step(raw: f64) -> f64 {
    if !(raw.is_finite() && raw > 0.0) {
        return 1.0;
    }
    let pow = 10f64.powf(raw.log10().floor());
    for m in [1.0, 2.0, 5.0, 10.0] {
        if m * pow >= raw * 0.999_999 {
            return m * pow;
        }
    }
    10.0 * pow
}

/// A number for a label: 3 significant digits, no exponent.
pub fn fmt_num(v: f64) -> String {
    if !v.is_finite() {
        return "-".into();
    }
    let a = v.abs();
    if a >= 100.0 || a == 0.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// Splits `text` into lines of at most `width` characters at spaces (longer words are cut).
pub fn wrap(text: &str, width: usize) -> Vec<String> {
    let width = width.max(1);
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        let mut word: Vec<char> = word.chars().collect();
        while word.len() > width {
            if !line.is_empty() {
                lines.push(std::mem::take(&mut line));
            }
            lines.push(word.drain(..width).collect());
        }
        let word: String = word.into_iter().collect();
        let len = line.chars().count();
        if len > 0 && len + 1 + word.chars().count() > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(&word);
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

/// Where the caption starts (below the axis labels, up to 3 lines, and the stats line).
const CAPTION_Y: f64 = TOP + PLOT_H + 90.0;
/// Characters of 10-px text per caption line.
const CAPTION_CHARS: usize = 125;

fn caption_lines(caption: &[String]) -> Vec<String> {
    caption
        .iter()
        .flat_map(|c| wrap(c, CAPTION_CHARS))
        .collect()
}

struct Doc {
    out: String,
}

impl Doc {
    fn new(title: &str, caption: &[String]) -> Doc {
        let caption = caption_lines(caption);
        let height = CAPTION_Y + 10.0 + 14.0 * caption.len() as f64;
        let mut out = String::new();
        let _ = write!(
            out,
            r#"<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">
<title>{t}</title>
<rect x="0" y="0" width="{WIDTH}" height="{height}" fill="white"/>
<text x="{x}" y="24" font-size="16" font-weight="bold" text-anchor="middle">{t}</text>
"#,
            t = escape(title),
            x = WIDTH / 2.0
        );
        let mut y = CAPTION_Y;
        for line in &caption {
            let _ = writeln!(
                out,
                r##"<text x="10" y="{y}" font-size="10" fill="#444">{}</text>"##,
                escape(line)
            );
            y += 14.0;
        }
        Doc { out }
    }

    fn axis(&mut self, scale: &Scale, unit: &str) {
        let right = WIDTH - RIGHT;
        for t in scale.ticks() {
            let y = scale.y(t);
            let _ = writeln!(
                self.out,
                r##"<line x1="{LEFT}" y1="{y:.1}" x2="{right}" y2="{y:.1}" stroke="#ddd"/><text x="{lx}" y="{ty:.1}" text-anchor="end">{}</text>"##,
                fmt_num(t),
                lx = LEFT - 6.0,
                ty = y + 4.0
            );
        }
        let bottom = TOP + PLOT_H;
        let _ = writeln!(
            self.out,
            r##"<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{bottom}" stroke="#000"/><line x1="{LEFT}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="#000"/>"##
        );
        let label = if scale.log {
            format!("{unit} (log scale)")
        } else {
            unit.to_string()
        };
        let _ = writeln!(
            self.out,
            r#"<text x="16" y="{cy}" transform="rotate(-90 16 {cy})" text-anchor="middle">{}</text>"#,
            escape(&label),
            cy = TOP + PLOT_H / 2.0
        );
    }

    fn text(&mut self, x: f64, y: f64, anchor: &str, size: u32, s: &str) {
        let _ = writeln!(
            self.out,
            r#"<text x="{x:.1}" y="{y:.1}" text-anchor="{anchor}" font-size="{size}">{}</text>"#,
            escape(s)
        );
    }

    /// Several lines centred at `x`, starting at `y`.
    fn lines(&mut self, x: f64, y: f64, size: u32, lines: &[String]) {
        for (i, l) in lines.iter().enumerate() {
            self.text(x, y + f64::from(size + 3) * i as f64, "middle", size, l);
        }
    }

    fn finish(mut self) -> String {
        self.out.push_str("</svg>\n");
        self.out
    }
}

/// A failure note wrapped to fit `px` pixels at font `size`, at most `max_lines` lines.
fn note_lines(note: &str, px: f64, size: u32, max_lines: usize) -> Vec<String> {
    let chars = (px / (f64::from(size) * 0.6)).max(8.0) as usize;
    let mut lines = wrap(note, chars);
    if lines.len() > max_lines {
        lines.truncate(max_lines);
        if let Some(last) = lines.last_mut() {
            last.push('…');
        }
    }
    lines
}

/// One box of a box plot.
#[derive(Debug, Clone)]
pub struct BoxSeries {
    pub label: String,
    pub summary: Option<Summary>,
    /// Shown instead of a box when there is no summary (e.g. the failure).
    pub note: Option<String>,
}

/// A box plot: box p25..p75, median line, whiskers min..max, p99 tick; one box per series.
pub fn box_chart(title: &str, caption: &[String], unit: &str, series: &[BoxSeries]) -> String {
    let values: Vec<f64> = series
        .iter()
        .filter_map(|s| s.summary.as_ref())
        .flat_map(|s| [s.min, s.max])
        .collect();
    let scale = Scale::covering(&values, false);
    let mut doc = Doc::new(title, caption);
    doc.axis(&scale, unit);
    let slot = (WIDTH - LEFT - RIGHT) / series.len().max(1) as f64;
    for (i, s) in series.iter().enumerate() {
        let cx = LEFT + slot * (i as f64 + 0.5);
        let half = (slot * 0.25).min(50.0);
        let c = color(&s.label);
        let label = note_lines(&s.label, slot * 0.95, 11, 3);
        doc.lines(cx, TOP + PLOT_H + 16.0, 11, &label);
        match &s.summary {
            Some(sum) => {
                let (ymin, ymax) = (scale.y(sum.min), scale.y(sum.max));
                let (y25, y75, y50, y99) = (
                    scale.y(sum.p25),
                    scale.y(sum.p75),
                    scale.y(sum.p50),
                    scale.y(sum.p99),
                );
                let _ = writeln!(
                    doc.out,
                    r##"<line x1="{cx:.1}" y1="{ymax:.1}" x2="{cx:.1}" y2="{ymin:.1}" stroke="{c}"/>
<line x1="{a:.1}" y1="{ymax:.1}" x2="{b:.1}" y2="{ymax:.1}" stroke="{c}"/><line x1="{a:.1}" y1="{ymin:.1}" x2="{b:.1}" y2="{ymin:.1}" stroke="{c}"/>
<rect x="{x:.1}" y="{y75:.1}" width="{w:.1}" height="{h:.1}" fill="{c}" fill-opacity="0.35" stroke="{c}"/>
<line x1="{x:.1}" y1="{y50:.1}" x2="{x2:.1}" y2="{y50:.1}" stroke="#000" stroke-width="2"/>
<line x1="{x:.1}" y1="{y99:.1}" x2="{x2:.1}" y2="{y99:.1}" stroke="{c}" stroke-dasharray="3,2"/>"##,
                    a = cx - half / 2.0,
                    b = cx + half / 2.0,
                    x = cx - half,
                    x2 = cx + half,
                    w = 2.0 * half,
                    h = (y25 - y75).max(1.0),
                );
                doc.text(
                    cx + half + 4.0,
                    y50 + 4.0,
                    "start",
                    10,
                    &format!("p50 {}", fmt_num(sum.p50)),
                );
                let stats = format!(
                    "n={} p90 {} p99 {}",
                    sum.n,
                    fmt_num(sum.p90),
                    fmt_num(sum.p99)
                );
                let stats = note_lines(&stats, slot * 0.95, 10, 2);
                doc.lines(
                    cx,
                    TOP + PLOT_H + 16.0 + 14.0 * label.len() as f64,
                    10,
                    &stats,
                );
            }
            None => {
                let note = s.note.clone().unwrap_or_else(|| "no data".into());
                let lines = note_lines(&note, slot * 0.9, 10, 12);
                doc.lines(cx, TOP + 30.0, 10, &lines);
            }
        }
    }
    doc.finish()
}

/// One bar: a series' value in a group (`None`: drawn as its note).
#[derive(Debug, Clone)]
pub struct Bar {
    pub series: String,
    pub value: Option<f64>,
    pub note: Option<String>,
}

#[derive(Debug, Clone)]
pub struct BarGroup {
    pub label: String,
    pub bars: Vec<Bar>,
}

/// Grouped bars (e.g. per-pod memory at N = 1, 10, 50 for runc and vessel), values printed.
pub fn bar_chart(title: &str, caption: &[String], unit: &str, groups: &[BarGroup]) -> String {
    let values: Vec<f64> = groups
        .iter()
        .flat_map(|g| g.bars.iter().filter_map(|b| b.value))
        .collect();
    let scale = Scale::covering(&values, true);
    let mut doc = Doc::new(title, caption);
    doc.axis(&scale, unit);
    let slot = (WIDTH - LEFT - RIGHT) / groups.len().max(1) as f64;
    let bottom = TOP + PLOT_H;
    for (gi, g) in groups.iter().enumerate() {
        let gx = LEFT + slot * gi as f64;
        doc.text(gx + slot / 2.0, bottom + 18.0, "middle", 12, &g.label);
        let bw = (slot * 0.8 / g.bars.len().max(1) as f64).min(80.0);
        let start = gx + (slot - bw * g.bars.len() as f64) / 2.0;
        for (bi, b) in g.bars.iter().enumerate() {
            let x = start + bw * bi as f64;
            let c = color(&b.series);
            match b.value {
                Some(v) => {
                    let y = scale.y(v);
                    let _ = writeln!(
                        doc.out,
                        r#"<rect x="{x:.1}" y="{y:.1}" width="{w:.1}" height="{h:.1}" fill="{c}"><title>{t}</title></rect>"#,
                        w = bw * 0.9,
                        h = (bottom - y).max(0.5),
                        t = escape(&format!("{}: {}", b.series, fmt_num(v)))
                    );
                    doc.text(x + bw * 0.45, y - 4.0, "middle", 10, &fmt_num(v));
                }
                None => {
                    let note = b.note.clone().unwrap_or_else(|| "no data".into());
                    let lines = note_lines(&note, bw * 0.95, 9, 4);
                    let top = bottom - 6.0 - 12.0 * (lines.len().saturating_sub(1)) as f64;
                    doc.lines(x + bw * 0.45, top, 9, &lines);
                }
            }
            doc.text(x + bw * 0.45, bottom + 32.0, "middle", 10, &b.series);
        }
    }
    doc.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(v: &[f64]) -> Option<Summary> {
        Summary::of(v)
    }

    fn parse_ok(svg: &str) -> roxmltree::Document<'_> {
        let doc = roxmltree::Document::parse(svg).unwrap_or_else(|e| panic!("{e}\n{svg}"));
        assert_eq!(doc.root_element().tag_name().name(), "svg");
        assert!(!svg.contains("NaN") && !svg.contains("inf"), "{svg}");
        doc
    }

    fn texts(doc: &roxmltree::Document<'_>) -> Vec<String> {
        doc.descendants()
            .filter(|n| n.has_tag_name("text"))
            .filter_map(|n| n.text().map(str::to_string))
            .collect()
    }

    #[test]
    fn box_chart_is_well_formed_and_escapes() {
        let caption = vec!["AMD EPYC <test> & \"quotes\" · N=20".to_string()];
        let svg = box_chart(
            "start <latency> & more",
            &caption,
            "ms",
            &[
                BoxSeries {
                    label: "runc".into(),
                    summary: summary(&[150.0, 160.0, 170.0, 400.0]),
                    note: None,
                },
                BoxSeries {
                    label: "vessel".into(),
                    summary: None,
                    note: Some("FAILED: shim said <no>\u{1} & gave up".into()),
                },
            ],
        );
        let doc = parse_ok(&svg);
        let t = texts(&doc);
        assert!(t.iter().any(|s| s == "start <latency> & more"), "{t:?}");
        assert!(
            t.iter().any(|s| s.contains("FAILED: shim said <no>")),
            "{t:?}"
        );
        assert!(t.iter().any(|s| s == "p50 165"), "{t:?}");
        assert_eq!(
            doc.descendants().filter(|n| n.has_tag_name("rect")).count(),
            2
        );
    }

    #[test]
    fn bar_chart_is_well_formed_with_values() {
        let svg = bar_chart(
            "memory per pod",
            &["machine".to_string()],
            "MiB PSS",
            &[
                BarGroup {
                    label: "N=1".into(),
                    bars: vec![
                        Bar {
                            series: "runc".into(),
                            value: Some(9.5),
                            note: None,
                        },
                        Bar {
                            series: "vessel".into(),
                            value: Some(140.0),
                            note: None,
                        },
                    ],
                },
                BarGroup {
                    label: "N=10".into(),
                    bars: vec![Bar {
                        series: "vessel".into(),
                        value: None,
                        note: Some("FAILED".into()),
                    }],
                },
            ],
        );
        let doc = parse_ok(&svg);
        let t = texts(&doc);
        for want in ["9.50", "140", "FAILED", "N=10"] {
            assert!(t.iter().any(|s| s == want), "{want} missing in {t:?}");
        }
        // 2 value bars + the background.
        assert_eq!(
            doc.descendants().filter(|n| n.has_tag_name("rect")).count(),
            3
        );
    }

    #[test]
    fn empty_charts_are_still_valid() {
        parse_ok(&box_chart("t", &[], "ms", &[]));
        parse_ok(&bar_chart("t", &[], "ms", &[]));
    }

    #[test]
    fn scales() {
        let lin = Scale::covering(&[150.0, 400.0], false);
        assert!(!lin.log);
        assert!(lin.lo <= 150.0 && lin.hi >= 400.0, "{lin:?}");
        assert!(lin.y(400.0) < lin.y(150.0)); // higher value, higher on the page
        let log = Scale::covering(&[0.15, 60_000.0], false);
        assert!(log.log);
        assert_eq!((log.lo, log.hi), (0.1, 100_000.0));
        assert_eq!(log.ticks().len(), 7);
        assert!((log.y(100_000.0) - TOP).abs() < 1e-9);
        let bars = Scale::covering(&[5.0, 9.0], true);
        assert_eq!(bars.lo, 0.0);
        assert!(bars.ticks().windows(2).all(|w| w[1] > w[0]));
        assert_eq!(
            Scale::covering(&[], true),
            Scale {
                lo: 0.0,
                hi: 1.0,
                log: false
            }
        );
    }

    #[test]
    fn nice_steps_and_numbers() {
        assert_eq!(nice_step(0.7), 1.0);
        assert_eq!(nice_step(1.3), 2.0);
        assert_eq!(nice_step(30.0), 50.0);
        assert_eq!(nice_step(100.0), 100.0);
        assert_eq!(fmt_num(1234.5), "1234");
        assert_eq!(fmt_num(12.345), "12.3");
        assert_eq!(fmt_num(0.1234), "0.123");
        assert_eq!(fmt_num(f64::NAN), "-");
    }

    #[test]
    fn wrapping() {
        assert_eq!(wrap("aa bb cc", 5), ["aa bb", "cc"]);
        assert_eq!(wrap("abcdefgh", 3), ["abc", "def", "gh"]);
        assert_eq!(wrap("x abcdefgh", 4), ["x", "abcd", "efgh"]);
        assert!(wrap("", 5).is_empty());
        let lines = note_lines(&"word ".repeat(200), 100.0, 10, 3);
        assert_eq!(lines.len(), 3);
        assert!(lines[2].ends_with('…'));
    }

    #[test]
    fn escaping() {
        assert_eq!(escape("a<b>&\"c'"), "a&lt;b&gt;&amp;&quot;c&apos;");
        assert_eq!(escape("x\u{7}y"), "x y");
    }
}
