//! The PNG charts of the results, drawn in-process with `plotters` and a font compiled into the
//! binary (DejaVu Sans), so they render the same on a machine without any system font.

use std::{path::Path, sync::Once};

use anyhow::{Result, anyhow};
use plotters::{
    coord::{Shift, ranged1d::SegmentValue},
    prelude::*,
    style::text_anchor::{HPos, Pos, VPos},
};

const FONT: &str = "sans-serif";

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular()).is_err()
        {
            eprintln!("bench: the embedded font did not load; charts will have no text");
        }
    });
}

/// One panel of a chart.
#[derive(Debug)]
pub(crate) enum Panel {
    /// One bar per name.
    Bars {
        title: String,
        y_label: String,
        items: Vec<(String, f64)>,
    },
    /// One line per series over a numeric x axis (log-scaled when `log_x`).
    Lines {
        title: String,
        x_label: String,
        y_label: String,
        log_x: bool,
        series: Vec<(String, Vec<(f64, f64)>)>,
    },
}

/// Draws `panels` side by side into one PNG of `width` × 480 pixels per row (two per row).
pub(crate) fn draw(path: &Path, caption: &str, panels: &[Panel]) -> Result<()> {
    register_font();
    let cols = panels.len().clamp(1, 2);
    let rows = panels.len().div_ceil(2).max(1);
    let (w, h) = (640 * cols as u32, 60 + 440 * rows as u32);
    let root = BitMapBackend::new(path, (w, h)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let root = root
        .titled(caption, (FONT, 26).into_font())
        .map_err(|e| anyhow!("{e}"))?;
    let areas = root.split_evenly((rows, cols));
    for (panel, area) in panels.iter().zip(areas.iter()) {
        match panel {
            Panel::Bars {
                title,
                y_label,
                items,
            } => bars(area, title, y_label, items)?,
            Panel::Lines {
                title,
                x_label,
                y_label,
                log_x,
                series,
            } => lines(area, title, x_label, y_label, *log_x, series)?,
        }
    }
    root.present()
        .map_err(|e| anyhow!("writing {}: {e}", path.display()))?;
    Ok(())
}

fn bars(
    area: &DrawingArea<BitMapBackend<'_>, Shift>,
    title: &str,
    y_label: &str,
    items: &[(String, f64)],
) -> Result<()> {
    let items: Vec<&(String, f64)> = items.iter().filter(|(_, v)| v.is_finite()).collect();
    if items.is_empty() {
        return Ok(());
    }
    let max = items.iter().map(|(_, v)| *v).fold(0.0, f64::max).max(1e-9);
    let n = items.len() as i32;
    let mut chart = ChartBuilder::on(area)
        .caption(title, (FONT, 20).into_font())
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(72)
        .build_cartesian_2d((0..n - 1).into_segmented(), 0f64..max * 1.18)
        .map_err(|e| anyhow!("{e}"))?;
    let names: Vec<String> = items.iter().map(|(n, _)| n.clone()).collect();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(items.len())
        .y_desc(y_label)
        .x_label_style((FONT, 14).into_font())
        .y_label_style((FONT, 13).into_font())
        .x_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => names.get(*i as usize).cloned().unwrap_or_default(),
            _ => String::new(),
        })
        .y_label_formatter(&|v| short(*v))
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    chart
        .draw_series(items.iter().enumerate().map(|(i, (_, v))| {
            let i = i as i32;
            let mut bar = Rectangle::new(
                [
                    (SegmentValue::Exact(i), 0.0),
                    (SegmentValue::Exact(i + 1), *v),
                ],
                Palette99::pick(i as usize).mix(0.85).filled(),
            );
            bar.set_margin(0, 0, 10, 10);
            bar
        }))
        .map_err(|e| anyhow!("{e}"))?;
    chart
        .draw_series(items.iter().enumerate().map(|(i, (_, v))| {
            Text::new(
                short(*v),
                (SegmentValue::CenterOf(i as i32), *v + max * 0.06),
                TextStyle::from((FONT, 14).into_font()).pos(Pos::new(HPos::Center, VPos::Center)),
            )
        }))
        .map_err(|e| anyhow!("{e}"))?;
    Ok(())
}

fn lines(
    area: &DrawingArea<BitMapBackend<'_>, Shift>,
    title: &str,
    x_label: &str,
    y_label: &str,
    log_x: bool,
    series: &[(String, Vec<(f64, f64)>)],
) -> Result<()> {
    let points = series
        .iter()
        .flat_map(|(_, p)| p.iter())
        .filter(|(x, y)| x.is_finite() && y.is_finite());
    let (mut x0, mut x1, mut y1) = (f64::MAX, f64::MIN, 0f64);
    for (x, y) in points {
        x0 = x0.min(*x);
        x1 = x1.max(*x);
        y1 = y1.max(*y);
    }
    if x0 > x1 {
        return Ok(());
    }
    if x0 == x1 {
        x1 = x0 * 2.0 + 1.0;
    }
    let y_range = 0f64..y1.max(1e-9) * 1.15;
    let mut builder = ChartBuilder::on(area);
    builder
        .caption(title, (FONT, 20).into_font())
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(72);
    // The two axis kinds are different types, hence the duplicated body.
    macro_rules! finish {
        ($chart:expr) => {{
            let mut chart = $chart;
            chart
                .configure_mesh()
                .x_desc(x_label)
                .y_desc(y_label)
                .x_label_style((FONT, 13).into_font())
                .y_label_style((FONT, 13).into_font())
                .x_label_formatter(&|v| short(*v))
                .y_label_formatter(&|v| short(*v))
                .draw()
                .map_err(|e| anyhow!("{e}"))?;
            for (i, (name, pts)) in series.iter().enumerate() {
                let color = Palette99::pick(i);
                let pts: Vec<(f64, f64)> = pts
                    .iter()
                    .copied()
                    .filter(|(x, y)| x.is_finite() && y.is_finite())
                    .collect();
                chart
                    .draw_series(LineSeries::new(pts.clone(), color.stroke_width(3)))
                    .map_err(|e| anyhow!("{e}"))?
                    .label(name.clone())
                    .legend(move |(x, y)| {
                        PathElement::new(
                            vec![(x, y), (x + 20, y)],
                            Palette99::pick(i).stroke_width(3),
                        )
                    });
                chart
                    .draw_series(pts.iter().map(|p| Circle::new(*p, 4, color.filled())))
                    .map_err(|e| anyhow!("{e}"))?;
            }
            chart
                .configure_series_labels()
                .label_font((FONT, 14).into_font())
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .position(SeriesLabelPosition::UpperLeft)
                .draw()
                .map_err(|e| anyhow!("{e}"))?;
        }};
    }
    if log_x {
        finish!(
            builder
                .build_cartesian_2d((x0..x1).log_scale(), y_range)
                .map_err(|e| anyhow!("{e}"))?
        );
    } else {
        finish!(
            builder
                .build_cartesian_2d(x0..x1, y_range)
                .map_err(|e| anyhow!("{e}"))?
        );
    }
    Ok(())
}

/// 1234567 → "1.2M", 1500 → "1.5k", 2000 → "2k", 0.5 → "0.50": axis labels that stay short
/// and read alike along one axis.
pub(crate) fn short(v: f64) -> String {
    let a = v.abs();
    let one_decimal = |x: f64| {
        let text = format!("{x:.1}");
        text.strip_suffix(".0").map(str::to_owned).unwrap_or(text)
    };
    if a >= 1e6 {
        format!("{}M", one_decimal(v / 1e6))
    } else if a >= 1e3 {
        format!("{}k", one_decimal(v / 1e3))
    } else if a >= 10.0 || (v - v.round()).abs() < 1e-9 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::short;

    #[test]
    fn axis_labels_stay_short() {
        assert_eq!(short(0.0), "0");
        assert_eq!(short(5.0), "5");
        assert_eq!(short(0.25), "0.25");
        assert_eq!(short(1500.0), "1.5k");
        assert_eq!(short(2000.0), "2k");
        assert_eq!(short(135_000.0), "135k");
        assert_eq!(short(2_500_000.0), "2.5M");
    }
}
