//! "Did you mean ...?" for misspelt words: the job spec's keys and values
//! (`job::spec`) and a dataset record's keys and roles ([`crate::data`]).

/// The candidate closest to `word`, if it is close enough to be a likely
/// misspelling: the same after lowercasing and `-` → `_`, or within an edit
/// distance of 1 (words up to 4 characters), 2 (up to 8) or 3, and not
/// wholly different (`x` is not a misspelling of `r`). A word longer than
/// every candidate by more than the distance allowed is none of them, and
/// is not compared (so a long word costs nothing).
pub fn closest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let candidates: Vec<&'a str> = candidates.into_iter().collect();
    let longest_candidate = candidates.iter().map(|c| c.chars().count()).max()?;
    if word.chars().take(longest_candidate + 4).count() > longest_candidate + 3 {
        return None;
    }
    let word = normalize(word);
    let limit = match word.chars().count() {
        0..=4 => 1,
        5..=8 => 2,
        _ => 3,
    };
    candidates
        .into_iter()
        .map(|candidate| {
            let candidate_norm = normalize(candidate);
            let longest = word.chars().count().max(candidate_norm.chars().count());
            (distance(&word, &candidate_norm), longest, candidate)
        })
        .filter(|&(d, longest, _)| d <= limit && d < longest)
        .map(|(d, _, candidate)| (d, candidate))
        .min_by_key(|&(d, _)| d)
        .map(|(_, candidate)| candidate)
}

fn normalize(word: &str) -> String {
    word.to_lowercase().replace('-', "_")
}

/// Optimal string alignment distance (Levenshtein plus adjacent swaps).
fn distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut rows = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in rows.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in rows[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (rows[i - 1][j] + 1)
                .min(rows[i][j - 1] + 1)
                .min(rows[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(rows[i - 2][j - 2] + 1);
            }
            rows[i][j] = best;
        }
    }
    rows[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distances() {
        assert_eq!(distance("cosine", "cosine"), 0);
        assert_eq!(distance("cosin", "cosine"), 1);
        assert_eq!(distance("lraning_rate", "learning_rate"), 2);
        assert_eq!(distance("ab", "ba"), 1);
    }

    #[test]
    fn closest_words() {
        let keys = ["r", "alpha", "dropout", "target_modules"];
        assert_eq!(closest("alhpa", keys), Some("alpha"));
        assert_eq!(closest("Target-Modules", keys), Some("target_modules"));
        assert_eq!(closest("zzz", keys), None);
        assert_eq!(closest("x", keys), None);
        assert_eq!(closest("rr", keys), Some("r"));
        assert_eq!(closest("all_linear", ["all-linear"]), Some("all-linear"));
        assert_eq!(
            closest("conversation", ["conversations"]),
            Some("conversations")
        );
        assert_eq!(closest(&"a".repeat(1 << 20), keys), None);
        assert_eq!(closest("r", []), None);
    }
}
