//! The prompt tokenizer: a Hugging Face `tokenizer.json` (for FLAN-T5: a SentencePiece Unigram
//! model) read by the `tokenizers` crate, used as the official `T5Embedder` calls it:
//! `max_length` tokens, truncation, `</s>` appended, right padding with `<pad>`, and the
//! attention mask.

use std::path::{Path, PathBuf};

use super::TextError;

/// The tokens of one prompt, padded to the fixed length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tokens {
    /// `max_length` ids: the text's tokens (truncated to `max_length − 1`), `</s>`, then pads.
    pub ids: Vec<u32>,
    /// True at the real tokens (including `</s>`), false at the padding.
    pub mask: Vec<bool>,
}

impl Tokens {
    /// Number of real tokens.
    pub fn len(&self) -> usize {
        self.mask.iter().filter(|&&m| m).count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A `tokenizers` tokenizer with T5's end-of-sequence and padding ids.
pub struct PromptTokenizer {
    inner: tokenizers::Tokenizer,
    pub path: PathBuf,
    pub eos_id: u32,
    pub pad_id: u32,
}

impl std::fmt::Debug for PromptTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PromptTokenizer")
            .field("path", &self.path)
            .field("eos_id", &self.eos_id)
            .field("pad_id", &self.pad_id)
            .finish()
    }
}

impl PromptTokenizer {
    /// Reads `tokenizer.json`. The end-of-sequence and padding ids are the tokenizer's `</s>`
    /// and `<pad>` when it has them, else the model config's `eos_token_id` / `pad_token_id`.
    pub fn open(
        path: impl AsRef<Path>,
        eos_fallback: Option<u32>,
        pad_fallback: Option<u32>,
    ) -> Result<Self, TextError> {
        let path = path.as_ref().to_path_buf();
        // The tokenizers crate panics on some malformed files (a decoder entry that is not
        // valid JSON of its kind, found by the prompt_tokenizer fuzz target): contained here.
        let inner = crate::error::contain(|| tokenizers::Tokenizer::from_file(&path))
            .map_err(|panic| TextError::Tokenizer {
                path: path.clone(),
                reason: format!("the tokenizer reader failed ({panic})"),
            })?
            .map_err(|e| TextError::Tokenizer {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        let missing = |what: &str| TextError::Tokenizer {
            path: path.clone(),
            reason: format!("no {what} token, and the model config names no {what} id"),
        };
        let eos_id = inner
            .token_to_id("</s>")
            .or(eos_fallback)
            .ok_or_else(|| missing("</s>"))?;
        let pad_id = inner
            .token_to_id("<pad>")
            .or(pad_fallback)
            .ok_or_else(|| missing("<pad>"))?;
        Ok(Self {
            inner,
            path,
            eos_id,
            pad_id,
        })
    }

    /// The text's own tokens, without special tokens.
    pub fn token_ids(&self, text: &str) -> Result<Vec<u32>, TextError> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| TextError::Tokenizer {
                path: self.path.clone(),
                reason: format!("cannot tokenize {text:?}: {e}"),
            })?;
        Ok(enc.get_ids().to_vec())
    }

    /// `max_length` ids and their mask, as `tokenizer(text, max_length=…, truncation=True,
    /// padding='max_length', add_special_tokens=True)` gives them for T5: at most
    /// `max_length − 1` text tokens, then `</s>`, then padding.
    pub fn tokenize(&self, text: &str, max_length: usize) -> Result<Tokens, TextError> {
        if max_length == 0 {
            return Err(TextError::Tokenizer {
                path: self.path.clone(),
                reason: "the maximum length must be at least 1".into(),
            });
        }
        let mut ids = self.token_ids(text)?;
        ids.truncate(max_length - 1);
        ids.push(self.eos_id);
        let real = ids.len();
        ids.resize(max_length, self.pad_id);
        let mask = (0..max_length).map(|i| i < real).collect();
        Ok(Tokens { ids, mask })
    }
}

/// Writes a minimal T5-style `tokenizer.json` to `path`: a SentencePiece Unigram model over
/// `▁word` pieces for `words` and single letters (so any lower-case text tokenizes), with T5's
/// special ids `<pad>` = 0, `</s>` = 1, `<unk>` = 2. Its vocabulary has `words.len() + 30`
/// entries. For tests and toy models; real models come with their own `tokenizer.json`.
pub fn write_word_tokenizer(path: &Path, words: &[&str]) -> Result<(), TextError> {
    use tokenizers::models::unigram::Unigram;
    use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
    let err = |reason: String| TextError::Tokenizer {
        path: path.to_path_buf(),
        reason,
    };
    let mut vocab: Vec<(String, f64)> = ["<pad>", "</s>", "<unk>"]
        .iter()
        .map(|s| (s.to_string(), 0.0))
        .collect();
    vocab.extend(words.iter().map(|w| (format!("\u{2581}{w}"), -2.0)));
    vocab.push(("\u{2581}".into(), -4.0));
    vocab.extend(('a'..='z').map(|c| (c.to_string(), -5.0)));
    let model = Unigram::from(vocab, Some(2), false).map_err(|e| err(e.to_string()))?;
    let mut tok = tokenizers::Tokenizer::new(model);
    tok.with_pre_tokenizer(Some(Metaspace::new(
        '\u{2581}',
        PrependScheme::Always,
        true,
    )));
    tok.save(path, false).map_err(|e| err(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_tiny_tokenizer(dir: &Path) -> PathBuf {
        let path = dir.join("tokenizer.json");
        let words = ["a", "red", "cat", "dog", "on", "the", "mat", "blue", "sky"];
        write_word_tokenizer(&path, &words).unwrap();
        path
    }

    #[test]
    fn pads_truncates_and_ends_with_eos() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_tiny_tokenizer(dir.path());
        let tok = PromptTokenizer::open(&path, None, None).unwrap();
        assert_eq!((tok.eos_id, tok.pad_id), (1, 0));
        let red = tok.token_ids("a red cat").unwrap();
        assert_eq!(red, vec![3, 4, 5]);

        let t = tok.tokenize("a red cat", 6).unwrap();
        assert_eq!(t.ids, vec![3, 4, 5, 1, 0, 0]);
        assert_eq!(t.mask, vec![true, true, true, true, false, false]);
        assert_eq!(t.len(), 4);

        // Truncation keeps max_length − 1 tokens and still ends with </s>.
        let t = tok.tokenize("a red cat on the mat", 4).unwrap();
        assert_eq!(t.ids, vec![3, 4, 5, 1]);
        assert!(t.mask.iter().all(|&m| m));

        // Unknown words fall back to letters; the empty prompt is just </s>.
        let t = tok.tokenize("cab", 8).unwrap();
        assert_eq!(t.ids[t.len() - 1], 1);
        assert!(t.len() > 2);
        let t = tok.tokenize("", 3).unwrap();
        assert_eq!(t.ids, vec![1, 0, 0]);
        assert!(tok.tokenize("x", 0).is_err());
    }

    #[test]
    fn a_broken_tokenizer_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer.json");
        std::fs::write(&path, "{not json").unwrap();
        let err = PromptTokenizer::open(&path, Some(1), Some(0)).unwrap_err();
        assert!(err.to_string().contains("tokenizer.json"), "{err}");
    }
}
