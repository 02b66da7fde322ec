//! The instant preview: every generated code drawn as its patch from a code → patch atlas.
//!
//! The atlas holds each codebook entry decoded alone (a 1 × 1 token grid through the VQ
//! decoder); until a code's patch is decoded, its slot holds the code's mean colour (see
//! [`crate::decoder::mean_colours`]), so every code can be drawn at once. With the wgpu renderer the mosaic is drawn by `shaders/mosaic.wgsl` straight from
//! the token grid (one small buffer write per frame); without it, it is composed on the CPU.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use egui::{Color32, ColorImage};
use egui_wgpu::wgpu;
use egui_wgpu::wgpu::util::DeviceExt;

use crate::message::{Colours, Patches};

/// A token position not generated yet (drawn dark).
pub const NO_TOKEN: u32 = u32::MAX;
/// A position the mosaic leaves transparent (what is beneath shows: the latest true decode).
pub const SKIP_TOKEN: u32 = u32::MAX - 1;

/// Code → patch images, filled as the worker decodes them.
#[derive(Debug)]
pub struct Atlas {
    /// Changes with every model, so GPU copies know when to start over.
    pub id: u64,
    pub patch: usize,
    pub codes: usize,
    /// Patches per atlas row.
    pub cols: usize,
    /// RGBA pixels, `cols·patch` wide.
    pub rgba: Vec<u8>,
    /// The code's slot can be drawn (its patch or its mean colour).
    pub have: Vec<bool>,
    /// The slot holds the code's decoded patch.
    pub exact: Vec<bool>,
    /// Counts each slot's changes (a GPU copy uploads the slots whose count moved on).
    pub revision: Vec<u32>,
    /// Counts inserts, so a GPU copy scans for new patches only when there are some.
    pub version: u64,
}

impl Atlas {
    pub fn new(id: u64, patch: usize, codes: usize) -> Self {
        let cols = (codes as f64).sqrt().ceil().max(1.0) as usize;
        let rows = codes.div_ceil(cols);
        Self {
            id,
            patch,
            codes,
            cols,
            rgba: vec![0; cols * patch * rows * patch * 4],
            have: vec![false; codes],
            exact: vec![false; codes],
            revision: vec![0; codes],
            version: 0,
        }
    }

    pub fn width(&self) -> usize {
        self.cols * self.patch
    }

    pub fn height(&self) -> usize {
        self.codes.div_ceil(self.cols) * self.patch
    }

    /// Codes whose patch is decoded.
    pub fn filled(&self) -> usize {
        self.exact.iter().filter(|&&h| h).count()
    }

    /// Fills the slot of every code without a decoded patch with its mean colour.
    pub fn insert_colours(&mut self, colours: &Colours) {
        let p = self.patch;
        let w = self.width();
        for (code, rgb) in colours.rgb.iter().enumerate().take(self.codes) {
            if self.exact[code] {
                continue;
            }
            let (x0, y0) = self.origin(code);
            for y in 0..p {
                let d = ((y0 + y) * w + x0) * 4;
                for px in self.rgba[d..d + p * 4].chunks_exact_mut(4) {
                    px[..3].copy_from_slice(rgb);
                    px[3] = 255;
                }
            }
            self.have[code] = true;
            self.revision[code] = self.revision[code].wrapping_add(1);
        }
        self.version += 1;
    }

    /// Top-left pixel of a code's patch.
    fn origin(&self, code: usize) -> (usize, usize) {
        (
            (code % self.cols) * self.patch,
            (code / self.cols) * self.patch,
        )
    }

    pub fn insert(&mut self, patches: &Patches) {
        if patches.patch != self.patch {
            return;
        }
        let p = self.patch;
        let w = self.width();
        for (i, &code) in patches.codes.iter().enumerate() {
            let code = code as usize;
            if code >= self.codes {
                continue;
            }
            let (x0, y0) = self.origin(code);
            let src = &patches.rgb[i * p * p * 3..(i + 1) * p * p * 3];
            for y in 0..p {
                for x in 0..p {
                    let s = (y * p + x) * 3;
                    let d = ((y0 + y) * w + x0 + x) * 4;
                    self.rgba[d..d + 3].copy_from_slice(&src[s..s + 3]);
                    self.rgba[d + 3] = 255;
                }
            }
            self.have[code] = true;
            self.exact[code] = true;
            self.revision[code] = self.revision[code].wrapping_add(1);
        }
        self.version += 1;
    }

    /// The mosaic of a token grid, composed on the CPU; positions without a token (or whose
    /// patch is not decoded yet) are dark, [`SKIP_TOKEN`] positions transparent.
    pub fn compose(&self, tokens: &[u32], grid: usize) -> ColorImage {
        let p = self.patch;
        let side = grid * p;
        let mut img = ColorImage::filled([side, side], Color32::from_gray(24));
        let w = self.width();
        for (pos, &code) in tokens.iter().enumerate().take(grid * grid) {
            let (gx, gy) = ((pos % grid) * p, (pos / grid) * p);
            let skip = code == SKIP_TOKEN;
            let code = code as usize;
            if !skip && (code >= self.codes || !self.have[code]) {
                continue;
            }
            let origin = (!skip).then(|| self.origin(code));
            for y in 0..p {
                for x in 0..p {
                    img.pixels[(gy + y) * side + gx + x] = match origin {
                        None => Color32::TRANSPARENT,
                        Some((x0, y0)) => {
                            let s = ((y0 + y) * w + x0 + x) * 4;
                            Color32::from_rgb(self.rgba[s], self.rgba[s + 1], self.rgba[s + 2])
                        }
                    };
                }
            }
        }
        img
    }
}

/// Draws one mosaic with the WGSL shader. `slot` tells mosaics drawn in the same frame apart.
pub struct MosaicCallback {
    pub atlas: Arc<Mutex<Atlas>>,
    pub tokens: Vec<u32>,
    pub grid: usize,
    pub slot: usize,
}

/// Above this many changed slots the whole atlas is uploaded at once.
const WHOLE_UPLOAD: usize = 256;

const SHADER: &str = include_str!("../../shaders/mosaic.wgsl");

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    grid: u32,
    patch_size: u32,
    cols: u32,
    codes: u32,
}

/// GPU objects kept in egui-wgpu's callback resources.
struct MosaicResources {
    pipeline: wgpu::RenderPipeline,
    layout: wgpu::BindGroupLayout,
    atlas_id: u64,
    texture: Option<wgpu::Texture>,
    /// The revision of each atlas slot the texture holds (`u32::MAX`: none).
    uploaded: Vec<u32>,
    /// The atlas version the texture holds (`u64::MAX`: none yet).
    uploaded_version: u64,
    slots: HashMap<usize, Slot>,
    srgb: bool,
}

/// Puts the mosaic pipeline into the renderer's callback resources; after this, mosaics can be
/// drawn with [`MosaicCallback`]. Returns false, installing nothing, on a device whose fragment
/// shaders cannot read storage buffers (wgpu's GL backend, WebGL2-level limits): the mosaic is
/// then composed on the CPU.
pub fn install(render_state: &egui_wgpu::RenderState) -> bool {
    if !supported(&render_state.device.limits()) {
        return false;
    }
    let resources = MosaicResources::new(&render_state.device, render_state.target_format);
    render_state
        .renderer
        .write()
        .callback_resources
        .insert(resources);
    true
}

/// Whether a device with these limits can run the mosaic shader: it reads the token grid from
/// a storage buffer in the fragment stage.
fn supported(limits: &wgpu::Limits) -> bool {
    limits.max_storage_buffers_per_shader_stage >= 1
}

struct Slot {
    tokens: wgpu::Buffer,
    params: wgpu::Buffer,
    capacity: usize,
    bind_group: wgpu::BindGroup,
}

impl MosaicResources {
    fn new(device: &wgpu::Device, target: wgpu::TextureFormat) -> Self {
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("llamagen mosaic"),
            source: wgpu::ShaderSource::Wgsl(SHADER.into()),
        });
        let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("llamagen mosaic"),
            entries: &[
                wgpu::BindGroupLayoutEntry {
                    binding: 0,
                    visibility: wgpu::ShaderStages::FRAGMENT,
                    ty: wgpu::BindingType::Buffer {
                        ty: wgpu::BufferBindingType::Uniform,
                        has_dynamic_offset: false,
                        min_binding_size: None,
                    },
                    count: None,
                },
                wgpu::BindGroupLayoutEntry {
                    binding: 1,
                    visibility: wgpu::ShaderStages::FRAGMENT,
                    ty: wgpu::BindingType::Buffer {
                        ty: wgpu::BufferBindingType::Storage { read_only: true },
                        has_dynamic_offset: false,
                        min_binding_size: None,
                    },
                    count: None,
                },
                wgpu::BindGroupLayoutEntry {
                    binding: 2,
                    visibility: wgpu::ShaderStages::FRAGMENT,
                    ty: wgpu::BindingType::Texture {
                        sample_type: wgpu::TextureSampleType::Float { filterable: false },
                        view_dimension: wgpu::TextureViewDimension::D2,
                        multisampled: false,
                    },
                    count: None,
                },
            ],
        });
        let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some("llamagen mosaic"),
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
        let pipeline = device.create_render_pipeline(&wgpu::RenderPipelineDescriptor {
            label: Some("llamagen mosaic"),
            layout: Some(&pipeline_layout),
            vertex: wgpu::VertexState {
                module: &module,
                entry_point: Some("vs_main"),
                buffers: &[],
                compilation_options: Default::default(),
            },
            fragment: Some(wgpu::FragmentState {
                module: &module,
                // The atlas holds sRGB bytes; a linear target needs them as they are, an sRGB
                // target needs them decoded (the texture format does that).
                entry_point: Some("fs_main"),
                targets: &[Some(target.into())],
                compilation_options: Default::default(),
            }),
            primitive: wgpu::PrimitiveState::default(),
            depth_stencil: None,
            multisample: wgpu::MultisampleState::default(),
            multiview_mask: None,
            cache: None,
        });
        Self {
            pipeline,
            layout,
            atlas_id: u64::MAX,
            texture: None,
            uploaded: Vec::new(),
            uploaded_version: u64::MAX,
            slots: HashMap::new(),
            srgb: target.is_srgb(),
        }
    }
}

/// Whether the atlas texture decodes sRGB (it must when the render target is sRGB).
fn atlas_format(target_is_srgb: bool) -> wgpu::TextureFormat {
    if target_is_srgb {
        wgpu::TextureFormat::Rgba8UnormSrgb
    } else {
        wgpu::TextureFormat::Rgba8Unorm
    }
}

impl egui_wgpu::CallbackTrait for MosaicCallback {
    fn prepare(
        &self,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        screen: &egui_wgpu::ScreenDescriptor,
        _encoder: &mut wgpu::CommandEncoder,
        resources: &mut egui_wgpu::CallbackResources,
    ) -> Vec<wgpu::CommandBuffer> {
        let _ = screen;
        let Some(res) = resources.get_mut::<MosaicResources>() else {
            return Vec::new();
        };
        let srgb = res.srgb;
        let Ok(atlas) = self.atlas.lock() else {
            return Vec::new();
        };
        // A new model: a new atlas texture, and every slot's bind group with it.
        if res.atlas_id != atlas.id || res.texture.is_none() {
            res.texture = Some(device.create_texture(&wgpu::TextureDescriptor {
                label: Some("llamagen atlas"),
                size: wgpu::Extent3d {
                    width: atlas.width().max(1) as u32,
                    height: atlas.height().max(1) as u32,
                    depth_or_array_layers: 1,
                },
                mip_level_count: 1,
                sample_count: 1,
                dimension: wgpu::TextureDimension::D2,
                format: atlas_format(srgb),
                usage: wgpu::TextureUsages::TEXTURE_BINDING | wgpu::TextureUsages::COPY_DST,
                view_formats: &[],
            }));
            res.uploaded = vec![u32::MAX; atlas.codes];
            res.uploaded_version = u64::MAX;
            res.atlas_id = atlas.id;
            res.slots.clear();
        }
        let texture = res.texture.as_ref().expect("atlas texture");
        // Upload the patches decoded since the last frame (a scan only when the atlas changed:
        // every mosaic of every frame passes here).
        let p = atlas.patch;
        let w = atlas.width();
        let mut staging = vec![0u8; p * p * 4];
        let changed = res.uploaded_version != atlas.version;
        res.uploaded_version = atlas.version;
        let scan = if changed { 0..atlas.codes } else { 0..0 };
        let stale: Vec<usize> = scan
            .filter(|&c| atlas.have[c] && res.uploaded[c] != atlas.revision[c])
            .collect();
        let extent = |w: usize, h: usize| wgpu::Extent3d {
            width: w as u32,
            height: h as u32,
            depth_or_array_layers: 1,
        };
        if stale.len() > WHOLE_UPLOAD {
            // Many slots at once (the mean colours of a whole codebook): one upload.
            queue.write_texture(
                texture.as_image_copy(),
                &atlas.rgba,
                wgpu::TexelCopyBufferLayout {
                    offset: 0,
                    bytes_per_row: Some((w * 4) as u32),
                    rows_per_image: Some(atlas.height() as u32),
                },
                extent(w, atlas.height()),
            );
            for c in stale {
                res.uploaded[c] = atlas.revision[c];
            }
        } else {
            for code in stale {
                let (x0, y0) = ((code % atlas.cols) * p, (code / atlas.cols) * p);
                for y in 0..p {
                    let s = ((y0 + y) * w + x0) * 4;
                    staging[y * p * 4..(y + 1) * p * 4].copy_from_slice(&atlas.rgba[s..s + p * 4]);
                }
                queue.write_texture(
                    wgpu::TexelCopyTextureInfo {
                        texture,
                        mip_level: 0,
                        origin: wgpu::Origin3d {
                            x: x0 as u32,
                            y: y0 as u32,
                            z: 0,
                        },
                        aspect: wgpu::TextureAspect::All,
                    },
                    &staging,
                    wgpu::TexelCopyBufferLayout {
                        offset: 0,
                        bytes_per_row: Some((p * 4) as u32),
                        rows_per_image: Some(p as u32),
                    },
                    extent(p, p),
                );
                res.uploaded[code] = atlas.revision[code];
            }
        }
        // This mosaic's tokens: unknown codes and missing patches are drawn dark by the shader.
        let cells = self.grid * self.grid;
        let mut tokens = vec![NO_TOKEN; cells.max(1)];
        for (i, &t) in self.tokens.iter().take(cells).enumerate() {
            if t == SKIP_TOKEN || ((t as usize) < atlas.codes && atlas.have[t as usize]) {
                tokens[i] = t;
            }
        }
        let params = Params {
            grid: self.grid as u32,
            patch_size: p as u32,
            cols: atlas.cols as u32,
            codes: atlas.codes as u32,
        };
        let needs_new = res
            .slots
            .get(&self.slot)
            .is_none_or(|s| s.capacity < tokens.len());
        if needs_new {
            let token_buf = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("llamagen mosaic tokens"),
                contents: bytemuck::cast_slice(&tokens),
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
            });
            let param_buf = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("llamagen mosaic params"),
                contents: bytemuck::bytes_of(&params),
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            });
            let view = texture.create_view(&wgpu::TextureViewDescriptor::default());
            let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some("llamagen mosaic"),
                layout: &res.layout,
                entries: &[
                    wgpu::BindGroupEntry {
                        binding: 0,
                        resource: param_buf.as_entire_binding(),
                    },
                    wgpu::BindGroupEntry {
                        binding: 1,
                        resource: token_buf.as_entire_binding(),
                    },
                    wgpu::BindGroupEntry {
                        binding: 2,
                        resource: wgpu::BindingResource::TextureView(&view),
                    },
                ],
            });
            res.slots.insert(
                self.slot,
                Slot {
                    tokens: token_buf,
                    params: param_buf,
                    capacity: tokens.len(),
                    bind_group,
                },
            );
        } else if let Some(slot) = res.slots.get(&self.slot) {
            queue.write_buffer(&slot.tokens, 0, bytemuck::cast_slice(&tokens));
            queue.write_buffer(&slot.params, 0, bytemuck::bytes_of(&params));
        }
        Vec::new()
    }

    fn paint(
        &self,
        _info: egui::PaintCallbackInfo,
        render_pass: &mut wgpu::RenderPass<'static>,
        resources: &egui_wgpu::CallbackResources,
    ) {
        let Some(res) = resources.get::<MosaicResources>() else {
            return;
        };
        let Some(slot) = res.slots.get(&self.slot) else {
            return;
        };
        render_pass.set_pipeline(&res.pipeline);
        render_pass.set_bind_group(0, &slot.bind_group, &[]);
        render_pass.draw(0..3, 0..1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mosaic_shader_parses_and_validates() {
        let module = naga::front::wgsl::parse_str(SHADER).unwrap_or_else(|e| {
            panic!("shaders/mosaic.wgsl: {}", e.emit_to_string(SHADER));
        });
        naga::valid::Validator::new(
            naga::valid::ValidationFlags::all(),
            naga::valid::Capabilities::empty(),
        )
        .validate(&module)
        .expect("shaders/mosaic.wgsl validates");
    }

    #[test]
    fn compose_places_each_patch_at_its_token_position() {
        let mut atlas = Atlas::new(1, 2, 5);
        // Code c is a flat patch of grey level 10·(c+1).
        let codes = vec![0u32, 3, 4];
        let mut rgb = Vec::new();
        for &c in &codes {
            rgb.extend(std::iter::repeat_n(10 * (c as u8 + 1), 2 * 2 * 3));
        }
        atlas.insert(&Patches {
            patch: 2,
            codes,
            rgb,
        });
        assert_eq!(atlas.filled(), 3);
        // A 2 × 2 grid: codes 4, 0, (1: not decoded), (none yet).
        let img = atlas.compose(&[4, 0, 1], 2);
        assert_eq!(img.size, [4, 4]);
        assert_eq!(img.pixels[0], Color32::from_gray(50));
        assert_eq!(img.pixels[3], Color32::from_gray(10));
        assert_eq!(img.pixels[2 * 4], Color32::from_gray(24));
        assert_eq!(img.pixels[3 * 4 + 3], Color32::from_gray(24));
        // Skipped positions let what is beneath show through.
        let img = atlas.compose(&[SKIP_TOKEN, 3], 2);
        assert_eq!(img.pixels[0], Color32::TRANSPARENT);
        assert_eq!(img.pixels[2], Color32::from_gray(40));
    }
}
