//! Model configurations: the generator (`GptConfig`, the official `ModelArgs`) and the image
//! tokenizer (`VqConfig`), with every named size of the paper, and the exact list of tensors
//! (name, shape) each configuration has in an official `state_dict`.

use serde::{Deserialize, Serialize};

use crate::error::ConfigError;

/// What the generator is conditioned on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ModelType {
    /// Class-conditional (ImageNet class id).
    #[default]
    C2i,
    /// Text-conditional (FLAN-T5 caption features).
    T2i,
}

impl ModelType {
    pub fn as_str(self) -> &'static str {
        match self {
            ModelType::C2i => "c2i",
            ModelType::T2i => "t2i",
        }
    }
}

impl std::str::FromStr for ModelType {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "c2i" => Ok(ModelType::C2i),
            "t2i" => Ok(ModelType::T2i),
            other => Err(ConfigError::UnknownModelType(other.to_string())),
        }
    }
}

/// The named generator sizes of the official `GPT_models` table: (name, n_layer, n_head, dim).
pub const GPT_SIZES: &[(&str, usize, usize, usize)] = &[
    ("GPT-B", 12, 12, 768),
    ("GPT-L", 24, 16, 1024),
    ("GPT-XL", 36, 20, 1280),
    ("GPT-XXL", 48, 24, 1536),
    ("GPT-XXXL", 48, 40, 2560),
    ("GPT-1B", 22, 32, 2048),
    ("GPT-3B", 24, 32, 3200),
    ("GPT-7B", 32, 32, 4096),
];

/// Configuration of the Llama-style generator, field for field the official `ModelArgs`
/// (`autoregressive/models/gpt.py`). Unknown fields in JSON are ignored so that the manifest's
/// `max_batch_size` / `max_seq_len` / `initializer_range` read without complaint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GptConfig {
    pub dim: usize,
    pub n_layer: usize,
    pub n_head: usize,
    /// Key/value heads (grouped-query attention); `None` means `n_head`.
    pub n_kv_head: Option<usize>,
    pub multiple_of: usize,
    pub ffn_dim_multiplier: Option<f64>,
    pub rope_base: f64,
    pub norm_eps: f64,
    pub initializer_range: f64,
    pub token_dropout_p: f64,
    pub attn_dropout_p: f64,
    pub resid_dropout_p: f64,
    pub ffn_dropout_p: f64,
    pub drop_path_rate: f64,
    pub num_classes: usize,
    pub caption_dim: usize,
    pub class_dropout_prob: f64,
    pub model_type: ModelType,
    pub vocab_size: usize,
    /// Number of condition tokens in front of the image tokens (1 for c2i, 120 for t2i).
    pub cls_token_num: usize,
    /// Number of image tokens: grid_size².
    pub block_size: usize,
}

impl Default for GptConfig {
    fn default() -> Self {
        // Official ModelArgs defaults (dim 4096 / 32 layers / 32 heads) with the sampling scripts'
        // c2i settings: vocab 16384, 1000 classes, 256 tokens (256 px with VQ-16).
        Self {
            dim: 4096,
            n_layer: 32,
            n_head: 32,
            n_kv_head: None,
            multiple_of: 256,
            ffn_dim_multiplier: None,
            rope_base: 10000.0,
            norm_eps: 1e-5,
            initializer_range: 0.02,
            token_dropout_p: 0.1,
            attn_dropout_p: 0.0,
            resid_dropout_p: 0.1,
            ffn_dropout_p: 0.1,
            drop_path_rate: 0.0,
            num_classes: 1000,
            caption_dim: 2048,
            class_dropout_prob: 0.1,
            model_type: ModelType::C2i,
            vocab_size: 16384,
            cls_token_num: 1,
            block_size: 256,
        }
    }
}

/// Kind of a state-dict entry: a trained parameter, or a buffer stored beside them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    Parameter,
    Buffer,
}

/// One expected entry of an official state dict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub kind: EntryKind,
}

impl TensorSpec {
    pub(crate) fn param(name: impl Into<String>, shape: &[usize]) -> Self {
        Self {
            name: name.into(),
            shape: shape.to_vec(),
            kind: EntryKind::Parameter,
        }
    }
    fn buffer(name: impl Into<String>, shape: &[usize]) -> Self {
        Self {
            name: name.into(),
            shape: shape.to_vec(),
            kind: EntryKind::Buffer,
        }
    }
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Smallest multiple of `k` that is ≥ `n` (official `find_multiple`).
pub fn find_multiple(n: usize, k: usize) -> usize {
    if n % k == 0 { n } else { n + k - n % k }
}

impl GptConfig {
    /// A named size (`GPT-B` … `GPT-7B`, case-insensitive) with the c2i defaults.
    pub fn named(name: &str) -> Result<Self, ConfigError> {
        let (_, n_layer, n_head, dim) = GPT_SIZES
            .iter()
            .find(|(n, ..)| n.eq_ignore_ascii_case(name))
            .ok_or_else(|| ConfigError::UnknownGptSize(name.to_string()))?;
        Ok(Self {
            n_layer: *n_layer,
            n_head: *n_head,
            dim: *dim,
            ..Self::default()
        })
    }

    /// The text-conditional variant: 120 condition tokens of FLAN-T5-XL features (2048-dim).
    pub fn into_t2i(mut self) -> Self {
        self.model_type = ModelType::T2i;
        self.cls_token_num = 120;
        self.caption_dim = 2048;
        self
    }

    /// The named size whose (dim, n_layer, n_head) this config has, if any.
    pub fn size_name(&self) -> Option<&'static str> {
        GPT_SIZES
            .iter()
            .find(|(_, l, h, d)| *l == self.n_layer && *h == self.n_head && *d == self.dim)
            .map(|(n, ..)| *n)
    }

    pub fn head_dim(&self) -> usize {
        self.dim / self.n_head
    }

    pub fn kv_heads(&self) -> usize {
        self.n_kv_head.unwrap_or(self.n_head)
    }

    /// Side of the square token grid (block_size = grid_size²).
    pub fn grid_size(&self) -> usize {
        (self.block_size as f64).sqrt().round() as usize
    }

    /// SwiGLU hidden width: `find_multiple(int(2·4·dim/3) [× ffn_dim_multiplier], multiple_of)`.
    pub fn ffn_hidden_dim(&self) -> usize {
        let mut hidden = (2 * 4 * self.dim) / 3;
        if let Some(m) = self.ffn_dim_multiplier {
            hidden = (m * hidden as f64) as usize;
        }
        find_multiple(hidden, self.multiple_of)
    }

    /// Rows of the class-embedding table: one extra "null class" row when CFG dropout is on.
    pub fn class_table_rows(&self) -> usize {
        self.num_classes + usize::from(self.class_dropout_prob > 0.0)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |why: String| Err(ConfigError::Invalid(why));
        if self.n_head == 0 || self.dim % self.n_head != 0 {
            return bad(format!(
                "dim {} is not divisible by n_head {}",
                self.dim, self.n_head
            ));
        }
        if self.head_dim() % 4 != 0 {
            return bad(format!(
                "head_dim {} must be a multiple of 4 for the 2-D rotary embedding",
                self.head_dim()
            ));
        }
        let kv = self.kv_heads();
        if kv == 0 || self.n_head % kv != 0 {
            return bad(format!(
                "n_head {} is not a multiple of n_kv_head {kv}",
                self.n_head
            ));
        }
        let g = self.grid_size();
        if g * g != self.block_size {
            return bad(format!(
                "block_size {} is not a square number",
                self.block_size
            ));
        }
        if self.cls_token_num == 0 {
            return bad("cls_token_num must be at least 1".into());
        }
        Ok(())
    }

    /// Every tensor of the official state dict of this configuration, in module order.
    pub fn state_dict_specs(&self) -> Vec<TensorSpec> {
        let d = self.dim;
        let mut v = Vec::new();
        match self.model_type {
            ModelType::C2i => v.push(TensorSpec::param(
                "cls_embedding.embedding_table.weight",
                &[self.class_table_rows(), d],
            )),
            ModelType::T2i => {
                v.push(TensorSpec::buffer(
                    "cls_embedding.uncond_embedding",
                    &[self.cls_token_num, self.caption_dim],
                ));
                v.push(TensorSpec::param(
                    "cls_embedding.cap_proj.fc1.weight",
                    &[d, self.caption_dim],
                ));
                v.push(TensorSpec::param(
                    "cls_embedding.cap_proj.fc2.weight",
                    &[d, d],
                ));
            }
        }
        v.push(TensorSpec::param(
            "tok_embeddings.weight",
            &[self.vocab_size, d],
        ));
        let kv_dim = self.kv_heads() * self.head_dim();
        let hidden = self.ffn_hidden_dim();
        for i in 0..self.n_layer {
            let p = format!("layers.{i}");
            v.push(TensorSpec::param(
                format!("{p}.attention.wqkv.weight"),
                &[d + 2 * kv_dim, d],
            ));
            v.push(TensorSpec::param(
                format!("{p}.attention.wo.weight"),
                &[d, d],
            ));
            v.push(TensorSpec::param(
                format!("{p}.feed_forward.w1.weight"),
                &[hidden, d],
            ));
            v.push(TensorSpec::param(
                format!("{p}.feed_forward.w3.weight"),
                &[hidden, d],
            ));
            v.push(TensorSpec::param(
                format!("{p}.feed_forward.w2.weight"),
                &[d, hidden],
            ));
            v.push(TensorSpec::param(
                format!("{p}.attention_norm.weight"),
                &[d],
            ));
            v.push(TensorSpec::param(format!("{p}.ffn_norm.weight"), &[d]));
        }
        v.push(TensorSpec::param("norm.weight", &[d]));
        v.push(TensorSpec::param("output.weight", &[self.vocab_size, d]));
        v
    }

    /// Number of trainable parameters (what the official scripts log; buffers excluded).
    pub fn num_params(&self) -> usize {
        count_params(&self.state_dict_specs())
    }
}

fn count_params(specs: &[TensorSpec]) -> usize {
    specs
        .iter()
        .filter(|s| s.kind == EntryKind::Parameter)
        .map(TensorSpec::numel)
        .sum()
}

/// Configuration of the VQ image tokenizer (official `tokenizer_image/vq_model.py`): the
/// `ModelArgs` of the quantizer plus the encoder / decoder widths (the official `VQModel`
/// hard-codes `ch = 128`; here it is a field so narrower tokenizers can be built).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct VqConfig {
    pub codebook_size: usize,
    pub codebook_embed_dim: usize,
    pub codebook_l2_norm: bool,
    pub codebook_show_usage: bool,
    pub commit_loss_beta: f64,
    pub entropy_loss_ratio: f64,
    pub encoder_ch_mult: Vec<usize>,
    pub decoder_ch_mult: Vec<usize>,
    pub z_channels: usize,
    pub dropout_p: f64,
    /// Base channel width of encoder and decoder (official: 128).
    pub ch: usize,
    pub num_res_blocks: usize,
    pub in_channels: usize,
    pub out_channels: usize,
    /// Groups of every GroupNorm (official `Normalize`: 32). With narrow widths 32 groups
    /// degenerate: at `ch = 32` each group is one channel, an instance norm that throws away
    /// each feature's per-image mean and scale (the decoder's last norm then cannot carry the
    /// image's colour to `conv_out`). Narrow tokenizers keep the official ratio of about four
    /// channels per group instead. Not stored in checkpoints; model cards record it.
    pub norm_groups: usize,
}

/// Entries of the FIFO codebook-usage buffer (hard-coded in the official quantizer).
pub const CODEBOOK_USAGE_LEN: usize = 65536;

impl Default for VqConfig {
    fn default() -> Self {
        Self {
            codebook_size: 16384,
            codebook_embed_dim: 8,
            codebook_l2_norm: true,
            codebook_show_usage: true,
            commit_loss_beta: 0.25,
            entropy_loss_ratio: 0.0,
            encoder_ch_mult: vec![1, 1, 2, 2, 4],
            decoder_ch_mult: vec![1, 1, 2, 2, 4],
            z_channels: 256,
            dropout_p: 0.0,
            ch: 128,
            num_res_blocks: 2,
            in_channels: 3,
            out_channels: 3,
            norm_groups: crate::vq::NORM_GROUPS,
        }
    }
}

impl VqConfig {
    /// `VQ-16` (16× downsampling) or `VQ-8` (8×), case-insensitive.
    pub fn named(name: &str) -> Result<Self, ConfigError> {
        let mult = match name.to_ascii_uppercase().as_str() {
            "VQ-16" | "VQ16" => vec![1, 1, 2, 2, 4],
            "VQ-8" | "VQ8" => vec![1, 2, 2, 4],
            _ => return Err(ConfigError::UnknownVqSize(name.to_string())),
        };
        Ok(Self {
            encoder_ch_mult: mult.clone(),
            decoder_ch_mult: mult,
            ..Self::default()
        })
    }

    pub fn size_name(&self) -> Option<&'static str> {
        if self.ch != 128 || self.z_channels != 256 || self.norm_groups != crate::vq::NORM_GROUPS {
            return None;
        }
        ["VQ-16", "VQ-8"].into_iter().find(|n| {
            let named = Self::named(n).expect("known name");
            named.encoder_ch_mult == self.encoder_ch_mult
                && named.decoder_ch_mult == self.decoder_ch_mult
        })
    }

    /// Spatial downsampling factor of the encoder: 2^(levels − 1).
    pub fn downsample(&self) -> usize {
        1 << (self.encoder_ch_mult.len().saturating_sub(1))
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |why: String| Err(ConfigError::Invalid(why));
        if self.encoder_ch_mult.is_empty() || self.decoder_ch_mult.is_empty() {
            return bad("channel multipliers must not be empty".into());
        }
        if self.norm_groups == 0 {
            return bad("GroupNorm needs at least one group".into());
        }
        for m in self.encoder_ch_mult.iter().chain(&self.decoder_ch_mult) {
            if (self.ch * m) % self.norm_groups != 0 {
                return bad(format!(
                    "channel width {} is not a multiple of the {} GroupNorm groups",
                    self.ch * m,
                    self.norm_groups
                ));
            }
        }
        if self.codebook_size == 0 || self.codebook_embed_dim == 0 {
            return bad("empty codebook".into());
        }
        Ok(())
    }

    /// Every tensor of the official state dict of this configuration.
    pub fn state_dict_specs(&self) -> Vec<TensorSpec> {
        let mut v = Vec::new();
        let conv = |v: &mut Vec<TensorSpec>, name: String, cin: usize, cout: usize, k: usize| {
            v.push(TensorSpec::param(
                format!("{name}.weight"),
                &[cout, cin, k, k],
            ));
            v.push(TensorSpec::param(format!("{name}.bias"), &[cout]));
        };
        let norm = |v: &mut Vec<TensorSpec>, name: String, c: usize| {
            v.push(TensorSpec::param(format!("{name}.weight"), &[c]));
            v.push(TensorSpec::param(format!("{name}.bias"), &[c]));
        };
        let resnet = |v: &mut Vec<TensorSpec>, p: String, cin: usize, cout: usize| {
            norm(v, format!("{p}.norm1"), cin);
            conv(v, format!("{p}.conv1"), cin, cout, 3);
            norm(v, format!("{p}.norm2"), cout);
            conv(v, format!("{p}.conv2"), cout, cout, 3);
            if cin != cout {
                conv(v, format!("{p}.nin_shortcut"), cin, cout, 1);
            }
        };
        let attn = |v: &mut Vec<TensorSpec>, p: String, c: usize| {
            norm(v, format!("{p}.norm"), c);
            for n in ["q", "k", "v", "proj_out"] {
                conv(v, format!("{p}.{n}"), c, c, 1);
            }
        };
        let ch = self.ch;
        let nres = self.num_res_blocks;

        // Encoder.
        let mult = &self.encoder_ch_mult;
        conv(&mut v, "encoder.conv_in".into(), self.in_channels, ch, 3);
        let mut block_in = ch;
        for (i, m) in mult.iter().enumerate() {
            let block_out = ch * m;
            for r in 0..nres {
                resnet(
                    &mut v,
                    format!("encoder.conv_blocks.{i}.res.{r}"),
                    block_in,
                    block_out,
                );
                block_in = block_out;
            }
            if i == mult.len() - 1 {
                for r in 0..nres {
                    attn(
                        &mut v,
                        format!("encoder.conv_blocks.{i}.attn.{r}"),
                        block_in,
                    );
                }
            } else {
                conv(
                    &mut v,
                    format!("encoder.conv_blocks.{i}.downsample.conv"),
                    block_in,
                    block_in,
                    3,
                );
            }
        }
        resnet(&mut v, "encoder.mid.0".into(), block_in, block_in);
        attn(&mut v, "encoder.mid.1".into(), block_in);
        resnet(&mut v, "encoder.mid.2".into(), block_in, block_in);
        norm(&mut v, "encoder.norm_out".into(), block_in);
        conv(
            &mut v,
            "encoder.conv_out".into(),
            block_in,
            self.z_channels,
            3,
        );

        // Decoder: conv_blocks.0 is the deepest level.
        let mult = &self.decoder_ch_mult;
        let mut block_in = ch * mult[mult.len() - 1];
        conv(
            &mut v,
            "decoder.conv_in".into(),
            self.z_channels,
            block_in,
            3,
        );
        resnet(&mut v, "decoder.mid.0".into(), block_in, block_in);
        attn(&mut v, "decoder.mid.1".into(), block_in);
        resnet(&mut v, "decoder.mid.2".into(), block_in, block_in);
        for i in 0..mult.len() {
            let block_out = ch * mult[mult.len() - 1 - i];
            for r in 0..=nres {
                resnet(
                    &mut v,
                    format!("decoder.conv_blocks.{i}.res.{r}"),
                    block_in,
                    block_out,
                );
                block_in = block_out;
            }
            if i == 0 {
                for r in 0..=nres {
                    attn(
                        &mut v,
                        format!("decoder.conv_blocks.{i}.attn.{r}"),
                        block_in,
                    );
                }
            }
            if i != mult.len() - 1 {
                conv(
                    &mut v,
                    format!("decoder.conv_blocks.{i}.upsample.conv"),
                    block_in,
                    block_in,
                    3,
                );
            }
        }
        norm(&mut v, "decoder.norm_out".into(), block_in);
        conv(
            &mut v,
            "decoder.conv_out".into(),
            block_in,
            self.out_channels,
            3,
        );

        // Quantizer and the 1×1 convolutions around it.
        v.push(TensorSpec::param(
            "quantize.embedding.weight",
            &[self.codebook_size, self.codebook_embed_dim],
        ));
        if self.codebook_show_usage {
            v.push(TensorSpec::buffer(
                "quantize.codebook_used",
                &[CODEBOOK_USAGE_LEN],
            ));
        }
        conv(
            &mut v,
            "quant_conv".into(),
            self.z_channels,
            self.codebook_embed_dim,
            1,
        );
        conv(
            &mut v,
            "post_quant_conv".into(),
            self.codebook_embed_dim,
            self.z_channels,
            1,
        );
        v
    }

    pub fn num_params(&self) -> usize {
        count_params(&self.state_dict_specs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ffn_width_follows_official_rounding() {
        assert_eq!(GptConfig::named("GPT-B").unwrap().ffn_hidden_dim(), 2048);
        assert_eq!(GptConfig::named("GPT-L").unwrap().ffn_hidden_dim(), 2816);
        assert_eq!(GptConfig::named("GPT-3B").unwrap().ffn_hidden_dim(), 8704);
    }

    #[test]
    fn named_sizes_are_case_insensitive_and_unknown_is_an_error() {
        assert_eq!(GptConfig::named("gpt-xl").unwrap().dim, 1280);
        assert!(matches!(
            GptConfig::named("GPT-Q"),
            Err(ConfigError::UnknownGptSize(_))
        ));
        assert_eq!(VqConfig::named("vq-8").unwrap().downsample(), 8);
        assert_eq!(VqConfig::named("VQ-16").unwrap().downsample(), 16);
    }

    #[test]
    fn norm_groups_default_to_the_official_32_and_must_divide_every_width() {
        // Cards written before the field existed load with the official value.
        let mut old = serde_json::to_value(VqConfig::named("VQ-8").unwrap()).unwrap();
        old.as_object_mut().unwrap().remove("norm_groups");
        let cfg: VqConfig = serde_json::from_value(old).unwrap();
        assert_eq!(cfg.norm_groups, 32);
        assert_eq!(cfg.size_name(), Some("VQ-8"));
        let narrow = VqConfig {
            ch: 32,
            norm_groups: 8,
            ..VqConfig::named("VQ-8").unwrap()
        };
        narrow.validate().unwrap();
        assert_eq!(narrow.size_name(), None);
        let bad = VqConfig {
            ch: 36,
            norm_groups: 8,
            ..narrow.clone()
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("8 GroupNorm groups")
        );
        let none = VqConfig {
            norm_groups: 0,
            ..narrow
        };
        assert!(none.validate().is_err());
    }
}
