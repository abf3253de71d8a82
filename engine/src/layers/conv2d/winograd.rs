//! Winograd F(4x4, 3x3) for the inference forward of 3x3 stride-1
//! convolutions with the compact tile (SwiftShader, browsers' CPU adapter):
//! an input transform, 36 GEMMs with 4x fewer multiply-adds than the direct
//! convolution, and an output transform with the fused epilogue (see
//! the Winograd section of `shaders/conv2d.wgsl`). The weights are
//! transformed on the CPU at load, like [`super::upload_forward_weights`].

use super::{
    COMPACT_ROWS, COMPACT_WORKGROUP, Conv2dShape, EPILOGUE_RELU, EPILOGUE_RESIDUAL, ImplicitGemmParams, check_len,
};
use crate::kernel::{ELEMENTWISE_WORKGROUP, Kernel, ShaderModule, grid_1d};
use crate::{Dispatch, EngineError, Kernels, Tensor, Variant};
use std::sync::Arc;

/// Output pixels of a tile in each dimension.
const TILE: usize = 4;
/// Points of the Winograd domain: the 6x6 input patch of a 4x4 output tile.
const POINTS: usize = 36;

/// Input and output channels, and tiles, from which a compact-tile
/// convolution takes Winograd. With fewer channels the transforms weigh more;
/// with fewer tiles most of the GEMM's 8-tile blocks and 8-invocation workgroups
/// are padding: on SwiftShader, ResNet-18's 56x56 and 28x28 convolutions at
/// batch 1 (196 and 49 tiles) took 0.6-0.8x and 0.55-0.7x the direct kernel's
/// time, its 14x14 and 7x7 ones (16 and 4 tiles) 1.7x and 6x.
const MIN_CHANNELS: usize = 64;
const MIN_TILES: usize = 48;

/// The three passes, entry points of the compact tile's module.
pub(super) struct WinogradKernels {
    input: Kernel,
    gemm: Kernel,
    output: Kernel,
}

impl WinogradKernels {
    pub(super) fn new(device: &wgpu::Device, module: &Arc<ShaderModule>) -> Self {
        Self {
            input: Kernel::new(device, module, "conv2d_winograd_input", 80),
            gemm: Kernel::new(device, module, "conv2d_winograd_gemm", 60),
            output: Kernel::new(device, module, "conv2d_winograd_output", 90),
        }
    }
}

/// `struct Winograd` in the shader.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct WinogradParams {
    batch: u32,
    channels: u32,
    src_h: u32,
    src_w: u32,
    dst_h: u32,
    dst_w: u32,
    pad: u32,
    tiles_h: u32,
    tiles_w: u32,
    tiles_padded: u32,
    epilogue: u32,
    _pad: u32,
}

/// The 4x4 output tiles of `shape`: per column, per row, and of the whole
/// batch padded to whole 8-tile blocks of the GEMM.
fn tiles(shape: &Conv2dShape) -> (usize, usize, usize) {
    let (th, tw) = (shape.out_h().div_ceil(TILE), shape.out_w().div_ceil(TILE));
    (th, tw, (shape.batch * th * tw).next_multiple_of(8))
}

/// Whether a 3x3 stride-1 convolution can run as Winograd F(4x4, 3x3).
pub fn winograd_fits(shape: &Conv2dShape) -> bool {
    shape.kernel == 3 && shape.stride == 1
}

/// Whether the inference forward of `shape` takes Winograd with `kernels`:
/// the compact tile (the others are not tuned for it), a 3x3 stride-1
/// convolution of at least [`MIN_CHANNELS`] channels each way and
/// [`MIN_TILES`] tiles, and scratch that fits one binding.
pub fn winograd_applies(device: &wgpu::Device, kernels: &Kernels, shape: &Conv2dShape) -> bool {
    let limit = device.limits().max_storage_buffer_binding_size as usize / 4;
    kernels.variant == Variant::CompactTile
        && winograd_fits(shape)
        && shape.in_channels.min(shape.out_channels) >= MIN_CHANNELS
        && shape.batch * shape.out_h().div_ceil(TILE) * shape.out_w().div_ceil(TILE) >= MIN_TILES
        && WinogradScratch::lens(shape).into_iter().all(|len| len <= limit)
}

/// The transformed input and the GEMMs' output, shared by every Winograd
/// convolution of a plan (its dispatches run one after another).
pub struct WinogradScratch {
    v: Tensor,
    m: Tensor,
}

impl WinogradScratch {
    /// Elements of v and m for `shape`.
    fn lens(shape: &Conv2dShape) -> [usize; 2] {
        let (_, _, tiles) = tiles(shape);
        [POINTS * shape.in_channels * tiles, POINTS * shape.out_channels * tiles]
    }

    /// Scratch large enough for each of `shapes`.
    pub fn new<'a>(
        device: &wgpu::Device,
        shapes: impl IntoIterator<Item = &'a Conv2dShape>,
    ) -> Result<Self, EngineError> {
        let [v, m] = shapes.into_iter().fold([0, 0], |[v, m], s| {
            let [sv, sm] = Self::lens(s);
            [v.max(sv), m.max(sm)]
        });
        Ok(Self {
            v: Tensor::zeros(device, &[v])?,
            m: Tensor::zeros(device, &[m])?,
        })
    }
}

/// The weights `w` (OIHW) transformed to the Winograd domain on the CPU,
/// `u[xi][ci][co] = (G g G^T)[xi]` for each 3x3 kernel g, output channels
/// padded with zeros to a multiple of 8, and uploaded.
pub fn upload_winograd_weights(device: &wgpu::Device, shape: &Conv2dShape, w: &[f32]) -> Result<Tensor, EngineError> {
    assert!(
        winograd_fits(shape),
        "conv2d: Winograd needs a 3x3 stride-1 convolution, got {shape:?}"
    );
    let (cin, cout) = (shape.in_channels, shape.out_channels);
    if w.len() != shape.weight_len() {
        return Err(EngineError::ShapeMismatch {
            shape: vec![cout, cin, 3, 3],
            len: shape.weight_len(),
            got: w.len(),
        });
    }
    // G's rows: 1/4 0 0, -1/6 -1/6 -1/6, -1/6 1/6 -1/6, 1/24 1/12 1/6,
    // 1/24 -1/12 1/6, 0 0 1.
    let g_times = |v: [f64; 3]| {
        [
            v[0] / 4.0,
            -(v[0] + v[1] + v[2]) / 6.0,
            -(v[0] - v[1] + v[2]) / 6.0,
            v[0] / 24.0 + v[1] / 12.0 + v[2] / 6.0,
            v[0] / 24.0 - v[1] / 12.0 + v[2] / 6.0,
            v[2],
        ]
    };
    let rows = cout.next_multiple_of(COMPACT_ROWS);
    let mut u = vec![0.0; POINTS * cin * rows];
    for co in 0..cout {
        for ci in 0..cin {
            let g = &w[(co * cin + ci) * 9..][..9];
            // G g: 6 rows of 3, then each row times G^T.
            let columns: [[f64; 6]; 3] = std::array::from_fn(|j| g_times([0, 1, 2].map(|i| g[3 * i + j] as f64)));
            for i in 0..6 {
                let row = g_times([columns[0][i], columns[1][i], columns[2][i]]);
                for (j, value) in row.into_iter().enumerate() {
                    u[((6 * i + j) * cin + ci) * rows + co] = value as f32;
                }
            }
        }
    }
    Tensor::from_slice(device, &[POINTS, cin, rows], &u)
}

/// `y = relu?(conv2d(x, w) + bias[co] + residual?)` as Winograd F(4x4, 3x3),
/// as [`super::conv2d_forward_fused`] over the weights of
/// [`upload_winograd_weights`]: the input transform, the GEMMs and the
/// output transform, through `scratch`.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_forward_winograd(
    device: &wgpu::Device,
    kernels: &Kernels,
    shape: &Conv2dShape,
    x: &Tensor,
    u: &Tensor,
    bias: &Tensor,
    residual: Option<&Tensor>,
    relu: bool,
    y: &Tensor,
    scratch: &WinogradScratch,
) -> [Dispatch; 3] {
    shape.validate();
    assert!(
        winograd_fits(shape),
        "conv2d: Winograd needs a 3x3 stride-1 convolution, got {shape:?}"
    );
    let k = kernels
        .conv2d
        .winograd
        .as_ref()
        .expect("Winograd runs with the compact tile's kernels");
    check_len("x", x, shape.input_len(), shape);
    check_len("bias", bias, shape.out_channels, shape);
    check_len("y", y, shape.output_len(), shape);
    let (cin, cout) = (shape.in_channels, shape.out_channels);
    let rows = cout.next_multiple_of(COMPACT_ROWS);
    assert_eq!(u.shape, [POINTS, cin, rows], "conv2d: Winograd weights for {shape:?}");
    let [v_len, m_len] = WinogradScratch::lens(shape);
    assert!(
        scratch.v.len() >= v_len && scratch.m.len() >= m_len,
        "conv2d: Winograd scratch too small for {shape:?}"
    );
    if let Some(r) = residual {
        check_len("residual", r, shape.output_len(), shape);
    }
    let (tiles_h, tiles_w, tiles_padded) = tiles(shape);
    let params = |channels: usize, epilogue: u32| WinogradParams {
        batch: shape.batch as u32,
        channels: channels as u32,
        src_h: shape.in_h as u32,
        src_w: shape.in_w as u32,
        dst_h: shape.out_h() as u32,
        dst_w: shape.out_w() as u32,
        pad: shape.pad as u32,
        tiles_h: tiles_h as u32,
        tiles_w: tiles_w as u32,
        tiles_padded: tiles_padded as u32,
        epilogue,
        _pad: 0,
    };
    let tiles = shape.batch * tiles_h * tiles_w;
    let input = k.input.bind(
        device,
        &params(cin, 0),
        &[x, &scratch.v],
        grid_1d(cin * tiles, ELEMENTWISE_WORKGROUP),
    );
    // The GEMMs as the compact tile's: rows (output channels) by columns
    // (tiles), depth the input channels; the fields it does not read stay 0.
    let gemm_params = ImplicitGemmParams {
        channels: cin as u32,
        rows: cout as u32,
        rows_padded: rows as u32,
        columns: tiles_padded as u32,
        ..bytemuck::Zeroable::zeroed()
    };
    let [gx, gy, _] = grid_1d(tiles_padded / 8, COMPACT_WORKGROUP as u32);
    let gemm = k
        .gemm
        .bind(
            device,
            &gemm_params,
            &[u, &scratch.v, &scratch.m],
            [gx, gy, (POINTS * rows / COMPACT_ROWS) as u32],
        )
        .with_flops(2.0 * (POINTS * cin * cout * tiles) as f64);
    let epilogue = if residual.is_some() { EPILOGUE_RESIDUAL } else { 0 } | if relu { EPILOGUE_RELU } else { 0 };
    // A binding the epilogue does not read still needs a buffer: bias stands in.
    let output = k.output.bind(
        device,
        &params(cout, epilogue),
        &[&scratch.m, bias, residual.unwrap_or(bias), y],
        grid_1d(cout * tiles, ELEMENTWISE_WORKGROUP),
    );
    [input, gemm, output]
}

#[cfg(test)]
mod tests {
    use super::super::tests::check_fused_forward;
    use super::*;
    use crate::testing::context;

    /// Awkward Winograd shapes: odd output sizes (a half tile at the edges),
    /// pad 0 and 2, channels off multiples of 4 and 8, batch 2, tiles that
    /// do not fill the GEMM's 8-tile blocks.
    fn shapes() -> Vec<Conv2dShape> {
        vec![
            Conv2dShape::new(1, 3, (5, 5), 5, 3, 1, 1),
            Conv2dShape::new(2, 17, (7, 6), 9, 3, 1, 1),
            Conv2dShape::new(1, 8, (8, 8), 16, 3, 1, 0),
            Conv2dShape::new(2, 5, (9, 4), 12, 3, 1, 2),
            Conv2dShape::new(1, 64, (14, 14), 64, 3, 1, 1),
        ]
    }

    fn check(kernels: &Kernels) {
        let Some(ctx) = context() else { return };
        let device = ctx.device();
        // Scratch for a larger shape too: the plan shares one.
        let big = Conv2dShape::new(2, 20, (10, 10), 20, 3, 1, 1);
        // F(4x4, 3x3)'s transforms scale by up to 8 and 1/24, which grows f32
        // rounding about 10x over the direct sum's (on 576 products of
        // magnitude < 1: 1.2e-4 at worst here).
        let ran = check_fused_forward(kernels, &shapes(), 1e-3, &|s, w, x, bias, residual, relu, y| {
            let u = upload_winograd_weights(device, s, w).unwrap();
            let scratch = WinogradScratch::new(device, [s, &big]).unwrap();
            conv2d_forward_winograd(device, kernels, s, x, &u, bias, residual, relu, y, &scratch).into()
        });
        assert!(ran.contains("conv2d_winograd_gemm"), "{ran:?}");
    }

    #[test]
    fn conv2d_winograd_matches_the_direct_reference_with_and_without_subgroups() {
        super::super::tests::with_and_without_subgroups(Variant::CompactTile, check);
    }

    #[test]
    fn winograd_applies_to_wide_3x3_stride1_compact_convolutions_only() {
        let Some(ctx) = context() else { return };
        let device = ctx.device();
        let limit = device.limits().max_storage_buffer_binding_size as usize;
        let compact = Kernels::new(device, Variant::CompactTile);
        let register = Kernels::new(device, Variant::RegisterTile);
        let wide = Conv2dShape::new(1, 64, (56, 56), 64, 3, 1, 1);
        assert!(winograd_applies(device, &compact, &wide));
        assert!(winograd_applies(
            device,
            &compact,
            &Conv2dShape::new(4, 256, (14, 14), 256, 3, 1, 1)
        ));
        assert!(!winograd_applies(device, &register, &wide));
        for other in [
            Conv2dShape::new(1, 64, (56, 56), 64, 3, 2, 1),
            Conv2dShape::new(1, 64, (56, 56), 64, 1, 1, 0),
            Conv2dShape::new(1, 32, (32, 32), 64, 3, 1, 1),
            Conv2dShape::new(1, 256, (14, 14), 256, 3, 1, 1),
            // A batch whose transformed input (36 points x 64 channels x 16
            // tiles per image x 4 bytes) outgrows the device's largest binding.
            Conv2dShape::new(limit / (POINTS * 64 * 16 * 4) + 1, 64, (16, 16), 64, 3, 1, 1),
        ] {
            assert!(!winograd_applies(device, &compact, &other), "{other:?}");
        }
    }
}
