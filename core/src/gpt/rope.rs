//! The 2-D rotary position embedding of LlamaGen (official `precompute_freqs_cis_2d` and
//! `apply_rotary_emb`).

use burn::prelude::*;
use burn::tensor::TensorData;

/// The rotary table `[cls_token_num + grid², head_dim/2, 2]` of (cos, sin) pairs.
///
/// The first `cls_token_num` rows are zero (official behaviour): RoPE multiplies the condition
/// tokens' queries and keys by zero, so conditioning reaches the image tokens only through the
/// values. Image token `p` sits at grid row `p / grid`, column `p % grid`; the first head_dim/4
/// rotation pairs turn with the row, the last head_dim/4 with the column.
pub fn freqs_cis_2d_data(
    grid_size: usize,
    head_dim: usize,
    base: f64,
    cls_token_num: usize,
) -> TensorData {
    let half = head_dim / 2;
    let quarter = half / 2;
    // Computed in f32 like the official code (arange(0, half, 2).float() / half, base ** that).
    let freqs: Vec<f32> = (0..quarter)
        .map(|i| 1.0f32 / (base as f32).powf((2 * i) as f32 / half as f32))
        .collect();
    let rows = cls_token_num + grid_size * grid_size;
    let mut out = vec![0f32; rows * half * 2];
    for r in 0..grid_size {
        for c in 0..grid_size {
            let row = cls_token_num + r * grid_size + c;
            for j in 0..half {
                let angle = if j < quarter {
                    r as f32 * freqs[j]
                } else {
                    c as f32 * freqs[j - quarter]
                };
                let at = (row * half + j) * 2;
                out[at] = angle.cos();
                out[at + 1] = angle.sin();
            }
        }
    }
    TensorData::new(out, [rows, half, 2])
}

pub fn freqs_cis_2d<B: Backend>(
    grid_size: usize,
    head_dim: usize,
    base: f64,
    cls_token_num: usize,
    device: &B::Device,
) -> Tensor<B, 3> {
    Tensor::from_data(
        freqs_cis_2d_data(grid_size, head_dim, base, cls_token_num),
        device,
    )
}

/// Rotates `x` `[batch, seq, heads, head_dim]` by `freqs` `[seq, head_dim/2, 2]`; pairs are
/// interleaved (`x[2i]`, `x[2i+1]`): `(x0·cos − x1·sin, x1·cos + x0·sin)`, as the official
/// `apply_rotary_emb`.
///
/// Computed as `x·cos + (x·P)·sin` on `[batch·heads, seq·head_dim]` rows, where `P` turns each
/// pair `(x0, x1)` into `(−x1, x0)` and the cos / sin tables repeat each value for both halves
/// of its pair. Every product is then a whole-tensor or one-row-shared broadcast, which the CPU
/// backend runs vectorised; the textbook split into even and odd elements makes every
/// operation walk stride-2 views element by element, several times slower forward and back.
/// The arithmetic is the same (`a − b·s` = `a + (−b)·s` exactly).
pub fn apply_rotary_emb<B: Backend>(x: Tensor<B, 4>, freqs: Tensor<B, 3>) -> Tensor<B, 4> {
    let [b, s, h, hd] = x.dims();
    let device = x.device();
    let table = |i: usize| {
        let half = freqs.clone().narrow(2, i, 1);
        Tensor::cat(vec![half.clone(), half], 2).reshape([1, s * hd])
    };
    let (cos, sin) = (table(0), table(1));
    let mut pairs = vec![0f32; hd * hd];
    for i in 0..hd / 2 {
        // column 2i takes −x[2i+1], column 2i+1 takes x[2i]
        pairs[(2 * i + 1) * hd + 2 * i] = -1.0;
        pairs[(2 * i) * hd + 2 * i + 1] = 1.0;
    }
    let pairs = Tensor::<B, 2>::from_data(TensorData::new(pairs, [hd, hd]), &device);
    // [batch·heads, seq·head_dim], contiguous.
    let rows = x.swap_dims(1, 2).reshape([b * h, s * hd]);
    let turned = rows
        .clone()
        .reshape([b * h * s, hd])
        .matmul(pairs)
        .reshape([b * h, s * hd]);
    (rows * cos + turned * sin)
        .reshape([b, h, s, hd])
        .swap_dims(1, 2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Cpu;

    #[test]
    fn rotation_matches_the_pairwise_formula() {
        let device = Default::default();
        let (b, s, h, hd) = (2, 5, 3, 8);
        let x =
            Tensor::<Cpu, 4>::random([b, s, h, hd], burn::tensor::Distribution::Default, &device);
        let f = freqs_cis_2d_data(2, hd, 10000.0, 1);
        let freqs = Tensor::<Cpu, 3>::from_data(f.clone(), &device);
        let got = apply_rotary_emb(x.clone(), freqs)
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        let xs = x.into_data().to_vec::<f32>().unwrap();
        let fs = f.to_vec::<f32>().unwrap();
        for bi in 0..b {
            for si in 0..s {
                for hi in 0..h {
                    for i in 0..hd / 2 {
                        let at = ((bi * s + si) * h + hi) * hd + 2 * i;
                        let (c, sn) = (fs[(si * hd / 2 + i) * 2], fs[(si * hd / 2 + i) * 2 + 1]);
                        let (x0, x1) = (xs[at], xs[at + 1]);
                        assert_eq!(got[at], x0 * c - x1 * sn);
                        assert_eq!(got[at + 1], x1 * c + x0 * sn);
                    }
                }
            }
        }
    }
}
