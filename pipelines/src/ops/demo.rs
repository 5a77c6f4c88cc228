//! `reclag demo`: a bundled real sample (4,000 Fashion-MNIST training rows, 1,000 test
//! rows, 500 MNIST digits and 500 font letters as OOD; 128-d MLP embeddings with
//! logits), trained, scored and evaluated end to end with no network.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

pub const FILES: [(&str, &[u8]); 4] = [
    (
        "id_train.parquet",
        include_bytes!("../../demo/id_train.parquet"),
    ),
    (
        "id_test.parquet",
        include_bytes!("../../demo/id_test.parquet"),
    ),
    (
        "ood_mnist.parquet",
        include_bytes!("../../demo/ood_mnist.parquet"),
    ),
    (
        "ood_font_letters.parquet",
        include_bytes!("../../demo/ood_font_letters.parquet"),
    ),
];

/// Writes the bundled tables into `dir` and returns their paths.
pub fn write_sample(dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).map_err(|source| Error::Io {
        context: format!("creating {}", dir.display()),
        source,
    })?;
    FILES
        .iter()
        .map(|(name, bytes)| {
            let p = dir.join(name);
            reclag::format::write_atomic(&p, bytes)?;
            Ok(p)
        })
        .collect()
}

/// Runs the whole demo in `dir` (or a temporary directory) and prints the results.
pub fn run(dir: Option<PathBuf>, out: &mut dyn std::io::Write) -> Result<()> {
    let started = std::time::Instant::now();
    let tmp;
    let dir = match dir {
        Some(d) => d,
        None => {
            tmp = tempfile::tempdir().map_err(|source| Error::Io {
                context: "creating a temporary directory".into(),
                source,
            })?;
            tmp.path().to_path_buf()
        }
    };
    let p = write_sample(&dir)?;
    let s = |p: &Path| p.display().to_string();
    let model_path = dir.join("model.parquet");
    let scored = dir.join("id_test_scored.parquet");
    let io = |source| Error::Io {
        context: "writing output".into(),
        source,
    };
    writeln!(
        out,
        "reclag demo: bundled sample of image_fmnist (128-d embeddings) in {}",
        dir.display()
    )
    .map_err(io)?;
    let paper_path = dir.join("model_paper.parquet");
    let mnist = format!("mnist={}", s(&p[2]));
    let letters = format!("font_letters={}", s(&p[3]));
    let strings = |v: Vec<&str>| v.into_iter().map(String::from).collect::<Vec<String>>();
    // The default (whitened) recipe, scored without labels or logits: each row goes to
    // the group of largest margin. Then the paper's recipe, routed by the classifier's
    // logits as in the paper, for comparison.
    let eval = |model: &Path, route: &[&str], baselines: &str| {
        let mut v = vec![
            "eval".to_string(),
            "--model".into(),
            s(model),
            "--id".into(),
            s(&p[1]),
            "--ood".into(),
            mnist.clone(),
            "--ood".into(),
            letters.clone(),
        ];
        v.extend(route.iter().map(|r| r.to_string()));
        v.extend(strings(vec![
            "--train",
            &s(&p[0]),
            "--baselines",
            baselines,
        ]));
        v
    };
    let steps: Vec<Vec<String>> = vec![
        strings(vec![
            "train",
            "--input",
            &s(&p[0]),
            "--label",
            "label",
            "--output",
            &s(&model_path),
        ]),
        strings(vec![
            "score",
            "--model",
            &s(&model_path),
            "--input",
            &s(&p[1]),
            "--output",
            &s(&scored),
            "--keep-columns",
            "label",
        ]),
        strings(vec!["inspect", &s(&model_path)]),
        eval(&model_path, &[], "mahalanobis,knn,he,she"),
        strings(vec![
            "train",
            "--recipe",
            "paper",
            "--input",
            &s(&p[0]),
            "--label",
            "label",
            "--output",
            &s(&paper_path),
        ]),
        eval(
            &paper_path,
            &["--group-from-logits", "logits"],
            "msp,energy",
        ),
    ];
    for args in steps {
        writeln!(out, "\n$ reclag {}", args.join(" ")).map_err(io)?;
        let mut full = vec!["reclag".to_string()];
        full.extend(args);
        crate::cli::run(full, out)?;
    }
    writeln!(
        out,
        "\ndemo finished in {:.1} s",
        started.elapsed().as_secs_f64()
    )
    .map_err(io)?;
    Ok(())
}
