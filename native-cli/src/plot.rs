//! `resnet-native plot`: training (dashed) and test (solid) error against
//! iterations for several runs on one chart, like the paper's Figure 6.

use anyhow::{Context as _, bail};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::{Path, PathBuf};

/// One run's curves, in percent error against iterations.
#[derive(Clone, Debug, PartialEq)]
pub struct Curves {
    pub label: String,
    pub train: Vec<(f64, f64)>,
    pub test: Vec<(f64, f64)>,
}

/// Reads `<run>/metrics.jsonl` (or a .jsonl file given directly). Training
/// error is smoothed with a running mean over `smooth` logged points: it is
/// measured on single batches and would otherwise hide the trend.
pub fn read_run(path: &Path, smooth: usize) -> anyhow::Result<Curves> {
    let file = if path.is_dir() {
        path.join("metrics.jsonl")
    } else {
        path.to_path_buf()
    };
    let text = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    let mut raw_train = Vec::new();
    let mut test = Vec::new();
    for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("{}:{}: not JSON", file.display(), n + 1))?;
        let iter = v["iter"]
            .as_f64()
            .with_context(|| format!("{}:{}: no \"iter\"", file.display(), n + 1))?;
        if let Some(e) = v["train_error"].as_f64() {
            raw_train.push((iter, 100.0 * e));
        }
        if let Some(e) = v["test_error"].as_f64() {
            test.push((iter, 100.0 * e));
        }
    }
    if raw_train.is_empty() && test.is_empty() {
        bail!("{} has no train_error or test_error entries", file.display());
    }
    let window = smooth.max(1);
    let train = (0..raw_train.len())
        .map(|i| {
            let lo = i.saturating_sub(window - 1);
            let mean = raw_train[lo..=i].iter().map(|p| p.1).sum::<f64>() / (i + 1 - lo) as f64;
            (raw_train[i].0, mean)
        })
        .collect();
    let dir = if path.is_dir() {
        path
    } else {
        path.parent().unwrap_or(path)
    };
    let label = dir
        .file_name()
        .map_or_else(|| dir.display().to_string(), |n| n.to_string_lossy().into_owned());
    Ok(Curves { label, train, test })
}

static FONT: &[u8] = include_bytes!("../assets/DejaVuSansMono.ttf");

/// Draws the runs to `png` and, if given, `svg`.
pub fn render(runs: &[Curves], title: &str, png: &Path, svg: Option<&PathBuf>) -> anyhow::Result<()> {
    // Registering twice (several plots in one process) is harmless.
    plotters::style::register_font("sans-serif", FontStyle::Normal, FONT).map_err(|_| anyhow::anyhow!("bad font"))?;
    let size = (960, 600);
    {
        let root = BitMapBackend::new(png, size).into_drawing_area();
        draw(&root, runs, title)?;
        root.present().with_context(|| format!("writing {}", png.display()))?;
    }
    if let Some(svg) = svg {
        let root = SVGBackend::new(svg, size).into_drawing_area();
        draw(&root, runs, title)?;
        root.present().with_context(|| format!("writing {}", svg.display()))?;
    }
    Ok(())
}

fn draw<B: DrawingBackend>(root: &DrawingArea<B, Shift>, runs: &[Curves], title: &str) -> anyhow::Result<()>
where
    B::ErrorType: 'static,
{
    let points = || runs.iter().flat_map(|r| r.train.iter().chain(&r.test));
    let max_iter = points().map(|p| p.0).fold(1.0, f64::max);
    let max_error = points().map(|p| p.1).fold(1.0, f64::max).min(100.0);
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let mut chart = ChartBuilder::on(root)
        .caption(title, ("sans-serif", 24))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(56)
        .build_cartesian_2d(0.0..max_iter, 0.0..max_error * 1.05)
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    chart
        .configure_mesh()
        .x_desc("iterations")
        .y_desc("error (%)")
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    for (i, run) in runs.iter().enumerate() {
        let colour = Palette99::pick(i).to_rgba();
        chart
            .draw_series(DashedLineSeries::new(
                run.train.iter().copied(),
                6,
                4,
                colour.stroke_width(1),
            ))
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        chart
            .draw_series(LineSeries::new(run.test.iter().copied(), colour.stroke_width(3)))
            .map_err(|e| anyhow::anyhow!("{e:?}"))?
            .label(format!("{} (dashed: train, bold: test)", run.label))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], colour.stroke_width(3)));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_metrics(dir: &Path, lines: &[&str]) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("metrics.jsonl"), lines.join("\n")).unwrap();
    }

    #[test]
    fn reads_metrics_and_smooths_training_error() {
        let tmp = tempfile::tempdir().unwrap();
        let run = tmp.path().join("resnet20");
        write_metrics(
            &run,
            &[
                r#"{"iter":10,"train_error":0.5,"train_loss":1.0}"#,
                r#"{"iter":20,"train_error":0.3,"train_loss":0.8}"#,
                r#"{"iter":20,"test_error":0.25,"test_loss":0.7}"#,
            ],
        );
        let curves = read_run(&run, 2).unwrap();
        assert_eq!(curves.label, "resnet20");
        assert_eq!(curves.train, vec![(10.0, 50.0), (20.0, 40.0)]);
        assert_eq!(curves.test, vec![(20.0, 25.0)]);
        write_metrics(&tmp.path().join("bad"), &["{\"iter\": 1}", "not json"]);
        let err = read_run(&tmp.path().join("bad"), 1).unwrap_err().to_string();
        assert!(err.contains(":2: not JSON"), "{err}");
    }

    #[test]
    fn renders_png_and_svg_with_every_run() {
        let tmp = tempfile::tempdir().unwrap();
        let runs: Vec<Curves> = ["plain-20", "resnet-20"]
            .iter()
            .enumerate()
            .map(|(k, label)| Curves {
                label: label.to_string(),
                train: (1..50)
                    .map(|i| (i as f64 * 100.0, 60.0 / (i as f64).sqrt() + k as f64))
                    .collect(),
                test: (1..10)
                    .map(|i| (i as f64 * 500.0, 70.0 / (i as f64).sqrt() + k as f64))
                    .collect(),
            })
            .collect();
        let (png, svg) = (tmp.path().join("fig.png"), tmp.path().join("fig.svg"));
        render(&runs, "CIFAR-10", &png, Some(&svg)).unwrap();
        let image = image::open(&png).unwrap().to_rgb8();
        assert_eq!(image.dimensions(), (960, 600));
        // Two differently coloured curves were drawn, besides black/white/grey.
        let colours: std::collections::HashSet<[u8; 3]> = image
            .pixels()
            .map(|p| p.0)
            .filter(|[r, g, b]| !(r == g && g == b))
            .collect();
        assert!(colours.len() >= 2, "no coloured curves in the PNG");
        let svg = std::fs::read_to_string(&svg).unwrap();
        assert!(svg.contains("plain-20") && svg.contains("resnet-20") && svg.contains("iterations"));
    }
}
