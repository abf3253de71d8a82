//! Winograd F(4x4, 3x3) for the inference forward of 3x3 stride-1
//! convolutions with the compact tile (SwiftShader, browsers' CPU adapter):
//! an input transform, 36 GEMMs with 4x fewer multiply-adds than the direct
//! convolution, and an output transform with the fused epilogue (see
//! the Winograd section of `shaders/conv2d.wgsl`). The weights are
//! transformed on the device at load ([`upload_winograd_weights`]).

use super::{
    COMPACT_ROWS, Conv2dShape, EPILOGUE_RELU, EPILOGUE_RESIDUAL, ImplicitGemmParams, SpecialisedLayers, check_len,
};
use crate::kernel::{ELEMENTWISE_WORKGROUP, Kernel, ShaderModule, grid_1d};
use crate::{Dispatch, EngineError, Kernels, Tensor, Variant};
use std::sync::Arc;

/// Output pixels of a tile in each dimension.
const TILE: usize = 4;
/// Points of the Winograd domain: the 6x6 input patch of a 4x4 output tile.
const POINTS: usize = 36;

/// ResNet-18's 56x56, 28x28 and 14x14 convolutions at batch 1 (64 to 256
/// channels; 196, 49 and 16 tiles): at 14x14, 0.45-0.55x the direct
/// kernel's time; at 56x56 and 28x28, 0.6-0.8x and 0.55-0.7x with channels as
/// rows, then 0.77-0.93x and 0.83-0.99x of that with the layout chosen
/// ([`GemmLayout`]).
const WIDE_CHANNELS: usize = 64;
/// ResNet-18's 7x7 convolutions (4 tiles, 512 channels): about 0.6x the
/// direct kernel's time with `conv2d_winograd_gemm_4_rows`.
const FEW_TILES: usize = 16;
const WIDE_CHANNELS_FEW_TILES: usize = 256;
/// ResNet-20's at batch 1, each against the direct kernel on SwiftShader
/// (natively, two alternating runs of `bench --profile`): 16 channels and 64
/// tiles 0.87x, 32 and 16 tiles 0.76x, 64 and 4 tiles 0.86x.
const MIN_CHANNELS: usize = 16;

/// Invocations per workgroup of the Winograd GEMMs. SwiftShader runs 4 lanes
/// at a time, and an invocation past the last column block computes as much
/// as any (the workgroup shares the rows' operand): workgroups of 8 left half
/// of ResNet-20's 16x16 and 8x8 GEMMs on padding (4 column blocks), and its
/// Winograd 16x16 and 8x8 convolutions took 1.14x and 1.18x the direct
/// kernel's time; with 4, 0.76x and 0.86x. ResNet-18's GEMMs (column blocks
/// a multiple of 8) took the same time either way.
const GEMM_WORKGROUP: usize = 4;
/// Invocations per workgroup of the transforms. SwiftShader runs a workgroup
/// on one thread: in workgroups of 256, ResNet-20's 8x8 stage (64 channels
/// x 4 tiles) was one workgroup and each of its transforms took 0.16 ms, as
/// long as the 16x16 stage's twice as many; in workgroups of 64, 0.10-0.12
/// ms (native SwiftShader, two alternating runs of `bench --profile`). Keep
/// equal to `TRANSFORM_WORKGROUP` in the shader.
const TRANSFORM_WORKGROUP: u32 = 64;

/// The weights' transform and the three passes (two GEMMs), entry points
/// of the compact tile's module.
pub(super) struct WinogradKernels {
    weights: Kernel,
    input: Kernel,
    gemm: Kernel,
    gemm_4_rows: Kernel,
    output: Kernel,
}

impl WinogradKernels {
    pub(super) fn new(device: &wgpu::Device, module: &Arc<ShaderModule>) -> Self {
        Self {
            weights: Kernel::new(device, module, "conv2d_winograd_weights", 95),
            input: Kernel::new(device, module, "conv2d_winograd_input", 80),
            gemm: Kernel::new(device, module, "conv2d_winograd_gemm", 60),
            gemm_4_rows: Kernel::new(device, module, "conv2d_winograd_gemm_4_rows", 60),
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
    m_point: u32,
    m_channel: u32,
    m_tile: u32,
    _pad: u32,
}

/// `struct WinogradWeights` in the shader.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct WinogradWeightsParams {
    in_channels: u32,
    out_channels: u32,
    rows_padded: u32,
    _pad: u32,
}

/// The 4x4 output tiles of `shape`: per column, per row, and of the whole
/// batch padded to whole 8-tile blocks of the GEMM.
fn tiles(shape: &Conv2dShape) -> (usize, usize, usize) {
    let (th, tw) = (shape.out_h().div_ceil(TILE), shape.out_w().div_ceil(TILE));
    (th, tw, (shape.batch * th * tw).next_multiple_of(8))
}

/// The 4x4 output tiles of the batch.
fn tile_count(shape: &Conv2dShape) -> usize {
    let (tiles_h, tiles_w, _) = tiles(shape);
    shape.batch * tiles_h * tiles_w
}

/// How the 36 GEMMs lie over the compact tile's GEMM, which computes 8 rows x
/// 8 columns per invocation, in workgroups of `GEMM_WORKGROUP` along the
/// columns that share the rows' operand. Output channels as rows and tiles as
/// columns leave most invocations on padding rows where channels are many and
/// tiles few (ResNet-18's 14x14 map at batch 1: 256 channels, 16 tiles), and 8 rows of at most 4
/// tiles leave half of each invocation's products on padding (its 7x7 map:
/// 4 tiles), so the layout with the fewest invocations in all is taken:
/// tiles as rows, and at most 4 tiles as the rows of
/// `conv2d_winograd_gemm_4_rows` (4 rows x 16 columns per invocation).
#[derive(Debug)]
struct GemmLayout {
    by: GemmRows,
    /// Rows that m holds, and rows padded to the rows' operand's stride.
    rows: usize,
    rows_padded: usize,
    /// Columns, a multiple of the columns per invocation.
    columns: usize,
}

/// What a [`GemmLayout`]'s rows are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum GemmRows {
    /// Output channels, tiles as columns; 8 x 8 per invocation.
    Channels,
    /// Tiles, output channels as columns; 8 x 8 per invocation.
    Tiles,
    /// At most 4 tiles, output channels as columns; 4 x 16 per invocation.
    FourTiles,
}

impl GemmRows {
    fn columns_per_invocation(self) -> usize {
        match self {
            GemmRows::FourTiles => 16,
            GemmRows::Channels | GemmRows::Tiles => 8,
        }
    }
}

impl GemmLayout {
    fn new(shape: &Conv2dShape) -> Self {
        let (_, _, tiles_padded) = tiles(shape);
        let tiles = tile_count(shape);
        let cout = shape.out_channels;
        let by_channels = Self {
            by: GemmRows::Channels,
            rows: cout,
            rows_padded: cout.next_multiple_of(COMPACT_ROWS),
            columns: tiles_padded,
        };
        let by_tiles = |by: GemmRows| Self {
            by,
            rows: tiles,
            rows_padded: tiles_padded,
            columns: cout.next_multiple_of(by.columns_per_invocation()),
        };
        // On a tie the first: fewer pipelines to compile.
        [by_channels, by_tiles(GemmRows::Tiles), by_tiles(GemmRows::FourTiles)]
            .into_iter()
            .filter(|l| l.by != GemmRows::FourTiles || tiles <= 4)
            .min_by_key(Self::invocations)
            .expect("the layouts by channels and by tiles always fit")
    }

    /// The GEMM's entry point.
    fn kernel<'k>(&self, k: &'k WinogradKernels) -> &'k Kernel {
        match self.by {
            GemmRows::FourTiles => &k.gemm_4_rows,
            GemmRows::Channels | GemmRows::Tiles => &k.gemm,
        }
    }

    /// Blocks of rows per point, one invocation's rows each.
    fn row_blocks(&self) -> usize {
        match self.by {
            GemmRows::FourTiles => 1,
            GemmRows::Channels | GemmRows::Tiles => self.rows_padded / COMPACT_ROWS,
        }
    }

    /// The GEMMs' invocations per point, whole workgroups.
    fn invocations(&self) -> usize {
        self.row_blocks() * (self.columns / self.by.columns_per_invocation()).next_multiple_of(GEMM_WORKGROUP)
    }

    /// Output channels of u, padded as its operand is.
    fn weight_rows(&self) -> usize {
        match self.by {
            GemmRows::Channels => self.rows_padded,
            GemmRows::Tiles | GemmRows::FourTiles => self.columns,
        }
    }

    /// Elements of m.
    fn m_len(&self) -> usize {
        POINTS * self.rows * self.columns
    }

    /// Strides in m of an output channel and a tile.
    fn m_strides(&self) -> (usize, usize) {
        match self.by {
            GemmRows::Channels => (self.columns, 1),
            GemmRows::Tiles | GemmRows::FourTiles => (1, self.columns),
        }
    }
}

/// Whether a 3x3 stride-1 convolution can run as Winograd F(4x4, 3x3).
pub fn winograd_fits(shape: &Conv2dShape) -> bool {
    shape.kernel == 3 && shape.stride == 1
}

/// Whether the inference forward of `shape` takes Winograd with `kernels`:
/// the compact tile (the others are not tuned for it), a 3x3 stride-1
/// convolution as wide as `layers` asks, and weights and scratch that fit
/// one binding each.
pub fn winograd_applies(
    device: &wgpu::Device,
    kernels: &Kernels,
    shape: &Conv2dShape,
    layers: SpecialisedLayers,
) -> bool {
    let limit = device.limits().max_storage_buffer_binding_size as usize / 4;
    let min_channels = match layers {
        SpecialisedLayers::All => MIN_CHANNELS,
        SpecialisedLayers::Wide if tile_count(shape) < FEW_TILES => WIDE_CHANNELS_FEW_TILES,
        SpecialisedLayers::Wide => WIDE_CHANNELS,
    };
    kernels.variant == Variant::CompactTile
        && winograd_fits(shape)
        && shape.in_channels.min(shape.out_channels) >= min_channels
        && WinogradScratch::lens(shape)
            .into_iter()
            .chain([weights_len(shape)])
            .all(|len| len <= limit)
}

/// Elements of the transformed weights u of `shape`.
fn weights_len(shape: &Conv2dShape) -> usize {
    POINTS * shape.in_channels * GemmLayout::new(shape).weight_rows()
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
        [POINTS * shape.in_channels * tiles, GemmLayout::new(shape).m_len()]
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

/// The weights `w` (OIHW) uploaded and transformed to the Winograd domain
/// on the device (`conv2d_winograd_weights`, submitted to `queue`):
/// `u[xi][ci][co] = (G g G^T)[xi]` for each 3x3 kernel g, output channels
/// padded with zeros as the GEMM's layout needs. Only the raw weights cross
/// to the device, a quarter of u's size (ResNet-18's 7x7 stage: 28 MB
/// instead of 113 MB).
pub fn upload_winograd_weights(
    device: &wgpu::Device,
    queue: &wgpu::Queue,
    kernels: &Kernels,
    shape: &Conv2dShape,
    w: &[f32],
) -> Result<Tensor, EngineError> {
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
    let k = winograd_kernels(kernels);
    let rows = GemmLayout::new(shape).weight_rows();
    let raw = Tensor::from_slice(device, &[w.len()], w)?;
    let u = Tensor::zeros(device, &[POINTS, cin, rows])?;
    let params = WinogradWeightsParams {
        in_channels: cin as u32,
        out_channels: cout as u32,
        rows_padded: rows as u32,
        _pad: 0,
    };
    let transform = k
        .weights
        .bind(device, &params, &[&raw, &u], grid_1d(cin * rows, ELEMENTWISE_WORKGROUP));
    crate::kernel::submit(device, queue, &[&transform]);
    Ok(u)
}

/// The kernels that [`upload_winograd_weights`] and
/// [`conv2d_forward_winograd`] run for `shape`: the weights' transform, the
/// input transform, the GEMM and the output transform.
pub fn winograd_forward_kernels<'k>(kernels: &'k Kernels, shape: &Conv2dShape) -> [&'k Kernel; 4] {
    let k = winograd_kernels(kernels);
    [&k.weights, &k.input, GemmLayout::new(shape).kernel(k), &k.output]
}

fn winograd_kernels(kernels: &Kernels) -> &WinogradKernels {
    kernels
        .conv2d
        .winograd
        .as_ref()
        .expect("Winograd runs with the compact tile's kernels")
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
    let k = winograd_kernels(kernels);
    check_len("x", x, shape.input_len(), shape);
    check_len("bias", bias, shape.out_channels, shape);
    check_len("y", y, shape.output_len(), shape);
    let (cin, cout) = (shape.in_channels, shape.out_channels);
    let layout = GemmLayout::new(shape);
    assert_eq!(
        u.shape,
        [POINTS, cin, layout.weight_rows()],
        "conv2d: Winograd weights for {shape:?}"
    );
    let [v_len, m_len] = WinogradScratch::lens(shape);
    assert!(
        scratch.v.len() >= v_len && scratch.m.len() >= m_len,
        "conv2d: Winograd scratch too small for {shape:?}"
    );
    if let Some(r) = residual {
        check_len("residual", r, shape.output_len(), shape);
    }
    let (tiles_h, tiles_w, tiles_padded) = tiles(shape);
    let (m_channel, m_tile) = layout.m_strides();
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
        m_point: (layout.rows * layout.columns) as u32,
        m_channel: m_channel as u32,
        m_tile: m_tile as u32,
        _pad: 0,
    };
    let tiles = tile_count(shape);
    let input = k.input.bind(
        device,
        &params(cin, 0),
        &[x, &scratch.v],
        grid_1d(cin * tiles, TRANSFORM_WORKGROUP),
    );
    // The GEMMs as the compact tile's, depth the input channels; the fields
    // it does not read stay 0.
    let gemm_params = ImplicitGemmParams {
        channels: cin as u32,
        rows: layout.rows as u32,
        rows_padded: layout.rows_padded as u32,
        columns: layout.columns as u32,
        ..bytemuck::Zeroable::zeroed()
    };
    // The rows' operand (shared by a workgroup) binds first.
    let (rows_operand, columns_operand) = match layout.by {
        GemmRows::Channels => (u, &scratch.v),
        GemmRows::Tiles | GemmRows::FourTiles => (&scratch.v, u),
    };
    // Workgroups along the column blocks, and (z) over points and row blocks.
    let gemm = layout.kernel(k);
    let [gx, gy, _] = grid_1d(
        layout.columns / layout.by.columns_per_invocation(),
        GEMM_WORKGROUP as u32,
    );
    let gemm = gemm
        .bind(
            device,
            &gemm_params,
            &[rows_operand, columns_operand, &scratch.m],
            [gx, gy, (POINTS * layout.row_blocks()) as u32],
        )
        .with_flops(2.0 * (POINTS * cin * cout * tiles) as f64);
    let epilogue = if residual.is_some() { EPILOGUE_RESIDUAL } else { 0 } | if relu { EPILOGUE_RELU } else { 0 };
    // A binding the epilogue does not read still needs a buffer: bias stands in.
    let output = k.output.bind(
        device,
        &params(cout, epilogue),
        &[&scratch.m, bias, residual.unwrap_or(bias), y],
        grid_1d(cout * tiles, TRANSFORM_WORKGROUP),
    );
    [input, gemm, output]
}

#[cfg(test)]
mod tests {
    use super::super::tests::check_fused_forward;
    use super::*;
    use crate::testing::context;

    /// Awkward Winograd shapes: odd output sizes (a half tile at the edges),
    /// pad 0 and 2, channels off multiples of 4, 8 and 16, batch 2, tiles
    /// that do not fill the GEMM's 8-tile blocks, and every GEMM layout (at
    /// most 4 tiles as rows: 4, and 2 of 4 rows).
    fn shapes() -> Vec<Conv2dShape> {
        vec![
            Conv2dShape::new(1, 3, (5, 5), 5, 3, 1, 1),
            Conv2dShape::new(2, 17, (7, 6), 9, 3, 1, 1),
            Conv2dShape::new(1, 8, (8, 8), 16, 3, 1, 0),
            Conv2dShape::new(2, 5, (9, 4), 12, 3, 1, 2),
            Conv2dShape::new(1, 64, (14, 14), 64, 3, 1, 1),
            Conv2dShape::new(1, 12, (7, 7), 136, 3, 1, 1),
            Conv2dShape::new(1, 6, (8, 4), 100, 3, 1, 1),
        ]
    }

    /// CPU reference of `conv2d_winograd_weights`, in f64: u[xi][ci][co] for
    /// `rows` padded output channels.
    fn winograd_weights_reference(shape: &Conv2dShape, w: &[f32], rows: usize) -> Vec<f64> {
        let (cin, cout) = (shape.in_channels, shape.out_channels);
        // G's rows: 1/4 0 0, -1/6 -1/6 -1/6, -1/6 1/6 -1/6, 1/24 1/12 1/6,
        // 1/24 -1/12 1/6, 0 0 1.
        const G: [[f64; 3]; 6] = [
            [0.25, 0.0, 0.0],
            [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
            [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
            [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
            [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
            [0.0, 0.0, 1.0],
        ];
        let mut u = vec![0.0; POINTS * cin * rows];
        for co in 0..cout {
            for ci in 0..cin {
                let g = &w[(co * cin + ci) * 9..][..9];
                for i in 0..6 {
                    for j in 0..6 {
                        let mut sum = 0.0;
                        for a in 0..3 {
                            for b in 0..3 {
                                sum += G[i][a] * f64::from(g[3 * a + b]) * G[j][b];
                            }
                        }
                        u[((6 * i + j) * cin + ci) * rows + co] = sum;
                    }
                }
            }
        }
        u
    }

    #[test]
    fn conv2d_winograd_weights_matches_the_cpu_reference() {
        let Some(ctx) = context() else { return };
        let (device, queue) = (ctx.device(), ctx.queue());
        let kernels = Kernels::new(device, Variant::CompactTile);
        let mut rng = crate::rng::Rng::new(5);
        for s in shapes() {
            let w: Vec<f32> = rng.vec(s.weight_len(), -1.0, 1.0).iter().map(|&v| v as f32).collect();
            let u = upload_winograd_weights(device, queue, &kernels, &s, &w).unwrap();
            let rows = GemmLayout::new(&s).weight_rows();
            crate::testing::assert_close(
                &format!("u {s:?}"),
                &u.read_blocking(device, queue).unwrap(),
                &winograd_weights_reference(&s, &w, rows),
                1e-6,
                1e-5,
            );
        }
        let short = upload_winograd_weights(device, queue, &kernels, &shapes()[0], &[0.0; 8]);
        assert!(
            matches!(short, Err(EngineError::ShapeMismatch { got: 8, .. })),
            "{short:?}"
        );
    }

    fn check(kernels: &Kernels) {
        let Some(ctx) = context() else { return };
        let device = ctx.device();
        // Scratch for a larger shape too: the plan shares one.
        let big = Conv2dShape::new(2, 20, (10, 10), 20, 3, 1, 1);
        let layouts: Vec<GemmLayout> = shapes().iter().map(GemmLayout::new).collect();
        for by in [GemmRows::Channels, GemmRows::Tiles, GemmRows::FourTiles] {
            assert!(
                layouts.iter().any(|l| l.by == by),
                "no shape takes {by:?} as rows: {layouts:?}"
            );
        }
        // F(4x4, 3x3)'s transforms scale by up to 8 and 1/24, which grows f32
        // rounding about 10x over the direct sum's (on 576 products of
        // magnitude < 1: 1.2e-4 at worst here).
        let ran = check_fused_forward(kernels, &shapes(), 1e-3, &|s, w, x, bias, residual, relu, y| {
            let u = upload_winograd_weights(device, ctx.queue(), kernels, s, w).unwrap();
            let scratch = WinogradScratch::new(device, [s, &big]).unwrap();
            conv2d_forward_winograd(device, kernels, s, x, &u, bias, residual, relu, y, &scratch).into()
        });
        for entry_point in ["conv2d_winograd_gemm", "conv2d_winograd_gemm_4_rows"] {
            assert!(ran.contains(entry_point), "{entry_point} did not run: {ran:?}");
        }
    }

    #[test]
    fn conv2d_winograd_matches_the_direct_reference_with_and_without_subgroups() {
        super::super::tests::with_and_without_subgroups(Variant::CompactTile, check);
    }

    #[test]
    fn the_gemm_takes_tiles_as_rows_where_that_leaves_fewer_invocations_idle() {
        let layout = |batch, size, channels| {
            GemmLayout::new(&Conv2dShape::new(batch, channels, (size, size), channels, 3, 1, 1))
        };
        // ResNet-18 at batch 1, 14x14: 16 tiles (2 blocks of 8) as columns
        // would leave half of each of 32 row blocks' workgroups idle; 256
        // channels as columns fill 8 workgroups per row block.
        let small = layout(1, 14, 256);
        assert_eq!(small.by, GemmRows::Tiles);
        assert_eq!((small.rows, small.rows_padded, small.columns), (16, 16, 256));
        assert_eq!(small.m_strides(), (1, 256));
        assert_eq!(small.invocations(), 64);
        // Batch 32 of 8x8 maps of 16 channels: 128 tiles fill 4 workgroups,
        // where 16 channels as columns would fill half of one.
        let many = layout(32, 8, 16);
        assert_eq!(many.by, GemmRows::Channels);
        assert_eq!((many.rows, many.rows_padded, many.columns), (16, 16, 128));
        assert_eq!(many.m_strides(), (128, 1));
        // 12 tiles (padded to 16) as rows, and 20 output channels as columns,
        // padded to 24 as the weights' rows are.
        let odd = GemmLayout::new(&Conv2dShape::new(3, 20, (8, 8), 20, 3, 1, 1));
        assert_eq!(odd.by, GemmRows::Tiles);
        assert_eq!((odd.rows, odd.rows_padded, odd.columns), (12, 16, 24));
        assert_eq!(odd.m_len(), POINTS * 12 * 24);
        assert_eq!(odd.weight_rows(), 24);
        // ResNet-18 at batch 1, 7x7: 4 tiles as the rows of the 4-row GEMM
        // (32 invocations per point, where 8 rows would take 64), 512
        // output channels padded to whole 16-column blocks.
        let few = layout(1, 7, 512);
        assert_eq!(few.by, GemmRows::FourTiles);
        assert_eq!((few.rows, few.rows_padded, few.columns), (4, 8, 512));
        assert_eq!(few.invocations(), 32);
        let few_odd = GemmLayout::new(&Conv2dShape::new(1, 9, (6, 6), 100, 3, 1, 1));
        assert_eq!(
            (few_odd.by, few_odd.rows, few_odd.columns),
            (GemmRows::FourTiles, 4, 112)
        );
        assert_eq!(few_odd.weight_rows(), 112);
        // A tie (4 invocations each way: 8 channels, 4 tiles) keeps channels
        // as rows, one pipeline fewer.
        assert_eq!(layout(1, 7, 8).by, GemmRows::Channels);
    }

    #[test]
    fn winograd_applies_to_3x3_stride1_compact_convolutions_as_wide_as_asked() {
        use SpecialisedLayers::{All, Wide};
        let Some(ctx) = context() else { return };
        let device = ctx.device();
        let limit = device.limits().max_storage_buffer_binding_size as usize;
        let compact = Kernels::new(device, Variant::CompactTile);
        let register = Kernels::new(device, Variant::RegisterTile);
        let applies = |shape: &Conv2dShape| [Wide, All].map(|layers| winograd_applies(device, &compact, shape, layers));
        for (shape, wide_and_all) in [
            // ResNet-18's at batch 1: 196, 16 and 4 tiles.
            (Conv2dShape::new(1, 64, (56, 56), 64, 3, 1, 1), [true, true]),
            (Conv2dShape::new(1, 256, (14, 14), 256, 3, 1, 1), [true, true]),
            (Conv2dShape::new(1, 512, (7, 7), 512, 3, 1, 1), [true, true]),
            // ResNet-20's at batch 1: 64, 16 and 4 tiles.
            (Conv2dShape::new(1, 16, (32, 32), 16, 3, 1, 1), [false, true]),
            (Conv2dShape::new(1, 32, (16, 16), 32, 3, 1, 1), [false, true]),
            (Conv2dShape::new(1, 64, (8, 8), 64, 3, 1, 1), [false, true]),
            // 9 tiles: too few for Wide below 256 channels.
            (Conv2dShape::new(1, 128, (12, 12), 128, 3, 1, 1), [false, true]),
            // Fewer than 16 channels one way.
            (Conv2dShape::new(1, 8, (32, 32), 16, 3, 1, 1), [false, false]),
            (Conv2dShape::new(1, 64, (32, 32), 8, 3, 1, 1), [false, false]),
            // Stride 2, 1x1.
            (Conv2dShape::new(1, 64, (56, 56), 64, 3, 2, 1), [false, false]),
            (Conv2dShape::new(1, 64, (56, 56), 64, 1, 1, 0), [false, false]),
            // A batch whose transformed input (36 points x 64 channels x 16
            // tiles per image x 4 bytes) outgrows the device's largest binding.
            (
                Conv2dShape::new(limit / (POINTS * 64 * 16 * 4) + 1, 64, (16, 16), 64, 3, 1, 1),
                [false, false],
            ),
        ] {
            assert_eq!(applies(&shape), wide_and_all, "{shape:?} (Wide, All)");
        }
        let resnet18 = Conv2dShape::new(1, 64, (56, 56), 64, 3, 1, 1);
        assert!(!winograd_applies(device, &register, &resnet18, All));
    }
}
