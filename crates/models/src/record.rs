//! Listing a network's weights (names and shapes) by building it over a weight source that
//! allocates nothing.

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;
use std::sync::{Arc, Mutex};
use tessera_core::Result;
use tessera_nn::runtime::host;

/// A weight source that hands out zero-cost broadcast zeros and records every name and shape
/// asked for: building a network over it lists its weights without allocating them (the full
/// SDXL UNet would take 10 GB).
#[derive(Default)]
struct ShapeRecorder(Mutex<Vec<(String, Shape)>>);

impl SimpleBackend for ShapeRecorder {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        self.0
            .lock()
            .expect("recorder lock")
            .push((name.to_string(), s.clone()));
        Tensor::zeros((), dtype, dev)?.broadcast_as(s)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        Err(candle_core::Error::CannotFindTensor { path: name.into() })
    }

    fn contains_tensor(&self, _: &str) -> bool {
        true
    }
}

/// The weights `build` asks for, by name (sorted, each once) with their shapes.
pub fn record(build: impl FnOnce(VarBuilder) -> Result<()>) -> Result<Vec<(String, Shape)>> {
    let recorder = Arc::new(ShapeRecorder::default());
    let backend: Box<dyn SimpleBackend> = Box::new(Shared(recorder.clone()));
    build(VarBuilder::from_backend(backend, DType::F32, host()))?;
    let mut shapes = recorder.0.lock().expect("recorder lock").clone();
    shapes.sort_by(|a, b| a.0.cmp(&b.0));
    shapes.dedup_by(|a, b| a.0 == b.0);
    Ok(shapes)
}

struct Shared(Arc<ShapeRecorder>);

impl SimpleBackend for Shared {
    fn get(
        &self,
        s: Shape,
        name: &str,
        h: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        self.0.get(s, name, h, dtype, dev)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.0.get_unchecked(name, dtype, dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.0.contains_tensor(name)
    }
}
