//! Plots as plain SVG text: scatter plots (linear or log axes, labelled points, a connecting line
//! for a front) and heat maps. No fonts or libraries are needed; the browser renders the text.

use std::fmt::Write;

/// One set of points.
#[derive(Clone, Debug)]
pub struct Series {
    pub name: String,
    pub color: String,
    /// `(x, y, label)`.
    pub points: Vec<(f64, f64, String)>,
    /// Join the points (sorted by x) with a line.
    pub line: bool,
    /// Draw the points (a line-only series sets this false).
    pub markers: bool,
}

/// Axis settings.
#[derive(Clone, Debug)]
pub struct Axis {
    pub label: String,
    pub log: bool,
}

pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn nice_ticks(lo: f64, hi: f64, log: bool) -> Vec<f64> {
    if log {
        let (a, b) = (lo.log10().floor() as i32, hi.log10().ceil() as i32);
        let mut t = Vec::new();
        for e in a..=b {
            for m in [1.0, 2.0, 5.0] {
                let v = m * 10f64.powi(e);
                if v >= lo * 0.999 && v <= hi * 1.001 {
                    t.push(v);
                }
            }
        }
        if t.len() < 2 {
            t = vec![lo, hi];
        }
        return t;
    }
    let span = (hi - lo).max(1e-300);
    let raw = span / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0].iter().map(|m| m * mag).find(|s| span / s <= 6.0).unwrap_or(10.0 * mag);
    let mut v = (lo / step).ceil() * step;
    let mut t = Vec::new();
    while v <= hi + step * 1e-9 {
        t.push(v);
        v += step;
    }
    t
}

fn fmt_tick(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if !(1e-3..1e5).contains(&a) {
        format!("{v:.0e}")
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 1.0 {
        format!("{}", (v * 100.0).round() / 100.0)
    } else {
        let s = format!("{v:.4}");
        s.trim_end_matches('0').to_string()
    }
}

/// A scatter plot.
pub fn scatter(title: &str, x: &Axis, y: &Axis, series: &[Series], width: f64, height: f64) -> String {
    let (ml, mr, mt, mb) = (78.0, 160.0, 36.0, 52.0);
    let pts: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| (p.0, p.1)))
        .filter(|p| p.0.is_finite() && p.1.is_finite() && (!x.log || p.0 > 0.0) && (!y.log || p.1 > 0.0))
        .collect();
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = write!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = write!(svg, r#"<text x="{}" y="20" font-size="15" font-weight="bold">{}</text>"#, ml, esc(title));
    if pts.is_empty() {
        let _ = write!(svg, r#"<text x="{ml}" y="{}">no data</text></svg>"#, height / 2.0);
        return svg;
    }
    let tr = |v: f64, log: bool| if log { v.log10() } else { v };
    let (mut x0, mut x1) = pts.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |a, p| (a.0.min(p.0), a.1.max(p.0)));
    let (mut y0, mut y1) = pts.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |a, p| (a.0.min(p.1), a.1.max(p.1)));
    let pad = |lo: &mut f64, hi: &mut f64, log: bool| {
        if log {
            *lo /= 1.25;
            *hi *= 1.25;
        } else {
            let d = (*hi - *lo).max(hi.abs() * 0.05).max(1e-12);
            *lo -= d * 0.08;
            *hi += d * 0.08;
        }
    };
    pad(&mut x0, &mut x1, x.log);
    pad(&mut y0, &mut y1, y.log);
    let (pw, ph) = (width - ml - mr, height - mt - mb);
    let sx = |v: f64| ml + (tr(v, x.log) - tr(x0, x.log)) / (tr(x1, x.log) - tr(x0, x.log)) * pw;
    let sy = |v: f64| mt + ph - (tr(v, y.log) - tr(y0, y.log)) / (tr(y1, y.log) - tr(y0, y.log)) * ph;
    let _ = write!(svg, r##"<rect x="{ml}" y="{mt}" width="{pw}" height="{ph}" fill="#fafafa" stroke="#444"/>"##);
    for t in nice_ticks(x0, x1, x.log) {
        let px = sx(t);
        let _ = write!(
            svg,
            r##"<line x1="{px:.1}" y1="{mt}" x2="{px:.1}" y2="{}" stroke="#ddd"/><text x="{px:.1}" y="{}" text-anchor="middle">{}</text>"##,
            mt + ph,
            mt + ph + 16.0,
            fmt_tick(t)
        );
    }
    for t in nice_ticks(y0, y1, y.log) {
        let py = sy(t);
        let _ = write!(
            svg,
            r##"<line x1="{ml}" y1="{py:.1}" x2="{}" y2="{py:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            ml + pw,
            ml - 6.0,
            py + 4.0,
            fmt_tick(t)
        );
    }
    let _ = write!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
        ml + pw / 2.0,
        height - 12.0,
        esc(&format!("{}{}", x.label, if x.log { " (log)" } else { "" }))
    );
    let _ = write!(
        svg,
        r#"<text transform="translate(16,{}) rotate(-90)" text-anchor="middle">{}</text>"#,
        mt + ph / 2.0,
        esc(&format!("{}{}", y.label, if y.log { " (log)" } else { "" }))
    );
    let ok =
        |p: &(f64, f64, String)| p.0.is_finite() && p.1.is_finite() && (!x.log || p.0 > 0.0) && (!y.log || p.1 > 0.0);
    for (si, s) in series.iter().enumerate() {
        let mut p: Vec<&(f64, f64, String)> = s.points.iter().filter(|p| ok(p)).collect();
        if s.line && p.len() > 1 {
            p.sort_by(|a, b| a.0.total_cmp(&b.0));
            let d: Vec<String> = p.iter().map(|q| format!("{:.1},{:.1}", sx(q.0), sy(q.1))).collect();
            let _ = write!(
                svg,
                r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="1.5" stroke-dasharray="5,3"/>"#,
                d.join(" "),
                s.color
            );
        }
        if s.markers {
            for q in &p {
                let _ = write!(
                    svg,
                    r##"<circle cx="{:.1}" cy="{:.1}" r="5" fill="{}" stroke="#222" stroke-width="0.7"><title>{}</title></circle>"##,
                    sx(q.0),
                    sy(q.1),
                    s.color,
                    esc(&q.2)
                );
                if !q.2.is_empty() {
                    let _ = write!(
                        svg,
                        r##"<text x="{:.1}" y="{:.1}" font-size="10" fill="#333">{}</text>"##,
                        sx(q.0) + 7.0,
                        sy(q.1) - 5.0,
                        esc(&q.2)
                    );
                }
            }
        }
        let ly = mt + 10.0 + si as f64 * 18.0;
        let lx = ml + pw + 14.0;
        let _ = write!(
            svg,
            r##"<circle cx="{lx}" cy="{ly}" r="5" fill="{}" stroke="#222" stroke-width="0.7"/><text x="{}" y="{}">{}</text>"##,
            s.color,
            lx + 10.0,
            ly + 4.0,
            esc(&s.name)
        );
    }
    svg += "</svg>";
    svg
}

/// Colour for a value in `[0, 1]` (light yellow to dark red).
pub fn heat_color(t: f64) -> String {
    let t = t.clamp(0.0, 1.0);
    let stops = [(255.0, 255.0, 204.0), (253.0, 141.0, 60.0), (227.0, 26.0, 28.0), (128.0, 0.0, 38.0)];
    let f = t * (stops.len() - 1) as f64;
    let i = (f.floor() as usize).min(stops.len() - 2);
    let u = f - i as f64;
    let (a, b) = (stops[i], stops[i + 1]);
    format!(
        "rgb({},{},{})",
        (a.0 + (b.0 - a.0) * u) as u8,
        (a.1 + (b.1 - a.1) * u) as u8,
        (a.2 + (b.2 - a.2) * u) as u8
    )
}

/// A heat map: `values[row][col]`, coloured on a log scale between the smallest and largest
/// positive value; `text[row][col]` (when given) is written in the cell.
pub fn heatmap(
    title: &str,
    rows: &[String],
    cols: &[String],
    values: &[Vec<Option<f64>>],
    text: Option<&[Vec<String>]>,
    legend: &str,
) -> String {
    let (ml, mt, cw, ch) = (130.0, 44.0, 22.0f64.max(if text.is_some() { 38.0 } else { 0.0 }), 18.0);
    let width = ml + cw * cols.len() as f64 + 20.0;
    let height = mt + ch * rows.len() as f64 + 44.0;
    let pos: Vec<f64> = values.iter().flatten().flatten().copied().filter(|v| *v > 0.0 && v.is_finite()).collect();
    let lo = pos.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = pos.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let norm = |v: f64| {
        if v.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) || !lo.is_finite() || hi <= lo {
            0.0
        } else {
            (v.ln() - lo.ln()) / (hi.ln() - lo.ln())
        }
    };
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">"#
    );
    let _ = write!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = write!(svg, r#"<text x="4" y="18" font-size="14" font-weight="bold">{}</text>"#, esc(title));
    for (j, c) in cols.iter().enumerate() {
        let _ = write!(
            svg,
            r#"<text x="{:.1}" y="{}" text-anchor="middle" font-size="9">{}</text>"#,
            ml + cw * (j as f64 + 0.5),
            mt - 6.0,
            esc(c)
        );
    }
    for (i, r) in rows.iter().enumerate() {
        let y = mt + ch * i as f64;
        let _ = write!(svg, r#"<text x="{}" y="{:.1}" text-anchor="end">{}</text>"#, ml - 6.0, y + 13.0, esc(r));
        for (j, col) in cols.iter().enumerate() {
            let x = ml + cw * j as f64;
            let v = values.get(i).and_then(|row| row.get(j)).copied().flatten();
            let fill = match v {
                Some(v) => heat_color(norm(v)),
                None => "#eee".into(),
            };
            let tip = v.map(|v| format!("{r} / {col}: {v:.3e}")).unwrap_or_default();
            let _ = write!(
                svg,
                r##"<rect x="{x:.1}" y="{y:.1}" width="{cw}" height="{ch}" fill="{fill}" stroke="#fff"><title>{}</title></rect>"##,
                esc(&tip)
            );
            if let Some(t) = text.and_then(|t| t.get(i)).and_then(|r| r.get(j)) {
                let _ = write!(
                    svg,
                    r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="8">{}</text>"#,
                    x + cw / 2.0,
                    y + 12.0,
                    esc(t)
                );
            }
        }
    }
    let ly = mt + ch * rows.len() as f64 + 16.0;
    for k in 0..10 {
        let _ = write!(
            svg,
            r#"<rect x="{}" y="{ly}" width="14" height="10" fill="{}"/>"#,
            ml + k as f64 * 14.0,
            heat_color(k as f64 / 9.0)
        );
    }
    if lo.is_finite() {
        let _ = write!(
            svg,
            r#"<text x="{}" y="{}">{}: {lo:.2e} … {hi:.2e} (log scale)</text>"#,
            ml + 150.0,
            ly + 9.0,
            esc(legend)
        );
    }
    svg += "</svg>";
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plots_are_well_formed() {
        let s = Series {
            name: "a<b".into(),
            color: "#c00".into(),
            points: vec![(1e8, 0.01, "x".into()), (9e7, 0.02, "y".into()), (8e7, -1.0, "dropped on log".into())],
            line: true,
            markers: true,
        };
        let svg = scatter(
            "t",
            &Axis { label: "size".into(), log: false },
            &Axis { label: "kld".into(), log: true },
            &[s],
            600.0,
            400.0,
        );
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert_eq!(svg.matches("<circle").count(), 3); // two points + legend
        assert!(svg.contains("a&lt;b") && svg.contains("<polyline"));
        let h = heatmap("h", &["r".into()], &["c1".into(), "c2".into()], &[vec![Some(1.0), None]], None, "v");
        assert!(h.contains("#eee") && h.ends_with("</svg>"));
        assert_eq!(nice_ticks(0.0, 10.0, false).first(), Some(&0.0));
        assert!(nice_ticks(1e-3, 1e-1, true).contains(&0.01));
    }
}
