// Texture mirrors (engine/src/tensor.rs): an r32float copy of a tensor,
// MIRROR_WIDTH elements per row, that kernels read with texel fetches where
// those are cheaper than storage loads. The engine appends this file to the
// modules that read mirrors.

const MIRROR_WIDTH: u32 = 8192u;

// Element i of the tensor that texture mirror t holds.
fn mirrored(t: texture_2d<f32>, i: u32) -> f32 {
    return textureLoad(t, vec2<u32>(i % MIRROR_WIDTH, i / MIRROR_WIDTH), 0).x;
}

// Elements 4i to 4i + 3.
fn mirrored_vec4(t: texture_2d<f32>, i: u32) -> vec4<f32> {
    let e = 4u * i;
    return vec4<f32>(mirrored(t, e), mirrored(t, e + 1u), mirrored(t, e + 2u), mirrored(t, e + 3u));
}
