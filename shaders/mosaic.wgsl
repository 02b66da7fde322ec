// The studio's live preview: a token grid drawn as a mosaic of codebook patches.
//
// The atlas texture holds every codebook entry decoded alone by the VQ decoder (a patch of
// `patch_size²` pixels, `cols` patches per row). `tokens` is the grid generated so far in
// raster order; 0xFFFFFFFF marks a position not generated yet (drawn dark), 0xFFFFFFFE one the
// mosaic leaves transparent (the latest true VQ decode beneath shows through).

struct Params {
    grid: u32,
    patch_size: u32,
    cols: u32,
    codes: u32,
};

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> tokens: array<u32>;
@group(0) @binding(2) var atlas: texture_2d<f32>;

struct VertexOut {
    @builtin(position) position: vec4<f32>,
    @location(0) uv: vec2<f32>,
};

// One triangle that covers the viewport (egui sets the viewport to the callback's rectangle).
@vertex
fn vs_main(@builtin(vertex_index) index: u32) -> VertexOut {
    let x = f32((index << 1u) & 2u);
    let y = f32(index & 2u);
    var out: VertexOut;
    out.position = vec4<f32>(x * 2.0 - 1.0, 1.0 - y * 2.0, 0.0, 1.0);
    out.uv = vec2<f32>(x, y);
    return out;
}

@fragment
fn fs_main(in: VertexOut) -> @location(0) vec4<f32> {
    let grid = f32(params.grid);
    let cell = min(vec2<u32>(floor(in.uv * grid)), vec2<u32>(params.grid - 1u));
    let token = tokens[cell.y * params.grid + cell.x];
    if (token == 0xFFFFFFFEu) {
        discard;
    }
    if (token >= params.codes) {
        return vec4<f32>(0.0094, 0.0094, 0.0094, 1.0);
    }
    // Pixel inside the cell, then inside the code's patch in the atlas (nearest: exact pixels).
    let inside = min(
        vec2<u32>(fract(in.uv * grid) * f32(params.patch_size)),
        vec2<u32>(params.patch_size - 1u),
    );
    let origin = vec2<u32>(token % params.cols, token / params.cols) * params.patch_size;
    return textureLoad(atlas, origin + inside, 0);
}
