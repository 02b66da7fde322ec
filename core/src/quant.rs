//! Weight-only quantization of the generator's linear layers through burn's own quantized
//! tensors: symmetric 8-bit or 4-bit values in blocks of [`BLOCK`] weights, one f16 scale per
//! block. Activations, norms, embeddings and the sums stay in the model's [`Precision`].
//!
//! A weight `[in, out]` (burn's order) is quantized along `out`: each block holds the weights of
//! 32 consecutive outputs for one input. On wgpu and cuda the values are packed into `u32` words
//! and the matrix product reads them directly (burn's quantized matmul dequantizes inside the
//! kernel's loads). The CPU backend keeps one `i8` a value (4-bit values too) with f32 scales,
//! and the decode step multiplies with [`crate::kernels::cpu`]'s quantized product.

use burn::prelude::*;
use burn::tensor::DType;
use burn::tensor::quantization::{
    QuantLevel, QuantMode, QuantParam, QuantScheme, QuantStore, QuantValue,
};
use serde::{Deserialize, Serialize};

use crate::Precision;

/// Weights per block (one scale each).
pub const BLOCK: usize = 32;

/// How the generator's linear layers are held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Quantize {
    /// In the model's precision.
    #[default]
    None,
    /// 8-bit values, one f16 scale per 32 weights.
    Q8,
    /// 4-bit values, one f16 scale per 32 weights.
    Q4,
}

impl Quantize {
    pub fn name(self) -> &'static str {
        match self {
            Quantize::None => "none",
            Quantize::Q8 => "q8",
            Quantize::Q4 => "q4",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "none" => Some(Quantize::None),
            "q8" => Some(Quantize::Q8),
            "q4" => Some(Quantize::Q4),
            _ => None,
        }
    }

    /// burn's scheme for this quantization (`None` for none).
    pub fn scheme(self) -> Option<QuantScheme> {
        let value = match self {
            Quantize::None => return None,
            Quantize::Q8 => QuantValue::Q8S,
            Quantize::Q4 => QuantValue::Q4S,
        };
        Some(QuantScheme {
            value,
            param: QuantParam::F16,
            store: QuantStore::PackedU32(0),
            level: QuantLevel::block([BLOCK as u8]),
            mode: QuantMode::Symmetric,
        })
    }

    /// The quantization a weight held in `dtype` has.
    pub fn of(dtype: DType) -> Self {
        match dtype {
            DType::QFloat(s) if s.value == QuantValue::Q8S => Quantize::Q8,
            DType::QFloat(s) if s.value == QuantValue::Q4S => Quantize::Q4,
            _ => Quantize::None,
        }
    }

    /// Bytes of a quantizable `[in, out]` weight as a GPU backend packs it (`elements` weights:
    /// the values plus one f16 scale per block), or in `precision` when not quantized.
    pub fn packed_bytes(self, elements: usize, precision: Precision) -> usize {
        match self {
            Quantize::None => elements * precision.bytes(),
            Quantize::Q8 => elements + elements / BLOCK * 2,
            Quantize::Q4 => elements / 2 + elements / BLOCK * 2,
        }
    }
}

impl std::fmt::Display for Quantize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Whether a weight of `[in, out]` can be quantized: whole blocks along `out`.
pub fn fits(dims: [usize; 2]) -> bool {
    dims[1] % BLOCK == 0
}

/// `w` `[in, out]` quantized (made contiguous first: the loader leaves PyTorch's `[out, in]`
/// storage under burn's view). Returns `w` unchanged when `q` is none or the shape has no whole
/// blocks.
pub fn quantize_weight<B: Backend>(w: Tensor<B, 2>, q: Quantize) -> Tensor<B, 2> {
    let Some(scheme) = q.scheme() else {
        return w;
    };
    if !fits(w.dims()) || matches!(w.dtype(), DType::QFloat(_)) {
        return w;
    }
    let dims = w.dims();
    let contiguous = w.reshape([dims[0] * dims[1]]).reshape(dims);
    contiguous.quantize_dynamic(&scheme)
}

/// Bytes a tensor of `elements` values held in `dtype` takes on its backend.
pub fn held_bytes(dtype: DType, elements: usize) -> usize {
    match dtype {
        DType::QFloat(s) => {
            let blocks = elements.div_ceil(BLOCK);
            match s.store {
                // The CPU backend: one i8 a value, f32 scales.
                QuantStore::Native => elements + blocks * 4,
                _ => {
                    let scale = match s.param {
                        QuantParam::F32 => 4,
                        QuantParam::F16 | QuantParam::BF16 => 2,
                        _ => 1,
                    };
                    elements * s.value.size_bits() / 8 + blocks * scale
                }
            }
        }
        d => elements * d.size(),
    }
}

/// Whether the official state-dict entry `name` is a linear layer's weight, the tensors
/// quantization applies to.
pub fn is_linear_weight(name: &str) -> bool {
    name.ends_with(".weight")
        && (name.contains(".attention.")
            || name.contains(".feed_forward.")
            || name.contains(".cap_proj.")
            || name == "output.weight")
}

/// Bytes of a generator's weights held in `precision` with its linear layers quantized by `q`,
/// as a GPU backend holds them, computed from the configuration alone (nothing is allocated).
pub fn weights_bytes(cfg: &crate::GptConfig, precision: Precision, q: Quantize) -> usize {
    cfg.state_dict_specs()
        .iter()
        .map(|spec| {
            let elements: usize = spec.shape.iter().product();
            // Specs are PyTorch's `[out, in]`; blocks run along `out`.
            let quantized = is_linear_weight(&spec.name)
                && spec.shape.len() == 2
                && fits([spec.shape[1], spec.shape[0]]);
            if quantized {
                q.packed_bytes(elements, precision)
            } else {
                elements * precision.bytes()
            }
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_bytes_add_up() {
        for q in [Quantize::None, Quantize::Q8, Quantize::Q4] {
            assert_eq!(Quantize::parse(q.name()), Some(q));
        }
        assert_eq!(Quantize::parse("q3"), None);
        assert_eq!(Quantize::Q8.packed_bytes(64, Precision::F16), 64 + 4);
        assert_eq!(Quantize::Q4.packed_bytes(64, Precision::F16), 32 + 4);
        assert_eq!(Quantize::None.packed_bytes(64, Precision::F16), 128);
        let q4 = DType::QFloat(Quantize::Q4.scheme().unwrap());
        assert_eq!(
            held_bytes(q4, 64),
            Quantize::Q4.packed_bytes(64, Precision::F32)
        );
        assert_eq!(Quantize::of(q4), Quantize::Q4);
        assert_eq!(Quantize::of(DType::F16), Quantize::None);
    }

    #[test]
    fn large_models_fit_their_memory_targets() {
        let bytes = |name: &str, p, q| weights_bytes(&crate::GptConfig::named(name).unwrap(), p, q);
        let xl = crate::GptConfig::named("GPT-XL").unwrap().num_params();
        assert_eq!(bytes("GPT-XL", Precision::F32, Quantize::None), xl * 4);
        assert!(bytes("GPT-XL", Precision::F16, Quantize::None) <= 1_600_000_000);
        let q4 = bytes("GPT-3B", Precision::F16, Quantize::Q4);
        assert!(q4 <= 2_000_000_000, "GPT-3B q4: {q4}");
        assert!(bytes("GPT-3B", Precision::F16, Quantize::Q8) < 3_500_000_000);
    }

    #[test]
    fn quantized_products_stay_close_on_the_cpu() {
        type B = crate::backend::Cpu;
        let device = Default::default();
        let x = Tensor::<B, 2>::random(
            [3, 256],
            burn::tensor::Distribution::Normal(0.0, 1.0),
            &device,
        );
        // PyTorch's `[out, in]` storage under burn's `[in, out]` view, as the loader leaves it.
        let w = Tensor::<B, 2>::random(
            [96, 256],
            burn::tensor::Distribution::Normal(0.0, 0.05),
            &device,
        )
        .transpose();
        let want = x.clone().matmul(w.clone());
        let scale = want.clone().abs().max().into_scalar();
        for (q, tol) in [(Quantize::Q8, 0.01), (Quantize::Q4, 0.15)] {
            let wq = quantize_weight(w.clone(), q);
            assert_eq!(Quantize::of(wq.dtype()), q);
            let got = x.clone().matmul(wq);
            let err = (got - want.clone()).abs().max().into_scalar();
            assert!(err <= tol * scale, "{q}: error {err} of {scale}");
        }
    }
}
