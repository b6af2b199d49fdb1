//! The chart: one small bar chart per workload, one bar per engine (baselines in grey), each
//! bar labelled with its value. Text is drawn with a font shipped in a crate (Ubuntu Light from
//! `epaint_default_fonts`) through plotters' `ab_glyph` feature, so no system font library is
//! needed.

use std::path::Path;

use plotters::coord::Shift;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::{FontStyle, register_font};

use crate::report::{Report, fmt_value};
use crate::workload::{ROWS, is_size};

const FONT: &str = "sans-serif";

fn color(id: &str) -> RGBColor {
    match id {
        "logtree" => RGBColor(214, 39, 40),
        "redb" => RGBColor(31, 119, 180),
        "lmdb" => RGBColor(44, 160, 44),
        "fjall" => RGBColor(148, 103, 189),
        "jammdb" => RGBColor(140, 86, 75),
        "sled" => RGBColor(23, 190, 207),
        "btreemap" => RGBColor(170, 170, 170),
        _ => RGBColor(100, 100, 100),
    }
}

type Err = Box<dyn std::error::Error>;

pub fn draw(rep: &Report, path: &Path) -> Result<(), Err> {
    register_font(FONT, FontStyle::Normal, epaint_default_fonts::UBUNTU_LIGHT).map_err(|_| "bad font")?;
    let root = BitMapBackend::new(path, (1800, 1560)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, body) = root.split_vertically(90);
    let m = &rep.machine;
    top.draw(&Text::new(
        format!(
            "logtree and its peers: {} keys of 24 B with values of 150 B, durable commits",
            crate::report::thousands(rep.elements)
        ),
        (20, 14),
        (FONT, 30).into_font().color(&BLACK),
    ))?;
    top.draw(&Text::new(
        format!(
            "{}; logtree {}; {} of {} run(s); {} cores, {:.0} GiB; {}. Lower is better; (log) = log scale.",
            m.date, m.logtree, rep.stat, rep.runs, m.cpus, m.memory_gib, m.disk
        ),
        (20, 54),
        (FONT, 18).into_font().color(&RGBColor(60, 60, 60)),
    ))?;
    let panels = body.split_evenly((4, 4));
    for (i, p) in panels.iter().enumerate() {
        if i < ROWS.len() {
            panel(rep, i, p)?;
        } else if i == ROWS.len() {
            legend(rep, p)?;
        }
    }
    root.present()?;
    Ok(())
}

fn panel(rep: &Report, row: usize, area: &DrawingArea<BitMapBackend, Shift>) -> Result<(), Err> {
    let n = rep.columns.len();
    let vals: Vec<Option<f64>> = (0..n).map(|c| rep.value(c, row)).collect();
    let present: Vec<f64> = vals.iter().flatten().copied().filter(|v| *v > 0.0).collect();
    let max = present.iter().copied().fold(0.0, f64::max).max(1e-3);
    let min = present.iter().copied().fold(f64::INFINITY, f64::min);
    let log = present.len() > 1 && max / min > 20.0;
    let unit = if is_size(ROWS[row].0) { "MiB" } else { "ms" };
    let mut label = rep.label(row);
    if let Some(i) = label.rfind(" (") {
        label.truncate(i);
    }
    let caption = format!("{label} ({unit}{})", if log { ", log" } else { "" });
    let builder = |area| {
        let mut b = ChartBuilder::on(area);
        b.caption(caption.clone(), (FONT, 17)).margin(8).x_label_area_size(4).y_label_area_size(52);
        b
    };
    if log {
        let floor = min / 2.0;
        let mut chart = builder(area).build_cartesian_2d(0f64..n as f64, (floor..max * 3.0).log_scale())?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(0)
            .y_labels(6)
            .y_label_formatter(&|v| fmt_value(*v))
            .y_label_style((FONT, 12))
            .light_line_style(WHITE)
            .draw()?;
        bars(rep, row, &vals, floor, floor, &mut chart)?;
    } else {
        let mut chart = builder(area).build_cartesian_2d(0f64..n as f64, 0f64..max * 1.18)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(0)
            .y_labels(6)
            .y_label_formatter(&|v| fmt_value(*v))
            .y_label_style((FONT, 12))
            .light_line_style(WHITE)
            .draw()?;
        bars(rep, row, &vals, 0.0, 0.0, &mut chart)?;
    }
    Ok(())
}

/// Draws the bars from `floor` (0, or below the smallest value on a log scale) up, with labels.
fn bars<Y: Ranged<ValueType = f64>>(
    rep: &Report,
    row: usize,
    vals: &[Option<f64>],
    floor: f64,
    least: f64,
    chart: &mut ChartContext<BitMapBackend, Cartesian2d<RangedCoordf64, Y>>,
) -> Result<(), Err> {
    let best = rep.best_engine(row, None);
    for (c, v) in vals.iter().enumerate() {
        let (x0, x1, xm) = (c as f64 + 0.12, c as f64 + 0.88, c as f64 + 0.5);
        match v {
            Some(v) => {
                let top = v.max(least);
                chart.draw_series(std::iter::once(Rectangle::new(
                    [(x0, floor), (x1, top)],
                    color(rep.columns[c].0).filled(),
                )))?;
                let style = TextStyle::from((FONT, if best == Some(c) { 16 } else { 13 }).into_font())
                    .pos(Pos::new(HPos::Center, VPos::Bottom))
                    .color(&BLACK);
                chart.draw_series(std::iter::once(Text::new(fmt_value(*v), (xm, top), style)))?;
            }
            None => {
                let style = TextStyle::from((FONT, 12).into_font())
                    .pos(Pos::new(HPos::Center, VPos::Bottom))
                    .color(&RGBColor(150, 150, 150));
                chart.draw_series(std::iter::once(Text::new("n/a", (xm, floor), style)))?;
            }
        }
    }
    Ok(())
}

fn legend(rep: &Report, area: &DrawingArea<BitMapBackend, Shift>) -> Result<(), Err> {
    area.draw(&Text::new("bars, left to right:", (30, 20), (FONT, 18).into_font().color(&BLACK)))?;
    for (i, (id, name)) in rep.columns.iter().enumerate() {
        let y = 52 + i as i32 * 34;
        area.draw(&Rectangle::new([(30, y), (58, y + 22)], color(id).filled()))?;
        area.draw(&Text::new(name.to_string(), (70, y + 1), (FONT, 19).into_font().color(&BLACK)))?;
    }
    let y = 52 + rep.columns.len() as i32 * 34 + 6;
    area.draw(&Text::new("largest label: best engine", (30, y), (FONT, 15).into_font().color(&RGBColor(80, 80, 80))))?;
    Ok(())
}
