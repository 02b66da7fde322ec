//! Configuration inference from tensor shapes, for official checkpoints that carry no config.

use std::path::Path;

use std::collections::BTreeMap;

use crate::config::{GPT_SIZES, GptConfig, ModelType, VqConfig};
use crate::error::CheckpointError;

/// What the tensors of a GPT checkpoint cannot say, supplied by the user or the file name.
#[derive(Debug, Clone, Default)]
pub struct GptHints {
    /// Image side in pixels (256, 384, 512); with `downsample` it fixes the token grid.
    pub image_size: Option<usize>,
    /// Tokenizer downsampling factor (16 for the official VQ-16).
    pub downsample: Option<usize>,
    /// A named size (`GPT-L`), to settle n_head when the width alone is ambiguous.
    pub gpt_model: Option<String>,
    /// Number of attention heads, for widths that are not a named size.
    pub n_head: Option<usize>,
    /// The checkpoint's file name, read for the image size (`c2i_L_384.pt`).
    pub file_name: Option<std::path::PathBuf>,
}

/// Tensor name → shape: all that inference looks at.
pub type Shapes = BTreeMap<String, Vec<usize>>;

/// `c2i_L_384.pt` → 384; `t2i_XL_stage2_512.pt` → 512: the last `_<digits>` in the stem, as
/// the official release names its files. Step counters (`step-0000400`, `0050000`) are not
/// image sizes: only `_`-separated parts without leading zeros count.
pub fn image_size_from_file_name(path: &Path) -> Option<usize> {
    let stem = path.file_stem()?.to_str()?;
    stem.split('_')
        .filter(|p| !p.starts_with('0'))
        .filter_map(|p| p.parse::<usize>().ok())
        .filter(|n| (64..=2048).contains(n) && n % 8 == 0)
        .next_back()
}

fn shape(sd: &Shapes, name: &str) -> Result<Vec<usize>, CheckpointError> {
    sd.get(name)
        .cloned()
        .ok_or_else(|| CheckpointError::Infer(format!("the checkpoint has no '{name}' tensor")))
}

/// `shape` as it must be: `rank` dimensions (a hostile file can give any name any shape).
fn ranked(shape: &[usize], name: &str, rank: usize) -> Result<Vec<usize>, CheckpointError> {
    if shape.len() == rank {
        Ok(shape.to_vec())
    } else {
        Err(CheckpointError::Infer(format!(
            "'{name}' has shape {shape:?}: {rank} dimensions were expected"
        )))
    }
}

/// The shape of `name`, which must have `rank` dimensions.
fn shape_of(sd: &Shapes, name: &str, rank: usize) -> Result<Vec<usize>, CheckpointError> {
    ranked(&shape(sd, name)?, name, rank)
}

fn count_indexed(sd: &Shapes, prefix: &str, suffix: &str) -> usize {
    (0..)
        .take_while(|i| sd.contains_key(&format!("{prefix}{i}{suffix}")))
        .count()
}

/// Infers a GPT configuration from the shapes in `sd` (dim, layers, heads, GQA, vocab, classes,
/// caption dim, condition tokens) and the grid size from `hints` or the file name.
pub fn infer_gpt_config(sd: &Shapes, hints: &GptHints) -> Result<GptConfig, CheckpointError> {
    let tok = shape_of(sd, "tok_embeddings.weight", 2)?;
    let (vocab_size, dim) = (tok[0], tok[1]);
    let n_layer = count_indexed(sd, "layers.", ".attention.wqkv.weight");
    if n_layer == 0 {
        return Err(CheckpointError::Infer(
            "no 'layers.N.attention.wqkv.weight' tensors: this is not a LlamaGen GPT checkpoint"
                .into(),
        ));
    }
    let mut cfg = match &hints.gpt_model {
        Some(name) => GptConfig::named(name)?,
        None => {
            let named = GPT_SIZES
                .iter()
                .find(|(_, l, _, d)| *d == dim && *l == n_layer)
                .or_else(|| GPT_SIZES.iter().find(|(_, _, _, d)| *d == dim));
            match named {
                Some((name, ..)) if hints.n_head.is_none() => GptConfig::named(name)?,
                // Not a named width: the heads come from the hint, else 64-dim heads as in
                // the official sizes.
                _ if hints.n_head.is_some() || dim % 64 == 0 => GptConfig {
                    dim,
                    n_head: hints.n_head.unwrap_or(dim / 64),
                    ..GptConfig::default()
                },
                _ => {
                    return Err(CheckpointError::Infer(format!(
                        "width {dim} is not a named GPT size; pass the model size explicitly"
                    )));
                }
            }
        }
    };
    if cfg.dim != dim {
        return Err(CheckpointError::Infer(format!(
            "the checkpoint has width {dim}, but {} has width {}",
            hints.gpt_model.as_deref().unwrap_or("the requested size"),
            cfg.dim
        )));
    }
    if dim == 0 || cfg.n_head == 0 || dim % cfg.n_head != 0 {
        return Err(CheckpointError::Infer(format!(
            "width {dim} does not split into {} attention heads",
            cfg.n_head
        )));
    }
    cfg.n_layer = n_layer;
    cfg.vocab_size = vocab_size;

    let wqkv = shape_of(sd, "layers.0.attention.wqkv.weight", 2)?;
    let kv_dim2 = wqkv[0].checked_sub(dim).unwrap_or(0);
    let head_dim = cfg.head_dim();
    if kv_dim2 == 0 || kv_dim2 % (2 * head_dim) != 0 {
        return Err(CheckpointError::Infer(format!(
            "wqkv has {} rows, which does not split into q ({dim}) and two equal k/v parts of {head_dim}-dim heads",
            wqkv[0]
        )));
    }
    let kv_heads = kv_dim2 / (2 * head_dim);
    cfg.n_kv_head = (kv_heads != cfg.n_head).then_some(kv_heads);

    let hidden = shape_of(sd, "layers.0.feed_forward.w1.weight", 2)?[0];
    if hidden != cfg.ffn_hidden_dim() {
        // Try the other rounding the official code allows before giving up.
        let found = [256usize, 128, 64, 32].into_iter().find(|&m| {
            GptConfig {
                multiple_of: m,
                ..cfg.clone()
            }
            .ffn_hidden_dim()
                == hidden
        });
        match found {
            Some(m) => cfg.multiple_of = m,
            None => {
                return Err(CheckpointError::Infer(format!(
                    "feed-forward width {hidden} does not follow find_multiple(int(8·{dim}/3), multiple_of)"
                )));
            }
        }
    }

    if let Some(table) = sd.get("cls_embedding.embedding_table.weight") {
        let table = ranked(table, "cls_embedding.embedding_table.weight", 2)?;
        cfg.model_type = ModelType::C2i;
        cfg.cls_token_num = 1;
        // The table has one extra row, the null class used by CFG.
        cfg.num_classes = table[0].saturating_sub(1);
        cfg.class_dropout_prob = 0.1;
    } else if let Some(fc1) = sd.get("cls_embedding.cap_proj.fc1.weight") {
        let fc1 = ranked(fc1, "cls_embedding.cap_proj.fc1.weight", 2)?;
        cfg.model_type = ModelType::T2i;
        cfg.caption_dim = fc1[1];
        cfg.cls_token_num = sd
            .get("cls_embedding.uncond_embedding")
            .map(|s| ranked(s, "cls_embedding.uncond_embedding", 2).map(|s| s[0]))
            .transpose()?
            .unwrap_or(120);
    } else {
        return Err(CheckpointError::Infer(
            "no condition embedder (cls_embedding.embedding_table or cls_embedding.cap_proj)"
                .into(),
        ));
    }

    let downsample = hints.downsample.unwrap_or(16);
    let image_size = hints
        .image_size
        .or_else(|| {
            hints
                .file_name
                .as_deref()
                .and_then(image_size_from_file_name)
        })
        .unwrap_or(256);
    if downsample == 0 || image_size == 0 {
        return Err(CheckpointError::Infer(format!(
            "image size {image_size} with a downsampling of {downsample}: both must be positive"
        )));
    }
    if image_size % downsample != 0 {
        return Err(CheckpointError::Infer(format!(
            "image size {image_size} is not a multiple of the tokenizer's downsampling {downsample}"
        )));
    }
    let grid = image_size / downsample;
    cfg.block_size = grid * grid;
    cfg.validate()?;
    Ok(cfg)
}

/// Infers a VQ configuration (width, channel multipliers, residual blocks, codebook) from shapes.
pub fn infer_vq_config(sd: &Shapes) -> Result<VqConfig, CheckpointError> {
    let conv_in = shape_of(sd, "encoder.conv_in.weight", 4)?;
    let ch = conv_in[0];
    if ch == 0 {
        return Err(CheckpointError::Infer(
            "'encoder.conv_in.weight' has no output channels".into(),
        ));
    }
    let in_channels = conv_in[1];
    let z_channels = shape_of(sd, "encoder.conv_out.weight", 4)?[0];
    let codebook = shape_of(sd, "quantize.embedding.weight", 2)?;
    let enc_levels = count_indexed(sd, "encoder.conv_blocks.", ".res.0.conv1.weight");
    let dec_levels = count_indexed(sd, "decoder.conv_blocks.", ".res.0.conv1.weight");
    if enc_levels == 0 || dec_levels == 0 {
        return Err(CheckpointError::Infer(
            "no encoder/decoder conv_blocks: this is not a LlamaGen VQ checkpoint".into(),
        ));
    }
    let mult = |prefix: &str, i: usize| -> Result<usize, CheckpointError> {
        Ok(shape_of(
            sd,
            &format!("{prefix}.conv_blocks.{i}.res.0.conv1.weight"),
            4,
        )?[0]
            / ch)
    };
    let encoder_ch_mult = (0..enc_levels)
        .map(|i| mult("encoder", i))
        .collect::<Result<Vec<_>, _>>()?;
    // Decoder conv_blocks.0 is the deepest level; ch_mult is listed shallow → deep.
    let mut decoder_ch_mult = (0..dec_levels)
        .map(|i| mult("decoder", i))
        .collect::<Result<Vec<_>, _>>()?;
    decoder_ch_mult.reverse();
    let num_res_blocks = count_indexed(sd, "encoder.conv_blocks.0.res.", ".conv1.weight");
    let out_channels = shape_of(sd, "decoder.conv_out.weight", 4)?[0];
    let cfg = VqConfig {
        codebook_size: codebook[0],
        codebook_embed_dim: codebook[1],
        codebook_show_usage: sd.contains_key("quantize.codebook_used"),
        encoder_ch_mult,
        decoder_ch_mult,
        z_channels,
        ch,
        num_res_blocks,
        in_channels,
        out_channels,
        ..VqConfig::default()
    };
    cfg.validate()?;
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_size_comes_from_the_official_file_names() {
        assert_eq!(
            image_size_from_file_name(Path::new("c2i_L_384.pt")),
            Some(384)
        );
        assert_eq!(
            image_size_from_file_name(Path::new("/x/c2i_XXL_256.pt")),
            Some(256)
        );
        assert_eq!(
            image_size_from_file_name(Path::new("t2i_XL_stage2_512.pt")),
            Some(512)
        );
        assert_eq!(image_size_from_file_name(Path::new("vq_ds16_c2i.pt")), None);
        // Training checkpoints name steps, not sizes.
        assert_eq!(
            image_size_from_file_name(Path::new("step-0000400.safetensors")),
            None
        );
        assert_eq!(image_size_from_file_name(Path::new("0050000.pt")), None);
        assert_eq!(image_size_from_file_name(Path::new("run-400.pt")), None);
    }
}
