//! The report's charts, SVG by plotters: latency against offered rate with the knee marked, and
//! the soak's throughput, depths and RSS over time. Each names the run it came from.

use std::path::Path;

use anyhow::Context as _;
use plotters::prelude::*;

use crate::results::{LongJobs, Pipeline, SoakSample};

const SIZE: (u32, u32) = (900, 520);

/// A line of the soak chart: its label, colour and the value it reads off each sample.
type Line<T> = (&'static str, RGBColor, fn(&SoakSample) -> T);

/// A chart on the SVG backend, over any coordinates.
type Chart<'a, CT> = ChartContext<'a, SVGBackend<'a>, CT>;

/// Draws `points` as a 2-px line in `color`, labelled `label` in the legend.
fn line<'a, CT>(
    chart: &mut Chart<'a, CT>,
    label: &str,
    color: RGBColor,
    points: impl IntoIterator<Item = CT::From>,
) -> anyhow::Result<()>
where
    CT: CoordTranslate,
    CT::From: Clone + 'static,
{
    chart
        .draw_series(LineSeries::new(points, color.stroke_width(2)))?
        .label(label)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
    Ok(())
}

/// The legend, at `position`, on a light box.
fn legend<'a, CT: CoordTranslate>(
    chart: &mut Chart<'a, CT>,
    position: SeriesLabelPosition,
) -> anyhow::Result<()> {
    chart
        .configure_series_labels()
        .position(position)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .draw()?;
    Ok(())
}

/// Writes the charts of `p` and `long` into `dir` (the report's folder); `run` names the run in
/// each title.
pub fn write(dir: &Path, run: &str, p: &Pipeline, long: &LongJobs) -> anyhow::Result<()> {
    if !long.rss.is_empty() {
        let path = dir.join(super::pipeline::LONG_CHART);
        long_rss(&path, run, long).with_context(|| path.display().to_string())?;
    }
    if !p.steps.is_empty() {
        let path = dir.join(super::pipeline::LATENCY_CHART);
        latency(&path, run, p).with_context(|| path.display().to_string())?;
    }
    if !p.soak.is_empty() {
        let path = dir.join(super::pipeline::SOAK_CHART);
        soak(&path, run, p).with_context(|| path.display().to_string())?;
    }
    Ok(())
}

fn latency(path: &Path, run: &str, p: &Pipeline) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let x_max = p.steps.iter().map(|s| s.offered).fold(0.0, f64::max) * 1.05;
    let finite = |v: f64| if v.is_finite() { v } else { 0.0 };
    let y_max = p
        .steps
        .iter()
        .flat_map(|s| [s.accept_p99_ms, finite(s.e2e_p99_ms)])
        .fold(1.0, f64::max)
        * 1.1;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("latency against offered rate (api + worker), run {run}"),
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..x_max, (0.5..y_max).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("offered jobs/s")
        .y_desc("ms (log scale)")
        .draw()?;
    let series = [
        ("accept p50", RGBColor(90, 160, 220), 0),
        ("accept p99", RGBColor(20, 80, 180), 1),
        ("accept → succeeded p50", RGBColor(240, 160, 80), 2),
        ("accept → succeeded p99", RGBColor(200, 60, 20), 3),
    ];
    for (label, color, which) in series {
        let points: Vec<(f64, f64)> = p
            .steps
            .iter()
            .map(|s| {
                let v = [s.accept_p50_ms, s.accept_p99_ms, s.e2e_p50_ms, s.e2e_p99_ms][which];
                (s.offered, v)
            })
            .filter(|(_, v)| v.is_finite() && *v > 0.0)
            .collect();
        line(&mut chart, label, color, points.clone())?;
        chart.draw_series(
            points
                .into_iter()
                .map(|pt| Circle::new(pt, 3, color.filled())),
        )?;
    }
    if let Some(knee) = p.knee {
        chart
            .draw_series(LineSeries::new(
                vec![(knee, 0.5), (knee, y_max)],
                BLACK.stroke_width(1),
            ))?
            .label(format!("knee {knee:.0}/s"))
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], BLACK));
    }
    legend(&mut chart, SeriesLabelPosition::UpperLeft)?;
    root.present()?;
    Ok(())
}

fn soak(path: &Path, run: &str, p: &Pipeline) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(SIZE.1 / 2);
    let x_max = p.soak.iter().map(|s| s.at).fold(1.0, f64::max);
    let counts_max = p
        .soak
        .iter()
        .flat_map(|s| [s.finished, s.queue_ready as f64, s.outbox as f64])
        .fold(1.0, f64::max)
        * 1.1;
    let mut upper = ChartBuilder::on(&top)
        .caption(
            format!(
                "soak at {:.0}/s offered: throughput and depths, run {run}",
                p.soak_rate
            ),
            ("sans-serif", 16),
        )
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..x_max, 0.0..counts_max)?;
    upper
        .configure_mesh()
        .y_desc("jobs/s, messages, rows")
        .draw()?;
    let lines: [Line<f64>; 3] = [
        ("finished/s", RGBColor(20, 80, 180), |s| s.finished),
        ("queue ready", RGBColor(200, 60, 20), |s| {
            s.queue_ready as f64
        }),
        ("outbox rows", RGBColor(60, 150, 60), |s| s.outbox as f64),
    ];
    for (label, color, f) in lines {
        line(
            &mut upper,
            label,
            color,
            p.soak.iter().map(|s| (s.at, f(s))),
        )?;
    }
    legend(&mut upper, SeriesLabelPosition::LowerRight)?;
    let rss_max = p
        .soak
        .iter()
        .flat_map(|s| [s.api_rss_kib, s.worker_rss_kib])
        .fold(1, u64::max) as f64
        / 1024.0
        * 1.2;
    let mut lower = ChartBuilder::on(&bottom)
        .caption("RSS", ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..x_max, 0.0..rss_max)?;
    lower
        .configure_mesh()
        .x_desc("seconds into the soak")
        .y_desc("MiB")
        .draw()?;
    let rss: [Line<u64>; 2] = [
        ("api", RGBColor(20, 80, 180), |s| s.api_rss_kib),
        ("worker", RGBColor(200, 60, 20), |s| s.worker_rss_kib),
    ];
    for (label, color, f) in rss {
        line(
            &mut lower,
            label,
            color,
            p.soak.iter().map(|s| (s.at, f(s) as f64 / 1024.0)),
        )?;
    }
    legend(&mut lower, SeriesLabelPosition::LowerRight)?;
    root.present()?;
    Ok(())
}

fn long_rss(path: &Path, run: &str, l: &LongJobs) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let x_max = l.rss.iter().map(|s| s.0).fold(1.0, f64::max);
    let y_max = l.rss.iter().map(|s| s.1).fold(1, u64::max) as f64 / 1024.0 * 1.2;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "worker RSS, {} jobs of {:.0} s in flight, run {run}",
                l.jobs, l.job_seconds
            ),
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..x_max, 0.0..y_max)?;
    chart
        .configure_mesh()
        .x_desc("seconds since the first submit")
        .y_desc("MiB")
        .draw()?;
    let color = RGBColor(200, 60, 20);
    let points = l.rss.iter().map(|(t, k)| (*t, *k as f64 / 1024.0));
    line(&mut chart, "worker VmRSS", color, points)?;
    legend(&mut chart, SeriesLabelPosition::LowerRight)?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::PipelineStep;

    #[test]
    fn each_chart_is_an_svg_naming_its_run_with_the_knee_marked() {
        let step = |offered: f64, p99: f64| PipelineStep {
            offered,
            accepted: offered,
            finished: offered,
            accept_p50_ms: p99 / 3.0,
            accept_p99_ms: p99,
            e2e_p50_ms: 2.0 * p99,
            e2e_p99_ms: 5.0 * p99,
            ..Default::default()
        };
        let p = Pipeline {
            steps: vec![step(500.0, 4.0), step(1000.0, 8.0), step(1500.0, 40.0)],
            knee: Some(1000.0),
            soak_rate: 700.0,
            soak: (0..5)
                .map(|i| SoakSample {
                    at: f64::from(i) * 10.0,
                    finished: 700.0,
                    queue_ready: 3,
                    outbox: 1,
                    api_rss_kib: 30_000,
                    worker_rss_kib: 12_000,
                })
                .collect(),
            ..Default::default()
        };
        let dir = std::env::temp_dir().join(format!("jobstack-charts-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let long = LongJobs {
            jobs: 100,
            job_seconds: 60.0,
            rss: vec![(0.0, 9000), (1.0, 20_000), (2.0, 21_000)],
            ..Default::default()
        };
        write(&dir, "r-test", &p, &long).unwrap();
        let rss = std::fs::read_to_string(dir.join(super::super::pipeline::LONG_CHART)).unwrap();
        assert!(rss.contains("run r-test") && rss.contains("100 jobs"));
        let latency =
            std::fs::read_to_string(dir.join(super::super::pipeline::LATENCY_CHART)).unwrap();
        assert!(latency.starts_with("<svg"), "{}", &latency[..40]);
        assert!(latency.contains("run r-test"));
        assert!(latency.contains("knee 1000/s"));
        let soak = std::fs::read_to_string(dir.join(super::super::pipeline::SOAK_CHART)).unwrap();
        assert!(soak.contains("run r-test") && soak.contains("RSS"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
