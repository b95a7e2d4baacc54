//! A plain HTTP/1.0 `GET` for tests of the binaries' endpoints (`/metrics`, the probes), and
//! the sum of a metric in a Prometheus text body: no HTTP client crate for a few requests.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// `GET path` on `127.0.0.1:port`, with `Authorization: Bearer <token>` when given: the
/// status code and the body, or `None` while nothing answers.
pub fn http_get(port: u16, path: &str, token: Option<&str>) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n{auth}\r\n").ok()?;
    let mut reply = String::new();
    s.read_to_string(&mut reply).ok()?;
    let status = reply.split_whitespace().nth(1)?.parse().ok()?;
    let body = reply.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned();
    Some((status, body))
}

/// The sum of metric `name`'s samples in a Prometheus text `body` over every label set that
/// holds all of `labels` (every sample with none given); 0 when there is none.
pub fn metric_sum(body: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    body.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let (set, value) = match rest.strip_prefix('{') {
                Some(r) => r.split_once("} ")?,
                None => ("", rest.strip_prefix(' ')?),
            };
            let has = |(k, v): &(&str, &str)| set.split(',').any(|p| p == format!("{k}=\"{v}\""));
            labels.iter().all(has).then(|| value.trim().parse::<f64>().ok())?
        })
        .sum()
}

/// Whether `body` has a sample of metric `name` at all.
pub fn has_metric(body: &str, name: &str) -> bool {
    body.lines().any(|l| {
        l.strip_prefix(name)
            .is_some_and(|r| r.starts_with('{') || r.starts_with(' '))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_follow_the_labels_asked_for() {
        let body = "# HELP x_total X\nx_total{a=\"1\",b=\"2\"} 3\nx_total{a=\"1\",b=\"3\"} 4\nx_total_more 9\ny 1.5\n";
        assert_eq!(metric_sum(body, "x_total", &[]), 7.0);
        assert_eq!(metric_sum(body, "x_total", &[("b", "3")]), 4.0);
        assert_eq!(metric_sum(body, "x_total", &[("a", "2")]), 0.0);
        assert_eq!(metric_sum(body, "y", &[]), 1.5);
        assert!(has_metric(body, "y") && !has_metric(body, "x"));
    }
}
