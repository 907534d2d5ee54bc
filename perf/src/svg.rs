//! Minimal SVG line charts for the report: axes with ticks, one polyline (or staircase) per
//! series, a legend. Hand-written because the report needs nothing more (no fonts to load,
//! nothing to rasterise; any browser shows the result).

use std::fmt::Write;

pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    /// Draw as a staircase (value holds until the next point).
    pub step: bool,
}

pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
    /// Logarithmic x axis (for latency CDFs over decades).
    pub log_x: bool,
    /// Vertical marker lines (e.g. commits), drawn faintly.
    pub markers: Vec<f64>,
    /// The y axis spans the data only (else it starts at 0).
    pub fit_y: bool,
}

const W: f64 = 760.0;
const H: f64 = 440.0;
const L: f64 = 80.0;
const R: f64 = 20.0;
const T: f64 = 40.0;
const B: f64 = 60.0;
const COLOURS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn nice(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if a >= 1e9 {
        format!("{:.3}G", v / 1e9)
    } else if a >= 1e6 {
        format!("{:.3}M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.1}k", v / 1e3)
    } else if a >= 10.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

impl Chart {
    pub fn render(&self) -> String {
        let pts = self.series.iter().flat_map(|s| s.points.iter());
        let (mut x0, mut x1, mut y1, mut ymin) = (f64::MAX, f64::MIN, f64::MIN, f64::MAX);
        for &(x, y) in pts {
            if self.log_x && x <= 0.0 {
                continue;
            }
            x0 = x0.min(x);
            x1 = x1.max(x);
            y1 = y1.max(y);
            ymin = ymin.min(y);
        }
        if x0 > x1 {
            (x0, x1, y1) = (0.0, 1.0, 1.0);
        }
        let y0 = if self.fit_y && ymin < y1 { ymin } else { 0.0 };
        if y1 <= y0 {
            y1 = y0 + 1.0;
        }
        y1 += (y1 - y0) * 0.05;
        let fx = |x: f64| -> f64 {
            let (a, b, v) = if self.log_x {
                (
                    x0.max(1e-9).log10(),
                    x1.max(1e-9).log10(),
                    x.max(1e-9).log10(),
                )
            } else {
                (x0, x1, x)
            };
            let span = if b > a { b - a } else { 1.0 };
            L + (v - a) / span * (W - L - R)
        };
        let fy = |y: f64| H - B - (y - y0) / (y1 - y0) * (H - T - B);
        let mut s = String::new();
        let _ = write!(
            s,
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" font-family=\"sans-serif\" font-size=\"12\">\
             <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\
             <text x=\"{}\" y=\"22\" text-anchor=\"middle\" font-size=\"15\">{}</text>",
            W / 2.0,
            esc(&self.title)
        );
        // Axes and ticks.
        let _ = write!(
            s,
            "<line x1=\"{L}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/><line x1=\"{L}\" y1=\"{T}\" x2=\"{L}\" y2=\"{}\" stroke=\"black\"/>",
            H - B,
            W - R,
            H - B,
            H - B
        );
        for i in 0..=5 {
            let y = y0 + (y1 - y0) * f64::from(i) / 5.0;
            let (yy, xr, xt, yt, label) = (fy(y), W - R, L - 6.0, fy(y) + 4.0, nice(y));
            let _ = write!(
                s,
                "<line x1=\"{L}\" y1=\"{yy}\" x2=\"{xr}\" y2=\"{yy}\" stroke=\"#ddd\"/><text x=\"{xt}\" y=\"{yt}\" text-anchor=\"end\">{label}</text>"
            );
            let x = if self.log_x {
                10f64.powf(
                    x0.max(1e-9).log10()
                        + (x1.max(1e-9).log10() - x0.max(1e-9).log10()) * f64::from(i) / 5.0,
                )
            } else {
                x0 + (x1 - x0) * f64::from(i) / 5.0
            };
            let _ = write!(
                s,
                "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
                fx(x),
                H - B + 18.0,
                nice(x)
            );
        }
        let _ = write!(
            s,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>\
             <text x=\"18\" y=\"{}\" text-anchor=\"middle\" transform=\"rotate(-90 18 {})\">{}</text>",
            (L + W - R) / 2.0,
            H - 18.0,
            esc(&self.x_label),
            (T + H - B) / 2.0,
            (T + H - B) / 2.0,
            esc(&self.y_label)
        );
        for &m in &self.markers {
            if m >= x0 && m <= x1 {
                let _ = write!(
                    s,
                    "<line x1=\"{0}\" y1=\"{T}\" x2=\"{0}\" y2=\"{1}\" stroke=\"#bbb\" stroke-dasharray=\"3,3\"/>",
                    fx(m),
                    H - B
                );
            }
        }
        for (i, ser) in self.series.iter().enumerate() {
            let c = COLOURS[i % COLOURS.len()];
            let mut d = String::new();
            let mut prev: Option<(f64, f64)> = None;
            for &(x, y) in &ser.points {
                if self.log_x && x <= 0.0 {
                    continue;
                }
                if let (true, Some((_, py))) = (ser.step, prev) {
                    let _ = write!(d, "{:.1},{:.1} ", fx(x), fy(py));
                }
                let _ = write!(d, "{:.1},{:.1} ", fx(x), fy(y));
                prev = Some((x, y));
            }
            let _ = write!(
                s,
                "<polyline fill=\"none\" stroke=\"{c}\" stroke-width=\"2\" points=\"{d}\"/>"
            );
            if ser.points.len() <= 12 {
                for &(x, y) in &ser.points {
                    if self.log_x && x <= 0.0 {
                        continue;
                    }
                    let _ = write!(
                        s,
                        "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{c}\"/>",
                        fx(x),
                        fy(y)
                    );
                }
            }
            let ly = T + 8.0 + 16.0 * i as f64;
            let _ = write!(
                s,
                "<rect x=\"{}\" y=\"{}\" width=\"14\" height=\"4\" fill=\"{c}\"/><text x=\"{}\" y=\"{}\">{}</text>",
                L + 12.0,
                ly - 4.0,
                L + 32.0,
                ly + 2.0,
                esc(&ser.name)
            );
        }
        s.push_str("</svg>\n");
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_series_and_escapes_text() {
        let c = Chart {
            title: "a <b> & c".into(),
            x_label: "x".into(),
            y_label: "y".into(),
            series: vec![
                Series {
                    name: "one".into(),
                    points: vec![(0.0, 1.0), (1.0, 2.0)],
                    step: false,
                },
                Series {
                    name: "two".into(),
                    points: vec![(0.0, 0.0), (1.0, 3.0)],
                    step: true,
                },
            ],
            log_x: false,
            markers: vec![0.5],
            fit_y: false,
        };
        let s = c.render();
        assert!(s.starts_with("<svg") && s.ends_with("</svg>\n"));
        assert_eq!(s.matches("<polyline").count(), 2);
        assert!(s.contains("a &lt;b&gt; &amp; c"));
        // The staircase has one extra point per step.
        let step = s.split("<polyline").nth(2).unwrap();
        let pts = step
            .split("points=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        assert_eq!(pts.split_whitespace().count(), 3);
    }
}
