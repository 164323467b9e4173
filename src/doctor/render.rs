//! The report as a table for people (`-o json` serialises [`Report`] instead).

use super::diagnose::{PairStatus, Report, short};
use std::fmt::Write as _;

/// Rows under headers, each column as wide as its widest cell; the last column is not padded.
fn columns(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        let last = row.len().saturating_sub(1);
        for (i, (cell, width)) in row.iter().zip(&widths).enumerate() {
            if i == last {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<width$}  ");
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn list(items: &[String], short_form: bool) -> String {
    if items.is_empty() {
        return "-".into();
    }
    let items: Vec<&str> = items.iter().map(|i| if short_form { short(i) } else { i.as_str() }).collect();
    items.join(", ")
}

/// The report as text.
pub fn table(report: &Report) -> String {
    let mut out = format!("{}\n", report.summary);
    if !report.istiods.is_empty() {
        out.push_str("\nISTIODS\n");
        let rows: Vec<Vec<String>> = report
            .istiods
            .iter()
            .map(|i| {
                vec![
                    i.mesh.clone(),
                    i.deployment.clone(),
                    i.ca.clone(),
                    i.root_configmap.clone(),
                    i.issuing_root.as_deref().map_or("unknown", short).to_string(),
                    list(&i.namespaces, false),
                ]
            })
            .collect();
        out.push_str(&columns(&["MESH", "DEPLOYMENT", "CA", "ROOT CONFIGMAP", "ISSUES UNDER", "NAMESPACES"], &rows));
    }
    if !report.roots.is_empty() {
        out.push_str("\nROOTS\n");
        let rows: Vec<Vec<String>> = report
            .roots
            .iter()
            .map(|r| {
                let mut issues = list(&r.issues_for, false);
                if r.meshroot_signs {
                    issues = format!("meshroot signs; {issues}");
                }
                vec![r.fingerprint.clone(), r.not_after.clone(), issues, r.subject.clone()]
            })
            .collect();
        out.push_str(&columns(&["SHA-256", "NOT AFTER", "ISSUES FOR", "SUBJECT"], &rows));
    }
    if !report.trust.is_empty() {
        out.push_str("\nTRUSTED ROOTS, BY NAMESPACE\n");
        let rows: Vec<Vec<String>> = report
            .trust
            .iter()
            .map(|t| {
                let roots = t.problem.clone().unwrap_or_else(|| list(&t.roots, true));
                vec![t.namespace.clone(), t.configmap.clone(), list(&t.meshes, false), roots]
            })
            .collect();
        out.push_str(&columns(&["NAMESPACE", "CONFIGMAP", "MESHES", "ROOTS"], &rows));
    }
    if !report.pairs.is_empty() {
        out.push_str("\nMUTUAL TLS BETWEEN MESHES\n");
        for pair in &report.pairs {
            let [a, b] = &pair.meshes;
            let who = if a == b { format!("{a} (within)") } else { format!("{a} <-> {b}") };
            let status = match pair.status {
                PairStatus::Ok => "ok",
                PairStatus::Split => "SPLIT",
                PairStatus::Unknown => "unknown",
            };
            let _ = writeln!(out, "{status:<8} {who}");
            for reason in &pair.reasons {
                let _ = writeln!(out, "         - {reason}");
            }
        }
    }
    if !report.advice.is_empty() {
        out.push_str("\nWHAT TO CHANGE\n");
        for (n, line) in report.advice.iter().enumerate() {
            let _ = writeln!(out, "{:>2}. {line}", n.saturating_add(1));
        }
    }
    out.push_str(
        "\nThe doctor reads root ConfigMaps and CA Secrets. A pod keeps the roots it started with until it restarts.\n",
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up_and_the_last_is_not_padded() {
        let rows = vec![
            vec!["a".to_string(), "long cell".to_string(), "x".to_string()],
            vec!["longer".to_string(), "b".to_string(), "y".to_string()],
        ];
        let text = columns(&["H1", "H2", "LAST"], &rows);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines, ["H1      H2         LAST", "a       long cell  x", "longer  b          y"]);
    }
}
