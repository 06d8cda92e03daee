//! Models shared by consecutive renders of a batch.
//!
//! A lone render loads each component when first needed and drops it as soon as it is done
//! with it (see the `render` module). In a batch, consecutive specs often use the same model (a
//! folder of posters, a spec's seed variations), so a [`Session`], owned by the batch loop,
//! lets a render hand what it loaded to the next one instead of reading it again.
//!
//! What is kept when:
//! - A component is kept past the point where a lone render drops it (the text encoders after
//!   the prompts, the UNet before the decode, the VAE halves at the end) only when the batch
//!   says the next render needs the very same weights ([`Keys`]): the same model (canonical
//!   path: a folder, or a single file with the same `--config`), device, precision and LoRA
//!   list with weights. The VAE does not depend on the precision or the LoRAs (its encoder runs
//!   in f32, its decoder is held with its dtype, and LoRAs do not touch it).
//! - A kept component stays resident through the whole of this render: its weights add to
//!   every phase's peak, the price of not reading them again.
//! - A render with a memory budget or streamed UNet weights has no keys: it takes nothing from
//!   the session and leaves nothing in it, so its peak is a lone render's (a budgeted render
//!   keeps its single-window peak; streamed weights are never held resident anyway).
//! - The prompts' embeddings are kept with the text encoders: a next render of the very same
//!   prompts (a spec's variations) takes them as they are and runs no text encoder.
//! - Whatever the next render will not use is dropped when this one is done with it; the batch
//!   then returns the freed memory to the kernel.
//! - The last render of a batch, or a lone one (no next), drops everything at the usual times:
//!   peak memory and load counts are those of a render without a session.

use candle_core::{Device, Tensor};
use std::path::{Path, PathBuf};
use tessera_core::choices::{DeviceChoice, Precision};
use tessera_core::Result;
use tessera_diffusion::autoencoder::Halves;
use tessera_diffusion::Cond;
use tessera_models::text::TextEncoders;
use tessera_models::ModelDir;
use tessera_nn::unet::UNet;
use tessera_nn::Runtime;
use tessera_plan::spec::TextPrompt;
use tessera_plan::Settings;

/// What determines a component's weights.
#[derive(Debug, Clone, PartialEq)]
pub struct Key {
    model: PathBuf,
    config: Option<PathBuf>,
    device: DeviceChoice,
    /// `None` for the VAE, whose weights do not depend on it.
    precision: Option<Precision>,
    loras: Vec<(PathBuf, f64)>,
}

/// The keys of the components a render would share (`None`: it shares nothing of that kind).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Keys {
    pub text: Option<Key>,
    pub unet: Option<Key>,
    pub vae: Option<Key>,
}

impl Keys {
    /// The keys of a render of `s`: none under a memory budget or with streamed weights.
    pub fn of(s: &Settings) -> Keys {
        if s.max_memory.is_some() || s.stream_weights {
            return Keys::default();
        }
        let vae = Key {
            model: canonical(&crate::facts::model_path(s)),
            config: s.model_config.as_deref().map(canonical),
            device: s.device,
            precision: None,
            loras: Vec::new(),
        };
        let weighted = Key {
            precision: Some(s.precision),
            loras: s.loras.iter().map(|(p, w)| (canonical(p), *w)).collect(),
            ..vae.clone()
        };
        Keys {
            text: Some(weighted.clone()),
            unet: Some(weighted),
            vae: Some(vae),
        }
    }
}

/// Two spellings of one file are one model.
fn canonical(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

/// One kind of component, held under its key.
pub(crate) struct Slot<T>(Option<(Key, T)>);

impl<T> Default for Slot<T> {
    fn default() -> Self {
        Self(None)
    }
}

impl<T> Slot<T> {
    /// The held component, if it has these weights.
    pub(crate) fn take(&mut self, key: Option<&Key>) -> Option<T> {
        match self.0.take() {
            Some((held, value)) if Some(&held) == key => Some(value),
            _ => None,
        }
    }

    /// Hold `value` (loaded under `key`) if the next render wants it; else it is dropped here.
    pub(crate) fn put(&mut self, key: Option<&Key>, wanted: Option<&Key>, value: T) {
        self.0 = match key {
            Some(key) if Some(key) == wanted => Some((key.clone(), value)),
            _ => None,
        };
    }

    /// Drop what is not under `key`.
    fn keep_only(&mut self, key: Option<&Key>) {
        if self.0.as_ref().is_some_and(|(held, _)| Some(held) != key) {
            self.0 = None;
        }
    }

    fn held(&self) -> bool {
        self.0.is_some()
    }
}

/// A prompt pair as the text encoders made it.
#[derive(Clone)]
pub(crate) struct Embedded {
    negative: String,
    text: String,
    context: Tensor,
    pooled: Option<Tensor>,
}

/// The components a batch's renders hand on, and what the next render will need.
#[derive(Default)]
pub struct Session {
    /// The device opened last: kept components live on it, and a GPU is opened once.
    device: Option<(DeviceChoice, Device)>,
    /// What the next render needs (default: nothing follows, or it is not known).
    pub(crate) next: Keys,
    pub(crate) text: Slot<TextEncoders>,
    /// The last render's prompts, under its text encoders' key.
    pub(crate) embedded: Slot<Vec<Embedded>>,
    pub(crate) unet: Slot<UNet>,
    pub(crate) vae: Slot<Halves>,
}

impl Session {
    /// Before each render of a batch, say what the render after it needs: `None` when nothing
    /// follows (or it is not known). What it does not need is dropped as soon as the coming
    /// render is done with it.
    pub fn expect_next(&mut self, next: Option<&Settings>) {
        self.next = next.map(Keys::of).unwrap_or_default();
    }

    /// The components held now: "text encoders", "unet", "vae".
    pub fn held(&self) -> Vec<&'static str> {
        [
            ("text encoders", self.text.held()),
            ("unet", self.unet.held()),
            ("vae", self.vae.held()),
        ]
        .into_iter()
        .filter_map(|(name, held)| held.then_some(name))
        .collect()
    }

    /// The device `s` asks for at its precision: the one opened before when it is the same
    /// choice (tensors of kept components must be on the very device a render uses).
    pub(crate) fn runtime(&mut self, s: &Settings) -> Result<Runtime> {
        if let Some((choice, device)) = &self.device {
            if *choice == s.device {
                return Ok(Runtime::new(device.clone(), s.precision));
            }
        }
        let rt = crate::facts::open_runtime(s)?;
        self.device = Some((s.device, rt.device.clone()));
        Ok(rt)
    }

    /// Before a render of `keys`: drop whatever it will not use, before it loads anything.
    pub(crate) fn begin(&mut self, keys: &Keys) {
        self.text.keep_only(keys.text.as_ref());
        self.embedded.keep_only(keys.text.as_ref());
        self.unet.keep_only(keys.unet.as_ref());
        self.vae.keep_only(keys.vae.as_ref());
    }

    /// Each prompt as `[uncond(negative), cond(text)]`: from the last render's embeddings
    /// when it encoded every one of them, else by the text encoders (held, or loaded). The
    /// encoders and embeddings stay for the next render if it shares them, else they go.
    pub(crate) fn encode_prompts(
        &mut self,
        key: Option<&Key>,
        model: &ModelDir,
        rt: &Runtime,
        prompts: &[TextPrompt],
    ) -> Result<Vec<Cond>> {
        let wanted = self.next.text.clone();
        let cached = self.embedded.take(key).unwrap_or_default();
        let find = |p: &TextPrompt| {
            cached
                .iter()
                .find(|e| e.negative == p.negative && e.text == p.text)
                .cloned()
        };
        let found = prompts.iter().map(find).collect::<Option<Vec<_>>>();
        let embedded = match found.filter(|_| !prompts.is_empty()) {
            Some(embedded) => embedded,
            None => {
                let encoders = match self.text.take(key) {
                    Some(held) => held,
                    None => TextEncoders::load(model, rt)?,
                };
                let embedded = prompts
                    .iter()
                    .map(|p| {
                        let e = encoders.encode_pair(&p.negative, &p.text)?;
                        Ok(Embedded {
                            negative: p.negative.clone(),
                            text: p.text.clone(),
                            context: e.context,
                            pooled: e.pooled,
                        })
                    })
                    .collect::<Result<Vec<_>>>()?;
                self.text.put(key, wanted.as_ref(), encoders);
                embedded
            }
        };
        let conds = prompts
            .iter()
            .zip(&embedded)
            .map(|(p, e)| Cond {
                context: e.context.clone(),
                pooled: e.pooled.clone(),
                guidance: p.guidance,
            })
            .collect();
        self.embedded.put(key, wanted.as_ref(), embedded);
        Ok(conds)
    }

    /// The components a render of `keys` keeps loaded for the next render.
    pub(crate) fn kept_for_next(&self, keys: &Keys) -> Vec<&'static str> {
        let next = &self.next;
        [
            ("text encoders", &keys.text, &next.text),
            ("unet", &keys.unet, &next.unet),
            ("vae", &keys.vae, &next.vae),
        ]
        .into_iter()
        .filter_map(|(name, key, next)| (key.is_some() && key == next).then_some(name))
        .collect()
    }

    /// After a render: drop whatever the next render will not use.
    pub(crate) fn settle(&mut self) {
        let next = self.next.clone();
        self.begin(&next);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        tessera_plan::spec::resolve(None, &Default::default()).unwrap()
    }

    #[test]
    fn keys_name_what_determines_each_component() {
        let s = settings();
        let base = Keys::of(&s);
        assert!(base.text.is_some() && base.unet.is_some() && base.vae.is_some());
        // Another spelling of the same folder is the same model.
        let mut same = s.clone();
        let model = crate::facts::model_path(&s);
        same.model = Some(model.join("..").join(model.file_name().unwrap()));
        assert_eq!(Keys::of(&same), base);
        // Precision and LoRAs change the text encoder's and UNet's weights, not the VAE's.
        let mut f16 = s.clone();
        f16.precision = Precision::F16;
        let mut lora = s.clone();
        lora.loras = vec![("style.safetensors".into(), 0.8)];
        let mut heavier = lora.clone();
        heavier.loras[0].1 = 1.0;
        for other in [&f16, &lora, &heavier] {
            let k = Keys::of(other);
            assert!(k.text != base.text && k.unet != base.unet && k.vae == base.vae);
        }
        assert_ne!(Keys::of(&lora), Keys::of(&heavier));
        let mut gpu = s.clone();
        gpu.device = DeviceChoice::Cuda(0);
        assert!(Keys::of(&gpu).vae != base.vae && Keys::of(&gpu).unet != base.unet);
        // A budget or streamed weights share nothing.
        let mut budget = s.clone();
        budget.max_memory = Some(1 << 32);
        let mut streamed = s.clone();
        streamed.stream_weights = true;
        assert_eq!(Keys::of(&budget), Keys::default());
        assert_eq!(Keys::of(&streamed), Keys::default());
    }

    #[test]
    fn the_same_prompts_take_the_last_embeddings_and_no_encoder() {
        let s = settings();
        let keys = Keys::of(&s);
        let key = keys.text.as_ref();
        let model = crate::facts::open_model(&s).unwrap();
        let rt = Runtime::default();
        let prompt = |text: &str, guidance| TextPrompt {
            text: text.into(),
            negative: "blurry".into(),
            guidance,
        };
        let mut session = Session {
            next: keys.clone(),
            ..Default::default()
        };
        let first = session
            .encode_prompts(key, &model, &rt, &[prompt("a sky", 7.5)])
            .unwrap();
        assert!(session.text.held() && session.embedded.held());
        // Nothing follows: encoders taken now would be dropped; the embeddings serve instead.
        session.next = Keys::default();
        let again = session
            .encode_prompts(key, &model, &rt, &[prompt("a sky", 3.0)])
            .unwrap();
        assert!(
            session.text.held(),
            "the encoders ran though the embeddings were there"
        );
        assert!(!session.embedded.held(), "kept for no next render");
        assert_eq!(again[0].guidance, 3.0);
        let diff = (&first[0].context - &again[0].context)
            .unwrap()
            .abs()
            .unwrap();
        assert_eq!(diff.max_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
        // A new prompt needs the encoders: the held ones, then dropped.
        session
            .encode_prompts(key, &model, &rt, &[prompt("a sea", 7.5)])
            .unwrap();
        assert!(!session.text.held());
        assert_eq!(model.loads().get("text encoder"), Some(&1));
    }

    #[test]
    fn a_slot_keeps_only_what_the_next_render_wants() {
        let (a, b) = (Keys::of(&settings()).vae, Keys::of(&settings()).text);
        let mut slot = Slot::default();
        slot.put(a.as_ref(), b.as_ref(), 1);
        assert!(!slot.held(), "another key is not wanted");
        slot.put(a.as_ref(), None, 1);
        assert!(!slot.held(), "nothing follows");
        slot.put(None, None, 1);
        assert!(!slot.held(), "a render without keys keeps nothing");
        slot.put(a.as_ref(), a.as_ref(), 1);
        assert_eq!(slot.take(b.as_ref()), None, "taken only under its own key");
        slot.put(a.as_ref(), a.as_ref(), 2);
        slot.keep_only(b.as_ref());
        assert!(!slot.held());
        slot.put(a.as_ref(), a.as_ref(), 3);
        slot.keep_only(a.as_ref());
        assert_eq!(slot.take(a.as_ref()), Some(3));
        assert!(!slot.held());
    }
}
