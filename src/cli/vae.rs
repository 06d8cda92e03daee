//! `tessera decode` and `tessera encode`: the tiled VAE on its own.

use crate::progress::{install_interrupt_handler, Terminal};
use candle_core::DType;
use clap::Args;
use std::path::PathBuf;
use tessera::autoencoder::Autoencoder;
use tessera::models::ModelDir;
use tessera::nn::Runtime;
use tessera::spec::DEFAULT_VAE_TILE;
use tessera::validate::flag_px;
use tessera::{imageio, output, Error, Result};

#[derive(Debug, Args)]
pub struct DecodeArgs {
    latents: PathBuf,
    #[arg(long)]
    model: PathBuf,
    #[arg(long)]
    out: PathBuf,
    /// Tile side in image pixels, a multiple of 8.
    #[arg(long, default_value_t = DEFAULT_VAE_TILE)]
    tile: usize,
    /// Accepted for compatibility with other tiled decoders. tessera's tiles read the exact
    /// neighbourhood every convolution needs and share whole-image GroupNorm statistics, so
    /// they need no overlap or blending; a value must still be a multiple of 8.
    #[arg(long, default_value_t = 0)]
    overlap: usize,
    /// Decode in one piece (memory grows with the image).
    #[arg(long)]
    no_tiling: bool,
}

#[derive(Debug, Args)]
pub struct EncodeArgs {
    image: PathBuf,
    #[arg(long)]
    model: PathBuf,
    #[arg(long)]
    out: PathBuf,
    /// Tile side in image pixels, a multiple of 8.
    #[arg(long, default_value_t = DEFAULT_VAE_TILE)]
    tile: usize,
    /// Encode in one piece.
    #[arg(long)]
    no_tiling: bool,
}

pub fn decode(a: &DecodeArgs) -> Result<()> {
    let dir = ModelDir::open(&a.model)?;
    flag_px("--tile", a.tile, false)?;
    flag_px("--overlap", a.overlap, true)?;
    let z = output::load_tensor(&a.latents, "latents")?.to_dtype(DType::F32)?;
    if z.rank() != 4 || z.dim(1)? != dir.vae_config()?.latent_channels {
        return Err(Error::input(
            &a.latents,
            Some("latents"),
            format!("shape {:?}", z.dims()),
            "store latents of shape [1, channels, h, w] as written by --save-latents",
        ));
    }
    install_interrupt_handler();
    let tile = (!a.no_tiling).then_some(a.tile);
    let (_, _, h, w) = z.dims4()?;
    eprintln!(
        "decoding {}x{} px {}",
        8 * w,
        8 * h,
        tile.map_or("in one piece".into(), |t| format!("in tiles of {t} px"))
    );
    let rt = Runtime::default();
    let image = Autoencoder::new(&dir, &rt, tile).decode(&z, &Terminal::default())?;
    output::save_png(&a.out, &imageio::tensor_to_rgb(&image)?, &[])?;
    eprintln!(
        "wrote {} (peak RSS {})",
        a.out.display(),
        tessera::report::mib(tessera::report::peak_rss_bytes())
    );
    Ok(())
}

pub fn encode(a: &EncodeArgs) -> Result<()> {
    let dir = ModelDir::open(&a.model)?;
    flag_px("--tile", a.tile, false)?;
    let picture = image::open(&a.image).map_err(|e| {
        Error::input(
            &a.image,
            None,
            format!("cannot read the picture: {e}"),
            "give a PNG or JPEG file",
        )
    })?;
    let (w, h) = (picture.width() as usize, picture.height() as usize);
    if !w.is_multiple_of(8) || !h.is_multiple_of(8) {
        return Err(Error::input(
            &a.image,
            None,
            format!("{w}x{h} is not a multiple of 8"),
            "crop or resize the picture to multiples of 8 pixels",
        ));
    }
    install_interrupt_handler();
    let x = imageio::rgb_to_tensor(&picture.to_rgb8(), (w, h))?;
    let tile = (!a.no_tiling).then_some(a.tile);
    let latents = Autoencoder::new(&dir, &Runtime::default(), tile).encode_mean(&x)?;
    output::save_tensors(&a.out, &[("latents", &latents)])?;
    eprintln!("wrote {} {:?}", a.out.display(), latents.dims());
    Ok(())
}
