//! `llamagen info`: the generation record of a PNG.

use std::path::Path;

use anyhow::Result;
use llamagen::image_io::read_png_record;

pub fn info(png: &Path, as_json: bool) -> Result<()> {
    let record = read_png_record(png)?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&record)?);
    } else {
        println!("{} ({})", png.display(), record.generator);
        println!("{}", record.summary());
    }
    Ok(())
}
