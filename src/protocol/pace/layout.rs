//! Separating the pack blocks of a 0x42/0x44 reply (`docs/protocols/pace.md#separating-pack-blocks`): the closed-form
//! tail length with the same-shape check, then the fallback walk. Never by scanning for the next cell count: that
//! false-matches inside tail data (bmspace issue #23).

use crate::protocol::DecodeError;

/// Where a block keeps its counts and how long its fixed part is, for one reply type.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Shape {
    /// Offset of N (temperature count) in a block with M cells.
    pub n_offset: fn(usize) -> usize,
    /// Bytes of the fixed part (through P for 0x42, through warning state 2 for 0x44) for M cells, N sensors.
    pub fixed: fn(usize, usize) -> usize,
    /// Smallest tail (user-defined / extension bytes) a block may carry.
    pub tail_min: usize,
    /// Largest tail the reply type allows, if bounded.
    pub tail_max: Option<usize>,
}

/// Blocks the fallback walk accepts: 1 ≤ M ≤ 32, N ≤ 16 (`docs/protocols/pace.md#separating-pack-blocks`, step 4).
const MAX_WALK_CELLS: usize = 32;
const MAX_WALK_TEMPS: usize = 16;

/// The blocks of `body` (INFO after INFOFLAG and COUNT_OR_COMMAND) when it holds `count` blocks, and their
/// common tail length.
pub(crate) fn split(body: &[u8], count: usize, shape: Shape) -> Result<(Vec<&[u8]>, usize), DecodeError> {
    let unresolved = DecodeError::LayoutUnresolved { info_len: body.len() + 2, packs: count };
    if count == 0 {
        return Err(DecodeError::NoPacks);
    }
    let dims = |at: usize| -> Option<(usize, usize, usize)> {
        let m = usize::from(*body.get(at)?);
        let n = usize::from(*body.get(at + (shape.n_offset)(m))?);
        Some((m, n, (shape.fixed)(m, n)))
    };
    let Some((m1, n1, fixed)) = dims(0) else { return Err(unresolved) };
    let tail_ok = |t: usize| t >= shape.tail_min && shape.tail_max.is_none_or(|max| t <= max);
    let rest = body.len().checked_sub(count.saturating_mul(fixed));
    if let Some(rest) = rest.filter(|&r| r % count == 0 && tail_ok(r / count)) {
        let tail = rest / count;
        let stride = fixed + tail;
        let same_shape = (1..count).all(|k| dims(k * stride).is_some_and(|(m, n, _)| m == m1 && n == n1));
        if count == 1 || same_shape {
            let blocks = body.chunks_exact(stride).collect();
            return Ok((blocks, tail));
        }
    }
    let max_tail = shape.tail_max.unwrap_or(body.len());
    for tail in shape.tail_min..=max_tail {
        if let Some(blocks) = walk(body, count, tail, dims) {
            return Ok((blocks, tail));
        }
    }
    Err(unresolved)
}

/// Walk `count` blocks of tail length `tail`, each with its own M and N; `None` unless the walk ends exactly at the
/// end of `body` with plausible counts.
fn walk(
    body: &[u8],
    count: usize,
    tail: usize,
    dims: impl Fn(usize) -> Option<(usize, usize, usize)>,
) -> Option<Vec<&[u8]>> {
    let mut blocks = Vec::with_capacity(count.min(body.len()));
    let mut at = 0;
    for _ in 0..count {
        let (m, n, fixed) = dims(at)?;
        if !(1..=MAX_WALK_CELLS).contains(&m) || n > MAX_WALK_TEMPS {
            return None;
        }
        let end = at + fixed + tail;
        blocks.push(body.get(at..end)?);
        at = end;
    }
    (at == body.len()).then_some(blocks)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A toy block: M, M bytes, N, N bytes, then the tail.
    const TOY: Shape = Shape { n_offset: |m| 1 + m, fixed: |m, n| 2 + m + n, tail_min: 1, tail_max: None };

    #[test]
    fn equal_blocks_are_split_by_the_closed_form() {
        let body = [1, 9, 0, 7, 7, 1, 9, 0, 7, 7];
        let (blocks, tail) = split(&body, 2, TOY).unwrap();
        assert_eq!(tail, 2);
        assert_eq!(blocks, [&body[..5], &body[5..]]);
    }

    #[test]
    fn blocks_of_different_shape_are_found_by_the_walk() {
        let body = [1, 9, 0, 7, 2, 9, 9, 1, 8, 7];
        let (blocks, tail) = split(&body, 2, TOY).unwrap();
        assert_eq!(tail, 1);
        assert_eq!(blocks, [&body[..4], &body[4..]]);
    }

    #[test]
    fn zero_blocks_and_impossible_layouts_are_errors() {
        assert_eq!(split(&[1, 9, 0, 7], 0, TOY), Err(DecodeError::NoPacks));
        assert_eq!(split(&[1, 9, 0], 1, TOY), Err(DecodeError::LayoutUnresolved { info_len: 5, packs: 1 }));
        assert!(split(&[], 3, TOY).is_err());
    }
}
