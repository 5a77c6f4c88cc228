//! What a model file contains, as `reclag inspect` prints it (and Python's
//! `repr(model)`).

use crate::Model;

pub fn render(model: &Model, checksum: &str) -> String {
    let mut s = String::new();
    s += &format!("recipe         {}\n", model.recipe().as_str());
    s += &format!("dimension      {}\n", model.dim());
    s += &format!("beta           {}\n", model.beta());
    if let Some(b) = model.beta_search() {
        // The leave-one-group-out table β was chosen from (§10).
        let cells: Vec<String> = b
            .grid
            .iter()
            .zip(&b.mean_auroc)
            .map(|(beta, a)| {
                let mark = if *beta == model.beta() { "*" } else { "" };
                format!("{beta}{mark}: {a:.4}")
            })
            .collect();
        s += &format!(
            "beta search    mean leave-one-group-out AUROC  {}\n",
            cells.join("  ")
        );
    }
    let pre = match model.whitening() {
        Some(_) => "l2, centre, whiten (pooled within-group covariance), l2".to_string(),
        None => model.normalize().as_str().to_string(),
    };
    s += &format!("preprocessing  {pre}\n");
    s += &format!(
        "groups         {} ({} labels)\n",
        model.groups().len(),
        model.label_kind().as_str()
    );
    s += &format!(
        "tau*           {:.6}  (union threshold, for --route union)\n",
        model.tau_star()
    );
    s += &format!(
        "dynamics       max_iter={} tol={}\n",
        model.max_iter(),
        model.tol()
    );
    s += &format!(
        "format         version {}\n",
        crate::format::version_of(model)
    );
    match model.calibration() {
        Some(c) => {
            s += &format!(
                "p-values       calibration scores at ood_rate {}: {} best-route, {} union, {} to {} per group\n",
                c.ood_rate,
                c.best.len(),
                c.union.len(),
                c.own.iter().map(|o| o.len()).min().unwrap_or(0),
                c.own.iter().map(|o| o.len()).max().unwrap_or(0)
            );
        }
        None => {
            s += "p-values       none (no calibration scores; add them with `reclag calibrate`)\n";
        }
    }
    if let Some(l) = &model.provenance().label_column {
        s += &format!("label column   {l}\n");
    }
    if let Some(f) = &model.provenance().recalibrated_from {
        s += &format!("recalibrated   from the model with checksum {f}\n");
    }
    s += &format!("checksum       {checksum}\n");
    s += &format!("source         {}\n", model.provenance().source);
    s += &format!("training       {}\n\n", model.provenance().training);
    s += &format!(
        "{:>12} {:>8} {:>12} {:>10} {:>13} {:>14}\n",
        "group", "memories", "tau", "n_train", "n_calibration", "calibrated_on"
    );
    for g in model.groups() {
        let key = g
            .key
            .as_ref()
            .map_or("(all)".to_string(), |k| k.to_string());
        s += &format!(
            "{:>12} {:>8} {:>12.6} {:>10} {:>13} {:>14}\n",
            key,
            g.m,
            g.tau,
            g.n_train,
            g.n_calibration,
            g.calibrated_on.as_str()
        );
    }
    s
}
