//! 2-D convolution without bias, zero padding: `x` NCHW `[N, Cin, H, W]`,
//! `w` OIHW `[Cout, Cin, K, K]`, `y` NCHW `[N, Cout, OH, OW]`.
//!
//! All three directions are implicit GEMMs (see `shaders/conv2d.wgsl`):
//! - forward: rows Cout, columns the output pixels of all images, depth Cin*K*K;
//! - backward-data: the transposed GEMM (rows Cin, columns the input pixels,
//!   depth Cout*taps), split by stride phase so that no tap is masked away;
//! - backward-weight: rows Cout, columns Cin*K*K, depth batch*OH*OW, split into
//!   chunks whose partial sums a second pass adds up in a fixed order.
//!
//! Each comes in the three tilings of [`Variant`], chosen when the kernels
//! are created. In training, the register tile's forward and backward-data
//! also leave partial sums for the batch norm next to them
//! ([`conv2d_forward_statistics`], [`conv2d_backward_data_relu`]).
//!
//! Inference uses a fused forward, [`conv2d_forward_fused`]: batch norm folded
//! into the weights and a bias, then residual and ReLU in the GEMM's epilogue,
//! over weights transposed once at load ([`upload_forward_weights`]); with
//! the compact tile, wide 3x3 stride-1 convolutions with enough 4x4 tiles
//! take Winograd F(4x4, 3x3) instead ([`winograd`]).

use crate::kernel::{
    ELEMENTWISE_WORKGROUP, Kernel, ShaderModule, grid_1d, module_source, shader_module, without_blocks,
};
use crate::tensor::with_mirror_wgsl;
use crate::{Dispatch, EngineError, Kernels, Tensor, Variant};
use std::sync::Arc;

pub mod winograd;

/// Which layers of an inference plan take the compact tile's specialised
/// kernels: Winograd F(4x4, 3x3) for 3x3 stride-1 convolutions
/// ([`winograd::winograd_applies`]; the 3-tap stride-1 GEMM where it does
/// not apply, [`three_taps_stride1`]) and the 3-tap stride-2 GEMM for 3x3
/// stride-2 ones ([`three_taps_stride2`]). They run faster but their
/// pipelines compile slowly in a browser (ResNet-20's Winograd, in Chromium
/// on SwiftShader: 0.5-0.7 s more before the first result, four alternating
/// cold starts; the 3-tap stride-2 fused GEMM about 145 ms), so a plan that must
/// answer soon takes them only where the first run repays that
/// ([`SpecialisedLayers::Wide`]), and a page swaps in the plan with
/// [`SpecialisedLayers::All`] after its first result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpecialisedLayers {
    /// Wide layers only: ResNet-18's, whose page cold start they did not
    /// lengthen; none of ResNet-20's.
    Wide,
    /// Every layer they fit: fastest once compiled.
    All,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dShape {
    pub batch: usize,
    pub in_channels: usize,
    pub in_h: usize,
    pub in_w: usize,
    pub out_channels: usize,
    pub kernel: usize,
    pub stride: usize,
    pub pad: usize,
}

impl Conv2dShape {
    pub fn out_h(&self) -> usize {
        (self.in_h + 2 * self.pad - self.kernel) / self.stride + 1
    }

    pub fn out_w(&self) -> usize {
        (self.in_w + 2 * self.pad - self.kernel) / self.stride + 1
    }

    pub fn input_len(&self) -> usize {
        self.batch * self.in_channels * self.in_h * self.in_w
    }

    pub fn weight_len(&self) -> usize {
        self.out_channels * self.in_channels * self.kernel * self.kernel
    }

    pub fn output_len(&self) -> usize {
        self.batch * self.out_channels * self.out_h() * self.out_w()
    }

    /// Floating-point operations of the forward pass (2 per multiply-add, padding
    /// taps included); each backward pass costs the same.
    pub fn flops(&self) -> f64 {
        2.0 * self.output_len() as f64 * (self.in_channels * self.kernel * self.kernel) as f64
    }

    /// In the order shapes are usually written.
    pub fn new(
        batch: usize,
        in_channels: usize,
        (in_h, in_w): (usize, usize),
        out_channels: usize,
        kernel: usize,
        stride: usize,
        pad: usize,
    ) -> Self {
        Self {
            batch,
            in_channels,
            in_h,
            in_w,
            out_channels,
            kernel,
            stride,
            pad,
        }
    }

    #[track_caller]
    fn validate(&self) {
        assert!(
            self.batch > 0 && self.in_channels > 0 && self.out_channels > 0 && self.kernel > 0 && self.stride > 0,
            "conv2d: empty or zero-stride shape {self:?}"
        );
        assert!(
            self.in_h + 2 * self.pad >= self.kernel && self.in_w + 2 * self.pad >= self.kernel,
            "conv2d: kernel larger than the padded input in {self:?}"
        );
    }
}

#[track_caller]
fn check_len(what: &str, tensor: &Tensor, len: usize, shape: &Conv2dShape) {
    assert_eq!(
        tensor.len(),
        len,
        "conv2d: {what} has shape {:?}, expected {len} elements for {shape:?}",
        tensor.shape
    );
}

/// Register tile of the implicit GEMM: rows per invocation, blocks of
/// consecutive pixels of a destination row per invocation and their width,
/// invocations per workgroup.
const REGISTER_ROWS: usize = 16;
const REGISTER_BLOCKS: usize = 3;
const REGISTER_BLOCK: usize = 8;
const REGISTER_WORKGROUP: usize = 8;
/// Register tile of backward-weight: output and input channels and taps of a
/// kernel row per invocation.
const WEIGHT_GRAD_ROWS: usize = 16;
const WEIGHT_GRAD_COLUMNS: usize = 8;
const WEIGHT_GRAD_TAPS: usize = 3;
/// Compact tile (the implicit GEMM and backward-weight): rows (output
/// channels) and pixels (input channels) per invocation, invocations per
/// workgroup.
const COMPACT_ROWS: usize = 8;
const COMPACT_BLOCK: usize = 8;
const COMPACT_WORKGROUP: usize = 8;
/// Workgroup tile: outputs per workgroup in each dimension.
const WORKGROUP_TILE: usize = 64;

/// Backward-weight split: aim for at least this many invocations (register
/// and compact tiles) or workgroups (workgroup tile) in flight. Past what
/// keeps the adapter busy, more chunks only add partial sums to write and
/// reduce: on llvmpipe with 2 threads, ResNet-20's backward-weight took
/// 1.04-1.06x as long with 2048 register-tile invocations as with 512.
const REGISTER_MIN_INVOCATIONS: usize = 512;
const COMPACT_MIN_INVOCATIONS: usize = 512;
const WORKGROUP_MIN_WORKGROUPS: usize = 512;
/// Workgroup-tile GEMMs: narrow tiles only where they make at least this many
/// workgroups (about one per multiprocessor of a large GPU).
const WORKGROUP_GEMM_MIN_WORKGROUPS: usize = 128;

/// The implicit GEMMs (plain and fused) and backward-weight of one variant,
/// from one shader module.
struct ConvGemms {
    implicit_gemm: GemmPair,
    /// Register tile: the GEMMs for destinations of aligned 8-pixel blocks,
    /// which load the epilogue's inputs and store as vec4 (see
    /// [`aligned_blocks`]).
    aligned: Option<GemmPair>,
    /// Register tile: the aligned forward that also leaves partial batch
    /// statistics of its output (see [`conv2d_forward_statistics`]).
    aligned_statistics: Option<Kernel>,
    /// Register tile: the aligned fused backward-data that also leaves
    /// partial sums of a batch norm's backward reduce (see
    /// [`conv2d_backward_data_relu`]).
    aligned_fused_sums: Option<Kernel>,
    /// Compact tile: the GEMMs of 7-tap stride-2 convolutions (ImageNet
    /// ResNets' stem; see [`seven_taps_stride2`]). Their pipelines compile
    /// only for networks that have such a layer.
    seven_taps_stride2: Option<GemmPair>,
    /// Compact tile: the GEMMs of 3-tap stride-1 and stride-2 convolutions
    /// (see [`three_taps_stride1`], [`three_taps_stride2`]).
    three_taps_stride1: Option<GemmPair>,
    three_taps_stride2: Option<GemmPair>,
    /// Compact tile: the general GEMM fused with an epilogue that masks
    /// (backward-data through a ReLU), which its other fused entry points
    /// leave out: the mask made the fused forward's pipeline compile in
    /// 1.25x the time in Chromium on SwiftShader, before a page's first
    /// result.
    masked: Option<Kernel>,
    weight_grad: Kernel,
    /// Register tile: the backward-weight at stride 1, over pixel quads.
    weight_grad_stride1: Option<Kernel>,
}

impl ConvGemms {
    fn new(device: &wgpu::Device, module: &Arc<ShaderModule>, variant: Variant) -> Self {
        let pair = |plain, fused, first_binding, fused_masks| GemmPair {
            plain: Kernel::new(device, module, plain, first_binding),
            fused: Kernel::new(device, module, fused, first_binding),
            fused_masks,
        };
        // The compact tile's fused entry points leave the mask to `masked`.
        let compact_pair = |plain, fused| pair(plain, fused, 60, false);
        // The register tile reads its sources through their texture mirrors:
        // the GEMMs' (binding 12), the backward-weight's x and dy (31, 32).
        let register_gemm = |entry_point| Kernel::new(device, module, entry_point, 10).with_mirrored_bindings(&[12]);
        let register_pair = |plain, fused| GemmPair {
            plain: register_gemm(plain),
            fused: register_gemm(fused),
            fused_masks: true,
        };
        let register_weight_grad =
            |entry_point| Kernel::new(device, module, entry_point, 30).with_mirrored_bindings(&[31, 32]);
        let (implicit_gemm, weight_grad) = match variant {
            Variant::RegisterTile => (
                register_pair("conv2d_implicit_gemm", "conv2d_implicit_gemm_fused"),
                register_weight_grad("conv2d_weight_grad"),
            ),
            Variant::WorkgroupTile => (
                pair(
                    "conv2d_implicit_gemm_tiled",
                    "conv2d_implicit_gemm_tiled_fused",
                    20,
                    true,
                ),
                Kernel::new(device, module, "conv2d_weight_grad_tiled", 40),
            ),
            Variant::CompactTile => (
                compact_pair("conv2d_implicit_gemm_compact", "conv2d_implicit_gemm_compact_fused"),
                Kernel::new(device, module, "conv2d_weight_grad_compact", 70),
            ),
        };
        let aligned = (variant == Variant::RegisterTile)
            .then(|| register_pair("conv2d_implicit_gemm_aligned", "conv2d_implicit_gemm_aligned_fused"));
        let aligned_statistics =
            (variant == Variant::RegisterTile).then(|| register_gemm("conv2d_implicit_gemm_aligned_statistics"));
        let aligned_fused_sums =
            (variant == Variant::RegisterTile).then(|| register_gemm("conv2d_implicit_gemm_aligned_fused_sums"));
        let seven_taps_stride2 = (variant == Variant::CompactTile).then(|| {
            compact_pair(
                "conv2d_implicit_gemm_compact_7_taps_stride2",
                "conv2d_implicit_gemm_compact_7_taps_stride2_fused",
            )
        });
        let three_taps_stride1 = (variant == Variant::CompactTile).then(|| {
            compact_pair(
                "conv2d_implicit_gemm_compact_3_taps_stride1",
                "conv2d_implicit_gemm_compact_3_taps_stride1_fused",
            )
        });
        let three_taps_stride2 = (variant == Variant::CompactTile).then(|| {
            compact_pair(
                "conv2d_implicit_gemm_compact_3_taps_stride2",
                "conv2d_implicit_gemm_compact_3_taps_stride2_fused",
            )
        });
        let masked = (variant == Variant::CompactTile)
            .then(|| Kernel::new(device, module, "conv2d_implicit_gemm_compact_masked", 60));
        let weight_grad_stride1 =
            (variant == Variant::RegisterTile).then(|| register_weight_grad("conv2d_weight_grad_stride1"));
        Self {
            implicit_gemm,
            aligned,
            aligned_statistics,
            aligned_fused_sums,
            seven_taps_stride2,
            three_taps_stride1,
            three_taps_stride2,
            masked,
            weight_grad,
            weight_grad_stride1,
        }
    }

    /// The plain or fused GEMM for `params`: a specialised one where there is
    /// one for it (the 3-tap ones where `layers` asks for them), the masked
    /// one where the epilogue masks and there is one. With whether it binds
    /// a mask.
    fn implicit_gemm(&self, params: &ImplicitGemmParams, fused: bool, layers: SpecialisedLayers) -> (&Kernel, bool) {
        if fused
            && params.epilogue & EPILOGUE_MASK != 0
            && let Some(masked) = &self.masked
        {
            return (masked, true);
        }
        // The first specialised pair that this variant has and that fits.
        let specialised = [
            (&self.aligned, aligned_blocks(params)),
            (&self.seven_taps_stride2, seven_taps_stride2(params)),
            (&self.three_taps_stride1, three_taps_stride1(params, layers)),
            (&self.three_taps_stride2, three_taps_stride2(params, layers)),
        ];
        let pair = specialised
            .into_iter()
            .find_map(|(pair, fits)| pair.as_ref().filter(|_| fits))
            .unwrap_or(&self.implicit_gemm);
        if fused {
            (&pair.fused, pair.fused_masks)
        } else {
            (&pair.plain, false)
        }
    }

    /// The backward-weight for `shape`: pixel quads at stride 1 where there
    /// is that kernel.
    fn weight_grad(&self, shape: &Conv2dShape) -> &Kernel {
        match &self.weight_grad_stride1 {
            Some(stride1) if shape.stride == 1 => stride1,
            _ => &self.weight_grad,
        }
    }
}

/// A GEMM's plain entry point and its fused one, which shares its bindings
/// and adds the epilogue's: bias, residual and, where `fused_masks`, mask.
struct GemmPair {
    plain: Kernel,
    fused: Kernel,
    fused_masks: bool,
}

pub struct Conv2dKernels {
    variant: Variant,
    /// The register or compact kernels load weights through subgroups.
    subgroup_loads: bool,
    transpose_weights: Kernel,
    gemms: ConvGemms,
    /// Register tile with subgroup loads: its GEMMs without them, for small
    /// launches (see [`subgroup_stride`]).
    packed: Option<ConvGemms>,
    /// Compact tile: the inference forward as Winograd F(4x4, 3x3).
    winograd: Option<winograd::WinogradKernels>,
    reduce_partials: Kernel,
    /// Subgroup loads, with subgroups that hold a whole register-tile
    /// workgroup: backward-weight can then share dy between two groups of
    /// invocations within one workgroup (see [`weight_grad_stride`]).
    subgroups_span_workgroup: bool,
}

/// The register and compact kernels' weight loads where the device has
/// subgroups, in place of conv2d.wgsl's plain loads. All invocations of a
/// workgroup work on the same rows, so lanes 0 to 3 of any subgroup (WebGPU's
/// have at least 4) can load the weights every lane needs and broadcast them. SwiftShader,
/// whose every load is a 4-lane gather, then loads each weight once per 4
/// invocations instead of 4 times, and ResNet-20's convolutions take 0.6x the
/// time with the compact kernels; llvmpipe gathers lane by lane, and the
/// register kernels load 4 times fewer weights.
const SUBGROUP_WEIGHT_LOADS: &str = "struct Ids {
    @builtin(global_invocation_id) global: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(workgroup_id) workgroup: vec3<u32>,
    @builtin(subgroup_invocation_id) lane: u32,
}

fn subgroup_lane(ids: Ids) -> u32 {
    return ids.lane;
}

// BEGIN compact tile
fn ct_rows(index: u32, lane: u32) -> Rows8 {
    let k = lane % 4u;
    let lo = ct_wt[index][k];
    let hi = ct_wt[index + 1u][k];
    return Rows8(
        vec4<f32>(subgroupBroadcast(lo, 0u), subgroupBroadcast(lo, 1u), subgroupBroadcast(lo, 2u), subgroupBroadcast(lo, 3u)),
        vec4<f32>(subgroupBroadcast(hi, 0u), subgroupBroadcast(hi, 1u), subgroupBroadcast(hi, 2u), subgroupBroadcast(hi, 3u)),
    );
}

fn ct_rows4(index: u32, lane: u32) -> vec4<f32> {
    let v = ct_wt[index][lane % 4u];
    return vec4<f32>(subgroupBroadcast(v, 0u), subgroupBroadcast(v, 1u), subgroupBroadcast(v, 2u), subgroupBroadcast(v, 3u));
}

// END compact tile.

// BEGIN register tile
// The 16 values that lanes 0 to 3 hold in v, 4 each.
fn broadcast_rows16(v: vec4<f32>) -> Rows16 {
    return Rows16(subgroupBroadcast(v, 0u), subgroupBroadcast(v, 1u), subgroupBroadcast(v, 2u), subgroupBroadcast(v, 3u));
}

// Only lanes 0 to 3 load: llvmpipe runs a load lane by lane, skipping
// inactive lanes, and the forward GEMM took 0.93-0.97x the time it took with
// every lane loading (the broadcasts ignore the other lanes' values).
fn rt_rows(index: u32, lane: u32) -> Rows16 {
    var v = vec4<f32>(0.0);
    if lane < 4u {
        v = rt_wt[index + lane];
    }
    return broadcast_rows16(v);
}

// Lanes 0 to 3 load the 16 dy of the workgroup's first group, 4 to 7 of its
// last where it has two; each lane takes its own group's. (Where it has one,
// lanes 4 to 7 load nothing: as in rt_rows, that made the backward-weight of
// ResNet-20's 32- and 64-channel layers 0.91-0.95x the time on llvmpipe.)
fn rw_rows(own: u32, loads: u32, d: DyChannels) -> Rows16 {
    var v = vec4<f32>(0.0);
    if d.loads {
        v = vec4<f32>(mirrored(rw_dy, loads + d.lane.x), mirrored(rw_dy, loads + d.lane.y), mirrored(rw_dy, loads + d.lane.z), mirrored(rw_dy, loads + d.lane.w));
    }
    let first = broadcast_rows16(v);
    let last = Rows16(subgroupBroadcast(v, 4u), subgroupBroadcast(v, 5u), subgroupBroadcast(v, 6u), subgroupBroadcast(v, 7u));
    return Rows16(select(first.a0, last.a0, d.last), select(first.a1, last.a1, d.last), select(first.a2, last.a2, d.last), select(first.a3, last.a3, d.last));
}
// END register tile.
";

/// The convolutions' WGSL, every tiling's code.
pub const CONV2D_WGSL: &str = include_str!("../../../shaders/conv2d.wgsl");

/// conv2d.wgsl as `variant`'s kernels compile it: without the other
/// tilings' blocks, with subgroup weight loads in the register and compact
/// kernels when `subgroups` (see [`module_source`]).
pub fn conv2d_source(variant: Variant, subgroups: bool) -> String {
    let source = Variant::ALL.into_iter().filter(|&other| other != variant).fold(
        module_source(CONV2D_WGSL, SUBGROUP_WEIGHT_LOADS, subgroups),
        |source, other| without_blocks(&source, tile_block(other)),
    );
    with_mirror_wgsl(source)
}

/// The name of `variant`'s blocks in conv2d.wgsl.
fn tile_block(variant: Variant) -> &'static str {
    match variant {
        Variant::RegisterTile => "register tile",
        Variant::WorkgroupTile => "workgroup tile",
        Variant::CompactTile => "compact tile",
    }
}

impl Conv2dKernels {
    /// The kernels of `variant` only; `subgroups` (the device has the
    /// feature) gives the register and compact kernels subgroup weight loads.
    pub fn new(device: &wgpu::Device, variant: Variant, subgroups: bool) -> Self {
        let subgroup_loads = subgroups && variant != Variant::WorkgroupTile;
        let module = shader_module("conv2d", conv2d_source(variant, subgroup_loads));
        let packed = (variant == Variant::RegisterTile && subgroup_loads).then(|| {
            let plain = shader_module("conv2d (packed)", conv2d_source(variant, false));
            ConvGemms::new(device, &plain, variant)
        });
        Self {
            variant,
            subgroup_loads,
            transpose_weights: Kernel::new(device, &module, "conv2d_transpose_weights", 0),
            gemms: ConvGemms::new(device, &module, variant),
            packed,
            winograd: (variant == Variant::CompactTile).then(|| winograd::WinogradKernels::new(device, &module)),
            reduce_partials: Kernel::new(device, &module, "conv2d_reduce_partials", 50),
            subgroups_span_workgroup: subgroup_loads
                && device.adapter_info().subgroup_min_size as usize >= REGISTER_WORKGROUP,
        }
    }

    /// Whether the kernels use subgroup operations (the register and compact
    /// tiles' loads on a device with subgroups).
    pub fn subgroup_loads(&self) -> bool {
        self.subgroup_loads
    }

    /// Creates the pipeline of [`conv2d_forward_fused`] now (see
    /// [`Kernels::prepare_inference`]).
    pub fn prepare_fused(&self, device: &wgpu::Device) {
        for gemms in std::iter::once(&self.gemms).chain(&self.packed) {
            gemms.implicit_gemm.fused.prepare(device);
            if let Some(aligned) = &gemms.aligned {
                aligned.fused.prepare(device);
            }
        }
    }

    /// The GEMMs of a launch: the packed ones where [`subgroup_stride`] chose
    /// them (it does only where they exist).
    fn gemms(&self, packed: bool) -> &ConvGemms {
        match &self.packed {
            Some(gemms) if packed => gemms,
            _ => &self.gemms,
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct TransposeParams {
    rows: u32,
    channels: u32,
    taps: u32,
    rows_padded: u32,
    row_stride: u32,
    channel_stride: u32,
    channels_padded: u32,
    _pad: u32,
}

/// One implicit GEMM (the forward, or one stride phase of backward-data); see
/// `struct ImplicitGemm` in the shader.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct ImplicitGemmParams {
    batch: u32,
    channels: u32,
    rows: u32,
    rows_padded: u32,
    src_h: u32,
    src_w: u32,
    dst_h: u32,
    dst_w: u32,
    q_h: u32,
    q_w: u32,
    dst_first_h: u32,
    dst_first_w: u32,
    dst_step: u32,
    src_step: u32,
    src_first_h: i32,
    src_first_w: i32,
    src_tap_step: i32,
    taps_h: u32,
    taps_w: u32,
    kernel: u32,
    kernel_first_h: u32,
    kernel_first_w: u32,
    kernel_step: u32,
    columns: u32,
    channels_padded: u32,
    /// `EPILOGUE_*` flags of the fused entry points; 0 elsewhere.
    epilogue: u32,
    /// Register tile: invocations per block of rows (set by [`launch`]).
    row_block_stride: u32,
    /// Workgroup tile: rows of a tile in vec4s (set by [`launch`]).
    tile_row_quads: u32,
}

impl ImplicitGemmParams {
    /// Rows x columns x depth x 2, padding taps included as in
    /// [`Conv2dShape::flops`].
    fn flops(&self) -> f64 {
        2.0 * self.rows as f64 * self.columns as f64 * (self.channels * self.taps_h * self.taps_w) as f64
    }
}

/// Epilogue flags (`EPILOGUE_*` in the shader).
const EPILOGUE_RESIDUAL: u32 = 1;
const EPILOGUE_RELU: u32 = 2;
const EPILOGUE_MASK: u32 = 4;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct WeightGradParams {
    batch: u32,
    in_channels: u32,
    in_h: u32,
    in_w: u32,
    out_channels: u32,
    out_h: u32,
    out_w: u32,
    kernel: u32,
    stride: u32,
    pad: u32,
    rows_per_chunk: u32,
    chunks: u32,
    co_blocks: u32,
    ci_blocks: u32,
    tap_width: u32,
    invocations: u32,
    weight_len: u32,
    combo_stride: u32,
    tile_row_quads: u32,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct ReduceParams {
    len: u32,
    chunks: u32,
}

/// `tiles` workgroups spread over x and y (x at most 65535), `z` in z.
fn grid_2d(tiles: usize, z: usize) -> [u32; 3] {
    let [x, y, _] = grid_1d(tiles, 1);
    [x, y, z as u32]
}

/// Shape `[taps, channels_padded, rows_padded]` of the transposed weights:
/// channels padded to a multiple of 4 and rows to the register tile.
fn transposed_shape(taps: usize, rows: usize, channels: usize) -> [usize; 3] {
    [taps, channels.next_multiple_of(4), rows.next_multiple_of(REGISTER_ROWS)]
}

/// A scratch tensor and the dispatch that writes `w` (OIHW) into it transposed
/// to `[tap][channel][row]`, padded with zeros (see [`transposed_shape`]); it
/// runs before every use, since `w` changes every step. `rows_are_outputs`
/// picks forward (row = co) or backward-data (row = ci).
fn transposed_weights(
    device: &wgpu::Device,
    kernels: &Conv2dKernels,
    shape: &Conv2dShape,
    w: &Tensor,
    rows_are_outputs: bool,
) -> Result<(Tensor, Dispatch), EngineError> {
    let taps = shape.kernel * shape.kernel;
    let (rows, channels, row_stride, channel_stride) = if rows_are_outputs {
        (shape.out_channels, shape.in_channels, shape.in_channels * taps, taps)
    } else {
        (shape.in_channels, shape.out_channels, taps, shape.in_channels * taps)
    };
    let [_, channels_padded, rows_padded] = transposed_shape(taps, rows, channels);
    let wt = Tensor::zeros(device, &[taps, channels_padded, rows_padded])?;
    let params = TransposeParams {
        rows: rows as u32,
        channels: channels as u32,
        taps: taps as u32,
        rows_padded: rows_padded as u32,
        row_stride: row_stride as u32,
        channel_stride: channel_stride as u32,
        channels_padded: channels_padded as u32,
        _pad: 0,
    };
    let invocations = channels_padded / 4 * rows_padded / 4;
    let dispatch =
        kernels
            .transpose_weights
            .bind(device, &params, &[w, &wt], grid_1d(invocations, ELEMENTWISE_WORKGROUP));
    Ok((wt, dispatch))
}

/// The forward weights `w` (OIHW) transposed on the CPU to the forward
/// layout of the implicit GEMM (`[tap][ci][co]`, padded with zeros) and
/// uploaded: for inference, whose weights never change, once at load instead
/// of a transpose dispatch before every forward.
pub fn upload_forward_weights(device: &wgpu::Device, shape: &Conv2dShape, w: &[f32]) -> Result<Tensor, EngineError> {
    shape.validate();
    let (cin, cout, taps) = (shape.in_channels, shape.out_channels, shape.kernel * shape.kernel);
    if w.len() != shape.weight_len() {
        return Err(EngineError::ShapeMismatch {
            shape: vec![cout, cin, shape.kernel, shape.kernel],
            len: shape.weight_len(),
            got: w.len(),
        });
    }
    let dims = transposed_shape(taps, cout, cin);
    let [_, channels_padded, rows_padded] = dims;
    let mut wt = vec![0.0; dims.iter().product()];
    for co in 0..cout {
        for ci in 0..cin {
            for tap in 0..taps {
                wt[(tap * channels_padded + ci) * rows_padded + co] = w[(co * cin + ci) * taps + tap];
            }
        }
    }
    Tensor::from_slice(device, &dims, &wt)
}

/// The forward GEMM of `shape` over transposed weights of shape `wt_shape`.
fn forward_params(shape: &Conv2dShape, wt_shape: &[usize]) -> ImplicitGemmParams {
    let (oh, ow) = (shape.out_h(), shape.out_w());
    ImplicitGemmParams {
        batch: shape.batch as u32,
        channels: shape.in_channels as u32,
        rows: shape.out_channels as u32,
        rows_padded: wt_shape[2] as u32,
        channels_padded: wt_shape[1] as u32,
        src_h: shape.in_h as u32,
        src_w: shape.in_w as u32,
        dst_h: oh as u32,
        dst_w: ow as u32,
        q_h: oh as u32,
        q_w: ow as u32,
        dst_first_h: 0,
        dst_first_w: 0,
        dst_step: 1,
        src_step: shape.stride as u32,
        src_first_h: -(shape.pad as i32),
        src_first_w: -(shape.pad as i32),
        src_tap_step: 1,
        taps_h: shape.kernel as u32,
        taps_w: shape.kernel as u32,
        kernel: shape.kernel as u32,
        kernel_first_h: 0,
        kernel_first_w: 0,
        kernel_step: 1,
        columns: (shape.batch * oh * ow) as u32,
        epilogue: 0,
        row_block_stride: 0,
        tile_row_quads: 0,
    }
}

/// The workgroup tile of a rows x columns GEMM: 4096 outputs, 64 x 64, or
/// 32 x 128 and 16 x 256 where there are few rows (ResNet's 16 and 32
/// channels), so that no invocation computes only padding rows; but taller
/// tiles, padding rows and all, where the narrow ones would make fewer than
/// `min_workgroups` (a small batch: at batch 1 ResNet-20 on an H200 took 1.3x
/// as long with the narrow tiles).
struct WorkgroupTile {
    row_quads: usize,
}

impl WorkgroupTile {
    fn new(rows: usize, columns: usize, min_workgroups: usize) -> Self {
        let fitting = rows.div_ceil(4).next_power_of_two().clamp(4, WORKGROUP_TILE / 4);
        let tile = |row_quads| Self { row_quads };
        std::iter::successors(Some(fitting), |&r| (r < WORKGROUP_TILE / 4).then_some(2 * r))
            .map(tile)
            .find(|t| t.count(rows, columns) >= min_workgroups)
            .unwrap_or(tile(WORKGROUP_TILE / 4))
    }

    fn rows(&self) -> usize {
        4 * self.row_quads
    }

    fn columns(&self) -> usize {
        WORKGROUP_TILE * WORKGROUP_TILE / self.rows()
    }

    /// Workgroups for a rows x columns output.
    fn count(&self, rows: usize, columns: usize) -> usize {
        rows.div_ceil(self.rows()) * columns.div_ceil(self.columns())
    }
}

/// How one implicit GEMM (plain or fused) runs: its parameters completed,
/// its workgroups, and whether it takes the packed register-tile kernels.
struct Launch {
    params: ImplicitGemmParams,
    grid: [u32; 3],
    packed: bool,
}

/// Register tile: invocations that share loads through subgroups must fill
/// whole workgroups, so `n` of them (a row block's triples of pixel blocks,
/// or a weight-gradient slice's channel blocks and taps) are padded to a
/// multiple of the workgroup; where that would leave more than a quarter of
/// the invocations idle (small maps at small batches), the packed kernels (no
/// subgroups) run the `n` unpadded instead. Returns (stride, packed).
fn subgroup_stride(kernels: &Conv2dKernels, n: usize) -> (usize, bool) {
    let padded = n.next_multiple_of(REGISTER_WORKGROUP);
    match kernels.packed {
        Some(_) if (padded - n) * 4 > padded => (n, true),
        Some(_) => (padded, false),
        None => (n, false),
    }
}

/// Register-tile backward-weight: `n` invocations (channel blocks and taps)
/// per group (a chunk of rows and a block of output channels), which share
/// dy through subgroups. A workgroup of lanes from two groups shares both
/// groups' dy (lanes 0 to 3 load the first's, 4 to 7 the last's; see
/// conv2d_weight_grad), so where subgroups span the workgroup and no workgroup
/// meets three groups, the groups run unpadded: ResNet's 16- and 32-channel
/// layers (6 and 12 per group) would otherwise leave a quarter of the lanes
/// idle. Else as [`subgroup_stride`]. Returns (stride, packed).
fn weight_grad_stride(kernels: &Conv2dKernels, n: usize) -> (usize, bool) {
    let w = REGISTER_WORKGROUP;
    // Workgroup g starts at lane g * w: n workgroups meet every offset into a group.
    let at_most_two = (0..n).all(|g| (g * w + w - 1) / n - g * w / n <= 1);
    if kernels.subgroups_span_workgroup && at_most_two {
        (n, false)
    } else {
        subgroup_stride(kernels, n)
    }
}

/// How one implicit GEMM runs (see [`subgroup_stride`]).
fn launch(kernels: &Conv2dKernels, params: &ImplicitGemmParams) -> Launch {
    let rows = params.rows as usize;
    let mut params = *params;
    let mut packed = false;
    let grid = match kernels.variant {
        Variant::RegisterTile => {
            let blocks = (params.batch * params.q_h) as usize * (params.q_w as usize).div_ceil(REGISTER_BLOCK);
            let (stride, pack) = subgroup_stride(kernels, blocks.div_ceil(REGISTER_BLOCKS));
            packed = pack;
            params.row_block_stride = stride as u32;
            grid_1d(stride * rows.div_ceil(REGISTER_ROWS), REGISTER_WORKGROUP as u32)
        }
        Variant::WorkgroupTile => {
            let tile = WorkgroupTile::new(rows, params.columns as usize, WORKGROUP_GEMM_MIN_WORKGROUPS);
            params.tile_row_quads = tile.row_quads as u32;
            grid_2d(
                (params.columns as usize).div_ceil(tile.columns()),
                rows.div_ceil(tile.rows()),
            )
        }
        // The row block in z: uniform over a workgroup.
        Variant::CompactTile => {
            let blocks = (params.batch * params.q_h) as usize * (params.q_w as usize).div_ceil(COMPACT_BLOCK);
            let [x, y, _] = grid_1d(blocks, COMPACT_WORKGROUP as u32);
            [x, y, rows.div_ceil(COMPACT_ROWS) as u32]
        }
    };
    Launch { params, grid, packed }
}

/// What the fused entry points add after the GEMM (see conv2d.wgsl): `bias`
/// (one value per row), then `residual` (shaped like the destination), ReLU,
/// and zeros where `mask` is not positive.
struct Epilogue<'a> {
    bias: &'a Tensor,
    residual: Option<&'a Tensor>,
    relu: bool,
    mask: Option<&'a Tensor>,
}

impl<'a> Epilogue<'a> {
    fn flags(&self) -> u32 {
        let flag = |on: bool, flag: u32| if on { flag } else { 0 };
        flag(self.residual.is_some(), EPILOGUE_RESIDUAL)
            | flag(self.relu, EPILOGUE_RELU)
            | flag(self.mask.is_some(), EPILOGUE_MASK)
    }

    /// Its tensors in binding order (bias, residual, mask). Bindings the
    /// epilogue does not read still need a buffer: the read-only weights
    /// `wt` stand in (padded to 16 rows, they are long enough to bind as
    /// vec4).
    fn tensors(&self, wt: &'a Tensor) -> [&'a Tensor; 3] {
        [self.bias, self.residual.unwrap_or(wt), self.mask.unwrap_or(wt)]
    }
}

/// Whether a register-tile GEMM's destination blocks (8 pixels of a row) all
/// start at a multiple of 4 and are whole: a stride-1 destination whose rows
/// are a multiple of 8 pixels.
fn aligned_blocks(params: &ImplicitGemmParams) -> bool {
    params.dst_step == 1
        && params.dst_first_w.is_multiple_of(4)
        && params.dst_w.is_multiple_of(4)
        && params.q_w.is_multiple_of(8)
}

/// Whether a GEMM reads 7 taps per tap row at source stride 2 (a forward 7x7
/// stride-2 convolution), which the compact tile loads per tap row once.
fn seven_taps_stride2(params: &ImplicitGemmParams) -> bool {
    taps_one_pixel_apart(params, 7, 2)
}

/// Whether a GEMM reads 3 taps per tap row at source stride 1 (a 3x3
/// stride-1 convolution's forward), which the compact tile
/// loads per tap row once, and `layers` asks for every layer. A first plan
/// leaves it out: where Winograd does not take a network's stride-1
/// convolutions (ResNet-20's, at batch 1), a pipeline with this path as well
/// as the general one (which the others need) compiled for 0.59-0.77 s in
/// Chromium on SwiftShader, the general path alone for 0.35-0.47 s, and
/// ResNet-20's page cold start took 931 against 1101 ms (medians of six
/// alternating runs) with its first plan on the general path.
fn three_taps_stride1(params: &ImplicitGemmParams, layers: SpecialisedLayers) -> bool {
    taps_one_pixel_apart(params, 3, 1) && layers == SpecialisedLayers::All
}

/// Whether a GEMM reads `taps` taps per tap row at source stride `stride`,
/// in order and one source pixel apart (a forward convolution's).
fn taps_one_pixel_apart(params: &ImplicitGemmParams, taps: u32, stride: u32) -> bool {
    params.taps_w == taps && params.src_step == stride && params.src_tap_step == 1 && params.kernel_step == 1
}

/// Whether a GEMM reads 3 taps per tap row at source stride 2 (a forward 3x3
/// stride-2 convolution), which the compact tile loads per tap row once, and
/// is as wide as `layers` asks: with [`SpecialisedLayers::Wide`], at least
/// [`THREE_TAPS_STRIDE2_WIDE_CHANNELS`] input channels.
fn three_taps_stride2(params: &ImplicitGemmParams, layers: SpecialisedLayers) -> bool {
    taps_one_pixel_apart(params, 3, 2)
        && (layers == SpecialisedLayers::All || params.channels as usize >= THREE_TAPS_STRIDE2_WIDE_CHANNELS)
}

/// On SwiftShader the 3-tap stride-2 GEMM took 0.7-0.83x the general path's
/// time on ResNet-18's downsampling convolutions (64 to 256 input channels)
/// and 0.64-0.66x on ResNet-20's (16 and 32 channels, 1.6-1.8 ms each at
/// batch 1), but its fused pipeline takes about 145 ms to compile: more than
/// it saves on ResNet-20's first result.
const THREE_TAPS_STRIDE2_WIDE_CHANNELS: usize = 64;

/// One implicit GEMM, plain or, with an epilogue, fused; `layers` as for
/// [`ConvGemms::implicit_gemm`].
#[allow(clippy::too_many_arguments)]
fn implicit_gemm(
    device: &wgpu::Device,
    kernels: &Conv2dKernels,
    params: &ImplicitGemmParams,
    wt: &Tensor,
    src: &Tensor,
    dst: &Tensor,
    epilogue: Option<&Epilogue>,
    layers: SpecialisedLayers,
) -> Dispatch {
    let params = ImplicitGemmParams {
        epilogue: epilogue.map_or(0, Epilogue::flags),
        ..*params
    };
    let (kernel, binds_mask, launch) = implicit_gemm_kernel(kernels, &params, epilogue.is_some(), layers);
    match epilogue {
        None => kernel.bind(device, &launch.params, &[wt, src, dst], launch.grid),
        Some(e) => {
            let [bias, residual, mask] = e.tensors(wt);
            let tensors = [wt, src, dst, bias, residual, mask];
            let bound = if binds_mask { &tensors[..] } else { &tensors[..5] };
            kernel.bind(device, &launch.params, bound, launch.grid)
        }
    }
    .with_flops(params.flops())
}

/// The GEMM entry point (fused with the epilogue or plain) for `params`,
/// with whether it binds a mask, and its launch.
fn implicit_gemm_kernel<'k>(
    kernels: &'k Conv2dKernels,
    params: &ImplicitGemmParams,
    fused: bool,
    layers: SpecialisedLayers,
) -> (&'k Kernel, bool, Launch) {
    let launch = launch(kernels, params);
    let (kernel, binds_mask) = kernels.gemms(launch.packed).implicit_gemm(params, fused, layers);
    (kernel, binds_mask, launch)
}

/// The kernel that [`conv2d_forward_fused`] runs for `shape` and `layers`.
pub fn conv2d_forward_fused_kernel<'k>(
    kernels: &'k Kernels,
    shape: &Conv2dShape,
    layers: SpecialisedLayers,
) -> &'k Kernel {
    let wt_shape = transposed_shape(shape.kernel * shape.kernel, shape.out_channels, shape.in_channels);
    implicit_gemm_kernel(&kernels.conv2d, &forward_params(shape, &wt_shape), true, layers).0
}

/// `y = conv2d(x, w)`.
pub fn conv2d_forward(
    device: &wgpu::Device,
    kernels: &Kernels,
    shape: &Conv2dShape,
    x: &Tensor,
    w: &Tensor,
    y: &Tensor,
) -> Result<Vec<Dispatch>, EngineError> {
    let (wt, transpose) = checked_weights(device, kernels, shape, x, w, y, true)?;
    let params = forward_params(shape, &wt.shape);
    // Training builds its pipelines once, before many steps: every layer
    // takes the specialised GEMMs.
    Ok(vec![
        transpose,
        implicit_gemm(
            device,
            &kernels.conv2d,
            &params,
            &wt,
            x,
            y,
            None,
            SpecialisedLayers::All,
        ),
    ])
}

/// [`conv2d_forward`] that also leaves partial sums of `y`'s per-channel
/// batch statistics, for the training batch norm that normalises `y` to read
/// instead of `y` ([`crate::layers::batch_norm::batch_norm_forward_train`]):
/// the dispatches and the partials, `[slots, out_channels, 4]`. Only the
/// register tile has such a GEMM, for output rows of a multiple of 8 pixels;
/// elsewhere `None`, and the batch norm reads `y`.
pub fn conv2d_forward_statistics(
    device: &wgpu::Device,
    kernels: &Kernels,
    shape: &Conv2dShape,
    x: &Tensor,
    w: &Tensor,
    y: &Tensor,
) -> Result<Option<(Vec<Dispatch>, Tensor)>, EngineError> {
    let k = &kernels.conv2d;
    let wt_shape = transposed_shape(shape.kernel * shape.kernel, shape.out_channels, shape.in_channels);
    let params = forward_params(shape, &wt_shape);
    if k.gemms.aligned_statistics.is_none() || !aligned_blocks(&params) {
        return Ok(None);
    }
    let (wt, transpose) = checked_weights(device, kernels, shape, x, w, y, true)?;
    let launch = launch(k, &params);
    let kernel = k
        .gemms(launch.packed)
        .aligned_statistics
        .as_ref()
        .expect("checked above");
    let (gemm, partials) = bind_with_partials(device, kernel, &launch, shape.out_channels, &[&wt, x, y])?;
    Ok(Some((vec![transpose, gemm], partials)))
}

/// `y = relu?(conv2d(x, w) + bias[co] + residual?)`, the inference forward:
/// `wt` holds the weights transposed by [`upload_forward_weights`], `bias` has
/// `out_channels` values and `residual`, when given, the output's shape;
/// specialised GEMMs where `layers` asks for them.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_forward_fused(
    device: &wgpu::Device,
    kernels: &Kernels,
    shape: &Conv2dShape,
    x: &Tensor,
    wt: &Tensor,
    bias: &Tensor,
    residual: Option<&Tensor>,
    relu: bool,
    y: &Tensor,
    layers: SpecialisedLayers,
) -> Dispatch {
    shape.validate();
    check_len("x", x, shape.input_len(), shape);
    check_len("bias", bias, shape.out_channels, shape);
    check_len("y", y, shape.output_len(), shape);
    let expected = transposed_shape(shape.kernel * shape.kernel, shape.out_channels, shape.in_channels);
    assert_eq!(
        wt.shape, expected,
        "conv2d: transposed weights of shape {:?}, expected {expected:?} for {shape:?}",
        wt.shape
    );
    if let Some(r) = residual {
        check_len("residual", r, shape.output_len(), shape);
    }
    let epilogue = Epilogue {
        bias,
        residual,
        relu,
        mask: None,
    };
    let params = forward_params(shape, &wt.shape);
    implicit_gemm(device, &kernels.conv2d, &params, wt, x, y, Some(&epilogue), layers)
}

/// One dimension of a backward-data stride phase: the input positions
/// `first + stride * q` (q < `count`) with `(position + pad) % stride == phase`
/// receive the taps `phase + stride * t` (t < `taps`) from output positions
/// `q + src_first - t`.
struct Phase {
    first: usize,
    count: usize,
    taps: usize,
    src_first: usize,
}

fn phase(input: usize, kernel: usize, stride: usize, pad: usize, phase: usize) -> Phase {
    let first = (phase as isize - pad as isize).rem_euclid(stride as isize) as usize;
    Phase {
        first,
        count: if input > first {
            (input - first).div_ceil(stride)
        } else {
            0
        },
        taps: if kernel > phase {
            (kernel - phase).div_ceil(stride)
        } else {
            0
        },
        src_first: (first + pad - phase) / stride,
    }
}

/// `dx = dL/dx` given `dy = dL/dy` (overwrites `dx`).
pub fn conv2d_backward_data(
    device: &wgpu::Device,
    kernels: &Kernels,
    shape: &Conv2dShape,
    dy: &Tensor,
    w: &Tensor,
    dx: &Tensor,
) -> Result<Vec<Dispatch>, EngineError> {
    backward_data(device, kernels, shape, dy, w, dx, None)
}

/// Where the convolution's input `x` is a ReLU's output `relu_output`, the
/// gradient of that ReLU's input in the same pass: `dx = (dL/dx + residual?)`
/// where `relu_output > 0`, else 0; with `residual` (the gradient that the
/// ReLU's output gets from its other reader, e.g. a residual block's
/// shortcut) the ReLU backward of the summed gradient. Overwrites `dx`.
///
/// Where `dx` is the output gradient of a training batch norm whose input is
/// `batch_norm_input`, and the kernels have a GEMM for it (the register
/// tile, at stride 1, one phase, for input rows of a multiple of 8 pixels),
/// it also leaves partial sums of that batch norm's backward reduce, which
/// the batch norm reads instead of its input and `dx`
/// ([`crate::layers::batch_norm::batch_norm_backward`]): returned with the
/// dispatches, `[slots, in_channels, 4]`.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_backward_data_relu(
    device: &wgpu::Device,
    kernels: &Kernels,
    shape: &Conv2dShape,
    dy: &Tensor,
    w: &Tensor,
    residual: Option<&Tensor>,
    relu_output: &Tensor,
    batch_norm_input: Option<&Tensor>,
    dx: &Tensor,
) -> Result<(Vec<Dispatch>, Option<Tensor>), EngineError> {
    check_len("relu_output", relu_output, shape.input_len(), shape);
    if let Some(r) = residual {
        check_len("residual", r, shape.input_len(), shape);
    }
    let bias = Tensor::zeros(device, &[shape.in_channels])?;
    let epilogue = Epilogue {
        bias: &bias,
        residual,
        relu: false,
        mask: Some(relu_output),
    };
    if let Some(bn_x) = batch_norm_input {
        check_len("batch_norm_input", bn_x, shape.input_len(), shape);
        if let Some((dispatches, partials)) = backward_data_sums(device, kernels, shape, dy, w, &epilogue, bn_x, dx)? {
            return Ok((dispatches, Some(partials)));
        }
    }
    Ok((backward_data(device, kernels, shape, dy, w, dx, Some(&epilogue))?, None))
}

/// The backward-data of [`conv2d_backward_data_relu`] with the partial sums
/// of the batch norm whose input is `bn_x`, where there is a GEMM for it.
#[allow(clippy::too_many_arguments)]
fn backward_data_sums(
    device: &wgpu::Device,
    kernels: &Kernels,
    shape: &Conv2dShape,
    dy: &Tensor,
    w: &Tensor,
    epilogue: &Epilogue,
    bn_x: &Tensor,
    dx: &Tensor,
) -> Result<Option<(Vec<Dispatch>, Tensor)>, EngineError> {
    let k = &kernels.conv2d;
    let wt_shape = transposed_shape(shape.kernel * shape.kernel, shape.in_channels, shape.out_channels);
    let phases = backward_data_phases(shape, &wt_shape);
    let [params] = phases.as_slice() else {
        return Ok(None);
    };
    if k.gemms.aligned_fused_sums.is_none() || !aligned_blocks(params) {
        return Ok(None);
    }
    let (wt, transpose) = checked_weights(device, kernels, shape, dy, w, dx, false)?;
    let launch = launch(
        k,
        &ImplicitGemmParams {
            epilogue: epilogue.flags(),
            ..*params
        },
    );
    let kernel = k
        .gemms(launch.packed)
        .aligned_fused_sums
        .as_ref()
        .expect("checked above");
    let [bias, residual, mask] = epilogue.tensors(&wt);
    let tensors = [&wt, dy, dx, bias, residual, mask, bn_x];
    let (gemm, partials) = bind_with_partials(device, kernel, &launch, shape.in_channels, &tensors)?;
    Ok(Some((vec![transpose, gemm], partials)))
}

/// The checks of a GEMM's source and destination, forward (`rows_are_outputs`:
/// x and y) or backward-data (dy and dx), and its transposed weights with the
/// dispatch that writes them.
fn checked_weights(
    device: &wgpu::Device,
    kernels: &Kernels,
    shape: &Conv2dShape,
    src: &Tensor,
    w: &Tensor,
    dst: &Tensor,
    rows_are_outputs: bool,
) -> Result<(Tensor, Dispatch), EngineError> {
    shape.validate();
    let (src_name, src_len, dst_name, dst_len) = if rows_are_outputs {
        ("x", shape.input_len(), "y", shape.output_len())
    } else {
        ("dy", shape.output_len(), "dx", shape.input_len())
    };
    check_len(src_name, src, src_len, shape);
    check_len("w", w, shape.weight_len(), shape);
    check_len(dst_name, dst, dst_len, shape);
    transposed_weights(device, &kernels.conv2d, shape, w, rows_are_outputs)
}

/// Binds `kernel`, a GEMM that also leaves partial sums per row (`rows`
/// channels), to `tensors` and the partials, `[slots, rows, 4]`, which it
/// returns. Zeros: slots without live pixels are never written (see the
/// shader).
fn bind_with_partials(
    device: &wgpu::Device,
    kernel: &Kernel,
    launch: &Launch,
    rows: usize,
    tensors: &[&Tensor],
) -> Result<(Dispatch, Tensor), EngineError> {
    let partials = Tensor::zeros(device, &[launch.params.row_block_stride as usize, rows, 4])?;
    let tensors: Vec<&Tensor> = tensors.iter().copied().chain([&partials]).collect();
    let gemm = kernel
        .bind(device, &launch.params, &tensors, launch.grid)
        .with_flops(launch.params.flops());
    Ok((gemm, partials))
}

fn backward_data(
    device: &wgpu::Device,
    kernels: &Kernels,
    shape: &Conv2dShape,
    dy: &Tensor,
    w: &Tensor,
    dx: &Tensor,
    epilogue: Option<&Epilogue>,
) -> Result<Vec<Dispatch>, EngineError> {
    let (wt, transpose) = checked_weights(device, kernels, shape, dy, w, dx, false)?;
    let mut dispatches = vec![transpose];
    // Backward-data reads its taps in reverse, which no 3-tap GEMM does: any
    // `layers`.
    dispatches.extend(backward_data_phases(shape, &wt.shape).iter().map(|params| {
        implicit_gemm(
            device,
            &kernels.conv2d,
            params,
            &wt,
            dy,
            dx,
            epilogue,
            SpecialisedLayers::All,
        )
    }));
    Ok(dispatches)
}

/// The GEMM of each stride phase of backward-data over transposed weights
/// of shape `wt_shape`, phases without columns left out (a phase without
/// taps still runs: it writes the zeros of its pixels).
fn backward_data_phases(shape: &Conv2dShape, wt_shape: &[usize]) -> Vec<ImplicitGemmParams> {
    let s = shape.stride;
    let mut phases = Vec::new();
    for phase_h in 0..s {
        let ph = phase(shape.in_h, shape.kernel, s, shape.pad, phase_h);
        for phase_w in 0..s {
            let pw = phase(shape.in_w, shape.kernel, s, shape.pad, phase_w);
            let columns = shape.batch * ph.count * pw.count;
            if columns == 0 {
                continue;
            }
            phases.push(ImplicitGemmParams {
                batch: shape.batch as u32,
                channels: shape.out_channels as u32,
                rows: shape.in_channels as u32,
                rows_padded: wt_shape[2] as u32,
                channels_padded: wt_shape[1] as u32,
                src_h: shape.out_h() as u32,
                src_w: shape.out_w() as u32,
                dst_h: shape.in_h as u32,
                dst_w: shape.in_w as u32,
                q_h: ph.count as u32,
                q_w: pw.count as u32,
                dst_first_h: ph.first as u32,
                dst_first_w: pw.first as u32,
                dst_step: s as u32,
                src_step: 1,
                src_first_h: ph.src_first as i32,
                src_first_w: pw.src_first as i32,
                src_tap_step: -1,
                taps_h: ph.taps as u32,
                taps_w: pw.taps as u32,
                kernel: shape.kernel as u32,
                kernel_first_h: phase_h as u32,
                kernel_first_w: phase_w as u32,
                kernel_step: s as u32,
                columns: columns as u32,
                epilogue: 0,
                row_block_stride: 0,
                tile_row_quads: 0,
            });
        }
    }
    phases
}

/// `dw = dL/dw` given the forward input `x` and `dy = dL/dy` (overwrites `dw`).
pub fn conv2d_backward_weight(
    device: &wgpu::Device,
    kernels: &Kernels,
    shape: &Conv2dShape,
    x: &Tensor,
    dy: &Tensor,
    dw: &Tensor,
) -> Result<Vec<Dispatch>, EngineError> {
    shape.validate();
    check_len("x", x, shape.input_len(), shape);
    check_len("dy", dy, shape.output_len(), shape);
    check_len("dw", dw, shape.weight_len(), shape);
    let k = &kernels.conv2d;
    let taps = shape.kernel * shape.kernel;
    let weight_len = shape.weight_len();
    let output_rows = shape.batch * shape.out_h();
    let (block_rows, block_columns, tap_width) = match k.variant {
        Variant::CompactTile => (COMPACT_ROWS, COMPACT_BLOCK, 1),
        // The register tile shares its input columns between taps only up to
        // stride 2 (see conv2d.wgsl).
        _ if shape.stride > 2 => (WEIGHT_GRAD_ROWS, WEIGHT_GRAD_COLUMNS, 1),
        _ => (WEIGHT_GRAD_ROWS, WEIGHT_GRAD_COLUMNS, WEIGHT_GRAD_TAPS),
    };
    let co_blocks = shape.out_channels.div_ceil(block_rows);
    // Chunks of the reduction, not the tile, make its parallelism.
    let tile = WorkgroupTile::new(shape.out_channels, shape.in_channels * taps, 1);
    let ci_blocks = shape.in_channels.div_ceil(block_columns);
    let tap_blocks = shape.kernel * shape.kernel.div_ceil(tap_width);
    // Enough chunks to keep the adapter busy, but no more partials than one
    // binding holds.
    // Per (chunk, block of output channels): the input-channel blocks and tap
    // blocks, which share dy (padded where they share it through subgroups).
    let (combo_stride, packed) = match k.variant {
        Variant::RegisterTile => weight_grad_stride(k, ci_blocks * tap_blocks),
        _ => (ci_blocks * tap_blocks, false),
    };
    let tiles = match k.variant {
        Variant::RegisterTile => (combo_stride * co_blocks, REGISTER_MIN_INVOCATIONS),
        Variant::CompactTile => (tap_blocks * co_blocks * ci_blocks, COMPACT_MIN_INVOCATIONS),
        Variant::WorkgroupTile => (
            tile.count(shape.out_channels, shape.in_channels * taps),
            WORKGROUP_MIN_WORKGROUPS,
        ),
    };
    let max_chunks = (device.limits().max_storage_buffer_binding_size as usize / 4 / weight_len).max(1);
    let wanted = tiles.1.div_ceil(tiles.0).clamp(1, max_chunks.min(output_rows));
    let rows_per_chunk = output_rows.div_ceil(wanted);
    let chunks = output_rows.div_ceil(rows_per_chunk);
    let partials = Tensor::zeros(device, &[chunks, weight_len])?;
    let invocations = chunks * tiles.0;
    let params = WeightGradParams {
        batch: shape.batch as u32,
        in_channels: shape.in_channels as u32,
        in_h: shape.in_h as u32,
        in_w: shape.in_w as u32,
        out_channels: shape.out_channels as u32,
        out_h: shape.out_h() as u32,
        out_w: shape.out_w() as u32,
        kernel: shape.kernel as u32,
        stride: shape.stride as u32,
        pad: shape.pad as u32,
        rows_per_chunk: rows_per_chunk as u32,
        chunks: chunks as u32,
        co_blocks: co_blocks as u32,
        ci_blocks: ci_blocks as u32,
        tap_width: tap_width as u32,
        invocations: invocations as u32,
        weight_len: weight_len as u32,
        combo_stride: combo_stride as u32,
        tile_row_quads: tile.row_quads as u32,
    };
    let grid = match k.variant {
        Variant::RegisterTile => grid_1d(invocations, REGISTER_WORKGROUP as u32),
        Variant::CompactTile => grid_1d(invocations, COMPACT_WORKGROUP as u32),
        Variant::WorkgroupTile => [
            (shape.in_channels * taps).div_ceil(tile.columns()) as u32,
            shape.out_channels.div_ceil(tile.rows()) as u32,
            chunks as u32,
        ],
    };
    let gradient = k
        .gemms(packed)
        .weight_grad(shape)
        .bind(device, &params, &[x, dy, &partials], grid)
        .with_flops(shape.flops());
    let reduce = k.reduce_partials.bind(
        device,
        &ReduceParams {
            len: weight_len as u32,
            chunks: chunks as u32,
        },
        &[&partials, dw],
        grid_1d(weight_len, ELEMENTWISE_WORKGROUP),
    );
    Ok(vec![gradient, reduce])
}

/// Plain-Rust reference, straight from the definition (scatter form for the
/// backward passes, independent of the GEMM formulation of the kernels).
pub mod cpu {
    use super::Conv2dShape;

    /// Calls `f(x index, w index, y index)` for every multiply-add of the
    /// forward pass that reads inside the input.
    fn for_each_tap(s: &Conv2dShape, mut f: impl FnMut(usize, usize, usize)) {
        let (oh_n, ow_n) = (s.out_h(), s.out_w());
        for b in 0..s.batch {
            for co in 0..s.out_channels {
                for oh in 0..oh_n {
                    for ow in 0..ow_n {
                        let yi = ((b * s.out_channels + co) * oh_n + oh) * ow_n + ow;
                        for ci in 0..s.in_channels {
                            for kh in 0..s.kernel {
                                for kw in 0..s.kernel {
                                    let ih = (oh * s.stride + kh) as isize - s.pad as isize;
                                    let iw = (ow * s.stride + kw) as isize - s.pad as isize;
                                    if ih < 0 || iw < 0 || ih >= s.in_h as isize || iw >= s.in_w as isize {
                                        continue;
                                    }
                                    let xi = ((b * s.in_channels + ci) * s.in_h + ih as usize) * s.in_w + iw as usize;
                                    let wi = ((co * s.in_channels + ci) * s.kernel + kh) * s.kernel + kw;
                                    f(xi, wi, yi);
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// `y[b,co,oh,ow] = sum_{ci,kh,kw} w[co,ci,kh,kw] x[b,ci,oh*s-p+kh,ow*s-p+kw]`.
    pub fn conv2d_forward(shape: &Conv2dShape, x: &[f64], w: &[f64]) -> Vec<f64> {
        assert_eq!(x.len(), shape.input_len(), "conv2d x");
        assert_eq!(w.len(), shape.weight_len(), "conv2d w");
        let mut y = vec![0.0; shape.output_len()];
        for_each_tap(shape, |xi, wi, yi| y[yi] += w[wi] * x[xi]);
        y
    }

    /// The inference forward: `relu?(conv2d(x, w) + bias[co] + residual?)`.
    pub fn conv2d_forward_fused(
        shape: &Conv2dShape,
        x: &[f64],
        w: &[f64],
        bias: &[f64],
        residual: Option<&[f64]>,
        relu: bool,
    ) -> Vec<f64> {
        assert_eq!(bias.len(), shape.out_channels, "conv2d bias");
        let plane = shape.out_h() * shape.out_w();
        let mut y = conv2d_forward(shape, x, w);
        if let Some(r) = residual {
            assert_eq!(r.len(), y.len(), "conv2d residual");
        }
        for (i, v) in y.iter_mut().enumerate() {
            *v += bias[(i / plane) % shape.out_channels] + residual.map_or(0.0, |r| r[i]);
            if relu {
                *v = v.max(0.0);
            }
        }
        y
    }

    /// `dx = dL/dx` for `dy = dL/dy`.
    pub fn conv2d_backward_data(shape: &Conv2dShape, dy: &[f64], w: &[f64]) -> Vec<f64> {
        assert_eq!(dy.len(), shape.output_len(), "conv2d dy");
        assert_eq!(w.len(), shape.weight_len(), "conv2d w");
        let mut dx = vec![0.0; shape.input_len()];
        for_each_tap(shape, |xi, wi, yi| dx[xi] += w[wi] * dy[yi]);
        dx
    }

    /// `dw = dL/dw` for the forward input `x` and `dy = dL/dy`.
    pub fn conv2d_backward_weight(shape: &Conv2dShape, x: &[f64], dy: &[f64]) -> Vec<f64> {
        assert_eq!(x.len(), shape.input_len(), "conv2d x");
        assert_eq!(dy.len(), shape.output_len(), "conv2d dy");
        let mut dw = vec![0.0; shape.weight_len()];
        for_each_tap(shape, |xi, wi, yi| dw[wi] += x[xi] * dy[yi]);
        dw
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Context;
    use crate::rng::Rng;
    use crate::testing::{assert_close, assert_gradient, context, dot};

    /// A shape of square maps.
    fn shape(
        batch: usize,
        cin: usize,
        hw: usize,
        cout: usize,
        kernel: usize,
        stride: usize,
        pad: usize,
    ) -> Conv2dShape {
        Conv2dShape::new(batch, cin, (hw, hw), cout, kernel, stride, pad)
    }

    /// Awkward shapes: kernels 1/3/5/7, strides 1 to 4, batch 1 to 3, maps 5x5, 7x7,
    /// 8x8 and 16x16, channel counts 3, 5, 16, 17 and odd Cout, padding 0..3, plus
    /// non-square maps and pads that leave whole phases without taps, and a 7x7
    /// stride-2 kernel over whole blocks of 8 output pixels (ResNet-18's first
    /// convolution, where every lane of a register-tile block is live) and
    /// over rows wide enough that every tap of a block's last pixel reads
    /// inside the image, and 3x3 stride-2 convolutions wide enough for the
    /// compact tile's 3-tap stride-2 GEMM (64 input channels), with pad 1 and
    /// 0 and a last block of one pixel.
    fn shapes() -> Vec<Conv2dShape> {
        let mut shapes = vec![
            shape(1, 3, 8, 16, 3, 1, 1),
            shape(3, 5, 7, 7, 3, 1, 1),
            shape(3, 16, 8, 17, 3, 2, 1),
            shape(1, 17, 5, 5, 3, 2, 1),
            shape(3, 3, 7, 5, 7, 2, 3),
            shape(1, 3, 8, 16, 7, 1, 3),
            shape(3, 16, 7, 33, 1, 1, 0),
            shape(3, 17, 8, 16, 1, 2, 0),
            shape(1, 5, 7, 3, 1, 2, 0),
            shape(3, 5, 5, 9, 3, 1, 0),
            shape(1, 16, 8, 16, 3, 2, 2),
            shape(1, 3, 5, 5, 7, 1, 3),
            shape(1, 4, 5, 6, 1, 1, 2),
            shape(2, 5, 11, 6, 3, 3, 1),
            shape(1, 3, 9, 4, 5, 4, 2),
            shape(2, 5, 16, 6, 3, 1, 1),
            shape(1, 3, 16, 5, 7, 2, 3),
            shape(2, 64, 9, 8, 3, 2, 1),
        ];
        shapes.push(Conv2dShape {
            in_h: 6,
            in_w: 9,
            ..shape(3, 5, 0, 7, 3, 2, 1)
        });
        shapes.push(Conv2dShape {
            in_h: 9,
            in_w: 21,
            ..shape(2, 3, 0, 9, 7, 2, 3)
        });
        shapes.push(Conv2dShape {
            in_h: 6,
            in_w: 19,
            ..shape(1, 64, 0, 5, 3, 2, 0)
        });
        shapes
    }

    /// ResNet-50's wide 1x1 convolutions on tiny maps (its last stage at 64 px).
    fn wide_shapes() -> Vec<Conv2dShape> {
        vec![
            shape(2, 2048, 2, 512, 1, 1, 0),
            shape(2, 512, 2, 2048, 1, 1, 0),
            shape(2, 1024, 4, 2048, 1, 2, 0),
        ]
    }

    #[test]
    fn conv2d_wide_one_by_one_convolutions_match_reference() {
        let Some(ctx) = context() else { return };
        for variant in Variant::ALL {
            check_shapes(&Kernels::new(ctx.device(), variant), &wide_shapes());
        }
    }

    /// The variant, and whether it uses subgroups, for messages.
    fn describe(kernels: &Kernels) -> String {
        let with = if kernels.conv2d.subgroup_loads() {
            " with subgroups"
        } else {
            ""
        };
        format!("{:?}{with}", kernels.variant)
    }

    fn check_variant(kernels: &Kernels) {
        let entry_points = check_shapes(kernels, &shapes());
        let required: &[&str] = match kernels.variant {
            Variant::RegisterTile => &[
                "conv2d_implicit_gemm",
                "conv2d_implicit_gemm_aligned",
                "conv2d_weight_grad",
                "conv2d_weight_grad_stride1",
            ],
            Variant::CompactTile => &[
                "conv2d_implicit_gemm_compact",
                "conv2d_implicit_gemm_compact_7_taps_stride2",
                "conv2d_implicit_gemm_compact_3_taps_stride1",
                "conv2d_implicit_gemm_compact_3_taps_stride2",
            ],
            Variant::WorkgroupTile => &[],
        };
        assert_ran(&entry_points, required);
    }

    /// Each of `required` ran (where there is an adapter to run them): the
    /// awkward shapes reach every specialised GEMM of a variant.
    fn assert_ran(entry_points: &std::collections::BTreeSet<&'static str>, required: &[&str]) {
        if context().is_some() {
            for gemm in required {
                assert!(entry_points.contains(gemm), "{gemm} never ran: {entry_points:?}");
            }
        }
    }

    /// Checks every direction on each shape; returns the entry points that ran.
    fn check_shapes(kernels: &Kernels, shapes: &[Conv2dShape]) -> std::collections::BTreeSet<&'static str> {
        let mut entry_points = std::collections::BTreeSet::new();
        let Some(ctx) = context() else { return entry_points };
        let (device, queue) = (ctx.device(), ctx.queue());
        let mut rng = Rng::new(7);
        for &s in shapes {
            let x = rng.vec(s.input_len(), -1.0, 1.0);
            let w = rng.vec(s.weight_len(), -1.0, 1.0);
            let dy = rng.vec(s.output_len(), -1.0, 1.0);
            let xt = Tensor::from_f64(device, &[s.input_len()], &x).unwrap();
            let wt = Tensor::from_f64(device, &[s.weight_len()], &w).unwrap();
            let dyt = Tensor::from_f64(device, &[s.output_len()], &dy).unwrap();
            // Outputs start as garbage (NaN) to prove they are overwritten everywhere.
            let garbage = |len: usize| Tensor::from_slice(device, &[len], &vec![f32::NAN; len]).unwrap();
            let yt = garbage(s.output_len());
            let dxt = garbage(s.input_len());
            let dwt = garbage(s.weight_len());
            let mut dispatches = conv2d_forward(device, kernels, &s, &xt, &wt, &yt).unwrap();
            dispatches.extend(conv2d_backward_data(device, kernels, &s, &dyt, &wt, &dxt).unwrap());
            dispatches.extend(conv2d_backward_weight(device, kernels, &s, &xt, &dyt, &dwt).unwrap());
            entry_points.extend(dispatches.iter().map(Dispatch::entry_point));
            crate::kernel::submit(device, queue, &dispatches.iter().collect::<Vec<_>>());
            // Inputs in [-1, 1): sums of up to 16*7*7 = 784 (forward/data) or
            // 3*8*8 = 192 (weight) products of magnitude < 1, accumulated in f32:
            // rounding drifts by ~sqrt(784) * 6e-8 * |sum| ~ 2e-6 |sum|, well
            // inside atol + rtol |sum|, while a wrong tap, channel or pixel moves
            // a result by ~0.1 or more.
            let what = format!("{} {s:?}", describe(kernels));
            let y = yt.read_blocking(device, queue).unwrap();
            assert_close(&format!("y {what}"), &y, &cpu::conv2d_forward(&s, &x, &w), 1e-4, 1e-4);
            let dx = dxt.read_blocking(device, queue).unwrap();
            assert_close(
                &format!("dx {what}"),
                &dx,
                &cpu::conv2d_backward_data(&s, &dy, &w),
                1e-4,
                1e-4,
            );
            let dw = dwt.read_blocking(device, queue).unwrap();
            assert_close(
                &format!("dw {what}"),
                &dw,
                &cpu::conv2d_backward_weight(&s, &x, &dy),
                1e-4,
                1e-4,
            );
        }
        entry_points
    }

    #[test]
    fn conv2d_register_tile_matches_reference_in_all_directions_with_and_without_subgroups() {
        with_and_without_subgroups(Variant::RegisterTile, check_variant);
    }

    /// The register-tile kernels with subgroup loads, if the adapter has
    /// subgroups (else there is nothing to choose between).
    fn register_tile_with_subgroups() -> Option<(&'static Context, Kernels)> {
        let ctx = context()?;
        if !ctx.device().features().contains(wgpu::Features::SUBGROUP) {
            eprintln!("this adapter has no subgroups: nothing to choose");
            return None;
        }
        Some((ctx, Kernels::with_subgroups(ctx.device(), Variant::RegisterTile, true)))
    }

    /// Which register-tile launches share weights through subgroups: the
    /// awkward shapes take both paths (so the tests above check both), as do
    /// ResNet-20 training (shared) and ResNet-18's last stage at batch 1
    /// (packed).
    #[test]
    fn conv2d_register_tile_shares_weights_on_large_maps_and_packs_small_ones() {
        let Some((_, kernels)) = register_tile_with_subgroups() else {
            return;
        };
        let packed = |s: &Conv2dShape| {
            let wt = transposed_shape(s.kernel * s.kernel, s.out_channels, s.in_channels);
            launch(&kernels.conv2d, &forward_params(s, &wt)).packed
        };
        assert!(!packed(&shape(128, 16, 32, 16, 3, 1, 1)));
        assert!(packed(&shape(1, 512, 7, 512, 3, 1, 1)));
        assert!(shapes().iter().any(packed) && !shapes().iter().all(packed));
    }

    /// The 3-tap stride-1 GEMM takes the forward of 3x3 stride-1
    /// convolutions only in a plan with every layer specialised: a first
    /// plan compiles the general GEMM alone. Neither a stride-2, a 1x1 nor
    /// a 3x3 stride-1 backward-data GEMM (taps in reverse) takes it.
    /// Whether `fits` takes the forward of `s` in a first plan and in a plan
    /// with every layer specialised.
    fn takes_forward(fits: fn(&ImplicitGemmParams, SpecialisedLayers) -> bool, s: Conv2dShape) -> [bool; 2] {
        let params = forward_params(
            &s,
            &transposed_shape(s.kernel * s.kernel, s.out_channels, s.in_channels),
        );
        [SpecialisedLayers::Wide, SpecialisedLayers::All].map(|layers| fits(&params, layers))
    }

    #[test]
    fn three_taps_stride1_takes_3x3_stride1_forwards_only_where_every_layer_is_asked() {
        let takes = |s| takes_forward(three_taps_stride1, s);
        assert_eq!(takes(shape(1, 16, 32, 16, 3, 1, 1)), [false, true]);
        assert_eq!(takes(shape(1, 256, 14, 256, 3, 1, 1)), [false, true]);
        assert_eq!(takes(shape(1, 16, 32, 32, 3, 2, 1)), [false, false]);
        assert_eq!(takes(shape(1, 64, 56, 64, 1, 1, 0)), [false, false]);
        let s = shape(1, 16, 32, 16, 3, 1, 1);
        let backward = backward_data_phases(&s, &transposed_shape(9, s.in_channels, s.out_channels));
        assert!(
            backward
                .iter()
                .all(|params| !three_taps_stride1(params, SpecialisedLayers::All))
        );
    }

    /// The 3-tap stride-2 GEMM takes ResNet-20's downsampling convolutions
    /// (16 and 32 input channels) only in a plan with every layer
    /// specialised, ResNet-18's (64 channels and up) in both, and neither a
    /// stride-1 nor a 1x1 stride-2 convolution.
    #[test]
    fn three_taps_stride2_takes_narrow_convolutions_only_where_every_layer_is_asked() {
        let takes = |s| takes_forward(three_taps_stride2, s);
        assert_eq!(takes(shape(1, 16, 32, 32, 3, 2, 1)), [false, true]);
        assert_eq!(takes(shape(1, 32, 16, 64, 3, 2, 1)), [false, true]);
        assert_eq!(takes(shape(1, 64, 56, 128, 3, 2, 1)), [true, true]);
        assert_eq!(takes(shape(1, 16, 32, 16, 3, 1, 1)), [false, false]);
        assert_eq!(takes(shape(1, 16, 32, 32, 1, 2, 0)), [false, false]);
    }

    /// Register-tile backward-weight with subgroups: ResNet's 16- and
    /// 32-channel layers (6 and 12 invocations per group) run unpadded, two
    /// groups sharing a workgroup, where the subgroups span it (as the tests
    /// above then check: `shapes()` has 16 input channels); 5 per group would
    /// put three groups in some workgroups, so those are padded or packed.
    #[test]
    fn conv2d_weight_grad_puts_two_groups_in_a_workgroup_only_where_subgroups_span_it() {
        let Some((ctx, kernels)) = register_tile_with_subgroups() else {
            return;
        };
        let k = &kernels.conv2d;
        let spans = ctx.device().adapter_info().subgroup_min_size as usize >= REGISTER_WORKGROUP;
        assert_eq!(k.subgroups_span_workgroup, spans);
        for n in [4, 6, 12, 24] {
            let want = if spans { (n, false) } else { subgroup_stride(k, n) };
            assert_eq!(weight_grad_stride(k, n), want, "{n} per group");
        }
        assert_eq!(weight_grad_stride(k, 5), subgroup_stride(k, 5));
        assert_eq!(weight_grad_stride(k, 3), subgroup_stride(k, 3));
        let plain = Kernels::with_subgroups(ctx.device(), Variant::RegisterTile, false);
        assert_eq!(weight_grad_stride(&plain.conv2d, 6), (6, false));
    }

    #[test]
    fn conv2d_workgroup_tile_matches_reference_in_all_directions() {
        let Some(ctx) = context() else { return };
        let kernels = Kernels::new(ctx.device(), Variant::WorkgroupTile);
        check_variant(&kernels);
        // Large maps, whose GEMMs with few rows take the 16- and 32-row tiles
        // (the awkward shapes are too small for them, except in the
        // backward-weight).
        check_shapes(
            &kernels,
            &[shape(2, 3, 128, 16, 3, 1, 1), shape(1, 5, 128, 24, 3, 1, 1)],
        );
    }

    #[test]
    fn workgroup_tiles_fit_few_rows_where_there_are_enough_workgroups() {
        let rows = |rows, columns, min| WorkgroupTile::new(rows, columns, min).rows();
        // ResNet-20 at batch 128: 16, 32 and 64 channels.
        assert_eq!(rows(16, 128 * 32 * 32, WORKGROUP_GEMM_MIN_WORKGROUPS), 16);
        assert_eq!(rows(32, 128 * 16 * 16, WORKGROUP_GEMM_MIN_WORKGROUPS), 32);
        assert_eq!(rows(64, 128 * 8 * 8, WORKGROUP_GEMM_MIN_WORKGROUPS), 64);
        // At batch 1 more, taller workgroups.
        assert_eq!(rows(16, 32 * 32, WORKGROUP_GEMM_MIN_WORKGROUPS), 64);
        // The shapes of the test above: 16 and 32 rows (forward), 16 (backward-data).
        assert_eq!(rows(16, 2 * 128 * 128, WORKGROUP_GEMM_MIN_WORKGROUPS), 16);
        assert_eq!(rows(24, 128 * 128, WORKGROUP_GEMM_MIN_WORKGROUPS), 32);
        assert_eq!(rows(3, 2 * 128 * 128, WORKGROUP_GEMM_MIN_WORKGROUPS), 16);
        // Backward-weight (chunks make its workgroups): rows fit always.
        assert_eq!(rows(16, 16 * 9, 1), 16);
        assert_eq!(rows(17, 16 * 9, 1), 32);
        assert_eq!(rows(512, 512 * 9, 1), 64);
    }

    /// Runs `check` on the kernels of `variant` with and without subgroup
    /// weight loads (with them only where the test device has subgroups:
    /// lavapipe does).
    pub(super) fn with_and_without_subgroups(variant: Variant, check: fn(&Kernels)) {
        let Some(ctx) = context() else { return };
        let has_subgroups = ctx.device().features().contains(wgpu::Features::SUBGROUP);
        if !has_subgroups {
            eprintln!("this adapter has no subgroups: the {variant:?} kernels are tested without them only");
        }
        for subgroups in [false, true]
            .into_iter()
            .filter(|&subgroups| !subgroups || has_subgroups)
        {
            check(&Kernels::with_subgroups(ctx.device(), variant, subgroups));
        }
    }

    #[test]
    fn conv2d_compact_tile_matches_reference_in_all_directions_with_and_without_subgroups() {
        with_and_without_subgroups(Variant::CompactTile, check_variant);
    }

    /// Each tiling's module, with and without subgroup loads, is valid WGSL
    /// (the blocks it leaves out held nothing it uses) and holds its own
    /// tiling's entry points and no other's.
    #[test]
    fn conv2d_source_of_each_variant_validates_with_its_entry_points_only() {
        let capabilities = naga::valid::Capabilities::CUBE_ARRAY_TEXTURES
            | naga::valid::Capabilities::MULTISAMPLED_SHADING
            | naga::valid::Capabilities::SUBGROUP;
        let own_entry_point = |variant| match variant {
            Variant::RegisterTile => "fn conv2d_implicit_gemm(",
            Variant::WorkgroupTile => "fn conv2d_implicit_gemm_tiled(",
            Variant::CompactTile => "fn conv2d_winograd_gemm(",
        };
        for variant in Variant::ALL {
            for subgroups in [false, true] {
                let source = conv2d_source(variant, subgroups);
                let what = format!("{variant:?}, subgroups {subgroups}");
                assert_eq!(
                    source.contains("subgroupBroadcast"),
                    subgroups && variant != Variant::WorkgroupTile,
                    "{what}"
                );
                assert!(!source.contains("enable subgroups"), "{what}");
                for other in Variant::ALL {
                    assert_eq!(
                        source.contains(own_entry_point(other)),
                        other == variant,
                        "{what}: {other:?}'s kernels"
                    );
                }
                assert!(
                    source.len() < CONV2D_WGSL.len() * 2 / 3,
                    "{what}: {} bytes",
                    source.len()
                );
                let module = naga::front::wgsl::parse_str(&source)
                    .unwrap_or_else(|e| panic!("{what}: {}", e.emit_to_string(&source)));
                naga::valid::Validator::new(naga::valid::ValidationFlags::all(), capabilities)
                    .subgroup_stages(naga::valid::ShaderStages::COMPUTE)
                    .subgroup_operations(naga::valid::SubgroupOperationSet::all())
                    .validate(&module)
                    .unwrap_or_else(|e| panic!("{what}: {}", e.emit_to_string(&source)));
            }
        }
    }

    /// Signature of a fused inference forward under test: dispatches for
    /// (shape, OIHW weights, x, bias, residual, relu, y), weights uploaded
    /// its own way.
    pub(super) type FusedForward<'a> =
        dyn Fn(&Conv2dShape, &[f32], &Tensor, &Tensor, Option<&Tensor>, bool, &Tensor) -> Vec<Dispatch> + 'a;

    /// `forward` on each shape, with and without residual and ReLU, against
    /// the reference's fused forward within `atol` (and 1e-4 relative).
    /// Returns the entry points that ran.
    pub(super) fn check_fused_forward(
        kernels: &Kernels,
        shapes: &[Conv2dShape],
        atol: f64,
        forward: &FusedForward,
    ) -> std::collections::BTreeSet<&'static str> {
        let mut entry_points = std::collections::BTreeSet::new();
        let Some(ctx) = context() else { return entry_points };
        let (device, queue) = (ctx.device(), ctx.queue());
        let mut rng = Rng::new(13);
        for s in shapes {
            let x = rng.vec(s.input_len(), -1.0, 1.0);
            let w = rng.vec(s.weight_len(), -1.0, 1.0);
            let bias = rng.vec(s.out_channels, -1.0, 1.0);
            let residual = rng.vec(s.output_len(), -1.0, 1.0);
            let w32: Vec<f32> = w.iter().map(|&v| v as f32).collect();
            let xt = Tensor::from_f64(device, &[s.input_len()], &x).unwrap();
            let bt = Tensor::from_f64(device, &[s.out_channels], &bias).unwrap();
            let rt = Tensor::from_f64(device, &[s.output_len()], &residual).unwrap();
            for (with_residual, relu) in [(false, false), (false, true), (true, false), (true, true)] {
                let len = s.output_len();
                let yt = Tensor::from_slice(device, &[len], &vec![f32::NAN; len]).unwrap();
                let r = with_residual.then_some(&rt);
                let dispatches = forward(s, &w32, &xt, &bt, r, relu, &yt);
                entry_points.extend(dispatches.iter().map(Dispatch::entry_point));
                crate::kernel::submit(device, queue, &dispatches.iter().collect::<Vec<_>>());
                let want = cpu::conv2d_forward_fused(s, &x, &w, &bias, with_residual.then_some(&residual), relu);
                assert_close(
                    &format!(
                        "fused y {} residual {with_residual} relu {relu} {s:?}",
                        describe(kernels)
                    ),
                    &yt.read_blocking(device, queue).unwrap(),
                    &want,
                    atol,
                    1e-4,
                );
            }
        }
        entry_points
    }

    /// The fused epilogues on the awkward shapes: the inference forward, with
    /// and without residual and ReLU, over weights transposed at load; and
    /// backward-data fused with the backward of a ReLU that produced x (its
    /// output, half of it negative, is the mask), with and without the
    /// residual gradient, against the reference's backward-data, sum and mask.
    /// The register tile runs both of its fused kernels: vec4 epilogue loads
    /// on the 8x8 and 16x16 stride-1 maps, gathers on the others; the compact
    /// tile its 7-tap stride-2 one on the 7x7 stride-2 shapes.
    /// The ReLU's backward after a backward-data `plain`: its input gradient,
    /// `plain + residual?` where `relu_output > 0`, else 0.
    fn relu_backward_reference(plain: &[f64], residual: Option<&[f64]>, relu_output: &[f64]) -> Vec<f64> {
        (0..plain.len())
            .map(|i| {
                let sum = plain[i] + residual.map_or(0.0, |r| r[i]);
                if relu_output[i] > 0.0 { sum } else { 0.0 }
            })
            .collect()
    }

    fn check_fused(kernels: &Kernels) {
        let Some(ctx) = context() else { return };
        let (device, queue) = (ctx.device(), ctx.queue());
        // The forward as the plain one: two more terms in [-1, 1) change nothing.
        let mut entry_points = check_fused_forward(kernels, &shapes(), 1e-4, &|s, w, x, bias, residual, relu, y| {
            let wt = upload_forward_weights(device, s, w).unwrap();
            vec![conv2d_forward_fused(
                device,
                kernels,
                s,
                x,
                &wt,
                bias,
                residual,
                relu,
                y,
                SpecialisedLayers::All,
            )]
        });
        let mut rng = Rng::new(14);
        for s in shapes() {
            let w = rng.vec(s.weight_len(), -1.0, 1.0);
            let dy = rng.vec(s.output_len(), -1.0, 1.0);
            let relu_output = rng.vec(s.input_len(), -1.0, 1.0);
            let residual = rng.vec(s.input_len(), -1.0, 1.0);
            let dyt = Tensor::from_f64(device, &[s.output_len()], &dy).unwrap();
            let wflat = Tensor::from_f64(device, &[s.weight_len()], &w).unwrap();
            let mask = Tensor::from_f64(device, &[s.input_len()], &relu_output).unwrap();
            let rt = Tensor::from_f64(device, &[s.input_len()], &residual).unwrap();
            let plain = cpu::conv2d_backward_data(&s, &dy, &w);
            for with_residual in [false, true] {
                let len = s.input_len();
                let dxt = Tensor::from_slice(device, &[len], &vec![f32::NAN; len]).unwrap();
                let r = with_residual.then_some(&rt);
                let (dispatches, _) =
                    conv2d_backward_data_relu(device, kernels, &s, &dyt, &wflat, r, &mask, None, &dxt).unwrap();
                entry_points.extend(dispatches.iter().map(Dispatch::entry_point));
                crate::kernel::submit(device, queue, &dispatches.iter().collect::<Vec<_>>());
                let want = relu_backward_reference(&plain, with_residual.then_some(residual.as_slice()), &relu_output);
                assert_close(
                    &format!("relu dx {} residual {with_residual} {s:?}", describe(kernels)),
                    &dxt.read_blocking(device, queue).unwrap(),
                    &want,
                    1e-4,
                    1e-4,
                );
            }
        }
        let required: &[&str] = match kernels.variant {
            Variant::RegisterTile => &["conv2d_implicit_gemm_fused", "conv2d_implicit_gemm_aligned_fused"],
            Variant::CompactTile => &[
                "conv2d_implicit_gemm_compact_fused",
                "conv2d_implicit_gemm_compact_masked",
                "conv2d_implicit_gemm_compact_7_taps_stride2_fused",
                "conv2d_implicit_gemm_compact_3_taps_stride1_fused",
                "conv2d_implicit_gemm_compact_3_taps_stride2_fused",
            ],
            Variant::WorkgroupTile => &[],
        };
        assert_ran(&entry_points, required);
    }

    #[test]
    fn conv2d_fused_register_tile_epilogues_match_the_reference_forward_and_relu_backward() {
        with_and_without_subgroups(Variant::RegisterTile, check_fused);
    }

    #[test]
    fn conv2d_fused_workgroup_tile_epilogues_match_the_reference_forward_and_relu_backward() {
        let Some(ctx) = context() else { return };
        check_fused(&Kernels::new(ctx.device(), Variant::WorkgroupTile));
    }

    #[test]
    fn conv2d_fused_compact_tile_epilogues_match_the_reference_forward_and_relu_backward() {
        with_and_without_subgroups(Variant::CompactTile, check_fused);
    }

    /// The forward that leaves partial batch statistics, then the training
    /// batch norm from them, against the reference convolution and the
    /// reference statistics of the convolution's own output. Shapes whose
    /// output rows are 8 and 16 pixels (every aligned case: stride 1 and 2,
    /// a 1x1 kernel), with rows past one register tile (20, 33), with the
    /// last triple of pixel blocks part-live, and inputs whose outputs have
    /// mean >> std or whose first output (each channel's pivot) is an
    /// outlier.
    fn check_forward_statistics(kernels: &Kernels) {
        use crate::layers::batch_norm::{self, BatchNormShape, batch_norm_forward_train};
        let Some(ctx) = context() else { return };
        let (device, queue) = (ctx.device(), ctx.queue());
        let mut rng = Rng::new(17);
        let cases = [
            (shape(2, 5, 8, 20, 3, 1, 1), 0.0, 0.0),
            (shape(2, 3, 16, 16, 3, 2, 1), 0.0, 0.0),
            (shape(1, 4, 16, 7, 1, 1, 0), 0.0, 0.0),
            (shape(3, 5, 8, 33, 3, 1, 1), 50.0, 0.0),
            (shape(2, 5, 8, 20, 3, 1, 1), 0.0, 200.0),
        ];
        for (s, offset, first_spike) in cases {
            let mut x = rng.vec(s.input_len(), offset - 1.0, offset + 1.0);
            x[0] += first_spike;
            // Positive weights keep the offset in the output: mean >> std.
            let w = rng.vec(s.weight_len(), 0.0, 1.0);
            let bn = BatchNormShape {
                batch: s.batch,
                channels: s.out_channels,
                spatial: s.out_h() * s.out_w(),
            };
            let c = [s.out_channels];
            let gamma = rng.vec(s.out_channels, 0.5, 1.5);
            let beta = rng.vec(s.out_channels, -1.0, 1.0);
            let upload = |shape: &[usize], data: &[f64]| Tensor::from_f64(device, shape, data).unwrap();
            let nan = |len: usize| Tensor::from_slice(device, &[len], &vec![f32::NAN; len]).unwrap();
            let (xt, wt) = (upload(&[s.input_len()], &x), upload(&[s.weight_len()], &w));
            let (gt, bt) = (upload(&c, &gamma), upload(&c, &beta));
            let (running_mean, running_var) = (upload(&c, &vec![0.0; c[0]]), upload(&c, &vec![1.0; c[0]]));
            let (saved_mean, saved_inv_std) = (nan(c[0]), nan(c[0]));
            let (yt, normalised) = (nan(s.output_len()), nan(s.output_len()));
            let (mut dispatches, partials) = conv2d_forward_statistics(device, kernels, &s, &xt, &wt, &yt)
                .unwrap()
                .unwrap_or_else(|| panic!("{}: no statistics forward for {s:?}", describe(kernels)));
            dispatches.extend(batch_norm_forward_train(
                device,
                kernels,
                bn,
                &yt,
                Some(&partials),
                &gt,
                &bt,
                &running_mean,
                &running_var,
                &saved_mean,
                &saved_inv_std,
                batch_norm::Epilogue::default(),
                &normalised,
                0.1,
                1e-5,
            ));
            crate::kernel::submit(device, queue, &dispatches.iter().collect::<Vec<_>>());
            let read = |t: &Tensor| t.read_blocking(device, queue).unwrap();
            let what = |name: &str| format!("{name} {} offset {offset} spike {first_spike} {s:?}", describe(kernels));
            let y = read(&yt);
            // Sums of up to 45 products near 50: f32 rounding ~1e-5 relative.
            assert_close(&what("y"), &y, &cpu::conv2d_forward(&s, &x, &w), 1e-4, 1e-5);
            // The statistics of the GPU's own output, so that they test the
            // reduction, not the convolution's rounding.
            let y64: Vec<f64> = y.iter().map(|&v| v as f64).collect();
            let want = batch_norm::cpu::batch_norm_forward_train(bn, &y64, &gamma, &beta, 1e-5);
            let std = want.var.iter().fold(0.0f64, |m, &v| m.max(v.sqrt()));
            assert_close(&what("mean"), &read(&saved_mean), &want.mean, 1e-4 * std, 1e-6);
            assert_close(&what("inv_std"), &read(&saved_inv_std), &want.inv_std, 0.0, 1e-3);
            let (mut mean, mut var) = (vec![0.0; c[0]], vec![1.0; c[0]]);
            batch_norm::cpu::batch_norm_update_running(bn, &want.mean, &want.var, &mut mean, &mut var, 0.1);
            assert_close(&what("running mean"), &read(&running_mean), &mean, 1e-5 * std, 1e-6);
            assert_close(&what("running var"), &read(&running_var), &var, 0.0, 1e-3);
            assert_close(&what("normalised"), &read(&normalised), &want.y, 1e-3, 1e-3);
        }
    }

    /// The backward-data that runs a ReLU's backward and leaves partial sums
    /// of a batch norm's backward reduce, then that batch norm's backward
    /// from them, against the reference: the ReLU's input gradient, and the
    /// batch norm's gradients for that output gradient. Stride-1 shapes with
    /// input rows of 8 and 16 pixels, 20 and 7 channels (rows past one
    /// register tile, and fewer than one), the last triple of pixel blocks
    /// part-live, with and without the residual gradient, and a batch-norm
    /// input with mean >> std.
    fn check_backward_data_sums(kernels: &Kernels) {
        use crate::layers::batch_norm::{self, BatchNormShape, batch_norm_backward};
        let Some(ctx) = context() else { return };
        let (device, queue) = (ctx.device(), ctx.queue());
        let mut rng = Rng::new(19);
        let cases = [
            (shape(2, 20, 8, 5, 3, 1, 1), 0.0),
            (shape(1, 7, 16, 4, 1, 1, 0), 0.0),
            (shape(3, 16, 8, 16, 3, 1, 1), 50.0),
        ];
        for ((s, offset), with_residual) in cases.into_iter().flat_map(|c| [(c, false), (c, true)]) {
            let w = rng.vec(s.weight_len(), -1.0, 1.0);
            let dy = rng.vec(s.output_len(), -1.0, 1.0);
            let relu_output = rng.vec(s.input_len(), -1.0, 1.0);
            let residual = rng.vec(s.input_len(), -1.0, 1.0);
            let bn_x = rng.vec(s.input_len(), offset - 1.0, offset + 1.0);
            let gamma = rng.vec(s.in_channels, 0.5, 1.5);
            let bn = BatchNormShape {
                batch: s.batch,
                channels: s.in_channels,
                spatial: s.in_h * s.in_w,
            };
            let statistics =
                batch_norm::cpu::batch_norm_forward_train(bn, &bn_x, &gamma, &vec![0.0; bn.channels], 1e-5);
            let upload = |data: &[f64]| Tensor::from_f64(device, &[data.len()], data).unwrap();
            let nan = |len: usize| Tensor::from_slice(device, &[len], &vec![f32::NAN; len]).unwrap();
            let (dyt, wt, mask, rt, xt) = (
                upload(&dy),
                upload(&w),
                upload(&relu_output),
                upload(&residual),
                upload(&bn_x),
            );
            let (gt, mean, inv_std) = (upload(&gamma), upload(&statistics.mean), upload(&statistics.inv_std));
            let (dz, dx, dgamma, dbeta) = (
                nan(s.input_len()),
                nan(s.input_len()),
                nan(bn.channels),
                nan(bn.channels),
            );
            let r = with_residual.then_some(&rt);
            let (mut dispatches, partials) =
                conv2d_backward_data_relu(device, kernels, &s, &dyt, &wt, r, &mask, Some(&xt), &dz).unwrap();
            let partials = partials.unwrap_or_else(|| panic!("{}: no backward-data sums for {s:?}", describe(kernels)));
            dispatches.extend(batch_norm_backward(
                device,
                kernels,
                bn,
                &xt,
                &dz,
                Some(&partials),
                &gt,
                &mean,
                &inv_std,
                &dx,
                &dgamma,
                &dbeta,
            ));
            crate::kernel::submit(device, queue, &dispatches.iter().collect::<Vec<_>>());
            let read = |t: &Tensor| t.read_blocking(device, queue).unwrap();
            let what = |name: &str| {
                format!(
                    "{name} {} residual {with_residual} offset {offset} {s:?}",
                    describe(kernels)
                )
            };
            let plain = cpu::conv2d_backward_data(&s, &dy, &w);
            let want = relu_backward_reference(&plain, with_residual.then_some(residual.as_slice()), &relu_output);
            let dz = read(&dz);
            assert_close(&what("relu dx"), &dz, &want, 1e-4, 1e-4);
            // The batch norm's gradients for the GPU's own output gradient,
            // so that they test the reduction, not the convolution's rounding.
            let dz64: Vec<f64> = dz.iter().map(|&v| v as f64).collect();
            let (want_dx, want_dgamma, want_dbeta) =
                batch_norm::cpu::batch_norm_backward(bn, &bn_x, &dz64, &gamma, 1e-5);
            assert_close(&what("dbeta"), &read(&dbeta), &want_dbeta, 1e-4, 1e-4);
            assert_close(&what("dgamma"), &read(&dgamma), &want_dgamma, 1e-3, 1e-4);
            assert_close(&what("batch norm dx"), &read(&dx), &want_dx, 1e-4, 1e-3);
        }
    }

    #[test]
    fn conv2d_backward_data_sums_give_the_batch_norm_its_backward_reduce_on_the_register_tile() {
        with_and_without_subgroups(Variant::RegisterTile, check_backward_data_sums);
    }

    #[test]
    fn conv2d_forward_statistics_give_the_batch_norm_its_output_statistics_on_the_register_tile() {
        with_and_without_subgroups(Variant::RegisterTile, check_forward_statistics);
    }

    #[test]
    fn batch_norm_partial_sums_come_only_from_the_register_tile_at_stride_1_or_aligned_rows() {
        let Some(ctx) = context() else { return };
        let device = ctx.device();
        let zeros = |len: usize| Tensor::zeros(device, &[len]).unwrap();
        // Whether the forward leaves statistics, and backward-data the sums
        // of a batch norm's backward reduce.
        let forward = |kernels: &Kernels, s: Conv2dShape| {
            let (x, w, y) = (zeros(s.input_len()), zeros(s.weight_len()), zeros(s.output_len()));
            conv2d_forward_statistics(device, kernels, &s, &x, &w, &y)
                .unwrap()
                .is_some()
        };
        let backward = |kernels: &Kernels, s: Conv2dShape| {
            let (dy, w, dx) = (zeros(s.output_len()), zeros(s.weight_len()), zeros(s.input_len()));
            let (mask, bn_x) = (zeros(s.input_len()), zeros(s.input_len()));
            let (_, partials) =
                conv2d_backward_data_relu(device, kernels, &s, &dy, &w, None, &mask, Some(&bn_x), &dx).unwrap();
            partials.is_some()
        };
        let aligned = shape(1, 16, 8, 16, 3, 1, 1);
        let register_tile = Kernels::new(device, Variant::RegisterTile);
        assert!(forward(&register_tile, aligned) && backward(&register_tile, aligned));
        // Rows of 7 pixels: the batch norm reads the tensors itself.
        let unaligned = shape(1, 16, 7, 16, 3, 1, 1);
        assert!(!forward(&register_tile, unaligned) && !backward(&register_tile, unaligned));
        // Stride 2: output rows of 4 pixels, and backward-data in four phases.
        let strided = shape(1, 16, 8, 16, 3, 2, 1);
        assert!(!forward(&register_tile, strided) && !backward(&register_tile, shape(1, 16, 16, 16, 3, 2, 1)));
        for variant in [Variant::WorkgroupTile, Variant::CompactTile] {
            let kernels = Kernels::new(device, variant);
            assert!(
                !forward(&kernels, aligned) && !backward(&kernels, aligned),
                "{variant:?}"
            );
        }
    }

    #[test]
    fn conv2d_backward_weight_splits_long_reductions_into_chunks() {
        // Batch 8 of 32x32 with few channels: many chunks of partial sums.
        // Then 351 rows of 16 channels: 5 rows per chunk but 1 in the last,
        // which the register tile shares workgroups with another chunk.
        let Some(ctx) = context() else { return };
        for s in [shape(8, 3, 32, 5, 3, 1, 1), shape(13, 16, 27, 5, 3, 1, 1)] {
            check_backward_weight_chunks(ctx, &s);
        }
    }

    fn check_backward_weight_chunks(ctx: &Context, s: &Conv2dShape) {
        let (device, queue) = (ctx.device(), ctx.queue());
        let mut rng = Rng::new(9);
        let x = rng.vec(s.input_len(), -1.0, 1.0);
        let dy = rng.vec(s.output_len(), -1.0, 1.0);
        let xt = Tensor::from_f64(device, &[s.input_len()], &x).unwrap();
        let dyt = Tensor::from_f64(device, &[s.output_len()], &dy).unwrap();
        let want = cpu::conv2d_backward_weight(s, &x, &dy);
        for variant in Variant::ALL {
            let kernels = Kernels::new(device, variant);
            let dwt = Tensor::zeros(device, &[s.weight_len()]).unwrap();
            let dispatches = conv2d_backward_weight(device, &kernels, s, &xt, &dyt, &dwt).unwrap();
            crate::kernel::submit(device, queue, &dispatches.iter().collect::<Vec<_>>());
            // Up to 13*27*27 = 9477 products of magnitude < 1 per weight: f32
            // sums of that length drift by ~1e-4 absolute, so allow 1e-3.
            assert_close(
                &format!("dw {variant:?} {s:?}"),
                &dwt.read_blocking(device, queue).unwrap(),
                &want,
                1e-3,
                1e-4,
            );
        }
    }

    #[test]
    fn conv2d_reference_backward_matches_finite_differences() {
        let mut rng = Rng::new(3);
        for s in [
            shape(2, 3, 5, 4, 3, 1, 1),
            shape(1, 2, 7, 3, 3, 2, 1),
            shape(2, 3, 5, 2, 1, 2, 0),
            shape(1, 2, 6, 2, 7, 2, 3),
        ] {
            let x = rng.vec(s.input_len(), -1.0, 1.0);
            let w = rng.vec(s.weight_len(), -1.0, 1.0);
            let r = rng.vec(s.output_len(), -1.0, 1.0);
            // L = <conv(x, w), r>, so dL/dy = r.
            let dx = cpu::conv2d_backward_data(&s, &r, &w);
            assert_gradient("conv2d dx", |x| dot(&cpu::conv2d_forward(&s, x, &w), &r), &x, &dx);
            let dw = cpu::conv2d_backward_weight(&s, &x, &r);
            assert_gradient("conv2d dw", |w| dot(&cpu::conv2d_forward(&s, &x, w), &r), &w, &dw);
        }
    }
}
