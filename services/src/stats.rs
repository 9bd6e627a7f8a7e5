//! The one percentile every report of the kata uses.

/// The `p` quantile (0.5, 0.99) of `values` by rank: the smallest value that at least `p` of them
/// do not exceed (0 when there are none).
pub fn percentile<T: Copy + PartialOrd + Default>(values: &[T], p: f64) -> T {
    if values.is_empty() {
        return T::default();
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let rank = (sorted.len() as f64 * p).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rank_percentile_of_a_hundred_values_is_the_hundredth_part() {
        let values: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&values, 0.99), 99);
        assert_eq!(percentile(&values, 0.5), 50);
        assert_eq!(percentile(&[3.0, 1.0, 2.0], 0.5), 2.0);
        assert_eq!(percentile::<f64>(&[], 0.99), 0.0);
    }
}
