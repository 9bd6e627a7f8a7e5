//! The service's `/metrics` (Prometheus text format), read the same way by the checker and the
//! load test: with `prometheus-parse`, not by splitting lines.

/// Every sample of a counter, gauge or untyped metric in `text`, as `(name, value)`: one per
/// label set (a histogram's or summary's buckets and quantiles are left out; the parser gives
/// their `_sum` and `_count` as untyped samples of their own names). A line the parser cannot
/// read is skipped.
pub fn samples(text: &str) -> Vec<(String, f64)> {
    let lines = text.lines().map(|line| Ok(line.to_owned()));
    let Ok(scrape) = prometheus_parse::Scrape::parse(lines) else { return Vec::new() };
    scrape
        .samples
        .into_iter()
        .filter_map(|sample| match sample.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => Some((sample.metric, v)),
            _ => None,
        })
        .collect()
}

/// The value of `name`, added up over its label sets; `None` when the text has no such metric.
pub fn value(text: &str, name: &str) -> Option<f64> {
    let values: Vec<f64> = samples(text).into_iter().filter(|(metric, _)| metric == name).map(|(_, v)| v).collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# TYPE cache_hits_total counter\ncache_hits_total 12\n\
        # TYPE ratelimit_decisions_total counter\n\
        ratelimit_decisions_total{tier=\"free\",decision=\"admitted\"} 3\n\
        ratelimit_decisions_total{tier=\"free\",decision=\"limited\"} 4\n\
        # TYPE db_pool_active gauge\ndb_pool_active 2\n";

    #[test]
    fn labelled_samples_add_up_and_unlabelled_ones_are_read_as_they_are() {
        assert_eq!(value(TEXT, "cache_hits_total"), Some(12.0));
        assert_eq!(value(TEXT, "ratelimit_decisions_total"), Some(7.0));
        assert_eq!(value(TEXT, "db_pool_active"), Some(2.0));
        assert_eq!(value(TEXT, "cache_misses_total"), None);
    }
}
