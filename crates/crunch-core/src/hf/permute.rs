//! The Q/K row permutation of Llama attention.
//!
//! Hugging Face stores each head's query/key rows as two halves (the "rotate half" RoPE layout);
//! llama.cpp's RoPE rotates adjacent pairs, so its converter interleaves the halves: within every
//! head of `2h` rows, GGUF row `2i + j` is Hugging Face row `j*h + i` (`j` in {0, 1}). For K the
//! head count is the key/value head count. Rows move whole, so the permutation works on raw bytes
//! of any dense type and is exact; [`unpermute`] is its inverse (used by export).

/// Why rows cannot be permuted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{n_rows} rows cannot be split into {n_head} heads of an even number of rows")]
pub struct PermuteError {
    pub n_rows: usize,
    pub n_head: usize,
}

fn check(n_rows: usize, n_head: usize) -> Result<usize, PermuteError> {
    if n_head == 0 || !n_rows.is_multiple_of(n_head) || !(n_rows / n_head).is_multiple_of(2) {
        return Err(PermuteError { n_rows, n_head });
    }
    Ok(n_rows / n_head / 2)
}

fn apply(src: &[u8], n_rows: usize, n_head: usize, out: &mut Vec<u8>, forward: bool) -> Result<(), PermuteError> {
    let half = check(n_rows, n_head)?;
    if n_rows == 0 {
        return Ok(());
    }
    let row = src.len() / n_rows;
    out.clear();
    out.reserve(src.len());
    for r in 0..n_rows {
        let (head, k) = (r / (2 * half), r % (2 * half));
        // forward: destination row k = 2i + j comes from source row j*half + i.
        let s = if forward { (k % 2) * half + k / 2 } else { (k % half) * 2 + k / half };
        let s = head * 2 * half + s;
        out.extend_from_slice(&src[s * row..(s + 1) * row]);
    }
    Ok(())
}

/// Hugging Face order -> llama.cpp order. `src` holds `n_rows` equal rows (a weight matrix, or a
/// bias with one element per row).
///
/// # Errors
/// The rows do not split into `n_head` heads of an even size.
pub fn permute(src: &[u8], n_rows: usize, n_head: usize, out: &mut Vec<u8>) -> Result<(), PermuteError> {
    apply(src, n_rows, n_head, out, true)
}

/// llama.cpp order -> Hugging Face order (the inverse of [`permute`]).
///
/// # Errors
/// As [`permute`].
pub fn unpermute(src: &[u8], n_rows: usize, n_head: usize, out: &mut Vec<u8>) -> Result<(), PermuteError> {
    apply(src, n_rows, n_head, out, false)
}

/// The permutation as source row indices: row `r` of the result is row `order[r]` of the input
/// ([`permute`] when `forward`, else [`unpermute`]), for data whose rows are not bytes of equal
/// length (e.g. codes and scales kept apart).
///
/// # Errors
/// As [`permute`].
pub fn row_order(n_rows: usize, n_head: usize, forward: bool) -> Result<Vec<usize>, PermuteError> {
    let idx: Vec<u8> = (0..n_rows as u64).flat_map(|i| i.to_le_bytes()).collect();
    let mut out = Vec::new();
    apply(&idx, n_rows, n_head, &mut out, forward)?;
    Ok(out.chunks_exact(8).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")) as usize).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_reshape_swapaxes_definition() {
        // 2 heads of 4 rows, 1 byte per row: rows [a0 a1 b0 b1 | c0 c1 d0 d1] -> [a0 b0 a1 b1 | c0 d0 c1 d1]
        let src: Vec<u8> = (0..8).collect();
        let mut out = Vec::new();
        permute(&src, 8, 2, &mut out).unwrap();
        assert_eq!(out, vec![0, 2, 1, 3, 4, 6, 5, 7]);
        let mut back = Vec::new();
        unpermute(&out, 8, 2, &mut back).unwrap();
        assert_eq!(back, src);
        // wider rows, 6 rows per head
        let src: Vec<u8> = (0..36).collect();
        permute(&src, 12, 2, &mut out).unwrap();
        assert_eq!(&out[..9], &[0, 1, 2, 9, 10, 11, 3, 4, 5]);
        unpermute(&out, 12, 2, &mut back).unwrap();
        assert_eq!(back, src);
        assert!(permute(&src, 12, 5, &mut out).is_err());
        assert!(permute(&src, 6, 2, &mut out).is_err());
    }
}
