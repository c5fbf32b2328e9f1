//! The two formats a `/metrics` endpoint answers in, chosen by the scraper's
//! `Accept` header: OpenMetrics 1.0 (what `prometheus-client` encodes, and
//! what Prometheus asks for first) and the Prometheus text format 0.0.4 (what
//! `curl`, `promtool check metrics` and older scrapers read).
//!
//! The two differ in ways a text-format reader notices: an OpenMetrics
//! counter family is named without `_total` while its samples carry it, an
//! `info` family has no text-format type, and `# UNIT` and `# EOF` are
//! OpenMetrics-only. [`to_text_format`] rewrites exactly those, so both
//! formats expose the same samples under the same names.

/// Content type of OpenMetrics 1.0 text.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Content type of the Prometheus text format 0.0.4.
pub const TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Whether a scraper that sent `accept` (the raw header, if any) gets
/// OpenMetrics. Only an explicit `application/openmetrics-text` without
/// `q=0` does; anything else (no header, `*/*`, `text/plain`) gets the text
/// format, which every Prometheus-compatible reader understands.
pub fn wants_openmetrics(accept: Option<&str>) -> bool {
    let Some(accept) = accept else { return false };
    accept.split(',').any(|range| {
        let mut parts = range.split(';').map(str::trim);
        let kind = parts.next().unwrap_or("");
        let refused = parts.any(|p| {
            p.strip_prefix("q=").and_then(|q| q.trim().parse::<f32>().ok()).is_some_and(|q| q <= 0.0)
        });
        kind.eq_ignore_ascii_case("application/openmetrics-text") && !refused
    })
}

/// The answer to a scrape: content type and body, from one OpenMetrics
/// encoding.
pub fn negotiate(accept: Option<&str>, openmetrics: String) -> (&'static str, String) {
    if wants_openmetrics(accept) {
        (OPENMETRICS, openmetrics)
    } else {
        (TEXT, to_text_format(&openmetrics))
    }
}

/// Rewrites OpenMetrics text as Prometheus text format 0.0.4:
///
/// - a `counter` family `x` is described as `x_total` (its samples already
///   are `x_total`);
/// - an `info` family `x` becomes a `gauge` family `x_info` (its samples are
///   `x_info{...} 1`);
/// - `# UNIT` and `# EOF` lines are dropped.
///
/// Everything else (gauges, histograms, sample lines) passes unchanged.
pub fn to_text_format(openmetrics: &str) -> String {
    // Families by name and their OpenMetrics type, from the TYPE lines.
    let mut renamed: std::collections::HashMap<&str, String> = std::collections::HashMap::new();
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut words = rest.split_whitespace();
            if let (Some(name), Some(kind)) = (words.next(), words.next()) {
                match kind {
                    "counter" if !name.ends_with("_total") => {
                        renamed.insert(name, format!("{name}_total counter"));
                    }
                    "info" => {
                        renamed.insert(name, format!("{name}_info gauge"));
                    }
                    _ => {}
                }
            }
        }
    }
    let mut out = String::with_capacity(openmetrics.len() + 16 * renamed.len());
    for line in openmetrics.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let name = rest.split_whitespace().next().unwrap_or("");
            if let Some(typed) = renamed.get(name) {
                out.push_str("# TYPE ");
                out.push_str(typed);
                out.push('\n');
                continue;
            }
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            if let Some(typed) = renamed.get(name) {
                let new_name = typed.split(' ').next().unwrap_or(name);
                out.push_str("# HELP ");
                out.push_str(new_name);
                out.push(' ');
                out.push_str(help);
                out.push('\n');
                continue;
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPENMETRICS_SAMPLE: &str = "\
# HELP gantry_heartbeats_received Agent heartbeats received while leader.
# TYPE gantry_heartbeats_received counter
gantry_heartbeats_received_total 5
# HELP gantry_raft_snapshot_size_bytes Size of the last snapshot.
# TYPE gantry_raft_snapshot_size_bytes gauge
# UNIT gantry_raft_snapshot_size_bytes bytes
gantry_raft_snapshot_size_bytes 1024
# HELP gantry_build Version of this binary.
# TYPE gantry_build info
gantry_build_info{version=\"0.1.0\"} 1
# HELP gantry_raft_apply_seconds Time to apply a batch.
# TYPE gantry_raft_apply_seconds histogram
# UNIT gantry_raft_apply_seconds seconds
gantry_raft_apply_seconds_sum 0.5
gantry_raft_apply_seconds_count 2
gantry_raft_apply_seconds_bucket{le=\"+Inf\"} 2
# EOF
";

    #[test]
    fn counters_and_infos_are_renamed_and_openmetrics_only_lines_dropped() {
        let text = to_text_format(OPENMETRICS_SAMPLE);
        let expected = "\
# HELP gantry_heartbeats_received_total Agent heartbeats received while leader.
# TYPE gantry_heartbeats_received_total counter
gantry_heartbeats_received_total 5
# HELP gantry_raft_snapshot_size_bytes Size of the last snapshot.
# TYPE gantry_raft_snapshot_size_bytes gauge
gantry_raft_snapshot_size_bytes 1024
# HELP gantry_build_info Version of this binary.
# TYPE gantry_build_info gauge
gantry_build_info{version=\"0.1.0\"} 1
# HELP gantry_raft_apply_seconds Time to apply a batch.
# TYPE gantry_raft_apply_seconds histogram
gantry_raft_apply_seconds_sum 0.5
gantry_raft_apply_seconds_count 2
gantry_raft_apply_seconds_bucket{le=\"+Inf\"} 2
";
        assert_eq!(text, expected);
    }

    #[test]
    fn every_sample_line_survives_the_rewrite() {
        let samples =
            |s: &str| s.lines().filter(|l| !l.starts_with('#')).map(str::to_owned).collect::<Vec<_>>();
        assert_eq!(samples(&to_text_format(OPENMETRICS_SAMPLE)), samples(OPENMETRICS_SAMPLE));
    }

    #[test]
    fn only_an_explicit_openmetrics_accept_gets_openmetrics() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert!(wants_openmetrics(Some(prometheus)));
        assert!(wants_openmetrics(Some("Application/OpenMetrics-Text")));
        assert!(!wants_openmetrics(Some("application/openmetrics-text;q=0, text/plain")));
        for other in [None, Some("*/*"), Some("text/plain"), Some(""), Some(";;,,")] {
            assert!(!wants_openmetrics(other), "{other:?}");
        }
        let (kind, body) = negotiate(None, OPENMETRICS_SAMPLE.to_owned());
        assert_eq!(kind, TEXT);
        assert!(!body.contains("# EOF"));
        let (kind, body) = negotiate(Some(prometheus), OPENMETRICS_SAMPLE.to_owned());
        assert_eq!(kind, OPENMETRICS);
        assert!(body.ends_with("# EOF\n"));
    }
}
