//! `reclag inspect`: what a model file contains.

use reclag::Model;

pub fn render(model: &Model, checksum: &str) -> String {
    let mut s = String::new();
    s += &format!("dimension      {}\n", model.dim());
    s += &format!("beta           {}\n", model.beta());
    s += &format!("normalize      {}\n", model.normalize().as_str());
    s += &format!(
        "groups         {} ({} labels)\n",
        model.groups().len(),
        model.label_kind().as_str()
    );
    s += &format!(
        "tau*           {:.6}  (union threshold, used when no group is given)\n",
        model.tau_star()
    );
    s += &format!(
        "dynamics       max_iter={} tol={}\n",
        model.max_iter(),
        model.tol()
    );
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
