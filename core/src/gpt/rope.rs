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
/// interleaved (`x[2i]`, `x[2i+1]`).
pub fn apply_rotary_emb<B: Backend>(x: Tensor<B, 4>, freqs: Tensor<B, 3>) -> Tensor<B, 4> {
    let [b, s, h, hd] = x.dims();
    let pairs = x.reshape([b, s, h, hd / 2, 2]);
    let x0 = pairs.clone().narrow(4, 0, 1);
    let x1 = pairs.narrow(4, 1, 1);
    let f = freqs.reshape([1, s, 1, hd / 2, 2]);
    let cos = f.clone().narrow(4, 0, 1);
    let sin = f.narrow(4, 1, 1);
    let o0 = x0.clone() * cos.clone() - x1.clone() * sin.clone();
    let o1 = x1 * cos + x0 * sin;
    Tensor::cat(vec![o0, o1], 4).reshape([b, s, h, hd])
}
