//! Tokenizer and CLIP text encoder parity with transformers (fixtures a_tokens, b_text_encoder).

use crate::common;
use candle_core::{DType, Tensor};
use common::*;
use tessera::models::ModelDir;
use tessera::nn::tokenizer::ClipTokenizer;

fn prompts() -> Vec<String> {
    serde_json::from_str(&fixture_metadata("a_tokens")["prompts"]).unwrap()
}

fn check_tokenizer(tok: &ClipTokenizer, how: &str) {
    let f = fixture("a_tokens");
    let ids: Vec<Vec<i64>> = get(&f, "input_ids").to_vec2().unwrap();
    let lens: Vec<i64> = get(&f, "unpadded_len").to_vec1().unwrap();
    for (i, p) in prompts().iter().enumerate() {
        let got: Vec<i64> = tok.encode(p).unwrap().into_iter().map(i64::from).collect();
        assert_eq!(got, ids[i], "{how}: ids of prompt {i} {p:?}");
        assert_eq!(
            tok.unpadded_len(p).unwrap() as i64,
            lens[i],
            "{how}: unpadded length of {p:?}"
        );
    }
}

#[test]
fn tokenizer_json_matches_transformers_on_all_prompts() {
    check_tokenizer(
        &ClipTokenizer::from_dir(&tiny_model_dir().join("tokenizer")).unwrap(),
        "tokenizer.json",
    );
}

#[test]
fn vocab_and_merges_build_the_same_tokenizer() {
    let tmp = tempfile::tempdir().unwrap();
    for f in [
        "vocab.json",
        "merges.txt",
        "tokenizer_config.json",
        "special_tokens_map.json",
    ] {
        std::fs::copy(
            tiny_model_dir().join("tokenizer").join(f),
            tmp.path().join(f),
        )
        .unwrap();
    }
    check_tokenizer(
        &ClipTokenizer::from_dir(tmp.path()).unwrap(),
        "vocab.json + merges.txt",
    );
}

#[test]
fn text_encoder_matches_transformers() {
    let f = fixture("b_text_encoder");
    let dir = ModelDir::open(tiny_model_dir()).unwrap();
    let encoder = dir.load_text_encoder(&runtime(), DType::F32).unwrap();
    let ids: Vec<Vec<i64>> = get(&f, "input_ids").to_vec2().unwrap();
    let ids: Vec<Vec<u32>> = ids
        .into_iter()
        .map(|r| r.into_iter().map(|v| v as u32).collect())
        .collect();
    let out = encoder
        .forward(&Tensor::new(ids, &runtime().device).unwrap())
        .unwrap();
    assert_close(
        "text encoder last_hidden_state",
        &out,
        &get(&f, "last_hidden_state"),
        1e-4,
    );
}
