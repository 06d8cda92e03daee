//! The CLIP BPE tokenizer, as SD pipelines call it: `BOS + bpe(text) + EOS`, truncated to the
//! model's length (77) and padded with the folder's pad token.
//!
//! Loads `tokenizer/tokenizer.json` when present, else builds the same tokenizer from
//! `vocab.json` + `merges.txt` (what real SD folders ship) over a template holding CLIP's
//! normalisation, pre-tokenisation and post-processing exactly as in `tokenizer.json`.

use serde_json::Value;
use std::path::Path;
use std::str::FromStr;
use tessera_core::{Error, Result};
use tokenizers::Tokenizer;

const BPE_TEMPLATE: &str = include_str!("clip_bpe_template.json");
const BOS: &str = "<|startoftext|>";
const EOS: &str = "<|endoftext|>";

pub struct ClipTokenizer {
    inner: Tokenizer,
    max_len: usize,
    bos: u32,
    eos: u32,
    pad: u32,
}

fn bad(path: &Path, message: String) -> Error {
    Error::input(
        path,
        None,
        message,
        "restore the tokenizer files from the original diffusers model folder",
    )
}

impl ClipTokenizer {
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let json = dir.join("tokenizer.json");
        let mut inner = if json.is_file() {
            Tokenizer::from_file(&json).map_err(|e| bad(&json, format!("cannot load: {e}")))?
        } else {
            from_vocab_and_merges(dir)?
        };
        let config: Value = match dir.join("tokenizer_config.json") {
            p if p.is_file() => crate::config::read_json(&p)?,
            _ => Value::Null,
        };
        let max_len = config["model_max_length"]
            .as_u64()
            .filter(|&n| n <= 77)
            .unwrap_or(77) as usize;
        let pad_token = match &config["pad_token"] {
            Value::String(s) => s.clone(),
            Value::Object(o) => o
                .get("content")
                .and_then(Value::as_str)
                .unwrap_or(EOS)
                .to_string(),
            _ => EOS.to_string(),
        };
        if pad_token != EOS {
            // transformers makes a pad token an added special token, so that text is split
            // around it: SDXL's second tokenizer pads with `!`, and `world!!!` becomes
            // `world`, 0, 0, 0 (what `tokenizer.json` files saved by transformers hold too).
            inner
                .add_special_tokens([tokenizers::AddedToken::from(pad_token.clone(), true)])
                .map_err(|e| bad(dir, format!("cannot add the pad token {pad_token:?}: {e}")))?;
        }
        let id = |token: &str| {
            inner
                .token_to_id(token)
                .ok_or_else(|| bad(dir, format!("the vocabulary has no token {token:?}")))
        };
        Ok(Self {
            bos: id(BOS)?,
            eos: id(EOS)?,
            pad: id(&pad_token)?,
            max_len,
            inner,
        })
    }

    /// The same vocabulary padding with `token` (SD 2.x's OpenCLIP pads with "!").
    pub fn with_pad_token(mut self, token: &str) -> Result<Self> {
        self.pad = self
            .inner
            .token_to_id(token)
            .ok_or_else(|| Error::Other(format!("the CLIP vocabulary has no token {token:?}")))?;
        Ok(self)
    }

    /// Ids before truncation and padding, BOS and EOS included.
    fn raw_ids(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| Error::Other(format!("tokenizing {text:?}: {e}")))?;
        let mut ids = vec![self.bos];
        ids.extend_from_slice(enc.get_ids());
        ids.push(self.eos);
        Ok(ids)
    }

    /// `max_len` ids: BOS, the first `max_len - 2` tokens, EOS, then padding.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids = self.raw_ids(text)?;
        if ids.len() > self.max_len {
            ids.truncate(self.max_len - 1);
            ids.push(self.eos);
        }
        ids.resize(self.max_len, self.pad);
        Ok(ids)
    }

    /// Length before truncation (so callers can warn that a prompt was cut).
    pub fn unpadded_len(&self, text: &str) -> Result<usize> {
        Ok(self.raw_ids(text)?.len())
    }

    pub fn max_len(&self) -> usize {
        self.max_len
    }
}

fn from_vocab_and_merges(dir: &Path) -> Result<Tokenizer> {
    let vocab_path = dir.join("vocab.json");
    let merges_path = dir.join("merges.txt");
    let vocab: Value = crate::config::read_json(&vocab_path)?;
    let merges = std::fs::read_to_string(&merges_path).map_err(|e| {
        bad(
            &merges_path,
            format!("cannot read (and no tokenizer.json): {e}"),
        )
    })?;
    let merges: Vec<Value> = merges
        .lines()
        .filter(|l| !l.starts_with("#version") && !l.trim().is_empty())
        .map(|l| {
            let mut parts = l.split(' ');
            Value::from(vec![parts.next().unwrap_or(""), parts.next().unwrap_or("")])
        })
        .collect();
    let mut template: Value = serde_json::from_str(BPE_TEMPLATE).expect("valid bundled template");
    template["model"]["vocab"] = vocab;
    template["model"]["merges"] = Value::from(merges);
    Tokenizer::from_str(&template.to_string())
        .map_err(|e| bad(&vocab_path, format!("cannot build the BPE tokenizer: {e}")))
}
